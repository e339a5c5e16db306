//! The data directory layout and the on-disk key store.
//!
//! ```text
//! <data_dir>/
//!   server.toml                 configuration written by `init`
//!   admin-token                 token of the bootstrap operator `init` made (0600;
//!                               the server never reads it, only the CLI)
//!   db.sqlite                   registry, metadata, assignments, manifests, events,
//!                               operators, enrollment credentials (hashed), audit
//!   blobs/sha256/<hex>          image blobs, content-addressed
//!   tls/ca.pem                  development CA certificate
//!   tls/server.pem, tls/server-key.pem
//!   keys/director/<role>/<keyid>.pem   Director keys (all online)
//!   keys/image/{snapshot,timestamp}/<keyid>.pem  Image repository online keys
//!   keys/audit/log/<keyid>.pem  audit trail signing key
//!   keys/kek                    key-encryption key of image content keys
//! <offline_dir>/
//!   image/{root,targets}/<keyid>.pem   Image repository offline keys; `serve`
//!                                       never reads this directory
//!   tls/ca-key.pem              development CA private key
//! ```

use crate::error::{Error, Result};
use secureev_uptane::SigningKey;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// SQLite database file.
pub const DB_FILE: &str = "db.sqlite";
/// Admin token file.
pub const ADMIN_TOKEN: &str = "admin-token";
/// Development CA certificate.
pub const CA_CERT: &str = "tls/ca.pem";
/// Development CA private key (in the offline directory).
pub const CA_KEY: &str = "tls/ca-key.pem";
/// Server certificate chain.
pub const SERVER_CERT: &str = "tls/server.pem";
/// Server private key.
pub const SERVER_KEY: &str = "tls/server-key.pem";
/// Fleet CA certificate the vehicle listener checks device certificates
/// against (`device_certificates = "required"`; default of `fleet_ca`).
pub const FLEET_CA_CERT: &str = "tls/fleet-ca.pem";
/// Fleet CA private key (in the offline directory; `device-cert init-ca`).
pub const FLEET_CA_KEY: &str = "fleet/fleet-ca-key.pem";
/// Fleet CA certificate, beside its key in the offline directory.
pub const FLEET_CA_OFFLINE_CERT: &str = "fleet/fleet-ca.pem";
/// Blob directory.
pub const BLOBS: &str = "blobs/sha256";
/// Key directory.
pub const KEYS: &str = "keys";

/// Create a directory and any missing parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

/// Create `path` with mode 0600 and write `data`; refuses to overwrite.
/// Missing parent directories are made 0700.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Create `path` with mode 0644 and write `data`; refuses to overwrite.
pub fn write_public(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(data)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Directory of one role's keys: `<base>/<repo>/<role>`.
pub fn role_dir(base: &Path, repo: &str, role: &str) -> PathBuf {
    base.join(repo).join(role)
}

/// Store a private key as `<base>/<repo>/<role>/<keyid>.pem` (0600).
pub fn store_key(base: &Path, repo: &str, role: &str, key: &SigningKey) -> Result<()> {
    let path = role_dir(base, repo, role).join(format!("{}.pem", key.keyid()));
    write_private(&path, key.to_pkcs8_pem().as_bytes())
}

/// Load every key of a role. An empty or missing directory is an error: a
/// role without keys cannot sign.
pub fn load_keys(base: &Path, repo: &str, role: &str) -> Result<Vec<SigningKey>> {
    let dir = role_dir(base, repo, role);
    let entries =
        std::fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    paths.sort();
    let mut keys = Vec::new();
    for p in paths {
        let pem = std::fs::read_to_string(&p)
            .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
        keys.push(SigningKey::from_pkcs8_pem(&pem)?);
    }
    if keys.is_empty() {
        return Err(Error::Config(format!(
            "no {repo} {role} keys in {}",
            dir.display()
        )));
    }
    Ok(keys)
}

/// After a rotation: make `keys` the role's keys on disk. Keys in
/// `<role>.pending/` that are in `keys` move into `<role>/`; keys in `<role>/`
/// that are not move to `<role>.retired/`; unused pending keys stay pending.
pub fn promote_keys(base: &Path, repo: &str, role: &str, keys: &[SigningKey]) -> Result<()> {
    let ids: Vec<&str> = keys.iter().map(|k| k.keyid()).collect();
    promote_key_ids(base, repo, role, &ids)
}

/// [`promote_keys`] by key id.
pub fn promote_key_ids(base: &Path, repo: &str, role: &str, keys: &[&str]) -> Result<()> {
    let dir = role_dir(base, repo, role);
    let pending = role_dir(base, repo, &format!("{role}.pending"));
    let retired = role_dir(base, repo, &format!("{role}.retired"));
    let wanted = |p: &Path| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|id| keys.contains(&id))
    };
    let mv = |from: &Path, to_dir: &Path| -> Result<()> {
        create_private_dir(to_dir)?;
        if let Some(name) = from.file_name() {
            std::fs::rename(from, to_dir.join(name))
                .map_err(|e| Error::io(format!("moving {}", from.display()), e))?;
        }
        Ok(())
    };
    if let Ok(entries) = std::fs::read_dir(&pending) {
        for p in entries.flatten().map(|e| e.path()) {
            if wanted(&p) {
                mv(&p, &dir)?;
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for p in entries.flatten().map(|e| e.path()) {
            if !wanted(&p) {
                mv(&p, &retired)?;
            }
        }
    }
    Ok(())
}
