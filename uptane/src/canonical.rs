//! OLPC canonical JSON, the form TUF and Uptane sign.
//!
//! Rules (as securesystemslib and python-tuf implement them): object keys sorted by
//! code point, no insignificant whitespace, integers only (no floats), and in
//! strings only `"` and `\` are escaped; every other byte, including newlines in
//! PEM keys and control characters, is written raw.
//!
//! Signatures are always checked over the canonical form of the *raw* `signed`
//! value as it was received, never over a re-serialised typed struct.

use crate::error::{Error, Result};
use serde_json::Value;

/// Canonical bytes of a JSON value.
///
/// ```
/// let v = serde_json::json!({"b": 1, "a": "x\ny\"", "c": [true, null]});
/// let c = secureev_uptane::canonical::to_canonical(&v).unwrap();
/// assert_eq!(c, b"{\"a\":\"x\ny\\\"\",\"b\":1,\"c\":[true,null]}");
/// ```
pub fn to_canonical(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

/// Canonical bytes of any serialisable value.
pub fn to_canonical_from<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    let v = serde_json::to_value(value).map_err(|e| Error::Canonical(e.to_string()))?;
    to_canonical(&v)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(Error::Canonical(format!(
                    "{n} is not an integer; canonical JSON allows integers only"
                )));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(&map[key], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_recursively_without_whitespace() {
        let v = json!({"z": {"b": [1, {"y": 2, "x": 3}], "a": -7}, "A": null});
        assert_eq!(
            to_canonical(&v).unwrap(),
            br#"{"A":null,"z":{"a":-7,"b":[1,{"x":3,"y":2}]}}"#
        );
    }

    #[test]
    fn escapes_only_quote_and_backslash() {
        let v = json!("-----BEGIN\n\t\u{1}é\"\\");
        assert_eq!(
            to_canonical(&v).unwrap(),
            "\"-----BEGIN\n\t\u{1}é\\\"\\\\\"".as_bytes()
        );
    }

    #[test]
    fn rejects_floats() {
        assert!(matches!(
            to_canonical(&json!({"a": 1.5})),
            Err(Error::Canonical(_))
        ));
    }

    #[test]
    fn large_unsigned_integers_are_exact() {
        let v: Value = serde_json::from_str("18446744073709551615").unwrap();
        assert_eq!(to_canonical(&v).unwrap(), b"18446744073709551615");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|i| json!(i)),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".*", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Canonical JSON is valid JSON that parses back to the same value, and
        /// canonicalising it again gives the same bytes (idempotence).
        #[test]
        fn round_trips_and_is_idempotent(v in arb_json()) {
            let c = to_canonical(&v).unwrap();
            // Parsing back is only defined when no raw control characters were
            // written (JSON forbids them in strings); the canonical form keeps
            // them raw on purpose, as securesystemslib does.
            if !c.iter().any(|&b| b < 0x20) {
                let back: Value = serde_json::from_slice(&c).unwrap();
                prop_assert_eq!(&back, &v);
                prop_assert_eq!(to_canonical(&back).unwrap(), c);
            }
        }

        /// Key order in the input never changes the output.
        #[test]
        fn independent_of_insertion_order(pairs in prop::collection::vec((".{0,8}", any::<i64>()), 0..10)) {
            let mut fwd = serde_json::Map::new();
            for (k, v) in &pairs { fwd.insert(k.clone(), json!(v)); }
            let mut rev = serde_json::Map::new();
            for (k, _) in pairs.iter().rev() { rev.insert(k.clone(), fwd[k].clone()); }
            prop_assert_eq!(to_canonical(&Value::Object(fwd)).unwrap(), to_canonical(&Value::Object(rev)).unwrap());
        }

        /// Only `"` and `\` gain a backslash; every other byte is copied.
        #[test]
        fn string_escaping_is_minimal(s in ".*") {
            let c = to_canonical(&Value::String(s.clone())).unwrap();
            let extra = s.bytes().filter(|&b| b == b'"' || b == b'\\').count();
            prop_assert_eq!(c.len(), s.len() + 2 + extra);
        }
    }
}
