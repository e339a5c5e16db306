//! The `rauc` installer: A/B updates of the head unit through the RAUC service.
//!
//! The Uptane target is a RAUC bundle. After Uptane verified it, this
//! installer hands it to RAUC over D-Bus (`de.pengutronix.rauc.Installer`,
//! RAUC's `docs/reference.rst`, "D-Bus API"), which checks the bundle's own
//! signature against its keyring, writes the inactive slot and makes it the
//! bootloader's primary. The new software runs only after a reboot, so the
//! install ends **pending reboot**: the journal stays, no new install starts,
//! and the manifest keeps reporting the running image. After the reboot
//! [`RaucInstaller::check_installed`] (called by [`super::recover`] at
//! start-up) settles it:
//!
//! - booted into the new slot: the configured health check runs, then
//!   `Mark("good", "booted")` commits the slot and the install is recorded;
//!   a failed health check marks the slot bad instead (the next boot returns to
//!   the old one) and the install is reported failed;
//! - booted into the old slot (the bootloader fell back): the install is
//!   reported failed, with the slot RAUC booted and the one it should have.
//!
//! # What survives a kill
//!
//! Before `InstallBundle` the installer writes `rauc-install.json` in the state
//! directory: the target slot, its `installed.count` before the install, and
//! the boot ID. RAUC runs in its own process and carries on when the daemon is
//! killed; on restart the installer waits (bounded) until RAUC is idle, then
//! reads the slot status: a higher `installed.count` on a target slot that is
//! now primary means the install completed (pending reboot), anything else
//! that it did not. Nothing is guessed from a missing `Completed` signal.
//!
//! # Trust
//!
//! The bundle path handed to RAUC is the verified file in the daemon's private
//! cache (mode 0700), re-hashed against the signed length and SHA-256 right
//! before the call. With `manifest_hash = "require"` (the default) the daemon
//! first asks RAUC for the bundle's manifest hash (`InspectBundle`) and installs
//! with `require-manifest-hash`, so RAUC installs exactly the bundle it
//! inspected; RAUC releases without `InspectBundle` (Debian's 1.8) are refused
//! unless `manifest_hash = "if-supported"`.

use super::{InstallCheck, InstallDone, InstallProgress, Installer, TargetFacts, VerifiedFile};
use crate::config::{ManifestHashPolicy, RaucInstallConfig};
use crate::error::{Error, Result};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zbus::zvariant::{OwnedValue, Value};

/// The installer's record file in the state directory.
pub const RAUC_STATE_FILE: &str = "rauc-install.json";
/// The RAUC service's bus name.
pub const RAUC_BUS_NAME: &str = "de.pengutronix.rauc";
/// Bytes of a health check's output kept for the report.
const HEALTH_OUTPUT_TAIL: usize = 1024;
/// How often the installer re-reads RAUC's `Operation` while waiting for it to
/// become idle after a restart (the property has no change signal we could
/// have missed otherwise; the wait is bounded by `install_timeout_secs`).
const IDLE_POLL: Duration = Duration::from_millis(200);

#[zbus::proxy(
    interface = "de.pengutronix.rauc.Installer",
    default_service = "de.pengutronix.rauc",
    default_path = "/",
    gen_blocking = false
)]
trait RaucBus {
    /// `InstallBundle(s source, a{sv} args)`: non-blocking; `Completed` follows.
    fn install_bundle(&self, source: &str, args: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    /// `InspectBundle(s source, a{sv} args) → a{sv}` (not in RAUC 1.8).
    fn inspect_bundle(
        &self,
        source: &str,
        args: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<HashMap<String, OwnedValue>>;
    /// `Mark(s state, s slot_identifier) → (s slot_name, s message)`.
    fn mark(&self, state: &str, slot_identifier: &str) -> zbus::Result<(String, String)>;
    /// `GetSlotStatus() → a(sa{sv})`.
    fn get_slot_status(&self) -> zbus::Result<Vec<(String, HashMap<String, OwnedValue>)>>;
    /// `GetPrimary() → s`: the slot the bootloader boots next.
    fn get_primary(&self) -> zbus::Result<String>;
    /// `Operation`: `idle` or `installing`.
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    /// `LastError`: the message of the last failed operation.
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
    /// `Progress`: (percentage, message, nesting depth).
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<(i32, String, i32)>;
    /// `BootSlot`: bootname of the booted slot.
    #[zbus(property)]
    fn boot_slot(&self) -> zbus::Result<String>;
    /// `Completed(i result)`: 0 on success.
    #[zbus(signal)]
    fn completed(&self, result: i32) -> zbus::Result<()>;
}

/// Where an install through RAUC stands, as written to [`RAUC_STATE_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RaucPhase {
    /// `InstallBundle` was (about to be) called.
    Installing,
    /// RAUC completed; the new slot is primary and boots next.
    PendingReboot,
    /// Booted into the new slot, healthy, marked good (by
    /// `secureev-otad --confirm-boot`); the daemon records it at start-up.
    Confirmed,
    /// The new slot did not take: fell back, failed its health check, or RAUC
    /// did not complete the install.
    Rejected {
        /// Why, for the installation report.
        reason: String,
    },
}

/// The installer's record of one install (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaucRecord {
    /// Target name.
    pub target: String,
    /// Hex SHA-256 of the bundle.
    pub sha256: String,
    /// RAUC's name of the slot written (e.g. `rootfs.1`).
    pub slot: String,
    /// Its bootname (e.g. `B`).
    pub bootname: String,
    /// The bootname booted when the install began.
    pub booted_before: String,
    /// The slot's `installed.count` before the install.
    pub installed_count_before: u64,
    /// The boot ID (`boot_id_file`) when the install began.
    pub boot_id: String,
    /// Where it stands.
    pub phase: RaucPhase,
}

/// Hands verified RAUC bundles to the RAUC service (module documentation).
pub struct RaucInstaller {
    config: RaucInstallConfig,
    record_path: PathBuf,
    conn: tokio::sync::OnceCell<zbus::Connection>,
}

impl RaucInstaller {
    /// An installer configured by `[install.rauc]`, keeping its record in
    /// `state_dir`.
    pub fn new(config: RaucInstallConfig, state_dir: &Path) -> Self {
        RaucInstaller {
            config,
            record_path: state_dir.join(RAUC_STATE_FILE),
            conn: tokio::sync::OnceCell::new(),
        }
    }

    /// The record of the install in flight, if any.
    pub fn record(&self) -> Result<Option<RaucRecord>> {
        match std::fs::read(&self.record_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::io(
                    "parse",
                    &self.record_path,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &self.record_path, e)),
        }
    }

    fn write_record(&self, record: &RaucRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).expect("a record serialises");
        crate::fs::atomic_write(&self.record_path, &bytes)
    }

    fn clear_record(&self) -> Result<()> {
        match std::fs::remove_file(&self.record_path) {
            Ok(()) => crate::fs::sync_dir(self.record_path.parent().unwrap_or(Path::new("."))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &self.record_path, e)),
        }
    }

    async fn proxy(&self, facts: &TargetFacts) -> Result<RaucBusProxy<'static>> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                match self.config.bus.as_str() {
                    "system" => zbus::Connection::system().await,
                    address => zbus::connection::Builder::address(address)?.build().await,
                }
            })
            .await
            .map_err(|e| {
                facts.error(format!(
                    "cannot reach the D-Bus bus of RAUC ({}): {e}",
                    self.config.bus
                ))
            })?;
        RaucBusProxy::builder(conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| facts.error(format!("RAUC proxy: {e}")))
    }

    fn boot_id(&self) -> Result<String> {
        let path = &self.config.boot_id_file;
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| Error::io("read", path, e))
    }

    /// The slot to write: the other one of the booted slot's pair (RAUC picks
    /// it the same way for a two-slot system).
    async fn target_slot(
        &self,
        rauc: &RaucBusProxy<'_>,
        facts: &TargetFacts,
    ) -> Result<(String, String, String, u64)> {
        let booted = rauc
            .boot_slot()
            .await
            .map_err(|e| facts.error(format!("RAUC BootSlot: {e}")))?;
        let slots = rauc
            .get_slot_status()
            .await
            .map_err(|e| facts.error(format!("RAUC GetSlotStatus: {e}")))?;
        let class_of = |name: &str| name.split('.').next().unwrap_or_default().to_owned();
        let booted_class = slots
            .iter()
            .find(|(_, s)| str_of(s, "bootname").as_deref() == Some(booted.as_str()))
            .map(|(n, _)| class_of(n))
            .ok_or_else(|| {
                facts.error(format!(
                    "RAUC knows no slot with the booted bootname {booted:?}"
                ))
            })?;
        let others: Vec<_> = slots
            .iter()
            .filter(|(n, s)| {
                class_of(n) == booted_class && str_of(s, "bootname").is_some_and(|b| b != booted)
            })
            .collect();
        let [(name, status)] = others.as_slice() else {
            return Err(facts.error(format!(
                "expected exactly one other bootable {booted_class} slot beside {booted}, RAUC lists {}",
                others.len()
            )));
        };
        let count = str_of(status, "installed.count")
            .and_then(|c| c.parse().ok())
            .or_else(|| u64_of(status, "installed.count"))
            .unwrap_or(0);
        Ok((
            name.clone(),
            str_of(status, "bootname").unwrap_or_default(),
            booted,
            count,
        ))
    }

    async fn manifest_hash_args(
        &self,
        rauc: &RaucBusProxy<'_>,
        bundle: &str,
        facts: &TargetFacts,
    ) -> Result<HashMap<&'static str, Value<'static>>> {
        let mut args = HashMap::new();
        match rauc.inspect_bundle(bundle, HashMap::new()).await {
            Ok(info) => {
                let hash = str_of(&info, "manifest-hash")
                    .ok_or_else(|| facts.error("RAUC InspectBundle gave no manifest-hash"))?;
                args.insert("require-manifest-hash", Value::from(hash));
            }
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.UnknownMethod" =>
            {
                match self.config.manifest_hash {
                    ManifestHashPolicy::Require => return Err(facts.error(
                        "this RAUC has no InspectBundle, so the install cannot be bound to the \
                             bundle's manifest hash (require-manifest-hash); update RAUC, or set \
                             [install.rauc] manifest_hash = \"if-supported\"",
                    )),
                    ManifestHashPolicy::IfSupported => {
                        tracing::warn!(target = %facts.name, "RAUC has no InspectBundle: installing without require-manifest-hash");
                    }
                }
            }
            Err(e) => return Err(facts.error(format!("RAUC InspectBundle: {}", dbus_message(&e)))),
        }
        Ok(args)
    }

    async fn install_inner(
        &self,
        image: &VerifiedFile,
        progress: &(dyn Fn(InstallProgress) + Send + Sync),
    ) -> Result<InstallDone> {
        let facts = &TargetFacts::for_install(image)?;
        let image = image.location().as_path();
        // The cache is private to the daemon, but the bytes must still be the
        // verified ones (no corruption since the download).
        let sha = super::file::sha256_of(image)?.unwrap_or_default();
        let len = std::fs::metadata(image).map(|m| m.len()).unwrap_or(0);
        if len != facts.length || !sha.eq_ignore_ascii_case(&facts.sha256) {
            return Err(facts.error(format!(
                "bundle changed since verification: {len} bytes with sha256 {sha}, expected {} bytes with {}",
                facts.length, facts.sha256
            )));
        }
        let bundle = image
            .to_str()
            .ok_or_else(|| facts.error("the bundle path is not UTF-8"))?
            .to_owned();
        let rauc = self.proxy(facts).await?;
        let operation = rauc
            .operation()
            .await
            .map_err(|e| facts.error(format!("RAUC Operation: {e}")))?;
        if operation != "idle" {
            return Err(facts.error(format!("RAUC is busy ({operation})")));
        }
        let args = self.manifest_hash_args(&rauc, &bundle, facts).await?;
        let (slot, bootname, booted, count) = self.target_slot(&rauc, facts).await?;
        self.write_record(&RaucRecord {
            target: facts.name.clone(),
            sha256: facts.sha256.clone(),
            slot: slot.clone(),
            bootname: bootname.clone(),
            booted_before: booted,
            installed_count_before: count,
            boot_id: self.boot_id()?,
            phase: RaucPhase::Installing,
        })?;
        // Subscribe before the call: Completed may follow at once.
        let mut completed = rauc
            .receive_completed()
            .await
            .map_err(|e| facts.error(format!("RAUC Completed: {e}")))?;
        // Progress is a property: RAUC flushes a PropertiesChanged per step.
        // (zbus's per-property streams need its property cache, which this
        // proxy does not keep.)
        let props = zbus::fdo::PropertiesProxy::builder(rauc.inner().connection())
            .destination(RAUC_BUS_NAME)
            .and_then(|b| b.path("/"))
            .map_err(|e| facts.error(format!("D-Bus: {e}")))?
            .build()
            .await
            .map_err(|e| facts.error(format!("D-Bus: {e}")))?;
        let mut progress_changes = props
            .receive_properties_changed()
            .await
            .map_err(|e| facts.error(format!("D-Bus PropertiesChanged: {e}")))?;
        let owner = zbus::fdo::DBusProxy::new(rauc.inner().connection())
            .await
            .map_err(|e| facts.error(format!("D-Bus: {e}")))?;
        let mut owner_changes = owner
            .receive_name_owner_changed_with_args(&[(0, RAUC_BUS_NAME)])
            .await
            .map_err(|e| facts.error(format!("D-Bus NameOwnerChanged: {e}")))?;
        tracing::info!(target = %facts.name, slot = %slot, bootname = %bootname, "handing the bundle to RAUC");
        if let Err(e) = rauc.install_bundle(&bundle, args).await {
            self.clear_record()?;
            return Err(facts.error(format!("RAUC InstallBundle: {}", dbus_message(&e))));
        }
        let deadline = tokio::time::sleep(Duration::from_secs(self.config.install_timeout_secs));
        tokio::pin!(deadline);
        let result = loop {
            tokio::select! {
                // Progress first: RAUC's last step ("Installing done.", 100)
                // is flushed just before Completed, and both may be queued.
                biased;
                Some(change) = progress_changes.next() => {
                    if let Some(p) = change.args().ok().and_then(|a| progress_of(&a)) {
                        progress(p);
                    }
                }
                signal = completed.next() => match signal {
                    Some(s) => break s.args().map(|a| a.result).unwrap_or(-1),
                    None => break -1,
                },
                Some(_) = owner_changes.next() => {
                    // RAUC restarted or died mid-install (rauc#1452: no
                    // Completed then). The record stays: the next start-up
                    // settles it from the slot status.
                    return Err(facts.error("the RAUC service left the bus during the install"));
                }
                () = &mut deadline => {
                    return Err(facts.error(format!(
                        "RAUC did not complete the install within {} s ([install.rauc] install_timeout_secs)",
                        self.config.install_timeout_secs
                    )));
                }
            }
        };
        // Steps already delivered but not yet taken (the streams are separate).
        while let Some(Some(change)) = progress_changes.next().now_or_never() {
            if let Some(p) = change.args().ok().and_then(|a| progress_of(&a)) {
                progress(p);
            }
        }
        if result != 0 {
            let last = rauc.last_error().await.unwrap_or_default();
            self.clear_record()?;
            return Err(facts.error(format!("RAUC install failed ({result}): {last}")));
        }
        let mut record = self
            .record()?
            .ok_or_else(|| facts.error("the RAUC record vanished"))?;
        record.phase = RaucPhase::PendingReboot;
        self.write_record(&record)?;
        tracing::info!(target = %facts.name, bootname = %record.bootname, "RAUC installed the bundle; pending reboot");
        Ok(InstallDone::PendingReboot)
    }

    async fn wait_idle(&self, rauc: &RaucBusProxy<'_>, facts: &TargetFacts) -> Result<()> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.config.install_timeout_secs);
        loop {
            match rauc.operation().await {
                Ok(op) if op == "idle" => return Ok(()),
                Ok(_) | Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(facts.error(format!(
                        "RAUC still busy after {} s",
                        self.config.install_timeout_secs
                    )))
                }
                _ => tokio::time::sleep(IDLE_POLL).await,
            }
        }
    }

    /// Move the record on as far as this boot allows (module documentation)
    /// and write it back; `Installing` and `PendingReboot` may stay.
    async fn settle(&self, mut record: RaucRecord, facts: &TargetFacts) -> Result<RaucRecord> {
        if matches!(
            record.phase,
            RaucPhase::Confirmed | RaucPhase::Rejected { .. }
        ) {
            return Ok(record);
        }
        let rauc = self.proxy(facts).await?;
        if record.phase == RaucPhase::Installing {
            // Killed during InstallBundle: RAUC may still be at it.
            self.wait_idle(&rauc, facts).await?;
            let slots = rauc
                .get_slot_status()
                .await
                .map_err(|e| facts.error(format!("RAUC GetSlotStatus: {e}")))?;
            let count = slots
                .iter()
                .find(|(n, _)| *n == record.slot)
                .and_then(|(_, s)| {
                    str_of(s, "installed.count")
                        .and_then(|c| c.parse().ok())
                        .or_else(|| u64_of(s, "installed.count"))
                })
                .unwrap_or(0);
            let primary = rauc.get_primary().await.unwrap_or_default();
            record.phase = if count > record.installed_count_before && primary == record.slot {
                tracing::info!(target = %facts.name, "RAUC completed the install while the daemon was down");
                RaucPhase::PendingReboot
            } else {
                let last = rauc.last_error().await.unwrap_or_default();
                RaucPhase::Rejected {
                    reason: format!(
                        "the install through RAUC did not complete (slot {}, primary {primary:?}){}",
                        record.slot,
                        if last.is_empty() { String::new() } else { format!(": {last}") }
                    ),
                }
            };
            self.write_record(&record)?;
            if record.phase != RaucPhase::PendingReboot {
                return Ok(record);
            }
        }
        if self.boot_id()? == record.boot_id {
            return Ok(record);
        }
        let booted = rauc
            .boot_slot()
            .await
            .map_err(|e| facts.error(format!("RAUC BootSlot: {e}")))?;
        record.phase = if booted != record.bootname {
            RaucPhase::Rejected {
                reason: format!(
                    "booted slot {booted}, not the new slot {} ({}): the bootloader fell back to the old slot",
                    record.bootname, record.slot
                ),
            }
        } else if let Err(why) = self.health_check().await {
            let marked = rauc.mark("bad", "booted").await;
            RaucPhase::Rejected {
                reason: format!(
                    "health check failed in the new slot {}: {why}; {}",
                    record.bootname,
                    match marked {
                        Ok(_) => format!(
                            "slot marked bad, the next boot returns to {}",
                            record.booted_before
                        ),
                        Err(e) => format!("marking it bad failed too: {}", dbus_message(&e)),
                    }
                ),
            }
        } else {
            rauc.mark("good", "booted").await.map_err(|e| {
                facts.error(format!("RAUC Mark(good, booted): {}", dbus_message(&e)))
            })?;
            tracing::info!(target = %facts.name, bootname = %booted, "booted into the new slot, healthy: marked good");
            RaucPhase::Confirmed
        };
        self.write_record(&record)?;
        Ok(record)
    }

    /// After a reboot (`secureev-otad --confirm-boot`, ordered after the
    /// system's health checks): run the health check and mark the booted slot
    /// good or bad, or note that the boot fell back. The outcome stays in the
    /// record until the daemon's start-up reports it. `None`: nothing pending.
    pub async fn confirm_boot(&self) -> Result<Option<RaucPhase>> {
        let Some(record) = self.record()? else {
            return Ok(None);
        };
        let facts = TargetFacts {
            name: record.target.clone(),
            ecu_serial: String::new(),
            hardware_id: String::new(),
            release_counter: 0,
            length: 0,
            sha256: record.sha256.clone(),
        };
        Ok(Some(self.settle(record, &facts).await?.phase))
    }

    async fn check_inner(&self, facts: &TargetFacts) -> Result<InstallCheck> {
        let Some(record) = self.record()? else {
            return Ok(InstallCheck::NotInstalled);
        };
        if record.target != facts.name || !record.sha256.eq_ignore_ascii_case(&facts.sha256) {
            self.clear_record()?;
            return Ok(InstallCheck::NotInstalled);
        }
        let record = self.settle(record, facts).await?;
        let check = match record.phase {
            RaucPhase::Installing | RaucPhase::PendingReboot => {
                return Ok(InstallCheck::PendingReboot)
            }
            RaucPhase::Confirmed => InstallCheck::Installed,
            RaucPhase::Rejected { reason } => InstallCheck::Failed(reason),
        };
        self.clear_record()?;
        Ok(check)
    }

    /// Run `[install.rauc] health_check` (none configured: healthy), bounded by
    /// `health_timeout_secs`.
    async fn health_check(&self) -> std::result::Result<(), String> {
        let Some((program, args)) = self.config.health_check.split_first() else {
            return Ok(());
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        let run = cmd.output();
        match tokio::time::timeout(Duration::from_secs(self.config.health_timeout_secs), run).await
        {
            Err(_) => Err(format!(
                "{program} did not finish within {} s",
                self.config.health_timeout_secs
            )),
            Ok(Err(e)) => Err(format!("cannot run {program}: {e}")),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stdout));
                let tail: String = text
                    .trim()
                    .chars()
                    .rev()
                    .take(HEALTH_OUTPUT_TAIL)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Err(format!("{program} exited with {}: {tail}", out.status))
            }
        }
    }
}

impl Installer for RaucInstaller {
    fn kind(&self) -> &'static str {
        "rauc"
    }

    fn install<'a>(&'a self, image: &'a VerifiedFile) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.install_inner(image, &|_| {}).await.map(|_| ()) })
    }

    fn install_with_progress<'a>(
        &'a self,
        image: &'a VerifiedFile,
        progress: &'a (dyn Fn(InstallProgress) + Send + Sync),
    ) -> BoxFuture<'a, Result<InstallDone>> {
        Box::pin(self.install_inner(image, progress))
    }

    fn check_installed<'a>(
        &'a self,
        facts: &'a TargetFacts,
    ) -> BoxFuture<'a, Result<InstallCheck>> {
        Box::pin(self.check_inner(facts))
    }
}

/// RAUC's `Progress` (percentage, message, depth) from a PropertiesChanged.
fn progress_of(args: &zbus::fdo::PropertiesChangedArgs<'_>) -> Option<InstallProgress> {
    if args.interface_name.as_str() != "de.pengutronix.rauc.Installer" {
        return None;
    }
    let value = args
        .changed_properties
        .get("Progress")?
        .try_to_owned()
        .ok()?;
    let (percent, message, depth) = <(i32, String, i32)>::try_from(value).ok()?;
    Some(InstallProgress {
        percent: percent.clamp(0, 100) as u32,
        message,
        depth: depth.max(0) as u32,
        bytes: None,
    })
}

fn str_of(map: &HashMap<String, OwnedValue>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(|v| <&str>::try_from(v).ok().map(str::to_owned))
}

fn u64_of(map: &HashMap<String, OwnedValue>, key: &str) -> Option<u64> {
    let v = map.get(key)?;
    u64::try_from(v)
        .ok()
        .or_else(|| u32::try_from(v).ok().map(u64::from))
        .or_else(|| i32::try_from(v).ok().and_then(|x| u64::try_from(x).ok()))
}

/// The message of a D-Bus method error (RAUC puts its GError text there).
fn dbus_message(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(msg), _) => format!("{msg} ({name})"),
        other => other.to_string(),
    }
}

/// `secureev-otad --confirm-boot` (the boot-confirmation unit, ordered after
/// the system's health checks): with `installer = "rauc"` and an install
/// pending, settle it for this boot (health check, then `Mark`). Holds the
/// state directory's lock, so it never runs beside a daemon. `None`: not the
/// rauc installer, or nothing pending.
pub async fn confirm_boot_from_config(config: &crate::config::Config) -> Result<Option<RaucPhase>> {
    if config.install.installer != crate::config::InstallerKind::Rauc {
        return Ok(None);
    }
    let (_store, _lock) = crate::store::Store::open_locked(&config.state.dir)?;
    let installer = RaucInstaller::new(
        config.install.rauc.clone().unwrap_or_default(),
        &config.state.dir,
    );
    installer.confirm_boot().await
}
