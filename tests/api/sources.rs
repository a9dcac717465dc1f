//! Snapshots from HTTP endpoints and SQL databases, and the guards against bad snapshots.

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

fn http_audience(name: &str, url: &str, extra: &str) -> String {
    format!("[[audience]]\nname = \"{name}\"\nsource = {{ type = \"http\", url = \"{url}\"{extra} }}\n")
}

/// An app delivering to `edge`, with `computations`.
async fn app_with(edge: &MockServer, computations: &str) -> TestApp {
    TestApp::contentstack(edge, 4, computations)
}

fn page(members: &[&str], next: Option<&str>) -> serde_json::Value {
    let members: Vec<_> = members.iter().map(|u| json!({"user_id": u})).collect();
    json!({"members": members, "next": next})
}

#[tokio::test]
async fn a_large_ndjson_body_is_read_whole_with_the_auth_header_from_the_environment() {
    let edge = contentstack_server().await;
    let source = MockServer::start().await;
    let body: String = (0..5_000).map(|i| format!("{{\"user_id\":\"user-{i:05}\",\"value\":{i}}}\n")).collect();
    Mock::given(method("GET"))
        .and(path("/ltv.ndjson"))
        .and(header("authorization", SOURCE_AUTH))
        .respond_with(ResponseTemplate::new(200).set_body_string(body))
        .mount(&source)
        .await;
    let computations = format!(
        "[[computed_trait]]\nname = \"LTV\"\nsource = {{ type = \"http\", url = \"{}/ltv.ndjson\", auth_header_env = \"{SOURCE_AUTH_ENV}\" }}\n",
        source.uri()
    );
    let app = app_with(&edge, &computations).await;
    let out = app.sync(&[]).await;
    assert_success(&out);
    assert!(stdout(&out).contains("5000 in snapshot, 5000 entered"), "{}", stdout(&out));
    assert_eq!(received(&edge).await.len(), 5_000);
    assert!(!stderr(&out).contains("s3cret"), "the auth header is never logged");
}

#[tokio::test]
async fn json_pages_are_followed_by_next_and_by_link_headers() {
    let edge = contentstack_server().await;
    let source = MockServer::start().await;
    Mock::given(path("/m"))
        .and(query_param("page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u1", "u2"], Some("/m?page=2"))))
        .mount(&source)
        .await;
    // Page 2 names no next in its body but in a Link header.
    Mock::given(path("/m"))
        .and(query_param("page", "2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(page(&["u3"], None))
                .insert_header("link", "</m?page=3>; rel=\"next\""),
        )
        .mount(&source)
        .await;
    Mock::given(path("/m"))
        .and(query_param("page", "3"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u4"], None)))
        .mount(&source)
        .await;
    let app = app_with(&edge, &http_audience("A", &format!("{}/m?page=1", source.uri()), ", format = \"json\"")).await;
    assert_success(&app.sync(&[]).await);
    let users: Vec<String> = sorted(received(&edge).await).into_iter().map(|(u, _)| u).collect();
    assert_eq!(users, ["u1", "u2", "u3", "u4"]);
}

#[tokio::test]
async fn a_500_on_page_3_is_retried_then_the_snapshot_completes() {
    let edge = contentstack_server().await;
    let source = MockServer::start().await;
    Mock::given(path("/m"))
        .and(query_param("page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u1"], Some("/m?page=2"))))
        .mount(&source)
        .await;
    Mock::given(path("/m"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u2"], Some("/m?page=3"))))
        .mount(&source)
        .await;
    Mock::given(path("/m"))
        .and(query_param("page", "3"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&source)
        .await;
    Mock::given(path("/m"))
        .and(query_param("page", "3"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u3"], None)))
        .mount(&source)
        .await;
    let app = app_with(&edge, &http_audience("A", &format!("{}/m?page=1", source.uri()), ", format = \"json\"")).await;
    assert_success(&app.sync(&[]).await);
    assert_eq!(received(&edge).await.len(), 3);
    let page3 = source.received_requests().await.unwrap().iter().filter(|r| r.url.query() == Some("page=3")).count();
    assert_eq!(page3, 2);
}

#[tokio::test]
async fn a_page_that_never_comes_leaves_the_state_untouched() {
    let edge = contentstack_server().await;
    let source = MockServer::start().await;
    let app = app_with(
        &edge,
        &http_audience(
            "A",
            &format!("{}/m?page=1", source.uri()),
            ", format = \"json\", timeout_secs = 0.3, max_retries = 1",
        ),
    )
    .await;
    Mock::given(path("/m"))
        .and(query_param("page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u1", "u2"], None)))
        .up_to_n_times(1)
        .mount(&source)
        .await;
    assert_success(&app.sync(&[]).await);
    let before = app.memberships().await;
    edge.reset().await;
    acknowledge_all(&edge).await;

    // Now page 1 would drop u2, but page 2 never answers in time.
    Mock::given(path("/m"))
        .and(query_param("page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u1"], Some("/m?page=2"))))
        .mount(&source)
        .await;
    Mock::given(path("/m"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u3"], None)).set_delay(Duration::from_secs(5)))
        .mount(&source)
        .await;
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(stdout(&out).contains("page=2"), "the error names the page: {}", stdout(&out));
    assert!(stdout(&out).contains("timed out"), "{}", stdout(&out));
    assert_eq!(app.memberships().await, before);
    assert!(received(&edge).await.is_empty());
}

/// A SQLite database with a table of users.
async fn users_db(app: &TestApp) -> String {
    let url = format!("sqlite://{}?mode=rwc", app.path("warehouse.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE users (id TEXT, active INTEGER, score REAL, tier TEXT)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO users VALUES ('u1', 1, 10.5, 'gold'), ('u2', 0, 3, 'silver'), ('u3', 1, 7, NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    format!("sqlite://{}", app.path("warehouse.db").display())
}

#[tokio::test]
async fn sqlite_queries_with_and_without_value() {
    let edge = contentstack_server().await;
    let app = app_with(&edge, "").await;
    let url = users_db(&app).await;
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    app.write(
        "config.toml",
        &format!(
            "{config}[[audience]]\nname = \"Active\"\nsource = {{ type = \"sql\", url = \"{url}\", query = \"SELECT id AS user_id FROM users WHERE active = 1\" }}\n\
             [[computed_trait]]\nname = \"Score\"\nsource = {{ type = \"sql\", url = \"{url}\", query = \"SELECT id AS user_id, score AS value FROM users\" }}\n"
        ),
    );
    assert_success(&app.sync(&[]).await);
    assert_eq!(
        sorted(received(&edge).await),
        vec![
            ("u1".into(), json!({"active": true, "score": 10.5})),
            // A REAL column gives floats.
            ("u2".into(), json!({"score": 3.0})),
            ("u3".into(), json!({"active": true, "score": 7.0})),
        ]
    );
}

/// The query is read through one that bounds its fields; a column SQLite declares BOOLEAN
/// (stored as an integer) still gives booleans, and a trailing `;` or comment is fine.
#[tokio::test]
async fn a_sqlite_boolean_column_gives_booleans_through_the_bounded_query() {
    let edge = contentstack_server().await;
    let app = app_with(&edge, "").await;
    let url = format!("sqlite://{}", app.path("flags.db").display());
    let db = rusqlite::Connection::open(app.path("flags.db")).unwrap();
    db.execute_batch("CREATE TABLE flags (id TEXT, vip BOOLEAN); INSERT INTO flags VALUES ('u1', 1), ('u2', 0);")
        .unwrap();
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    let query = "SELECT id AS user_id, vip AS value FROM flags; -- the VIPs";
    let trait_ = format!(
        "[[computed_trait]]\nname = \"Vip\"\nsource = {{ type = \"sql\", url = \"{url}\", query = \"{query}\" }}\n"
    );
    app.write("config.toml", &format!("{config}{trait_}"));
    assert_success(&app.sync(&[]).await);
    assert_eq!(
        sorted(received(&edge).await),
        vec![("u1".into(), json!({"vip": true})), ("u2".into(), json!({"vip": false}))]
    );
}

#[tokio::test]
async fn a_broken_query_fails_with_the_database_message() {
    let edge = contentstack_server().await;
    let app = app_with(&edge, "").await;
    let url = users_db(&app).await;
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    let computations = format!(
        "[[audience]]\nname = \"A\"\nsource = {{ type = \"sql\", url = \"{url}\", query = \"SELECT id AS user_id FROM no_such_table\" }}\n\
         [[computed_trait]]\nname = \"T\"\nsource = {{ type = \"sql\", url = \"{url}\", query = \"SELECT id AS user_id FROM users\" }}\n"
    );
    app.write("config.toml", &format!("{config}{computations}"));
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(stdout(&out).contains("no such table: no_such_table"), "{}", stdout(&out));
    assert!(stdout(&out).contains("the query returns no value column (columns: user_id)"), "{}", stdout(&out));
    assert!(received(&edge).await.is_empty());
}

#[tokio::test]
#[ignore = "needs a Postgres server: set AUDIENCE_SYNC_TEST_POSTGRES_URL (see README, Development)"]
async fn postgres_queries_with_and_without_value() {
    let url = std::env::var("AUDIENCE_SYNC_TEST_POSTGRES_URL").expect("AUDIENCE_SYNC_TEST_POSTGRES_URL");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let table = format!("users_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE {table} (id TEXT, score INT8, meta JSONB, ratio FLOAT8)")))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES ('p1', 5, '{{\"a\": 1}}', 0.5), ('p2', 7, NULL, 1.5)"
    )))
    .execute(&pool)
    .await
    .unwrap();

    let edge = contentstack_server().await;
    let app = app_with(&edge, "").await;
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    app.write(
        "config.toml",
        &format!(
            "{config}[[audience]]\nname = \"All\"\nsource = {{ type = \"sql\", url_env = \"PG_URL\", query = \"SELECT id AS user_id FROM {table}\" }}\n\
             [[computed_trait]]\nname = \"Score\"\nsource = {{ type = \"sql\", url_env = \"PG_URL\", query = \"SELECT id AS user_id, score AS value FROM {table}\" }}\n\
             [[computed_trait]]\nname = \"Ratio\"\nsource = {{ type = \"sql\", url_env = \"PG_URL\", query = \"SELECT id AS user_id, ratio AS value FROM {table}\" }}\n"
        ),
    );
    let mut cmd = app.command(&["sync"]);
    cmd.env("PG_URL", &url);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_success(&out);
    assert_eq!(
        sorted(received(&edge).await),
        vec![
            ("p1".into(), json!({"all": true, "ratio": 0.5, "score": 5})),
            ("p2".into(), json!({"all": true, "ratio": 1.5, "score": 7})),
        ]
    );

    // A broken query fails with Postgres's own message.
    app.write(
        "config.toml",
        &std::fs::read_to_string(app.config_path()).unwrap().replace(
            &format!("FROM {table}\" }}\n[[computed_trait]]\nname = \"Score\""),
            "FROM nowhere\" }\n[[computed_trait]]\nname = \"Score\"",
        ),
    );
    let mut cmd = app.command(&["sync"]);
    cmd.env("PG_URL", &url);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_failure(&out);
    assert!(stdout(&out).contains("relation \"nowhere\" does not exist"), "{}", stdout(&out));
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}"))).execute(&pool).await.unwrap();
}

fn members(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u{i:04}")).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn a_snapshot_removing_most_members_is_held_back_until_allowed() {
    let edge = contentstack_server().await;
    let app = app_with(&edge, &audience("A", "a.csv")).await;
    let all = members(200);
    app.write("a.csv", &csv_users(&refs(&all)));
    assert_success(&app.sync(&[]).await);
    edge.reset().await;
    acknowledge_all(&edge).await;
    let before = app.memberships().await;

    // 60 % leave.
    app.write("a.csv", &csv_users(&refs(&all[..80])));
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(
        stdout(&out).contains(
            "held back: this snapshot would remove 120 of 200 members (60 %), more than max_exit_ratio = 0.5 allows"
        ),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("sync --allow-mass-exit --audience a"), "{}", stdout(&out));
    // Issue 15.4: the exit reason says what happened (it said "snapshot failed").
    assert!(stderr(&out).contains("not everything was delivered: a (held back)"), "{}", stderr(&out));
    assert_eq!(app.memberships().await, before);
    assert!(received(&edge).await.is_empty());
    // The dry run says so too.
    assert!(stdout(&app.sync(&["--dry-run"]).await).contains("held back"));

    // An empty snapshot is the extreme case.
    app.write("a.csv", &csv_users(&[]));
    assert!(stdout(&app.sync(&[]).await).contains("would remove 200 of 200 members (100 %)"));

    app.write("a.csv", &csv_users(&refs(&all[..80])));
    assert_success(&app.sync(&["--allow-mass-exit"]).await);
    assert_eq!(received(&edge).await.len(), 120);
}

#[tokio::test]
async fn a_small_audience_under_the_minimum_is_not_guarded() {
    let edge = contentstack_server().await;
    let app = app_with(&edge, &audience("A", "a.csv")).await;
    let all = members(10);
    app.write("a.csv", &csv_users(&refs(&all)));
    assert_success(&app.sync(&[]).await);
    app.write("a.csv", &csv_users(&[]));
    assert_success(&app.sync(&[]).await);
    assert_eq!(app.pending_count().await, 0);
}

#[tokio::test]
async fn a_computed_trait_losing_most_values_is_held_back() {
    let edge = contentstack_server().await;
    let app = app_with(&edge, &computed_trait("T", "t.ndjson")).await;
    let lines: String = (0..100).map(|i| format!("{{\"user_id\":\"u{i}\",\"value\":{i}}}\n")).collect();
    app.write("t.ndjson", &lines);
    assert_success(&app.sync(&[]).await);
    app.write("t.ndjson", &lines.lines().take(30).map(|l| format!("{l}\n")).collect::<String>());
    let out = app.sync(&[]).await;
    assert!(stdout(&out).contains("would remove 70 of 100 users with a value (70 %)"), "{}", stdout(&out));
}

#[tokio::test]
async fn a_snapshot_is_read_only_once_its_ready_file_is_there_and_newer() {
    let edge = contentstack_server().await;
    let computations =
        "[[audience]]\nname = \"A\"\nsource = { type = \"file\", path = \"a.csv\", ready_file = \"a.csv.done\" }\n";
    let app = app_with(&edge, computations).await;
    app.write("a.csv", &csv_users(&["u1"]));
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(stdout(&out).contains("a.csv.done is missing: the export may be unfinished"), "{}", stdout(&out));

    app.write("a.csv.done", "");
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(app.path("a.csv.done")).unwrap().set_modified(old).unwrap();
    let out = app.sync(&[]).await;
    assert!(stdout(&out).contains("a.csv.done is older than the snapshot"), "{}", stdout(&out));
    assert!(received(&edge).await.is_empty());

    app.write("a.csv.done", "");
    assert_success(&app.sync(&[]).await);
    assert_eq!(received(&edge).await.len(), 1);
}

#[tokio::test]
async fn a_snapshot_older_than_the_last_one_used_is_refused_as_stale() {
    let edge = contentstack_server().await;
    let app = app_with(&edge, &audience("A", "a.csv")).await;
    app.write("a.csv", &csv_users(&["u1"]));
    assert_success(&app.sync(&[]).await);
    let before = app.memberships().await;

    app.write("a.csv", &csv_users(&["u1", "u2"]));
    let old = std::time::SystemTime::now() - Duration::from_secs(86_400);
    std::fs::File::options().write(true).open(app.path("a.csv")).unwrap().set_modified(old).unwrap();
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(stdout(&out).contains("stale snapshot"), "{}", stdout(&out));
    assert_eq!(app.memberships().await, before);
}

#[tokio::test]
async fn structured_values_need_allow_structured_and_oversized_values_name_the_user() {
    let edge = contentstack_server().await;
    let app = app_with(&edge, &computed_trait("Prefs", "p.ndjson")).await;
    app.write("p.ndjson", "{\"user_id\":\"u1\",\"value\":{\"color\":\"red\",\"sizes\":[1,2]}}\n");
    let out = app.sync(&[]).await;
    assert!(stdout(&out).contains("p.ndjson:1: value: value must be a string, number or boolean"), "{}", stdout(&out));

    let structured = computed_trait("Prefs", "p.ndjson").replace("source =", "allow_structured = true\nsource =");
    let app2 = app_with(&edge, &structured).await;
    app2.write("p.ndjson", "{\"user_id\":\"u1\",\"value\":{\"color\":\"red\",\"sizes\":[1,2]}}\n");
    assert_success(&app2.sync(&[]).await);
    assert_eq!(received(&edge).await, vec![("u1".into(), json!({"prefs": {"color": "red", "sizes": [1, 2]}}))]);

    let big = "x".repeat(40_000);
    app.write("p.ndjson", &format!("{{\"user_id\":\"u1\",\"value\":1}}\n{{\"user_id\":\"u2\",\"value\":\"{big}\"}}\n"));
    let out = app.sync(&[]).await;
    assert!(
        stdout(&out).contains("p.ndjson:2: value: value is 40002 bytes, more than the limit of 32768 (user \"u2\")"),
        "{}",
        stdout(&out)
    );
}

/// Issue 13.7: `next` pointing 1 -> 2 -> 1 used to load forever.
#[tokio::test]
async fn json_pages_that_loop_fail_the_load_naming_both_pages() {
    let edge = contentstack_server().await;
    let source = MockServer::start().await;
    Mock::given(path("/m"))
        .and(query_param("page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u1"], Some("/m?page=2"))))
        .mount(&source)
        .await;
    Mock::given(path("/m"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u2"], Some("/m?page=1"))))
        .mount(&source)
        .await;
    let app = app_with(&edge, &http_audience("A", &format!("{}/m?page=1", source.uri()), ", format = \"json\"")).await;
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(stderr(&out).contains("pages 1 and 3 are the same URL"), "{}", stderr(&out));
    assert!(received(&edge).await.is_empty(), "nothing sent from a snapshot that did not load");
    assert!(app.memberships().await.is_empty());
}

#[tokio::test]
async fn a_paged_source_longer_than_max_pages_fails_the_load() {
    let edge = contentstack_server().await;
    let source = MockServer::start().await;
    for i in 1..=3 {
        Mock::given(path("/m"))
            .and(query_param("page", i.to_string()))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(page(&[&format!("u{i}")], Some(&format!("/m?page={}", i + 1)))),
            )
            .mount(&source)
            .await;
    }
    let url = format!("{}/m?page=1", source.uri());
    let app = app_with(&edge, &http_audience("A", &url, ", format = \"json\", max_pages = 2")).await;
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(stderr(&out).contains("more than max_pages = 2"), "{}", stderr(&out));
    assert!(received(&edge).await.is_empty());
}

/// Issue 13.2: a source may follow a redirect, but not to another scheme.
#[tokio::test]
async fn a_source_follows_redirects_but_not_to_another_scheme() {
    let edge = contentstack_server().await;
    let source = MockServer::start().await;
    Mock::given(path("/old"))
        .respond_with(ResponseTemplate::new(301).insert_header("location", "/new"))
        .mount(&source)
        .await;
    Mock::given(path("/new"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"user_id\":\"u1\"}\n"))
        .mount(&source)
        .await;
    let https = source.uri().replace("http://", "https://");
    Mock::given(path("/tls"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", format!("{https}/new").as_str()))
        .mount(&source)
        .await;
    let app = app_with(&edge, &http_audience("A", &format!("{}/old", source.uri()), "")).await;
    assert_success(&app.sync(&[]).await);
    assert_eq!(received(&edge).await.len(), 1);

    let app = app_with(&edge, &http_audience("B", &format!("{}/tls", source.uri()), "")).await;
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(stderr(&out).contains("redirected from http to https"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("retries"), "a refused redirect is final: {}", stderr(&out));
}

/// Review finding: the source's `Authorization` went with every page, to whatever host a page
/// named as the next. A next page of another origin is read without it; of another scheme, not
/// at all.
#[tokio::test]
async fn a_next_page_elsewhere_gets_no_credentials_and_another_scheme_is_refused() {
    let edge = contentstack_server().await;
    let (source, elsewhere) = (MockServer::start().await, MockServer::start().await);
    let next = format!("{}/p2", elsewhere.uri());
    Mock::given(path("/p1"))
        .and(header("authorization", SOURCE_AUTH))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u1"], Some(next.as_str()))))
        .mount(&source)
        .await;
    Mock::given(path("/p2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u2"], None)))
        .mount(&elsewhere)
        .await;
    let https = format!("{}/p2", source.uri().replace("http://", "https://"));
    Mock::given(path("/tls"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&["u1"], Some(https.as_str()))))
        .mount(&source)
        .await;
    let auth = format!(", format = \"json\", auth_header_env = \"{SOURCE_AUTH_ENV}\"");
    let app = app_with(&edge, &http_audience("A", &format!("{}/p1", source.uri()), &auth)).await;
    assert_success(&app.sync(&[]).await);
    let users: Vec<String> = sorted(received(&edge).await).into_iter().map(|(u, _)| u).collect();
    assert_eq!(users, ["u1", "u2"]);
    let asked = elsewhere.received_requests().await.unwrap();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].headers.get("authorization").is_none(), "the credentials went to another host");

    let app = app_with(&edge, &http_audience("B", &format!("{}/tls", source.uri()), &auth)).await;
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(stderr(&out).contains("next: the next page is on https, the source on http: refused"), "{}", stderr(&out));
}

/// Serves, once, an NDJSON body of `lines` members trickled a line every `gap`: a body that takes
/// longer than the source's timeout while data keeps coming.
fn trickling_source(lines: usize, gap: Duration) -> String {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/slow.ndjson", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let Ok((socket, _)) = listener.accept() else { return };
        let mut request = std::io::BufReader::new(socket.try_clone().unwrap());
        let mut line = String::new();
        while request.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            line.clear();
        }
        let mut out = socket;
        let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n");
        for i in 0..lines {
            std::thread::sleep(gap); // the stand-in's pace, not a synchronisation
            if out.write_all(format!("{{\"user_id\":\"user-{i}\"}}\n").as_bytes()).is_err() {
                return;
            }
        }
    });
    url
}

/// `timeout_secs` bounds a silence, not a whole body: a big snapshot streamed for longer than
/// the timeout must load (it used to fail, the request's own timeout covering the body).
#[tokio::test]
async fn a_body_streaming_longer_than_the_timeout_loads_while_data_keeps_coming() {
    let edge = contentstack_server().await;
    let url = trickling_source(6, Duration::from_millis(400));
    let app = app_with(&edge, &http_audience("Slow", &url, ", format = \"ndjson\", timeout_secs = 1")).await;
    let output = app.sync(&[]).await;
    assert_success(&output);
    assert_eq!(app.memberships().await.len(), 6, "{}", stderr(&output));
}

/// Review findings: pages told apart by a fragment alone looped until max_pages; a relative
/// `next` was resolved against the URL asked for, not the one a redirect served.
#[tokio::test]
async fn a_fragment_does_not_hide_a_page_loop_and_next_is_relative_to_the_page_served() {
    let edge = contentstack_server().await;
    let source = MockServer::start().await;
    let json = |members: &[&str], next: Option<&str>| ResponseTemplate::new(200).set_body_json(page(members, next));
    Mock::given(path("/f1")).respond_with(json(&["u1"], Some("/f2#a"))).mount(&source).await;
    Mock::given(path("/f2")).respond_with(json(&["u2"], Some("/f1#b"))).mount(&source).await;
    let app = app_with(&edge, &http_audience("A", &format!("{}/f1", source.uri()), ", format = \"json\"")).await;
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(stderr(&out).contains("the pages loop"), "{}", stderr(&out));

    Mock::given(path("/r1"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/sub/r1"))
        .mount(&source)
        .await;
    Mock::given(path("/sub/r1")).respond_with(json(&["u1"], Some("r2"))).mount(&source).await;
    Mock::given(path("/sub/r2")).respond_with(json(&["u2"], None)).mount(&source).await;
    let app = app_with(&edge, &http_audience("B", &format!("{}/r1", source.uri()), ", format = \"json\"")).await;
    assert_success(&app.sync(&[]).await);
    let users: Vec<String> = sorted(received(&edge).await).into_iter().map(|(u, _)| u).collect();
    assert_eq!(users, ["u1", "u2"]);
}

/// Review finding: a URL's userinfo made reqwest add a Basic `Authorization` beside the one from
/// `auth_header_env`, which is documented as the whole header.
#[tokio::test]
async fn the_configured_authorization_is_the_only_one_sent() {
    let edge = contentstack_server().await;
    let source = MockServer::start().await;
    Mock::given(path("/a.ndjson"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"user_id\":\"u1\"}\n"))
        .mount(&source)
        .await;
    let url = source.uri().replace("http://", "http://user:pw@");
    let auth = format!(", auth_header_env = \"{SOURCE_AUTH_ENV}\"");
    let app = app_with(&edge, &http_audience("A", &format!("{url}/a.ndjson"), &auth)).await;
    assert_success(&app.sync(&[]).await);
    let asked = source.received_requests().await.unwrap();
    let sent: Vec<_> =
        asked[0].headers.get_all("authorization").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(sent, [SOURCE_AUTH], "one Authorization, the configured one");
}
