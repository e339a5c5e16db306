//! Authentication: signed vehicle requests and the admin bearer token.
//!
//! Vehicle requests carry the headers of [`secureev_uptane::request_auth`]; the
//! key is the Primary's, resolved from the `did:key` the registry recorded at
//! registration. A nonce seen within the replay window is refused, as is any
//! request outside the window. Every failure is a 401.

use crate::error::Error;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use secureev_uptane::request_auth::{
    verify_request, RequestParts, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_VEHICLE,
};
use secureev_uptane::Timestamp;
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};

/// The vehicle a request was authenticated as (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleIdentity {
    /// VIN.
    pub vin: String,
}

/// Nonces seen within the replay window.
#[derive(Debug, Default)]
pub struct NonceCache {
    seen: HashSet<(String, String)>,
    order: VecDeque<(i64, String, String)>,
}

impl NonceCache {
    /// Record `(vin, nonce)`, valid until `expires`; `false` if already seen.
    pub fn insert(&mut self, vin: &str, nonce: &str, expires: i64, now: i64) -> bool {
        while let Some((exp, _, _)) = self.order.front() {
            if *exp >= now {
                break;
            }
            if let Some((_, v, n)) = self.order.pop_front() {
                self.seen.remove(&(v, n));
            }
        }
        let key = (vin.to_owned(), nonce.to_owned());
        if self.seen.contains(&key) {
            return false;
        }
        self.seen.insert(key);
        self.order
            .push_back((expires, vin.to_owned(), nonce.to_owned()));
        true
    }

    /// Number of remembered nonces.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Error> {
    // A repeated authentication header is refused: a proxy or server that read
    // the other copy would authenticate a different request.
    if headers.get_all(name).iter().nth(1).is_some() {
        return Err(Error::Unauthorized(format!("header {name} repeated")));
    }
    match headers.get(name) {
        None => Ok(""),
        Some(v) => v
            .to_str()
            .map_err(|_| Error::Unauthorized(format!("header {name} is not ASCII"))),
    }
}

/// Middleware: authenticate a vehicle request, buffering its body (capped at
/// `max_body_bytes`) to check the body hash.
pub async fn vehicle_auth(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, Error> {
    let (mut parts, body) = req.into_parts();
    let limit = state.config().max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Error::PayloadTooLarge(format!("body exceeds {limit} bytes")))?;
    let headers = &parts.headers;
    let vin = header(headers, HEADER_VEHICLE)?;
    if vin.is_empty() {
        return Err(Error::Unauthorized(format!(
            "missing header {HEADER_VEHICLE}"
        )));
    }
    let now = state.now();
    // Resolve the Primary's key through its registered DID document.
    let did_key = state
        .db()
        .read(|tx| tx.primary_did(vin))?
        .ok_or_else(|| Error::Unauthorized("unknown vehicle".into()))?;
    let key = state.resolve_did(&did_key)?;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let request = RequestParts {
        method: parts.method.as_str(),
        path,
        vin,
        timestamp: header(headers, HEADER_TIMESTAMP)?,
        nonce: header(headers, HEADER_NONCE)?,
        signature: header(headers, HEADER_SIGNATURE)?,
        body: &bytes,
    };
    let window = state.config().replay_window_secs;
    let ok = verify_request(&request, &key, Timestamp::from_unix(now), window)
        .map_err(|r| Error::Unauthorized(r.to_string()))?;
    {
        let mut cache = state
            .nonces()
            .lock()
            .map_err(|_| Error::Internal("nonce cache poisoned".into()))?;
        if !cache.insert(&ok.vin, &ok.nonce, ok.timestamp.unix() + window, now) {
            return Err(Error::Unauthorized("replayed request (nonce seen)".into()));
        }
    }
    parts.extensions.insert(VehicleIdentity { vin: ok.vin });
    Ok(next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await)
}

/// Middleware: require `Authorization: Bearer <admin token>`.
pub async fn admin_auth(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, Error> {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Error::Unauthorized("admin token required".into()))?;
    // Compare digests, so the comparison time says nothing about the token.
    let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    if digest != *state.admin_token_digest() {
        return Err(Error::Unauthorized("bad admin token".into()));
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_cache_refuses_repeats_and_forgets_after_window() {
        let mut c = NonceCache::default();
        assert!(c.insert("V", "aa", 100, 0));
        assert!(!c.insert("V", "aa", 100, 50));
        assert!(c.insert("W", "aa", 100, 50));
        assert!(c.insert("V", "bb", 300, 150));
        // "aa" expired at 100 and was dropped.
        assert!(c.insert("V", "aa", 400, 150));
        assert_eq!(c.len(), 2);
    }
}
