//! `[destination]`: which destination, and how to deliver to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::parse_http_url;
use super::raw::RawDestination;

/// Personalize's default (AWS North America) region.
pub const DEFAULT_EDGE_API_BASE_URL: &str = "https://personalize-edge.contentstack.com";
/// Personalize's management API (attributes), AWS North America.
pub const DEFAULT_MANAGEMENT_API_BASE_URL: &str = "https://personalize-api.contentstack.com";
/// Segment's HTTP Tracking API, US region.
pub const DEFAULT_SEGMENT_ENDPOINT: &str = "https://api.segment.io";

#[derive(Debug, Clone)]
pub enum Destination {
    Contentstack(ContentstackConfig),
    Segment(SegmentConfig),
    File { path: PathBuf },
}

impl Destination {
    /// Which destination this is, as workers compare it: its type and address, never a
    /// secret. Workers whose configs differ here must not deliver each other's shards.
    pub fn identity(&self) -> String {
        match self {
            Destination::Contentstack(c) => format!("contentstack {} {}", kept(&c.edge_api_base_url), c.project_uid),
            // Two write keys are two sources (two workspaces, maybe) behind one endpoint; which
            // calls go to a source is how it is told, not which one it is.
            Destination::Segment(s) => format!("segment {} key {}", kept(&s.endpoint), s.write_key.fingerprint()),
            Destination::File { path } => format!("file {}", resolved(path).display()),
        }
    }
}

/// Where `url` sends, as the state keeps it: scheme, host, port and path. Never its userinfo,
/// query or fragment, where credentials go: not even as a hash, which a guess could be checked
/// against. Two URLs differing only there are one destination.
fn kept(url: &url::Url) -> String {
    let mut kept = url.clone();
    let _ = kept.set_username("");
    let _ = kept.set_password(None);
    kept.set_query(None);
    kept.set_fragment(None);
    kept.to_string()
}

/// The file `path` names wherever the command runs from: absolute, with the symlinks, `.` and
/// `..` of the file or its nearest existing directory resolved (the file and its directory may
/// not exist before the first pass, and must be named the same after it; a symlink retargeted
/// is another file).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for existing in absolute.ancestors() {
        if let Ok(mut resolved) = existing.canonicalize() {
            // What does not exist yet holds no symlink: its `..` go back a name.
            for part in absolute.strip_prefix(existing).unwrap_or(&absolute).components() {
                match part {
                    std::path::Component::ParentDir => _ = resolved.pop(),
                    std::path::Component::Normal(name) => resolved.push(name),
                    _ => {}
                }
            }
            return resolved;
        }
    }
    absolute
}

/// What every HTTP destination shares: how many requests, how fast, how long to wait.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub concurrency: usize,
    pub max_requests_per_second: Option<u32>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ContentstackConfig {
    pub edge_api_base_url: url::Url,
    pub project_uid: String,
    pub http: HttpConfig,
    /// Set when `create_attributes = true`.
    pub attributes: Option<AttributeCreation>,
}

#[derive(Debug, Clone)]
pub struct AttributeCreation {
    pub management_api_base_url: url::Url,
    pub token: Secret,
    pub organization_uid: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SegmentConfig {
    pub endpoint: url::Url,
    pub write_key: Secret,
    pub events: SegmentEvents,
    pub http: HttpConfig,
}

/// Which calls the Segment destination makes for a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentEvents {
    Identify,
    Track,
    Both,
}

/// Retries within a pass, and when a row that keeps failing is set aside.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Time a pass may spend waiting to retry; past it, rows stay pending for the next pass.
    pub budget: Duration,
    pub quarantine_after: u32,
}

/// A credential read from the environment: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Tells two secrets apart without showing either: the first 16 hex digits of the
    /// value's SHA-256.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(self.0.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

const HTTP_FIELDS: &[&str] =
    &["concurrency", "max_requests_per_second", "connect_timeout_secs", "request_timeout_secs"];
const RETRY_FIELDS: &[&str] =
    &["max_retries", "retry_base_delay_ms", "retry_max_delay_secs", "retry_budget_secs", "quarantine_after"];
const CONTENTSTACK_FIELDS: &[&str] = &[
    "edge_api_base_url",
    "project_uid",
    "create_attributes",
    "management_api_base_url",
    "management_token_env",
    "organization_uid",
];
const SEGMENT_FIELDS: &[&str] = &["endpoint", "write_key_env", "events"];
const FILE_FIELDS: &[&str] = &["path"];

/// A field error: its span (for the line) and "field: what is wrong".
pub(super) type FieldError = (Option<std::ops::Range<usize>>, String);

/// `[destination] type`, decided once: every match on it names each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DestinationKind {
    Contentstack,
    Segment,
    File,
}

impl DestinationKind {
    fn parse(d: &RawDestination) -> Result<DestinationKind, FieldError> {
        match d.kind.get_ref().as_str() {
            "contentstack" => Ok(DestinationKind::Contentstack),
            "segment" => Ok(DestinationKind::Segment),
            "file" => Ok(DestinationKind::File),
            other => {
                let msg =
                    format!("type: unknown destination {other:?}, expected \"contentstack\", \"segment\" or \"file\"");
                Err((Some(d.kind.span()), msg))
            }
        }
    }

    /// The fields of this kind alone.
    fn own_fields(self) -> &'static [&'static str] {
        match self {
            DestinationKind::Contentstack => CONTENTSTACK_FIELDS,
            DestinationKind::Segment => SEGMENT_FIELDS,
            DestinationKind::File => FILE_FIELDS,
        }
    }

    fn is_http(self) -> bool {
        match self {
            DestinationKind::Contentstack | DestinationKind::Segment => true,
            DestinationKind::File => false,
        }
    }
}

/// Validates `[destination]`; `env` looks up the variables that hold secrets.
pub(super) fn parse(
    d: &RawDestination,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Destination, RetryConfig), FieldError> {
    let kind = DestinationKind::parse(d)?;
    let allowed = |f: &str| {
        kind.own_fields().contains(&f) || RETRY_FIELDS.contains(&f) || (kind.is_http() && HTTP_FIELDS.contains(&f))
    };
    if let Some((field, span)) = d.set_fields().into_iter().find(|(f, _)| !allowed(f)) {
        return Err((Some(span), format!("{field}: not a field of a {} destination", d.kind.get_ref())));
    }
    let retry = retry(d)?;
    let destination = match kind {
        DestinationKind::File => Destination::File { path: base.join(required(d, d.path.as_ref(), "path")?) },
        DestinationKind::Segment => Destination::Segment(SegmentConfig {
            endpoint: url_or(d.endpoint.as_ref(), "endpoint", DEFAULT_SEGMENT_ENDPOINT)?,
            write_key: secret(d, d.write_key_env.as_ref(), "write_key_env", env)?,
            events: match d.events.as_ref().map(|e| (e.get_ref().as_str(), e.span())) {
                None | Some(("identify", _)) => SegmentEvents::Identify,
                Some(("track", _)) => SegmentEvents::Track,
                Some(("both", _)) => SegmentEvents::Both,
                Some((other, span)) => {
                    return Err((Some(span), format!("events: {other:?} is not \"identify\", \"track\" or \"both\"")));
                }
            },
            http: http(d)?,
        }),
        DestinationKind::Contentstack => {
            let attributes = match &d.create_attributes {
                Some(c) if *c.get_ref() => Some(AttributeCreation {
                    management_api_base_url: url_or(
                        d.management_api_base_url.as_ref(),
                        "management_api_base_url",
                        DEFAULT_MANAGEMENT_API_BASE_URL,
                    )?,
                    token: secret(d, d.management_token_env.as_ref(), "management_token_env", env)?,
                    organization_uid: d.organization_uid.as_ref().map(|o| o.get_ref().clone()),
                }),
                _ => None,
            };
            Destination::Contentstack(ContentstackConfig {
                edge_api_base_url: url_or(
                    d.edge_api_base_url.as_ref(),
                    "edge_api_base_url",
                    DEFAULT_EDGE_API_BASE_URL,
                )?,
                project_uid: required(d, d.project_uid.as_ref(), "project_uid")?,
                http: http(d)?,
                attributes,
            })
        }
    };
    Ok((destination, retry))
}

fn required(d: &RawDestination, v: Option<&Spanned<String>>, field: &str) -> Result<String, FieldError> {
    match v {
        Some(v) if !v.get_ref().trim().is_empty() => Ok(v.get_ref().clone()),
        Some(v) => Err((Some(v.span()), format!("{field}: must not be empty"))),
        None => Err((Some(d.kind.span()), format!("{field}: missing, a {} destination needs it", d.kind.get_ref()))),
    }
}

fn url_or(v: Option<&Spanned<String>>, field: &str, default: &str) -> Result<url::Url, FieldError> {
    match v {
        Some(u) => parse_http_url(u.get_ref()).map_err(|m| (Some(u.span()), format!("{field}: {m}"))),
        None => Ok(url::Url::parse(default).expect("default URLs parse")),
    }
}

/// A secret from the environment variable named by `field`.
fn secret(
    d: &RawDestination,
    v: Option<&Spanned<String>>,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, FieldError> {
    let name = required(d, v, field)?;
    let span = v.map(|v| v.span());
    match env(&name) {
        Some(value) if !value.is_empty() => Ok(Secret(value)),
        Some(_) => Err((span, format!("{field}: the environment variable {name} is empty"))),
        None => Err((span, format!("{field}: the environment variable {name} is not set"))),
    }
}

fn positive_secs(v: &Option<Spanned<f64>>, field: &str, default: f64) -> Result<Duration, FieldError> {
    match v {
        Some(s) if !(s.get_ref().is_finite() && *s.get_ref() > 0.0) => {
            Err((Some(s.span()), format!("{field}: must be a positive number of seconds")))
        }
        Some(s) => Ok(Duration::from_secs_f64(*s.get_ref())),
        None => Ok(Duration::from_secs_f64(default)),
    }
}

fn http(d: &RawDestination) -> Result<HttpConfig, FieldError> {
    let concurrency = match &d.concurrency {
        Some(c) if !(1..=1024).contains(c.get_ref()) => {
            return Err((Some(c.span()), "concurrency: must be between 1 and 1024".into()));
        }
        Some(c) => *c.get_ref(),
        None => 16,
    };
    let max_requests_per_second = match &d.max_requests_per_second {
        Some(r) if *r.get_ref() == 0 => {
            return Err((Some(r.span()), "max_requests_per_second: must be at least 1".into()));
        }
        r => r.as_ref().map(|r| *r.get_ref()),
    };
    Ok(HttpConfig {
        concurrency,
        max_requests_per_second,
        connect_timeout: positive_secs(&d.connect_timeout_secs, "connect_timeout_secs", 10.0)?,
        request_timeout: positive_secs(&d.request_timeout_secs, "request_timeout_secs", 30.0)?,
    })
}

fn retry(d: &RawDestination) -> Result<RetryConfig, FieldError> {
    let quarantine_after = match &d.quarantine_after {
        Some(q) if *q.get_ref() == 0 => return Err((Some(q.span()), "quarantine_after: must be at least 1".into())),
        q => q.as_ref().map_or(10, |q| *q.get_ref()),
    };
    Ok(RetryConfig {
        max_retries: d.max_retries.as_ref().map_or(5, |m| *m.get_ref()),
        base_delay: Duration::from_millis(d.retry_base_delay_ms.as_ref().map_or(200, |b| *b.get_ref())),
        max_delay: positive_secs(&d.retry_max_delay_secs, "retry_max_delay_secs", 30.0)?,
        budget: positive_secs(&d.retry_budget_secs, "retry_budget_secs", 600.0)?,
        quarantine_after,
    })
}
