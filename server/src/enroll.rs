//! Vehicle enrollment with per-vehicle credentials.
//!
//! A fleet admin makes a credential for one VIN (`POST /admin/enrollments`,
//! `secureev-server enroll create --vin ...`): 256 random bits, shown once,
//! stored only as its SHA-256, valid for [`DEFAULT_TTL_SECS`] unless asked
//! otherwise (at most [`MAX_TTL_SECS`]). The vehicle presents it once, on the
//! vehicle listener, as `Authorization: Bearer <credential>` on
//! `POST /enroll` with its registration. Consuming the credential and storing
//! the registration are one transaction: the `UPDATE ... WHERE consumed_at IS
//! NULL AND expires_at > now AND vin = ?` either marks it used and the vehicle
//! is stored, or nothing happens. A second use, another VIN, an expired or
//! unknown credential are all the same 401.

use crate::admin::{check_registration, store_registration, JsonBody, VehicleRegistration};
use crate::error::{Error, Result};
use crate::extract::Query;
use crate::operators::Operator;
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Prefix of enrollment credentials.
pub const CREDENTIAL_PREFIX: &str = "seven_";
/// Default lifetime of an enrollment credential (one hour).
pub const DEFAULT_TTL_SECS: i64 = 3600;
/// Longest lifetime an operator may ask for (seven days).
pub const MAX_TTL_SECS: i64 = 7 * 86_400;

fn digest(credential: &str) -> [u8; 32] {
    Sha256::digest(credential.as_bytes()).into()
}

/// A request for an enrollment credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollment {
    /// The VIN the credential is bound to.
    pub vin: String,
    /// Lifetime, seconds (default one hour, at most seven days).
    #[serde(default)]
    pub ttl_secs: Option<i64>,
}

/// POST /admin/enrollments (fleet-admin).
pub async fn create(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    JsonBody(req): JsonBody<NewEnrollment>,
) -> Result<Response> {
    crate::admin::check_id("vin", &req.vin)?;
    let ttl = req.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if !(60..=MAX_TTL_SECS).contains(&ttl) {
        return Err(Error::BadRequest(format!(
            "ttl_secs must be 60..={MAX_TTL_SECS}"
        )));
    }
    let credential = format!(
        "{CREDENTIAL_PREFIX}{}{}",
        secureev_uptane::manifest::random_nonce(),
        secureev_uptane::manifest::random_nonce()
    );
    let now = st.now();
    let expires_at = now + ttl;
    let id = st.db().write(|tx| {
        if tx.vehicle(&req.vin)?.is_some() {
            return Err(Error::Conflict(format!(
                "vehicle {} is already registered",
                req.vin
            )));
        }
        let id = tx.insert_enrollment(&req.vin, &digest(&credential), &op.name, now, expires_at)?;
        st.audit(
            tx,
            &format!("operator:{}", op.name),
            "enrollment-created",
            json!({ "enrollment": id, "vin": req.vin, "expires_at": expires_at }),
        )?;
        Ok(id)
    })?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "id": id, "vin": req.vin, "credential": credential, "expires_at": expires_at }),
        ),
    )
        .into_response())
}

/// Enrollment list query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// At most this many (default 100, max 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// GET /admin/enrollments (viewer): credentials without secrets.
pub async fn list(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>> {
    let limit = crate::admin::list_limit(q.limit)?;
    let rows = st.db().read(|tx| tx.enrollments(limit))?;
    Ok(Json(json!({ "enrollments": rows })))
}

/// The credential of an enrollment request, checked for form before the body
/// is read.
pub fn bearer_credential(headers: &HeaderMap) -> Result<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| Error::Unauthorized("enrollment credential required".into()))?;
    let hex = value
        .strip_prefix(CREDENTIAL_PREFIX)
        .ok_or_else(|| Error::Unauthorized("not an enrollment credential".into()))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Unauthorized(
            "malformed enrollment credential".into(),
        ));
    }
    Ok(value.to_owned())
}

/// POST /enroll (vehicle listener): register a vehicle with its credential.
pub async fn enroll(
    State(st): State<AppState>,
    Extension(credential): Extension<EnrollmentCredential>,
    extensions: axum::http::Extensions,
    JsonBody(reg): JsonBody<VehicleRegistration>,
) -> Result<Response> {
    let reg = check_registration(reg)?;
    // With device certificates required, a vehicle enrolls only itself.
    if let Err(e) = crate::auth::check_device_cert(&st, &extensions, &reg.vin) {
        let peer = extensions.get::<crate::logging::PeerAddr>().map(|p| p.0);
        st.audit_refused(peer, "POST /enroll", &e.to_string());
        return Err(e);
    }
    let now = st.now();
    let d = digest(&credential.0);
    let dids = st.db().write(|tx| {
        // One statement consumes the credential only if it is unused, unexpired
        // and bound to this VIN; the registration is in the same transaction.
        let id = tx.consume_enrollment(&d, &reg.vin, now)?.ok_or_else(|| {
            Error::Unauthorized(format!(
                "enrollment credential for {} unknown, used, expired or for another vehicle",
                reg.vin
            ))
        })?;
        let dids = store_registration(tx, &st, &reg, &format!("enrollment {id}"), now)?;
        st.audit(
            tx,
            &format!("vehicle:{}", reg.vin),
            "vehicle-enrolled",
            json!({ "enrollment": id, "ecus": dids }),
        )?;
        Ok(dids)
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "vin": reg.vin, "dids": dids })),
    )
        .into_response())
}

/// A well-formed enrollment credential (request extension set by
/// [`enroll_auth`]).
#[derive(Debug, Clone)]
pub struct EnrollmentCredential(String);

/// Middleware of `POST /enroll`: the credential's form is checked before the
/// body is read.
pub async fn enroll_auth(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response> {
    let credential = bearer_credential(req.headers())?;
    let mut req = req;
    req.extensions_mut()
        .insert(EnrollmentCredential(credential));
    Ok(next.run(req).await)
}
