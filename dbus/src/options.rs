//! Typed option dictionaries (`a{sv}`) of the methods.
//!
//! Unknown keys are rejected with [`OtaError::UnknownOption`] naming the key (RAUC's
//! `InstallBundle` does the same): silently ignoring a misspelt option could make a
//! client believe the daemon honoured it. A known key with a value of the wrong type
//! is [`OtaError::InvalidArgument`].

use std::collections::HashMap;

use zbus::zvariant::{OwnedValue, Value};

use crate::OtaError;

/// Options of `CheckForUpdates`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckOptions {
    /// `force` (b): check now even inside the back-off interval after a failure.
    pub force: bool,
    /// `transaction-id` (s): caller-chosen id echoed in logs and history.
    pub transaction_id: Option<String>,
}

/// Options of `Install`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstallOptions {
    /// `transaction-id` (s): caller-chosen id echoed in logs and history.
    pub transaction_id: Option<String>,
    /// `when-ready` (b): when preconditions hold the install back, keep the
    /// consent and start the install once they all hold (`DeferredInstall`),
    /// instead of failing with `PreconditionFailed`.
    pub when_ready: bool,
}

/// Options of `Provision`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProvisionOptions {
    /// `vin` (s): vehicle identification number to register (default: from config).
    pub vin: Option<String>,
    /// `token` (s): one-time registration token issued by the backend operator.
    pub token: Option<String>,
    /// `transaction-id` (s): caller-chosen id echoed in logs and history.
    pub transaction_id: Option<String>,
}

type Dict = HashMap<String, OwnedValue>;

fn string(key: &str, v: &OwnedValue) -> Result<String, OtaError> {
    match &**v {
        Value::Str(s) => Ok(s.as_str().to_owned()),
        other => Err(OtaError::InvalidArgument(format!(
            "option {key:?} must be a string (s), got {}",
            other.value_signature()
        ))),
    }
}

fn boolean(key: &str, v: &OwnedValue) -> Result<bool, OtaError> {
    match &**v {
        Value::Bool(b) => Ok(*b),
        other => Err(OtaError::InvalidArgument(format!(
            "option {key:?} must be a boolean (b), got {}",
            other.value_signature()
        ))),
    }
}

fn unknown(key: &str, known: &[&str]) -> OtaError {
    OtaError::UnknownOption(format!(
        "unknown option {key:?} (known: {})",
        known.join(", ")
    ))
}

// Keys are checked in sorted order so the error names the same key every time.
fn sorted(d: &Dict) -> Vec<(&String, &OwnedValue)> {
    let mut v: Vec<_> = d.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

impl CheckOptions {
    /// Known keys.
    pub const KEYS: &'static [&'static str] = &["force", "transaction-id"];

    /// Parses the `a{sv}` argument.
    pub fn parse(d: &Dict) -> Result<Self, OtaError> {
        let mut o = Self::default();
        for (k, v) in sorted(d) {
            match k.as_str() {
                "force" => o.force = boolean(k, v)?,
                "transaction-id" => o.transaction_id = Some(string(k, v)?),
                _ => return Err(unknown(k, Self::KEYS)),
            }
        }
        Ok(o)
    }
}

impl InstallOptions {
    /// Known keys.
    pub const KEYS: &'static [&'static str] = &["transaction-id", "when-ready"];

    /// Parses the `a{sv}` argument.
    pub fn parse(d: &Dict) -> Result<Self, OtaError> {
        let mut o = Self::default();
        for (k, v) in sorted(d) {
            match k.as_str() {
                "transaction-id" => o.transaction_id = Some(string(k, v)?),
                "when-ready" => o.when_ready = boolean(k, v)?,
                _ => return Err(unknown(k, Self::KEYS)),
            }
        }
        Ok(o)
    }
}

impl ProvisionOptions {
    /// Known keys.
    pub const KEYS: &'static [&'static str] = &["token", "transaction-id", "vin"];

    /// Parses the `a{sv}` argument.
    pub fn parse(d: &Dict) -> Result<Self, OtaError> {
        let mut o = Self::default();
        for (k, v) in sorted(d) {
            match k.as_str() {
                "vin" => o.vin = Some(string(k, v)?),
                "token" => o.token = Some(string(k, v)?),
                "transaction-id" => o.transaction_id = Some(string(k, v)?),
                _ => return Err(unknown(k, Self::KEYS)),
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(entries: &[(&str, Value<'_>)]) -> Dict {
        entries
            .iter()
            .map(|(k, v)| {
                let owned = v.try_to_owned().expect("owned");
                ((*k).to_owned(), owned)
            })
            .collect()
    }

    #[test]
    fn unknown_key_is_named() {
        let e = CheckOptions::parse(&dict(&[("forcce", Value::Bool(true))])).unwrap_err();
        assert!(
            matches!(&e, OtaError::UnknownOption(m) if m.contains("forcce")),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_type_is_invalid_argument() {
        let e = CheckOptions::parse(&dict(&[("force", Value::from("yes"))])).unwrap_err();
        assert!(matches!(e, OtaError::InvalidArgument(_)), "{e:?}");
    }

    #[test]
    fn known_keys_parse() {
        let o = ProvisionOptions::parse(&dict(&[
            ("vin", Value::from("WVW123")),
            ("token", Value::from("t")),
        ]))
        .unwrap();
        assert_eq!(o.vin.as_deref(), Some("WVW123"));
        assert_eq!(o.token.as_deref(), Some("t"));
        assert!(InstallOptions::parse(&Dict::new()).is_ok());
    }
}
