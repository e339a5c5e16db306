//! Test helpers (feature `test-util`): a private `dbus-daemon` and a scriptable fake
//! [`Controller`] that walks through the states like the real daemon would.
//!
//! Used by this crate's tests, by `secureevctl`'s tests and for manual trials (see
//! the `fake-service` example). Tests using [`PrivateBus`] need the `dbus-daemon`
//! binary; they fail loudly when it is missing rather than being skipped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

use crate::{
    CheckOptions, Controller, Ecu, ErrorCode, HistoryEntry, InstallOptions, OtaError,
    PendingUpdate, Progress, ProvisionOptions, State, StateHandle, UpdateId, UpdatePlan,
};

/// A private `dbus-daemon` listening on a socket in a temporary directory, killed on
/// drop.
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Starts `dbus-daemon --nofork --print-address` with a generated config that
    /// allows everything (the policy of the real system bus is the daemon's job).
    pub fn start() -> std::io::Result<Self> {
        Self::start_with_policy("")
    }

    /// [`Self::start`] with `extra` (`<policy>` elements) after the allow-all
    /// default policy, e.g. a `<deny …/>` to test a client's handling of
    /// `AccessDenied`.
    pub fn start_with_policy(extra: &str) -> std::io::Result<Self> {
        Self::start_with_config(|socket| {
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  {}
</busconfig>
"#,
                socket.display(),
                extra
            )
        })
    }

    /// Starts `dbus-daemon` with the whole configuration `config(socket)`
    /// returns, which must `<listen>` on `unix:path=<socket>` (e.g. a
    /// system-bus-style configuration that includes the shipped policy).
    pub fn start_with_config(
        config: impl FnOnce(&std::path::Path) -> String,
    ) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("bus");
        let text = config(&socket);
        let config = dir.path().join("bus.conf");
        std::fs::write(&config, text)?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--print-address")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its only chatter here is about raising the fd limit in containers.
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot start dbus-daemon (install the `dbus` package): {e}"),
                )
            })?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout).read_line(&mut line)?;
        }
        let address = line.trim().to_owned();
        if address.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("dbus-daemon printed no address"));
        }
        Ok(PrivateBus {
            child,
            address,
            _dir: dir,
        })
    }

    /// The bus address (`unix:path=...,guid=...`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A connection builder for this bus.
    pub fn builder(&self) -> zbus::Result<zbus::connection::Builder<'static>> {
        zbus::connection::Builder::address(self.address.as_str())
    }

    /// A plain client connection to this bus.
    pub async fn client(&self) -> zbus::Result<zbus::Connection> {
        self.builder()?.build().await
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Unix seconds now (the fake may read the wall clock; the real daemon injects it).
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Two ECUs: the head unit (primary) and a battery-management secondary.
pub fn sample_ecus() -> Vec<Ecu> {
    vec![
        Ecu {
            serial: "BMS-0042".into(),
            hardware_id: "secureev-bms".into(),
            installed_version: "2.0.0".into(),
            installed_target: "bms-2.0.0.bin".into(),
            installed_release_counter: 20,
            primary: false,
            transport: "can".into(),
            status: "ok".into(),
            last_contact: 1_767_225_600,
        },
        Ecu {
            serial: "HU-0001".into(),
            hardware_id: "secureev-hu".into(),
            installed_version: "1.0.0".into(),
            installed_target: "hu-1.0.0.img".into(),
            installed_release_counter: 10,
            primary: true,
            transport: String::new(),
            status: "ok".into(),
            last_contact: 0,
        },
    ]
}

/// An update for both [`sample_ecus`]; `version_suffix` makes distinct plans.
pub fn sample_plan(version_suffix: &str) -> UpdatePlan {
    UpdatePlan::new(vec![
        PendingUpdate {
            ecu_serial: "HU-0001".into(),
            hardware_id: "secureev-hu".into(),
            target: format!("hu-1.1.0{version_suffix}.img"),
            version: format!("1.1.0{version_suffix}"),
            release_counter: 11,
            size: 4 * 1024 * 1024,
            sha256: "ab".repeat(32),
            release_notes: "Faster charging curve.".into(),
            ..Default::default()
        },
        PendingUpdate {
            ecu_serial: "BMS-0042".into(),
            hardware_id: "secureev-bms".into(),
            target: format!("bms-2.0.1{version_suffix}.bin"),
            version: format!("2.0.1{version_suffix}"),
            release_counter: 21,
            size: 256 * 1024,
            sha256: "cd".repeat(32),
            release_notes: String::new(),
            ..Default::default()
        },
    ])
}

#[derive(Default)]
struct FakeInner {
    offer: Option<UpdatePlan>,
    plan: Option<UpdatePlan>,
    task: Option<JoinHandle<()>>,
    history: Vec<HistoryEntry>,
    calls: Vec<String>,
    /// The last operation id given out (the running one, if any).
    op: u64,
}

/// A [`Controller`] that simulates the daemon: `check` walks checking → downloading
/// → verifying → awaiting-consent with the offered plan, `install` walks installing
/// → reporting → idle and updates `Ecus`; every operation ends with `Completed`.
#[derive(Clone)]
pub struct FakeController {
    state: StateHandle,
    step: Duration,
    inner: Arc<Mutex<FakeInner>>,
}

impl std::fmt::Debug for FakeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeController").finish_non_exhaustive()
    }
}

impl FakeController {
    /// A fake publishing through `state`, pausing `step` per phase, offering
    /// `sample_plan("")` on the next check.
    pub fn new(state: StateHandle, step: Duration) -> Self {
        state.set_ecus(sample_ecus());
        let fake = FakeController {
            state,
            step,
            inner: Arc::default(),
        };
        fake.offer(Some(sample_plan("")));
        fake
    }

    fn lock(&self) -> MutexGuard<'_, FakeInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the next check finds (`None`: no update).
    pub fn offer(&self, plan: Option<UpdatePlan>) {
        self.lock().offer = plan;
    }

    /// The calls received so far, e.g. `install <id>`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    fn record(&self, call: String) {
        self.lock().calls.push(call);
    }

    fn running(inner: &FakeInner) -> bool {
        inner.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn finish(&self, action: &str, plan: Option<&UpdatePlan>, code: ErrorCode, message: &str) {
        self.lock().history.push(HistoryEntry {
            time: now(),
            action: action.into(),
            update_id: plan.map(|p| p.id().to_string()).unwrap_or_default(),
            version: plan
                .and_then(|p| p.updates().first())
                .map(|u| u.version.clone())
                .unwrap_or_default(),
            code: code.as_u32(),
            message: message.into(),
            ..Default::default()
        });
        let id = self.lock().op;
        self.state
            .emit_operation_completed(id, action, code, message);
    }

    fn next_op(inner: &mut FakeInner) -> u64 {
        inner.op += 1;
        inner.op
    }

    async fn run_check(self) {
        let step = self.step;
        tokio::time::sleep(step).await;
        self.state.set_last_check(now());
        let offer = self.lock().offer.clone();
        let Some(plan) = offer else {
            self.state.set_state(State::Idle);
            self.finish("check", None, ErrorCode::Ok, "no update available");
            return;
        };
        self.state.set_state(State::Downloading);
        let total: u64 = plan.updates().iter().map(|u| u.size).sum();
        for i in 1..=10u64 {
            self.state.set_progress(Progress {
                percent: u32::try_from(i * 10).unwrap_or(100),
                phase: State::Downloading.as_str().into(),
                bytes_done: total * i / 10,
                bytes_total: total,
                ecu: plan.updates()[0].ecu_serial.clone(),
                message: "Downloading".into(),
            });
            tokio::time::sleep(step / 10).await;
        }
        self.state.set_state(State::Verifying);
        tokio::time::sleep(step).await;
        self.lock().plan = Some(plan.clone());
        self.state.set_pending(&plan);
        self.state.set_state(State::AwaitingConsent);
        self.state.emit_update_available(&plan);
        self.finish("check", Some(&plan), ErrorCode::Ok, "update available");
    }

    async fn run_install(self, plan: UpdatePlan) {
        let step = self.step;
        let n = plan.updates().len().max(1);
        for (i, u) in plan.updates().iter().enumerate() {
            self.state.set_progress(Progress {
                percent: u32::try_from((i + 1) * 100 / n).unwrap_or(100),
                phase: State::Installing.as_str().into(),
                bytes_done: u.size,
                bytes_total: u.size,
                ecu: u.ecu_serial.clone(),
                message: format!("Installing {} on {}", u.version, u.ecu_serial),
            });
            tokio::time::sleep(step).await;
        }
        let mut ecus = self.state.snapshot().ecus;
        for e in &mut ecus {
            if let Some(u) = plan.updates().iter().find(|u| u.ecu_serial == e.serial) {
                e.installed_version = u.version.clone();
                e.installed_target = u.target.clone();
                e.installed_release_counter = u.release_counter;
            }
        }
        self.state.set_ecus(ecus);
        self.lock().plan = None;
        self.state.clear_pending();
        self.state.set_state(State::Reporting);
        tokio::time::sleep(step).await;
        self.state.set_state(State::Idle);
        let msg = format!("installed {} update(s)", plan.updates().len());
        self.finish("install", Some(&plan), ErrorCode::Ok, &msg);
    }
}

impl Controller for FakeController {
    fn check(&self, options: CheckOptions) -> Result<u64, OtaError> {
        self.record(format!("check force={}", options.force));
        let mut inner = self.lock();
        if Self::running(&inner) {
            return Err(OtaError::Busy("fake: operation running".into()));
        }
        self.state.clear_last_error();
        self.state.set_state(State::Checking);
        let id = Self::next_op(&mut inner);
        inner.task = Some(tokio::spawn(self.clone().run_check()));
        Ok(id)
    }

    fn install(&self, update_id: &UpdateId, _options: InstallOptions) -> Result<u64, OtaError> {
        self.record(format!("install {update_id}"));
        let mut inner = self.lock();
        if Self::running(&inner) {
            return Err(OtaError::Busy("fake: operation running".into()));
        }
        let plan = match &inner.plan {
            Some(p) if p.id() == update_id => p.clone(),
            _ => {
                return Err(OtaError::NoSuchUpdate(format!(
                    "{update_id} is not pending"
                )))
            }
        };
        let blocked: Vec<String> = self
            .state
            .snapshot()
            .preconditions
            .into_iter()
            .filter(|p| !p.satisfied)
            .map(|p| format!("{}: {}", p.name, p.reason))
            .collect();
        if !blocked.is_empty() {
            return Err(OtaError::PreconditionFailed(blocked.join("; ")));
        }
        self.state.set_state(State::Installing);
        let id = Self::next_op(&mut inner);
        inner.task = Some(tokio::spawn(self.clone().run_install(plan)));
        Ok(id)
    }

    fn cancel(&self) -> Result<(), OtaError> {
        self.record("cancel".into());
        let mut inner = self.lock();
        if !Self::running(&inner) {
            return Err(OtaError::NotCancellable("nothing to cancel".into()));
        }
        match self.state.snapshot().state {
            State::Checking | State::Downloading | State::Verifying => {}
            other => {
                return Err(OtaError::NotCancellable(format!(
                    "cannot cancel while {other}"
                )))
            }
        }
        if let Some(task) = inner.task.take() {
            task.abort();
        }
        drop(inner);
        self.state.set_state(State::Idle);
        self.state.set_last_error(ErrorCode::Cancelled, "cancelled");
        self.finish("check", None, ErrorCode::Cancelled, "cancelled");
        Ok(())
    }

    fn postpone(&self, delay: Duration) -> Result<(), OtaError> {
        self.record(format!("postpone {}", delay.as_secs()));
        if self.lock().plan.is_none() {
            return Err(OtaError::NoSuchUpdate("no update is pending".into()));
        }
        let secs = i64::try_from(delay.as_secs()).unwrap_or(i64::MAX);
        self.state.set_postponed_until(now().saturating_add(secs));
        Ok(())
    }

    fn set_precondition(
        &self,
        name: &str,
        satisfied: bool,
        reason: &str,
        _caller: &crate::Caller,
    ) -> Result<(), OtaError> {
        self.record(format!("set_precondition {name} {satisfied}"));
        self.state.set_precondition(name, satisfied, reason);
        Ok(())
    }

    fn history(&self) -> Result<Vec<HistoryEntry>, OtaError> {
        Ok(self.lock().history.clone())
    }

    fn provision(&self, backend_url: &str, options: ProvisionOptions) -> Result<u64, OtaError> {
        self.record(format!(
            "provision {backend_url} vin={}",
            options.vin.as_deref().unwrap_or("")
        ));
        let mut inner = self.lock();
        if Self::running(&inner) {
            return Err(OtaError::Busy("fake: operation running".into()));
        }
        let this = self.clone();
        let url = backend_url.to_owned();
        let id = Self::next_op(&mut inner);
        inner.task = Some(tokio::spawn(async move {
            tokio::time::sleep(this.step).await;
            this.finish(
                "provision",
                None,
                ErrorCode::Ok,
                &format!("provisioned with {url}"),
            );
        }));
        Ok(id)
    }
}
