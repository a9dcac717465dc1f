//! config.toml: what to read, where to keep state, where to send (DESIGN §7).
//!
//! Parsing is strict (unknown fields are errors) because a misspelt key silently falling back
//! to a default is the kind of surprise that costs an operator a night. Every error names the
//! file, the line and the field.

mod destination;
mod raw;
pub mod schedule;

use std::path::{Path, PathBuf};

use crate::key::snake_case;

pub use destination::{
    AttributeCreation, ContentstackConfig, DEFAULT_EDGE_API_BASE_URL, Destination, HttpConfig, RetryConfig, Secret,
    SegmentConfig, SegmentEvents,
};
pub use raw::{HttpFormat, SnapshotFormat};

/// A configuration error: the file, the line (when it is known) and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// The validated configuration, with every relative path resolved against the directory of
/// config.toml (so the daemon behaves the same whatever its working directory).
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub state_path: PathBuf,
    /// The default schedule (six fields, seconds first, UTC).
    pub cron: String,
    pub sort_buffer_bytes: usize,
    pub lease_ttl: std::time::Duration,
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
        let err = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
            path: path.to_path_buf(),
            line: span.map(|s| line_of(text, s.start)),
            message,
        };
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| err(e.span(), e.message().trim().to_string()))?;
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let resolve = |p: &str| base.join(p);

        let env = |name: &str| std::env::var(name).ok();
        let (destination, retry) = destination::parse(&raw.destination, &base, &env)
            .map_err(|(span, m)| err(span, format!("destination.{m}")))?;

        let cron = match &raw.schedule.cron {
            Some(c) => {
                schedule::parse(c.get_ref()).map_err(|m| err(Some(c.span()), format!("schedule.cron: {m}")))?;
                c.get_ref().clone()
            }
            None => schedule::DEFAULT_CRON.to_string(),
        };
        let metrics_listen = match &raw.metrics {
            Some(m) => Some(m.listen.get_ref().parse::<std::net::SocketAddr>().map_err(|e| {
                err(
                    Some(m.listen.span()),
                    format!("metrics.listen: {:?} is not an address:port: {e}", m.listen.get_ref()),
                )
            })?),
            None => None,
        };
        let mut computations: Vec<(Computation, std::ops::Range<usize>)> = Vec::new();
        let declared = raw.audience.into_iter().map(|c| (Kind::Audience, c));
        let declared = declared.chain(raw.computed_trait.into_iter().map(|c| (Kind::ComputedTrait, c)));
        for (kind, c) in declared {
            let table = kind.as_str();
            let name_span = c.name.span();
            let name = c.name.into_inner();
            if name.trim().is_empty() {
                return Err(err(Some(name_span), format!("{table}.name: must not be empty")));
            }
            let key = match c.key {
                Some(k) => {
                    let valid = !k.get_ref().is_empty()
                        && k.get_ref().chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
                    if !valid {
                        return Err(err(
                            Some(k.span()),
                            format!("{table}.key: {:?} must be ASCII letters, digits and '_'", k.get_ref()),
                        ));
                    }
                    k.into_inner()
                }
                None => snake_case(&name),
            };
            if key.is_empty() {
                return Err(err(Some(name_span), format!("{table}.name: {name:?} gives an empty key; set `key`")));
            }
            if let Some((other, other_span)) = computations.iter().find(|(o, _)| o.key == key) {
                return Err(err(
                    Some(name_span),
                    format!(
                        "{table}.name: {name:?} has key {key:?}, which {:?} (line {}) already uses; set a distinct `key`",
                        other.name,
                        line_of(text, other_span.start)
                    ),
                ));
            }
            let source_err = |m: String| err(Some(name_span.clone()), format!("{table} {name:?}: source.{m}"));
            let source = match c.source {
                raw::RawSource::File(s) => {
                    let (format, gzip) =
                        raw::infer_format(&s.path, s.format).map_err(|m| source_err(format!("path: {m}")))?;
                    Source::File {
                        path: resolve(&s.path),
                        format,
                        gzip,
                        ready_file: s.ready_file.as_deref().map(resolve),
                    }
                }
                raw::RawSource::Http(h) => Source::Http {
                    url: parse_http_url(&h.url).map_err(|m| source_err(format!("url: {m}")))?,
                    format: h.format,
                    authorization: match &h.auth_header_env {
                        Some(var) => Some(Secret::new(env(var).ok_or_else(|| {
                            source_err(format!("auth_header_env: the environment variable {var} is not set"))
                        })?)),
                        None => None,
                    },
                    timeout: positive_duration(h.timeout_secs)
                        .ok_or_else(|| source_err("timeout_secs: must be positive".into()))?,
                    max_retries: h.max_retries,
                    max_pages: h.max_pages,
                },
                raw::RawSource::Sql(q) => {
                    let url = match (q.url, q.url_env) {
                        (Some(u), None) => u,
                        (None, Some(var)) => env(&var)
                            .ok_or_else(|| source_err(format!("url_env: the environment variable {var} is not set")))?,
                        _ => return Err(source_err("url: give exactly one of url and url_env".into())),
                    };
                    if !(url.starts_with("sqlite:") || url.starts_with("postgres:") || url.starts_with("postgresql:")) {
                        return Err(source_err("url: only sqlite:// and postgres:// databases are supported".into()));
                    }
                    Source::Sql { url: Secret::new(url), query: q.query }
                }
            };
            let ratio = match c.max_exit_ratio.as_ref().or(raw.sync.max_exit_ratio.as_ref()) {
                Some(r) if !(0.0..=1.0).contains(r.get_ref()) => {
                    return Err(err(Some(r.span()), "max_exit_ratio: must be between 0 and 1".into()));
                }
                Some(r) => *r.get_ref(),
                None => 0.5,
            };
            let guard =
                Guard { max_exit_ratio: ratio, min_members: c.guard_min_members.unwrap_or(raw.sync.guard_min_members) };
            let cron = match c.schedule {
                Some(own) => {
                    schedule::parse(own.get_ref())
                        .map_err(|m| err(Some(own.span()), format!("{table}.schedule: {m}")))?;
                    own.into_inner()
                }
                None => cron.clone(),
            };
            let (allow_structured, max_user_id_bytes) = (c.allow_structured, c.max_user_id_bytes);
            let computation = Computation { name, key, kind, cron, source, guard, allow_structured, max_user_id_bytes };
            computations.push((computation, name_span));
        }

        Ok(Config {
            path: path.to_path_buf(),
            state_path: resolve(&raw.state.path),
            cron,
            sort_buffer_bytes: raw.sync.sort_buffer_mb.saturating_mul(1 << 20).max(1 << 20),
            lease_ttl: std::time::Duration::from_secs(raw.sync.lease_ttl_secs.max(1)),
            shutdown_grace: std::time::Duration::from_secs(raw.sync.shutdown_grace_secs),
            metrics_listen,
            destination,
            retry,
            computations: computations.into_iter().map(|(c, _)| c).collect(),
        })
    }

    /// The computations named by `keys`, or all when `keys` is empty. Unknown keys are an error.
    pub fn select(&self, keys: &[String]) -> anyhow::Result<Vec<Computation>> {
        if keys.is_empty() {
            return Ok(self.computations.clone());
        }
        for k in keys {
            if !self.computations.iter().any(|c| &c.key == k) {
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
