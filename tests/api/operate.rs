//! What the operator lives with: the daemon, leases, resync, status, check, dry runs, metrics.

use std::collections::HashMap;
use std::process::Stdio;

use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

/// Users received so far, with how many times each.
async fn counts(server: &MockServer) -> HashMap<String, usize> {
    let mut sent = HashMap::new();
    for (user, _) in received(server).await {
        *sent.entry(user).or_default() += 1;
    }
    sent
}

fn many(n: usize) -> String {
    let ids: Vec<String> = (0..n).map(|i| format!("user-{i:04}")).collect();
    csv_users(&ids.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Puts a `[schedule]` table in the app's config.
fn with_schedule(app: TestApp, cron: &str) -> TestApp {
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    app.write("config.toml", &format!("[schedule]\ncron = \"{cron}\"\n\n{config}"));
    app
}

#[tokio::test]
async fn the_daemon_on_a_per_second_schedule_picks_up_a_changed_snapshot() {
    let server = contentstack_server().await;
    let app = with_schedule(TestApp::contentstack(&server, 2, &audience("A", "a.csv")), "* * * * * *");
    app.write("a.csv", &csv_users(&["u1"]));
    let mut daemon = app.command(&["run"]).spawn().unwrap();

    // Catch-up runs the never-synced audience at once.
    wait_until(30, "u1 to be delivered", || async { counts(&server).await.contains_key("u1") }).await;
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    wait_until(30, "u2 to be delivered by a scheduled pass", || async { counts(&server).await.contains_key("u2") })
        .await;

    terminate(&daemon);
    assert!(wait_exit(&mut daemon, 30).await.success());
    assert_eq!(counts(&server).await, HashMap::from([("u1".to_string(), 1), ("u2".to_string(), 1)]));
    let db = app.db().await;
    let triggers: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT trigger FROM sync_runs").fetch_all(&db).await.unwrap();
    assert_eq!(triggers, ["schedule"]);
}

#[tokio::test]
async fn sigterm_during_delivery_exits_zero_and_the_next_pass_leaves_nothing_pending() {
    let server = slow_server(50).await;
    let app = TestApp::contentstack(&server, 2, &audience("A", "a.csv"));
    app.write("a.csv", &many(200));
    let mut daemon = app.command(&["run"]).spawn().unwrap();
    wait_until(30, "delivery to start", || async { server.received_requests().await.unwrap().len() >= 10 }).await;
    terminate(&daemon);
    let status = wait_exit(&mut daemon, 30).await;
    assert!(status.success(), "{status:?}");
    let sent_before = server.received_requests().await.unwrap().len();
    assert!(sent_before < 200, "shutdown must not wait for the whole audience");

    let db = app.db().await;
    let (mode, status, delivered, error): (String, String, i64, String) =
        sqlx::query_as("SELECT mode, status, delivered, error FROM sync_runs ORDER BY id DESC LIMIT 1")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((mode.as_str(), status.as_str()), ("initial", "incomplete"), "the interrupted pass is recorded");
    // A first sync's members never sent are in no table yet; the run still counts them.
    assert_eq!(delivered as usize, sent_before);
    assert!(error.starts_with(&format!("{} rows still pending", 200 - sent_before)), "{error}");

    assert_success(&app.sync(&[]).await);
    assert_eq!(app.pending_count().await, 0);
    let sent = counts(&server).await;
    assert_eq!(sent.len(), 200);
    assert!(sent.values().all(|n| *n == 1), "every request in flight at SIGTERM finished and was recorded");
}

#[tokio::test]
async fn sync_while_the_daemon_runs_waits_for_its_lease_and_sends_nothing_twice() {
    let server = slow_server(20).await;
    let app = TestApp::contentstack(&server, 2, &audience("A", "a.csv"));
    app.write("a.csv", &many(100));
    let mut daemon = app.command(&["run"]).spawn().unwrap();
    wait_until(30, "the daemon to start delivering", || async {
        !server.received_requests().await.unwrap().is_empty()
    })
    .await;

    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(stderr(&out).contains("a is being synced by pid"), "{}", stderr(&out));
    assert!(stderr(&out).contains("pass --wait SECS"), "{}", stderr(&out));

    let out = app.sync(&["--wait", "60"]).await;
    assert_success(&out);
    assert!(stderr(&out).contains("waiting up to 60s"), "{}", stderr(&out));
    terminate(&daemon);
    assert!(wait_exit(&mut daemon, 30).await.success());
    let sent = counts(&server).await;
    assert_eq!(sent.len(), 100);
    assert!(sent.values().all(|n| *n == 1), "no user sent twice");
}

#[tokio::test]
async fn a_stale_lease_is_taken_over_and_a_live_one_is_respected() {
    let server = contentstack_server().await;
    let app = TestApp::contentstack(&server, 2, &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1"]));
    assert_success(&app.sync(&[]).await); // creates the state
    let rw = app.state_rw().await;
    let put_lease = |host: &'static str, pid: i64, expires: &'static str, process: Option<String>| {
        let rw = rw.clone();
        async move {
            sqlx::query("DELETE FROM leases").execute(&rw).await.unwrap();
            sqlx::query(
                "INSERT INTO leases (computation_key, owner, pid, host, acquired_at, heartbeat_at, expires_at, process) \
                 VALUES ('a', 'other-owner', $1, $2, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', $3, $4)",
            )
            .bind(pid)
            .bind(host)
            .bind(expires)
            .bind(process)
            .execute(&rw)
            .await
            .unwrap();
        }
    };

    // Another host's lease that expired: taken over.
    put_lease("elsewhere", 42, "2000-01-01T00:00:00.000Z", None).await;
    assert_success(&app.sync(&[]).await);

    // Another host's live lease: respected, with who holds it.
    put_lease("elsewhere", 42, "2999-01-01T00:00:00.000Z", None).await;
    let out = app.sync(&["--wait", "1"]).await;
    assert_failure(&out);
    assert!(
        stderr(&out).contains(
            "a is being synced by pid 42 on elsewhere (lease expires 2999-01-01T00:00:00.000Z); gave up waiting"
        ),
        "{}",
        stderr(&out)
    );

    // A live lease of a process on this host that is gone (killed): taken over at once.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let host: &'static str = Box::leak(host.into_boxed_str());
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = i64::from(gone.id());
    gone.wait().unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_string();
    let namespace = std::fs::read_link("/proc/self/ns/pid").unwrap().to_string_lossy().into_owned();
    let identity = |namespace: &str, started: u64| Some(format!("{boot_id} {namespace} {started}"));
    put_lease(host, dead_pid, "2999-01-01T00:00:00.000Z", identity(&namespace, 1)).await;
    assert_success(&app.sync(&[]).await);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM leases").fetch_one(&rw).await.unwrap();
    assert_eq!(left, 0, "a finished pass releases its lease");

    // Issue 13.4: the same PID seen from another PID namespace (a container on the host
    // network, same hostname) is not "gone": wait for the lease to expire.
    put_lease(host, dead_pid, "2999-01-01T00:00:00.000Z", identity("pid:[4026531999]", 1)).await;
    let out = app.sync(&["--wait", "1"]).await;
    assert_failure(&out);
    assert!(stderr(&out).contains(&format!("a is being synced by pid {dead_pid}")), "{}", stderr(&out));
    // A lease that does not say which process holds it (an older version's): the same.
    put_lease(host, dead_pid, "2999-01-01T00:00:00.000Z", None).await;
    assert_failure(&app.sync(&["--wait", "1"]).await);
    // A PID now used by another process (this test's, started at another time): gone.
    let reused = i64::from(std::process::id());
    put_lease(host, reused, "2999-01-01T00:00:00.000Z", identity(&namespace, 1)).await;
    assert_success(&app.sync(&[]).await);
}

#[tokio::test]
async fn resync_of_one_audience_and_of_one_user_sends_exactly_those_rows() {
    let server = contentstack_server().await;
    let app =
        TestApp::contentstack(&server, 2, &format!("{}{}", audience("A", "a.csv"), computed_trait("T", "t.ndjson")));
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    app.write("t.ndjson", "{\"user_id\":\"u1\",\"value\":5}\n");
    assert_success(&app.sync(&[]).await);
    app.write("a.csv", &csv_users(&["u1"])); // u2 exits: a tracked ex-member
    assert_success(&app.sync(&[]).await);
    server.reset().await;
    acknowledge_all(&server).await;

    let out = app.run(&["resync", "--audience", "a"]).await;
    assert_success(&out);
    assert!(stdout(&out).contains("resync: 2 rows marked to be sent again"), "{}", stdout(&out));
    assert_eq!(
        sorted(received(&server).await),
        vec![("u1".into(), json!({"a": true})), ("u2".into(), json!({"a": false}))]
    );
    let db = app.db().await;
    let mode: String =
        sqlx::query_scalar("SELECT mode FROM sync_runs ORDER BY id DESC LIMIT 1").fetch_one(&db).await.unwrap();
    assert_eq!(mode, "resync");

    server.reset().await;
    acknowledge_all(&server).await;
    assert_success(&app.run(&["resync", "--user", "u1"]).await);
    assert_eq!(received(&server).await, vec![("u1".into(), json!({"a": true, "t": 5}))]);
    assert_eq!(app.pending_count().await, 0);
}

#[tokio::test]
async fn resync_releases_a_quarantined_row() {
    use wiremock::matchers::header;
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(header("x-cs-personalize-user-uid", "u2"))
        .respond_with(ResponseTemplate::new(400))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    acknowledge_all(&server).await;
    let app = TestApp::contentstack_at(&server.uri(), 2, "quarantine_after = 1\n", &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    assert_failure(&app.sync(&[]).await);
    let db = app.db().await;
    let quarantined: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantined").fetch_one(&db).await.unwrap();
    assert_eq!(quarantined, 1);

    assert_success(&app.run(&["resync", "--user", "u2"]).await);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantined").fetch_one(&db).await.unwrap();
    assert_eq!(left, 0);
    assert_eq!(app.pending_count().await, 0);
}

#[tokio::test]
async fn status_as_text_and_as_json() {
    let server = contentstack_server().await;
    let app =
        TestApp::contentstack(&server, 2, &format!("{}{}", audience("A", "a.csv"), computed_trait("T", "t.ndjson")));
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    app.write("t.ndjson", "{\"user_id\":\"u1\",\"value\":5}\n");
    assert_success(&app.sync(&["--audience", "a"]).await);

    let out = app.run(&["status"]).await;
    assert_success(&out);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("KEY") && lines[0].contains("PENDING") && lines[0].contains("NEXT PASS"), "{text}");
    assert!(lines[1].starts_with("a ") && lines[1].contains("initial ok"), "{text}");
    assert!(lines[2].starts_with("t ") && lines[2].contains("never"), "{text}");

    let out = app.run(&["status", "--json"]).await;
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["key"], "a");
    assert_eq!(rows[0]["kind"], "audience");
    assert_eq!(rows[0]["members"], 2);
    assert_eq!(rows[0]["pending"], 0);
    assert_eq!(rows[0]["quarantined"], 0);
    assert_eq!(rows[0]["last_pass"]["mode"], "initial");
    assert_eq!(rows[0]["last_pass"]["status"], "ok");
    assert_eq!(rows[0]["last_pass"]["delivered"], 2);
    assert!(rows[0]["next_pass"].as_str().unwrap().ends_with(":00:00Z"));
    assert_eq!(rows[1]["key"], "t");
    assert_eq!(rows[1]["last_pass"], Value::Null);
}

#[tokio::test]
async fn check_reports_good_and_broken_sources_and_sends_nothing() {
    let server = contentstack_server().await;
    let app = TestApp::contentstack(&server, 2, &format!("{}{}", audience("A", "a.csv"), audience("B", "b.csv")));
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    app.write("b.csv", &csv_users(&["u1"]));
    let out = app.run(&["check"]).await;
    assert_success(&out);
    assert!(stdout(&out).contains("audience \"A\" (a): ok, 2 users"), "{}", stdout(&out));

    app.write("b.csv", "user_id\nu1\nu1\n");
    let out = app.run(&["check"]).await;
    assert_failure(&out);
    assert!(stdout(&out).contains("b.csv:3: user_id: user \"u1\" is listed twice (lines 2 and 3)"), "{}", stdout(&out));
    assert!(stderr(&out).contains("sources that do not load: b"), "{}", stderr(&out));
    assert!(server.received_requests().await.unwrap().is_empty());
    assert!(!app.state_created().await, "check creates no state");

    let broken =
        TestApp::contentstack(&server, 2, &audience("A", "a.csv")).replace_in_config("concurrency", "concurency");
    let out = broken.run(&["check"]).await;
    assert_failure(&out);
    assert!(stderr(&out).contains("unknown field `concurency`"), "{}", stderr(&out));
}

/// Review finding: a dry run, the first command after an upgrade, opened the old state file
/// read-only (no migration) and failed every computation with "snapshot failed: no such table:
/// member_rows".
#[tokio::test]
async fn a_dry_run_on_a_state_from_an_older_version_says_to_upgrade_it() {
    let app = TestApp::new("[destination]\ntype = \"file\"\npath = \"out.ndjson\"\n", &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1"]));
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(app.path("state.db")).create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let migrations = sqlx::migrate::Migrator::new(std::path::Path::new("migrations")).await.unwrap();
    let older = migrations.iter().filter(|m| m.version < 13).cloned().collect();
    sqlx::migrate::Migrator::with_migrations(older).run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO computations (key, name, kind, created_at) VALUES ('a', 'A', 'audience', '2026-11-01T00:00:00.000Z'); \
         INSERT INTO memberships (computation_key, user_id, desired, synced, updated_at, synced_at) \
         VALUES ('a', 'u0', 'true', 'true', '2026-11-01T00:00:00.000Z', '2026-11-01T00:00:01.000Z')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let out = app.sync(&["--dry-run"]).await;
    assert_failure(&out);
    assert!(
        stderr(&out).contains("written by an older version of audience-sync; run `audience-sync sync`"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("snapshot failed"), "{}", stdout(&out));
    // A sync upgrades it, and the dry run works then.
    assert_success(&app.sync(&[]).await);
    assert_success(&app.sync(&["--dry-run"]).await);
}

#[tokio::test]
async fn dry_run_sends_nothing_and_leaves_the_state_unchanged() {
    let server = contentstack_server().await;
    let app = TestApp::contentstack(&server, 2, &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    assert_success(&app.sync(&[]).await);
    server.reset().await;
    acknowledge_all(&server).await;
    let rows_before = app.memberships().await;
    let db = app.db().await;
    let runs_before: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_runs").fetch_one(&db).await.unwrap();

    app.write("a.csv", &csv_users(&["u2", "u3", "u4"]));
    let out = app.sync(&["--dry-run"]).await;
    assert_success(&out);
    assert_eq!(
        stdout(&out).trim(),
        "a: plan: 3 in snapshot, 2 entered (e.g. u3, u4), 1 exited (e.g. u1), 0 changed; 0 already pending"
    );
    assert!(server.received_requests().await.unwrap().is_empty());
    assert_eq!(app.memberships().await, rows_before);
    let runs_after: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_runs").fetch_one(&db).await.unwrap();
    assert_eq!(runs_after, runs_before);

    // Without any state yet, the plan is an initial sync and no state file appears.
    let fresh = TestApp::contentstack(&server, 2, &audience("A", "a.csv"));
    fresh.write("a.csv", &csv_users(&["u1"]));
    assert!(stdout(&fresh.sync(&["--dry-run"]).await).contains("1 entered (e.g. u1)"));
    assert!(!fresh.state_created().await);
}

#[tokio::test]
async fn metrics_answer_with_the_counters_after_a_pass() {
    let server = contentstack_server().await;
    let port = free_port();
    let app = TestApp::contentstack(&server, 2, &audience("A", "a.csv"));
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    app.write("config.toml", &format!("{config}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    app.write("a.csv", &csv_users(&["u1", "u2", "u3"]));
    let mut daemon = app.command(&["run"]).spawn().unwrap();

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let scrape = || async { client.get(&url).send().await.ok()?.text().await.ok() };
    // Rows are counted as they are answered; the pass, once it has ended.
    let passed = "audience_sync_passes_total{computation=\"a\",result=\"ok\"} 1";
    wait_until(30, "the pass to show in the metrics", || async { scrape().await.is_some_and(|b| b.contains(passed)) })
        .await;
    let body = scrape().await.unwrap();
    assert!(body.contains("audience_sync_delivered_total{computation=\"a\"} 3"), "{body}");
    assert!(body.contains("# TYPE audience_sync_pending_rows gauge"), "{body}");
    assert!(body.contains("audience_sync_pending_rows{computation=\"a\"} 0"), "{body}");
    assert!(body.contains("audience_sync_failed_total{computation=\"a\"} 0"), "{body}");
    assert!(body.contains("audience_sync_last_success_timestamp_seconds{computation=\"a\"}"), "{body}");
    assert!(body.contains("audience_sync_pass_duration_seconds{computation=\"a\"}"), "{body}");
    let health = client.get(format!("http://127.0.0.1:{port}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    terminate(&daemon);
    assert!(wait_exit(&mut daemon, 30).await.success());
}

#[tokio::test]
async fn a_big_initial_sync_does_not_hold_back_a_small_computation() {
    let server = contentstack_server().await;
    let app =
        TestApp::contentstack(&server, 1, &format!("{}{}", audience("Big", "big.csv"), audience("Small", "small.csv")));
    app.write("big.csv", &csv_users(&[]));
    app.write("small.csv", &csv_users(&["zz-1", "zz-2"]));
    assert_success(&app.sync(&["--audience", "small"]).await);
    server.reset().await;
    acknowledge_all(&server).await;

    // Big's 200_000-row initial sync is over the small-first bound; small has one new member,
    // whose user id sorts after every one of Big's.
    let ids: Vec<String> = (0..200_001).map(|i| format!("user-{i:06}")).collect();
    app.write("big.csv", &csv_users(&ids.iter().map(String::as_str).collect::<Vec<_>>()));
    app.write("small.csv", &csv_users(&["zz-1", "zz-2", "zz-3"]));
    let mut child = app.command(&["sync"]).spawn().unwrap();
    wait_until(60, "the first request", || async { !server.received_requests().await.unwrap().is_empty() }).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let first = received(&server).await.into_iter().next().unwrap();
    assert_eq!(first, ("zz-3".into(), json!({"small": true})), "the small delta goes before the big initial sync");
}

/// Issue 13.5: the daemon used to hold every lease of a firing until the whole firing ended,
/// so a long first sync kept a small audience's lease (and any manual `sync` of it) waiting.
#[tokio::test]
async fn a_long_first_sync_in_the_daemon_holds_back_no_other_computation() {
    let server = slow_server(50).await;
    let computations = format!("{}{}", audience("Big", "big.csv"), audience("Small", "small.csv"));
    let app = TestApp::contentstack(&server, 2, &computations);
    app.write("big.csv", &many(2000)); // 2000 x 50 ms / 2 in flight: about 50 s
    app.write("small.csv", &csv_users(&["s1"]));
    let mut daemon = app.command(&["run"]).spawn().unwrap();
    wait_until(30, "the daemon to deliver the small audience", || async { counts(&server).await.contains_key("s1") })
        .await;

    // The small audience's pass ends on its own: a manual sync of it gets its lease at once.
    let out = app.sync(&["--audience", "small", "--wait", "20"]).await;
    assert_success(&out);
    let db = app.db().await;
    let big_status: String =
        sqlx::query_scalar("SELECT status FROM sync_runs WHERE computation_key = 'big' ORDER BY id DESC LIMIT 1")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(big_status, "running", "the big first sync is still under way");
    terminate(&daemon);
    assert!(wait_exit(&mut daemon, 30).await.success());
}

/// Processes started together on a state that does not exist yet (cron ticks of two configs'
/// overlapping runs, a daemon and a manual `sync`): one sets the new state up, the others wait
/// for it. Each round's state is new.
#[tokio::test]
async fn commands_started_together_on_a_new_state_set_it_up_once() {
    let app = TestApp::new("[destination]\ntype = \"file\"\npath = \"out.ndjson\"\n", &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    for round in 0..3 {
        if !on_postgres() {
            let _ = std::fs::remove_file(app.path("state.db"));
        }
        let started: Vec<std::process::Child> = (0..4)
            .map(|_| {
                app.command(&["sync", "--wait", "60"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
            })
            .collect();
        for child in started {
            let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
            assert!(out.status.success(), "round {round}: {}", stderr(&out));
        }
    }
}

/// The README's "what is pending, and why?" runs as written on either backend (review finding:
/// `sum(attempts > 0)` is SQLite's alone).
#[tokio::test]
async fn the_readmes_pending_summary_counts_failed_rows() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH")).respond_with(ResponseTemplate::new(400)).mount(&server).await;
    let app = TestApp::contentstack(&server, 2, &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    assert_failure(&app.sync(&[]).await);
    let summary: (String, i64, i64) = sqlx::query_as(
        "SELECT computation_key, count(*) AS rows, sum(CASE WHEN attempts > 0 THEN 1 ELSE 0 END) AS failed \
         FROM pending GROUP BY computation_key",
    )
    .fetch_one(&app.db().await)
    .await
    .unwrap();
    assert_eq!(summary, ("a".to_string(), 2, 2));
}

/// With the state in PostgreSQL, several workers read the snapshots: `check` says that a file
/// source must be on storage every worker sees, and shows the database without its password.
/// (`check` opens no state: no server is needed.)
#[tokio::test]
async fn check_warns_that_file_sources_must_be_shared_when_the_state_is_in_postgresql() {
    let app = TestApp::with_state(
        Some("postgres://sync:s3cret-pw@db.internal/audience_sync".into()),
        "[destination]\ntype = \"file\"\npath = \"out.ndjson\"\n",
        &audience("A", "a.csv"),
    );
    app.write("a.csv", &csv_users(&["u1"]));
    let out = app.run(&["check"]).await;
    assert_success(&out);
    assert!(stdout(&out).contains("state postgres://***@db.internal/audience_sync (PostgreSQL"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("reads the file") && stderr(&out).contains("every worker must see"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("s3cret-pw") && !stderr(&out).contains("s3cret-pw"));
}

/// An operator's `sqlite3` opening and closing the state while the daemon runs leaves the daemon
/// working: a handle on the state file that the program itself opened and closed outside SQLite
/// dropped SQLite's locks, so the operator's close deleted the log under the daemon, whose every
/// pass then failed with "disk I/O error" (final review).
#[tokio::test]
async fn an_operators_read_while_the_daemon_runs_leaves_it_working() {
    let file = "[destination]\ntype = \"file\"\npath = \"out.ndjson\"\n";
    let app = with_schedule(TestApp::new(file, &audience("A", "a.csv")), "*/3 * * * * *");
    app.write("a.csv", &csv_users(&["u1"]));
    let mut daemon = app.command(&["run"]).spawn().unwrap();
    let delivered = |user: &'static str| {
        let out = app.path("out.ndjson");
        move || {
            let out = out.clone();
            async move { std::fs::read_to_string(out).is_ok_and(|t| t.contains(&format!("\"userId\":\"{user}\""))) }
        }
    };
    wait_until(30, "u1 to be delivered", delivered("u1")).await;
    // (Through `status`, another process: a connection of the test's own, left open, would keep
    // SQLite from seeing the operator's as the last.)
    wait_until(30, "the pass to end", || async {
        let out = app.run(&["status", "--json"]).await;
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|rows| rows[0]["last_pass"]["status"] == "ok")
    })
    .await;
    // Reads at several moments of the daemon's cycle, each opening and closing the file.
    for _ in 0..20 {
        if !on_postgres() {
            let operator = rusqlite::Connection::open(app.path("state.db")).unwrap();
            let runs: i64 = operator.query_row("SELECT count(*) FROM sync_runs", [], |r| r.get(0)).unwrap();
            assert!(runs >= 1);
        }
        assert_success(&app.run(&["status"]).await);
    }
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    wait_until(30, "u2 to be delivered after the operator's read", delivered("u2")).await;
    terminate(&daemon);
    assert!(wait_exit(&mut daemon, 30).await.success());
}

/// Registering a computation reads its row first and writes only when something differs: a
/// renamed computation still gets its new name, and a key whose kind changes is still refused.
#[tokio::test]
async fn a_renamed_computation_is_recorded_under_its_new_name_and_a_changed_kind_refused() {
    let server = contentstack_server().await;
    let vip = "[[audience]]\nname = \"Old Name\"\nkey = \"vip\"\nsource = { type = \"file\", path = \"a.csv\" }\n";
    let app = TestApp::contentstack(&server, 4, vip);
    app.write("a.csv", &csv_users(&["u1"]));
    assert_success(&app.sync(&[]).await);

    let app = app.replace_in_config("Old Name", "New Name");
    assert_success(&app.sync(&[]).await);
    let name: String =
        sqlx::query_scalar("SELECT name FROM computations WHERE key = 'vip'").fetch_one(&app.db().await).await.unwrap();
    assert_eq!(name, "New Name");

    let app = app.replace_in_config("[[audience]]", "[[computed_trait]]");
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(
        stderr(&out).contains("recorded as audience in the state but configured as computed_trait"),
        "{}",
        stderr(&out)
    );
}

/// A SIGTERM that comes while the daemon is still starting (its schedule set up, its signal
/// handlers not yet installed) stops it: it used to be caught and forgotten, and the daemon
/// ran its passes on until a second one (review finding).
#[tokio::test]
async fn a_sigterm_while_the_daemon_starts_stops_it() {
    use std::io::BufRead;

    let server = contentstack_server().await;
    let computations: String = (0..200).map(|i| audience(&format!("A{i}"), &format!("a{i}.csv"))).collect();
    let app = TestApp::contentstack(&server, 4, &computations);
    /// The daemon, killed if the test fails while it still runs.
    struct Daemon(std::process::Child);
    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut command = app.command(&["run"]);
    command.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped());
    let mut daemon = Daemon(command.spawn().unwrap());
    let stderr = std::io::BufReader::new(daemon.0.stderr.take().unwrap());
    let mut lines = stderr.lines();
    // The first schedule is set up after the state is open, before the daemon listens for
    // signals with the runtime: the moment the signal used to be lost.
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("scheduled")), "no schedule logged");
    terminate(&daemon.0);
    let drained = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    assert!(wait_exit(&mut daemon.0, 20).await.success());
    let logged = drained.join().unwrap();
    assert!(logged.contains("stopped"), "{logged}");
}

/// `status | head` and the like: a reader that closes the pipe before the answer is written
/// ends the command quietly, where it used to panic with a backtrace (review findings: `status`,
/// then `check`, `sync --dry-run` and `sync`, whose pass still ran whole).
#[tokio::test]
async fn an_answer_written_to_a_closed_pipe_ends_quietly() {
    let server = contentstack_server().await;
    let app = TestApp::contentstack(&server, 4, &audience("A", "a.csv"));
    app.write("a.csv", &csv_users(&["u1", "u2"]));
    assert_success(&app.sync(&[]).await);
    app.write("a.csv", &csv_users(&["u1", "u3"]));
    let every = [
        &["status"][..],
        &["status", "--json"],
        &["explain", "--user", "u1"],
        &["check"],
        &["sync", "--dry-run"],
        &["sync"],
    ];
    for args in every {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut command = app.command(args);
        command.stdout(writer);
        let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{args:?}: {}", stderr(&out));
    }
}

/// Noticed in review: a computation removed from config.toml stayed in the state, members,
/// pending changes and all, and nothing said so: `status` left it out and passes were silent.
/// Now `sync` (dry runs too) warns of it and `status` lists it, not configured and with no next
/// pass.
#[tokio::test]
async fn a_computation_removed_from_the_config_is_named_by_sync_and_status() {
    let head = "[destination]\ntype = \"file\"\npath = \"out.ndjson\"\n";
    let app = TestApp::new(head, &format!("{}{}", audience("A", "a.csv"), audience("B", "b.csv")));
    app.write("a.csv", &csv_users(&["u1"]));
    app.write("b.csv", &csv_users(&["u1", "u2"]));
    assert_success(&app.sync(&[]).await);
    app.write("config.toml", &std::fs::read_to_string(app.config_path()).unwrap().replace(&audience("B", "b.csv"), ""));

    for args in [&["--dry-run"][..], &[]] {
        let synced = app.sync(args).await;
        assert_success(&synced);
        let said = stderr(&synced);
        let warning = said.lines().find(|l| l.contains("not in config.toml")).unwrap_or_else(|| panic!("{said}"));
        assert!(warning.contains("WARN") && warning.contains("computations=b"), "{args:?}: {warning}");
    }

    let status: Value = serde_json::from_str(&stdout(&app.run(&["status", "--json"]).await)).unwrap();
    let keys: Vec<&str> = status.as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a", "b"]);
    let (a, b) = (&status[0], &status[1]);
    assert_eq!((&a["configured"], &b["configured"]), (&json!(true), &json!(false)));
    assert_eq!((&b["members"], &b["name"], &b["next_pass"]), (&json!(2), &json!("B"), &Value::Null));
    assert_eq!(b["last_pass"]["mode"], "initial");
    let table = stdout(&app.run(&["status"]).await);
    let row = table.lines().find(|l| l.starts_with("b ")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("none: not in config.toml"), "{row}");
}
