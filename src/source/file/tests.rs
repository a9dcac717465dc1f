use std::io::Write;

use super::*;

const AUDIENCE: Rules = Rules { kind: Kind::Audience, allow_structured: false, max_user_id_bytes: 1024 };

fn load(name: &str, content: &[u8], kind: Kind) -> Result<Vec<(String, String, u64)>, SnapshotError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let gzip = name.ends_with(".gz");
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::fast());
        enc.write_all(content).unwrap();
        enc.finish().unwrap();
    } else {
        std::fs::write(&path, content).unwrap();
    }
    let format = if name.contains(".csv") { SnapshotFormat::Csv } else { SnapshotFormat::Ndjson };
    let mut out = Vec::new();
    read(&path, format, gzip, Rules { kind, allow_structured: false, max_user_id_bytes: 1024 }, &mut |r| {
        out.push((r.user_id, r.value.into_owned(), r.line));
        Ok(())
    })?;
    Ok(out)
}

fn err(name: &str, content: &[u8], kind: Kind) -> String {
    let e = load(name, content, kind).expect_err("load should fail");
    assert!(e.source_name.ends_with(name), "error must name the file: {e}");
    e.to_string()
}

#[test]
fn csv_audience_with_extra_columns() {
    let got = load("a.csv", b"email,user_id\nx@y,u1\nz@w,u2\n", Kind::Audience).unwrap();
    assert_eq!(got, vec![("u1".into(), "true".into(), 2), ("u2".into(), "true".into(), 3)]);
}

#[test]
fn csv_trait_values() {
    let got = load("t.csv", b"user_id,value\nu1,420.50\nu2,gold\nu3,true\n", Kind::ComputedTrait).unwrap();
    let values: Vec<&str> = got.iter().map(|(_, v, _)| v.as_str()).collect();
    assert_eq!(values, ["420.5", "\"gold\"", "true"]);
}

#[test]
fn ndjson_gzip_trait() {
    let got = load(
        "t.ndjson.gz",
        b"{\"user_id\":\"u1\",\"value\":1}\n\n{\"user_id\":\"u2\",\"value\":\"a\"}",
        Kind::ComputedTrait,
    )
    .unwrap();
    assert_eq!(got, vec![("u1".into(), "1".into(), 1), ("u2".into(), "\"a\"".into(), 3)]);
}

#[test]
fn csv_gzip_audience() {
    let got = load("a.csv.gz", b"user_id\nu1\n", Kind::Audience).unwrap();
    assert_eq!(got.len(), 1);
}

#[test]
fn missing_file_is_named() {
    let e = read(Path::new("/nonexistent/x.csv"), SnapshotFormat::Csv, false, AUDIENCE, &mut |_| Ok(())).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/x.csv: cannot open snapshot"), "{e}");
}

#[test]
fn csv_header_without_user_id() {
    let e = err("a.csv", b"id\nu1\n", Kind::Audience);
    assert!(e.ends_with("a.csv:1: header: no user_id column (header: id)"), "{e}");
    let e = err("t.csv", b"user_id\nu1\n", Kind::ComputedTrait);
    assert!(e.contains(":1: header: no value column"), "{e}");
    let e = err("e.csv", b"", Kind::Audience);
    assert!(e.contains(":1: header: no header row"), "{e}");
}

#[test]
fn csv_broken_row_names_line() {
    let e = err("a.csv", b"user_id,value\nu1,1\nu2,2,3\n", Kind::ComputedTrait);
    assert!(e.ends_with("a.csv:3: row has 3 fields, the header has 2"), "{e}");
}

#[test]
fn empty_user_id_names_line_and_field() {
    let e = err("a.csv", b"user_id\nu1\n  \n", Kind::Audience);
    // A whitespace-only row is a record with an empty user_id, not a blank line.
    assert!(e.ends_with("a.csv:3: user_id: user_id is empty"), "{e}");
    let e = err("a.ndjson", b"{\"user_id\":\"\"}\n", Kind::Audience);
    assert!(e.ends_with("a.ndjson:1: user_id: user_id is empty"), "{e}");
}

#[test]
fn ndjson_broken_and_wrong_lines() {
    let e = err("a.ndjson", b"{\"user_id\":\"u1\"}\n{\"user_id\":\"u2\"\n", Kind::Audience);
    assert!(e.contains("a.ndjson:2: not a JSON object"), "{e}");
    let e = err("a.ndjson", b"{\"user_id\":5}\n", Kind::Audience);
    assert!(e.ends_with(":1: user_id: user_id must be a string, got 5"), "{e}");
    let e = err("a.ndjson", b"{\"id\":\"u1\"}\n", Kind::Audience);
    assert!(e.ends_with(":1: user_id: user_id is missing"), "{e}");
    let e = err("t.ndjson", b"{\"user_id\":\"u1\"}\n", Kind::ComputedTrait);
    assert!(e.ends_with(":1: value: value is missing"), "{e}");
    let e = err("t.ndjson", b"{\"user_id\":\"u1\",\"value\":[1]}\n", Kind::ComputedTrait);
    assert!(e.contains(":1: value: value must be a string, number or boolean"), "{e}");
    let e = err("a.ndjson", b"{\"user_id\":\"u\xff\"}\n", Kind::Audience);
    assert!(e.ends_with(":1: not valid UTF-8"), "{e}");
}

#[test]
fn truncated_gzip_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(b"user_id\n").unwrap();
    for i in 0..10_000 {
        writeln!(enc, "user-{i}").unwrap();
    }
    let bytes = enc.finish().unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = read(&path, SnapshotFormat::Csv, true, AUDIENCE, &mut |_| Ok(())).unwrap_err();
    assert!(e.source_name.ends_with("a.csv.gz"), "{e}");
}

#[test]
fn an_unterminated_quote_fails_at_the_record_limit_naming_its_line() {
    let mut content = b"user_id,note\nu1,x\nu2,\"".to_vec();
    for _ in 0..(2 << 20) / 10 {
        content.extend_from_slice(b"u3,words\n");
    }
    let e = err("q.csv", &content, Kind::Audience);
    assert!(e.contains("the record from line 3 is longer than 1048576 bytes"), "{e}");
}

#[test]
fn a_quoted_field_spanning_lines_within_the_limit_loads() {
    let got = load("q.csv", b"user_id,note\nu1,\"two\nlines\"\nu2,x\n", Kind::Audience).unwrap();
    let users: Vec<&str> = got.iter().map(|(u, _, _)| u.as_str()).collect();
    assert_eq!(users, ["u1", "u2"]);
}

#[test]
fn a_user_id_with_a_control_character_fails_naming_the_line() {
    let e = err("a.csv", b"user_id\nu1\nu\x002\n", Kind::Audience);
    assert!(e.ends_with("a.csv:3: user_id: user_id holds the control character U+0000"), "{e}");
    let e = err("a.ndjson", b"{\"user_id\":\"u1\"}\n{\"user_id\":\"u\\u001b[31m\"}\n", Kind::Audience);
    assert!(e.ends_with("a.ndjson:2: user_id: user_id holds the control character U+001B"), "{e}");
}

#[test]
fn a_user_id_with_a_bidi_override_or_line_separator_fails() {
    let e = err("a.csv", "user_id\nu\u{202E}1\n".as_bytes(), Kind::Audience);
    assert!(e.ends_with("a.csv:2: user_id: user_id holds the control character U+202E"), "{e}");
    let e = err("a.ndjson", "{\"user_id\":\"u\u{2028}1\"}\n".as_bytes(), Kind::Audience);
    assert!(e.ends_with("a.ndjson:1: user_id: user_id holds the control character U+2028"), "{e}");
}
