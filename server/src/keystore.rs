//! Where the server's online keys and its KEK live: PEM files under
//! `<data_dir>/keys/` (the default) or a PKCS#11 token ([`crate::hsm`]).
//!
//! Everything that signs online (the Director's four roles, the Image
//! repository's snapshot and timestamp, the audit trail) holds
//! [`OnlineKey`]s and signs through [`sign_metadata`]/[`sign_value`], which
//! build the same envelope as [`secureev_uptane::builder::sign_metadata`];
//! the offline Image root and targets keys stay `SigningKey`s in PEM files
//! on the signing station. A role's keys are a directory in the PEM store
//! and a label in the token; rotations generate, promote and retire keys
//! through [`KeyStore`] either way.

use crate::config::{Config, KeyStoreKind};
use crate::error::{Error, Result};
use crate::hsm::Token;
use crate::layout;
use crate::secrets::Kek;
use secureev_uptane::metadata::Signature;
use secureev_uptane::{Key, PublicKey, SigningKey};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An online signing key: a PEM key in memory or a key pair in a token.
#[derive(Clone)]
pub struct OnlineKey {
    key: Key,
    keyid: String,
    public: PublicKey,
    signer: Signer,
}

#[derive(Clone)]
enum Signer {
    Pem(Box<SigningKey>),
    Token(Arc<Token>),
}

impl std::fmt::Debug for OnlineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineKey")
            .field("keyid", &self.keyid)
            .field(
                "store",
                &match self.signer {
                    Signer::Pem(_) => "pem",
                    Signer::Token(..) => "pkcs11",
                },
            )
            .finish()
    }
}

impl From<SigningKey> for OnlineKey {
    fn from(k: SigningKey) -> Self {
        OnlineKey {
            key: k.public_key().clone(),
            keyid: k.keyid().to_owned(),
            public: k.verifying_key(),
            signer: Signer::Pem(Box::new(k)),
        }
    }
}

impl OnlineKey {
    /// A fresh in-memory P-256 key (tests, `init`).
    pub fn generate_p256() -> Self {
        SigningKey::generate_p256().into()
    }

    fn token(token: Arc<Token>, k: crate::hsm::TokenKey) -> Result<Self> {
        let key = k.public.to_key();
        let keyid = key.keyid()?;
        Ok(OnlineKey {
            key,
            keyid,
            public: k.public,
            signer: Signer::Token(token),
        })
    }

    /// The key id (hex SHA-256 of the canonical key object).
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The public key object for metadata.
    pub fn public_key(&self) -> &Key {
        &self.key
    }

    /// The parsed public key.
    pub fn verifying_key(&self) -> &PublicKey {
        &self.public
    }

    /// Whether the private half is in a token.
    pub fn in_token(&self) -> bool {
        matches!(self.signer, Signer::Token(..))
    }

    /// Sign `msg`: ECDSA P-256 over SHA-256 as DER (Ed25519 for PEM
    /// Ed25519 keys).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        match &self.signer {
            Signer::Pem(k) => Ok(k.sign_raw(msg)),
            Signer::Token(t) => t.sign_p256(&self.keyid, msg),
        }
    }

    /// [`OnlineKey::sign`] as the hex TUF metadata carries.
    pub fn sign_hex(&self, msg: &[u8]) -> Result<String> {
        Ok(hex::encode(self.sign(msg)?))
    }
}

/// Public key objects of online keys.
pub fn public_keys(keys: &[OnlineKey]) -> Vec<Key> {
    keys.iter().map(|k| k.public_key().clone()).collect()
}

/// Sign a `signed` value with `keys` and return the envelope as JSON bytes
/// (pretty-printed; signatures cover the canonical form), as the core's
/// `builder::sign_metadata` does.
pub fn sign_metadata<T: Serialize>(signed: &T, keys: &[&OnlineKey]) -> Result<Vec<u8>> {
    let value = serde_json::to_value(signed).map_err(|e| Error::Internal(e.to_string()))?;
    sign_value(value, keys)
}

/// Sign a raw JSON `signed` value.
pub fn sign_value(signed: Value, keys: &[&OnlineKey]) -> Result<Vec<u8>> {
    let canonical = secureev_uptane::canonical::to_canonical(&signed)?;
    let signatures = keys
        .iter()
        .map(|k| {
            Ok(Signature {
                keyid: k.keyid().to_owned(),
                sig: k.sign_hex(&canonical)?,
                unrecognized: Map::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let env = serde_json::json!({ "signatures": signatures, "signed": signed });
    serde_json::to_vec_pretty(&env).map_err(|e| Error::Internal(e.to_string()))
}

/// The online key store of a running server.
#[derive(Debug, Clone)]
pub enum KeyStore {
    /// PEM files under this `keys/` directory.
    Files(PathBuf),
    /// A PKCS#11 token.
    Token(Arc<Token>),
}

impl KeyStore {
    /// The store `config` names (`key_store`), opened: for `pkcs11` the
    /// module is loaded and the token logged in to.
    pub fn open(config: &Config) -> Result<Self> {
        match (config.key_store, &config.pkcs11) {
            (KeyStoreKind::Pem, _) => Ok(KeyStore::Files(config.data_dir.join(layout::KEYS))),
            (KeyStoreKind::Pkcs11, Some(p)) => Ok(KeyStore::Token(Token::open(p)?)),
            (KeyStoreKind::Pkcs11, None) => Err(Error::Config(
                "key_store = \"pkcs11\" needs a [pkcs11] table".into(),
            )),
        }
    }

    /// The PEM store of a data directory.
    pub fn files(data_dir: &Path) -> Self {
        KeyStore::Files(data_dir.join(layout::KEYS))
    }

    /// Every key of a role; none is an error (a role without keys cannot sign).
    pub fn load(&self, repo: &str, role: &str) -> Result<Vec<OnlineKey>> {
        let keys = self.load_optional(repo, role)?;
        if keys.is_empty() {
            return Err(Error::Config(format!(
                "no {repo} {role} keys in {}",
                self.describe(repo, role)
            )));
        }
        Ok(keys)
    }

    /// Every key of a role (pending, retired: may be none).
    pub fn load_optional(&self, repo: &str, role: &str) -> Result<Vec<OnlineKey>> {
        match self {
            KeyStore::Files(base) => {
                if !layout::role_dir(base, repo, role).exists() {
                    return Ok(Vec::new());
                }
                match layout::load_keys(base, repo, role) {
                    Ok(keys) => Ok(keys.into_iter().map(OnlineKey::from).collect()),
                    Err(Error::Config(_)) => Ok(Vec::new()),
                    Err(e) => Err(e),
                }
            }
            KeyStore::Token(t) => t
                .role_keys(repo, role)?
                .into_iter()
                .map(|k| OnlineKey::token(t.clone(), k))
                .collect(),
        }
    }

    /// Where a role's keys are, for messages.
    pub fn describe(&self, repo: &str, role: &str) -> String {
        match self {
            KeyStore::Files(base) => layout::role_dir(base, repo, role).display().to_string(),
            KeyStore::Token(t) => format!("the PKCS#11 token (label {})", t.role_label(repo, role)),
        }
    }

    /// A new P-256 key for `repo`/`role`, stored at once: a 0600 PEM file,
    /// or a key pair generated inside the token.
    pub fn generate(&self, repo: &str, role: &str) -> Result<OnlineKey> {
        match self {
            KeyStore::Files(base) => {
                let k = SigningKey::generate_p256();
                layout::store_key(base, repo, role, &k)?;
                Ok(k.into())
            }
            KeyStore::Token(t) => OnlineKey::token(t.clone(), t.generate_p256(repo, role)?),
        }
    }

    /// After a rotation: make `keys` the role's keys. Pending keys in `keys`
    /// join the role; the role's keys not in `keys` move to `<role>.retired`.
    pub fn promote(&self, repo: &str, role: &str, keys: &[OnlineKey]) -> Result<()> {
        match self {
            KeyStore::Files(base) => {
                let wanted: Vec<&str> = keys.iter().map(|k| k.keyid()).collect();
                layout::promote_key_ids(base, repo, role, &wanted)
            }
            KeyStore::Token(t) => {
                let wanted = |id: &str| keys.iter().any(|k| k.keyid() == id);
                for k in self.load_optional(repo, &format!("{role}.pending"))? {
                    if wanted(k.keyid()) {
                        t.relabel(k.keyid(), repo, role)?;
                    }
                }
                for k in self.load_optional(repo, role)? {
                    if !wanted(k.keyid()) {
                        t.relabel(k.keyid(), repo, &format!("{role}.retired"))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// The TLS server key in the token (`<prefix>/tls/server`), if it holds
    /// one; always `None` for the PEM store (the key is `tls_key`'s file).
    pub fn tls_key(&self) -> Result<Option<OnlineKey>> {
        match self {
            KeyStore::Files(_) => Ok(None),
            KeyStore::Token(_) => Ok(self.load_optional(TLS_REPO, TLS_ROLE)?.pop()),
        }
    }

    /// The key-encryption key, made on first use (a 0600 file, or an AES
    /// key generated inside the token).
    pub fn kek(&self) -> Result<Kek> {
        match self {
            KeyStore::Files(base) => Kek::load_or_create_file(base),
            KeyStore::Token(t) => {
                if t.kek()?.is_none() {
                    t.generate_kek()?;
                }
                Ok(Kek::in_token(t.clone()))
            }
        }
    }
}

/// Key-store "repository" and role of the TLS server key in a token.
pub const TLS_REPO: &str = "tls";
/// See [`TLS_REPO`].
pub const TLS_ROLE: &str = "server";

/// Roles whose keys `hsm import` moves into the token, with their pending
/// and retired sets.
pub const ONLINE_ROLES: [(&str, &str); 7] = [
    (crate::repo::DIRECTOR, "root"),
    (crate::repo::DIRECTOR, "targets"),
    (crate::repo::DIRECTOR, "snapshot"),
    (crate::repo::DIRECTOR, "timestamp"),
    (crate::repo::IMAGE, "snapshot"),
    (crate::repo::IMAGE, "timestamp"),
    (crate::audit::AUDIT_REPO, crate::audit::AUDIT_ROLE),
];

/// Online key files and the KEK file still under `<data_dir>/keys/` (with
/// `key_store = "pkcs11"` there should be none).
pub fn files_left(data_dir: &Path) -> Vec<PathBuf> {
    let base = data_dir.join(layout::KEYS);
    let mut out = Vec::new();
    for (repo, role) in ONLINE_ROLES {
        for set in [
            role.to_owned(),
            format!("{role}.pending"),
            format!("{role}.retired"),
        ] {
            if let Ok(entries) = std::fs::read_dir(layout::role_dir(&base, repo, &set)) {
                out.extend(
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "pem")),
                );
            }
        }
    }
    let kek = data_dir.join(crate::secrets::KEK_FILE);
    if kek.exists() {
        out.push(kek);
    }
    out.sort();
    out
}

/// What `hsm import` moved.
#[derive(Debug, Default, Clone)]
pub struct ImportReport {
    /// `(label, keyid)` of every key now in the token.
    pub keys: Vec<(String, String)>,
    /// What happened to the KEK: `imported`, `already in the token (checked
    /// equal to keys/kek)`, or `no keys/kek` (the server makes one in the
    /// token on first use).
    pub kek: &'static str,
    /// Files removed from the data directory.
    pub removed: Vec<PathBuf>,
    /// The TLS key file is not a P-256 PKCS#8 key and stays a file.
    pub tls_left: bool,
}

/// Move the PEM online keys and the KEK file of `data_dir` into `token`:
/// each key is imported (not extractable), checked to sign as the file's key
/// does and to carry the same key id, the KEK checked by sealing in the
/// token and opening with the file; only then are the files removed.
pub fn import_into_token(data_dir: &Path, token: &Arc<Token>) -> Result<ImportReport> {
    let base = data_dir.join(layout::KEYS);
    let mut report = ImportReport {
        kek: "no keys/kek (the server makes one in the token)",
        ..ImportReport::default()
    };
    let mut files = Vec::new();
    for (repo, role) in ONLINE_ROLES {
        for set in [
            role.to_owned(),
            format!("{role}.pending"),
            format!("{role}.retired"),
        ] {
            let dir = layout::role_dir(&base, repo, &set);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                .collect();
            paths.sort();
            for p in paths {
                let pem = zeroize::Zeroizing::new(
                    std::fs::read_to_string(&p)
                        .map_err(|e| Error::io(format!("reading {}", p.display()), e))?,
                );
                let file_key = SigningKey::from_pkcs8_pem(&pem)?;
                let tk = token.import_p256(repo, &set, &file_key)?;
                let online = OnlineKey::token(token.clone(), tk)?;
                if online.keyid() != file_key.keyid() {
                    return Err(Error::hsm(
                        format!("importing {}", p.display()),
                        "the token's key has another key id",
                    ));
                }
                let probe = b"secureev hsm import probe";
                let sig = hex::decode(online.sign_hex(probe)?)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                if !file_key.verifying_key().verify(probe, &sig) {
                    return Err(Error::hsm(
                        format!("importing {}", p.display()),
                        "the token's signature does not verify with the file's key",
                    ));
                }
                report
                    .keys
                    .push((token.role_label(repo, &set), online.keyid().to_owned()));
                files.push(p);
            }
        }
    }
    // The TLS server key, when it is a P-256 PKCS#8 key at its default place
    // (`init` makes one); another kind stays a file.
    let tls_file = data_dir.join(layout::SERVER_KEY);
    if tls_file.exists() {
        let pem = zeroize::Zeroizing::new(
            std::fs::read_to_string(&tls_file)
                .map_err(|e| Error::io(format!("reading {}", tls_file.display()), e))?,
        );
        match SigningKey::from_pkcs8_pem(&pem) {
            Ok(k) if k.as_p256().is_some() => {
                let tk = token.import_p256(TLS_REPO, TLS_ROLE, &k)?;
                let online = OnlineKey::token(token.clone(), tk)?;
                let probe = b"secureev hsm import probe";
                if online.keyid() != k.keyid()
                    || !k.verifying_key().verify(probe, &online.sign(probe)?)
                {
                    return Err(Error::hsm(
                        format!("importing {}", tls_file.display()),
                        "the token's key does not sign as the file's",
                    ));
                }
                report.keys.push((
                    token.role_label(TLS_REPO, TLS_ROLE),
                    online.keyid().to_owned(),
                ));
                files.push(tls_file);
            }
            _ => report.tls_left = true,
        }
    }
    let kek_file = data_dir.join(crate::secrets::KEK_FILE);
    if kek_file.exists() {
        let local = Kek::load_or_create_file(&base)?;
        report.kek = "already in the token (checked equal to keys/kek)";
        if token.kek()?.is_none() {
            report.kek = "imported";
            token.import_kek(
                local
                    .file_bytes()
                    .ok_or_else(|| Error::Internal("a KEK file without bytes".into()))?,
            )?;
        }
        let in_token = Kek::in_token(token.clone());
        let sealed = in_token.seal("hsm-import-probe", "cHJvYmU=")?;
        if local.unseal("hsm-import-probe", &sealed)? != "cHJvYmU=" {
            return Err(Error::hsm(
                "importing the KEK",
                "the token's KEK differs from keys/kek",
            ));
        }
        files.push(kek_file);
    }
    for f in files {
        std::fs::remove_file(&f).map_err(|e| Error::io(format!("removing {}", f.display()), e))?;
        report.removed.push(f);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The server's envelope is the core's: same bytes for the same key.
    #[test]
    fn envelope_matches_the_cores() {
        let k = SigningKey::p256_from_bytes(&[7; 32]).unwrap();
        let v = serde_json::json!({ "_type": "timestamp", "version": 1 });
        let ours = sign_value(v.clone(), &[&OnlineKey::from(k.clone())]).unwrap();
        let core = secureev_uptane::builder::sign_value(v, &[&k]).unwrap();
        let a: Value = serde_json::from_slice(&ours).unwrap();
        let b: Value = serde_json::from_slice(&core).unwrap();
        assert_eq!(a["signed"], b["signed"]);
        assert_eq!(a["signatures"][0]["keyid"], b["signatures"][0]["keyid"]);
        let sig = hex::decode(a["signatures"][0]["sig"].as_str().unwrap()).unwrap();
        let canonical = secureev_uptane::canonical::to_canonical(&a["signed"]).unwrap();
        assert!(k.verifying_key().verify(&canonical, &sig));
    }

    #[test]
    fn file_store_generates_promotes_and_retires() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::files(dir.path());
        let a = store.generate("director", "targets").unwrap();
        let b = store.generate("director", "targets.pending").unwrap();
        assert!(store
            .load_optional("director", "nothing")
            .unwrap()
            .is_empty());
        assert!(store.load("director", "nothing").is_err());
        store
            .promote("director", "targets", std::slice::from_ref(&b))
            .unwrap();
        let ids = |role| -> Vec<String> {
            store
                .load_optional("director", role)
                .unwrap()
                .iter()
                .map(|k| k.keyid().to_owned())
                .collect()
        };
        assert_eq!(ids("targets"), vec![b.keyid().to_owned()]);
        assert_eq!(ids("targets.retired"), vec![a.keyid().to_owned()]);
        assert!(ids("targets.pending").is_empty());
        // What `serve` warns about with key_store = "pkcs11".
        assert_eq!(files_left(dir.path()).len(), 2);
        store.kek().unwrap();
        assert_eq!(files_left(dir.path()).len(), 3);
    }
}
