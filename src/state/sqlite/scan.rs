//! The diff's read of a whole computation, in user order.
//!
//! This is the hottest read: every row of an audience, ten million for a big one, on every
//! pass. Through sqlx each row crosses a channel from the driver's worker thread with a task
//! wake-up of its own, which caps the scan near half a million rows a second; so the scan opens
//! its own read-only SQLite connection (rusqlite, on the same bundled SQLite), on a thread of
//! its own (`state::Store::with_state_rows_read_ahead` reads ahead of the merge). In WAL mode it reads the last committed state, never
//! the diff transaction that is being written meanwhile (which commits only after the merge).
//!
//! A row never acknowledged in `member_rows` may have been since the last diff (`acknowledged`,
//! which the diff folds in): it is told. Only such rows are looked up there, a few per pass.

use rusqlite::{Connection, OpenFlags};

use super::Store;
use crate::diff::StateRow;
use crate::record::json_text;

impl Store {
    /// Hands `read` the state rows of computation `key` in user order. Blocking: call it from a
    /// blocking thread.
    pub fn with_state_rows<T>(
        &self,
        key: &str,
        read: impl FnOnce(&mut dyn Iterator<Item = anyhow::Result<StateRow>>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let db = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        super::wait_for_locks(&db)?;
        let mut statement = db.prepare(
            "SELECT user_id, desired, CASE WHEN synced IS NOT NULL OR synced_at IS NOT NULL OR first_sent_at IS NOT NULL THEN 1 \
             ELSE EXISTS (SELECT 1 FROM acknowledged a WHERE a.computation_id = m.computation_id AND a.user_id = m.user_id) END \
             FROM member_rows m WHERE computation_id = (SELECT id FROM computations WHERE key = ?1) ORDER BY user_id",
        )?;
        let mut rows = statement.query([key])?;
        let mut iter = std::iter::from_fn(|| {
            let row = match rows.next() {
                Ok(Some(row)) => row,
                Ok(None) => return None,
                Err(e) => return Some(Err(e.into())),
            };
            let read = || -> anyhow::Result<StateRow> {
                let desired = json_text(super::stored::value_text(row.get_ref(1)?)?);
                Ok(StateRow { user_id: row.get(0)?, desired, told: row.get(2)? })
            };
            Some(read())
        });
        read(&mut iter)
    }
}
