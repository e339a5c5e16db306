//! Vehicle version manifests and ECU version reports (Uptane 2.1 §5.4.2.1).
//!
//! Every ECU signs an *ECU version report* with its own key each update cycle;
//! the Primary collects them, unchanged, into a *vehicle version manifest* that
//! it signs with its key and sends to the Director. Both are signed envelopes in
//! the TUF shape:
//!
//! ```json
//! {"signatures": [{"keyid": "…", "method": "ecdsa-sha2-nistp256", "sig": "<hex>"}],
//!  "signed": { … }}
//! ```
//!
//! The signature covers the OLPC canonical JSON of the raw `signed` value. The
//! `keyid` is the TUF 1.0 key id of the signer's key object (what
//! [`SigningKey::keyid`] returns) and `method` its scheme. See
//! `docs/manifest.md` for the full JSON and an example.
//!
//! Verification follows the crate's rule: parse to a JSON value, canonicalise the
//! raw `signed`, check the signature with the *registered* key, and only then
//! build the typed struct inside a [`Verified`] proof. The backend refuses a
//! whole manifest when any report in it is from an ECU it does not know, is
//! filed under another ECU's serial, or does not verify: a Primary must never be
//! able to speak for a Secondary (aktualizr issue uptane/aktualizr#89).
//!
//! ```
//! use secureev_uptane::manifest::*;
//! use secureev_uptane::{SigningKey, Timestamp};
//!
//! let now = Timestamp::parse("2030-01-01T00:00:00Z").unwrap();
//! let (primary, ecu) = (SigningKey::generate_p256(), SigningKey::generate_p256());
//! let report = EcuVersionReport::new("ECU-1", "hw-brake", now, 7);
//! let mut manifest = VehicleManifest::new("WVWZZZ1JZXW000001", "ECU-1", 42);
//! manifest.add_report(sign_ecu_report(&report, &ecu).unwrap()).unwrap();
//! let bytes = serde_json::to_vec(&sign_manifest(&manifest, &primary).unwrap()).unwrap();
//!
//! let ecu_public = ecu.verifying_key();
//! let verified = verify_manifest(&bytes, &primary.verifying_key(), |serial| {
//!     (serial == "ECU-1").then(|| ecu_public.clone())
//! })
//! .unwrap();
//! assert_eq!(verified.report("ECU-1").unwrap().report_counter, 7);
//! verified.check_counters(Some(41), |_| Some(6)).unwrap();
//! ```

use crate::canonical::to_canonical;
use crate::error::{Attack, Error, Result};
use crate::keys::{PublicKey, SigningKey};
use crate::time::Timestamp;
use crate::verify::Verified;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Length in bytes of the random nonce [`random_nonce`] makes.
pub const NONCE_LEN: usize = 16;

/// Separator of attack names in `attacks_detected`.
pub const ATTACK_SEPARATOR: &str = ",";

/// The `signed` part of an ECU version report (Uptane 2.1 §5.4.2.1.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcuVersionReport {
    /// The ECU's serial (its Uptane ECU identifier).
    pub ecu_serial: String,
    /// The ECU's hardware ID.
    pub hardware_id: String,
    /// The image installed now; `null` when nothing is installed.
    #[serde(default)]
    pub installed_image: Option<InstalledImage>,
    /// Attacks detected since the last report, [`Attack::as_str`] names joined
    /// by [`ATTACK_SEPARATOR`]; `""` when none.
    pub attacks_detected: String,
    /// The latest time proven by verified metadata, `YYYY-MM-DDTHH:MM:SSZ`.
    pub latest_verified_time: String,
    /// Increases every update cycle; the backend refuses one that does not.
    pub report_counter: u64,
    /// Hex random nonce, when the ECU sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Outcome of the last installation, when one was attempted this cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_result: Option<InstallationResult>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// The installed image of an ECU as a version report carries it (the wire
/// format): its target name and file info. A vehicle makes it from the core's
/// [`crate::uptane::InstalledImage`] with [`InstalledImage::of`]; the backend
/// reads it from a verified report, keeping fields it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledImage {
    /// Target name of the image, as listed in targets metadata.
    pub filepath: String,
    /// Length, hashes and custom fields.
    pub fileinfo: FileInfo,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// Length and hashes of an installed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Length in bytes.
    pub length: u64,
    /// Algorithm → hex digest.
    pub hashes: BTreeMap<String, String>,
    /// Custom fields, such as the release counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<FileInfoCustom>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// Custom fields of an installed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfoCustom {
    /// Release counter of the installed image (Uptane 2.1 §5.2.3.1.1).
    #[serde(
        rename = "releaseCounter",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub release_counter: Option<u64>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// The outcome of an installation attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationResult {
    /// Whether the image was installed.
    pub success: bool,
    /// Machine-readable result code (e.g. `OK`, `VERIFICATION_FAILED`).
    pub code: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// The `signed` part of a vehicle version manifest (Uptane 2.1 §5.4.2.1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VehicleManifest {
    /// Vehicle identifier.
    pub vin: String,
    /// Serial of the Primary ECU that signs the manifest.
    pub primary_ecu_serial: String,
    /// ECU serial → that ECU's signed version report envelope, as it signed it.
    pub ecu_version_reports: BTreeMap<String, Value>,
    /// Increases every update cycle; the backend refuses one that does not.
    pub report_counter: u64,
    /// Vehicle-level outcome of the last update campaign, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_report: Option<InstallationReport>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// The vehicle-level installation report of a manifest. Per-ECU outcomes are in
/// the ECU reports, signed by the ECUs themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationReport {
    /// The campaign or Director correlation id this report answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The overall result.
    pub result: InstallationResult,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

impl EcuVersionReport {
    /// A report with nothing installed, no attacks, no nonce and no installation
    /// result.
    pub fn new(
        ecu_serial: impl Into<String>,
        hardware_id: impl Into<String>,
        latest_verified_time: Timestamp,
        report_counter: u64,
    ) -> Self {
        EcuVersionReport {
            ecu_serial: ecu_serial.into(),
            hardware_id: hardware_id.into(),
            installed_image: None,
            attacks_detected: String::new(),
            latest_verified_time: latest_verified_time.to_string(),
            report_counter,
            nonce: None,
            installation_result: None,
            unrecognized: Map::new(),
        }
    }

    /// Set the installed image.
    pub fn with_installed_image(mut self, image: InstalledImage) -> Self {
        self.installed_image = Some(image);
        self
    }

    /// Set the detected attacks (see [`attacks_string`]).
    pub fn with_attacks(mut self, attacks: &[Attack]) -> Self {
        self.attacks_detected = attacks_string(attacks);
        self
    }

    /// Set the hex nonce (see [`random_nonce`]).
    pub fn with_nonce(mut self, nonce: impl Into<String>) -> Self {
        self.nonce = Some(nonce.into());
        self
    }

    /// Set the installation result.
    pub fn with_installation_result(mut self, result: InstallationResult) -> Self {
        self.installation_result = Some(result);
        self
    }

    /// The parsed `latest_verified_time`.
    pub fn latest_verified_at(&self) -> Result<Timestamp> {
        Timestamp::parse(&self.latest_verified_time)
    }

    /// The attack names in `attacks_detected`.
    pub fn attacks(&self) -> Vec<&str> {
        self.attacks_detected
            .split(ATTACK_SEPARATOR)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }
}

impl InstalledImage {
    /// How a version report carries the ECU's installed image (the core's one
    /// [`crate::uptane::InstalledImage`]): its target name, length and hashes,
    /// and its release counter in `custom.releaseCounter` (always present, 0
    /// when the image had none).
    pub fn of(image: &crate::uptane::InstalledImage) -> Self {
        InstalledImage::new(image.name(), image.length(), image.hashes().clone())
            .with_release_counter(image.release_counter())
    }

    /// An installed image without custom fields.
    pub fn new(filepath: impl Into<String>, length: u64, hashes: BTreeMap<String, String>) -> Self {
        InstalledImage {
            filepath: filepath.into(),
            fileinfo: FileInfo {
                length,
                hashes,
                custom: None,
                unrecognized: Map::new(),
            },
            unrecognized: Map::new(),
        }
    }

    /// Set the release counter of the installed image.
    pub fn with_release_counter(mut self, release_counter: u64) -> Self {
        self.fileinfo
            .custom
            .get_or_insert_with(|| FileInfoCustom {
                release_counter: None,
                unrecognized: Map::new(),
            })
            .release_counter = Some(release_counter);
        self
    }

    /// The release counter, when the report carries one.
    pub fn release_counter(&self) -> Option<u64> {
        self.fileinfo
            .custom
            .as_ref()
            .and_then(|c| c.release_counter)
    }
}

impl InstallationResult {
    /// A result with `success`, `code` and `message`.
    pub fn new(success: bool, code: impl Into<String>, message: impl Into<String>) -> Self {
        InstallationResult {
            success,
            code: code.into(),
            message: message.into(),
            unrecognized: Map::new(),
        }
    }
}

impl VehicleManifest {
    /// A manifest with no reports yet.
    pub fn new(
        vin: impl Into<String>,
        primary_ecu_serial: impl Into<String>,
        report_counter: u64,
    ) -> Self {
        VehicleManifest {
            vin: vin.into(),
            primary_ecu_serial: primary_ecu_serial.into(),
            ecu_version_reports: BTreeMap::new(),
            report_counter,
            installation_report: None,
            unrecognized: Map::new(),
        }
    }

    /// Add a signed ECU version report, filed under the serial it names. The
    /// report is not verified here (the Primary may check it with
    /// [`verify_ecu_report_value`] first); the backend verifies every one.
    pub fn add_report(&mut self, signed_report: Value) -> Result<()> {
        let serial = signed_report
            .get("signed")
            .and_then(|s| s.get("ecu_serial"))
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("<unknown ECU>", "report has no signed.ecu_serial"))?
            .to_owned();
        if self.ecu_version_reports.contains_key(&serial) {
            return Err(invalid(
                &serial,
                "the manifest already has a report for this ECU",
            ));
        }
        self.ecu_version_reports.insert(serial, signed_report);
        Ok(())
    }

    /// Set the vehicle-level installation report.
    pub fn with_installation_report(mut self, report: InstallationReport) -> Self {
        self.installation_report = Some(report);
        self
    }
}

/// `attacks_detected` for a list of attacks: their [`Attack::as_str`] names,
/// each once, in order, joined by [`ATTACK_SEPARATOR`]; `""` for none.
pub fn attacks_string(attacks: &[Attack]) -> String {
    let mut seen = HashSet::new();
    attacks
        .iter()
        .filter(|a| seen.insert(**a))
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(ATTACK_SEPARATOR)
}

/// A fresh random nonce: [`NONCE_LEN`] bytes from the OS generator, hex.
pub fn random_nonce() -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; NONCE_LEN];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Sign an ECU version report with the ECU's key; returns the envelope.
pub fn sign_ecu_report(report: &EcuVersionReport, key: &SigningKey) -> Result<Value> {
    sign_envelope(to_value(report)?, key)
}

/// Sign a vehicle version manifest with the Primary's key; returns the envelope.
pub fn sign_manifest(manifest: &VehicleManifest, key: &SigningKey) -> Result<Value> {
    sign_envelope(to_value(manifest)?, key)
}

fn to_value<T: Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::Canonical(e.to_string()))
}

fn sign_envelope(signed: Value, key: &SigningKey) -> Result<Value> {
    let sig = key.sign_hex(&to_canonical(&signed)?);
    Ok(json!({
        "signatures": [{"keyid": key.keyid(), "method": key.scheme(), "sig": sig}],
        "signed": signed,
    }))
}

/// Verify an ECU version report envelope received as bytes, signed by `key`,
/// from the ECU `expected_serial`.
pub fn verify_ecu_report(
    bytes: &[u8],
    key: &PublicKey,
    expected_serial: &str,
) -> Result<Verified<EcuVersionReport>> {
    // Duplicate object keys are refused at every depth (see [`crate::json`]).
    let value: Value = crate::json::parse(bytes)
        .map_err(|e| invalid(expected_serial, &format!("not JSON: {e}")))?;
    verify_report(&value, Arc::from(bytes), key, expected_serial)
}

/// Verify an ECU version report envelope that arrived as a JSON value (inside a
/// manifest). The proof's [`Verified::raw`] is the compact JSON of `envelope`;
/// persist the bytes of the enclosing manifest. Parse the enclosing document
/// with [`crate::json::parse`]: a `Value` from `serde_json::from_slice` has
/// already dropped duplicate keys, so they can no longer be refused here.
pub fn verify_ecu_report_value(
    envelope: &Value,
    key: &PublicKey,
    expected_serial: &str,
) -> Result<Verified<EcuVersionReport>> {
    let raw = serde_json::to_vec(envelope)
        .map_err(|e| invalid(expected_serial, &format!("cannot serialise report: {e}")))?;
    verify_report(envelope, Arc::from(raw), key, expected_serial)
}

fn verify_report(
    envelope: &Value,
    raw: Arc<[u8]>,
    key: &PublicKey,
    expected_serial: &str,
) -> Result<Verified<EcuVersionReport>> {
    let (signed, signatures) = split_envelope(expected_serial, envelope)?;
    // Uptane 2.1 §5.4.2.1.2: the report carries the ECU identifier of the ECU
    // that made it. A report filed under another ECU's serial is refused before
    // any key is tried, so the error says what happened.
    match signed.get("ecu_serial").and_then(Value::as_str) {
        Some(serial) if serial == expected_serial => {}
        Some(serial) => {
            return Err(invalid(
                expected_serial,
                &format!("report is for ECU {:?}, not this one", shorten(serial)),
            ))
        }
        None => return Err(invalid(expected_serial, "report has no ecu_serial")),
    }
    // Uptane 2.1 §5.4.2.1.2: "signed by the ECU's key". Only the key registered
    // for this ECU counts.
    let sig = select_signature(expected_serial, &signatures, key)?;
    crate::verify::verified_by_key(
        signed,
        raw,
        key,
        sig,
        || bad_signature(expected_serial, key),
        |signed| {
            let report = EcuVersionReport::deserialize(signed).map_err(|e| {
                invalid(
                    expected_serial,
                    &format!("malformed ECU version report: {e}"),
                )
            })?;
            // Uptane 2.1 §5.4.2.1.2: "the latest time the ECU can verify".
            report.latest_verified_at().map_err(|_| {
                invalid(
                    expected_serial,
                    &format!(
                        "latest_verified_time {:?} is not YYYY-MM-DDTHH:MM:SSZ",
                        shorten(&report.latest_verified_time)
                    ),
                )
            })?;
            if let Some(nonce) = &report.nonce {
                if nonce.is_empty() || hex::decode(nonce).is_err() {
                    return Err(invalid(expected_serial, "nonce is not hex"));
                }
            }
            Ok(report)
        },
    )
}

/// A vehicle version manifest whose signature and every ECU report in it were
/// verified with registered keys.
#[derive(Debug, Clone)]
pub struct VerifiedManifest {
    manifest: Verified<VehicleManifest>,
    reports: BTreeMap<String, Verified<EcuVersionReport>>,
}

impl VerifiedManifest {
    /// The verified manifest; [`Verified::raw`] is the bytes to persist.
    pub fn manifest(&self) -> &Verified<VehicleManifest> {
        &self.manifest
    }

    /// The verified ECU reports, by serial.
    pub fn reports(&self) -> &BTreeMap<String, Verified<EcuVersionReport>> {
        &self.reports
    }

    /// The verified report of one ECU.
    pub fn report(&self, serial: &str) -> Option<&Verified<EcuVersionReport>> {
        self.reports.get(serial)
    }

    /// The VIN the Primary signed. The backend compares it with the vehicle the
    /// connection authenticated as.
    pub fn vin(&self) -> &str {
        &self.manifest.vin
    }

    /// Replay check of the manifest's and every report's `report_counter`
    /// against the last accepted ones (see [`check_counter`]).
    /// `previous_report` gives the last accepted counter of an ECU, `None` if
    /// the backend has accepted none.
    pub fn check_counters(
        &self,
        previous_manifest: Option<u64>,
        previous_report: impl Fn(&str) -> Option<u64>,
    ) -> Result<()> {
        check_counter(previous_manifest, self.manifest.report_counter).map_err(|e| {
            rename_rollback(
                e,
                format!("vehicle manifest of {}", shorten(&self.manifest.vin)),
            )
        })?;
        for (serial, report) in &self.reports {
            check_counter(previous_report(serial), report.report_counter).map_err(|e| {
                rename_rollback(e, format!("version report of ECU {}", shorten(serial)))
            })?;
        }
        Ok(())
    }
}

fn rename_rollback(e: Error, what: String) -> Error {
    match e {
        Error::Rollback {
            trusted, offered, ..
        } => Error::Rollback {
            role: what,
            trusted,
            offered,
        },
        other => other,
    }
}

/// Verify a vehicle version manifest: its signature with the Primary's
/// registered key, then every ECU report with the key `ecu_keys` registers for
/// that serial. Any report from an unknown ECU, filed under another serial, or
/// with a bad signature makes the whole manifest invalid.
pub fn verify_manifest(
    bytes: &[u8],
    primary_key: &PublicKey,
    ecu_keys: impl Fn(&str) -> Option<PublicKey>,
) -> Result<VerifiedManifest> {
    // Duplicate object keys are refused at every depth, the ECU reports
    // inside included (see [`crate::json`]).
    let value: Value = crate::json::parse(bytes)
        .map_err(|e| invalid("<unknown vehicle>", &format!("not JSON: {e}")))?;
    // Only a label for errors until the signature is checked.
    let label = value
        .get("signed")
        .and_then(|s| s.get("vin"))
        .and_then(Value::as_str)
        .unwrap_or("<unknown vehicle>")
        .to_owned();
    let (signed, signatures) = split_envelope(&label, &value)?;
    // Uptane 2.1 §5.4.2.1.1: the manifest is signed by the Primary's key.
    let sig = select_signature(&label, &signatures, primary_key)?;
    let manifest = crate::verify::verified_by_key(
        signed,
        Arc::from(bytes),
        primary_key,
        sig,
        || bad_signature(&label, primary_key),
        |signed| {
            let manifest = VehicleManifest::deserialize(signed).map_err(|e| {
                invalid(&label, &format!("malformed vehicle version manifest: {e}"))
            })?;
            // Uptane 2.1 §5.4.2.1.1: the manifest names the vehicle.
            if manifest.vin.is_empty() {
                return Err(invalid(&label, "empty vin"));
            }
            Ok(manifest)
        },
    )?;
    let mut reports = BTreeMap::new();
    for (serial, envelope) in &manifest.ecu_version_reports {
        // The backend only trusts ECUs it registered for this vehicle; a report
        // from any other ECU is refused, not skipped, so that a compromised
        // Primary cannot slip in an ECU of its own.
        let key = ecu_keys(serial)
            .ok_or_else(|| invalid(serial, "ECU is not registered for this vehicle"))?;
        reports.insert(
            serial.clone(),
            verify_ecu_report_value(envelope, &key, serial)?,
        );
    }
    Ok(VerifiedManifest { manifest, reports })
}

/// Replay check: the offered `report_counter` must be strictly greater than the
/// last accepted one (Uptane 2.1 §5.4.2.1.2: "a nonce or counter that changes
/// every cycle"). A replayed or older report is a [`Error::Rollback`].
pub fn check_counter(previous: Option<u64>, offered: u64) -> Result<()> {
    match previous {
        Some(trusted) if offered <= trusted => Err(Error::Rollback {
            role: "report_counter".into(),
            trusted,
            offered,
        }),
        _ => Ok(()),
    }
}

/// A signature entry of a manifest or report envelope.
#[derive(Debug, Deserialize)]
struct EnvelopeSignature {
    keyid: String,
    #[serde(default)]
    method: Option<String>,
    sig: String,
}

/// Split `{"signatures": [...], "signed": {...}}` without touching `signed`.
fn split_envelope<'a>(
    signer: &str,
    envelope: &'a Value,
) -> Result<(&'a Value, Vec<EnvelopeSignature>)> {
    let obj = envelope
        .as_object()
        .ok_or_else(|| invalid(signer, "envelope is not a JSON object"))?;
    let signed = obj
        .get("signed")
        .filter(|s| s.is_object())
        .ok_or_else(|| invalid(signer, "envelope has no \"signed\" object"))?;
    let signatures = obj
        .get("signatures")
        .ok_or_else(|| invalid(signer, "envelope has no \"signatures\""))?;
    let signatures: Vec<EnvelopeSignature> = serde_json::from_value(signatures.clone())
        .map_err(|e| invalid(signer, &format!("bad signatures: {e}")))?;
    Ok((signed, signatures))
}

/// Select the signature entry of `key` in `signatures` and check the rules
/// around it; [`crate::verify::verified_by_key`] then checks the signature.
///
/// The signature entry is selected by key id (that of `key`'s key object); one
/// key id listed twice is refused, as for metadata. Its `method` must be the
/// key's scheme, and the signature must verify over the canonical form of the
/// raw `signed` value.
fn select_signature<'a>(
    signer: &str,
    signatures: &'a [EnvelopeSignature],
    key: &PublicKey,
) -> Result<&'a str> {
    let mut seen = HashSet::new();
    for s in signatures {
        if !seen.insert(s.keyid.as_str()) {
            return Err(invalid(
                signer,
                &format!("more than one signature by key {}", shorten(&s.keyid)),
            ));
        }
    }
    let key_object = key.to_key();
    let keyid = key_object.keyid()?;
    let entry = signatures
        .iter()
        .find(|s| s.keyid == keyid)
        .ok_or_else(|| invalid(signer, &format!("not signed by the registered key {keyid}")))?;
    match entry.method.as_deref() {
        Some(method) if method == key_object.scheme => {}
        other => {
            return Err(invalid(
                signer,
                &format!(
                    "signature method {:?} does not match the registered key's scheme {:?}",
                    other.map(shorten),
                    key_object.scheme
                ),
            ))
        }
    }
    Ok(&entry.sig)
}

/// The error for a signature by the registered key that does not verify.
fn bad_signature(signer: &str, key: &PublicKey) -> Error {
    let keyid = key.to_key().keyid().unwrap_or_default();
    invalid(
        signer,
        &format!("signature by the registered key {keyid} does not verify"),
    )
}

fn invalid(signer: &str, reason: &str) -> Error {
    Error::InvalidManifest {
        signer: shorten(signer),
        reason: reason.to_owned(),
    }
}

/// Strings from the network go into error messages; keep them bounded.
fn shorten(s: &str) -> String {
    const SHOWN: usize = 100;
    match s.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
// A failed unwrap is a failed test.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const VIN: &str = "WVWZZZ1JZXW000001";

    fn now() -> Timestamp {
        Timestamp::parse("2030-06-01T12:00:00Z").unwrap()
    }

    fn image() -> InstalledImage {
        let mut hashes = BTreeMap::new();
        hashes.insert("sha256".to_owned(), "ab".repeat(32));
        InstalledImage::new("brake-fw-1.2.0.bin", 1024, hashes).with_release_counter(3)
    }

    /// The report form of the core's installed image is the wire format
    /// vehicles have always sent (`custom.releaseCounter` always present, 0
    /// included), and it decodes back to the same value.
    #[test]
    fn installed_image_of_keeps_the_wire_format() {
        for (rc, wire) in [
            (
                3,
                r#"{"filepath":"brake-fw-1.2.0.bin","fileinfo":{"length":1024,"hashes":{"sha256":"abab"},"custom":{"releaseCounter":3}}}"#,
            ),
            (
                0,
                r#"{"filepath":"brake-fw-1.2.0.bin","fileinfo":{"length":1024,"hashes":{"sha256":"abab"},"custom":{"releaseCounter":0}}}"#,
            ),
        ] {
            // As the ECU's own state file holds it.
            let core: crate::uptane::InstalledImage = serde_json::from_value(json!({
                "name": "brake-fw-1.2.0.bin",
                "length": 1024,
                "hashes": {"sha256": "abab"},
                "release_counter": rc,
            }))
            .unwrap();
            let reported = InstalledImage::of(&core);
            assert_eq!(serde_json::to_string(&reported).unwrap(), wire);
            let decoded: InstalledImage = serde_json::from_str(wire).unwrap();
            assert_eq!(decoded, reported);
            assert_eq!(decoded.release_counter(), Some(rc));
        }
    }

    struct Vehicle {
        primary: SigningKey,
        ecus: Vec<(String, SigningKey)>,
    }

    impl Vehicle {
        fn new(ecu_keys: Vec<SigningKey>) -> Self {
            Vehicle {
                primary: SigningKey::generate_p256(),
                ecus: ecu_keys
                    .into_iter()
                    .enumerate()
                    .map(|(i, k)| (format!("ECU-{i}"), k))
                    .collect(),
            }
        }

        fn key_of(&self, serial: &str) -> Option<PublicKey> {
            self.ecus
                .iter()
                .find(|(s, _)| s == serial)
                .map(|(_, k)| k.verifying_key())
        }

        fn report(&self, i: usize, counter: u64) -> EcuVersionReport {
            EcuVersionReport::new(&self.ecus[i].0, format!("hw-{i}"), now(), counter)
                .with_installed_image(image())
                .with_nonce(random_nonce())
        }

        fn manifest(&self) -> VehicleManifest {
            let mut m = VehicleManifest::new(VIN, &self.ecus[0].0, 10);
            for (i, (_, key)) in self.ecus.iter().enumerate() {
                m.add_report(sign_ecu_report(&self.report(i, 100 + i as u64), key).unwrap())
                    .unwrap();
            }
            m
        }

        fn sign(&self, m: &VehicleManifest) -> Vec<u8> {
            serde_json::to_vec(&sign_manifest(m, &self.primary).unwrap()).unwrap()
        }

        fn verify(&self, bytes: &[u8]) -> Result<VerifiedManifest> {
            verify_manifest(bytes, &self.primary.verifying_key(), |s| self.key_of(s))
        }
    }

    fn p256_vehicle() -> Vehicle {
        Vehicle::new(vec![
            SigningKey::generate_p256(),
            SigningKey::generate_p256(),
        ])
    }

    /// (signer, reason) of an InvalidManifest error.
    fn invalid_from(r: Result<VerifiedManifest>) -> (String, String) {
        match r {
            Err(Error::InvalidManifest { signer, reason }) => (signer, reason),
            other => panic!("expected InvalidManifest, got {other:?}"),
        }
    }

    #[test]
    fn round_trip() {
        let v = p256_vehicle();
        let m = v.manifest().with_installation_report(InstallationReport {
            correlation_id: Some("campaign-7".into()),
            result: InstallationResult::new(true, "OK", "all ECUs updated"),
            unrecognized: Map::new(),
        });
        let bytes = v.sign(&m);
        let verified = v.verify(&bytes).unwrap();
        assert_eq!(verified.manifest().value(), &m);
        assert_eq!(verified.manifest().raw(), &bytes[..]);
        assert_eq!(verified.vin(), VIN);
        assert_eq!(verified.reports().len(), 2);
        let r = verified.report("ECU-1").unwrap();
        assert_eq!(r.ecu_serial, "ECU-1");
        assert_eq!(r.hardware_id, "hw-1");
        assert_eq!(r.report_counter, 101);
        assert_eq!(r.latest_verified_at().unwrap(), now());
        assert_eq!(
            r.installed_image.as_ref().unwrap().release_counter(),
            Some(3)
        );
        assert_eq!(r.nonce.as_ref().unwrap().len(), 2 * NONCE_LEN);
        assert!(r.attacks().is_empty());
    }

    /// Insert `text` after the first `anchor` (duplicate keys cannot be built
    /// through `serde_json::Value`).
    fn inject(bytes: &[u8], anchor: &str, text: &str) -> Vec<u8> {
        let s = std::str::from_utf8(bytes).unwrap();
        let at = s.find(anchor).unwrap() + anchor.len();
        format!("{}{text}{}", &s[..at], &s[at..]).into_bytes()
    }

    /// A parser differential at every level the backend verifies: the
    /// manifest envelope, its `signed`, an ECU report inside it, and a report
    /// on its own. The signatures are valid for the last value of each
    /// duplicated key; the document is refused anyway.
    #[test]
    fn duplicate_keys_are_refused_at_every_level() {
        let v = p256_vehicle();
        let bytes = v.sign(&v.manifest());
        v.verify(&bytes).unwrap();
        for (anchor, text) in [
            ("{", r#""signatures":[],"#),
            (r#""signed":{"#, r#""vin":"OTHER-VIN","#),
            (r#""ecu_version_reports":{"#, r#""ECU-1":{},"#),
            (r#""ecu_serial":"ECU-1","#, r#""report_counter":999999,"#),
        ] {
            let forged = inject(&bytes, anchor, text);
            let (_, reason) = invalid_from(v.verify(&forged));
            assert!(
                reason.contains("duplicate object key"),
                "{anchor}: {reason}"
            );
        }
        let key = SigningKey::generate_p256();
        let report = serde_json::to_vec(
            &sign_ecu_report(&EcuVersionReport::new("ECU-1", "hw", now(), 1), &key).unwrap(),
        )
        .unwrap();
        verify_ecu_report(&report, &key.verifying_key(), "ECU-1").unwrap();
        let forged = inject(&report, r#""signed":{"#, r#""hardware_id":"other","#);
        assert!(matches!(
            verify_ecu_report(&forged, &key.verifying_key(), "ECU-1"),
            Err(Error::InvalidManifest { reason, .. }) if reason.contains("duplicate object key")
        ));
    }

    #[test]
    fn signatures_cover_canonical_json_not_bytes() {
        let v = p256_vehicle();
        let envelope = sign_manifest(&v.manifest(), &v.primary).unwrap();
        // Pretty-printed and with keys in another order, it is the same document.
        let pretty = serde_json::to_vec_pretty(&envelope).unwrap();
        v.verify(&pretty).unwrap();
        let canonical = to_canonical(&envelope).unwrap();
        v.verify(&canonical).unwrap();
    }

    #[test]
    fn wire_shape() {
        let key = SigningKey::generate_p256();
        let report = EcuVersionReport::new("ECU-1", "hw", now(), 1);
        let env = sign_ecu_report(&report, &key).unwrap();
        let sig = &env["signatures"][0];
        assert_eq!(sig["keyid"], key.keyid());
        assert_eq!(sig["method"], "ecdsa-sha2-nistp256");
        assert!(hex::decode(sig["sig"].as_str().unwrap()).is_ok());
        assert_eq!(
            env["signed"],
            json!({
                "ecu_serial": "ECU-1", "hardware_id": "hw", "installed_image": null,
                "attacks_detected": "", "latest_verified_time": "2030-06-01T12:00:00Z",
                "report_counter": 1
            })
        );
        let env = sign_ecu_report(&report, &SigningKey::generate_ed25519()).unwrap();
        assert_eq!(env["signatures"][0]["method"], "ed25519");
    }

    #[test]
    fn tampered_manifest_field_is_refused() {
        let v = p256_vehicle();
        let mut env = sign_manifest(&v.manifest(), &v.primary).unwrap();
        env["signed"]["report_counter"] = json!(11);
        let (signer, reason) = invalid_from(v.verify(&serde_json::to_vec(&env).unwrap()));
        assert_eq!(signer, VIN);
        assert!(reason.contains("does not verify"), "{reason}");
    }

    #[test]
    fn tampered_report_is_refused_even_when_the_primary_re_signs() {
        // A compromised Primary edits a Secondary's report and signs the
        // manifest again: the Secondary's signature still gives it away.
        let v = p256_vehicle();
        let mut m = v.manifest();
        m.ecu_version_reports.get_mut("ECU-1").unwrap()["signed"]["installed_image"]["filepath"] =
            json!("evil.bin");
        let (signer, reason) = invalid_from(v.verify(&v.sign(&m)));
        assert_eq!(signer, "ECU-1");
        assert!(reason.contains("does not verify"), "{reason}");
    }

    #[test]
    fn wrong_keys_are_refused() {
        let v = p256_vehicle();
        let m = v.manifest();
        // Manifest signed by a key that is not the Primary's.
        let stranger = SigningKey::generate_p256();
        let bytes = serde_json::to_vec(&sign_manifest(&m, &stranger).unwrap()).unwrap();
        let (signer, reason) = invalid_from(v.verify(&bytes));
        assert_eq!(signer, VIN);
        assert!(
            reason.contains("not signed by the registered key"),
            "{reason}"
        );
        // ECU-1's report checked against ECU-0's key.
        let bytes = v.sign(&m);
        let r = verify_manifest(&bytes, &v.primary.verifying_key(), |_| v.key_of("ECU-0"));
        let (signer, reason) = invalid_from(r);
        assert_eq!(signer, "ECU-1");
        assert!(
            reason.contains("not signed by the registered key"),
            "{reason}"
        );
        // A signature entry that claims the registered key id but was made by
        // another key.
        let mut env = sign_ecu_report(&v.report(1, 5), &stranger).unwrap();
        env["signatures"][0]["keyid"] = json!(v.ecus[1].1.keyid());
        let r = verify_ecu_report_value(&env, &v.key_of("ECU-1").unwrap(), "ECU-1");
        assert!(
            matches!(r, Err(Error::InvalidManifest { ref reason, .. }) if reason.contains("does not verify")),
            "{r:?}"
        );
    }

    #[test]
    fn reports_swapped_between_ecus_are_refused() {
        let v = p256_vehicle();
        let mut m = v.manifest();
        let a = m.ecu_version_reports.remove("ECU-0").unwrap();
        let b = m.ecu_version_reports.remove("ECU-1").unwrap();
        m.ecu_version_reports.insert("ECU-0".into(), b);
        m.ecu_version_reports.insert("ECU-1".into(), a);
        let (signer, reason) = invalid_from(v.verify(&v.sign(&m)));
        assert_eq!(signer, "ECU-0");
        assert!(reason.contains("report is for ECU \"ECU-1\""), "{reason}");
    }

    #[test]
    fn report_naming_another_ecu_is_refused_even_with_a_valid_signature() {
        // ECU-1 signs, with its own key, a report that claims to be ECU-0's, and
        // it is filed under ECU-1: the signature is fine, the serial is not.
        let v = p256_vehicle();
        let mut m = v.manifest();
        let forged = sign_ecu_report(&v.report(0, 7), &v.ecus[1].1).unwrap();
        m.ecu_version_reports.insert("ECU-1".into(), forged);
        let (signer, reason) = invalid_from(v.verify(&v.sign(&m)));
        assert_eq!(signer, "ECU-1");
        assert!(reason.contains("report is for ECU \"ECU-0\""), "{reason}");
    }

    #[test]
    fn report_from_unregistered_ecu_is_refused() {
        let v = p256_vehicle();
        let mut m = v.manifest();
        let rogue = SigningKey::generate_p256();
        let report = EcuVersionReport::new("ROGUE-9", "hw", now(), 1);
        m.add_report(sign_ecu_report(&report, &rogue).unwrap())
            .unwrap();
        let (signer, reason) = invalid_from(v.verify(&v.sign(&m)));
        assert_eq!(signer, "ROGUE-9");
        assert!(reason.contains("not registered"), "{reason}");
    }

    #[test]
    fn counter_replay_is_refused() {
        check_counter(None, 0).unwrap();
        check_counter(Some(5), 6).unwrap();
        assert_eq!(
            check_counter(Some(5), 5),
            Err(Error::Rollback {
                role: "report_counter".into(),
                trusted: 5,
                offered: 5
            })
        );
        assert!(check_counter(Some(5), 4).is_err());
        assert_eq!(
            check_counter(Some(5), 5).unwrap_err().attack(),
            Some(Attack::Rollback)
        );

        let v = p256_vehicle();
        let verified = v.verify(&v.sign(&v.manifest())).unwrap();
        verified.check_counters(None, |_| None).unwrap();
        verified
            .check_counters(Some(9), |s| (s == "ECU-1").then_some(100))
            .unwrap();
        match verified.check_counters(Some(10), |_| None) {
            Err(Error::Rollback {
                role,
                trusted: 10,
                offered: 10,
            }) => {
                assert!(role.contains(VIN), "{role}")
            }
            other => panic!("{other:?}"),
        }
        match verified.check_counters(Some(9), |s| (s == "ECU-1").then_some(101)) {
            Err(Error::Rollback {
                role,
                trusted: 101,
                offered: 101,
            }) => {
                assert!(role.contains("ECU-1"), "{role}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_preserved() {
        let v = p256_vehicle();
        let mut report = v.report(0, 1);
        report
            .unrecognized
            .insert("x-vendor".into(), json!({"odometer_km": 12345}));
        let image = report.installed_image.as_mut().unwrap();
        image.unrecognized.insert("x-slot".into(), json!("B"));
        image
            .fileinfo
            .custom
            .as_mut()
            .unwrap()
            .unrecognized
            .insert("hardwareIds".into(), json!(["hw-0"]));
        let mut m = VehicleManifest::new(VIN, "ECU-0", 1);
        m.unrecognized.insert("x-fleet".into(), json!("eu-west"));
        m.add_report(sign_ecu_report(&report, &v.ecus[0].1).unwrap())
            .unwrap();
        let verified = v.verify(&v.sign(&m)).unwrap();
        assert_eq!(
            verified.manifest().unrecognized["x-fleet"],
            json!("eu-west")
        );
        let got = verified.report("ECU-0").unwrap();
        assert_eq!(got.value(), &report);
        // And they survive a serialise/parse round trip of the typed value.
        let again: EcuVersionReport =
            serde_json::from_value(serde_json::to_value(got.value()).unwrap()).unwrap();
        assert_eq!(again, report);
    }

    #[test]
    fn ed25519_keys_work() {
        let mut v = Vehicle::new(vec![
            SigningKey::generate_ed25519(),
            SigningKey::generate_p256(),
        ]);
        v.primary = SigningKey::generate_ed25519();
        let verified = v.verify(&v.sign(&v.manifest())).unwrap();
        assert_eq!(verified.reports().len(), 2);
        // An Ed25519 report verified on its own, from bytes.
        let env = sign_ecu_report(&v.report(0, 3), &v.ecus[0].1).unwrap();
        let bytes = serde_json::to_vec(&env).unwrap();
        let r = verify_ecu_report(&bytes, &v.key_of("ECU-0").unwrap(), "ECU-0").unwrap();
        assert_eq!(r.report_counter, 3);
        assert_eq!(r.raw(), &bytes[..]);
    }

    #[test]
    fn method_must_match_the_registered_key() {
        let key = SigningKey::generate_p256();
        let mut env = sign_ecu_report(&EcuVersionReport::new("E", "hw", now(), 1), &key).unwrap();
        env["signatures"][0]["method"] = json!("ed25519");
        let r = verify_ecu_report_value(&env, &key.verifying_key(), "E");
        assert!(
            matches!(r, Err(Error::InvalidManifest { ref reason, .. }) if reason.contains("method"))
        );
        env["signatures"][0]
            .as_object_mut()
            .unwrap()
            .remove("method");
        assert!(verify_ecu_report_value(&env, &key.verifying_key(), "E").is_err());
    }

    #[test]
    fn duplicate_signatures_are_refused() {
        let key = SigningKey::generate_p256();
        let mut env = sign_ecu_report(&EcuVersionReport::new("E", "hw", now(), 1), &key).unwrap();
        let sig = env["signatures"][0].clone();
        env["signatures"].as_array_mut().unwrap().push(sig);
        let r = verify_ecu_report_value(&env, &key.verifying_key(), "E");
        assert!(
            matches!(r, Err(Error::InvalidManifest { ref reason, .. }) if reason.contains("more than one"))
        );
    }

    #[test]
    fn signed_but_malformed_reports_are_refused() {
        let key = SigningKey::generate_p256();
        let mut report = EcuVersionReport::new("E", "hw", now(), 1);
        report.latest_verified_time = "yesterday".into();
        let env = sign_ecu_report(&report, &key).unwrap();
        let r = verify_ecu_report_value(&env, &key.verifying_key(), "E");
        assert!(
            matches!(r, Err(Error::InvalidManifest { ref reason, .. }) if reason.contains("latest_verified_time"))
        );
        let report = EcuVersionReport::new("E", "hw", now(), 1).with_nonce("not hex");
        let env = sign_ecu_report(&report, &key).unwrap();
        assert!(verify_ecu_report_value(&env, &key.verifying_key(), "E").is_err());
        // A signed value that lacks required fields.
        let env = sign_envelope(json!({"ecu_serial": "E"}), &key).unwrap();
        let r = verify_ecu_report_value(&env, &key.verifying_key(), "E");
        assert!(
            matches!(r, Err(Error::InvalidManifest { ref reason, .. }) if reason.contains("malformed"))
        );
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let key = SigningKey::generate_p256().verifying_key();
        for bad in [
            &b""[..],
            b"\xff",
            b"[]",
            b"{}",
            b"{\"signed\": 1, \"signatures\": []}",
            b"{\"signed\": {}, \"signatures\": {}}",
            b"{\"signed\": {\"vin\": \"V\"}, \"signatures\": []}",
            b"{\"signed\": {\"vin\": 1.5}, \"signatures\": []}",
        ] {
            assert!(verify_manifest(bad, &key, |_| None).is_err());
            assert!(verify_ecu_report(bad, &key, "E").is_err());
        }
    }

    #[test]
    fn attacks_are_named_once_in_order() {
        let s = attacks_string(&[Attack::Freeze, Attack::Rollback, Attack::Freeze]);
        assert_eq!(s, "freeze,rollback");
        assert_eq!(attacks_string(&[]), "");
        let r = EcuVersionReport::new("E", "hw", now(), 1)
            .with_attacks(&[Attack::MixAndMatch, Attack::EndlessData]);
        assert_eq!(r.attacks(), ["mix-and-match", "endless-data"]);
    }

    #[test]
    fn add_report_refuses_duplicates_and_envelopes_without_serial() {
        let key = SigningKey::generate_p256();
        let env = sign_ecu_report(&EcuVersionReport::new("E", "hw", now(), 1), &key).unwrap();
        let mut m = VehicleManifest::new(VIN, "E", 1);
        m.add_report(env.clone()).unwrap();
        assert!(m.add_report(env).is_err());
        assert!(m.add_report(json!({"signed": {}})).is_err());
    }
}
