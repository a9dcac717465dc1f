//! Measures how several workers share one first sync (issue 17): N daemons on one PostgreSQL
//! state deliver an audience to a loopback Contentstack stand-in that answers each request after
//! a fixed latency, 1 worker then 3 by default, side by side in one run.
//!
//! `bench/workers.sh` runs it (it starts a throwaway PostgreSQL server if none is given):
//! `cargo run --release --example bench_workers -- --postgres URL [--members 300000]
//!  [--latency-ms 50] [--concurrency 32] [--workers 1,3] [--runs 1]`
//!
//! Each run gets a new database and a fresh stand-in; the workers are real `audience-sync run`
//! processes, started together (the pass runs at start, as a catch-up); the time is from their
//! start to the run recorded `ok`. It prints each run, how many shards each worker delivered,
//! the requests beyond one per member, and the speed-up against one worker.

#[path = "../tests/api/counting_server.rs"]
mod counting_server;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

struct Bench {
    postgres: String,
    members: usize,
    latency_ms: u64,
    concurrency: usize,
    workers: Vec<usize>,
    runs: usize,
}

fn main() {
    let mut b = Bench {
        postgres: String::new(),
        members: 300_000,
        latency_ms: 50,
        concurrency: 32,
        workers: vec![1, 3],
        runs: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--postgres" => b.postgres = value(),
            "--members" => b.members = value().parse().expect("--members N"),
            "--latency-ms" => b.latency_ms = value().parse().expect("--latency-ms MS"),
            "--concurrency" => b.concurrency = value().parse().expect("--concurrency N"),
            "--workers" => b.workers = value().split(',').map(|n| n.parse().expect("--workers 1,3")).collect(),
            "--runs" => b.runs = value().parse().expect("--runs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!b.postgres.is_empty(), "--postgres URL (a user that may create databases) is needed");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); b.workers.len()];
    for run in 0..b.runs {
        for (i, &n) in b.workers.iter().enumerate() {
            times[i].push(runtime.block_on(b.run(n, run)));
        }
    }
    println!("seconds over {} run(s) (min / median / max), and speed-up against the first:", b.runs);
    let first = median(&mut times[0].clone());
    for (i, &n) in b.workers.iter().enumerate() {
        let t = &mut times[i];
        t.sort_by(f64::total_cmp);
        let m = median(t);
        println!("  {n} worker(s): {:.1} / {m:.1} / {:.1} s, {:.2}x", t[0], t[t.len() - 1], first / m);
    }
}

fn median(t: &mut [f64]) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

impl Bench {
    /// One first sync by `workers` daemons; returns its seconds.
    async fn run(&self, workers: usize, run: usize) -> f64 {
        let server = counting_server::CountingServer::start(Duration::from_millis(self.latency_ms)).await;
        let db = format!("bench_workers_{}_{workers}_{run}", std::process::id());
        let mut admin = PgConnection::connect(&self.postgres).await.expect("cannot connect to --postgres");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut admin).await.unwrap();
        let url = format!("{}/{db}", self.postgres.rsplit_once('/').expect("a URL with a database").0);
        let dir = tempfile::tempdir().unwrap();
        self.write_files(dir.path(), &server.uri);
        let started = Instant::now();
        let mut daemons: Vec<Child> = (0..workers).map(|_| spawn(dir.path(), &url)).collect();
        let mut state = PgConnection::connect(&url).await.unwrap();
        wait_for_ok(&mut state, &mut daemons).await;
        let secs = started.elapsed().as_secs_f64();
        let shards: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT pid, count(*) FROM delivery_shards WHERE done_at IS NOT NULL GROUP BY pid ORDER BY pid",
        )
        .fetch_all(&mut state)
        .await
        .unwrap();
        for d in &mut daemons {
            // SAFETY: a plain syscall on our own child's pid.
            unsafe { libc::kill(d.id() as libc::pid_t, libc::SIGTERM) };
            d.wait().unwrap();
        }
        state.close().await.unwrap();
        let requests = server.requests.load(Ordering::SeqCst);
        println!(
            "{workers} worker(s): {secs:.1} s, {:.0} members/s; {} requests beyond one per member; at most {} in flight; \
             shards per worker (pid, shards): {shards:?}",
            self.members as f64 / secs,
            requests.saturating_sub(self.members),
            server.max_in_flight.load(Ordering::SeqCst),
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {db} WITH (FORCE)")))
            .execute(&mut admin)
            .await
            .unwrap();
        secs
    }

    fn write_files(&self, dir: &std::path::Path, uri: &str) {
        let mut csv = String::from("user_id\n");
        for i in 0..self.members {
            csv.push_str(&format!("user-{i:08}\n"));
        }
        std::fs::write(dir.join("a.csv"), csv).unwrap();
        let config = format!(
            "[state]\nurl_env = \"BENCH_STATE_URL\"\n[schedule]\ncron = \"0 0 0 1 1 *\"\n[sync]\nlease_ttl_secs = 10\n\
             [destination]\ntype = \"contentstack\"\nedge_api_base_url = \"{uri}\"\nproject_uid = \"bench\"\n\
             concurrency = {}\n[[audience]]\nname = \"Bench\"\nsource = {{ type = \"file\", path = \"a.csv\" }}\n",
            self.concurrency
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
    }
}

fn spawn(dir: &std::path::Path, url: &str) -> Child {
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().and_then(|p| p.parent()).unwrap().join("audience-sync");
    Command::new(&binary)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("run")
        .current_dir(dir)
        .env("BENCH_STATE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (build it with cargo build --release)", binary.display()))
}

/// Polls the state until the first sync's run is `ok`; fails if a worker exits meanwhile.
async fn wait_for_ok(state: &mut PgConnection, daemons: &mut [Child]) {
    loop {
        let ok: Option<i64> =
            sqlx::query_scalar("SELECT count(*) FROM sync_runs WHERE computation_key = 'bench' AND status = 'ok'")
                .fetch_one(&mut *state)
                .await
                .ok();
        if ok == Some(1) {
            return;
        }
        for d in daemons.iter_mut() {
            assert!(d.try_wait().unwrap().is_none(), "a worker exited before the first sync was done");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
