//! What `explain` reads of one user in one computation: the rows every backend gives back.

use serde::Serialize;

use super::LastRun;

/// One user in one computation, as the state holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserState {
    /// The last pass that recorded a diff of the computation (the state's rows are its result).
    pub last_diff: Option<DiffPass>,
    /// The user's `memberships` row.
    pub row: Option<MembershipRow>,
    /// The user's entry in a first sync's queue, when it has no row yet: still to be sent.
    pub queued: Option<Queued>,
    /// The user's latest deliveries in `delivery_history`, newest first.
    pub history: Vec<Delivery>,
}

/// A pass that recorded a diff: its `sync_runs` id and row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DiffPass {
    pub run_id: i64,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub run: LastRun,
}

/// A `memberships` row (values are JSON text).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MembershipRow {
    pub desired: String,
    pub synced: Option<String>,
    pub updated_at: String,
    pub synced_at: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub quarantined_at: Option<String>,
    pub first_sent_at: Option<String>,
}

/// A member a first sync has not had answered yet: the value to send, decided at `queued_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Queued {
    pub value: String,
    pub queued_at: String,
}

/// One delivery answered, from `delivery_history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Delivery {
    pub answered_at: String,
    pub run_id: Option<i64>,
    pub value: String,
    pub acknowledged: bool,
    pub http_status: Option<i64>,
    pub error: Option<String>,
}
