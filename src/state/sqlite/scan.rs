//! The diff's read of a whole computation, in user order.
//!
//! This is the hottest read: every row of an audience, ten million for a big one, on every
//! pass. Through sqlx each row crosses a channel from the driver's worker thread with a task
//! wake-up of its own, which caps the scan near half a million rows a second; so the scan opens
//! its own read-only SQLite connection (rusqlite, on the same bundled SQLite), on a thread of
//! its own that reads ahead of the merge. In WAL mode it reads the last committed state, never
//! the diff transaction that is being written meanwhile (which commits only after the merge).

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
            "SELECT user_id, desired, synced IS NOT NULL OR synced_at IS NOT NULL OR first_sent_at IS NOT NULL FROM member_rows \
             WHERE computation_id = (SELECT id FROM computations WHERE key = ?1) ORDER BY user_id",
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

    /// As `with_state_rows`, but the rows are read on a thread of their own, a chunk at a time
    /// ahead of `read`: decoding ten million rows then overlaps the merge of the snapshot's
    /// sorted runs instead of following it on the same core. Blocking.
    pub fn with_state_rows_read_ahead<T>(
        &self,
        key: &str,
        read: impl FnOnce(&mut dyn Iterator<Item = anyhow::Result<StateRow>>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        std::thread::scope(|scope| {
            let (chunks, received) = std::sync::mpsc::sync_channel::<anyhow::Result<Vec<StateRow>>>(READ_AHEAD_CHUNKS);
            scope.spawn(move || {
                let scanned = self.with_state_rows(key, |rows| {
                    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
                    for row in rows {
                        chunk.push(row?);
                        if chunk.len() == CHUNK_ROWS {
                            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS));
                            if chunks.send(Ok(full)).is_err() {
                                return Ok(()); // the merge stopped
                            }
                        }
                    }
                    let _ = chunks.send(Ok(chunk));
                    Ok(())
                });
                if let Err(e) = scanned {
                    let _ = chunks.send(Err(e));
                }
            });
            let mut chunk = Vec::new().into_iter();
            let mut rows = std::iter::from_fn(|| {
                loop {
                    if let Some(row) = chunk.next() {
                        return Some(Ok(row));
                    }
                    match received.recv() {
                        Ok(Ok(next)) => chunk = next.into_iter(),
                        Ok(Err(e)) => return Some(Err(e)),
                        Err(_) => return None, // the scan is done
                    }
                }
            });
            // Returning drops the receiver, which stops a scan still running after an error.
            read(&mut rows)
        })
    }
}

/// Rows per chunk handed from the scan's thread to the merge, and chunks read ahead.
const CHUNK_ROWS: usize = 4096;
const READ_AHEAD_CHUNKS: usize = 4;
