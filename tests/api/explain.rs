//! `explain --user`: one user in each state the state can hold, in text and JSON, and the
//! delivery history behind it (issue 16, points 3 and 4).

use serde_json::{Value, json};
use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

/// Keeps `delivery_history` for `days` in `app`'s config.
fn keeping_history(app: TestApp, days: u32) -> TestApp {
    app.with_state_setting(&format!("keep_history_days = {days}"))
}

/// `explain --json` of `user` (and any more arguments).
async fn explain_json(app: &TestApp, user: &str, more: &[&str]) -> Value {
    let mut args = vec!["explain", "--user", user, "--json"];
    args.extend_from_slice(more);
    let out = app.run(&args).await;
    assert_success(&out);
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

/// `explain` of `user` for people.
async fn explain_text(app: &TestApp, user: &str) -> String {
    let out = app.run(&["explain", "--user", user]).await;
    assert_success(&out);
    stdout(&out)
}

/// The ids of the passes, oldest first.
async fn run_ids(app: &TestApp) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM sync_runs ORDER BY id").fetch_all(&app.db().await).await.unwrap()
}

/// A Contentstack stand-in refusing `refused` users with 400 and acknowledging the others.
async fn destination_refusing(refused: &[&str]) -> MockServer {
    let server = MockServer::start().await;
    for user in refused {
        Mock::given(method("PATCH"))
            .and(header("x-cs-personalize-user-uid", *user))
            .respond_with(ResponseTemplate::new(400).set_body_string("no such user"))
            .mount(&server)
            .await;
    }
    acknowledge_all(&server).await;
    server
}

/// Two passes (both `initial`: the first did not deliver everything) leave a user in each
/// state: `synced` acknowledged throughout, `exited` left in the second pass (told `false`), `quarantined` refused in both (quarantine_after = 2),
/// `failing` entered in the second and refused once; `stranger` was never in the snapshot.
async fn two_passes(history_days: Option<u32>) -> (MockServer, TestApp) {
    let server = destination_refusing(&["quarantined", "failing"]).await;
    let app = TestApp::contentstack_at(&server.uri(), 2, "quarantine_after = 2\n", &audience("A", "a.csv"));
    let app = match history_days {
        Some(days) => keeping_history(app, days),
        None => app,
    };
    app.write("a.csv", &csv_users(&["exited", "quarantined", "synced"]));
    assert_failure(&app.sync(&[]).await);
    app.write("a.csv", &csv_users(&["failing", "quarantined", "synced"]));
    assert_failure(&app.sync(&[]).await);
    (server, app)
}

#[tokio::test]
async fn explain_says_where_a_user_stands_in_each_state() {
    let (_server, app) = two_passes(Some(7)).await;
    let [first, second] = run_ids(&app).await[..] else { panic!("two passes") };

    let synced = explain_json(&app, "synced", &[]).await;
    assert_eq!(synced["user_id"], "synced");
    assert_eq!(synced["state_exists"], true);
    assert_eq!(synced["keep_history_days"], 7);
    let a = &synced["computations"][0];
    assert_eq!(
        (&a["key"], &a["kind"], &a["member"], &a["delivery"]),
        (&json!("a"), &json!("audience"), &json!(true), &json!("synced"))
    );
    assert_eq!(a["last_diff"]["run_id"], second, "as of the second pass's diff: {a}");
    assert_eq!((&a["last_diff"]["mode"], &a["last_diff"]["status"]), (&json!("initial"), &json!("incomplete")));
    assert_eq!(
        (&a["desired"], &a["synced"], &a["attempts"], &a["last_error"]),
        (&json!("true"), &json!("true"), &json!(0), &Value::Null)
    );
    assert!(a["updated_at"].is_string() && a["synced_at"].is_string(), "{a}");
    assert_eq!(a["quarantined_at"], Value::Null);
    assert_eq!(a["first_sync_queued"], Value::Null);
    let history = a["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "acknowledged once, in the first pass: {a}");
    assert_eq!(history[0]["run_id"], first);
    assert_eq!((&history[0]["value"], &history[0]["acknowledged"]), (&json!("true"), &json!(true)));
    assert_eq!((&history[0]["http_status"], &history[0]["error"]), (&Value::Null, &Value::Null));
    let text = explain_text(&app, "synced").await;
    assert!(text.contains("a (audience \"A\"): member; acknowledged by the destination"), "{text}");
    assert!(text.contains(&format!("last diff     pass {second} (initial, incomplete)")), "{text}");
    assert!(text.contains("acknowledged  true, at "), "{text}");
    assert!(text.contains(&format!("pass {first}  sent true  acknowledged")), "{text}");

    let failing = explain_json(&app, "failing", &[]).await;
    let a = &failing["computations"][0];
    assert_eq!((&a["member"], &a["delivery"], &a["attempts"]), (&json!(true), &json!("pending"), &json!(1)));
    assert_eq!((&a["desired"], &a["synced"], &a["quarantined_at"]), (&json!("true"), &Value::Null, &Value::Null));
    assert!(a["last_error"].as_str().unwrap().starts_with("HTTP 400: no such user"), "{a}");
    assert!(a["first_sent_at"].is_string(), "a refused request may have landed: {a}");
    assert_eq!(a["history"][0]["http_status"], 400, "{a}");
    assert_eq!(a["history"][0]["acknowledged"], false);
    let text = explain_text(&app, "failing").await;
    assert!(text.contains("member; pending after failures"), "{text}");
    assert!(text.contains("attempts      1 failed, last error: HTTP 400: no such user"), "{text}");
    assert!(text.contains("acknowledged  nothing yet"), "{text}");
    assert!(text.contains(&format!("pass {second}  sent true  failed: HTTP 400: no such user")), "{text}");

    let exited = explain_json(&app, "exited", &[]).await;
    let a = &exited["computations"][0];
    assert_eq!((&a["member"], &a["delivery"]), (&json!(false), &json!("synced")));
    assert_eq!((&a["desired"], &a["synced"]), (&json!("false"), &json!("false")));
    let sent: Vec<(&Value, &Value)> =
        a["history"].as_array().unwrap().iter().map(|h| (&h["run_id"], &h["value"])).collect();
    assert_eq!(sent, [(&json!(second), &json!("false")), (&json!(first), &json!("true"))], "newest first: {a}");
    assert!(explain_text(&app, "exited").await.contains("not a member; acknowledged by the destination"));

    let quarantined = explain_json(&app, "quarantined", &[]).await;
    let a = &quarantined["computations"][0];
    assert_eq!((&a["member"], &a["delivery"], &a["attempts"]), (&json!(true), &json!("quarantined"), &json!(2)));
    assert!(a["quarantined_at"].is_string(), "{a}");
    let statuses: Vec<&Value> = a["history"].as_array().unwrap().iter().map(|h| &h["http_status"]).collect();
    assert_eq!(statuses, [&json!(400), &json!(400)], "refused in both passes: {a}");
    let text = explain_text(&app, "quarantined").await;
    assert!(text.contains("member; quarantined"), "{text}");
    assert!(text.contains("quarantined   since "), "{text}");

    let stranger = explain_json(&app, "stranger", &[]).await;
    let a = &stranger["computations"][0];
    assert_eq!((&a["member"], &a["delivery"], &a["desired"]), (&json!(false), &json!("none"), &Value::Null));
    assert_eq!(a["history"], json!([]));
    assert_eq!(a["last_diff"]["run_id"], second, "the state is as of that diff all the same");
    let text = explain_text(&app, "stranger").await;
    assert!(text.contains("not a member; not in the state"), "{text}");
    assert!(text.contains("no delivery recorded in the last 7 days"), "{text}");
}

#[tokio::test]
async fn explain_covers_every_computation_or_the_named_ones() {
    let server = contentstack_server().await;
    let computations = format!("{}{}", audience("A", "a.csv"), computed_trait("Score", "s.ndjson"));
    let app = TestApp::contentstack(&server, 2, &computations);
    app.write("a.csv", &csv_users(&["u1"]));
    app.write("s.ndjson", "{\"user_id\":\"u1\",\"value\":\"gold\"}\n");
    assert_success(&app.sync(&[]).await);

    let all = explain_json(&app, "u1", &[]).await;
    let keys: Vec<&Value> = all["computations"].as_array().unwrap().iter().map(|c| &c["key"]).collect();
    assert_eq!(keys, [&json!("a"), &json!("score")]);
    let score = &all["computations"][1];
    assert_eq!(
        (&score["kind"], &score["member"], &score["desired"]),
        (&json!("computed_trait"), &json!(true), &json!("\"gold\""))
    );
    let text = explain_text(&app, "u1").await;
    assert!(text.contains("score (computed trait \"Score\"): value \"gold\"; acknowledged"), "{text}");
    assert!(text.contains("history       not kept (set [state] keep_history_days)"), "{text}");

    let one = explain_json(&app, "u1", &["--audience", "score"]).await;
    assert_eq!(one["computations"].as_array().unwrap().len(), 1);
    assert_eq!(one["computations"][0]["key"], "score");
    let unknown = app.run(&["explain", "--user", "u1", "--audience", "nope"]).await;
    assert_failure(&unknown);
    assert!(stderr(&unknown).contains("no computation has key \"nope\""), "{}", stderr(&unknown));
}

#[tokio::test]
async fn explain_without_a_state_file_says_so_and_creates_none() {
    let app = TestApp::new("[destination]\ntype = \"file\"\npath = \"out.ndjson\"\n", &audience("A", "a.csv"));
    let text = explain_text(&app, "u1").await;
    assert!(text.contains("no state file at ") && text.contains("nothing was synced"), "{text}");
    let json = explain_json(&app, "u1", &[]).await;
    assert_eq!(json["state_exists"], false);
    let a = &json["computations"][0];
    assert_eq!((&a["member"], &a["delivery"], &a["last_diff"]), (&json!(false), &json!("none"), &Value::Null));
    assert!(!app.state_created().await, "explain only reads");
}

const MEMBERS: usize = 400;
const ANSWERED: u64 = 100;

#[tokio::test]
async fn explain_finds_a_user_a_running_or_stopped_first_sync_still_has_to_send() {
    let server = destination_that_stalls_after(ANSWERED).await;
    let app = keeping_history(TestApp::contentstack(&server, 4, &audience("Big", "big.csv")), 7)
        .replace_in_config("request_timeout_secs = 20", "request_timeout_secs = 2");
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("user-{i:04}")).collect();
    app.write("big.csv", &csv_users(&users.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut child = app.command(&["sync"]).spawn().unwrap();
    wait_until(60, "requests to stall", || async { server.received_requests().await.unwrap().len() as u64 > ANSWERED })
        .await;

    // While the first sync runs: the last user is still to send, the first was acknowledged.
    let last = explain_json(&app, "user-0399", &[]).await;
    let a = &last["computations"][0];
    assert_eq!((&a["member"], &a["delivery"], &a["desired"]), (&json!(true), &json!("queued"), &Value::Null));
    assert_eq!(a["first_sync_queued"]["value"], "true", "{a}");
    assert!(a["first_sync_queued"]["queued_at"].is_string(), "{a}");
    assert_eq!((&a["last_diff"]["mode"], &a["last_diff"]["status"]), (&json!("initial"), &json!("running")));
    let text = explain_text(&app, "user-0399").await;
    assert!(text.contains("big (audience \"Big\"): member; still to send in a first sync"), "{text}");
    assert!(text.contains("first sync    still to send true (queued "), "{text}");
    let first = explain_json(&app, "user-0000", &[]).await;
    assert_eq!(first["computations"][0]["delivery"], "synced", "{first}");
    assert_eq!(
        first["computations"][0]["history"][0]["acknowledged"], true,
        "a first sync's answers are kept: {first}"
    );

    terminate(&child);
    wait_exit(&mut child, 60).await;
    let stopped = explain_json(&app, "user-0399", &[]).await;
    let a = &stopped["computations"][0];
    assert_eq!((&a["delivery"], &a["first_sync_queued"]["value"]), (&json!("queued"), &json!("true")), "{a}");
    assert_ne!(a["last_diff"]["status"], "running", "the stopped pass was closed: {a}");
}

/// What one pass sent, as the README asks it.
const SENT_BY_PASS: &str = "SELECT user_id, computation_key, value, answered_at, acknowledged, http_status, error \
     FROM delivery_history WHERE run_id = $1 ORDER BY id";

/// A row of `SENT_BY_PASS`.
type Sent = (String, String, String, String, i64, Option<i64>, Option<String>);

#[tokio::test]
async fn history_is_kept_only_when_asked_and_lists_what_a_pass_sent() {
    let (_server, app) = two_passes(None).await;
    let db = app.db().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_history").fetch_one(&db).await.unwrap();
    assert_eq!(rows, 0, "off by default");
    assert_eq!(explain_json(&app, "synced", &[]).await["computations"][0]["history"], json!([]));

    let (_server, app) = two_passes(Some(7)).await;
    let [first, second] = run_ids(&app).await[..] else { panic!("two passes") };
    let db = app.db().await;
    let sent = |run: i64| {
        let db = db.clone();
        async move {
            let rows: Vec<Sent> = sqlx::query_as(SENT_BY_PASS).bind(run).fetch_all(&db).await.unwrap();
            for (_, key, _, _, acknowledged, _, error) in &rows {
                assert_eq!((key.as_str(), *acknowledged == 1), ("a", error.is_none()));
            }
            let mut rows: Vec<(String, String, Option<i64>)> =
                rows.into_iter().map(|(user, _, value, _, _, status, _)| (user, value, status)).collect();
            rows.sort();
            rows
        }
    };
    let row = |user: &str, value: &str, status: Option<i64>| (user.to_string(), value.to_string(), status);
    assert_eq!(
        sent(first).await,
        [row("exited", "true", None), row("quarantined", "true", Some(400)), row("synced", "true", None)]
    );
    assert_eq!(
        sent(second).await,
        [row("exited", "false", None), row("failing", "true", Some(400)), row("quarantined", "true", Some(400))]
    );
}

#[tokio::test]
async fn a_pass_prunes_history_older_than_the_days_kept() {
    let app = keeping_history(
        TestApp::new("[destination]\ntype = \"file\"\npath = \"out.ndjson\"\n", &audience("A", "a.csv")),
        2,
    );
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    assert_success(&app.sync(&[]).await);

    // Entries as old as a day less and a day more than kept, written as a pass would have.
    let at = |hours: i64| {
        (chrono::Utc::now() - chrono::TimeDelta::hours(hours)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let db = app.state_rw().await;
    for (user, hours) in [("old-1", 72), ("old-2", 49), ("recent", 24)] {
        sqlx::query(
            "INSERT INTO delivery_history (run_id, computation_key, user_id, value, answered_at) VALUES (1, 'a', $1, 'true', $2)",
        )
        .bind(user)
        .bind(at(hours))
        .execute(&db)
        .await
        .unwrap();
    }
    db.close().await;

    assert_success(&app.sync(&[]).await);
    let users: Vec<String> = sqlx::query_scalar("SELECT user_id FROM delivery_history ORDER BY user_id")
        .fetch_all(&app.db().await)
        .await
        .unwrap();
    assert_eq!(users, ["recent", "u1", "u2"], "the entries older than two days are gone");
}
