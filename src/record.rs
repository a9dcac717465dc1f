//! What a snapshot hands the diff: one user's record, its value as JSON text. Shared by the
//! sources that read records, the diff that compares them and the state that reads values back.

/// JSON text of the values the diff writes.
pub const TRUE: &str = "true";
pub const FALSE: &str = "false";
pub const NULL: &str = "null";

/// One user of a snapshot: their id, the JSON text of their value (`true` for an audience
/// member), and the line it came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub user_id: String,
    pub value: JsonText,
    pub line: u64,
}

impl crate::weigh::Weigh for SnapshotRecord {
    fn weight(&self) -> usize {
        self.user_id.len() + self.value.len()
    }
}

/// A value as JSON text. The values most rows hold (`true`, `false`, `null`) borrow a static
/// string instead of allocating one per row: at ten million rows that is most of the sort's
/// allocations.
pub type JsonText = std::borrow::Cow<'static, str>;

/// `text` as `JsonText`, borrowing the common values.
pub fn json_text(text: &str) -> JsonText {
    match text {
        TRUE => JsonText::Borrowed(TRUE),
        FALSE => JsonText::Borrowed(FALSE),
        NULL => JsonText::Borrowed(NULL),
        other => JsonText::Owned(other.to_string()),
    }
}
