//! The one error type of the verification core.
//!
//! Every attack class that Uptane 2.1 §5.4.4 and TUF 1.0 §5.3 name has its own
//! variant, so that a Primary can report the attack by name in its ECU version
//! report and a UI can show it. Variants carry the context a person needs: the
//! role, the versions involved, the target, the ECU.

use std::fmt;

/// A metadata role, as named in errors. Delegated roles carry their name.
pub type RoleName = String;

/// What a length or hash check was about: set where the check is made, so
/// that a caller tells a tampered metadata file from a tampered image by type,
/// never by the shape of a name (a delegated role may contain `/`, a target
/// may end in `.json`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Checked {
    /// The metadata file of a role, against the length and hashes its
    /// referrer lists (TUF 1.0 §5.3.2/§5.5.2: `snapshot.json` against the
    /// timestamp, `<role>.json` against the snapshot).
    Metadata(RoleName),
    /// A target image (as served, or its plaintext after decryption) against
    /// its signed length and hashes.
    Target(String),
}

impl Checked {
    /// Whether this is a metadata file.
    pub fn is_metadata(&self) -> bool {
        matches!(self, Checked::Metadata(_))
    }
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checked::Metadata(role) => write!(f, "{role}.json"),
            Checked::Target(name) => f.write_str(name),
        }
    }
}

/// Errors from parsing and verifying Uptane/TUF metadata, images and manifests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- input shape -------------------------------------------------------------
    /// The bytes are not JSON, or not the JSON shape this role needs.
    #[error("malformed {role} metadata: {reason}")]
    Malformed {
        /// Role (or document kind) being parsed.
        role: RoleName,
        /// What is wrong with it.
        reason: String,
    },
    /// A value cannot be written as OLPC canonical JSON (e.g. a float).
    #[error("cannot canonicalise JSON: {0}")]
    Canonical(String),
    /// The `_type` field names another role (a role substitution attempt).
    #[error("wrong metadata type: expected {expected}, got {got}")]
    WrongType {
        /// Role that was expected.
        expected: RoleName,
        /// `_type` that was found.
        got: String,
    },
    /// `spec_version` has a major version this client does not implement.
    #[error("{role} metadata has unsupported spec_version {spec_version}")]
    UnsupportedSpecVersion {
        /// Role.
        role: RoleName,
        /// The offered spec_version.
        spec_version: String,
    },
    /// A timestamp string is not `YYYY-MM-DDTHH:MM:SSZ`.
    #[error("invalid time {0:?}: expected YYYY-MM-DDTHH:MM:SSZ")]
    InvalidTime(String),
    /// A key could not be parsed or is of an unsupported type.
    #[error("invalid key {keyid}: {reason}")]
    InvalidKey {
        /// Key id (or a description for keys outside metadata).
        keyid: String,
        /// Why it was refused.
        reason: String,
    },

    // ---- signatures (arbitrary software / key compromise) -------------------------
    /// Fewer valid signatures from distinct authorised keys than the threshold:
    /// arbitrary-software attack, or a key compromise below the threshold.
    #[error("{role} metadata: signature threshold not met ({valid} of {threshold} required valid signatures from distinct keys)")]
    ThresholdNotMet {
        /// Role whose signatures were checked.
        role: RoleName,
        /// Number of valid signatures from distinct authorised keys.
        valid: usize,
        /// Required threshold.
        threshold: u32,
    },
    /// The same key id signs twice.
    #[error("{role} metadata lists more than one signature for key {keyid}")]
    DuplicateSignature {
        /// Role.
        role: RoleName,
        /// The repeated key id.
        keyid: String,
    },
    /// A role's threshold is zero or a role has no keys.
    #[error("{role} role is unusable: {reason}")]
    InvalidRole {
        /// Role.
        role: RoleName,
        /// Why.
        reason: String,
    },

    // ---- versions and time ---------------------------------------------------------
    /// Rollback attack: an older version than the trusted one is offered.
    #[error("rollback attack on {role}: trusted version {trusted}, offered {offered}")]
    Rollback {
        /// Role.
        role: RoleName,
        /// Version currently trusted.
        trusted: u64,
        /// Version offered.
        offered: u64,
    },
    /// Version differs from the one another role vouches for (mix-and-match or
    /// an out-of-order root).
    #[error("{role} version {got} does not match the expected version {expected}")]
    VersionMismatch {
        /// Role.
        role: RoleName,
        /// Version the referring metadata (or the root chain) expects.
        expected: u64,
        /// Version found.
        got: u64,
    },
    /// Freeze attack: the metadata expired before the injected time.
    #[error("freeze attack: {role} metadata expired at {expires} (now {now})")]
    Expired {
        /// Role.
        role: RoleName,
        /// Its expiry.
        expires: String,
        /// The time it was checked against.
        now: String,
    },
    /// A referenced metadata file is missing from the referring metadata, or a
    /// newer snapshot drops a file the trusted one listed.
    #[error("{role} metadata does not list {missing}")]
    MissingMeta {
        /// Referring role.
        role: RoleName,
        /// Missing entry.
        missing: String,
    },

    // ---- content ------------------------------------------------------------------
    /// Mix-and-match / tampering: a hash differs from the one that was signed.
    #[error("hash mismatch for {what}: {algorithm} expected {expected}, got {got}")]
    HashMismatch {
        /// What was hashed: a role's metadata file or a target.
        what: Checked,
        /// Hash algorithm.
        algorithm: String,
        /// Signed value.
        expected: String,
        /// Computed value.
        got: String,
    },
    /// Length differs from the signed length.
    #[error("length mismatch for {what}: expected {expected} bytes, got {got}")]
    LengthMismatch {
        /// What was measured: a role's metadata file or a target.
        what: Checked,
        /// Signed length.
        expected: u64,
        /// Observed length.
        got: u64,
    },
    /// Endless-data attack: more bytes than allowed arrived.
    #[error("endless data: {what} exceeds the limit of {limit} bytes")]
    EndlessData {
        /// What was being received.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A hash algorithm we do not implement (only sha256 and sha512 are).
    #[error("unsupported hash algorithm {algorithm:?} for {what}")]
    UnsupportedHash {
        /// What carried the hash.
        what: String,
        /// The algorithm name.
        algorithm: String,
    },
    /// No hashes at all where at least one is required.
    #[error("{what} carries no hashes")]
    NoHashes {
        /// What carried no hashes.
        what: String,
    },

    // ---- delegations -------------------------------------------------------------
    /// The target is not listed by any role that may list it.
    #[error("target {target:?} not found")]
    TargetNotFound {
        /// Target name.
        target: String,
    },
    /// More delegated roles visited than allowed.
    #[error("delegation search for {target:?} visited more than {limit} roles")]
    DelegationLimit {
        /// Target name.
        target: String,
        /// The limit.
        limit: usize,
    },
    /// A delegated role or delegation graph is not acceptable.
    #[error("invalid delegation {role}: {reason}")]
    InvalidDelegation {
        /// Role.
        role: RoleName,
        /// Why.
        reason: String,
    },
    /// Metadata was supplied in an order the workflow does not allow.
    #[error("workflow error: {0}")]
    Workflow(String),

    // ---- Uptane ------------------------------------------------------------------
    /// Director targets metadata delegates (Uptane 2.1 §5.4.4.6 forbids it).
    #[error("director targets metadata must not contain delegations")]
    DirectorDelegations,
    /// The same ECU identifier appears in two Director targets.
    #[error("ECU {ecu} appears in more than one director target")]
    DuplicateEcu {
        /// ECU serial.
        ecu: String,
    },
    /// The Director names an ECU that is not part of this vehicle.
    #[error("director target {target:?} is for ECU {ecu}, which is not in this vehicle")]
    WrongEcu {
        /// Target name.
        target: String,
        /// ECU serial.
        ecu: String,
    },
    /// Hardware ID of the ECU and the image disagree.
    #[error("wrong hardware ID for {target:?} on ECU {ecu}: ECU is {ecu_hardware_id}, image is for {image_hardware_ids:?}")]
    WrongHardwareId {
        /// Target name.
        target: String,
        /// ECU serial.
        ecu: String,
        /// The ECU's hardware ID.
        ecu_hardware_id: String,
        /// Hardware IDs the image (or the director entry) names.
        image_hardware_ids: Vec<String>,
    },
    /// Release counter lower than the one already installed on the ECU.
    #[error("release counter rollback for {target:?} on ECU {ecu}: installed {previous}, offered {offered}")]
    ReleaseCounterRollback {
        /// Target name.
        target: String,
        /// ECU serial.
        ecu: String,
        /// Release counter of the installed image.
        previous: u64,
        /// Release counter offered.
        offered: u64,
    },
    /// Director and Image repository disagree about a target (mix-and-match).
    #[error("director and image repository disagree on {target:?}: {field}")]
    TargetMismatch {
        /// Target name.
        target: String,
        /// What differs.
        field: String,
    },
    /// Director targets name another vehicle (a replay of another vehicle's
    /// metadata).
    #[error("director targets are for vehicle {got:?}, this vehicle is {expected:?}")]
    WrongVehicle {
        /// This vehicle's identifier.
        expected: String,
        /// The identifier in the metadata.
        got: String,
    },
    /// A Director targets file with no images carries no vehicle identifier.
    #[error("director targets metadata lists no images and no vehicle identifier")]
    MissingVehicleId,
    /// Custom target fields are malformed.
    #[error("invalid custom fields in target {target:?}: {reason}")]
    InvalidCustom {
        /// Target name.
        target: String,
        /// Why.
        reason: String,
    },

    // ---- manifests, DIDs, encryption ------------------------------------------------
    /// A manifest or ECU version report failed verification.
    #[error("invalid manifest from {signer}: {reason}")]
    InvalidManifest {
        /// ECU serial or VIN.
        signer: String,
        /// Why.
        reason: String,
    },
    /// A `did:key` string is malformed or names an unsupported key type.
    #[error("invalid DID {did:?}: {reason}")]
    InvalidDid {
        /// The DID.
        did: String,
        /// Why.
        reason: String,
    },
    /// Wrapping or unwrapping an image key failed, or the encrypted stream was
    /// truncated, reordered or modified.
    #[error("decryption failed for {what}: {reason}")]
    Decryption {
        /// What was being decrypted.
        what: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// The Uptane attack class this error reports, if any, for the
    /// `attacks_detected` field of an ECU version report.
    pub fn attack(&self) -> Option<Attack> {
        use Error::*;
        Some(match self {
            ThresholdNotMet { .. } | DuplicateSignature { .. } => Attack::ArbitrarySoftware,
            Rollback { .. } => Attack::Rollback,
            Expired { .. } => Attack::Freeze,
            VersionMismatch { .. } | MissingMeta { .. } | TargetMismatch { .. } => {
                Attack::MixAndMatch
            }
            HashMismatch { .. } | LengthMismatch { .. } => Attack::ArbitrarySoftware,
            EndlessData { .. } => Attack::EndlessData,
            WrongHardwareId { .. } => Attack::WrongHardwareId,
            WrongEcu { .. } | DuplicateEcu { .. } | WrongVehicle { .. } | MissingVehicleId => {
                Attack::WrongEcu
            }
            ReleaseCounterRollback { .. } => Attack::ReleaseCounterRollback,
            Decryption { .. } => Attack::ArbitrarySoftware,
            _ => return None,
        })
    }
}

/// Attack classes named by Uptane 2.1 (§3.4 threat model, §5.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Attack {
    /// Arbitrary software: bad signatures or modified content.
    ArbitrarySoftware,
    /// Rollback of metadata versions.
    Rollback,
    /// Indefinite freeze: expired metadata.
    Freeze,
    /// Mix-and-match of metadata from different repository states.
    MixAndMatch,
    /// Endless data.
    EndlessData,
    /// Slow retrieval: data arrives below the minimum rate (detected by the
    /// I/O side; the core never sees a clock).
    SlowRetrieval,
    /// Image for other hardware.
    WrongHardwareId,
    /// Image for another ECU or vehicle.
    WrongEcu,
    /// Release counter lower than the installed one.
    ReleaseCounterRollback,
}

impl Attack {
    /// Stable machine-readable name, as used in ECU version reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Attack::ArbitrarySoftware => "arbitrary-software",
            Attack::Rollback => "rollback",
            Attack::Freeze => "freeze",
            Attack::MixAndMatch => "mix-and-match",
            Attack::EndlessData => "endless-data",
            Attack::SlowRetrieval => "slow-retrieval",
            Attack::WrongHardwareId => "wrong-hardware-id",
            Attack::WrongEcu => "wrong-ecu",
            Attack::ReleaseCounterRollback => "release-counter-rollback",
        }
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
