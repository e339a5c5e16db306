//! Vehicle request authentication: every request a vehicle makes to the backend
//! is signed by its Primary's P-256 key.
//!
//! The signature covers a canonical string built from the request, so that a
//! captured request cannot be replayed later, aimed at another path or vehicle,
//! or given another body:
//!
//! ```text
//! SECUREEV-REQUEST-V1\n
//! <METHOD>\n            upper case, e.g. GET
//! <path-and-query>\n    exactly as sent, e.g. /director/VIN123/timestamp.json
//! <vin>\n               the X-SecureEV-Vehicle header
//! <timestamp>\n         the X-SecureEV-Timestamp header: Unix seconds, decimal
//! <nonce>\n             the X-SecureEV-Nonce header: 16..64 hex digits
//! <sha256(body)>        lower-case hex; the hash of the empty string for no body
//! ```
//!
//! The signature travels as `X-SecureEV-Signature: <hex DER ECDSA signature>`.
//! The backend resolves the key through the `did:key` it registered for the
//! vehicle's Primary, accepts a timestamp only within a replay window around its
//! own clock, and remembers nonces for that window so an identical request is
//! refused the second time.
//!
//! This module does no I/O: callers pass the parts of the request, the key and
//! `now`; [`verify_request`] returns a decision.
//!
//! ```
//! use secureev_uptane::request_auth::*;
//! use secureev_uptane::{SigningKey, Timestamp};
//!
//! let key = SigningKey::generate_p256();
//! let now = Timestamp::from_unix(1_800_000_000);
//! let headers = sign_request(&key, "GET", "/director/VIN1/timestamp.json", "VIN1", now, b"").unwrap();
//! let parts = RequestParts {
//!     method: "GET",
//!     path: "/director/VIN1/timestamp.json",
//!     vin: &headers.vin,
//!     timestamp: &headers.timestamp,
//!     nonce: &headers.nonce,
//!     signature: &headers.signature,
//!     body: b"",
//! };
//! let ok = verify_request(&parts, &key.verifying_key(), now, DEFAULT_REPLAY_WINDOW_SECS).unwrap();
//! assert_eq!(ok.timestamp, now);
//! ```

use crate::keys::{PublicKey, SigningKey};
use crate::time::Timestamp;
use sha2::{Digest, Sha256};
use std::fmt;

/// Header naming the vehicle (its VIN).
pub const HEADER_VEHICLE: &str = "x-secureev-vehicle";
/// Header carrying the signing time, Unix seconds.
pub const HEADER_TIMESTAMP: &str = "x-secureev-timestamp";
/// Header carrying a fresh random nonce, hex.
pub const HEADER_NONCE: &str = "x-secureev-nonce";
/// Header carrying the hex DER ECDSA signature over [`canonical_request`].
pub const HEADER_SIGNATURE: &str = "x-secureev-signature";
/// First line of the canonical string; a new format gets a new label.
pub const CANONICAL_LABEL: &str = "SECUREEV-REQUEST-V1";
/// Default replay window: a request is accepted at most this many seconds
/// away from the verifier's clock, either way.
pub const DEFAULT_REPLAY_WINDOW_SECS: i64 = 300;
/// Shortest accepted nonce, hex digits (64 bits).
pub const MIN_NONCE_HEX: usize = 16;
/// Longest accepted nonce, hex digits.
pub const MAX_NONCE_HEX: usize = 64;
/// Longest accepted VIN-like vehicle identifier.
pub const MAX_VEHICLE_ID_LEN: usize = 64;
/// Longest accepted signature header (hex of a DER P-256 signature is at most 144).
pub const MAX_SIGNATURE_HEX: usize = 160;

/// Why a request was refused. Every variant maps to HTTP 401 at the backend;
/// the variant says which check failed, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// A header is missing or empty.
    MissingHeader(&'static str),
    /// A header is present but malformed.
    MalformedHeader(&'static str),
    /// The timestamp is outside the replay window (a stale or future request).
    Stale {
        /// The request's timestamp.
        timestamp: i64,
        /// The verifier's clock.
        now: i64,
        /// The window, in seconds.
        window: i64,
    },
    /// The signature does not verify with the registered key.
    BadSignature,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::MissingHeader(h) => write!(f, "missing header {h}"),
            Rejection::MalformedHeader(h) => write!(f, "malformed header {h}"),
            Rejection::Stale {
                timestamp,
                now,
                window,
            } => write!(
                f,
                "stale request: timestamp {timestamp} is more than {window}s from now ({now})"
            ),
            Rejection::BadSignature => write!(f, "request signature does not verify"),
        }
    }
}

impl std::error::Error for Rejection {}

/// The headers a vehicle adds to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// Value of [`HEADER_VEHICLE`].
    pub vin: String,
    /// Value of [`HEADER_TIMESTAMP`].
    pub timestamp: String,
    /// Value of [`HEADER_NONCE`].
    pub nonce: String,
    /// Value of [`HEADER_SIGNATURE`].
    pub signature: String,
}

impl SignedHeaders {
    /// `(name, value)` pairs, ready to add to a request.
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            (HEADER_VEHICLE, &self.vin),
            (HEADER_TIMESTAMP, &self.timestamp),
            (HEADER_NONCE, &self.nonce),
            (HEADER_SIGNATURE, &self.signature),
        ]
    }
}

/// The parts of a received request that authentication looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path and query, as received.
    pub path: &'a str,
    /// [`HEADER_VEHICLE`] value.
    pub vin: &'a str,
    /// [`HEADER_TIMESTAMP`] value.
    pub timestamp: &'a str,
    /// [`HEADER_NONCE`] value.
    pub nonce: &'a str,
    /// [`HEADER_SIGNATURE`] value.
    pub signature: &'a str,
    /// The request body (empty for none).
    pub body: &'a [u8],
}

/// A request whose signature verified and whose timestamp is fresh. The caller
/// must still refuse a nonce it has seen within the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The vehicle that signed.
    pub vin: String,
    /// When it signed.
    pub timestamp: Timestamp,
    /// Its nonce, lower-case hex.
    pub nonce: String,
}

/// The canonical string that is signed (see the module docs).
pub fn canonical_request(
    method: &str,
    path: &str,
    vin: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let body_hash = hex::encode(Sha256::digest(body));
    format!(
        "{CANONICAL_LABEL}\n{}\n{path}\n{vin}\n{timestamp}\n{nonce}\n{body_hash}",
        method.to_ascii_uppercase()
    )
    .into_bytes()
}

/// Sign a request with a fresh random nonce (vehicle side).
pub fn sign_request(
    key: &SigningKey,
    method: &str,
    path: &str,
    vin: &str,
    now: Timestamp,
    body: &[u8],
) -> Result<SignedHeaders, Rejection> {
    sign_request_with_nonce(
        key,
        method,
        path,
        vin,
        now,
        &crate::manifest::random_nonce(),
        body,
    )
}

/// Sign a request with the given nonce (deterministic tests).
pub fn sign_request_with_nonce(
    key: &SigningKey,
    method: &str,
    path: &str,
    vin: &str,
    now: Timestamp,
    nonce: &str,
    body: &[u8],
) -> Result<SignedHeaders, Rejection> {
    check_vin(vin)?;
    check_nonce(nonce)?;
    let msg = canonical_request(method, path, vin, now.unix(), nonce, body);
    Ok(SignedHeaders {
        vin: vin.to_owned(),
        timestamp: now.unix().to_string(),
        nonce: nonce.to_ascii_lowercase(),
        signature: key.sign_hex(&msg),
    })
}

/// Parse the vehicle header only, to find which key to verify with. Does not
/// authenticate anything.
pub fn claimed_vehicle(vin: &str) -> Result<&str, Rejection> {
    check_vin(vin)?;
    Ok(vin)
}

/// Verify a request (backend side): well-formed headers, a timestamp within
/// `window_secs` of `now`, and a signature by `key` over the canonical string.
pub fn verify_request(
    parts: &RequestParts<'_>,
    key: &PublicKey,
    now: Timestamp,
    window_secs: i64,
) -> Result<Authenticated, Rejection> {
    check_vin(parts.vin)?;
    if parts.timestamp.is_empty() {
        return Err(Rejection::MissingHeader(HEADER_TIMESTAMP));
    }
    // Decimal digits only: no sign, no spaces, at most 12 digits.
    if parts.timestamp.len() > 12 || !parts.timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::MalformedHeader(HEADER_TIMESTAMP));
    }
    let timestamp: i64 = parts
        .timestamp
        .parse()
        .map_err(|_| Rejection::MalformedHeader(HEADER_TIMESTAMP))?;
    check_nonce(parts.nonce)?;
    if parts.signature.is_empty() {
        return Err(Rejection::MissingHeader(HEADER_SIGNATURE));
    }
    if parts.signature.len() > MAX_SIGNATURE_HEX {
        return Err(Rejection::MalformedHeader(HEADER_SIGNATURE));
    }
    // Replay window first: cheap, and a stale request is refused whatever its
    // signature.
    if (timestamp - now.unix()).abs() > window_secs {
        return Err(Rejection::Stale {
            timestamp,
            now: now.unix(),
            window: window_secs,
        });
    }
    let msg = canonical_request(
        parts.method,
        parts.path,
        parts.vin,
        timestamp,
        &parts.nonce.to_ascii_lowercase(),
        parts.body,
    );
    if !key.verify_hex(&msg, parts.signature) {
        return Err(Rejection::BadSignature);
    }
    Ok(Authenticated {
        vin: parts.vin.to_owned(),
        timestamp: Timestamp::from_unix(timestamp),
        nonce: parts.nonce.to_ascii_lowercase(),
    })
}

fn check_vin(vin: &str) -> Result<(), Rejection> {
    if vin.is_empty() {
        return Err(Rejection::MissingHeader(HEADER_VEHICLE));
    }
    if vin.len() > MAX_VEHICLE_ID_LEN
        || !vin
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Rejection::MalformedHeader(HEADER_VEHICLE));
    }
    Ok(())
}

fn check_nonce(nonce: &str) -> Result<(), Rejection> {
    if nonce.is_empty() {
        return Err(Rejection::MissingHeader(HEADER_NONCE));
    }
    if !(MIN_NONCE_HEX..=MAX_NONCE_HEX).contains(&nonce.len())
        || !nonce.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(Rejection::MalformedHeader(HEADER_NONCE));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_unix(1_800_000_000);
    const NONCE: &str = "00112233445566778899aabbccddeeff";

    fn parts<'a>(h: &'a SignedHeaders, path: &'a str, body: &'a [u8]) -> RequestParts<'a> {
        RequestParts {
            method: "PUT",
            path,
            vin: &h.vin,
            timestamp: &h.timestamp,
            nonce: &h.nonce,
            signature: &h.signature,
            body,
        }
    }

    #[test]
    fn round_trip_and_tampering() {
        let key = SigningKey::generate_p256();
        let pk = key.verifying_key();
        let h = sign_request_with_nonce(&key, "PUT", "/d/V1/manifest", "V1", NOW, NONCE, b"{}")
            .unwrap();
        let ok = verify_request(&parts(&h, "/d/V1/manifest", b"{}"), &pk, NOW, 300).unwrap();
        assert_eq!(ok.vin, "V1");
        assert_eq!(
            verify_request(&parts(&h, "/d/V2/manifest", b"{}"), &pk, NOW, 300),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify_request(&parts(&h, "/d/V1/manifest", b"{ }"), &pk, NOW, 300),
            Err(Rejection::BadSignature)
        );
        let mut other = parts(&h, "/d/V1/manifest", b"{}");
        other.method = "GET";
        assert_eq!(
            verify_request(&other, &pk, NOW, 300),
            Err(Rejection::BadSignature)
        );
        let wrong = SigningKey::generate_p256().verifying_key();
        assert_eq!(
            verify_request(&parts(&h, "/d/V1/manifest", b"{}"), &wrong, NOW, 300),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn stale_and_future_requests_are_refused() {
        let key = SigningKey::generate_p256();
        let h = sign_request_with_nonce(&key, "PUT", "/p", "V1", NOW, NONCE, b"").unwrap();
        let pk = key.verifying_key();
        assert!(verify_request(&parts(&h, "/p", b""), &pk, NOW.plus_secs(300), 300).is_ok());
        assert!(matches!(
            verify_request(&parts(&h, "/p", b""), &pk, NOW.plus_secs(301), 300),
            Err(Rejection::Stale { .. })
        ));
        assert!(matches!(
            verify_request(&parts(&h, "/p", b""), &pk, NOW.plus_secs(-301), 300),
            Err(Rejection::Stale { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        // Any change to the body or the path, however small, breaks the
        // signature; the unchanged request always verifies.
        #[test]
        fn any_change_to_body_or_path_is_detected(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            path in "/[a-z0-9/._-]{0,40}",
            flip in proptest::prelude::any::<usize>(),
        ) {
            let key = SigningKey::p256_from_bytes(&[7u8; 32]).unwrap();
            let pk = key.verifying_key();
            let h = sign_request_with_nonce(&key, "PUT", &path, "V1", NOW, NONCE, &body).unwrap();
            proptest::prop_assert!(verify_request(&parts(&h, &path, &body), &pk, NOW, 300).is_ok());
            if !body.is_empty() {
                let mut b = body.clone();
                let i = flip % b.len();
                b[i] ^= 1 << (flip % 8);
                proptest::prop_assert_eq!(
                    verify_request(&parts(&h, &path, &b), &pk, NOW, 300),
                    Err(Rejection::BadSignature)
                );
            }
            let other = format!("{path}x");
            proptest::prop_assert_eq!(
                verify_request(&parts(&h, &other, &body), &pk, NOW, 300),
                Err(Rejection::BadSignature)
            );
        }
    }

    #[test]
    fn malformed_headers_are_named() {
        let key = SigningKey::generate_p256();
        let pk = key.verifying_key();
        let h = sign_request_with_nonce(&key, "GET", "/p", "V1", NOW, NONCE, b"").unwrap();
        let mut p = parts(&h, "/p", b"");
        p.timestamp = "-5";
        assert_eq!(
            verify_request(&p, &pk, NOW, 300),
            Err(Rejection::MalformedHeader(HEADER_TIMESTAMP))
        );
        let mut p = parts(&h, "/p", b"");
        p.nonce = "xyz";
        assert_eq!(
            verify_request(&p, &pk, NOW, 300),
            Err(Rejection::MalformedHeader(HEADER_NONCE))
        );
        let mut p = parts(&h, "/p", b"");
        p.vin = "../etc";
        assert_eq!(
            verify_request(&p, &pk, NOW, 300),
            Err(Rejection::MalformedHeader(HEADER_VEHICLE))
        );
        let mut p = parts(&h, "/p", b"");
        p.signature = "";
        assert_eq!(
            verify_request(&p, &pk, NOW, 300),
            Err(Rejection::MissingHeader(HEADER_SIGNATURE))
        );
    }
}
