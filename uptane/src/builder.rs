//! Repository builders: keys, roles, thresholds, signing, delegations and key
//! rotation, for the backend and for tests.
//!
//! [`RepoBuilder`] holds the signing keys and the current content of one
//! repository in memory and produces signed metadata bytes. It never touches a
//! disk; where keys live (an OEM's offline signing station, the backend's online
//! key store) is the caller's business.
//!
//! ```
//! use secureev_uptane::builder::RepoBuilder;
//! use secureev_uptane::client::{drive, Repo, Role, UpdateClient};
//! use secureev_uptane::Timestamp;
//!
//! let now = Timestamp::from_unix(1_800_000_000);
//! let mut repo = RepoBuilder::new(now);
//! repo.add_target("fw.bin", b"firmware", None);
//! let out = repo.publish().unwrap();
//!
//! // What a client makes of it: the core's update client, as a TUF client.
//! let mut client = UpdateClient::tuf("image", &out.root, now).unwrap();
//! let serve = |role: &Role| match role {
//!     Role::Timestamp => Some(out.timestamp.clone()),
//!     Role::Snapshot => Some(out.snapshot.clone()),
//!     Role::Targets => Some(out.targets.clone()),
//!     _ => None,
//! };
//! drive(&mut client, |req| serve(&req.role), |_, _| None, |_, _, _, _| {}).unwrap();
//! let trusted = client.repository(Repo::Image).unwrap();
//! assert!(trusted.targets().unwrap().targets.contains_key("fw.bin"));
//! ```

use crate::canonical::to_canonical_from;
use crate::error::{Error, Result};
use crate::keys::SigningKey;
use crate::metadata::{
    Common, DelegatedRole, Delegations, MetaFile, RoleKeys, Root, Signature, Snapshot, TargetFile,
    Targets, TimestampMeta,
};
use crate::time::Timestamp;
use crate::verify::hash_hex;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Default lifetime of root metadata.
pub const ROOT_LIFETIME_SECS: i64 = 365 * 86_400;
/// Default lifetime of targets metadata.
pub const TARGETS_LIFETIME_SECS: i64 = 90 * 86_400;
/// Default lifetime of snapshot metadata.
pub const SNAPSHOT_LIFETIME_SECS: i64 = 7 * 86_400;
/// Default lifetime of timestamp metadata.
pub const TIMESTAMP_LIFETIME_SECS: i64 = 86_400;

/// The four top-level roles.
pub const TOP_LEVEL_ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// Sign a `signed` value with `keys` and return the envelope as JSON bytes
/// (pretty-printed; signatures cover the canonical form).
pub fn sign_metadata<T: Serialize>(signed: &T, keys: &[&SigningKey]) -> Result<Vec<u8>> {
    let value = serde_json::to_value(signed).map_err(|e| Error::Canonical(e.to_string()))?;
    sign_value(value, keys)
}

/// Sign a raw JSON `signed` value.
pub fn sign_value(signed: Value, keys: &[&SigningKey]) -> Result<Vec<u8>> {
    let canonical = crate::canonical::to_canonical(&signed)?;
    let signatures: Vec<Signature> = keys
        .iter()
        .map(|k| Signature {
            keyid: k.keyid().to_owned(),
            sig: k.sign_hex(&canonical),
            unrecognized: Map::new(),
        })
        .collect();
    let env = serde_json::json!({ "signatures": signatures, "signed": signed });
    serde_json::to_vec_pretty(&env).map_err(|e| Error::Canonical(e.to_string()))
}

/// A target entry for `data`, with sha256 and sha512 hashes.
pub fn target_file(data: &[u8], custom: Option<Value>) -> TargetFile {
    let mut hashes = BTreeMap::new();
    for alg in ["sha256", "sha512"] {
        if let Some(h) = hash_hex(alg, data) {
            hashes.insert(alg.to_owned(), h);
        }
    }
    TargetFile {
        length: data.len() as u64,
        hashes,
        custom,
        unrecognized: Map::new(),
    }
}

/// Metadata file info (version, length, sha256) for `bytes`.
pub fn meta_file(version: u64, bytes: &[u8]) -> MetaFile {
    let mut hashes = BTreeMap::new();
    if let Some(h) = hash_hex("sha256", bytes) {
        hashes.insert("sha256".to_owned(), h);
    }
    MetaFile {
        version,
        length: Some(bytes.len() as u64),
        hashes: Some(hashes),
        unrecognized: Map::new(),
    }
}

/// A delegated targets role held by a [`RepoBuilder`].
#[derive(Debug, Clone)]
pub struct DelegatedBuilder {
    /// The delegation entry in the delegator.
    pub role: DelegatedRole,
    /// Its signing keys.
    pub keys: Vec<SigningKey>,
    /// Who delegates to it (`"targets"` or another delegated role).
    pub delegator: String,
    /// Its targets.
    pub targets: BTreeMap<String, TargetFile>,
    /// Its version.
    pub version: u64,
}

/// Signed bytes of every role of a repository state.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Current root.
    pub root: Vec<u8>,
    /// Every root version published so far, by version (`<N>.root.json`).
    pub roots: BTreeMap<u64, Vec<u8>>,
    /// Timestamp.
    pub timestamp: Vec<u8>,
    /// Snapshot.
    pub snapshot: Vec<u8>,
    /// Top-level targets.
    pub targets: Vec<u8>,
    /// Delegated targets roles by name.
    pub delegated: BTreeMap<String, Vec<u8>>,
}

/// In-memory repository: keys, versions, targets, delegations.
#[derive(Debug, Clone)]
pub struct RepoBuilder {
    /// Signing keys per top-level role.
    pub keys: BTreeMap<String, Vec<SigningKey>>,
    /// Thresholds per top-level role.
    pub thresholds: BTreeMap<String, u32>,
    /// Keys that must also sign the next root (the previous root's keys during
    /// a rotation).
    pub previous_root_keys: Vec<SigningKey>,
    /// Whether `consistent_snapshot` is set.
    pub consistent_snapshot: bool,
    /// Versions per top-level role.
    pub versions: BTreeMap<String, u64>,
    /// Expiry per top-level role.
    pub expires: BTreeMap<String, Timestamp>,
    /// Top-level targets.
    pub targets: BTreeMap<String, TargetFile>,
    /// Unknown/custom fields of the top-level targets `signed` (e.g. a
    /// Director's vehicle identifier).
    pub targets_extra: Map<String, Value>,
    /// Delegated roles in priority order.
    pub delegated: Vec<DelegatedBuilder>,
    /// Every root published so far.
    pub roots: BTreeMap<u64, Vec<u8>>,
    /// Whether the next publish must write a new root version.
    root_dirty: bool,
}

impl RepoBuilder {
    /// A repository with one fresh P-256 key per role, threshold 1, version 1,
    /// and default lifetimes counted from `now`.
    pub fn new(now: Timestamp) -> Self {
        let mut keys = BTreeMap::new();
        let mut thresholds = BTreeMap::new();
        let mut versions = BTreeMap::new();
        for role in TOP_LEVEL_ROLES {
            keys.insert(role.to_owned(), vec![SigningKey::generate_p256()]);
            thresholds.insert(role.to_owned(), 1);
            versions.insert(role.to_owned(), 0);
        }
        let mut b = RepoBuilder {
            keys,
            thresholds,
            previous_root_keys: Vec::new(),
            consistent_snapshot: true,
            versions,
            expires: BTreeMap::new(),
            targets: BTreeMap::new(),
            targets_extra: Map::new(),
            delegated: Vec::new(),
            roots: BTreeMap::new(),
            root_dirty: true,
        };
        b.set_lifetimes(now);
        b
    }

    /// Reset every role's expiry to the default lifetime from `now`.
    pub fn set_lifetimes(&mut self, now: Timestamp) {
        for (role, secs) in [
            ("root", ROOT_LIFETIME_SECS),
            ("targets", TARGETS_LIFETIME_SECS),
            ("snapshot", SNAPSHOT_LIFETIME_SECS),
            ("timestamp", TIMESTAMP_LIFETIME_SECS),
        ] {
            self.expires.insert(role.to_owned(), now.plus_secs(secs));
        }
    }

    /// Replace the keys (and threshold) of a top-level role. For `root`, the old
    /// root keys also sign the next root, as TUF requires of a rotation.
    pub fn rotate_keys(&mut self, role: &str, keys: Vec<SigningKey>, threshold: u32) {
        if role == "root" {
            self.previous_root_keys = self.keys.get("root").cloned().unwrap_or_default();
        }
        self.keys.insert(role.to_owned(), keys);
        self.thresholds.insert(role.to_owned(), threshold);
        self.root_dirty = true;
    }

    /// Mark the root as changed so the next publish writes a new version.
    pub fn touch_root(&mut self) {
        self.root_dirty = true;
    }

    /// Add (or replace) a top-level target.
    pub fn add_target(&mut self, name: &str, data: &[u8], custom: Option<Value>) {
        self.targets
            .insert(name.to_owned(), target_file(data, custom));
    }

    /// Add a delegated role with fresh keys; returns its index.
    pub fn add_delegation(
        &mut self,
        delegator: &str,
        name: &str,
        paths: &[&str],
        terminating: bool,
    ) -> usize {
        let key = SigningKey::generate_p256();
        self.delegated.push(DelegatedBuilder {
            role: DelegatedRole {
                name: name.to_owned(),
                keyids: vec![key.keyid().to_owned()],
                threshold: 1,
                terminating,
                paths: Some(paths.iter().map(|p| (*p).to_owned()).collect()),
                path_hash_prefixes: None,
                unrecognized: Map::new(),
            },
            keys: vec![key],
            delegator: delegator.to_owned(),
            targets: BTreeMap::new(),
            version: 0,
        });
        self.delegated.len() - 1
    }

    /// Add a target to delegated role `name`.
    pub fn add_delegated_target(&mut self, name: &str, target: &str, data: &[u8]) -> Result<()> {
        let d = self
            .delegated
            .iter_mut()
            .find(|d| d.role.name == name)
            .ok_or_else(|| Error::InvalidDelegation {
                role: name.to_owned(),
                reason: "no such delegated role in builder".into(),
            })?;
        d.targets.insert(target.to_owned(), target_file(data, None));
        Ok(())
    }

    fn key_refs(&self, role: &str) -> Vec<&SigningKey> {
        self.keys
            .get(role)
            .map(|v| v.iter().collect())
            .unwrap_or_default()
    }

    fn version(&self, role: &str) -> u64 {
        self.versions.get(role).copied().unwrap_or(0)
    }

    fn expiry(&self, role: &str) -> Timestamp {
        self.expires
            .get(role)
            .copied()
            .unwrap_or(Timestamp::from_unix(0))
    }

    /// The root metadata for the current keys at `version`.
    pub fn root_metadata(&self, version: u64) -> Root {
        let mut keys = BTreeMap::new();
        let mut roles = BTreeMap::new();
        for role in TOP_LEVEL_ROLES {
            let ks = self.key_refs(role);
            for k in &ks {
                keys.insert(k.keyid().to_owned(), k.public_key().clone());
            }
            roles.insert(
                role.to_owned(),
                RoleKeys {
                    keyids: ks.iter().map(|k| k.keyid().to_owned()).collect(),
                    threshold: self.thresholds.get(role).copied().unwrap_or(1),
                    unrecognized: Map::new(),
                },
            );
        }
        Root {
            common: Common::new("root", version, self.expiry("root")),
            consistent_snapshot: self.consistent_snapshot,
            keys,
            roles,
            unrecognized: Map::new(),
        }
    }

    /// Sign a new root version (if the keys changed since the last one) and
    /// return the current root bytes.
    pub fn publish_root(&mut self) -> Result<Vec<u8>> {
        if self.root_dirty || self.roots.is_empty() {
            let version = self.version("root") + 1;
            let root = self.root_metadata(version);
            let mut signers: Vec<&SigningKey> = self.key_refs("root");
            for k in &self.previous_root_keys {
                if !signers.iter().any(|s| s.keyid() == k.keyid()) {
                    signers.push(k);
                }
            }
            let bytes = sign_metadata(&root, &signers)?;
            self.versions.insert("root".into(), version);
            self.roots.insert(version, bytes);
            self.previous_root_keys.clear();
            self.root_dirty = false;
        }
        self.roots
            .values()
            .next_back()
            .cloned()
            .ok_or_else(|| Error::Workflow("no root published".into()))
    }

    /// Publish a new version of every role (a new root only when keys changed).
    pub fn publish(&mut self) -> Result<Published> {
        let root = self.publish_root()?;

        // Delegated roles first: the snapshot lists them.
        let mut delegated = BTreeMap::new();
        let mut snapshot_meta = BTreeMap::new();
        for i in 0..self.delegated.len() {
            let mut d = self.delegated[i].clone();
            d.version += 1;
            let t = Targets {
                common: Common::new("targets", d.version, self.expiry("targets")),
                targets: d.targets.clone(),
                delegations: self.delegations_of(&d.role.name),
                unrecognized: Map::new(),
            };
            let keys: Vec<&SigningKey> = d.keys.iter().collect();
            let bytes = sign_metadata(&t, &keys)?;
            snapshot_meta.insert(
                format!("{}.json", d.role.name),
                meta_file(d.version, &bytes),
            );
            delegated.insert(d.role.name.clone(), bytes);
            self.delegated[i] = d;
        }

        let targets_version = self.version("targets") + 1;
        let targets = Targets {
            common: Common::new("targets", targets_version, self.expiry("targets")),
            targets: self.targets.clone(),
            delegations: self.delegations_of("targets"),
            unrecognized: self.targets_extra.clone(),
        };
        let targets_bytes = sign_metadata(&targets, &self.key_refs("targets"))?;
        self.versions.insert("targets".into(), targets_version);
        snapshot_meta.insert(
            "targets.json".into(),
            meta_file(targets_version, &targets_bytes),
        );

        let snapshot_version = self.version("snapshot") + 1;
        let snapshot = Snapshot {
            common: Common::new("snapshot", snapshot_version, self.expiry("snapshot")),
            meta: snapshot_meta,
            unrecognized: Map::new(),
        };
        let snapshot_bytes = sign_metadata(&snapshot, &self.key_refs("snapshot"))?;
        self.versions.insert("snapshot".into(), snapshot_version);

        let timestamp_bytes = self.sign_timestamp(snapshot_version, &snapshot_bytes)?;

        Ok(Published {
            root,
            roots: self.roots.clone(),
            timestamp: timestamp_bytes,
            snapshot: snapshot_bytes,
            targets: targets_bytes,
            delegated,
        })
    }

    /// Sign a new timestamp version for the given snapshot.
    pub fn sign_timestamp(&mut self, snapshot_version: u64, snapshot: &[u8]) -> Result<Vec<u8>> {
        let version = self.version("timestamp") + 1;
        let mut meta = BTreeMap::new();
        meta.insert(
            "snapshot.json".to_owned(),
            meta_file(snapshot_version, snapshot),
        );
        let ts = TimestampMeta {
            common: Common::new("timestamp", version, self.expiry("timestamp")),
            meta,
            unrecognized: Map::new(),
        };
        let bytes = sign_metadata(&ts, &self.key_refs("timestamp"))?;
        self.versions.insert("timestamp".into(), version);
        Ok(bytes)
    }

    fn delegations_of(&self, delegator: &str) -> Option<Delegations> {
        let children: Vec<&DelegatedBuilder> = self
            .delegated
            .iter()
            .filter(|d| d.delegator == delegator)
            .collect();
        if children.is_empty() {
            return None;
        }
        let mut keys = BTreeMap::new();
        for d in &children {
            for k in &d.keys {
                keys.insert(k.keyid().to_owned(), k.public_key().clone());
            }
        }
        Some(Delegations {
            keys,
            roles: Some(children.iter().map(|d| d.role.clone()).collect()),
            succinct_roles: None,
            unrecognized: Map::new(),
        })
    }
}

/// Re-sign an envelope's `signed` value after `edit` changed it: for tests and
/// attack fixtures that need validly signed but malicious metadata.
pub fn resign(
    bytes: &[u8],
    keys: &[&SigningKey],
    edit: impl FnOnce(&mut Value),
) -> Result<Vec<u8>> {
    let mut env: Value = serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
        role: "metadata".into(),
        reason: e.to_string(),
    })?;
    let mut signed = env
        .get_mut("signed")
        .map(Value::take)
        .ok_or_else(|| Error::Malformed {
            role: "metadata".into(),
            reason: "no signed".into(),
        })?;
    edit(&mut signed);
    sign_value(signed, keys)
}

/// Canonical bytes of a serialisable value (re-exported for builders' users).
pub fn canonical_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    to_canonical_from(v)
}
