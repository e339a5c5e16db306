//! End-to-end harness shared by `e2e_attacks.rs` and `e2e_crash.rs` (and the
//! vcan rigs in `can-tests/tests/rig.rs`, which include this file):
//!
//! - [`Backend`]: an HTTPS server (TLS 1.3 only, certificate from a fresh rcgen
//!   CA) that serves whatever Director and Image repository files the test
//!   puts in it, at the URL layout the daemon uses. It checks the request
//!   signature of every request with `secureev_uptane::request_auth` (and
//!   refuses a replayed nonce), answers `Range` requests, can pace a file's
//!   bytes (slow retrieval, throttled downloads), records every request and
//!   every manifest `PUT`, and can be closed (503 for everything). It can
//!   also stall ([`Stall`]): hold a TCP connection without a TLS handshake,
//!   or read a request (a GET of one path, the manifest `PUT`) and never
//!   answer it, holding the connection until the client gives up.
//! - [`Repos`]: the Director and Image repository as two
//!   `secureev_uptane::builder::RepoBuilder`s, with helpers that add targets
//!   with the custom fields the backend uses and lay the signed files out.
//! - [`Vehicle`]: a temporary directory with a generated configuration, the
//!   trusted roots and the Primary's keys, a private `dbus-daemon`, and the real
//!   `secureev-otad` binary run in its own process group so that a test can
//!   SIGKILL it together with an installer command it is running.
// Test helpers outside #[test] functions unwrap too; clippy.toml's
// allow-unwrap-in-tests only covers the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use secureev_dbus::testing::PrivateBus;
use secureev_dbus::Ota1Proxy;
use secureev_uptane::builder::{Published, RepoBuilder};
use secureev_uptane::request_auth::{
    verify_request, RequestParts, DEFAULT_REPLAY_WINDOW_SECS, HEADER_NONCE, HEADER_SIGNATURE,
    HEADER_TIMESTAMP, HEADER_VEHICLE,
};
use secureev_uptane::{PublicKey, Timestamp};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The vehicle every test uses.
pub const VIN: &str = "WSEVE2E0000000001";
/// Its Primary (head unit).
pub const HU: &str = "HU-E2E";
/// The head unit's hardware ID.
pub const HW: &str = "secureev-hu-e2e";

/// Wall-clock now, as the daemon sees it (it runs on the real clock).
pub fn now() -> Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Timestamp::from_unix(i64::try_from(secs).unwrap())
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Deterministic pseudo-random bytes (xorshift), cheap even in debug builds.
pub fn image_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---- the backend --------------------------------------------------------------------

/// How a file's body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Bytes per write.
    pub chunk: usize,
    /// Pause after each write.
    pub every: Duration,
}

/// One file the backend serves.
#[derive(Debug, Clone)]
pub struct Served {
    /// The body.
    pub body: Arc<Vec<u8>>,
    /// `None`: as fast as possible.
    pub pace: Option<Pace>,
}

/// Path → file.
pub type Files = HashMap<String, Served>;

/// One request as the backend saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Method.
    pub method: String,
    /// Path (and query) as received.
    pub path: String,
    /// Start of a `Range: bytes=N-` request.
    pub range_from: Option<u64>,
    /// Response status.
    pub status: u16,
}

/// How the backend withholds an answer (issue 11: a vehicle must not be
/// frozen by a backend that lets the handshake through and then waits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stall {
    /// Accept TCP connections but never do the TLS handshake.
    Handshake,
    /// Read the GET of this path and never send the response headers.
    Headers(String),
    /// Read the manifest PUT and never answer it.
    Manifest,
    /// Read the registration `POST /enroll` and never answer it.
    Enroll,
}

#[derive(Default)]
struct Shared {
    stalls: Mutex<HashSet<Stall>>,
    files: Mutex<Files>,
    open: AtomicBool,
    log: Mutex<Vec<Logged>>,
    manifests: Mutex<Vec<Value>>,
    auth_failures: Mutex<Vec<String>>,
    nonces: Mutex<HashSet<String>>,
    vehicle_key: Mutex<Option<PublicKey>>,
    /// When each request arrived, and its method and path.
    arrivals: Mutex<Vec<(Instant, String)>>,
    /// Each answered `POST /enroll`: from its arrival until its answer was
    /// written (before that the vehicle cannot know the outcome).
    enroll_windows: Mutex<Vec<(Instant, Instant)>>,
    /// How long the next `POST /enroll` takes to answer.
    enroll_latency: Mutex<Duration>,
}

/// The in-test backend (see the module documentation).
pub struct Backend {
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// PEM of the CA that issued its certificate.
    pub ca_pem: String,
    shared: Arc<Shared>,
}

struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        chain: vec![cert.der().clone()],
        key_der: key.serialize_der(),
    }
}

impl Backend {
    /// Start serving on 127.0.0.1 with no files, open.
    pub async fn start() -> Backend {
        let pki = pki();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                pki.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        shared.open.store(true, Ordering::SeqCst);
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    if s.stalls.lock().unwrap().contains(&Stall::Handshake) {
                        return hold(tcp).await;
                    }
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = serve(tls, s).await;
                    }
                });
            }
        });
        Backend {
            base: format!("https://127.0.0.1:{port}"),
            ca_pem: pki.ca_pem,
            shared,
        }
    }

    /// Start or stop withholding answers of one kind ([`Stall`]); a
    /// connection stalled already stays stalled until the client closes it.
    pub fn set_stall(&self, stall: Stall, on: bool) {
        let mut s = self.shared.stalls.lock().unwrap();
        if on {
            s.insert(stall);
        } else {
            s.remove(&stall);
        }
    }

    /// Replace everything served.
    pub fn set_files(&self, files: Files) {
        *self.shared.files.lock().unwrap() = files;
    }

    /// Change how one file is paced.
    pub fn set_pace(&self, path: &str, pace: Option<Pace>) {
        if let Some(f) = self.shared.files.lock().unwrap().get_mut(path) {
            f.pace = pace;
        }
    }

    /// Closed: every request gets 503 (the daemon's start-up check-in fails
    /// with a network error and the test triggers the check it is about).
    pub fn set_open(&self, open: bool) {
        self.shared.open.store(open, Ordering::SeqCst);
    }

    /// Check every request's signature with this key from now on.
    pub fn set_vehicle_key(&self, key: PublicKey) {
        *self.shared.vehicle_key.lock().unwrap() = Some(key);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Requests for `path`.
    pub fn requests_for(&self, path: &str) -> Vec<Logged> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// How long each `POST /enroll` takes to answer from now on (the
    /// backend's registry at work: widens the window a check-in would have
    /// to overlap it).
    pub fn set_enroll_latency(&self, d: Duration) {
        *self.shared.enroll_latency.lock().unwrap() = d;
    }

    /// Answered registrations so far.
    pub fn enrollments(&self) -> usize {
        self.shared.enroll_windows.lock().unwrap().len()
    }

    /// Requests that arrived while a registration was being answered: each
    /// one is a check-in (or anything else) overlapping a provisioning.
    pub fn overlaps_with_enroll(&self) -> Vec<String> {
        let windows = self.shared.enroll_windows.lock().unwrap().clone();
        let arrivals = self.shared.arrivals.lock().unwrap().clone();
        let mut out = Vec::new();
        for (from, to) in windows {
            for (at, what) in &arrivals {
                if *at > from && *at < to && !what.ends_with(" /enroll") {
                    out.push(format!(
                        "{what} arrived {:?} into a registration",
                        *at - from
                    ));
                }
            }
        }
        out
    }

    /// Every manifest PUT so far (the signed envelopes).
    pub fn manifests(&self) -> Vec<Value> {
        self.shared.manifests.lock().unwrap().clone()
    }

    /// Requests whose signature did not verify (must stay empty).
    pub fn auth_failures(&self) -> Vec<String> {
        self.shared.auth_failures.lock().unwrap().clone()
    }
}

/// The Primary's signed ECU version report in a manifest envelope.
pub fn primary_report(manifest: &Value) -> &Value {
    &manifest["signed"]["ecu_version_reports"][HU]["signed"]
}

/// `attacks_detected` of the Primary's report.
pub fn attacks_detected(manifest: &Value) -> String {
    primary_report(manifest)["attacks_detected"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Manifests whose Primary report carries an installation result.
pub fn install_results(manifests: &[Value]) -> Vec<Value> {
    manifests
        .iter()
        .map(|m| primary_report(m)["installation_result"].clone())
        .filter(|r| !r.is_null())
        .collect()
}

/// Say nothing and hold `sock` until the peer closes it (no timer: the
/// client's own bound is what ends it).
async fn hold<S: tokio::io::AsyncRead + Unpin>(mut sock: S) {
    let mut tmp = [0u8; 1024];
    while matches!(sock.read(&mut tmp).await, Ok(n) if n > 0) {}
}

async fn serve<S>(mut sock: S, shared: Arc<Shared>) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut tmp).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or("/").to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| headers.get(name).map(String::as_str).unwrap_or_default();
    let length: usize = header("content-length").parse().unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let range_from: Option<u64> = headers
        .get("range")
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.trim_end_matches('-').parse().ok());

    let status_only = |code: u16| {
        format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let log = |status: u16| {
        shared.log.lock().unwrap().push(Logged {
            method: method.clone(),
            path: path.clone(),
            range_from,
            status,
        });
    };

    shared
        .arrivals
        .lock()
        .unwrap()
        .push((Instant::now(), format!("{method} {path}")));
    // Registration: authorised by the enrollment credential (a bearer
    // token), not by a vehicle signature: the backend does not know the
    // vehicle's key yet.
    if method == "POST" && path == "/enroll" {
        let arrived = Instant::now();
        if shared.stalls.lock().unwrap().contains(&Stall::Enroll) {
            log(0);
            hold(sock).await;
            return Ok(());
        }
        let latency = *shared.enroll_latency.lock().unwrap();
        // The registry's work, not a synchronisation: the vehicle's
        // behaviour must not depend on it.
        tokio::time::sleep(latency).await;
        let status = if header("authorization").starts_with("Bearer ") {
            200
        } else {
            401
        };
        log(status);
        sock.write_all(
            format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}")
                .as_bytes(),
        )
        .await?;
        sock.flush().await?;
        shared
            .enroll_windows
            .lock()
            .unwrap()
            .push((arrived, Instant::now()));
        return sock.shutdown().await;
    }
    // Authenticate as the real backend does (request_auth), nonce replay included.
    let key = shared.vehicle_key.lock().unwrap().clone();
    if let Some(key) = key {
        let parts = RequestParts {
            method: &method,
            path: &path,
            vin: header(HEADER_VEHICLE),
            timestamp: header(HEADER_TIMESTAMP),
            nonce: header(HEADER_NONCE),
            signature: header(HEADER_SIGNATURE),
            body: &body,
        };
        let verdict = match verify_request(&parts, &key, now(), DEFAULT_REPLAY_WINDOW_SECS) {
            Ok(a) if a.vin != VIN => Err(format!("wrong vehicle {}", a.vin)),
            Ok(a) if !shared.nonces.lock().unwrap().insert(a.nonce.clone()) => {
                Err(format!("replayed nonce {}", a.nonce))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = verdict {
            shared
                .auth_failures
                .lock()
                .unwrap()
                .push(format!("{method} {path}: {e}"));
            log(401);
            sock.write_all(&status_only(401)).await?;
            return sock.shutdown().await;
        }
    }
    if !shared.open.load(Ordering::SeqCst) {
        log(503);
        sock.write_all(&status_only(503)).await?;
        return sock.shutdown().await;
    }
    if method == "PUT" && path == format!("/director/{VIN}/manifest") {
        if shared.stalls.lock().unwrap().contains(&Stall::Manifest) {
            log(0);
            hold(sock).await;
            return Ok(());
        }
        let status = match serde_json::from_slice::<Value>(&body) {
            Ok(v) => {
                shared.manifests.lock().unwrap().push(v);
                200
            }
            Err(_) => 400,
        };
        log(status);
        sock.write_all(
            format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}")
                .as_bytes(),
        )
        .await?;
        return sock.shutdown().await;
    }
    if shared
        .stalls
        .lock()
        .unwrap()
        .contains(&Stall::Headers(path.clone()))
    {
        log(0);
        hold(sock).await;
        return Ok(());
    }
    let file = shared.files.lock().unwrap().get(&path).cloned();
    let Some(file) = file.filter(|_| method == "GET") else {
        log(404);
        sock.write_all(&status_only(404)).await?;
        return sock.shutdown().await;
    };
    let total = file.body.len();
    let from = match range_from {
        Some(f) if f as usize >= total => {
            log(416);
            sock.write_all(&status_only(416)).await?;
            return sock.shutdown().await;
        }
        Some(f) => f as usize,
        None => 0,
    };
    let part = &file.body[from..];
    let head = if range_from.is_some() {
        log(206);
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{total}\r\nConnection: close\r\n\r\n",
            part.len(),
            total - 1
        )
    } else {
        log(200);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            part.len()
        )
    };
    sock.write_all(head.as_bytes()).await?;
    match file.pace {
        None => sock.write_all(part).await?,
        Some(p) => {
            for piece in part.chunks(p.chunk.max(1)) {
                sock.write_all(piece).await?;
                sock.flush().await?;
                tokio::time::sleep(p.every).await;
            }
        }
    }
    sock.flush().await?;
    sock.shutdown().await
}

// ---- the repositories ---------------------------------------------------------------

/// The Director (for [`VIN`]) and the Image repository.
pub struct Repos {
    /// The Director.
    pub director: RepoBuilder,
    /// The Image repository.
    pub image: RepoBuilder,
    /// Director root version 1 (the vehicle's trusted initial root).
    pub director_root: Vec<u8>,
    /// Image repository root version 1.
    pub image_root: Vec<u8>,
}

/// The URL path of an image: hash-prefixed file name under `/image/targets/`.
pub fn image_path(name: &str, sha256: &str) -> String {
    let (dir, base) = match name.rsplit_once('/') {
        Some((d, b)) => (format!("{d}/"), b),
        None => (String::new(), name),
    };
    format!(
        "/image/targets/{dir}{}",
        secureev_daemon::fetch::backend::quote(&format!("{sha256}.{base}"))
    )
}

fn version_of(bytes: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(bytes).unwrap();
    v["signed"]["version"].as_u64().unwrap()
}

/// Lay out one repository's published files under `prefix` (`/image`,
/// `/director/<vin>`): every root version, the timestamp, and the
/// version-prefixed snapshot and targets (consistent snapshots).
pub fn lay_out_repo(prefix: &str, p: &Published, files: &mut Files) {
    let mut put = |name: String, bytes: &[u8]| {
        files.insert(
            format!("{prefix}/{name}"),
            Served {
                body: Arc::new(bytes.to_vec()),
                pace: None,
            },
        );
    };
    for (v, root) in &p.roots {
        put(format!("{v}.root.json"), root);
    }
    put("timestamp.json".into(), &p.timestamp);
    put(
        format!("{}.snapshot.json", version_of(&p.snapshot)),
        &p.snapshot,
    );
    put(
        format!("{}.targets.json", version_of(&p.targets)),
        &p.targets,
    );
}

impl Repos {
    /// Fresh keys, no targets; roots version 1 published.
    pub fn new() -> Repos {
        let mut director = RepoBuilder::new(now());
        let mut image = RepoBuilder::new(now());
        director
            .targets_extra
            .insert("custom".into(), json!({ "vin": VIN }));
        let director_root = director.publish_root().unwrap();
        let image_root = image.publish_root().unwrap();
        Repos {
            director,
            image,
            director_root,
            image_root,
        }
    }

    /// The Director assigns `name` (with these bytes' length and hashes) to the
    /// head unit.
    pub fn assign(&mut self, name: &str, signed_bytes: &[u8], release_counter: u64) {
        self.director.targets.clear();
        self.director.add_target(
            name,
            signed_bytes,
            Some(json!({
                "ecuIdentifiers": { HU: { "hardwareId": HW } },
                "releaseCounter": release_counter,
            })),
        );
    }

    /// The Image repository lists `name` for `hardware_ids`.
    pub fn add_image(
        &mut self,
        name: &str,
        signed_bytes: &[u8],
        release_counter: u64,
        hardware_ids: &[&str],
    ) {
        self.image.add_target(
            name,
            signed_bytes,
            Some(json!({
                "hardwareIds": hardware_ids,
                "releaseCounter": release_counter,
            })),
        );
    }

    /// An honest release: the Image repository has it for [`HW`], the Director
    /// assigns it.
    pub fn release(&mut self, name: &str, bytes: &[u8], release_counter: u64) {
        self.add_image(name, bytes, release_counter, &[HW]);
        self.assign(name, bytes, release_counter);
    }

    /// Publish a new version of both repositories and lay out their files,
    /// plus `images` (target name → served bytes) at their hash-prefixed paths
    /// (the hash is the one the Director signed).
    pub fn publish(&mut self, images: &[(&str, &[u8])]) -> Files {
        let d = self.director.publish().unwrap();
        let i = self.image.publish().unwrap();
        self.lay_out(&d, &i, images)
    }

    /// Lay out already published (possibly doctored) metadata and `images`.
    pub fn lay_out(
        &self,
        director: &Published,
        image: &Published,
        images: &[(&str, &[u8])],
    ) -> Files {
        let mut files = Files::new();
        lay_out_repo(&format!("/director/{VIN}"), director, &mut files);
        lay_out_repo("/image", image, &mut files);
        for (name, bytes) in images {
            let sha = self
                .director
                .targets
                .get(*name)
                .or_else(|| self.image.targets.get(*name))
                .map(|t| t.hashes["sha256"].clone())
                .expect("a target of that name");
            files.insert(
                image_path(name, &sha),
                Served {
                    body: Arc::new(bytes.to_vec()),
                    pace: None,
                },
            );
        }
        files
    }

    /// The served path of target `name` (hash from the Director).
    pub fn path_of(&self, name: &str) -> String {
        image_path(name, &self.director.targets[name].hashes["sha256"])
    }
}

impl Default for Repos {
    fn default() -> Self {
        Repos::new()
    }
}

// ---- the vehicle --------------------------------------------------------------------

/// How the head unit installs its images.
#[derive(Debug, Clone)]
pub enum InstallMode {
    /// The `file` installer writing `path`.
    File(PathBuf),
    /// The `command` installer running `program`.
    Command(PathBuf),
    /// The `rauc` installer; the keys of its `[install.rauc]` table.
    Rauc(String),
}

/// The vehicle: configuration, keys, private bus, and the daemon process.
pub struct Vehicle {
    /// Its directory.
    pub dir: PathBuf,
    /// Configuration file.
    pub config: PathBuf,
    /// The private bus the daemon serves on.
    pub bus: PrivateBus,
    /// The daemon's log (stderr of every run, appended).
    pub log_path: PathBuf,
    child: Option<Child>,
    connection: Option<zbus::Connection>,
}

impl Vehicle {
    /// Write the configuration (policy `auto`; `extra` is appended, e.g. a
    /// `[download]` table), the trusted roots and the CA, provision the
    /// Primary's keys, and tell `backend` the key to check requests with.
    pub fn new(
        dir: &Path,
        backend: &Backend,
        repos: &Repos,
        install: &InstallMode,
        extra: &str,
    ) -> Vehicle {
        Self::with_policy(dir, backend, repos, install, extra, "auto", 3600)
    }

    /// [`Self::new`] with `[install] policy` = `policy` (`auto`, `consent`)
    /// and `[checkin] interval_secs` = `interval_secs`.
    pub fn with_policy(
        dir: &Path,
        backend: &Backend,
        repos: &Repos,
        install: &InstallMode,
        extra: &str,
        policy: &str,
        interval_secs: u64,
    ) -> Vehicle {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &backend.ca_pem).unwrap();
        std::fs::write(dir.join("director-root.json"), &repos.director_root).unwrap();
        std::fs::write(dir.join("image-root.json"), &repos.image_root).unwrap();
        // The daemon would create the keys on first start; creating them here
        // first lets the backend check every request's signature.
        let (keys, _) = secureev_daemon::keys::load_or_provision(&dir.join("keys")).unwrap();
        backend.set_vehicle_key(keys.signing.verifying_key());
        // Other uids may connect (the authorization tests run clients as
        // other users); what they may call is the daemon's decision.
        let bus = PrivateBus::start_with_policy(
            r#"<policy context="default"><allow user="*"/></policy>"#,
        )
        .expect("dbus-daemon (Debian package `dbus`)");
        let d = dir.display();
        let installer = match install {
            InstallMode::File(p) => format!(
                "installer = \"file\"\n[install.file]\npath = \"{}\"\n",
                p.display()
            ),
            InstallMode::Command(p) => format!(
                "installer = \"command\"\n[install.command]\nprogram = \"{}\"\n",
                p.display()
            ),
            InstallMode::Rauc(keys) => format!("installer = \"rauc\"\n[install.rauc]\n{keys}\n"),
        };
        let config = format!(
            r#"[backend]
url = "{base}"
ca_file = "{d}/ca.pem"

[vehicle]
vin = "{VIN}"
primary_serial = "{HU}"
hardware_id = "{HW}"

[keys]
dir = "{d}/keys"

[trust]
director_root = "{d}/director-root.json"
image_root = "{d}/image-root.json"

[state]
dir = "{d}/state"
cache_dir = "{d}/cache"

[checkin]
interval_secs = {interval_secs}
jitter_secs = 0

[dbus]
bus = "{bus}"

{extra}

[install]
policy = "{policy}"
inhibit_dir = "{d}/inhibit"
{installer}"#,
            base = backend.base,
            bus = bus.address(),
        );
        let path = dir.join("otad.toml");
        std::fs::write(&path, config).unwrap();
        Vehicle {
            dir: dir.to_owned(),
            config: path,
            bus,
            log_path: dir.join("otad.log"),
            child: None,
            connection: None,
        }
    }

    /// Start `secureev-otad` (in a process group of its own) and wait until it
    /// serves on the bus.
    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(otad_bin())
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some(child);
        if self.connection.is_none() {
            self.connection = Some(self.bus.client().await.unwrap());
        }
        let deadline = Instant::now() + scaled(Duration::from_secs(20));
        loop {
            if self.proxy().await.state().await.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("secureev-otad exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "secureev-otad did not serve on the bus:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL the daemon and everything in its process group (an installer
    /// command it runs), as a power cut would; reap it.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        child.wait().unwrap();
    }

    /// SIGTERM the daemon (not its process group: systemd's `KillMode=mixed`)
    /// and wait for it to exit, at most `timeout`; how long it took and its
    /// exit status. Panics with the log if it outlives `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> (Duration, std::process::ExitStatus) {
        let mut child = self.child.take().expect("started");
        let t0 = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (t0.elapsed(), status);
            }
            if t0.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "secureev-otad outlived SIGTERM by {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the daemon is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A proxy that never caches properties.
    pub async fn proxy(&self) -> Ota1Proxy<'static> {
        Ota1Proxy::builder(self.connection.as_ref().expect("started"))
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap()
    }

    /// `(State, LastErrorCode, LastError)`.
    pub async fn status(&self) -> (String, u32, String) {
        let p = self.proxy().await;
        (
            p.state().await.unwrap_or_default(),
            p.last_error_code().await.unwrap_or_default(),
            p.last_error().await.unwrap_or_default(),
        )
    }

    /// Poll until `pred(state, code)` holds.
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str, u32) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let (state, code, message) = self.status().await;
            if pred(&state, code) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: state {state}, code {code} ({message})\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `CheckForUpdates` and wait for the `Completed` signal of that check;
    /// returns `(code, message)`. Completions of a check that the closed
    /// backend failed (HTTP 503, the start-up check-in) are skipped.
    pub async fn check(&self, timeout: Duration) -> (u32, String) {
        self.check_skipping(timeout, &[]).await
    }

    /// [`Self::check`], also skipping `Completed` signals whose message
    /// contains one of `stale` (a cycle that ended just before the check).
    pub async fn check_skipping(&self, timeout: Duration, stale: &[&str]) -> (u32, String) {
        let proxy = self.proxy().await;
        let mut completed = proxy.receive_completed().await.unwrap();
        let deadline = tokio::time::Instant::now() + timeout;
        // Another operation (the start-up check-in, say) may still run: as a
        // client would, wait for it to complete and ask again.
        loop {
            match proxy.check_for_updates(HashMap::new()).await {
                Ok(_) => break,
                Err(secureev_dbus::OtaError::Busy(why)) => {
                    tokio::time::timeout_at(deadline, completed.next())
                        .await
                        .unwrap_or_else(|_| panic!("still busy ({why}):\n{}", self.log()))
                        .expect("signal stream ended");
                }
                Err(e) => panic!("CheckForUpdates: {e}"),
            }
        }
        loop {
            let signal = tokio::time::timeout_at(deadline, completed.next())
                .await
                .unwrap_or_else(|_| panic!("no Completed signal:\n{}", self.log()))
                .expect("signal stream ended");
            let args = signal.args().unwrap();
            let (code, message) = (args.code, args.message);
            if (code == secureev_dbus::ErrorCode::Network.as_u32() && message.contains("503"))
                || stale.iter().any(|s| message.contains(s))
            {
                continue;
            }
            return (code, message);
        }
    }

    /// Start the daemon while `backend` is closed (its start-up check-in fails
    /// with 503), then serve `files`, open the backend and run one triggered
    /// check: the scenario of every end-to-end test.
    pub async fn start_then_check(
        &mut self,
        backend: &Backend,
        files: Files,
        timeout: Duration,
    ) -> (u32, String) {
        self.start().await;
        self.settle_closed().await;
        backend.set_files(files);
        backend.set_open(true);
        self.check(timeout).await
    }

    /// After a start against a closed backend: wait until the start-up check-in
    /// failed, so that the next `Completed` belongs to the test's check.
    pub async fn settle_closed(&self) {
        let network = secureev_dbus::ErrorCode::Network.as_u32();
        self.wait_for(
            "the start-up check-in to fail",
            scaled(Duration::from_secs(20)),
            |s, c| s == "error" && c == network,
        )
        .await;
    }
}

impl Drop for Vehicle {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `secureev-otad` binary: cargo's when this harness is compiled into the
/// daemon's own tests; included from another package's tests (the vcan rigs in
/// `can-tests/`), `$SECUREEV_BIN_DIR/secureev-otad` or the one next to the test
/// executable's `deps/` directory.
pub fn otad_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_secureev-otad") {
        return PathBuf::from(p);
    }
    let dir = match std::env::var_os("SECUREEV_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().unwrap();
            exe.parent().and_then(Path::parent).unwrap().to_path_buf()
        }
    };
    let bin = dir.join("secureev-otad");
    assert!(
        bin.is_file(),
        "{} is missing: cargo build -p secureev-daemon (or set SECUREEV_BIN_DIR)",
        bin.display()
    );
    bin
}

/// The `secureevctl` binary, next to `secureev-otad` (cargo puts every
/// workspace binary there). A run of only this package's tests may not have
/// built it yet: then it is built with the cargo running the tests.
pub fn ctl_bin() -> PathBuf {
    let bin = otad_bin().with_file_name("secureevctl");
    if !bin.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--locked", "-p", "secureev-cli"])
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p secureev-cli failed");
    }
    assert!(
        bin.is_file(),
        "{} is missing: cargo build -p secureev-cli",
        bin.display()
    );
    bin
}

/// `d` times `SECUREEV_TEST_TIME_SCALE` (default 1): the vcan rigs run this
/// harness inside an emulated VM, several times slower than a host.
pub fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("SECUREEV_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * scale
}

/// Poll `f` every `every` until it returns `Some`, or panic after `timeout`.
pub async fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(every).await;
    }
}

/// Files of a directory whose names start with `prefix`.
pub fn files_starting_with(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

// The real `secureev-server` and its processes (e2e_versions, e2e_mqtt).

/// The `secureev-server` binary next to `secureev-otad`, built with the
/// cargo running the tests when this package's run has not built it.
pub fn server_bin() -> PathBuf {
    let bin = otad_bin().with_file_name("secureev-server");
    if !bin.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--locked", "-p", "secureev-server"])
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p secureev-server failed");
    }
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run a command to completion: `(exit code, stdout, stderr)`.
pub fn run_command(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let (code, out, err) = run_command(cmd);
    assert_eq!(code, 0, "{what}: {out}{err}");
    out
}

/// Kills the processes it holds when the test ends, passing or not.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The next `OperationCompleted` whose id is `id` (or, with `None`, whose
/// kind is `check`): `(code, message)`.
pub async fn op_completed(
    stream: &mut secureev_dbus::OperationCompletedStream,
    id: Option<u64>,
    timeout: Duration,
    log: &Path,
) -> (u32, String) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no OperationCompleted for {id:?}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .expect("signal stream ended");
        let a = s.args().unwrap();
        if id.map_or(a.kind == "check", |id| a.id == id) {
            return (a.code, a.message);
        }
    }
}

/// The shipped policy with the test's accounts, inside the default policy
/// of dbus's own `system.conf` (as `systemd/tests/run.sh` builds it);
/// `extra` (whole lines) goes before the shipped policy (e2e_busctl,
/// e2e_polkit).
pub fn system_bus_config(socket: &Path, extra: &str) -> String {
    let policy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/usr/share/dbus-1/system.d/io.secureev.Ota1.conf"
    ))
    .unwrap()
    .replace("user=\"secureev\"", "user=\"root\"")
    .replace("group=\"secureev-ui\"", "group=\"daemon\"")
    .replace("group=\"secureev-vehicle\"", "group=\"bin\"");
    let body = policy
        .split_once("<busconfig>")
        .unwrap()
        .1
        .rsplit_once("</busconfig>")
        .unwrap()
        .0;
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
{extra}  {body}
</busconfig>
"#,
        socket.display()
    )
}
