//! The server side: the interface object and the state handle that publishes
//! properties and signals.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedValue, Value};
use zbus::{interface, Connection};

use crate::access::{gids_of_uid, AccessPolicy, Caller, Role};
use crate::{
    CheckOptions, Controller, Ecu, ErrorCode, HistoryEntry, InstallOptions, OtaError,
    PendingUpdate, Precondition, Progress, ProvisionOptions, State, UpdateId, UpdatePlan, BUS_NAME,
    INTERFACE, MAX_POSTPONE_SECS, OBJECT_PATH,
};

/// Minimum interval between two `PropertiesChanged` signals (at most 10 per second).
pub const DEFAULT_THROTTLE: Duration = Duration::from_millis(100);

/// A copy of everything the properties publish.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// `State`.
    pub state: State,
    /// `Progress`.
    pub progress: Progress,
    /// `PendingUpdates`.
    pub pending_updates: Vec<PendingUpdate>,
    /// `PendingUpdateId` (empty when nothing is pending).
    pub pending_update_id: String,
    /// `Ecus`.
    pub ecus: Vec<Ecu>,
    /// `LastCheck`, Unix seconds (0: never).
    pub last_check: i64,
    /// `LastError` (empty: none).
    pub last_error: String,
    /// `LastErrorCode` (0: none).
    pub last_error_code: u32,
    /// `Preconditions`, sorted by name.
    pub preconditions: Vec<Precondition>,
    /// `PostponedUntil`, Unix seconds (0: not postponed).
    pub postponed_until: i64,
    /// `DeferredInstall`: the operation id of the install waiting for its
    /// preconditions (`Install` with `when-ready`), 0 when none.
    pub deferred_install: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Prop {
    State,
    Progress,
    PendingUpdates,
    PendingUpdateId,
    Ecus,
    LastCheck,
    LastError,
    LastErrorCode,
    Preconditions,
    PostponedUntil,
    DeferredInstall,
}

impl Prop {
    fn name(self) -> &'static str {
        match self {
            Prop::State => "State",
            Prop::Progress => "Progress",
            Prop::PendingUpdates => "PendingUpdates",
            Prop::PendingUpdateId => "PendingUpdateId",
            Prop::Ecus => "Ecus",
            Prop::LastCheck => "LastCheck",
            Prop::LastError => "LastError",
            Prop::LastErrorCode => "LastErrorCode",
            Prop::Preconditions => "Preconditions",
            Prop::PostponedUntil => "PostponedUntil",
            Prop::DeferredInstall => "DeferredInstall",
        }
    }

    fn value(self, s: &Snapshot) -> Value<'static> {
        match self {
            Prop::State => Value::from(s.state.as_str().to_owned()),
            Prop::Progress => Value::from(s.progress.clone()),
            Prop::PendingUpdates => Value::from(s.pending_updates.clone()),
            Prop::PendingUpdateId => Value::from(s.pending_update_id.clone()),
            Prop::Ecus => Value::from(s.ecus.clone()),
            Prop::LastCheck => Value::from(s.last_check),
            Prop::LastError => Value::from(s.last_error.clone()),
            Prop::LastErrorCode => Value::from(s.last_error_code),
            Prop::Preconditions => Value::from(s.preconditions.clone()),
            Prop::PostponedUntil => Value::from(s.postponed_until),
            Prop::DeferredInstall => Value::from(s.deferred_install),
        }
    }
}

enum Signal {
    UpdateAvailable(String, Vec<PendingUpdate>),
    Completed(u32, String),
    OperationCompleted(u64, String, u32, String),
}

#[derive(Default)]
struct Inner {
    snap: Snapshot,
    dirty: BTreeSet<Prop>,
    signals: VecDeque<Signal>,
    waiters: Vec<oneshot::Sender<()>>,
    /// A `Progress` reset (an operation started) not yet on the bus: sent as
    /// it is, even when later progress arrives before the emitter runs, so a
    /// UI always sees the operation start at its reset value.
    reset: Option<Progress>,
}

struct Shared {
    inner: Mutex<Inner>,
    wake: Notify,
    connection: OnceLock<Connection>,
    throttle: Duration,
}

/// The daemon's handle for publishing state on the bus.
///
/// Cheap to clone; setters are synchronous, never block on the bus and only mark
/// a property dirty when its value changes. A background task (started by
/// [`StateHandle::serve`] or [`StateHandle::attach`]) emits one coalesced
/// `PropertiesChanged` at most every throttle interval, always including the latest
/// values, and emits signals in the order they were queued, each after the property
/// changes made before it. Setters used before the connection is attached just set
/// the initial values.
#[derive(Clone)]
pub struct StateHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StateHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateHandle")
            .field("snapshot", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl Default for StateHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl StateHandle {
    /// A handle with default state and [`DEFAULT_THROTTLE`].
    pub fn new() -> Self {
        Self::with_throttle(DEFAULT_THROTTLE)
    }

    /// A handle with a custom minimum interval between `PropertiesChanged` signals.
    pub fn with_throttle(throttle: Duration) -> Self {
        StateHandle {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::default()),
                wake: Notify::new(),
                connection: OnceLock::new(),
                throttle,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated in a way
        // that matters more than losing the daemon's state publication entirely.
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Serves the interface on a connection being built, then requests
    /// [`BUS_NAME`] (objects are served before the name is taken, so no client can
    /// see the name without the object) and starts publishing. Fails with
    /// `zbus::Error::NameTaken` when another process owns the name: the name is
    /// requested without queueing and without allowing replacement.
    ///
    /// Only root and this process's own user may call methods: use
    /// [`StateHandle::serve_with_access`] to let groups in.
    pub async fn serve(
        &self,
        builder: zbus::connection::Builder<'_>,
        controller: Arc<dyn Controller>,
    ) -> zbus::Result<Connection> {
        let own = rustix::process::getuid().as_raw();
        self.serve_with_access(builder, controller, AccessPolicy::new([0, own], []))
            .await
    }

    /// [`StateHandle::serve`] enforcing `access` on every method call.
    pub async fn serve_with_access(
        &self,
        builder: zbus::connection::Builder<'_>,
        controller: Arc<dyn Controller>,
        access: AccessPolicy,
    ) -> zbus::Result<Connection> {
        // zbus's defaults let a later requester replace the owner; a second daemon
        // (or any process the bus policy lets own the name) must fail instead.
        let connection = builder
            .serve_at(
                OBJECT_PATH,
                Ota1Interface::new(controller, self.clone()).with_access(access),
            )?
            .name(BUS_NAME)?
            .allow_name_replacements(false)
            .replace_existing_names(false)
            .build()
            .await?;
        self.attach(&connection);
        Ok(connection)
    }

    /// Starts publishing on `connection`, where the caller served
    /// [`Ota1Interface`] at [`OBJECT_PATH`] itself. Must run inside a Tokio runtime.
    /// A second call is ignored.
    pub fn attach(&self, connection: &Connection) {
        if self.shared.connection.set(connection.clone()).is_err() {
            tracing::warn!("StateHandle already attached to a connection; ignoring");
            return;
        }
        tokio::spawn(run_emitter(self.shared.clone()));
        self.shared.wake.notify_one();
    }

    /// A copy of the published state.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().snap.clone()
    }

    fn set<T: PartialEq>(&self, prop: Prop, value: T, field: impl FnOnce(&mut Snapshot) -> &mut T) {
        let mut inner = self.lock();
        let slot = field(&mut inner.snap);
        if *slot != value {
            *slot = value;
            inner.dirty.insert(prop);
            drop(inner);
            self.shared.wake.notify_one();
        }
    }

    /// Sets `State`.
    pub fn set_state(&self, state: State) {
        self.set(Prop::State, state, |s| &mut s.state);
    }

    /// Sets `Progress`.
    pub fn set_progress(&self, progress: Progress) {
        self.set(Prop::Progress, progress, |s| &mut s.progress);
    }

    /// Sets `Progress` to the value an operation starts from. Unlike
    /// [`StateHandle::set_progress`] it is never coalesced with what follows:
    /// it goes out without waiting for the throttle interval, as it is, in
    /// its own `PropertiesChanged`.
    pub fn reset_progress(&self, progress: Progress) {
        let mut inner = self.lock();
        inner.snap.progress = progress.clone();
        inner.dirty.insert(Prop::Progress);
        inner.reset = Some(progress);
        drop(inner);
        self.shared.wake.notify_one();
    }

    /// Publishes `plan` as `PendingUpdates` and `PendingUpdateId`.
    pub fn set_pending(&self, plan: &UpdatePlan) {
        self.set(Prop::PendingUpdates, plan.updates().to_vec(), |s| {
            &mut s.pending_updates
        });
        self.set(Prop::PendingUpdateId, plan.id().to_string(), |s| {
            &mut s.pending_update_id
        });
    }

    /// Clears `PendingUpdates`, `PendingUpdateId` and `PostponedUntil`.
    pub fn clear_pending(&self) {
        self.set(Prop::PendingUpdates, Vec::new(), |s| &mut s.pending_updates);
        self.set(Prop::PendingUpdateId, String::new(), |s| {
            &mut s.pending_update_id
        });
        self.set(Prop::PostponedUntil, 0, |s| &mut s.postponed_until);
    }

    /// Sets `Ecus`.
    pub fn set_ecus(&self, ecus: Vec<Ecu>) {
        self.set(Prop::Ecus, ecus, |s| &mut s.ecus);
    }

    /// Sets `LastCheck` (Unix seconds, from the daemon's clock).
    pub fn set_last_check(&self, unix_seconds: i64) {
        self.set(Prop::LastCheck, unix_seconds, |s| &mut s.last_check);
    }

    /// Sets `LastError` and `LastErrorCode`.
    pub fn set_last_error(&self, code: ErrorCode, message: impl Into<String>) {
        self.set(Prop::LastError, message.into(), |s| &mut s.last_error);
        self.set(Prop::LastErrorCode, code.as_u32(), |s| {
            &mut s.last_error_code
        });
    }

    /// Clears `LastError` and `LastErrorCode` (at the start of an operation).
    pub fn clear_last_error(&self) {
        self.set_last_error(ErrorCode::Ok, "");
    }

    /// Inserts or replaces the precondition `name` in `Preconditions`.
    pub fn set_precondition(&self, name: &str, satisfied: bool, reason: &str) {
        let mut list = self.lock().snap.preconditions.clone();
        let entry = Precondition {
            name: name.to_owned(),
            satisfied,
            reason: reason.to_owned(),
        };
        match list.binary_search_by(|p| p.name.as_str().cmp(name)) {
            Ok(i) => list[i] = entry,
            Err(i) => list.insert(i, entry),
        }
        self.set(Prop::Preconditions, list, |s| &mut s.preconditions);
    }

    /// Removes the precondition `name` from `Preconditions`.
    pub fn remove_precondition(&self, name: &str) {
        let mut list = self.lock().snap.preconditions.clone();
        list.retain(|p| p.name != name);
        self.set(Prop::Preconditions, list, |s| &mut s.preconditions);
    }

    /// Sets `DeferredInstall` (the deferred install's operation id, 0: none).
    pub fn set_deferred_install(&self, operation_id: u64) {
        self.set(Prop::DeferredInstall, operation_id, |s| {
            &mut s.deferred_install
        });
    }

    /// Sets `PostponedUntil` (Unix seconds, 0 for not postponed).
    pub fn set_postponed_until(&self, unix_seconds: i64) {
        self.set(Prop::PostponedUntil, unix_seconds, |s| {
            &mut s.postponed_until
        });
    }

    fn queue(&self, signal: Signal) {
        self.lock().signals.push_back(signal);
        self.shared.wake.notify_one();
    }

    /// Queues the `UpdateAvailable` signal for `plan`.
    pub fn emit_update_available(&self, plan: &UpdatePlan) {
        self.queue(Signal::UpdateAvailable(
            plan.id().to_string(),
            plan.updates().to_vec(),
        ));
    }

    /// Queues a `Completed` signal alone, without the `OperationCompleted` that
    /// names the operation; a daemon ends its operations with
    /// [`StateHandle::emit_operation_completed`].
    pub fn emit_completed(&self, code: ErrorCode, message: impl Into<String>) {
        self.queue(Signal::Completed(code.as_u32(), message.into()));
    }

    /// Queues the end of operation `id` (of `kind`: `check`, `install`,
    /// `provision`): `Completed(code, message)` and, right after it,
    /// `OperationCompleted(id, kind, code, message)`.
    pub fn emit_operation_completed(
        &self,
        id: u64,
        kind: &str,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        let message = message.into();
        let mut inner = self.lock();
        inner
            .signals
            .push_back(Signal::Completed(code.as_u32(), message.clone()));
        inner.signals.push_back(Signal::OperationCompleted(
            id,
            kind.to_owned(),
            code.as_u32(),
            message,
        ));
        drop(inner);
        self.shared.wake.notify_one();
    }

    /// Waits until everything set or queued so far has been sent (for shutdown and
    /// tests). Returns at once when no connection is attached.
    pub async fn flush(&self) {
        if self.shared.connection.get().is_none() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.lock().waiters.push(tx);
        self.shared.wake.notify_one();
        let _ = rx.await;
    }
}

async fn run_emitter(shared: Arc<Shared>) {
    let Some(connection) = shared.connection.get().cloned() else {
        return;
    };
    let emitter = match SignalEmitter::new(&connection, OBJECT_PATH) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("cannot create signal emitter: {e}");
            return;
        }
    };
    let mut last_props: Option<Instant> = None;
    loop {
        shared.wake.notified().await;
        let urgent = {
            let inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
            !inner.signals.is_empty() || !inner.waiters.is_empty() || inner.reset.is_some()
        };
        // Throttle: wait out the rest of the interval so that everything set
        // meanwhile is coalesced into the next signal. Signals and flushes skip
        // the wait: they are rare and must not be delayed.
        if let (false, Some(last)) = (urgent, last_props) {
            let next = last + shared.throttle;
            if Instant::now() < next {
                tokio::time::sleep_until(next).await;
            }
        }
        let (changed, signals, waiters) = {
            let mut inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
            let mut dirty = std::mem::take(&mut inner.dirty);
            let mut changed: Vec<(&'static str, Value<'static>)> = Vec::new();
            if let Some(reset) = inner.reset.take() {
                // The reset goes out as it was set; a later value set before
                // this point stays dirty for the next signal.
                dirty.remove(&Prop::Progress);
                if inner.snap.progress != reset {
                    inner.dirty.insert(Prop::Progress);
                    shared.wake.notify_one();
                }
                changed.push((Prop::Progress.name(), Value::from(reset)));
            }
            changed.extend(dirty.into_iter().map(|p| (p.name(), p.value(&inner.snap))));
            (
                changed,
                std::mem::take(&mut inner.signals),
                std::mem::take(&mut inner.waiters),
            )
        };
        if !changed.is_empty() {
            let map: HashMap<&str, Value<'_>> = changed.into_iter().collect();
            let iface = zbus::names::InterfaceName::from_static_str_unchecked(INTERFACE);
            if let Err(e) =
                zbus::fdo::Properties::properties_changed(&emitter, iface, map, (&[][..]).into())
                    .await
            {
                tracing::warn!("emitting PropertiesChanged failed: {e}");
            }
            last_props = Some(Instant::now());
        }
        for signal in signals {
            let res = match &signal {
                Signal::UpdateAvailable(id, updates) => {
                    Ota1Interface::update_available(&emitter, id, updates.clone()).await
                }
                Signal::Completed(code, message) => {
                    Ota1Interface::completed(&emitter, *code, message).await
                }
                Signal::OperationCompleted(id, kind, code, message) => {
                    Ota1Interface::operation_completed(&emitter, *id, kind, *code, message).await
                }
            };
            if let Err(e) = res {
                tracing::warn!("emitting signal failed: {e}");
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

fn valid_precondition_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

const MAX_REASON_LEN: usize = 256;

/// The `io.secureev.Ota1` object. Serve it with [`StateHandle::serve`], or serve it
/// yourself at [`OBJECT_PATH`] and call [`StateHandle::attach`].
pub struct Ota1Interface {
    controller: Arc<dyn Controller>,
    state: StateHandle,
    access: AccessPolicy,
}

/// The caller of the method being handled, from the bus daemon
/// (`GetConnectionCredentials`); groups from `/etc/group` when the bus does
/// not report them.
async fn caller_of(conn: &Connection, header: &Header<'_>) -> Result<Caller, OtaError> {
    let unknown = |why: String| OtaError::NotPermitted(format!("caller unknown: {why}"));
    let sender = header
        .sender()
        .ok_or_else(|| unknown("no sender".into()))?
        .to_owned();
    let dbus = zbus::fdo::DBusProxy::new(conn)
        .await
        .map_err(|e| unknown(e.to_string()))?;
    let creds = dbus
        .get_connection_credentials(sender.into())
        .await
        .map_err(|e| unknown(e.to_string()))?;
    let uid = creds
        .unix_user_id()
        .ok_or_else(|| unknown("the bus gives no uid".into()))?;
    let gids = match creds.unix_group_ids() {
        Some(g) => g.iter().copied().collect(),
        None => tokio::task::spawn_blocking(move || gids_of_uid(uid))
            .await
            .map_err(|e| unknown(e.to_string()))?,
    };
    Ok(Caller { uid, gids })
}

impl Ota1Interface {
    /// An interface object forwarding to `controller` and publishing `state`;
    /// only root and this process's user may call (see [`Self::with_access`]).
    pub fn new(controller: Arc<dyn Controller>, state: StateHandle) -> Self {
        let own = rustix::process::getuid().as_raw();
        Ota1Interface {
            controller,
            state,
            access: AccessPolicy::new([0, own], []),
        }
    }

    /// Enforce `access` on every method call.
    pub fn with_access(mut self, access: AccessPolicy) -> Self {
        self.access = access;
        self
    }

    /// The caller, refused unless it holds `role`.
    async fn authorize(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        role: Role,
        method: &str,
    ) -> Result<Caller, OtaError> {
        if self.access.is_open() {
            return Ok(Caller {
                uid: u32::MAX,
                gids: Default::default(),
            });
        }
        let caller = caller_of(conn, header).await?;
        match self.access.polkit_timeout() {
            Some(timeout) if !self.access.is_trusted(&caller) => {
                let sender = header
                    .sender()
                    .ok_or_else(|| OtaError::NotPermitted("caller unknown: no sender".into()))?;
                crate::access::polkit_check(conn, sender.as_str(), role, method, timeout).await?;
            }
            _ => self.access.check(&caller, role, method)?,
        }
        Ok(caller)
    }
}

/// Over-the-air software updates for the vehicle (SecureEV-OTA, Uptane 2.1).
/// Methods return at once; progress is in the properties and every operation ends
/// with exactly one Completed signal. Errors are io.secureev.Ota1.Error.* with
/// stable numeric codes (docs/dbus-api.md).
#[interface(name = "io.secureev.Ota1")]
impl Ota1Interface {
    /// Start a check-in with the backend; a verified update found is downloaded and
    /// published in PendingUpdates. Returns the operation's id, which its
    /// OperationCompleted carries. Options: force (b), transaction-id (s).
    /// Errors: Busy, UnknownOption, InvalidArgument, NotProvisioned.
    #[zbus(out_args("operation_id"))]
    async fn check_for_updates(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<u64, OtaError> {
        self.authorize(conn, &header, Role::Consent, "CheckForUpdates")
            .await?;
        let options = CheckOptions::parse(&options)?;
        self.controller.check(options)
    }

    /// Install the pending update whose PendingUpdateId is update_id (the consent is
    /// bound to exactly what was shown). Returns the operation's id.
    /// Options: transaction-id (s); when-ready (b): if preconditions hold the
    /// install back, keep the consent and start it once they all hold (the id
    /// returned is then that deferred install's, shown in DeferredInstall and
    /// cancellable with Cancel); without it PreconditionFailed ends the consent.
    /// Errors: NoSuchUpdate, Busy, PreconditionFailed, UnknownOption.
    #[zbus(out_args("operation_id"))]
    async fn install(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        update_id: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<u64, OtaError> {
        self.authorize(conn, &header, Role::Consent, "Install")
            .await?;
        let options = InstallOptions::parse(&options)?;
        let pending = self.state.lock().snap.pending_update_id.clone();
        if pending.is_empty() {
            return Err(OtaError::NoSuchUpdate("no update is pending".into()));
        }
        if pending != update_id {
            return Err(OtaError::NoSuchUpdate(format!(
                "update {update_id:?} is not the pending update {pending:?}; show it again and ask for consent"
            )));
        }
        self.controller
            .install(&UpdateId::from_published(&pending), options)
    }

    /// Cancel the running operation. Downloads are always cancellable; an install is
    /// refused with NotCancellable once it has started writing.
    async fn cancel(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), OtaError> {
        self.authorize(conn, &header, Role::Consent, "Cancel")
            .await?;
        self.controller.cancel()
    }

    /// Do not install the pending update, nor ask again, for the given number of
    /// seconds (1 to 604800). Errors: NoSuchUpdate, InvalidArgument.
    async fn postpone(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        seconds: u32,
    ) -> Result<(), OtaError> {
        self.authorize(conn, &header, Role::Consent, "Postpone")
            .await?;
        if seconds == 0 || seconds > MAX_POSTPONE_SECS {
            return Err(OtaError::InvalidArgument(format!(
                "seconds must be between 1 and {MAX_POSTPONE_SECS}, got {seconds}"
            )));
        }
        if self.state.lock().snap.pending_update_id.is_empty() {
            return Err(OtaError::NoSuchUpdate("no update is pending".into()));
        }
        self.controller
            .postpone(Duration::from_secs(u64::from(seconds)))
    }

    /// Report whether a vehicle condition that gates installs holds (e.g. parked,
    /// battery). name: [a-z0-9][a-z0-9._-]{0,63}; reason: up to 256 bytes.
    async fn set_precondition(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: &str,
        satisfied: bool,
        reason: &str,
    ) -> Result<(), OtaError> {
        let caller = self
            .authorize(conn, &header, Role::Preconditions, "SetPrecondition")
            .await?;
        if !valid_precondition_name(name) {
            return Err(OtaError::InvalidArgument(format!(
                "invalid precondition name {name:?}"
            )));
        }
        if reason.len() > MAX_REASON_LEN {
            return Err(OtaError::InvalidArgument(format!(
                "reason longer than {MAX_REASON_LEN} bytes"
            )));
        }
        self.controller
            .set_precondition(name, satisfied, reason, &caller)
    }

    /// Past operations, oldest first; each entry has time (x), action (s),
    /// update-id (s), ecu-serial (s), version (s), release-counter (t), code (u),
    /// message (s).
    #[zbus(out_args("history"))]
    async fn get_history(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<HistoryEntry>, OtaError> {
        self.authorize(conn, &header, Role::Read, "GetHistory")
            .await?;
        self.controller.history()
    }

    /// Register the vehicle with the backend at backend_url (https only).
    /// Returns the operation's id. Options: vin (s), token (s),
    /// transaction-id (s). Ends with Completed and OperationCompleted.
    #[zbus(out_args("operation_id"))]
    async fn provision(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        backend_url: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<u64, OtaError> {
        self.authorize(conn, &header, Role::Provision, "Provision")
            .await?;
        let options = ProvisionOptions::parse(&options)?;
        let host = backend_url.strip_prefix("https://").unwrap_or_default();
        if host.is_empty() || host.starts_with('/') {
            return Err(OtaError::InvalidArgument(format!(
                "backend_url must be an https:// URL, got {backend_url:?}"
            )));
        }
        self.controller.provision(backend_url, options)
    }

    /// idle, checking, downloading, verifying, awaiting-consent, installing,
    /// reporting or error.
    #[zbus(property)]
    fn state(&self) -> String {
        self.state.lock().snap.state.as_str().to_owned()
    }

    /// percent (u), phase (s), bytes-done (t), bytes-total (t), ecu (s), message (s).
    #[zbus(property)]
    fn progress(&self) -> Progress {
        self.state.lock().snap.progress.clone()
    }

    /// Per ECU: update-id (s), ecu-serial (s), hardware-id (s), target (s),
    /// version (s: human version), release-counter (t), size (t), sha256 (s),
    /// release-notes (s).
    #[zbus(property)]
    fn pending_updates(&self) -> Vec<PendingUpdate> {
        self.state.lock().snap.pending_updates.clone()
    }

    /// Id of the pending update to pass to Install; empty when nothing is pending.
    #[zbus(property)]
    fn pending_update_id(&self) -> String {
        self.state.lock().snap.pending_update_id.clone()
    }

    /// Per ECU: serial (s), hardware-id (s), installed-version (s: human version), installed-target (s), installed-release-counter (t), primary (b), transport (s: "", "can", "doip"), status (s: "ok", "refused", "unreachable", "unknown"), last-contact (x: when an exchange with it last completed, Unix seconds, 0 = not since start).
    #[zbus(property)]
    fn ecus(&self) -> Vec<Ecu> {
        self.state.lock().snap.ecus.clone()
    }

    /// Time of the last successful check-in, Unix seconds (0: never).
    #[zbus(property)]
    fn last_check(&self) -> i64 {
        self.state.lock().snap.last_check
    }

    /// English message of the last failure (empty: none).
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.state.lock().snap.last_error.clone()
    }

    /// Stable numeric code of the last failure (0: none).
    #[zbus(property)]
    fn last_error_code(&self) -> u32 {
        self.state.lock().snap.last_error_code
    }

    /// Conditions gating installs: name (s), satisfied (b), reason (s).
    #[zbus(property)]
    fn preconditions(&self) -> Vec<Precondition> {
        self.state.lock().snap.preconditions.clone()
    }

    /// The pending update is postponed until this Unix time (0: not postponed).
    #[zbus(property)]
    fn postponed_until(&self) -> i64 {
        self.state.lock().snap.postponed_until
    }

    /// Operation id of the install waiting for its preconditions (Install with
    /// when-ready), 0 when none; it starts when they all hold, Cancel drops it.
    #[zbus(property)]
    fn deferred_install(&self) -> u64 {
        self.state.lock().snap.deferred_install
    }

    /// A verified update is pending; its id and per-ECU entries as in PendingUpdates.
    #[zbus(signal)]
    pub(crate) async fn update_available(
        emitter: &SignalEmitter<'_>,
        update_id: &str,
        updates: Vec<PendingUpdate>,
    ) -> zbus::Result<()>;

    /// An operation ended: code 0 is success, otherwise a stable error code.
    /// Always followed by OperationCompleted for the same operation.
    #[zbus(signal)]
    pub(crate) async fn completed(
        emitter: &SignalEmitter<'_>,
        code: u32,
        message: &str,
    ) -> zbus::Result<()>;

    /// Operation id ended: kind is check, install or provision; code and
    /// message as in Completed, which is sent right before it. Ids are those
    /// returned by CheckForUpdates, Install and Provision (scheduled check-ins
    /// and held-back installs get ids too), increasing, never 0.
    #[zbus(signal)]
    pub(crate) async fn operation_completed(
        emitter: &SignalEmitter<'_>,
        id: u64,
        kind: &str,
        code: u32,
        message: &str,
    ) -> zbus::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precondition_names() {
        assert!(valid_precondition_name("parked"));
        assert!(valid_precondition_name("battery.soc-min_2"));
        assert!(!valid_precondition_name(""));
        assert!(!valid_precondition_name("Parked"));
        assert!(!valid_precondition_name("-x"));
        assert!(!valid_precondition_name(&"a".repeat(65)));
    }

    #[tokio::test]
    async fn setters_only_dirty_on_change() {
        let h = StateHandle::new();
        h.set_state(State::Idle);
        assert!(h.lock().dirty.is_empty());
        h.set_state(State::Checking);
        assert_eq!(h.lock().dirty.len(), 1);
        h.set_precondition("parked", false, "driving");
        h.set_precondition("battery", true, "");
        let names: Vec<_> = h
            .snapshot()
            .preconditions
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["battery", "parked"]);
        h.flush().await; // not attached: returns at once
    }
}
