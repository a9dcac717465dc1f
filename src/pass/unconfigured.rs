//! Computations the state holds that config.toml no longer names. Nothing syncs them: the
//! destination keeps what it was last told of them, and their pending changes are never sent.
//! Removing one from config.toml is allowed, but never silent: every `sync` (a dry run too) and
//! every daemon start names them, and `status` lists them.

use crate::config::Config;
use crate::state::Store;

/// The keys of the computations in the state that `config` does not name.
pub async fn unconfigured(store: &Store, config: &Config) -> anyhow::Result<Vec<String>> {
    let mut keys = store.computation_keys().await?;
    keys.retain(|key| !config.names(key));
    Ok(keys)
}

/// Warns of the computations in the state that `config` does not name.
pub async fn warn_of_unconfigured(store: &Store, config: &Config) -> anyhow::Result<()> {
    let keys = unconfigured(store, config).await?;
    if !keys.is_empty() {
        tracing::warn!(
            computations = %keys.join(","),
            "in the state but not in config.toml: no longer synced (the destination keeps what it was last told \
             of them, and their pending changes are not sent); `status` shows them"
        );
    }
    Ok(())
}
