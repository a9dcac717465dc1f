//! Measures how delivery copes with throttling, against a loopback Contentstack stand-in
//! (issue 13.8; docs/throttling.md has the figures).
//!
//! `cargo build --release --examples --bin audience-sync && \
//!  target/release/examples/bench_throttle --mode random --runs 3 && \
//!  target/release/examples/bench_throttle --mode bucket --limit 200 --runs 3`
//!
//! - `--mode random`: the stand-in answers 5 % of requests 429 (`Retry-After: 1`) and 15 % 500,
//!   at random, the rest 200. Every 429 asks for a second's pause, so the pass cannot take less
//!   than the time those pauses cover (the union of [answer, answer + 1 s] over every 429,
//!   printed as the pause cost); it should not take much more.
//! - `--mode bucket`: the stand-in lets `--limit` requests a second through a token bucket
//!   (holding a second's tokens, or `--burst N`) and answers 429 (`Retry-After: 1`) when it is empty. The
//!   goodput (acknowledgements a second over the delivery) should be at least 90 % of the limit
//!   with at most 5 % of the requests answered 429. The syncer is not told the limit.
//!   `--then SECS:LIMIT[:BURST]` changes the limit (and burst) that many seconds after the first
//!   request, and prints acknowledgements a second and 429s over each 10 s of the delivery
//!   (a limit that drops or rises mid-delivery: docs/throttling.md).
//!
//! Each run writes an audience of `--members` users and a config into a temp dir and runs the
//! real `target/release/audience-sync sync` against a fresh stand-in (`--concurrency`, default
//! 16; `--latency-ms`, default 1).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the stand-in answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Random,
    /// `limit` tokens a second, at most `burst` held.
    Bucket {
        limit: f64,
        burst: f64,
        /// Seconds after the first request, the limit and burst from then on.
        then: Option<(f64, f64, f64)>,
    },
}

struct Options {
    mode: Mode,
    members: usize,
    concurrency: usize,
    latency: Duration,
    runs: usize,
}

/// What the stand-in saw.
#[derive(Default)]
struct Seen {
    requests: u64,
    throttled: u64,
    failed: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    /// When each 429 was answered.
    throttles: Vec<Instant>,
    /// When each 200 was answered.
    acks: Vec<Instant>,
    /// The token bucket: tokens, and when it was last filled.
    tokens: f64,
    filled: Option<Instant>,
}

fn main() {
    let o = options();
    let mut figures = Vec::new();
    for _ in 0..o.runs {
        figures.push(run(&o));
    }
    if o.runs > 1 {
        let column = |i: usize| spread(&mut figures.iter().map(|f: &Vec<f64>| f[i]).collect::<Vec<_>>());
        match o.mode {
            Mode::Random => {
                println!("over {} runs (min / median / max):", o.runs);
                println!("  pass {} s, pause cost {} s, pass minus pause cost {} s", column(0), column(1), column(2));
            }
            Mode::Bucket { .. } => {
                println!("over {} runs (min / median / max):", o.runs);
                println!("  goodput {} % of the limit, 429s {} % of the requests", column(0), column(1));
            }
        }
    }
}

fn options() -> Options {
    let mut o = Options { mode: Mode::Random, members: 0, concurrency: 16, latency: Duration::from_millis(1), runs: 1 };
    let (mut mode, mut limit, mut burst, mut then) = ("random".to_string(), 200.0, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--mode" => mode = value(),
            "--limit" => limit = value().parse().expect("--limit N"),
            "--burst" => burst = Some(value().parse().expect("--burst N")),
            "--then" => then = Some(change(&value())),
            "--members" => o.members = value().parse().expect("--members N"),
            "--concurrency" => o.concurrency = value().parse().expect("--concurrency N"),
            "--latency-ms" => o.latency = Duration::from_millis(value().parse().expect("--latency-ms MS")),
            "--runs" => o.runs = value().parse().expect("--runs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    o.mode = match mode.as_str() {
        "random" => Mode::Random,
        "bucket" => Mode::Bucket { limit, burst: burst.unwrap_or(limit), then },
        other => panic!("unknown mode {other}"),
    };
    if o.members == 0 {
        // Random: the 500 users. Bucket: half a minute's worth at the limit.
        o.members = match o.mode {
            Mode::Random => 500,
            Mode::Bucket { limit, .. } => (limit * 30.0) as usize,
        };
    }
    o
}

/// `SECS:LIMIT[:BURST]` (the burst defaults to a second's worth).
fn change(text: &str) -> (f64, f64, f64) {
    let n: Vec<f64> = text.split(':').map(|x| x.parse().expect("--then SECS:LIMIT[:BURST]")).collect();
    match n[..] {
        [secs, limit] => (secs, limit, limit),
        [secs, limit, burst] => (secs, limit, burst),
        _ => panic!("--then SECS:LIMIT[:BURST]"),
    }
}

/// "min / median / max" of `values`.
fn spread(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!("{:.1} / {:.1} / {:.1}", values[0], values[values.len() / 2], values[values.len() - 1])
}

/// One pass of the real binary against a fresh stand-in; prints and returns its figures.
fn run(o: &Options) -> Vec<f64> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let uri = serve(o.mode, o.latency, seen.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("user_id\n");
    for i in 0..o.members {
        csv.push_str(&format!("user-{i:08}\n"));
    }
    std::fs::write(dir.path().join("a.csv"), csv).unwrap();
    let config = format!(
        "[state]\npath = \"state.db\"\n[destination]\ntype = \"contentstack\"\nedge_api_base_url = \"{uri}\"\n\
         project_uid = \"bench\"\nconcurrency = {}\n\
         [[audience]]\nname = \"Bench\"\nsource = {{ type = \"file\", path = \"a.csv\" }}\n",
        o.concurrency
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().and_then(|p| p.parent()).unwrap().join("audience-sync");
    let started = Instant::now();
    let out = std::process::Command::new(&binary)
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .arg("sync")
        .env("RUST_LOG", std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "error".into()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (build it with cargo build --release)", binary.display()));
    let pass = started.elapsed().as_secs_f64();
    if std::env::var_os("BENCH_RUST_LOG").is_some() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    if !out.status.success() {
        // At random, a row may fail all its retries (0.2^6 a row): the figures still stand.
        println!("  sync left rows pending: {}", String::from_utf8_lossy(&out.stdout).trim());
    }
    let seen = seen.lock().unwrap();
    let busy = (seen.last.unwrap() - seen.first.unwrap()).as_secs_f64();
    println!(
        "members={} concurrency={} latency_ms={}: {} requests, {} answered 429, {} answered 500; pass {pass:.2} s, delivery {busy:.2} s",
        o.members,
        o.concurrency,
        o.latency.as_millis(),
        seen.requests,
        seen.throttled,
        seen.failed
    );
    match o.mode {
        Mode::Random => {
            let cost = pause_cost(&seen.throttles).as_secs_f64();
            println!(
                "  pause cost (time covered by the 429s' Retry-After): {cost:.2} s; pass minus it: {:.2} s",
                pass - cost
            );
            vec![pass, cost, pass - cost]
        }
        Mode::Bucket { limit, then, .. } => {
            if then.is_some() {
                timeline(&seen);
            }
            let goodput = o.members as f64 / busy;
            let share = 100.0 * seen.throttled as f64 / seen.requests as f64;
            println!(
                "  goodput {goodput:.0}/s = {:.1} % of the limit {limit}/s; 429s {share:.1} % of the requests",
                100.0 * goodput / limit
            );
            vec![100.0 * goodput / limit, share]
        }
    }
}

/// Acknowledgements a second and the share of 429s over each 10 s from the first request.
fn timeline(seen: &Seen) {
    let first = seen.first.unwrap();
    let slot = |t: &Instant| ((*t - first).as_secs() / 10) as usize;
    let slots = seen.acks.iter().chain(&seen.throttles).map(slot).max().unwrap_or(0) + 1;
    let (mut acks, mut throttles) = (vec![0u32; slots], vec![0u32; slots]);
    seen.acks.iter().for_each(|t| acks[slot(t)] += 1);
    seen.throttles.iter().for_each(|t| throttles[slot(t)] += 1);
    for i in 0..slots {
        let share = 100.0 * f64::from(throttles[i]) / f64::from((acks[i] + throttles[i]).max(1));
        println!("  {:>4}-{:<4} s: {:6.1}/s, {share:4.1} % 429s", i * 10, i * 10 + 10, f64::from(acks[i]) / 10.0);
    }
}

/// The time covered by [t, t + 1 s] for the instants `throttles` (each 429's `Retry-After`).
fn pause_cost(throttles: &[Instant]) -> Duration {
    let mut at: Vec<Instant> = throttles.to_vec();
    at.sort();
    let mut total = Duration::ZERO;
    let mut covered: Option<(Instant, Instant)> = None;
    for t in at {
        let end = t + Duration::from_secs(1);
        covered = match covered {
            Some((start, until)) if t <= until => Some((start, until.max(end))),
            Some((start, until)) => {
                total += until - start;
                Some((t, end))
            }
            None => Some((t, end)),
        };
    }
    total + covered.map_or(Duration::ZERO, |(start, until)| until - start)
}

/// Starts the stand-in on loopback (a thread per keep-alive connection); returns its URI.
fn serve(mode: Mode, latency: Duration, seen: Arc<Mutex<Seen>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(socket) = socket else { return };
            let seen = seen.clone();
            std::thread::spawn(move || connection(socket, mode, latency, &seen));
        }
    });
    uri
}

/// Answers one request after another on a connection, until it closes.
fn connection(socket: TcpStream, mode: Mode, latency: Duration, seen: &Mutex<Seen>) {
    let _ = socket.set_nodelay(true);
    let Ok(mut write) = socket.try_clone() else { return };
    let mut read = BufReader::new(socket);
    while let Some(()) = read_request(&mut read) {
        let arrived = Instant::now();
        let status = answer(mode, arrived, &mut seen.lock().unwrap());
        std::thread::sleep(latency);
        let response: &[u8] = match status {
            429 => b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n",
            500 => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        };
        if write.write_all(response).is_err() {
            return;
        }
        let mut s = seen.lock().unwrap();
        s.last = Some(Instant::now());
        match status {
            429 => s.throttles.push(Instant::now()),
            200 => s.acks.push(Instant::now()),
            _ => {}
        }
    }
}

/// Reads one request (headers and body); `None` once the connection closes.
fn read_request(read: &mut BufReader<TcpStream>) -> Option<()> {
    let mut line = String::new();
    let mut content_length = 0usize;
    loop {
        line.clear();
        if read.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; content_length];
    read.read_exact(&mut body).ok()
}

/// The status for a request arriving `now`, counted in `s`.
fn answer(mode: Mode, now: Instant, s: &mut Seen) -> u16 {
    s.requests += 1;
    s.first.get_or_insert(now);
    let status = match mode {
        Mode::Random => match fastrand::f64() {
            x if x < 0.05 => 429,
            x if x < 0.20 => 500,
            _ => 200,
        },
        Mode::Bucket { mut limit, mut burst, then } => {
            if let Some((_, l, b)) = then.filter(|t| (now - s.first.unwrap()).as_secs_f64() >= t.0) {
                (limit, burst) = (l, b);
                s.tokens = s.tokens.min(burst);
            }
            let since = s.filled.map_or(burst / limit, |f| (now - f).as_secs_f64());
            s.tokens = (s.tokens + since * limit).min(burst);
            s.filled = Some(now);
            if s.tokens >= 1.0 {
                s.tokens -= 1.0;
                200
            } else {
                429
            }
        }
    };
    match status {
        429 => s.throttled += 1,
        500 => s.failed += 1,
        _ => {}
    }
    status
}
