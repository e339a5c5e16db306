//! Keys and signatures: ECDSA P-256 (our default, and all we sign with);
//! Ed25519 and RSA-PSS verified for interop.
//!
//! Metadata key objects follow TUF 1.0 and securesystemslib:
//! - `{"keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256", "keyval": {"public": PEM}}`
//!   (legacy `keytype: "ecdsa-sha2-nistp256"` accepted). The public key is a PEM
//!   SubjectPublicKeyInfo (a hex SEC1 point is accepted too); the signature is the
//!   hex of the ASN.1 DER ECDSA signature over SHA-256 of the message.
//! - `{"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": hex}}`,
//!   signature hex of the 64-byte signature.
//! - `{"keytype": "rsa", "scheme": "rsassa-pss-sha256", "keyval": {"public": PEM}}`
//!   (aktualizr's default key type; its older scheme name `rsassa-pss` is
//!   accepted too): a PEM SubjectPublicKeyInfo of an RSA key of
//!   [`RSA_MIN_BITS`]..=[`RSA_MAX_BITS`] bits; the signature is the hex of an
//!   RSASSA-PSS signature (SHA-256, MGF1-SHA-256, 32-byte salt) over the
//!   message. Verification only, through `ring` (no RSA code of our own); a key
//!   outside the size range does not parse, so its signatures never count.
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
/// Key type name for RSA keys.
pub const KEYTYPE_RSA: &str = "rsa";
/// Scheme name for RSASSA-PSS with SHA-256 (TUF, securesystemslib).
pub const SCHEME_RSA_PSS_SHA256: &str = "rsassa-pss-sha256";
/// aktualizr's older name for the same scheme.
pub const SCHEME_RSA_PSS_LEGACY: &str = "rsassa-pss";
/// Smallest RSA modulus accepted, in bits (below it, factoring is within
/// reach; NIST SP 800-57 retired 1024-bit RSA).
pub const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (aktualizr's largest key size; bounds
/// the cost of one verification).
pub const RSA_MAX_BITS: usize = 4096;
/// OID rsaEncryption (PKCS #1), the SubjectPublicKeyInfo algorithm of an RSA key.
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";

/// A public key as it appears in root or delegation metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// `ecdsa`, `ecdsa-sha2-nistp256`, `ed25519` or `rsa`.
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
    /// Public key: PEM for ECDSA and RSA, hex for Ed25519.
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
            (KEYTYPE_RSA, SCHEME_RSA_PSS_SHA256 | SCHEME_RSA_PSS_LEGACY) => {
                RsaPssKey::from_pem(&self.keyval.public)
                    .map(PublicKey::RsaPss)
                    .map_err(|reason| bad(&reason))
            }
            (kt, sc) => Err(bad(&format!("unsupported keytype/scheme {kt}/{sc}"))),
        }
    }
}

/// An RSA public key for RSASSA-PSS-SHA256 verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPssKey {
    /// Modulus, big-endian, no leading zeros.
    n: Vec<u8>,
    /// Public exponent, big-endian, no leading zeros.
    e: Vec<u8>,
    /// The PKCS #1 `RSAPublicKey` DER (the SubjectPublicKeyInfo's key bits).
    pkcs1: Vec<u8>,
    /// The PEM it was read from, for [`PublicKey::to_key`].
    pem: String,
}

impl RsaPssKey {
    /// Parse a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`) of an
    /// `rsaEncryption` key and check its size.
    pub fn from_pem(pem: &str) -> std::result::Result<Self, String> {
        use p256::pkcs8::der::asn1::UintRef;
        use p256::pkcs8::der::{pem as der_pem, Decode, Reader, SliceReader};
        use p256::pkcs8::SubjectPublicKeyInfoRef;
        let (label, der) = der_pem::decode_vec(pem.trim().as_bytes())
            .map_err(|e| format!("RSA key is not PEM: {e}"))?;
        if label != "PUBLIC KEY" {
            return Err(format!(
                "RSA key PEM label is {label:?}, not \"PUBLIC KEY\""
            ));
        }
        let spki = SubjectPublicKeyInfoRef::from_der(&der)
            .map_err(|e| format!("bad RSA SubjectPublicKeyInfo: {e}"))?;
        if spki.algorithm.oid.to_string() != OID_RSA_ENCRYPTION {
            return Err(format!(
                "key algorithm {} is not rsaEncryption",
                spki.algorithm.oid
            ));
        }
        let pkcs1 = spki
            .subject_public_key
            .as_bytes()
            .ok_or("RSA public key bit string has unused bits")?;
        let parse = || -> p256::pkcs8::der::Result<(Vec<u8>, Vec<u8>)> {
            let mut r = SliceReader::new(pkcs1)?;
            let ne = r.sequence(|seq| {
                let n = UintRef::decode(seq)?;
                let e = UintRef::decode(seq)?;
                Ok((n.as_bytes().to_vec(), e.as_bytes().to_vec()))
            })?;
            r.finish(ne)
        };
        let (n, e) = parse().map_err(|e| format!("bad RSAPublicKey: {e}"))?;
        let bits = match n.first() {
            Some(first) => (n.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
            None => 0,
        };
        if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            return Err(format!(
                "RSA key of {bits} bits is outside {RSA_MIN_BITS}..={RSA_MAX_BITS}"
            ));
        }
        Ok(RsaPssKey {
            n,
            e,
            pkcs1: pkcs1.to_vec(),
            pem: pem.to_owned(),
        })
    }

    /// The PKCS #1 `RSAPublicKey` DER.
    pub fn pkcs1_der(&self) -> &[u8] {
        &self.pkcs1
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.n.first().map_or(0, |f| {
            (self.n.len() - 1) * 8 + (8 - f.leading_zeros() as usize)
        })
    }

    /// RSASSA-PSS / SHA-256 / MGF1-SHA-256 / 32-byte salt, through `ring`
    /// (which also checks the exponent and the signature length).
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        use ring::signature::{RsaPublicKeyComponents, RSA_PSS_2048_8192_SHA256};
        RsaPublicKeyComponents {
            n: &self.n,
            e: &self.e,
        }
        .verify(&RSA_PSS_2048_8192_SHA256, msg, sig)
        .is_ok()
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
    /// RSA, RSASSA-PSS with SHA-256 (verification only).
    RsaPss(RsaPssKey),
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
            PublicKey::RsaPss(k) => k.verify(msg, sig),
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
            PublicKey::RsaPss(k) => {
                let mut v = b"rsa:".to_vec();
                v.extend_from_slice(&(k.n.len() as u32).to_be_bytes());
                v.extend_from_slice(&k.n);
                v.extend_from_slice(&k.e);
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
            PublicKey::RsaPss(k) => Key {
                keytype: KEYTYPE_RSA.into(),
                scheme: SCHEME_RSA_PSS_SHA256.into(),
                keyval: KeyVal {
                    public: k.pem.clone(),
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

    /// Made with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`
    /// and `openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt
    /// rsa_pss_saltlen:32 -sign`, over [`RSA_MSG`].
    const RSA_2048_PUB: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAuLd8ZE2bKzdsL1M4hDQc\nTV1lkQNL/ooxgOrKI9NlKxJFbm65axeEzZ/hNIDBCO5O0KWaW77ZGnaiMbDLfhVU\nq1Du6Opw8xdnTvdb84wFGV6I6dARJnKUDsW0vVArV+B5gnq5AIRXk5chdN45bB5s\nWvGU0cKGYpSQAs1zpR7WzcxSmhaeMaSCLzh7IgCABpcu09iopNY7sHN2OR9rVDhI\nFtIrz3ErOmwPWLMo1fXbXkAPYN8jrnk3/tyQBWx8FbDMxD1V1qsFsOhiXGGYb7x8\nVlulGw1N1YlTaeAEN+bk3JMrQWfKk4Gt7YoKuvNC8dZfwnUCg2QJG416NGxEinsr\nhQIDAQAB\n-----END PUBLIC KEY-----\n";
    const RSA_2048_SIG: &str = "b525bc8babdf66c04496cb54e8610a1ecd578324a940d99ea35feedb2268cc77673fbf6907f5b2d672414373df955e4f18fd0aaa3098ae48e11a4e1c866bffc6abc8f0f380bc51a700cfb7c094fbe1a3a03470c716a44f022bc67fa6cebf3f6e2a981a05e7550b1dae694a7d4024009f61ccd69c6e877423740ed5bbd1a8b1f13e3e20b944dcb158a0165d40971fe1b7e0aa69d9295d486a91452892d143a8df8d4aca91e34baebd67e60695c79522211dd2d8c3c404591744fd811f350b61e9cf3b242dce43b90a0d462da41c49e8a3b2b2f1d97c1eed3c57e9cf48183d8407ec4f4c78faff617cf209a1b67777b68b1bfe8c1379d1262ce42d9ffe736a1257";
    const RSA_MSG: &[u8] = b"secureev rsa-pss test";
    /// A 1024-bit RSA key (openssl genpkey, rsa_keygen_bits:1024).
    const RSA_1024_PUB: &str = "-----BEGIN PUBLIC KEY-----\nMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC2h82j8FVRc/4laFyj53wFfAsa\nkgIP78+tZb65vWZe/9xySZY7//ZLju2ZhVgsyuNP8WmOsFSMKa1ntiBgSfDJe04s\n4a94J2TexrleuHFDl3zgJ3QkWH8atnVxP03e5+JlXsJnRPaeFk846T8V3UnGHR2C\n51T9wocbZhdj2oQwfwIDAQAB\n-----END PUBLIC KEY-----\n";

    fn rsa_key(pem: &str, scheme: &str) -> Key {
        Key {
            keytype: KEYTYPE_RSA.into(),
            scheme: scheme.into(),
            keyval: KeyVal {
                public: pem.into(),
                unrecognized: Map::new(),
            },
            unrecognized: Map::new(),
        }
    }

    #[test]
    fn rsa_pss_verifies_and_rejects_tampering() {
        for scheme in [SCHEME_RSA_PSS_SHA256, SCHEME_RSA_PSS_LEGACY] {
            let pk = rsa_key(RSA_2048_PUB, scheme).to_public().unwrap();
            assert!(matches!(&pk, PublicKey::RsaPss(k) if k.bits() == 2048));
            assert!(pk.verify_hex(RSA_MSG, RSA_2048_SIG));
            assert!(!pk.verify_hex(b"secureev rsa-pss tesT", RSA_2048_SIG));
            let mut bad = RSA_2048_SIG.to_owned();
            bad.replace_range(10..11, if &bad[10..11] == "0" { "1" } else { "0" });
            assert!(!pk.verify_hex(RSA_MSG, &bad));
            assert!(!pk.verify_hex(RSA_MSG, ""));
            // The key object round-trips (same PEM, canonical scheme name).
            assert_eq!(pk.to_key().keyval.public, RSA_2048_PUB);
        }
    }

    #[test]
    fn rsa_outside_2048_to_4096_bits_and_other_schemes_are_refused() {
        let e = rsa_key(RSA_1024_PUB, SCHEME_RSA_PSS_SHA256)
            .to_public()
            .unwrap_err();
        assert!(e.to_string().contains("1024 bits"), "{e}");
        // PKCS #1 v1.5 is not PSS.
        assert!(rsa_key(RSA_2048_PUB, "rsa-pkcs1v15-sha256")
            .to_public()
            .is_err());
        // An EC key under keytype rsa.
        let ec = SigningKey::generate_p256()
            .public_key()
            .keyval
            .public
            .clone();
        assert!(rsa_key(&ec, SCHEME_RSA_PSS_SHA256).to_public().is_err());
        assert!(rsa_key("not pem", SCHEME_RSA_PSS_SHA256)
            .to_public()
            .is_err());
    }

    #[test]
    fn unknown_key_types_are_errors_not_panics() {
        let mut key = SigningKey::generate_p256().public_key().clone();
        key.keytype = "dsa".into();
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
