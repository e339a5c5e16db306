//! The update agent: one Uptane cycle (check-in, full verification, download,
//! consent, install, report) over the daemon's parts.
//!
//! [`Agent`] implements the scheduler's [`crate::schedule::UpdateCycle`]; the D-Bus
//! [`secureev_dbus::Controller`] over it is [`crate::dbus_service`]. State that
//! the UI sees (state, progress, pending update, ECUs, last error) goes through
//! a [`StateHandle`]; the agent keeps what it decides on in memory behind one
//! mutex and on disk in the [`crate::store::Store`].
//!
//! One job per module: `metadata` (step 1), `cycle` (the steps in order,
//! consent and preconditions, outcomes), `apply` (step 4), `report` (step 5),
//! `links` (the `Ecus` view and each secondary's link), `provision`
//! (registering the vehicle).
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
//! ## One operation at a time
//! A cycle, an `Install` and a `Provision` are operations of the one model in
//! [`crate::phase`], held in [`Inner`] under the agent's mutex: each is
//! claimed there (or refused `Busy`), moves forward through its phases there,
//! and frees it in [`Agent::finish`] together with queuing its `Completed`.
//!
//! ## Cancel
//! `Cancel` stops checking and downloading at once (partial downloads are kept
//! for resuming), and a check-in's reporting when it installed nothing. Once
//! *installing* has begun it is refused with `NotCancellable`: an installer
//! either completes or leaves the running software as it was, and the install
//! journal settles a kill. A provisioning is not cancellable either.

use crate::error::{Error, Result};
use crate::fetch::backend::Backend;
use crate::phase::{OpId, Phases, Refusal};
use crate::schedule::Trigger;
use crate::store::{InstalledRecord, UnreportedResult};
use crate::Daemon;
use secureev_dbus::{
    ErrorCode, HistoryEntry, State, StateHandle, UpdateId, UpdatePlan as DbusPlan,
};
use secureev_uptane::uptane::{EcuInfo, Vehicle};
use secureev_uptane::{Attack, Timestamp};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod apply;
mod cycle;
mod links;
mod metadata;
mod progress;
mod provision;
mod report;

pub(crate) use links::LinkStatus;
use progress::Meter;
pub(crate) use progress::Plan;
use report::ReportTask;
pub use report::SECONDARY_REPORT_TIMEOUT;

/// Most history entries kept (in memory, in [`HISTORY_FILE`], served by
/// `GetHistory`); the oldest go first.
pub const HISTORY_LIMIT: usize = 200;

/// The history, in the state directory, written atomically after each entry:
/// a restart keeps what was installed, where, and how it ended.
pub const HISTORY_FILE: &str = "history.json";

/// One persisted history entry (the `GetHistory` keys).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SavedHistory {
    time: i64,
    action: String,
    update_id: String,
    ecu_serial: String,
    version: String,
    #[serde(default)]
    release_counter: u64,
    code: u32,
    message: String,
    /// Absent in files written before it was recorded.
    #[serde(default)]
    transaction_id: String,
}

impl From<&HistoryEntry> for SavedHistory {
    fn from(e: &HistoryEntry) -> Self {
        SavedHistory {
            time: e.time,
            action: e.action.clone(),
            update_id: e.update_id.clone(),
            ecu_serial: e.ecu_serial.clone(),
            version: e.version.clone(),
            release_counter: e.release_counter,
            code: e.code,
            message: e.message.clone(),
            transaction_id: e.transaction_id.clone(),
        }
    }
}

impl From<SavedHistory> for HistoryEntry {
    fn from(e: SavedHistory) -> Self {
        HistoryEntry {
            time: e.time,
            action: e.action,
            update_id: e.update_id,
            ecu_serial: e.ecu_serial,
            version: e.version,
            release_counter: e.release_counter,
            code: e.code,
            message: e.message,
            transaction_id: e.transaction_id,
        }
    }
}

/// Directory whose files hold installs back: each file is a precondition that
/// is not met, named by the file, with its content as the reason.
pub const DEFAULT_INHIBIT_DIR: &str = "/run/secureev-inhibit";

/// How often the inhibit directory is scanned for `Preconditions` (an install
/// always scans it again right before it starts).
pub const INHIBIT_POLL: Duration = Duration::from_secs(1);

/// Preconditions as last reported, in the state directory: a restart keeps
/// `parked=false` (fail closed) and who owns each name.
pub const PRECONDITIONS_FILE: &str = "preconditions.json";

/// One persisted precondition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SavedPrecondition {
    satisfied: bool,
    reason: String,
    owner: u32,
    at: i64,
}

/// Prefix of the `Preconditions` entries that stand for inhibit files.
pub const INHIBIT_PREFIX: &str = "inhibit/";

/// An update that passed full verification and whose images are downloaded.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) plan: DbusPlan,
    /// The verified images, as downloaded (still encrypted, if they are).
    pub(crate) targets: Vec<crate::install::VerifiedFile>,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) pending: Option<Pending>,
    pub(crate) consented: Option<UpdateId>,
    pub(crate) preconditions: BTreeMap<String, (bool, String)>,
    pub(crate) history: Vec<HistoryEntry>,
    pub(crate) postponed_until: i64,
    /// The update `postponed_until` was given for: it does not carry over.
    pub(crate) postponed_id: Option<UpdateId>,
    /// Who set each precondition (uid): only it (or root) may change it.
    pub(crate) precondition_owners: BTreeMap<String, u32>,
    /// When each precondition was last reported (daemon clock, Unix s).
    pub(crate) precondition_times: BTreeMap<String, i64>,
    /// The one operation model: what runs, in which phase (see
    /// [`crate::phase`]). Claimed and released only under this mutex.
    pub(crate) phase: Phases,
    pub(crate) attacks: Vec<Attack>,
    /// The installation result the next manifest carries: the last
    /// install's, or how start-up settled one that a shutdown or kill
    /// interrupted. Kept on disk too ([`crate::store::Store::unreported_result`])
    /// until the Director accepted a manifest carrying it; here it survives
    /// a state directory that could not take it.
    pub(crate) recovered: Option<UnreportedResult>,
    /// Report requests that outlived [`SECONDARY_REPORT_TIMEOUT`], by ECU
    /// serial (see [`Agent::secondary_report`]).
    pub(crate) late_reports: BTreeMap<String, ReportTask>,
    /// Each secondary's link as of its last exchange: status and when it
    /// last answered (published in `Ecus`).
    pub(crate) links: BTreeMap<String, (LinkStatus, i64)>,
    /// The inhibit files of the last scan.
    pub(crate) inhibits: Vec<crate::inhibit::Inhibit>,
    /// The update of the install deferred with `when-ready` (its id is in
    /// [`Phases::deferred`]) and that install's `transaction-id`.
    pub(crate) deferred_update: Option<(UpdateId, String)>,
    /// The caller's `transaction-id` of each operation that gave one, while
    /// it runs (recorded in its history entries).
    pub(crate) transaction_ids: BTreeMap<OpId, String>,
    /// The backend refused the last check-in as unauthenticated (HTTP 401)
    /// and this vehicle has no registration on record ([`REGISTERED_FILE`]):
    /// `CheckForUpdates` is `NotProvisioned` until a `Provision` succeeds or
    /// a scheduled check-in is accepted.
    pub(crate) not_provisioned: bool,
    /// [`REGISTERED_FILE`] exists.
    pub(crate) registered: bool,
}

/// Written once the backend accepted this vehicle (a successful `Provision`
/// or check-in): a later 401 is then an authentication failure (`20
/// network`), never `NotProvisioned`.
pub const REGISTERED_FILE: &str = "registered.json";

/// The update agent (see the module documentation).
pub struct Agent {
    pub(crate) daemon: Arc<Daemon>,
    pub(crate) backend: Backend,
    pub(crate) state: StateHandle,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) trigger: Mutex<Option<Trigger>>,
    pub(crate) inhibit_dir: PathBuf,
    /// The running operation's `Progress` (see [`progress`]).
    meter: Mutex<Meter>,
    /// One transport per `[[secondary]]` (UDS over ISO-TP or DoIP).
    pub(crate) secondaries: BTreeMap<String, Arc<dyn crate::ecus::SecondaryTransport>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("daemon", &self.daemon)
            .finish_non_exhaustive()
    }
}

pub(crate) fn attack_of(e: &Error) -> Option<Attack> {
    match e {
        Error::Uptane { source, .. } => source.attack(),
        Error::SlowRetrieval { .. } | Error::Stalled { .. } => Some(Attack::SlowRetrieval),
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
            meter: Mutex::new(Meter::default()),
            trigger: Mutex::new(None),
            inhibit_dir,
        });
        agent.publish_ecus();
        agent.load_history();
        agent.note_recovery();
        agent.load_preconditions();
        let registered = matches!(
            agent
                .daemon
                .store
                .load_json::<serde_json::Value>(REGISTERED_FILE),
            Ok(Some(_))
        );
        agent.lock().registered = registered;
        agent
    }

    /// Keep `result` as the installation result of the next manifest: on
    /// disk (atomically) and in memory, until a manifest carrying it is
    /// accepted ([`Agent::report`]).
    pub(crate) fn keep_result(&self, result: UnreportedResult) {
        if let Err(e) = self.daemon.store.save_unreported_result(&result) {
            tracing::error!("cannot keep the installation result for the next manifest: {e}");
        }
        self.lock().recovered = Some(result);
    }

    /// After a check-in or provisioning: an accepted one records the
    /// registration ([`REGISTERED_FILE`]); a check-in refused with 401
    /// without one on record makes `CheckForUpdates` `NotProvisioned`.
    pub(crate) fn note_registration(
        &self,
        inner: &mut Inner,
        kind: crate::phase::Kind,
        result: &Result<String>,
    ) {
        match result {
            Ok(_) => {
                inner.not_provisioned = false;
                if !inner.registered {
                    let at = serde_json::json!({ "since": self.now().unix() });
                    match self.daemon.store.save_json(REGISTERED_FILE, &at) {
                        Ok(()) => inner.registered = true,
                        Err(e) => tracing::error!("cannot record the registration: {e}"),
                    }
                }
            }
            Err(Error::HttpStatus { status: 401, .. })
                if kind == crate::phase::Kind::Check && !inner.registered =>
            {
                inner.not_provisioned = true;
            }
            Err(_) => {}
        }
    }

    /// Turn the start-up recovery of an interrupted install into a history
    /// entry and the next manifest's installation result, after restoring
    /// the result that no accepted manifest has carried yet (an install that
    /// ended after SIGTERM, a manifest that did not go out before a kill).
    pub(crate) fn note_recovery(&self) {
        use crate::install::Recovery;
        match self.daemon.store.unreported_result() {
            Ok(r) => self.lock().recovered = r,
            Err(e) => tracing::error!("the unreported installation result: {e}"),
        }
        if let Some(r) = self.daemon.recovery.installation_result() {
            // recover() kept it on disk already; kept here again should
            // that have failed.
            self.keep_result(r);
        }
        let (ok, code, facts) = match &self.daemon.recovery {
            Recovery::Clean => return,
            Recovery::Completed(f) => (true, "completed-after-restart", f),
            Recovery::NotInstalled(f) => (false, "interrupted-not-installed", f),
            Recovery::Interrupted(f) => (false, "interrupted", f),
            Recovery::PendingReboot(f) => {
                // Nothing to report yet: the manifest shows the running image
                // until the reboot settles the install.
                let message = format!(
                    "{} is installed on {} and becomes active with the next boot",
                    f.name, f.ecu_serial
                );
                tracing::info!("{message}");
                self.history("install", "", ErrorCode::Ok, &message);
                return;
            }
            Recovery::Failed(f, reason) => {
                // Uptane installation report: the install did not take (e.g.
                // the boot fell back to the old slot), with its reason.
                let message = format!(
                    "install of {} on {} did not take: {reason}",
                    f.name, f.ecu_serial
                );
                tracing::warn!("{message}");
                self.history("install", "", ErrorCode::InstallFailed, &message);
                return;
            }
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
    }

    /// The state handle (for tests and the D-Bus service).
    pub fn state(&self) -> &StateHandle {
        &self.state
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update
        // is a single assignment), so recover the guard.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.daemon.clock.now().now
    }

    pub(crate) fn status(&self, state: State, message: &str) {
        self.state.set_state(state);
        self.daemon
            .notifier
            .status(&format!("{}: {message}", state.as_str()));
    }

    /// Operation `op` moves to `phase` (forward only, see [`crate::phase`]).
    /// A cancelled operation enters nothing more: `Err(Cancelled)`.
    pub(crate) fn enter(&self, op: OpId, phase: State) -> Result<()> {
        match self.lock().phase.enter(op, phase) {
            Ok(()) => Ok(()),
            Err(Refusal::Cancelled(_)) => Err(Error::Cancelled(phase.as_str().to_owned())),
            Err(e) => {
                // A bug in the agent's order of steps, never the caller's:
                // loud in tests, logged in a vehicle, and the step goes on.
                tracing::error!("operation model: {e}");
                debug_assert!(false, "operation model: {e}");
                Ok(())
            }
        }
    }

    /// The running operation's id and cancellation token.
    pub(crate) fn running_op(&self) -> Option<(OpId, CancellationToken)> {
        self.lock().phase.running().map(|r| (r.id, r.token()))
    }

    fn meter(&self) -> std::sync::MutexGuard<'_, Meter> {
        self.meter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An operation starts: `Progress` back to 0 on `plan`, `LastError`
    /// cleared (docs/dbus-api.md).
    pub(crate) fn begin_operation(&self, plan: Plan, phase: State, message: &str) {
        let p = self.meter().begin(plan, phase, message);
        self.state.clear_last_error();
        self.state.reset_progress(p);
    }

    /// `done` of `total` bytes of `phase` (total 0: unknown); `percent` is
    /// the whole operation's.
    pub(crate) fn progress(&self, phase: State, done: u64, total: u64, ecu: &str, message: &str) {
        let p = self.meter().update(phase, done, total, ecu, message);
        self.state.set_progress(p);
    }

    /// The operation ended (see [`Meter::end`]).
    pub(crate) fn end_progress(&self, ok: bool, ended_in: State, message: &str) {
        if let Some(p) = self.meter().end(ok, ended_in, message) {
            self.state.set_progress(p);
        }
    }

    /// A history entry for the whole vehicle (an operation's outcome).
    pub(crate) fn history(&self, action: &str, update_id: &str, code: ErrorCode, message: &str) {
        self.record(HistoryEntry {
            time: self.now().unix(),
            action: action.to_owned(),
            update_id: update_id.to_owned(),
            ecu_serial: String::new(),
            version: String::new(),
            release_counter: 0,
            code: code as u32,
            message: message.to_owned(),
            transaction_id: String::new(),
        });
    }

    /// Start the claimed install operation `op` of `update_id` on the worker.
    pub(crate) fn spawn_install(self: &Arc<Self>, op: crate::phase::Ticket, update_id: String) {
        let agent = self.clone();
        agent.begin_operation(Plan::Install, State::Installing, "installing");
        agent.status(State::Installing, "installing");
        tokio::spawn(async move {
            let result = agent.try_install(&op).await;
            agent.finish(&op, &update_id, &result);
        });
    }

    /// Start the install deferred with `when-ready` if nothing runs and
    /// nothing holds it back any more (called when a precondition is set,
    /// after every inhibit scan, and so after every operation within
    /// [`INHIBIT_POLL`]).
    pub(crate) fn start_deferred_if_ready(self: &Arc<Self>) {
        if self.lock().phase.deferred().is_none() || !self.unmet_preconditions().is_empty() {
            return;
        }
        let start = {
            let mut inner = self.lock();
            let wanted = inner.deferred_update.clone();
            let pending = inner.pending.as_ref().map(|p| p.plan.id().clone());
            match wanted {
                Some((id, txid)) if pending.as_ref() == Some(&id) => {
                    match inner.phase.begin_deferred() {
                        Ok(Some(op)) => {
                            inner.deferred_update = None;
                            if !txid.is_empty() {
                                inner.transaction_ids.insert(op.id, txid);
                            }
                            inner.consented = Some(id.clone());
                            Some((op, id))
                        }
                        // Another operation runs: tried again after it.
                        _ => None,
                    }
                }
                _ => None,
            }
        };
        if let Some((op, id)) = start {
            self.state.set_deferred_install(0);
            tracing::info!(op = %op.id, "preconditions hold: the deferred install starts");
            self.spawn_install(op, id.as_str().to_owned());
        }
    }

    /// The deferred install ends without running (`code`: cancelled, its
    /// update replaced or gone): its consent ends, `DeferredInstall` is 0,
    /// and its `OperationCompleted` and history entry say why.
    pub(crate) fn end_deferred(&self, inner: &mut Inner, code: ErrorCode, message: &str) {
        let Some(id) = inner.phase.drop_deferred() else {
            return;
        };
        let (update, txid) = inner
            .deferred_update
            .take()
            .unwrap_or_else(|| (UpdateId::from_published(""), String::new()));
        if inner.consented.as_ref() == Some(&update) {
            inner.consented = None;
        }
        let entry = HistoryEntry {
            time: self.now().unix(),
            action: crate::phase::Kind::Install.as_str().to_owned(),
            update_id: update.as_str().to_owned(),
            ecu_serial: String::new(),
            version: String::new(),
            release_counter: 0,
            code: code.as_u32(),
            message: message.to_owned(),
            transaction_id: txid,
        };
        inner.history.push(entry);
        let excess = inner.history.len().saturating_sub(HISTORY_LIMIT);
        inner.history.drain(..excess);
        let saved: Vec<SavedHistory> = inner.history.iter().map(SavedHistory::from).collect();
        if let Err(e) = self.daemon.store.save_json(HISTORY_FILE, &saved) {
            tracing::error!("cannot persist the history: {e}");
        }
        self.state.set_deferred_install(0);
        self.state
            .emit_operation_completed(id.get(), "install", code, message.to_owned());
    }

    /// Append `entry`, keep the last [`HISTORY_LIMIT`], and persist them
    /// atomically under the lock (two entries never write out of order). A
    /// failed write is logged: the entry is still served from memory.
    pub(crate) fn record(&self, mut entry: HistoryEntry) {
        let mut inner = self.lock();
        if entry.transaction_id.is_empty() {
            if let Some(t) = inner
                .phase
                .running()
                .and_then(|r| inner.transaction_ids.get(&r.id))
            {
                entry.transaction_id = t.clone();
            }
        }
        inner.history.push(entry);
        let excess = inner.history.len().saturating_sub(HISTORY_LIMIT);
        inner.history.drain(..excess);
        let saved: Vec<SavedHistory> = inner.history.iter().map(SavedHistory::from).collect();
        if let Err(e) = self.daemon.store.save_json(HISTORY_FILE, &saved) {
            tracing::error!("cannot persist the history: {e}");
        }
    }

    /// Restore [`HISTORY_FILE`]; an unreadable one is set aside (logged)
    /// and the history starts empty rather than the daemon not starting.
    pub(crate) fn load_history(&self) {
        match self
            .daemon
            .store
            .load_json::<Vec<SavedHistory>>(HISTORY_FILE)
        {
            Ok(saved) => {
                let mut saved = saved.unwrap_or_default();
                let excess = saved.len().saturating_sub(HISTORY_LIMIT);
                saved.drain(..excess);
                self.lock().history = saved.into_iter().map(HistoryEntry::from).collect();
            }
            Err(e) => tracing::error!("{HISTORY_FILE}: {e}; starting with an empty history"),
        }
    }

    pub(crate) fn vehicle(&self) -> Result<Vehicle> {
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

    /// Restore the persisted preconditions (see [`PRECONDITIONS_FILE`]). A
    /// file that cannot be read holds installs back with a precondition
    /// saying so.
    pub(crate) fn load_preconditions(&self) {
        let saved: BTreeMap<String, SavedPrecondition> =
            match self.daemon.store.load_json(PRECONDITIONS_FILE) {
                Ok(v) => v.unwrap_or_default(),
                Err(e) => {
                    tracing::error!("{PRECONDITIONS_FILE}: {e}");
                    BTreeMap::from([(
                        "state".to_owned(),
                        SavedPrecondition {
                            satisfied: false,
                            reason: format!("{PRECONDITIONS_FILE} unreadable; report again"),
                            owner: 0,
                            at: 0,
                        },
                    )])
                }
            };
        let mut inner = self.lock();
        for (name, p) in saved {
            self.state.set_precondition(&name, p.satisfied, &p.reason);
            inner
                .preconditions
                .insert(name.clone(), (p.satisfied, p.reason));
            inner.precondition_owners.insert(name.clone(), p.owner);
            inner.precondition_times.insert(name, p.at);
        }
    }

    /// Persist the preconditions atomically (called with the lock held, so
    /// that two reports cannot write out of order).
    pub(crate) fn save_preconditions(&self, inner: &Inner) {
        let saved: BTreeMap<&String, SavedPrecondition> = inner
            .preconditions
            .iter()
            .map(|(name, (satisfied, reason))| {
                (
                    name,
                    SavedPrecondition {
                        satisfied: *satisfied,
                        reason: reason.clone(),
                        owner: inner.precondition_owners.get(name).copied().unwrap_or(0),
                        at: inner.precondition_times.get(name).copied().unwrap_or(0),
                    },
                )
            })
            .collect();
        if let Err(e) = self.daemon.store.save_json(PRECONDITIONS_FILE, &saved) {
            tracing::error!("cannot persist the preconditions: {e}");
        }
    }
}
