//! `[state]`: where the state lives. A SQLite file by default (one VM); with `url_env`, a
//! PostgreSQL database shared by several workers, its URL read from the environment because it
//! may hold a password (DESIGN §7).

use std::path::PathBuf;

use super::ConfigFile;
use super::destination::Secret;
use super::raw::RawState;
use crate::config::ConfigError;
use crate::redact::redact_url;

/// Where the state is.
#[derive(Debug, Clone)]
pub enum StateLocation {
    /// A SQLite file, created on first use.
    File(PathBuf),
    /// A PostgreSQL database; `env` names the variable its URL came from.
    Postgres { url: Secret, env: String },
}

impl StateLocation {
    /// How an operator reads where the state is: the file's path, or the database's URL with
    /// its credentials hidden.
    pub fn describe(&self) -> String {
        match self {
            StateLocation::File(path) => path.display().to_string(),
            StateLocation::Postgres { url, .. } => redact_url(url.expose()),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, StateLocation::Postgres { .. })
    }
}

const DEFAULT_PATH: &str = "audience-sync.db";

/// `[state] path` or `url_env`: one of them (neither: the default file).
pub(super) fn parse(file: &ConfigFile, raw: &RawState) -> Result<StateLocation, ConfigError> {
    match (&raw.path, &raw.url_env) {
        (Some(path), Some(_)) => {
            Err(file.err(Some(path.span()), "state: give one of path (SQLite) and url_env (PostgreSQL)".into()))
        }
        (Some(path), None) => Ok(StateLocation::File(file.resolve(path.get_ref()))),
        (None, None) => Ok(StateLocation::File(file.resolve(DEFAULT_PATH))),
        (None, Some(var)) => {
            let name = var.get_ref();
            let err = |what: &str| {
                file.err(Some(var.span()), format!("state.url_env: the environment variable {name} {what}"))
            };
            let url = (file.env)(name).filter(|u| !u.is_empty()).ok_or_else(|| err("is not set"))?;
            // The value is never shown: it may hold a password in any part of it.
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(err("does not hold a postgres:// URL"));
            }
            Ok(StateLocation::Postgres { url: Secret::new(url), env: name.clone() })
        }
    }
}
