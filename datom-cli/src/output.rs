//! Printing records: pretty JSON for people, one compact JSON document for `--json`.

use serde_json::Value;

/// Parses znode data as JSON, falling back to a JSON string for non-JSON data (and null for
/// empty data), so every znode can be shown.
pub fn data_to_value(data: &[u8]) -> Value {
    if data.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(data).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned()))
}

/// Prints `v` pretty (`json == false`) or compact on one line.
pub fn print_json(v: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string(v).expect("values serialise"));
    } else {
        println!("{}", serde_json::to_string_pretty(v).expect("values serialise"));
    }
}
