//! Local storage: trusted metadata and downloaded targets.
//!
//! The conformance suite reads `METADATA_DIR` directly: every file ending in
//! `.json` there must be trusted metadata, stored under its unversioned name
//! (`root.json`, `timestamp.json`, `<quoted role>.json`) with the exact bytes
//! the repository served. Writes are atomic (temporary file, fsync, rename),
//! so a crash never leaves a half-written trusted file, and temporary files
//! never end in `.json`.

use crate::error::{Error, Result};
use crate::quote::quote_component;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The directory of trusted metadata.
#[derive(Debug, Clone)]
pub struct MetadataDir {
    dir: PathBuf,
}

impl MetadataDir {
    /// Metadata kept in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        MetadataDir { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// File of `role`: `<dir>/<quote(role, safe="")>.json`, as python-tuf's
    /// ngclient names it. Quoting keeps `/`, `..`, `?` and `#` in role names
    /// from reaching the file system as path syntax.
    pub fn path_of(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{}.json", quote_component(role)))
    }

    /// The stored bytes of `role`, or `None` when there are none.
    pub fn load(&self, role: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(role);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path)(e)),
        }
    }

    /// Store `bytes` as the trusted metadata of `role`, atomically.
    pub fn store(&self, role: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path_of(role), bytes)
    }
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory
/// (named `.secureev-tmp-<pid>-<n>`, never ending in `.json`), fsync, rename
/// over `path`, then fsync the directory (best effort). On failure the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (tmp, mut file) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".secureev-tmp-{}-{n}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(tmp)(e)),
        }
    };
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path)(e));
    }
    // Make the rename itself durable; not every platform lets a directory be
    // opened and synced, and the data is already safe, so failure is ignored.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "secureev-store-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn odd_role_names_stay_inside_the_directory() {
        let dir = scratch("odd");
        let store = MetadataDir::new(&dir);
        for role in [
            "?",
            "#",
            "/delegatedrole",
            "../delegatedrole",
            "..",
            "a/../../b",
        ] {
            let p = store.path_of(role);
            assert_eq!(p.parent(), Some(dir.as_path()), "{role}");
            store.store(role, role.as_bytes()).unwrap();
            assert_eq!(store.load(role).unwrap().as_deref(), Some(role.as_bytes()));
        }
        // Only the six metadata files: no temporary files left behind.
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 6, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".json")), "{names:?}");
        assert_eq!(store.load("missing").unwrap(), None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = scratch("atomic");
        let p = dir.join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // Renaming onto a directory fails: the temporary file must go away.
        fs::create_dir(dir.join("d.json")).unwrap();
        fs::write(dir.join("d.json").join("keep"), b"").unwrap();
        assert!(write_atomic(&dir.join("d.json"), b"x").is_err());
        let left: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 2);
        fs::remove_dir_all(dir).unwrap();
    }
}
