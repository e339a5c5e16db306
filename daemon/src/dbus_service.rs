//! The D-Bus adapter: the `secureev-dbus` [`Controller`] over an [`Agent`],
//! the mapping of daemon errors to the interface's stable error codes, and
//! the service's start and stop ([`crate::run::ControlService`]).

use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::phase::{Kind, Origin, Refusal, Ticket};
use crate::schedule::{Trigger, UpdateCycle};
use crate::Daemon;
use futures_util::future::BoxFuture;
use secureev_dbus::{
    AccessPolicy, Caller, CheckOptions, Controller, ErrorCode, HistoryEntry, InstallOptions,
    OtaError, ProvisionOptions, Role, State, StateHandle, UpdateId,
};
use secureev_uptane::Attack;
use std::sync::{Arc, Mutex};

/// Whether an I/O error is a full file system or an exhausted quota.
fn out_of_space(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(c) if c == rustix::io::Errno::NOSPC.raw_os_error()
            || c == rustix::io::Errno::DQUOT.raw_os_error()
    ) || e.kind() == std::io::ErrorKind::StorageFull
}

/// The one place where daemon and core errors become the interface's
/// stable codes (docs/dbus-api.md).
pub(crate) fn error_code(e: &Error) -> ErrorCode {
    use secureev_uptane::Error as Core;
    match e {
        Error::Uptane { source, .. } => match source.attack() {
            Some(Attack::Rollback) | Some(Attack::ReleaseCounterRollback) => {
                ErrorCode::RollbackAttack
            }
            Some(Attack::Freeze) => ErrorCode::FreezeAttack,
            Some(Attack::MixAndMatch) => ErrorCode::MixAndMatchAttack,
            Some(Attack::EndlessData) => ErrorCode::EndlessDataAttack,
            Some(Attack::WrongHardwareId) => ErrorCode::WrongHardware,
            // Wrong ECU serial, wrong VIN, another vehicle's metadata.
            Some(Attack::WrongEcu) => ErrorCode::WrongEcu,
            // The core says which: a role's metadata file or a target.
            Some(Attack::ArbitrarySoftware) => match source.as_ref() {
                Core::HashMismatch { what, .. } | Core::LengthMismatch { what, .. } => {
                    if what.is_metadata() {
                        ErrorCode::MetadataMismatch
                    } else {
                        ErrorCode::TargetMismatch
                    }
                }
                _ => ErrorCode::VerificationFailed,
            },
            _ => ErrorCode::VerificationFailed,
        },
        Error::Io { source, .. } if out_of_space(source) => ErrorCode::InsufficientStorage,
        Error::SlowRetrieval { .. } | Error::Stalled { .. } => ErrorCode::SlowRetrievalAttack,
        Error::InsufficientStorage { .. } | Error::InstallNoSpace { .. } => {
            ErrorCode::InsufficientStorage
        }
        Error::Http { .. }
        | Error::HttpStatus { .. }
        | Error::Timeout { .. }
        | Error::BadRange { .. }
        | Error::Truncated { .. } => ErrorCode::Network,
        Error::Cancelled(_) => ErrorCode::Cancelled,
        Error::Install { .. } => ErrorCode::InstallFailed,
        Error::Secondary { .. } => ErrorCode::EcuUnreachable,
        // A secondary's own failure (NRC 0x72 ...) is an install failure,
        // not an attack and not unreachable.
        Error::SecondaryRefused { .. }
        | Error::SecondaryUpToDate { .. }
        | Error::SecondaryFault { .. } => ErrorCode::InstallFailed,
        _ => ErrorCode::Internal,
    }
}

/// The `secureev-dbus` [`Controller`] over an [`Agent`].
#[derive(Debug, Clone)]
pub struct AgentController(pub Arc<Agent>);

/// A refusal of the operation model as the interface's typed error.
fn refused(r: Refusal) -> OtaError {
    match r {
        Refusal::Busy { .. } => OtaError::Busy(r.to_string()),
        Refusal::Deferred(_) => OtaError::Busy(r.to_string()),
        Refusal::NothingToCancel | Refusal::NotCancellable { .. } => {
            OtaError::NotCancellable(r.to_string())
        }
        _ => OtaError::Internal(r.to_string()),
    }
}

impl AgentController {
    /// Start the claimed install operation `op` on the worker.
    fn spawn_install(&self, op: Ticket, update_id: String) {
        self.0.spawn_install(op, update_id);
    }
}

/// Remember the caller's `transaction-id` for operation `op` (its history
/// entries carry it) and log it with the id.
fn note_transaction(agent: &Agent, op: &Ticket, transaction_id: Option<String>) {
    if let Some(t) = transaction_id.filter(|t| !t.is_empty()) {
        tracing::info!(op = %op.id, kind = %op.kind, transaction_id = %t, "operation accepted");
        agent.lock().transaction_ids.insert(op.id, t);
    }
}

impl Controller for AgentController {
    fn check(&self, options: CheckOptions) -> std::result::Result<u64, OtaError> {
        let agent = &self.0;
        let trigger = agent
            .trigger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(trigger) = trigger else {
            return Err(OtaError::Internal("the scheduler is not running".into()));
        };
        // Claimed here, under the agent's lock, so that an Install right
        // after this call returns is refused; the scheduler's cycle adopts it.
        let op = {
            let mut inner = agent.lock();
            if inner.not_provisioned {
                return Err(OtaError::NotProvisioned(
                    "the backend refused the last check-in as unauthenticated (HTTP 401) and this vehicle has no registration on record; Provision it first".into(),
                ));
            }
            inner
                .phase
                .begin(Kind::Check, Origin::Bus)
                .map_err(refused)?
        };
        note_transaction(agent, &op, options.transaction_id);
        agent.begin_operation(
            crate::agent::Plan::Check,
            State::Checking,
            "checking for updates",
        );
        agent.status(State::Checking, "checking for updates");
        // `false`: a cycle is already requested; it adopts this check.
        let _ = if options.force {
            trigger.check_now_forced()
        } else {
            trigger.check_now()
        };
        Ok(op.id.get())
    }

    fn install(
        &self,
        update_id: &UpdateId,
        options: InstallOptions,
    ) -> std::result::Result<u64, OtaError> {
        let agent = &self.0;
        let no_such =
            || OtaError::NoSuchUpdate(format!("{} is not the pending update", update_id.as_str()));
        {
            let inner = agent.lock();
            if let Some(r) = inner.phase.running() {
                return Err(OtaError::Busy(
                    Refusal::Busy {
                        id: r.id,
                        kind: r.kind,
                        phase: r.phase,
                    }
                    .to_string(),
                ));
            }
            if let Some(id) = inner.phase.deferred() {
                return Err(refused(Refusal::Deferred(id)));
            }
            if inner.pending.as_ref().map(|p| p.plan.id()) != Some(update_id) {
                return Err(no_such());
            }
        }
        let unmet = agent.unmet_preconditions();
        if !unmet.is_empty() && options.when_ready {
            // Asked for explicitly: the consent is kept and the install
            // starts under this id once nothing holds it back (visible in
            // DeferredInstall; Cancel drops it).
            let id = {
                let mut inner = agent.lock();
                if inner.pending.as_ref().map(|p| p.plan.id()) != Some(update_id) {
                    return Err(no_such());
                }
                let id = inner.phase.defer().map_err(refused)?;
                inner.consented = Some(update_id.clone());
                inner.postponed_until = 0;
                inner.deferred_update = Some((
                    update_id.clone(),
                    options.transaction_id.clone().unwrap_or_default(),
                ));
                id
            };
            tracing::info!(op = %id, transaction_id = ?options.transaction_id, "install deferred until the preconditions hold: {}", unmet.join("; "));
            agent.state.set_postponed_until(0);
            agent.state.set_deferred_install(id.get());
            return Ok(id.get());
        }
        if !unmet.is_empty() {
            // The refusal is the end of this consent: no later
            // SetPrecondition or check-in starts this install without a new
            // Install call.
            let mut inner = agent.lock();
            if inner.consented.as_ref() == Some(update_id) {
                inner.consented = None;
            }
            return Err(OtaError::PreconditionFailed(unmet.join("; ")));
        }
        let op = {
            let mut inner = agent.lock();
            let op = inner
                .phase
                .begin(Kind::Install, Origin::Bus)
                .map_err(refused)?;
            if inner.pending.as_ref().map(|p| p.plan.id()) != Some(update_id) {
                // Replaced between the two looks: nothing starts.
                inner.phase.end(op.id);
                return Err(no_such());
            }
            inner.consented = Some(update_id.clone());
            inner.postponed_until = 0;
            op
        };
        note_transaction(agent, &op, options.transaction_id);
        let id = op.id.get();
        self.spawn_install(op, update_id.as_str().to_owned());
        Ok(id)
    }

    fn cancel(&self) -> std::result::Result<(), OtaError> {
        let agent = &self.0;
        let mut inner = agent.lock();
        if inner.phase.running().is_none() && inner.phase.deferred().is_some() {
            // Nothing runs: Cancel drops the deferred install.
            agent.end_deferred(
                &mut inner,
                ErrorCode::Cancelled,
                "deferred install cancelled",
            );
            return Ok(());
        }
        inner.phase.cancel().map(|_| ()).map_err(refused)
    }

    fn postpone(&self, delay: std::time::Duration) -> std::result::Result<(), OtaError> {
        let agent = &self.0;
        let until = agent.now().unix() + delay.as_secs() as i64;
        {
            let mut inner = agent.lock();
            if let Some(r) = inner.phase.running() {
                if r.kind == Kind::Install || r.installed {
                    return Err(OtaError::Busy(
                        "the install has begun; it cannot be postponed".into(),
                    ));
                }
            }
            let Some(id) = inner.pending.as_ref().map(|p| p.plan.id().clone()) else {
                return Err(OtaError::NoSuchUpdate("nothing is pending".into()));
            };
            inner.postponed_until = until;
            inner.postponed_id = Some(id);
            inner.consented = None;
            agent.end_deferred(
                &mut inner,
                ErrorCode::Cancelled,
                "deferred install dropped: the update was postponed",
            );
        }
        agent.state.set_postponed_until(until);
        Ok(())
    }

    fn set_precondition(
        &self,
        name: &str,
        satisfied: bool,
        reason: &str,
        caller: &Caller,
    ) -> std::result::Result<(), OtaError> {
        let agent = self.0.clone();
        {
            let mut inner = agent.lock();
            // Each precondition belongs to the uid that first set it: a media
            // app in the UI group cannot clear a vehicle service's `parked`.
            match inner.precondition_owners.get(name) {
                Some(&owner) if owner != caller.uid && caller.uid != 0 => {
                    return Err(OtaError::NotPermitted(format!(
                        "precondition {name:?} is set by uid {owner}; only it (or root) may change it"
                    )));
                }
                Some(_) => {}
                None => {
                    inner
                        .precondition_owners
                        .insert(name.to_owned(), caller.uid);
                }
            }
            inner
                .preconditions
                .insert(name.to_owned(), (satisfied, reason.to_owned()));
            inner
                .precondition_times
                .insert(name.to_owned(), agent.now().unix());
            agent.save_preconditions(&inner);
        }
        agent.state.set_precondition(name, satisfied, reason);
        agent.start_deferred_if_ready();
        // A held-back install that policy allows (`auto`) proceeds as soon
        // as nothing holds it back, as an operation of its own: claimed
        // under the lock, so never beside a check-in or another install.
        if !satisfied || !agent.unmet_preconditions().is_empty() {
            return Ok(());
        }
        let start = {
            let mut inner = agent.lock();
            if inner.phase.running().is_none() && agent.may_install(&inner) {
                let id = inner
                    .pending
                    .as_ref()
                    .map(|p| p.plan.id().as_str().to_owned())
                    .unwrap_or_default();
                inner
                    .phase
                    .begin(Kind::Install, Origin::Daemon)
                    .ok()
                    .map(|op| (op, id))
            } else {
                None
            }
        };
        if let Some((op, id)) = start {
            self.spawn_install(op, id);
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
    ) -> std::result::Result<u64, OtaError> {
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
        // Never beside a check-in: a scheduled one is skipped meanwhile.
        let op = agent
            .lock()
            .phase
            .begin(Kind::Provision, Origin::Bus)
            .map_err(refused)?;
        note_transaction(&agent, &op, options.transaction_id.clone());
        let id = op.id.get();
        let url = backend_url.trim_end_matches('/').to_owned();
        let what = "registering the vehicle with the backend";
        agent.begin_operation(crate::agent::Plan::Provision, State::Checking, what);
        agent.status(State::Checking, what);
        tokio::spawn(async move {
            let result = agent
                .register(&url, &token)
                .await
                .map(|()| format!("vehicle {vin} registered with {url}"));
            agent.finish(&op, "", &result);
            if result.is_ok() {
                // Check in at once with the new registration (after this
                // operation ended: its own operation).
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
        Ok(id)
    }
}

/// The roles of `[dbus]`: group names resolved to gids (a missing group is
/// left out with a warning), or polkit with `authorization = "polkit"`; root
/// and the daemon's own user hold every role.
pub fn access_policy(bus: &crate::config::DbusConfig) -> AccessPolicy {
    let trusted = [0, rustix::process::getuid().as_raw()];
    if bus.authorization == crate::config::Authorization::Polkit {
        // polkit decides everyone else; the groups keys are not used.
        return AccessPolicy::new(trusted, [])
            .with_polkit(std::time::Duration::from_millis(bus.polkit_timeout_ms));
    }
    let mut groups = Vec::new();
    for (role, names) in [
        (Role::Read, &bus.reader_groups),
        (Role::Consent, &bus.consent_groups),
        (Role::Preconditions, &bus.precondition_groups),
        (Role::Provision, &bus.provision_groups),
    ] {
        for name in names {
            match secureev_dbus::access::group_gid(name) {
                Some(gid) => groups.push((role, name.clone(), gid)),
                None => tracing::warn!(
                    group = %name,
                    role = role.as_str(),
                    "no such group: nobody gets this role through it"
                ),
            }
        }
    }
    AccessPolicy::new(trusted, groups)
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
            // Inhibit files are in `Preconditions` before the name is taken,
            // then rescanned every INHIBIT_POLL while the agent lives.
            agent.refresh_inhibits().await;
            let weak = Arc::downgrade(&agent);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(crate::agent::INHIBIT_POLL).await;
                    let Some(agent) = weak.upgrade() else { break };
                    agent.refresh_inhibits().await;
                    agent.start_deferred_if_ready();
                }
            });
            let controller: Arc<dyn Controller> = Arc::new(AgentController(agent.clone()));
            let access = access_policy(bus);
            let connection = self
                .state
                .serve_with_access(builder, controller, access)
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
mod code_tests {
    use super::*;
    use secureev_uptane::Error as Core;

    /// Issue 11: wrong ECU, wrong VIN and another vehicle's metadata were
    /// `28 wrong-hardware`, a snapshot hash mismatch `27 target-mismatch`,
    /// a full disk `1 internal`.
    #[test]
    fn each_failure_gets_its_own_stable_code() {
        use secureev_uptane::Checked;
        let hash = |what: Checked| Core::HashMismatch {
            what,
            algorithm: "sha256".into(),
            expected: "aa".into(),
            got: "bb".into(),
        };
        let length = |what: Checked| Core::LengthMismatch {
            what,
            expected: 1,
            got: 2,
        };
        let io = |errno: rustix::io::Errno| Error::Io {
            op: "write",
            path: "/var/cache/secureev/x.part".into(),
            source: std::io::Error::from_raw_os_error(errno.raw_os_error()),
        };
        let cases = [
            (
                Error::uptane("snapshot.json", hash(Checked::Metadata("snapshot".into()))),
                ErrorCode::MetadataMismatch,
            ),
            (
                Error::uptane("targets.json", length(Checked::Metadata("targets".into()))),
                ErrorCode::MetadataMismatch,
            ),
            // A delegated role with a `/` is metadata; a target ending in
            // `.json` is a target (the old name heuristic got both wrong).
            (
                Error::uptane(
                    "vendors/bms.json",
                    hash(Checked::Metadata("vendors/bms".into())),
                ),
                ErrorCode::MetadataMismatch,
            ),
            (
                Error::uptane("config.json", hash(Checked::Target("config.json".into()))),
                ErrorCode::TargetMismatch,
            ),
            (
                Error::uptane("hu/fw.img", hash(Checked::Target("hu/fw.img".into()))),
                ErrorCode::TargetMismatch,
            ),
            (
                Error::uptane("hu/fw.img", length(Checked::Target("hu/fw.img".into()))),
                ErrorCode::TargetMismatch,
            ),
            (
                Error::uptane(
                    "t",
                    Core::WrongEcu {
                        target: "t".into(),
                        ecu: "X".into(),
                    },
                ),
                ErrorCode::WrongEcu,
            ),
            (
                Error::uptane(
                    "targets.json",
                    Core::WrongVehicle {
                        expected: "A".into(),
                        got: "B".into(),
                    },
                ),
                ErrorCode::WrongEcu,
            ),
            (io(rustix::io::Errno::NOSPC), ErrorCode::InsufficientStorage),
            (io(rustix::io::Errno::DQUOT), ErrorCode::InsufficientStorage),
            (io(rustix::io::Errno::IO), ErrorCode::Internal),
            (
                Error::Stalled {
                    url: "u".into(),
                    stage: crate::error::StallStage::Headers,
                    secs: 1,
                },
                ErrorCode::SlowRetrievalAttack,
            ),
            (
                Error::SecondaryFault {
                    ecu: "BMS".into(),
                    nrc: 0x72,
                    reason: "transfer: ECU answered service 0x36 with generalProgrammingFailure"
                        .into(),
                },
                ErrorCode::InstallFailed,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(error_code(&e), code, "{e}");
        }
        // Codes are only ever added: the new ones keep their numbers.
        assert_eq!(ErrorCode::WrongEcu.as_u32(), 32);
        assert_eq!(ErrorCode::MetadataMismatch.as_u32(), 33);
    }
}
