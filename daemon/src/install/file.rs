//! The `file` installer: the image written beside a target file, or into the
//! inactive one of two A/B slots, and switched in atomically.

use super::{InstallCheck, InstallDone, InstallProgress, Installer, TargetFacts, VerifiedFile};
use crate::error::{Error, Result};
use crate::fs::sync_dir;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Copy `src` to a new file `dst` (mode 0644), hashing on the way; fsync. Fails
/// if the bytes are not the ones the facts name (the cache changed since it was
/// verified). `on_bytes` sees the bytes written so far after every chunk.
fn copy_checked(src: &Path, dst: &Path, facts: &TargetFacts, on_bytes: &dyn Fn(u64)) -> Result<()> {
    let mut input = std::fs::File::open(src).map_err(|e| Error::io("open", src, e))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(dst)
        .map_err(|e| Error::io("create", dst, e))?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| Error::io("read", src, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("write", dst, e))?;
        on_bytes(len);
    }
    let got = hex::encode(hasher.finalize());
    if len != facts.length || !got.eq_ignore_ascii_case(&facts.sha256) {
        return Err(facts.error(format!(
            "image changed since verification: {len} bytes with sha256 {got}, expected {} bytes with {}",
            facts.length, facts.sha256
        )));
    }
    out.sync_all().map_err(|e| Error::io("fsync", dst, e))
}

/// SHA-256 of a file, `None` when it does not exist.
pub(crate) fn sha256_of(path: &Path) -> Result<Option<String>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            return Ok(Some(hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
    }
}

/// Remove `.<name>.tmp-*` files that an earlier, killed process left beside
/// `path` (the state lock guarantees no other daemon is writing them).
fn remove_stale_side_files(path: &Path) {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".tmp-");
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(dir) = std::fs::read_dir(parent(path)) else {
        return;
    };
    for entry in dir.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn side_path(path: &Path, tag: &str) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".tmp-{tag}-{}", std::process::id()));
    path.with_file_name(name)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Where the file installer puts images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileTarget {
    /// One file, replaced atomically (temporary file beside it, fsync, rename).
    Single(PathBuf),
    /// Two slot files and a symlink naming the active one. The image goes to the
    /// inactive slot (beside it, fsync, rename over it); then `current` is
    /// switched by renaming a new symlink over it, and the directory fsynced. A
    /// kill before the switch leaves the old slot active.
    AbSlots {
        /// Slot A and slot B.
        slots: [PathBuf; 2],
        /// The symlink to the active slot.
        current: PathBuf,
    },
}

/// Installs by writing files ([`FileTarget`]).
#[derive(Debug, Clone)]
pub struct FileInstaller {
    target: FileTarget,
}

impl FileInstaller {
    /// An installer writing to `target`.
    pub fn new(target: FileTarget) -> Self {
        FileInstaller { target }
    }

    /// The slot `current` points at, if it points at one of the slots.
    pub fn active_slot(&self) -> Option<usize> {
        let FileTarget::AbSlots { slots, current } = &self.target else {
            return None;
        };
        let link = std::fs::read_link(current).ok()?;
        let link = if link.is_relative() {
            parent(current).join(link)
        } else {
            link
        };
        slots.iter().position(|s| *s == link)
    }

    /// The file holding the running image.
    fn active_file(&self) -> Option<PathBuf> {
        match &self.target {
            FileTarget::Single(p) => Some(p.clone()),
            FileTarget::AbSlots { slots, .. } => self.active_slot().map(|i| slots[i].clone()),
        }
    }

    fn install_blocking(
        &self,
        image: &Path,
        facts: &TargetFacts,
        on_bytes: &dyn Fn(u64),
    ) -> Result<()> {
        match &self.target {
            FileTarget::Single(path) => {
                let tmp = side_path(path, "install");
                let r = copy_checked(image, &tmp, facts, on_bytes).and_then(|()| {
                    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))?;
                    sync_dir(parent(path))
                });
                if r.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                r
            }
            FileTarget::AbSlots { slots, current } => {
                let inactive = match self.active_slot() {
                    Some(0) => 1,
                    _ => 0,
                };
                let slot = &slots[inactive];
                let tmp = side_path(slot, "install");
                let r = copy_checked(image, &tmp, facts, on_bytes).and_then(|()| {
                    std::fs::rename(&tmp, slot).map_err(|e| Error::io("rename", slot, e))?;
                    sync_dir(parent(slot))
                });
                if r.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                    return r;
                }
                // The switch: one rename of a symlink, atomic.
                let link_tmp = side_path(current, "switch");
                let _ = std::fs::remove_file(&link_tmp);
                std::os::unix::fs::symlink(slot, &link_tmp)
                    .map_err(|e| Error::io("symlink", &link_tmp, e))?;
                if let Err(e) = std::fs::rename(&link_tmp, current) {
                    let _ = std::fs::remove_file(&link_tmp);
                    return Err(Error::io("rename", current, e));
                }
                sync_dir(parent(current))
            }
        }
    }
}

impl Installer for FileInstaller {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn install<'a>(&'a self, image: &'a VerifiedFile) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.install_with_progress(image, &|_| {}).await.map(drop) })
    }

    /// Reports the bytes written after every chunk (the copy runs on the
    /// blocking pool; its counts reach `progress` through a channel, one
    /// `u64` per 64 KiB chunk, so a slow subscriber never slows the copy).
    fn install_with_progress<'a>(
        &'a self,
        image: &'a VerifiedFile,
        progress: &'a (dyn Fn(InstallProgress) + Send + Sync),
    ) -> BoxFuture<'a, Result<InstallDone>> {
        Box::pin(async move {
            let facts = TargetFacts::for_install(image)?;
            let (this, image) = (self.clone(), image.location().clone());
            let total = facts.length;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
            let mut copy = tokio::task::spawn_blocking(move || {
                this.install_blocking(&image, &facts, &|n| {
                    // The receiver outlives the copy.
                    let _ = tx.send(n);
                })
            });
            let report = |done: u64| {
                progress(InstallProgress {
                    percent: if total == 0 {
                        0
                    } else {
                        (u128::from(done.min(total)) * 100 / u128::from(total)) as u32
                    },
                    message: format!("writing {done} of {total} bytes"),
                    depth: 1,
                    bytes: Some((done, total)),
                })
            };
            let mut counting = true;
            let result = loop {
                tokio::select! {
                    r = &mut copy => break r,
                    n = rx.recv(), if counting => match n {
                        Some(done) => report(done),
                        // The copy ended: its result follows.
                        None => counting = false,
                    },
                }
            };
            // Counts sent after the last poll, in order.
            while let Ok(done) = rx.try_recv() {
                report(done);
            }
            let result = result
                .map_err(|e| Error::io("install", PathBuf::new(), std::io::Error::other(e)))?;
            result.map(|()| InstallDone::Active)
        })
    }

    fn check_installed<'a>(
        &'a self,
        facts: &'a TargetFacts,
    ) -> BoxFuture<'a, Result<InstallCheck>> {
        Box::pin(async move {
            // Regression (e2e_crash): a kill mid-install left the temporary
            // copy behind, one image of disk per kill.
            match &self.target {
                FileTarget::Single(p) => remove_stale_side_files(p),
                FileTarget::AbSlots { slots, current } => {
                    slots.iter().for_each(|s| remove_stale_side_files(s));
                    remove_stale_side_files(current);
                }
            }
            let Some(active) = self.active_file() else {
                return Ok(InstallCheck::NotInstalled);
            };
            let hash = tokio::task::spawn_blocking(move || sha256_of(&active))
                .await
                .map_err(|e| Error::io("hash", PathBuf::new(), std::io::Error::other(e)))??;
            Ok(match hash {
                Some(h) if h.eq_ignore_ascii_case(&facts.sha256) => InstallCheck::Installed,
                _ => InstallCheck::NotInstalled,
            })
        })
    }
}
