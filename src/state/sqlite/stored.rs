//! How `member_rows` stores what the state's interface says in text (migration 0013): a
//! computation as its number, true and false as 1 and 0, a time as milliseconds since 1970.
//! The views `memberships`, `pending` and `quarantined` turn them back into text for operators;
//! this module does it for the code, at the edge of the SQLite backend, so that the rest of the
//! program keeps JSON text values and RFC 3339 times.

use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, ValueRef};

pub use crate::state::times::{Times, millis};

/// SQL: the computation number of the key bound to `param` (computed once per statement).
pub fn computation_id(param: &str) -> String {
    format!("(SELECT id FROM computations WHERE key = {param})")
}

/// SQL: the `member_rows` row `m` was acknowledged with its desired value since the
/// computation's last diff, so it is not pending, whatever `m.synced` says (migration 0017).
pub const ACKED_APART: &str = "EXISTS (SELECT 1 FROM acknowledged a \
     WHERE a.computation_id = m.computation_id AND a.user_id = m.user_id AND a.synced IS m.desired)";

/// SQL, to be followed by the rows to fold (a condition on `member_rows`): folds the
/// acknowledgements recorded since the computation's last diff (`acknowledged`) into their rows,
/// as an acknowledgement recorded in place writes them (`answers`): the value acknowledged, its
/// time, and a clean slate of failures. Select the rows by `IN (SELECT ... FROM acknowledged ...)`: the few
/// acknowledgements then drive the update, where a join walks every row of `member_rows` in range.
pub const FOLD_ACKNOWLEDGED: &str = "UPDATE member_rows SET (synced, synced_at) = (SELECT a.synced, a.synced_at \
     FROM acknowledged a WHERE a.computation_id = member_rows.computation_id AND a.user_id = member_rows.user_id), \
     attempts = 0, last_error = NULL, quarantined_at = NULL, first_sent_at = NULL WHERE ";

/// SQL: the JSON text bound to `param` as stored: 1 and 0 for true and false.
pub fn stored_value(param: &str) -> String {
    format!("CASE {param} WHEN 'true' THEN 1 WHEN 'false' THEN 0 ELSE {param} END")
}

/// A value bound to a statement as stored, converted in the code rather than by SQL
/// (`stored_value`) or by the column's affinity (a number bound as text): in a first sync's
/// ten million inserts, SQLite converting numbers bound as text took 3.4 % of all samples.
#[derive(Clone, Copy, Debug)]
pub enum Bound<'a> {
    Int(i64),
    Text(&'a str),
}

impl<'a> Bound<'a> {
    /// The JSON text `json` as stored: 1 and 0 for true and false.
    pub fn value(json: &'a str) -> Bound<'a> {
        match json {
            "true" => Bound::Int(1),
            "false" => Bound::Int(0),
            text => Bound::Text(text),
        }
    }
}

impl ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Bound::Int(i) => ValueRef::Integer(i),
            Bound::Text(t) => ValueRef::Text(t.as_bytes()),
        }))
    }
}

/// SQL, for the few statements that take a time from a text column rather than from the
/// code: the RFC 3339 time `expr` as stored.
pub fn stored_time(expr: &str) -> String {
    format!("CAST(round((julianday({expr}) - 2440587.5) * 86400000) AS INTEGER)")
}

/// A stored value as its JSON text.
pub fn value_text(value: ValueRef<'_>) -> rusqlite::types::FromSqlResult<&str> {
    match value {
        ValueRef::Integer(1) => Ok("true"),
        ValueRef::Integer(0) => Ok("false"),
        other => other.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_read_back_as_their_json_text() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        for text in ["true", "false", "1", "0", "\"gold\"", "null", "420.5"] {
            let sql = format!("SELECT {}", stored_value("?1"));
            let back: String = db.query_row(&sql, [text], |r| Ok(value_text(r.get_ref(0)?)?.to_string())).unwrap();
            assert_eq!(back, text);
            let bound: String = db
                .query_row("SELECT ?1", [Bound::value(text)], |r| Ok(value_text(r.get_ref(0)?)?.to_string()))
                .unwrap();
            assert_eq!(bound, text);
        }
    }
}
