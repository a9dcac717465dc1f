//! A first sync is visible while it runs: its members not yet answered count as pending
//! everywhere an operator looks (issue 13, point 10).

use crate::helpers::*;

const MEMBERS: usize = 400;
const ANSWERED: u64 = 100;

/// The documented question "is user X still to be sent?", as the README asks it: through the
/// `pending` view, and looking only at the queued run that can hold the user.
const STILL_TO_SEND: &str = "SELECT computation_key, desired FROM pending WHERE user_id = $1";
const STILL_TO_SEND_QUICKLY: &str = "SELECT computation_key, desired FROM memberships \
     WHERE user_id = $1 AND desired IS DISTINCT FROM synced \
     UNION ALL \
     SELECT q.computation_key, u.value ->> 1 FROM first_sync_queue q, json_each(q.users) u \
     WHERE q.last_user >= $1 AND q.after_user < $1 AND u.value ->> 0 = $1 \
     AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.computation_key = q.computation_key AND m.user_id = $1)";
/// The same in `psql`, as the README gives it: PostgreSQL reads the queue's JSON arrays its way.
const STILL_TO_SEND_QUICKLY_IN_POSTGRES: &str = "SELECT computation_key, desired FROM memberships \
     WHERE user_id = $1 AND desired IS DISTINCT FROM synced \
     UNION ALL \
     SELECT q.computation_key, u.value ->> 1 FROM first_sync_queue q, jsonb_array_elements(q.users::jsonb) u \
     WHERE q.last_user >= $1 AND q.after_user < $1 AND u.value ->> 0 = $1 \
     AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.computation_key = q.computation_key AND m.user_id = $1)";

#[tokio::test]
async fn a_running_first_sync_counts_its_unanswered_members_as_pending() {
    let server = destination_that_stalls_after(ANSWERED).await;
    let app = TestApp::contentstack(&server, 4, &audience("Big", "big.csv"));
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("user-{i:04}")).collect();
    app.write("big.csv", &csv_users(&users.iter().map(String::as_str).collect::<Vec<_>>()));

    let mut child = app.command(&["sync"]).spawn().unwrap();
    wait_until(60, "the first answers to be recorded", || async {
        if !app.has_state() {
            return false;
        }
        let recorded: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM memberships WHERE computation_key = 'big'")
                .fetch_one(&app.db().await)
                .await;
        recorded.is_ok_and(|n| n as u64 == ANSWERED)
    })
    .await;

    let db = app.db().await;
    let answered: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM memberships WHERE computation_key = 'big' AND synced = 'true'")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(answered.len() as u64, ANSWERED, "every answer so far acknowledged the user");
    let left = MEMBERS as i64 - ANSWERED as i64;

    let listed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pending WHERE computation_key = 'big'").fetch_one(&db).await.unwrap();
    assert_eq!(listed, left, "the pending view lists the members not answered yet");
    let counted: i64 =
        sqlx::query_scalar("SELECT pending FROM computation_status WHERE key = 'big'").fetch_one(&db).await.unwrap();
    assert_eq!(counted, left, "computation_status counts them");

    let status = app.run(&["status", "--json"]).await;
    assert_success(&status);
    let rows: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(rows[0]["pending"], serde_json::json!(left), "status shows them: {rows}");
    let held_by = rows[0]["held_by"].as_str().unwrap_or_default();
    assert!(held_by.starts_with(&format!("pid {} on ", child.id())), "status shows who runs the pass: {rows}");

    for user in &users {
        let expected = (!answered.contains(user)).then(|| ("big".to_string(), "true".to_string()));
        let quickly = if on_postgres() { STILL_TO_SEND_QUICKLY_IN_POSTGRES } else { STILL_TO_SEND_QUICKLY };
        for query in [STILL_TO_SEND, quickly] {
            let row: Option<(String, String)> = sqlx::query_as(query).bind(user).fetch_optional(&db).await.unwrap();
            assert_eq!(row, expected, "is {user} still to be sent? {query}");
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A first sync's queue holds every member, however many writes it takes (PostgreSQL sends its
/// runs of a thousand members 64 to a statement): a kill leaves them all findable.
#[tokio::test]
async fn a_first_syncs_queue_holds_every_member_past_one_write_of_runs() {
    const MANY: usize = 70_500;
    let server = destination_that_stalls_after(ANSWERED).await;
    // One worker's first sync, not a delivery in shards (PostgreSQL's, past this many rows).
    let one_worker = format!("[sync]\ndelivery_shard_rows = {}\n\n{}", 2 * MANY, audience("Big", "big.csv"));
    let app = TestApp::contentstack(&server, 4, &one_worker);
    let users: Vec<String> = (0..MANY).map(|i| format!("user-{i:06}")).collect();
    app.write("big.csv", &csv_users(&users.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut child = app.command(&["sync"]).spawn().unwrap();
    wait_until(60, "requests to stall", || async { server.received_requests().await.unwrap().len() as u64 > ANSWERED })
        .await;

    let db = app.db().await;
    let (runs, entries): (i64, i64) = sqlx::query_as(
        "SELECT count(*), CAST(sum(entries) AS BIGINT) FROM first_sync_queue WHERE computation_key = 'big'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((runs, entries), (71, MANY as i64), "the queue's runs hold every member");
    // In one statement, one snapshot: answers still being recorded move members from one to
    // the other between two.
    let (listed, recorded): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pending WHERE computation_key = 'big'), (SELECT count(*) FROM memberships)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(listed + recorded, MANY as i64, "each member is pending or recorded");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The first sync's members stop counting once it is over, delivered or not.
#[tokio::test]
async fn a_first_sync_stopped_by_a_kill_leaves_nothing_pending_twice() {
    let server = destination_that_stalls_after(ANSWERED).await;
    let app = TestApp::contentstack(&server, 4, &audience("Big", "big.csv"));
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("user-{i:04}")).collect();
    app.write("big.csv", &csv_users(&users.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut child = app.command(&["sync"]).spawn().unwrap();
    wait_until(60, "requests to stall", || async { server.received_requests().await.unwrap().len() as u64 > ANSWERED })
        .await;
    child.kill().unwrap();
    child.wait().unwrap();
    server.reset().await;
    acknowledge_all(&server).await;

    let output = app.sync(&[]).await;
    assert_success(&output);
    assert_eq!(app.pending_count().await, 0, "{}", stdout(&output));
    let members = app.memberships().await;
    assert_eq!(members.len(), MEMBERS, "each member is in the state once");
}

/// How many of `key`'s members the `pending` view lists.
async fn listed_pending(app: &TestApp, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pending WHERE computation_key = $1")
        .bind(key)
        .fetch_one(&app.db().await)
        .await
        .unwrap()
}

/// Review finding: a first sync stopped by SIGTERM dropped its queue while its summary still
/// said members were owed, and a next pass whose load failed dropped it too; `pending` and
/// `status` said 0 until a later diff found them again.
#[tokio::test]
async fn members_a_stopped_first_sync_still_owes_stay_pending_until_a_diff_commits() {
    let server = destination_that_stalls_after(ANSWERED).await;
    let app = TestApp::contentstack(&server, 4, &audience("Big", "big.csv"));
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("user-{i:04}")).collect();
    let snapshot = csv_users(&users.iter().map(String::as_str).collect::<Vec<_>>());
    app.write("big.csv", &snapshot);
    let mut child = app.command(&["sync"]).spawn().unwrap();
    wait_until(60, "requests to stall", || async { server.received_requests().await.unwrap().len() as u64 > ANSWERED })
        .await;
    terminate(&child);
    wait_exit(&mut child, 60).await;

    let answered: i64 = sqlx::query_scalar("SELECT count(*) FROM memberships WHERE synced = 'true'")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    let owed = MEMBERS as i64 - answered;
    assert!(owed > 0, "the stalled requests were not answered");
    assert_eq!(listed_pending(&app, "big").await, owed, "after SIGTERM, the members not answered are pending");

    std::fs::remove_file(app.path("big.csv")).unwrap();
    let failed = app.sync(&[]).await;
    assert_failure(&failed);
    assert_eq!(listed_pending(&app, "big").await, owed, "a failed load leaves them pending: {}", stdout(&failed));
    let status = app.run(&["status", "--json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(rows[0]["pending"], serde_json::json!(owed), "status counts them: {rows}");

    server.reset().await;
    acknowledge_all(&server).await;
    app.write("big.csv", &snapshot);
    let output = app.sync(&[]).await;
    assert_success(&output);
    assert_eq!(listed_pending(&app, "big").await, 0, "{}", stdout(&output));
    assert_eq!(app.memberships().await.len(), MEMBERS, "each member is in the state once");
}
