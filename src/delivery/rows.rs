//! Delivery's rows: the pending rows of the state and the entries of first syncs' spools,
//! merged in user order (then computation), so that each user still gets one update holding
//! all of their values.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use crate::change::{PendingRow, PendingValue};
use crate::config::Kind;
use crate::diff::spool::SpoolReader;
use crate::state::PendingReader;
use crate::weigh::Weigh;

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
    spools: Vec<FirstSync>,
    /// The next entry of each spool not done, smallest on top: a pass of a hundred first syncs
    /// merges a hundred spools, and a scan of every head for each row cost 100 comparisons a row.
    heads: BinaryHeap<Head>,
}

/// A spool's next entry, ordered for the heap by (user, computation), smallest greatest.
struct Head {
    row: PendingRow,
    spool: usize,
}

impl Head {
    fn order(&self) -> (&str, &str) {
        (&self.row.user_id, &self.row.value.key)
    }
}

impl Ord for Head {
    fn cmp(&self, other: &Head) -> Ordering {
        other.order().cmp(&self.order())
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Head) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Head) -> bool {
        self.order() == other.order()
    }
}

impl Eq for Head {}

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
    pub fn new(pending: Option<PendingReader>, mut first: Vec<FirstSync>) -> anyhow::Result<Rows> {
        let mut heads = BinaryHeap::with_capacity(first.len());
        for (spool, f) in first.iter_mut().enumerate() {
            if let Some(row) = next_entry(f)? {
                heads.push(Head { row, spool });
            }
        }
        let read_through = String::new();
        let state_rows = STATE_FIRST_READ_ROWS;
        Ok(Rows { pending, buffered: VecDeque::new(), read_through, state_rows, spools: first, heads })
    }

    /// A page of `size` (less at the end), in user order; never splits a user.
    pub fn page(&mut self, size: PageSize) -> anyhow::Result<Vec<PendingRow>> {
        let mut page: Vec<PendingRow> = Vec::new();
        let mut weight = 0;
        loop {
            if self.buffered.is_empty() {
                self.read_state()?;
            }
            let Some(from_state) = self.state_first() else { break };
            let next = if from_state { &self.buffered[0] } else { &self.heads.peek().expect("a head is there").row };
            let full = page.len() >= size.rows || weight >= size.bytes;
            if full && page.last().is_some_and(|last| last.user_id != next.user_id) {
                break;
            }
            let row =
                if from_state { self.buffered.pop_front().expect("a row is there") } else { self.next_of_spools()? };
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

    /// Whether the state's next row comes before the spools' (by user, then computation);
    /// `None` when all are done.
    fn state_first(&self) -> Option<bool> {
        match (self.buffered.front(), self.heads.peek()) {
            (None, None) => None,
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (Some(row), Some(head)) => Some((row.user_id.as_str(), row.value.key.as_str()) < head.order()),
        }
    }

    /// The spools' smallest entry, its spool's next taking its place.
    fn next_of_spools(&mut self) -> anyhow::Result<PendingRow> {
        let Head { row, spool } = self.heads.pop().expect("a head is there");
        if let Some(next) = next_entry(&mut self.spools[spool])? {
            self.heads.push(Head { row: next, spool });
        }
        Ok(row)
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

    #[test]
    fn many_spools_merge_into_one_order_whatever_order_they_come_in() {
        let users: Vec<String> = (0..40).map(|i| format!("u{i:02}")).collect();
        let spools: Vec<FirstSync> = (0..7)
            .rev()
            .map(|k| {
                let mine: Vec<&str> = users.iter().skip(k % 3).step_by(k + 1).map(String::as_str).collect();
                first_sync(&format!("k{k}"), &mine)
            })
            .collect();
        let mut rows = Rows::new(None, spools).unwrap();
        let all = pairs(&rows.page(PageSize { rows: usize::MAX, bytes: usize::MAX }).unwrap());
        let mut expected = all.clone();
        expected.sort();
        assert_eq!(all, expected);
        let per_spool: usize = (0..7).map(|k| users.iter().skip(k % 3).step_by(k + 1).count()).sum();
        assert_eq!(all.len(), per_spool);
    }
}
