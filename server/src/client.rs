//! HTTP clients for the admin API (used by the CLI subcommands) and for a
//! vehicle (used by tests and benchmarks), plus the offline signing step of
//! `image add`.

use crate::error::{Error, Result};
use crate::layout;
use crate::repo::{EncryptedImage, IMAGE};
use secureev_uptane::builder::{sign_value, target_file, TARGETS_LIFETIME_SECS};
use secureev_uptane::custom::{DisplayText, TargetCustom};
use secureev_uptane::encryption::{encrypt_image, ContentKey, DEFAULT_CHUNK_SIZE};
use secureev_uptane::request_auth::sign_request;
use secureev_uptane::{SigningKey, Timestamp};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

fn http_err(e: reqwest::Error) -> Error {
    Error::Internal(format!("http: {e}"))
}

/// A reqwest client trusting only `ca_pem` (or, for `http://`, plain).
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .min_tls_version(reqwest::tls::Version::TLS_1_3);
    if let Some(pem) = ca_pem {
        let ca = reqwest::Certificate::from_pem(pem).map_err(http_err)?;
        b = b.add_root_certificate(ca);
    }
    b.build().map_err(http_err)
}

/// An API response: status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `Ok(self)` for 2xx, an error naming status and body otherwise.
    pub fn ok(self) -> Result<Self> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(Error::Internal(format!(
                "server answered {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )))
        }
    }
}

async fn reply(resp: reqwest::Response) -> Result<Reply> {
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(http_err)?.to_vec();
    Ok(Reply { status, body })
}

/// Client of the admin API, over HTTPS or the admin Unix socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
    socket: Option<std::path::PathBuf>,
}

/// One request over the admin Unix socket (plain HTTP/1.1, one connection
/// per request).
async fn unix_request(
    socket: &Path,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<(&'static str, Vec<u8>)>,
) -> Result<Reply> {
    use http_body_util::BodyExt;
    let err =
        |e: &dyn std::fmt::Display| Error::Internal(format!("http over {}: {e}", socket.display()));
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| Error::io(format!("connecting to {}", socket.display()), e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| err(&e))?;
    let conn = tokio::spawn(conn);
    let method = hyper::Method::from_bytes(method.as_str().as_bytes()).map_err(|e| err(&e))?;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"));
    let bytes = match body {
        Some((content_type, b)) => {
            req = req.header("content-type", content_type);
            b
        }
        None => Vec::new(),
    };
    let req = req
        .body(http_body_util::Full::new(axum::body::Bytes::from(bytes)))
        .map_err(|e| err(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| err(&e))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| err(&e))?
        .to_bytes()
        .to_vec();
    drop(sender);
    let _ = conn.await;
    Ok(Reply { status, body })
}

impl AdminClient {
    /// A client for `base` (e.g. `https://127.0.0.1:8443`).
    pub fn new(http: reqwest::Client, base: &str, token: &str) -> Self {
        AdminClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            socket: None,
        }
    }

    /// A client of the admin API on the Unix socket `socket`.
    pub fn unix(socket: &Path, token: &str) -> Self {
        AdminClient {
            http: reqwest::Client::new(),
            base: format!("{}{}", crate::config::UNIX_PREFIX, socket.display()),
            token: token.trim().to_owned(),
            socket: Some(socket.to_path_buf()),
        }
    }

    /// A client using the bootstrap token and CA of a local data directory.
    pub fn from_data_dir(base: &str, data_dir: &Path) -> Result<Self> {
        Self::from_files(base, data_dir, None)
    }

    /// A client with the token in `token_file` (default
    /// `<data_dir>/admin-token`) and the CA of `data_dir`.
    pub fn from_files(base: &str, data_dir: &Path, token_file: Option<&Path>) -> Result<Self> {
        let path = token_file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| data_dir.join(layout::ADMIN_TOKEN));
        let token = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading the token in {}", path.display()), e))?;
        if let Some(socket) = base.strip_prefix(crate::config::UNIX_PREFIX) {
            return Ok(Self::unix(Path::new(socket), &token));
        }
        let ca = if base.starts_with("https://") {
            Some(
                std::fs::read(data_dir.join(layout::CA_CERT))
                    .map_err(|e| Error::io("reading CA certificate", e))?,
            )
        } else {
            None
        };
        Ok(Self::new(http_client(ca.as_deref())?, base, &token))
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> Result<Reply> {
        if let Some(socket) = &self.socket {
            return unix_request(socket, reqwest::Method::GET, path, &self.token, None).await;
        }
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(http_err)?;
        reply(r).await
    }

    /// Send JSON with `method`.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<Reply> {
        if let Some(socket) = &self.socket {
            let bytes =
                serde_json::to_vec(body).map_err(|e| Error::Internal(format!("JSON body: {e}")))?;
            return unix_request(
                socket,
                method,
                path,
                &self.token,
                Some(("application/json", bytes)),
            )
            .await;
        }
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(http_err)?;
        reply(r).await
    }

    /// POST JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.send_json(reqwest::Method::POST, path, body).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> Result<Reply> {
        if let Some(socket) = &self.socket {
            return unix_request(socket, reqwest::Method::DELETE, path, &self.token, None).await;
        }
        let r = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(http_err)?;
        reply(r).await
    }

    /// Upload a blob.
    pub async fn put_blob(&self, data: Vec<u8>) -> Result<Reply> {
        if let Some(socket) = &self.socket {
            return unix_request(
                socket,
                reqwest::Method::PUT,
                "/admin/blobs",
                &self.token,
                Some(("application/octet-stream", data)),
            )
            .await;
        }
        let r = self
            .http
            .put(format!("{}/admin/blobs", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .map_err(http_err)?;
        reply(r).await
    }
}

/// What `image add` publishes.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Target name.
    pub name: String,
    /// Hardware IDs.
    pub hardware_ids: Vec<String>,
    /// Human version (`custom.version`, checked by [`DisplayText::Version`]).
    pub version: Option<String>,
    /// Release counter.
    pub release_counter: Option<u64>,
    /// Encrypt with a fresh content key.
    pub encrypt: bool,
    /// Release notes (`custom.releaseNotes`, checked by
    /// [`DisplayText::ReleaseNotes`]).
    pub release_notes: Option<String>,
}

/// Offline step of `image add`: add `data` as `spec` to the current signed
/// Image targets and sign the next version with the offline targets keys.
/// Returns the new envelope, the bytes to upload and the encryption material.
pub fn sign_image_targets(
    current: &[u8],
    offline_targets_keys: &[SigningKey],
    spec: &ImageSpec,
    data: &[u8],
    now: Timestamp,
) -> Result<(Value, Vec<u8>, Option<EncryptedImage>)> {
    crate::repo::validate_target_name(&spec.name)?;
    for (kind, text) in [
        (DisplayText::Version, &spec.version),
        (DisplayText::ReleaseNotes, &spec.release_notes),
    ] {
        if let Some(text) = text {
            kind.check(text).map_err(Error::BadRequest)?;
        }
    }
    let env: Value = serde_json::from_slice(current)
        .map_err(|e| Error::BadRequest(format!("current targets are not JSON: {e}")))?;
    let mut signed = env
        .get("signed")
        .cloned()
        .ok_or_else(|| Error::BadRequest("current targets have no signed".into()))?;
    let version = signed
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::BadRequest("current targets have no version".into()))?;
    let (served, encrypted) = if spec.encrypt {
        let key = ContentKey::generate();
        let (bytes, info) = encrypt_image(&key, data, DEFAULT_CHUNK_SIZE)?;
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.as_bytes());
        (
            bytes,
            Some(EncryptedImage {
                content_key: b64,
                info,
            }),
        )
    } else {
        (data.to_vec(), None)
    };
    let mut custom = TargetCustom {
        hardware_ids: spec.hardware_ids.clone(),
        release_counter: spec.release_counter,
        ..TargetCustom::default()
    };
    if let Some(v) = &spec.version {
        custom
            .unrecognized
            .insert(DisplayText::Version.key().into(), json!(v));
    }
    if let Some(n) = &spec.release_notes {
        custom
            .unrecognized
            .insert(DisplayText::ReleaseNotes.key().into(), json!(n));
    }
    let entry = target_file(&served, Some(custom.to_value()));
    signed["version"] = json!(version + 1);
    signed["expires"] = json!(now.plus_secs(TARGETS_LIFETIME_SECS).to_string());
    if !signed["targets"].is_object() {
        signed["targets"] = json!({});
    }
    signed["targets"][&spec.name] =
        serde_json::to_value(entry).map_err(|e| Error::Internal(e.to_string()))?;
    let keys: Vec<&SigningKey> = offline_targets_keys.iter().collect();
    let bytes = sign_value(signed, &keys)?;
    let envelope: Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::Internal(e.to_string()))?;
    Ok((envelope, served, encrypted))
}

/// `image add`: sign with the offline keys in `offline_dir`, upload the blob,
/// publish. Returns the new targets version.
pub async fn image_add(
    admin: &AdminClient,
    offline_dir: &Path,
    spec: &ImageSpec,
    data: &[u8],
    now: Timestamp,
) -> Result<u64> {
    let keys = layout::load_keys(offline_dir, IMAGE, "targets")?;
    let current = admin.get("/admin/image/targets").await?.ok()?.body;
    let (envelope, served, encrypted) = sign_image_targets(&current, &keys, spec, data, now)?;
    admin.put_blob(served).await?.ok()?;
    let mut enc = BTreeMap::new();
    if let Some(e) = encrypted {
        enc.insert(spec.name.clone(), e);
    }
    let r = admin
        .post(
            "/admin/image/targets",
            &json!({ "metadata": envelope, "encrypted": enc }),
        )
        .await?
        .ok()?;
    r.json()["targets_version"]
        .as_u64()
        .ok_or_else(|| Error::Internal("no targets_version in reply".into()))
}

/// A vehicle's client: signs every request with the Primary's key.
#[derive(Debug, Clone)]
pub struct VehicleClient {
    http: reqwest::Client,
    base: String,
    /// VIN.
    pub vin: String,
    key: SigningKey,
}

impl VehicleClient {
    /// A client for vehicle `vin` signing with `primary_key`.
    pub fn new(http: reqwest::Client, base: &str, vin: &str, primary_key: SigningKey) -> Self {
        VehicleClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            vin: vin.to_owned(),
            key: primary_key,
        }
    }

    /// Build a signed request (tests tamper with it before sending).
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &[u8],
        now: Timestamp,
    ) -> Result<reqwest::RequestBuilder> {
        let h = sign_request(&self.key, method.as_str(), path, &self.vin, now, body)
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in h.pairs() {
            rb = rb.header(k, v);
        }
        Ok(rb)
    }

    /// Signed GET.
    pub async fn get(&self, path: &str) -> Result<Reply> {
        let now = Timestamp::from_unix(crate::unix_now());
        reply(
            self.request(reqwest::Method::GET, path, b"", now)?
                .send()
                .await
                .map_err(http_err)?,
        )
        .await
    }

    /// Signed GET with a Range header.
    pub async fn get_range(&self, path: &str, range: &str) -> Result<(Reply, Option<String>)> {
        let now = Timestamp::from_unix(crate::unix_now());
        let r = self
            .request(reqwest::Method::GET, path, b"", now)?
            .header("range", range)
            .send()
            .await
            .map_err(http_err)?;
        let cr = r
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((reply(r).await?, cr))
    }

    /// Signed PUT of a JSON body.
    pub async fn put_json(&self, path: &str, body: &[u8]) -> Result<Reply> {
        let now = Timestamp::from_unix(crate::unix_now());
        let r = self
            .request(reqwest::Method::PUT, path, body, now)?
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(http_err)?;
        reply(r).await
    }
}

/// Offline step of `image rotate`: a fresh key for the Image repository's
/// `root` or `targets` role (replacing or joining its keys), root version N+1
/// signed by the old and new root keys, and, for `targets`, the current
/// targets re-signed with the new keys. The new key is written to
/// `<offline_dir>/image/<role>.pending/` first and moved into place only once
/// the server accepted the new root; replaced keys go to `<role>.retired/`.
pub async fn rotate_image_key(
    admin: &AdminClient,
    offline_dir: &Path,
    role: &str,
    mode: crate::repo::RotationMode,
    threshold: Option<u32>,
    now: Timestamp,
) -> Result<u64> {
    if role == "snapshot" || role == "timestamp" {
        return rotate_image_online_key(admin, offline_dir, role, mode, threshold, now).await;
    }
    if role != "root" && role != "targets" {
        return Err(Error::BadRequest(format!("unknown role {role:?}")));
    }
    let old_root_keys = layout::load_keys(offline_dir, IMAGE, "root")?;
    let old_role_keys = layout::load_keys(offline_dir, IMAGE, role)?;
    let current_root = admin.get("/admin/image/root").await?.ok()?.body;
    let key = SigningKey::generate_p256();
    let pending = format!("{role}.pending");
    layout::store_key(offline_dir, IMAGE, &pending, &key)?;
    let signed = crate::repo::next_root(
        &current_root,
        role,
        &[key.public_key().clone()],
        mode,
        threshold,
        now.unix(),
    )?;
    let new_role_keys: Vec<SigningKey> = match mode {
        crate::repo::RotationMode::Replace => vec![key.clone()],
        crate::repo::RotationMode::Add => {
            let mut v = old_role_keys.clone();
            v.push(key.clone());
            v
        }
    };
    let mut signers: Vec<&SigningKey> = old_root_keys.iter().collect();
    if role == "root" {
        for k in &new_role_keys {
            if !signers.iter().any(|s| s.keyid() == k.keyid()) {
                signers.push(k);
            }
        }
    }
    let root_bytes = sign_value(signed, &signers)?;
    let root: Value =
        serde_json::from_slice(&root_bytes).map_err(|e| Error::Internal(e.to_string()))?;
    let targets = if role == "targets" {
        let current = admin.get("/admin/image/targets").await?.ok()?.body;
        let env: Value =
            serde_json::from_slice(&current).map_err(|e| Error::Internal(e.to_string()))?;
        let mut signed = env["signed"].clone();
        let v = signed["version"].as_u64().unwrap_or(0);
        signed["version"] = json!(v + 1);
        signed["expires"] = json!(now.plus_secs(TARGETS_LIFETIME_SECS).to_string());
        let refs: Vec<&SigningKey> = new_role_keys.iter().collect();
        let bytes = sign_value(signed, &refs)?;
        Some(serde_json::from_slice::<Value>(&bytes).map_err(|e| Error::Internal(e.to_string()))?)
    } else {
        None
    };
    let r = admin
        .post(
            "/admin/image/root/rotate",
            &json!({ "root": root, "targets": targets }),
        )
        .await?
        .ok()?;
    // Accepted: make the new key current, retire the replaced ones.
    let pending_dir = layout::role_dir(offline_dir, IMAGE, &pending);
    let role_dir = layout::role_dir(offline_dir, IMAGE, role);
    let file = format!("{}.pem", key.keyid());
    std::fs::rename(pending_dir.join(&file), role_dir.join(&file))
        .map_err(|e| Error::io("moving the new key into place", e))?;
    let _ = std::fs::remove_dir(&pending_dir);
    if mode == crate::repo::RotationMode::Replace {
        let retired = layout::role_dir(offline_dir, IMAGE, &format!("{role}.retired"));
        std::fs::create_dir_all(&retired).map_err(|e| Error::io("creating retired key dir", e))?;
        for k in &old_role_keys {
            let f = format!("{}.pem", k.keyid());
            std::fs::rename(role_dir.join(&f), retired.join(&f))
                .map_err(|e| Error::io("retiring a key", e))?;
        }
    }
    r.json()["root_version"]
        .as_u64()
        .ok_or_else(|| Error::Internal("no root_version in reply".into()))
}

/// Rotate an online key of the Image repository: the server makes the key
/// (its private half never leaves the server), the offline root keys sign root
/// N+1 listing it.
async fn rotate_image_online_key(
    admin: &AdminClient,
    offline_dir: &Path,
    role: &str,
    mode: crate::repo::RotationMode,
    threshold: Option<u32>,
    now: Timestamp,
) -> Result<u64> {
    let old_root_keys = layout::load_keys(offline_dir, IMAGE, "root")?;
    let current_root = admin.get("/admin/image/root").await?.ok()?.body;
    let made = admin
        .post("/admin/image/online-keys", &json!({ "role": role }))
        .await?
        .ok()?
        .json();
    let key: secureev_uptane::Key = serde_json::from_value(made["key"].clone())
        .map_err(|e| Error::Internal(format!("bad key from server: {e}")))?;
    let signed = crate::repo::next_root(&current_root, role, &[key], mode, threshold, now.unix())?;
    let refs: Vec<&SigningKey> = old_root_keys.iter().collect();
    let root_bytes = sign_value(signed, &refs)?;
    let root: Value =
        serde_json::from_slice(&root_bytes).map_err(|e| Error::Internal(e.to_string()))?;
    let r = admin
        .post("/admin/image/root/rotate", &json!({ "root": root }))
        .await?
        .ok()?;
    r.json()["root_version"]
        .as_u64()
        .ok_or_else(|| Error::Internal("no root_version in reply".into()))
}
