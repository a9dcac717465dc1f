//! The diff's read of a whole computation, in user order.
//!
//! This is the hottest read: every row of an audience, ten million for a big one, on every
//! pass. Through sqlx each row crosses a channel from the driver's worker thread with a task
//! wake-up of its own, which caps the scan near half a million rows a second; so the scan opens
//! its own read-only SQLite connection (rusqlite, on the same bundled SQLite) on a blocking
//! thread and hands rows over in chunks. In WAL mode it reads the last committed state, never
//! the diff transaction that is being written meanwhile.

use futures::{Stream, StreamExt};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;

use super::{BUSY_TIMEOUT, Store};
use crate::diff::StateRow;
use crate::source::json_text;

/// Rows per message from the scanning thread.
const CHUNK: usize = 4096;

impl Store {
    /// The state of one computation in user order, for the diff.
    pub fn scan(&self, key: &str) -> impl Stream<Item = anyhow::Result<StateRow>> + Unpin + use<> {
        let (tx, rx) = mpsc::channel::<anyhow::Result<Vec<StateRow>>>(4);
        let (path, key) = (self.path.clone(), key.to_string());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = scan_into(&path, &key, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let chunks = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        Box::pin(chunks.flat_map(|chunk| {
            let rows: Vec<anyhow::Result<StateRow>> = match chunk {
                Ok(rows) => rows.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(rows)
        }))
    }
}

fn scan_into(
    path: &std::path::Path,
    key: &str,
    tx: &mpsc::Sender<anyhow::Result<Vec<StateRow>>>,
) -> anyhow::Result<()> {
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    db.busy_timeout(BUSY_TIMEOUT)?;
    let mut statement = db.prepare(
        "SELECT user_id, desired, synced IS NOT NULL OR synced_at IS NOT NULL FROM memberships \
         WHERE computation_key = ?1 ORDER BY user_id",
    )?;
    let mut rows = statement.query([key])?;
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(row) = rows.next()? {
        let desired = json_text(row.get_ref(1)?.as_str()?);
        chunk.push(StateRow { user_id: row.get(0)?, desired, told: row.get(2)? });
        if chunk.len() == CHUNK
            && tx.blocking_send(Ok(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))).is_err()
        {
            return Ok(()); // the diff stopped listening
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(Ok(chunk));
    }
    Ok(())
}
