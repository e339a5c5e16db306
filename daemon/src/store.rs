//! The state directory: trusted metadata, installed versions, counters, the time
//! floor and the install journal, every write atomic.
//!
//! Layout of `[state] dir`:
//!
//! ```text
//! metadata/director/{root,timestamp,snapshot,targets}.json   original bytes
//! metadata/director/delegated/<role, percent-encoded>.json
//! metadata/director/roots/<version>.root.json                every root version verified
//! metadata/image/...                                         the same for the Image repository
//! installed.json        ECU serial -> installed image
//! report-counter.json   the next ECU version report counter
//! time-floor.json       the persisted time floor (see `clock`)
//! install-journal.json  the install in progress, if any (see `install`)
//! unreported-result.json  the last installation result, until a manifest
//!                       carrying it was accepted by the Director
//! ```
//!
//! Every file is replaced with [`crate::fs::atomic_write`]: a temporary file in the same
//! directory is written and fsynced, renamed over the old file, and the directory
//! is fsynced. A kill at any point leaves either the old or the new file; a
//! temporary file left behind by a kill is removed by [`Store::open`].

use crate::error::{Error, Result};
use crate::fs::{
    atomic_write, create_dir, parent_dir, read_optional, remove_stale_temps, sync_dir,
    STATE_FILE_MODE,
};
use secureev_uptane::uptane::InstalledImage;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The two Uptane repositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repo {
    /// The Director repository.
    Director,
    /// The Image repository.
    Image,
}

impl Repo {
    /// Directory name under `metadata/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Repo::Director => "director",
            Repo::Image => "image",
        }
    }
}

/// A metadata role, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role<'a> {
    /// `root.json` (the newest trusted root).
    Root,
    /// `timestamp.json`.
    Timestamp,
    /// `snapshot.json`.
    Snapshot,
    /// `targets.json`.
    Targets,
    /// A delegated targets role, by name.
    Delegated(&'a str),
}

/// Percent-encode a role name into a safe file name: only `[A-Za-z0-9_-]` stay,
/// so `/`, `.` and `..` can never escape the directory.
fn encode_role(role: &str) -> String {
    let mut out = String::with_capacity(role.len());
    for b in role.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What is installed on one ECU: the core's one installed-image type
/// ([`InstalledImage`], made from the verified image by [`Self::of`]) and
/// when and as which shown version it was installed. In `installed.json` the
/// image's fields come first, at the top level of the record:
/// `{"name", "length", "hashes", "release_counter", "installed_at", "version"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledRecord {
    /// The installed image.
    #[serde(flatten)]
    pub image: InstalledImage,
    /// When it was installed (Unix seconds, from the daemon's clock).
    pub installed_at: i64,
    /// Human version the Image repository signed for it (sanitised), when
    /// it gave one; absent in records written before versions were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl InstalledRecord {
    /// The record of the verified `image` once installed, at `installed_at`
    /// (Unix seconds): what the image says is installed
    /// ([`VerifiedImage::installed_image`](secureev_uptane::image::VerifiedImage::installed_image))
    /// and its shown version.
    pub fn of(image: &crate::install::VerifiedFile, installed_at: i64) -> Self {
        InstalledRecord {
            image: image.installed_image(),
            installed_at,
            version: crate::install::shown_version(image.target()),
        }
    }

    /// The installed image.
    pub fn to_installed_image(&self) -> InstalledImage {
        self.image.clone()
    }
}

impl std::ops::Deref for InstalledRecord {
    type Target = InstalledImage;
    fn deref(&self) -> &InstalledImage {
        &self.image
    }
}

/// The Primary's installation result (Uptane 2.1 §5.4.2.1.2), kept in
/// [`Store::unreported_result`] from the moment the install ended until the
/// Director accepted a manifest carrying it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreportedResult {
    /// Whether the install succeeded.
    pub success: bool,
    /// Its result code (`installed`, `install-failed`, ...).
    pub code: String,
    /// Detail.
    pub message: String,
}

/// Installed images by ECU serial.
pub type InstalledVersions = BTreeMap<String, InstalledRecord>;

/// An exclusive `flock` on the state directory's `lock` file, held while the
/// daemon runs so that two daemons never share one state directory (each
/// would delete the other's temporary files). Released when dropped or when
/// the process dies.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// The state directory. Writes are not serialised between tasks: one task (the
/// update worker) writes, others only read.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

const INSTALLED: &str = "installed.json";
const REPORT_COUNTER: &str = "report-counter.json";
const TIME_FLOOR: &str = "time-floor.json";
const UNREPORTED_RESULT: &str = "unreported-result.json";

/// Whether the state directory `dir` holds a trusted root of either
/// repository, i.e. the vehicle has started with it before. Nothing is
/// created.
pub fn has_trusted_state(dir: &Path) -> bool {
    [Repo::Director, Repo::Image].iter().any(|repo| {
        dir.join("metadata")
            .join(repo.as_str())
            .join("root.json")
            .exists()
    })
}

impl Store {
    /// Open (and create, mode 0700) the state directory, and remove temporary
    /// files left by a killed writer.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let store = Store { dir: dir.into() };
        create_dir(&store.dir)?;
        remove_stale_temps(&store.dir)?;
        for repo in [Repo::Director, Repo::Image] {
            let meta = store.metadata_dir(repo);
            create_dir(&meta.join("delegated"))?;
            create_dir(&meta.join("roots"))?;
            remove_stale_temps(&meta)?;
            remove_stale_temps(&meta.join("delegated"))?;
            remove_stale_temps(&meta.join("roots"))?;
        }
        Ok(store)
    }

    /// Take the state directory's lock, then [`open`](Self::open) it.
    pub fn open_locked(dir: impl Into<PathBuf>) -> Result<(Self, StateLock)> {
        let dir = dir.into();
        create_dir(&dir)?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(STATE_FILE_MODE)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(Error::AlreadyRunning { path }),
            Err(e) => return Err(Error::io("lock", &path, e.into())),
        }
        Ok((Store::open(dir)?, StateLock { _file: file }))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn metadata_dir(&self, repo: Repo) -> PathBuf {
        self.dir.join("metadata").join(repo.as_str())
    }

    /// Where a role of a repository is stored.
    pub fn metadata_path(&self, repo: Repo, role: Role<'_>) -> PathBuf {
        let dir = self.metadata_dir(repo);
        match role {
            Role::Root => dir.join("root.json"),
            Role::Timestamp => dir.join("timestamp.json"),
            Role::Snapshot => dir.join("snapshot.json"),
            Role::Targets => dir.join("targets.json"),
            Role::Delegated(name) => dir
                .join("delegated")
                .join(format!("{}.json", encode_role(name))),
        }
    }

    /// The stored bytes of a role, if any.
    pub fn load_metadata(&self, repo: Repo, role: Role<'_>) -> Result<Option<Vec<u8>>> {
        read_optional(&self.metadata_path(repo, role))
    }

    /// Store the original bytes of a verified role.
    pub fn save_metadata(&self, repo: Repo, role: Role<'_>, bytes: &[u8]) -> Result<()> {
        atomic_write(&self.metadata_path(repo, role), bytes)
    }

    /// Keep root `version` of `repo` (original bytes) for secondaries that are
    /// more than one root version behind: they need the whole chain.
    pub fn save_root_version(&self, repo: Repo, version: u64, bytes: &[u8]) -> Result<()> {
        let path = self
            .metadata_dir(repo)
            .join("roots")
            .join(format!("{version}.root.json"));
        atomic_write(&path, bytes)
    }

    /// Every kept root of `repo`, oldest first (empty for a state directory
    /// written before roots were kept; callers fall back to `root.json`).
    pub fn root_chain(&self, repo: Repo) -> Result<Vec<Vec<u8>>> {
        let dir = self.metadata_dir(repo).join("roots");
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", dir, e)),
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name
                .strip_suffix(".root.json")
                .and_then(|v| v.parse::<u64>().ok())
            {
                found.push((v, e.path()));
            }
        }
        found.sort();
        found
            .into_iter()
            .map(|(_, p)| fs::read(&p).map_err(|e| Error::io("read", p, e)))
            .collect()
    }

    /// Delete a stored role (e.g. timestamp and snapshot after a key rotation,
    /// TUF 1.0 §5.3.11 fast-forward attack recovery). Missing files are fine.
    pub fn remove_metadata(&self, repo: Repo, role: Role<'_>) -> Result<()> {
        let path = self.metadata_path(repo, role);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(parent_dir(&path)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    pub(crate) fn load_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let path = self.dir.join(name);
        match read_optional(&path)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| Error::CorruptState {
                        path,
                        reason: e.to_string(),
                    })
            }
        }
    }

    pub(crate) fn save_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::CorruptState {
            path: self.dir.join(name),
            reason: format!("cannot serialise: {e}"),
        })?;
        bytes.push(b'\n');
        atomic_write(&self.dir.join(name), &bytes)
    }

    pub(crate) fn remove(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    /// Installed images by ECU serial (empty when nothing was recorded yet).
    pub fn installed(&self) -> Result<InstalledVersions> {
        Ok(self.load_json(INSTALLED)?.unwrap_or_default())
    }

    /// Replace the installed versions.
    pub fn save_installed(&self, installed: &InstalledVersions) -> Result<()> {
        self.save_json(INSTALLED, installed)
    }

    /// Record one ECU's installed image.
    pub fn set_installed(&self, ecu: &str, record: InstalledRecord) -> Result<()> {
        let mut all = self.installed()?;
        all.insert(ecu.to_owned(), record);
        self.save_installed(&all)
    }

    /// Take the next report counter: returns it and persists its successor first,
    /// so that a counter is never used twice, even across a kill.
    pub fn next_report_counter(&self) -> Result<u64> {
        let current: u64 = self.load_json(REPORT_COUNTER)?.unwrap_or(0);
        let next = current.checked_add(1).ok_or_else(|| Error::CorruptState {
            path: self.dir.join(REPORT_COUNTER),
            reason: "report counter overflow".into(),
        })?;
        self.save_json(REPORT_COUNTER, &next)?;
        Ok(current)
    }

    /// The installation result no accepted manifest has carried yet.
    pub fn unreported_result(&self) -> Result<Option<UnreportedResult>> {
        self.load_json(UNREPORTED_RESULT)
    }

    /// Keep `result` until a manifest carrying it is accepted (replacing an
    /// older one: a manifest carries one installation result).
    pub fn save_unreported_result(&self, result: &UnreportedResult) -> Result<()> {
        self.save_json(UNREPORTED_RESULT, result)
    }

    /// The Director accepted a manifest carrying the result.
    pub fn clear_unreported_result(&self) -> Result<()> {
        self.remove(UNREPORTED_RESULT)
    }

    /// The persisted time floor (Unix seconds), if any.
    pub fn time_floor(&self) -> Result<Option<i64>> {
        self.load_json(TIME_FLOOR)
    }

    /// Persist the time floor.
    pub fn save_time_floor(&self, floor: i64) -> Result<()> {
        self.save_json(TIME_FLOOR, &floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `installed.json` as this version and the ones before it wrote it (the
    /// record had its own copy of the image's fields then): it still loads,
    /// and saving it again gives the same bytes, with and without `version`.
    const INSTALLED_JSON: &str = r#"{
  "BMS-1": {
    "name": "bms-1.0.bin",
    "length": 14,
    "hashes": {
      "sha256": "4a9c1ad6e6d62cbbc7ad6b2c3e36bfb0e1ae04e2b4adcc3a31e4b2b5ce1b5e7a"
    },
    "release_counter": 0,
    "installed_at": 1899999000
  },
  "HU-1": {
    "name": "hu-2.0.bin",
    "length": 2048,
    "hashes": {
      "sha256": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
      "sha512": "ab"
    },
    "release_counter": 7,
    "installed_at": 1900000000,
    "version": "2.0"
  }
}
"#;

    #[test]
    fn installed_json_keeps_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(INSTALLED), INSTALLED_JSON).unwrap();
        let all = store.installed().unwrap();
        let hu = &all["HU-1"];
        assert_eq!(
            (
                hu.name(),
                hu.length(),
                hu.release_counter(),
                hu.installed_at
            ),
            ("hu-2.0.bin", 2048, 7, 1_900_000_000)
        );
        assert_eq!(hu.version.as_deref(), Some("2.0"));
        assert_eq!(all["BMS-1"].version, None);
        store.save_installed(&all).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(INSTALLED)).unwrap(),
            INSTALLED_JSON
        );
    }

    #[test]
    fn a_second_daemon_cannot_take_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, lock) = Store::open_locked(dir.path()).unwrap();
        assert!(matches!(
            Store::open_locked(dir.path()),
            Err(Error::AlreadyRunning { .. })
        ));
        drop(lock);
        Store::open_locked(dir.path()).unwrap();
    }

    #[test]
    fn open_removes_stale_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".installed.json.tmp-1-0"), b"{").unwrap();
        fs::write(dir.path().join("keep.json"), b"{}").unwrap();
        Store::open(dir.path()).unwrap();
        assert!(!dir.path().join(".installed.json.tmp-1-0").exists());
        assert!(dir.path().join("keep.json").exists());
    }

    #[test]
    fn metadata_round_trip_and_role_names_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.save_metadata(Repo::Image, Role::Timestamp, b"ts")
            .unwrap();
        assert_eq!(
            s.load_metadata(Repo::Image, Role::Timestamp)
                .unwrap()
                .unwrap(),
            b"ts"
        );
        assert!(s
            .load_metadata(Repo::Director, Role::Timestamp)
            .unwrap()
            .is_none());
        let evil = s.metadata_path(Repo::Image, Role::Delegated("../../root"));
        assert_eq!(
            evil.parent().unwrap(),
            dir.path().join("metadata/image/delegated")
        );
        s.save_metadata(Repo::Image, Role::Delegated("a/b"), b"d")
            .unwrap();
        assert_eq!(
            s.load_metadata(Repo::Image, Role::Delegated("a/b"))
                .unwrap()
                .unwrap(),
            b"d"
        );
        s.remove_metadata(Repo::Image, Role::Timestamp).unwrap();
        s.remove_metadata(Repo::Image, Role::Timestamp).unwrap();
        assert!(s
            .load_metadata(Repo::Image, Role::Timestamp)
            .unwrap()
            .is_none());
    }

    #[test]
    fn report_counter_is_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_report_counter().unwrap(), 0);
        assert_eq!(s.next_report_counter().unwrap(), 1);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_report_counter().unwrap(), 2);
    }

    #[test]
    fn an_unreported_result_survives_a_restart_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.unreported_result().unwrap(), None);
        let r = UnreportedResult {
            success: false,
            code: "install-failed".into(),
            message: "no".into(),
        };
        s.save_unreported_result(&r).unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.unreported_result().unwrap(), Some(r));
        s.clear_unreported_result().unwrap();
        s.clear_unreported_result().unwrap();
        assert_eq!(s.unreported_result().unwrap(), None);
    }

    #[test]
    fn corrupt_state_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        fs::write(dir.path().join(INSTALLED), b"{not json").unwrap();
        match s.installed() {
            Err(Error::CorruptState { path, .. }) => assert!(path.ends_with(INSTALLED)),
            other => panic!("{other:?}"),
        }
    }
}
