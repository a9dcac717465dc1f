//! config.toml: what to read, where to keep state, where to send (DESIGN §7).
//!
//! Parsing is strict (unknown fields are errors) because a misspelt key silently falling back
//! to a default is the kind of surprise that costs an operator a night. Every error names the
//! file, the line and the field.

mod computation;
mod destination;
mod raw;
pub mod schedule;
mod state;

use std::path::{Path, PathBuf};

pub use destination::{
    AttributeCreation, ContentstackConfig, DEFAULT_EDGE_API_BASE_URL, Destination, HttpConfig, RetryConfig, Secret,
    SegmentConfig, SegmentEvents,
};
pub use raw::{HttpFormat, SnapshotFormat};
pub use state::StateLocation;

/// A configuration error: the file, the line (when it is known) and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// The file being parsed: its path and text (errors name the line), its folder (relative
/// paths are resolved against it) and the environment (secrets are read from it).
struct ConfigFile<'a> {
    path: &'a Path,
    text: &'a str,
    base: PathBuf,
    env: &'a dyn Fn(&str) -> Option<String>,
}

/// `[sync] delivery_shard_rows` when unset.
const DEFAULT_DELIVERY_SHARD_ROWS: u64 = 10_000;

impl ConfigFile<'_> {
    /// An error at byte range `span` of the file, if known.
    fn err(&self, span: Option<std::ops::Range<usize>>, message: String) -> ConfigError {
        ConfigError { path: self.path.to_path_buf(), line: span.map(|s| line_of(self.text, s.start)), message }
    }

    fn resolve(&self, relative: &str) -> PathBuf {
        self.base.join(relative)
    }
}

/// The validated configuration, with every relative path resolved against the directory of
/// config.toml (so the daemon behaves the same whatever its working directory).
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub state: StateLocation,
    /// Record every delivery answered in `delivery_history`, and keep it this many days.
    pub keep_history_days: Option<u32>,
    /// The default schedule (six fields, seconds first, UTC).
    pub cron: String,
    pub sort_buffer_bytes: usize,
    pub lease_ttl: std::time::Duration,
    /// PostgreSQL: deliveries of more rows are shared out in shards of about this many.
    pub delivery_shard_rows: u64,
    pub shutdown_grace: std::time::Duration,
    /// Where `run` serves Prometheus metrics and `/healthz`, when set.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub destination: Destination,
    pub retry: RetryConfig,
    pub computations: Vec<Computation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Audience,
    ComputedTrait,
}

impl Kind {
    /// The word stored in `computations.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audience => "audience",
            Kind::ComputedTrait => "computed_trait",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Computation {
    pub name: String,
    pub key: String,
    pub kind: Kind,
    /// The cron schedule of this computation (its own, or `[schedule].cron`).
    pub cron: String,
    pub source: Source,
    pub guard: Guard,
    /// Arrays and objects are acceptable computed-trait values.
    pub allow_structured: bool,
    /// The longest user_id accepted, in bytes.
    pub max_user_id_bytes: usize,
}

#[derive(Debug, Clone)]
pub enum Source {
    File {
        path: PathBuf,
        format: SnapshotFormat,
        gzip: bool,
        /// Read the snapshot only when this marker exists and is not older than it.
        ready_file: Option<PathBuf>,
    },
    Http {
        url: url::Url,
        format: HttpFormat,
        /// A whole `Authorization` header value, from the environment.
        authorization: Option<Secret>,
        timeout: std::time::Duration,
        max_retries: u32,
        /// Most pages one load of a paged JSON source may follow.
        max_pages: u64,
    },
    Sql {
        /// The database URL (it may hold a password, hence a secret).
        url: Secret,
        query: String,
    },
}

/// The mass-exit guard of a computation (DESIGN §9.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guard {
    pub max_exit_ratio: f64,
    pub min_members: u64,
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read configuration: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(path, text, &|name: &str| std::env::var(name).ok())
    }

    /// As `parse`, with the environment `env`.
    fn parse_with_env(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let file = ConfigFile { path, text, base: path.parent().unwrap_or(Path::new("")).to_path_buf(), env };
        let raw: raw::RawConfig =
            toml::from_str(text).map_err(|e| file.err(e.span(), e.message().trim().to_string()))?;
        let (destination, retry) = destination::parse(&raw.destination, &file.base, env)
            .map_err(|(span, m)| file.err(span, format!("destination.{m}")))?;
        let cron = match &raw.schedule.cron {
            Some(c) => {
                schedule::parse(c.get_ref()).map_err(|m| file.err(Some(c.span()), format!("schedule.cron: {m}")))?;
                c.get_ref().clone()
            }
            None => schedule::DEFAULT_CRON.to_string(),
        };
        let metrics_listen = match &raw.metrics {
            Some(m) => Some(m.listen.get_ref().parse::<std::net::SocketAddr>().map_err(|e| {
                let message = format!("metrics.listen: {:?} is not an address:port: {e}", m.listen.get_ref());
                file.err(Some(m.listen.span()), message)
            })?),
            None => None,
        };
        let keep_history_days = match &raw.state.keep_history_days {
            Some(days) => Some(u32::try_from(*days.get_ref()).ok().filter(|d| *d > 0).ok_or_else(|| {
                let message =
                    format!("state.keep_history_days: {} is not a number of days (1 or more)", days.get_ref());
                file.err(Some(days.span()), message)
            })?),
            None => None,
        };
        let delivery_shard_rows = match &raw.sync.delivery_shard_rows {
            Some(rows) if *rows.get_ref() == 0 => {
                let message = "sync.delivery_shard_rows: 0 is not a number of rows (1 or more)".to_string();
                return Err(file.err(Some(rows.span()), message));
            }
            Some(rows) => *rows.get_ref(),
            None => DEFAULT_DELIVERY_SHARD_ROWS,
        };
        let declared = raw.audience.into_iter().map(|c| (Kind::Audience, c));
        let declared = declared.chain(raw.computed_trait.into_iter().map(|c| (Kind::ComputedTrait, c)));
        let computations = computation::parse_all(&file, declared, &raw.sync, &cron)?;
        Ok(Config {
            path: path.to_path_buf(),
            state: state::parse(&file, &raw.state)?,
            keep_history_days,
            cron,
            sort_buffer_bytes: raw.sync.sort_buffer_mb.saturating_mul(1 << 20).max(1 << 20),
            lease_ttl: std::time::Duration::from_secs(raw.sync.lease_ttl_secs.max(1)),
            delivery_shard_rows,
            shutdown_grace: std::time::Duration::from_secs(raw.sync.shutdown_grace_secs),
            metrics_listen,
            destination,
            retry,
            computations,
        })
    }

    /// Whether a computation of this config has `key`.
    pub fn names(&self, key: &str) -> bool {
        self.computations.iter().any(|c| c.key == key)
    }

    /// The computations named by `keys`, or all when `keys` is empty. Unknown keys are an error.
    pub fn select(&self, keys: &[String]) -> anyhow::Result<Vec<Computation>> {
        if keys.is_empty() {
            return Ok(self.computations.clone());
        }
        for k in keys {
            if !self.names(k) {
                let known: Vec<&str> = self.computations.iter().map(|c| c.key.as_str()).collect();
                anyhow::bail!("no computation has key {k:?} (known: {})", known.join(", "));
            }
        }
        Ok(self.computations.iter().filter(|c| keys.contains(&c.key)).cloned().collect())
    }
}

pub(crate) fn parse_http_url(s: &str) -> Result<url::Url, String> {
    let shown = crate::redact::redact_url(s);
    let url = url::Url::parse(s).map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("{shown:?} must be an http(s) URL with a host"));
    }
    Ok(url)
}

fn positive_duration(secs: f64) -> Option<std::time::Duration> {
    (secs.is_finite() && secs > 0.0).then(|| std::time::Duration::from_secs_f64(secs))
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests;
