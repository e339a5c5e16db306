//! A PKCS#11 token holding the server's online keys and its key-encryption
//! key, through the `cryptoki` crate (the module is loaded at run time).
//!
//! Objects, all `CKA_TOKEN`, `CKA_PRIVATE`, private and secret ones
//! `CKA_SENSITIVE` and not `CKA_EXTRACTABLE`:
//!
//! | object | `CKA_LABEL` | `CKA_ID` |
//! |---|---|---|
//! | P-256 private key + public key of a role | `<prefix>/<repo>/<role>` (`secureev/director/targets`, `secureev/image/timestamp.pending`, `secureev/audit/log`) | the 32 bytes of the TUF key id |
//! | AES-256 key-encryption key | `<prefix>/kek` | `kek` |
//!
//! The label plays the part of the role's directory in the PEM key store:
//! every private key with the role's label signs for it; a rotation relabels
//! (`…/targets.pending` → `…/targets`, → `…/targets.retired`). Signatures are
//! `CKM_ECDSA` over the SHA-256 the server computes; the token's `r || s` is
//! re-encoded as low-S ASN.1 DER, the form our metadata and request
//! signatures carry (the core also accepts `r || s`, but securesystemslib
//! expects DER). The KEK seals with `CKM_AES_GCM` inside the token (12-byte
//! IV from the server, 128-bit tag), so a sealed content key has the same
//! `kek1:` format as with a KEK file.
//!
//! One logged-in read-write session serves every operation, behind a mutex:
//! the server signs only when metadata changes or nears expiry, never per
//! check-in. Before each operation the session is checked: a session the
//! token closed is reopened and a lost login renewed with the PIN read at
//! start.

use crate::config::Pkcs11Config;
use crate::error::{Error, Result};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::types::AuthPin;
use secureev_uptane::{PublicKey, SigningKey};
use std::sync::{Arc, Mutex};

/// DER of the OID prime256v1 (1.2.840.10045.3.1.7), `CKA_EC_PARAMS` of P-256.
const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `CKA_ID` of the KEK.
const KEK_ID: &[u8] = b"kek";

/// An open, logged-in token.
pub struct Token {
    session: Mutex<Session>,
    prefix: String,
    token_label: String,
    slot: cryptoki::slot::Slot,
    // Kept to log in again when the token drops the login or the session
    // (an HSM restart, an idle timeout of a network HSM).
    pin: zeroize::Zeroizing<String>,
    ctx: Pkcs11,
    // Handles of keys by CKA_ID (the KEK by its label), valid while the
    // login lasts: cleared whenever it is renewed (a handle may then name
    // another object), refound when the token calls one invalid.
    handles: Mutex<std::collections::HashMap<Vec<u8>, ObjectHandle>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("token_label", &self.token_label)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A P-256 key pair in the token.
#[derive(Debug, Clone)]
pub struct TokenKey {
    /// The private key object.
    pub handle: ObjectHandle,
    /// Its public key.
    pub public: PublicKey,
    /// Its label (the role it is in).
    pub label: String,
}

fn p11(op: impl Into<String>) -> impl FnOnce(cryptoki::error::Error) -> Error {
    let op = op.into();
    move |e| Error::hsm(op, e)
}

impl Token {
    /// Load the module, find the token by label and log in as its user.
    pub fn open(cfg: &Pkcs11Config) -> Result<Arc<Token>> {
        let ctx = Pkcs11::new(&cfg.module)
            .map_err(p11(format!("loading module {}", cfg.module.display())))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            // Another Token in this process (a test, `hsm import`) initialised it.
            Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(Error::hsm("C_Initialize", e)),
        }
        let mut slot = None;
        for s in ctx
            .get_slots_with_initialized_token()
            .map_err(p11("listing slots"))?
        {
            let info = ctx.get_token_info(s).map_err(p11("reading token info"))?;
            if info.label().trim_end() == cfg.token_label {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| {
            Error::Config(format!(
                "no initialised PKCS#11 token labelled {:?} in {}",
                cfg.token_label,
                cfg.module.display()
            ))
        })?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(p11("opening a session"))?;
        let pin = cfg.read_pin()?;
        login(&session, &pin)?;
        Ok(Arc::new(Token {
            session: Mutex::new(session),
            prefix: cfg.label_prefix.clone(),
            token_label: cfg.token_label.clone(),
            slot,
            pin,
            ctx,
            handles: Mutex::new(std::collections::HashMap::new()),
        }))
    }

    /// Run `f` on the session, logged in: a session the token dropped is
    /// reopened and a lost login renewed first (one `C_GetSessionInfo` per
    /// operation; the server signs rarely).
    fn with<T>(&self, f: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        let mut guard = match self.session.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        match guard.get_session_info() {
            Ok(info) if info.session_state() == SessionState::RwUser => {}
            Ok(info) => {
                tracing::warn!(state = ?info.session_state(), "PKCS#11 login lost; logging in again");
                self.forget_handles();
                login(&guard, &self.pin)?;
            }
            Err(e) => {
                tracing::warn!(error = %e, "PKCS#11 session lost; opening a new one");
                let session = self
                    .ctx
                    .open_rw_session(self.slot)
                    .map_err(p11("reopening a session"))?;
                login(&session, &self.pin)?;
                self.forget_handles();
                *guard = session;
            }
        }
        f(&guard)
    }

    fn forget_handles(&self) {
        match self.handles.lock() {
            Ok(mut h) => h.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
    }

    /// Run `op` on the object cached under `key` (found by `find` when not
    /// cached); when the token calls the handle invalid, find it again and
    /// run `op` once more.
    fn on_object<T>(
        &self,
        s: &Session,
        key: &[u8],
        find: impl Fn(&Session) -> Result<ObjectHandle>,
        op: impl Fn(ObjectHandle) -> cryptoki::error::Result<T>,
        what: &str,
    ) -> Result<T> {
        let lookup = |s: &Session| -> Result<ObjectHandle> {
            let mut cache = self.handles.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = cache.get(key) {
                return Ok(*h);
            }
            let h = find(s)?;
            cache.insert(key.to_vec(), h);
            Ok(h)
        };
        match op(lookup(s)?) {
            Ok(v) => Ok(v),
            Err(cryptoki::error::Error::Pkcs11(
                RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid,
                _,
            )) => {
                self.handles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(key);
                op(lookup(s)?).map_err(p11(what))
            }
            Err(e) => Err(Error::hsm(what, e)),
        }
    }

    /// The label of a role's keys: `<prefix>/<repo>/<role>`.
    pub fn role_label(&self, repo: &str, role: &str) -> String {
        format!("{}/{repo}/{role}", self.prefix)
    }

    fn kek_label(&self) -> String {
        format!("{}/kek", self.prefix)
    }

    /// Every key pair labelled for `repo`/`role`, ordered by key id.
    pub fn role_keys(&self, repo: &str, role: &str) -> Result<Vec<TokenKey>> {
        let label = self.role_label(repo, role);
        self.with(|s| {
            let handles = s
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::Label(label.clone().into_bytes()),
                ])
                .map_err(p11(format!("finding {label} keys")))?;
            let mut out = Vec::new();
            for h in handles {
                let id = object_id(s, h)?;
                let public = public_key_of(s, &id)?;
                let keyid = public.to_key().keyid()?;
                if hex::encode(&id) != keyid {
                    return Err(Error::hsm(
                        format!("reading {label}"),
                        format!(
                            "CKA_ID {} is not the key id {keyid} of its public key",
                            hex::encode(&id)
                        ),
                    ));
                }
                out.push(TokenKey {
                    handle: h,
                    public,
                    label: label.clone(),
                });
            }
            out.sort_by_key(|k| k.public.to_key().keyid().unwrap_or_default());
            Ok(out)
        })
    }

    /// Generate a P-256 key pair inside the token for `repo`/`role`; the
    /// private half is not extractable.
    pub fn generate_p256(&self, repo: &str, role: &str) -> Result<TokenKey> {
        let label = self.role_label(repo, role);
        self.with(|s| {
            let (pub_h, priv_h) = s
                .generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(false),
                        Attribute::Verify(true),
                        Attribute::EcParams(P256_EC_PARAMS.to_vec()),
                        Attribute::Label(label.clone().into_bytes()),
                    ],
                    &private_template(&label, None),
                )
                .map_err(p11(format!("generating a key for {label}")))?;
            let point = s
                .get_attributes(pub_h, &[AttributeType::EcPoint])
                .map_err(p11("reading the new public key"))?;
            let public = point
                .iter()
                .find_map(|a| match a {
                    Attribute::EcPoint(p) => Some(parse_ec_point(p)),
                    _ => None,
                })
                .ok_or_else(|| Error::hsm("reading the new public key", "no CKA_EC_POINT"))??;
            let id = hex::decode(public.to_key().keyid()?)
                .map_err(|e| Error::Internal(e.to_string()))?;
            for h in [pub_h, priv_h] {
                s.update_attributes(h, &[Attribute::Id(id.clone())])
                    .map_err(p11("setting CKA_ID of the new key"))?;
            }
            Ok(TokenKey {
                handle: priv_h,
                public,
                label: label.clone(),
            })
        })
    }

    /// Import a P-256 PEM key into the token for `repo`/`role` (migration
    /// from the PEM key store). A key already there (same key id and label)
    /// is left alone.
    pub fn import_p256(&self, repo: &str, role: &str, key: &SigningKey) -> Result<TokenKey> {
        let label = self.role_label(repo, role);
        let sk = key
            .as_p256()
            .ok_or_else(|| Error::Config(format!("{label}: only P-256 keys go into the token")))?;
        if let Some(k) = self
            .role_keys(repo, role)?
            .into_iter()
            .find(|k| k.public.to_key().keyid().ok().as_deref() == Some(key.keyid()))
        {
            return Ok(k);
        }
        let id = hex::decode(key.keyid()).map_err(|e| Error::Internal(e.to_string()))?;
        let point = sk.verifying_key().to_encoded_point(false);
        let mut ec_point = vec![0x04, point.as_bytes().len() as u8];
        ec_point.extend_from_slice(point.as_bytes());
        let scalar = zeroize::Zeroizing::new(sk.to_bytes().to_vec());
        self.with(|s| {
            s.create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::EcParams(P256_EC_PARAMS.to_vec()),
                Attribute::EcPoint(ec_point),
                Attribute::Label(label.clone().into_bytes()),
                Attribute::Id(id.clone()),
            ])
            .map_err(p11(format!("importing the public key of {label}")))?;
            let mut t = private_template(&label, Some(id));
            t.extend([
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(P256_EC_PARAMS.to_vec()),
                Attribute::Value(scalar.to_vec()),
            ]);
            s.create_object(&t)
                .map_err(p11(format!("importing the private key of {label}")))?;
            Ok(())
        })?;
        self.role_keys(repo, role)?
            .into_iter()
            .find(|k| k.public.to_key().keyid().ok().as_deref() == Some(key.keyid()))
            .ok_or_else(|| Error::hsm(format!("importing {label}"), "key not found after import"))
    }

    /// Move key pair `keyid` to `repo`/`role` (a rotation's promotion or
    /// retirement).
    pub fn relabel(&self, keyid: &str, repo: &str, role: &str) -> Result<()> {
        let label = self.role_label(repo, role);
        let id = hex::decode(keyid).map_err(|e| Error::Internal(e.to_string()))?;
        self.with(|s| {
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                for h in s
                    .find_objects(&[Attribute::Class(class), Attribute::Id(id.clone())])
                    .map_err(p11(format!("finding key {keyid}")))?
                {
                    s.update_attributes(h, &[Attribute::Label(label.clone().into_bytes())])
                        .map_err(p11(format!("moving key {keyid} to {label}")))?;
                }
            }
            Ok(())
        })
    }

    /// Sign `msg` with the private key whose `CKA_ID` is key id `keyid`:
    /// ECDSA P-256 over SHA-256, returned as low-S DER. The key is looked up
    /// by its id for every signature: object handles do not survive a lost
    /// login (SoftHSM2 drops them) and may be reused for another object.
    pub fn sign_p256(&self, keyid: &str, msg: &[u8]) -> Result<Vec<u8>> {
        use sha2::Digest;
        let what = format!("signing with key {keyid}");
        let id = hex::decode(keyid).map_err(|e| Error::Internal(e.to_string()))?;
        let digest = sha2::Sha256::digest(msg);
        let raw = self.with(|s| {
            let find = |s: &Session| -> Result<ObjectHandle> {
                let found = s
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::KeyType(KeyType::EC),
                        Attribute::Id(id.clone()),
                    ])
                    .map_err(p11(what.clone()))?;
                match found.as_slice() {
                    [h] => Ok(*h),
                    _ => Err(Error::hsm(
                        what.clone(),
                        format!("{} private keys with this CKA_ID", found.len()),
                    )),
                }
            };
            self.on_object(
                s,
                &id,
                find,
                |h| s.sign(&Mechanism::Ecdsa, h, &digest),
                &what,
            )
        })?;
        let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|e| Error::hsm(&what, e))?;
        let sig = sig.normalize_s().unwrap_or(sig);
        Ok(sig.to_der().as_bytes().to_vec())
    }

    /// The KEK object, if the token holds one.
    pub fn kek(&self) -> Result<Option<ObjectHandle>> {
        let label = self.kek_label();
        self.with(|s| find_kek(s, &label))
    }

    /// Generate the AES-256 KEK inside the token (not extractable).
    pub fn generate_kek(&self) -> Result<ObjectHandle> {
        let label = self.kek_label();
        let mut t = secret_template(&label);
        t.push(Attribute::ValueLen(32.into()));
        t.extend(secret_flags());
        self.with(|s| {
            s.generate_key(&Mechanism::AesKeyGen, &t)
                .map_err(p11("generating the KEK"))
        })
    }

    /// Import a KEK file's 32 bytes into the token (migration).
    pub fn import_kek(&self, bytes: &[u8; 32]) -> Result<ObjectHandle> {
        let label = self.kek_label();
        let mut t = secret_template(&label);
        t.push(Attribute::Value(bytes.to_vec()));
        t.extend(secret_flags());
        self.with(|s| s.create_object(&t).map_err(p11("importing the KEK")))
    }

    /// AES-256-GCM encryption with the KEK inside the token (looked up by
    /// label each time, like signing keys); returns ciphertext ‖ tag.
    pub fn gcm_encrypt(&self, iv: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let iv = *iv;
        let label = self.kek_label();
        self.with(|s| {
            let find = |s: &Session| {
                find_kek(s, &label)?
                    .ok_or_else(|| Error::hsm("sealing with the KEK", "the token has no KEK"))
            };
            let cache_key = format!("label:{label}").into_bytes();
            let run = |key| {
                let mut iv = iv;
                let params = GcmParams::new(&mut iv, aad, 128.into())?;
                s.encrypt(&Mechanism::AesGcm(params), key, plaintext)
            };
            self.on_object(s, &cache_key, find, run, "sealing with the KEK")
        })
    }

    /// AES-256-GCM decryption inside the token of ciphertext ‖ tag; a wrong
    /// key, IV, AAD or tag is an error.
    pub fn gcm_decrypt(&self, iv: &[u8; 12], aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>> {
        let iv = *iv;
        let label = self.kek_label();
        self.with(|s| {
            let find = |s: &Session| {
                find_kek(s, &label)?
                    .ok_or_else(|| Error::hsm("opening with the KEK", "the token has no KEK"))
            };
            let cache_key = format!("label:{label}").into_bytes();
            let run = |key| {
                let mut iv = iv;
                let params = GcmParams::new(&mut iv, aad, 128.into())?;
                s.decrypt(&Mechanism::AesGcm(params), key, ciphertext)
            };
            self.on_object(s, &cache_key, find, run, "opening with the KEK")
        })
    }

    /// Every object the server's prefix labels, sorted.
    pub fn list(&self) -> Result<Vec<TokenObject>> {
        let prefix = format!("{}/", self.prefix);
        self.with(|s| {
            let mut out = Vec::new();
            for (class, name) in [
                (ObjectClass::PRIVATE_KEY, "private-key"),
                (ObjectClass::PUBLIC_KEY, "public-key"),
                (ObjectClass::SECRET_KEY, "secret-key"),
            ] {
                for h in s
                    .find_objects(&[Attribute::Class(class)])
                    .map_err(p11("listing objects"))?
                {
                    let mut wanted = vec![AttributeType::Label, AttributeType::Id];
                    if class != ObjectClass::PUBLIC_KEY {
                        wanted.extend([AttributeType::Sensitive, AttributeType::Extractable]);
                    }
                    let attrs = s
                        .get_attributes(h, &wanted)
                        .map_err(p11("reading labels"))?;
                    let mut o = TokenObject {
                        label: String::new(),
                        id: String::new(),
                        class: name,
                        sensitive: false,
                        extractable: false,
                    };
                    for a in attrs {
                        match a {
                            Attribute::Label(l) => o.label = String::from_utf8_lossy(&l).into(),
                            Attribute::Id(i) => o.id = hex::encode(i),
                            Attribute::Sensitive(b) => o.sensitive = b,
                            Attribute::Extractable(b) => o.extractable = b,
                            _ => {}
                        }
                    }
                    if o.label.starts_with(&prefix) {
                        out.push(o);
                    }
                }
            }
            out.sort_by(|a, b| (&a.label, &a.id, a.class).cmp(&(&b.label, &b.id, b.class)));
            Ok(out)
        })
    }
}

/// One of the server's objects in the token, as `hsm list` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenObject {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`, hex (the key id of a key pair).
    pub id: String,
    /// `private-key`, `public-key` or `secret-key`.
    pub class: &'static str,
    /// `CKA_SENSITIVE` (private and secret keys).
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE` (private and secret keys).
    pub extractable: bool,
}

impl std::fmt::Display for TokenObject {
    /// `label TAB id TAB class TAB flags`; flags for private and secret keys
    /// are `sensitive`/`not-sensitive` and `extractable`/`not-extractable`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\t{}\t{}\t", self.label, self.id, self.class)?;
        if self.class == "public-key" {
            return f.write_str("-");
        }
        write!(
            f,
            "{},{}",
            if self.sensitive {
                "sensitive"
            } else {
                "not-sensitive"
            },
            if self.extractable {
                "extractable"
            } else {
                "not-extractable"
            }
        )
    }
}

fn find_kek(s: &Session, label: &str) -> Result<Option<ObjectHandle>> {
    let found = s
        .find_objects(&secret_template(label))
        .map_err(p11("finding the KEK"))?;
    match found.as_slice() {
        [] => Ok(None),
        [h] => Ok(Some(*h)),
        _ => Err(Error::Config(format!(
            "the token holds {} keys labelled {label}; keep one",
            found.len()
        ))),
    }
}

fn login(session: &Session, pin: &str) -> Result<()> {
    match session.login(UserType::User, Some(&AuthPin::from(pin))) {
        Ok(()) => Ok(()),
        Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(Error::hsm("logging in to the token", e)),
    }
}

fn private_template(label: &str, id: Option<Vec<u8>>) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    if let Some(id) = id {
        t.push(Attribute::Id(id));
    }
    t
}

fn secret_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn secret_flags() -> [Attribute; 7] {
    [
        Attribute::Id(KEK_ID.to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ]
}

fn object_id(s: &Session, h: ObjectHandle) -> Result<Vec<u8>> {
    s.get_attributes(h, &[AttributeType::Id])
        .map_err(p11("reading CKA_ID"))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Id(id) => Some(id),
            _ => None,
        })
        .ok_or_else(|| Error::hsm("reading CKA_ID", "a key without CKA_ID"))
}

fn public_key_of(s: &Session, id: &[u8]) -> Result<PublicKey> {
    let handles = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(p11("finding a public key"))?;
    let h = handles.first().ok_or_else(|| {
        Error::hsm(
            "finding a public key",
            format!("no public key with CKA_ID {}", hex::encode(id)),
        )
    })?;
    let attrs = s
        .get_attributes(*h, &[AttributeType::EcPoint])
        .map_err(p11("reading CKA_EC_POINT"))?;
    attrs
        .iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(parse_ec_point(p)),
            _ => None,
        })
        .ok_or_else(|| Error::hsm("reading CKA_EC_POINT", "missing"))?
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the SEC1 point (PKCS#11
/// 2.40 §2.3.3); some modules give the bare point.
fn parse_ec_point(p: &[u8]) -> Result<PublicKey> {
    // A bare uncompressed point is 65 bytes; wrapped, 67.
    let sec1 = match p {
        [0x04, 65, rest @ ..] if rest.len() == 65 => rest,
        _ => p,
    };
    p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
        .map(PublicKey::P256)
        .map_err(|e| Error::hsm("parsing CKA_EC_POINT", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_parse_wrapped_and_bare() {
        let k = SigningKey::generate_p256();
        let p = k.as_p256().unwrap().verifying_key().to_encoded_point(false);
        let mut wrapped = vec![0x04, 65];
        wrapped.extend_from_slice(p.as_bytes());
        assert_eq!(parse_ec_point(&wrapped).unwrap(), k.verifying_key());
        assert_eq!(parse_ec_point(p.as_bytes()).unwrap(), k.verifying_key());
        assert!(parse_ec_point(&[0x04, 1, 2]).is_err());
    }
}
