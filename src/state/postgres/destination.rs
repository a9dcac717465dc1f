//! `state_destination`: the destination this state is synced to.

use super::Store;
use crate::state::now;

const RECORDED: &str = "SELECT identity FROM state_destination WHERE id = 1";

impl Store {
    /// The state's name as an operator knows it (credentials hidden).
    pub fn shown(&self) -> String {
        self.shown.clone()
    }

    /// The destination recorded, if any.
    pub async fn recorded_destination(&self) -> anyhow::Result<Option<String>> {
        Ok(sqlx::query_scalar(RECORDED).fetch_optional(&self.pool).await?)
    }

    /// Records `identity` where no destination is; returns the destination recorded after.
    /// Workers at once on an empty database: the first insert's row lock makes the others
    /// wait, then find it.
    pub async fn record_destination(&self, identity: &str) -> anyhow::Result<Option<String>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO state_destination (id, identity, recorded_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(identity)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let recorded = sqlx::query_scalar(RECORDED).fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        Ok(recorded)
    }
}

/// Moves the state to `identity` in `db`'s transaction, its row locked until the transaction
/// ends; a real move forgets the attributes known to exist in the old destination's project.
pub(super) async fn move_to(db: &mut sqlx::PgConnection, identity: &str) -> anyhow::Result<()> {
    // `FOR UPDATE` first: the update below changes no key, so it alone would not wait for the
    // answer transactions holding the row `FOR KEY SHARE` (`shards::hold_shard`).
    sqlx::query("SELECT 1 FROM state_destination WHERE id = 1 FOR UPDATE").execute(&mut *db).await?;
    let moved = sqlx::query(
        "INSERT INTO state_destination (id, identity, recorded_at) VALUES (1, $1, $2) ON CONFLICT (id) \
         DO UPDATE SET identity = excluded.identity, recorded_at = excluded.recorded_at \
         WHERE state_destination.identity <> excluded.identity",
    )
    .bind(identity)
    .bind(now())
    .execute(&mut *db)
    .await?;
    if moved.rows_affected() > 0 {
        sqlx::query("DELETE FROM destination_attributes").execute(db).await?;
    }
    Ok(())
}
