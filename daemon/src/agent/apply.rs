//! Step 4 of a cycle: apply the verified plan: the Primary's own images
//! through its installer (decrypted first when the Director wrapped a key for
//! the Primary), secondaries through their transport.

use crate::agent::{Agent, Pending};
use crate::error::{Error, Result};
use crate::fetch::download::Progress as DlProgress;
use crate::install::{
    decrypt, install_image_with_progress, InstallOutcome, InstallProgress, VerifiedFile,
};
use crate::store::InstalledRecord;
use secureev_dbus::State;
use secureev_uptane::uptane::UpdateTarget;

pub(crate) use crate::install::shown_version;

/// The release notes of `target` as the daemon shows them (sanitised and
/// bounded like [`shown_version`]); empty when absent.
pub(crate) fn shown_release_notes(target: &UpdateTarget) -> String {
    target
        .release_notes()
        .map(|n| secureev_uptane::custom::DisplayText::ReleaseNotes.sanitize(n))
        .unwrap_or_default()
}

impl Agent {
    pub(crate) async fn install(&self, pending: &Pending) -> Result<Vec<String>> {
        let primary = self.daemon.config.vehicle.primary_serial.clone();
        let total: u64 = pending.targets.iter().map(|i| i.target().length()).sum();
        let mut done = 0u64;
        let mut installed = Vec::new();
        let mut first_error = None;
        for image in &pending.targets {
            let target = image.target();
            self.progress(
                State::Installing,
                done,
                total,
                target.ecu_serial(),
                &format!("installing {}", target.name()),
            );
            done += target.length();
            let result = if target.ecu_serial() == primary {
                self.install_primary(image, done - target.length(), total)
                    .await
            } else {
                let r = self
                    .install_secondary(image, done - target.length(), total)
                    .await;
                self.note_link(target.ecu_serial(), &r);
                r
            };
            // One history entry per ECU: what it got (or did not), and why.
            let (code, message) = match &result {
                Ok(()) => (
                    secureev_dbus::ErrorCode::Ok,
                    format!("{} installed", target.name()),
                ),
                Err(e) => (crate::dbus_service::error_code(e), e.to_string()),
            };
            self.record(secureev_dbus::HistoryEntry {
                time: self.now().unix(),
                action: "install".to_owned(),
                update_id: pending.plan.id().as_str().to_owned(),
                ecu_serial: target.ecu_serial().to_owned(),
                version: shown_version(target).unwrap_or_default(),
                release_counter: target.release_counter(),
                code: code.as_u32(),
                message,
                transaction_id: String::new(),
            });
            match result {
                Ok(()) => installed.push(target.ecu_serial().to_owned()),
                Err(e) => {
                    tracing::error!(
                        ecu = target.ecu_serial(),
                        target = target.name(),
                        "install failed: {e}"
                    );
                    first_error.get_or_insert(e);
                }
            }
        }
        if first_error.is_none() {
            self.progress(State::Installing, done, total, "", "install finished");
        }
        self.publish_ecus();
        match first_error {
            Some(e) => Err(e),
            None => Ok(installed),
        }
    }

    /// Forward a verified image to a secondary: its metadata (partial or full
    /// verification on the ECU), the image as served (still encrypted when the
    /// Director wrapped a key for the ECU), then activation. A failure touches
    /// only this ECU.
    pub(crate) async fn install_secondary(
        &self,
        image: &VerifiedFile,
        base: u64,
        total: u64,
    ) -> Result<()> {
        let target = image.target();
        let serial = target.ecu_serial();
        let unreachable = |reason: &str| Error::Secondary {
            ecu: serial.to_owned(),
            reason: reason.to_owned(),
        };
        let transport = self
            .secondaries
            .get(serial)
            .ok_or_else(|| unreachable("no [[secondary]] transport is configured for this ECU"))?;
        let verification = self
            .daemon
            .config
            .secondaries
            .iter()
            .find(|s| s.serial == serial)
            .map(|s| s.verification)
            .unwrap_or_default();
        let bundle = crate::ecus::metadata_bundle(&self.daemon.store, verification)?;
        let record = InstalledRecord::of(image, self.now().unix());
        match transport.send_metadata(&bundle).await {
            Err(e @ Error::SecondaryUpToDate { .. }) => {
                // Issue 11: after a kill right after the ECU activated the
                // image, the Director still assigns it and the ECU says
                // no-update. If its own report shows the assigned image, the
                // install is done, not failed.
                if self.secondary_has(transport.as_ref(), target).await {
                    tracing::info!(
                        ecu = serial,
                        target = target.name(),
                        "the secondary already runs the assigned image"
                    );
                    self.daemon.store.set_installed(serial, record)?;
                    return Ok(());
                }
                return Err(e);
            }
            r => r?,
        }
        // The ECU checks what it receives: the bytes as served (for encrypted
        // images it decrypts and checks the plaintext itself).
        let name = target.name().to_owned();
        let progress = |p: DlProgress| {
            self.progress(
                State::Installing,
                base + p.done,
                total,
                serial,
                &format!("sending {name} to {serial}"),
            );
        };
        transport.send_image(image, &progress).await?;
        transport.activate(image).await?;
        self.daemon.store.set_installed(serial, record)?;
        Ok(())
    }

    /// Whether the secondary's own version report names `target` (name,
    /// length and every signed hash) as its installed image.
    async fn secondary_has(
        &self,
        transport: &dyn crate::ecus::SecondaryTransport,
        target: &UpdateTarget,
    ) -> bool {
        let Ok(bytes) = transport.report().await else {
            return false;
        };
        let Some(signed) = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("signed").cloned())
        else {
            return false;
        };
        let Ok(report) =
            serde_json::from_value::<secureev_uptane::manifest::EcuVersionReport>(signed)
        else {
            return false;
        };
        let want = &target.assignment().director_target.hashes;
        report.installed_image.is_some_and(|i| {
            i.filepath == target.name()
                && i.fileinfo.length == target.length()
                && !want.is_empty()
                && want.iter().all(|(alg, h)| {
                    i.fileinfo
                        .hashes
                        .get(alg)
                        .is_some_and(|g| g.eq_ignore_ascii_case(h))
                })
        })
    }

    /// Install on the Primary; its installer's progress moves the install
    /// phase from `base` towards `base + target.length()` of `total` bytes.
    pub(crate) async fn install_primary(
        &self,
        served: &VerifiedFile,
        base: u64,
        total: u64,
    ) -> Result<()> {
        let target = served.target();
        let path = served.location();
        let image = match decrypt::encryption_info(target)? {
            None => served.clone(),
            Some(info) => {
                let key = decrypt::unwrap_content_key(
                    &info,
                    target.name(),
                    target.ecu_serial(),
                    &self.daemon.keys.decryption,
                )?;
                let out = path.with_extension("plain");
                self.daemon
                    .downloader
                    .check_storage(target.name(), info.plaintext_length)?;
                let src = served.clone();
                tokio::task::spawn_blocking(move || decrypt::decrypt_image(&src, &out, &key))
                    .await
                    .map_err(|e| Error::Install {
                        target: target.name().to_owned(),
                        ecu: target.ecu_serial().to_owned(),
                        reason: format!("decryption task: {e}"),
                    })??
            }
        };
        let serial = target.ecu_serial();
        // The installer's own progress (bytes written, the command's
        // progress lines, RAUC's percent), scaled onto this image's bytes.
        let length = target.length();
        let progress = |p: InstallProgress| {
            let (done, of) = p.bytes.unwrap_or((u64::from(p.percent), 100));
            let part = if of == 0 {
                0
            } else {
                (u128::from(done.min(of)) * u128::from(length) / u128::from(of)) as u64
            };
            self.progress(State::Installing, base + part, total, serial, &p.message);
        };
        // Issue 11: an install whose bookkeeping failed after the installer
        // ran (the state directory full when `installed.json` was written)
        // leaves its journal behind in this very process. Settle it as a
        // restart would, or every later install refuses to start.
        if self
            .daemon
            .store
            .journal()?
            .is_some_and(|j| !j.pending_reboot)
        {
            let settled =
                crate::install::recover(&self.daemon.store, self.daemon.installer.as_ref()).await?;
            tracing::info!(?settled, "settled the unfinished install before a new one");
        }
        let outcome = install_image_with_progress(
            &self.daemon.store,
            self.daemon.installer.as_ref(),
            &image,
            self.now().unix(),
            &progress,
        )
        .await;
        if image.location() != path {
            let _ = std::fs::remove_file(image.location());
        }
        match outcome? {
            InstallOutcome::Installed | InstallOutcome::AlreadyInstalled => Ok(()),
            InstallOutcome::PendingReboot => {
                tracing::info!(
                    target = target.name(),
                    "installed; active after the next boot"
                );
                Ok(())
            }
        }
    }
}
