//! What the program leaves behind where operators and their tools read: no secret in its
//! logs, output or state (DESIGN §9.8), and no terminal escape codes where no terminal reads.

use std::process::Output;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

/// A distinct secret per setting, so that a leak names the setting it came from.
fn canary(n: u32) -> String {
    format!("CANARY{n:02}zq")
}

/// The HTTP source stand-in: a good NDJSON body, a 404, and a redirect to another scheme
/// whose target carries credentials.
async fn source_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/ok.ndjson"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"user_id\":\"u1\"}\n"))
        .mount(&server)
        .await;
    let https = server.uri().replace("http://", &format!("https://u:{}@", canary(13)));
    let location = format!("{https}/next?token={}", canary(14));
    Mock::given(path("/moved"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", location.as_str()))
        .mount(&server)
        .await;
    Mock::given(path("/gone.ndjson")).respond_with(ResponseTemplate::new(404)).mount(&server).await;
    Mock::given(path("/echo")).respond_with(echo_credentials).mount(&server).await;
    // The credentials after almost a whole error snippet of padding: cut first, they escaped.
    Mock::given(path("/echo_padded"))
        .respond_with(|r: &wiremock::Request| {
            let auth = r.headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            ResponseTemplate::new(403).set_body_string(format!("{}{auth}", "y".repeat(195)))
        })
        .mount(&server)
        .await;
    server
}

/// A careless server's error page: it echoes the URL it was asked for and the credentials it
/// was sent, decoded too.
fn echo_credentials(r: &wiremock::Request) -> ResponseTemplate {
    let auth = r.headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let token = auth.split_once(' ').map(|(_, t)| t).unwrap_or_default();
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, token).unwrap_or_default();
    let body = format!("bad request: you asked {} as {auth} ({})", r.url, String::from_utf8_lossy(&decoded));
    ResponseTemplate::new(400).set_body_string(body)
}

/// A Contentstack stand-in that answers every update with a redirect whose `Location`
/// carries a signature, and a management API that creates whatever is asked.
async fn destination_servers() -> (MockServer, MockServer) {
    let edge = MockServer::start().await;
    let location = format!("http://elsewhere.invalid/u?X-Amz-Signature={}&part=1", canary(9));
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(307).insert_header("location", location.as_str()))
        .mount(&edge)
        .await;
    let management = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/attributes"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .mount(&management)
        .await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(201)).mount(&management).await;
    (edge, management)
}

/// Every kind of source, each URL with secrets in it: one that loads, one answering 404, one
/// whose server is down, one redirected to another scheme, one whose server echoes them, and
/// two databases that fail.
fn computations(app: &TestApp, source: &MockServer) -> String {
    let host = source.uri().replace("http://", "");
    let down = free_port();
    let http = |name: &str, url: String, extra: &str| {
        format!(
            "[[audience]]\nname = \"{name}\"\nsource = {{ type = \"http\", url = \"{url}\", max_retries = 0{extra} }}\n"
        )
    };
    let sql = |name: &str, url: String| {
        format!(
            "[[audience]]\nname = \"{name}\"\nsource = {{ type = \"sql\", url = \"{url}\", query = \"SELECT 'u1' AS user_id\" }}\n"
        )
    };
    let auth = format!(", auth_header_env = \"{SOURCE_AUTH_ENV}\"");
    [
        http("Good", format!("http://user:{}@{host}/ok.ndjson?token={}&x=1", canary(1), canary(2)), &auth),
        http("Gone", format!("http://{host}/gone.ndjson?access_token={}", canary(3)), ""),
        http("Down", format!("http://user:{}@127.0.0.1:{down}/x?api_key={}", canary(4), canary(5)), ""),
        http("Moved", format!("http://{host}/moved?sig={}", canary(6)), ""),
        http("Echo", format!("http://user:{}@{host}/echo?token={}&x=1", canary(17), canary(18)), ""),
        http("Echo auth", format!("http://{host}/echo"), &auth),
        http("Echo padded", format!("http://{host}/echo_padded"), &auth),
        // A token as the user name, and a secret parameter written percent-encoded.
        http("Echo token", format!("http://{}@{host}/echo?token={}%2Fx", canary(19), canary(20)), ""),
        // A user-name token, and an `@` later in the URL.
        http("Token at", format!("http://{}@nohost.invalid/x?email=ops@example.com", canary(22)), ""),
        // An `@` in the query of a URL with a port: its host stays readable.
        http("Mail", format!("http://{host}/gone.ndjson?owner=ops@example.com"), ""),
        sql("Lite", format!("sqlite://{}?password={}", app.path("w.db").display(), canary(7))),
        // The HTTP server answers a Postgres handshake with garbage: an error without the wait
        // for a server that refuses connections.
        sql("Pg", format!("postgres://user:{}@{host}/db?sslpassword={}", canary(8), canary(15))),
        // A password holding an unencoded `#`.
        sql("Pg hash", format!("postgres://user:{}#x@{host}/db", canary(21))),
    ]
    .concat()
}

/// The secrets given through the environment.
const ENV_CANARIES: [(&str, u32); 3] = [(SOURCE_AUTH_ENV, 10), (MANAGEMENT_TOKEN_ENV, 11), (WRITE_KEY_ENV, 12)];

/// Runs the binary with debug logs and the canaries in the environment.
async fn run(app: &TestApp, args: &[&str]) -> Output {
    let mut cmd = app.command(args);
    cmd.env("RUST_LOG", "debug");
    for (var, n) in ENV_CANARIES {
        cmd.env(var, canary(n));
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

/// Every text cell of every table and view of the state, one string per cell (on
/// PostgreSQL, every row as one text).
async fn state_text(app: &TestApp) -> Vec<String> {
    if !on_postgres() {
        return sqlite_state_text(app);
    }
    let db = app.db().await;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(names.iter().any(|n| n == "sync_runs"), "the state was read: {names:?}");
    let mut cells = Vec::new();
    for name in names {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM \"{name}\" t")))
            .fetch_all(&db)
            .await
            .unwrap();
        cells.extend(rows.into_iter().map(|row| format!("{name}: {row}")));
    }
    cells
}

fn sqlite_state_text(app: &TestApp) -> Vec<String> {
    let db = rusqlite::Connection::open(app.path("state.db")).unwrap();
    let mut names = db.prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')").unwrap();
    let names: Vec<String> = names.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert!(names.iter().any(|n| n == "sync_runs"), "the state was read: {names:?}");
    let mut cells = Vec::new();
    for name in names {
        let mut select = db.prepare(&format!("SELECT * FROM \"{name}\"")).unwrap();
        let columns = select.column_count();
        let mut rows = select.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..columns {
                if let rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) = row.get_ref(i).unwrap()
                {
                    cells.push(format!("{name}: {}", String::from_utf8_lossy(t)));
                }
            }
        }
    }
    cells
}

/// Fails naming each canary found in `text`, and where.
fn assert_no_canary(what: &str, text: &str) {
    let leaked: Vec<String> = (1..=24).map(canary).filter(|c| text.contains(c.as_str())).collect();
    assert!(leaked.is_empty(), "{what} holds the secrets {leaked:?}:\n{text}");
}

/// Issue 13.9: a secret in any setting (URL credentials, secret query parameters, tokens and
/// keys in the environment) reaches no log, output or state, on the error paths included.
#[tokio::test]
async fn no_secret_reaches_a_log_the_output_or_the_state() {
    let source = source_server().await;
    let (edge, management) = destination_servers().await;
    let extra = format!(
        "create_attributes = true\nmanagement_api_base_url = \"{}\"\nmanagement_token_env = \"{MANAGEMENT_TOKEN_ENV}\"\n",
        management.uri()
    );
    let app = TestApp::contentstack_at(&edge.uri(), 2, &extra, "");
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    app.write("config.toml", &format!("{config}\n{}", computations(&app, &source)));
    let mut outputs = Vec::new();
    for args in [
        &["sync"][..],
        &["--log-format", "json", "sync"],
        &["sync", "--dry-run"],
        &["check"],
        &["status"],
        &["status", "--json"],
    ] {
        let out = run(&app, args).await;
        outputs.push((format!("{args:?}"), out));
    }
    let segment = MockServer::start().await;
    Mock::given(method("POST")).respond_with(echo_credentials).mount(&segment).await;
    let with_key = TestApp::segment(&segment, "", &audience("Good", "g.csv"));
    let with_key = with_key.replace_in_config("http://", &format!("http://w:{}@", canary(16)));
    with_key.write("g.csv", &csv_users(&["u1"]));
    for args in [&["sync"][..], &["check"]] {
        outputs.push((format!("segment {args:?}"), run(&with_key, args).await));
    }
    assert!(!received(&edge).await.is_empty(), "the redirect path of the destination ran");
    assert!(!segment.received_requests().await.unwrap_or_default().is_empty(), "the Segment app sent");
    let first = stdout(&outputs[0].1);
    let mail = format!("{}/gone.ndjson?owner=ops@example.com", source.uri());
    assert!(first.contains(&mail), "a URL's host is shown even with an @ in its query ({mail}):\n{first}");
    for shown in ["http://***@", "api_key=***", "password=***", "X-Amz-Signature=***", "HTTP 404"] {
        assert!(first.contains(shown), "the errors still name their sources ({shown}):\n{first}");
    }
    for (args, out) in &outputs {
        assert_no_canary(&format!("stdout of {args}"), &stdout(out));
        assert_no_canary(&format!("stderr of {args}"), &stderr(out));
    }
    assert_no_canary("the state", &state_text(&app).await.join("\n"));
    assert_no_canary("the state of the Segment app", &state_text(&with_key).await.join("\n"));
    // The Basic form of the write key, echoed by the server, is scrubbed too.
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{}:", canary(12)));
    let basic = basic.trim_end_matches('=');
    assert!(state_text(&with_key).await.iter().all(|t| !t.contains(basic)), "the Basic credentials reached the state");
    for (args, out) in &outputs {
        assert!(!stdout(out).contains(basic) && !stderr(out).contains(basic), "Basic credentials in {args}");
    }
}

/// Review finding: a destination URL's secret parameter, echoed by its server's error page,
/// reached the state, the summaries and the logs (only the write key and the management token
/// were scrubbed from answers); and Contentstack appended its path after the base URL's query.
#[tokio::test]
async fn a_destination_urls_secrets_echoed_back_are_scrubbed() {
    let edge = MockServer::start().await;
    Mock::given(method("PATCH")).respond_with(echo_credentials).mount(&edge).await;
    let base = format!("{}/base?token={}", edge.uri(), canary(23));
    let cs = TestApp::contentstack_at(&base, 2, "", &audience("Good", "g.csv"));
    let segment = MockServer::start().await;
    Mock::given(method("POST")).respond_with(echo_credentials).mount(&segment).await;
    let seg = TestApp::segment(&segment, "", &audience("Good", "g.csv"));
    let seg = seg.replace_in_config(&segment.uri(), &format!("{}/?api_key={}", segment.uri(), canary(24)));
    let mut outputs = Vec::new();
    for app in [&cs, &seg] {
        app.write("g.csv", &csv_users(&["u1"]));
        outputs.push(run(app, &["sync"]).await);
        outputs.push(run(app, &["--log-format", "json", "sync"]).await);
        outputs.push(run(app, &["explain", "--user", "u1"]).await);
    }
    let paths: Vec<String> = edge.received_requests().await.unwrap().iter().map(|r| r.url.path().to_string()).collect();
    assert!(!paths.is_empty() && paths.iter().all(|p| p == "/base/user-attributes"), "{paths:?}");
    assert!(!segment.received_requests().await.unwrap().is_empty());
    for out in &outputs {
        assert!(stdout(out).contains("HTTP 400"), "the error is still shown:\n{}", stdout(out));
        assert_no_canary("stdout", &stdout(out));
        assert_no_canary("stderr", &stderr(out));
    }
    assert_no_canary("the Contentstack app's state", &state_text(&cs).await.join("\n"));
    assert_no_canary("the Segment app's state", &state_text(&seg).await.join("\n"));
}

/// Issue 13.12: logs written to a file or a pipe carry no colour codes.
#[tokio::test]
async fn logs_to_a_pipe_have_no_escape_codes() {
    let app = TestApp::new("[destination]\ntype = \"file\"\npath = \"out.ndjson\"\n", &audience("A", "missing.csv"));
    let mut cmd = app.command(&["sync"]);
    cmd.env("RUST_LOG", "info").env_remove("NO_COLOR");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_failure(&out);
    assert!(!stderr(&out).is_empty(), "the failing pass logs");
    assert!(!stderr(&out).contains('\x1b'), "escape codes in a pipe: {:?}", stderr(&out));
}

/// Issue 16.5: with `--log-format json`, every pass's summary and every failure is one JSON
/// object a line, with the field names README's "Logs" documents.
#[tokio::test]
async fn json_logs_carry_each_pass_and_failure_as_one_event_with_stable_fields() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(wiremock::matchers::header("x-cs-personalize-user-uid", "c1"))
        .respond_with(ResponseTemplate::new(400).set_body_string("no such attribute"))
        .with_priority(1)
        .mount(&server)
        .await;
    acknowledge_all(&server).await;
    let computations = [audience("A", "a.csv"), audience("B", "missing.csv"), audience("C", "c.csv")].concat();
    let app = TestApp::contentstack(&server, 2, &computations);
    app.write("a.csv", &csv_users(&["a1", "a2"]));
    app.write("c.csv", &csv_users(&["c1"]));
    let mut cmd = app.command(&["--log-format", "json", "sync"]);
    cmd.env("RUST_LOG", "info");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_failure(&out);

    let events: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let db = app.db().await;
    let runs: Vec<(String, i64)> =
        sqlx::query_as("SELECT computation_key, id FROM sync_runs").fetch_all(&db).await.unwrap();
    let pass_id = |key: &str| runs.iter().find(|(k, _)| k == key).unwrap().1;
    let one = |message: &str, key: &str| {
        let found: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["message"] == message && e["computation"] == key).collect();
        assert_eq!(found.len(), 1, "one {message:?} event of {key}: {events:#?}");
        found[0].clone()
    };
    let counts = |e: &serde_json::Value| {
        ["snapshot_rows", "entered", "exited", "changed", "delivered", "retried", "failed", "quarantined", "pending"]
            .map(|field| e[field].as_u64())
    };

    let a = one("pass finished", "a");
    assert_eq!(
        (&a["level"], &a["pass_id"], &a["mode"], &a["status"]),
        (&"INFO".into(), &pass_id("a").into(), &"initial".into(), &"ok".into())
    );
    assert_eq!(counts(&a), [2, 2, 0, 0, 2, 0, 0, 0, 0].map(Some), "{a}");
    assert!(a.get("error_class").is_none() && a.get("error").is_none(), "{a}");

    let b = one("pass finished", "b");
    assert_eq!((&b["level"], &b["pass_id"], &b["status"]), (&"ERROR".into(), &pass_id("b").into(), &"failed".into()));
    assert_eq!(b["error_class"], "snapshot failed");
    assert!(b["error"].as_str().unwrap().contains("missing.csv"), "{b}");
    assert!(b.get("pending").is_none(), "nothing counted of a pass that wrote nothing: {b}");
    let failure = one("pass failed", "b");
    assert_eq!((&failure["pass_id"], &failure["mode"]), (&pass_id("b").into(), &"initial".into()));
    assert_eq!((&failure["error_class"], &failure["error"]), (&b["error_class"], &b["error"]));

    let c = one("pass finished", "c");
    assert_eq!(
        (&c["level"], &c["status"], &c["error_class"]),
        (&"WARN".into(), &"incomplete".into(), &"destination".into())
    );
    assert_eq!(counts(&c), [1, 1, 0, 0, 0, 0, 1, 0, 1].map(Some), "{c}");
    assert!(c["error"].as_str().unwrap().contains("HTTP 400: no such attribute"), "{c}");
    assert!(events.iter().all(|e| e["message"] != "pass failed" || e["computation"] == "b"), "{events:#?}");
}
