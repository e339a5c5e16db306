//! Values carried by properties, signals and method results.
//!
//! Structured values travel as `a{sv}` dictionaries with `kebab-case` keys, like
//! RAUC's, so that later versions can add keys without breaking old clients.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use zbus::zvariant::{DeserializeDict, OwnedValue, SerializeDict, Type, Value};

/// The daemon's coarse state, the `State` property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum State {
    /// Nothing running, nothing pending.
    #[default]
    Idle,
    /// Talking to the backend and verifying metadata.
    Checking,
    /// Downloading images.
    Downloading,
    /// Verifying downloaded images.
    Verifying,
    /// A verified update waits for `Install` (or for preconditions / postponement).
    AwaitingConsent,
    /// Installing on one or more ECUs.
    Installing,
    /// Sending the vehicle version manifest.
    Reporting,
    /// The last operation failed; see `LastError` and `LastErrorCode`.
    Error,
}

impl State {
    /// Every state.
    pub const ALL: &'static [State] = &[
        State::Idle,
        State::Checking,
        State::Downloading,
        State::Verifying,
        State::AwaitingConsent,
        State::Installing,
        State::Reporting,
        State::Error,
    ];

    /// The string sent on the bus.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Checking => "checking",
            State::Downloading => "downloading",
            State::Verifying => "verifying",
            State::AwaitingConsent => "awaiting-consent",
            State::Installing => "installing",
            State::Reporting => "reporting",
            State::Error => "error",
        }
    }

    /// Whether an operation is running, so new work is refused with `Busy`.
    pub fn is_busy(self) -> bool {
        matches!(
            self,
            State::Checking
                | State::Downloading
                | State::Verifying
                | State::Installing
                | State::Reporting
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `State` string this version does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown state {:?}", self.0)
    }
}

impl std::error::Error for UnknownState {}

impl FromStr for State {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// The `Progress` property (`a{sv}`).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, SerializeDict, DeserializeDict, Type, Value, OwnedValue,
)]
#[zvariant(signature = "dict", rename_all = "kebab-case")]
pub struct Progress {
    /// Overall progress of the running operation, 0–100.
    pub percent: u32,
    /// The phase, one of the `State` strings (`downloading`, `installing`...).
    pub phase: String,
    /// Bytes done in this phase.
    pub bytes_done: u64,
    /// Bytes in this phase (0 when unknown).
    pub bytes_total: u64,
    /// Serial of the ECU being worked on (empty when none).
    pub ecu: String,
    /// English message for logs; UIs build their own text from the other fields.
    pub message: String,
}

/// One ECU's part of the pending update (an entry of `PendingUpdates`).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, SerializeDict, DeserializeDict, Type, Value, OwnedValue,
)]
#[zvariant(signature = "dict", rename_all = "kebab-case")]
pub struct PendingUpdate {
    /// Id of the whole plan this entry belongs to (the same in every entry); pass it
    /// to `Install`. Set by [`UpdatePlan::new`].
    pub update_id: String,
    /// ECU serial.
    pub ecu_serial: String,
    /// ECU hardware id.
    pub hardware_id: String,
    /// Target file name from the Director.
    pub target: String,
    /// Human version to be installed (the Image repository's signed
    /// `custom.version`, sanitised; empty when it gives none).
    pub version: String,
    /// Release counter of the image (its anti-rollback number; 0 when none).
    pub release_counter: u64,
    /// Image length in bytes.
    pub size: u64,
    /// SHA-256 of the image, lowercase hex.
    pub sha256: String,
    /// Release notes to show the driver (the Image repository's signed
    /// `custom.releaseNotes`, sanitised; may be empty).
    pub release_notes: String,
}

/// One ECU (an entry of `Ecus`).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, SerializeDict, DeserializeDict, Type, Value, OwnedValue,
)]
#[zvariant(signature = "dict", rename_all = "kebab-case")]
pub struct Ecu {
    /// ECU serial.
    pub serial: String,
    /// Hardware id.
    pub hardware_id: String,
    /// Human version of the installed image (empty when unknown: the image
    /// came without one, or was installed before the daemon recorded it).
    pub installed_version: String,
    /// Target name of the installed image (empty when unknown).
    pub installed_target: String,
    /// Release counter of the installed image (0 when unknown or none).
    pub installed_release_counter: u64,
    /// Whether this is the primary (the head unit running the daemon).
    pub primary: bool,
    /// How the Primary reaches it: `""` for the Primary itself, `"can"` (UDS
    /// over ISO-TP) or `"doip"`.
    pub transport: String,
    /// The link as of the last exchange: `"ok"` (it answered), `"refused"`
    /// (it answered and refused the request: see `LastError`),
    /// `"unreachable"` (no answer), `"unknown"` (not contacted since the
    /// daemon started). Always `"ok"` for the Primary.
    pub status: String,
    /// When an exchange with the ECU last completed (it answered every
    /// request of it, possibly with a refusal), Unix seconds (0: not since
    /// start).
    pub last_contact: i64,
}

/// A condition that must hold before an install starts (an entry of `Preconditions`).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, SerializeDict, DeserializeDict, Type, Value, OwnedValue,
)]
#[zvariant(signature = "dict", rename_all = "kebab-case")]
pub struct Precondition {
    /// Name, e.g. `parked` or `battery`.
    pub name: String,
    /// Whether it holds now.
    pub satisfied: bool,
    /// Why, in English (e.g. `"state of charge 12% < 30%"`).
    pub reason: String,
}

/// One past operation (an entry of `GetHistory`'s result).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, SerializeDict, DeserializeDict, Type, Value, OwnedValue,
)]
#[zvariant(signature = "dict", rename_all = "kebab-case")]
pub struct HistoryEntry {
    /// When it ended, Unix seconds.
    pub time: i64,
    /// What it was: `check`, `install`, `provision`...
    pub action: String,
    /// The update id involved (empty when none).
    pub update_id: String,
    /// The ECU involved (empty for the whole vehicle).
    pub ecu_serial: String,
    /// The human version involved (empty when none).
    pub version: String,
    /// The release counter involved (0 when none).
    pub release_counter: u64,
    /// Outcome, an [`crate::ErrorCode`] number (0 is success).
    pub code: u32,
    /// English message.
    pub message: String,
    /// The caller's `transaction-id` option of the operation (empty: none).
    pub transaction_id: String,
}

/// The id that binds consent to one exact update: lowercase hex SHA-256 over every
/// field of every entry of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpdateId(String);

impl UpdateId {
    /// Wraps an id received from the bus or read back from published state. Only
    /// [`UpdatePlan::new`] computes ids; this is for comparing and passing them on.
    pub fn from_published(id: &str) -> Self {
        UpdateId(id.to_owned())
    }

    /// The id as sent on the bus.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UpdateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The set of per-ECU updates offered together, with its [`UpdateId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdatePlan {
    id: UpdateId,
    updates: Vec<PendingUpdate>,
}

impl UpdatePlan {
    /// Builds a plan, sorting entries by ECU serial and stamping each with the plan id.
    ///
    /// The id hashes a length-prefixed encoding of every field (serial, hardware id,
    /// target, version, release counter, size, SHA-256 and release notes), so any change to what the
    /// driver was shown yields a different id and a stale `Install` is refused.
    pub fn new(mut updates: Vec<PendingUpdate>) -> Self {
        updates.sort_by(|a, b| a.ecu_serial.cmp(&b.ecu_serial));
        let mut h = Sha256::new();
        h.update(b"secureev-update-plan-v1\0");
        h.update((updates.len() as u64).to_be_bytes());
        for u in &updates {
            for field in [
                u.ecu_serial.as_bytes(),
                u.hardware_id.as_bytes(),
                u.target.as_bytes(),
                u.version.as_bytes(),
                &u.release_counter.to_be_bytes(),
                &u.size.to_be_bytes(),
                u.sha256.as_bytes(),
                u.release_notes.as_bytes(),
            ] {
                h.update((field.len() as u64).to_be_bytes());
                h.update(field);
            }
        }
        let id = UpdateId(hex::encode(h.finalize()));
        for u in &mut updates {
            u.update_id = id.0.clone();
        }
        UpdatePlan { id, updates }
    }

    /// The plan's id.
    pub fn id(&self) -> &UpdateId {
        &self.id
    }

    /// The per-ECU entries, sorted by ECU serial.
    pub fn updates(&self) -> &[PendingUpdate] {
        &self.updates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(serial: &str, version: &str) -> PendingUpdate {
        PendingUpdate {
            ecu_serial: serial.into(),
            hardware_id: "hu".into(),
            target: format!("{serial}-{version}.img"),
            version: version.into(),
            size: 10,
            sha256: "00".repeat(32),
            ..Default::default()
        }
    }

    #[test]
    fn plan_id_is_order_independent_and_stamped() {
        let a = UpdatePlan::new(vec![entry("b", "1"), entry("a", "1")]);
        let b = UpdatePlan::new(vec![entry("a", "1"), entry("b", "1")]);
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id().as_str().len(), 64);
        assert!(a.updates().iter().all(|u| u.update_id == a.id().as_str()));
    }

    #[test]
    fn plan_id_changes_with_any_field() {
        let base = UpdatePlan::new(vec![entry("a", "1")]);
        let mut notes = entry("a", "1");
        notes.release_notes = "new".into();
        assert_ne!(base.id(), UpdatePlan::new(vec![notes]).id());
        assert_ne!(base.id(), UpdatePlan::new(vec![entry("a", "2")]).id());
    }

    #[test]
    fn state_strings_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>(), Ok(*s));
        }
        assert!("bogus".parse::<State>().is_err());
    }
}
