//! Authentication: signed vehicle requests and operator tokens.
//!
//! Vehicle requests carry the headers of [`secureev_uptane::request_auth`]; the
//! key is the Primary's, resolved from the `did:key` the registry recorded at
//! registration. A nonce seen within the replay window is refused, as is any
//! request outside the window. Every failure is a 401 with one body (see
//! [`crate::error::UNAUTHORIZED_MESSAGE`]); the reason goes to the log and the
//! audit trail.

use crate::error::Error;
use crate::logging::PeerAddr;
use crate::operators;
use crate::AppState;
use axum::body::Body;
use axum::extract::MatchedPath;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use secureev_uptane::request_auth::{
    verify_request, RequestParts, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_VEHICLE,
};
use secureev_uptane::Timestamp;
use serde_json::json;
use std::collections::{HashSet, VecDeque};

/// The vehicle a request was authenticated as (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleIdentity {
    /// VIN.
    pub vin: String,
}

/// The device certificate a vehicle connection presented (request
/// extension): the VIN its subject names, or why it names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCert(pub std::result::Result<String, String>);

/// With `device_certificates = "required"`, the connection's certificate
/// must name `vin` (the VIN that signed the request, or that an enrollment
/// registers); anything else is the uniform 401. A no-op when device
/// certificates are off.
pub fn check_device_cert(
    state: &AppState,
    extensions: &axum::http::Extensions,
    vin: &str,
) -> Result<(), Error> {
    if state.config().device_certificates == crate::config::DeviceCertificates::Off {
        return Ok(());
    }
    match extensions.get::<DeviceCert>() {
        None => Err(Error::Unauthorized("no device certificate".into())),
        Some(DeviceCert(Err(e))) => Err(Error::Unauthorized(e.clone())),
        Some(DeviceCert(Ok(named))) if named == vin => Ok(()),
        Some(DeviceCert(Ok(named))) => Err(Error::Unauthorized(format!(
            "device certificate of {named} used for {vin}"
        ))),
    }
}

/// Most nonces remembered at once. At 8 bytes of hash plus the expiry queue
/// this is about 17 MiB when full; see [`NonceCache`] for what happens then.
pub const NONCE_CACHE_ENTRIES: usize = 1 << 19;

/// Nonces seen within the replay window, bounded.
///
/// Each `(vehicle, nonce)` is remembered as a keyed 64-bit hash (SipHash with
/// a per-process random key, so nobody can aim collisions; an accidental one
/// refuses one honest request, which the vehicle retries with a fresh nonce)
/// until its request leaves the replay window. When the cache is full the
/// oldest entry is forgotten early, and from then on every request whose
/// window ends at or before that entry's is refused: a forgotten nonce can
/// never be replayed, the acceptance window only narrows under a flood.
#[derive(Debug)]
pub struct NonceCache {
    key: std::collections::hash_map::RandomState,
    seen: HashSet<u64>,
    order: VecDeque<(i64, u64)>,
    capacity: usize,
    floor: i64,
}

impl Default for NonceCache {
    fn default() -> Self {
        Self::with_capacity(NONCE_CACHE_ENTRIES)
    }
}

impl NonceCache {
    /// A cache remembering at most `capacity` nonces (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        NonceCache {
            key: Default::default(),
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            floor: i64::MIN,
        }
    }

    /// Record `(vin, nonce)`, valid until `expires`; `false` if already seen,
    /// or if it expires no later than a nonce that had to be forgotten early.
    pub fn insert(&mut self, vin: &str, nonce: &str, expires: i64, now: i64) -> bool {
        while let Some(&(exp, h)) = self.order.front() {
            if exp >= now {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&h);
        }
        if expires <= self.floor {
            return false;
        }
        let h = self.hash(vin, nonce);
        if self.seen.contains(&h) {
            return false;
        }
        while self.seen.len() >= self.capacity {
            let Some((exp, old)) = self.order.pop_front() else {
                break;
            };
            self.seen.remove(&old);
            self.floor = self.floor.max(exp);
        }
        if expires <= self.floor {
            return false;
        }
        self.seen.insert(h);
        self.order.push_back((expires, h));
        true
    }

    fn hash(&self, vin: &str, nonce: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.key, (vin, nonce))
    }

    /// Whether `(vin, nonce)` was seen (and may not have expired yet).
    pub fn contains(&self, vin: &str, nonce: &str) -> bool {
        self.seen.contains(&self.hash(vin, nonce))
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

/// Header checks that need no body: form of every header, a timestamp
/// within the window, a registered vehicle, a nonce not yet seen. Returns the
/// Primary's DID.
fn precheck(state: &AppState, headers: &HeaderMap) -> Result<String, Error> {
    let vin = header(headers, HEADER_VEHICLE)?;
    secureev_uptane::request_auth::claimed_vehicle(vin)
        .map_err(|r| Error::Unauthorized(r.to_string()))?;
    let ts = header(headers, HEADER_TIMESTAMP)?;
    let nonce = header(headers, HEADER_NONCE)?;
    let sig = header(headers, HEADER_SIGNATURE)?;
    if ts.is_empty() || nonce.is_empty() || sig.is_empty() {
        return Err(Error::Unauthorized("signature headers missing".into()));
    }
    if ts.len() > 12 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Unauthorized(format!("malformed {HEADER_TIMESTAMP}")));
    }
    let window = state.config().replay_window_secs;
    let t: i64 = ts
        .parse()
        .map_err(|_| Error::Unauthorized(format!("malformed {HEADER_TIMESTAMP}")))?;
    if (t - state.now()).abs() > window {
        return Err(Error::Unauthorized("stale request".into()));
    }
    if sig.len() > secureev_uptane::request_auth::MAX_SIGNATURE_HEX
        || nonce.len() > secureev_uptane::request_auth::MAX_NONCE_HEX
    {
        return Err(Error::Unauthorized("malformed signature headers".into()));
    }
    {
        let cache = state
            .nonces()
            .lock()
            .map_err(|_| Error::Internal("nonce cache poisoned".into()))?;
        if cache.contains(vin, &nonce.to_ascii_lowercase()) {
            return Err(Error::Unauthorized("replayed request (nonce seen)".into()));
        }
    }
    state
        .db()
        .read(|tx| tx.primary_did(vin))?
        .ok_or_else(|| Error::Unauthorized("unknown vehicle".into()))
}

/// Middleware: authenticate a vehicle request. Its headers are checked
/// before any of the body is read; then the body (capped at
/// `max_body_bytes`, within the request deadline) is buffered to check the
/// body hash. Refusals go to the audit trail.
pub async fn vehicle_auth(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, Error> {
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
    let what = format!("{} {}", req.method(), req.uri().path());
    match authenticate_vehicle(&state, req).await {
        Ok(req) => Ok(next.run(req).await),
        Err(e) => {
            if matches!(e, Error::Unauthorized(_)) {
                state.audit_refused(peer, &what, &e.to_string());
            }
            Err(e)
        }
    }
}

async fn authenticate_vehicle(state: &AppState, req: Request) -> Result<Request, Error> {
    let did_key = precheck(state, req.headers())?;
    // The certificate must name the VIN the request claims, before the body.
    check_device_cert(
        state,
        req.extensions(),
        header(req.headers(), HEADER_VEHICLE)?,
    )?;
    let (mut parts, body) = req.into_parts();
    let limit = state.config().max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Error::PayloadTooLarge(format!("body exceeds {limit} bytes")))?;
    let headers = &parts.headers;
    let vin = header(headers, HEADER_VEHICLE)?;
    let now = state.now();
    // Resolve the Primary's key through its registered DID document.
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
    // On PostgreSQL the nonce must also be new to every other instance.
    if state
        .db()
        .remember_nonce(&ok.vin, &ok.nonce, ok.timestamp.unix() + window, now)?
        == Some(false)
    {
        return Err(Error::Unauthorized(
            "replayed request (nonce seen by another instance)".into(),
        ));
    }
    parts.extensions.insert(VehicleIdentity { vin: ok.vin });
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Middleware of the admin listener: `Authorization: Bearer <operator
/// token>`, the role the route needs ([`operators::required_role`]), and an
/// audit record of every change (any method but GET) and every refusal.
pub async fn admin_auth(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, Error> {
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let path = req.uri().path().to_owned();
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let op = match token {
        None => Err(Error::Unauthorized("operator token required".into())),
        Some(t) => state.db().read(|tx| operators::authenticate(tx, &t)),
    };
    let op = match op {
        Ok(op) => op,
        Err(e) => {
            state.audit_refused(peer, &format!("{method} {path}"), &e.to_string());
            return Err(e);
        }
    };
    let needed = operators::required_role(&method, &route);
    if !op.may(needed) {
        let e = Error::Forbidden(format!(
            "operator {} lacks the {} role",
            op.name,
            needed.as_str()
        ));
        let _ = state.db().write(|tx| {
            state.audit(
                tx,
                &format!("operator:{}", op.name),
                "admin-forbidden",
                json!({ "method": method.as_str(), "path": path, "needs": needed.as_str() }),
            )
        });
        return Err(e);
    }
    req.extensions_mut().insert(op.clone());
    if method == Method::GET {
        return Ok(next.run(req).await);
    }
    let actor = format!("operator:{}", op.name);
    let detail = json!({
        "method": method.as_str(),
        "path": path,
        "route": route,
        "peer": peer.map(|p| p.to_string()),
    });
    // The change the handler commits carries this record in its own
    // transaction (`Db::write`); only a request that changed nothing is
    // recorded afterwards, with the status it got.
    let record = state.request_record(actor.clone(), detail.clone());
    let (resp, committed) = record.scope(next.run(req)).await;
    if !committed {
        let mut detail = detail;
        detail["status"] = json!(resp.status().as_u16());
        detail["recorded"] = json!("after-response");
        if let Err(e) = state
            .db()
            .write(|tx| state.audit(tx, &actor, "admin-request", detail.clone()))
        {
            tracing::error!(error = %e, "cannot append to the audit trail");
        }
    }
    Ok(resp)
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

    // Regression: the cache grew without bound within the replay window
    // (25 → 147 MB of server memory over 80,000 check-ins).
    #[test]
    fn full_nonce_cache_forgets_the_oldest_and_refuses_what_it_could_not_tell() {
        let mut c = NonceCache::with_capacity(3);
        assert!(c.insert("V", "n1", 100, 0));
        assert!(c.insert("V", "n2", 110, 0));
        assert!(c.insert("V", "n3", 120, 0));
        // Full: n1 (window ends at 100) is forgotten to make room.
        assert!(c.insert("V", "n4", 130, 0));
        assert_eq!(c.len(), 3);
        // A replay of n1 is still refused: its window ends at the floor.
        assert!(!c.insert("V", "n1", 100, 0));
        // So is any fresh nonce whose window ends that early...
        assert!(!c.insert("V", "n5", 95, 0));
        // ...but not one with a later window, and remembered ones stay refused.
        assert!(c.insert("V", "n6", 140, 0));
        assert!(!c.insert("V", "n4", 130, 0));
        assert_eq!(c.len(), 3);
    }
}
