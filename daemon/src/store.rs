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
//! ```
//!
//! Every file is replaced with [`atomic_write`]: a temporary file in the same
//! directory is written and fsynced, renamed over the old file, and the directory
//! is fsynced. A kill at any point leaves either the old or the new file; a
//! temporary file left behind by a kill is removed by [`Store::open`].

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of state files: readable by the daemon's user only.
pub const STATE_FILE_MODE: u32 = 0o600;
/// Mode of directories the daemon creates.
pub const STATE_DIR_MODE: u32 = 0o700;
/// Marker in the names of temporary files, so that leftovers can be found.
const TEMP_MARKER: &str = ".tmp-";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::io("write", path, ErrorKind::InvalidInput.into()))?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!("{TEMP_MARKER}{}-{n}", std::process::id()));
    Ok(path.with_file_name(tmp))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync a directory, so that a rename or link in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Create `dir` and its parents with mode 0700 if missing.
pub fn create_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))
}

/// Write `bytes` to a new temporary file beside `path` with `mode`, fsynced.
fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(Error::io("write", &tmp, e))
        }
    }
}

/// Replace `path` with `bytes` atomically (mode 0600): temporary file in the same
/// directory, write, fsync, rename, fsync the directory.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("installed.json");
/// secureev_daemon::store::atomic_write(&path, b"{}").unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"{}");
/// ```
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_mode(path, bytes, STATE_FILE_MODE)
}

/// [`atomic_write`] with an explicit file mode (for new files; a rename keeps the
/// temporary file's mode).
pub fn atomic_write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = write_temp(path, bytes, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("rename", path, e));
    }
    sync_dir(parent_dir(path))
}

/// Create `path` with `bytes` and `mode` atomically, only if it does not exist.
/// Returns `false` (and writes nothing) when it already exists.
///
/// The file is written to a temporary name and hard-linked into place: `link`
/// fails when the target exists, so two racing creators cannot overwrite each
/// other and nobody ever sees a partial file.
pub fn atomic_create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    let tmp = write_temp(path, bytes, mode)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(parent_dir(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io("link", path, e)),
    }
}

/// Read a file, `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Remove temporary files that a killed writer left in `dir` (not recursive).
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(TEMP_MARKER) {
            fs::remove_file(entry.path()).map_err(|e| Error::io("remove", entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

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

/// What is installed on one ECU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledRecord {
    /// Target name.
    pub name: String,
    /// Length of the image as the Director listed it.
    pub length: u64,
    /// Hashes as the Director listed them.
    pub hashes: BTreeMap<String, String>,
    /// Release counter (0 when none).
    pub release_counter: u64,
    /// When it was installed (Unix seconds, from the daemon's clock).
    pub installed_at: i64,
}

impl InstalledRecord {
    /// As the core's [`secureev_uptane::uptane::InstalledImage`].
    pub fn to_installed_image(&self) -> secureev_uptane::uptane::InstalledImage {
        secureev_uptane::uptane::InstalledImage {
            name: self.name.clone(),
            length: self.length,
            hashes: self.hashes.clone(),
            release_counter: self.release_counter,
        }
    }
}

/// Installed images by ECU serial.
pub type InstalledVersions = BTreeMap<String, InstalledRecord>;

/// The install in progress, written before an installer starts and cleared after
/// the installed version is recorded (see [`crate::install::install_image`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// The target being installed.
    pub facts: crate::install::TargetFacts,
    /// The record that `installed.json` gets when the install succeeds.
    pub record: InstalledRecord,
    /// When the install began (Unix seconds).
    pub started_at: i64,
}

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
const JOURNAL: &str = "install-journal.json";

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

    fn load_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
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

    fn save_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::CorruptState {
            path: self.dir.join(name),
            reason: format!("cannot serialise: {e}"),
        })?;
        bytes.push(b'\n');
        atomic_write(&self.dir.join(name), &bytes)
    }

    fn remove(&self, name: &str) -> Result<()> {
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

    /// The persisted time floor (Unix seconds), if any.
    pub fn time_floor(&self) -> Result<Option<i64>> {
        self.load_json(TIME_FLOOR)
    }

    /// Persist the time floor.
    pub fn save_time_floor(&self, floor: i64) -> Result<()> {
        self.save_json(TIME_FLOOR, &floor)
    }

    /// The install in progress, if the last one did not finish.
    pub fn journal(&self) -> Result<Option<JournalRecord>> {
        self.load_json(JOURNAL)
    }

    /// Record that an install begins.
    pub fn begin_journal(&self, record: &JournalRecord) -> Result<()> {
        self.save_json(JOURNAL, record)
    }

    /// Clear the journal (the install finished, one way or the other).
    pub fn clear_journal(&self) -> Result<()> {
        self.remove(JOURNAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        assert!(atomic_create_new(&p, b"first", 0o600).unwrap());
        assert!(!atomic_create_new(&p, b"second", 0o600).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
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
