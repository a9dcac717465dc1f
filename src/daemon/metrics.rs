//! Prometheus metrics and a health check, served by the daemon on `[metrics] listen`.
//!
//! Counters live in this process; pending rows are read from the state at each scrape, so they
//! are right even when another process delivered them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::pass::ComputationReport;
use crate::state::{RunStatus, Store};

#[derive(Default)]
pub struct Metrics {
    per_key: Mutex<BTreeMap<String, KeyMetrics>>,
}

#[derive(Default, Clone)]
struct KeyMetrics {
    passes: u64,
    delivered: u64,
    failed: u64,
    last_pass_seconds: f64,
    last_success_unix: Option<i64>,
}

impl Metrics {
    /// Adds a finished pass.
    pub fn record(&self, reports: &[ComputationReport], took: Duration) {
        let mut all = self.per_key.lock().unwrap_or_else(|p| p.into_inner());
        for r in reports {
            let m = all.entry(r.key.clone()).or_default();
            m.passes += 1;
            let delivery = r.delivery();
            m.delivered += delivery.delivered;
            m.failed += delivery.failed;
            m.last_pass_seconds = took.as_secs_f64();
            if r.status == RunStatus::Ok {
                m.last_success_unix = Some(chrono::Utc::now().timestamp());
            }
        }
    }

    /// The Prometheus text exposition, with `pending` rows per computation from the state.
    pub fn render(&self, pending: &[(String, i64)]) -> String {
        let all = self.per_key.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, values: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (key, v) in values {
                let _ = writeln!(out, "{name}{{computation=\"{key}\"}} {v}");
            }
        };
        family(
            "audience_sync_pending_rows",
            "gauge",
            "Rows whose current value the destination has not acknowledged.",
            pending.iter().map(|(k, n)| (k.clone(), n.to_string())).collect(),
        );
        let each = |f: &dyn Fn(&KeyMetrics) -> Option<String>| -> Vec<(String, String)> {
            all.iter().filter_map(|(k, m)| f(m).map(|v| (k.clone(), v))).collect()
        };
        family(
            "audience_sync_passes_total",
            "counter",
            "Passes run by this process.",
            each(&|m| Some(m.passes.to_string())),
        );
        family(
            "audience_sync_delivered_total",
            "counter",
            "Rows acknowledged by the destination.",
            each(&|m| Some(m.delivered.to_string())),
        );
        family(
            "audience_sync_failed_total",
            "counter",
            "Rows the destination did not acknowledge in a pass.",
            each(&|m| Some(m.failed.to_string())),
        );
        family(
            "audience_sync_pass_duration_seconds",
            "gauge",
            "Duration of the last pass.",
            each(&|m| Some(format!("{:.3}", m.last_pass_seconds))),
        );
        family(
            "audience_sync_last_success_timestamp_seconds",
            "gauge",
            "When a pass last left nothing pending (Unix time).",
            each(&|m| m.last_success_unix.map(|t| t.to_string())),
        );
        out
    }
}

/// Serves `GET /metrics` and `GET /healthz` until the process ends.
pub async fn serve(listener: TcpListener, metrics: &Metrics, store: &Store) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { continue };
        let mut request = vec![0u8; 4096];
        let n = match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut request)).await {
            Ok(Ok(n)) => n,
            _ => continue,
        };
        let head = String::from_utf8_lossy(&request[..n]);
        let path = head.split_whitespace().nth(1).unwrap_or("");
        let (status, body) = match path {
            "/metrics" => match store.statuses().await {
                Ok(s) => ("200 OK", metrics.render(&s.iter().map(|s| (s.key.clone(), s.pending)).collect::<Vec<_>>())),
                Err(e) => ("500 Internal Server Error", format!("cannot read the state: {e:#}\n")),
            },
            "/healthz" => ("200 OK", "ok\n".to_string()),
            _ => ("404 Not Found", "not found\n".to_string()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(response.as_bytes()).await;
    }
}
