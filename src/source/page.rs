//! One JSON page of members, `{"members": [{"user_id": ..., "value": ...}], "next": URL or
//! null`, parsed as it is read: each member is checked and handed on as soon as its object
//! closes, so a page of millions of members is never held, as a body or as a list.
//!
//! serde_json buffers a string whole before it can judge it, so a reader under the parser also
//! bounds what may pass between two members' ends: one member, or one other field of the page,
//! may take `MAX_MEMBER_BYTES` at most.

use std::cell::Cell;
use std::fmt;
use std::io::{BufReader, Read};

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::SnapshotError;
use super::member::{JsonMember, MAX_LINE_BYTES, Push, Rules, from_json};

/// The most bytes one member may take: a page's member holds what an NDJSON line holds, so
/// they share a limit.
pub const MAX_MEMBER_BYTES: u64 = MAX_LINE_BYTES;

/// Reads one page from `body`, handing each member to `push`; returns the page's `next`.
/// Errors name the page (`name`) and, inside `members`, the member by its position from 1.
pub fn read_page(name: &str, body: impl Read, rules: Rules, push: &mut Push) -> Result<Option<String>, SnapshotError> {
    let since_reset = Cell::new(0);
    // serde_json reads a byte at a time: the buffer spares the body's reader those calls.
    let reader = MemberLimit { inner: BufReader::with_capacity(1 << 16, body), since_reset: &since_reset };
    let mut page = Page { name, rules, push, since_reset: &since_reset, members: 0, in_members: false, failed: None };
    let mut parser = serde_json::Deserializer::from_reader(reader);
    let parsed = (&mut page).deserialize(&mut parser).and_then(|next| parser.end().map(|()| next));
    parsed.map_err(|e| page.error(e))
}

/// A reader that fails once more than `MAX_MEMBER_BYTES` pass without a reset, before the
/// parser has buffered them; the page resets it at each member's end and each field's end.
struct MemberLimit<'c, R> {
    inner: R,
    since_reset: &'c Cell<u64>,
}

impl<R: Read> Read for MemberLimit<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let since = self.since_reset.get() + n as u64;
        self.since_reset.set(since);
        if since > MAX_MEMBER_BYTES {
            let message = format!("more than {MAX_MEMBER_BYTES} bytes in one member or field");
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message));
        }
        Ok(n)
    }
}

/// A page being parsed: where its members go, and where the parse is, for error messages.
struct Page<'a, 'p> {
    name: &'a str,
    rules: Rules,
    push: &'a mut Push<'p>,
    since_reset: &'a Cell<u64>,
    /// Members handed on so far.
    members: u64,
    /// Inside the `members` array an error names the member being parsed.
    in_members: bool,
    /// A member that parsed but failed its checks or its push, kept whole: serde's error would
    /// flatten it to text and lose its line and field.
    failed: Option<SnapshotError>,
}

impl Page<'_, '_> {
    /// Checks a parsed member and hands it on.
    fn take(&mut self, member: JsonMember) -> Result<(), SnapshotError> {
        self.members += 1;
        self.since_reset.set(0);
        (self.push)(from_json(self.name, self.members, member, self.rules)?)
    }

    /// The load's error for a parse that stopped with `e`.
    fn error(&mut self, e: serde_json::Error) -> SnapshotError {
        if let Some(failed) = self.failed.take() {
            return failed;
        }
        let member = self.in_members.then_some(self.members + 1);
        let message = if self.since_reset.get() > MAX_MEMBER_BYTES {
            match member {
                Some(_) => format!("member is longer than {MAX_MEMBER_BYTES} bytes: not a page member"),
                None => format!("a field is longer than {MAX_MEMBER_BYTES} bytes: not a page of members"),
            }
        } else if e.is_io() {
            format!("cannot read the page: {e}")
        } else {
            format!("not a page of members: {e}")
        };
        SnapshotError::new(self.name, member, None, message)
    }
}

/// The fields of a page; others are ignored.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Members,
    Next,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for &mut Page<'_, '_> {
    type Value = Option<String>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Page<'_, '_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a page {\"members\": [...], \"next\": ...}")
    }

    /// `members` and `next` in either order, each at most once, `members` required.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut members, mut next) = (false, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Members if members => return Err(de::Error::duplicate_field("members")),
                Field::Members => {
                    map.next_value_seed(Members(&mut *self))?;
                    members = true;
                }
                Field::Next if next.is_some() => return Err(de::Error::duplicate_field("next")),
                Field::Next => next = Some(map.next_value::<Option<String>>()?),
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            self.since_reset.set(0);
        }
        if !members {
            return Err(de::Error::missing_field("members"));
        }
        Ok(next.flatten())
    }
}

/// The `members` array, each member handed on as it closes.
struct Members<'s, 'a, 'p>(&'s mut Page<'a, 'p>);

impl<'de> DeserializeSeed<'de> for Members<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Members<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of members")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let page = self.0;
        page.in_members = true;
        while let Some(member) = seq.next_element::<JsonMember>()? {
            if let Err(e) = page.take(member) {
                page.failed = Some(e);
                return Err(de::Error::custom("a member failed its checks"));
            }
        }
        page.in_members = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
