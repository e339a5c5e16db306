//! The Director: per-vehicle targets, snapshot and timestamp, signed with
//! online keys, and the shared Director root.
//!
//! A vehicle's Director targets list one entry per assigned image, naming each
//! ECU it is for (`custom.ecuIdentifiers`), the release counter and, for an
//! encrypted image, the content key wrapped for each of those ECUs' X25519
//! keys (`custom.encryption`). `signed.custom.vin` names the vehicle, so the
//! metadata cannot be replayed to another vehicle (Uptane 2.1 §5.2.3.1). The
//! metadata is regenerated when the vehicle's assignments change and, lazily on
//! the vehicle's next request, when a role nears expiry.

use crate::db::Tx;
use crate::error::{Error, Result};
use crate::keystore::{sign_metadata, KeyStore, OnlineKey};
use crate::repo::{self, director_repo, needs_refresh};
use secureev_uptane::builder::TARGETS_LIFETIME_SECS;
use secureev_uptane::custom::{EcuIdentifier, TargetCustom};
use secureev_uptane::encryption::{ContentKey, EcuEncryptionPublicKey, EncryptionInfo};
use secureev_uptane::metadata::{Common, TargetFile, Targets};
use secureev_uptane::Timestamp;
use serde_json::{json, Map};
use std::collections::BTreeMap;

/// Lifetime of Director targets: shorter than the Image repository's, since the
/// Director re-signs online.
pub const DIRECTOR_TARGETS_LIFETIME_SECS: i64 = 30 * 86_400;

/// The Director's signing keys (all online).
#[derive(Debug, Clone)]
pub struct DirectorKeys {
    /// Root keys (used to sign the shared root at `init` and on rotation).
    pub root: Vec<OnlineKey>,
    /// Targets keys.
    pub targets: Vec<OnlineKey>,
    /// Snapshot keys.
    pub snapshot: Vec<OnlineKey>,
    /// Timestamp keys.
    pub timestamp: Vec<OnlineKey>,
    /// The key-encryption key sealing image content keys at rest; the
    /// Director unseals a content key only to wrap it for an ECU.
    pub kek: crate::secrets::Kek,
}

impl DirectorKeys {
    /// Fresh in-memory keys, one per role (tests).
    pub fn generate() -> Self {
        DirectorKeys {
            root: vec![OnlineKey::generate_p256()],
            targets: vec![OnlineKey::generate_p256()],
            snapshot: vec![OnlineKey::generate_p256()],
            timestamp: vec![OnlineKey::generate_p256()],
            kek: crate::secrets::Kek::generate(),
        }
    }

    /// Fresh keys, one per role, made in `store` (`init`).
    pub fn create(store: &KeyStore) -> Result<Self> {
        let make = |role| store.generate(repo::DIRECTOR, role).map(|k| vec![k]);
        Ok(DirectorKeys {
            root: make("root")?,
            targets: make("targets")?,
            snapshot: make("snapshot")?,
            timestamp: make("timestamp")?,
            kek: store.kek()?,
        })
    }

    /// Load from the key store (`keys/director/<role>/` or the token).
    pub fn load(store: &KeyStore) -> Result<Self> {
        Ok(DirectorKeys {
            root: store.load(repo::DIRECTOR, "root")?,
            targets: store.load(repo::DIRECTOR, "targets")?,
            snapshot: store.load(repo::DIRECTOR, "snapshot")?,
            timestamp: store.load(repo::DIRECTOR, "timestamp")?,
            kek: store.kek()?,
        })
    }

    /// The keys of `role`.
    pub fn role(&self, role: &str) -> Option<&[OnlineKey]> {
        match role {
            "root" => Some(&self.root),
            "targets" => Some(&self.targets),
            "snapshot" => Some(&self.snapshot),
            "timestamp" => Some(&self.timestamp),
            _ => None,
        }
    }

    /// The shared Director root, version `version`, signed by the root keys.
    pub fn root_bytes(&self, version: u64, now: i64) -> Result<Vec<u8>> {
        let roles = repo::RoleSet {
            roles: vec![
                ("root", crate::keystore::public_keys(&self.root), 1),
                ("targets", crate::keystore::public_keys(&self.targets), 1),
                ("snapshot", crate::keystore::public_keys(&self.snapshot), 1),
                (
                    "timestamp",
                    crate::keystore::public_keys(&self.timestamp),
                    1,
                ),
            ],
        };
        let root = repo::root_metadata(
            version,
            Timestamp::from_unix(now + secureev_uptane::builder::ROOT_LIFETIME_SECS),
            &roles,
        );
        let signers: Vec<&OnlineKey> = self.root.iter().collect();
        sign_metadata(&root, &signers)
    }
}

/// Build, sign and store new Director targets, snapshot and timestamp for
/// `vin` from its pending assignments, and nudge the vehicle after the
/// commit (`[push]`): what it is offered changed.
pub fn regenerate(tx: &Tx<'_>, keys: &DirectorKeys, vin: &str, now: i64) -> Result<u64> {
    let v = resign(tx, keys, vin, now)?;
    tx.director_changed(vin);
    Ok(v)
}

/// [`regenerate`] without the nudge: re-signing what nears expiry or after a
/// key rotation (nothing new to fetch), or for the vehicle reporting right now.
pub fn resign(tx: &Tx<'_>, keys: &DirectorKeys, vin: &str, now: i64) -> Result<u64> {
    let repo_name = director_repo(vin);
    let version = tx
        .latest_meta(&repo_name, "targets")?
        .map_or(1, |m| m.version + 1);
    let expires = now + DIRECTOR_TARGETS_LIFETIME_SECS.min(TARGETS_LIFETIME_SECS);
    let mut entries: BTreeMap<String, (TargetFile, TargetCustom, Option<EncryptionInfo>)> =
        BTreeMap::new();
    for a in tx.pending_assignments(vin)? {
        let image = tx
            .image(&a.image)?
            .ok_or_else(|| Error::Internal(format!("assigned image {} missing", a.image)))?;
        let ecu = tx
            .ecu(vin, &a.ecu_serial)?
            .ok_or_else(|| Error::Internal(format!("assigned ECU {} missing", a.ecu_serial)))?;
        let entry = entries.entry(image.name.clone()).or_insert_with(|| {
            let mut hashes = BTreeMap::from([("sha256".to_owned(), image.sha256.clone())]);
            if let Some(h) = &image.sha512 {
                hashes.insert("sha512".to_owned(), h.clone());
            }
            let custom = TargetCustom {
                release_counter: image.release_counter,
                ..TargetCustom::default()
            };
            let info = image
                .encryption
                .as_ref()
                .and_then(|v| serde_json::from_value::<EncryptionInfo>(v.clone()).ok());
            (
                TargetFile {
                    length: image.length,
                    hashes,
                    custom: None,
                    unrecognized: Map::new(),
                },
                custom,
                info,
            )
        });
        entry.1.ecu_identifiers.insert(
            ecu.serial.clone(),
            EcuIdentifier {
                hardware_id: ecu.hardware_id.clone(),
                unrecognized: Map::new(),
            },
        );
        if let Some(info) = entry.2.as_mut() {
            // Uptane 2.1 §5.2.3.1.1: for an encrypted image, "a symmetric
            // encryption key encrypted by the ECU's asymmetric key" goes into
            // the Director's metadata, one per ECU.
            let content_key = image
                .content_key
                .as_deref()
                .and_then(|sealed| keys.kek.unseal(&image.name, sealed).ok())
                .as_deref()
                .and_then(repo::base64_decode_32)
                .ok_or_else(|| Error::Internal(format!("content key of {} missing", image.name)))?;
            let ecu_key = ecu.encryption_key.as_deref().ok_or_else(|| {
                Error::Conflict(format!(
                    "ECU {} has no encryption key for encrypted image {}",
                    ecu.serial, image.name
                ))
            })?;
            let ecu_key = EcuEncryptionPublicKey::from_hex(ecu_key)?;
            info.wrap_key_for(
                &image.name,
                &ecu.serial,
                &ContentKey::from_bytes(&content_key),
                &ecu_key,
            )?;
        }
    }
    let targets: BTreeMap<String, TargetFile> = entries
        .into_iter()
        .map(|(name, (mut t, mut custom, info))| {
            if let Some(info) = info {
                custom.encryption = serde_json::to_value(info).ok();
            }
            t.custom = Some(custom.to_value());
            (name, t)
        })
        .collect();
    let mut unrecognized = Map::new();
    // Uptane 2.1 §5.2.3.1: the vehicle identifier, always (also when no image
    // is assigned), so Director targets cannot be replayed to another vehicle.
    unrecognized.insert("custom".into(), json!({ "vin": vin }));
    let meta = Targets {
        common: Common::new("targets", version, Timestamp::from_unix(expires)),
        targets,
        delegations: None,
        unrecognized,
    };
    let signers: Vec<&OnlineKey> = keys.targets.iter().collect();
    let bytes = sign_metadata(&meta, &signers)?;
    tx.insert_meta(&repo_name, "targets", version, expires, &bytes)?;
    tx.prune_meta(&repo_name, "targets", repo::VERSIONS_KEPT)?;
    repo::publish_snapshot(tx, &repo_name, &keys.snapshot, now)?;
    repo::publish_timestamp(tx, &repo_name, &keys.timestamp, now)?;
    Ok(version)
}

/// Re-sign what nears expiry for `vin` (targets, then snapshot and timestamp).
pub fn refresh(tx: &Tx<'_>, keys: &DirectorKeys, vin: &str, now: i64) -> Result<()> {
    let repo_name = director_repo(vin);
    match tx.latest_meta(&repo_name, "targets")? {
        Some(m) if !needs_refresh(m.expires, DIRECTOR_TARGETS_LIFETIME_SECS, now) => {
            repo::refresh_online(tx, &repo_name, &keys.snapshot, &keys.timestamp, now)?;
        }
        _ => {
            resign(tx, keys, vin, now)?;
        }
    }
    Ok(())
}

/// The vehicle's current timestamp when no role needs re-signing at `now`
/// (the read-only fast path of a check-in); `None` when [`refresh`] must run.
pub fn fresh_timestamp(tx: &Tx<'_>, vin: &str, now: i64) -> Result<Option<Vec<u8>>> {
    let repo_name = director_repo(vin);
    let (Some(tg), Some(sn), Some(ts)) = (
        tx.latest_meta(&repo_name, "targets")?,
        tx.latest_meta(&repo_name, "snapshot")?,
        tx.latest_meta(&repo_name, "timestamp")?,
    ) else {
        return Ok(None);
    };
    let stale = needs_refresh(tg.expires, DIRECTOR_TARGETS_LIFETIME_SECS, now)
        || needs_refresh(
            sn.expires,
            secureev_uptane::builder::SNAPSHOT_LIFETIME_SECS,
            now,
        )
        || needs_refresh(
            ts.expires,
            secureev_uptane::builder::TIMESTAMP_LIFETIME_SECS,
            now,
        );
    Ok((!stale).then_some(ts.bytes))
}

/// Rotate a Director role's keys: a fresh key replaces or joins the role, a
/// new root version is signed by the old root keys and (for `root`) the new
/// ones, and every vehicle's metadata is re-signed with the new keys, in one
/// transaction. Returns the new keys and the new root version.
pub fn rotate(
    tx: &Tx<'_>,
    store: &KeyStore,
    current: &DirectorKeys,
    role: &str,
    mode: repo::RotationMode,
    threshold: Option<u32>,
    now: i64,
) -> Result<(DirectorKeys, u64, OnlineKey)> {
    let root = tx
        .latest_meta(repo::DIRECTOR, "root")?
        .ok_or_else(|| Error::Internal("no director root".into()))?;
    if current.role(role).is_none() {
        return Err(Error::BadRequest(format!("unknown role {role:?}")));
    }
    // Stored in the role at once, as before the transaction commits: a crash
    // after the commit must not leave the server without the key the new
    // root lists (an extra key the root does not list only adds a signature
    // verifiers ignore).
    let key = store.generate(repo::DIRECTOR, role)?;
    let signed = repo::next_root(
        &root.bytes,
        role,
        &[key.public_key().clone()],
        mode,
        threshold,
        now,
    )?;
    let mut next = current.clone();
    let slot = match role {
        "root" => &mut next.root,
        "targets" => &mut next.targets,
        "snapshot" => &mut next.snapshot,
        "timestamp" => &mut next.timestamp,
        other => return Err(Error::BadRequest(format!("unknown role {other:?}"))),
    };
    if mode == repo::RotationMode::Replace {
        slot.clear();
    }
    slot.push(key.clone());
    // TUF 1.0 §5.3.4: the new root is signed by the old root keys and its own.
    let mut signers: Vec<&OnlineKey> = current.root.iter().collect();
    for k in &next.root {
        if !signers.iter().any(|s| s.keyid() == k.keyid()) {
            signers.push(k);
        }
    }
    let bytes = crate::keystore::sign_value(signed, &signers)?;
    let trusted = secureev_uptane::client::check_next_root("director", &root.bytes, &bytes)?;
    let version = root.version + 1;
    let expires = trusted.root().common.expires_at()?.unix();
    tx.insert_meta(repo::DIRECTOR, "root", version, expires, &bytes)?;
    if role != "root" {
        for v in tx.vehicles()? {
            resign(tx, &next, &v.vin, now)?;
        }
    }
    tx.event(
        None,
        None,
        "director-rotation",
        &format!(
            "director {role} key {} ({mode:?}); root version {version}",
            key.keyid()
        ),
        now,
    )?;
    Ok((next, version, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use secureev_uptane::client::{drive, Decision, Repo, Role, UpdateClient};

    fn versions(db: &Db, vin: &str) -> (u64, u64, u64) {
        let r = director_repo(vin);
        db.read(|tx| {
            let v =
                |role| -> Result<u64> { Ok(tx.latest_meta(&r, role)?.map_or(0, |m| m.version)) };
            Ok((v("targets")?, v("snapshot")?, v("timestamp")?))
        })
        .unwrap()
    }

    #[test]
    fn empty_director_targets_name_the_vehicle_and_verify() {
        let db = Db::open_in_memory().unwrap();
        let keys = DirectorKeys::generate();
        let t0 = 1_900_000_000;
        let root = keys.root_bytes(1, t0).unwrap();
        db.write(|tx| regenerate(tx, &keys, "VIN1", t0)).unwrap();
        let (ts, sn, tg) = db
            .read(|tx| {
                let r = director_repo("VIN1");
                let get = |role| {
                    tx.latest_meta(&r, role)
                        .map(|m| m.map(|m| m.bytes).unwrap_or_default())
                };
                Ok((get("timestamp")?, get("snapshot")?, get("targets")?))
            })
            .unwrap();
        let now = Timestamp::from_unix(t0 + 10);
        // Checked as a vehicle checks it: the core's update client.
        let mut client = UpdateClient::tuf("director", &root, now).unwrap();
        let decision = drive(
            &mut client,
            |req| match req.role {
                Role::Timestamp => Some(ts.clone()),
                Role::Snapshot => Some(sn.clone()),
                Role::Targets => Some(tg.clone()),
                _ => None,
            },
            |_, _| None,
            |_, _, _, _| {},
        )
        .unwrap();
        assert!(matches!(decision, Decision::Refreshed));
        let targets = client.repository(Repo::Image).unwrap().targets().unwrap();
        assert_eq!(secureev_uptane::custom::director_vin(targets), Some("VIN1"));
        assert!(targets.targets.is_empty());
    }

    // Regression guard for lazy re-signing: a check-in late in a role's
    // lifetime gets fresh metadata without any admin action.
    #[test]
    fn refresh_resigns_only_what_nears_expiry() {
        let db = Db::open_in_memory().unwrap();
        let keys = DirectorKeys::generate();
        let t0 = 1_900_000_000;
        db.write(|tx| regenerate(tx, &keys, "VIN1", t0)).unwrap();
        assert_eq!(versions(&db, "VIN1"), (1, 1, 1));
        db.write(|tx| refresh(tx, &keys, "VIN1", t0 + 3600))
            .unwrap();
        assert_eq!(versions(&db, "VIN1"), (1, 1, 1));
        db.write(|tx| refresh(tx, &keys, "VIN1", t0 + 13 * 3600))
            .unwrap();
        assert_eq!(versions(&db, "VIN1"), (1, 1, 2));
        db.write(|tx| refresh(tx, &keys, "VIN1", t0 + 4 * 86_400))
            .unwrap();
        assert_eq!(versions(&db, "VIN1"), (1, 2, 3));
        db.write(|tx| refresh(tx, &keys, "VIN1", t0 + 16 * 86_400))
            .unwrap();
        assert_eq!(versions(&db, "VIN1"), (2, 3, 4));
    }
}
