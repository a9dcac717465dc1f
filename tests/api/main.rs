//! End-to-end tests: the real binary, real SQLite files in temp dirs, a real HTTP server on
//! loopback standing in for Contentstack.

mod cli_config;
mod helpers;
mod resume;
mod snapshots;
mod sync;
