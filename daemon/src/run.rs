//! `run`: the daemon's start-up, main loop and shutdown, and the integration
//! points where check-in and the D-Bus service plug in.
//!
//! Start-up, in order: load the Primary's keys (creating them only where
//! `[keys] provision` allows, see [`crate::keys::load_for`]); open the state
//! directory; seed the trusted roots from `[trust]` when the state has none;
//! load the time floor; settle an install a kill interrupted; open the download
//! cache. Then the D-Bus service (if plugged in) takes its bus name, `READY=1`
//! goes to systemd, the watchdog starts, and the scheduler runs check-in cycles
//! (if plugged in) until shutdown. SIGTERM/SIGINT cancel the shutdown token: the
//! running cycle finishes its current atomic step, `STOPPING=1` is sent, and
//! `run` returns.

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, WatchdogMode};
use crate::error::{Error, Result};
use crate::fetch::download::{DownloadOptions, Downloader};
use crate::install::{installer_from_config, recover, Installer, Recovery};
use crate::keys::{load_for, PrimaryKeys};
use crate::notify::{watchdog_loop, watchdog_ping_interval_from_env, Notifier};
use crate::schedule::{run_scheduler, Schedule, Trigger, UpdateCycle};
use crate::store::{Repo, Role, Store};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Everything the daemon has loaded: what check-in and the D-Bus service work
/// with.
pub struct Daemon {
    /// The configuration.
    pub config: Config,
    /// The state directory.
    pub store: Store,
    /// The clock with the time floor.
    pub clock: Clock,
    /// The Primary's keys.
    pub keys: PrimaryKeys,
    /// The backend's HTTPS client (TLS 1.3, configured CA).
    pub http: reqwest::Client,
    /// The image download engine.
    pub downloader: Downloader,
    /// The Primary's installer.
    pub installer: Box<dyn Installer>,
    /// systemd notifications.
    pub notifier: Notifier,
    /// How an install interrupted by the last shutdown was settled (to report).
    pub recovery: Recovery,
    _lock: crate::store::StateLock,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("vin", &self.config.vehicle.vin)
            .field("state", &self.store.dir())
            .field("installer", &self.installer.kind())
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

/// Store the configured initial root of each repository unless the state has
/// one already (a newer root, reached by rotation, is never replaced). The root
/// is parsed by the core first, so a broken file stops start-up here.
pub fn seed_roots(config: &Config, store: &Store) -> Result<()> {
    for (repo, path) in [
        (Repo::Director, &config.trust.director_root),
        (Repo::Image, &config.trust.image_root),
    ] {
        if store.load_metadata(repo, Role::Root)?.is_some() {
            continue;
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        secureev_uptane::trusted::TrustedRepository::new(repo.as_str(), &bytes)
            .map_err(|source| Error::uptane(path.display().to_string(), source))?;
        store.save_metadata(repo, Role::Root, &bytes)?;
        tracing::info!(repository = repo.as_str(), file = %path.display(), "seeded the trusted root");
    }
    Ok(())
}

impl Daemon {
    /// Load everything; no network. See the module documentation for the order.
    pub async fn load(config: Config, notifier: Notifier) -> Result<Self> {
        let (keys, provisioned) = load_for(&config.keys, &config.state.dir)?;
        if provisioned.signing || provisioned.decryption {
            tracing::info!(?provisioned, "provisioned new Primary keys");
        }
        tracing::info!(
            did = %keys.did(),
            encryption_key = %keys.encryption_public().to_hex(),
            ecu = %config.vehicle.primary_serial,
            "Primary identity"
        );
        let (store, lock) = Store::open_locked(&config.state.dir)?;
        seed_roots(&config, &store)?;
        let clock = Clock::load(SystemClock, &store)?;
        let installer = installer_from_config(&config);
        let recovery = recover(&store, installer.as_ref()).await?;
        let http = crate::fetch::http::client(&config)?;
        let downloader = Downloader::new(http.clone(), DownloadOptions::from_config(&config))?;
        Ok(Daemon {
            config,
            store,
            clock,
            keys,
            http,
            downloader,
            installer,
            notifier,
            recovery,
            _lock: lock,
        })
    }
}

/// **Integration point: the D-Bus service** (`secureev-dbus`). `start` exports
/// the objects and returns once the bus name is owned (so that `READY=1` follows
/// it); `stop` releases the name at shutdown.
pub trait ControlService: Send + Sync {
    /// Serve on the bus; `trigger` starts a check-in (`CheckForUpdates`).
    fn start(&self, daemon: Arc<Daemon>, trigger: Trigger) -> BoxFuture<'_, Result<()>>;
    /// Leave the bus.
    fn stop(&self) -> BoxFuture<'_, Result<()>>;
}

/// **Integration point: check-in.** Builds the update cycle from the loaded
/// daemon (it needs the daemon's parts, which exist only after loading).
pub type CycleFactory = Box<dyn FnOnce(Arc<Daemon>) -> Arc<dyn UpdateCycle> + Send>;

/// What plugs into [`run_with`]. With nothing plugged in the daemon loads its
/// state, reports ready, keeps the watchdog fed and waits for shutdown: it
/// never pretends to check in.
#[derive(Default)]
pub struct Integrations {
    /// The check-in cycle.
    pub cycle: Option<CycleFactory>,
    /// The D-Bus service.
    pub control: Option<Arc<dyn ControlService>>,
}

/// Run the daemon until `shutdown` with nothing plugged in (see [`run_with`]).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    run_with(config, Integrations::default(), shutdown).await
}

/// Run the daemon until `shutdown`.
pub async fn run_with(
    config: Config,
    integrations: Integrations,
    shutdown: CancellationToken,
) -> Result<()> {
    let notifier = Notifier::from_env();
    notifier.status("loading state");
    let watchdog_mode = config.watchdog.mode;
    let schedule = Schedule::from_config(&config.checkin);
    let push = crate::push::Push::from_config(&config)?;
    let push_connect_timeout = std::time::Duration::from_secs(config.push.connect_timeout_secs);
    let daemon = Arc::new(Daemon::load(config, notifier).await?);
    if daemon.clock.floor().is_some() && daemon.clock.now().wall_behind_floor {
        daemon.notifier.status("wall clock behind the time floor");
    }

    let (trigger, triggers) = Trigger::new();
    if let Some(control) = &integrations.control {
        control.start(daemon.clone(), trigger.clone()).await?;
    }
    daemon.notifier.ready();

    let mut tasks = tokio::task::JoinSet::new();
    if let (WatchdogMode::Systemd, Some(interval)) =
        (watchdog_mode, watchdog_ping_interval_from_env())
    {
        let (d, s) = (daemon.clone(), shutdown.clone());
        tracing::info!(?interval, "watchdog enabled");
        tasks.spawn(async move { watchdog_loop(&d.notifier, interval, s).await });
    }
    match integrations.cycle {
        Some(factory) => {
            let cycle = factory(daemon.clone());
            daemon.notifier.status("idle");
            tasks.spawn(run_scheduler(cycle, schedule, triggers, shutdown.clone()));
            if let Some(push) = push {
                tracing::info!(?push, "push nudges over MQTT enabled");
                // Not in `tasks`: it holds no state to finish, so shutdown
                // only has to stop it, which its token does at once.
                tokio::spawn(push.run(trigger.clone(), push_connect_timeout, shutdown.clone()));
            }
        }
        None => {
            daemon
                .notifier
                .status("idle (no check-in configured in this build)");
            tracing::warn!("no check-in cycle is plugged in; the daemon only keeps its state");
        }
    }

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    daemon.notifier.stopping();
    // The scheduler returns once the running cycle has finished its step:
    // checking, downloading and reporting stop at once (the shutdown token
    // cancels them at every long await); an install is let finish, but never
    // for longer than SHUTDOWN_GRACE, well inside the unit's TimeoutStopSec.
    // An install cut off here is settled at the next start by its journal,
    // exactly as after a power cut.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "the running step did not finish in time; stopping anyway (the install journal settles it at the next start)"
        );
        tasks.abort_all();
    }
    if let Some(control) = &integrations.control {
        if let Err(e) = control.stop().await {
            tracing::warn!("leaving the bus: {e}");
        }
    }
    Ok(())
}

/// Longest wait for the running step after SIGTERM (see [`run_with`]):
/// only an install takes more than a moment. Below the unit's
/// `TimeoutStopSec=90s`.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Cancel `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        token.cancel();
    });
    Ok(())
}
