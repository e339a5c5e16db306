//! The backend as the vehicle sees it: signed requests to the Director, plain
//! reads of the Image repository, size-capped bodies.
//!
//! Every request to the Director is signed with the Primary's P-256 key as the
//! backend expects (`secureev_uptane::request_auth`: method, path, VIN,
//! timestamp, nonce and body hash). Metadata bodies are read with the cap the
//! core gives ([`secureev_uptane::trusted::MetaRequest::max_length`] and
//! [`secureev_uptane::trusted::Limits`]) so that an endless-data attack stops
//! at the cap, not in memory exhaustion.
//!
//! **Every request is bounded** ([`Bounds`], from `[network]` and
//! `[download]`): the HTTP client gives up on a connect or TLS handshake after
//! `connect_timeout_secs`; here a metadata fetch gets `response_timeout_secs`
//! for its response headers, `metadata_timeout_secs` for the whole body and
//! must keep the minimum rate of `[download]` over every window, and the
//! manifest PUT gets `manifest_timeout_secs` for the whole exchange. A request
//! that runs past a bound is [`Error::Stalled`], the slow retrieval attack of
//! the Uptane threat model: a backend, CDN or on-path attacker that lets the
//! handshake through and then withholds data must not freeze the vehicle.

use crate::error::{Error, Result, StallStage};
use secureev_uptane::request_auth::sign_request;
use secureev_uptane::{SigningKey, Timestamp};
use std::time::Duration;
use tokio::time::Instant;

/// The bounds of metadata fetches and the manifest PUT (see the module
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Request sent → response headers.
    pub response: Duration,
    /// A whole metadata fetch.
    pub metadata: Duration,
    /// The whole manifest PUT.
    pub manifest: Duration,
    /// Minimum body rate in bytes per second; 0 turns the check off.
    pub min_rate_bytes_per_sec: u64,
    /// Window over which the rate is measured.
    pub min_rate_window: Duration,
}

impl Bounds {
    /// The bounds of `config`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let n = &config.network;
        Bounds {
            response: Duration::from_secs(n.response_timeout_secs),
            metadata: Duration::from_secs(n.metadata_timeout_secs),
            manifest: Duration::from_secs(n.manifest_timeout_secs),
            min_rate_bytes_per_sec: config.download.min_rate_bytes_per_sec,
            min_rate_window: Duration::from_secs(config.download.min_rate_window_secs),
        }
    }
}

impl Default for Bounds {
    fn default() -> Self {
        use crate::config as c;
        Bounds {
            response: Duration::from_secs(c::DEFAULT_RESPONSE_TIMEOUT_SECS),
            metadata: Duration::from_secs(c::DEFAULT_METADATA_TIMEOUT_SECS),
            manifest: Duration::from_secs(c::DEFAULT_MANIFEST_TIMEOUT_SECS),
            min_rate_bytes_per_sec: c::DEFAULT_MIN_RATE_BYTES_PER_SEC,
            min_rate_window: Duration::from_secs(c::DEFAULT_MIN_RATE_WINDOW_SECS),
        }
    }
}

/// How to reach and authenticate to the backend.
#[derive(Clone)]
pub struct Backend {
    http: reqwest::Client,
    base: String,
    director_path: String,
    image_path: String,
    vin: String,
    key: SigningKey,
    clock: std::sync::Arc<dyn Fn() -> Timestamp + Send + Sync>,
    bounds: Bounds,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("base", &self.base)
            .field("vin", &self.vin)
            .finish_non_exhaustive()
    }
}

/// Which repository a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repository {
    /// The Director (signed requests).
    Director,
    /// The Image repository.
    Image,
}

impl Backend {
    /// A backend at `base` (no trailing slash needed); `director_path` may
    /// contain `{vin}`.
    pub fn new(
        http: reqwest::Client,
        base: &str,
        director_path: &str,
        image_path: &str,
        vin: &str,
        key: SigningKey,
        clock: std::sync::Arc<dyn Fn() -> Timestamp + Send + Sync>,
    ) -> Self {
        Backend {
            clock,
            http,
            base: base.trim_end_matches('/').to_owned(),
            director_path: director_path.replace("{vin}", vin),
            image_path: image_path.to_owned(),
            vin: vin.to_owned(),
            key,
            bounds: Bounds::default(),
        }
    }

    /// The same backend with `bounds` on every request.
    pub fn with_bounds(mut self, bounds: Bounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// The backend of the daemon's configuration.
    pub fn from_daemon(d: &crate::Daemon) -> Self {
        Backend::new(
            d.http.clone(),
            &d.config.backend.url,
            &d.config.backend.director_path,
            &d.config.backend.image_path,
            &d.config.vehicle.vin,
            d.keys.signing.clone(),
            {
                let clock = d.clock.clone();
                std::sync::Arc::new(move || clock.now().now)
            },
        )
        .with_bounds(Bounds::from_config(&d.config))
    }

    fn path(&self, repo: Repository, file: &str) -> String {
        let prefix = match repo {
            Repository::Director => &self.director_path,
            Repository::Image => &self.image_path,
        };
        format!("{}/{}", prefix.trim_end_matches('/'), file)
    }

    /// The URL of an Image repository target: hash-prefixed last component
    /// (consistent snapshots), each component percent-encoded.
    pub fn target_url(&self, name: &str, sha256: &str) -> String {
        let (dir, base) = match name.rsplit_once('/') {
            Some((d, b)) => (Some(d), b),
            None => (None, name),
        };
        let mut path = String::new();
        if let Some(d) = dir {
            for part in d.split('/') {
                path.push_str(&quote(part));
                path.push('/');
            }
        }
        path.push_str(&quote(&format!("{sha256}.{base}")));
        format!(
            "{}{}",
            self.base,
            self.path(Repository::Image, &format!("targets/{path}"))
        )
    }

    /// A signer for image downloads: fresh signed headers for a GET of `path`.
    pub fn image_signer(&self) -> crate::fetch::download::RequestSigner {
        let (key, vin, clock) = (self.key.clone(), self.vin.clone(), self.clock.clone());
        std::sync::Arc::new(move |path: &str| {
            sign_request(&key, "GET", path, &vin, clock(), b"")
                .map(|h| {
                    h.pairs()
                        .into_iter()
                        .map(|(n, v)| (n, v.to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// GET a metadata file, at most `max_length` bytes. `Ok(None)` on 404/403
    /// (TUF: no newer root).
    pub async fn get_meta(
        &self,
        repo: Repository,
        file: &str,
        max_length: u64,
        now: Timestamp,
    ) -> Result<Option<Vec<u8>>> {
        let path = self.path(repo, file);
        let url = format!("{}{}", self.base, path);
        // The backend authenticates vehicles on both repositories.
        let req = self.sign(self.http.get(&url), "GET", &path, now, b"")?;
        let b = self.bounds;
        let started = Instant::now();
        let deadline = started + b.metadata;
        let stalled = |stage, bound: Duration| Error::Stalled {
            url: url.clone(),
            stage,
            secs: bound.as_secs(),
        };
        let headers_by = deadline.min(started + b.response);
        let mut resp = match tokio::time::timeout_at(headers_by, req.send()).await {
            Err(_) if headers_by == deadline => return Err(stalled(StallStage::Body, b.metadata)),
            Err(_) => return Err(stalled(StallStage::Headers, b.response)),
            Ok(r) => r.map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?,
        };
        let status = resp.status().as_u16();
        if status == 404 || status == 403 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(Error::HttpStatus { url, status });
        }
        let required = (b.min_rate_bytes_per_sec as f64 * b.min_rate_window.as_secs_f64()) as u64;
        let mut window_end = Instant::now() + b.min_rate_window;
        let mut window_bytes = 0u64;
        let mut body = Vec::new();
        loop {
            let next = tokio::time::timeout_at(deadline.min(window_end), resp.chunk()).await;
            let chunk = match next {
                Err(_) if Instant::now() >= deadline => {
                    // Uptane 2.1 §4.3.1 slow retrieval: the whole file in time.
                    return Err(stalled(StallStage::Body, b.metadata));
                }
                Err(_) => {
                    // ... and at the minimum rate over every window.
                    if required > 0 && window_bytes < required {
                        return Err(stalled(StallStage::Rate, b.min_rate_window));
                    }
                    window_end += b.min_rate_window;
                    window_bytes = 0;
                    continue;
                }
                Ok(r) => r.map_err(|source| Error::Http {
                    url: url.clone(),
                    source,
                })?,
            };
            let Some(chunk) = chunk else {
                return Ok(Some(body));
            };
            if (body.len() + chunk.len()) as u64 > max_length {
                return Err(Error::uptane(
                    file,
                    secureev_uptane::Error::EndlessData {
                        what: file.to_owned(),
                        limit: max_length,
                    },
                ));
            }
            window_bytes += chunk.len() as u64;
            body.extend_from_slice(&chunk);
        }
    }

    /// PUT the signed vehicle version manifest, all of it within
    /// `[network] manifest_timeout_secs` (headers within
    /// `response_timeout_secs`).
    pub async fn put_manifest(&self, body: &[u8], now: Timestamp) -> Result<()> {
        let path = self.path(Repository::Director, "manifest");
        let url = format!("{}{}", self.base, path);
        let req = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        let req = self.sign(req, "PUT", &path, now, body)?;
        let b = self.bounds;
        let started = Instant::now();
        let deadline = started + b.manifest;
        let stalled = |stage, bound: Duration| Error::Stalled {
            url: url.clone(),
            stage,
            secs: bound.as_secs(),
        };
        let headers_by = deadline.min(started + b.response);
        let resp = match tokio::time::timeout_at(headers_by, req.send()).await {
            Err(_) if headers_by == deadline => {
                return Err(stalled(StallStage::ManifestAnswer, b.manifest))
            }
            Err(_) => return Err(stalled(StallStage::Headers, b.response)),
            Ok(r) => r.map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?,
        };
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = tokio::time::timeout_at(deadline, resp.text())
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default();
            tracing::warn!(status, body = %text.chars().take(500).collect::<String>(), "manifest refused");
            return Err(Error::HttpStatus { url, status });
        }
        Ok(())
    }

    fn sign(
        &self,
        req: reqwest::RequestBuilder,
        method: &str,
        path: &str,
        now: Timestamp,
        body: &[u8],
    ) -> Result<reqwest::RequestBuilder> {
        let headers = sign_request(&self.key, method, path, &self.vin, now, body)
            .map_err(|e| Error::Tls(format!("cannot sign the request for {path}: {e}")))?;
        let mut req = req;
        for (name, value) in headers.pairs() {
            req = req.header(name, value);
        }
        Ok(req)
    }
}

/// Percent-encode one URL path segment or file name component (as Python's
/// `urllib.parse.quote(s, safe="")`), for role names and target path parts.
pub use secureev_uptane::quote::quote_component as quote;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls_are_hash_prefixed_and_quoted() {
        let b = Backend::new(
            reqwest::Client::new(),
            "https://b.example/",
            "/director/{vin}",
            "/image",
            "VIN1",
            SigningKey::generate_p256(),
            std::sync::Arc::new(|| Timestamp::from_unix(0)),
        );
        assert_eq!(
            b.target_url("fw/ecu a.bin", "ab12"),
            "https://b.example/image/targets/fw/ab12.ecu%20a.bin"
        );
        assert_eq!(
            b.path(Repository::Director, "timestamp.json"),
            "/director/VIN1/timestamp.json"
        );
        assert_eq!(quote("../x?#"), "..%2Fx%3F%23");
    }
}
