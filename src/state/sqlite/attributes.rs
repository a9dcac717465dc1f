//! The `destination_attributes` table: attribute keys known to exist in the destination.

use std::collections::HashSet;

use super::{Store, now};

impl Store {
    /// Keys known to exist as attributes in the destination.
    pub async fn known_attributes(&self) -> anyhow::Result<HashSet<String>> {
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT key FROM destination_attributes").fetch_all(&self.pool).await?;
        Ok(keys.into_iter().collect())
    }

    /// Remembers that attribute `key` exists (and whether this program created it).
    pub async fn remember_attribute(&self, key: &str, created_by_us: bool) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO destination_attributes (key, created_at, created_by_us) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(now())
            .bind(created_by_us)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
