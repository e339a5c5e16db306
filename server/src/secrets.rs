//! Secrets at rest: file modes, and the key-encryption key (KEK) that seals
//! image content keys in the database.
//!
//! `serve` refuses to start when the data directory, its `keys/` tree, the
//! TLS key or the database are readable by anyone but the owner (the data
//! directory must be 0700, key files and the database 0600); `init` creates
//! them that way. The database is created 0600 and SQLite gives its `-wal`
//! and `-shm` files the same mode.
//!
//! Content keys of encrypted images are stored as `kek1:<base64(nonce ||
//! AES-256-GCM(content key))>`, with the image name as associated data so a
//! sealed key cannot be moved to another image. The KEK is
//! `keys/kek` (32 random bytes, 0600), a Director key like the others, or an
//! AES-256 key in a PKCS#11 token (`key_store = "pkcs11"`), which seals and
//! opens inside the token to the same format.

use crate::error::{Error, Result};
use crate::layout;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand_core::RngCore;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The KEK file inside the data directory.
pub const KEK_FILE: &str = "keys/kek";
/// Prefix of a sealed content key.
pub const SEALED_PREFIX: &str = "kek1:";

/// The key-encryption key: 32 bytes from `keys/kek`, or an AES-256 key in
/// a PKCS#11 token that never leaves it (sealing and opening run inside the
/// token, [`crate::hsm`]). Both seal to the same `kek1:` format.
#[derive(Clone)]
pub struct Kek(KekInner);

#[derive(Clone)]
enum KekInner {
    Bytes(zeroize::Zeroizing<[u8; 32]>),
    Token(std::sync::Arc<crate::hsm::Token>),
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            KekInner::Bytes(_) => "Kek(file)",
            KekInner::Token(_) => "Kek(pkcs11)",
        })
    }
}

impl Kek {
    /// A fresh random KEK in memory.
    pub fn generate() -> Self {
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        rand_core::OsRng.fill_bytes(k.as_mut());
        Kek(KekInner::Bytes(k))
    }

    /// The KEK of `token` (`<prefix>/kek`, which must exist there).
    pub fn in_token(token: std::sync::Arc<crate::hsm::Token>) -> Self {
        Kek(KekInner::Token(token))
    }

    /// The key bytes of a file KEK (for `hsm import`); `None` in a token.
    pub fn file_bytes(&self) -> Option<&[u8; 32]> {
        match &self.0 {
            KekInner::Bytes(b) => Some(b),
            KekInner::Token(_) => None,
        }
    }

    /// Write it to `<data_dir>/keys/kek` (0600, never overwritten).
    pub fn store(&self, data_dir: &Path) -> Result<()> {
        let bytes = self
            .file_bytes()
            .ok_or_else(|| Error::Internal("a KEK in a token has no bytes to store".into()))?;
        layout::write_private(&data_dir.join(KEK_FILE), bytes.as_ref())
    }

    /// Load `<data_dir>/keys/kek`, creating it when a data directory from
    /// before the KEK has none.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        Self::load_or_create_file(&data_dir.join(layout::KEYS))
    }

    /// Load `<keys_dir>/kek`, creating it when missing.
    pub fn load_or_create_file(keys_dir: &Path) -> Result<Self> {
        let path = keys_dir.join("kek");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = zeroize::Zeroizing::new(bytes);
                let arr: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Config(format!("{} must hold 32 bytes", path.display())))?;
                Ok(Kek(KekInner::Bytes(zeroize::Zeroizing::new(arr))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = Kek::generate();
                if let Some(b) = k.file_bytes() {
                    layout::write_private(&path, b.as_ref())?;
                }
                Ok(k)
            }
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    fn encrypt(&self, nonce: &[u8; 12], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>> {
        match &self.0 {
            KekInner::Bytes(k) => Aes256Gcm::new_from_slice(k.as_ref())
                .map_err(|e| Error::Internal(e.to_string()))?
                .encrypt(&Nonce::from(*nonce), Payload { msg, aad })
                .map_err(|_| Error::Internal("sealing a content key failed".into())),
            KekInner::Token(t) => t.gcm_encrypt(nonce, aad, msg),
        }
    }

    fn decrypt(&self, nonce: &[u8; 12], aad: &[u8], msg: &[u8]) -> Option<Vec<u8>> {
        match &self.0 {
            KekInner::Bytes(k) => Aes256Gcm::new_from_slice(k.as_ref())
                .ok()?
                .decrypt(&Nonce::from(*nonce), Payload { msg, aad })
                .ok(),
            KekInner::Token(t) => t.gcm_decrypt(nonce, aad, msg).ok(),
        }
    }

    /// Seal a base64 content key of image `name`.
    pub fn seal(&self, name: &str, content_key_b64: &str) -> Result<String> {
        let mut nonce = [0u8; 12];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let ct = self.encrypt(&nonce, name.as_bytes(), content_key_b64.as_bytes())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Unseal what [`Kek::seal`] made for image `name`. A value without the
    /// prefix is a content key stored before sealing existed and is returned
    /// as is.
    pub fn unseal(&self, name: &str, stored: &str) -> Result<String> {
        let Some(b64) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_owned());
        };
        let bad = || Error::Internal(format!("sealed content key of {name} does not open"));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad())?;
        if raw.len() < 12 + 16 {
            return Err(bad());
        }
        let (nonce, ct) = raw.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| bad())?;
        let pt = self.decrypt(&nonce, name.as_bytes(), ct).ok_or_else(bad)?;
        String::from_utf8(pt).map_err(|_| bad())
    }
}

fn mode_of(path: &Path) -> Result<Option<u32>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m.permissions().mode() & 0o7777)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("inspecting {}", path.display()), e)),
    }
}

/// Refuse `path` when its mode is wider than `allowed`.
pub fn refuse_wider(path: &Path, allowed: u32) -> Result<()> {
    if let Some(mode) = mode_of(path)? {
        if mode & !allowed & 0o777 != 0 {
            return Err(Error::Config(format!(
                "{} has mode {mode:o}, wider than {allowed:o}: others could read secrets; chmod {allowed:o} it",
                path.display()
            )));
        }
    }
    Ok(())
}

fn check_tree(dir: &Path) -> Result<()> {
    refuse_wider(dir, 0o700)?;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            check_tree(&p)?;
        } else {
            refuse_wider(&p, 0o600)?;
        }
    }
    Ok(())
}

/// Refuse a data directory whose secrets others could read.
pub fn check_data_dir(data_dir: &Path) -> Result<()> {
    refuse_wider(data_dir, 0o700)?;
    check_tree(&data_dir.join(layout::KEYS))?;
    for f in [
        layout::DB_FILE,
        "db.sqlite-wal",
        "db.sqlite-shm",
        layout::SERVER_KEY,
        layout::ADMIN_TOKEN,
    ] {
        refuse_wider(&data_dir.join(f), 0o600)?;
    }
    Ok(())
}

/// Create a directory (and parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_for_their_image() {
        let k = Kek::generate();
        let sealed = k.seal("fw.bin", "a2V5").unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("a2V5"));
        assert_eq!(k.unseal("fw.bin", &sealed).unwrap(), "a2V5");
        assert!(k.unseal("other.bin", &sealed).is_err());
        assert!(Kek::generate().unseal("fw.bin", &sealed).is_err());
        // A content key from before sealing passes through.
        assert_eq!(k.unseal("fw.bin", "a2V5").unwrap(), "a2V5");
    }

    #[test]
    fn a_world_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        create_private_dir(&data.join("keys/director/root")).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(data.join("keys"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::fs::set_permissions(
            data.join("keys/director"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let key = data.join("keys/director/root/k.pem");
        std::fs::write(&key, "x").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_data_dir(&data).unwrap_err().to_string();
        assert!(e.contains("k.pem") && e.contains("644"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_data_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_data_dir(&data).is_err());
    }
}
