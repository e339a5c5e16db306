//! JSON parsing that refuses duplicate object keys.
//!
//! RFC 8259 §4 says names within an object "SHOULD be unique" and leaves the
//! meaning of duplicates to the parser: serde_json keeps the last value, other
//! parsers (and the tools a repository or an ECU may use) keep the first or
//! fail. Signed JSON with a duplicate key is therefore a parser differential:
//! what we verified is not what another reader sees. Every piece of untrusted
//! JSON that the core verifies or that is persisted after verification
//! (metadata envelopes at every depth, vehicle manifests, ECU version reports)
//! enters through [`parse`], which refuses such documents outright.
//!
//! ```
//! use secureev_uptane::json;
//! assert!(json::parse(br#"{"a": 1, "b": {"c": 2}}"#).is_ok());
//! assert!(json::parse(br#"{"a": 1, "b": {"c": 2, "c": 3}}"#).is_err());
//! // Keys are compared after unescaping: "\u0061" is "a".
//! assert!(json::parse(br#"{"a": 1, "\u0061": 2}"#).is_err());
//! ```

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Parse `bytes` as one JSON value. Fails on invalid JSON, trailing
/// characters, nesting deeper than serde_json's recursion limit (128), and any
/// object that names a key twice (at any depth).
pub fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A `serde_json::Value` seed that errors on duplicate object keys.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json's own `Value`: a non-finite float cannot come from
        // JSON text, so this never yields Null in practice.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(de::Error::custom(format_args!(
                    "duplicate object key {shown:?}"
                )));
            }
            let value = map.next_value_seed(StrictValue)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_values_as_serde_json_without_duplicates() {
        let text =
            br#"{"z": [1, -2, 3.5, "s\n", null, true], "a": {"b": {}}, "n": 18446744073709551615}"#;
        let ours = parse(text).unwrap();
        let theirs: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(ours, theirs);
        // Key order is kept (preserve_order), as serde_json keeps it.
        let keys: Vec<&String> = ours.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a", "n"]);
    }

    #[test]
    fn duplicates_at_any_depth_are_refused() {
        for bad in [
            &br#"{"a": 1, "a": 1}"#[..],
            br#"{"x": [{"k": 1}, {"k": 1, "k": 2}]}"#,
            br#"{"signed": {"targets": {"f": {}, "f": {}}}}"#,
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("duplicate object key"), "{e}");
        }
    }

    #[test]
    fn trailing_data_and_deep_nesting_are_refused() {
        assert!(parse(b"{} {}").is_err());
        assert!(parse(b"{}  \n").is_ok());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(deep.as_bytes()).is_err());
    }
}
