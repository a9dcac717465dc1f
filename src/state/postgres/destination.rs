//! `state_destination`: the destination this state is synced to.

use super::Store;
use crate::state::{DestinationClaim, now};

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

    /// Records `identity` where no destination is; returns the destination recorded after. Workers at once on an empty database: the first insert's
    /// row lock makes the others wait, then find it.
    pub async fn record_destination(&self, identity: &str) -> anyhow::Result<Option<String>> {
        let mut tx = self.pool.begin().await?;
        upsert(&mut tx, identity, DestinationClaim::Same).await?;
        let recorded = sqlx::query_scalar(RECORDED).fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        Ok(recorded)
    }
}

/// Records `identity` in `db`'s transaction where no destination is (moving: in place of
/// another one), the row locked until it ends; whether it wrote it.
pub(super) async fn upsert(
    db: &mut sqlx::PgConnection,
    identity: &str,
    claim: DestinationClaim,
) -> anyhow::Result<bool> {
    let keep = match claim {
        DestinationClaim::Same => "DO NOTHING",
        DestinationClaim::MoveTo => {
            "DO UPDATE SET identity = excluded.identity, recorded_at = excluded.recorded_at \
             WHERE state_destination.identity <> excluded.identity"
        }
    };
    let written = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO state_destination (id, identity, recorded_at) VALUES (1, $1, $2) ON CONFLICT (id) {keep}"
    )))
    .bind(identity)
    .bind(now())
    .execute(db)
    .await?;
    Ok(written.rows_affected() > 0)
}
