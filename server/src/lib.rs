//! # secureev-server
//!
//! The SecureEV-OTA backend: an Uptane 2.1 Image repository, a per-vehicle
//! Director and the vehicle registry, served over HTTPS (rustls, TLS 1.3).
//!
//! ## Architecture
//! - [`config`]: the TOML configuration.
//! - [`layout`]: the data directory and the on-disk key store.
//! - [`db`]: SQLite, the only module that speaks SQL.
//! - [`repo`]: repository metadata; the Image repository's publication of
//!   offline-signed targets and online re-signing of snapshot and timestamp.
//! - [`director`]: per-vehicle Director metadata, key wrapping for encrypted
//!   images.
//! - [`auth`]: signed vehicle requests (see
//!   [`secureev_uptane::request_auth`]) and operator tokens;
//!   [`operators`]: operators and their roles; [`enroll`]: per-vehicle
//!   enrollment credentials.
//! - [`api`]: vehicle-facing routes; [`admin`]: the admin REST API;
//!   [`openapi`]: its OpenAPI document.
//! - [`audit`]: the signed, hash-chained audit trail.
//! - [`limits`]: connection, deadline and body-rate limits; [`logging`]:
//!   escaped, structured logs and the access log; [`secrets`]: file modes
//!   and the key-encryption key; [`keystore`]: where online keys and the
//!   KEK live (PEM files or a PKCS#11 token, [`hsm`]).
//!
//! Two listeners: vehicles on `listen` (`/image`, `/director`, `/registry`,
//! `/enroll`), operators on `admin_listen` (`/admin`, loopback by default, or
//! a Unix socket `unix:/path` with mode `admin_socket_mode`).
//! - [`tls`]: development PKI and rustls configuration; [`init`]: `init`.
//! - [`client`]: the admin and vehicle HTTP clients the CLI and tests use.
//!
//! Verification of everything signed (targets from the offline tool,
//! manifests, ECU reports, request signatures) is done by the sans-IO core,
//! [`secureev_uptane`]; this crate adds storage, HTTP and policy.
//!
//! [`run`] serves until a shutdown future resolves; `main.rs` is glue.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod client;
pub mod config;
pub mod db;
pub mod director;
pub mod enroll;
pub mod error;
pub mod extract;
pub mod hsm;
pub mod init;
pub mod keystore;
pub mod layout;
pub mod limits;
pub mod logging;
pub mod openapi;
pub mod operators;
pub mod push;
pub mod repo;
pub mod rollout;
pub mod secrets;
pub mod tls;

pub use config::{Config, Transport};
pub use error::{Error, Result};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, put};
use axum::Router;
use director::DirectorKeys;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Seconds since the Unix epoch, from the system clock. Only [`AppState`]'s
/// default clock and `init` call it; everything else takes `now`.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Refused requests recorded in the audit trail per minute at most.
pub const REFUSED_AUDIT_PER_MINUTE: u32 = 60;

#[derive(Debug, Default)]
struct RefusedLog {
    minute: i64,
    written: u32,
    suppressed: u64,
}

/// Most decoded DIDs kept in memory.
pub const DID_CACHE_ENTRIES: usize = 100_000;

/// A source of the current time, Unix seconds (injectable for tests).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

struct Inner {
    config: Config,
    db: db::Db,
    director: std::sync::RwLock<Arc<DirectorKeys>>,
    rotation: tokio::sync::Mutex<()>,
    image_online: std::sync::RwLock<Arc<repo::ImageOnlineKeys>>,
    audit_key: keystore::OnlineKey,
    key_store: keystore::KeyStore,
    refused: Mutex<RefusedLog>,
    kek: secrets::Kek,
    nonces: Mutex<auth::NonceCache>,
    clock: Clock,
    did_cache: Mutex<std::collections::HashMap<String, secureev_uptane::PublicKey>>,
}

/// Shared state of the running server.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("data_dir", &self.0.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Load keys, token and database from the configured data directory. The
    /// offline key directory is never read.
    pub fn load(config: Config) -> Result<Self> {
        Self::load_with_clock(config, Arc::new(unix_now))
    }

    /// As [`AppState::load`], with an explicit clock.
    pub fn load_with_clock(config: Config, clock: Clock) -> Result<Self> {
        config.validate()?;
        let data = &config.data_dir;
        // Uptane keys, the audit key, the KEK and the database are refused
        // when anyone but the owner could read them.
        secrets::check_data_dir(data)?;
        let store = keystore::KeyStore::open(&config)?;
        let audit_key = audit::load_or_create_key(&store)?;
        let kek = store.kek()?;
        let director = DirectorKeys::load(&store)?;
        let image_online = repo::ImageOnlineKeys {
            snapshot: store.load(repo::IMAGE, "snapshot")?,
            timestamp: store.load(repo::IMAGE, "timestamp")?,
        };
        tracing::info!(
            key_store = ?config.key_store,
            director_root = director.root.len(),
            "online keys loaded"
        );
        if matches!(store, keystore::KeyStore::Token(_)) {
            let mut left = keystore::files_left(data);
            let tls_file = data.join(layout::SERVER_KEY);
            if config.tls_key.is_none() && tls_file.exists() && store.tls_key()?.is_some() {
                left.push(tls_file);
            }
            if !left.is_empty() {
                tracing::warn!(
                    files = ?left,
                    "key_store is pkcs11 but online keys or the KEK are still files under keys/: run `secureev-server hsm import` or remove them"
                );
            }
        }
        let inner = Inner {
            db: db::Db::open_store(data, config.database_url.as_deref())?,
            director: std::sync::RwLock::new(Arc::new(director)),
            rotation: tokio::sync::Mutex::new(()),
            image_online: std::sync::RwLock::new(Arc::new(image_online)),
            audit_key,
            key_store: store,
            refused: Mutex::new(RefusedLog::default()),
            kek,
            nonces: Mutex::new(auth::NonceCache::default()),
            clock,
            config,
            did_cache: Mutex::new(std::collections::HashMap::new()),
        };
        std::fs::create_dir_all(inner.config.data_dir.join(layout::BLOBS))
            .map_err(|e| Error::io("creating blob directory", e))?;
        Ok(AppState(Arc::new(inner)))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.0.config
    }
    /// The database.
    pub fn db(&self) -> &db::Db {
        &self.0.db
    }
    /// The Director keys (a snapshot: rotation swaps them atomically).
    pub fn director_keys(&self) -> Arc<DirectorKeys> {
        match self.0.director.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
    /// Replace the Director keys (after a committed rotation).
    pub fn set_director_keys(&self, keys: DirectorKeys) {
        let mut guard = match self.0.director.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(keys);
    }
    /// Where online keys and the KEK live.
    pub fn key_store(&self) -> &keystore::KeyStore {
        &self.0.key_store
    }
    /// Serialises key rotations.
    pub fn rotation_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.0.rotation
    }
    /// The Image repository's online snapshot and timestamp keys.
    pub fn image_online(&self) -> Arc<repo::ImageOnlineKeys> {
        match self.0.image_online.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
    /// Replace the Image repository's online keys (after a committed rotation).
    pub fn set_image_online(&self, keys: repo::ImageOnlineKeys) {
        let mut guard = match self.0.image_online.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(keys);
    }
    /// Append an audit record inside `tx` (see [`audit`]).
    pub fn audit(
        &self,
        tx: &db::Tx<'_>,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<i64> {
        audit::append(tx, &self.0.audit_key, self.now(), actor, action, detail)
    }

    /// The pending audit record of an admin request (see
    /// [`audit::RequestRecord`]).
    pub fn request_record(&self, actor: String, detail: serde_json::Value) -> audit::RequestRecord {
        audit::RequestRecord::new(
            self.0.audit_key.clone(),
            self.0.clock.clone(),
            actor,
            detail,
        )
    }

    /// Record a refused request in the audit trail, at most
    /// [`REFUSED_AUDIT_PER_MINUTE`] a minute; the rest are counted and the
    /// count goes into the next record, so a flood cannot fill the trail or
    /// make the server sign at the attacker's pace.
    pub fn audit_refused(&self, peer: Option<SocketAddr>, what: &str, why: &str) {
        let now = self.now();
        let suppressed = {
            let mut r = match self.0.refused.lock() {
                Ok(r) => r,
                Err(p) => p.into_inner(),
            };
            if now / 60 != r.minute {
                r.minute = now / 60;
                r.written = 0;
            }
            if r.written >= REFUSED_AUDIT_PER_MINUTE {
                r.suppressed += 1;
                return;
            }
            r.written += 1;
            std::mem::take(&mut r.suppressed)
        };
        let detail = serde_json::json!({
            "peer": peer.map(|p| p.to_string()),
            "request": what,
            "reason": why,
            "suppressed_before": suppressed,
        });
        if let Err(e) = self
            .db()
            .write(|tx| self.audit(tx, "peer", "request-refused", detail.clone()))
        {
            tracing::error!(error = %e, "cannot append to the audit trail");
        }
    }

    /// The key-encryption key sealing image content keys.
    pub fn kek(&self) -> &secrets::Kek {
        &self.0.kek
    }
    /// The nonce cache.
    pub fn nonces(&self) -> &Mutex<auth::NonceCache> {
        &self.0.nonces
    }
    /// Resolve a registered `did:key` to its public key. The key is a pure
    /// function of the DID string (which is always read fresh from the
    /// registry), so caching the decoding is safe; it saves a base58 decode
    /// and a point decompression per request.
    pub fn resolve_did(&self, did: &str) -> Result<secureev_uptane::PublicKey> {
        if let Ok(cache) = self.0.did_cache.lock() {
            if let Some(k) = cache.get(did) {
                return Ok(k.clone());
            }
        }
        let key = secureev_uptane::did::resolve(did)
            .map_err(|e| Error::Internal(format!("registered DID does not resolve: {e}")))?;
        if let Ok(mut cache) = self.0.did_cache.lock() {
            if cache.len() >= DID_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(did.to_owned(), key.clone());
        }
        Ok(key)
    }
    /// Now, Unix seconds.
    pub fn now(&self) -> i64 {
        (self.0.clock)()
    }
    /// The blob directory.
    pub fn blob_dir(&self) -> PathBuf {
        self.0.config.data_dir.join(layout::BLOBS)
    }
    /// The path of the blob with SHA-256 `sha256` (64 lower-case hex digits).
    pub fn blob_path(&self, sha256: &str) -> Result<PathBuf> {
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Error::Internal(format!("bad blob id {sha256:?}")));
        }
        Ok(self.blob_dir().join(sha256))
    }
}

/// The vehicle listener's application: Image repository, Director, registry,
/// enrollment. Every route but `/enroll` needs a signed request.
pub fn vehicle_router(state: AppState) -> Router {
    let max_body = state.config().max_body_bytes;
    let deadline = Duration::from_secs(state.config().request_timeout_secs);
    let min_body_rate = state.config().min_body_bytes_per_sec;
    let signed = Router::new()
        .route("/image/{file}", get(api::image_meta))
        .route("/image/targets/{*path}", get(api::image_target))
        .route("/director/{vin}/manifest", put(api::put_manifest))
        .route("/director/{vin}/{file}", get(api::director_meta))
        .route("/registry/{vin}/{serial}/did.json", get(api::did_document))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::vehicle_auth,
        ));
    let enroll = Router::new()
        .route("/enroll", axum::routing::post(enroll::enroll))
        .route_layer(axum::middleware::from_fn(enroll::enroll_auth));
    Router::new()
        .merge(signed)
        .merge(enroll)
        .fallback(|| async { Error::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(extract::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            min_body_rate,
            limits::min_body_rate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            deadline,
            limits::request_deadline,
        ))
        .layer(axum::middleware::from_fn(logging::access_log))
        .with_state(state)
}

/// The admin listener's application: `/admin/...` for operators with tokens.
pub fn admin_router(state: AppState) -> Router {
    let max_body = state.config().max_body_bytes;
    let max_blob = state.config().max_blob_bytes;
    let deadline = Duration::from_secs(state.config().request_timeout_secs);
    let min_body_rate = state.config().min_body_bytes_per_sec;
    let admin = Router::new()
        .route("/admin/status", get(admin::status))
        .route(
            "/admin/vehicles",
            get(admin::list_vehicles).post(admin::register_vehicle),
        )
        .route("/admin/vehicles/{vin}", get(admin::get_vehicle))
        .route(
            "/admin/vehicles/{vin}/ecus/{serial}",
            put(admin::replace_ecu),
        )
        .route("/admin/vehicles/{vin}/history", get(admin::vehicle_history))
        .route("/admin/enrollments", get(enroll::list).post(enroll::create))
        .route("/admin/events", get(admin::events))
        .route("/admin/audit", get(admin::audit_records))
        .route("/admin/image/root", get(admin::image_root))
        .route("/admin/director/root", get(admin::director_root))
        .route(
            "/admin/director/rotate",
            axum::routing::post(admin::rotate_director),
        )
        .route(
            "/admin/image/root/rotate",
            axum::routing::post(admin::rotate_image_root),
        )
        .route(
            "/admin/image/online-keys",
            axum::routing::post(admin::new_image_online_key),
        )
        .route(
            "/admin/image/targets",
            get(admin::image_targets).post(admin::publish_targets),
        )
        .route("/admin/images", get(admin::list_images))
        .route(
            "/admin/assignments",
            get(admin::list_assignments).post(admin::create_assignment),
        )
        .route(
            "/admin/assignments/{id}",
            axum::routing::delete(admin::cancel_assignment),
        )
        .route(
            "/admin/campaigns",
            get(admin::list_campaigns).post(admin::create_campaign),
        )
        .route(
            "/admin/rollouts",
            get(rollout::list_handler).post(rollout::create_handler),
        )
        .route("/admin/rollouts/{id}", get(rollout::get_handler))
        .route(
            "/admin/rollouts/{id}/groups/{number}/targets",
            get(rollout::group_targets_handler),
        )
        .route(
            "/admin/rollouts/{id}/start",
            axum::routing::post(rollout::start_handler),
        )
        .route(
            "/admin/rollouts/{id}/pause",
            axum::routing::post(rollout::pause_handler),
        )
        .route(
            "/admin/rollouts/{id}/resume",
            axum::routing::post(rollout::resume_handler),
        )
        .route(
            "/admin/rollouts/{id}/cancel",
            axum::routing::post(rollout::cancel_handler),
        )
        // Everything above within the request deadline and the minimum
        // body rate; an upload below instead keeps its own minimum rate.
        .route_layer(axum::middleware::from_fn_with_state(
            min_body_rate,
            limits::min_body_rate,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            deadline,
            limits::request_deadline,
        ))
        .route(
            "/admin/blobs",
            put(admin::put_blob).layer(DefaultBodyLimit::max(max_blob)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::admin_auth,
        ));
    Router::new()
        .merge(admin)
        .route("/admin/openapi.json", get(openapi::handler))
        .fallback(|| async { Error::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(extract::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(logging::access_log))
        .with_state(state)
}

/// A server bound to its two addresses, not yet serving.
pub struct Server {
    vehicle: tokio::net::TcpListener,
    admin: AdminListener,
    tls: Option<Acceptors>,
    state: AppState,
}

/// The admin listener: TCP (TLS unless `insecure-http`) or a Unix socket
/// (plain HTTP; the socket file's mode and the operator token guard it).
enum AdminListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Bind the admin Unix socket at `path` with `mode`: a socket left by an
/// earlier run is replaced, any other file is refused. The parent directory
/// must exist (systemd's `RuntimeDirectory=`). The mode is set right after
/// bind(2); until then the socket has the umask's mode, and the operator token
/// is required either way.
fn bind_unix(path: &std::path::Path, mode: u32) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("removing the old socket {}", path.display()), e))?,
        Ok(_) => {
            return Err(Error::Config(format!(
                "{} exists and is not a socket",
                path.display()
            )))
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))?;
    Ok(listener)
}

/// The TLS configurations of the two listeners: the vehicle one asks for
/// device certificates when they are required, the admin one never.
#[derive(Clone)]
struct Acceptors {
    vehicle: tokio_rustls::TlsAcceptor,
    admin: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("vehicle", &self.vehicle.local_addr().ok())
            .field("admin", &self.admin_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Time a client has to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Load state and bind the listeners.
pub async fn bind(config: Config) -> Result<Server> {
    bind_with_state(AppState::load(config)?).await
}

/// Bind with prepared state (tests inject a clock this way).
pub async fn bind_with_state(state: AppState) -> Result<Server> {
    let config = state.config().clone();
    if let Some(push) = &config.push {
        push::start(push, state.db())?;
    }
    let tls = match config.transport {
        Transport::Tls => {
            let devices = match config.device_certificates {
                config::DeviceCertificates::Required => {
                    let ca = config.fleet_ca_path();
                    tracing::info!(fleet_ca = %ca.display(), "vehicles need device certificates");
                    Some(tls::device_verifier(&ca)?)
                }
                config::DeviceCertificates::Off => None,
            };
            // A TLS key in the token is used unless `tls_key` names a file.
            let token_key = match &config.tls_key {
                None => state.key_store().tls_key()?,
                Some(_) => None,
            };
            let make = |clients| match &token_key {
                Some(key) => tls::server_config_with_key(&config.cert_path(), key.clone(), clients),
                None => tls::server_config(&config.cert_path(), &config.key_path(), clients),
            };
            if let Some(key) = &token_key {
                tracing::info!(keyid = key.keyid(), "TLS key in the PKCS#11 token");
            }
            Some(Acceptors {
                vehicle: tokio_rustls::TlsAcceptor::from(make(devices)?),
                admin: tokio_rustls::TlsAcceptor::from(make(None)?),
            })
        }
        Transport::InsecureHttp => {
            tracing::warn!("serving plain HTTP: for loopback tests only");
            None
        }
    };
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("binding {addr}"), e))
    };
    Ok(Server {
        vehicle: bind(config.listen).await?,
        admin: match &config.admin_listen {
            config::ListenAddr::Tcp(a) => AdminListener::Tcp(bind(*a).await?),
            config::ListenAddr::Unix(p) => {
                AdminListener::Unix(bind_unix(p, config.admin_socket_mode)?, p.clone())
            }
        },
        tls,
        state,
    })
}

impl Server {
    /// The bound vehicle address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.vehicle
            .local_addr()
            .map_err(|e| Error::io("local address", e))
    }

    /// The bound admin address (an error when it is a Unix socket).
    pub fn admin_addr(&self) -> Result<SocketAddr> {
        match &self.admin {
            AdminListener::Tcp(l) => l.local_addr().map_err(|e| Error::io("local address", e)),
            AdminListener::Unix(_, p) => Err(Error::Config(format!(
                "the admin listener is the Unix socket {}",
                p.display()
            ))),
        }
    }

    /// The admin Unix socket, when it is one.
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        match &self.admin {
            AdminListener::Unix(_, p) => Some(p),
            AdminListener::Tcp(_) => None,
        }
    }

    /// The state (tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve both listeners until `shutdown` resolves; then stop accepting and
    /// return. The connection limits are shared by the two listeners.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let config = self.state.config().clone();
        let Server {
            vehicle,
            admin,
            tls,
            state,
        } = self;
        let limits = Arc::new(ConnLimits {
            total: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            peers: limits::PeerLimiter::new(config.max_connections_per_peer),
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let v = accept_loop(
            "vehicle",
            vehicle,
            tls.as_ref().map(|t| t.vehicle.clone()),
            vehicle_router(state.clone()),
            limits.clone(),
            stop_rx.clone(),
        );
        let a = async move {
            match admin {
                AdminListener::Tcp(l) => {
                    accept_loop(
                        "admin",
                        l,
                        tls.map(|t| t.admin),
                        admin_router(state),
                        limits,
                        stop_rx,
                    )
                    .await
                }
                AdminListener::Unix(l, path) => {
                    unix_accept_loop(l, &path, admin_router(state), limits, stop_rx).await;
                    let _ = std::fs::remove_file(&path);
                }
            }
        };
        let stop = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        tokio::join!(v, a, stop);
        Ok(())
    }
}

struct ConnLimits {
    total: Arc<tokio::sync::Semaphore>,
    peers: Arc<limits::PeerLimiter>,
}

async fn accept_loop(
    name: &'static str,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: Arc<ConnLimits>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    tracing::info!(listener = name, addr = ?listener.local_addr().ok(), tls = tls.is_some(), "serving");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Bound the number of open connections, in all and per peer; beyond
        // either, refuse at once, before any TLS work.
        let Some(peer_slot) = limits.peers.acquire(peer.ip()) else {
            tracing::warn!(%peer, "per-peer connection limit reached");
            drop(tcp);
            continue;
        };
        let Ok(permit) = limits.total.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _peer_slot = peer_slot;
            let service = |device: Option<auth::DeviceCert>| {
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(logging::PeerAddr(peer));
                    if let Some(d) = &device {
                        req.extensions_mut().insert(d.clone());
                    }
                    let mut app = app.clone();
                    async move { tower_service::Service::call(&mut app, req).await }
                })
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(mut stream)) => {
                            // A client certificate was asked for and verified
                            // by the handshake: which vehicle it names.
                            let device = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| {
                                    auth::DeviceCert(
                                        tls::certificate_vin(c.as_ref()).map_err(|e| e.to_string()),
                                    )
                                });
                            let r = builder
                                .serve_connection(
                                    hyper_util::rt::TokioIo::new(&mut stream),
                                    service(device),
                                )
                                .await;
                            close_gracefully(&mut stream).await;
                            linger(stream.get_mut().0).await;
                            r
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => {
                    let mut tcp = tcp;
                    let r = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(&mut tcp), service(None))
                        .await;
                    close_gracefully(&mut tcp).await;
                    linger(&mut tcp).await;
                    r
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// The admin API on a Unix socket: plain HTTP, the total connection limit
/// (there is no peer address to limit by), the same timeouts and graceful
/// close as TCP.
async fn unix_accept_loop(
    listener: tokio::net::UnixListener,
    path: &std::path::Path,
    app: Router,
    limits: Arc<ConnLimits>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    tracing::info!(listener = "admin", socket = %path.display(), "serving");
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limits.total.clone().try_acquire_owned() else {
            tracing::warn!("connection limit reached (admin socket)");
            drop(stream);
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut app = app.clone();
                    async move { tower_service::Service::call(&mut app, req).await }
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let mut stream = stream;
            let r = builder
                .serve_connection(hyper_util::rt::TokioIo::new(&mut stream), service)
                .await;
            close_gracefully(&mut stream).await;
            linger(&mut stream).await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "admin socket connection ended with an error");
            }
        });
    }
}

/// Time the server takes to send its TLS close_notify and FIN.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the server keeps reading, and dropping, what a client still
/// sends after the connection's last answer ([`linger`]).
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// How many bytes it reads so at most.
pub const LINGER_BYTES: u64 = 4 << 20;

/// End a connection the way TLS asks: a close_notify, then the TCP FIN. hyper
/// sends them itself when a connection ends normally; after an error (a
/// header read timeout on an idle keep-alive connection, say) it does not,
/// and the client would see an EOF "in violation of protocol". A second
/// shutdown only repeats the TCP one.
async fn close_gracefully<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
}

/// A lingering close (as Apache's): after the answer and the FIN, read and
/// drop what the client still sends, up to [`LINGER_BYTES`] within
/// [`LINGER_TIME`], or until its FIN. A request refused on its headers
/// leaves its body unread; closing a socket with unread bytes, or with more
/// still coming, makes the kernel answer with a reset, which may destroy the
/// answer before the client has read it.
async fn linger<S: tokio::io::AsyncRead + Unpin>(tcp: &mut S) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n as u64),
            }
        }
    })
    .await;
}

/// Load, bind and serve until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    bind(config).await?.serve(shutdown).await
}
