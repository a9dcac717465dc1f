//! Delivery over a network that fails: retries, throttling, permanent errors, timeouts,
//! bounded concurrency, quarantine (DESIGN §5, §9).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::*;

/// Answers each request in turn from `answers`, then 200; notes when each request arrived.
struct Script {
    answers: Mutex<Vec<ResponseTemplate>>,
    arrivals: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Respond for Script {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let (user, _) = user_and_body(request);
        self.arrivals.lock().unwrap().push((Instant::now(), user));
        let mut answers = self.answers.lock().unwrap();
        if answers.is_empty() { ResponseTemplate::new(200) } else { answers.remove(0) }
    }
}

async fn scripted(answers: Vec<ResponseTemplate>) -> (MockServer, Arc<Mutex<Vec<(Instant, String)>>>) {
    let server = MockServer::start().await;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("PATCH"))
        .respond_with(Script { answers: Mutex::new(answers), arrivals: arrivals.clone() })
        .mount(&server)
        .await;
    (server, arrivals)
}

async fn last_run(app: &TestApp) -> (String, i64, i64, i64, i64) {
    let db = app.db().await;
    sqlx::query_as("SELECT status, delivered, retried, failed, quarantined FROM sync_runs ORDER BY id DESC LIMIT 1")
        .fetch_one(&db)
        .await
        .unwrap()
}

#[tokio::test]
async fn server_error_then_success_is_retried_within_the_pass() {
    let (server, arrivals) = scripted(vec![ResponseTemplate::new(500).set_body_string("oops")]).await;
    let app = TestApp::contentstack(&server, 1, &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1"]));
    assert_success(&app.sync(&[]).await);
    let users: Vec<String> = arrivals.lock().unwrap().iter().map(|(_, u)| u.clone()).collect();
    assert_eq!(users, ["u1", "u1"]);
    assert_eq!(last_run(&app).await, ("ok".into(), 1, 1, 0, 0));
    assert_eq!(app.pending_count().await, 0);
}

#[tokio::test]
async fn throttling_with_retry_after_waits_before_anything_is_sent_again() {
    let throttle = ResponseTemplate::new(429).insert_header("retry-after", "1");
    let (server, arrivals) = scripted(vec![throttle]).await;
    let app = TestApp::contentstack(&server, 1, &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1", "u2", "u3"]));
    assert_success(&app.sync(&[]).await);

    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 4, "three users, one of them twice");
    assert_eq!(arrivals[0].1, arrivals[1].1, "the throttled user is sent again");
    let gap = arrivals[1].0 - arrivals[0].0;
    assert!(gap >= Duration::from_secs(1), "the next request came {gap:?} after the 429, before Retry-After");
    assert_eq!(last_run(&app).await, ("ok".into(), 3, 1, 0, 0));
}

#[tokio::test]
async fn permanent_400_and_422_are_recorded_per_row_while_the_others_are_delivered() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(header("x-cs-personalize-user-uid", "u2"))
        .respond_with(ResponseTemplate::new(400).set_body_string("bad user"))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(header("x-cs-personalize-user-uid", "u3"))
        .respond_with(ResponseTemplate::new(422).set_body_string("unknown attribute"))
        .mount(&server)
        .await;
    acknowledge_all(&server).await;
    let app = TestApp::contentstack(&server, 4, &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1", "u2", "u3", "u4"]));
    assert_failure(&app.sync(&[]).await);

    // Permanent errors are not retried within the pass: one request per user.
    assert_eq!(server.received_requests().await.unwrap().len(), 4);
    let db = app.db().await;
    let pending: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT user_id, attempts, last_error FROM pending ORDER BY user_id")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(
        pending,
        vec![("u2".into(), 1, "HTTP 400: bad user".into()), ("u3".into(), 1, "HTTP 422: unknown attribute".into())]
    );
    assert_eq!(last_run(&app).await, ("incomplete".into(), 2, 0, 2, 0));
}

#[tokio::test]
async fn a_request_that_times_out_is_retried_then_left_pending() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let app = TestApp::contentstack_at(&server.uri(), 1, "max_retries = 1\n", &audience("A", "a.csv"));
    let config = std::fs::read_to_string(app.config_path())
        .unwrap()
        .replace("request_timeout_secs = 20", "request_timeout_secs = 0.2");
    app.write("config.toml", &config);
    app.write("a.csv", &csv_users(&["u1"]));
    assert_failure(&app.sync(&[]).await);
    let db = app.db().await;
    let error: String = sqlx::query_scalar("SELECT last_error FROM pending").fetch_one(&db).await.unwrap();
    assert!(error.starts_with("request timed out"), "{error}");
    assert!(error.ends_with("(retries exhausted after 1 retries)"), "{error}");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_row_failing_on_quarantine_after_passes_is_set_aside_until_its_value_changes() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(header("x-cs-personalize-user-uid", "u2"))
        .respond_with(ResponseTemplate::new(400).set_body_string("rejected"))
        .mount(&server)
        .await;
    acknowledge_all(&server).await;
    let app =
        TestApp::contentstack_at(&server.uri(), 2, "quarantine_after = 2\n", &computed_trait("Score", "s.ndjson"));
    app.write("s.ndjson", "{\"user_id\":\"u1\",\"value\":1}\n{\"user_id\":\"u2\",\"value\":2}\n");

    assert_failure(&app.sync(&[]).await);
    assert_eq!(last_run(&app).await.4, 0);
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert_eq!(last_run(&app).await.4, 1, "quarantined on the second failed pass");
    assert!(stdout(&out).contains("1 quarantined"), "{}", stdout(&out));
    let db = app.db().await;
    let quarantined: Vec<(String, i64)> =
        sqlx::query_as("SELECT user_id, attempts FROM quarantined").fetch_all(&db).await.unwrap();
    assert_eq!(quarantined, vec![("u2".into(), 2)]);
    let status: i64 = sqlx::query_scalar("SELECT quarantined FROM computation_status").fetch_one(&db).await.unwrap();
    assert_eq!(status, 1);

    // A third pass does not send it again.
    let before = server.received_requests().await.unwrap().len();
    assert_failure(&app.sync(&[]).await);
    assert_eq!(server.received_requests().await.unwrap().len(), before);

    // A new value releases it.
    app.write("s.ndjson", "{\"user_id\":\"u1\",\"value\":1}\n{\"user_id\":\"u2\",\"value\":3}\n");
    server.reset().await;
    acknowledge_all(&server).await;
    assert_success(&app.sync(&[]).await);
    assert_eq!(received(&server).await, vec![("u2".into(), json!({"score": 3}))]);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantined").fetch_one(&db).await.unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn requests_in_flight_never_exceed_concurrency() {
    use std::sync::atomic::Ordering;

    use crate::counting_server::CountingServer;

    let server = CountingServer::start(Duration::from_millis(20)).await;
    let app = TestApp::contentstack_at(&server.uri, 3, "", &audience("A", "a.csv"));
    let users: Vec<String> = (0..60).map(|i| format!("u{i:02}")).collect();
    app.write("a.csv", &csv_users(&users.iter().map(String::as_str).collect::<Vec<_>>()));
    assert_success(&app.sync(&[]).await);
    assert_eq!(server.requests.load(Ordering::SeqCst), 60);
    // Reached (the delay keeps requests overlapping) and never exceeded.
    let max = server.max_in_flight.load(Ordering::SeqCst);
    assert!((2..=3).contains(&max), "{max} requests were in flight at once");
}

#[tokio::test]
async fn with_a_proxy_in_the_environment_contentstack_updates_go_through_it() {
    let proxy = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(header("x-cs-personalize-user-uid", "u1"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&proxy)
        .await;
    // The edge's name does not resolve: only the proxy can carry the update.
    let app = TestApp::contentstack_at("http://personalize-edge.invalid", 1, "", &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1"]));
    let mut sync = app.command(&["sync"]);
    sync.env("http_proxy", proxy.uri());
    let out = tokio::task::spawn_blocking(move || sync.output().unwrap()).await.unwrap();
    assert_success(&out);
    let requests = proxy.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].url.host_str(), Some("personalize-edge.invalid"), "asked of the proxy for the edge");
}

/// The daemon runs one pass per computation side by side: together they still keep to the
/// destination's `concurrency`.
#[tokio::test]
async fn passes_side_by_side_in_the_daemon_share_the_destinations_concurrency() {
    use std::sync::atomic::Ordering;

    use crate::counting_server::CountingServer;

    let server = CountingServer::start(Duration::from_millis(20)).await;
    let computations: String = (0..3).map(|i| audience(&format!("A{i}"), &format!("a{i}.csv"))).collect();
    let app = TestApp::contentstack_at(&server.uri, 3, "", &computations);
    for i in 0..3 {
        let users: Vec<String> = (0..40).map(|u| format!("a{i}-u{u:02}")).collect();
        app.write(&format!("a{i}.csv"), &csv_users(&users.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    let mut daemon = app.command(&["run"]).spawn().unwrap();
    wait_until(60, "every member to be delivered", || async { server.requests.load(Ordering::SeqCst) >= 120 }).await;
    terminate(&daemon);
    assert!(wait_exit(&mut daemon, 30).await.success());
    let max = server.max_in_flight.load(Ordering::SeqCst);
    assert!((2..=3).contains(&max), "{max} requests were in flight at once");
}

/// The retry budget counts from delivery: a slow load of one computation used to spend it, and
/// the others' transient failures then got no retry at all.
#[tokio::test]
async fn a_slow_load_does_not_spend_the_retry_budget_of_the_others() {
    let edge = MockServer::start().await;
    Mock::given(method("PATCH")).respond_with(ResponseTemplate::new(500)).up_to_n_times(2).mount(&edge).await;
    acknowledge_all(&edge).await;
    let source = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string("{\"user_id\":\"s1\"}\n").set_delay(Duration::from_secs(3)),
        )
        .mount(&source)
        .await;
    let slow =
        format!("[[audience]]\nname = \"Slow\"\nsource = {{ type = \"http\", url = \"{}/s.ndjson\" }}\n", source.uri());
    let app = TestApp::contentstack_at(
        &edge.uri(),
        1,
        "retry_budget_secs = 2\n",
        &format!("{slow}{}", audience("Good", "g.csv")),
    );
    app.write("g.csv", &csv_users(&["g1"]));
    assert_success(&app.sync(&[]).await);
    assert_eq!(app.pending_count().await, 0);
}
