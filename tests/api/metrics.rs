//! What an SRE's tools read of the daemon: `/metrics` and `/healthz` (issue 16).

use std::io::Write;
use std::time::Duration;

use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

/// The daemon of `app`, serving metrics on a free port: the child and the port.
fn daemon_with_metrics(app: &TestApp) -> (std::process::Child, u16) {
    let port = free_port();
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    app.write("config.toml", &format!("{config}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    (app.command(&["run"]).spawn().unwrap(), port)
}

/// A client that gives up after `secs`: an answer held up by another connection fails.
fn client(secs: u64) -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(secs)).build().unwrap()
}

/// `GET path` on loopback `port`: status and body, `None` when nothing answered.
async fn get(client: &reqwest::Client, port: u16, path: &str) -> Option<(u16, String)> {
    let response = client.get(format!("http://127.0.0.1:{port}{path}")).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The value of the series `line` (name and labels, as printed) in a scrape, if present.
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until the series reads `expected`, failing with the last scrape.
async fn wait_for_series(port: u16, series: &str, expected: f64) {
    let client = client(10);
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, body)) = get(&client, port, "/metrics").await {
            if value(&body, series) == Some(expected) {
                return;
            }
            last = body;
        }
        assert!(std::time::Instant::now() < deadline, "{series} never read {expected}; last scrape:\n{last}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_scrape_and_a_health_check_answer_while_clients_hold_connections_saying_nothing() {
    let server = contentstack_server().await;
    let app = TestApp::contentstack(&server, 2, &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1"]));
    let (mut daemon, port) = daemon_with_metrics(&app);
    wait_for_series(port, "audience_sync_passes_total{computation=\"a\",result=\"ok\"}", 1.0).await;

    // Silent clients: one says nothing at all, one stops halfway through its request line.
    let silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut halfway = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    halfway.write_all(b"GET /metr").unwrap();
    // Each answer must come well within the time a one-connection-at-a-time server would
    // wait for the silent ones (five seconds each, before).
    let quick = client(3);
    for _ in 0..3 {
        let (status, body) = get(&quick, port, "/metrics").await.expect("a scrape answers beside stalled clients");
        assert_eq!(status, 200);
        assert!(body.contains("audience_sync_delivered_total{computation=\"a\"} 1"), "{body}");
        let (status, body) = get(&quick, port, "/healthz").await.expect("a health check answers beside them");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
    drop((silent, halfway));
    terminate(&daemon);
    assert!(wait_exit(&mut daemon, 30).await.success());
}

/// A Contentstack stand-in: u3 always answers 500, u4 is throttled once (429), the rest 200.
async fn picky_server() -> MockServer {
    let server = MockServer::start().await;
    let user = |id: &'static str| header("x-cs-personalize-user-uid", id);
    Mock::given(method("PATCH"))
        .and(user("u3"))
        .respond_with(ResponseTemplate::new(500).set_body_string("down"))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(user("u4"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    acknowledge_all(&server).await;
    server
}

#[tokio::test]
async fn the_series_reflect_the_passes_requests_retries_and_guard() {
    let server = picky_server().await;
    let guarded = "[[audience]]\nname = \"C\"\nsource = { type = \"file\", path = \"c.csv\" }\n\
                   guard_min_members = 2\nschedule = \"* * * * * *\"\n";
    let computations = [audience("A", "a.csv"), audience("B", "missing.csv"), guarded.to_string()].concat();
    let app = TestApp::contentstack_at(&server.uri(), 1, "max_retries = 2\n", &computations);
    // C's members are told first, by a command; then its snapshot loses them all but one.
    app.write("c.csv", &csv_users(&["c1", "c2", "c3"]));
    assert_success(&app.sync(&["--audience", "c"]).await);
    app.write("c.csv", &csv_users(&["c1"]));
    app.write("a.csv", &csv_users(&["u1", "u2", "u3", "u4"]));
    let (mut daemon, port) = daemon_with_metrics(&app);

    wait_for_series(port, "audience_sync_passes_total{computation=\"a\",result=\"incomplete\"}", 1.0).await;
    wait_for_series(port, "audience_sync_passes_total{computation=\"b\",result=\"failed\"}", 1.0).await;
    wait_for_series(port, "audience_sync_mass_exit_guard_holding{computation=\"c\"}", 1.0).await;
    let (_, body) = get(&client(10), port, "/metrics").await.unwrap();
    let contentstack = |name: &str, class: &str| {
        let labels = if class.is_empty() { String::new() } else { format!(",class=\"{class}\"") };
        value(&body, &format!("{name}{{destination=\"contentstack\"{labels}}}"))
    };
    // u1, u2 and u4's second try acknowledged; u3 three times 500 (two retries); u4's 429.
    assert_eq!(contentstack("audience_sync_destination_requests_total", "2xx"), Some(3.0), "{body}");
    assert_eq!(contentstack("audience_sync_destination_requests_total", "5xx"), Some(3.0), "{body}");
    assert_eq!(contentstack("audience_sync_destination_requests_total", "4xx"), Some(1.0), "{body}");
    assert_eq!(contentstack("audience_sync_destination_throttled_total", ""), Some(1.0), "{body}");
    assert_eq!(contentstack("audience_sync_destination_request_duration_seconds_count", ""), Some(7.0), "{body}");
    assert_eq!(contentstack("audience_sync_destination_requests_in_flight", ""), Some(0.0), "{body}");
    assert!(contentstack("audience_sync_destination_rate_limit", "").is_some_and(|r| r > 0.0), "paced: {body}");
    let a = |name: &str| value(&body, &format!("{name}{{computation=\"a\"}}"));
    assert_eq!(a("audience_sync_delivered_total"), Some(3.0), "{body}");
    assert_eq!(a("audience_sync_failed_total"), Some(1.0), "{body}");
    assert_eq!(a("audience_sync_retries_total"), Some(3.0), "{body}");
    assert_eq!(a("audience_sync_pass_pending_rows"), Some(1.0), "{body}");
    assert_eq!(a("audience_sync_pending_rows"), Some(1.0), "{body}");
    assert_eq!(a("audience_sync_snapshot_rows"), Some(4.0), "{body}");
    assert_eq!(a("audience_sync_last_pass_failed"), Some(0.0), "{body}");
    assert_eq!(a("audience_sync_schedule_interval_seconds"), Some(7200.0), "{body}");
    assert!(a("audience_sync_last_success_timestamp_seconds").is_none(), "a never ended ok: {body}");
    assert!(a("audience_sync_pass_duration_seconds").is_some_and(|s| s > 0.0), "{body}");
    assert!(a("audience_sync_snapshot_load_seconds").is_some(), "{body}");
    let b = |name: &str| value(&body, &format!("{name}{{computation=\"b\"}}"));
    assert_eq!(b("audience_sync_last_pass_failed"), Some(1.0), "{body}");
    assert_eq!(b("audience_sync_mass_exit_guard_holding"), Some(0.0), "{body}");
    // C: its one successful pass was the command's, read from the state.
    let c = |name: &str| value(&body, &format!("{name}{{computation=\"c\"}}"));
    assert!(c("audience_sync_last_success_timestamp_seconds").is_some_and(|t| t > 1.7e9), "{body}");
    assert_eq!(c("audience_sync_schedule_interval_seconds"), Some(1.0), "{body}");
    assert_eq!(value(&body, "audience_sync_state_readable"), Some(1.0), "{body}");
    terminate(&daemon);
    assert!(wait_exit(&mut daemon, 30).await.success());
}

#[tokio::test]
async fn healthz_fails_once_the_state_file_is_gone() {
    let server = contentstack_server().await;
    let app = TestApp::contentstack(&server, 2, &audience("A", "a.csv"))
        .replace_in_config("path = \"state.db\"", "path = \"state/state.db\"");
    app.write("a.csv", &csv_users(&["u1"]));
    let (mut daemon, port) = daemon_with_metrics(&app);
    wait_for_series(port, "audience_sync_passes_total{computation=\"a\",result=\"ok\"}", 1.0).await;
    let client = client(10);
    assert_eq!(get(&client, port, "/healthz").await.map(|(s, _)| s), Some(200));

    std::fs::remove_dir_all(app.path("state")).unwrap();
    let (status, body) = get(&client, port, "/healthz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("cannot read the state"), "{body}");
    wait_for_series(port, "audience_sync_state_readable", 0.0).await;
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

#[tokio::test]
async fn healthz_fails_once_the_scheduler_stops() {
    let server = slow_server(5000).await;
    let app = TestApp::contentstack(&server, 1, &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    let (mut daemon, port) = daemon_with_metrics(&app);
    wait_for_series(port, "audience_sync_destination_requests_in_flight{destination=\"contentstack\"}", 1.0).await;
    let client = client(10);
    assert_eq!(get(&client, port, "/healthz").await.map(|(s, _)| s), Some(200));

    // Shutting down, the daemon schedules nothing more while its request in flight finishes.
    terminate(&daemon);
    let stopped = Some((503, "the scheduler stopped: shutting down\n".to_string()));
    wait_until(4, "/healthz to say the scheduler stopped", || async {
        get(&client, port, "/healthz").await == stopped
    })
    .await;
    assert!(wait_exit(&mut daemon, 30).await.success());
}
