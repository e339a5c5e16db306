//! The image download engine: streaming, verified while it arrives, resumable.
//!
//! [`Downloader::fetch`] downloads one image into the cache directory:
//!
//! 1. A finished `<cache>/<hash>` from an earlier run is re-hashed and reused.
//! 2. **Pre-flight storage check**: the bytes still missing must fit both the
//!    storage budget (what the cache already holds counts) and the free space of
//!    the cache's file system (`statvfs`), or the download is refused before any
//!    request is sent ([`Error::InsufficientStorage`]).
//! 3. A `<cache>/<hash>.part` left by an earlier attempt or a killed daemon is
//!    re-hashed first, then resumed with an HTTP `Range` request. A `206` must
//!    start exactly where the part file ends; a `200` (server ignores ranges)
//!    restarts from zero; a `416` discards the part file.
//! 4. Every chunk goes through the core's [`StreamVerifier`] **before** it is
//!    written: a server sending more than the signed length is cut off at the
//!    first excess byte (endless data, Uptane 2.1 §4.3.1), the part file deleted.
//! 5. **Minimum rate**: fewer than `min_rate × window` bytes in any window of
//!    `min_rate_window` is [`Error::SlowRetrieval`] (the slow retrieval attack);
//!    a completely silent server is caught the same way.
//! 6. At the end, length and every signed hash must match, or the part file is
//!    deleted; then it is fsynced and renamed to `<cache>/<hash>`. A
//!    *resumed* download that fails is first discarded and fetched once from
//!    zero: the kept bytes may come from another (dishonest) server.
//!
//! Cancellation (a [`CancellationToken`]) stops between chunks and keeps the
//! part file for a later resume. Connection errors and early ends are retried
//! with a `Range` request up to [`DownloadOptions::attempts`] times.
//!
//! Encrypted images are verified in their encrypted form (that is what the
//! signed hashes cover); [`decrypt_image`](crate::install::decrypt::decrypt_image)
//! then streams them through the core's `ImageDecryptor` in constant memory.

use crate::config::Config;
use crate::error::{Error, Result, StallStage, StorageLimit};
use crate::fs::{remove_quietly, sync_dir};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use secureev_uptane::image::{ImageVerifier, VerifiedImage};
use secureev_uptane::uptane::UpdateTarget;
use secureev_uptane::verify::StreamVerifier;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many times one [`Downloader::fetch`] call tries (first try included).
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Bytes read at a time when re-hashing or decrypting files.
const FILE_CHUNK: usize = 64 * 1024;

/// Limits and places of the download engine.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Cache directory (`[state] cache_dir`).
    pub cache_dir: PathBuf,
    /// `[state] storage_budget_bytes`.
    pub storage_budget_bytes: u64,
    /// `[download] min_rate_bytes_per_sec`; 0 turns the check off.
    pub min_rate_bytes_per_sec: u64,
    /// `[download] min_rate_window_secs`.
    pub min_rate_window: Duration,
    /// `[download] timeout_secs`: for the response headers to arrive.
    pub header_timeout: Duration,
    /// Tries per fetch (connection errors, early ends).
    pub attempts: u32,
}

impl DownloadOptions {
    /// The options of `config`.
    pub fn from_config(config: &Config) -> Self {
        DownloadOptions {
            cache_dir: config.state.cache_dir.clone(),
            storage_budget_bytes: config.state.storage_budget_bytes,
            min_rate_bytes_per_sec: config.download.min_rate_bytes_per_sec,
            min_rate_window: Duration::from_secs(config.download.min_rate_window_secs),
            header_timeout: Duration::from_secs(config.download.timeout_secs),
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

/// One image to download, with its signed length and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    /// Target name (for errors and logs).
    pub target: String,
    /// Where to fetch it.
    pub url: String,
    /// Signed length: the hard cap.
    pub length: u64,
    /// Signed hashes (hex).
    pub hashes: BTreeMap<String, String>,
}

impl ImageRequest {
    /// The request for a verified update target, fetched from `url`.
    pub fn for_target(target: &UpdateTarget, url: String) -> Self {
        ImageRequest {
            target: target.name().to_owned(),
            url,
            length: target.length(),
            hashes: target.assignment().director_target.hashes.clone(),
        }
    }

    /// The cache file name: the sha256 (or else the first) signed hash, which
    /// must be lowercase-able hex so that it can never name another path.
    fn cache_key(&self) -> Result<String> {
        let h = self
            .hashes
            .get("sha256")
            .or_else(|| self.hashes.values().next())
            .ok_or_else(|| {
                Error::uptane(
                    &self.target,
                    secureev_uptane::Error::NoHashes {
                        what: self.target.clone(),
                    },
                )
            })?;
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::uptane(
                &self.target,
                secureev_uptane::Error::Malformed {
                    role: "targets".into(),
                    reason: format!("hash {h:?} of {} is not hex", self.target),
                },
            ));
        }
        Ok(h.to_ascii_lowercase())
    }
}

/// Download progress of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes on disk (verified so far).
    pub done: u64,
    /// Signed length.
    pub total: u64,
}

/// The download engine.
#[derive(Clone)]
pub struct Downloader {
    client: reqwest::Client,
    opts: DownloadOptions,
    signer: std::sync::OnceLock<RequestSigner>,
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader")
            .field("opts", &self.opts)
            .field("signed", &self.signer.get().is_some())
            .finish()
    }
}

/// Signs one image request: given the URL's path (and query), the headers to
/// add. Called for every attempt, so each retry carries a fresh nonce.
pub type RequestSigner = std::sync::Arc<dyn Fn(&str) -> Vec<(&'static str, String)> + Send + Sync>;

fn uptane(what: &str, source: secureev_uptane::Error) -> Error {
    Error::uptane(what, source)
}

/// What a download checks its bytes with: the core's `StreamVerifier` for a
/// bare [`ImageRequest`] ([`Downloader::fetch`]), the core's `ImageVerifier`
/// for a verified target ([`Downloader::fetch_verified`]), whose `finish`
/// makes the [`VerifiedImage`].
trait Check: Clone + Send + 'static {
    type Done;
    fn update(&mut self, chunk: &[u8]) -> secureev_uptane::Result<()>;
    fn seen(&self) -> u64;
    fn finish(self, path: PathBuf) -> secureev_uptane::Result<Self::Done>;
}

impl Check for StreamVerifier {
    type Done = PathBuf;
    fn update(&mut self, chunk: &[u8]) -> secureev_uptane::Result<()> {
        StreamVerifier::update(self, chunk)
    }
    fn seen(&self) -> u64 {
        StreamVerifier::seen(self)
    }
    fn finish(self, path: PathBuf) -> secureev_uptane::Result<PathBuf> {
        StreamVerifier::finish(self).map(|()| path)
    }
}

impl Check for ImageVerifier {
    type Done = VerifiedImage<PathBuf>;
    fn update(&mut self, chunk: &[u8]) -> secureev_uptane::Result<()> {
        ImageVerifier::update(self, chunk)
    }
    fn seen(&self) -> u64 {
        ImageVerifier::seen(self)
    }
    fn finish(self, path: PathBuf) -> secureev_uptane::Result<VerifiedImage<PathBuf>> {
        ImageVerifier::finish(self, path)
    }
}

/// Makes the verifier of a download, from the first byte.
type Fresh<'a, V> = &'a (dyn Fn() -> Result<V> + Send + Sync);

/// Hash a file through a fresh verifier (blocking).
fn rehash<V: Check>(path: &Path, mut verifier: V) -> Result<V> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut buf = vec![0u8; FILE_CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            return Ok(verifier);
        }
        verifier
            .update(&buf[..n])
            .map_err(|e| uptane("cached file", e))?;
    }
}

async fn rehash_async<V: Check>(path: PathBuf, verifier: V) -> Result<V> {
    tokio::task::spawn_blocking(move || rehash(&path, verifier))
        .await
        .map_err(|e| Error::io("hash", PathBuf::new(), std::io::Error::other(e)))?
}

/// Bytes free for an unprivileged writer on the file system holding `dir`.
pub fn free_space(dir: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(|e| Error::io("statvfs", dir, e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// What one HTTP attempt ended with.
enum Attempt {
    /// The body ended (maybe early: the caller compares with the length).
    Ended,
}

impl Downloader {
    /// A downloader on `client` (see [`crate::fetch::http::client`]); creates the cache
    /// directory.
    pub fn new(client: reqwest::Client, opts: DownloadOptions) -> Result<Self> {
        crate::fs::create_dir(&opts.cache_dir)?;
        crate::fs::remove_stale_temps(&opts.cache_dir)?;
        Ok(Downloader {
            client,
            opts,
            signer: std::sync::OnceLock::new(),
        })
    }

    /// Sign every image request with `signer` from now on (the backend
    /// authenticates vehicles on the Image repository too). Set once; later
    /// calls are ignored.
    pub fn set_signer(&self, signer: RequestSigner) {
        let _ = self.signer.set(signer);
    }

    /// The options.
    pub fn options(&self) -> &DownloadOptions {
        &self.opts
    }

    /// Where a finished image is kept.
    pub fn cached_path(&self, req: &ImageRequest) -> Result<PathBuf> {
        Ok(self.opts.cache_dir.join(req.cache_key()?))
    }

    fn part_path(&self, req: &ImageRequest) -> Result<PathBuf> {
        Ok(self
            .opts
            .cache_dir
            .join(format!("{}.part", req.cache_key()?)))
    }

    /// Bytes held by regular files in the cache directory.
    pub fn cache_usage(&self) -> Result<u64> {
        let dir = &self.opts.cache_dir;
        let mut total = 0u64;
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))? {
            let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
            if let Ok(m) = entry.metadata() {
                if m.is_file() {
                    total = total.saturating_add(m.len());
                }
            }
        }
        Ok(total)
    }

    /// Refuse `needed` more bytes for `req` if they exceed the budget or the free
    /// space. Called by [`fetch`](Self::fetch) before any request; callers may use
    /// it to check a whole update before downloading any of it.
    pub fn check_storage(&self, target: &str, needed: u64) -> Result<()> {
        let used = self.cache_usage()?;
        let budget_left = self.opts.storage_budget_bytes.saturating_sub(used);
        if needed > budget_left {
            return Err(Error::InsufficientStorage {
                target: target.to_owned(),
                needed,
                available: budget_left,
                limit: StorageLimit::Budget,
            });
        }
        let free = free_space(&self.opts.cache_dir)?;
        if needed > free {
            return Err(Error::InsufficientStorage {
                target: target.to_owned(),
                needed,
                available: free,
                limit: StorageLimit::FreeSpace,
            });
        }
        Ok(())
    }

    /// Remove a finished image and any part file from the cache.
    pub fn evict(&self, req: &ImageRequest) -> Result<()> {
        remove_quietly(&self.cached_path(req)?);
        remove_quietly(&self.part_path(req)?);
        sync_dir(&self.opts.cache_dir)
    }

    /// Remove every cached image and part file except those of `keep` (the
    /// current update), so that abandoned downloads do not eat the budget.
    /// Returns the bytes freed. Files not named like cache entries are left alone.
    pub fn prune(&self, keep: &[ImageRequest]) -> Result<u64> {
        let mut keep_names = std::collections::BTreeSet::new();
        for r in keep {
            let k = r.cache_key()?;
            keep_names.insert(format!("{k}.part"));
            keep_names.insert(k);
        }
        let dir = &self.opts.cache_dir;
        let mut freed = 0u64;
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))? {
            let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".part").unwrap_or(&name);
            let ours = !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_hexdigit());
            if ours && !keep_names.contains(&name) {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(entry.path())
                    .map_err(|e| Error::io("remove", entry.path(), e))?;
                freed += len;
            }
        }
        sync_dir(dir)?;
        Ok(freed)
    }

    /// Download `req` into the cache and return the path of the file that
    /// has `req`'s length and hashes. See the module documentation for every
    /// check. The daemon downloads what it installs with
    /// [`fetch_verified`](Self::fetch_verified), whose result installers take.
    pub async fn fetch(
        &self,
        req: &ImageRequest,
        progress: &(dyn Fn(Progress) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<PathBuf> {
        let fresh = || {
            StreamVerifier::new(&req.target, req.length, &req.hashes)
                .map_err(|e| uptane(&req.target, e))
        };
        self.fetch_with(req, &fresh, progress, cancel).await
    }

    /// Download the image of a verified `target` from `url` into the cache,
    /// checked as [`fetch`](Self::fetch) checks (through the core's
    /// `ImageVerifier` of the target), and return it as the verified image
    /// (the proof installers and secondary transports take).
    pub async fn fetch_verified(
        &self,
        target: &UpdateTarget,
        url: String,
        progress: &(dyn Fn(Progress) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<VerifiedImage<PathBuf>> {
        let req = ImageRequest::for_target(target, url);
        let fresh = || {
            target
                .image_verifier()
                .map_err(|e| uptane(target.name(), e))
        };
        self.fetch_with(&req, &fresh, progress, cancel).await
    }

    async fn fetch_with<V: Check>(
        &self,
        req: &ImageRequest,
        fresh: Fresh<'_, V>,
        progress: &(dyn Fn(Progress) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<V::Done> {
        let done_path = self.cached_path(req)?;
        let part_path = self.part_path(req)?;

        if done_path.exists() {
            match rehash_async(done_path.clone(), fresh()?)
                .await
                .and_then(|v| {
                    v.finish(done_path.clone())
                        .map_err(|e| uptane(&req.target, e))
                }) {
                Ok(done) => {
                    progress(Progress {
                        done: req.length,
                        total: req.length,
                    });
                    return Ok(done);
                }
                Err(e) => {
                    tracing::warn!(target = %req.target, "cached image no longer verifies, downloading again: {e}");
                    remove_quietly(&done_path);
                }
            }
        }

        let mut have = std::fs::metadata(&part_path).map(|m| m.len()).unwrap_or(0);
        if have > req.length {
            remove_quietly(&part_path);
            have = 0;
        }
        // Pre-flight: the part file's bytes are already counted in the usage.
        self.check_storage(&req.target, req.length - have)?;

        let mut verifier = fresh()?;
        if have > 0 {
            match rehash_async(part_path.clone(), verifier.clone()).await {
                Ok(v) if v.seen() == have => verifier = v,
                Ok(_) | Err(_) => {
                    remove_quietly(&part_path);
                    have = 0;
                }
            }
            tracing::info!(target = %req.target, resume_from = have, "resuming download");
        }

        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(false)
            .write(true)
            .truncate(false)
            .open(&part_path)
            .await
            .map_err(|e| Error::io("open", &part_path, e))?;
        file.seek(std::io::SeekFrom::Start(have))
            .await
            .map_err(|e| Error::io("seek", &part_path, e))?;
        progress(Progress {
            done: have,
            total: req.length,
        });

        // Issue 11: bytes kept from an earlier run may come from a dishonest
        // server (a poisoned part file). A resumed download that fails its
        // signed hashes is discarded and fetched once from zero before the
        // failure counts as an attack against the server answering now.
        let mut resumed = have > 0;
        let mut attempt = 0;
        let done = 'fetch: loop {
            while have < req.length {
                attempt += 1;
                let result = self
                    .attempt(
                        req,
                        fresh,
                        &part_path,
                        &mut file,
                        &mut verifier,
                        &mut have,
                        progress,
                        cancel,
                    )
                    .await;
                let err = match result {
                    Ok(Attempt::Ended) if have == req.length => break,
                    Ok(Attempt::Ended) => Error::Truncated {
                        target: req.target.clone(),
                        received: have,
                        length: req.length,
                    },
                    Err(e) => e,
                };
                let retryable = match &err {
                    Error::Http { .. }
                    | Error::Stalled { .. }
                    | Error::Truncated { .. }
                    | Error::BadRange { .. } => true,
                    Error::HttpStatus { status, .. } => *status >= 500,
                    _ => false,
                };
                match err {
                    err if retryable && attempt < self.opts.attempts => {
                        tracing::info!(target = %req.target, attempt, "download interrupted, resuming: {err}");
                        let pause = Duration::from_millis(200 * u64::from(attempt));
                        tokio::select! {
                            _ = cancel.cancelled() => {
                                let _ = file.sync_data().await;
                                return Err(Error::Cancelled(req.target.clone()));
                            }
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                    e @ Error::Uptane { .. } if resumed => {
                        tracing::warn!(target = %req.target, "resumed download failed verification; discarding the kept bytes and fetching once from zero: {e}");
                        resumed = false;
                        attempt = 0;
                        restart(fresh, &mut file, &part_path, &mut verifier, &mut have).await?;
                        continue 'fetch;
                    }
                    e @ Error::Uptane { .. } => {
                        drop(file);
                        remove_quietly(&part_path);
                        return Err(e);
                    }
                    e => {
                        let _ = file.sync_data().await;
                        return Err(e);
                    }
                }
            }

            // Uptane 2.1 §5.4.3.4: length and every hash of the image must match.
            match verifier.clone().finish(done_path.clone()) {
                Ok(done) => break 'fetch done,
                Err(e) if resumed => {
                    tracing::warn!(target = %req.target, "resumed download does not match its signed hashes; discarding the kept bytes and fetching once from zero: {e}");
                    resumed = false;
                    attempt = 0;
                    restart(fresh, &mut file, &part_path, &mut verifier, &mut have).await?;
                }
                Err(e) => {
                    drop(file);
                    remove_quietly(&part_path);
                    return Err(uptane(&req.target, e));
                }
            }
        };
        file.sync_all()
            .await
            .map_err(|e| Error::io("fsync", &part_path, e))?;
        drop(file);
        std::fs::rename(&part_path, &done_path).map_err(|e| Error::io("rename", &done_path, e))?;
        sync_dir(&self.opts.cache_dir)?;
        Ok(done)
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt<V: Check>(
        &self,
        req: &ImageRequest,
        fresh: Fresh<'_, V>,
        part_path: &Path,
        file: &mut tokio::fs::File,
        verifier: &mut V,
        have: &mut u64,
        progress: &(dyn Fn(Progress) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<Attempt> {
        let http = |source| Error::Http {
            url: req.url.clone(),
            source,
        };
        let mut rb = self.client.get(&req.url);
        if let Some(sign) = self.signer.get() {
            let path = reqwest::Url::parse(&req.url)
                .map(|u| match u.query() {
                    Some(q) => format!("{}?{q}", u.path()),
                    None => u.path().to_owned(),
                })
                .unwrap_or_default();
            for (name, value) in sign(&path) {
                rb = rb.header(name, value);
            }
        }
        if *have > 0 {
            rb = rb.header(RANGE, format!("bytes={}-", *have));
        }
        let send = tokio::time::timeout(self.opts.header_timeout, rb.send());
        let mut resp = tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled(req.target.clone())),
            r = send => match r {
                // Slow retrieval: the headers withheld. Retried like a broken
                // connection; after the last attempt it is the attack.
                Err(_) => return Err(Error::Stalled {
                    url: req.url.clone(),
                    stage: StallStage::Headers,
                    secs: self.opts.header_timeout.as_secs(),
                }),
                Ok(r) => r.map_err(http)?,
            },
        };

        match resp.status() {
            StatusCode::PARTIAL_CONTENT if *have > 0 => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if start != Some(*have) {
                    restart(fresh, file, part_path, verifier, have).await?;
                    return Err(Error::BadRange {
                        url: req.url.clone(),
                        reason: format!(
                            "asked for bytes from {} but got Content-Range {start:?}",
                            *have
                        ),
                    });
                }
            }
            StatusCode::OK => {
                if *have > 0 {
                    tracing::info!(target = %req.target, "server ignored the range request; restarting from zero");
                    restart(fresh, file, part_path, verifier, have).await?;
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                restart(fresh, file, part_path, verifier, have).await?;
                return Err(Error::BadRange {
                    url: req.url.clone(),
                    reason: "416 Range Not Satisfiable; discarded the partial file".into(),
                });
            }
            s => {
                return Err(Error::HttpStatus {
                    url: req.url.clone(),
                    status: s.as_u16(),
                })
            }
        }

        let window = self.opts.min_rate_window;
        let required = (self.opts.min_rate_bytes_per_sec as f64 * window.as_secs_f64()) as u64;
        let mut window_end = Instant::now() + window;
        let mut window_bytes = 0u64;
        let slow = |received: u64| Error::SlowRetrieval {
            target: req.target.clone(),
            received,
            window_secs: window.as_secs_f64(),
            min_rate: self.opts.min_rate_bytes_per_sec,
        };
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => {
                    file.flush().await.map_err(|e| Error::io("write", part_path, e))?;
                    return Err(Error::Cancelled(req.target.clone()));
                }
                r = tokio::time::timeout_at(window_end, resp.chunk()) => r,
            };
            let chunk = match next {
                Err(_elapsed) => {
                    // Uptane 2.1 §4.3.1 slow retrieval: too little in a whole window.
                    if required > 0 && window_bytes < required {
                        file.flush()
                            .await
                            .map_err(|e| Error::io("write", part_path, e))?;
                        return Err(slow(window_bytes));
                    }
                    window_end += window;
                    window_bytes = 0;
                    continue;
                }
                Ok(Err(e)) => {
                    file.flush()
                        .await
                        .map_err(|e| Error::io("write", part_path, e))?;
                    return Err(http(e));
                }
                Ok(Ok(None)) => {
                    file.flush()
                        .await
                        .map_err(|e| Error::io("write", part_path, e))?;
                    return Ok(Attempt::Ended);
                }
                Ok(Ok(Some(chunk))) => chunk,
            };
            // Verify before writing: no byte past the signed length reaches disk.
            verifier
                .update(&chunk)
                .map_err(|e| uptane(&req.target, e))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::io("write", part_path, e))?;
            *have += chunk.len() as u64;
            window_bytes += chunk.len() as u64;
            progress(Progress {
                done: *have,
                total: req.length,
            });
            let now = Instant::now();
            if now >= window_end {
                if required > 0 && window_bytes < required {
                    file.flush()
                        .await
                        .map_err(|e| Error::io("write", part_path, e))?;
                    return Err(slow(window_bytes));
                }
                window_end = now + window;
                window_bytes = 0;
            }
        }
    }
}

/// Start over from byte zero: empty the part file and the verifier.
async fn restart<V: Check>(
    fresh: Fresh<'_, V>,
    file: &mut tokio::fs::File,
    path: &Path,
    verifier: &mut V,
    have: &mut u64,
) -> Result<()> {
    *verifier = fresh()?;
    *have = 0;
    file.set_len(0)
        .await
        .map_err(|e| Error::io("truncate", path, e))?;
    file.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(|e| Error::io("seek", path, e))?;
    Ok(())
}
