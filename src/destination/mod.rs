//! Destinations: where pending changes go. Each turns one user's update into its own request
//! and answers only "acknowledged" or "not, because ..."; recording the answer is delivery's job.

mod contentstack;
mod file;

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::config;

pub use contentstack::Contentstack;
pub use file::FileDestination;

/// All pending values of one user in one delivery round: (trait key, JSON text), sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUpdate {
    pub user_id: String,
    pub values: Vec<(String, String)>,
}

impl UserUpdate {
    /// The values as a JSON object, keys in order, values verbatim (they are stored as JSON).
    pub fn traits(&self) -> Result<BTreeMap<&str, &RawValue>, DeliveryError> {
        self.values
            .iter()
            .map(|(k, v)| {
                let raw: &RawValue = serde_json::from_str(v).map_err(|e| {
                    DeliveryError::new(format!("state holds invalid JSON for {k:?}: {e}"))
                })?;
                Ok((k.as_str(), raw))
            })
            .collect()
    }
}

/// Why a destination did not acknowledge an update: recorded as the row's `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub message: String,
}

impl DeliveryError {
    pub fn new(message: impl Into<String>) -> Self {
        DeliveryError {
            message: message.into(),
        }
    }
}

pub enum Destination {
    Contentstack(Contentstack),
    File(FileDestination),
}

impl Destination {
    pub fn from_config(config: &config::Destination) -> anyhow::Result<Destination> {
        Ok(match config {
            config::Destination::Contentstack(c) => {
                Destination::Contentstack(Contentstack::new(c)?)
            }
            config::Destination::File { path } => Destination::File(FileDestination::open(path)?),
        })
    }

    /// How many updates may be in flight at once.
    pub fn concurrency(&self) -> usize {
        match self {
            Destination::Contentstack(c) => c.concurrency(),
            // Appends are serialised by the file's lock; concurrency here only lets the state
            // record many acknowledgements in one transaction.
            Destination::File(_) => 256,
        }
    }

    /// Sends one user's update; `Ok` only once the destination acknowledged it.
    pub async fn send(&self, update: &UserUpdate) -> Result<(), DeliveryError> {
        match self {
            Destination::Contentstack(c) => c.send(update).await,
            Destination::File(f) => f.send(update),
        }
    }
}
