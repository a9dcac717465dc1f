//! `state_destination`: the destination this state is synced to.

use super::{Store, now};
use crate::state::{DestinationClaim, OtherDestination};

const RECORDED: &str = "SELECT identity FROM state_destination WHERE id = 1";

impl Store {
    /// Records `identity` as this state's destination where none is (or, moving, in its
    /// place); another already recorded is refused. Only a state without one is written to.
    pub async fn claim_destination(&self, identity: &str, claim: DestinationClaim) -> anyhow::Result<()> {
        let recorded: Option<String> = sqlx::query_scalar(RECORDED).fetch_optional(&self.pool).await?;
        if recorded.as_deref() == Some(identity) || (recorded.is_some() && claim == DestinationClaim::Same) {
            return OtherDestination::unless_same(&self.path.display().to_string(), recorded, identity);
        }
        let keep = match claim {
            DestinationClaim::Same => "DO NOTHING",
            DestinationClaim::MoveTo => {
                "DO UPDATE SET identity = excluded.identity, recorded_at = excluded.recorded_at \
                 WHERE identity <> excluded.identity"
            }
        };
        let mut tx = self.begin_immediate().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO state_destination (id, identity, recorded_at) VALUES (1, ?1, ?2) ON CONFLICT (id) {keep}"
        )))
        .bind(identity)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let recorded = sqlx::query_scalar(RECORDED).fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        OtherDestination::unless_same(&self.path.display().to_string(), recorded, identity)
    }

    /// As `claim_destination`, changing nothing (a dry run).
    pub async fn check_destination(&self, identity: &str) -> anyhow::Result<()> {
        let recorded = sqlx::query_scalar(RECORDED).fetch_optional(&self.pool).await?;
        OtherDestination::unless_same(&self.path.display().to_string(), recorded, identity)
    }
}
