//! Custom target fields shared by the SecureEV-OTA backend and clients.
//!
//! Uptane 2.1 §5.2.3.1.1 requires an ECU identifier per Director target and
//! recommends a hardware ID and a release counter on both repositories; it names
//! no JSON keys. We use the aktualizr/ota-tuf spelling where one exists:
//!
//! ```json
//! "custom": {
//!   "ecuIdentifiers": { "HU-0001": { "hardwareId": "secureev-hu-imx8" } },
//!   "hardwareIds": ["secureev-hu-imx8"],
//!   "releaseCounter": 7,
//!   "uri": "https://images.example/fw-7.bin",
//!   "version": "2.4.1",
//!   "releaseNotes": "Fixes the charging timer.",
//!   "encryption": { ... }
//! }
//! ```
//!
//! `ecuIdentifiers` appears in Director targets, `hardwareIds` in Image
//! repository targets, `releaseCounter` in both (they must agree), `uri` is
//! optional and `encryption` is described in [`crate::encryption`].
//! `version` (the human version, aktualizr's spelling) and `releaseNotes`
//! are display texts the Image repository signs; a client reads them from the
//! verified Image repository entry ([`crate::uptane::UpdateTarget::version`])
//! and must still bound and sanitise them before showing them: they decide
//! nothing. Director
//! targets metadata carries the vehicle identifier in `signed.custom.vin`.
//! See `docs/metadata.md` for a full example.

use crate::error::{Error, Result};
use crate::metadata::{TargetFile, Targets};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// JSON key of the ECU identifiers map.
pub const ECU_IDENTIFIERS: &str = "ecuIdentifiers";
/// JSON key of the hardware ID list.
pub const HARDWARE_IDS: &str = "hardwareIds";
/// JSON key of the release counter.
pub const RELEASE_COUNTER: &str = "releaseCounter";
/// JSON key of the human version (display only).
pub const VERSION: &str = "version";
/// JSON key of the release notes (display only).
pub const RELEASE_NOTES: &str = "releaseNotes";

/// One entry of `ecuIdentifiers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcuIdentifier {
    /// Hardware ID of the ECU the Director addresses.
    #[serde(rename = "hardwareId")]
    pub hardware_id: String,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// The custom fields of one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetCustom {
    /// ECU serial → hardware ID (Director).
    #[serde(
        rename = "ecuIdentifiers",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub ecu_identifiers: BTreeMap<String, EcuIdentifier>,
    /// Hardware IDs the image is built for (Image repository).
    #[serde(rename = "hardwareIds", default, skip_serializing_if = "Vec::is_empty")]
    pub hardware_ids: Vec<String>,
    /// Release counter: never below the one installed on the ECU.
    #[serde(
        rename = "releaseCounter",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub release_counter: Option<u64>,
    /// Optional download location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Encryption info, when the image is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Value>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

impl TargetCustom {
    /// Parse the custom fields of `target` (named `name` in errors). A missing
    /// `custom` is an empty set of fields.
    pub fn of(name: &str, target: &TargetFile) -> Result<Self> {
        match &target.custom {
            None | Some(Value::Null) => Ok(TargetCustom::default()),
            // Deserialised by reference: no copy of the value per lookup.
            Some(v) => TargetCustom::deserialize(v).map_err(|e| Error::InvalidCustom {
                target: name.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// The human version (`version`), when it is a string.
    pub fn version(&self) -> Option<&str> {
        self.unrecognized.get(VERSION).and_then(Value::as_str)
    }

    /// The release notes (`releaseNotes`), when they are a string.
    pub fn release_notes(&self) -> Option<&str> {
        self.unrecognized.get(RELEASE_NOTES).and_then(Value::as_str)
    }

    /// As a JSON value for a target's `custom`.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The vehicle identifier of Director targets metadata (`signed.custom.vin`).
pub fn director_vin(targets: &Targets) -> Option<&str> {
    targets
        .unrecognized
        .get("custom")
        .and_then(|c| c.get("vin"))
        .and_then(Value::as_str)
}

/// Longest human version accepted (`custom.version`), in bytes.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest release notes accepted (`custom.releaseNotes`), in bytes.
pub const MAX_RELEASE_NOTES_LEN: usize = 4096;

/// Which display text: a one-line version, or multi-line release notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayText {
    /// `custom.version`: one line, at most [`MAX_VERSION_LEN`] bytes.
    Version,
    /// `custom.releaseNotes`: lines (`\n`, `\t` allowed), at most
    /// [`MAX_RELEASE_NOTES_LEN`] bytes.
    ReleaseNotes,
}

impl DisplayText {
    /// The longest text accepted, in bytes.
    pub fn max_len(self) -> usize {
        match self {
            DisplayText::Version => MAX_VERSION_LEN,
            DisplayText::ReleaseNotes => MAX_RELEASE_NOTES_LEN,
        }
    }

    /// The JSON key in `custom`.
    pub fn key(self) -> &'static str {
        match self {
            DisplayText::Version => VERSION,
            DisplayText::ReleaseNotes => RELEASE_NOTES,
        }
    }

    /// Whether `c` may appear: no control characters (C0, DEL, C1; notes
    /// keep `\n` and `\t`), no bidirectional overrides or isolates (text
    /// that displays other than it reads), no line or paragraph separators
    /// in a version.
    pub fn allows(self, c: char) -> bool {
        let multiline = self == DisplayText::ReleaseNotes;
        if c.is_control() {
            return multiline && (c == '\n' || c == '\t');
        }
        !matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        ) && (multiline || !matches!(c, '\u{2028}' | '\u{2029}'))
    }

    /// Check `text` as a publisher must give it: non-empty for a version,
    /// within the length bound, only allowed characters. The error says
    /// what is wrong (byte offset of the first bad character).
    pub fn check(self, text: &str) -> std::result::Result<(), String> {
        if self == DisplayText::Version && text.trim().is_empty() {
            return Err("the version is empty".into());
        }
        if text.len() > self.max_len() {
            return Err(format!(
                "{} is {} bytes, at most {} are allowed",
                self.key(),
                text.len(),
                self.max_len()
            ));
        }
        if let Some((at, c)) = text.char_indices().find(|&(_, c)| !self.allows(c)) {
            return Err(format!(
                "{} has a control or bidirectional formatting character U+{:04X} at byte {at}",
                self.key(),
                u32::from(c)
            ));
        }
        Ok(())
    }

    /// Make `text` (untrusted: from metadata) safe to show: every character
    /// [`Self::allows`] refuses becomes U+FFFD, and the result is cut at a
    /// character boundary to at most [`Self::max_len`] bytes.
    pub fn sanitize(self, text: &str) -> String {
        let mut out = String::with_capacity(text.len().min(self.max_len()));
        for c in text.chars() {
            let c = if self.allows(c) { c } else { '\u{fffd}' };
            if out.len() + c.len_utf8() > self.max_len() {
                break;
            }
            out.push(c);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_texts_are_checked_and_sanitised() {
        let v = DisplayText::Version;
        let n = DisplayText::ReleaseNotes;
        assert_eq!(v.check("2.4.1"), Ok(()));
        assert_eq!(n.check("Fixes:\n\t- the charging timer\n"), Ok(()));
        assert!(v.check("").is_err());
        assert!(v.check("2.4\n1").unwrap_err().contains("U+000A at byte 3"));
        assert!(n.check("a\u{1b}[2Jb").unwrap_err().contains("U+001B"));
        assert!(n
            .check("safe\u{202e}txt.exe")
            .unwrap_err()
            .contains("U+202E"));
        assert!(n.check("\u{85}").is_err(), "C1 control");
        assert!(v.check(&"1".repeat(65)).unwrap_err().contains("65 bytes"));
        assert_eq!(n.check(&"é".repeat(2048)), Ok(()));
        assert!(n.check(&"é".repeat(2049)).is_err());

        assert_eq!(v.sanitize("2.4\u{1b}1"), "2.4\u{fffd}1");
        assert_eq!(n.sanitize("line\nnext\r"), "line\nnext\u{fffd}");
        let long = "é".repeat(3000);
        let cut = n.sanitize(&long);
        assert_eq!(cut.len(), MAX_RELEASE_NOTES_LEN);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(v.sanitize(&"x".repeat(100)).len(), MAX_VERSION_LEN);
        // Sanitised text always passes the check (but for an empty version).
        for s in ["a\u{0}b", "\u{2066}x\u{2069}", &"\u{7f}".repeat(5000)] {
            assert_eq!(n.check(&n.sanitize(s)), Ok(()));
            assert_eq!(v.check(&v.sanitize(s)), Ok(()));
        }
    }
}
