//! Delivery's rows: the pending rows of the state and the entries of first syncs' spools,
//! merged in user order (then computation), so that each user still gets one update holding
//! all of their values.

use std::collections::VecDeque;

use crate::change::{PendingRow, PendingValue};
use crate::config::Kind;
use crate::diff::spool::SpoolReader;
use crate::read_ahead::Weigh;
use crate::state::PendingReader;

/// A computation on its first sync: the entries its diff spooled, each to be sent as changed at
/// `changed_at` (the diff's time).
pub struct FirstSync {
    pub key: String,
    pub kind: Kind,
    pub changed_at: String,
    pub entries: SpoolReader,
}

/// Rows to deliver, in pages. Blocking: read it on a blocking thread.
pub struct Rows {
    pending: Option<PendingReader>,
    /// Pending rows read and not yet handed out, and the last user read.
    buffered: VecDeque<PendingRow>,
    read_through: String,
    /// Rows to ask the state for next: as many as weigh about `STATE_READ_BYTES` by the last
    /// read's rows, within `STATE_READ_ROWS`.
    state_rows: usize,
    spools: Vec<(FirstSync, Option<PendingRow>)>,
}

/// Pending rows read from the state at a time, at most, and what they may weigh: a trait's
/// values may be 32 KB each, and 4,096 of them held 128 MB a read (review finding). The first
/// read asks for few rows, so that a read's size is known before a big one is asked for.
const STATE_READ_ROWS: usize = 4096;
const STATE_READ_BYTES: usize = 1 << 20;
const STATE_FIRST_READ_ROWS: usize = 16;

/// How much a page holds at least, unless the rows run out: `rows` rows, or rows weighing
/// `bytes` (`Weigh`).
#[derive(Debug, Clone, Copy)]
pub struct PageSize {
    pub rows: usize,
    pub bytes: usize,
}

impl Rows {
    /// Rows from `pending` (the state's, if any computation has some) and from `first`.
    pub fn new(pending: Option<PendingReader>, first: Vec<FirstSync>) -> anyhow::Result<Rows> {
        let mut spools = Vec::with_capacity(first.len());
        for mut f in first {
            let head = next_entry(&mut f)?;
            spools.push((f, head));
        }
        let read_through = String::new();
        Ok(Rows { pending, buffered: VecDeque::new(), read_through, state_rows: STATE_FIRST_READ_ROWS, spools })
    }

    /// A page of `size` (less at the end), in user order; never splits a user.
    pub fn page(&mut self, size: PageSize) -> anyhow::Result<Vec<PendingRow>> {
        let mut page: Vec<PendingRow> = Vec::new();
        let mut weight = 0;
        loop {
            if self.buffered.is_empty() {
                self.read_state()?;
            }
            let Some(source) = self.smallest() else { break };
            let next = match source {
                None => &self.buffered[0],
                Some(i) => self.spools[i].1.as_ref().expect("the smallest head is there"),
            };
            let full = page.len() >= size.rows || weight >= size.bytes;
            if full && page.last().is_some_and(|last| last.user_id != next.user_id) {
                break;
            }
            let row = match source {
                None => self.buffered.pop_front().expect("the smallest head is there"),
                Some(i) => {
                    let (first, head) = &mut self.spools[i];
                    let next = next_entry(first)?;
                    std::mem::replace(head, next).expect("the smallest head is there")
                }
            };
            weight += row.weight();
            page.push(row);
        }
        Ok(page)
    }

    /// Reads the state's next rows, if it has any left.
    fn read_state(&mut self) -> anyhow::Result<()> {
        let Some(reader) = &mut self.pending else { return Ok(()) };
        let rows = reader.page(&self.read_through, self.state_rows)?;
        match rows.last() {
            Some(last) => self.read_through = last.user_id.clone(),
            None => self.pending = None,
        }
        let weight: usize = rows.iter().map(Weigh::weight).sum();
        self.state_rows = (STATE_READ_BYTES * rows.len() / weight.max(1)).clamp(1, STATE_READ_ROWS);
        self.buffered.extend(rows);
        Ok(())
    }

    /// Which head comes first, by (user, computation): `None` the state's, `Some(i)` spool
    /// `i`'s; `Ok(None)` when all are done.
    fn smallest(&self) -> Option<Option<usize>> {
        let mut best: Option<(Option<usize>, &PendingRow)> = self.buffered.front().map(|r| (None, r));
        for (i, (_, head)) in self.spools.iter().enumerate() {
            if let Some(row) = head
                && best.is_none_or(|(_, b)| (&row.user_id, &row.value.key) < (&b.user_id, &b.value.key))
            {
                best = Some((Some(i), row));
            }
        }
        best.map(|(source, _)| source)
    }
}

fn next_entry(first: &mut FirstSync) -> anyhow::Result<Option<PendingRow>> {
    let Some(entry) = first.entries.next() else { return Ok(None) };
    let (user_id, desired) =
        entry.map_err(|e| anyhow::anyhow!("cannot read back the spooled entries of {}: {e}", first.key))?;
    let value =
        PendingValue { key: first.key.clone(), value: desired, kind: first.kind, changed_at: first.changed_at.clone() };
    Ok(Some(PendingRow { user_id, value }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::spool::Spool;
    use crate::diff::{Change, Op, OpSink};

    fn first_sync(key: &str, users: &[&str]) -> FirstSync {
        let mut spool = Spool::new().unwrap();
        for u in users {
            spool.apply(Op::Set { user_id: u.to_string(), desired: "true".into(), change: Change::Entered }).unwrap();
        }
        let entries = spool.into_reader().unwrap();
        FirstSync { key: key.into(), kind: Kind::Audience, changed_at: "t".into(), entries }
    }

    fn pairs(rows: &[PendingRow]) -> Vec<(String, String)> {
        rows.iter().map(|r| (r.user_id.clone(), r.value.key.clone())).collect()
    }

    #[test]
    fn spools_merge_by_user_then_computation_and_pages_keep_a_user_whole() {
        let a = first_sync("a", &["u1", "u2", "u4"]);
        let b = first_sync("b", &["u2", "u3", "u4"]);
        let mut rows = Rows::new(None, vec![b, a]).unwrap();
        // A page of at least 3 rows: u2's second row comes along rather than wait for the next.
        let first = rows.page(PageSize { rows: 2, bytes: usize::MAX }).unwrap();
        assert_eq!(pairs(&first), [("u1", "a"), ("u2", "a"), ("u2", "b")].map(|(u, k)| (u.into(), k.into())));
        let rest = rows.page(PageSize { rows: 10, bytes: usize::MAX }).unwrap();
        assert_eq!(pairs(&rest), [("u3", "b"), ("u4", "a"), ("u4", "b")].map(|(u, k)| (u.into(), k.into())));
        assert!(rows.page(PageSize { rows: 10, bytes: usize::MAX }).unwrap().is_empty());
    }

    #[test]
    fn a_page_is_cut_by_what_its_rows_weigh_and_still_keeps_a_user_whole() {
        let a = first_sync("a", &["u1", "u2"]);
        let b = first_sync("b", &["u2"]);
        let mut rows = Rows::new(None, vec![a, b]).unwrap();
        let one_byte = PageSize { rows: 100, bytes: 1 };
        assert_eq!(pairs(&rows.page(one_byte).unwrap()), [("u1".into(), "a".into())]);
        assert_eq!(pairs(&rows.page(one_byte).unwrap()), [("u2", "a"), ("u2", "b")].map(|(u, k)| (u.into(), k.into())));
        assert!(rows.page(one_byte).unwrap().is_empty());
    }
}
