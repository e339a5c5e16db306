//! Installing verified images: the [`Installer`] trait, the `file` and `command`
//! installers, the install journal, and the [`SecondaryTransport`] trait.
//!
//! # The install journal
//!
//! [`install_image`] brackets every install with a journal record in the store:
//!
//! 1. `install-journal.json` is written (atomically) with the target's facts and
//!    the installed-version record it will get;
//! 2. the installer runs;
//! 3. `installed.json` gets the new record (atomically);
//! 4. the journal is removed.
//!
//! After a kill anywhere in between, [`recover`] (called once at start-up, before
//! any new install) finds the journal and settles it without guessing:
//! killed after step 3 → the install is complete, the journal is cleared; killed
//! during step 2 → the installer is asked whether the image is in place
//! ([`Installer::check_installed`]): the file installer hashes the target file or
//! active slot, so a finished install is recorded and an unfinished one is
//! reported as not installed (its old file or slot is untouched, since both
//! write beside the target and switch atomically). An installer that cannot tell
//! ([`InstallCheck::Unknown`], the command installer) gets the install reported
//! as interrupted; the next check-in offers the update again, so **commands must
//! be safe to run twice**. Nothing is ever marked installed that was not, and a
//! completed install is never run again because `installed.json` already lists
//! it ([`InstallOutcome::AlreadyInstalled`]).
//!
//! # Cancel during install
//!
//! An install, once begun, is not cancellable: cancellation (D-Bus `Cancel`,
//! SIGTERM) takes effect before the next step. With systemd, run the unit with
//! `KillMode=mixed` so that SIGTERM reaches the daemon only and an installer
//! command can finish.

use crate::error::{Error, Result};
use crate::store::{sync_dir, InstalledRecord, JournalRecord, Store};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Bytes of an installer command's stderr kept for the error message.
pub const STDERR_TAIL_BYTES: usize = 2048;

/// What an installer is told about the image it installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFacts {
    /// Target name.
    pub name: String,
    /// ECU serial.
    pub ecu_serial: String,
    /// Hardware ID of the ECU.
    pub hardware_id: String,
    /// Release counter of the image (0 when none).
    pub release_counter: u64,
    /// Length of the image to install (the plaintext, for encrypted images).
    pub length: u64,
    /// Hex SHA-256 of the image to install (the plaintext, for encrypted images).
    pub sha256: String,
}

impl TargetFacts {
    /// The facts of a verified target. For encrypted images, length and hash
    /// are those of the decrypted image, from the signed `encryption` field.
    pub fn for_target(target: &secureev_uptane::uptane::UpdateTarget) -> Result<Self> {
        let missing = || Error::Install {
            target: target.name().to_owned(),
            ecu: target.ecu_serial().to_owned(),
            reason: "the signed metadata gives no sha256 for the image".into(),
        };
        let (length, sha256) = match crate::fetch::download::encryption_info(target)? {
            Some(info) => (
                info.plaintext_length,
                info.plaintext_hashes
                    .get("sha256")
                    .cloned()
                    .ok_or_else(missing)?,
            ),
            None => (
                target.length(),
                target
                    .assignment
                    .director_target
                    .hashes
                    .get("sha256")
                    .cloned()
                    .ok_or_else(missing)?,
            ),
        };
        Ok(TargetFacts {
            name: target.name().to_owned(),
            ecu_serial: target.ecu_serial().to_owned(),
            hardware_id: target.assignment.hardware_id.clone(),
            release_counter: target.release_counter,
            length,
            sha256: sha256.to_ascii_lowercase(),
        })
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Install {
            target: self.name.clone(),
            ecu: self.ecu_serial.clone(),
            reason: reason.into(),
        }
    }
}

/// Whether an image is in place, as far as an installer can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallCheck {
    /// The image is installed and active.
    Installed,
    /// It is not.
    NotInstalled,
    /// The installer cannot tell.
    Unknown,
}

/// Installs verified images on the Primary. Later installers (RAUC over D-Bus)
/// implement the same trait.
pub trait Installer: Send + Sync {
    /// Short name for logs (`file`, `command`).
    fn kind(&self) -> &'static str;

    /// Install the verified image at `image`. Must either complete, or leave the
    /// running software as it was.
    fn install<'a>(&'a self, image: &'a Path, facts: &'a TargetFacts) -> BoxFuture<'a, Result<()>>;

    /// After a restart with an unfinished install: is the image in place?
    fn check_installed<'a>(&'a self, facts: &'a TargetFacts)
        -> BoxFuture<'a, Result<InstallCheck>>;
}

/// Copy `src` to a new file `dst` (mode 0644), hashing on the way; fsync. Fails
/// if the bytes are not the ones the facts name (the cache changed since it was
/// verified).
fn copy_checked(src: &Path, dst: &Path, facts: &TargetFacts) -> Result<()> {
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
fn sha256_of(path: &Path) -> Result<Option<String>> {
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

    fn install_blocking(&self, image: &Path, facts: &TargetFacts) -> Result<()> {
        match &self.target {
            FileTarget::Single(path) => {
                let tmp = side_path(path, "install");
                let r = copy_checked(image, &tmp, facts).and_then(|()| {
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
                let r = copy_checked(image, &tmp, facts).and_then(|()| {
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

    fn install<'a>(&'a self, image: &'a Path, facts: &'a TargetFacts) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (this, image, facts) = (self.clone(), image.to_owned(), facts.clone());
            tokio::task::spawn_blocking(move || this.install_blocking(&image, &facts))
                .await
                .map_err(|e| Error::io("install", PathBuf::new(), std::io::Error::other(e)))?
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

/// Installs by running a program: `program args... <image>`, with the facts in
/// the environment (`SECUREEV_TARGET`, `SECUREEV_ECU`, `SECUREEV_HARDWARE_ID`,
/// `SECUREEV_RELEASE_COUNTER`, `SECUREEV_SHA256`, `SECUREEV_LENGTH`). Exit status
/// 0 is success; anything else fails the install with the end of its stderr.
/// Its stdout goes to the daemon's log.
#[derive(Debug, Clone)]
pub struct CommandInstaller {
    program: PathBuf,
    args: Vec<String>,
}

impl CommandInstaller {
    /// An installer running `program` with `args` before the image path.
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        CommandInstaller {
            program: program.into(),
            args,
        }
    }
}

/// The last `max` bytes of `bytes`, as text.
fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

impl Installer for CommandInstaller {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn install<'a>(&'a self, image: &'a Path, facts: &'a TargetFacts) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let output = tokio::process::Command::new(&self.program)
                .args(&self.args)
                .arg(image)
                .env("SECUREEV_TARGET", &facts.name)
                .env("SECUREEV_ECU", &facts.ecu_serial)
                .env("SECUREEV_HARDWARE_ID", &facts.hardware_id)
                .env(
                    "SECUREEV_RELEASE_COUNTER",
                    facts.release_counter.to_string(),
                )
                .env("SECUREEV_SHA256", &facts.sha256)
                .env("SECUREEV_LENGTH", facts.length.to_string())
                // The installer is not the service: it must not talk to systemd
                // in the daemon's name.
                .env_remove("NOTIFY_SOCKET")
                .env_remove("WATCHDOG_USEC")
                .env_remove("WATCHDOG_PID")
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| facts.error(format!("cannot run {}: {e}", self.program.display())))?;
            let stdout = tail(&output.stdout, STDERR_TAIL_BYTES);
            if !stdout.is_empty() {
                tracing::info!(program = %self.program.display(), "installer output: {stdout}");
            }
            if output.status.success() {
                Ok(())
            } else {
                Err(facts.error(format!(
                    "{} failed ({}): {}",
                    self.program.display(),
                    output.status,
                    tail(&output.stderr, STDERR_TAIL_BYTES)
                )))
            }
        })
    }

    fn check_installed<'a>(
        &'a self,
        _facts: &'a TargetFacts,
    ) -> BoxFuture<'a, Result<InstallCheck>> {
        Box::pin(async { Ok(InstallCheck::Unknown) })
    }
}

/// The installer `config` asks for.
pub fn installer_from_config(config: &crate::config::Config) -> Box<dyn Installer> {
    use crate::config::InstallerKind;
    let i = &config.install;
    match (i.installer, &i.command, &i.file.slots, &i.file.current) {
        (InstallerKind::Command, Some(c), _, _) => {
            Box::new(CommandInstaller::new(&c.program, c.args.clone()))
        }
        (_, _, Some(slots), Some(current)) if slots.len() == 2 => {
            Box::new(FileInstaller::new(FileTarget::AbSlots {
                slots: [slots[0].clone(), slots[1].clone()],
                current: current.clone(),
            }))
        }
        // Config validation guarantees the command table and the slot pair.
        _ => Box::new(FileInstaller::new(FileTarget::Single(
            config.install_file_path(),
        ))),
    }
}

/// What [`install_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    /// The image was installed and recorded.
    Installed,
    /// `installed.json` already lists exactly this image on the ECU; nothing ran.
    AlreadyInstalled,
}

/// Install `image` with `installer`, bracketed by the journal (see the module
/// documentation). `record` is what `installed.json` gets for the ECU; `now` is
/// the daemon clock's time. Refuses to start while an earlier install is
/// unfinished: call [`recover`] first.
pub async fn install_image(
    store: &Store,
    installer: &dyn Installer,
    image: &Path,
    facts: &TargetFacts,
    record: InstalledRecord,
    now: i64,
) -> Result<InstallOutcome> {
    if let Some(current) = store.installed()?.get(&facts.ecu_serial) {
        if current.name == record.name
            && current.hashes == record.hashes
            && current.length == record.length
        {
            return Ok(InstallOutcome::AlreadyInstalled);
        }
    }
    if let Some(j) = store.journal()? {
        return Err(facts.error(format!(
            "the install of {} on {} is unfinished; recover it first",
            j.facts.name, j.facts.ecu_serial
        )));
    }
    store.begin_journal(&JournalRecord {
        facts: facts.clone(),
        record: record.clone(),
        started_at: now,
    })?;
    tracing::info!(target = %facts.name, ecu = %facts.ecu_serial, installer = installer.kind(), "installing");
    if let Err(e) = installer.install(image, facts).await {
        store.clear_journal()?;
        return Err(e);
    }
    store.set_installed(&facts.ecu_serial, record)?;
    store.clear_journal()?;
    Ok(InstallOutcome::Installed)
}

/// How [`recover`] settled an unfinished install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// There was none.
    Clean,
    /// The install had completed; it is now recorded.
    Completed(TargetFacts),
    /// The install had not taken effect; the old image is still in place.
    NotInstalled(TargetFacts),
    /// The installer cannot tell; report the install as interrupted.
    Interrupted(TargetFacts),
}

/// Settle an install that a kill interrupted (see the module documentation).
/// Call once at start-up, before any new install.
pub async fn recover(store: &Store, installer: &dyn Installer) -> Result<Recovery> {
    let Some(j) = store.journal()? else {
        return Ok(Recovery::Clean);
    };
    if store.installed()?.get(&j.facts.ecu_serial) == Some(&j.record) {
        store.clear_journal()?;
        return Ok(Recovery::Completed(j.facts));
    }
    let outcome = match installer.check_installed(&j.facts).await? {
        InstallCheck::Installed => {
            store.set_installed(&j.facts.ecu_serial, j.record.clone())?;
            Recovery::Completed(j.facts)
        }
        InstallCheck::NotInstalled => Recovery::NotInstalled(j.facts),
        InstallCheck::Unknown => Recovery::Interrupted(j.facts),
    };
    store.clear_journal()?;
    tracing::info!(?outcome, "recovered an interrupted install");
    Ok(outcome)
}

/// The metadata a secondary needs, as original bytes in verification order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataBundle {
    /// Director roles (`root`, `timestamp`, `snapshot`, `targets`), name and bytes.
    pub director: Vec<(String, Vec<u8>)>,
    /// Image repository roles (empty for partial verification).
    pub image: Vec<(String, Vec<u8>)>,
}

/// What a secondary says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryInfo {
    /// ECU serial.
    pub serial: String,
    /// Hardware ID.
    pub hardware_id: String,
    /// Its X25519 public key for image encryption, if it has one.
    pub encryption_key: Option<secureev_uptane::encryption::EcuEncryptionPublicKey>,
    /// Its report-signing key as a `did:key`, when the transport can read it
    /// (registered with the backend at provisioning).
    pub did: Option<String>,
}

/// How the Primary talks to one secondary ECU (CAN/ISO-TP or DoIP). The
/// secondary-ECU work implements it; the daemon only drives it.
pub trait SecondaryTransport: Send + Sync {
    /// The secondary's serial, hardware ID and keys.
    fn info(&self) -> BoxFuture<'_, Result<SecondaryInfo>>;
    /// Send the metadata it verifies (partial or full verification).
    fn send_metadata<'a>(&'a self, metadata: &'a MetadataBundle) -> BoxFuture<'a, Result<()>>;
    /// Send the verified image (still encrypted, if it is).
    fn send_image<'a>(
        &'a self,
        image: &'a Path,
        facts: &'a TargetFacts,
        progress: &'a (dyn Fn(crate::fetch::download::Progress) + Send + Sync),
    ) -> BoxFuture<'a, Result<()>>;
    /// Make the new image active.
    fn activate<'a>(&'a self, facts: &'a TargetFacts) -> BoxFuture<'a, Result<()>>;
    /// Its signed ECU version report (JSON bytes, as the secondary signed them).
    fn report(&self) -> BoxFuture<'_, Result<Vec<u8>>>;
}
