//! Keys and signatures: ECDSA P-256 (our default), Ed25519 (accepted for interop).
//!
//! Metadata key objects follow TUF 1.0 and securesystemslib:
//! - `{"keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256", "keyval": {"public": PEM}}`
//!   (legacy `keytype: "ecdsa-sha2-nistp256"` accepted). The public key is a PEM
//!   SubjectPublicKeyInfo (a hex SEC1 point is accepted too); the signature is the
//!   hex of the ASN.1 DER ECDSA signature over SHA-256 of the message.
//! - `{"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": hex}}`,
//!   signature hex of the 64-byte signature.
//!
//! Verification never fails hard on a bad key or signature: an unknown key type,
//! an empty or malformed signature simply does not count towards a threshold.

use crate::canonical::to_canonical_from;
use crate::error::{Error, Result};
use p256::ecdsa::signature::Signer;
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Scheme name for ECDSA P-256 with SHA-256.
pub const SCHEME_ECDSA_P256: &str = "ecdsa-sha2-nistp256";
/// Key type name for ECDSA keys.
pub const KEYTYPE_ECDSA: &str = "ecdsa";
/// Scheme and key type name for Ed25519.
pub const ED25519: &str = "ed25519";

/// A public key as it appears in root or delegation metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// `ecdsa`, `ecdsa-sha2-nistp256` or `ed25519`.
    pub keytype: String,
    /// Signature scheme.
    pub scheme: String,
    /// Key material.
    pub keyval: KeyVal,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// The `keyval` object of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// Public key: PEM for ECDSA, hex for Ed25519.
    pub public: String,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

impl Key {
    /// The key id we assign: hex SHA-256 of the canonical JSON of the key object
    /// (TUF 1.0 §4.2). Received metadata may use other key ids; we do not
    /// require this form when verifying.
    pub fn keyid(&self) -> Result<String> {
        Ok(hex::encode(Sha256::digest(to_canonical_from(self)?)))
    }

    /// Parse the key material for verification.
    pub fn to_public(&self) -> Result<PublicKey> {
        let bad = |reason: &str| Error::InvalidKey {
            keyid: self.keyid().unwrap_or_default(),
            reason: reason.to_owned(),
        };
        match (self.keytype.as_str(), self.scheme.as_str()) {
            (KEYTYPE_ECDSA | SCHEME_ECDSA_P256, SCHEME_ECDSA_P256) => {
                let public = self.keyval.public.trim();
                let vk = if public.starts_with("-----BEGIN") {
                    p256::ecdsa::VerifyingKey::from_public_key_pem(public)
                        .map_err(|e| bad(&format!("bad P-256 PEM: {e}")))?
                } else {
                    let bytes = hex::decode(public).map_err(|_| bad("not PEM or hex"))?;
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&bytes)
                        .map_err(|_| bad("bad SEC1 P-256 point"))?
                };
                Ok(PublicKey::P256(vk))
            }
            (ED25519, ED25519) => {
                let bytes = hex::decode(self.keyval.public.trim())
                    .map_err(|_| bad("ed25519 key is not hex"))?;
                let arr: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| bad("ed25519 key is not 32 bytes"))?;
                let vk = ed25519_dalek::VerifyingKey::from_bytes(&arr)
                    .map_err(|_| bad("ed25519 key is not a valid point"))?;
                Ok(PublicKey::Ed25519(vk))
            }
            (kt, sc) => Err(bad(&format!("unsupported keytype/scheme {kt}/{sc}"))),
        }
    }
}

/// A parsed public key, ready to verify signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicKey {
    /// ECDSA over NIST P-256 with SHA-256.
    P256(p256::ecdsa::VerifyingKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// Verify a hex-encoded signature over `msg`. Any malformation is `false`.
    pub fn verify_hex(&self, msg: &[u8], sig_hex: &str) -> bool {
        match hex::decode(sig_hex) {
            Ok(sig) if !sig.is_empty() => self.verify(msg, &sig),
            _ => false,
        }
    }

    /// Verify a raw signature over `msg` (DER or fixed-size for P-256; 64 bytes for
    /// Ed25519). Any malformation is `false`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicKey::P256(vk) => verify_p256(vk, msg, sig),
            PublicKey::Ed25519(vk) => match ed25519_dalek::Signature::from_slice(sig) {
                Ok(s) => vk.verify_strict(msg, &s).is_ok(),
                Err(_) => false,
            },
        }
    }

    /// Bytes identifying the key material, so that two key ids naming the same
    /// key count once towards a threshold.
    pub fn fingerprint(&self) -> Vec<u8> {
        match self {
            PublicKey::P256(vk) => {
                let mut v = b"p256:".to_vec();
                v.extend_from_slice(vk.to_encoded_point(true).as_bytes());
                v
            }
            PublicKey::Ed25519(vk) => {
                let mut v = b"ed25519:".to_vec();
                v.extend_from_slice(vk.as_bytes());
                v
            }
        }
    }

    /// The metadata key object for this key (PEM SPKI for P-256).
    pub fn to_key(&self) -> Key {
        match self {
            PublicKey::P256(vk) => Key {
                keytype: KEYTYPE_ECDSA.into(),
                scheme: SCHEME_ECDSA_P256.into(),
                keyval: KeyVal {
                    // Encoding a valid key to PEM cannot fail.
                    public: vk.to_public_key_pem(LineEnding::LF).unwrap_or_default(),
                    unrecognized: Map::new(),
                },
                unrecognized: Map::new(),
            },
            PublicKey::Ed25519(vk) => Key {
                keytype: ED25519.into(),
                scheme: ED25519.into(),
                keyval: KeyVal {
                    public: hex::encode(vk.as_bytes()),
                    unrecognized: Map::new(),
                },
                unrecognized: Map::new(),
            },
        }
    }
}

/// ECDSA P-256 / SHA-256 verification through `ring` (already linked for TLS):
/// about 4.5× faster than the pure-Rust `p256` verifier, and signature checks
/// are most of a check-in's cost on the backend. `p256` keeps key parsing,
/// encoding and signing.
///
/// The accepted encodings are those the `p256` verifier accepted before:
/// - ASN.1 DER (`ECDSA-Sig-Value`, strict DER), else the fixed 64-byte `r || s`
///   form. A blob is tried as fixed only when it is not DER, as
///   `Signature::from_der(..).or_else(from_slice)` did.
/// - Both low-S and high-S: OpenSSL-based signers (securesystemslib) emit
///   either, and `ring` does not enforce low-S. (We emit low-S, see
///   [`SigningKey::sign_raw`].)
/// - `r` and `s` must be in `[1, n-1]`; the key is the validated point `p256`
///   parsed, passed to `ring` uncompressed.
fn verify_p256(vk: &p256::ecdsa::VerifyingKey, msg: &[u8], sig: &[u8]) -> bool {
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED};
    let point = vk.to_encoded_point(false);
    let alg = if is_der_sequence(sig) {
        &ECDSA_P256_SHA256_ASN1
    } else if sig.len() == 64 {
        &ECDSA_P256_SHA256_FIXED
    } else {
        return false;
    };
    UnparsedPublicKey::new(alg, point.as_bytes())
        .verify(msg, sig)
        .is_ok()
}

/// Whether `sig` is a DER `SEQUENCE { INTEGER, INTEGER }` as `p256` parses
/// `ECDSA-Sig-Value` (short-form lengths suffice for P-256; the integers
/// themselves are checked by `ring`, minimal encoding included). Only used to
/// choose between the DER and the fixed form.
fn is_der_sequence(sig: &[u8]) -> bool {
    p256::ecdsa::Signature::from_der(sig).is_ok()
}

/// A private signing key, for repositories, manifests and tests.
#[derive(Clone)]
pub struct SigningKey {
    inner: SigningInner,
    key: Key,
    keyid: String,
}

#[derive(Clone)]
enum SigningInner {
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn from_inner(inner: SigningInner) -> Self {
        let public = match &inner {
            SigningInner::P256(sk) => PublicKey::P256(*sk.verifying_key()),
            SigningInner::Ed25519(sk) => PublicKey::Ed25519(sk.verifying_key()),
        };
        let key = public.to_key();
        // Canonicalising a key built from strings cannot fail.
        let keyid = key.keyid().unwrap_or_default();
        SigningKey { inner, key, keyid }
    }

    /// A new random ECDSA P-256 key.
    pub fn generate_p256() -> Self {
        Self::from_inner(SigningInner::P256(p256::ecdsa::SigningKey::random(
            &mut rand_core::OsRng,
        )))
    }

    /// A new random Ed25519 key.
    pub fn generate_ed25519() -> Self {
        Self::from_inner(SigningInner::Ed25519(ed25519_dalek::SigningKey::generate(
            &mut rand_core::OsRng,
        )))
    }

    /// A P-256 key from a 32-byte scalar (deterministic tests and fixtures).
    pub fn p256_from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        let sk = p256::ecdsa::SigningKey::from_slice(bytes).map_err(|e| Error::InvalidKey {
            keyid: "p256 scalar".into(),
            reason: e.to_string(),
        })?;
        Ok(Self::from_inner(SigningInner::P256(sk)))
    }

    /// Load a PKCS#8 PEM private key (P-256 or Ed25519).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self> {
        if let Ok(sk) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(Self::from_inner(SigningInner::P256(sk)));
        }
        if let Ok(sk) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(Self::from_inner(SigningInner::Ed25519(sk)));
        }
        Err(Error::InvalidKey {
            keyid: "private key".into(),
            reason: "not a PKCS#8 PEM P-256 or Ed25519 private key".into(),
        })
    }

    /// The private key as PKCS#8 PEM. Store it with mode 0600.
    pub fn to_pkcs8_pem(&self) -> zeroize::Zeroizing<String> {
        let pem = match &self.inner {
            SigningInner::P256(sk) => sk.to_pkcs8_pem(LineEnding::LF),
            SigningInner::Ed25519(sk) => sk.to_pkcs8_pem(LineEnding::LF),
        };
        // Encoding a valid in-memory key cannot fail.
        pem.unwrap_or_else(|_| zeroize::Zeroizing::new(String::new()))
    }

    /// The public key object for metadata.
    pub fn public_key(&self) -> &Key {
        &self.key
    }

    /// The parsed public key.
    pub fn verifying_key(&self) -> PublicKey {
        match &self.inner {
            SigningInner::P256(sk) => PublicKey::P256(*sk.verifying_key()),
            SigningInner::Ed25519(sk) => PublicKey::Ed25519(sk.verifying_key()),
        }
    }

    /// Our key id (hex SHA-256 of the canonical key object).
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The scheme name used in signatures.
    pub fn scheme(&self) -> &str {
        &self.key.scheme
    }

    /// Sign `msg`: DER ECDSA (SHA-256) or Ed25519, raw bytes.
    pub fn sign_raw(&self, msg: &[u8]) -> Vec<u8> {
        match &self.inner {
            SigningInner::P256(sk) => {
                let sig: p256::ecdsa::Signature = sk.sign(msg);
                // Emit low-S signatures: some verifiers (e.g. libsecp-style
                // strict ones) refuse the high-S twin.
                let sig = sig.normalize_s().unwrap_or(sig);
                sig.to_der().as_bytes().to_vec()
            }
            SigningInner::Ed25519(sk) => sk.sign(msg).to_bytes().to_vec(),
        }
    }

    /// Sign `msg` and return the hex signature TUF metadata carries.
    pub fn sign_hex(&self, msg: &[u8]) -> String {
        hex::encode(self.sign_raw(msg))
    }

    /// The P-256 signing key, when this is one (for ECDH-free uses such as DIDs).
    pub fn as_p256(&self) -> Option<&p256::ecdsa::SigningKey> {
        match &self.inner {
            SigningInner::P256(sk) => Some(sk),
            SigningInner::Ed25519(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p256_sign_verify_and_reject_tampering() {
        let sk = SigningKey::generate_p256();
        let pk = sk.public_key().to_public().unwrap();
        let sig = sk.sign_hex(b"hello");
        assert!(pk.verify_hex(b"hello", &sig));
        assert!(!pk.verify_hex(b"hellp", &sig));
        assert!(!pk.verify_hex(b"hello", ""));
        assert!(!pk.verify_hex(b"hello", "zz"));
        assert!(!pk.verify_hex(b"hello", "3006020101020101"));
    }

    /// The verifier before `ring`: `p256`'s, DER else fixed, high-S normalised.
    fn reference_verify(vk: &p256::ecdsa::VerifyingKey, msg: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match p256::ecdsa::Signature::from_der(sig)
            .or_else(|_| p256::ecdsa::Signature::from_slice(sig))
        {
            Ok(s) => vk.verify(msg, &s.normalize_s().unwrap_or(s)).is_ok(),
            Err(_) => false,
        }
    }

    fn high_s(sig: &p256::ecdsa::Signature) -> p256::ecdsa::Signature {
        let (r, s) = sig.split_scalars();
        p256::ecdsa::Signature::from_scalars(r, -*s).unwrap()
    }

    // The switch to `ring` keeps every encoding the `p256` verifier took:
    // DER and fixed, low-S and high-S, and refuses what it refused.
    #[test]
    fn ring_verifier_accepts_der_fixed_low_and_high_s() {
        let sk = SigningKey::generate_p256();
        let PublicKey::P256(vk) = sk.verifying_key() else {
            panic!()
        };
        let pk = sk.verifying_key();
        let msg = b"metadata";
        let der = sk.sign_raw(msg);
        let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
        let high = high_s(&sig);
        assert!(sig.normalize_s().is_none(), "we emit low-S");
        assert!(high.normalize_s().is_some());
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (der.clone(), true),
            (sig.to_bytes().to_vec(), true),
            (high.to_der().as_bytes().to_vec(), true),
            (high.to_bytes().to_vec(), true),
            ([der.as_slice(), &[0]].concat(), false),
            (der[..der.len() - 1].to_vec(), false),
            (sig.to_bytes()[..63].to_vec(), false),
            (vec![0; 64], false),
            (vec![0xff; 64], false),
            (vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01], false),
            (Vec::new(), false),
        ];
        for (i, (bytes, ok)) in cases.iter().enumerate() {
            assert_eq!(pk.verify(msg, bytes), *ok, "case {i}");
            assert_eq!(
                reference_verify(&vk, msg, bytes),
                *ok,
                "reference, case {i}"
            );
            assert!(!pk.verify(b"other", bytes), "case {i} on another message");
        }
    }

    proptest::proptest! {
        // Differential: any single-byte change to a DER or fixed signature is
        // judged the same by `ring` as by the `p256` verifier.
        #[test]
        fn ring_and_p256_verifiers_agree(
            msg in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            pos in 0usize..80,
            xor in proptest::prelude::any::<u8>(),
            fixed in proptest::prelude::any::<bool>(),
        ) {
            let sk = SigningKey::p256_from_bytes(&[7; 32]).unwrap();
            let PublicKey::P256(vk) = sk.verifying_key() else { panic!() };
            let der = sk.sign_raw(&msg);
            let mut sig = if fixed {
                p256::ecdsa::Signature::from_der(&der).unwrap().to_bytes().to_vec()
            } else {
                der
            };
            let n = sig.len();
            sig[pos % n] ^= xor;
            proptest::prop_assert_eq!(
                sk.verifying_key().verify(&msg, &sig),
                reference_verify(&vk, &msg, &sig)
            );
        }
    }

    #[test]
    fn ed25519_sign_verify() {
        let sk = SigningKey::generate_ed25519();
        let pk = sk.public_key().to_public().unwrap();
        assert!(pk.verify_hex(b"m", &sk.sign_hex(b"m")));
        assert!(!pk.verify_hex(b"n", &sk.sign_hex(b"m")));
    }

    #[test]
    fn pkcs8_round_trip_keeps_keyid() {
        for sk in [SigningKey::generate_p256(), SigningKey::generate_ed25519()] {
            let back = SigningKey::from_pkcs8_pem(&sk.to_pkcs8_pem()).unwrap();
            assert_eq!(back.keyid(), sk.keyid());
        }
    }

    #[test]
    fn legacy_keytype_and_hex_point_accepted() {
        let sk = SigningKey::generate_p256();
        let PublicKey::P256(vk) = sk.verifying_key() else {
            panic!()
        };
        let mut key = sk.public_key().clone();
        key.keytype = SCHEME_ECDSA_P256.into();
        key.keyval.public = hex::encode(vk.to_encoded_point(false).as_bytes());
        let pk = key.to_public().unwrap();
        assert!(pk.verify_hex(b"x", &sk.sign_hex(b"x")));
        assert_eq!(pk.fingerprint(), sk.verifying_key().fingerprint());
    }

    #[test]
    fn unknown_key_types_are_errors_not_panics() {
        let mut key = SigningKey::generate_p256().public_key().clone();
        key.keytype = "rsa".into();
        assert!(matches!(key.to_public(), Err(Error::InvalidKey { .. })));
        let mut key = SigningKey::generate_ed25519().public_key().clone();
        key.keyval.public = "abcd".into();
        assert!(key.to_public().is_err());
    }

    #[test]
    fn keyid_is_sha256_of_canonical_key() {
        let sk = SigningKey::generate_ed25519();
        let expected = hex::encode(Sha256::digest(
            crate::canonical::to_canonical(&serde_json::to_value(sk.public_key()).unwrap())
                .unwrap(),
        ));
        assert_eq!(sk.keyid(), expected);
    }
}
