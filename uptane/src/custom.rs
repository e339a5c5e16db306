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
//!   "encryption": { ... }
//! }
//! ```
//!
//! `ecuIdentifiers` appears in Director targets, `hardwareIds` in Image
//! repository targets, `releaseCounter` in both (they must agree), `uri` is
//! optional and `encryption` is described in [`crate::encryption`]. Director
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
