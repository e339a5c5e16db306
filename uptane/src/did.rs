//! `did:key` identifiers for ECU keys (W3C CCG did:key method, v0.7).
//!
//! An ECU's P-256 public key is written as
//!
//! ```text
//! did:key:z<base58btc( varint(0x1200) || SEC1 compressed point )>
//!          │            └─ 0x80 0x24    └─ 33 bytes, 0x02/0x03 || X
//!          └─ multibase prefix for base58btc
//! ```
//!
//! which always starts with `did:key:zDn`. Ed25519 keys (multicodec `0xed`,
//! `did:key:z6Mk...`) are accepted on resolution for interop.
//!
//! Only the canonical form is accepted: the compressed 33-byte point (the spec
//! requires it, and a second, uncompressed spelling would give one key two
//! DIDs), a minimal varint, and at most the DID itself as a fragment. Nothing
//! here does I/O: resolving a `did:key` is pure decoding.
//!
//! ```
//! use secureev_uptane::{did, SigningKey};
//! let key = SigningKey::generate_p256().verifying_key();
//! let id = did::to_did(&key);
//! assert!(id.starts_with("did:key:zDn"));
//! assert_eq!(did::resolve(&id).unwrap(), key);
//! ```

use crate::error::{Error, Result};
use crate::keys::{Key, PublicKey};
use serde_json::{json, Value};

/// The scheme and method prefix of every `did:key`.
pub const DID_KEY_PREFIX: &str = "did:key:";
/// Multibase prefix of base58btc, the only encoding did:key allows.
pub const MULTIBASE_BASE58BTC: char = 'z';
/// Multicodec code of `p256-pub` (a compressed P-256 public key).
pub const MULTICODEC_P256_PUB: u64 = 0x1200;
/// Multicodec code of `ed25519-pub`.
pub const MULTICODEC_ED25519_PUB: u64 = 0xed;

/// Length of a SEC1 compressed P-256 point.
const P256_COMPRESSED_LEN: usize = 33;
/// Length of a SEC1 uncompressed P-256 point.
const P256_UNCOMPRESSED_LEN: usize = 65;
/// Length of an Ed25519 public key.
const ED25519_LEN: usize = 32;
/// Longest method-specific id we decode. P-256 and Ed25519 ids are 48
/// characters; the cap keeps base58 decoding (quadratic in the length) cheap on
/// hostile input.
const MAX_ID_LEN: usize = 128;
/// multicodec `rsa-pub`.
const MULTICODEC_RSA_PUB: u64 = 0x1205;

/// The multiformats unsigned-varint spec caps a varint at 9 bytes.
const MAX_VARINT_LEN: usize = 9;

/// The `did:key` of a P-256 public key.
pub fn p256_to_did(key: &p256::ecdsa::VerifyingKey) -> String {
    to_did(&PublicKey::P256(*key))
}

/// The multibase `publicKeyMultibase` value of a key: `z` followed by the
/// base58btc of the multicodec-prefixed key bytes (the method-specific id of
/// its `did:key`).
pub fn to_multibase(key: &PublicKey) -> String {
    let mut bytes = Vec::with_capacity(2 + P256_COMPRESSED_LEN);
    match key {
        PublicKey::P256(vk) => {
            write_varint(MULTICODEC_P256_PUB, &mut bytes);
            bytes.extend_from_slice(vk.to_encoded_point(true).as_bytes());
        }
        PublicKey::Ed25519(vk) => {
            write_varint(MULTICODEC_ED25519_PUB, &mut bytes);
            bytes.extend_from_slice(vk.as_bytes());
        }
        PublicKey::RsaPss(k) => {
            // multicodec `rsa-pub`: the PKCS #1 RSAPublicKey DER. Only written
            // (for display); `did:key` parsing accepts P-256 and Ed25519 only.
            write_varint(MULTICODEC_RSA_PUB, &mut bytes);
            bytes.extend_from_slice(k.pkcs1_der());
        }
    }
    let mut out = String::with_capacity(1 + bytes.len() * 138 / 100 + 1);
    out.push(MULTIBASE_BASE58BTC);
    out.push_str(&bs58::encode(bytes).into_string());
    out
}

/// The `did:key` of a parsed public key (P-256 gives `did:key:zDn...`, Ed25519
/// `did:key:z6Mk...`).
pub fn to_did(key: &PublicKey) -> String {
    format!("{DID_KEY_PREFIX}{}", to_multibase(key))
}

/// The `did:key` of a metadata key object.
pub fn key_to_did(key: &Key) -> Result<String> {
    Ok(to_did(&key.to_public()?))
}

/// Resolve a `did:key` (or a DID URL `did:key:<id>#<id>` naming its only
/// verification method) to the public key it encodes.
pub fn resolve(did: &str) -> Result<PublicKey> {
    let id = method_specific_id(did)?;
    decode_multibase(did, id)
}

/// Decode a `publicKeyMultibase` value (`z...`) to a public key.
pub fn from_multibase(multibase: &str) -> Result<PublicKey> {
    decode_multibase(multibase, multibase)
}

/// A minimal DID document for a `did:key`, as the backend's registry serves it:
/// one `Multikey` verification method, referenced from `authentication` and
/// `assertionMethod`. The document is rebuilt from the decoded key, so it is
/// the same for a DID and any DID URL naming its key.
pub fn document(did: &str) -> Result<Value> {
    Ok(document_for(&resolve(did)?))
}

/// The minimal DID document of a key (see [`document`]).
pub fn document_for(key: &PublicKey) -> Value {
    let multibase = to_multibase(key);
    let did = format!("{DID_KEY_PREFIX}{multibase}");
    let vm_id = format!("{did}#{multibase}");
    json!({
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "verificationMethod": [{
            "id": vm_id,
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": multibase,
        }],
        "authentication": [vm_id],
        "assertionMethod": [vm_id],
    })
}

/// Split `did:key:<id>[#<id>]` and return `<id>`.
fn method_specific_id(did: &str) -> Result<&str> {
    // DID syntax: the scheme and method name are lowercase and compared exactly.
    let rest = did
        .strip_prefix(DID_KEY_PREFIX)
        .ok_or_else(|| invalid(did, "not a did:key DID (must start with \"did:key:\")"))?;
    let (id, fragment) = match rest.split_once('#') {
        Some((id, fragment)) => (id, Some(fragment)),
        None => (rest, None),
    };
    if id.contains(['?', '/', ':']) {
        return Err(invalid(
            did,
            "DID paths, queries and versioned did:key forms are not supported",
        ));
    }
    // did:key v0.7 §3.1.2: a did:key has exactly one verification method, whose
    // id is the DID with the method-specific id as fragment.
    if let Some(fragment) = fragment {
        if fragment != id {
            return Err(invalid(
                did,
                "the fragment must equal the method-specific id (the key's only verification method)",
            ));
        }
    }
    Ok(id)
}

fn decode_multibase(did: &str, id: &str) -> Result<PublicKey> {
    let mut chars = id.chars();
    let Some(prefix) = chars.next() else {
        return Err(invalid(did, "empty method-specific id"));
    };
    // did:key v0.7 §2: the multibase encoding is base58btc, prefix `z`.
    if prefix != MULTIBASE_BASE58BTC {
        return Err(invalid(
            did,
            &format!("multibase prefix {prefix:?} is not base58btc ('z')"),
        ));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid(
            did,
            &format!("method-specific id longer than {MAX_ID_LEN} characters"),
        ));
    }
    let bytes = bs58::decode(chars.as_str())
        .into_vec()
        .map_err(|e| invalid(did, &format!("bad base58btc: {e}")))?;
    let (codec, used) = read_varint(&bytes).map_err(|reason| invalid(did, reason))?;
    let key = &bytes[used..];
    match codec {
        MULTICODEC_P256_PUB => decode_p256(did, key),
        MULTICODEC_ED25519_PUB => decode_ed25519(did, key),
        other => Err(invalid(
            did,
            &format!(
                "unsupported multicodec 0x{other:x}{}; only p256-pub (0x1200) and ed25519-pub (0xed) are accepted",
                codec_name(other).map(|n| format!(" ({n})")).unwrap_or_default()
            ),
        )),
    }
}

fn decode_p256(did: &str, key: &[u8]) -> Result<PublicKey> {
    if key.len() == P256_UNCOMPRESSED_LEN && key[0] == 0x04 {
        return Err(invalid(
            did,
            "uncompressed P-256 point: did:key requires the 33-byte compressed form",
        ));
    }
    if key.len() != P256_COMPRESSED_LEN {
        return Err(invalid(
            did,
            &format!(
                "P-256 key is {} bytes, expected a {P256_COMPRESSED_LEN}-byte compressed point",
                key.len()
            ),
        ));
    }
    if key[0] != 0x02 && key[0] != 0x03 {
        return Err(invalid(
            did,
            &format!(
                "P-256 key tag 0x{:02x} is not a compressed point (0x02 or 0x03)",
                key[0]
            ),
        ));
    }
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(key)
        .map_err(|_| invalid(did, "P-256 point is not on the curve"))?;
    Ok(PublicKey::P256(vk))
}

fn decode_ed25519(did: &str, key: &[u8]) -> Result<PublicKey> {
    let arr: [u8; ED25519_LEN] = key.try_into().map_err(|_| {
        invalid(
            did,
            &format!("Ed25519 key is {} bytes, expected {ED25519_LEN}", key.len()),
        )
    })?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&arr)
        .map_err(|_| invalid(did, "not a valid Ed25519 point"))?;
    // A small-order key verifies forged signatures; verify_strict refuses it
    // anyway, but it has no business in a registry.
    if vk.is_weak() {
        return Err(invalid(did, "Ed25519 key has small order"));
    }
    Ok(PublicKey::Ed25519(vk))
}

/// Names of multicodec key codes we refuse, for a clearer error.
fn codec_name(code: u64) -> Option<&'static str> {
    Some(match code {
        0xe7 => "secp256k1-pub",
        0xec => "x25519-pub",
        0xeb => "bls12_381-g1-pub",
        0x1201 => "p384-pub",
        0x1202 => "p521-pub",
        0x1205 => "rsa-pub",
        _ => return None,
    })
}

/// Unsigned LEB128, as multiformats unsigned-varint.
fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Read a multiformats unsigned-varint: at most 9 bytes, minimally encoded.
/// Returns the value and the number of bytes used.
fn read_varint(bytes: &[u8]) -> std::result::Result<(u64, usize), &'static str> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(MAX_VARINT_LEN) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A trailing zero group means the same value fits in fewer bytes.
            if byte == 0 && i > 0 {
                return Err("multicodec varint is not minimally encoded");
            }
            return Ok((value, i + 1));
        }
    }
    if bytes.len() < MAX_VARINT_LEN {
        Err("truncated multicodec varint")
    } else {
        Err("multicodec varint longer than 9 bytes")
    }
}

fn invalid(did: &str, reason: &str) -> Error {
    // The DID comes from the outside: keep error messages bounded.
    const SHOWN: usize = 120;
    let shown = match did.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &did[..cut]),
        None => did.to_owned(),
    };
    Error::InvalidDid {
        did: shown,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
// A failed unwrap is a failed test.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use proptest::prelude::*;

    /// The P-256 vectors of the did:key specification
    /// (w3c-ccg/did-method-key, `test-vectors/nist-curves.json`; the same two
    /// DIDs are the examples of the spec's P-256 section): DID, public JWK `x`,
    /// `y` and private `d`, all base64url.
    const P256_VECTORS: &[(&str, &str, &str, &str)] = &[
        (
            "did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169",
            "fyNYMN0976ci7xqiSdag3buk-ZCwgXU4kz9XNkBlNUI",
            "hW2ojTNfH7Jbi8--CJUo3OCbH3y5n91g-IMA9MLMbTU",
            "YjRs6vNvw4sYrzVVY8ipkEpDAD9PFqw1sUnvPRMA-WI",
        ),
        (
            "did:key:zDnaerx9CtbPJ1q36T5Ln5wYt3MQYeGRG5ehnPAmxcf5mDZpv",
            "igrFmi0whuihKnj9R3Om1SoMph72wUGeFaBbzG2vzns",
            "efsX5b10x8yjyrj4ny3pGfLcY7Xby1KzgqOdqnsrJIM",
            "gPh-VvVS8MbvKQ9LSVVmfnxnKjHn4Tqj0bmbpehRlpc",
        ),
    ];

    /// Ed25519 vectors of the same repository (`test-vectors/ed25519-x25519.json`):
    /// seed (the private key), DID, `publicKeyBase58`.
    const ED25519_VECTORS: &[(&str, &str, &str)] = &[
        (
            "0000000000000000000000000000000000000000000000000000000000000000",
            "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
            "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS",
        ),
        (
            "0000000000000000000000000000000000000000000000000000000000000001",
            "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG",
            "6ASf5EcmmEHTgDJ4X4ZT5vT6iHVJBXPg5AN5YoTCpGWt",
        ),
    ];

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    fn did_from_bytes(bytes: &[u8]) -> String {
        format!("did:key:z{}", bs58::encode(bytes).into_string())
    }

    fn reason(r: Result<PublicKey>) -> String {
        match r {
            Err(Error::InvalidDid { reason, .. }) => reason,
            other => panic!("expected InvalidDid, got {other:?}"),
        }
    }

    #[test]
    fn spec_p256_vectors_encode_and_resolve() {
        for &(did, x, y, d) in P256_VECTORS {
            let mut sec1 = vec![0x04];
            sec1.extend(b64(x));
            sec1.extend(b64(y));
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).unwrap();
            assert_eq!(p256_to_did(&vk), did);
            assert_eq!(resolve(did).unwrap(), PublicKey::P256(vk));

            // The private key of the vector gives the same DID.
            let d: [u8; 32] = b64(d).try_into().unwrap();
            let sk = SigningKey::p256_from_bytes(&d).unwrap();
            assert_eq!(to_did(&sk.verifying_key()), did);
            assert_eq!(key_to_did(sk.public_key()).unwrap(), did);
        }
    }

    #[test]
    fn spec_ed25519_vectors_resolve() {
        for &(seed, did, base58) in ED25519_VECTORS {
            let seed: [u8; 32] = hex::decode(seed).unwrap().try_into().unwrap();
            let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
            let public = PublicKey::Ed25519(sk.verifying_key());
            assert_eq!(
                bs58::encode(sk.verifying_key().as_bytes()).into_string(),
                base58
            );
            assert_eq!(to_did(&public), did);
            assert_eq!(resolve(did).unwrap(), public);
        }
    }

    #[test]
    fn multicodec_prefix_is_0x8024() {
        let key = SigningKey::generate_p256().verifying_key();
        let id = to_multibase(&key);
        let bytes = bs58::decode(&id[1..]).into_vec().unwrap();
        assert_eq!(&bytes[..2], &[0x80, 0x24]);
        assert_eq!(bytes.len(), 35);
        assert!(id.starts_with("zDn"));
    }

    #[test]
    fn did_url_with_matching_fragment_resolves() {
        let did = P256_VECTORS[0].0;
        let id = &did[DID_KEY_PREFIX.len()..];
        let url = format!("{did}#{id}");
        assert_eq!(resolve(&url).unwrap(), resolve(did).unwrap());
        assert!(reason(resolve(&format!("{did}#key-1"))).contains("fragment"));
        assert!(reason(resolve(&format!("{did}#"))).contains("fragment"));
    }

    #[test]
    fn document_has_one_multikey_method() {
        let did = P256_VECTORS[1].0;
        let id = &did[DID_KEY_PREFIX.len()..];
        let vm = format!("{did}#{id}");
        let doc = document(did).unwrap();
        assert_eq!(doc["id"], did);
        assert_eq!(doc["verificationMethod"][0]["id"], vm.as_str());
        assert_eq!(doc["verificationMethod"][0]["type"], "Multikey");
        assert_eq!(doc["verificationMethod"][0]["controller"], did);
        assert_eq!(doc["verificationMethod"][0]["publicKeyMultibase"], id);
        assert_eq!(doc["verificationMethod"].as_array().unwrap().len(), 1);
        assert_eq!(doc["authentication"], json!([vm]));
        assert_eq!(doc["assertionMethod"], json!([vm]));
        // A DID URL naming the key gives the same document.
        assert_eq!(document(&vm).unwrap(), doc);
        // The multibase value resolves on its own too.
        assert_eq!(from_multibase(id).unwrap(), resolve(did).unwrap());
    }

    #[test]
    fn rejects_wrong_prefix() {
        let id = &P256_VECTORS[0].0[DID_KEY_PREFIX.len()..];
        for bad in [
            format!("did:web:{id}"),
            format!("DID:KEY:{id}"),
            format!("did:key{id}"),
            id.to_owned(),
            String::new(),
        ] {
            assert!(reason(resolve(&bad)).contains("not a did:key"), "{bad}");
        }
        assert!(reason(resolve(&format!("did:key:1.1:{id}"))).contains("not supported"));
        assert!(reason(resolve(&format!("did:key:{id}?service=x"))).contains("not supported"));
        assert!(reason(resolve("did:key:")).contains("empty"));
    }

    #[test]
    fn rejects_non_base58btc_multibase() {
        let key = SigningKey::generate_p256().verifying_key();
        let id = to_multibase(&key);
        // `f` is base16, `u` base64url, `m` base64.
        for prefix in ['f', 'u', 'm', 'Z'] {
            let bad = format!("did:key:{prefix}{}", &id[1..]);
            assert!(reason(resolve(&bad)).contains("not base58btc"), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_base58() {
        // 0, O, I and l are not in the bitcoin alphabet.
        for bad in [
            "did:key:zDn0erDaTF5B",
            "did:key:zDnaOr",
            "did:key:zIl",
            "did:key:zDna é",
        ] {
            assert!(reason(resolve(bad)).contains("base58"), "{bad}");
        }
        let long = format!("did:key:z{}", "2".repeat(MAX_ID_LEN));
        assert!(reason(resolve(&long)).contains("longer than"));
    }

    #[test]
    fn rejects_unknown_and_malformed_multicodecs() {
        let point = [2u8; 33];
        // secp256k1-pub 0xe7 → varint e7 01; p384-pub 0x1201 → 81 24.
        for (prefix, name) in [
            (&[0xe7, 0x01][..], "secp256k1-pub"),
            (&[0x81, 0x24], "p384-pub"),
        ] {
            let mut bytes = prefix.to_vec();
            bytes.extend_from_slice(&point);
            let r = reason(resolve(&did_from_bytes(&bytes)));
            assert!(
                r.contains("unsupported multicodec") && r.contains(name),
                "{r}"
            );
        }
        let mut bytes = vec![0x01];
        bytes.extend_from_slice(&point);
        assert!(reason(resolve(&did_from_bytes(&bytes))).contains("0x1"));
        // 0x1200 written in three bytes is the same code, but not minimal.
        let mut bytes = vec![0x80, 0xa4, 0x00];
        bytes.extend_from_slice(&point);
        assert!(reason(resolve(&did_from_bytes(&bytes))).contains("minimal"));
        assert!(reason(resolve(&did_from_bytes(&[0x80]))).contains("truncated"));
        assert!(reason(resolve(&did_from_bytes(&[0xff; 12]))).contains("longer than 9"));
    }

    #[test]
    fn rejects_truncated_and_overlong_keys() {
        let key = SigningKey::generate_p256().verifying_key();
        let PublicKey::P256(vk) = &key else {
            unreachable!()
        };
        let compressed = vk.to_encoded_point(true);
        let mut bytes = vec![0x80, 0x24];
        bytes.extend_from_slice(compressed.as_bytes());
        assert_eq!(resolve(&did_from_bytes(&bytes)).unwrap(), key);
        for len in [2, 3, 20, 34, 36] {
            let mut b = bytes.clone();
            b.resize(len, 0x11);
            let r = reason(resolve(&did_from_bytes(&b)));
            assert!(r.contains("expected a 33-byte"), "{len}: {r}");
        }
        let ed = SigningKey::generate_ed25519().verifying_key();
        let PublicKey::Ed25519(ed) = ed else {
            unreachable!()
        };
        let mut b = vec![0xed, 0x01];
        b.extend_from_slice(&ed.as_bytes()[..31]);
        assert!(reason(resolve(&did_from_bytes(&b))).contains("expected 32"));
    }

    #[test]
    fn rejects_uncompressed_points_and_tag_mismatch() {
        let key = SigningKey::generate_p256().verifying_key();
        let PublicKey::P256(vk) = &key else {
            unreachable!()
        };
        // The uncompressed encoding of a valid key: refused, one key one DID.
        let mut bytes = vec![0x80, 0x24];
        bytes.extend_from_slice(vk.to_encoded_point(false).as_bytes());
        assert!(reason(resolve(&did_from_bytes(&bytes))).contains("uncompressed"));
        // 33 bytes that claim to be uncompressed (tag 0x04), or 65 bytes tagged
        // compressed: the length does not fit the tag.
        let mut bytes = vec![0x80, 0x24, 0x04];
        bytes.extend_from_slice(&vk.to_encoded_point(true).as_bytes()[1..]);
        assert!(reason(resolve(&did_from_bytes(&bytes))).contains("tag 0x04"));
        let mut bytes = vec![0x80, 0x24, 0x02];
        bytes.extend_from_slice(&vk.to_encoded_point(false).as_bytes()[1..]);
        assert!(reason(resolve(&did_from_bytes(&bytes))).contains("expected a 33-byte"));
    }

    #[test]
    fn rejects_points_not_on_the_curve() {
        // x ≥ p is not a field element at all.
        let mut bytes = vec![0x80, 0x24, 0x02];
        bytes.extend_from_slice(&[0xff; 32]);
        assert!(reason(resolve(&did_from_bytes(&bytes))).contains("not on the curve"));
        // About half of all x have no y with y² = x³ − 3x + b; find one.
        let mut found = false;
        for i in 0u8..64 {
            let mut point = [0u8; 33];
            point[0] = 0x03;
            point[32] = i;
            if p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).is_err() {
                let mut bytes = vec![0x80, 0x24];
                bytes.extend_from_slice(&point);
                assert!(reason(resolve(&did_from_bytes(&bytes))).contains("not on the curve"));
                found = true;
                break;
            }
        }
        assert!(found);
    }

    #[test]
    fn rejects_weak_ed25519_keys() {
        // The identity point (y = 1) has order 1.
        let mut bytes = vec![0xed, 0x01, 0x01];
        bytes.extend_from_slice(&[0u8; 31]);
        assert!(reason(resolve(&did_from_bytes(&bytes))).contains("small order"));
    }

    #[test]
    fn error_messages_are_bounded() {
        let long = format!("did:web:{}", "a".repeat(10_000));
        match resolve(&long) {
            Err(Error::InvalidDid { did, .. }) => assert!(did.len() < 200),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0u64,
            1,
            0x7f,
            0x80,
            0xed,
            0x1200,
            0x3fff,
            0x4000,
            u64::MAX >> 1,
        ] {
            let mut out = Vec::new();
            write_varint(v, &mut out);
            assert_eq!(read_varint(&out), Ok((v, out.len())), "{v:#x}");
        }
        let mut out = Vec::new();
        write_varint(MULTICODEC_P256_PUB, &mut out);
        assert_eq!(out, [0x80, 0x24]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random P-256 keys survive encode → resolve, and the DID is canonical.
        #[test]
        fn random_p256_keys_round_trip(scalar in any::<[u8; 32]>()) {
            // Out-of-range or zero scalars are not keys; skip them.
            if let Ok(sk) = SigningKey::p256_from_bytes(&scalar) {
                let key = sk.verifying_key();
                let did = to_did(&key);
                prop_assert!(did.starts_with("did:key:zDn"));
                prop_assert_eq!(resolve(&did).unwrap(), key.clone());
                prop_assert_eq!(to_did(&resolve(&did).unwrap()), did);
            }
        }

        /// Random Ed25519 keys survive encode → resolve.
        #[test]
        fn random_ed25519_keys_round_trip(seed in any::<[u8; 32]>()) {
            let key = PublicKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key());
            let did = to_did(&key);
            prop_assert!(did.starts_with("did:key:z6Mk"));
            prop_assert_eq!(resolve(&did).unwrap(), key);
        }

        /// Arbitrary strings never panic the resolver.
        #[test]
        fn resolve_never_panics(s in ".{0,200}") {
            let _ = resolve(&s);
            let _ = resolve(&format!("did:key:z{s}"));
        }
    }
}
