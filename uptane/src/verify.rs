//! Signature verification over the bytes that were signed, and the typed proof
//! [`Verified`] that only this module can construct.
//!
//! The flow for every piece of metadata is: parse the envelope to a JSON value,
//! canonicalise the raw `signed` value, check signatures against the delegating
//! role's keys and threshold, and only then build the typed struct. The original
//! bytes travel with the proof so that callers persist exactly what was served.
//!
//! # The proof cannot be forged
//!
//! A [`Verified<T>`] is made in exactly three places, all in this module:
//! [`Envelope::verify_as`] (TUF/Uptane metadata, threshold of a role's keys),
//! [`verified_by_key`] (manifests and ECU version reports, one registered key),
//! and [`Verified::derive`], the one way to make a verified value *from* verified
//! inputs: the Uptane match (`uptane::full_verification` and friends) derives
//! the `Verified<UpdatePlan>` from the verified Director targets and the Image
//! repository entries it looked up. Its fields are private, it has no
//! `DerefMut` and no setter, and an [`Envelope`]'s fields are private too, so the
//! value a proof holds is the one built from the very `signed` value whose
//! canonical bytes were verified. Outside this crate none of this compiles:
//!
//! ```compile_fail
//! # use secureev_uptane::Verified;
//! // No public constructor.
//! let v: Verified<u64> = Verified::new(1, std::sync::Arc::from(&b""[..]));
//! ```
//!
//! ```compile_fail
//! # use secureev_uptane::Verified;
//! // No struct literal: the fields are private.
//! let v = Verified { value: 1u64, raw: std::sync::Arc::from(&b""[..]) };
//! ```
//!
//! ```compile_fail
//! # use secureev_uptane::{metadata::Targets, Verified};
//! // No way to change what a proof holds (Deref, no DerefMut).
//! fn tamper(mut v: Verified<Targets>) { v.targets.clear(); }
//! ```
//!
//! ```compile_fail
//! # use secureev_uptane::verify::Envelope;
//! // An envelope cannot be edited between parsing and verification.
//! fn swap(mut env: Envelope, other: serde_json::Value) { env.signed = other; }
//! ```
//!
//! ```compile_fail
//! # use secureev_uptane::uptane::UpdatePlan;
//! // The plan that decides what is installed has private fields.
//! let plan = UpdatePlan { targets: Vec::new(), director_targets_version: 1 };
//! ```
//!
//! Reading is fine, which is what the examples above are compared with:
//!
//! ```
//! # use secureev_uptane::{metadata::Targets, verify::Envelope, Verified};
//! fn read(v: &Verified<Targets>, env: &Envelope) -> (usize, bool) {
//!     (v.targets.len() + v.raw().len(), env.signed().is_object())
//! }
//! ```

use crate::canonical::to_canonical;
use crate::error::{Checked, Error, Result};
use crate::keys::{Key, PublicKey};
use crate::metadata::{RoleType, Signature};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};
use std::collections::{BTreeMap, HashSet};
use std::ops::Deref;
use std::sync::Arc;

/// A value whose signatures have been checked. Only this module can make one
/// (see the module docs); downstream code takes it by type.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    value: T,
    raw: Arc<[u8]>,
}

impl<T> Verified<T> {
    /// Private: every proof is made by a signature check in this module, or
    /// derived from one by [`Self::derive`].
    fn new(value: T, raw: Arc<[u8]>) -> Self {
        Verified { value, raw }
    }

    /// The one way to make a verified value from verified inputs: `f` sees only
    /// the verified `source` (and whatever else verified state it captures) and
    /// returns the derived decision, which keeps `source`'s raw bytes. Used by
    /// the Uptane match, which derives `Verified<UpdatePlan>` (and the
    /// Secondary's `Verified<Assignment>`) from the verified Director targets;
    /// crate-internal so that nothing outside the core can mint a decision.
    pub(crate) fn derive<S>(source: &Verified<S>, f: impl FnOnce(&S) -> Result<T>) -> Result<Self> {
        let value = f(&source.value)?;
        Ok(Verified::new(value, source.raw.clone()))
    }

    /// The exact bytes that were received and verified; persist these.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The verified value.
    pub fn value(&self) -> &T {
        &self.value
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Check one signature by one registered `key` over the canonical form of
/// `signed`, then build the typed value from that same `signed` value. For
/// documents signed by a single known key (vehicle manifests, ECU version
/// reports); `bad` is the error when the signature does not verify, `build`
/// parses and checks the typed value. `raw` is what the caller persists.
pub(crate) fn verified_by_key<T>(
    signed: &Value,
    raw: Arc<[u8]>,
    key: &PublicKey,
    sig_hex: &str,
    bad: impl FnOnce() -> Error,
    build: impl FnOnce(&Value) -> Result<T>,
) -> Result<Verified<T>> {
    let canonical = to_canonical(signed)?;
    if !key.verify_hex(&canonical, sig_hex) {
        return Err(bad());
    }
    Ok(Verified::new(build(signed)?, raw))
}

/// A parsed but unverified signed envelope. Its fields are private and set
/// once, by [`Envelope::parse`]: the canonical bytes are computed from the
/// `signed` value at parse time, and [`Envelope::verify_as`] builds the typed
/// value from that same `signed` value after checking signatures over those
/// bytes.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The raw `signed` value, exactly as received.
    signed: Value,
    /// Signatures.
    signatures: Vec<Signature>,
    /// Canonical bytes of `signed`: what the signatures cover.
    canonical: Vec<u8>,
    /// The original bytes.
    raw: Arc<[u8]>,
}

impl Envelope {
    /// Parse `{ "signed": ..., "signatures": [...] }`. `role` names the document
    /// in errors.
    pub fn parse(role: &str, bytes: &[u8]) -> Result<Self> {
        let malformed = |reason: String| Error::Malformed {
            role: role.to_owned(),
            reason,
        };
        // One parse for every level (envelope, signed, targets, delegations):
        // a duplicate object key anywhere is malformed (see [`crate::json`]).
        let mut value: Value =
            crate::json::parse(bytes).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| malformed("top level is not an object".into()))?;
        let signed = obj
            .remove("signed")
            .ok_or_else(|| malformed("no \"signed\" field".into()))?;
        if !signed.is_object() {
            return Err(malformed("\"signed\" is not an object".into()));
        }
        let signatures: Vec<Signature> = serde_json::from_value(
            obj.remove("signatures")
                .ok_or_else(|| malformed("no \"signatures\" field".into()))?,
        )
        .map_err(|e| malformed(format!("bad signatures: {e}")))?;
        let canonical = to_canonical(&signed)?;
        Ok(Envelope {
            signed,
            signatures,
            canonical,
            raw: Arc::from(bytes),
        })
    }

    /// The raw `signed` value, exactly as received (not verified).
    pub fn signed(&self) -> &Value {
        &self.signed
    }

    /// The signatures (not verified).
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// The canonical bytes of `signed`: what the signatures cover.
    pub fn canonical(&self) -> &[u8] {
        &self.canonical
    }

    /// The bytes the envelope was parsed from.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The `_type` of the signed value.
    pub fn type_(&self) -> Option<&str> {
        self.signed.get("_type").and_then(Value::as_str)
    }

    /// Check `_type`, then signatures against `keys`/`keyids`/`threshold`, then
    /// build the typed value from the `signed` value whose canonical bytes the
    /// signatures were checked over (both fixed at parse time).
    pub fn verify_as<T: RoleType>(
        &self,
        role: &str,
        keys: &BTreeMap<String, Key>,
        keyids: &[String],
        threshold: u32,
    ) -> Result<Verified<T>> {
        check_type::<T>(self)?;
        verify_signatures(
            role,
            &self.canonical,
            &self.signatures,
            keys,
            keyids,
            threshold,
        )?;
        let value = self.to_typed::<T>(role)?;
        Ok(Verified::new(value, self.raw.clone()))
    }

    /// Build the typed value without verification. Crate-internal so that
    /// unverified values never escape as typed metadata.
    pub(crate) fn to_typed<T: RoleType>(&self, role: &str) -> Result<T> {
        // From `&Value`: no copy of the tree, and the very value that was
        // canonicalised.
        let value: T = T::deserialize(&self.signed).map_err(|e| Error::Malformed {
            role: role.to_owned(),
            reason: e.to_string(),
        })?;
        if let Some(sv) = &value.common().spec_version {
            // TUF 1.0 §5: only the major version must match.
            if sv.split('.').next() != Some("1") {
                return Err(Error::UnsupportedSpecVersion {
                    role: role.to_owned(),
                    spec_version: sv.clone(),
                });
            }
        }
        value.common().expires_at()?;
        Ok(value)
    }
}

fn check_type<T: RoleType>(env: &Envelope) -> Result<()> {
    match env.type_() {
        Some(t) if t == T::TYPE => Ok(()),
        other => Err(Error::WrongType {
            expected: T::TYPE.to_owned(),
            got: other.unwrap_or("<none>").to_owned(),
        }),
    }
}

/// Count valid signatures over `msg` from distinct authorised keys and compare
/// with `threshold`.
///
/// TUF 1.0 §5.3.4 / Uptane 2.1 §5.4.4.3: metadata is trusted when at least
/// `threshold` distinct keys authorised for the role signed it. A signature by an
/// unknown key, of an unknown type, empty or malformed simply does not count. A
/// key id that signs twice is rejected outright (as aktualizr does), so that a
/// single key can never be counted twice.
pub fn verify_signatures(
    role: &str,
    msg: &[u8],
    signatures: &[Signature],
    keys: &BTreeMap<String, Key>,
    keyids: &[String],
    threshold: u32,
) -> Result<()> {
    if threshold == 0 {
        return Err(Error::InvalidRole {
            role: role.to_owned(),
            reason: "threshold is 0".into(),
        });
    }
    let mut seen_keyids = HashSet::new();
    for s in signatures {
        if !seen_keyids.insert(s.keyid.as_str()) {
            return Err(Error::DuplicateSignature {
                role: role.to_owned(),
                keyid: s.keyid.clone(),
            });
        }
    }
    let authorised: HashSet<&str> = keyids.iter().map(String::as_str).collect();
    let mut counted = HashSet::new();
    for s in signatures {
        if !authorised.contains(s.keyid.as_str()) {
            continue;
        }
        let Some(key) = keys.get(&s.keyid) else {
            continue;
        };
        let Ok(public) = key.to_public() else {
            continue;
        };
        if public.verify_hex(msg, &s.sig) {
            counted.insert(public.fingerprint());
        }
    }
    if counted.len() < threshold as usize {
        return Err(Error::ThresholdNotMet {
            role: role.to_owned(),
            valid: counted.len(),
            threshold,
        });
    }
    Ok(())
}

/// Hash algorithms we implement.
pub const HASH_ALGORITHMS: &[&str] = &["sha256", "sha512"];

/// Compute a named hash of `data`, hex-encoded.
pub fn hash_hex(algorithm: &str, data: &[u8]) -> Option<String> {
    match algorithm {
        "sha256" => Some(hex::encode(Sha256::digest(data))),
        "sha512" => Some(hex::encode(Sha512::digest(data))),
        _ => None,
    }
}

/// Check `data` against an optional length and a set of hashes. Every listed
/// algorithm must be known and match; an unknown one is an error. `what`
/// says whether `data` is a role's metadata file or a target, and is carried
/// by the mismatch errors.
pub fn check_length_and_hashes(
    what: &Checked,
    data: &[u8],
    length: Option<u64>,
    hashes: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    if let Some(expected) = length {
        if data.len() as u64 != expected {
            return Err(Error::LengthMismatch {
                what: what.clone(),
                expected,
                got: data.len() as u64,
            });
        }
    }
    if let Some(hashes) = hashes {
        for (alg, expected) in hashes {
            let got = hash_hex(alg, data).ok_or_else(|| Error::UnsupportedHash {
                what: what.to_string(),
                algorithm: alg.clone(),
            })?;
            if !got.eq_ignore_ascii_case(expected) {
                return Err(Error::HashMismatch {
                    what: what.clone(),
                    algorithm: alg.clone(),
                    expected: expected.clone(),
                    got,
                });
            }
        }
    }
    Ok(())
}

/// Incremental hashing of a target image against its signed length and
/// hashes, for downloads that are checked while they arrive. Its mismatch
/// errors name the stream as a [`Checked::Target`].
#[derive(Clone)]
pub struct StreamVerifier {
    what: String,
    length: u64,
    expected: BTreeMap<String, String>,
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
    seen: u64,
}

impl StreamVerifier {
    /// Start verifying a stream that must be exactly `length` bytes with `hashes`.
    /// Fails at once for unknown algorithms or an empty hash set.
    pub fn new(what: &str, length: u64, hashes: &BTreeMap<String, String>) -> Result<Self> {
        if hashes.is_empty() {
            return Err(Error::NoHashes {
                what: what.to_owned(),
            });
        }
        let mut v = StreamVerifier {
            what: what.to_owned(),
            length,
            expected: hashes.clone(),
            sha256: None,
            sha512: None,
            seen: 0,
        };
        for alg in hashes.keys() {
            match alg.as_str() {
                "sha256" => v.sha256 = Some(Sha256::new()),
                "sha512" => v.sha512 = Some(Sha512::new()),
                _ => {
                    return Err(Error::UnsupportedHash {
                        what: what.to_owned(),
                        algorithm: alg.clone(),
                    })
                }
            }
        }
        Ok(v)
    }

    /// Feed the next bytes. Fails as soon as more than `length` bytes arrive
    /// (endless-data attack).
    pub fn update(&mut self, chunk: &[u8]) -> Result<()> {
        self.seen += chunk.len() as u64;
        if self.seen > self.length {
            return Err(Error::EndlessData {
                what: self.what.clone(),
                limit: self.length,
            });
        }
        if let Some(h) = &mut self.sha256 {
            h.update(chunk);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(chunk);
        }
        Ok(())
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Check length and hashes at the end of the stream.
    pub fn finish(self) -> Result<()> {
        if self.seen != self.length {
            return Err(Error::LengthMismatch {
                what: Checked::Target(self.what),
                expected: self.length,
                got: self.seen,
            });
        }
        let computed: [(&str, Option<String>); 2] = [
            ("sha256", self.sha256.map(|h| hex::encode(h.finalize()))),
            ("sha512", self.sha512.map(|h| hex::encode(h.finalize()))),
        ];
        for (alg, got) in computed {
            if let (Some(got), Some(expected)) = (got, self.expected.get(alg)) {
                if !got.eq_ignore_ascii_case(expected) {
                    return Err(Error::HashMismatch {
                        what: Checked::Target(self.what),
                        algorithm: alg.to_owned(),
                        expected: expected.clone(),
                        got,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use serde_json::Map;

    fn sig(k: &SigningKey, msg: &[u8]) -> Signature {
        Signature {
            keyid: k.keyid().to_owned(),
            sig: k.sign_hex(msg),
            unrecognized: Map::new(),
        }
    }

    fn keyset(ks: &[&SigningKey]) -> (BTreeMap<String, Key>, Vec<String>) {
        let keys = ks
            .iter()
            .map(|k| (k.keyid().to_owned(), k.public_key().clone()))
            .collect();
        (keys, ks.iter().map(|k| k.keyid().to_owned()).collect())
    }

    #[test]
    fn threshold_counts_distinct_keys() {
        let (a, b) = (SigningKey::generate_p256(), SigningKey::generate_ed25519());
        let (mut keys, mut ids) = keyset(&[&a, &b]);
        let sigs = vec![sig(&a, b"m"), sig(&b, b"m")];
        verify_signatures("root", b"m", &sigs, &keys, &ids, 2).unwrap();
        // The same key under a second key id counts once.
        keys.insert("alias".into(), a.public_key().clone());
        ids.push("alias".into());
        let sigs = vec![
            sig(&a, b"m"),
            Signature {
                keyid: "alias".into(),
                ..sig(&a, b"m")
            },
        ];
        assert_eq!(
            verify_signatures("root", b"m", &sigs, &keys, &ids, 2),
            Err(Error::ThresholdNotMet {
                role: "root".into(),
                valid: 1,
                threshold: 2
            })
        );
    }

    #[test]
    fn duplicate_keyids_are_rejected() {
        let a = SigningKey::generate_p256();
        let (keys, ids) = keyset(&[&a]);
        let sigs = vec![sig(&a, b"m"), sig(&a, b"m")];
        assert!(matches!(
            verify_signatures("targets", b"m", &sigs, &keys, &ids, 1),
            Err(Error::DuplicateSignature { .. })
        ));
    }

    #[test]
    fn bad_and_unknown_signatures_do_not_count() {
        let a = SigningKey::generate_p256();
        let stranger = SigningKey::generate_p256();
        let (keys, ids) = keyset(&[&a]);
        let mut bad = sig(&a, b"other");
        assert!(verify_signatures("t", b"m", &[bad.clone()], &keys, &ids, 1).is_err());
        bad.sig = String::new();
        assert!(verify_signatures("t", b"m", &[bad], &keys, &ids, 1).is_err());
        assert!(verify_signatures("t", b"m", &[sig(&stranger, b"m")], &keys, &ids, 1).is_err());
        assert!(verify_signatures("t", b"m", &[sig(&a, b"m")], &keys, &ids, 0).is_err());
    }

    #[test]
    fn hashes_and_lengths() {
        let mut h = BTreeMap::new();
        h.insert("sha256".to_string(), hash_hex("sha256", b"abc").unwrap());
        let x = Checked::Target("x".into());
        check_length_and_hashes(&x, b"abc", Some(3), Some(&h)).unwrap();
        assert!(matches!(
            check_length_and_hashes(&x, b"abd", Some(3), Some(&h)),
            Err(Error::HashMismatch { what, .. }) if what == x
        ));
        // The kind travels with the error: a delegated role's file is
        // metadata even with a `/` in its name.
        let role = Checked::Metadata("vendors/bms".into());
        assert!(matches!(
            check_length_and_hashes(&role, b"abc", Some(4), Some(&h)),
            Err(Error::LengthMismatch { what, .. }) if what == role
        ));
        assert_eq!(role.to_string(), "vendors/bms.json");
        h.insert("md5".into(), "00".into());
        assert!(matches!(
            check_length_and_hashes(&x, b"abc", None, Some(&h)),
            Err(Error::UnsupportedHash { .. })
        ));
    }

    #[test]
    fn stream_verifier_catches_endless_data_and_truncation() {
        let mut h = BTreeMap::new();
        h.insert("sha512".to_string(), hash_hex("sha512", b"abcdef").unwrap());
        let mut v = StreamVerifier::new("img", 6, &h).unwrap();
        v.update(b"abc").unwrap();
        v.update(b"def").unwrap();
        v.clone().finish().unwrap();
        assert!(matches!(v.update(b"g"), Err(Error::EndlessData { .. })));
        let mut v = StreamVerifier::new("img", 6, &h).unwrap();
        v.update(b"abc").unwrap();
        assert!(matches!(
            v.finish(),
            Err(Error::LengthMismatch { what: Checked::Target(t), .. }) if t == "img"
        ));
        assert!(StreamVerifier::new("img", 6, &BTreeMap::new()).is_err());
    }

    #[test]
    fn envelope_rejects_garbage() {
        for bad in [
            &b"[]"[..],
            b"{}",
            b"{\"signed\": 1, \"signatures\": []}",
            b"\xff",
            b"{\"signed\": {}}",
        ] {
            assert!(Envelope::parse("root", bad).is_err());
        }
        assert!(matches!(
            Envelope::parse("root", br#"{"signed": {"a": 1.5}, "signatures": []}"#),
            Err(Error::Canonical(_))
        ));
    }
}
