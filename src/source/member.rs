//! One member of a snapshot, from a CSV row, an NDJSON line or a JSON page: the checks every
//! source shares, so an empty `user_id` or a bad value reads the same wherever it came from.

use std::io::BufRead;

use serde::Deserialize;
use serde_json::Value;

use super::value::canonical_value;
use super::{SnapshotError, member_value};
use crate::config::Kind;
use crate::record::SnapshotRecord;

/// Where records go as they are read.
pub type Push<'a> = dyn FnMut(SnapshotRecord) -> Result<(), SnapshotError> + 'a;

/// What a member must look like for one computation.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub kind: Kind,
    pub allow_structured: bool,
    pub max_user_id_bytes: usize,
}

/// The longest line a snapshot may hold: far above a user id and a value at their limits,
/// far below what would take the memory (a corrupt export without newlines, say).
pub const MAX_LINE_BYTES: u64 = 1 << 20;

/// A reader that fails once a line runs past `MAX_LINE_BYTES`, before any parser buffers it.
pub struct LineLimit<R> {
    inner: R,
    /// Bytes since the last newline, and the line they are on.
    run: u64,
    line: u64,
}

impl<R> LineLimit<R> {
    pub fn new(inner: R) -> Self {
        LineLimit { inner, run: 0, line: 1 }
    }
}

impl<R: std::io::Read> std::io::Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        // memchr rather than a byte loop: this sees every byte of every snapshot.
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &buf[..n]) {
            self.check(self.run + (end - start) as u64)?;
            (self.run, self.line, start) = (0, self.line + 1, end + 1);
        }
        self.run += (n - start) as u64;
        self.check(self.run)?;
        Ok(n)
    }
}

impl<R> LineLimit<R> {
    /// Fails if the current line, `run` bytes so far without its newline, is too long.
    fn check(&self, run: u64) -> std::io::Result<()> {
        if run <= MAX_LINE_BYTES {
            return Ok(());
        }
        let message = format!("line {} is longer than {MAX_LINE_BYTES} bytes: not a snapshot line", self.line);
        Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message))
    }
}

/// A member as JSON: `{"user_id": "...", "value": ...}`; other fields are ignored.
#[derive(Debug, Deserialize)]
pub struct JsonMember {
    user_id: Option<Value>,
    value: Option<Value>,
}

/// A `user_id` must be one a destination and an operator can use: not empty, within the
/// limit, without control characters (nor the invisible ones that reorder or split a line).
pub fn check_user_id(name: &str, line: u64, user_id: &str, rules: Rules) -> Result<(), SnapshotError> {
    if user_id.trim().is_empty() {
        return Err(SnapshotError::new(name, Some(line), Some("user_id"), "user_id is empty"));
    }
    if user_id.len() > rules.max_user_id_bytes {
        let message =
            format!("user_id is {} bytes, more than max_user_id_bytes = {}", user_id.len(), rules.max_user_id_bytes);
        return Err(SnapshotError::new(name, Some(line), Some("user_id"), message));
    }
    // A NUL ends the id for SQLite's JSON functions, and no control character belongs in an
    // id an operator reads, pastes and queries: a corrupt export, not a user.
    if let Some(c) = forbidden_char(user_id) {
        let message = format!("user_id holds the control character U+{:04X}", c as u32);
        return Err(SnapshotError::new(name, Some(line), Some("user_id"), message));
    }
    Ok(())
}

/// Checks a JSON member; `line` is its line (NDJSON) or its position (JSON pages).
pub fn from_json(name: &str, line: u64, member: JsonMember, rules: Rules) -> Result<SnapshotRecord, SnapshotError> {
    let user_id = match member.user_id {
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(SnapshotError::new(
                name,
                Some(line),
                Some("user_id"),
                format!("user_id must be a string, got {other}"),
            ));
        }
        None => return Err(SnapshotError::new(name, Some(line), Some("user_id"), "user_id is missing")),
    };
    check_user_id(name, line, &user_id, rules)?;
    let value = match member_value(rules.kind) {
        Some(v) => v.into(),
        None => {
            let v =
                member.value.ok_or_else(|| SnapshotError::new(name, Some(line), Some("value"), "value is missing"))?;
            canonical_value(&v, rules.allow_structured)
                .map_err(|m| SnapshotError::new(name, Some(line), Some("value"), format!("{m} (user {user_id:?})")))?
                .into()
        }
    };
    Ok(SnapshotRecord { user_id, value, line })
}

/// Reads NDJSON, one member a line; blank lines are skipped.
pub fn read_ndjson(name: &str, mut reader: impl BufRead, rules: Rules, push: &mut Push) -> Result<(), SnapshotError> {
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| SnapshotError::new(name, Some(line + 1), None, format!("cannot read: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        // A last line without a newline is accepted only if it parses whole: a writer cut off
        // mid-line leaves broken JSON, which fails the load below.
        let text =
            std::str::from_utf8(&buf).map_err(|_| SnapshotError::new(name, Some(line), None, "not valid UTF-8"))?;
        if text.trim().is_empty() {
            continue;
        }
        let member: JsonMember = serde_json::from_str(text)
            .map_err(|e| SnapshotError::new(name, Some(line), None, format!("not a JSON object: {e}")))?;
        push(from_json(name, line, member, rules)?)?;
    }
}

/// The first character a user id must not hold. Most ids are ASCII, whose only such characters
/// are its controls: a byte scan finds those without decoding a character at a time.
fn forbidden_char(user_id: &str) -> Option<char> {
    if user_id.is_ascii() {
        return user_id.bytes().find(u8::is_ascii_control).map(char::from);
    }
    user_id.chars().find(|&c| c.is_control() || is_invisible_or_reordering(c))
}

/// Characters that are invisible yet change how a line reads: line and paragraph separators,
/// zero-width characters, and bidirectional overrides and isolates.
fn is_invisible_or_reordering(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_scan_refuses_exactly_the_characters_the_full_scan_refuses() {
        let full = |id: &str| id.chars().find(|&c| c.is_control() || is_invisible_or_reordering(c));
        for byte in 0u8..=0x7f {
            let id = format!("user-{}-1", char::from(byte));
            assert_eq!(forbidden_char(&id), full(&id), "byte {byte:#04x}");
        }
        for id in ["us\u{e9}r\u{0}", "\u{202e}user", "user\u{85}", "\u{e9}t\u{e9}"] {
            assert_eq!(forbidden_char(id), full(id), "{id:?}");
        }
        assert_eq!(forbidden_char("user\u{7f}"), Some('\u{7f}'));
    }
}
