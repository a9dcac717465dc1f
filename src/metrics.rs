//! The Prometheus series of this process (prometheus-client), one `Metrics` per process.
//!
//! What counts them gets a handle resolved once (a destination's `DestinationMetrics`, a
//! computation's `DeliveryCounters`), so that a request or an answer costs an atomic increment,
//! not a lookup by label. What the state knows (pending and quarantined rows, the last success,
//! leases, a first sync's progress) is read from it at each scrape (`observe_state`), so that it
//! is right after a restart and when another process did the work. The daemon's server serves
//! them; the series are listed in README.md ("Monitoring").

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{Atomic, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::state::{ObservedComputation, RunStatus};

/// The content type of `encode`'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the request latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// What a pass of a computation can end as, in `audience_sync_passes_total{result}`.
const PASS_RESULTS: [&str; 4] = ["ok", "incomplete", "failed", "interrupted"];

/// A request's answer by status class; `error` is no answer (connection error, timeout).
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Of {
    computation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassResult {
    computation: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct To {
    destination: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answered {
    destination: &'static str,
    class: &'static str,
}

fn of(key: &str) -> Of {
    Of { computation: key.to_string() }
}

/// `metric`, registered in `registry` as `name` with `help` (as a clone: its handles share one
/// value).
/// A family of the default kind when `metric` is left out.
macro_rules! series {
    ($registry:ident, $name:literal, $help:literal) => {
        series!($registry, $name, $help, Family::default())
    };
    ($registry:ident, $name:literal, $help:literal, $metric:expr) => {{
        let metric = $metric;
        $registry.register($name, $help, metric.clone());
        metric
    }};
}

/// Every series of the process, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    passes: Family<PassResult, Counter>,
    pass_seconds: Family<Of, FloatGauge>,
    pass_pending: Family<Of, Gauge>,
    delivered: Family<Of, Counter>,
    failed: Family<Of, Counter>,
    retries: Family<Of, Counter>,
    snapshot_seconds: Family<Of, FloatGauge>,
    snapshot_rows: Family<Of, Gauge>,
    held_back: Family<Of, Gauge>,
    schedule_seconds: Family<Of, Gauge>,
    requests: Family<Answered, Counter>,
    latency: Family<To, Histogram, fn() -> Histogram>,
    throttled: Family<To, Counter>,
    in_flight: Family<To, Gauge>,
    rate: Family<To, FloatGauge>,
    pending: Family<Of, Gauge>,
    quarantined: Family<Of, Gauge>,
    last_success: Family<Of, Gauge>,
    last_failed: Family<Of, Gauge>,
    leases: Family<Of, Gauge>,
    first_sync: Family<Of, FloatGauge>,
    state_readable: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        Metrics {
            // Passes (counted by this process).
            passes: series!(r, "audience_sync_passes", "Passes run by this process, by result"),
            pass_seconds: series!(r, "audience_sync_pass_duration_seconds", "Duration of the last pass"),
            pass_pending: series!(r, "audience_sync_pass_pending_rows", "Rows the last pass left pending"),
            delivered: series!(r, "audience_sync_delivered", "Rows acknowledged by the destination"),
            failed: series!(r, "audience_sync_failed", "Rows the destination did not acknowledge in a pass"),
            retries: series!(r, "audience_sync_retries", "Rows re-sent within a pass (once per retry)"),
            snapshot_seconds: series!(
                r,
                "audience_sync_snapshot_load_seconds",
                "Duration of the last snapshot's load and diff"
            ),
            snapshot_rows: series!(r, "audience_sync_snapshot_rows", "Rows of the last snapshot loaded"),
            held_back: series!(
                r,
                "audience_sync_mass_exit_guard_holding",
                "1 while the mass-exit guard holds back the last snapshot"
            ),
            schedule_seconds: series!(
                r,
                "audience_sync_schedule_interval_seconds",
                "Interval of the computation's schedule"
            ),
            // The destination's HTTP requests.
            requests: series!(r, "audience_sync_destination_requests", "Requests answered, by status class"),
            latency: series!(
                r,
                "audience_sync_destination_request_duration_seconds",
                "Time to a request's answer",
                Family::new_with_constructor(latency_histogram as fn() -> Histogram)
            ),
            throttled: series!(r, "audience_sync_destination_throttled", "Requests answered 429"),
            in_flight: series!(r, "audience_sync_destination_requests_in_flight", "Requests sent and not answered yet"),
            rate: series!(
                r,
                "audience_sync_destination_rate_limit",
                "Requests a second the pacer allows now (0: not paced)"
            ),
            // Read from the state at each scrape.
            pending: series!(
                r,
                "audience_sync_pending_rows",
                "Rows whose current value the destination has not acknowledged"
            ),
            quarantined: series!(
                r,
                "audience_sync_quarantined_rows",
                "Pending rows set aside after quarantine_after failed passes"
            ),
            last_success: series!(
                r,
                "audience_sync_last_success_timestamp_seconds",
                "When a pass last left nothing pending (Unix time)"
            ),
            last_failed: series!(
                r,
                "audience_sync_last_pass_failed",
                "1 when the last pass failed: nothing written or sent"
            ),
            leases: series!(r, "audience_sync_leases_held", "1 while this process holds the computation's lease"),
            first_sync: series!(
                r,
                "audience_sync_first_sync_progress_ratio",
                "Share of a running first sync's members answered"
            ),
            state_readable: series!(
                r,
                "audience_sync_state_readable",
                "1 when the state file can be opened and read",
                Gauge::default()
            ),
            registry: r,
        }
    }

    /// Creates the series of computation `key` with zeros, so that they exist before its
    /// first pass, and its schedule's interval.
    pub fn computation(&self, key: &str, interval: Option<Duration>) {
        let of = of(key);
        for result in PASS_RESULTS {
            drop(self.passes.get_or_create(&PassResult { computation: key.to_string(), result }));
        }
        for family in [&self.delivered, &self.failed, &self.retries] {
            drop(family.get_or_create(&of));
        }
        drop(self.held_back.get_or_create(&of));
        if let Some(interval) = interval {
            self.schedule_seconds.get_or_create(&of).set(interval.as_secs() as i64);
        }
    }

    /// The handle a destination's requests are counted through (`destination` names it).
    pub fn destination(&self, destination: &'static str) -> DestinationMetrics {
        let to = To { destination };
        DestinationMetrics {
            answers: STATUS_CLASSES.map(|class| self.requests.get_or_create_owned(&Answered { destination, class })),
            latency: self.latency.get_or_create_owned(&to),
            throttled: self.throttled.get_or_create_owned(&to),
            in_flight: self.in_flight.get_or_create_owned(&to),
            rate: self.rate.get_or_create_owned(&to),
        }
    }

    /// The handle delivery counts the answers of computation `key` through.
    pub fn delivery(&self, key: &str) -> DeliveryCounters {
        let of = of(key);
        DeliveryCounters {
            delivered: self.delivered.get_or_create_owned(&of),
            failed: self.failed.get_or_create_owned(&of),
            retried: self.retries.get_or_create_owned(&of),
        }
    }

    /// A snapshot of `key` loaded (and diffed) in `took`, with `rows` rows.
    pub fn snapshot_loaded(&self, key: &str, took: Duration, rows: u64) {
        let of = of(key);
        self.snapshot_seconds.get_or_create(&of).set(took.as_secs_f64());
        self.snapshot_rows.get_or_create(&of).set(i64::try_from(rows).unwrap_or(i64::MAX));
    }

    /// A finished pass of one computation, which took `took`: whether the mass-exit guard held
    /// its snapshot back, and the rows it left pending (`None` when its diff failed).
    pub fn pass_finished(&self, key: &str, status: RunStatus, took: Duration, held_back: bool, pending: Option<u64>) {
        self.pass_ended(key, status, took);
        let of = of(key);
        self.held_back.get_or_create(&of).set(i64::from(held_back));
        if let Some(pending) = pending {
            self.pass_pending.get_or_create(&of).set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
    }

    /// A pass of `key` that ended with `status` after `took`, whatever its report.
    pub fn pass_ended(&self, key: &str, status: RunStatus, took: Duration) {
        let result = match status {
            RunStatus::Ok => "ok",
            RunStatus::Incomplete => "incomplete",
            RunStatus::Interrupted | RunStatus::Running => "interrupted",
            RunStatus::Failed => "failed",
        };
        self.passes.get_or_create(&PassResult { computation: key.to_string(), result }).inc();
        self.pass_seconds.get_or_create(&of(key)).set(took.as_secs_f64());
    }

    /// What the state says at a scrape: `None` when it could not be read.
    pub fn observe_state(&self, observed: Option<&[ObservedComputation]>) {
        self.state_readable.set(i64::from(observed.is_some()));
        for c in observed.unwrap_or_default() {
            let of = of(&c.key);
            self.pending.get_or_create(&of).set(c.pending);
            self.quarantined.get_or_create(&of).set(c.quarantined);
            self.leases.get_or_create(&of).set(i64::from(c.leased_here));
            self.last_failed.get_or_create(&of).set(i64::from(c.last_pass_failed));
            set_or_remove(&self.last_success, &of, c.last_success_unix);
            set_or_remove(&self.first_sync, &of, c.first_sync_progress);
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Sets the gauge of `of` to `value`, or removes it: a series without a value is absent.
fn set_or_remove<N, A: Atomic<N> + Default>(family: &Family<Of, Gauge<N, A>>, of: &Of, value: Option<N>) {
    match value {
        Some(v) => {
            family.get_or_create(of).set(v);
        }
        None => {
            family.remove(of);
        }
    }
}

/// How one destination's requests went: answers by status class, latency, 429s, requests in
/// flight, and the pacer's current rate.
#[derive(Clone)]
pub struct DestinationMetrics {
    answers: [Counter; STATUS_CLASSES.len()],
    latency: Histogram,
    throttled: Counter,
    in_flight: Gauge,
    rate: FloatGauge,
}

impl DestinationMetrics {
    /// A request going out now: in flight until its `Sent::answered`.
    pub fn sending(&self) -> Sent<'_> {
        self.in_flight.inc();
        Sent { metrics: self, started: Instant::now() }
    }

    /// Where the pacer says its current rate.
    pub fn rate(&self) -> FloatGauge {
        self.rate.clone()
    }
}

/// A request in flight; dropped without an answer (its pass abandoned), it counts no answer.
pub struct Sent<'a> {
    metrics: &'a DestinationMetrics,
    started: Instant,
}

impl Sent<'_> {
    /// Its answer's status, `None` when there was none (connection error, timeout).
    pub fn answered(self, status: Option<u16>) {
        let m = self.metrics;
        m.latency.observe(self.started.elapsed().as_secs_f64());
        let class = match status {
            Some(s @ 100..=599) => usize::from(s / 100 - 1),
            _ => STATUS_CLASSES.len() - 1,
        };
        m.answers[class].inc();
        if status == Some(429) {
            m.throttled.inc();
        }
    }
}

impl Drop for Sent<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// How one computation's rows were answered, counted as delivery records them.
#[derive(Clone, Default)]
pub struct DeliveryCounters {
    delivered: Counter,
    failed: Counter,
    retried: Counter,
}

impl DeliveryCounters {
    pub fn answered(&self, acknowledged: bool) {
        if acknowledged { &self.delivered } else { &self.failed }.inc();
    }

    pub fn retried(&self) {
        self.retried.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The series' names as served (a histogram's and a counter's as written in queries), every
    /// one given a value.
    fn served() -> Vec<String> {
        let metrics = Metrics::new();
        metrics.computation("a", Some(Duration::from_secs(60)));
        metrics.destination("segment");
        metrics.snapshot_loaded("a", Duration::from_secs(1), 3);
        metrics.pass_finished("a", RunStatus::Ok, Duration::from_secs(2), false, Some(0));
        let observed = ObservedComputation {
            key: "a".into(),
            pending: 1,
            quarantined: 0,
            leased_here: true,
            last_success_unix: Some(1),
            last_pass_failed: false,
            first_sync_progress: Some(0.5),
        };
        metrics.observe_state(Some(&[observed]));
        let text = metrics.encode();
        text.lines().filter_map(|l| Some(l.strip_prefix("# TYPE ")?.split(' ').next()?.to_string())).collect()
    }

    /// The `audience_sync_*` names `text` mentions, a histogram's suffixes taken off.
    fn mentioned(text: &str) -> std::collections::BTreeSet<String> {
        let names = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        let names = names.filter(|w| w.starts_with("audience_sync_") && w.len() > "audience_sync_".len());
        names
            .map(|n| ["_bucket", "_count", "_sum"].iter().fold(n, |n, s| n.strip_suffix(s).unwrap_or(n)).to_string())
            .collect()
    }

    #[test]
    fn every_series_is_in_the_readme_and_the_rules_and_dashboard_use_only_served_ones() {
        let served = served();
        assert!(served.len() >= 22, "{served:?}");
        let readme = mentioned(include_str!("../README.md"));
        for name in &served {
            assert!(readme.contains(name), "{name} is not documented in README.md");
        }
        let deployed = [
            ("rules", include_str!("../deploy/prometheus/audience-sync.rules.yml")),
            ("dashboard", include_str!("../deploy/grafana/audience-sync.json")),
        ];
        for (what, text) in deployed {
            let used = mentioned(text);
            assert!(!used.is_empty(), "{what} uses no series");
            for name in used {
                assert!(served.contains(&name), "the {what} use {name}, which is not served");
            }
        }
    }

    #[test]
    fn a_request_counts_by_class_and_in_flight_until_answered() {
        let metrics = Metrics::new();
        metrics.computation("a", Some(Duration::from_secs(7200)));
        let d = metrics.destination("contentstack");
        let sent = d.sending();
        assert!(
            metrics.encode().contains("audience_sync_destination_requests_in_flight{destination=\"contentstack\"} 1")
        );
        sent.answered(Some(429));
        d.sending().answered(None);
        d.sending().answered(Some(204));
        let text = metrics.encode();
        for line in [
            "audience_sync_destination_requests_in_flight{destination=\"contentstack\"} 0",
            "audience_sync_destination_requests_total{destination=\"contentstack\",class=\"4xx\"} 1",
            "audience_sync_destination_requests_total{destination=\"contentstack\",class=\"2xx\"} 1",
            "audience_sync_destination_requests_total{destination=\"contentstack\",class=\"error\"} 1",
            "audience_sync_destination_throttled_total{destination=\"contentstack\"} 1",
            "audience_sync_destination_request_duration_seconds_count{destination=\"contentstack\"} 3",
            "audience_sync_passes_total{computation=\"a\",result=\"failed\"} 0",
            "audience_sync_schedule_interval_seconds{computation=\"a\"} 7200",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
