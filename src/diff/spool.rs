//! A first sync's spool: the entries of a computation that has no state yet, in user order, in a
//! temp file rather than in the state.
//!
//! Writing ten million pending rows, reading them back and rewriting each once acknowledged is
//! three B-tree writes a row (with the pending index, five); a first sync instead spools the
//! diff's entries here and writes each row once, already synced, when the destination
//! acknowledges it (`state::AnswerWriter`). The spool holds only what the diff decided: losing
//! it (a kill) loses nothing, because users not yet in the state are entries again at the next
//! diff.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

use super::{Op, OpSink};

/// The diff's sink for a computation with no state: every op is an entry, appended here.
pub struct Spool {
    out: BufWriter<File>,
    rows: u64,
}

impl Spool {
    pub fn new() -> io::Result<Spool> {
        Ok(Spool { out: BufWriter::with_capacity(1 << 20, tempfile::tempfile()?), rows: 0 })
    }

    /// The spooled entries, rewound for reading.
    pub fn into_reader(self) -> io::Result<SpoolReader> {
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        Ok(SpoolReader { input: BufReader::with_capacity(1 << 16, file), left: self.rows })
    }
}

impl OpSink for Spool {
    fn apply(&mut self, op: Op) -> anyhow::Result<()> {
        match op {
            Op::Set { user_id, desired, .. } => {
                for field in [&user_id, &desired] {
                    self.out.write_all(&(field.len() as u32).to_le_bytes())?;
                    self.out.write_all(field.as_bytes())?;
                }
                self.rows += 1;
                Ok(())
            }
            // A diff against no state has no one to forget.
            Op::Forget { user_id } => anyhow::bail!("a first sync cannot forget {user_id}: it has no state"),
        }
    }
}

/// Spooled entries, (user, value JSON), in the order the diff wrote them (user order).
pub struct SpoolReader {
    input: BufReader<File>,
    left: u64,
}

impl SpoolReader {
    /// Entries not read yet.
    pub fn len(&self) -> u64 {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    fn field(&mut self) -> io::Result<String> {
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
        self.input.read_exact(&mut bytes)?;
        String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl Iterator for SpoolReader {
    type Item = io::Result<(String, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.field().and_then(|user| Ok((user, self.field()?))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Change;

    #[test]
    fn entries_come_back_in_the_order_written_with_their_values() {
        let mut spool = Spool::new().unwrap();
        let entries = [("a", "true"), ("b\u{e9}", "\"gold\""), ("c", "420.5")];
        for (user, value) in entries {
            let op = Op::Set { user_id: user.into(), desired: value.into(), change: Change::Entered };
            spool.apply(op).unwrap();
        }
        let reader = spool.into_reader().unwrap();
        assert_eq!(reader.len(), 3);
        let read: Vec<(String, String)> = reader.map(Result::unwrap).collect();
        let expected: Vec<(String, String)> = entries.iter().map(|(u, v)| (u.to_string(), v.to_string())).collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn a_forget_is_refused() {
        let mut spool = Spool::new().unwrap();
        assert!(spool.apply(Op::Forget { user_id: "a".into() }).is_err());
    }
}
