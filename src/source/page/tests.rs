use std::io::Read;

use super::*;
use crate::config::Kind;

const AUDIENCE: Rules = Rules { kind: Kind::Audience, allow_structured: false, max_user_id_bytes: 1024 };
const NAME: &str = "http://source/m (page 1)";

/// The users a page hands on, each with its position.
type Users = Vec<(String, u64)>;

/// The users a page hands on, and its `next`.
fn read(body: impl Read) -> Result<(Users, Option<String>), SnapshotError> {
    let mut users = Vec::new();
    let next = read_page(NAME, body, AUDIENCE, &mut |r| {
        users.push((r.user_id, r.line));
        Ok(())
    })?;
    Ok((users, next))
}

fn err(body: impl Read) -> String {
    read(body).expect_err("the page should fail").to_string()
}

/// `head`, then `pattern` over and over, without end.
fn endless(head: &'static str, pattern: &'static str) -> impl Read {
    head.as_bytes().chain(Endless { pattern: pattern.as_bytes(), at: 0 })
}

struct Endless {
    pattern: &'static [u8],
    at: usize,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for b in buf.iter_mut() {
            *b = self.pattern[self.at];
            self.at = (self.at + 1) % self.pattern.len();
        }
        Ok(buf.len())
    }
}

#[test]
fn next_may_come_before_or_after_the_members_and_other_fields_are_ignored() {
    let after = r#"{"members": [{"user_id": "u1", "x": [1]}, {"user_id": "u2"}], "next": "/m?p=2", "total": 2}"#;
    let before = r#"{"meta": {"a": "b"}, "next": "/m?p=2", "members": [{"user_id": "u1"}, {"user_id": "u2"}]}"#;
    for page in [after, before] {
        let (users, next) = read(page.as_bytes()).unwrap();
        assert_eq!(users, [("u1".to_string(), 1), ("u2".to_string(), 2)]);
        assert_eq!(next.as_deref(), Some("/m?p=2"));
    }
}

#[test]
fn a_page_without_next_or_with_next_null_is_the_last() {
    assert_eq!(read(r#"{"members": []}"#.as_bytes()).unwrap(), (vec![], None));
    assert_eq!(read(r#"{"members": [], "next": null}"#.as_bytes()).unwrap(), (vec![], None));
}

#[test]
fn a_member_failing_its_checks_names_the_page_its_position_and_field() {
    let e = err(r#"{"members": [{"user_id": "u1"}, {"user_id": " "}]}"#.as_bytes());
    assert_eq!(e, format!("{NAME}:2: user_id: user_id is empty"));
    let e = err(r#"{"members": [{"user_id": 7}]}"#.as_bytes());
    assert_eq!(e, format!("{NAME}:1: user_id: user_id must be a string, got 7"));
}

#[test]
fn broken_json_inside_the_members_names_the_member() {
    let e = err(r#"{"members": [{"user_id": "u1"}, {"user_id": "u2"}, {"user_id": ]}"#.as_bytes());
    assert!(e.starts_with(&format!("{NAME}:3: not a page of members: expected value")), "{e}");
}

#[test]
fn a_page_must_be_one_object_with_members_once() {
    let cases = [
        ("[]", "invalid type: sequence, expected a page"),
        (r#"{"next": null}"#, "missing field `members`"),
        (r#"{"members": [], "members": []}"#, "duplicate field `members`"),
        (r#"{"members": null}"#, "invalid type: null, expected an array of members"),
        (r#"{"members": []} {}"#, "trailing characters"),
    ];
    for (page, expected) in cases {
        let e = err(page.as_bytes());
        assert!(e.starts_with(&format!("{NAME}: not a page of members: {expected}")), "{page}: {e}");
    }
}

#[test]
fn members_are_handed_on_while_the_page_is_still_being_read() {
    // The page never ends: only a member handed on as it closes can stop it.
    let mut seen = 0;
    let e = read_page(NAME, endless(r#"{"members": ["#, r#"{"user_id": "u"},"#), AUDIENCE, &mut |_| {
        seen += 1;
        match seen {
            3 => Err(SnapshotError::new(NAME, None, None, "the sort is full")),
            _ => Ok(()),
        }
    })
    .unwrap_err();
    assert_eq!(e.to_string(), format!("{NAME}: the sort is full"));
}

#[test]
fn a_member_longer_than_the_limit_fails_before_it_is_buffered() {
    // An endless string inside the second member: without the limit this would never return.
    let e = err(endless(r#"{"members": [{"user_id": "u1"}, {"user_id": ""#, "x"));
    assert_eq!(e, format!("{NAME}:2: member is longer than {MAX_MEMBER_BYTES} bytes: not a page member"));
}

#[test]
fn a_field_longer_than_the_limit_fails_before_it_is_buffered() {
    let e = err(endless(r#"{"members": [], "next": ""#, "x"));
    assert_eq!(e, format!("{NAME}: a field is longer than {MAX_MEMBER_BYTES} bytes: not a page of members"));
}

#[test]
fn the_limit_is_per_member_not_per_page() {
    // Members of a tenth of the limit each, ten times the limit in all.
    let value = "x".repeat(MAX_MEMBER_BYTES as usize / 10);
    let members: Vec<String> = (0..100).map(|i| format!(r#"{{"user_id": "u{i}", "note": "{value}"}}"#)).collect();
    let page = format!(r#"{{"members": [{}]}}"#, members.join(","));
    assert_eq!(read(page.as_bytes()).unwrap().0.len(), 100);
}
