//! A minimal HTTP/1.1 server on loopback that answers 200 after a delay and records the most
//! requests it ever had in progress at once (the client's real concurrency), when the first
//! request arrived and the last answer went (the delivery's own duration), and how long it
//! held requests.
//!
//! One thread per keep-alive connection reads a request, sleeps until its arrival plus the
//! delay, and writes the answer itself: no hand-off between threads lengthens the delay (tokio's
//! timer would round it up to the next millisecond; a blocking task's answer would wait for a
//! runtime thread to wake), and the thread's timer slack is cut to a microsecond, so the delay
//! held is the delay asked for plus the kernel's wake-up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct CountingServer {
    pub uri: String,
    pub max_in_flight: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    /// Microseconds from the server's start to the first request's arrival (0: none yet) and
    /// to the last answer sent. Read by the delivery benchmark, not by the tests.
    #[allow(dead_code)]
    pub first_request_us: Arc<AtomicU64>,
    #[allow(dead_code)]
    pub last_answer_us: Arc<AtomicU64>,
    /// Microseconds all requests were held, from arrival to answer written.
    #[allow(dead_code)]
    pub held_us: Arc<AtomicU64>,
}

/// What every connection's thread updates.
#[derive(Clone)]
struct Counters {
    started: Instant,
    delay: Duration,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    first_request_us: Arc<AtomicU64>,
    last_answer_us: Arc<AtomicU64>,
    held_us: Arc<AtomicU64>,
}

impl CountingServer {
    /// From the first request's arrival to the last answer.
    #[allow(dead_code)]
    pub fn busy(&self) -> Duration {
        let first = self.first_request_us.load(Ordering::SeqCst);
        Duration::from_micros(self.last_answer_us.load(Ordering::SeqCst).saturating_sub(first))
    }

    /// The mean time a request was held, from its arrival to its answer.
    #[allow(dead_code)]
    pub fn mean_hold(&self) -> Duration {
        let requests = self.requests.load(Ordering::SeqCst).max(1) as u64;
        Duration::from_micros(self.held_us.load(Ordering::SeqCst) / requests)
    }

    pub async fn start(delay: Duration) -> CountingServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let counters = Counters {
            started: Instant::now(),
            delay,
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            requests: Arc::default(),
            first_request_us: Arc::default(),
            last_answer_us: Arc::default(),
            held_us: Arc::default(),
        };
        let server = CountingServer {
            uri,
            max_in_flight: counters.max_in_flight.clone(),
            requests: counters.requests.clone(),
            first_request_us: counters.first_request_us.clone(),
            last_answer_us: counters.last_answer_us.clone(),
            held_us: counters.held_us.clone(),
        };
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                let Ok(socket) = socket else { return };
                let counters = counters.clone();
                std::thread::spawn(move || serve(socket, &counters));
            }
        });
        server
    }
}

/// Answers one request after another on a keep-alive connection, until it closes.
fn serve(socket: TcpStream, c: &Counters) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let _ = socket.set_nodelay(true);
    let Ok(mut write) = socket.try_clone() else { return };
    let mut read = BufReader::new(socket);
    let mut line = String::new();
    loop {
        let mut content_length = 0usize;
        loop {
            line.clear();
            if read.read_line(&mut line).unwrap_or(0) == 0 {
                return;
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
        if read.read_exact(&mut body).is_err() {
            return;
        }
        let arrived = Instant::now();
        let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_in_flight.fetch_max(now, Ordering::SeqCst);
        c.requests.fetch_add(1, Ordering::SeqCst);
        let at = c.started.elapsed().as_micros() as u64;
        let _ = c.first_request_us.compare_exchange(0, at.max(1), Ordering::SeqCst, Ordering::SeqCst);
        std::thread::sleep((arrived + c.delay).saturating_duration_since(Instant::now()));
        c.in_flight.fetch_sub(1, Ordering::SeqCst);
        if write.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
            return;
        }
        c.last_answer_us.fetch_max(c.started.elapsed().as_micros() as u64, Ordering::SeqCst);
        c.held_us.fetch_add(arrived.elapsed().as_micros() as u64, Ordering::SeqCst);
    }
}
