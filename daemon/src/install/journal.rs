//! The install journal (see the [`crate::install`] documentation): every
//! install bracketed by a record in the store, settled after a kill by
//! [`recover`].

use super::{InstallCheck, InstallDone, InstallProgress, Installer, TargetFacts, VerifiedFile};
use crate::error::Result;
use crate::store::{InstalledRecord, Store, UnreportedResult};
use serde::{Deserialize, Serialize};

/// The install in progress, written before an installer starts and cleared after
/// the installed version is recorded (see [`install_image`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// The target being installed.
    pub facts: TargetFacts,
    /// The record that `installed.json` gets when the install succeeds.
    pub record: InstalledRecord,
    /// When the install began (Unix seconds).
    pub started_at: i64,
    /// The installer finished and the image becomes active with the next boot
    /// ([`InstallDone::PendingReboot`]); [`recover`] settles it after the reboot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_reboot: bool,
}

const JOURNAL: &str = "install-journal.json";

impl Store {
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

/// What [`install_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    /// The image was installed and recorded.
    Installed,
    /// `installed.json` already lists exactly this image on the ECU; nothing ran.
    AlreadyInstalled,
    /// Installed; it becomes active with the next boot. The journal stays until
    /// [`recover`] settles it after the reboot.
    PendingReboot,
}

/// Install the verified `image` with `installer`, bracketed by the journal
/// (see the module documentation). `installed.json` gets the image's
/// [`InstalledImage`](secureev_uptane::uptane::InstalledImage) for the ECU,
/// installed at `now` (the daemon clock's time). Refuses to start while an
/// earlier install is unfinished: call [`recover`] first.
pub async fn install_image(
    store: &Store,
    installer: &dyn Installer,
    image: &VerifiedFile,
    now: i64,
) -> Result<InstallOutcome> {
    install_image_with_progress(store, installer, image, now, &|_| {}).await
}

/// [`install_image`], passing the installer's progress to `progress`.
pub async fn install_image_with_progress(
    store: &Store,
    installer: &dyn Installer,
    image: &VerifiedFile,
    now: i64,
    progress: &(dyn Fn(InstallProgress) + Send + Sync),
) -> Result<InstallOutcome> {
    let facts = &TargetFacts::for_install(image)?;
    let record = InstalledRecord::of(image, now);
    if let Some(current) = store.installed()?.get(&facts.ecu_serial) {
        if current.name() == record.name()
            && current.hashes() == record.hashes()
            && current.length() == record.length()
        {
            return Ok(InstallOutcome::AlreadyInstalled);
        }
    }
    if let Some(j) = store.journal()? {
        if j.pending_reboot && j.facts == *facts {
            // Installed already; waiting for the reboot. Nothing runs again.
            return Ok(InstallOutcome::PendingReboot);
        }
        if j.pending_reboot {
            return Err(facts.error(format!(
                "{} is installed on {} and waits for a reboot; no other install until then",
                j.facts.name, j.facts.ecu_serial
            )));
        }
        return Err(facts.error(format!(
            "the install of {} on {} is unfinished; recover it first",
            j.facts.name, j.facts.ecu_serial
        )));
    }
    let mut journal = JournalRecord {
        facts: facts.clone(),
        record: record.clone(),
        started_at: now,
        pending_reboot: false,
    };
    store.begin_journal(&journal)?;
    tracing::info!(target = %facts.name, ecu = %facts.ecu_serial, installer = installer.kind(), "installing");
    match installer.install_with_progress(image, progress).await {
        // The result is kept for the next manifest before the journal goes:
        // a kill after this never loses it (the agent replaces it with the
        // whole update's result once every image is done).
        Err(e) => {
            keep_result(store, false, "install-failed", e.to_string());
            store.clear_journal()?;
            Err(e)
        }
        Ok(InstallDone::PendingReboot) => {
            journal.pending_reboot = true;
            store.begin_journal(&journal)?;
            Ok(InstallOutcome::PendingReboot)
        }
        Ok(InstallDone::Active) => {
            store.set_installed(&facts.ecu_serial, record)?;
            keep_result(
                store,
                true,
                "installed",
                format!("installed on {}", facts.ecu_serial),
            );
            store.clear_journal()?;
            Ok(InstallOutcome::Installed)
        }
    }
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
    /// Installed, active after a reboot that has not happened yet; the
    /// journal stays.
    PendingReboot(TargetFacts),
    /// The install did not take (e.g. the boot fell back to the old slot);
    /// report it failed with the reason.
    Failed(TargetFacts, String),
}

impl Recovery {
    /// The installation result the next manifest reports for it (none while
    /// it waits for the reboot, or when there was nothing to settle).
    pub fn installation_result(&self) -> Option<UnreportedResult> {
        let (success, code, facts) = match self {
            Recovery::Clean | Recovery::PendingReboot(_) => return None,
            Recovery::Completed(f) => (true, "completed-after-restart", f),
            Recovery::NotInstalled(f) => (false, "interrupted-not-installed", f),
            Recovery::Interrupted(f) => (false, "interrupted", f),
            Recovery::Failed(f, reason) => {
                return Some(UnreportedResult {
                    success: false,
                    code: "activation-failed".to_owned(),
                    message: format!(
                        "install of {} on {} did not take: {reason}",
                        f.name, f.ecu_serial
                    ),
                })
            }
        };
        Some(UnreportedResult {
            success,
            code: code.to_owned(),
            message: format!(
                "install of {} on {} was interrupted by a shutdown: {code}",
                facts.name, facts.ecu_serial
            ),
        })
    }
}

/// Keep an install's result for the next manifest; a state directory that
/// cannot take it is logged (the agent keeps the result in memory too).
fn keep_result(store: &Store, success: bool, code: &str, message: String) {
    let r = UnreportedResult {
        success,
        code: code.to_owned(),
        message,
    };
    if let Err(e) = store.save_unreported_result(&r) {
        tracing::error!("cannot keep the installation result for the next manifest: {e}");
    }
}

/// The settled install's result is kept for the next manifest before the
/// journal goes (a kill in between then repeats the settling, never loses
/// it). A state directory that cannot take it leaves the result to memory
/// (the agent reports it from there).
fn clear_settled(store: &Store, outcome: &Recovery) -> Result<()> {
    if let Some(r) = outcome.installation_result() {
        keep_result(store, r.success, &r.code, r.message);
    }
    store.clear_journal()
}

/// Settle an install that a kill interrupted (see the module documentation).
/// Call once at start-up, before any new install.
pub async fn recover(store: &Store, installer: &dyn Installer) -> Result<Recovery> {
    let Some(j) = store.journal()? else {
        return Ok(Recovery::Clean);
    };
    if store.installed()?.get(&j.facts.ecu_serial) == Some(&j.record) {
        let outcome = Recovery::Completed(j.facts);
        clear_settled(store, &outcome)?;
        return Ok(outcome);
    }
    let outcome = match installer.check_installed(&j.facts).await? {
        InstallCheck::Installed => {
            store.set_installed(&j.facts.ecu_serial, j.record.clone())?;
            Recovery::Completed(j.facts)
        }
        InstallCheck::NotInstalled => Recovery::NotInstalled(j.facts),
        InstallCheck::Unknown => Recovery::Interrupted(j.facts),
        InstallCheck::Failed(reason) => Recovery::Failed(j.facts, reason),
        InstallCheck::PendingReboot => {
            if !j.pending_reboot {
                // Killed during the install, which completed meanwhile.
                store.begin_journal(&JournalRecord {
                    pending_reboot: true,
                    ..j.clone()
                })?;
            }
            tracing::info!(target = %j.facts.name, "installed, waiting for the reboot");
            return Ok(Recovery::PendingReboot(j.facts));
        }
    };
    clear_settled(store, &outcome)?;
    tracing::info!(?outcome, "recovered an interrupted install");
    Ok(outcome)
}
