//! The admin REST API (`/admin/...`): vehicles, images, assignments,
//! campaigns, status and history. JSON in and out; every change is one
//! transaction.

use crate::db::{self, Tx};
use crate::director;
use crate::error::{Error, Result};
use crate::extract::{Path, Query};
use crate::repo::{self, EncryptedImage, IMAGE};
use crate::AppState;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use secureev_uptane::encryption::EcuEncryptionPublicKey;
use secureev_uptane::{did, Key};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use tokio::io::AsyncWriteExt;

/// A JSON body whose rejections become the server's JSON errors (400, 413, 415).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(JsonRejection::MissingJsonContentType(e)) => {
                Err(Error::UnsupportedMediaType(e.body_text()))
            }
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Error::PayloadTooLarge(e.body_text()))
            }
            Err(e) => Err(Error::BadRequest(e.body_text())),
        }
    }
}

/// Refuse an identifier (VIN, serial, hardware ID) outside `[A-Za-z0-9._-]{1,64}`.
pub fn check_id(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Error::BadRequest(format!(
            "{what} {s:?} must be 1-64 characters of A-Z a-z 0-9 - _ ."
        )));
    }
    Ok(())
}

/// One ECU in a registration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcuRegistration {
    /// ECU serial.
    pub serial: String,
    /// Hardware ID.
    pub hardware_id: String,
    /// P-256 public key: a `did:key`, a PEM SPKI, or a TUF key object.
    pub public_key: Value,
    /// X25519 public key for image encryption, hex (optional).
    #[serde(default)]
    pub encryption_key: Option<String>,
}

/// A vehicle registration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleRegistration {
    /// VIN.
    pub vin: String,
    /// Serial of the Primary ECU (one of `ecus`).
    pub primary_serial: String,
    /// The ECUs.
    pub ecus: Vec<EcuRegistration>,
}

fn key_to_did(v: &Value) -> Result<String> {
    let bad = |why: String| Error::BadRequest(format!("public_key: {why}"));
    let pk = match v {
        Value::String(s) if s.starts_with("did:key:") => {
            did::resolve(s).map_err(|e| bad(e.to_string()))?
        }
        Value::String(s) => Key {
            keytype: secureev_uptane::keys::KEYTYPE_ECDSA.into(),
            scheme: secureev_uptane::keys::SCHEME_ECDSA_P256.into(),
            keyval: secureev_uptane::keys::KeyVal {
                public: s.clone(),
                unrecognized: Default::default(),
            },
            unrecognized: Default::default(),
        }
        .to_public()
        .map_err(|e| bad(e.to_string()))?,
        Value::Object(_) => serde_json::from_value::<Key>(v.clone())
            .map_err(|e| bad(e.to_string()))?
            .to_public()
            .map_err(|e| bad(e.to_string()))?,
        _ => return Err(bad("expected a did:key, a PEM or a key object".into())),
    };
    if !matches!(pk, secureev_uptane::PublicKey::P256(_)) {
        return Err(bad("ECU keys must be P-256".into()));
    }
    Ok(did::to_did(&pk))
}

/// A registration whose fields were checked: ECU keys as `did:key`s,
/// encryption keys normalised.
#[derive(Debug)]
pub struct CheckedRegistration {
    /// VIN.
    pub vin: String,
    /// Primary serial.
    pub primary_serial: String,
    /// `(serial, hardware_id, did, encryption key hex)`.
    pub ecus: Vec<(String, String, String, Option<String>)>,
}

/// Check a registration's fields (no database access).
pub fn check_registration(reg: VehicleRegistration) -> Result<CheckedRegistration> {
    check_id("vin", &reg.vin)?;
    if reg.ecus.is_empty() || reg.ecus.len() > 256 {
        return Err(Error::BadRequest("a vehicle has 1 to 256 ECUs".into()));
    }
    let mut serials = BTreeSet::new();
    let mut ecus = Vec::new();
    for e in reg.ecus {
        check_id("ecu serial", &e.serial)?;
        check_id("hardware_id", &e.hardware_id)?;
        if !serials.insert(e.serial.clone()) {
            return Err(Error::BadRequest(format!("ECU {} listed twice", e.serial)));
        }
        let did = key_to_did(&e.public_key)?;
        let enc = match &e.encryption_key {
            Some(k) => Some(
                EcuEncryptionPublicKey::from_hex(k)
                    .map_err(|e| Error::BadRequest(format!("encryption_key: {e}")))?
                    .to_hex(),
            ),
            None => None,
        };
        ecus.push((e.serial, e.hardware_id, did, enc));
    }
    if !serials.contains(&reg.primary_serial) {
        return Err(Error::BadRequest(
            "primary_serial is not one of the ECUs".into(),
        ));
    }
    Ok(CheckedRegistration {
        vin: reg.vin,
        primary_serial: reg.primary_serial,
        ecus,
    })
}

/// Store a checked registration inside `tx`; returns serial → DID.
pub fn store_registration(
    tx: &Tx<'_>,
    st: &AppState,
    reg: &CheckedRegistration,
    how: &str,
    now: i64,
) -> Result<BTreeMap<String, String>> {
    tx.insert_vehicle(&reg.vin, &reg.primary_serial, now)?;
    let mut dids = BTreeMap::new();
    for (serial, hw, did, enc) in &reg.ecus {
        tx.insert_ecu(&reg.vin, serial, hw, did, enc.as_deref(), now)?;
        dids.insert(serial.clone(), did.clone());
    }
    // The first metadata of a vehicle registering now: nothing to nudge.
    director::resign(tx, &st.director_keys(), &reg.vin, now)?;
    tx.event(
        Some(&reg.vin),
        None,
        "registered",
        &format!("{} ECUs ({how})", reg.ecus.len()),
        now,
    )?;
    Ok(dids)
}

/// POST /admin/vehicles
pub async fn register_vehicle(
    State(st): State<AppState>,
    JsonBody(reg): JsonBody<VehicleRegistration>,
) -> Result<Response> {
    let reg = check_registration(reg)?;
    let now = st.now();
    let dids = st
        .db()
        .write(|tx| store_registration(tx, &st, &reg, "by an operator", now))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "vin": reg.vin, "dids": dids })),
    )
        .into_response())
}

/// GET /admin/vehicles
pub async fn list_vehicles(State(st): State<AppState>) -> Result<Json<Value>> {
    let v = st.db().read(|tx| tx.vehicles())?;
    Ok(Json(json!({ "vehicles": v })))
}

fn vehicle_view(tx: &Tx<'_>, vin: &str) -> Result<Value> {
    let v = tx
        .vehicle(vin)?
        .ok_or_else(|| Error::NotFound(format!("vehicle {vin}")))?;
    let ecus = tx.ecus(vin)?;
    let assignments = tx.assignments(Some(vin), None, None)?;
    Ok(json!({ "vehicle": v, "ecus": ecus, "assignments": assignments }))
}

/// GET /admin/vehicles/{vin}
pub async fn get_vehicle(
    State(st): State<AppState>,
    Path(vin): Path<String>,
) -> Result<Json<Value>> {
    Ok(Json(st.db().read(|tx| vehicle_view(tx, &vin))?))
}

/// History query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Only this vehicle.
    #[serde(default)]
    pub vin: Option<String>,
    /// At most this many events (default 100, max 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// GET /admin/vehicles/{vin}/history
pub async fn vehicle_history(
    State(st): State<AppState>,
    Path(vin): Path<String>,
) -> Result<Json<Value>> {
    let events = st.db().read(|tx| {
        tx.vehicle(&vin)?
            .ok_or_else(|| Error::NotFound(format!("vehicle {vin}")))?;
        tx.events(Some(&vin), 1000)
    })?;
    Ok(Json(json!({ "events": events })))
}

/// The most rows one list request returns (the OpenAPI `maximum` of `limit`).
pub const MAX_LIST_LIMIT: u32 = 1000;

/// A list request's `limit`: 100 when absent; above [`MAX_LIST_LIMIT`] is
/// refused (400), as the OpenAPI document says, never silently clamped.
pub fn list_limit(limit: Option<u32>) -> Result<u32> {
    match limit {
        None => Ok(100),
        Some(n) if n <= MAX_LIST_LIMIT => Ok(n),
        Some(n) => Err(Error::BadRequest(format!(
            "limit: {n} is above the maximum of {MAX_LIST_LIMIT}"
        ))),
    }
}

/// Audit query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Records after this sequence number (default 0).
    #[serde(default)]
    pub after: Option<i64>,
    /// At most this many (default 100, max 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// GET /admin/audit: audit records, oldest first.
pub async fn audit_records(
    State(st): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>> {
    let limit = list_limit(q.limit)?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(Error::BadRequest(format!(
            "after: {after} is below the minimum of 0"
        )));
    }
    let rows = st.db().read(|tx| tx.audit_records(after, limit))?;
    Ok(Json(json!({ "records": rows })))
}

/// GET /admin/events
pub async fn events(
    State(st): State<AppState>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>> {
    let limit = list_limit(q.limit)?;
    let events = st.db().read(|tx| tx.events(q.vin.as_deref(), limit))?;
    Ok(Json(json!({ "events": events })))
}

/// PUT /admin/blobs: upload an image blob (raw bytes); stored by SHA-256.
pub async fn put_blob(State(st): State<AppState>, req: Request) -> Result<Response> {
    let ct = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != "application/octet-stream" {
        return Err(Error::UnsupportedMediaType(format!(
            "expected application/octet-stream, got {ct:?}"
        )));
    }
    let limit = st.config().max_blob_bytes as u64;
    let dir = st.blob_dir();
    let tmp = dir.join(format!(
        "upload-{}.tmp",
        secureev_uptane::manifest::random_nonce()
    ));
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let mut body: Body = req.into_body();
    let mut hasher = Sha256::new();
    let mut length: u64 = 0;
    let rate = st.config().min_upload_bytes_per_sec.max(1);
    let started = tokio::time::Instant::now();
    let result: Result<()> = async {
        loop {
            // The upload must keep `min_upload_bytes_per_sec` after a grace
            // period: the next bytes are due when the count falls below it.
            let due = started
                + crate::limits::UPLOAD_GRACE
                + std::time::Duration::from_secs_f64((length + 1) as f64 / rate as f64);
            let frame = match tokio::time::timeout_at(due, body.frame()).await {
                Err(_) => {
                    return Err(Error::RequestTimeout(format!(
                        "upload slower than {rate} bytes/s"
                    )))
                }
                Ok(None) => break,
                Ok(Some(f)) => f,
            };
            let frame = frame.map_err(|e| Error::BadRequest(format!("reading body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                length += data.len() as u64;
                if length > limit {
                    return Err(Error::PayloadTooLarge(format!(
                        "blob exceeds {limit} bytes"
                    )));
                }
                hasher.update(&data);
                file.write_all(&data)
                    .await
                    .map_err(|e| Error::io("writing blob", e))?;
            }
        }
        file.sync_all()
            .await
            .map_err(|e| Error::io("syncing blob", e))?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    let sha256 = hex::encode(hasher.finalize());
    let dest = st.blob_path(&sha256)?;
    tokio::fs::rename(&tmp, &dest)
        .await
        .map_err(|e| Error::io("storing blob", e))?;
    let now = st.now();
    st.db().write(|tx| tx.insert_blob(&sha256, length, now))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "sha256": sha256, "length": length })),
    )
        .into_response())
}

/// GET /admin/image/targets: the current signed Image targets, for the
/// offline signing tool.
pub async fn image_targets(State(st): State<AppState>) -> Result<Response> {
    let m = st
        .db()
        .read(|tx| tx.latest_meta(IMAGE, "targets"))?
        .ok_or_else(|| Error::NotFound("no image targets".into()))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        m.bytes,
    )
        .into_response())
}

/// GET /admin/image/root: the current Image root.
pub async fn image_root(State(st): State<AppState>) -> Result<Response> {
    let m = st
        .db()
        .read(|tx| tx.latest_meta(IMAGE, "root"))?
        .ok_or_else(|| Error::NotFound("no image root".into()))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        m.bytes,
    )
        .into_response())
}

/// GET /admin/director/root: the current Director root.
pub async fn director_root(State(st): State<AppState>) -> Result<Response> {
    let m = st
        .db()
        .read(|tx| tx.latest_meta(repo::DIRECTOR, "root"))?
        .ok_or_else(|| Error::NotFound("no director root".into()))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        m.bytes,
    )
        .into_response())
}

/// A publication of offline-signed Image targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishTargets {
    /// The signed targets envelope.
    pub metadata: Value,
    /// Encryption material of encrypted images, by target name.
    #[serde(default)]
    pub encrypted: BTreeMap<String, EncryptedImage>,
}

/// POST /admin/image/targets
pub async fn publish_targets(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<PublishTargets>,
) -> Result<Response> {
    // Persist the bytes that were signed, as sent, compactly re-encoded: the
    // signature covers the canonical form of `signed`, not the formatting.
    let bytes = serde_json::to_vec(&req.metadata).map_err(|e| Error::BadRequest(e.to_string()))?;
    let now = st.now();
    let version = st.db().write(|tx| {
        let keys = st.image_online();
        repo::publish_image_targets(
            tx,
            &bytes,
            &req.encrypted,
            &st.director_keys().kek,
            &keys.snapshot,
            &keys.timestamp,
            now,
        )
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "targets_version": version })),
    )
        .into_response())
}

/// GET /admin/images
pub async fn list_images(State(st): State<AppState>) -> Result<Json<Value>> {
    let images = st.db().read(|tx| tx.images())?;
    Ok(Json(json!({ "images": images })))
}

/// An assignment request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAssignment {
    /// Vehicle.
    pub vin: String,
    /// ECU serial.
    pub ecu_serial: String,
    /// Image name.
    pub image: String,
}

pub(crate) fn check_assignable(tx: &Tx<'_>, vin: &str, serial: &str, image: &str) -> Result<()> {
    let ecu = tx
        .ecu(vin, serial)?
        .ok_or_else(|| Error::NotFound(format!("ECU {serial} of vehicle {vin}")))?;
    let img = tx
        .image(image)?
        .ok_or_else(|| Error::NotFound(format!("image {image:?}")))?;
    if !img.hardware_ids.contains(&ecu.hardware_id) {
        return Err(Error::Conflict(format!(
            "image {image} is for {:?}, ECU {serial} is {}",
            img.hardware_ids, ecu.hardware_id
        )));
    }
    if img.encrypted && ecu.encryption_key.is_none() {
        return Err(Error::Conflict(format!(
            "image {image} is encrypted and ECU {serial} has no encryption key"
        )));
    }
    if let (Some(installed), Some(offered)) = (ecu.installed_release_counter, img.release_counter) {
        if offered < installed {
            return Err(Error::Conflict(format!(
                "release counter {offered} of {image} is below the installed {installed}"
            )));
        }
    }
    Ok(())
}

/// POST /admin/assignments
pub async fn create_assignment(
    State(st): State<AppState>,
    JsonBody(a): JsonBody<NewAssignment>,
) -> Result<Response> {
    let now = st.now();
    let id = st.db().write(|tx| {
        check_assignable(tx, &a.vin, &a.ecu_serial, &a.image)?;
        tx.cancel_pending(&a.vin, &a.ecu_serial, now)?;
        let id = tx.insert_assignment(&a.vin, &a.ecu_serial, &a.image, None, now)?;
        tx.event(Some(&a.vin), Some(&a.ecu_serial), "assigned", &a.image, now)?;
        director::regenerate(tx, &st.director_keys(), &a.vin, now)?;
        Ok(id)
    })?;
    let row = st.db().read(|tx| tx.assignment(id))?;
    Ok((StatusCode::CREATED, Json(json!({ "assignment": row }))).into_response())
}

/// Assignment filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentQuery {
    /// Vehicle.
    #[serde(default)]
    pub vin: Option<String>,
    /// Status.
    #[serde(default)]
    pub status: Option<String>,
    /// Campaign.
    #[serde(default)]
    pub campaign: Option<i64>,
}

/// GET /admin/assignments
pub async fn list_assignments(
    State(st): State<AppState>,
    Query(q): Query<AssignmentQuery>,
) -> Result<Json<Value>> {
    let rows = st
        .db()
        .read(|tx| tx.assignments(q.vin.as_deref(), q.status.as_deref(), q.campaign))?;
    Ok(Json(json!({ "assignments": rows })))
}

/// DELETE /admin/assignments/{id}: cancel a pending assignment.
pub async fn cancel_assignment(
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>> {
    let now = st.now();
    st.db().write(|tx| {
        let a = tx
            .assignment(id)?
            .ok_or_else(|| Error::NotFound(format!("assignment {id}")))?;
        if a.status != db::PENDING {
            return Err(Error::Conflict(format!("assignment {id} is {}", a.status)));
        }
        tx.set_assignment_status(id, db::CANCELLED, now)?;
        tx.event(
            Some(&a.vin),
            Some(&a.ecu_serial),
            "cancelled",
            &a.image,
            now,
        )?;
        director::regenerate(tx, &st.director_keys(), &a.vin, now)?;
        Ok(())
    })?;
    Ok(Json(json!({ "cancelled": id })))
}

/// A campaign request: `image` on every ECU with `hardware_id`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    /// Name.
    pub name: String,
    /// Image name.
    pub image: String,
    /// Hardware ID.
    pub hardware_id: String,
}

/// POST /admin/campaigns
pub async fn create_campaign(
    State(st): State<AppState>,
    JsonBody(c): JsonBody<NewCampaign>,
) -> Result<Response> {
    if c.name.is_empty() || c.name.len() > 200 {
        return Err(Error::BadRequest(
            "campaign name must be 1-200 characters".into(),
        ));
    }
    let now = st.now();
    let (id, count, skipped) = st.db().write(|tx| {
        let img = tx
            .image(&c.image)?
            .ok_or_else(|| Error::NotFound(format!("image {:?}", c.image)))?;
        if !img.hardware_ids.contains(&c.hardware_id) {
            return Err(Error::Conflict(format!(
                "image {} is not built for {}",
                c.image, c.hardware_id
            )));
        }
        let id = tx.insert_campaign(&c.name, &c.image, &c.hardware_id, now)?;
        let ecus = tx.ecus_with_hardware(&c.hardware_id)?;
        let mut vins = BTreeSet::new();
        let mut skipped = Vec::new();
        let mut count = 0usize;
        for e in &ecus {
            // An ECU the image cannot go to (release counter rollback, no
            // encryption key) is skipped and reported, not fatal to the fleet.
            if let Err(why) = check_assignable(tx, &e.vin, &e.serial, &c.image) {
                skipped.push(
                    json!({ "vin": e.vin, "ecu_serial": e.serial, "reason": why.to_string() }),
                );
                continue;
            }
            count += 1;
            tx.cancel_pending(&e.vin, &e.serial, now)?;
            tx.insert_assignment(&e.vin, &e.serial, &c.image, Some(id), now)?;
            tx.event(
                Some(&e.vin),
                Some(&e.serial),
                "assigned",
                &format!("{} (campaign {id})", c.image),
                now,
            )?;
            vins.insert(e.vin.clone());
        }
        for vin in &vins {
            director::regenerate(tx, &st.director_keys(), vin, now)?;
        }
        Ok((id, count, skipped))
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "campaign": id, "assignments": count, "skipped": skipped })),
    )
        .into_response())
}

/// GET /admin/campaigns
pub async fn list_campaigns(State(st): State<AppState>) -> Result<Json<Value>> {
    let rows = st.db().read(|tx| {
        let mut out = Vec::new();
        for c in tx.campaigns()? {
            let a = tx.assignments(None, None, Some(c.id))?;
            let done = a.iter().filter(|a| a.status == db::COMPLETED).count();
            out.push(json!({ "campaign": c, "assignments": a.len(), "completed": done }));
        }
        Ok(out)
    })?;
    Ok(Json(json!({ "campaigns": rows })))
}

/// GET /admin/status
pub async fn status(State(st): State<AppState>) -> Result<Json<Value>> {
    let now = st.now();
    let v = st.db().read(|tx| {
        let counts = tx.counts()?;
        let image_targets = tx.latest_meta(IMAGE, "targets")?;
        Ok(json!({
            "counts": counts,
            "image_targets_version": image_targets.as_ref().map(|m| m.version),
            "image_targets_expires_in_secs": image_targets.as_ref().map(|m| m.expires - now),
            "schema_version": null,
        }))
    })?;
    let mut v = v;
    v["schema_version"] = json!(st.db().schema_version()?);
    Ok(Json(v))
}

/// A Director key rotation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateDirector {
    /// `root`, `targets`, `snapshot` or `timestamp`.
    pub role: String,
    /// Replace the role's keys (default) or add a key.
    #[serde(default)]
    pub mode: repo::RotationMode,
    /// New threshold of the role.
    #[serde(default)]
    pub threshold: Option<u32>,
}

/// POST /admin/director/rotate
pub async fn rotate_director(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<RotateDirector>,
) -> Result<Response> {
    let _serial = st.rotation_lock().lock().await;
    let now = st.now();
    let store = st.key_store().clone();
    let current = st.director_keys();
    let (version, keyid, next) = st
        .db()
        .write(|tx| {
            let (next, version, key) = director::rotate(
                tx,
                &store,
                &current,
                &req.role,
                req.mode,
                req.threshold,
                now,
            )?;
            // Swap inside the transaction, while the database is held: any later
            // regeneration signs with the new keys.
            st.set_director_keys(next.clone());
            Ok((version, key.keyid().to_owned(), next))
        })
        .inspect_err(|_| st.set_director_keys((*current).clone()))?;
    let keys = next.role(&req.role).unwrap_or_default();
    store.promote(repo::DIRECTOR, &req.role, keys)?;
    Ok(Json(json!({ "root_version": version, "new_keyid": keyid })).into_response())
}

/// An offline-signed Image root rotation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateImageRoot {
    /// Root version N+1, signed by the old and new root keys.
    pub root: Value,
    /// Targets re-signed with rotated targets keys, if the targets role changed.
    #[serde(default)]
    pub targets: Option<Value>,
}

/// POST /admin/image/root/rotate
pub async fn rotate_image_root(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<RotateImageRoot>,
) -> Result<Response> {
    let root = serde_json::to_vec(&req.root).map_err(|e| Error::BadRequest(e.to_string()))?;
    let targets = req
        .targets
        .as_ref()
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let _serial = st.rotation_lock().lock().await;
    let now = st.now();
    let store = st.key_store().clone();
    let active = st.image_online();
    // Candidates: the active online keys and any pending ones made by
    // POST /admin/image/online-keys for the offline tool to put in the root.
    let mut candidates = (*active).clone();
    for (role, set) in [
        ("snapshot", &mut candidates.snapshot),
        ("timestamp", &mut candidates.timestamp),
    ] {
        set.extend(store.load_optional(repo::IMAGE, &format!("{role}.pending"))?);
    }
    let (version, chosen) = st
        .db()
        .write(|tx| {
            let (version, chosen) = repo::accept_image_root(
                tx,
                &root,
                targets.as_deref(),
                &candidates,
                &st.director_keys().kek,
                now,
            )?;
            st.set_image_online(chosen.clone());
            Ok((version, chosen))
        })
        .inspect_err(|_| st.set_image_online((*active).clone()))?;
    for (role, keys) in [
        ("snapshot", &chosen.snapshot),
        ("timestamp", &chosen.timestamp),
    ] {
        store.promote(repo::IMAGE, role, keys)?;
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({ "root_version": version })),
    )
        .into_response())
}

/// A request for a new online key of the Image repository.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOnlineKey {
    /// `snapshot` or `timestamp`.
    pub role: String,
}

/// POST /admin/image/online-keys: make a pending online key for the offline
/// tool to put into the next Image root; it becomes active when that root is
/// accepted.
pub async fn new_image_online_key(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<NewOnlineKey>,
) -> Result<Response> {
    if req.role != "snapshot" && req.role != "timestamp" {
        return Err(Error::BadRequest(
            "online keys are snapshot or timestamp keys".into(),
        ));
    }
    let _serial = st.rotation_lock().lock().await;
    let key = st
        .key_store()
        .generate(repo::IMAGE, &format!("{}.pending", req.role))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "keyid": key.keyid(), "key": key.public_key() })),
    )
        .into_response())
}

/// An ECU replacement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcuReplacement {
    /// Hardware ID of the new unit (default: unchanged).
    #[serde(default)]
    pub hardware_id: Option<String>,
    /// The new unit's P-256 key (did:key, PEM or key object).
    pub public_key: Value,
    /// The new unit's X25519 key, hex.
    #[serde(default)]
    pub encryption_key: Option<String>,
}

/// PUT /admin/vehicles/{vin}/ecus/{serial}: replace an ECU (workshop swap).
/// Its pending assignment is cancelled and its counters start afresh; a new
/// Primary also resets the vehicle's manifest counter.
pub async fn replace_ecu(
    State(st): State<AppState>,
    Path((vin, serial)): Path<(String, String)>,
    JsonBody(req): JsonBody<EcuReplacement>,
) -> Result<Json<Value>> {
    let did = key_to_did(&req.public_key)?;
    if let Some(hw) = &req.hardware_id {
        check_id("hardware_id", hw)?;
    }
    let enc = match &req.encryption_key {
        Some(k) => Some(
            EcuEncryptionPublicKey::from_hex(k)
                .map_err(|e| Error::BadRequest(format!("encryption_key: {e}")))?
                .to_hex(),
        ),
        None => None,
    };
    let now = st.now();
    st.db().write(|tx| {
        let vehicle = tx
            .vehicle(&vin)?
            .ok_or_else(|| Error::NotFound(format!("vehicle {vin}")))?;
        let ecu = tx
            .ecu(&vin, &serial)?
            .ok_or_else(|| Error::NotFound(format!("ECU {serial} of vehicle {vin}")))?;
        let hw = req.hardware_id.clone().unwrap_or(ecu.hardware_id);
        tx.replace_ecu(&vin, &serial, &hw, &did, enc.as_deref(), now)?;
        tx.cancel_pending(&vin, &serial, now)?;
        if vehicle.primary_serial == serial {
            tx.reset_manifest_counter(&vin)?;
        }
        tx.event(Some(&vin), Some(&serial), "ecu-replaced", &did, now)?;
        director::regenerate(tx, &st.director_keys(), &vin, now)?;
        Ok(())
    })?;
    Ok(Json(
        json!({ "vin": vin, "ecu_serial": serial, "did": did }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_limit_above_the_maximum_is_refused_not_clamped() {
        assert_eq!(list_limit(None).ok(), Some(100));
        assert_eq!(list_limit(Some(0)).ok(), Some(0));
        assert_eq!(list_limit(Some(MAX_LIST_LIMIT)).ok(), Some(MAX_LIST_LIMIT));
        assert!(matches!(
            list_limit(Some(MAX_LIST_LIMIT + 1)),
            Err(Error::BadRequest(m)) if m.contains("maximum")
        ));
    }
}
