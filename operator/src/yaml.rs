//! YAML output that every reader parses the same way.
//!
//! serde_yaml writes an RFC 3339 string such as `2026-11-25T10:00:00Z` unquoted, which YAML 1.1
//! readers (PyYAML, hence kubernetes-validate, and older tools) turn into a timestamp, so
//! `--expires-at`'s value would stop being a string. This emitter lays out a JSON value as block
//! YAML and double-quotes every string that a YAML 1.1 or 1.2 reader could take for anything else.

use serde::Serialize;
use serde_json::Value;

/// Serializes `value` as a YAML document (without the leading `---`).
pub fn to_string<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = String::new();
    match &value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    Ok(out)
}

fn indent(out: &mut String, level: usize) {
    out.extend(std::iter::repeat_n(' ', level));
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, level: usize) {
    for (key, value) in map {
        indent(out, level);
        out.push_str(&string_text(key));
        out.push(':');
        write_value_after_key(out, value, level);
    }
}

fn write_value_after_key(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, level + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, level);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], level: usize) {
    for item in items {
        indent(out, level);
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => {
                // The first key shares the dash's line; the rest align under it.
                let mut first = true;
                for (key, value) in map {
                    if !first {
                        indent(out, level + 2);
                    }
                    first = false;
                    out.push_str(&string_text(key));
                    out.push(':');
                    write_value_after_key(out, value, level + 2);
                }
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_seq(out, inner, level + 2);
            }
            scalar => {
                out.push_str(&scalar_text(scalar));
                out.push('\n');
            }
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string_text(s),
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
    }
}

/// A string as a plain scalar when that is unambiguous, else JSON-quoted (valid YAML).
fn string_text(s: &str) -> String {
    if is_safe_plain(s) {
        s.to_owned()
    } else {
        serde_json::to_string(s).expect("a string always serializes")
    }
}

fn is_safe_plain(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // Anything that starts like a number, a date or a version could be read as one, and YAML
    // reserves most punctuation as a first character: only letters, '/' and '_' start plain.
    if !(first.is_ascii_alphabetic() || matches!(first, '/' | '_')) {
        return false;
    }
    const YAML11_WORDS: [&str; 12] = [
        "y", "yes", "n", "no", "true", "false", "on", "off", "null", "~", "nan", "inf",
    ];
    if YAML11_WORDS.contains(&s.to_ascii_lowercase().as_str()) {
        return false;
    }
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '@'))
        && !s.contains(": ")
        && !s.ends_with(':')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn timestamps_numbers_and_keywords_stay_strings() {
        let value = json!({
            "args": ["--expires-at", "2026-11-25T10:00:00Z", "--max-connections", "16", "yes", "0.0.0.0:9100", "[::]:10000"],
            "empty": "",
        });
        let text = to_string(&value).unwrap();
        let reread: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(reread, value, "round trip through a YAML reader:\n{text}");
        assert!(text.contains("- \"2026-11-25T10:00:00Z\""), "{text}");
        assert!(text.contains("- \"16\""), "{text}");
        assert!(text.contains("- \"[::]:10000\""), "{text}");
    }

    #[test]
    fn nested_maps_in_sequences_round_trip() {
        let value = json!({
            "spec": {"containers": [{"name": "proxy", "ports": [{"name": "link", "containerPort": 10000}], "args": []}]},
            "labels": {"app.kubernetes.io/name": "devicelink-proxy"},
            "list": [[1, 2], {}],
            "multi": "line one\nline two: here",
            "reserved": ["@at", ":colon", "%percent", "*star", "&amp", "!bang", "~", "Y", "Off"],
        });
        let text = to_string(&value).unwrap();
        let reread: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(reread, value, "round trip:\n{text}");
    }
}
