//! Persistent state: `state.json` (active slot, installed image, counters,
//! time floor, the attacks and installation result not yet delivered) and
//! the trusted metadata under `metadata/`.
//! Every write is atomic; the A/B switch is one atomic write of `state.json`.

use crate::error::{Error, Result};
use crate::fsutil::{atomic_write, create_dir, read_optional};
use secureev_uptane::uptane::InstalledImage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the state record.
pub const STATE_FILE: &str = "state.json";

/// An A/B slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot A.
    #[default]
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// Outcome of the last installation, for the next version report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastInstall {
    /// Whether it succeeded.
    pub success: bool,
    /// Result code name.
    pub code: String,
    /// Detail.
    pub message: String,
    /// The `report_counter` of the first version report that carried it;
    /// `None` until one did. It is kept (and reported again) until the
    /// Primary says a report at or after that counter was delivered
    /// (`REPORT_DELIVERED`, `docs/secondary-protocol.md` §5.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_in: Option<u64>,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The slot that runs.
    pub active_slot: Slot,
    /// The image in it, if one was installed through Uptane (the core's one
    /// installed-image type, `{"name", "length", "hashes", "release_counter"}`).
    pub installed: Option<InstalledImage>,
    /// Next version report counter.
    pub report_counter: u64,
    /// The latest securely attested time (Unix seconds); the ECU's clock never
    /// goes below it.
    pub time_floor: Option<i64>,
    /// Version of the trusted Director targets (rollback reference).
    pub director_targets_version: Option<u64>,
    /// Attack names detected and not yet delivered to the Director.
    #[serde(default)]
    pub attacks: Vec<String>,
    /// Attack name → the `report_counter` of the first version report that
    /// carried it (an attack of `attacks` not listed here is in no report
    /// yet). Cleared with the attack once a report at or after that counter
    /// was delivered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attacks_reported: BTreeMap<String, u64>,
    /// The last installation's outcome, until a report carrying it was
    /// delivered.
    #[serde(default)]
    pub last_install: Option<LastInstall>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// Which repository a stored role belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repo {
    /// Director.
    Director,
    /// Image repository.
    Image,
}

impl StateDir {
    /// Open (create, mode 0700) the directory.
    pub fn open(dir: &Path) -> Result<Self> {
        for d in [
            dir.to_owned(),
            dir.join("metadata/director"),
            dir.join("metadata/image"),
        ] {
            create_dir(&d).map_err(|e| Error::io("create", &d, e))?;
        }
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Load `state.json` (default state when absent).
    pub fn load(&self) -> Result<State> {
        let p = self.dir.join(STATE_FILE);
        match read_optional(&p).map_err(|e| Error::io("read", &p, e))? {
            None => Ok(State::default()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| Error::CorruptState {
                path: p,
                reason: e.to_string(),
            }),
        }
    }

    /// Save `state.json` atomically.
    pub fn save(&self, state: &State) -> Result<()> {
        let p = self.dir.join(STATE_FILE);
        let mut b = serde_json::to_vec_pretty(state).map_err(|e| Error::CorruptState {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        b.push(b'\n');
        atomic_write(&p, &b).map_err(|e| Error::io("write", &p, e))
    }

    fn meta_path(&self, repo: Repo, role: &str) -> PathBuf {
        let r = match repo {
            Repo::Director => "director",
            Repo::Image => "image",
        };
        self.dir
            .join("metadata")
            .join(r)
            .join(format!("{role}.json"))
    }

    /// A stored trusted role (`root`, `timestamp`, `snapshot`, `targets`).
    pub fn metadata(&self, repo: Repo, role: &str) -> Result<Option<Vec<u8>>> {
        let p = self.meta_path(repo, role);
        read_optional(&p).map_err(|e| Error::io("read", &p, e))
    }

    /// Store a verified role's original bytes.
    pub fn save_metadata(&self, repo: Repo, role: &str, bytes: &[u8]) -> Result<()> {
        let p = self.meta_path(repo, role);
        atomic_write(&p, bytes).map_err(|e| Error::io("write", &p, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `state.json` as this version and the ones before it wrote it (the
    /// installed image was `state::Installed` then): it still loads, and
    /// saving it again gives the same bytes.
    const STATE_JSON: &str = r#"{
  "active_slot": "b",
  "installed": {
    "name": "bms-2.0.bin",
    "length": 14,
    "hashes": {
      "sha256": "4a9c1ad6e6d62cbbc7ad6b2c3e36bfb0e1ae04e2b4adcc3a31e4b2b5ce1b5e7a"
    },
    "release_counter": 2
  },
  "report_counter": 5,
  "time_floor": 1900000000,
  "director_targets_version": 3,
  "attacks": [],
  "last_install": {
    "success": true,
    "code": "OK",
    "message": "bms-2.0.bin active in slot B"
  }
}
"#;

    #[test]
    fn state_json_keeps_its_format() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), STATE_JSON).unwrap();
        let sd = StateDir::open(dir.path()).unwrap();
        let state = sd.load().unwrap();
        let i = state.installed.as_ref().unwrap();
        assert_eq!(
            (i.name(), i.length(), i.release_counter()),
            ("bms-2.0.bin", 14, 2)
        );
        assert_eq!(i.hashes().len(), 1);
        sd.save(&state).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap(),
            STATE_JSON
        );
    }
}
