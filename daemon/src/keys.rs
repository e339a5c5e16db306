//! The Primary's keys: provisioned on first start, loaded afterwards.
//!
//! `[keys] dir` holds two PKCS#8 PEM files, mode 0600:
//!
//! - [`SIGNING_KEY_FILE`]: the P-256 key that signs ECU version reports and
//!   vehicle manifests (its `did:key` identifies the ECU to the backend);
//! - [`DECRYPTION_KEY_FILE`]: the X25519 key that unwraps image keys. Uptane 2.1
//!   §5.4.1 (3): "there SHOULD be separate keys for encryption and signing."
//!
//! When they may be created at all is `[keys] provision` ([`load_for`]): by
//! default only on the first start, while the state directory holds no trusted
//! metadata, so that a missing key directory on a vehicle that has run before
//! (an unmounted partition, a mistyped `dir`) stops start-up instead of
//! silently giving the vehicle a new identity the backend does not know.
//!
//! Each is created only if absent, atomically and without ever overwriting an
//! existing key ([`crate::fs::atomic_create_new`]), so a kill during
//! provisioning leaves either no key or a whole one, and two racing starts agree
//! on one key.

use crate::config::{KeyProvisioning, KeysConfig};
use crate::error::{Error, Result};
use crate::fs::{atomic_create_new, create_dir, read_optional};
use crate::store::has_trusted_state;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use secureev_uptane::encryption::{EcuDecryptionKey, EcuEncryptionPublicKey};
use secureev_uptane::SigningKey;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// File name of the P-256 signing key.
pub const SIGNING_KEY_FILE: &str = "primary-signing.pem";
/// File name of the X25519 decryption key.
pub const DECRYPTION_KEY_FILE: &str = "primary-decryption.pem";
/// Mode of key files.
pub const KEY_FILE_MODE: u32 = 0o600;

/// DER prefix of a PKCS#8 v1 X25519 private key (RFC 8410): SEQUENCE, version 0,
/// AlgorithmIdentifier id-X25519 (1.3.101.110), OCTET STRING { OCTET STRING (32) }.
const X25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// The Primary's two private keys.
pub struct PrimaryKeys {
    /// P-256 signing key.
    pub signing: SigningKey,
    /// X25519 decryption key.
    pub decryption: EcuDecryptionKey,
}

impl std::fmt::Debug for PrimaryKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryKeys")
            .field("signing", &self.signing.keyid())
            .field("decryption", &self.decryption)
            .finish()
    }
}

/// Which keys [`load_or_provision`] created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Provisioned {
    /// The signing key was created now.
    pub signing: bool,
    /// The decryption key was created now.
    pub decryption: bool,
}

impl PrimaryKeys {
    /// The signing key's `did:key` (`did:key:zDn...`).
    pub fn did(&self) -> String {
        secureev_uptane::did::to_did(&self.signing.verifying_key())
    }

    /// The public half of the decryption key, to register with the Director.
    pub fn encryption_public(&self) -> EcuEncryptionPublicKey {
        self.decryption.public()
    }
}

/// Encode an X25519 secret as PKCS#8 PEM (the format `openssl genpkey -algorithm
/// X25519` writes).
pub fn x25519_to_pem(key: &EcuDecryptionKey) -> Zeroizing<String> {
    let mut der = Zeroizing::new(Vec::with_capacity(48));
    der.extend_from_slice(&X25519_PKCS8_PREFIX);
    der.extend_from_slice(key.to_bytes().as_slice());
    Zeroizing::new(format!(
        "{PEM_BEGIN}\n{}\n{PEM_END}\n",
        BASE64.encode(&der[..])
    ))
}

/// Decode a PKCS#8 PEM X25519 secret.
pub fn x25519_from_pem(pem: &str) -> std::result::Result<EcuDecryptionKey, String> {
    let body: String = pem
        .trim()
        .strip_prefix(PEM_BEGIN)
        .and_then(|s| s.strip_suffix(PEM_END))
        .ok_or("not a PEM PRIVATE KEY")?
        .split_whitespace()
        .collect();
    let der = Zeroizing::new(
        BASE64
            .decode(body.as_bytes())
            .map_err(|e| format!("bad base64: {e}"))?,
    );
    if der.len() != 48 || der[..16] != X25519_PKCS8_PREFIX {
        return Err("not a PKCS#8 X25519 private key".into());
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(&der[16..]);
    Ok(EcuDecryptionKey::from_bytes(&secret))
}

fn read_key(path: &Path) -> Result<Option<Zeroizing<String>>> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(None);
    };
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "key file is readable by others; it should be 0600");
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| Error::Key {
        path: path.to_owned(),
        reason: "not UTF-8 PEM".into(),
    })?;
    Ok(Some(Zeroizing::new(text)))
}

/// Load the Primary's keys as `keys` says, creating missing ones only where
/// [`KeyProvisioning`] allows it (see the module documentation); `state_dir`
/// tells whether this is the first start.
pub fn load_for(keys: &KeysConfig, state_dir: &Path) -> Result<(PrimaryKeys, Provisioned)> {
    let dir = &keys.dir;
    let missing: Vec<PathBuf> = [SIGNING_KEY_FILE, DECRYPTION_KEY_FILE]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| !p.exists())
        .collect();
    let Some(first_missing) = missing.first() else {
        return Ok((load(dir)?, Provisioned::default()));
    };
    let refuse = |why: String| Error::Key {
        path: first_missing.clone(),
        reason: format!(
            "missing (keys.dir = {:?}); {why}",
            dir.display().to_string()
        ),
    };
    match keys.provision {
        KeyProvisioning::Never => Err(refuse(
            "keys.provision = \"never\": keys are provisioned at the factory, never created here"
                .into(),
        )),
        KeyProvisioning::FirstBoot if has_trusted_state(state_dir) => Err(refuse(format!(
            "the state in {:?} shows that this vehicle has started before, so a new identity \
             is not created (keys.provision = \"first-boot\"); restore the keys or the key \
             partition",
            state_dir.display().to_string()
        ))),
        KeyProvisioning::FirstBoot => load_or_provision(dir),
    }
}

/// Load the Primary's keys from `dir`, creating whichever is missing.
pub fn load_or_provision(dir: &Path) -> Result<(PrimaryKeys, Provisioned)> {
    create_dir(dir)?;
    let mut provisioned = Provisioned::default();

    let signing_path = dir.join(SIGNING_KEY_FILE);
    if !signing_path.exists() {
        let key = SigningKey::generate_p256();
        provisioned.signing =
            atomic_create_new(&signing_path, key.to_pkcs8_pem().as_bytes(), KEY_FILE_MODE)?;
    }
    let decryption_path = dir.join(DECRYPTION_KEY_FILE);
    if !decryption_path.exists() {
        let key = EcuDecryptionKey::generate();
        provisioned.decryption = atomic_create_new(
            &decryption_path,
            x25519_to_pem(&key).as_bytes(),
            KEY_FILE_MODE,
        )?;
    }
    // Always load what is on disk, so that a racing creator's key wins for both.
    Ok((load(dir)?, provisioned))
}

/// Load both keys from `dir`; missing or malformed keys are errors.
pub fn load(dir: &Path) -> Result<PrimaryKeys> {
    let missing = |p: PathBuf| Error::Key {
        path: p,
        reason: "missing".into(),
    };
    let signing_path = dir.join(SIGNING_KEY_FILE);
    let pem = read_key(&signing_path)?.ok_or_else(|| missing(signing_path.clone()))?;
    let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| Error::Key {
        path: signing_path.clone(),
        reason: e.to_string(),
    })?;
    if signing.as_p256().is_none() {
        return Err(Error::Key {
            path: signing_path,
            reason: "the Primary's signing key must be ECDSA P-256".into(),
        });
    }
    let decryption_path = dir.join(DECRYPTION_KEY_FILE);
    let pem = read_key(&decryption_path)?.ok_or_else(|| missing(decryption_path.clone()))?;
    let decryption = x25519_from_pem(&pem).map_err(|reason| Error::Key {
        path: decryption_path,
        reason,
    })?;
    Ok(PrimaryKeys {
        signing,
        decryption,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisions_once_then_loads_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let kdir = dir.path().join("keys");
        let (k1, p1) = load_or_provision(&kdir).unwrap();
        assert_eq!(
            p1,
            Provisioned {
                signing: true,
                decryption: true
            }
        );
        for f in [SIGNING_KEY_FILE, DECRYPTION_KEY_FILE] {
            let mode = std::fs::metadata(kdir.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        assert_eq!(
            std::fs::metadata(&kdir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let (k2, p2) = load_or_provision(&kdir).unwrap();
        assert_eq!(p2, Provisioned::default());
        assert_eq!(k1.did(), k2.did());
        assert!(k1.did().starts_with("did:key:zDn"), "{}", k1.did());
        assert_eq!(k1.encryption_public(), k2.encryption_public());
    }

    #[test]
    fn keys_are_created_only_on_the_first_boot_or_never() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let cfg = |provision| KeysConfig {
            dir: dir.path().join("keys"),
            provision,
        };
        // "never": nothing is created, and the message names the key.
        let err = load_for(&cfg(KeyProvisioning::Never), &state).unwrap_err();
        assert!(err.to_string().contains("keys.provision"), "{err}");
        assert!(!dir.path().join("keys").exists());
        // First boot: no state yet, so the keys are created.
        let (k1, p) = load_for(&cfg(KeyProvisioning::FirstBoot), &state).unwrap();
        assert!(p.signing && p.decryption);
        // The vehicle has trusted state now; the keys vanish (a relative or
        // mistyped keys.dir, an unmounted partition): no new identity.
        std::fs::create_dir_all(state.join("metadata/director")).unwrap();
        std::fs::write(state.join("metadata/director/root.json"), b"{}").unwrap();
        let (k2, p) = load_for(&cfg(KeyProvisioning::FirstBoot), &state).unwrap();
        assert_eq!((k1.did(), p), (k2.did(), Provisioned::default()));
        std::fs::remove_dir_all(dir.path().join("keys")).unwrap();
        let err = load_for(&cfg(KeyProvisioning::FirstBoot), &state).unwrap_err();
        assert!(err.to_string().contains("keys.dir"), "{err}");
        assert!(err.to_string().contains("started before"), "{err}");
        assert!(!dir.path().join("keys").exists());
        // An existing pair loads whatever the setting says.
        load_or_provision(&dir.path().join("keys")).unwrap();
        load_for(&cfg(KeyProvisioning::Never), &state).unwrap();
    }

    #[test]
    fn a_missing_half_is_created_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, _) = load_or_provision(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(DECRYPTION_KEY_FILE)).unwrap();
        let (k2, p) = load_or_provision(dir.path()).unwrap();
        assert_eq!(
            p,
            Provisioned {
                signing: false,
                decryption: true
            }
        );
        assert_eq!(k1.did(), k2.did());
        assert_ne!(k1.encryption_public(), k2.encryption_public());
    }

    #[test]
    fn x25519_pem_round_trips_and_rejects_garbage() {
        let k = EcuDecryptionKey::generate();
        let pem = x25519_to_pem(&k);
        assert!(pem.starts_with(PEM_BEGIN));
        assert_eq!(x25519_from_pem(&pem).unwrap().public(), k.public());
        assert!(
            x25519_from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_err()
        );
        // A P-256 PKCS#8 key is not an X25519 key.
        let p256 = SigningKey::generate_p256().to_pkcs8_pem();
        assert!(x25519_from_pem(&p256).is_err());
    }

    #[test]
    fn malformed_and_non_p256_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_provision(dir.path()).unwrap();
        let ed = SigningKey::generate_ed25519().to_pkcs8_pem();
        std::fs::write(dir.path().join(SIGNING_KEY_FILE), ed.as_bytes()).unwrap();
        assert!(matches!(load(dir.path()), Err(Error::Key { .. })));
        std::fs::write(dir.path().join(SIGNING_KEY_FILE), b"junk").unwrap();
        assert!(matches!(load(dir.path()), Err(Error::Key { .. })));
    }
}
