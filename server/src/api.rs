//! Vehicle-facing routes: the Image repository, each vehicle's Director
//! metadata, manifest intake and the registry's DID documents.

use crate::auth::VehicleIdentity;
use crate::db;
use crate::director;
use crate::error::{Error, Result};
use crate::extract::Path;
use crate::repo::{self, director_repo, IMAGE};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use secureev_uptane::builder::{SNAPSHOT_LIFETIME_SECS, TIMESTAMP_LIFETIME_SECS};
use secureev_uptane::did;
use secureev_uptane::manifest::verify_manifest;
use secureev_uptane::PublicKey;
use serde_json::json;
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Manifests kept per vehicle (raw, as received); older ones are deleted.
pub const MANIFESTS_KEPT: u32 = 50;
/// History events kept per vehicle.
pub const EVENTS_KEPT: u32 = 1000;

/// Which metadata file a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetaName {
    Timestamp,
    Versioned(&'static str, u64),
}

fn parse_meta_name(file: &str) -> Result<MetaName> {
    if file == "timestamp.json" {
        return Ok(MetaName::Timestamp);
    }
    let (ver, role) = file
        .split_once('.')
        .ok_or_else(|| Error::NotFound(format!("no metadata file {file:?}")))?;
    let role = match role {
        "root.json" => "root",
        "snapshot.json" => "snapshot",
        "targets.json" => "targets",
        _ => return Err(Error::NotFound(format!("no metadata file {file:?}"))),
    };
    if ver.is_empty() || ver.len() > 19 || !ver.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::NotFound(format!("no metadata file {file:?}")));
    }
    let v = ver
        .parse()
        .map_err(|_| Error::NotFound(format!("no metadata file {file:?}")))?;
    Ok(MetaName::Versioned(role, v))
}

fn json_bytes(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

/// GET /image/{file}: Image repository metadata.
pub async fn image_meta(State(st): State<AppState>, Path(file): Path<String>) -> Result<Response> {
    let name = parse_meta_name(&file)?;
    let now = st.now();
    let bytes = match name {
        MetaName::Timestamp => {
            // Fast path: a read. Only a stale snapshot or timestamp takes the
            // write lock to re-sign.
            let fresh = st.db().read(|tx| {
                let ts = tx.latest_meta(IMAGE, "timestamp")?;
                let sn = tx.latest_meta(IMAGE, "snapshot")?;
                Ok(match (ts, sn) {
                    (Some(ts), Some(sn))
                        if !repo::needs_refresh(ts.expires, TIMESTAMP_LIFETIME_SECS, now)
                            && !repo::needs_refresh(sn.expires, SNAPSHOT_LIFETIME_SECS, now) =>
                    {
                        Some(ts.bytes)
                    }
                    _ => None,
                })
            })?;
            match fresh {
                Some(b) => Some(b),
                None => st.db().write(|tx| {
                    let keys = st.image_online();
                    repo::refresh_online(tx, IMAGE, &keys.snapshot, &keys.timestamp, now)?;
                    Ok(tx.latest_meta(IMAGE, "timestamp")?.map(|m| m.bytes))
                })?,
            }
        }
        MetaName::Versioned(role, v) => st.db().read(|tx| tx.meta_version(IMAGE, role, v))?,
    };
    bytes
        .map(json_bytes)
        .ok_or_else(|| Error::NotFound(format!("no image metadata {file:?}")))
}

fn same_vehicle(who: &VehicleIdentity, vin: &str) -> Result<()> {
    // A vehicle may only read and write its own Director resources.
    if who.vin != vin {
        return Err(Error::Forbidden(format!(
            "vehicle {} may not access another vehicle's director resources",
            who.vin
        )));
    }
    Ok(())
}

/// GET /director/{vin}/{file}: a vehicle's Director metadata.
pub async fn director_meta(
    State(st): State<AppState>,
    Extension(who): Extension<VehicleIdentity>,
    Path((vin, file)): Path<(String, String)>,
) -> Result<Response> {
    same_vehicle(&who, &vin)?;
    let name = parse_meta_name(&file)?;
    let now = st.now();
    let repo_name = director_repo(&vin);
    let bytes = match name {
        MetaName::Versioned("root", v) => st
            .db()
            .read(|tx| tx.meta_version(repo::DIRECTOR, "root", v))?,
        MetaName::Timestamp => {
            let fresh = st
                .db()
                .read(|tx| director::fresh_timestamp(tx, &vin, now))?;
            match fresh {
                Some(b) => Some(b),
                None => st.db().write(|tx| {
                    director::refresh(tx, &st.director_keys(), &vin, now)?;
                    Ok(tx.latest_meta(&repo_name, "timestamp")?.map(|m| m.bytes))
                })?,
            }
        }
        MetaName::Versioned(role, v) => st.db().read(|tx| tx.meta_version(&repo_name, role, v))?,
    };
    bytes
        .map(json_bytes)
        .ok_or_else(|| Error::NotFound(format!("no director metadata {file:?} for {vin}")))
}

/// PUT /director/{vin}/manifest: the vehicle version manifest.
pub async fn put_manifest(
    State(st): State<AppState>,
    Extension(who): Extension<VehicleIdentity>,
    Path(vin): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    same_vehicle(&who, &vin)?;
    require_json(&headers)?;
    let now = st.now();
    let (vehicle, ecus) = st.db().read(|tx| {
        let v = tx
            .vehicle(&vin)?
            .ok_or_else(|| Error::NotFound(format!("vehicle {vin}")))?;
        Ok((v, tx.ecus(&vin)?))
    })?;
    let mut keys: BTreeMap<String, PublicKey> = BTreeMap::new();
    for e in &ecus {
        keys.insert(e.serial.clone(), st.resolve_did(&e.did)?);
    }
    let primary_key = keys
        .get(&vehicle.primary_serial)
        .cloned()
        .ok_or_else(|| Error::Internal("primary ECU not registered".into()))?;
    // Uptane 2.1 §5.4.2.1: the manifest is signed by the Primary, each report by
    // its ECU; only registered keys count and one bad report refuses it all.
    let verified = verify_manifest(&body, &primary_key, |serial| keys.get(serial).cloned())
        .map_err(|e| Error::Rejected(e.to_string()))?;
    let manifest = verified.manifest();
    if manifest.vin != vin {
        return Err(Error::Rejected(format!(
            "manifest is for vehicle {:?}, not {vin}",
            manifest.vin
        )));
    }
    if manifest.primary_ecu_serial != vehicle.primary_serial {
        return Err(Error::Rejected(format!(
            "manifest names primary {:?}, registered primary is {}",
            manifest.primary_ecu_serial, vehicle.primary_serial
        )));
    }
    let result = st.db().write(|tx| {
        // Re-read counters inside the write transaction: two concurrent
        // manifests cannot both pass the replay check.
        let prev_manifest = tx.vehicle(&vin)?.and_then(|v| v.manifest_counter);
        let ecus = tx.ecus(&vin)?;
        let prev: BTreeMap<String, Option<u64>> = ecus
            .iter()
            .map(|e| (e.serial.clone(), e.report_counter))
            .collect();
        verified
            .check_counters(prev_manifest, |s| prev.get(s).copied().flatten())
            .map_err(|e| Error::Replay(e.to_string()))?;
        tx.set_manifest_counter(&vin, manifest.report_counter)?;
        let manifest_id = tx.insert_manifest(&vin, manifest.report_counter, &body, now)?;
        tx.touch_vehicle(&vin, now)?;
        let pending = tx.pending_assignments(&vin)?;
        let mut completed = Vec::new();
        let mut reported = crate::rollout::Reported::default();
        for (serial, report) in verified.reports() {
            let installed = report.installed_image.as_ref();
            let sha = installed.and_then(|i| {
                i.fileinfo
                    .hashes
                    .get("sha256")
                    .map(|h| h.to_ascii_lowercase())
            });
            tx.update_ecu_report(
                &vin,
                serial,
                report.report_counter,
                installed.map(|i| {
                    (
                        i.filepath.as_str(),
                        i.fileinfo.length,
                        sha.as_deref(),
                        i.release_counter(),
                    )
                }),
                now,
            )?;
            for attack in report.attacks() {
                reported.attacked.insert(serial.clone());
                tx.event(Some(&vin), Some(serial), "attack", attack, now)?;
                st.audit(
                    tx,
                    &format!("vehicle:{vin}"),
                    "vehicle-security-event",
                    json!({ "ecu": serial, "attack": attack, "manifest_counter": manifest.report_counter }),
                )?;
            }
            if let Some(r) = &report.installation_result {
                if !r.success {
                    reported.failed.insert(serial.clone());
                }
                tx.event(
                    Some(&vin),
                    Some(serial),
                    if r.success {
                        "install-ok"
                    } else {
                        "install-failed"
                    },
                    &format!("{}: {}", r.code, r.message),
                    now,
                )?;
            }
            // An assignment is complete when the ECU reports the assigned image
            // installed: same name, and the hash of the served or of the
            // decrypted bytes.
            for a in pending.iter().filter(|a| &a.ecu_serial == serial) {
                let Some(i) = installed else { continue };
                if i.filepath != a.image {
                    continue;
                }
                let Some(image) = tx.image(&a.image)? else {
                    continue;
                };
                let plain = image
                    .encryption
                    .as_ref()
                    .and_then(|e| e.get("plaintextHashes"))
                    .and_then(|h| h.get("sha256"))
                    .and_then(|h| h.as_str())
                    .map(str::to_ascii_lowercase);
                let matches = sha.as_deref() == Some(image.sha256.as_str())
                    || (plain.is_some() && sha == plain);
                if matches {
                    tx.set_assignment_status(a.id, db::COMPLETED, now)?;
                    tx.event(Some(&vin), Some(serial), "completed", &a.image, now)?;
                    completed.push(a.id);
                }
            }
        }
        tx.event(
            Some(&vin),
            None,
            "manifest",
            &format!(
                "manifest {manifest_id}, counter {}",
                manifest.report_counter
            ),
            now,
        )?;
        tx.prune_vehicle_history(&vin, MANIFESTS_KEPT, EVENTS_KEPT)?;
        // Staged rollouts: this manifest's outcomes, and what they start or stop.
        reported.completed.clone_from(&completed);
        crate::rollout::on_manifest(tx, &st, &vin, &reported, now)?;
        if !completed.is_empty() {
            // The vehicle reporting gets the new metadata at its next
            // check-in anyway: no nudge for it.
            director::resign(tx, &st.director_keys(), &vin, now)?;
        }
        Ok(completed)
    })?;
    Ok((
        StatusCode::OK,
        Json(json!({ "accepted": true, "completed_assignments": result })),
    )
        .into_response())
}

/// Refuse a body whose `Content-Type` is not JSON.
pub fn require_json(headers: &HeaderMap) -> Result<()> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(Error::UnsupportedMediaType(format!(
            "expected application/json, got {ct:?}"
        )));
    }
    Ok(())
}

/// GET /registry/{vin}/{serial}/did.json: the DID document of one of the
/// requesting vehicle's own ECU keys (signed request; another vehicle's is
/// 403, so the registry cannot be enumerated).
pub async fn did_document(
    State(st): State<AppState>,
    Extension(who): Extension<VehicleIdentity>,
    Path((vin, serial)): Path<(String, String)>,
) -> Result<Response> {
    same_vehicle(&who, &vin)?;
    let ecu = st
        .db()
        .read(|tx| tx.ecu(&vin, &serial))?
        .ok_or_else(|| Error::NotFound(format!("ECU {serial} of {vin}")))?;
    let doc = did::document(&ecu.did)?;
    Ok(Json(doc).into_response())
}

/// A parsed single `Range: bytes=...` header.
fn parse_range(value: &str, length: u64) -> Result<Option<(u64, u64)>> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multipart ranges are not served; the whole file is (RFC 9110 allows it).
        return Ok(None);
    }
    let (a, b) = spec
        .split_once('-')
        .ok_or_else(|| Error::BadRequest("malformed Range".into()))?;
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| Error::BadRequest("malformed Range".into()))
    };
    let (start, end) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (false, true) => (num(a)?, length.saturating_sub(1)),
        (false, false) => (num(a)?, num(b)?.min(length.saturating_sub(1))),
        (true, false) => {
            let n = num(b)?;
            if n == 0 {
                return Err(Error::RangeNotSatisfiable { length });
            }
            (length.saturating_sub(n), length.saturating_sub(1))
        }
        (true, true) => return Err(Error::BadRequest("malformed Range".into())),
    };
    if length == 0 || start >= length || start > end {
        return Err(Error::RangeNotSatisfiable { length });
    }
    Ok(Some((start, end)))
}

/// GET /image/targets/{*path}: a target by its hash-prefixed name
/// (`<dir>/<sha256>.<basename>`), with HTTP Range support.
pub async fn image_target(
    State(st): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let (dir, file) = match path.rsplit_once('/') {
        Some((d, f)) => (Some(d), f),
        None => (None, path.as_str()),
    };
    let (hash, base) = file
        .split_once('.')
        .ok_or_else(|| Error::NotFound("targets are served under <hash>.<name>".into()))?;
    let name = match dir {
        Some(d) => format!("{d}/{base}"),
        None => base.to_owned(),
    };
    // The name is checked like any published one: a traversal attempt never
    // reaches a lookup, let alone the file system. Files are only ever opened
    // by the hash the database holds.
    repo::validate_target_name(&name)?;
    let image = st
        .db()
        .read(|tx| tx.image(&name))?
        .ok_or_else(|| Error::NotFound(format!("no target {name:?}")))?;
    let hash = hash.to_ascii_lowercase();
    if hash != image.sha256 && Some(&hash) != image.sha512.as_ref() {
        return Err(Error::NotFound(format!(
            "no target {name:?} with hash {hash}"
        )));
    }
    let blob = st.blob_path(&image.sha256)?;
    let length = image.length;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) => parse_range(v, length)?,
        None => None,
    };
    let (start, end) = range.unwrap_or((0, length.saturating_sub(1)));
    let count = if length == 0 { 0 } else { end - start + 1 };
    let mut file = tokio::fs::File::open(&blob)
        .await
        .map_err(|e| Error::io(format!("opening blob {}", image.sha256), e))?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| Error::io("seeking blob", e))?;
    let stream = futures_util::stream::unfold((file, count), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left.min(64 * 1024)).unwrap_or(64 * 1024);
        let mut buf = vec![0u8; want];
        match f.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "blob truncated",
                )),
                (f, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if range.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{length}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100).unwrap(), Some((50, 99)));
        assert!(matches!(
            parse_range("bytes=100-", 100),
            Err(Error::RangeNotSatisfiable { length: 100 })
        ));
        assert_eq!(parse_range("items=0-1", 100).unwrap(), None);
        assert!(parse_range("bytes=x-1", 100).is_err());
    }

    #[test]
    fn meta_names() {
        assert_eq!(
            parse_meta_name("timestamp.json").unwrap(),
            MetaName::Timestamp
        );
        assert_eq!(
            parse_meta_name("3.targets.json").unwrap(),
            MetaName::Versioned("targets", 3)
        );
        assert!(parse_meta_name("targets.json").is_err());
        assert!(parse_meta_name("../1.root.json").is_err());
    }
}
