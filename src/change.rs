//! A change on its way out: read pending from the state (or a first sync's spool), sent by
//! delivery, answered by the destination, and recorded back, in one shape all the way.

use crate::config::Kind;
use crate::weigh::Weigh;

/// One computation's pending value for a user, and what a destination needs to describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingValue {
    /// The computation's key.
    pub key: String,
    /// The value as JSON text, sent verbatim.
    pub value: String,
    pub kind: Kind,
    /// When `desired` took this value: identifies the change (Segment's messageId, timestamp),
    /// and an answer is recorded only if the row still holds it.
    pub changed_at: String,
}

/// A pending value and its user, as the state hands it to delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    pub user_id: String,
    pub value: PendingValue,
}

impl Weigh for PendingValue {
    fn weight(&self) -> usize {
        self.key.len() + self.value.len() + self.changed_at.len()
    }
}

impl Weigh for PendingRow {
    fn weight(&self) -> usize {
        self.user_id.len() + self.value.weight()
    }
}

impl PendingRow {
    /// What the destination said of this row: `None` when acknowledged (2xx), else why not.
    pub fn answered(self, error: Option<String>) -> Outcome {
        Outcome { row: self, error }
    }
}

/// A row sent, with the destination's answer, as delivery records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub row: PendingRow,
    /// `None` when acknowledged (2xx), else why not.
    pub error: Option<String>,
}

impl Outcome {
    pub fn key(&self) -> &str {
        &self.row.value.key
    }

    pub fn user_id(&self) -> &str {
        &self.row.user_id
    }

    /// The JSON text that was sent.
    pub fn sent(&self) -> &str {
        &self.row.value.value
    }

    /// The row's `updated_at` when it was read for sending.
    pub fn changed_at(&self) -> &str {
        &self.row.value.changed_at
    }
}
