//! A test app: a config.toml, snapshots and a state in a temp dir, the real binary, and (for
//! Contentstack) a wiremock server on loopback.
//!
//! The state is a SQLite file in the temp dir; with `AUDIENCE_SYNC_TEST_BACKEND=postgres` (and
//! `AUDIENCE_SYNC_TEST_POSTGRES_URL`, see the README), it is a PostgreSQL database of the app's
//! own on that server instead, so that one test body runs on either backend.

use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;
use sqlx::AnyPool;
use tempfile::TempDir;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

pub const BIN: &str = env!("CARGO_BIN_EXE_audience-sync");
pub const PROJECT_UID: &str = "proj-123";
/// The environment variable holding the Segment write key in tests, and its value.
pub const WRITE_KEY_ENV: &str = "AUDIENCE_SYNC_TEST_WRITE_KEY";
pub const WRITE_KEY: &str = "wk_test_123";
/// The environment variable holding the Contentstack management token in tests, and its value.
pub const MANAGEMENT_TOKEN_ENV: &str = "AUDIENCE_SYNC_TEST_MANAGEMENT_TOKEN";
pub const MANAGEMENT_TOKEN: &str = "cs_mgmt_456";
/// The environment variable holding an HTTP source's Authorization header in tests, and its value.
pub const SOURCE_AUTH_ENV: &str = "AUDIENCE_SYNC_TEST_SOURCE_AUTH";
pub const SOURCE_AUTH: &str = "Bearer source-s3cret";
/// Destination fields that keep retry waits short in tests.
pub const FAST_RETRIES: &str = "retry_base_delay_ms = 1\nretry_max_delay_secs = 0.02\n";

pub struct TestApp {
    pub dir: TempDir,
    /// The PostgreSQL database holding the state, when the tests run on that backend.
    pub state_url: Option<String>,
}

/// The environment variable the binary reads the PostgreSQL state's URL from, in tests.
pub const STATE_URL_ENV: &str = "AUDIENCE_SYNC_TEST_STATE_URL";

/// Whether the tests run on the PostgreSQL backend.
pub fn on_postgres() -> bool {
    std::env::var("AUDIENCE_SYNC_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// A new, empty database on the test PostgreSQL server; its URL.
pub fn new_postgres_database() -> String {
    let admin = std::env::var("AUDIENCE_SYNC_TEST_POSTGRES_URL")
        .expect("AUDIENCE_SYNC_TEST_BACKEND=postgres needs AUDIENCE_SYNC_TEST_POSTGRES_URL");
    let name = format!("audience_sync_test_{:016x}", fastrand::u64(..));
    let created = name.clone();
    // On a thread of its own: the caller may be inside a runtime.
    let admin_url = admin.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let db = sqlx::PgPool::connect(&admin_url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {created}"))).execute(&db).await.unwrap();
            db.close().await;
        })
    })
    .join()
    .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// One row of `memberships`: (computation_key, user_id, desired, synced).
pub type Row = (String, String, String, Option<String>);

impl TestApp {
    /// An app whose config has `destination` and `computations` (TOML fragments).
    pub fn new(destination: &str, computations: &str) -> TestApp {
        TestApp::with_state(on_postgres().then(new_postgres_database), destination, computations)
    }

    /// An app whose state is the PostgreSQL database `state_url` when given (several apps on
    /// one database are several workers), else a SQLite file of its own.
    pub fn with_state(state_url: Option<String>, destination: &str, computations: &str) -> TestApp {
        let app = TestApp { dir: tempfile::tempdir().unwrap(), state_url };
        let state = match &app.state_url {
            Some(_) => format!("url_env = \"{STATE_URL_ENV}\""),
            None => "path = \"state.db\"".to_string(),
        };
        app.write("config.toml", &format!("[state]\n{state}\n\n{destination}\n{computations}"));
        app
    }

    /// The same app with `setting` added to its `[state]` section.
    pub fn with_state_setting(self, setting: &str) -> TestApp {
        self.replace_in_config("[state]\n", &format!("[state]\n{setting}\n"))
    }

    /// An app that sends to `server` as Contentstack with `concurrency`.
    pub fn contentstack(server: &MockServer, concurrency: usize, computations: &str) -> TestApp {
        TestApp::contentstack_at(&server.uri(), concurrency, "", computations)
    }

    /// An app that sends to the Contentstack stand-in at `uri`, with `extra` destination fields.
    /// Retries wait milliseconds, not seconds, so that tests stay fast.
    pub fn contentstack_at(uri: &str, concurrency: usize, extra: &str, computations: &str) -> TestApp {
        TestApp::new(&contentstack_destination(uri, concurrency, extra), computations)
    }

    /// An app that sends to `server` as Segment, with `extra` destination fields.
    pub fn segment(server: &MockServer, extra: &str, computations: &str) -> TestApp {
        let destination = format!(
            "[destination]\ntype = \"segment\"\nendpoint = \"{}\"\nwrite_key_env = \"{WRITE_KEY_ENV}\"\n{FAST_RETRIES}{extra}\n",
            server.uri()
        );
        TestApp::new(&destination, computations)
    }

    /// The same app with `from` replaced by `to` in its config.toml.
    pub fn replace_in_config(self, from: &str, to: &str) -> TestApp {
        let config = std::fs::read_to_string(self.config_path()).unwrap().replace(from, to);
        self.write("config.toml", &config);
        self
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("config.toml")
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// A `std::process::Command` for the binary with this app's config.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("RUST_LOG", "warn")
            .env(WRITE_KEY_ENV, WRITE_KEY)
            .env(MANAGEMENT_TOKEN_ENV, MANAGEMENT_TOKEN)
            .env(SOURCE_AUTH_ENV, SOURCE_AUTH);
        if let Some(url) = &self.state_url {
            cmd.env(STATE_URL_ENV, url);
        }
        cmd
    }

    /// Runs the binary to completion off the async runtime (the mock server keeps serving).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
    }

    /// `sync` with extra arguments.
    pub async fn sync(&self, args: &[&str]) -> Output {
        let mut all = vec!["sync"];
        all.extend_from_slice(args);
        self.run(&all).await
    }

    /// The state, read through sqlx's driver-neutral pool: the tests' queries run on either
    /// backend (placeholders as `$1`, which SQLite reads too).
    pub async fn db(&self) -> AnyPool {
        self.state_pool("?mode=ro").await
    }

    /// The state, for a test that plays another process writing to it.
    pub async fn state_rw(&self) -> AnyPool {
        self.state_pool("").await
    }

    /// A pool on the state; `sqlite_options` follow a SQLite file's path.
    async fn state_pool(&self, sqlite_options: &str) -> AnyPool {
        sqlx::any::install_default_drivers();
        let url = match &self.state_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}{sqlite_options}", self.path("state.db").display()),
        };
        AnyPool::connect(&url).await.unwrap()
    }

    /// Whether the state may exist yet: a SQLite file is created by the first command, a
    /// PostgreSQL database by the test (its tables by the first command).
    pub fn has_state(&self) -> bool {
        self.state_url.is_some() || self.path("state.db").exists()
    }

    /// Whether a command created the state: the SQLite file, or the tables in the database.
    pub async fn state_created(&self) -> bool {
        if self.state_url.is_none() {
            return self.path("state.db").exists();
        }
        let db = self.db().await;
        sqlx::query_scalar("SELECT CASE WHEN to_regclass('computations') IS NULL THEN 0 ELSE 1 END")
            .fetch_one(&db)
            .await
            .is_ok_and(|created: i64| created == 1)
    }

    /// All membership rows, ordered.
    pub async fn memberships(&self) -> Vec<Row> {
        let db = self.db().await;
        sqlx::query_as(
            "SELECT computation_key, user_id, desired, synced FROM memberships ORDER BY computation_key, user_id",
        )
        .fetch_all(&db)
        .await
        .unwrap()
    }

    pub async fn pending_count(&self) -> i64 {
        let db = self.db().await;
        sqlx::query_scalar("SELECT count(*) FROM pending").fetch_one(&db).await.unwrap()
    }

    /// Rows the destination acknowledged, as committed in the state.
    pub async fn synced_count(&self) -> usize {
        let db = self.db().await;
        let synced: i64 = sqlx::query_scalar("SELECT count(*) FROM memberships WHERE synced IS NOT NULL")
            .fetch_one(&db)
            .await
            .unwrap();
        synced as usize
    }
}

/// The `[destination]` of the Contentstack stand-in at `uri`, with `extra` fields.
pub fn contentstack_destination(uri: &str, concurrency: usize, extra: &str) -> String {
    format!(
        "[destination]\ntype = \"contentstack\"\nedge_api_base_url = \"{uri}\"\nproject_uid = \"{PROJECT_UID}\"\n\
         concurrency = {concurrency}\nrequest_timeout_secs = 20\n{FAST_RETRIES}{extra}\n"
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Panics with the program's output unless it exited 0.
pub fn assert_success(o: &Output) {
    assert!(o.status.success(), "expected success, got {:?}\nstdout:\n{}\nstderr:\n{}", o.status, stdout(o), stderr(o));
}

pub fn assert_failure(o: &Output) {
    assert!(!o.status.success(), "expected failure\nstdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
}

/// A loopback Contentstack stand-in that acknowledges every PATCH /user-attributes.
pub async fn contentstack_server() -> MockServer {
    let server = MockServer::start().await;
    acknowledge_all(&server).await;
    server
}

/// `contentstack_server` on a port of its own, never one of wiremock's pooled servers that
/// another test used before: a test counting every request it gets counts only its own.
pub async fn contentstack_server_of_its_own() -> MockServer {
    let server = MockServer::builder().start().await;
    acknowledge_all(&server).await;
    server
}

/// A stand-in answering every update after 20 ms: slow enough to stop a sync mid-delivery.
pub async fn slow_destination() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path("/user-attributes"))
        .respond_with(ResponseTemplate::new(200).set_delay(std::time::Duration::from_millis(20)))
        .mount(&server)
        .await;
    server
}

/// A loopback Contentstack stand-in that acknowledges every PATCH after `delay_ms`.
pub async fn slow_server(delay_ms: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(200).set_delay(std::time::Duration::from_millis(delay_ms)))
        .mount(&server)
        .await;
    server
}

/// Mounts a mock that acknowledges every PATCH /user-attributes (after a `reset`, say).
pub async fn acknowledge_all(server: &MockServer) {
    Mock::given(method("PATCH"))
        .and(path("/user-attributes"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"status": "ok"})))
        .mount(server)
        .await;
}

/// A Contentstack stand-in that acknowledges the first `answered` requests at once and holds
/// every later one (for ten minutes): a first sync stalls with some of its members answered.
pub async fn destination_that_stalls_after(answered: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path("/user-attributes"))
        .respond_with(ResponseTemplate::new(200))
        .up_to_n_times(answered)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/user-attributes"))
        .respond_with(ResponseTemplate::new(200).set_delay(std::time::Duration::from_secs(600)))
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

/// What Contentstack received: (user, body) per request, in arrival order.
pub async fn received(server: &MockServer) -> Vec<(String, Value)> {
    server.received_requests().await.unwrap_or_default().iter().map(user_and_body).collect()
}

pub fn user_and_body(r: &Request) -> (String, Value) {
    let user = r.headers.get("x-cs-personalize-user-uid").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (user, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

/// Requests sorted by user, for comparisons that do not depend on arrival order.
pub fn sorted(mut requests: Vec<(String, Value)>) -> Vec<(String, Value)> {
    requests.sort_by(|a, b| a.0.cmp(&b.0));
    requests
}

/// An `[[audience]]` table reading `file`.
pub fn audience(name: &str, file: &str) -> String {
    format!("[[audience]]\nname = \"{name}\"\nsource = {{ type = \"file\", path = \"{file}\" }}\n")
}

/// A `[[computed_trait]]` table reading `file`.
pub fn computed_trait(name: &str, file: &str) -> String {
    format!("[[computed_trait]]\nname = \"{name}\"\nsource = {{ type = \"file\", path = \"{file}\" }}\n")
}

/// A CSV audience snapshot of `users`.
pub fn csv_users(users: &[&str]) -> String {
    let mut s = String::from("user_id\n");
    for u in users {
        s.push_str(u);
        s.push('\n');
    }
    s
}

/// Polls `condition` until it holds, failing the test after `secs` seconds (a wait on state,
/// not on time: the poll interval only bounds how late we notice).
pub async fn wait_until<F, Fut>(secs: u64, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !condition().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Sends `signal` to a child process.
pub fn signal(child: &std::process::Child, signal: libc::c_int) {
    // SAFETY: a plain syscall on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

/// Sends SIGTERM to a child process.
pub fn terminate(child: &std::process::Child) {
    let status = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

/// Waits for a child to exit, failing the test after `secs` seconds.
pub async fn wait_exit(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "the process did not exit within {secs} s");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A port on loopback that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
