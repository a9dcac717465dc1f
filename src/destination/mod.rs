//! Destinations: where pending changes go. Each builds its own requests from users' updates and
//! answers, per row, "acknowledged" or "not, because ..."; retrying and recording the answers
//! is delivery's job, classifying them the HTTP layer's (`crate::http`).

mod attributes;
mod contentstack;
mod file;
mod h1;
mod segment;
mod sender;

use std::collections::BTreeMap;

use serde_json::value::RawValue;

pub use crate::change::PendingValue;
use crate::config;
use crate::http::HttpError;
use crate::metrics::Metrics;
use crate::redact::redact_url;

/// What the destinations' signatures carry: how long a request may wait, what kind of failure.
pub use crate::http::{Failure, Patience};
pub use attributes::AttributeManager;
pub use contentstack::Contentstack;
pub use file::FileDestination;
pub use segment::Segment;
pub use sender::HttpSender;

/// All pending values of one user in one delivery round, sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUpdate {
    pub user_id: String,
    pub values: Vec<PendingValue>,
}

impl crate::weigh::Weigh for UserUpdate {
    fn weight(&self) -> usize {
        self.user_id.len() + self.values.iter().map(crate::weigh::Weigh::weight).sum::<usize>()
    }
}

impl UserUpdate {
    /// The values as a JSON object, keys in order, values verbatim (they are stored as JSON).
    pub fn traits(&self) -> Result<BTreeMap<&str, &RawValue>, DeliveryError> {
        self.values.iter().map(|v| Ok((v.key.as_str(), raw_json(v)?))).collect()
    }
}

/// The URL of `path` under a destination's configured `base`: appended to its path, keeping its
/// query; without userinfo, which the destinations never send (credentials go in headers).
pub fn endpoint(base: &url::Url, path: &[&str]) -> anyhow::Result<url::Url> {
    let mut url = base.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.path_segments_mut()
        .map_err(|_| anyhow::anyhow!("{} cannot take a path", redact_url(base.as_str())))?
        .pop_if_empty()
        .extend(path);
    Ok(url)
}

/// A stored value as raw JSON, for serializing without re-encoding.
pub fn raw_json(v: &PendingValue) -> Result<&RawValue, DeliveryError> {
    serde_json::from_str(&v.value)
        .map_err(|e| DeliveryError::permanent(format!("state holds invalid JSON for {:?}: {e}", v.key)))
}

/// Why a destination did not acknowledge a row: recorded as the row's `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub message: String,
    pub failure: Failure,
    /// How long the destination asked us to wait (`Retry-After`).
    pub retry_after: Option<std::time::Duration>,
}

impl DeliveryError {
    pub fn permanent(message: impl Into<String>) -> Self {
        DeliveryError { message: message.into(), failure: Failure::Permanent, retry_after: None }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        DeliveryError { message: message.into(), failure: Failure::Transient, retry_after: None }
    }

    /// Not sent at all: delivery stops, and the row stays pending as it was.
    pub fn unsent(message: impl Into<String>) -> Self {
        DeliveryError { message: message.into(), failure: Failure::Unsent, retry_after: None }
    }
}

impl From<HttpError> for DeliveryError {
    fn from(HttpError { message, failure, retry_after, .. }: HttpError) -> Self {
        DeliveryError { message, failure, retry_after }
    }
}

/// The answer for each row of a call, in the order of the updates and their values.
pub type RowResults = Vec<Result<(), DeliveryError>>;

/// The same answer for every row of `updates`.
pub fn for_every_row(updates: &[UserUpdate], result: &Result<(), DeliveryError>) -> RowResults {
    updates.iter().flat_map(|u| u.values.iter().map(|_| result.clone())).collect()
}

/// Where changes go. The HTTP destinations' clients are boxed: they are many times the size of
/// the file's.
pub enum Destination {
    Contentstack(Box<Contentstack>),
    Segment(Box<Segment>),
    File(FileDestination),
}

impl Destination {
    /// The destination `config` describes, its requests counted in `metrics`.
    pub fn from_config(config: &config::Destination, metrics: &Metrics) -> anyhow::Result<Destination> {
        Ok(match config {
            config::Destination::Contentstack(c) => Destination::Contentstack(Box::new(Contentstack::new(c, metrics)?)),
            config::Destination::Segment(c) => Destination::Segment(Box::new(Segment::new(c, metrics)?)),
            config::Destination::File { path } => Destination::File(FileDestination::open(path)?),
        })
    }

    /// How many calls may be in flight at once.
    pub fn concurrency(&self) -> usize {
        match self {
            Destination::Contentstack(c) => c.concurrency(),
            Destination::Segment(s) => s.concurrency(),
            // Appends are serialised by the file's lock; a few calls in flight let the state
            // record one call's answers while the next is written.
            Destination::File(_) => 4,
        }
    }

    /// Whether every worker reaches the same destination: a file is each machine's own, so its
    /// deliveries are not shared out (`delivery::shards`).
    pub fn shared_by_workers(&self) -> bool {
        !matches!(self, Destination::File(_))
    }

    /// How many users' updates one call carries.
    pub fn updates_per_call(&self) -> usize {
        match self {
            // One request per user (DESIGN §5).
            Destination::Contentstack(_) => 1,
            Destination::Segment(_) => segment::USERS_PER_CALL,
            Destination::File(_) => 4096,
        }
    }

    /// Sends one call's updates, no request waiting for its turn longer than `patience`; one
    /// result per row, in order.
    pub async fn send(&self, updates: &[UserUpdate], patience: &Patience<'_>) -> RowResults {
        match self {
            Destination::Contentstack(c) => c.send(updates, patience).await,
            Destination::Segment(s) => s.send(updates, patience).await,
            Destination::File(f) => f.send(updates, patience.tenure).await,
        }
    }

    /// The destination's attribute manager, when it must create attributes before sending.
    pub fn attributes(&self) -> Option<&AttributeManager> {
        match self {
            Destination::Contentstack(c) => c.attributes(),
            Destination::Segment(_) | Destination::File(_) => None,
        }
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::endpoint;

    fn at(base: &str, path: &[&str]) -> String {
        endpoint(&url::Url::parse(base).unwrap(), path).unwrap().to_string()
    }

    #[test]
    fn the_path_goes_before_the_query_and_userinfo_is_never_sent() {
        assert_eq!(
            at("http://user:pw@127.0.0.1:9/seg/?region=eu", &["v1", "batch"]),
            "http://127.0.0.1:9/seg/v1/batch?region=eu"
        );
        assert_eq!(at("https://api.segment.io", &["v1", "batch"]), "https://api.segment.io/v1/batch");
        assert_eq!(at("http://h/base?token=t", &["user-attributes"]), "http://h/base/user-attributes?token=t");
    }
}
