//! One simulated connection: an HTTP/1.1 keep-alive client over TLS 1.3 that
//! signs vehicle requests as `secureev_uptane::request_auth` defines.

use crate::error::{Result, SimError};
use secureev_uptane::request_auth::sign_request;
use secureev_uptane::{SigningKey, Timestamp};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Longest a single request may take before it counts as a `timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read (metadata and the simulator's small images).
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// A TLS 1.3 client trusting only `ca_pem` that keeps one connection open.
pub fn client(ca_pem: &[u8]) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem)?;
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .min_tls_version(reqwest::tls::Version::TLS_1_3)
        .pool_max_idle_per_host(1)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// Response bytes kept by path, for serving the same bytes from a static
/// server (the benchmark's ceiling). `None` keeps nothing.
#[derive(Debug, Default)]
pub struct Dump(Option<Mutex<HashMap<String, Vec<u8>>>>);

impl Dump {
    /// A dump that keeps the last body of every path.
    pub fn keeping() -> Self {
        Dump(Some(Mutex::new(HashMap::new())))
    }

    fn keep(&self, path: &str, body: &[u8]) {
        if let Some(m) = &self.0 {
            if let Ok(mut m) = m.lock() {
                if m.get(path).map(Vec::as_slice) != Some(body) {
                    m.insert(path.to_owned(), body.to_vec());
                }
            }
        }
    }

    /// Write every kept body to `dir/<path>`.
    pub fn write_to(&self, dir: &std::path::Path) -> anyhow::Result<usize> {
        let Some(m) = &self.0 else { return Ok(0) };
        let m = m
            .lock()
            .map_err(|_| anyhow::anyhow!("dump lock poisoned"))?;
        for (path, body) in m.iter() {
            let rel = path.trim_start_matches('/');
            anyhow::ensure!(
                !rel.split('/').any(|c| c == ".." || c.is_empty()),
                "refusing to dump {path:?}"
            );
            let file = dir.join(rel);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, body)?;
        }
        Ok(m.len())
    }
}

/// A connection to the backend, shared by the vehicles of one worker.
#[derive(Debug, Clone)]
pub struct Conn {
    http: reqwest::Client,
    base: String,
}

impl Conn {
    /// A connection to `base` (`https://host:port`).
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Conn {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// A signed GET of `path` as vehicle `vin`; `Ok(None)` on 404.
    pub async fn get(
        &self,
        key: &SigningKey,
        vin: &str,
        path: &str,
        now: Timestamp,
        dump: &Dump,
    ) -> Result<Option<Vec<u8>>> {
        let req = self.signed(
            self.http.get(self.url(path)),
            key,
            vin,
            "GET",
            path,
            now,
            b"",
        )?;
        let resp = req.send().await.map_err(|source| SimError::Http {
            method: "GET",
            path: path.to_owned(),
            source,
        })?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        let body = read_body("GET", path, resp).await?;
        if status != 200 {
            return Err(status_error("GET", path, status, &body));
        }
        dump.keep(path, &body);
        Ok(Some(body))
    }

    /// A signed PUT of a JSON body; the reply body on 2xx.
    pub async fn put_json(
        &self,
        key: &SigningKey,
        vin: &str,
        path: &str,
        body: Vec<u8>,
        now: Timestamp,
    ) -> Result<Vec<u8>> {
        let req = self
            .http
            .put(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        let req = self.signed(req, key, vin, "PUT", path, now, &body)?;
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|source| SimError::Http {
                method: "PUT",
                path: path.to_owned(),
                source,
            })?;
        let status = resp.status().as_u16();
        let reply = read_body("PUT", path, resp).await?;
        if !(200..300).contains(&status) {
            return Err(status_error("PUT", path, status, &reply));
        }
        Ok(reply)
    }

    /// An admin request with the bearer token; the reply body on 2xx,
    /// `Ok(None)` on 409 (already there).
    pub async fn admin(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Option<Vec<u8>>> {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|source| SimError::Http {
            method: "ADMIN",
            path: path.to_owned(),
            source,
        })?;
        let status = resp.status().as_u16();
        let reply = read_body("ADMIN", path, resp).await?;
        match status {
            200..=299 => Ok(Some(reply)),
            409 => Ok(None),
            _ => Err(status_error("ADMIN", path, status, &reply)),
        }
    }

    /// `POST /enroll` with an enrollment credential and the registration.
    pub async fn enroll(&self, credential: &str, registration: &serde_json::Value) -> Result<()> {
        let resp = self
            .http
            .post(self.url("/enroll"))
            .bearer_auth(credential)
            .json(registration)
            .send()
            .await
            .map_err(|source| SimError::Http {
                method: "POST",
                path: "/enroll".into(),
                source,
            })?;
        let status = resp.status().as_u16();
        let reply = read_body("POST", "/enroll", resp).await?;
        if status != 201 {
            return Err(status_error("POST", "/enroll", status, &reply));
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    #[allow(clippy::too_many_arguments)]
    fn signed(
        &self,
        req: reqwest::RequestBuilder,
        key: &SigningKey,
        vin: &str,
        method: &str,
        path: &str,
        now: Timestamp,
        body: &[u8],
    ) -> Result<reqwest::RequestBuilder> {
        let headers = sign_request(key, method, path, vin, now, body)
            .map_err(|e| SimError::Local(format!("signing {method} {path}: {e}")))?;
        let mut req = req;
        for (name, value) in headers.pairs() {
            req = req.header(name, value);
        }
        Ok(req)
    }
}

async fn read_body(
    method: &'static str,
    path: &str,
    mut resp: reqwest::Response,
) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| SimError::Http {
        method,
        path: path.to_owned(),
        source,
    })? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(SimError::Local(format!(
                "{method} {path}: body over {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn status_error(method: &'static str, path: &str, status: u16, body: &[u8]) -> SimError {
    SimError::Status {
        method,
        path: path.to_owned(),
        status,
        body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
    }
}
