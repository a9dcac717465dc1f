//! Computed-trait values: what a snapshot may hold, and the one JSON text we store for it.
//!
//! Values are compared as text in the state, so each is written in serde_json's canonical
//! compact form: `420.50` and `420.5` are the same value and must not look like a change.

use serde_json::Value;

/// Largest value accepted, as JSON text: Segment's limit for a whole event.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;

/// The canonical JSON text of a computed-trait value, or why it is not acceptable. Arrays and
/// objects are acceptable only with `allow_structured`.
pub fn canonical_value(value: &Value, allow_structured: bool) -> Result<String, String> {
    match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => {}
        Value::Null => return Err("value is null; leave the user out of the snapshot instead".into()),
        Value::Array(_) | Value::Object(_) if allow_structured => {}
        Value::Array(_) | Value::Object(_) => {
            return Err(
                "value must be a string, number or boolean (set allow_structured = true for arrays and objects)".into(),
            );
        }
    }
    let text = value.to_string();
    if text.len() > MAX_VALUE_BYTES {
        return Err(format!("value is {} bytes, more than the limit of {MAX_VALUE_BYTES}", text.len()));
    }
    Ok(text)
}

/// A CSV cell as a value: JSON when the cell is a JSON number, boolean or quoted string
/// (`420.5`, `true`, `"gold"`), else the cell's text as a string (`gold`, `007`).
pub fn csv_value(cell: &str) -> Result<String, String> {
    if cell.is_empty() {
        return Err("value is empty".into());
    }
    match serde_json::from_str::<Value>(cell) {
        Ok(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => canonical_value(&v, false),
        Ok(Value::Null) => Err("value is null; leave the user out of the snapshot instead".into()),
        _ => canonical_value(&Value::String(cell.to_string()), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_canonical() {
        assert_eq!(canonical_value(&serde_json::json!(420.50), false).unwrap(), "420.5");
        assert_eq!(csv_value("420.50").unwrap(), "420.5");
        assert_eq!(csv_value("7").unwrap(), "7");
    }

    #[test]
    fn a_number_keeps_its_value_to_the_last_digit() {
        // Review finding: without serde_json's exact float parsing, 0.36475661926123093 was
        // stored and sent as 0.364756619261231, another number.
        for cell in ["0.36475661926123093", "2.2250738585072014e-308", "9007199254740993.5", "0.1"] {
            let text = csv_value(cell).unwrap();
            assert_eq!(text.parse::<f64>().unwrap(), cell.parse::<f64>().unwrap(), "{cell} became {text}");
        }
    }

    #[test]
    fn csv_cells_become_strings_unless_json_scalars() {
        assert_eq!(csv_value("gold").unwrap(), "\"gold\"");
        assert_eq!(csv_value("\"gold\"").unwrap(), "\"gold\"");
        assert_eq!(csv_value("007").unwrap(), "\"007\"");
        assert_eq!(csv_value("true").unwrap(), "true");
        assert_eq!(csv_value("[1,2]").unwrap(), "\"[1,2]\"");
        assert!(csv_value("").is_err());
        assert!(csv_value("null").is_err());
    }

    #[test]
    fn structured_null_and_oversized_values_are_refused() {
        assert!(canonical_value(&serde_json::json!([1]), false).is_err());
        assert!(canonical_value(&serde_json::json!({"a": 1}), false).is_err());
        assert_eq!(canonical_value(&serde_json::json!({"b": [1, 2], "a": 1}), true).unwrap(), r#"{"a":1,"b":[1,2]}"#);
        assert!(canonical_value(&Value::Null, true).is_err());
        let big = Value::String("x".repeat(MAX_VALUE_BYTES));
        assert!(canonical_value(&big, false).unwrap_err().contains("more than the limit"));
    }
}
