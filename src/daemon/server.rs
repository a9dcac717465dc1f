//! `/metrics` (Prometheus) and `/healthz`, served by the daemon on `[metrics] listen`.
//!
//! Each connection is served by its own task (hyper's HTTP/1.1 server), so a client that
//! connects and says nothing holds up no other; it is dropped once it has sent no whole request
//! head for `HEAD_TIMEOUT`. What the state knows is read from it at each scrape.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::Shared;

/// How long a connection may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the scheduler beats, and how old its last beat may be before `/healthz` says the
/// scheduler stopped.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const HEARTBEAT_STALE: Duration = Duration::from_secs(30);

/// Whether the daemon still schedules passes: a job of the scheduler beats every
/// `HEARTBEAT_EVERY`, and the daemon says when it stops scheduling (shutdown).
pub struct Health {
    /// Unix time (ms) of the scheduler's last beat, or of its start.
    last_beat_ms: AtomicI64,
    stopped: AtomicBool,
}

impl Health {
    pub fn new() -> Health {
        Health { last_beat_ms: AtomicI64::new(now_ms()), stopped: AtomicBool::new(false) }
    }

    pub fn beat(&self) {
        self.last_beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Nothing is scheduled any more (shutting down).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Why the scheduler is not running, if it is not.
    fn scheduler_problem(&self) -> Option<String> {
        if self.stopped.load(Ordering::Relaxed) {
            return Some("the scheduler stopped: shutting down".into());
        }
        let silent_ms = now_ms() - self.last_beat_ms.load(Ordering::Relaxed);
        (silent_ms > HEARTBEAT_STALE.as_millis() as i64)
            .then(|| format!("the scheduler stopped: no heartbeat for {} s", silent_ms / 1000))
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Accepts connections until the process ends, each served on a task of its own.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Out of file descriptors, say: the next accept may succeed.
                tracing::warn!(error = %e, "metrics: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(socket), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics: connection ended");
            }
        });
    }
}

async fn answer(shared: &Shared, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let observed = match shared.store.check_readable().await {
                Ok(()) => shared.store.observe(&shared.owner.id).await.ok(),
                Err(_) => None,
            };
            shared.metrics.observe_state(observed.as_deref());
            let mut response = text(StatusCode::OK, shared.metrics.encode());
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE.parse().unwrap());
            response
        }
        "/healthz" => match health(shared).await {
            None => text(StatusCode::OK, "ok\n".into()),
            Some(problem) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// What is wrong, if anything: the state cannot be read, or the scheduler stopped.
async fn health(shared: &Shared) -> Option<String> {
    if let Err(e) = shared.store.check_readable().await {
        return Some(format!("cannot read the state: {e:#}"));
    }
    shared.health.scheduler_problem()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8".parse().unwrap());
    response
}
