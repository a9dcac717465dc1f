//! A minimal HTTP/1.1 server on loopback that answers 200 after a delay and records the most
//! requests it ever had in progress at once (the client's real concurrency), and when the first
//! request arrived and the last answer went (the delivery's own duration).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

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
}

impl CountingServer {
    /// From the first request's arrival to the last answer.
    #[allow(dead_code)]
    pub fn busy(&self) -> Duration {
        let first = self.first_request_us.load(Ordering::SeqCst);
        Duration::from_micros(self.last_answer_us.load(Ordering::SeqCst).saturating_sub(first))
    }
}

impl CountingServer {
    pub async fn start(delay: Duration) -> CountingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (first_request_us, last_answer_us) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let started = Instant::now();
        let (max, count) = (max_in_flight.clone(), requests.clone());
        let (first, last) = (first_request_us.clone(), last_answer_us.clone());
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { return };
                let (in_flight, max, count) = (in_flight.clone(), max.clone(), count.clone());
                let (first, last) = (first.clone(), last.clone());
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut read = BufReader::new(read);
                    // One request after another on a keep-alive connection.
                    loop {
                        let mut content_length = 0usize;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                                content_length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; content_length];
                        if read.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(now, Ordering::SeqCst);
                        count.fetch_add(1, Ordering::SeqCst);
                        let at = started.elapsed().as_micros() as u64;
                        let _ = first.compare_exchange(0, at.max(1), Ordering::SeqCst, Ordering::SeqCst);
                        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(delay)).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        if write.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                            return;
                        }
                        last.fetch_max(started.elapsed().as_micros() as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        CountingServer { uri, max_in_flight, requests, first_request_us, last_answer_us }
    }
}
