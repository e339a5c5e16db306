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
//!   [`secureev_uptane::request_auth`]) and the admin token.
//! - [`api`]: vehicle-facing routes; [`admin`]: the admin REST API;
//!   [`openapi`]: its OpenAPI document.
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
pub mod auth;
pub mod client;
pub mod config;
pub mod db;
pub mod director;
pub mod error;
pub mod init;
pub mod layout;
pub mod openapi;
pub mod repo;
pub mod tls;

pub use config::{Config, Transport};
pub use error::{Error, Result};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, put};
use axum::Router;
use director::DirectorKeys;
use sha2::{Digest, Sha256};
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
    admin_token_digest: [u8; 32],
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
        let keys = data.join(layout::KEYS);
        let token_path = data.join(layout::ADMIN_TOKEN);
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| Error::io(format!("reading {}", token_path.display()), e))?;
        let token = token.trim();
        if token.len() < 32 {
            return Err(Error::Config(
                "admin token must be at least 32 characters".into(),
            ));
        }
        let inner = Inner {
            db: db::Db::open(&data.join(layout::DB_FILE))?,
            director: std::sync::RwLock::new(Arc::new(DirectorKeys::load(data)?)),
            rotation: tokio::sync::Mutex::new(()),
            image_online: std::sync::RwLock::new(Arc::new(repo::ImageOnlineKeys {
                snapshot: layout::load_keys(&keys, repo::IMAGE, "snapshot")?,
                timestamp: layout::load_keys(&keys, repo::IMAGE, "timestamp")?,
            })),
            admin_token_digest: Sha256::digest(token.as_bytes()).into(),
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
    /// SHA-256 of the admin token.
    pub fn admin_token_digest(&self) -> &[u8; 32] {
        &self.0.admin_token_digest
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

/// The HTTP application.
pub fn router(state: AppState) -> Router {
    let max_body = state.config().max_body_bytes;
    let max_blob = state.config().max_blob_bytes;
    let vehicle = Router::new()
        .route("/image/{file}", get(api::image_meta))
        .route("/image/targets/{*path}", get(api::image_target))
        .route("/director/{vin}/manifest", put(api::put_manifest))
        .route("/director/{vin}/{file}", get(api::director_meta))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::vehicle_auth,
        ));
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
        .route("/admin/events", get(admin::events))
        .route(
            "/admin/blobs",
            put(admin::put_blob).layer(DefaultBodyLimit::max(max_blob)),
        )
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
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::admin_auth,
        ));
    Router::new()
        .merge(vehicle)
        .merge(admin)
        .route("/admin/openapi.json", get(openapi::handler))
        .route("/registry/{vin}/{serial}/did.json", get(api::did_document))
        .fallback(|| async { Error::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// A server bound to its address, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    state: AppState,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.listener.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Time a client has to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Load state and bind the listener.
pub async fn bind(config: Config) -> Result<Server> {
    bind_with_state(AppState::load(config)?).await
}

/// Bind with prepared state (tests inject a clock this way).
pub async fn bind_with_state(state: AppState) -> Result<Server> {
    let config = state.config().clone();
    let tls = match config.transport {
        Transport::Tls => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
            &config.cert_path(),
            &config.key_path(),
        )?)),
        Transport::InsecureHttp => {
            tracing::warn!("serving plain HTTP: for loopback tests only");
            None
        }
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(format!("binding {}", config.listen), e))?;
    Ok(Server {
        listener,
        tls,
        app: router(state.clone()),
        state,
    })
}

impl Server {
    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("local address", e))
    }

    /// The state (tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve until `shutdown` resolves; then stop accepting and return.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let max_connections = self.state.config().max_connections;
        let Server {
            listener, tls, app, ..
        } = self;
        tracing::info!(addr = ?listener.local_addr().ok(), tls = tls.is_some(), "serving");
        tokio::pin!(shutdown);
        let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
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
            // Bound the number of open connections; beyond it, refuse at once.
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection limit reached");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let app = app.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper_util::service::TowerToHyperService::new(app);
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                let result = match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(stream)) => {
                                builder
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await
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
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        Ok(())
    }
}

/// Load, bind and serve until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    bind(config).await?.serve(shutdown).await
}
