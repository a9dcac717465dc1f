//! External sort of snapshot records by user, in bounded memory.
//!
//! Records collect in a buffer of a third of the budget, already in the format of a run (one
//! byte array, no allocation per record) beside a small sort key each; when it is full it goes
//! to a spill thread, which sorts the keys and writes the records in their order to a temp file
//! as one sorted run, while reading goes on into another buffer. Sorting and writing a run
//! costs the spill thread more than reading it costs the reader, so two spill threads work at
//! once: at most three buffers (the budget) are held. At the end the runs (or the buffer alone,
//! when nothing spilled) are merged. Ties between equal users keep file order (by line), so a
//! duplicate is reported with its first line first.

use std::cmp::{Ordering, Reverse};
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::thread::JoinHandle;

use crate::record::{SnapshotRecord, json_text};

/// Spill threads at work at once: with one, the reader waited on it about half of the time.
const SPILLING_AT_ONCE: usize = 2;

pub struct Sorter {
    buffer: Buffer,
    /// Bytes a buffer may hold before it is spilled: the budget shared by the buffer being read
    /// into and those being spilled.
    limit: usize,
    spiller: Option<Spiller>,
    runs: usize,
}

/// Records in run format, in file order, and each one's sort key.
#[derive(Default)]
pub struct Buffer {
    records: Vec<u8>,
    keys: Vec<Key>,
}

/// A record's place in a buffer and the first 16 bytes of its user (see `prefix`).
struct Key {
    prefix: u128,
    at: usize,
}

impl Buffer {
    /// A buffer that holds `limit` bytes without growing: grown by doubling, it would copy
    /// itself and leave half of its last size unused. Untouched capacity costs no memory. (The
    /// first buffer grows: most snapshots never fill one.)
    fn with_limit(limit: usize) -> Buffer {
        Buffer { records: Vec::with_capacity(limit), keys: Vec::with_capacity(limit / std::mem::size_of::<Key>()) }
    }

    /// Whether `rec` fits within `limit` bytes beside what the buffer holds (one record always
    /// fits an empty buffer).
    fn fits(&self, rec: &SnapshotRecord, limit: usize) -> bool {
        let size = std::mem::size_of::<Key>() + record_len(rec);
        self.is_empty() || self.bytes() + size <= limit
    }

    fn push(&mut self, rec: &SnapshotRecord) {
        self.keys.push(Key { prefix: prefix(&rec.user_id), at: self.records.len() });
        write_record(&mut self.records, rec);
    }

    fn bytes(&self) -> usize {
        self.records.len() + self.keys.len() * std::mem::size_of::<Key>()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys in sorted order: by prefix, then (rarely) by the whole user and the line.
    fn sort(&mut self) {
        let records = &self.records;
        let user_and_line = |at: usize| {
            let ((user, _, line), _) = split_record(&records[at..]).expect("a buffer holds its records whole");
            (user, line)
        };
        self.keys.sort_unstable_by(|a, b| {
            a.prefix.cmp(&b.prefix).then_with(|| by_user_then_line(user_and_line(a.at), user_and_line(b.at)))
        });
    }

    /// The record at `key`'s place, whole.
    fn record(&self, key: &Key) -> &[u8] {
        let (_, len) = split_record(&self.records[key.at..]).expect("a buffer holds its records whole");
        &self.records[key.at..key.at + len]
    }
}

/// The spill threads: each takes one full buffer and gives back a sorted run, and the buffer
/// emptied for reuse (a fresh one costs the kernel's zeroing of every page as it grows).
#[derive(Default)]
struct Spiller {
    spilling: VecDeque<JoinHandle<io::Result<(File, Buffer)>>>,
    runs: Vec<File>,
}

impl Spiller {
    /// Hands `buffer` to a thread of its own, first waiting for the oldest when
    /// `SPILLING_AT_ONCE` are at work, so that no more buffers exist than the budget allows;
    /// gives back that oldest's buffer, emptied.
    fn spill(&mut self, buffer: Buffer) -> io::Result<Option<Buffer>> {
        let emptied = if self.spilling.len() >= SPILLING_AT_ONCE { self.wait_oldest()? } else { None };
        let thread = std::thread::Builder::new().name("sort-spill".into()).spawn(move || write_run(buffer))?;
        self.spilling.push_back(thread);
        Ok(emptied)
    }

    fn wait_oldest(&mut self) -> io::Result<Option<Buffer>> {
        let Some(thread) = self.spilling.pop_front() else { return Ok(None) };
        let (run, emptied) =
            thread.join().unwrap_or_else(|_| Err(io::Error::other("the sort's spill thread panicked")))?;
        self.runs.push(run);
        Ok(Some(emptied))
    }

    /// Waits for every run; the first error of a thread if one failed.
    fn finish(mut self) -> io::Result<Vec<File>> {
        while !self.spilling.is_empty() {
            self.wait_oldest()?;
        }
        Ok(self.runs)
    }
}

impl Sorter {
    pub fn new(limit_bytes: usize) -> Self {
        let limit = (limit_bytes / (SPILLING_AT_ONCE + 1)).max(1);
        Sorter { buffer: Buffer::default(), limit, spiller: None, runs: 0 }
    }

    pub fn push(&mut self, rec: SnapshotRecord) -> io::Result<()> {
        if !self.buffer.fits(&rec, self.limit) {
            self.spill()?;
        }
        self.buffer.push(&rec);
        Ok(())
    }

    /// How many sorted runs went to temp files (for tests and logs).
    pub fn spilled_runs(&self) -> usize {
        self.runs
    }

    fn spill(&mut self) -> io::Result<()> {
        let buffer = std::mem::take(&mut self.buffer);
        self.runs += 1;
        let emptied = self.spiller.get_or_insert_with(Spiller::default).spill(buffer)?;
        self.buffer = emptied.unwrap_or_else(|| Buffer::with_limit(self.limit));
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<SortedRecords> {
        if self.spiller.is_none() {
            self.buffer.sort();
            return Ok(SortedRecords::Memory { buffer: self.buffer, next: 0 });
        }
        if !self.buffer.is_empty() {
            self.spill()?;
        }
        let runs = self.spiller.take().map(Spiller::finish).transpose()?.unwrap_or_default();
        let mut readers: Vec<RunReader> = runs.into_iter().map(RunReader::new).collect();
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(rec) = r.next()? {
                heap.push(Reverse(HeapEntry::new(rec, i)));
            }
        }
        Ok(SortedRecords::Merge { readers, heap })
    }
}

/// Sorts a buffer and writes it to a temp file as one run, rewound for reading; gives the
/// buffer back emptied.
fn write_run(mut buffer: Buffer) -> io::Result<(File, Buffer)> {
    buffer.sort();
    let mut out = BufWriter::with_capacity(1 << 20, tempfile::tempfile()?);
    for key in &buffer.keys {
        out.write_all(buffer.record(key))?;
    }
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.rewind()?;
    buffer.records.clear();
    buffer.keys.clear();
    Ok((file, buffer))
}

/// The first 16 bytes of a user id, zero-padded, as a big-endian number. Two prefixes that
/// differ order their users as the users' bytes do, in one comparison of integers instead of a
/// call to `memcmp`; only equal prefixes need the whole ids (and the line, for a duplicate).
fn prefix(user_id: &str) -> u128 {
    let mut bytes = [0u8; 16];
    let n = user_id.len().min(16);
    bytes[..n].copy_from_slice(&user_id.as_bytes()[..n]);
    u128::from_be_bytes(bytes)
}

/// Users in byte order, then by line (file order for a user listed twice).
fn by_user_then_line((user_a, line_a): (&[u8], u64), (user_b, line_b): (&[u8], u64)) -> Ordering {
    user_a.cmp(user_b).then(line_a.cmp(&line_b))
}

/// Records in user order, from memory (read from the sorted buffer one at a time, not copied
/// out whole beside it) or merged from sorted runs.
pub enum SortedRecords {
    Memory { buffer: Buffer, next: usize },
    Merge { readers: Vec<RunReader>, heap: BinaryHeap<Reverse<HeapEntry>> },
}

impl Iterator for SortedRecords {
    type Item = io::Result<SnapshotRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SortedRecords::Memory { buffer, next } => {
                let key = buffer.keys.get(*next)?;
                *next += 1;
                Some(parse_record(buffer.record(key)).and_then(|rec| rec.map(|(rec, _)| rec).ok_or_else(truncated)))
            }
            // The smallest head is replaced by its run's next record in place, one sift down,
            // rather than popped and pushed (two).
            SortedRecords::Merge { readers, heap } => {
                let mut smallest = heap.peek_mut()?;
                let run = smallest.0.2;
                let Reverse(HeapEntry(_, rec, _)) = match readers[run].next() {
                    Ok(Some(next)) => std::mem::replace(&mut *smallest, Reverse(HeapEntry::new(next, run))),
                    Ok(None) => PeekMut::pop(smallest),
                    Err(e) => return Some(Err(e)),
                };
                Some(Ok(rec))
            }
        }
    }
}

/// The next record of run `.2`, with its prefix (see `prefix`).
pub struct HeapEntry(u128, SnapshotRecord, usize);

impl HeapEntry {
    fn new(rec: SnapshotRecord, run: usize) -> HeapEntry {
        HeapEntry(prefix(&rec.user_id), rec, run)
    }
}

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
        let (a, b) = (&self.1, &other.1);
        self.0
            .cmp(&other.0)
            .then_with(|| by_user_then_line((a.user_id.as_bytes(), a.line), (b.user_id.as_bytes(), b.line)))
    }
}

/// Run format: per record, u32 LE length + user_id bytes, u32 LE length + value bytes, u64 LE line.
fn write_record(out: &mut Vec<u8>, rec: &SnapshotRecord) {
    for s in [rec.user_id.as_str(), &rec.value] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&rec.line.to_le_bytes());
}

/// The bytes `write_record` writes for `rec`.
fn record_len(rec: &SnapshotRecord) -> usize {
    4 + rec.user_id.len() + 4 + rec.value.len() + 8
}

/// A sorted run read back. A value is read into `scratch`: most values are `true`, `false` or
/// `null`, which `json_text` borrows, so they cost no allocation.
pub struct RunReader {
    input: BufReader<File>,
    scratch: Vec<u8>,
}

impl RunReader {
    fn new(run: File) -> RunReader {
        RunReader { input: BufReader::with_capacity(1 << 16, run), scratch: Vec::new() }
    }

    fn next(&mut self) -> io::Result<Option<SnapshotRecord>> {
        let buffered = self.input.fill_buf()?;
        if buffered.is_empty() {
            return Ok(None);
        }
        // Most records lie whole in the buffer: read in place, with no copy through
        // `read_exact` and no zeroed allocation to copy into.
        if let Some((rec, used)) = parse_record(buffered)? {
            self.input.consume(used);
            return Ok(Some(rec));
        }
        self.next_across_reads().map(Some)
    }

    /// A record that straddles the buffer's end.
    fn next_across_reads(&mut self) -> io::Result<SnapshotRecord> {
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        let mut user_id = vec![0u8; u32::from_le_bytes(len) as usize];
        self.input.read_exact(&mut user_id)?;
        self.input.read_exact(&mut len)?;
        self.scratch.resize(u32::from_le_bytes(len) as usize, 0);
        self.input.read_exact(&mut self.scratch)?;
        let value = json_text(std::str::from_utf8(&self.scratch).map_err(invalid)?);
        let mut line = [0u8; 8];
        self.input.read_exact(&mut line)?;
        let user_id = String::from_utf8(user_id).map_err(invalid)?;
        Ok(SnapshotRecord { user_id, value, line: u64::from_le_bytes(line) })
    }
}

/// The record at the start of `bytes` and the bytes it takes, if it is there whole.
fn parse_record(bytes: &[u8]) -> io::Result<Option<(SnapshotRecord, usize)>> {
    let Some(((user_id, value, line), used)) = split_record(bytes) else { return Ok(None) };
    let user_id = std::str::from_utf8(user_id).map_err(invalid)?.to_string();
    let value = json_text(std::str::from_utf8(value).map_err(invalid)?);
    Ok(Some((SnapshotRecord { user_id, value, line }, used)))
}

/// A record's user and value bytes (unchecked) and line, as the run format holds them.
type RecordParts<'a> = (&'a [u8], &'a [u8], u64);

/// The record at the start of `bytes` and the bytes it takes, if it is there whole.
fn split_record(bytes: &[u8]) -> Option<(RecordParts<'_>, usize)> {
    let (user_id, rest) = field(bytes)?;
    let (value, rest) = field(rest)?;
    let (line, rest) = rest.split_first_chunk::<8>()?;
    Some(((user_id, value, u64::from_le_bytes(*line)), bytes.len() - rest.len()))
}

/// A length-prefixed field at the start of `bytes`, and what follows it.
fn field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "a sort buffer's record is cut short")
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
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
    fn records_that_straddle_the_run_readers_buffer_come_back_whole() {
        // Runs of about a megabyte, read through a 64 KB buffer: many records cross its end.
        let records: Vec<SnapshotRecord> = (0..20_000u64)
            .map(|i| SnapshotRecord {
                user_id: format!("user-{}-{}", (i * 7919) % 20_011, "x".repeat((i % 97) as usize)),
                value: if i % 3 == 0 { "true".into() } else { format!("\"{}\"", "v".repeat((i % 41) as usize)).into() },
                line: i + 1,
            })
            .collect();
        let sort = |limit| {
            let mut s = Sorter::new(limit);
            records.iter().cloned().try_for_each(|r| s.push(r)).unwrap();
            let runs = s.spilled_runs();
            (s.finish().unwrap().collect::<io::Result<Vec<_>>>().unwrap(), runs)
        };
        let (in_memory, _) = sort(usize::MAX);
        let (spilled, runs) = sort(3 << 20);
        assert!(runs >= 2, "{runs} runs");
        assert_eq!(spilled, in_memory);
    }

    #[test]
    fn equal_users_keep_file_order_across_runs() {
        // A buffer of one record: each spills as the next arrives, the last at the end.
        let (out, runs) = sorted(1, &["b", "a", "b", "a"]);
        assert_eq!(runs, 3);
        assert_eq!(out, vec![("a".into(), 2), ("a".into(), 4), ("b".into(), 1), ("b".into(), 3)]);
    }

    #[test]
    fn ids_alike_in_their_first_16_bytes_still_sort_by_all_their_bytes() {
        let ids = [
            "customer-0000000002",
            "customer-0000000001x",
            "customer-0000000001",
            "a",
            "a\0",
            "",
            "customer-000000000",
        ];
        let mut expected: Vec<&str> = ids.to_vec();
        expected.sort();
        for limit in [usize::MAX, 1] {
            let (out, _) = sorted(limit, &ids);
            let users: Vec<&str> = out.iter().map(|(u, _)| u.as_str()).collect();
            assert_eq!(users, expected, "sort buffer {limit}");
        }
    }

    #[test]
    fn byte_order_matches_sqlite_binary_collation() {
        let (out, _) = sorted(usize::MAX, &["b", "B", "é", "a", "Z", "10", "9"]);
        let users: Vec<&str> = out.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(users, ["10", "9", "B", "Z", "a", "b", "é"]);
    }
}
