//! End-to-end tests: the real binary, real SQLite files in temp dirs, a real HTTP server on
//! loopback standing in for Contentstack.

mod attributes;
mod cli_config;
mod counting_server;
mod delivery;
mod explain;
mod first_sync;
mod helpers;
mod logs;
mod metrics;
mod one_destination;
mod operate;
mod pauses;
mod postgres_schema;
mod postgres_workers;
mod resume;
mod scripted_edge;
mod segment;
mod snapshots;
mod sources;
mod sync;
