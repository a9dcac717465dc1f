//! audience-sync: keeps audience memberships and computed traits in sync with a
//! personalization destination.
//!
//! The modules follow the data: `source` loads a snapshot, `diff` compares it with the
//! `state`, `delivery` sends what is pending to a `destination` and records what was
//! acknowledged; `pass` runs that for the selected computations and `cli` is the command line.

pub mod change;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod destination;
pub mod diff;
pub mod http;
pub mod key;
pub mod metrics;
pub mod pass;
pub mod progress;
pub mod read_ahead;
pub mod record;
pub mod redact;
pub mod say;
pub mod shutdown;
pub mod source;
mod sqlite_memory;
pub mod state;
pub mod tenure;
pub mod weigh;
