//! Repository metadata shared by the Image repository and the Director: roots,
//! online re-signing of snapshot and timestamp, and the Image repository's
//! publication of offline-signed targets.
//!
//! Metadata lives in the database (`metadata` table) under a repository name:
//! `image`, `director` (the Director root, shared by all vehicles) and
//! `director:<VIN>` (each vehicle's targets, snapshot and timestamp).

use crate::db::{ImageRow, Tx};
use crate::error::{Error, Result};
use crate::keystore::{sign_metadata, OnlineKey};
use secureev_uptane::builder::{meta_file, SNAPSHOT_LIFETIME_SECS, TIMESTAMP_LIFETIME_SECS};
use secureev_uptane::custom::{DisplayText, TargetCustom};
use secureev_uptane::metadata::{Common, RoleKeys, Root, Snapshot, Targets, TimestampMeta};
use secureev_uptane::trusted::TrustedRepository;
use secureev_uptane::verify::Envelope;
use secureev_uptane::Timestamp;
use serde_json::Map;
use std::collections::BTreeMap;

/// Repository name of the Image repository.
pub const IMAGE: &str = "image";
/// Repository name of the Director root.
pub const DIRECTOR: &str = "director";
/// Versions of snapshot (and Director targets) kept for clients in the
/// middle of an update cycle; older ones are deleted. Roots and Image targets
/// are kept forever.
pub const VERSIONS_KEPT: u64 = 3;
/// Longest accepted target name.
pub const MAX_TARGET_NAME: usize = 200;

/// Repository name of one vehicle's Director metadata.
pub fn director_repo(vin: &str) -> String {
    format!("director:{vin}")
}

/// Keys of the four top-level roles, with the threshold of each.
#[derive(Debug, Clone)]
pub struct RoleSet<'a> {
    /// `(role, keys, threshold)` for root, targets, snapshot and timestamp.
    pub roles: Vec<(&'a str, Vec<secureev_uptane::Key>, u32)>,
}

/// Root metadata for `roles` (each role's public keys and threshold).
pub fn root_metadata(version: u64, expires: Timestamp, roles: &RoleSet<'_>) -> Root {
    let mut keys = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (role, role_keys, threshold) in &roles.roles {
        let mut keyids = Vec::new();
        for k in role_keys {
            let id = k.keyid().unwrap_or_default();
            keys.insert(id.clone(), k.clone());
            keyids.push(id);
        }
        out.insert(
            (*role).to_owned(),
            RoleKeys {
                keyids,
                threshold: *threshold,
                unrecognized: Map::new(),
            },
        );
    }
    Root {
        common: Common::new("root", version, expires),
        consistent_snapshot: true,
        keys,
        roles: out,
        unrecognized: Map::new(),
    }
}

fn refs(keys: &[OnlineKey]) -> Vec<&OnlineKey> {
    keys.iter().collect()
}

/// Sign and store a new snapshot listing the newest targets of `repo`.
pub fn publish_snapshot(tx: &Tx<'_>, repo: &str, keys: &[OnlineKey], now: i64) -> Result<()> {
    let targets = tx
        .latest_meta(repo, "targets")?
        .ok_or_else(|| Error::Internal(format!("{repo} has no targets metadata")))?;
    let version = tx
        .latest_meta(repo, "snapshot")?
        .map_or(1, |m| m.version + 1);
    let expires = now + SNAPSHOT_LIFETIME_SECS;
    let snapshot = Snapshot {
        common: Common::new("snapshot", version, Timestamp::from_unix(expires)),
        meta: BTreeMap::from([(
            "targets.json".to_owned(),
            meta_file(targets.version, &targets.bytes),
        )]),
        unrecognized: Map::new(),
    };
    let bytes = sign_metadata(&snapshot, &refs(keys))?;
    tx.insert_meta(repo, "snapshot", version, expires, &bytes)?;
    tx.prune_meta(repo, "snapshot", VERSIONS_KEPT)
}

/// Sign and store a new timestamp listing the newest snapshot of `repo`.
pub fn publish_timestamp(tx: &Tx<'_>, repo: &str, keys: &[OnlineKey], now: i64) -> Result<()> {
    let snapshot = tx
        .latest_meta(repo, "snapshot")?
        .ok_or_else(|| Error::Internal(format!("{repo} has no snapshot metadata")))?;
    let version = tx
        .latest_meta(repo, "timestamp")?
        .map_or(1, |m| m.version + 1);
    let expires = now + TIMESTAMP_LIFETIME_SECS;
    let ts = TimestampMeta {
        common: Common::new("timestamp", version, Timestamp::from_unix(expires)),
        meta: BTreeMap::from([(
            "snapshot.json".to_owned(),
            meta_file(snapshot.version, &snapshot.bytes),
        )]),
        unrecognized: Map::new(),
    };
    let bytes = sign_metadata(&ts, &refs(keys))?;
    tx.insert_meta(repo, "timestamp", version, expires, &bytes)?;
    // Only the newest timestamp is ever served (`timestamp.json`).
    tx.prune_meta(repo, "timestamp", 1)
}

/// Whether metadata expiring at `expires` is within the second half of a
/// `lifetime` and should be re-signed now.
pub fn needs_refresh(expires: i64, lifetime: i64, now: i64) -> bool {
    expires - now < lifetime / 2
}

/// Re-sign snapshot and/or timestamp of `repo` when they near expiry.
/// Returns whether anything was signed.
pub fn refresh_online(
    tx: &Tx<'_>,
    repo: &str,
    snapshot_keys: &[OnlineKey],
    timestamp_keys: &[OnlineKey],
    now: i64,
) -> Result<bool> {
    let snap_stale = match tx.latest_meta(repo, "snapshot")? {
        Some(m) => needs_refresh(m.expires, SNAPSHOT_LIFETIME_SECS, now),
        None => true,
    };
    if snap_stale {
        publish_snapshot(tx, repo, snapshot_keys, now)?;
        publish_timestamp(tx, repo, timestamp_keys, now)?;
        return Ok(true);
    }
    let ts_stale = match tx.latest_meta(repo, "timestamp")? {
        Some(m) => needs_refresh(m.expires, TIMESTAMP_LIFETIME_SECS, now),
        None => true,
    };
    if ts_stale {
        publish_timestamp(tx, repo, timestamp_keys, now)?;
    }
    Ok(ts_stale)
}

/// A target name safe to serve and to store: relative, `/`-separated,
/// no empty, `.` or `..` segments, only `[A-Za-z0-9._+-]` in segments.
pub fn validate_target_name(name: &str) -> Result<()> {
    let bad = |why: &str| Error::BadRequest(format!("invalid target name {name:?}: {why}"));
    if name.is_empty() || name.len() > MAX_TARGET_NAME {
        return Err(bad("empty or too long"));
    }
    for seg in name.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(bad("empty, '.' or '..' path segment"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
        {
            return Err(bad("only A-Z a-z 0-9 . _ - + and / are allowed"));
        }
    }
    Ok(())
}

/// Encryption material the OEM tool hands over with an encrypted image.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedImage {
    /// Base64 of the 32-byte content key.
    pub content_key: String,
    /// The stream parameters (`EncryptionInfo` without wrapped keys).
    pub info: secureev_uptane::encryption::EncryptionInfo,
}

/// Publish offline-signed Image repository targets (`bytes`): verify them
/// against the trusted Image root, check the version and every target, then
/// store them, update the image records and re-sign snapshot and timestamp.
/// Runs inside the caller's transaction: nothing is stored on any error.
pub fn publish_image_targets(
    tx: &Tx<'_>,
    bytes: &[u8],
    encrypted: &BTreeMap<String, EncryptedImage>,
    kek: &crate::secrets::Kek,
    snapshot_keys: &[OnlineKey],
    timestamp_keys: &[OnlineKey],
    now: i64,
) -> Result<u64> {
    let root = tx
        .latest_meta(IMAGE, "root")?
        .ok_or_else(|| Error::Internal("image repository has no root".into()))?;
    let trusted = TrustedRepository::new(IMAGE, &root.bytes)?;
    let root = trusted.root();
    let role = root.role("targets")?;
    let envelope = Envelope::parse("targets", bytes)?;
    // TUF 1.0 §5.5.3: targets must be signed by a threshold of the keys the
    // trusted root lists for the role. Only the offline key holder can do it.
    let targets: secureev_uptane::Verified<Targets> =
        envelope.verify_as("targets", &root.keys, &role.keyids, role.threshold)?;
    let current = tx.latest_meta(IMAGE, "targets")?.map_or(0, |m| m.version);
    // TUF 1.0 §5.5.5: versions only go forward; publishing requires exactly
    // the next one so that two signers cannot silently race.
    if targets.common.version != current + 1 {
        return Err(Error::Conflict(format!(
            "targets version {} offered, next is {}",
            targets.common.version,
            current + 1
        )));
    }
    if targets.common.expires_at()?.unix() <= now {
        return Err(Error::Rejected(
            "targets metadata is already expired".into(),
        ));
    }
    if targets.delegations.is_some() {
        return Err(Error::Rejected(
            "delegations are not supported by this server yet".into(),
        ));
    }
    for name in encrypted.keys() {
        if !targets.targets.contains_key(name) {
            return Err(Error::BadRequest(format!(
                "encryption material for {name:?}, which the targets do not list"
            )));
        }
    }
    // Images with pending assignments must stay listed: vehicles match every
    // Director target against the Image repository (Uptane 2.1 §5.4.4.2 step 10).
    for a in tx.assignments(None, Some(crate::db::PENDING), None)? {
        if !targets.targets.contains_key(&a.image) {
            return Err(Error::Conflict(format!(
                "target {:?} has pending assignments (e.g. {} on {}); cancel them first",
                a.image, a.vin, a.ecu_serial
            )));
        }
    }
    let mut rows = Vec::new();
    for (name, t) in &targets.targets {
        validate_target_name(name)?;
        let sha256 = t
            .hashes
            .get("sha256")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| Error::Rejected(format!("target {name:?} has no valid sha256")))?
            .to_ascii_lowercase();
        match tx.blob_length(&sha256)? {
            Some(len) if len == t.length => {}
            Some(len) => {
                return Err(Error::Rejected(format!(
                    "target {name:?} says {} bytes, the uploaded blob has {len}",
                    t.length
                )))
            }
            None => {
                return Err(Error::Rejected(format!(
                    "target {name:?}: no blob {sha256}; upload it first"
                )))
            }
        }
        let custom = TargetCustom::of(name, t)?;
        if custom.hardware_ids.is_empty() {
            return Err(Error::Rejected(format!(
                "target {name:?} lists no hardwareIds"
            )));
        }
        // Display texts reach a driver's screen: a string within bounds,
        // without control or bidirectional formatting characters (the
        // vehicle sanitises them again; the publisher hears it here).
        for kind in [DisplayText::Version, DisplayText::ReleaseNotes] {
            match custom.unrecognized.get(kind.key()) {
                None => {}
                Some(serde_json::Value::String(text)) => kind
                    .check(text)
                    .map_err(|e| Error::Rejected(format!("target {name:?}: {e}")))?,
                Some(_) => {
                    return Err(Error::Rejected(format!(
                        "target {name:?}: custom.{} is not a string",
                        kind.key()
                    )))
                }
            }
        }
        let existing = tx.image(name)?;
        let (encryption, content_key) = match encrypted.get(name) {
            Some(e) => {
                base64_decode_32(&e.content_key).ok_or_else(|| {
                    Error::BadRequest(format!("content key of {name:?} is not base64 of 32 bytes"))
                })?;
                e.info.validate(name)?;
                let mut info = e.info.clone();
                info.keys.clear();
                let v = serde_json::to_value(&info).map_err(|e| Error::Internal(e.to_string()))?;
                // Stored sealed under the KEK, bound to the image name.
                (Some(v), Some(kek.seal(name, &e.content_key)?))
            }
            // An unchanged entry keeps its encryption material.
            None => match &existing {
                Some(old) if old.sha256 == sha256 => {
                    (old.encryption.clone(), old.content_key.clone())
                }
                _ => (None, None),
            },
        };
        let version = custom.version().map(str::to_owned);
        rows.push(ImageRow {
            name: name.clone(),
            sha512: t.hashes.get("sha512").map(|h| h.to_ascii_lowercase()),
            sha256,
            length: t.length,
            hardware_ids: custom.hardware_ids.clone(),
            release_counter: custom.release_counter,
            version,
            encrypted: content_key.is_some(),
            encryption,
            content_key,
            targets_version: match &existing {
                Some(old)
                    if old.sha256
                        == t.hashes
                            .get("sha256")
                            .map(|h| h.to_ascii_lowercase())
                            .unwrap_or_default() =>
                {
                    old.targets_version
                }
                _ => targets.common.version,
            },
        });
    }
    let expires = targets.common.expires_at()?.unix();
    tx.insert_meta(IMAGE, "targets", targets.common.version, expires, bytes)?;
    for row in &rows {
        tx.upsert_image(row, now)?;
    }
    publish_snapshot(tx, IMAGE, snapshot_keys, now)?;
    publish_timestamp(tx, IMAGE, timestamp_keys, now)?;
    tx.event(
        None,
        None,
        "image-targets",
        &format!(
            "image targets version {} published ({} targets)",
            targets.common.version,
            rows.len()
        ),
        now,
    )?;
    Ok(targets.common.version)
}

/// How a key rotation changes a role's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationMode {
    /// The new key replaces every key of the role (compromise, routine rotation).
    #[default]
    Replace,
    /// The new key joins the role (raising the number of keys for a threshold).
    Add,
}

/// The `signed` value of the next root: `role` gets `new_keys` (replacing or
/// joining its keys), optionally a new threshold, version N+1 and a fresh
/// expiry. Keys no role uses any more are dropped.
pub fn next_root(
    current: &[u8],
    role: &str,
    new_keys: &[secureev_uptane::Key],
    mode: RotationMode,
    threshold: Option<u32>,
    now: i64,
) -> Result<serde_json::Value> {
    if !secureev_uptane::builder::TOP_LEVEL_ROLES.contains(&role) {
        return Err(Error::BadRequest(format!("unknown role {role:?}")));
    }
    let env: serde_json::Value =
        serde_json::from_slice(current).map_err(|e| Error::Internal(e.to_string()))?;
    let mut signed = env["signed"].clone();
    let version = signed["version"]
        .as_u64()
        .ok_or_else(|| Error::Internal("root has no version".into()))?;
    let mut keyids: Vec<String> = match mode {
        RotationMode::Replace => Vec::new(),
        RotationMode::Add => serde_json::from_value(signed["roles"][role]["keyids"].clone())
            .map_err(|e| Error::Internal(e.to_string()))?,
    };
    for k in new_keys {
        let id = k.keyid()?;
        signed["keys"][&id] =
            serde_json::to_value(k).map_err(|e| Error::Internal(e.to_string()))?;
        if !keyids.contains(&id) {
            keyids.push(id);
        }
    }
    let old_threshold = signed["roles"][role]["threshold"].as_u64().unwrap_or(1);
    let threshold = match threshold {
        Some(t) => u64::from(t),
        None => old_threshold.min(keyids.len() as u64),
    };
    if threshold == 0 || threshold > keyids.len() as u64 {
        return Err(Error::BadRequest(format!(
            "threshold {threshold} for {role} must be 1..={}",
            keyids.len()
        )));
    }
    signed["roles"][role]["keyids"] = serde_json::json!(keyids);
    signed["roles"][role]["threshold"] = serde_json::json!(threshold);
    // Drop keys no role lists any more.
    let used: std::collections::BTreeSet<String> = signed["roles"]
        .as_object()
        .map(|roles| {
            roles
                .values()
                .filter_map(|r| r["keyids"].as_array())
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Some(keys) = signed["keys"].as_object_mut() {
        keys.retain(|id, _| used.contains(id));
    }
    signed["version"] = serde_json::json!(version + 1);
    signed["expires"] = serde_json::json!(Timestamp::from_unix(
        now + secureev_uptane::builder::ROOT_LIFETIME_SECS
    )
    .to_string());
    Ok(signed)
}

/// The Image repository's online signing keys.
#[derive(Debug, Clone)]
pub struct ImageOnlineKeys {
    /// Snapshot keys.
    pub snapshot: Vec<OnlineKey>,
    /// Timestamp keys.
    pub timestamp: Vec<OnlineKey>,
}

/// Accept Image root version N+1 (signed offline by a threshold of the old
/// and of the new root keys) and, optionally, targets signed with rotated
/// targets keys, in the caller's transaction. `candidates` are the online
/// keys the server holds (active and pending); the ones the new root lists
/// are returned and sign from now on. When the snapshot or timestamp keys
/// changed, both are re-signed with the new keys at once.
pub fn accept_image_root(
    tx: &Tx<'_>,
    root_bytes: &[u8],
    targets: Option<&[u8]>,
    candidates: &ImageOnlineKeys,
    kek: &crate::secrets::Kek,
    now: i64,
) -> Result<(u64, ImageOnlineKeys)> {
    let current = tx
        .latest_meta(IMAGE, "root")?
        .ok_or_else(|| Error::Internal("image repository has no root".into()))?;
    let old_root = TrustedRepository::new(IMAGE, &current.bytes)?
        .root()
        .value()
        .clone();
    // Uptane 2.1 §5.4.4.3: root N+1 must be signed by a threshold of root N's
    // keys and of its own, with version exactly N+1. Vehicles will check the
    // same; refusing here keeps a bad root from ever being served.
    let trusted = secureev_uptane::client::check_next_root(IMAGE, &current.bytes, root_bytes)?;
    let root = trusted.root();
    // The server must still be able to sign what it signs online.
    let choose = |role: &str, keys: &[OnlineKey]| -> Result<Vec<OnlineKey>> {
        let r = root.role(role)?;
        let chosen: Vec<OnlineKey> = keys
            .iter()
            .filter(|k| r.keyids.iter().any(|id| id == k.keyid()))
            .cloned()
            .collect();
        if (chosen.len() as u64) < u64::from(r.threshold) {
            return Err(Error::Rejected(format!(
                "the new root's {role} role needs keys this server does not hold; make them with POST /admin/image/online-keys"
            )));
        }
        Ok(chosen)
    };
    let chosen = ImageOnlineKeys {
        snapshot: choose("snapshot", &candidates.snapshot)?,
        timestamp: choose("timestamp", &candidates.timestamp)?,
    };
    let changed = |role: &str| {
        let a = old_root.roles.get(role).map(|r| (&r.keyids, r.threshold));
        let b = root.roles.get(role).map(|r| (&r.keyids, r.threshold));
        a != b
    };
    let version = root.common.version;
    tx.insert_meta(
        IMAGE,
        "root",
        version,
        root.common.expires_at()?.unix(),
        root_bytes,
    )?;
    match targets {
        Some(t) => {
            publish_image_targets(
                tx,
                t,
                &BTreeMap::new(),
                kek,
                &chosen.snapshot,
                &chosen.timestamp,
                now,
            )?;
        }
        None => {
            // The current targets must still verify under the new root.
            let cur = tx
                .latest_meta(IMAGE, "targets")?
                .ok_or_else(|| Error::Internal("no image targets".into()))?;
            let r = root.role("targets")?;
            Envelope::parse("targets", &cur.bytes)?
                .verify_as::<Targets>("targets", &root.keys, &r.keyids, r.threshold)
                .map_err(|_| {
                    Error::Rejected(
                        "the current targets do not verify under the new root; send re-signed targets with it".into(),
                    )
                })?;
            if changed("snapshot") {
                publish_snapshot(tx, IMAGE, &chosen.snapshot, now)?;
                publish_timestamp(tx, IMAGE, &chosen.timestamp, now)?;
            } else if changed("timestamp") {
                publish_timestamp(tx, IMAGE, &chosen.timestamp, now)?;
            }
        }
    }
    tx.event(
        None,
        None,
        "image-root",
        &format!("image root version {version} accepted"),
        now,
    )?;
    Ok((version, chosen))
}

/// Decode base64 of exactly 32 bytes.
pub fn base64_decode_32(s: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let v = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_refuse_traversal() {
        for bad in [
            "", "../x", "a/../b", "/abs", "a//b", "a\\b", "a/./b", "sp ace", "a/",
        ] {
            assert!(validate_target_name(bad).is_err(), "{bad:?}");
        }
        for good in ["fw.bin", "brake/fw-1.2.bin", "a+b_c"] {
            validate_target_name(good).unwrap();
        }
    }

    #[test]
    fn refresh_window_is_half_the_lifetime() {
        assert!(!needs_refresh(1000, 1000, 0));
        assert!(!needs_refresh(1000, 1000, 500));
        assert!(needs_refresh(1000, 1000, 501));
    }
}
