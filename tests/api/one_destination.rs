//! One state serves one destination (DESIGN §10): a config pointed at another destination is
//! refused before it sends or records anything, until a resync of everything moves the state.

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

/// An app synced once to a Contentstack stand-in (u1), then pointed at `other` with u2 added.
async fn synced_then_pointed_elsewhere(first: &MockServer, other: &MockServer) -> TestApp {
    let app = TestApp::contentstack(first, 2, &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1"]));
    assert_success(&app.sync(&[]).await);
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    app.replace_in_config(&first.uri(), &other.uri())
}

async fn rows(app: &TestApp) -> Vec<Row> {
    let mut rows = app.memberships().await;
    rows.sort();
    rows
}

#[tokio::test]
async fn a_pass_to_another_destination_is_refused_and_neither_sends_nor_records() {
    let (first, other) = (contentstack_server().await, contentstack_server().await);
    let app = synced_then_pointed_elsewhere(&first, &other).await;
    let before = rows(&app).await;
    let dry = app.sync(&["--dry-run"]).await;
    assert_failure(&dry);
    assert!(stderr(&dry).contains(&format!("synced to contentstack {}", first.uri())), "{}", stderr(&dry));

    let out = app.sync(&[]).await;
    assert_failure(&out);
    let err = stderr(&out);
    assert!(err.contains(&format!("synced to contentstack {}", first.uri())), "{err}");
    assert!(err.contains(&other.uri()) && err.contains("resync"), "{err}");
    assert!(received(&other).await.is_empty(), "nothing may reach the other destination");
    assert_eq!(received(&first).await.len(), 1);
    assert_eq!(rows(&app).await, before, "the refused pass records nothing");
}

#[tokio::test]
async fn a_daemon_pointed_at_another_destination_does_not_start() {
    let (first, other) = (contentstack_server().await, contentstack_server().await);
    let app = synced_then_pointed_elsewhere(&first, &other).await;

    let mut daemon = app.command(&["run"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Killed if it does not exit: an old daemon would run on, and keep the test's pipes open.
    let waited = tokio::time::timeout(std::time::Duration::from_secs(30), wait_exit(&mut daemon, 60)).await;
    let _ = daemon.kill();
    let status = waited.expect("the daemon did not exit within 30 s");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains(&format!("synced to contentstack {}", first.uri())), "{err}");
    assert!(received(&other).await.is_empty());
}

#[tokio::test]
async fn a_resync_of_everything_moves_the_state_and_sends_it_all_but_a_partial_one_does_not() {
    let (first, other) = (contentstack_server().await, contentstack_server().await);
    let app = synced_then_pointed_elsewhere(&first, &other).await;

    assert_failure(&app.run(&["resync", "--user", "u1"]).await);
    assert!(received(&other).await.is_empty(), "one user's resync cannot move the state");
    assert_success(&app.run(&["resync"]).await);
    let sent: Vec<String> = sorted(received(&other).await).into_iter().map(|(user, _)| user).collect();
    assert_eq!(sent, ["u1", "u2"], "the new destination gets the whole picture");
    assert_eq!(app.pending_count().await, 0);

    let back = app.replace_in_config(&other.uri(), &first.uri());
    let out = back.sync(&[]).await;
    assert_failure(&out);
    assert!(stderr(&out).contains(&format!("synced to contentstack {}", other.uri())), "{}", stderr(&out));
    assert_eq!(received(&first).await.len(), 1);
}

#[tokio::test]
async fn segment_sources_with_other_write_keys_are_other_destinations_and_no_key_is_shown() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/v1/batch")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let app = TestApp::segment(&server, "", &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1"]));
    assert_success(&app.sync(&[]).await);
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    let other_key = "wk_other_s3cret";

    let out = app.command(&["sync"]).env(WRITE_KEY_ENV, other_key).output().unwrap();
    assert_failure(&out);
    let err = stderr(&out);
    assert!(err.contains("synced to segment"), "{err}");
    assert!(!err.contains(WRITE_KEY) && !err.contains(other_key), "no write key in: {err}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "u2 went nowhere");
}

#[tokio::test]
async fn a_state_from_before_the_destination_was_recorded_takes_the_configured_one() {
    let (first, other) = (contentstack_server().await, contentstack_server().await);
    let app = synced_then_pointed_elsewhere(&first, &other).await;
    let state = app.state_rw().await;
    sqlx::query("DELETE FROM state_destination").execute(&state).await.unwrap();
    state.close().await;

    assert_success(&app.sync(&[]).await);
    let sent: Vec<String> = received(&other).await.into_iter().map(|(user, _)| user).collect();
    assert_eq!(sent, ["u2"]);
}
