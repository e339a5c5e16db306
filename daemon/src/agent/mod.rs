//! The update agent: one Uptane cycle (check-in, full verification, download,
//! consent, install, report) and the D-Bus control surface on top of it.
//!
//! [`Agent`] implements both integration points of [`crate::run`]: the
//! scheduler's [`UpdateCycle`] and, through [`DbusControl`], the
//! `secureev-dbus` [`Controller`]. State that the UI sees (state, progress,
//! pending update, ECUs, last error) goes through a [`StateHandle`]; the agent
//! keeps what it decides on in memory behind one mutex and on disk in the
//! [`crate::store::Store`].
//!
//! ## A cycle
//! 1. *checking*: bring the Director and Image repository up to date through
//!    [`secureev_uptane::trusted::TrustedRepository`] (root chain, timestamp,
//!    snapshot, targets; stored copies first, as the TUF client workflow does),
//!    persisting the exact bytes accepted; then
//!    [`secureev_uptane::uptane::full_verification`], fetching delegated Image
//!    roles it asks for.
//! 2. *downloading*: each image of the verified plan, streamed to the cache with
//!    length and hashes checked on the way, resumable.
//! 3. *awaiting-consent* (policy `consent`, or preconditions not met): the
//!    plan's id is published; `Install(id)` must name exactly this plan. The
//!    cycle ends here; the next cycle re-verifies and keeps the consent only if
//!    the plan is unchanged, so expired metadata never wedges a waiting update.
//! 4. *installing*: the Primary's own images through the installer (decrypted
//!    first when the Director wrapped a key for the Primary); secondaries
//!    through their transport. One failing ECU never touches another's image.
//! 5. *reporting*: a signed vehicle version manifest is sent to the Director
//!    with the Primary's signed ECU version report (attacks included) and a
//!    fresh signed report read from every secondary (Uptane 2.1 §5.4.2). The
//!    secondaries are asked concurrently, each for at most
//!    [`SECONDARY_REPORT_TIMEOUT`]; one that does not answer, or answers with
//!    something that is not its own report, is left out with a warning and
//!    never holds the manifest back.
//!
//! ## Cancel
//! `Cancel` stops checking and downloading at once (partial downloads are kept
//! for resuming). Once *installing* has begun it is refused with
//! `NotCancellable`: an installer either completes or leaves the running
//! software as it was, and the install journal settles a kill.

use crate::fetch::backend::{quote, Backend, Repository};
use crate::fetch::download::{self, ImageRequest, Progress as DlProgress};
use crate::error::{Error, Result};
use crate::install::{install_image, InstallOutcome, TargetFacts};
use crate::schedule::{CycleOutcome, Trigger, UpdateCycle};
use crate::store::{InstalledRecord, Repo, Role};
use crate::Daemon;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use secureev_dbus::{
    CheckOptions, Controller, Ecu, ErrorCode, HistoryEntry, InstallOptions, OtaError,
    PendingUpdate, Progress, ProvisionOptions, State, StateHandle, UpdateId,
    UpdatePlan as DbusPlan,
};
use secureev_uptane::manifest::{
    sign_ecu_report, sign_manifest, EcuVersionReport, InstalledImage, VehicleManifest,
};
use secureev_uptane::trusted::{Layout, TimestampUpdate, TrustedRepository};
use secureev_uptane::uptane::{
    full_verification, EcuInfo, FullVerification, UpdatePlan, UpdateTarget, Vehicle,
};
use secureev_uptane::{Attack, Timestamp};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most history entries kept in memory (and served by `GetHistory`).
pub const HISTORY_LIMIT: usize = 200;

/// Directory whose files hold installs back: each file is a precondition that
/// is not met, named by the file, with its content as the reason.
pub const DEFAULT_INHIBIT_DIR: &str = "/run/secureev-inhibit";

/// Longest wait for one secondary's signed version report while building the
/// manifest. Reading it is a session change, the generate-report routine (the
/// ECU signs) and up to 16 chunk reads (`docs/secondary-protocol.md` §5.3):
/// milliseconds over DoIP, but over a slow or busy CAN bus, with the UDS
/// client's retries (P2 1 s, P2* 10 s after a 0x78), several seconds. 20 s
/// covers one full P2* wait with room to spare, and bounds how long a dead or
/// stalling ECU holds up the manifest: all secondaries are asked at once, so
/// this bounds the whole step.
pub const SECONDARY_REPORT_TIMEOUT: Duration = Duration::from_secs(20);

/// A secondary's version report request, run as a task of its own.
type ReportTask = tokio::task::JoinHandle<Result<Vec<u8>>>;

/// An update that passed full verification and whose images are downloaded.
#[derive(Debug, Clone)]
struct Pending {
    plan: DbusPlan,
    targets: Vec<(UpdateTarget, PathBuf)>,
}

#[derive(Debug, Default)]
struct Inner {
    pending: Option<Pending>,
    consented: Option<UpdateId>,
    preconditions: BTreeMap<String, (bool, String)>,
    history: Vec<HistoryEntry>,
    postponed_until: i64,
    /// Cancels the running check or download.
    operation: Option<CancellationToken>,
    installing: bool,
    attacks: Vec<Attack>,
    /// How start-up settled an install that a shutdown or kill interrupted:
    /// reported in the next manifest as the installation result.
    recovered: Option<(bool, String, String)>,
    /// Report requests that outlived [`SECONDARY_REPORT_TIMEOUT`], by ECU
    /// serial (see [`Agent::secondary_report`]).
    late_reports: BTreeMap<String, ReportTask>,
    /// Each secondary's link as of its last exchange: status and when it
    /// last answered (published in `Ecus`).
    links: BTreeMap<String, (LinkStatus, i64)>,
}

/// A secondary's link as of the last exchange (`Ecus` `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkStatus {
    Unknown,
    Ok,
    Refused,
    Unreachable,
}

impl LinkStatus {
    fn as_str(self) -> &'static str {
        match self {
            LinkStatus::Unknown => "unknown",
            LinkStatus::Ok => "ok",
            LinkStatus::Refused => "refused",
            LinkStatus::Unreachable => "unreachable",
        }
    }
}

/// The update agent (see the module documentation).
pub struct Agent {
    daemon: Arc<Daemon>,
    backend: Backend,
    state: StateHandle,
    inner: Mutex<Inner>,
    trigger: Mutex<Option<Trigger>>,
    inhibit_dir: PathBuf,
    /// One transport per `[[secondary]]` (UDS over ISO-TP or DoIP).
    secondaries: BTreeMap<String, Arc<dyn crate::install::SecondaryTransport>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("daemon", &self.daemon)
            .finish_non_exhaustive()
    }
}

fn error_code(e: &Error) -> ErrorCode {
    match e {
        Error::Uptane { source, .. } => match source.attack() {
            Some(Attack::Rollback) | Some(Attack::ReleaseCounterRollback) => {
                ErrorCode::RollbackAttack
            }
            Some(Attack::Freeze) => ErrorCode::FreezeAttack,
            Some(Attack::MixAndMatch) => ErrorCode::MixAndMatchAttack,
            Some(Attack::EndlessData) => ErrorCode::EndlessDataAttack,
            Some(Attack::WrongHardwareId) | Some(Attack::WrongEcu) => ErrorCode::WrongHardware,
            Some(Attack::ArbitrarySoftware) => match source.as_ref() {
                secureev_uptane::Error::HashMismatch { .. }
                | secureev_uptane::Error::LengthMismatch { .. } => ErrorCode::TargetMismatch,
                _ => ErrorCode::VerificationFailed,
            },
            _ => ErrorCode::VerificationFailed,
        },
        Error::SlowRetrieval { .. } => ErrorCode::SlowRetrievalAttack,
        Error::InsufficientStorage { .. } => ErrorCode::InsufficientStorage,
        Error::Http { .. }
        | Error::HttpStatus { .. }
        | Error::Timeout { .. }
        | Error::BadRange { .. }
        | Error::Truncated { .. } => ErrorCode::Network,
        Error::Cancelled(_) => ErrorCode::Cancelled,
        Error::Install { .. } => ErrorCode::InstallFailed,
        Error::Secondary { .. } => ErrorCode::EcuUnreachable,
        Error::SecondaryRefused { .. } => ErrorCode::InstallFailed,
        _ => ErrorCode::Internal,
    }
}

/// Check a secondary's version report before it goes into the manifest,
/// and return its envelope. The backend refuses a whole manifest when one
/// report in it does not verify, so everything that can be checked without
/// the ECU's key is checked here, as `secureev_uptane::manifest` checks it.
/// The signature itself is the backend's to check (the Primary only relays
/// the report; it cannot change it).
fn check_secondary_report(serial: &str, bytes: &[u8]) -> Result<serde_json::Value> {
    use serde_json::Value;
    let bad = |reason: String| Error::Secondary {
        ecu: serial.to_owned(),
        reason: format!("bad version report: {reason}"),
    };
    let envelope: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let signed = envelope
        .as_object()
        .and_then(|o| o.get("signed"))
        .filter(|s| s.is_object())
        .ok_or_else(|| bad("not an envelope with a \"signed\" object".into()))?;
    // Uptane 2.1 §5.4.2.1.2: the report carries the identifier of the ECU
    // that made it; one under another serial is a misrouted address or an
    // ECU speaking for another.
    match signed.get("ecu_serial").and_then(Value::as_str) {
        Some(s) if s == serial => {}
        Some(s) => {
            let shown: String = s.chars().take(64).collect();
            return Err(bad(format!("it is for ECU {shown:?}")));
        }
        None => return Err(bad("no signed.ecu_serial".into())),
    }
    if envelope
        .get("signatures")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty())
    {
        return Err(bad("no signatures".into()));
    }
    // The signature covers the canonical form of `signed` as parsed here
    // (and by the backend); a value without one (a float, or an integer
    // beyond u64 that parsing turned into one) could never verify.
    secureev_uptane::canonical::to_canonical(signed).map_err(|e| bad(e.to_string()))?;
    let report: EcuVersionReport =
        serde_json::from_value(signed.clone()).map_err(|e| bad(e.to_string()))?;
    // Uptane 2.1 §5.4.2.1.2: "the latest time the ECU can verify".
    report
        .latest_verified_at()
        .map_err(|_| bad("latest_verified_time is not YYYY-MM-DDTHH:MM:SSZ".into()))?;
    Ok(envelope)
}

fn attack_of(e: &Error) -> Option<Attack> {
    match e {
        Error::Uptane { source, .. } => source.attack(),
        Error::SlowRetrieval { .. } => Some(Attack::SlowRetrieval),
        _ => None,
    }
}

impl Agent {
    /// An agent over a loaded daemon, publishing through `state`.
    pub fn new(daemon: Arc<Daemon>, state: StateHandle) -> Arc<Self> {
        let backend = Backend::from_daemon(&daemon);
        let inhibit_dir = daemon
            .config
            .install
            .inhibit_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_INHIBIT_DIR));
        daemon.downloader.set_signer(backend.image_signer());
        let clock = daemon.clock.clone();
        let secondaries = match crate::ecus::transports_from_config_with(
            &daemon.config,
            Arc::new(move || clock.now().now.unix()),
        ) {
            Ok(t) => t,
            Err(e) => {
                // Each such ECU is then reported unreachable; the others update.
                tracing::error!("secondary transports: {e}");
                BTreeMap::new()
            }
        };
        let agent = Arc::new(Agent {
            secondaries,
            daemon,
            backend,
            state,
            inner: Mutex::new(Inner::default()),
            trigger: Mutex::new(None),
            inhibit_dir,
        });
        agent.publish_ecus();
        agent.note_recovery();
        agent
    }

    /// Turn the start-up recovery of an interrupted install into a history
    /// entry and the next manifest's installation result.
    fn note_recovery(&self) {
        use crate::install::Recovery;
        let (ok, code, facts) = match &self.daemon.recovery {
            Recovery::Clean => return,
            Recovery::Completed(f) => (true, "completed-after-restart", f),
            Recovery::NotInstalled(f) => (false, "interrupted-not-installed", f),
            Recovery::Interrupted(f) => (false, "interrupted", f),
        };
        let message = format!(
            "install of {} on {} was interrupted by a shutdown: {code}",
            facts.name, facts.ecu_serial
        );
        tracing::warn!("{message}");
        let error = if ok {
            ErrorCode::Ok
        } else {
            ErrorCode::InstallFailed
        };
        self.history("install", "", error, &message);
        self.lock().recovered = Some((ok, code.to_owned(), message));
    }

    /// The state handle (for tests and the D-Bus service).
    pub fn state(&self) -> &StateHandle {
        &self.state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update
        // is a single assignment), so recover the guard.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Timestamp {
        self.daemon.clock.now().now
    }

    fn status(&self, state: State, message: &str) {
        self.state.set_state(state);
        self.daemon
            .notifier
            .status(&format!("{}: {message}", state.as_str()));
    }

    fn progress(&self, phase: State, done: u64, total: u64, ecu: &str, message: &str) {
        let percent = if total == 0 {
            0
        } else {
            ((done.min(total) as u128 * 100) / total as u128) as u32
        };
        self.state.set_progress(Progress {
            percent,
            phase: phase.as_str().to_owned(),
            bytes_done: done,
            bytes_total: total,
            ecu: ecu.to_owned(),
            message: message.to_owned(),
        });
    }

    fn history(&self, action: &str, update_id: &str, code: ErrorCode, message: &str) {
        let entry = HistoryEntry {
            time: self.now().unix(),
            action: action.to_owned(),
            update_id: update_id.to_owned(),
            ecu_serial: String::new(),
            version: String::new(),
            code: code as u32,
            message: message.to_owned(),
        };
        let mut inner = self.lock();
        inner.history.push(entry);
        let excess = inner.history.len().saturating_sub(HISTORY_LIMIT);
        inner.history.drain(..excess);
    }

    fn vehicle(&self) -> Result<Vehicle> {
        let c = &self.daemon.config;
        let installed = self.daemon.store.installed()?;
        let mut ecus = vec![EcuInfo {
            serial: c.vehicle.primary_serial.clone(),
            hardware_id: c.vehicle.hardware_id.clone(),
            installed: installed
                .get(&c.vehicle.primary_serial)
                .map(InstalledRecord::to_installed_image),
        }];
        for s in &c.secondaries {
            ecus.push(EcuInfo {
                serial: s.serial.clone(),
                hardware_id: s.hardware_id.clone(),
                installed: installed
                    .get(&s.serial)
                    .map(InstalledRecord::to_installed_image),
            });
        }
        Ok(Vehicle::new(
            &c.vehicle.vin,
            &c.vehicle.primary_serial,
            ecus,
        ))
    }

    fn publish_ecus(&self) {
        let installed = self.daemon.store.installed().unwrap_or_default();
        let c = &self.daemon.config;
        let links = self.lock().links.clone();
        let version = |serial: &str| {
            installed
                .get(serial)
                .map(|r| r.name.clone())
                .unwrap_or_default()
        };
        let mut ecus = vec![Ecu {
            serial: c.vehicle.primary_serial.clone(),
            hardware_id: c.vehicle.hardware_id.clone(),
            installed_version: version(&c.vehicle.primary_serial),
            primary: true,
            transport: String::new(),
            status: LinkStatus::Ok.as_str().into(),
            last_contact: 0,
        }];
        for s in &c.secondaries {
            let (status, last_contact) = links
                .get(&s.serial)
                .copied()
                .unwrap_or((LinkStatus::Unknown, 0));
            ecus.push(Ecu {
                serial: s.serial.clone(),
                hardware_id: s.hardware_id.clone(),
                installed_version: version(&s.serial),
                primary: false,
                transport: match s.transport {
                    crate::config::TransportKind::Can => "can".into(),
                    crate::config::TransportKind::Doip => "doip".into(),
                },
                status: status.as_str().into(),
                last_contact,
            });
        }
        self.state.set_ecus(ecus);
    }

    /// Record how an exchange with secondary `serial` ended, for `Ecus`:
    /// an answer (even a refusal) is a contact; anything else is no answer.
    /// Errors that are not about the link (the Primary's own state) change
    /// nothing.
    fn note_link<T>(&self, serial: &str, outcome: &Result<T>) {
        let now = self.now().unix();
        let mut inner = self.lock();
        let last = inner.links.get(serial).map_or(0, |l| l.1);
        let link = match outcome {
            Ok(_) => (LinkStatus::Ok, now),
            Err(Error::SecondaryRefused { .. }) => (LinkStatus::Refused, now),
            Err(Error::Secondary { .. }) => (LinkStatus::Unreachable, last),
            Err(_) => return,
        };
        inner.links.insert(serial.to_owned(), link);
    }

    // ---- step 1: metadata ------------------------------------------------------

    /// Bring one repository up to date (TUF 1.0 §5.3 / Uptane 2.1 §5.4.4.2
    /// steps 2–5 and 7–9), persisting every accepted file.
    async fn refresh(&self, repo: Repo, now: Timestamp) -> Result<(TrustedRepository, bool)> {
        let store = &self.daemon.store;
        let which = match repo {
            Repo::Director => Repository::Director,
            Repo::Image => Repository::Image,
        };
        let layout = match repo {
            Repo::Director => self.daemon.config.trust.director_layout.to_core(),
            Repo::Image => Layout::Tuf,
        };
        let uptane = |what: &str, e| Error::uptane(format!("{} {what}", repo.as_str()), e);
        let root = store
            .load_metadata(repo, Role::Root)?
            .ok_or_else(|| Error::CorruptState {
                path: store.metadata_path(repo, Role::Root),
                reason: "no trusted root".into(),
            })?;
        let mut t = TrustedRepository::new(repo.as_str(), &root)
            .map_err(|e| uptane("root.json", e))?
            .with_layout(layout);
        // Root chain: N+1 until the backend has no newer one.
        for _ in 0..t.limits().max_root_rotations {
            let next = t.root().common.version + 1;
            let file = format!("{next}.root.json");
            let Some(bytes) = self
                .backend
                .get_meta(which, &file, t.limits().root_max_length, now)
                .await?
            else {
                break;
            };
            t.update_root(&bytes).map_err(|e| uptane(&file, e))?;
            store.save_root_version(repo, next, &bytes)?;
            store.save_metadata(repo, Role::Root, &bytes)?;
        }
        let mut changed = true;
        if layout == Layout::Tuf {
            if let Some(local) = store.load_metadata(repo, Role::Timestamp)? {
                if let Err(e) = t.update_timestamp_local(&local, now) {
                    tracing::debug!(repository = repo.as_str(), "stored timestamp not used: {e}");
                }
            }
            let cap = t.limits().timestamp_max_length;
            let ts = self
                .backend
                .get_meta(which, "timestamp.json", cap, now)
                .await?
                .ok_or_else(|| Error::HttpStatus {
                    url: format!("{} timestamp.json", repo.as_str()),
                    status: 404,
                })?;
            match t
                .update_timestamp(&ts, now)
                .map_err(|e| uptane("timestamp.json", e))?
            {
                TimestampUpdate::Updated => store.save_metadata(repo, Role::Timestamp, &ts)?,
                // Uptane 2.1 §5.4.4.2 step 4 / 8: nothing new.
                TimestampUpdate::Unchanged => changed = false,
            }
            let local_ok = match store.load_metadata(repo, Role::Snapshot)? {
                Some(local) => t.update_snapshot_local_skip_hashes(&local, now).is_ok(),
                None => false,
            };
            if !local_ok {
                let req = t
                    .snapshot_request()
                    .map_err(|e| uptane("snapshot.json", e))?;
                let file = match req.version {
                    Some(v) => format!("{v}.snapshot.json"),
                    None => "snapshot.json".to_owned(),
                };
                let bytes = self.required(which, &file, req.max_length, now).await?;
                t.update_snapshot(&bytes, now)
                    .map_err(|e| uptane(&file, e))?;
                store.save_metadata(repo, Role::Snapshot, &bytes)?;
                changed = true;
            }
        }
        let local_targets = store.load_metadata(repo, Role::Targets)?;
        let local_ok = match (&local_targets, layout) {
            (Some(local), Layout::Tuf) => t.update_targets(local, now).is_ok(),
            (Some(local), Layout::RootAndTargetsOnly) => {
                // Only a rollback reference: the Director is asked every time.
                let _ = t.update_targets(local, now);
                false
            }
            _ => false,
        };
        if !local_ok {
            let req = t
                .targets_request("targets")
                .map_err(|e| uptane("targets.json", e))?;
            let file = match req.version {
                Some(v) => format!("{v}.targets.json"),
                None => "targets.json".to_owned(),
            };
            let bytes = self.required(which, &file, req.max_length, now).await?;
            t.update_targets(&bytes, now)
                .map_err(|e| uptane(&file, e))?;
            if local_targets.as_deref() != Some(bytes.as_slice()) {
                changed = true;
            }
            store.save_metadata(repo, Role::Targets, &bytes)?;
        }
        Ok((t, changed))
    }

    async fn required(
        &self,
        which: Repository,
        file: &str,
        cap: u64,
        now: Timestamp,
    ) -> Result<Vec<u8>> {
        self.backend
            .get_meta(which, file, cap, now)
            .await?
            .ok_or_else(|| Error::HttpStatus {
                url: file.to_owned(),
                status: 404,
            })
    }

    /// Steps 1–10 of full verification; returns the verified plan.
    async fn verify(&self, now: Timestamp, cancel: &CancellationToken) -> Result<UpdatePlan> {
        let (director, _) = self.refresh(Repo::Director, now).await?;
        if cancel.is_cancelled() {
            return Err(Error::Cancelled("check".into()));
        }
        let (mut image, _) = self.refresh(Repo::Image, now).await?;
        let vehicle = self.vehicle()?;
        loop {
            match full_verification(&director, &image, &vehicle)
                .map_err(|e| Error::uptane("full verification", e))?
            {
                FullVerification::Done(plan) => {
                    self.daemon
                        .clock
                        .record_verification(&self.daemon.store, now)?;
                    return Ok(plan.value().clone());
                }
                FullVerification::NeedImageRole { role, parent } => {
                    let store = &self.daemon.store;
                    let local = store.load_metadata(Repo::Image, Role::Delegated(&role))?;
                    if let Some(bytes) = local {
                        if image
                            .update_delegated_targets(&bytes, &role, &parent, now)
                            .is_ok()
                        {
                            continue;
                        }
                    }
                    let req = image
                        .targets_request(&role)
                        .map_err(|e| Error::uptane(role.clone(), e))?;
                    let file = match req.version {
                        Some(v) => format!("{v}.{}.json", quote(&role)),
                        None => format!("{}.json", quote(&role)),
                    };
                    let bytes = self
                        .required(Repository::Image, &file, req.max_length, now)
                        .await?;
                    image
                        .update_delegated_targets(&bytes, &role, &parent, now)
                        .map_err(|e| Error::uptane(file.clone(), e))?;
                    store.save_metadata(Repo::Image, Role::Delegated(&role), &bytes)?;
                }
            }
        }
    }

    // ---- step 2: download --------------------------------------------------------

    async fn download(
        &self,
        plan: &UpdatePlan,
        cancel: &CancellationToken,
    ) -> Result<Vec<(UpdateTarget, PathBuf)>> {
        let total: u64 = plan.targets.iter().map(UpdateTarget::length).sum();
        let mut done_before = 0u64;
        let mut out = Vec::new();
        for t in &plan.targets {
            let sha256 = t
                .assignment
                .director_target
                .hashes
                .get("sha256")
                .cloned()
                .unwrap_or_default();
            let url = match t.assignment.custom.uri.as_deref() {
                Some(uri) if uri.starts_with("https://") => uri.to_owned(),
                _ => self.backend.target_url(t.name(), &sha256),
            };
            let req = ImageRequest::for_target(t, url);
            let ecu = t.ecu_serial().to_owned();
            let name = t.name().to_owned();
            let base = done_before;
            let report = |p: DlProgress| {
                self.progress(
                    State::Downloading,
                    base + p.done,
                    total,
                    &ecu,
                    &format!("downloading {name}"),
                );
            };
            let path = self.daemon.downloader.fetch(&req, &report, cancel).await?;
            done_before += t.length();
            out.push((t.clone(), path));
        }
        Ok(out)
    }

    // ---- step 4: install -----------------------------------------------------------

    fn unmet_preconditions(&self) -> Vec<String> {
        let mut unmet: Vec<String> = self
            .lock()
            .preconditions
            .iter()
            .filter(|(_, (ok, _))| !ok)
            .map(|(name, (_, reason))| format!("{name}: {reason}"))
            .collect();
        if let Ok(dir) = std::fs::read_dir(&self.inhibit_dir) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let reason = std::fs::read_to_string(entry.path()).unwrap_or_default();
                unmet.push(format!("inhibit file {name}: {}", reason.trim()));
            }
        }
        unmet
    }

    async fn install(&self, pending: &Pending) -> Result<Vec<String>> {
        let primary = self.daemon.config.vehicle.primary_serial.clone();
        let total: u64 = pending.targets.iter().map(|(t, _)| t.length()).sum();
        let mut done = 0u64;
        let mut installed = Vec::new();
        let mut first_error = None;
        for (target, path) in &pending.targets {
            self.progress(
                State::Installing,
                done,
                total,
                target.ecu_serial(),
                &format!("installing {}", target.name()),
            );
            done += target.length();
            let result = if target.ecu_serial() == primary {
                self.install_primary(target, path).await
            } else {
                let r = self
                    .install_secondary(target, path, done - target.length(), total)
                    .await;
                self.note_link(target.ecu_serial(), &r);
                r
            };
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
        self.progress(State::Installing, done, total, "", "install finished");
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
    async fn install_secondary(
        &self,
        target: &UpdateTarget,
        path: &Path,
        base: u64,
        total: u64,
    ) -> Result<()> {
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
        transport.send_metadata(&bundle).await?;
        let mut facts = TargetFacts::for_target(target)?;
        // The ECU checks what it receives: the bytes as served (for encrypted
        // images it decrypts and checks the plaintext itself).
        facts.length = target.length();
        if let Some(h) = target.assignment.director_target.hashes.get("sha256") {
            facts.sha256 = h.clone();
        }
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
        transport.send_image(path, &facts, &progress).await?;
        transport.activate(&facts).await?;
        self.daemon.store.set_installed(
            serial,
            InstalledRecord {
                name: target.name().to_owned(),
                length: target.length(),
                hashes: target.assignment.director_target.hashes.clone(),
                release_counter: target.release_counter,
                installed_at: self.now().unix(),
            },
        )?;
        Ok(())
    }

    async fn install_primary(&self, target: &UpdateTarget, path: &Path) -> Result<()> {
        let facts = TargetFacts::for_target(target)?;
        let record = InstalledRecord {
            name: target.name().to_owned(),
            length: target.length(),
            hashes: target.assignment.director_target.hashes.clone(),
            release_counter: target.release_counter,
            installed_at: self.now().unix(),
        };
        let image = match download::encryption_info(target)? {
            None => path.to_path_buf(),
            Some(info) => {
                let key = download::unwrap_content_key(
                    &info,
                    target.name(),
                    target.ecu_serial(),
                    &self.daemon.keys.decryption,
                )?;
                let out = path.with_extension("plain");
                self.daemon
                    .downloader
                    .check_storage(target.name(), info.plaintext_length)?;
                let (src, dst, name) = (path.to_path_buf(), out.clone(), target.name().to_owned());
                tokio::task::spawn_blocking(move || {
                    download::decrypt_file(&src, &dst, &name, &key, &info)
                })
                .await
                .map_err(|e| Error::Install {
                    target: target.name().to_owned(),
                    ecu: target.ecu_serial().to_owned(),
                    reason: format!("decryption task: {e}"),
                })??;
                out
            }
        };
        let outcome = install_image(
            &self.daemon.store,
            self.daemon.installer.as_ref(),
            &image,
            &facts,
            record,
            self.now().unix(),
        )
        .await;
        if image != path {
            let _ = std::fs::remove_file(&image);
        }
        match outcome? {
            InstallOutcome::Installed | InstallOutcome::AlreadyInstalled => Ok(()),
        }
    }

    // ---- step 5: report --------------------------------------------------------------

    /// Sign and send the vehicle version manifest (Uptane 2.1 §5.4.2): the
    /// Primary's report and every secondary's that could be read now.
    async fn report(&self, attacks: &[Attack], result: Option<(bool, &str, &str)>) -> Result<()> {
        self.status(State::Reporting, "sending the vehicle version manifest");
        // First, so that the time the Primary reports and signs the request
        // with is taken after the (up to SECONDARY_REPORT_TIMEOUT) wait.
        let secondary_reports = self.secondary_reports().await;
        if !self.secondaries.is_empty() {
            self.publish_ecus();
        }
        let c = &self.daemon.config;
        let now = self.now();
        let counter = self.daemon.store.next_report_counter()?;
        let installed = self.daemon.store.installed()?;
        let mut report = EcuVersionReport::new(
            &c.vehicle.primary_serial,
            &c.vehicle.hardware_id,
            now,
            counter,
        )
        .with_attacks(attacks)
        .with_nonce(secureev_uptane::manifest::random_nonce());
        if let Some(r) = installed.get(&c.vehicle.primary_serial) {
            report = report.with_installed_image(
                InstalledImage::new(&r.name, r.length, r.hashes.clone())
                    .with_release_counter(r.release_counter),
            );
        }
        // An interrupted install is reported once: in this manifest, unless
        // a new install result supersedes it.
        let recovered = self.lock().recovered.take();
        let result = result.or(recovered
            .as_ref()
            .map(|(ok, code, message)| (*ok, code.as_str(), message.as_str())));
        if let Some((success, code, message)) = result {
            report = report.with_installation_result(
                secureev_uptane::manifest::InstallationResult::new(success, code, message),
            );
        }
        let signed = sign_ecu_report(&report, &self.daemon.keys.signing)
            .map_err(|e| Error::uptane("ECU report", e))?;
        let mut manifest = VehicleManifest::new(&c.vehicle.vin, &c.vehicle.primary_serial, counter);
        manifest
            .add_report(signed)
            .map_err(|e| Error::uptane("manifest", e))?;
        for (serial, report) in secondary_reports {
            // Unreachable (check_secondary_report checked the serial and the
            // configuration refuses duplicate serials), but a report that
            // cannot be filed must not cost the manifest.
            if let Err(e) = manifest.add_report(report) {
                tracing::warn!(ecu = %serial, "version report left out of the manifest: {e}");
            }
        }
        let body = serde_json::to_vec(
            &sign_manifest(&manifest, &self.daemon.keys.signing)
                .map_err(|e| Error::uptane("manifest", e))?,
        )
        .map_err(|e| Error::Tls(format!("manifest JSON: {e}")))?;
        self.backend.put_manifest(&body, now).await
    }

    /// A fresh signed version report from every configured secondary that
    /// gives one, by serial. Uptane 2.1 §5.4.2.1.1: the manifest carries the
    /// ECU version reports of the vehicle's ECUs. A secondary that cannot give
    /// a good report now is left out, never replaced by an older report of it:
    /// the backend refuses a whole manifest in which an ECU's report counter
    /// does not increase.
    async fn secondary_reports(&self) -> Vec<(String, serde_json::Value)> {
        let requests = self.secondaries.iter().map(|(serial, transport)| async move {
            match self.secondary_report(serial, transport).await {
                Ok(report) => Some((serial.clone(), report)),
                Err(e) => {
                    tracing::warn!(ecu = %serial, "version report left out of the manifest: {e}");
                    None
                }
            }
        });
        futures_util::future::join_all(requests)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Ask one secondary for its report and check it.
    ///
    /// The request runs as a task of its own and is abandoned, not cancelled,
    /// after [`SECONDARY_REPORT_TIMEOUT`]: a transport dropped in the middle
    /// of a UDS exchange could leave half a frame or a late response on the
    /// link it keeps for the next install. An abandoned request ends by the
    /// UDS client's own timeouts; until it has, the ECU is not asked again
    /// (at most one request per ECU, however often the manifest is sent).
    async fn secondary_report(
        &self,
        serial: &str,
        transport: &Arc<dyn crate::install::SecondaryTransport>,
    ) -> Result<serde_json::Value> {
        let failed = |reason: String| Error::Secondary {
            ecu: serial.to_owned(),
            reason,
        };
        let mut task = {
            let mut inner = self.lock();
            if let Some(late) = inner.late_reports.remove(serial) {
                if !late.is_finished() {
                    inner.late_reports.insert(serial.to_owned(), late);
                    return Err(failed(
                        "its previous version report request has not finished".into(),
                    ));
                }
                // A late report is not the latest once the ECU is asked
                // again (and may predate an install since): it is dropped.
                // The ECU cleared its attacks and installation result when
                // it signed it, so they go to the log at least.
                if let Some(Ok(Ok(bytes))) = late.now_or_never() {
                    tracing::warn!(
                        ecu = %serial,
                        report = %String::from_utf8_lossy(&bytes).chars().take(2048).collect::<String>(),
                        "discarding a version report that came after the manifest was sent"
                    );
                }
            }
            let transport = transport.clone();
            tokio::spawn(async move { transport.report().await })
        };
        let started = std::time::Instant::now();
        let read = match tokio::time::timeout(SECONDARY_REPORT_TIMEOUT, &mut task).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => Err(failed(format!("version report request failed: {e}"))),
            Err(_) => {
                self.lock().late_reports.insert(serial.to_owned(), task);
                Err(failed(format!(
                    "no version report within {} s",
                    SECONDARY_REPORT_TIMEOUT.as_secs()
                )))
            }
        };
        self.note_link(serial, &read);
        let bytes = read?;
        tracing::debug!(
            ecu = %serial,
            bytes = bytes.len(),
            ms = started.elapsed().as_millis() as u64,
            "version report read"
        );
        check_secondary_report(serial, &bytes)
    }

    // ---- provisioning -----------------------------------------------------------------

    /// Register this vehicle and its Primary's keys with the backend's registry
    /// (`POST /admin/vehicles`, authorised by the operator's token), with
    /// every secondary's identity read over its transport.
    async fn register(&self, base: &str, token: &str) -> Result<()> {
        let c = &self.daemon.config;
        let mut ecus = vec![serde_json::json!({
            "serial": c.vehicle.primary_serial,
            "hardware_id": c.vehicle.hardware_id,
            "public_key": self.daemon.keys.did(),
            "encryption_key": self.daemon.keys.encryption_public().to_hex(),
        })];
        // Each secondary is asked for its identity over its transport; one
        // that cannot be reached fails the registration (the vehicle would
        // otherwise be registered without it).
        for (serial, transport) in &self.secondaries {
            let info = transport.info().await;
            self.note_link(serial, &info);
            self.publish_ecus();
            let info = info?;
            let did = info.did.ok_or_else(|| Error::Secondary {
                ecu: serial.clone(),
                reason: "its transport cannot read the ECU's public key".into(),
            })?;
            let mut ecu = serde_json::json!({
                "serial": info.serial,
                "hardware_id": info.hardware_id,
                "public_key": did,
            });
            if let Some(k) = info.encryption_key {
                ecu["encryption_key"] = serde_json::Value::String(k.to_hex());
            }
            ecus.push(ecu);
        }
        let body = serde_json::json!({
            "vin": c.vehicle.vin,
            "primary_serial": c.vehicle.primary_serial,
            "ecus": ecus,
        });
        let url = format!("{base}/admin/vehicles");
        let resp = self
            .daemon
            .http
            .post(&url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp.text().await.unwrap_or_default();
            tracing::warn!(status, body = %text.chars().take(500).collect::<String>(), "registration refused");
            return Err(Error::HttpStatus { url, status });
        }
        Ok(())
    }

    // ---- the cycle ----------------------------------------------------------------------

    fn finish(&self, action: &str, update_id: &str, result: &Result<String>) {
        match result {
            Ok(message) => {
                self.state.clear_last_error();
                self.state.emit_completed(ErrorCode::Ok, message.clone());
                self.history(action, update_id, ErrorCode::Ok, message);
                let waiting = self.lock().pending.is_some();
                self.status(
                    if waiting {
                        State::AwaitingConsent
                    } else {
                        State::Idle
                    },
                    message,
                );
            }
            Err(e) => {
                let code = error_code(e);
                let message = e.to_string();
                self.state.set_last_error(code, message.clone());
                self.state.emit_completed(code, message.clone());
                self.history(action, update_id, code, &message);
                self.status(
                    if code == ErrorCode::Cancelled {
                        State::Idle
                    } else {
                        State::Error
                    },
                    &message,
                );
            }
        }
    }

    async fn cycle(&self, cancel: CancellationToken) -> Result<String> {
        let now = self.now();
        self.status(State::Checking, "checking for updates");
        self.progress(State::Checking, 0, 0, "", "checking for updates");
        let plan = match self.verify(now, &cancel).await {
            Ok(p) => p,
            Err(e) => {
                if let Some(a) = attack_of(&e) {
                    self.lock().attacks.push(a);
                    let attacks = self.lock().attacks.clone();
                    if let Err(r) = self.report(&attacks, None).await {
                        tracing::warn!("reporting the attack failed: {r}");
                    }
                }
                return Err(e);
            }
        };
        self.state.set_last_check(now.unix());
        if plan.targets.is_empty() {
            self.lock().pending = None;
            self.state.clear_pending();
            let attacks = std::mem::take(&mut self.lock().attacks);
            self.report(&attacks, None).await?;
            return Ok("up to date".into());
        }
        self.status(State::Downloading, "downloading");
        let targets = match self.download(&plan, &cancel).await {
            Ok(t) => t,
            Err(e) => {
                if let Some(a) = attack_of(&e) {
                    self.lock().attacks.push(a);
                    let attacks = self.lock().attacks.clone();
                    if let Err(r) = self.report(&attacks, None).await {
                        tracing::warn!("reporting the attack failed: {r}");
                    }
                }
                return Err(e);
            }
        };
        self.status(State::Verifying, "images verified");
        let dbus_plan = DbusPlan::new(
            targets
                .iter()
                .map(|(t, _)| PendingUpdate {
                    update_id: String::new(),
                    ecu_serial: t.ecu_serial().to_owned(),
                    hardware_id: t.assignment.hardware_id.clone(),
                    target: t.name().to_owned(),
                    version: t.release_counter.to_string(),
                    size: t.length(),
                    sha256: t
                        .assignment
                        .director_target
                        .hashes
                        .get("sha256")
                        .cloned()
                        .unwrap_or_default(),
                    release_notes: t
                        .assignment
                        .custom
                        .unrecognized
                        .get("releaseNotes")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                })
                .collect(),
        );
        let pending = Pending {
            plan: dbus_plan.clone(),
            targets,
        };
        let is_new = {
            let mut inner = self.lock();
            let same = inner
                .pending
                .as_ref()
                .is_some_and(|p| p.plan.id() == dbus_plan.id());
            if !same {
                // Consent binds to exactly what was shown: a changed plan needs new consent.
                inner.consented = None;
            }
            inner.pending = Some(pending);
            !same
        };
        self.state.set_pending(&dbus_plan);
        if is_new {
            self.state.emit_update_available(&dbus_plan);
        }
        self.try_install().await
    }

    /// Install the pending update if policy, consent, postponement and
    /// preconditions allow; otherwise leave it waiting.
    async fn try_install(&self) -> Result<String> {
        let (pending, allowed) = {
            let inner = self.lock();
            let Some(p) = inner.pending.clone() else {
                return Ok("nothing to install".into());
            };
            let consented = inner.consented.as_ref() == Some(p.plan.id());
            let auto = self.daemon.config.install.policy == crate::config::InstallPolicy::Auto;
            let postponed = inner.postponed_until > self.now().unix();
            (p, (consented || (auto && !postponed)))
        };
        let id = pending.plan.id().as_str().to_owned();
        if !allowed {
            self.status(State::AwaitingConsent, "waiting for the user's consent");
            return Ok(format!("update {id} verified and waiting for consent"));
        }
        let unmet = self.unmet_preconditions();
        if !unmet.is_empty() {
            let message = format!("install held back: {}", unmet.join("; "));
            self.status(State::AwaitingConsent, &message);
            self.progress(State::AwaitingConsent, 0, 0, "", &message);
            return Ok(message);
        }
        self.lock().installing = true;
        self.status(State::Installing, "installing");
        let result = self.install(&pending).await;
        {
            let mut inner = self.lock();
            inner.installing = false;
            inner.pending = None;
            inner.consented = None;
        }
        self.state.clear_pending();
        let attacks = std::mem::take(&mut self.lock().attacks);
        let outcome = match &result {
            Ok(ecus) => (
                true,
                "installed",
                format!("installed on {}", ecus.join(", ")),
            ),
            Err(e) => (false, "install-failed", e.to_string()),
        };
        if let Err(e) = self
            .report(&attacks, Some((outcome.0, outcome.1, &outcome.2)))
            .await
        {
            tracing::warn!("reporting the install failed: {e}");
        }
        self.daemon.downloader.prune(&[]).ok();
        result.map(|_| outcome.2)
    }
}

impl UpdateCycle for Agent {
    fn run_cycle(&self, cancel: CancellationToken) -> BoxFuture<'_, CycleOutcome> {
        Box::pin(async move {
            let op = cancel.child_token();
            self.lock().operation = Some(op.clone());
            let result = self.cycle(op).await;
            self.lock().operation = None;
            let id = self
                .lock()
                .pending
                .as_ref()
                .map(|p| p.plan.id().as_str().to_owned())
                .unwrap_or_default();
            self.finish("check", &id, &result);
            match result {
                Ok(_) => CycleOutcome::Done,
                Err(e) if attack_of(&e).is_some() => CycleOutcome::Done,
                Err(_) => CycleOutcome::Failed,
            }
        })
    }
}

/// The `secureev-dbus` [`Controller`] over an [`Agent`].
#[derive(Debug, Clone)]
pub struct AgentController(pub Arc<Agent>);

impl Controller for AgentController {
    fn check(&self, _options: CheckOptions) -> std::result::Result<(), OtaError> {
        let agent = &self.0;
        if agent.lock().installing {
            return Err(OtaError::Busy("an install is running".into()));
        }
        let trigger = agent
            .trigger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match trigger {
            Some(t) => {
                if !t.check_now() {
                    return Err(OtaError::Busy("a check is already requested".into()));
                }
                Ok(())
            }
            None => Err(OtaError::Internal("the scheduler is not running".into())),
        }
    }

    fn install(
        &self,
        update_id: &UpdateId,
        _options: InstallOptions,
    ) -> std::result::Result<(), OtaError> {
        let agent = self.0.clone();
        {
            let mut inner = agent.lock();
            if inner.installing {
                return Err(OtaError::Busy("an install is running".into()));
            }
            match &inner.pending {
                Some(p) if p.plan.id() == update_id => {}
                _ => {
                    return Err(OtaError::NoSuchUpdate(format!(
                        "{} is not the pending update",
                        update_id.as_str()
                    )))
                }
            }
            inner.consented = Some(update_id.clone());
            inner.postponed_until = 0;
        }
        let unmet = agent.unmet_preconditions();
        if !unmet.is_empty() {
            // Consent is kept: the install starts at the next check-in or
            // when the preconditions are reported satisfied.
            return Err(OtaError::PreconditionFailed(unmet.join("; ")));
        }
        let id = update_id.as_str().to_owned();
        tokio::spawn(async move {
            let result = agent.try_install().await;
            agent.finish("install", &id, &result);
        });
        Ok(())
    }

    fn cancel(&self) -> std::result::Result<(), OtaError> {
        let inner = self.0.lock();
        if inner.installing {
            return Err(OtaError::NotCancellable(
                "the install has begun; it completes or leaves the running software as it was"
                    .into(),
            ));
        }
        match &inner.operation {
            Some(op) => {
                op.cancel();
                Ok(())
            }
            None => Err(OtaError::NotCancellable("nothing to cancel".into())),
        }
    }

    fn postpone(&self, delay: std::time::Duration) -> std::result::Result<(), OtaError> {
        let agent = &self.0;
        let until = agent.now().unix() + delay.as_secs() as i64;
        {
            let mut inner = agent.lock();
            if inner.pending.is_none() {
                return Err(OtaError::NoSuchUpdate("nothing is pending".into()));
            }
            inner.postponed_until = until;
            inner.consented = None;
        }
        agent.state.set_postponed_until(until);
        Ok(())
    }

    fn set_precondition(
        &self,
        name: &str,
        satisfied: bool,
        reason: &str,
    ) -> std::result::Result<(), OtaError> {
        let agent = self.0.clone();
        agent
            .lock()
            .preconditions
            .insert(name.to_owned(), (satisfied, reason.to_owned()));
        agent.state.set_precondition(name, satisfied, reason);
        // A held-back install proceeds as soon as nothing holds it back.
        let ready = {
            let inner = agent.lock();
            inner.pending.is_some() && !inner.installing && inner.operation.is_none()
        };
        if satisfied && ready && agent.unmet_preconditions().is_empty() {
            tokio::spawn(async move {
                let id = agent
                    .lock()
                    .pending
                    .as_ref()
                    .map(|p| p.plan.id().as_str().to_owned())
                    .unwrap_or_default();
                let result = agent.try_install().await;
                agent.finish("install", &id, &result);
            });
        }
        Ok(())
    }

    fn history(&self) -> std::result::Result<Vec<HistoryEntry>, OtaError> {
        Ok(self.0.lock().history.clone())
    }

    fn provision(
        &self,
        backend_url: &str,
        options: ProvisionOptions,
    ) -> std::result::Result<(), OtaError> {
        let agent = self.0.clone();
        let token = options.token.clone().ok_or_else(|| {
            OtaError::InvalidArgument(
                "`token` (the registration token from the backend operator) is required".into(),
            )
        })?;
        let configured = agent.daemon.config.vehicle.vin.clone();
        let vin = options.vin.clone().unwrap_or_else(|| configured.clone());
        if vin != configured {
            return Err(OtaError::InvalidArgument(format!(
                "VIN {vin} differs from the configured [vehicle] vin {configured}"
            )));
        }
        {
            let inner = agent.lock();
            if inner.installing || inner.operation.is_some() {
                return Err(OtaError::Busy("an update operation is running".into()));
            }
        }
        let url = backend_url.trim_end_matches('/').to_owned();
        tokio::spawn(async move {
            agent.status(State::Checking, "registering the vehicle with the backend");
            let result = agent
                .register(&url, &token)
                .await
                .map(|()| format!("vehicle {vin} registered with {url}"));
            agent.finish("provision", "", &result);
            if result.is_ok() {
                // Check in at once with the new registration.
                let trigger = agent
                    .trigger
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(t) = trigger {
                    t.check_now();
                }
            }
        });
        Ok(())
    }
}

/// The D-Bus service: serves `io.secureev.Ota1` with an [`AgentController`].
/// The agent is made when the daemon has loaded (in [`ControlService::start`]),
/// and the scheduler's cycle is the same agent.
pub struct DbusControl {
    state: StateHandle,
    agent: std::sync::OnceLock<Arc<Agent>>,
    connection: Mutex<Option<zbus::Connection>>,
}

/// Everything plugged in: the D-Bus service and the check-in cycle, sharing one
/// [`Agent`] that publishes through `state`.
pub fn integrations(state: StateHandle) -> crate::Integrations {
    let control = DbusControl::new(state);
    let for_cycle = control.clone();
    crate::Integrations {
        control: Some(control),
        cycle: Some(Box::new(
            move |daemon: Arc<Daemon>| -> Arc<dyn UpdateCycle> { for_cycle.agent(daemon) },
        )),
    }
}

impl std::fmt::Debug for DbusControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbusControl").finish_non_exhaustive()
    }
}

impl DbusControl {
    /// A service publishing through `state`.
    pub fn new(state: StateHandle) -> Arc<Self> {
        Arc::new(DbusControl {
            state,
            agent: std::sync::OnceLock::new(),
            connection: Mutex::new(None),
        })
    }

    /// The agent over `daemon` (made on first use).
    pub fn agent(&self, daemon: Arc<Daemon>) -> Arc<Agent> {
        self.agent
            .get_or_init(|| Agent::new(daemon, self.state.clone()))
            .clone()
    }
}

impl crate::run::ControlService for DbusControl {
    fn start(&self, daemon: Arc<Daemon>, trigger: Trigger) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let agent = self.agent(daemon);
            *agent.trigger.lock().unwrap_or_else(|e| e.into_inner()) = Some(trigger);
            let bus = &agent.daemon.config.dbus;
            let builder =
                crate::config::dbus_builder(bus).map_err(|e| Error::Bus(e.to_string()))?;
            let controller: Arc<dyn Controller> = Arc::new(AgentController(agent.clone()));
            let connection = self
                .state
                .serve(builder, controller)
                .await
                .map_err(|e| Error::Bus(e.to_string()))?;
            tracing::info!(name = secureev_dbus::BUS_NAME, "serving on D-Bus");
            *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection);
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.state.flush().await;
            let conn = self
                .connection
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(c) = conn {
                let _ = c.release_name(secureev_dbus::BUS_NAME).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secureev_uptane::SigningKey;

    fn signed_report(serial: &str) -> serde_json::Value {
        let report = EcuVersionReport::new(serial, "hw", Timestamp::from_unix(1_800_000_000), 3)
            .with_nonce("00112233445566778899aabbccddeeff");
        sign_ecu_report(&report, &SigningKey::generate_ed25519()).unwrap()
    }

    fn reason(serial: &str, bytes: &[u8]) -> String {
        match check_secondary_report(serial, bytes) {
            Err(Error::Secondary { ecu, reason }) => {
                assert_eq!(ecu, serial);
                reason
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_secondarys_own_report_passes_unchanged() {
        let envelope = signed_report("BMS-1");
        let bytes = serde_json::to_vec(&envelope).unwrap();
        assert_eq!(check_secondary_report("BMS-1", &bytes).unwrap(), envelope);
    }

    #[test]
    fn reports_the_backend_would_refuse_are_left_out() {
        assert!(reason("BMS-1", b"not json").contains("not JSON"));
        assert!(reason("BMS-1", b"[1]").contains("\"signed\""));
        // Filed under the configured serial, but made by (or for) another ECU.
        let other = serde_json::to_vec(&signed_report("BMS-2")).unwrap();
        assert!(reason("BMS-1", &other).contains("\"BMS-2\""));
        let mut unsigned = signed_report("BMS-1");
        unsigned["signatures"] = serde_json::json!([]);
        let unsigned = serde_json::to_vec(&unsigned).unwrap();
        assert!(reason("BMS-1", &unsigned).contains("no signatures"));
        let mut float = signed_report("BMS-1");
        float["signed"]["extra"] = serde_json::json!(1.5);
        assert!(!reason("BMS-1", &serde_json::to_vec(&float).unwrap()).is_empty());
        let mut time = signed_report("BMS-1");
        time["signed"]["latest_verified_time"] = serde_json::json!("yesterday");
        assert!(reason("BMS-1", &serde_json::to_vec(&time).unwrap()).contains("latest_verified"));
        let mut counter = signed_report("BMS-1");
        counter["signed"]["report_counter"] = serde_json::json!(-1);
        assert!(!reason("BMS-1", &serde_json::to_vec(&counter).unwrap()).is_empty());
    }
}
