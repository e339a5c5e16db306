//! The trusted state of one repository: the metadata a client currently trusts,
//! and the rules for replacing each piece.
//!
//! This is the TUF 1.0 §5.3 client workflow (and Uptane 2.1 §5.4.4.3–5.4.4.7) as
//! a set of state transitions, modelled on python-tuf's `TrustedMetadataSet`. The
//! caller fetches bytes (from the network or its own storage) and offers them in
//! order: root (repeatedly, N+1), timestamp, snapshot, targets, delegated targets.
//! Each `update_*` either accepts the bytes (and the caller persists exactly those
//! bytes) or returns an [`Error`] naming the attack. Nothing here does I/O.

use crate::error::{Checked, Error, Result};
use crate::metadata::{Root, Snapshot, TargetFile, Targets, TimestampMeta};
use crate::time::Timestamp;
use crate::verify::{check_length_and_hashes, Envelope, Verified};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Size limits and search bounds. Defaults match python-tuf's `UpdaterConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum number of root versions to walk in one update.
    pub max_root_rotations: u64,
    /// Maximum size of a root file.
    pub root_max_length: u64,
    /// Maximum size of a timestamp file.
    pub timestamp_max_length: u64,
    /// Maximum size of a snapshot file when timestamp gives no length.
    pub snapshot_max_length: u64,
    /// Maximum size of a targets file when snapshot gives no length.
    pub targets_max_length: u64,
    /// Maximum number of targets roles visited in one delegation search.
    pub max_delegations: usize,
}

/// Default maximum number of root rotations per update.
pub const DEFAULT_MAX_ROOT_ROTATIONS: u64 = 256;
/// Default root size cap.
pub const DEFAULT_ROOT_MAX_LENGTH: u64 = 512_000;
/// Default timestamp size cap.
pub const DEFAULT_TIMESTAMP_MAX_LENGTH: u64 = 16_384;
/// Default snapshot size cap.
pub const DEFAULT_SNAPSHOT_MAX_LENGTH: u64 = 2_000_000;
/// Default targets size cap.
pub const DEFAULT_TARGETS_MAX_LENGTH: u64 = 5_000_000;
/// Default bound on delegated roles visited per search.
pub const DEFAULT_MAX_DELEGATIONS: usize = 32;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_root_rotations: DEFAULT_MAX_ROOT_ROTATIONS,
            root_max_length: DEFAULT_ROOT_MAX_LENGTH,
            timestamp_max_length: DEFAULT_TIMESTAMP_MAX_LENGTH,
            snapshot_max_length: DEFAULT_SNAPSHOT_MAX_LENGTH,
            targets_max_length: DEFAULT_TARGETS_MAX_LENGTH,
            max_delegations: DEFAULT_MAX_DELEGATIONS,
        }
    }
}

/// Which roles a repository serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// All four top-level roles (TUF; Uptane 2.x Director and Image repository).
    #[default]
    Tuf,
    /// Only root and targets: Uptane 1.x-era Directors (e.g. ota-tuf) that serve
    /// no timestamp or snapshot. Targets are then protected against rollback by
    /// their own version only. Use for the Director only, never for an Image
    /// repository.
    RootAndTargetsOnly,
}

/// What to fetch for a snapshot or targets role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// Role name.
    pub role: String,
    /// Version for the file name when the repository uses consistent snapshots.
    pub version: Option<u64>,
    /// Maximum number of bytes to accept.
    pub max_length: u64,
}

/// Outcome of offering a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampUpdate {
    /// The new timestamp is now trusted; persist it.
    Updated,
    /// Same version as the trusted one: keep the old one and do not persist.
    Unchanged,
}

/// Result of a (possibly partial) delegation search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSearch {
    /// The target, and the role that listed it.
    Found {
        /// Role that lists the target.
        role: String,
        /// The target entry.
        target: TargetFile,
    },
    /// Load this delegated role (delegated by `parent`) and search again.
    NeedRole {
        /// Role to load.
        role: String,
        /// Its delegator.
        parent: String,
    },
    /// No role that may list the target does.
    NotFound,
}

/// Trusted metadata of one repository.
#[derive(Debug, Clone)]
pub struct TrustedRepository {
    name: String,
    limits: Limits,
    layout: Layout,
    root: Verified<Root>,
    timestamp: Option<Verified<TimestampMeta>>,
    snapshot: Option<Verified<Snapshot>>,
    targets: BTreeMap<String, Verified<Targets>>,
    /// Delegation edges `(delegator, role)` whose signatures were checked: the
    /// role's bytes (in `targets`) met the threshold of the keys `delegator`
    /// names for it. A role reached through another delegator is not trusted
    /// until it is verified again against that delegator's keys; see
    /// [`Self::find_target`].
    verified_edges: BTreeSet<(String, String)>,
    /// Set when the root chain rotated timestamp or snapshot keys: locally
    /// stored timestamp and snapshot must not be used (fast-forward recovery).
    discard_local: bool,
    /// [`Layout::RootAndTargetsOnly`]: highest version of each targets role
    /// that verified but had expired. Without a snapshot the stored version is
    /// the only rollback reference, and a stored copy that expired while the
    /// vehicle was offline must still count (as an expired timestamp does).
    expired_versions: BTreeMap<String, u64>,
}

/// Where an offered snapshot comes from; decides which checks apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnapshotSource {
    Remote,
    Stored,
}

const ROOT: &str = "root";
const TIMESTAMP: &str = "timestamp";
const SNAPSHOT: &str = "snapshot";
const TARGETS: &str = "targets";

impl TrustedRepository {
    /// Start from a trusted root (shipped with the ECU or stored earlier). It
    /// must be signed by a threshold of its own keys; its expiry is checked
    /// later, against the final root of the chain (TUF 1.0 §5.3.10).
    pub fn new(name: &str, trusted_root: &[u8]) -> Result<Self> {
        let env = Envelope::parse(ROOT, trusted_root)?;
        let unverified: Root = env.to_typed(ROOT)?;
        let root = verify_by_root::<Root>(&env, &unverified, ROOT)?;
        Ok(TrustedRepository {
            name: name.to_owned(),
            limits: Limits::default(),
            layout: Layout::Tuf,
            root,
            timestamp: None,
            snapshot: None,
            targets: BTreeMap::new(),
            verified_edges: BTreeSet::new(),
            discard_local: false,
            expired_versions: BTreeMap::new(),
        })
    }

    /// Replace the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Choose the repository layout.
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Repository name used in messages (e.g. "director", "image").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The layout in force.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Trusted root.
    pub fn root(&self) -> &Verified<Root> {
        &self.root
    }

    /// Trusted timestamp, if loaded.
    pub fn timestamp(&self) -> Option<&Verified<TimestampMeta>> {
        self.timestamp.as_ref()
    }

    /// Trusted snapshot, if loaded.
    pub fn snapshot(&self) -> Option<&Verified<Snapshot>> {
        self.snapshot.as_ref()
    }

    /// Trusted top-level targets, if loaded.
    pub fn targets(&self) -> Option<&Verified<Targets>> {
        self.targets.get(TARGETS)
    }

    /// A delegated targets role, if loaded (verified through at least one
    /// delegator; [`Self::find_target`] checks the delegator on each path).
    pub fn delegated(&self, role: &str) -> Option<&Verified<Targets>> {
        self.targets.get(role)
    }

    /// Whether only the trusted root is loaded (no timestamp, snapshot or
    /// targets): the state a run starts from.
    pub fn is_root_only(&self) -> bool {
        self.timestamp.is_none() && self.snapshot.is_none() && self.targets.is_empty()
    }

    /// Uptane 2.1 §5.4.4.2 (freeze): every top-level role of a refreshed
    /// repository — root, timestamp, snapshot, targets — is loaded and not
    /// expired at `now`. For a state verified earlier and used again.
    pub(crate) fn check_current(&self, now: Timestamp) -> Result<()> {
        let missing = |role: &str| Error::Workflow(format!("{}: no trusted {role}", self.name));
        check_expiry(ROOT, &self.root.value().common, now)?;
        let ts = self.timestamp.as_ref().ok_or_else(|| missing(TIMESTAMP))?;
        check_expiry(TIMESTAMP, &ts.value().common, now)?;
        let snapshot = self.snapshot.as_ref().ok_or_else(|| missing(SNAPSHOT))?;
        check_expiry(SNAPSHOT, &snapshot.value().common, now)?;
        let targets = self.targets().ok_or_else(|| missing(TARGETS))?;
        check_expiry(TARGETS, &targets.value().common, now)
    }

    /// Offer root version N+1.
    ///
    /// TUF 1.0 §5.3.4 / Uptane 2.1 §5.4.4.3 (1)–(4): the new root must be signed
    /// by a threshold of the trusted root's keys *and* a threshold of its own
    /// keys, and its version must be exactly N+1. Expiry is not checked here but
    /// for the final root, when the timestamp is offered.
    ///
    /// Fast-forward attack recovery (TUF §5.3.11 / Uptane §5.4.4.3 (5)): when
    /// the timestamp or snapshot keys change, the locally stored timestamp and
    /// snapshot are no longer used ([`Self::update_timestamp_local`] and
    /// [`Self::update_snapshot_local_skip_hashes`] refuse them), so that versions
    /// rolled forward with a compromised key cannot block updates.
    pub(crate) fn update_root(&mut self, bytes: &[u8]) -> Result<()> {
        if self.timestamp.is_some() || !self.targets.is_empty() {
            // The root chain is settled before anything it vouches for is loaded;
            // a new cycle starts from a fresh set (see [`Self::new`]).
            return Err(Error::Workflow(
                "cannot update root after timestamp or targets were loaded".into(),
            ));
        }
        check_size(ROOT, bytes, self.limits.root_max_length)?;
        let env = Envelope::parse(ROOT, bytes)?;
        // Signed by a threshold of the trusted root's keys ...
        let by_old = verify_by_root::<Root>(&env, &self.root, ROOT)?;
        // ... and by a threshold of its own keys.
        let new_root = verify_by_root::<Root>(&env, &by_old, ROOT)?;
        let expected = self.root.common.version + 1;
        if new_root.common.version != expected {
            return Err(Error::VersionMismatch {
                role: ROOT.into(),
                expected,
                got: new_root.common.version,
            });
        }
        let rotated = |role: &str| -> bool {
            let old = self
                .root
                .roles
                .get(role)
                .map(|r| role_key_set(&self.root, r));
            let new = new_root.roles.get(role).map(|r| role_key_set(&new_root, r));
            old != new
        };
        if rotated(TIMESTAMP) || rotated(SNAPSHOT) {
            self.discard_local = true;
        }
        self.root = new_root;
        Ok(())
    }

    /// Offer a timestamp.
    ///
    /// TUF 1.0 §5.3.10 and §5.4 / Uptane 2.1 §5.4.4.4: the final root must not be
    /// expired; threshold of root's timestamp keys; version ≥ trusted (equal
    /// means nothing changed); the snapshot version it lists ≥ the trusted one;
    /// not expired. An expired timestamp is still kept as the trusted one for
    /// rollback protection, but an error is returned.
    pub(crate) fn update_timestamp(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<TimestampUpdate> {
        self.require_layout(Layout::Tuf, TIMESTAMP)?;
        if self.snapshot.is_some() {
            return Err(Error::Workflow(
                "cannot update timestamp after snapshot; start a new cycle".into(),
            ));
        }
        check_expiry(ROOT, &self.root.common, now)?;
        check_size(TIMESTAMP, bytes, self.limits.timestamp_max_length)?;
        let env = Envelope::parse(TIMESTAMP, bytes)?;
        let new = verify_by_root::<TimestampMeta>(&env, &self.root, TIMESTAMP)?;
        let new_snapshot_version = new.snapshot_meta()?.version;
        if let Some(old) = &self.timestamp {
            if new.common.version < old.common.version {
                return Err(Error::Rollback {
                    role: TIMESTAMP.into(),
                    trusted: old.common.version,
                    offered: new.common.version,
                });
            }
            if new.common.version == old.common.version {
                return Ok(TimestampUpdate::Unchanged);
            }
            let old_snapshot_version = old.snapshot_meta()?.version;
            if new_snapshot_version < old_snapshot_version {
                return Err(Error::Rollback {
                    role: SNAPSHOT.into(),
                    trusted: old_snapshot_version,
                    offered: new_snapshot_version,
                });
            }
        }
        self.timestamp = Some(new);
        self.check_final_timestamp(now)?;
        Ok(TimestampUpdate::Updated)
    }

    /// Offer the locally stored timestamp at the start of a cycle. It serves as
    /// the baseline for rollback checks of the remote one, unless the root chain
    /// rotated timestamp or snapshot keys (fast-forward attack recovery).
    pub(crate) fn update_timestamp_local(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<TimestampUpdate> {
        if self.discard_local {
            return Err(Error::Workflow(
                "local timestamp discarded: timestamp or snapshot keys were rotated".into(),
            ));
        }
        self.update_timestamp(bytes, now)
    }

    fn check_final_timestamp(&self, now: Timestamp) -> Result<()> {
        let ts = self.timestamp.as_ref().ok_or_else(|| {
            Error::Workflow("snapshot offered before a timestamp was trusted".into())
        })?;
        check_expiry(TIMESTAMP, &ts.common, now)
    }

    /// What to fetch for the snapshot: versioned name under consistent snapshots,
    /// and the length the timestamp gives (or the default cap).
    pub fn snapshot_request(&self) -> Result<MetaRequest> {
        let ts = self.timestamp.as_ref().ok_or_else(|| {
            Error::Workflow("snapshot requested before a timestamp was trusted".into())
        })?;
        let meta = ts.snapshot_meta()?;
        Ok(MetaRequest {
            role: SNAPSHOT.into(),
            version: self.root.consistent_snapshot.then_some(meta.version),
            max_length: meta.length.unwrap_or(self.limits.snapshot_max_length),
        })
    }

    /// Offer a snapshot fetched from the repository. Every check applies.
    ///
    /// TUF 1.0 §5.5 / Uptane 2.1 §5.4.4.5: length and hashes as listed in the
    /// timestamp; threshold of root's snapshot keys; no targets file listed by
    /// the trusted snapshot may disappear or roll back; version equals the one
    /// in the timestamp; not expired.
    pub(crate) fn update_snapshot(&mut self, bytes: &[u8], now: Timestamp) -> Result<()> {
        self.offer_snapshot(bytes, now, SnapshotSource::Remote)
    }

    /// Offer the locally stored snapshot at the start of a cycle. It skips the
    /// timestamp's length-and-hashes check, because it was checked against a
    /// timestamp when it was first accepted and it may legitimately be older
    /// than the current timestamp (it is then the rollback reference for the
    /// remote one, and an error tells the caller to fetch that). When its
    /// version is the one the current timestamp lists, the hashes are checked
    /// after all: Uptane 2.1 §5.4.4.2 step 4 stops only if the stored copy *is*
    /// the current one. Refused after a rotation of timestamp or snapshot keys
    /// (fast-forward attack recovery), like [`Self::update_timestamp_local`].
    pub(crate) fn update_snapshot_local_skip_hashes(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<()> {
        self.offer_snapshot(bytes, now, SnapshotSource::Stored)
    }

    fn offer_snapshot(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
        source: SnapshotSource,
    ) -> Result<()> {
        let stored = source == SnapshotSource::Stored;
        self.require_layout(Layout::Tuf, SNAPSHOT)?;
        if self.targets.contains_key(TARGETS) {
            return Err(Error::Workflow(
                "cannot update snapshot after targets; start a new cycle".into(),
            ));
        }
        if stored && self.discard_local {
            return Err(Error::Workflow(
                "local snapshot discarded: timestamp or snapshot keys were rotated".into(),
            ));
        }
        self.check_final_timestamp(now)?;
        let meta = self
            .timestamp
            .as_ref()
            .map(|t| t.snapshot_meta().cloned())
            .transpose()?
            .ok_or_else(|| Error::Workflow("no trusted timestamp".into()))?;
        if !stored {
            check_length_and_hashes(
                &Checked::Metadata(SNAPSHOT.into()),
                bytes,
                meta.length,
                meta.hashes.as_ref(),
            )?;
        }
        let env = Envelope::parse(SNAPSHOT, bytes)?;
        let new = verify_by_root::<Snapshot>(&env, &self.root, SNAPSHOT)?;
        if stored && new.common.version == meta.version {
            // Uptane 2.1 §5.4.4.2 step 4: a stored snapshot is the current one
            // only if its hashes, not just its version, match the timestamp.
            check_length_and_hashes(
                &Checked::Metadata(SNAPSHOT.into()),
                bytes,
                meta.length,
                meta.hashes.as_ref(),
            )?;
        }
        if let Some(old) = &self.snapshot {
            for (file, old_info) in &old.meta {
                let new_info = new.meta.get(file).ok_or_else(|| Error::MissingMeta {
                    role: SNAPSHOT.into(),
                    missing: file.clone(),
                })?;
                if new_info.version < old_info.version {
                    return Err(Error::Rollback {
                        role: file.trim_end_matches(".json").to_owned(),
                        trusted: old_info.version,
                        offered: new_info.version,
                    });
                }
            }
        }
        self.snapshot = Some(new);
        self.check_final_snapshot(now)
    }

    fn check_final_snapshot(&self, now: Timestamp) -> Result<()> {
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| Error::Workflow("targets offered before snapshot".into()))?;
        check_expiry(SNAPSHOT, &snap.common, now)?;
        let expected = self
            .timestamp
            .as_ref()
            .map(|t| t.snapshot_meta().map(|m| m.version))
            .transpose()?
            .ok_or_else(|| Error::Workflow("no trusted timestamp".into()))?;
        if snap.common.version != expected {
            return Err(Error::VersionMismatch {
                role: SNAPSHOT.into(),
                expected,
                got: snap.common.version,
            });
        }
        Ok(())
    }

    /// What to fetch for a targets role.
    pub fn targets_request(&self, role: &str) -> Result<MetaRequest> {
        match self.layout {
            Layout::RootAndTargetsOnly => Ok(MetaRequest {
                role: role.to_owned(),
                version: None,
                max_length: self.limits.targets_max_length,
            }),
            Layout::Tuf => {
                let snap = self
                    .snapshot
                    .as_ref()
                    .ok_or_else(|| Error::Workflow(format!("{role} requested before snapshot")))?;
                let meta =
                    snap.meta
                        .get(&format!("{role}.json"))
                        .ok_or_else(|| Error::MissingMeta {
                            role: SNAPSHOT.into(),
                            missing: format!("{role}.json"),
                        })?;
                Ok(MetaRequest {
                    role: role.to_owned(),
                    version: self.root.consistent_snapshot.then_some(meta.version),
                    max_length: meta.length.unwrap_or(self.limits.targets_max_length),
                })
            }
        }
    }

    /// Offer the top-level targets.
    pub(crate) fn update_targets(&mut self, bytes: &[u8], now: Timestamp) -> Result<()> {
        self.update_delegated_targets(bytes, TARGETS, ROOT, now)
    }

    /// Offer a targets role delegated by `delegator` (`"root"` for top-level).
    ///
    /// TUF 1.0 §5.6 / Uptane 2.1 §5.4.4.6: the snapshot must be the final one
    /// (not expired, version agreed with the timestamp); length and hashes as
    /// the snapshot lists them; threshold of the delegator's keys for this role;
    /// version equal to the snapshot's; not expired. Without a snapshot
    /// ([`Layout::RootAndTargetsOnly`]) the version must not roll back instead.
    ///
    /// Trust is per delegation edge, not per role name: TUF 1.0 §5.6.7.2.1
    /// verifies a delegated role "with the keys and threshold of the
    /// delegating role", so a role that two delegators name (a diamond) is
    /// offered once per delegator, and each offer is checked against that
    /// delegator's keys and threshold. The bytes must be the ones already
    /// loaded for that role in this cycle: one role has one content per
    /// snapshot, and a second, different copy is a mix-and-match
    /// ([`Error::VersionMismatch`] would not catch it when the snapshot lists
    /// no hashes), refused as [`Error::InvalidDelegation`].
    pub(crate) fn update_delegated_targets(
        &mut self,
        bytes: &[u8],
        role: &str,
        delegator: &str,
        now: Timestamp,
    ) -> Result<()> {
        let expected_version = match self.layout {
            Layout::Tuf => {
                self.check_final_snapshot(now)?;
                let snap = self
                    .snapshot
                    .as_ref()
                    .ok_or_else(|| Error::Workflow("no trusted snapshot".into()))?;
                let meta =
                    snap.meta
                        .get(&format!("{role}.json"))
                        .ok_or_else(|| Error::MissingMeta {
                            role: SNAPSHOT.into(),
                            missing: format!("{role}.json"),
                        })?;
                check_length_and_hashes(
                    &Checked::Metadata(role.to_owned()),
                    bytes,
                    meta.length,
                    meta.hashes.as_ref(),
                )?;
                Some(meta.version)
            }
            Layout::RootAndTargetsOnly => {
                check_expiry(ROOT, &self.root.common, now)?;
                if bytes.len() as u64 > self.limits.targets_max_length {
                    return Err(Error::EndlessData {
                        what: format!("{role}.json"),
                        limit: self.limits.targets_max_length,
                    });
                }
                None
            }
        };
        let env = Envelope::parse(role, bytes)?;
        let new: Verified<Targets> = if delegator == ROOT {
            if role != TARGETS {
                return Err(Error::InvalidDelegation {
                    role: role.into(),
                    reason: "root delegates only the top-level targets role".into(),
                });
            }
            verify_by_root::<Targets>(&env, &self.root, TARGETS)?
        } else {
            let parent = self.targets.get(delegator).ok_or_else(|| {
                Error::Workflow(format!("delegator {delegator} of {role} is not loaded"))
            })?;
            let delegations =
                parent
                    .delegations
                    .as_ref()
                    .ok_or_else(|| Error::InvalidDelegation {
                        role: role.into(),
                        reason: format!("{delegator} has no delegations"),
                    })?;
            let (keyids, threshold) =
                delegated_role_keys(delegations, role).ok_or_else(|| Error::InvalidDelegation {
                    role: role.into(),
                    reason: format!("{delegator} does not delegate to {role}"),
                })?;
            env.verify_as::<Targets>(role, &delegations.keys, &keyids, threshold)?
        };
        match expected_version {
            Some(expected) if new.common.version != expected => {
                return Err(Error::VersionMismatch {
                    role: role.into(),
                    expected,
                    got: new.common.version,
                })
            }
            None => {
                let trusted = self
                    .targets
                    .get(role)
                    .map(|old| old.common.version)
                    .into_iter()
                    .chain(self.expired_versions.get(role).copied())
                    .max();
                if let Some(trusted) = trusted {
                    if new.common.version < trusted {
                        return Err(Error::Rollback {
                            role: role.into(),
                            trusted,
                            offered: new.common.version,
                        });
                    }
                }
            }
            _ => {}
        }
        check_unique_role_names(role, &new)?;
        if delegator != ROOT {
            if let Some(loaded) = self.targets.get(role) {
                // Already loaded through another delegator this cycle: the
                // same bytes, now also verified against `delegator`'s keys.
                if loaded.raw() != new.raw() {
                    return Err(Error::InvalidDelegation {
                        role: role.into(),
                        reason: format!(
                            "offered through {delegator} with other bytes than those loaded \
                             earlier in this cycle"
                        ),
                    });
                }
                self.verified_edges
                    .insert((delegator.to_owned(), role.to_owned()));
                return Ok(());
            }
        }
        if let Err(e) = check_expiry(role, &new.common, now) {
            if expected_version.is_none() {
                let v = self.expired_versions.entry(role.to_owned()).or_insert(0);
                *v = (*v).max(new.common.version);
            }
            return Err(e);
        }
        self.targets.insert(role.to_owned(), new);
        self.verified_edges
            .insert((delegator.to_owned(), role.to_owned()));
        Ok(())
    }

    /// Search for `target` by pre-order depth-first traversal of the delegation
    /// graph (TUF 1.0 §5.6.7), using the roles loaded so far. When a role that
    /// must be consulted is not yet verified through the delegator that leads
    /// to it, returns [`TargetSearch::NeedRole`] (even if the role was loaded
    /// through another delegator); offer it with
    /// [`Self::update_delegated_targets`] and search again.
    ///
    /// Cycles are cut (a role is visited once), the number of roles visited is
    /// bounded by [`Limits::max_delegations`], and a terminating role that is
    /// trusted for the path ends the search below its delegator.
    pub fn find_target(&self, target: &str) -> Result<TargetSearch> {
        let mut stack: Vec<(String, String)> = vec![(TARGETS.into(), ROOT.into())];
        let mut visited: HashSet<String> = HashSet::new();
        let mut budget = self.limits.max_delegations;
        while let Some((role, parent)) = stack.pop() {
            if visited.contains(&role) {
                continue;
            }
            if budget == 0 {
                return Err(Error::DelegationLimit {
                    target: target.into(),
                    limit: self.limits.max_delegations,
                });
            }
            // Only a role verified through *this* delegator may answer: a
            // role of the same name loaded through another delegator was
            // checked against other keys (the delegation diamond).
            let meta = match self.targets.get(&role) {
                Some(meta)
                    if self
                        .verified_edges
                        .contains(&(parent.clone(), role.clone())) =>
                {
                    meta
                }
                _ => return Ok(TargetSearch::NeedRole { role, parent }),
            };
            if let Some(t) = meta.targets.get(target) {
                return Ok(TargetSearch::Found {
                    role,
                    target: t.clone(),
                });
            }
            visited.insert(role.clone());
            budget -= 1;
            if let Some(d) = &meta.delegations {
                let mut children = Vec::new();
                if let Some(roles) = &d.roles {
                    for r in roles {
                        if r.is_delegated_path(target) {
                            children.push((r.name.clone(), role.clone()));
                            if r.terminating {
                                stack.clear();
                                break;
                            }
                        }
                    }
                } else if let Some(s) = &d.succinct_roles {
                    children.push((s.role_for(target), role.clone()));
                }
                children.reverse();
                stack.extend(children);
            }
        }
        Ok(TargetSearch::NotFound)
    }

    fn require_layout(&self, layout: Layout, role: &str) -> Result<()> {
        if self.layout != layout {
            return Err(Error::Workflow(format!(
                "{} repository layout does not use {role} metadata",
                self.name
            )));
        }
        Ok(())
    }
}

/// TUF 1.0 §4.5 / python-tuf `Delegations`: role names in one `delegations`
/// object are unique. Two entries of one name with different keys or paths
/// would make "the keys of the delegating role" ambiguous.
fn check_unique_role_names(role: &str, targets: &Targets) -> Result<()> {
    let Some(roles) = targets.delegations.as_ref().and_then(|d| d.roles.as_ref()) else {
        return Ok(());
    };
    let mut seen = HashSet::new();
    for r in roles {
        if !seen.insert(r.name.as_str()) {
            return Err(Error::InvalidDelegation {
                role: r.name.clone(),
                reason: format!("{role} delegates to it more than once"),
            });
        }
    }
    Ok(())
}

fn delegated_role_keys(d: &crate::metadata::Delegations, role: &str) -> Option<(Vec<String>, u32)> {
    if let Some(roles) = &d.roles {
        return roles
            .iter()
            .find(|r| r.name == role)
            .map(|r| (r.keyids.clone(), r.threshold));
    }
    d.succinct_roles
        .as_ref()
        .filter(|s| s.is_bin(role))
        .map(|s| (s.keyids.clone(), s.threshold))
}

fn role_key_set(root: &Root, role: &crate::metadata::RoleKeys) -> (Vec<Vec<u8>>, u32) {
    let mut keys: Vec<Vec<u8>> = role
        .keyids
        .iter()
        .filter_map(|id| root.keys.get(id))
        .filter_map(|k| k.to_public().ok())
        .map(|k| k.fingerprint())
        .collect();
    keys.sort();
    (keys, role.threshold)
}

fn verify_by_root<T: crate::metadata::RoleType>(
    env: &Envelope,
    root: &Root,
    role: &str,
) -> Result<Verified<T>> {
    let r = root.role(role)?;
    env.verify_as::<T>(role, &root.keys, &r.keyids, r.threshold)
}

/// TUF 1.0 §5.3.3 / Uptane 2.1 §5.4.4.3–4: root and timestamp are fetched with
/// a size cap (endless-data attack); the core enforces the cap again on the
/// bytes it is given.
fn check_size(role: &str, bytes: &[u8], limit: u64) -> Result<()> {
    if bytes.len() as u64 > limit {
        return Err(Error::EndlessData {
            what: format!("{role}.json"),
            limit,
        });
    }
    Ok(())
}

/// TUF 1.0 §5.3.10, §5.4.4, §5.5.6, §5.6.5 / Uptane 2.1 §5.4.4.3–6: metadata
/// is expired (a freeze attack) when `now` is at or past its expiry.
fn check_expiry(role: &str, common: &crate::metadata::Common, now: Timestamp) -> Result<()> {
    if common.is_expired(now)? {
        return Err(Error::Expired {
            role: role.into(),
            expires: common.expires.clone(),
            now: now.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "trusted_workflow_tests.rs"]
mod workflow_tests;
