//! Installing verified images on the Primary: the [`Installer`] trait, the
//! `file` and `command` installers, the install journal, and decryption of
//! encrypted images ([`decrypt`]).
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
//! # Installs that need a reboot
//!
//! An A/B installer that only switches the bootloader (RAUC, [`rauc`]) ends
//! with [`InstallDone::PendingReboot`]: the journal stays, marked
//! `pending_reboot`, `installed.json` keeps the running image, and no other
//! install starts ([`InstallOutcome::PendingReboot`]). After the reboot,
//! [`recover`] asks the installer again: [`InstallCheck::Installed`] records the
//! image, [`InstallCheck::Failed`] (the boot fell back, the health check
//! failed) reports the install failed with its reason, and
//! [`InstallCheck::PendingReboot`] (not rebooted yet) keeps waiting.
//!
//! # Cancel during install
//!
//! An install, once begun, is not cancellable: cancellation (D-Bus `Cancel`,
//! SIGTERM) takes effect before the next step. With systemd, run the unit with
//! `KillMode=mixed` so that SIGTERM reaches the daemon only and an installer
//! command can finish.

use crate::error::{Error, Result};
use futures_util::future::BoxFuture;
use secureev_uptane::image::{ImageForm, VerifiedImage};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

mod command;
pub mod decrypt;
mod file;
mod journal;
pub mod rauc;

pub use command::{
    parse_progress_line, CommandInstaller, ProgressLines, COMMAND_EXIT_NO_SPACE, PROGRESS_FD_ENV,
    PROGRESS_LINES_MAX, PROGRESS_LINE_MAX, STDERR_TAIL_BYTES,
};
pub use file::{FileInstaller, FileTarget};
pub use journal::{
    install_image, install_image_with_progress, recover, InstallOutcome, JournalRecord, Recovery,
};
pub use rauc::RaucInstaller;

/// The proof an installer and a secondary transport take: image bytes in a
/// file, checked against a target of a `Verified<UpdatePlan>` (length and
/// every signed hash, and for a decrypted image the plaintext length and
/// hashes). Only the core's `ImageVerifier` and `ImageDecryptor` make one
/// (the daemon's downloads through
/// [`Downloader::fetch_verified`](crate::fetch::download::Downloader::fetch_verified),
/// decryption through [`decrypt::decrypt_image`]), so an installer cannot be
/// called with a path that was not verified:
///
/// ```compile_fail
/// # use secureev_daemon::install::{FileInstaller, FileTarget, Installer};
/// # async fn f() {
/// let installer = FileInstaller::new(FileTarget::Single("/opt/fw.bin".into()));
/// installer.install(&std::path::PathBuf::from("/tmp/unchecked.bin")).await;
/// # }
/// ```
///
/// ```compile_fail
/// # use secureev_daemon::install::{FileInstaller, FileTarget, Installer};
/// # async fn f() {
/// let installer = FileInstaller::new(FileTarget::Single("/opt/fw.bin".into()));
/// installer.install(&b"unchecked bytes"[..]).await;
/// # }
/// ```
///
/// The same holds for a secondary transport:
///
/// ```compile_fail
/// # use secureev_daemon::ecus::SecondaryTransport;
/// # async fn f(t: &dyn SecondaryTransport) {
/// t.send_image(std::path::Path::new("/tmp/unchecked.bin"), &|_| {}).await;
/// # }
/// ```
pub type VerifiedFile = VerifiedImage<PathBuf>;

/// What an installer is told about the image it installs, derived from the
/// verified image ([`TargetFacts::of`]); also what the install journal keeps
/// to settle an install after a kill.
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
    /// The facts of the bytes a verified image holds: for an image as served,
    /// the Director's length and sha256; for a decrypted image, the plaintext
    /// length and sha256 from the signed `encryption` field.
    pub fn of(image: &VerifiedFile) -> Result<Self> {
        let target = image.target();
        let missing = || Error::Install {
            target: target.name().to_owned(),
            ecu: target.ecu_serial().to_owned(),
            reason: "the signed metadata gives no sha256 for the image".into(),
        };
        let info = image
            .encryption()
            .map_err(|e| Error::uptane(target.name(), e))?;
        let (length, sha256) = match (image.form(), info) {
            (ImageForm::Decrypted, Some(info)) => (
                info.plaintext_length,
                info.plaintext_hashes
                    .get("sha256")
                    .cloned()
                    .ok_or_else(missing)?,
            ),
            _ => (
                target.length(),
                target
                    .assignment()
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
            hardware_id: target.assignment().hardware_id.clone(),
            release_counter: target.release_counter(),
            length,
            sha256: sha256.to_ascii_lowercase(),
        })
    }

    /// [`TargetFacts::of`] an image an installer on the Primary may install:
    /// an encrypted image only once decrypted ([`decrypt::decrypt_image`]).
    pub fn for_install(image: &VerifiedFile) -> Result<Self> {
        let facts = Self::of(image)?;
        let encrypted = image
            .encryption()
            .map_err(|e| Error::uptane(&facts.name, e))?
            .is_some();
        if encrypted && image.form() != ImageForm::Decrypted {
            return Err(facts.error("the image is encrypted; decrypt it before installing"));
        }
        Ok(facts)
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Install {
            target: self.name.clone(),
            ecu: self.ecu_serial.clone(),
            reason: reason.into(),
        }
    }
}

/// The human version of `target` as the daemon shows and records it: the
/// Image repository's signed `custom.version`, sanitised (untrusted text on
/// a driver's screen), `None` when absent or empty after sanitising.
pub(crate) fn shown_version(target: &secureev_uptane::uptane::UpdateTarget) -> Option<String> {
    target
        .version()
        .map(|v| secureev_uptane::custom::DisplayText::Version.sanitize(v))
        .filter(|v| !v.is_empty())
}

/// Whether an image is in place, as far as an installer can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallCheck {
    /// The image is installed and active.
    Installed,
    /// It is not.
    NotInstalled,
    /// The installer cannot tell.
    Unknown,
    /// Installed, active after the reboot that has not happened yet.
    PendingReboot,
    /// It did not take, for the reason given (for the installation report).
    Failed(String),
}

/// An installer's progress (bytes written, a command's progress lines,
/// RAUC's `Progress` property, mapped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallProgress {
    /// 0..=100 of this install.
    pub percent: u32,
    /// What the installer does now (RAUC's English message).
    pub message: String,
    /// Nesting depth of the step (RAUC: 1 is the whole install).
    pub depth: u32,
    /// `(done, total)` bytes, when the installer counts them (the `file`
    /// installer: bytes written; the `command` installer: its `bytes` lines);
    /// `percent` is then derived from them.
    pub bytes: Option<(u64, u64)>,
}

/// How an install ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallDone {
    /// The new image runs (or is in place) now.
    Active,
    /// The new image runs after a reboot (A/B through the bootloader).
    PendingReboot,
}

/// Installs verified images on the Primary. Later installers (RAUC over D-Bus)
/// implement the same trait.
pub trait Installer: Send + Sync {
    /// Short name for logs (`file`, `command`).
    fn kind(&self) -> &'static str;

    /// Install the verified image (its bytes at `image.location()`; the
    /// facts are [`TargetFacts::for_install`]). Must either complete, or
    /// leave the running software as it was.
    fn install<'a>(&'a self, image: &'a VerifiedFile) -> BoxFuture<'a, Result<()>>;

    /// [`Installer::install`], reporting progress, and saying whether the
    /// image is active now or after a reboot. The default runs `install`
    /// without progress and is active at once.
    fn install_with_progress<'a>(
        &'a self,
        image: &'a VerifiedFile,
        progress: &'a (dyn Fn(InstallProgress) + Send + Sync),
    ) -> BoxFuture<'a, Result<InstallDone>> {
        let _ = progress;
        Box::pin(async move { self.install(image).await.map(|()| InstallDone::Active) })
    }

    /// After a restart with an unfinished install: is the image in place?
    fn check_installed<'a>(&'a self, facts: &'a TargetFacts)
        -> BoxFuture<'a, Result<InstallCheck>>;
}

/// The installer `config` asks for.
pub fn installer_from_config(config: &crate::config::Config) -> Box<dyn Installer> {
    use crate::config::InstallerKind;
    let i = &config.install;
    match (i.installer, &i.command, &i.file.slots, &i.file.current) {
        (InstallerKind::Rauc, _, _, _) => Box::new(RaucInstaller::new(
            i.rauc.clone().unwrap_or_default(),
            &config.state.dir,
        )),
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
