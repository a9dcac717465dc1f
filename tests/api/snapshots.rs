//! A snapshot that does not load whole changes nothing and sends nothing for its computation,
//! names the file and line, and does not stop the other computations (DESIGN §9.2).

use serde_json::json;

use crate::helpers::*;

/// An app with a healthy audience "Good" and an audience "Bad" whose snapshot the test breaks,
/// after an initial sync of both.
async fn app_with_initial_sync(server: &wiremock::MockServer, bad_file: &str) -> TestApp {
    let app =
        TestApp::contentstack(server, 4, &format!("{}{}", audience("Good", "good.csv"), audience("Bad", bad_file)));
    app.write("good.csv", &csv_users(&["g1"]));
    let initial = if bad_file.ends_with(".ndjson") {
        "{\"user_id\":\"b1\"}\n{\"user_id\":\"b2\"}\n".to_string()
    } else {
        csv_users(&["b1", "b2"])
    };
    app.write(bad_file, &initial);
    assert_success(&app.sync(&[]).await);
    server.reset().await;
    acknowledge_all(server).await;
    app
}

/// Breaks the "Bad" snapshot with `content` (or deletes it), syncs, and checks the promise.
/// Returns the error output for the caller's own checks.
async fn assert_bad_snapshot_changes_nothing(bad_file: &str, content: Option<&str>, expect_in_error: &str) -> String {
    let server = contentstack_server().await;
    let app = app_with_initial_sync(&server, bad_file).await;
    let before = app.memberships().await;

    // The good audience changes at the same time and must still sync.
    app.write("good.csv", &csv_users(&["g1", "g2"]));
    match content {
        Some(c) => app.write(bad_file, c),
        None => std::fs::remove_file(app.path(bad_file)).unwrap(),
    }
    let out = app.sync(&[]).await;
    assert_failure(&out);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains(expect_in_error), "expected {expect_in_error:?} in:\n{text}");
    assert!(stderr(&out).contains("bad (snapshot failed)"), "{}", stderr(&out));

    // Nothing sent for "bad", the good change delivered.
    assert_eq!(received(&server).await, vec![("g2".into(), json!({"good": true}))]);
    // The bad audience's rows are exactly as before; the good one gained g2.
    let after = app.memberships().await;
    let bad_rows = |rows: &[Row]| rows.iter().filter(|r| r.0 == "bad").cloned().collect::<Vec<_>>();
    assert_eq!(bad_rows(&after), bad_rows(&before));
    assert_eq!(after.len(), before.len() + 1);

    let db = app.db().await;
    let (status, error): (String, String) =
        sqlx::query_as("SELECT status, error FROM sync_runs WHERE computation_key = 'bad' ORDER BY id DESC LIMIT 1")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.contains(expect_in_error), "{error}");
    text
}

#[tokio::test]
async fn missing_snapshot_file() {
    let text = assert_bad_snapshot_changes_nothing("bad.csv", None, "bad.csv: cannot open snapshot").await;
    assert!(text.contains("No such file"), "{text}");
}

#[tokio::test]
async fn header_without_user_id() {
    assert_bad_snapshot_changes_nothing("bad.csv", Some("id\nb1\n"), "bad.csv:1: header: no user_id column").await;
}

#[tokio::test]
async fn broken_csv_line() {
    assert_bad_snapshot_changes_nothing(
        "bad.csv",
        Some("user_id,email\nb1,x\nb2\n"),
        "bad.csv:3: row has 1 fields, the header has 2",
    )
    .await;
}

#[tokio::test]
async fn half_written_ndjson_line() {
    assert_bad_snapshot_changes_nothing(
        "bad.ndjson",
        Some("{\"user_id\":\"b1\"}\n{\"user_"),
        "bad.ndjson:2: not a JSON object",
    )
    .await;
}

/// Review finding: a NUL in a user id cut it short in the `pending` view's JSON, showing a
/// user who does not exist.
#[tokio::test]
async fn a_user_id_with_a_control_character_names_the_line() {
    assert_bad_snapshot_changes_nothing(
        "bad.ndjson",
        Some("{\"user_id\":\"b1\"}\n{\"user_id\":\"b\\u00002\"}\n"),
        "bad.ndjson:2: user_id: user_id holds the control character U+0000",
    )
    .await;
}

#[tokio::test]
async fn empty_user_id() {
    assert_bad_snapshot_changes_nothing(
        "bad.csv",
        Some("user_id,email\nb1,x\n,y\n"),
        "bad.csv:3: user_id: user_id is empty",
    )
    .await;
}

#[tokio::test]
async fn user_listed_twice_names_the_user_and_both_lines() {
    assert_bad_snapshot_changes_nothing(
        "bad.csv",
        Some("user_id\nb2\nb9\nb1\nb9\n"),
        "bad.csv:5: user_id: user \"b9\" is listed twice (lines 3 and 5)",
    )
    .await;
}

/// An app whose audience "Big" (big.csv, not written yet) sorts in a 1 MB buffer, and 30,000
/// users for it: enough to spill several sorted runs to temp files.
fn spilling_app(server: &wiremock::MockServer) -> (TestApp, Vec<String>) {
    let app = TestApp::contentstack(server, 4, &audience("Big", "big.csv"));
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    app.write("config.toml", &format!("[sync]\nsort_buffer_mb = 1\n{config}"));
    (app, (0..30_000).map(|i| format!("user-{i:06}")).collect())
}

#[tokio::test]
async fn duplicate_found_after_spilling_to_temp_files_still_changes_nothing() {
    // A tiny sort buffer forces the snapshot through sorted runs on disk; the duplicate is then
    // found while the diff is already writing, and the whole diff must roll back.
    let server = contentstack_server().await;
    let (app, users) = spilling_app(&server);
    let mut with_dup: Vec<&str> = users.iter().map(String::as_str).collect();
    with_dup.push("user-029999");
    app.write("big.csv", &csv_users(&with_dup));

    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(stdout(&out).contains("user \"user-029999\" is listed twice (lines 30001 and 30002)"), "{}", stdout(&out));
    assert!(app.memberships().await.is_empty());
    assert!(received(&server).await.is_empty());
}

/// The sort spills its runs on threads of their own (two at once), and a first sync spools its
/// entries: where the temp files cannot be written, the load fails saying why, and nothing is
/// written or sent.
#[tokio::test]
async fn a_snapshot_whose_temp_files_cannot_be_written_changes_nothing() {
    let server = contentstack_server().await;
    let (app, users) = spilling_app(&server);
    let mut listed: Vec<&str> = users.iter().map(String::as_str).collect();
    app.write("big.csv", &csv_users(&listed));
    let without_tmp = async || {
        let mut sync = app.command(&["sync"]);
        sync.env("TMPDIR", app.path("no-such-directory"));
        let out = tokio::task::spawn_blocking(move || sync.output().unwrap()).await.unwrap();
        assert_failure(&out);
        stdout(&out)
    };

    let said = without_tmp().await;
    assert!(said.contains("cannot create the first sync's spool") && said.contains("no-such-directory"), "{said}");
    assert!(app.memberships().await.is_empty());
    assert!(received(&server).await.is_empty());

    assert_success(&app.sync(&[]).await);
    let sent = received(&server).await.len();
    listed.push("user-new");
    app.write("big.csv", &csv_users(&listed));
    let said = without_tmp().await;
    assert!(said.contains("big.csv") && said.contains("No such file or directory"), "{said}");
    assert!(said.contains("cannot spill to a temp file in") || said.contains("cannot sort (temp files in"), "{said}");
    assert!(said.contains("no-such-directory"), "{said}");
    assert_eq!(app.memberships().await.len(), 30_000);
    assert_eq!(app.pending_count().await, 0);
    assert_eq!(received(&server).await.len(), sent);
}

/// Issue 13.14: a corrupt export whose one line holds hundreds of megabytes used to be read
/// whole into memory and its "user id" sent. It fails the load, naming the file and the line.
#[tokio::test]
async fn a_line_longer_than_the_limit_fails_the_load_before_it_is_buffered() {
    let giant = format!("user_id\nb1\n{}\n", "x".repeat(8 << 20));
    let err = assert_bad_snapshot_changes_nothing("bad.csv", Some(&giant), "bad.csv").await;
    assert!(err.contains("line 3 is longer than 1048576 bytes"), "{err}");
    let giant = format!("{{\"user_id\":\"b1\"}}\n{{\"user_id\":\"{}\"}}\n", "x".repeat(8 << 20));
    let err = assert_bad_snapshot_changes_nothing("bad.ndjson", Some(&giant), "bad.ndjson").await;
    assert!(err.contains("line 2 is longer than 1048576 bytes"), "{err}");
}

#[tokio::test]
async fn a_user_id_longer_than_max_user_id_bytes_names_the_line() {
    let long = format!("user_id\nb1\n{}\n", "u".repeat(1025));
    let err = assert_bad_snapshot_changes_nothing("bad.csv", Some(&long), "bad.csv:3: user_id").await;
    assert!(err.contains("1025 bytes, more than max_user_id_bytes = 1024"), "{err}");
}
