//! External sort of snapshot records by user, in bounded memory.
//!
//! Records collect in a buffer; when it holds more than its budget it is sorted and written to
//! a temp file as one sorted run. At the end the runs (or the buffer alone, when nothing
//! spilled) are merged. Ties between equal users keep file order (by line), so a duplicate is
//! reported with its first line first.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

use super::SnapshotRecord;

/// Bookkeeping per record beyond its strings' bytes (the struct and allocator overhead).
const RECORD_OVERHEAD: usize = std::mem::size_of::<SnapshotRecord>() + 32;

pub struct Sorter {
    buffer: Vec<SnapshotRecord>,
    bytes: usize,
    limit: usize,
    runs: Vec<File>,
}

impl Sorter {
    pub fn new(limit_bytes: usize) -> Self {
        Sorter { buffer: Vec::new(), bytes: 0, limit: limit_bytes, runs: Vec::new() }
    }

    pub fn push(&mut self, rec: SnapshotRecord) -> io::Result<()> {
        self.bytes += rec.user_id.len() + rec.value.len() + RECORD_OVERHEAD;
        self.buffer.push(rec);
        if self.bytes >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    /// How many sorted runs went to temp files (for tests and logs).
    pub fn spilled_runs(&self) -> usize {
        self.runs.len()
    }

    fn spill(&mut self) -> io::Result<()> {
        sort_buffer(&mut self.buffer);
        let mut out = BufWriter::with_capacity(1 << 20, tempfile::tempfile()?);
        for rec in self.buffer.drain(..) {
            write_record(&mut out, &rec)?;
        }
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        self.runs.push(file);
        self.bytes = 0;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<SortedRecords> {
        if self.runs.is_empty() {
            sort_buffer(&mut self.buffer);
            return Ok(SortedRecords::Memory(self.buffer.into_iter()));
        }
        if !self.buffer.is_empty() {
            self.spill()?;
        }
        let mut readers: Vec<RunReader> =
            self.runs.into_iter().map(|f| RunReader(BufReader::with_capacity(1 << 16, f))).collect();
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(rec) = r.next()? {
                heap.push(Reverse(HeapEntry(rec, i)));
            }
        }
        Ok(SortedRecords::Merge { readers, heap })
    }
}

fn sort_buffer(buffer: &mut [SnapshotRecord]) {
    buffer.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id).then(a.line.cmp(&b.line)));
}

/// Records in user order, from memory or merged from sorted runs.
pub enum SortedRecords {
    Memory(std::vec::IntoIter<SnapshotRecord>),
    Merge { readers: Vec<RunReader>, heap: BinaryHeap<Reverse<HeapEntry>> },
}

impl Iterator for SortedRecords {
    type Item = io::Result<SnapshotRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SortedRecords::Memory(it) => it.next().map(Ok),
            SortedRecords::Merge { readers, heap } => {
                let Reverse(HeapEntry(rec, i)) = heap.pop()?;
                match readers[i].next() {
                    Ok(Some(next)) => heap.push(Reverse(HeapEntry(next, i))),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
                Some(Ok(rec))
            }
        }
    }
}

pub struct HeapEntry(SnapshotRecord, usize);

impl PartialEq for HeapEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for HeapEntry {}
impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.user_id.cmp(&other.0.user_id).then(self.0.line.cmp(&other.0.line))
    }
}

/// Run format: per record, u32 LE length + user_id bytes, u32 LE length + value bytes, u64 LE line.
fn write_record(out: &mut impl Write, rec: &SnapshotRecord) -> io::Result<()> {
    for s in [rec.user_id.as_str(), &rec.value] {
        out.write_all(&(s.len() as u32).to_le_bytes())?;
        out.write_all(s.as_bytes())?;
    }
    out.write_all(&rec.line.to_le_bytes())
}

pub struct RunReader(BufReader<File>);

impl RunReader {
    fn next(&mut self) -> io::Result<Option<SnapshotRecord>> {
        let mut len = [0u8; 4];
        match self.0.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let user_id = self.string(u32::from_le_bytes(len) as usize)?;
        self.0.read_exact(&mut len)?;
        let value = super::json_text(&self.string(u32::from_le_bytes(len) as usize)?);
        let mut line = [0u8; 8];
        self.0.read_exact(&mut line)?;
        Ok(Some(SnapshotRecord { user_id, value, line: u64::from_le_bytes(line) }))
    }

    fn string(&mut self, len: usize) -> io::Result<String> {
        let mut buf = vec![0u8; len];
        self.0.read_exact(&mut buf)?;
        String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(user: &str, line: u64) -> SnapshotRecord {
        SnapshotRecord { user_id: user.into(), value: format!("{line}").into(), line }
    }

    fn sorted(limit: usize, users: &[&str]) -> (Vec<(String, u64)>, usize) {
        let mut s = Sorter::new(limit);
        for (i, u) in users.iter().enumerate() {
            s.push(rec(u, i as u64 + 1)).unwrap();
        }
        let runs = s.spilled_runs();
        let out = s.finish().unwrap().map(|r| r.map(|r| (r.user_id, r.line))).collect::<io::Result<Vec<_>>>().unwrap();
        (out, runs)
    }

    #[test]
    fn spilling_sort_matches_in_memory_sort() {
        let users: Vec<String> = (0..5000u64).map(|i| format!("user-{}", (i * 7919) % 5003)).collect();
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        let (in_memory, runs) = sorted(usize::MAX, &users);
        assert_eq!(runs, 0);
        let (spilled, runs) = sorted(4096, &users);
        assert!(runs > 10, "expected many runs, got {runs}");
        assert_eq!(spilled, in_memory);
        assert!(in_memory.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn equal_users_keep_file_order_across_runs() {
        let (out, runs) = sorted(1, &["b", "a", "b", "a"]);
        assert_eq!(runs, 4);
        assert_eq!(out, vec![("a".into(), 2), ("a".into(), 4), ("b".into(), 1), ("b".into(), 3)]);
    }

    #[test]
    fn byte_order_matches_sqlite_binary_collation() {
        let (out, _) = sorted(usize::MAX, &["b", "B", "é", "a", "Z", "10", "9"]);
        let users: Vec<&str> = out.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(users, ["10", "9", "B", "Z", "a", "b", "é"]);
    }
}
