//! Measures delivery throughput against a loopback stand-in with a fixed latency.
//!
//! `cargo build --release && cargo run --release --example bench_delivery -- \
//!     --destination contentstack --members 20000 --latency-ms 10 --concurrency 16`
//!
//! It writes an audience of `--members` users and a config into a temp dir, starts a
//! keep-alive HTTP stand-in on 127.0.0.1 that answers 200 after `--latency-ms`, runs the real
//! `target/release/audience-sync sync` against it, and prints deliveries (or events) a second
//! beside the bound `concurrency / latency` (for Contentstack, one user per request). For
//! Contentstack it then runs a bare HTTP client (reqwest, the same requests and concurrency, no
//! state) against a fresh stand-in: what this machine allows any client, in the same run.
//! `--runs N` repeats both in turn and ends with the spread of each.

#[path = "../tests/api/counting_server.rs"]
mod counting_server;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What each run sends: to which destination, how many members, at what latency and
/// concurrency.
struct Run {
    destination: String,
    members: usize,
    latency_ms: u64,
    concurrency: usize,
}

fn main() {
    let mut run = Run { destination: "contentstack".to_string(), members: 20_000, latency_ms: 10, concurrency: 16 };
    let mut runs = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--destination" => run.destination = value(),
            "--members" => run.members = value().parse().expect("--members N"),
            "--latency-ms" => run.latency_ms = value().parse().expect("--latency-ms MS"),
            "--concurrency" => run.concurrency = value().parse().expect("--concurrency N"),
            "--runs" => runs = value().parse().expect("--runs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bound = run.concurrency as f64 * 1000.0 / run.latency_ms as f64;
    let contentstack = run.destination == "contentstack";
    // Shares of the bound, the syncer's and the bare client's, run by run in turn: this
    // machine's speed drifts within minutes, so only figures taken side by side compare.
    let (mut synced, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let rate = run.sync(&runtime);
        synced.push(100.0 * rate / bound);
        if contentstack {
            let busy = bare_client(&runtime, run.members, run.latency_ms, run.concurrency).as_secs_f64();
            let share = 100.0 * run.members as f64 / busy / bound;
            println!("  reference: a bare HTTP client achieves {share:.0} % over the delivery");
            bare.push(share);
        }
    }
    if contentstack && runs > 1 {
        println!("over {runs} runs, of the bound over the delivery (min / median / max):");
        println!("  audience-sync {}", spread(&mut synced));
        println!("  bare client   {}", spread(&mut bare));
    }
}

/// "min / median / max %" of `shares`.
fn spread(shares: &mut [f64]) -> String {
    shares.sort_by(f64::total_cmp);
    let median = shares[shares.len() / 2];
    format!("{:.0} / {median:.0} / {:.0} %", shares[0], shares[shares.len() - 1])
}

impl Run {
    /// Runs the real binary against a fresh stand-in and prints what it measured; returns the
    /// deliveries a second over the delivery.
    fn sync(&self, runtime: &tokio::runtime::Runtime) -> f64 {
        let Run { destination, members, latency_ms, concurrency } = self;
        let server = runtime.block_on(counting_server::CountingServer::start(Duration::from_millis(*latency_ms)));

        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("user_id\n");
        for i in 0..*members {
            csv.push_str(&format!("user-{i:08}\n"));
        }
        std::fs::write(dir.path().join("a.csv"), csv).unwrap();
        let target = match destination.as_str() {
            "contentstack" => {
                format!("type = \"contentstack\"\nedge_api_base_url = \"{}\"\nproject_uid = \"bench\"\n", server.uri)
            }
            "segment" => {
                format!("type = \"segment\"\nendpoint = \"{}\"\nwrite_key_env = \"BENCH_WRITE_KEY\"\n", server.uri)
            }
            other => panic!("unknown destination {other}"),
        };
        let config = format!(
            "[state]\npath = \"state.db\"\n[destination]\n{target}concurrency = {concurrency}\n\
             [[audience]]\nname = \"Bench\"\nsource = {{ type = \"file\", path = \"a.csv\" }}\n"
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();

        let exe = std::env::current_exe().unwrap();
        let binary = exe.parent().and_then(|p| p.parent()).unwrap().join("audience-sync");
        let started = Instant::now();
        let out = std::process::Command::new(&binary)
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .arg("sync")
            .env("BENCH_WRITE_KEY", "bench")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e} (build it with cargo build --release)", binary.display()));
        let elapsed = started.elapsed().as_secs_f64();
        assert!(out.status.success(), "sync failed: {}", String::from_utf8_lossy(&out.stderr));
        let requests = server.requests.load(Ordering::SeqCst);
        let rate = *members as f64 / elapsed;
        println!("destination={destination} members={members} latency_ms={latency_ms} concurrency={concurrency}");
        println!("  {requests} requests, {elapsed:.2} s, {rate:.0} deliveries/s");
        let busy = server.busy().as_secs_f64();
        let busy_rate = *members as f64 / busy;
        println!("  delivery (first request to last answer): {busy:.2} s, {busy_rate:.0} deliveries/s");
        if destination == "contentstack" {
            let bound = *concurrency as f64 * 1000.0 / *latency_ms as f64;
            println!(
                "  bound concurrency/latency = {bound:.0}/s, achieved {:.0} % over the delivery, {:.0} % over the whole command",
                100.0 * busy_rate / bound,
                100.0 * rate / bound
            );
        }
        println!(
            "  max requests in flight seen by the stand-in: {}; it held each {:.2} ms on average",
            server.max_in_flight.load(Ordering::SeqCst),
            server.mean_hold().as_secs_f64() * 1000.0
        );
        busy_rate
    }
}

/// Sends `members` Contentstack-shaped requests, `concurrency` at a time, from a bare reqwest
/// client on a runtime of its own to a fresh stand-in; returns the stand-in's busy time.
fn bare_client(
    server_runtime: &tokio::runtime::Runtime,
    members: usize,
    latency_ms: u64,
    concurrency: usize,
) -> Duration {
    use futures::StreamExt;
    let server = server_runtime.block_on(counting_server::CountingServer::start(Duration::from_millis(latency_ms)));
    let client_runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    client_runtime.block_on(async {
        let client = reqwest::Client::new();
        let uri = format!("{}/user-attributes", server.uri);
        futures::stream::iter(0..members)
            .map(|i| {
                let request = client
                    .patch(&uri)
                    .header("x-project-uid", "bench")
                    .header("x-cs-personalize-user-uid", format!("user-{i:08}"))
                    .header("content-type", "application/json")
                    .body("{\"bench\":true}");
                async move { request.send().await.expect("the stand-in answers").bytes().await.expect("a body") }
            })
            .buffer_unordered(concurrency)
            .for_each(|_| async {})
            .await;
    });
    server.busy()
}
