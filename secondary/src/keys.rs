//! The ECU's keys, created on first start in the state directory (mode 0600,
//! atomic writes): a P-256 key that signs ECU version reports and an X25519
//! key that unwraps image content keys. Also the provisioned SecurityAccess
//! secret, which the agent only reads.

use crate::error::{Error, Result};
use crate::fsutil::{atomic_write, read_optional};
use secureev_uptane::encryption::EcuDecryptionKey;
use secureev_uptane::SigningKey;
use std::path::Path;
use zeroize::Zeroizing;

/// File name of the signing key (PKCS#8 PEM).
pub const SIGNING_KEY_FILE: &str = "ecu-signing.pem";
/// File name of the X25519 decryption key (64 hex digits).
pub const DECRYPTION_KEY_FILE: &str = "ecu-decryption.key";

/// The ECU's private keys.
pub struct EcuKeys {
    /// Signs version reports; its `did:key` is DID 0xF1A2.
    pub signing: SigningKey,
    /// Unwraps content keys; its public half is DID 0xF1A3.
    pub decryption: EcuDecryptionKey,
}

impl std::fmt::Debug for EcuKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcuKeys")
            .field("signing", &self.signing.keyid())
            .finish_non_exhaustive()
    }
}

/// Load the keys from `dir`, creating the missing ones.
pub fn load_or_create(dir: &Path) -> Result<EcuKeys> {
    let sp = dir.join(SIGNING_KEY_FILE);
    let signing = match read_optional(&sp).map_err(|e| Error::io("read", &sp, e))? {
        Some(pem) => {
            let pem = Zeroizing::new(String::from_utf8(pem).map_err(|_| Error::Key {
                path: sp.clone(),
                reason: "not UTF-8".into(),
            })?);
            SigningKey::from_pkcs8_pem(&pem).map_err(|e| Error::Key {
                path: sp.clone(),
                reason: e.to_string(),
            })?
        }
        None => {
            let k = SigningKey::generate_p256();
            atomic_write(&sp, k.to_pkcs8_pem().as_bytes())
                .map_err(|e| Error::io("write", &sp, e))?;
            tracing::info!(path = %sp.display(), "created the ECU signing key");
            k
        }
    };
    let dp = dir.join(DECRYPTION_KEY_FILE);
    let decryption = match read_optional(&dp).map_err(|e| Error::io("read", &dp, e))? {
        Some(text) => {
            let text = Zeroizing::new(text);
            let bytes = Zeroizing::new(
                hex::decode(String::from_utf8_lossy(&text).trim()).map_err(|e| Error::Key {
                    path: dp.clone(),
                    reason: format!("not hex: {e}"),
                })?,
            );
            let arr: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::Key {
                path: dp.clone(),
                reason: format!("{} bytes, expected 32", bytes.len()),
            })?;
            EcuDecryptionKey::from_bytes(arr)
        }
        None => {
            let k = EcuDecryptionKey::generate();
            let text = Zeroizing::new(hex::encode(k.to_bytes().as_slice()));
            atomic_write(&dp, text.as_bytes()).map_err(|e| Error::io("write", &dp, e))?;
            tracing::info!(path = %dp.display(), "created the ECU decryption key");
            k
        }
    };
    Ok(EcuKeys {
        signing,
        decryption,
    })
}

/// Read a SecurityAccess secret file: hex, surrounding whitespace ignored, at
/// least [`secureev_uds::security::MIN_SECRET_LEN`] bytes. The Primary reads
/// the same format.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let text = Zeroizing::new(std::fs::read(path).map_err(|e| Error::io("read", path, e))?);
    let bytes = Zeroizing::new(hex::decode(String::from_utf8_lossy(&text).trim()).map_err(
        |e| Error::Key {
            path: path.to_owned(),
            reason: format!("security secret is not hex: {e}"),
        },
    )?);
    if bytes.len() < secureev_uds::security::MIN_SECRET_LEN {
        return Err(Error::Key {
            path: path.to_owned(),
            reason: format!(
                "security secret is {} bytes; at least {} are required",
                bytes.len(),
                secureev_uds::security::MIN_SECRET_LEN
            ),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.signing.keyid(), b.signing.keyid());
        assert_eq!(a.decryption.public(), b.decryption.public());
        for f in [SIGNING_KEY_FILE, DECRYPTION_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        std::fs::write(dir.path().join("s"), "00112233").unwrap();
        assert!(read_secret(&dir.path().join("s")).is_err(), "too short");
    }
}
