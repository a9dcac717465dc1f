//! Snapshot files: CSV with a header row, or NDJSON; gzip-compressed when the name ends `.gz`.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use super::fingerprint::{Fingerprint, Hashing};
use super::member::{LineLimit, MAX_LINE_BYTES, Push, Rules, check_user_id, read_ndjson};
use super::value::csv_value;
use super::{SnapshotError, member_value};
use crate::config::{Kind, SnapshotFormat};
use crate::record::SnapshotRecord;

/// Reads every record of the file at `path`, handing each to `push`; stops at the first error.
/// Returns the fingerprint of the bytes it read, hashed in that same read.
pub fn read(
    path: &Path,
    format: SnapshotFormat,
    gzip: bool,
    rules: Rules,
    push: &mut Push,
) -> Result<Fingerprint, SnapshotError> {
    let name = path.display().to_string();
    let cannot_open = |e: std::io::Error| SnapshotError::new(&name, None, None, format!("cannot open snapshot: {e}"));
    let mut file = Hashing::new(File::open(path).map_err(cannot_open)?).map_err(cannot_open)?;
    {
        let raw: Box<dyn Read> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, &mut file)))
        } else {
            Box::new(&mut file)
        };
        let reader = BufReader::with_capacity(1 << 16, LineLimit::new(raw));
        match format {
            SnapshotFormat::Csv => read_csv(&name, reader, rules, push)?,
            SnapshotFormat::Ndjson => read_ndjson(&name, reader, rules, push)?,
        }
    }
    // A reader may stop at its format's end (gzip's last member): the rest still counts.
    std::io::copy(&mut file, &mut std::io::sink())
        .map_err(|e| SnapshotError::new(&name, None, None, format!("cannot read snapshot: {e}")))?;
    Ok(file.fingerprint())
}

fn read_csv(name: &str, reader: impl Read, rules: Rules, push: &mut Push) -> Result<(), SnapshotError> {
    let kind = rules.kind;
    let record_start = Rc::new(Cell::new(RecordStart { byte: 0, line: 1 }));
    let reader = RecordLimit { inner: reader, read: 0, record_start: record_start.clone() };
    let mut csv = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(reader);
    let csv_err = |e: csv::Error| {
        let line = e.position().map(|p| p.line());
        let message = match e.kind() {
            csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                format!("row has {len} fields, the header has {expected_len}")
            }
            csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
            _ => e.to_string(),
        };
        SnapshotError::new(name, line, None, message)
    };
    let headers = csv.headers().map_err(csv_err)?.clone();
    let header_err = |m: String| SnapshotError::new(name, Some(1), Some("header"), m);
    if headers.is_empty() || (headers.len() == 1 && headers[0].is_empty()) {
        return Err(header_err("no header row; expected a header with user_id".into()));
    }
    let column = |want: &str| -> Result<Option<usize>, SnapshotError> {
        let mut found = headers.iter().enumerate().filter(|(_, h)| h.trim() == want);
        let first = found.next().map(|(i, _)| i);
        if found.next().is_some() {
            return Err(header_err(format!("column {want} appears twice")));
        }
        Ok(first)
    };
    let found = || headers.iter().collect::<Vec<_>>().join(",");
    let user_col = column("user_id")?.ok_or_else(|| header_err(format!("no user_id column (header: {})", found())))?;
    let value_col = match kind {
        Kind::Audience => None,
        Kind::ComputedTrait => {
            Some(column("value")?.ok_or_else(|| header_err(format!("no value column (header: {})", found())))?)
        }
    };
    let mut record = csv::StringRecord::new();
    while csv.read_record(&mut record).map_err(csv_err)? {
        record_start.set(RecordStart { byte: csv.position().byte(), line: csv.position().line() });
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let user_id = &record[user_col];
        check_user_id(name, line, user_id, rules)?;
        let value = match (member_value(kind), value_col) {
            (Some(v), _) => v.into(),
            (None, Some(col)) => {
                csv_value(&record[col]).map_err(|m| SnapshotError::new(name, Some(line), Some("value"), m))?.into()
            }
            (None, None) => unreachable!("computed traits have a value column"),
        };
        push(SnapshotRecord { user_id: user_id.to_string(), value, line })?;
    }
    Ok(())
}

/// Where the record being read began: the byte after the last one read whole, and its line.
#[derive(Clone, Copy)]
struct RecordStart {
    byte: u64,
    line: u64,
}

/// A reader that fails once the CSV record being read runs past `MAX_LINE_BYTES`: a quoted
/// field may span lines (an unterminated quote swallows the rest of the file), which the line
/// limit alone lets through into the parser's record buffer.
struct RecordLimit<R> {
    inner: R,
    read: u64,
    record_start: Rc<Cell<RecordStart>>,
}

impl<R: Read> Read for RecordLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = self.record_start.get();
        // The parser reads ahead by its buffer at most: what was read before the record began
        // does not count.
        if self.read.saturating_sub(start.byte) > MAX_LINE_BYTES + CSV_BUFFER {
            let message = format!(
                "the record from line {} is longer than {MAX_LINE_BYTES} bytes: an unterminated quote?",
                start.line
            );
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// What the CSV parser buffers ahead of the record it is on.
const CSV_BUFFER: u64 = 1 << 16;

#[cfg(test)]
mod tests;
