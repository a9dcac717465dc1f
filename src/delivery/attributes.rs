//! Before delivering, make sure the destination knows every key (Contentstack custom attributes
//! with `create_attributes`). Keys known to exist are remembered in the state, so the
//! management API is asked only about new computations.

use std::collections::BTreeMap;

use crate::config::Computation;
use crate::destination::{Destination, Patience};
use crate::state::Store;

/// Ensures the attributes of `computations` exist. Returns, for each computation whose
/// attribute could not be listed or created, why; nothing may be sent for those. No request
/// waits for its turn longer than `patience`.
pub async fn ensure_attributes(
    store: &Store,
    destination: &Destination,
    computations: &[&Computation],
    patience: &Patience<'_>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut blocked = BTreeMap::new();
    let Some(manager) = destination.attributes() else { return Ok(blocked) };
    let known = store.known_attributes().await?;
    let needed: Vec<&&Computation> = computations.iter().filter(|c| !known.contains(&c.key)).collect();
    if needed.is_empty() {
        return Ok(blocked);
    }
    let existing = match manager.list(patience).await {
        Ok(existing) => existing,
        Err(e) => {
            for c in needed {
                blocked.insert(c.key.clone(), format!("cannot list the destination's attributes: {e}"));
            }
            return Ok(blocked);
        }
    };
    for c in needed {
        if existing.contains(&c.key) {
            store.remember_attribute(&c.key, false).await?;
            continue;
        }
        match manager.create(&c.key, &c.name, patience).await {
            Ok(()) => {
                tracing::info!(key = %c.key, "created the destination attribute");
                store.remember_attribute(&c.key, true).await?;
            }
            Err(e) => {
                blocked.insert(c.key.clone(), format!("cannot create the attribute {:?}: {e}", c.key));
            }
        }
    }
    Ok(blocked)
}
