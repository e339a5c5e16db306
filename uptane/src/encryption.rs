//! Image encryption: a random content key per image, wrapped for each ECU with
//! ECIES, and a chunked AES-256-GCM stream that decrypts in constant memory.
//!
//! Uptane 2.1 §4.3.1 names the *eavesdrop attack*: "Read sensitive or confidential
//! information from an update intended to be encrypted for a specific ECU". This
//! module is our answer to it, in the shape Uptane 2.1 §5.2.3.1.1 suggests: "a
//! symmetric encryption key encrypted by the ECU's asymmetric key could be included
//! in the Director repository metadata".
//!
//! - **Content key.** The backend encrypts each image once, under a fresh random
//!   [`ContentKey`]. The encrypted bytes are what the Image and Director
//!   repositories list (`length` and `hashes` cover the *encrypted* image), so a
//!   Primary can check a download for any ECU without being able to read it.
//! - **Key wrapping.** For every ECU that may install the image, the Director wraps
//!   the content key with ECIES: an ephemeral X25519 key, HKDF-SHA256 and
//!   AES-256-GCM ([`wrap_key`], scheme [`WRAP_SCHEME`]). The ECU unwraps it with its
//!   own X25519 [`EcuDecryptionKey`], which is separate from its signing key as
//!   Uptane 2.1 §5.4.1 recommends. The wrapped key is bound to the target name and
//!   the ECU serial, so it cannot be replayed onto another target or ECU.
//! - **Stream.** The image body is the STREAM construction (Hoang, Reyhanitabar,
//!   Rogaway, Vizár 2015) over AES-256-GCM ([`STREAM_SCHEME`]): fixed-size chunks,
//!   each sealed with a nonce made of a chunk counter and a last-chunk flag. Any
//!   truncation, reordering, splicing or bit flip fails authentication, and
//!   [`StreamDecryptor`] holds at most one chunk, whatever the size of the image.
//! - **Signed parameters.** Everything the ECU needs sits in the `encryption` object
//!   of the Director target's `custom` field ([`EncryptionInfo`]), which the
//!   Director signs: chunk size, the plaintext length and hashes (checked after
//!   decryption, Uptane 2.1 §5.4.3.4 step 7) and the wrapped key of each ECU.
//!
//! Like the rest of this crate, the module does no I/O. Randomness (from the OS,
//! through [`rand_core::OsRng`]) is needed only on the Director side, to make
//! content keys, ephemeral keys and stream salts; unwrapping and decrypting on the
//! ECU are deterministic. `docs/encryption.md` gives the byte format and the
//! threat model in full.
//!
//! ```
//! use secureev_uptane::encryption::{encrypt_image, ContentKey, EcuDecryptionKey, StreamDecryptor};
//!
//! # fn main() -> secureev_uptane::Result<()> {
//! // Provisioning: the ECU makes its key pair and registers the public half.
//! let ecu_key = EcuDecryptionKey::generate();
//! let registered = ecu_key.public();
//!
//! // Director: encrypt once, wrap the content key for each ECU, sign `info` into
//! // the target's custom.encryption.
//! let firmware = vec![0x5au8; 200_000];
//! let content_key = ContentKey::generate();
//! let (encrypted, mut info) = encrypt_image(&content_key, &firmware, 64 * 1024)?;
//! info.wrap_key_for("brake-ecu-2.1.bin", "ECU-0001", &content_key, &registered)?;
//!
//! // ECU: unwrap its key, decrypt the download in whatever pieces it arrives.
//! let key = info.unwrap_key_for("brake-ecu-2.1.bin", "ECU-0001", &ecu_key)?;
//! let mut decryptor = StreamDecryptor::new("brake-ecu-2.1.bin", &key, &info)?;
//! let mut plaintext = Vec::new();
//! for piece in encrypted.chunks(1500) {
//!     decryptor.update(piece, &mut plaintext)?;
//! }
//! // Nothing may be installed or activated before `finish` succeeds.
//! decryptor.finish()?;
//! assert_eq!(plaintext, firmware);
//! # Ok(())
//! # }
//! ```

use crate::error::{Error, Result};
use crate::verify::StreamVerifier;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Tag};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// JSON key of the encryption parameters in a target's `custom` object.
pub const ENCRYPTION: &str = "encryption";
/// `scheme` of a [`WrappedKey`]: ephemeral-static X25519, HKDF-SHA256, AES-256-GCM.
pub const WRAP_SCHEME: &str = "x25519-hkdf-sha256-aes256gcm";
/// `scheme` of an [`EncryptionInfo`]: the STREAM construction over AES-256-GCM with
/// the header and nonce layout of format version [`STREAM_VERSION`].
pub const STREAM_SCHEME: &str = "aes256gcm-chunked-v1";
/// The first four bytes of every encrypted image.
pub const STREAM_MAGIC: [u8; 4] = *b"SEVE";
/// The format version byte that follows the magic.
pub const STREAM_VERSION: u8 = 1;
/// Length of the stream header: magic (4), version (1), chunk size (4), salt (32).
pub const HEADER_LEN: usize = 4 + 1 + 4 + SALT_LEN;
/// Length of the AES-GCM tag that ends every chunk.
pub const TAG_LEN: usize = 16;
/// Plaintext bytes per chunk the backend uses unless told otherwise (64 KiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest chunk size accepted (16 MiB). The decryptor holds one chunk, so this
/// bounds its memory whatever signed metadata says.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Largest number of chunks in one stream: the chunk counter in the nonce is 32 bits.
pub const MAX_CHUNKS: u64 = 1 << 32;

/// Length of the wrapped content key: 32 key bytes and the 16-byte tag.
const WRAPPED_KEY_LEN: usize = ContentKey::LEN + TAG_LEN;
/// HKDF info label of the key-encryption key; the two public keys follow it.
const WRAP_KDF_LABEL: &[u8] = b"secureev-ota image key v1";
/// Label at the start of the AAD that binds a wrapped key to target and ECU.
const WRAP_AAD_LABEL: &[u8] = b"secureev-ota image key binding v1";
/// HKDF info of the per-stream key and nonce prefix.
const STREAM_KDF_LABEL: &[u8] = b"secureev-ota image stream v1";
/// Random per-stream salt carried in the header.
const SALT_LEN: usize = 32;
/// Nonce = prefix (7) || big-endian chunk counter (4) || last-chunk flag (1).
const NONCE_PREFIX_LEN: usize = 7;
const FLAG_NOT_LAST: u8 = 0x00;
const FLAG_LAST: u8 = 0x01;

fn decryption_error(what: &str, reason: impl Into<String>) -> Error {
    Error::Decryption {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

// ---- keys --------------------------------------------------------------------------

/// The symmetric key of one encrypted image. Zeroed when dropped; its `Debug`
/// output never shows the key.
pub struct ContentKey([u8; 32]);

impl ContentKey {
    /// Key length in bytes.
    pub const LEN: usize = 32;

    /// A fresh random key from the operating system's generator. Use a new one
    /// for every image.
    pub fn generate() -> Self {
        let mut key = ContentKey([0; 32]);
        OsRng.fill_bytes(&mut key.0);
        key
    }

    /// A key from its bytes (for a backend that stores content keys to wrap them
    /// for more ECUs later).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        ContentKey(*bytes)
    }

    /// The key bytes. Keep them out of logs and unencrypted storage.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for ContentKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for ContentKey {}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(..)")
    }
}

/// An ECU's X25519 public key for image encryption, as registered in the
/// Director's inventory.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EcuEncryptionPublicKey([u8; 32]);

impl EcuEncryptionPublicKey {
    /// A public key from its 32 bytes (the X25519 u-coordinate).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EcuEncryptionPublicKey(bytes)
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex of the key bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self> {
        let bytes = hex::decode(s.trim()).map_err(|_| Self::invalid("not hex"))?;
        Self::from_slice(&bytes)
    }

    /// Standard base64 (with padding) of the key bytes.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// Parse standard base64 (with padding).
    pub fn from_base64(s: &str) -> Result<Self> {
        let bytes = BASE64
            .decode(s.trim())
            .map_err(|_| Self::invalid("not standard base64"))?;
        Self::from_slice(&bytes)
    }

    /// Key id: hex SHA-256 of the 32 key bytes. It names the key in
    /// [`WrappedKey::ecu_key_id`] so that an ECU that rotated its key can tell
    /// "wrapped for my other key" from tampering.
    pub fn key_id(&self) -> String {
        hex::encode(Sha256::digest(self.0))
    }

    fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Self::invalid("an X25519 key is 32 bytes"))?;
        Ok(EcuEncryptionPublicKey(arr))
    }

    fn invalid(reason: &str) -> Error {
        Error::InvalidKey {
            keyid: "x25519 encryption key".into(),
            reason: reason.to_owned(),
        }
    }
}

impl fmt::Debug for EcuEncryptionPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EcuEncryptionPublicKey({})", self.to_hex())
    }
}

/// An ECU's X25519 private key for image decryption. It is a key of its own, not
/// the ECU's signing key: Uptane 2.1 §5.4.1 (3): "If asymmetric keys are used,
/// there SHOULD be separate keys for encryption and signing." The secret is zeroed
/// when dropped; `Debug` shows only the key id.
pub struct EcuDecryptionKey {
    secret: x25519_dalek::StaticSecret,
    public: EcuEncryptionPublicKey,
}

impl EcuDecryptionKey {
    /// A fresh random key (at provisioning).
    pub fn generate() -> Self {
        Self::from_secret(x25519_dalek::StaticSecret::random_from_rng(OsRng))
    }

    /// The key from its 32 secret bytes (as stored by the ECU). X25519 clamps the
    /// scalar, so every 32-byte string is a key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self::from_secret(x25519_dalek::StaticSecret::from(*bytes))
    }

    /// The 32 secret bytes, zeroed when the returned value is dropped. Store them
    /// with mode 0600 or in a secure element.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public key to register with the Director.
    pub fn public(&self) -> EcuEncryptionPublicKey {
        self.public
    }

    fn from_secret(secret: x25519_dalek::StaticSecret) -> Self {
        let public = EcuEncryptionPublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        EcuDecryptionKey { secret, public }
    }
}

impl fmt::Debug for EcuDecryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcuDecryptionKey")
            .field("key_id", &self.public.key_id())
            .finish_non_exhaustive()
    }
}

// ---- key wrapping ------------------------------------------------------------------

/// A content key wrapped for one ECU: the value of `keys.<ecu serial>` in
/// `custom.encryption`.
///
/// ```json
/// {
///   "scheme": "x25519-hkdf-sha256-aes256gcm",
///   "ephemeralPublicKey": "<base64, 32 bytes>",
///   "wrappedKey": "<base64, 48 bytes: AES-256-GCM ciphertext and tag of the content key>",
///   "ecuKeyId": "<hex SHA-256 of the ECU's X25519 public key>"
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WrappedKey {
    /// Always [`WRAP_SCHEME`].
    pub scheme: String,
    /// The sender's ephemeral X25519 public key, standard base64.
    pub ephemeral_public_key: String,
    /// The encrypted content key followed by its tag, standard base64.
    pub wrapped_key: String,
    /// Key id of the recipient key ([`EcuEncryptionPublicKey::key_id`]); optional,
    /// a hint for ECUs that rotate keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecu_key_id: Option<String>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// What a wrapped key is bound to: the target it decrypts and the ECU it is for.
/// Both go into the AEAD associated data, so a wrapped key copied onto another
/// target or another ECU's entry fails to unwrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyBinding<'a> {
    /// Target name, as in the Director targets metadata.
    pub target: &'a str,
    /// ECU serial (the ECU identifier in the Director targets metadata).
    pub ecu_serial: &'a str,
}

impl KeyBinding<'_> {
    /// AAD = label || u64be(len target) || target || u64be(len ecu) || ecu. The
    /// length prefixes keep ("ab", "c") and ("a", "bc") apart.
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(
            WRAP_AAD_LABEL.len() + 16 + self.target.len() + self.ecu_serial.len(),
        );
        aad.extend_from_slice(WRAP_AAD_LABEL);
        for part in [self.target, self.ecu_serial] {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }

    fn what(&self) -> String {
        format!(
            "image key of {:?} for ECU {:?}",
            self.target, self.ecu_serial
        )
    }
}

/// The key-encryption key: HKDF-SHA256 with an empty salt over the X25519 shared
/// secret, info = label || ephemeral public key || recipient public key. Binding
/// both public keys makes the key specific to this exchange and recipient.
fn key_encryption_key(
    what: &str,
    shared: &x25519_dalek::SharedSecret,
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<Aes256Gcm> {
    // A low-order public key makes the shared secret all zeros, known to anyone.
    if !shared.was_contributory() {
        return Err(decryption_error(
            what,
            "X25519 exchange with a low-order public key",
        ));
    }
    let hk = Hkdf::<Sha256>::new(None, shared.as_bytes());
    let mut kek = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(&[WRAP_KDF_LABEL, ephemeral, recipient], &mut kek[..])
        .map_err(|_| decryption_error(what, "HKDF output length"))?;
    Aes256Gcm::new_from_slice(&kek[..]).map_err(|_| decryption_error(what, "AES key length"))
}

/// The key-encryption key is used exactly once (each wrap has a fresh ephemeral
/// key), so a fixed all-zero nonce is safe.
fn wrap_nonce() -> aes_gcm::Nonce<aes_gcm::aead::consts::U12> {
    [0u8; 12].into()
}

/// Wrap `key` for the ECU whose encryption key is `recipient`, bound to `binding`.
/// Director side; draws a fresh ephemeral key from the OS for every call.
pub fn wrap_key(
    key: &ContentKey,
    recipient: &EcuEncryptionPublicKey,
    binding: &KeyBinding<'_>,
) -> Result<WrappedKey> {
    let what = binding.what();
    let ephemeral = x25519_dalek::EphemeralSecret::random_from_rng(OsRng);
    let ephemeral_public = x25519_dalek::PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&x25519_dalek::PublicKey::from(recipient.0));
    let kek = key_encryption_key(&what, &shared, &ephemeral_public, &recipient.0)?;
    let mut sealed = Zeroizing::new([0u8; WRAPPED_KEY_LEN]);
    sealed[..ContentKey::LEN].copy_from_slice(&key.0);
    let tag = kek
        .encrypt_in_place_detached(
            &wrap_nonce(),
            &binding.aad(),
            &mut sealed[..ContentKey::LEN],
        )
        .map_err(|_| decryption_error(&what, "AES-GCM encryption failed"))?;
    sealed[ContentKey::LEN..].copy_from_slice(&tag);
    Ok(WrappedKey {
        scheme: WRAP_SCHEME.to_owned(),
        ephemeral_public_key: BASE64.encode(ephemeral_public),
        wrapped_key: BASE64.encode(&sealed[..]),
        ecu_key_id: Some(recipient.key_id()),
        unrecognized: Map::new(),
    })
}

/// Unwrap a content key with this ECU's decryption key. Fails when the key was
/// wrapped for another ECU key (named in the error when `ecuKeyId` says so), for
/// another target or ECU serial, or was modified; authentication cannot tell
/// these apart.
pub fn unwrap_key(
    wrapped: &WrappedKey,
    secret: &EcuDecryptionKey,
    binding: &KeyBinding<'_>,
) -> Result<ContentKey> {
    let what = binding.what();
    if wrapped.scheme != WRAP_SCHEME {
        return Err(decryption_error(
            &what,
            format!(
                "unsupported key wrapping scheme {:?} (expected {WRAP_SCHEME:?})",
                wrapped.scheme
            ),
        ));
    }
    let ours = secret.public.key_id();
    if let Some(theirs) = &wrapped.ecu_key_id {
        if !theirs.eq_ignore_ascii_case(&ours) {
            return Err(decryption_error(
                &what,
                format!("wrapped for ECU encryption key {theirs}, this ECU's key is {ours}"),
            ));
        }
    }
    let ephemeral: [u8; 32] = BASE64
        .decode(&wrapped.ephemeral_public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| decryption_error(&what, "ephemeralPublicKey is not 32 bytes of base64"))?;
    let sealed: [u8; WRAPPED_KEY_LEN] = BASE64
        .decode(&wrapped.wrapped_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| decryption_error(&what, "wrappedKey is not 48 bytes of base64"))?;
    let shared = secret
        .secret
        .diffie_hellman(&x25519_dalek::PublicKey::from(ephemeral));
    let kek = key_encryption_key(&what, &shared, &ephemeral, &secret.public.0)?;
    // Decrypt straight into the key that is returned, so that a failure leaves
    // the unauthenticated bytes only in a value that zeroes itself on drop.
    let mut key = ContentKey([0; 32]);
    key.0.copy_from_slice(&sealed[..ContentKey::LEN]);
    let mut tag = Tag::default();
    tag.copy_from_slice(&sealed[ContentKey::LEN..]);
    kek.decrypt_in_place_detached(&wrap_nonce(), &binding.aad(), &mut key.0, &tag)
        .map_err(|_| {
            decryption_error(
                &what,
                "authentication failed: wrapped for another ECU key, target or ECU serial, or modified",
            )
        })?;
    Ok(key)
}

// ---- signed parameters ------------------------------------------------------------

/// The `encryption` object of a Director target's `custom` field, signed with the
/// rest of the Director targets metadata.
///
/// ```json
/// "custom": {
///   "ecuIdentifiers": { "ECU-0001": { "hardwareId": "brake-ctl-v2" } },
///   "encryption": {
///     "scheme": "aes256gcm-chunked-v1",
///     "chunkSize": 65536,
///     "plaintextLength": 200000,
///     "plaintextHashes": { "sha256": "<hex SHA-256 of the decrypted image>" },
///     "keys": { "ECU-0001": { "scheme": "x25519-hkdf-sha256-aes256gcm", ... } }
///   }
/// }
/// ```
///
/// The target's own `length` and `hashes` cover the encrypted bytes; see
/// [`EncryptionInfo::encrypted_length`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionInfo {
    /// Always [`STREAM_SCHEME`].
    pub scheme: String,
    /// Plaintext bytes per chunk (every chunk but the last is this long).
    pub chunk_size: u32,
    /// Length of the decrypted image.
    pub plaintext_length: u64,
    /// Hashes of the decrypted image (`sha256`, optionally `sha512`), hex.
    pub plaintext_hashes: BTreeMap<String, String>,
    /// ECU serial → the content key wrapped for that ECU. One image can go to many
    /// ECUs of a campaign; each finds its own entry.
    #[serde(default)]
    pub keys: BTreeMap<String, WrappedKey>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

impl EncryptionInfo {
    /// Parameters of a stream with `chunk_size`, whose plaintext is
    /// `plaintext_length` bytes with hex SHA-256 `plaintext_sha256`; no keys yet.
    pub fn new(chunk_size: u32, plaintext_length: u64, plaintext_sha256: String) -> Self {
        EncryptionInfo {
            scheme: STREAM_SCHEME.to_owned(),
            chunk_size,
            plaintext_length,
            plaintext_hashes: BTreeMap::from([("sha256".to_owned(), plaintext_sha256)]),
            keys: BTreeMap::new(),
            unrecognized: Map::new(),
        }
    }

    /// The `encryption` object of a target's `custom` value, if any. A malformed
    /// one is [`Error::InvalidCustom`].
    pub fn from_custom(target: &str, custom: Option<&Value>) -> Result<Option<Self>> {
        match custom.and_then(|c| c.get(ENCRYPTION)) {
            None => Ok(None),
            Some(value) => Self::from_value(target, value).map(Some),
        }
    }

    /// Parse an `encryption` object (e.g. `TargetCustom::encryption`). A malformed
    /// one is [`Error::InvalidCustom`]. Parsing does not check the parameters;
    /// [`StreamDecryptor::new`] and [`validate`](Self::validate) do.
    pub fn from_value(target: &str, encryption: &Value) -> Result<Self> {
        serde_json::from_value(encryption.clone()).map_err(|e| Error::InvalidCustom {
            target: target.to_owned(),
            reason: format!("{ENCRYPTION}: {e}"),
        })
    }

    /// Wrap `key` for the ECU `ecu_serial` with its registered `recipient` key and
    /// store it under `keys`, bound to `target` (Director side).
    pub fn wrap_key_for(
        &mut self,
        target: &str,
        ecu_serial: &str,
        key: &ContentKey,
        recipient: &EcuEncryptionPublicKey,
    ) -> Result<()> {
        let binding = KeyBinding { target, ecu_serial };
        let wrapped = wrap_key(key, recipient, &binding)?;
        self.keys.insert(ecu_serial.to_owned(), wrapped);
        Ok(())
    }

    /// Find this ECU's entry in `keys` and unwrap it (ECU side).
    ///
    /// Uptane 2.1 §5.4.3.4 step 6: "If the ECU key is asymmetric, the ECU SHALL
    /// check the Targets metadata for an encrypted symmetric key. If such a key is
    /// found, the ECU SHALL decrypt the symmetric key using its ECU key, and use
    /// the decrypted symmetric key for image decryption."
    pub fn unwrap_key_for(
        &self,
        target: &str,
        ecu_serial: &str,
        secret: &EcuDecryptionKey,
    ) -> Result<ContentKey> {
        let binding = KeyBinding { target, ecu_serial };
        let wrapped = self
            .keys
            .get(ecu_serial)
            .ok_or_else(|| decryption_error(&binding.what(), "no wrapped key for this ECU"))?;
        unwrap_key(wrapped, secret, &binding)
    }

    /// Length of the encrypted image these parameters describe: what the target's
    /// signed `length` must be. Fails for parameters no stream can have.
    pub fn encrypted_length(&self) -> Result<u64> {
        Ok(StreamLayout::new(
            "encryption parameters",
            self.chunk_size,
            self.plaintext_length,
        )?
        .encrypted_length)
    }

    /// Check the scheme, chunk size, length and hash algorithms.
    pub fn validate(&self, target: &str) -> Result<()> {
        self.layout(target)?;
        self.plaintext_verifier(target).map(|_| ())
    }

    fn plaintext_verifier(&self, target: &str) -> Result<StreamVerifier> {
        StreamVerifier::new(
            &format!("{target} (decrypted)"),
            self.plaintext_length,
            &self.plaintext_hashes,
        )
    }

    fn layout(&self, target: &str) -> Result<StreamLayout> {
        if self.scheme != STREAM_SCHEME {
            return Err(decryption_error(
                target,
                format!(
                    "unsupported image encryption scheme {:?} (expected {STREAM_SCHEME:?})",
                    self.scheme
                ),
            ));
        }
        StreamLayout::new(target, self.chunk_size, self.plaintext_length)
    }
}

/// The shape of a stream: how many chunks, and how long the last one is.
#[derive(Debug, Clone, Copy)]
struct StreamLayout {
    chunk_size: u32,
    chunks: u64,
    last_plaintext_len: usize,
    encrypted_length: u64,
}

impl StreamLayout {
    fn new(what: &str, chunk_size: u32, plaintext_length: u64) -> Result<Self> {
        check_chunk_size(what, chunk_size)?;
        let cs = u64::from(chunk_size);
        // An empty image is still one (final, empty) chunk.
        let chunks = plaintext_length.div_ceil(cs).max(1);
        if chunks > MAX_CHUNKS {
            return Err(decryption_error(
                what,
                format!(
                    "{plaintext_length} bytes in chunks of {chunk_size} exceed {MAX_CHUNKS} chunks"
                ),
            ));
        }
        // chunks <= 2^32 and plaintext_length < 2^32 * 2^24, so none of this overflows.
        let last_plaintext_len = (plaintext_length - (chunks - 1) * cs) as usize;
        let encrypted_length = HEADER_LEN as u64 + plaintext_length + chunks * TAG_LEN as u64;
        Ok(StreamLayout {
            chunk_size,
            chunks,
            last_plaintext_len,
            encrypted_length,
        })
    }

    /// Ciphertext length of chunk `index`.
    fn chunk_len(&self, index: u64) -> usize {
        if index + 1 == self.chunks {
            self.last_plaintext_len + TAG_LEN
        } else {
            self.chunk_size as usize + TAG_LEN
        }
    }
}

fn check_chunk_size(what: &str, chunk_size: u32) -> Result<()> {
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(decryption_error(
            what,
            format!("chunk size {chunk_size} is outside 1..={MAX_CHUNK_SIZE}"),
        ));
    }
    Ok(())
}

// ---- the stream --------------------------------------------------------------------

/// Per-stream AEAD state: the key and nonce prefix derived from the content key
/// and the header's salt, the header (associated data of every chunk) and the
/// counter of the next chunk.
struct ChunkCipher {
    aead: Aes256Gcm,
    prefix: [u8; NONCE_PREFIX_LEN],
    header: [u8; HEADER_LEN],
    next: u64,
}

impl ChunkCipher {
    /// stream key || nonce prefix = HKDF-SHA256(salt = header salt, IKM = content
    /// key, info = label), 39 bytes. A fresh salt per stream gives a fresh key, so
    /// counters restart at 0 without nonce reuse even if a content key were ever
    /// used twice.
    fn new(what: &str, key: &[u8; 32], header: [u8; HEADER_LEN]) -> Result<Self> {
        let hk = Hkdf::<Sha256>::new(Some(&header[HEADER_LEN - SALT_LEN..]), key);
        let mut okm = Zeroizing::new([0u8; 32 + NONCE_PREFIX_LEN]);
        hk.expand(STREAM_KDF_LABEL, &mut okm[..])
            .map_err(|_| decryption_error(what, "HKDF output length"))?;
        let aead = Aes256Gcm::new_from_slice(&okm[..32])
            .map_err(|_| decryption_error(what, "AES key length"))?;
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        prefix.copy_from_slice(&okm[32..]);
        Ok(ChunkCipher {
            aead,
            prefix,
            header,
            next: 0,
        })
    }

    /// The nonce of the next chunk: prefix || u32be(counter) || last flag.
    fn nonce(&self, what: &str, last: bool) -> Result<aes_gcm::Nonce<aes_gcm::aead::consts::U12>> {
        let counter = u32::try_from(self.next)
            .map_err(|_| decryption_error(what, format!("more than {MAX_CHUNKS} chunks")))?;
        let mut nonce = [0u8; 12];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.prefix);
        nonce[NONCE_PREFIX_LEN..11].copy_from_slice(&counter.to_be_bytes());
        nonce[11] = if last { FLAG_LAST } else { FLAG_NOT_LAST };
        Ok(nonce.into())
    }

    /// Encrypt `plaintext` as the next chunk and append ciphertext || tag to `out`.
    fn seal_into(
        &mut self,
        what: &str,
        plaintext: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let nonce = self.nonce(what, last)?;
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .aead
            .encrypt_in_place_detached(&nonce, &self.header, &mut out[start..])
            .map_err(|_| decryption_error(what, "AES-GCM encryption failed"))?;
        out.extend_from_slice(&tag);
        self.next += 1;
        Ok(())
    }

    /// Authenticate and decrypt the next chunk (ciphertext || tag) in place; on
    /// success `chunk` holds the plaintext. On failure its contents are garbage
    /// and must be discarded (AES-GCM decrypts before comparing tags).
    fn open_in_place(&mut self, what: &str, chunk: &mut Vec<u8>, last: bool) -> Result<()> {
        let index = self.next;
        let nonce = self.nonce(what, last)?;
        if chunk.len() < TAG_LEN {
            return Err(decryption_error(
                what,
                format!("chunk {index} is shorter than a tag"),
            ));
        }
        let split = chunk.len() - TAG_LEN;
        let mut tag = Tag::default();
        tag.copy_from_slice(&chunk[split..]);
        chunk.truncate(split);
        self.aead
            .decrypt_in_place_detached(&nonce, &self.header, chunk, &tag)
            .map_err(|_| {
                decryption_error(
                    what,
                    format!(
                        "chunk {index}{} failed authentication: wrong key, or the image was truncated, reordered or modified",
                        if last { " (the last)" } else { "" }
                    ),
                )
            })?;
        self.next += 1;
        Ok(())
    }
}

fn encode_header(chunk_size: u32, salt: &[u8; SALT_LEN]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&STREAM_MAGIC);
    header[4] = STREAM_VERSION;
    header[5..9].copy_from_slice(&chunk_size.to_be_bytes());
    header[9..].copy_from_slice(salt);
    header
}

/// Encrypts one image as a stream, incrementally (backend side). Feed the image
/// with [`update`](Self::update) in pieces of any size; [`finish`](Self::finish)
/// seals the last chunk and returns the parameters for `custom.encryption`.
///
/// The encryptor holds one chunk of plaintext: it cannot know that a chunk is the
/// last until the input ends.
pub struct StreamEncryptor {
    cipher: ChunkCipher,
    chunk_size: usize,
    header_pending: bool,
    pending: Vec<u8>,
    length: u64,
    sha256: Sha256,
}

impl StreamEncryptor {
    const WHAT: &'static str = "image stream";

    /// Start a stream under `key` with `chunk_size` plaintext bytes per chunk
    /// (1..=[`MAX_CHUNK_SIZE`]; [`DEFAULT_CHUNK_SIZE`] is a good choice). Draws a
    /// fresh salt from the OS.
    pub fn new(key: &ContentKey, chunk_size: u32) -> Result<Self> {
        let mut salt = [0u8; SALT_LEN];
        OsRng.fill_bytes(&mut salt);
        Self::with_salt(key, chunk_size, &salt)
    }

    /// A stream with a chosen salt, for known-answer tests only: reusing a salt
    /// with the same key reuses nonces.
    fn with_salt(key: &ContentKey, chunk_size: u32, salt: &[u8; SALT_LEN]) -> Result<Self> {
        check_chunk_size(Self::WHAT, chunk_size)?;
        let header = encode_header(chunk_size, salt);
        Ok(StreamEncryptor {
            cipher: ChunkCipher::new(Self::WHAT, &key.0, header)?,
            chunk_size: chunk_size as usize,
            header_pending: true,
            pending: Vec::new(),
            length: 0,
            sha256: Sha256::new(),
        })
    }

    /// Encrypt the next `input` bytes, appending whatever is ready (the header,
    /// then whole chunks) to `out`.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.write_header(out);
        self.sha256.update(input);
        self.length += input.len() as u64;
        while !input.is_empty() {
            // A full pending chunk with more input behind it is not the last.
            if self.pending.len() == self.chunk_size {
                self.cipher
                    .seal_into(Self::WHAT, &self.pending, false, out)?;
                self.pending.clear();
            }
            if self.pending.capacity() < self.chunk_size {
                self.pending
                    .reserve_exact(self.chunk_size - self.pending.len());
            }
            let take = (self.chunk_size - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
        Ok(())
    }

    /// Seal the last chunk (empty only when the whole image is) and return the
    /// stream parameters with no wrapped keys yet.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<EncryptionInfo> {
        self.write_header(out);
        self.cipher
            .seal_into(Self::WHAT, &self.pending, true, out)?;
        Ok(EncryptionInfo::new(
            self.chunk_size as u32,
            self.length,
            hex::encode(self.sha256.finalize()),
        ))
    }

    fn write_header(&mut self, out: &mut Vec<u8>) {
        if self.header_pending {
            out.extend_from_slice(&self.cipher.header);
            self.header_pending = false;
        }
    }
}

impl fmt::Debug for StreamEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamEncryptor")
            .field("chunk_size", &self.chunk_size)
            .field("chunks_sealed", &self.cipher.next)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// Encrypt a whole image in memory under `key` (backend and tests). Returns the
/// encrypted bytes and the parameters for `custom.encryption`, with no wrapped
/// keys yet.
pub fn encrypt_image(
    key: &ContentKey,
    plaintext: &[u8],
    chunk_size: u32,
) -> Result<(Vec<u8>, EncryptionInfo)> {
    let mut encryptor = StreamEncryptor::new(key, chunk_size)?;
    let capacity = StreamLayout::new(StreamEncryptor::WHAT, chunk_size, plaintext.len() as u64)?
        .encrypted_length;
    let mut out = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    encryptor.update(plaintext, &mut out)?;
    let info = encryptor.finish(&mut out)?;
    Ok((out, info))
}

/// Decrypt a whole encrypted image in memory (tests and small images). ECUs
/// should stream with [`StreamDecryptor`] instead.
pub fn decrypt_image(
    target: &str,
    key: &ContentKey,
    info: &EncryptionInfo,
    encrypted: &[u8],
) -> Result<Vec<u8>> {
    let mut decryptor = StreamDecryptor::new(target, key, info)?;
    let mut out = Vec::with_capacity(encrypted.len());
    decryptor.update(encrypted, &mut out)?;
    decryptor.finish()?;
    Ok(out)
}

enum DecryptState {
    /// Collecting the header; the content key waits here until the salt is known.
    Header {
        key: Zeroizing<[u8; 32]>,
        header: [u8; HEADER_LEN],
        have: usize,
    },
    /// Collecting chunk `cipher.next` into `chunk`.
    Chunks { cipher: Box<ChunkCipher> },
    /// The last chunk was authenticated; any further byte is an error.
    Done,
    /// An error was returned; the stream is refused from then on.
    Failed,
}

/// Decrypts an encrypted image incrementally, in constant memory (ECU side).
///
/// Feed the download in pieces of any size with [`update`](Self::update), which
/// appends authenticated plaintext to the caller's buffer chunk by chunk; then call
/// [`finish`](Self::finish). The decryptor itself holds at most one chunk
/// (`chunkSize + 16` bytes) and a hash state, whatever the size of the image.
///
/// Every chunk handed out was sealed under this content key at this position,
/// but the image as a whole is not known to be complete and correct until
/// `finish` returns `Ok`: write it to an inactive slot and do not install or
/// activate it before then. (Every ECU that can unwrap the content key could seal
/// chunks too; only the signed hashes, of the encrypted bytes while downloading
/// and of the plaintext in `finish`, tie the image to the Director's signature.)
/// After any error the decryptor refuses all input.
pub struct StreamDecryptor {
    what: String,
    layout: StreamLayout,
    state: DecryptState,
    chunk: Vec<u8>,
    plaintext: StreamVerifier,
}

impl StreamDecryptor {
    /// Start decrypting `target` under `key`, with the signed parameters `info`.
    /// The content key is usually [`EncryptionInfo::unwrap_key_for`]'s result.
    pub fn new(target: &str, key: &ContentKey, info: &EncryptionInfo) -> Result<Self> {
        let layout = info.layout(target)?;
        let plaintext = info.plaintext_verifier(target)?;
        Ok(StreamDecryptor {
            what: target.to_owned(),
            layout,
            state: DecryptState::Header {
                key: Zeroizing::new(key.0),
                header: [0; HEADER_LEN],
                have: 0,
            },
            chunk: Vec::new(),
            plaintext,
        })
    }

    /// Decrypt the next `input` bytes, appending the plaintext of every chunk they
    /// complete to `out`. Fails at the first chunk that does not authenticate, on a
    /// bad header, and on any byte after the last chunk.
    pub fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let result = self.update_inner(input, out);
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// End the stream: fails if it stopped before its last chunk, or if the
    /// decrypted image does not have the signed plaintext length and hashes.
    ///
    /// Uptane 2.1 §5.4.3.4 step 7: "Check that all hashes listed in the metadata
    /// match the corresponding hashes of the image", here of the decrypted image,
    /// whose hashes are signed in `custom.encryption`.
    pub fn finish(self) -> Result<()> {
        match &self.state {
            DecryptState::Done => self.plaintext.finish(),
            DecryptState::Failed => Err(self.refused()),
            DecryptState::Header { have, .. } => Err(decryption_error(
                &self.what,
                format!(
                    "truncated: the stream ended {have} bytes into its {HEADER_LEN}-byte header"
                ),
            )),
            DecryptState::Chunks { cipher } => Err(decryption_error(
                &self.what,
                format!(
                    "truncated: the stream ended in chunk {} of {} ({} bytes of it received)",
                    cipher.next,
                    self.layout.chunks,
                    self.chunk.len()
                ),
            )),
        }
    }

    /// Number of chunks authenticated so far.
    pub fn chunks_done(&self) -> u64 {
        match &self.state {
            DecryptState::Header { .. } | DecryptState::Failed => 0,
            DecryptState::Chunks { cipher } => cipher.next,
            DecryptState::Done => self.layout.chunks,
        }
    }

    fn update_inner(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        while !input.is_empty() {
            match &mut self.state {
                DecryptState::Failed => return Err(self.refused()),
                DecryptState::Done => {
                    return Err(decryption_error(
                        &self.what,
                        format!("{} or more bytes after the last chunk", input.len()),
                    ))
                }
                DecryptState::Header { key, header, have } => {
                    let take = (HEADER_LEN - *have).min(input.len());
                    header[*have..*have + take].copy_from_slice(&input[..take]);
                    *have += take;
                    input = &input[take..];
                    if *have == HEADER_LEN {
                        let (key, header) = (key.clone(), *header);
                        let cipher = Box::new(self.start(&key, header)?);
                        self.state = DecryptState::Chunks { cipher };
                    }
                }
                DecryptState::Chunks { cipher } => {
                    let need = self.layout.chunk_len(cipher.next);
                    if self.chunk.capacity() < need {
                        // Once per stream in practice: every chunk but the last
                        // has the same length, so the buffer is reused.
                        self.chunk.reserve_exact(need - self.chunk.len());
                    }
                    let take = (need - self.chunk.len()).min(input.len());
                    self.chunk.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.chunk.len() == need {
                        let last = cipher.next + 1 == self.layout.chunks;
                        cipher.open_in_place(&self.what, &mut self.chunk, last)?;
                        self.plaintext.update(&self.chunk)?;
                        out.extend_from_slice(&self.chunk);
                        self.chunk.clear();
                        if last {
                            self.state = DecryptState::Done;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Check the header against the signed parameters and derive the stream key.
    fn start(&self, key: &[u8; 32], header: [u8; HEADER_LEN]) -> Result<ChunkCipher> {
        if header[..4] != STREAM_MAGIC {
            return Err(decryption_error(
                &self.what,
                "not an encrypted image (bad magic)",
            ));
        }
        if header[4] != STREAM_VERSION {
            return Err(decryption_error(
                &self.what,
                format!("unsupported stream version {}", header[4]),
            ));
        }
        let chunk_size = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        if chunk_size != self.layout.chunk_size {
            return Err(decryption_error(
                &self.what,
                format!(
                    "header chunk size {chunk_size} differs from the signed chunkSize {}",
                    self.layout.chunk_size
                ),
            ));
        }
        ChunkCipher::new(&self.what, key, header)
    }

    fn fail(&mut self) {
        // Drops the key or cipher and any unauthenticated bytes.
        self.state = DecryptState::Failed;
        self.chunk.zeroize();
    }

    fn refused(&self) -> Error {
        decryption_error(&self.what, "the stream already failed")
    }
}

impl fmt::Debug for StreamDecryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamDecryptor")
            .field("target", &self.what)
            .field("chunks", &self.layout.chunks)
            .field("chunks_done", &self.chunks_done())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    const TARGET: &str = "brake-ecu-2.1.bin";
    const ECU: &str = "ECU-0001";

    fn key() -> ContentKey {
        ContentKey::from_bytes(&[7; 32])
    }

    fn seal(data: &[u8], chunk_size: u32) -> (Vec<u8>, EncryptionInfo) {
        encrypt_image(&key(), data, chunk_size).unwrap()
    }

    fn open(info: &EncryptionInfo, bytes: &[u8]) -> Result<Vec<u8>> {
        decrypt_image(TARGET, &key(), info, bytes)
    }

    /// Feed `bytes` split at `cuts` (positions, any order, clamped).
    fn open_sliced(info: &EncryptionInfo, bytes: &[u8], cuts: &[usize]) -> Result<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
        cuts.push(0);
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut decryptor = StreamDecryptor::new(TARGET, &key(), info)?;
        let mut out = Vec::new();
        for pair in cuts.windows(2) {
            decryptor.update(&bytes[pair[0]..pair[1]], &mut out)?;
        }
        decryptor.finish()?;
        Ok(out)
    }

    /// Header and chunks of a stream, by the layout the parameters give.
    fn split(info: &EncryptionInfo, bytes: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let layout = info.layout(TARGET).unwrap();
        let mut rest = &bytes[HEADER_LEN..];
        let mut chunks = Vec::new();
        for i in 0..layout.chunks {
            let (chunk, tail) = rest.split_at(layout.chunk_len(i));
            chunks.push(chunk.to_vec());
            rest = tail;
        }
        assert!(rest.is_empty());
        (bytes[..HEADER_LEN].to_vec(), chunks)
    }

    fn join(header: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = header.to_vec();
        for c in chunks {
            out.extend_from_slice(c);
        }
        out
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    fn is_decryption_error(r: &Result<Vec<u8>>) -> bool {
        matches!(r, Err(Error::Decryption { .. }))
    }

    // ---- stream ------------------------------------------------------------------

    #[test]
    fn round_trip_at_chunk_boundaries() {
        for cs in [1u32, 2, 7, 16, 64] {
            let c = cs as usize;
            for len in [0, 1, c.saturating_sub(1), c, c + 1, 2 * c, 3 * c + 5] {
                let plain = data(len);
                let (enc, info) = seal(&plain, cs);
                assert_eq!(enc.len() as u64, info.encrypted_length().unwrap());
                assert_eq!(info.plaintext_length, len as u64);
                assert_eq!(info.chunk_size, cs);
                assert_eq!(open(&info, &enc).unwrap(), plain, "cs {cs} len {len}");
                let every_byte: Vec<usize> = (0..enc.len()).collect();
                assert_eq!(open_sliced(&info, &enc, &every_byte).unwrap(), plain);
            }
        }
    }

    #[test]
    fn empty_image_is_one_final_chunk() {
        let (enc, info) = seal(b"", 16);
        assert_eq!(enc.len(), HEADER_LEN + TAG_LEN);
        assert_eq!(
            info.plaintext_hashes["sha256"],
            hex::encode(Sha256::digest(b""))
        );
        assert_eq!(open(&info, &enc).unwrap(), b"");
        // Header alone: the final chunk is missing.
        assert!(is_decryption_error(&open(&info, &enc[..HEADER_LEN])));
    }

    #[test]
    fn header_layout() {
        let (enc, _) = seal(b"hello", 0x0102_0304 & (MAX_CHUNK_SIZE - 1));
        assert_eq!(&enc[..4], b"SEVE");
        assert_eq!(enc[4], 1);
        assert_eq!(
            &enc[5..9],
            &(0x0102_0304u32 & (MAX_CHUNK_SIZE - 1)).to_be_bytes()
        );
        // A fresh salt per stream: the same image under the same key differs.
        let (again, _) = seal(b"hello", 0x0102_0304 & (MAX_CHUNK_SIZE - 1));
        assert_ne!(enc[9..HEADER_LEN], again[9..HEADER_LEN]);
        assert_ne!(enc[HEADER_LEN..], again[HEADER_LEN..]);
    }

    /// Pins the byte format (header, key derivation, nonces) against accidental
    /// change: a change here breaks every ECU in the field.
    #[test]
    fn stream_format_is_stable() {
        let mut enc = StreamEncryptor::with_salt(&key(), 4, &[9; SALT_LEN]).unwrap();
        let mut out = Vec::new();
        enc.update(b"0123456789", &mut out).unwrap();
        let info = enc.finish(&mut out).unwrap();
        assert_eq!(out.len(), HEADER_LEN + 10 + 3 * TAG_LEN);
        assert_eq!(
            hex::encode(&out[..HEADER_LEN]),
            format!("5345564501{}{}", "00000004", "09".repeat(32))
        );
        assert_eq!(hex::encode(Sha256::digest(&out)), KNOWN_ANSWER_SHA256);
        assert_eq!(open(&info, &out).unwrap(), b"0123456789");
    }
    /// Computed independently from docs/encryption.md with Python's `cryptography`
    /// (HKDF-SHA256, AESGCM), not by this code.
    const KNOWN_ANSWER_SHA256: &str =
        "8ccb82b6f938425e3a2d31c41b46827b2e65e60519b3767f1d4f2a2e8e38a41f";

    /// A wrapped key made independently from docs/encryption.md with Python's
    /// `cryptography` (X25519, HKDF-SHA256, AESGCM), ECU secret 0x11.., ephemeral
    /// secret 0x22.., content key 0x07...
    #[test]
    fn unwraps_an_independently_made_wrapped_key() {
        let ecu = EcuDecryptionKey::from_bytes(&[0x11; 32]);
        assert_eq!(
            ecu.public().to_hex(),
            "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13"
        );
        let wrapped: WrappedKey = serde_json::from_value(serde_json::json!({
            "scheme": "x25519-hkdf-sha256-aes256gcm",
            "ephemeralPublicKey": "D6poTtKIZ7l/Smot7l34zpdOdrcBjj8iocTPJnhXDyA=",
            "wrappedKey": "WG/2y7A3I0QAOvDIALucqugb0wSqlphqBOIKf64iz8jWvQo3bmZt/QukbMu7Em1Z",
            "ecuKeyId": "d19bf3f082782c87b783fe7134698aeff6e66d9f86afaf7cf9e9b8bf40bab3ff",
        }))
        .unwrap();
        let key = unwrap_key(&wrapped, &ecu, &binding(TARGET, ECU)).unwrap();
        assert_eq!(key.as_bytes(), &[7; 32]);
    }

    #[test]
    fn incremental_encryption_matches_one_shot() {
        let plain = data(1000);
        let one_shot = {
            let mut e = StreamEncryptor::with_salt(&key(), 64, &[1; SALT_LEN]).unwrap();
            let mut out = Vec::new();
            e.update(&plain, &mut out).unwrap();
            e.finish(&mut out).unwrap();
            out
        };
        for piece in [1, 3, 63, 64, 65, 999] {
            let mut e = StreamEncryptor::with_salt(&key(), 64, &[1; SALT_LEN]).unwrap();
            let mut out = Vec::new();
            for p in plain.chunks(piece) {
                e.update(p, &mut out).unwrap();
            }
            e.update(b"", &mut out).unwrap();
            e.finish(&mut out).unwrap();
            assert_eq!(out, one_shot, "piece {piece}");
        }
    }

    #[test]
    fn every_single_bit_flip_fails() {
        let (enc, info) = seal(&data(20), 8);
        for i in 0..enc.len() {
            for bit in 0..8 {
                let mut bad = enc.clone();
                bad[i] ^= 1 << bit;
                assert!(open(&info, &bad).is_err(), "flip byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn every_truncation_fails() {
        let (enc, info) = seal(&data(20), 8);
        for len in 0..enc.len() {
            assert!(
                is_decryption_error(&open(&info, &enc[..len])),
                "truncated to {len}"
            );
        }
    }

    #[test]
    fn dropping_any_chunk_fails() {
        let (enc, info) = seal(&data(40), 8);
        let (header, chunks) = split(&info, &enc);
        assert_eq!(chunks.len(), 5);
        for drop in 0..chunks.len() {
            let mut fewer = chunks.clone();
            fewer.remove(drop);
            assert!(
                open(&info, &join(&header, &fewer)).is_err(),
                "dropped {drop}"
            );
        }
    }

    #[test]
    fn appended_bytes_fail_at_once() {
        let (enc, info) = seal(&data(20), 8);
        let (_, chunks) = split(&info, &enc);
        for extra in [&b"\0"[..], chunks[2].as_slice(), chunks[0].as_slice()] {
            let mut decryptor = StreamDecryptor::new(TARGET, &key(), &info).unwrap();
            let mut out = Vec::new();
            decryptor.update(&enc, &mut out).unwrap();
            assert_eq!(out, data(20));
            assert!(decryptor.update(extra, &mut out).is_err());
            assert!(decryptor.finish().is_err());
            let mut longer = enc.clone();
            longer.extend_from_slice(extra);
            assert!(is_decryption_error(&open(&info, &longer)));
        }
    }

    #[test]
    fn reordering_chunks_fails() {
        let (enc, info) = seal(&data(24), 8);
        let (header, chunks) = split(&info, &enc);
        for (i, j) in [(0, 1), (1, 2), (0, 2)] {
            let mut swapped = chunks.clone();
            swapped.swap(i, j);
            assert!(
                open(&info, &join(&header, &swapped)).is_err(),
                "swap {i} {j}"
            );
        }
    }

    #[test]
    fn chunks_and_headers_of_another_stream_fail() {
        // Same key, same image, fresh salt: nothing can be spliced across.
        let plain = data(24);
        let (a, info) = seal(&plain, 8);
        let (b, _) = seal(&plain, 8);
        let (ha, ca) = split(&info, &a);
        let (hb, cb) = split(&info, &b);
        let mut mixed = ca.clone();
        mixed[1] = cb[1].clone();
        assert!(open(&info, &join(&ha, &mixed)).is_err());
        assert!(open(&info, &join(&hb, &ca)).is_err());
        assert_eq!(open(&info, &join(&hb, &cb)).unwrap(), plain);
    }

    #[test]
    fn the_last_chunk_flag_is_authenticated() {
        let plain = data(16);
        let (_, info) = seal(&plain, 8);
        let header = encode_header(8, &[3; SALT_LEN]);
        // Last chunk sealed as not-last, as a stream cut at a chunk boundary is.
        let mut cipher = ChunkCipher::new("t", &key().0, header).unwrap();
        let mut cut = header.to_vec();
        cipher.seal_into("t", &plain[..8], false, &mut cut).unwrap();
        cipher.seal_into("t", &plain[8..], false, &mut cut).unwrap();
        assert!(is_decryption_error(&open(&info, &cut)));
        // A first chunk sealed as last, to end the stream early.
        let mut cipher = ChunkCipher::new("t", &key().0, header).unwrap();
        let mut early = header.to_vec();
        cipher
            .seal_into("t", &plain[..8], true, &mut early)
            .unwrap();
        cipher
            .seal_into("t", &plain[8..], true, &mut early)
            .unwrap();
        assert!(is_decryption_error(&open(&info, &early)));
        // Sealed properly, the same bytes decrypt.
        let mut cipher = ChunkCipher::new("t", &key().0, header).unwrap();
        let mut good = header.to_vec();
        cipher
            .seal_into("t", &plain[..8], false, &mut good)
            .unwrap();
        cipher.seal_into("t", &plain[8..], true, &mut good).unwrap();
        assert_eq!(open(&info, &good).unwrap(), plain);
    }

    #[test]
    fn wrong_content_key_fails() {
        let (enc, info) = seal(&data(100), 32);
        let other = ContentKey::from_bytes(&[8; 32]);
        assert!(matches!(
            decrypt_image(TARGET, &other, &info, &enc),
            Err(Error::Decryption { .. })
        ));
    }

    #[test]
    fn failed_chunk_releases_no_plaintext_and_poisons() {
        let (mut enc, info) = seal(&data(24), 8);
        let second_chunk = HEADER_LEN + 8 + TAG_LEN;
        enc[second_chunk + 3] ^= 0x40;
        let mut decryptor = StreamDecryptor::new(TARGET, &key(), &info).unwrap();
        let mut out = Vec::new();
        decryptor.update(&enc[..second_chunk], &mut out).unwrap();
        assert_eq!(out, data(8));
        assert_eq!(decryptor.chunks_done(), 1);
        assert!(decryptor.update(&enc[second_chunk..], &mut out).is_err());
        assert_eq!(out, data(8), "no bytes of the forged chunk are released");
        // The good bytes of the rest are refused now, as is finishing.
        let (good, _) = seal(&data(24), 8);
        assert!(decryptor.update(&good[..1], &mut out).is_err());
        assert!(decryptor.finish().is_err());
    }

    #[test]
    fn signed_parameters_are_enforced() {
        let plain = data(24);
        let (enc, info) = seal(&plain, 8);

        // Plaintext hash: every chunk authenticates, the hash check at the end fails.
        let mut bad = info.clone();
        bad.plaintext_hashes
            .insert("sha256".into(), hex::encode(Sha256::digest(b"other")));
        let mut decryptor = StreamDecryptor::new(TARGET, &key(), &bad).unwrap();
        let mut out = Vec::new();
        decryptor.update(&enc, &mut out).unwrap();
        assert!(matches!(
            decryptor.finish(),
            Err(Error::HashMismatch { .. })
        ));

        // sha512 checked too; unknown or missing algorithms refused up front.
        let mut with512 = info.clone();
        with512.plaintext_hashes.insert(
            "sha512".into(),
            crate::verify::hash_hex("sha512", &plain).unwrap(),
        );
        assert_eq!(open(&with512, &enc).unwrap(), plain);
        with512
            .plaintext_hashes
            .insert("sha512".into(), "00".into());
        assert!(matches!(
            open(&with512, &enc),
            Err(Error::HashMismatch { .. })
        ));
        let mut md5 = info.clone();
        md5.plaintext_hashes.insert("md5".into(), "00".into());
        assert!(matches!(
            open(&md5, &enc),
            Err(Error::UnsupportedHash { .. })
        ));
        let mut none = info.clone();
        none.plaintext_hashes.clear();
        assert!(matches!(open(&none, &enc), Err(Error::NoHashes { .. })));
        assert!(none.validate(TARGET).is_err());

        // Length and chunk size must be the ones the stream was made with.
        for (len, cs) in [(23, 8), (25, 8), (16, 8), (24, 4), (24, 12)] {
            let mut other = info.clone();
            other.plaintext_length = len;
            other.chunk_size = cs;
            assert!(open(&other, &enc).is_err(), "length {len} chunk size {cs}");
        }

        let mut scheme = info.clone();
        scheme.scheme = "aes256gcm-chunked-v2".into();
        assert!(scheme.validate(TARGET).is_err());
        assert!(open(&scheme, &enc).is_err());
        info.validate(TARGET).unwrap();
    }

    #[test]
    fn hostile_parameters_are_refused_without_panicking() {
        let mut info = EncryptionInfo::new(1, u64::MAX, "00".repeat(32));
        assert!(info.encrypted_length().is_err());
        assert!(StreamDecryptor::new(TARGET, &key(), &info).is_err());
        info.chunk_size = MAX_CHUNK_SIZE;
        // Even in the largest chunks, 2^64 - 1 bytes are 2^40 chunks: too many.
        assert!(info.encrypted_length().is_err());
        for cs in [0, MAX_CHUNK_SIZE + 1, u32::MAX] {
            info.chunk_size = cs;
            info.plaintext_length = 10;
            assert!(info.validate(TARGET).is_err(), "chunk size {cs}");
            assert!(encrypt_image(&key(), b"x", cs).is_err());
        }
        // The largest stream the counter allows is accepted.
        let max = EncryptionInfo::new(1, MAX_CHUNKS, "00".repeat(32));
        assert_eq!(
            max.encrypted_length().unwrap(),
            HEADER_LEN as u64 + MAX_CHUNKS * (1 + TAG_LEN as u64)
        );
        let over = EncryptionInfo::new(1, MAX_CHUNKS + 1, "00".repeat(32));
        assert!(over.encrypted_length().is_err());
    }

    #[test]
    fn bad_headers_are_refused() {
        let (enc, info) = seal(&data(10), 8);
        for (at, value) in [(0, b'X'), (4, 2), (8, 9)] {
            let mut bad = enc.clone();
            bad[at] = value;
            let err = open(&info, &bad).unwrap_err();
            assert!(matches!(err, Error::Decryption { .. }), "{err}");
        }
    }

    #[test]
    fn decryptor_memory_is_one_chunk() {
        let cs = 4096u32;
        let plain = data(1 << 20);
        let (enc, info) = seal(&plain, cs);
        let mut decryptor = StreamDecryptor::new(TARGET, &key(), &info).unwrap();
        let mut out = Vec::new();
        let mut sizes = [1usize, 4095, 7, 70_000, 13, 4112, 100_003].iter().cycle();
        let mut rest = &enc[..];
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            decryptor.update(&rest[..n], &mut out).unwrap();
            rest = &rest[n..];
            assert!(decryptor.chunk.capacity() <= cs as usize + TAG_LEN);
            // The plaintext of every completed chunk has been handed out.
            assert_eq!(out.len() as u64, decryptor.chunks_done() * u64::from(cs));
        }
        decryptor.finish().unwrap();
        assert_eq!(out, plain);
    }

    // ---- keys and wrapping -------------------------------------------------------

    fn binding<'a>(target: &'a str, ecu_serial: &'a str) -> KeyBinding<'a> {
        KeyBinding { target, ecu_serial }
    }

    #[test]
    fn wrap_unwrap_round_trip() {
        let ecu = EcuDecryptionKey::generate();
        let content = ContentKey::generate();
        let wrapped = wrap_key(&content, &ecu.public(), &binding(TARGET, ECU)).unwrap();
        assert_eq!(wrapped.scheme, WRAP_SCHEME);
        assert_eq!(
            BASE64.decode(&wrapped.ephemeral_public_key).unwrap().len(),
            32
        );
        assert_eq!(BASE64.decode(&wrapped.wrapped_key).unwrap().len(), 48);
        assert_eq!(
            wrapped.ecu_key_id.as_deref(),
            Some(ecu.public().key_id().as_str())
        );
        let back = unwrap_key(&wrapped, &ecu, &binding(TARGET, ECU)).unwrap();
        assert_eq!(back.as_bytes(), content.as_bytes());
        // A fresh ephemeral key for every wrap.
        let again = wrap_key(&content, &ecu.public(), &binding(TARGET, ECU)).unwrap();
        assert_ne!(again.ephemeral_public_key, wrapped.ephemeral_public_key);
        assert_ne!(again.wrapped_key, wrapped.wrapped_key);
    }

    #[test]
    fn wrapped_key_json_shape() {
        let ecu = EcuDecryptionKey::from_bytes(&[1; 32]);
        let wrapped = wrap_key(&key(), &ecu.public(), &binding(TARGET, ECU)).unwrap();
        let json = serde_json::to_value(&wrapped).unwrap();
        let fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            ["scheme", "ephemeralPublicKey", "wrappedKey", "ecuKeyId"]
        );
        let back: WrappedKey = serde_json::from_value(json).unwrap();
        assert_eq!(back, wrapped);
    }

    #[test]
    fn unwrap_with_another_ecu_key_fails() {
        let ecu = EcuDecryptionKey::generate();
        let other = EcuDecryptionKey::generate();
        let mut wrapped = wrap_key(&key(), &ecu.public(), &binding(TARGET, ECU)).unwrap();
        let err = unwrap_key(&wrapped, &other, &binding(TARGET, ECU)).unwrap_err();
        assert!(err.to_string().contains(&ecu.public().key_id()), "{err}");
        // Without the key id hint, authentication fails all the same.
        wrapped.ecu_key_id = None;
        let err = unwrap_key(&wrapped, &other, &binding(TARGET, ECU)).unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
        // The hint is advisory: a wrong one is refused, not trusted.
        wrapped.ecu_key_id = Some(other.public().key_id());
        assert!(unwrap_key(&wrapped, &other, &binding(TARGET, ECU)).is_err());
    }

    #[test]
    fn wrapped_key_is_bound_to_target_and_ecu() {
        let ecu = EcuDecryptionKey::generate();
        let wrapped = wrap_key(&key(), &ecu.public(), &binding("ab", "c")).unwrap();
        unwrap_key(&wrapped, &ecu, &binding("ab", "c")).unwrap();
        for (t, e) in [
            ("a", "bc"),
            ("abc", ""),
            ("ab", "C"),
            ("ab ", "c"),
            ("other", "c"),
            ("ab", "ECU-2"),
        ] {
            let err = unwrap_key(&wrapped, &ecu, &binding(t, e)).unwrap_err();
            assert!(matches!(err, Error::Decryption { .. }), "({t:?}, {e:?})");
        }
    }

    #[test]
    fn tampered_wrapped_keys_fail() {
        let ecu = EcuDecryptionKey::generate();
        let wrapped = wrap_key(&key(), &ecu.public(), &binding(TARGET, ECU)).unwrap();
        let b = binding(TARGET, ECU);
        for field in 0..2 {
            let bytes = if field == 0 {
                BASE64.decode(&wrapped.ephemeral_public_key).unwrap()
            } else {
                BASE64.decode(&wrapped.wrapped_key).unwrap()
            };
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut flipped = bytes.clone();
                    flipped[i] ^= 1 << bit;
                    let mut bad = wrapped.clone();
                    if field == 0 {
                        bad.ephemeral_public_key = BASE64.encode(&flipped);
                    } else {
                        bad.wrapped_key = BASE64.encode(&flipped);
                    }
                    // Even bit 255 of E, which X25519 ignores (RFC 7748 §5), fails:
                    // the KDF binds E's bytes as sent.
                    assert!(
                        unwrap_key(&bad, &ecu, &b).is_err(),
                        "field {field} byte {i} bit {bit}"
                    );
                }
            }
        }
        for (eph, wk) in [
            ("!!", wrapped.wrapped_key.as_str()),
            (wrapped.ephemeral_public_key.as_str(), "AAAA"),
            ("AAAA", wrapped.wrapped_key.as_str()),
        ] {
            let mut bad = wrapped.clone();
            bad.ephemeral_public_key = eph.into();
            bad.wrapped_key = wk.into();
            assert!(unwrap_key(&bad, &ecu, &b).is_err());
        }
        let mut bad = wrapped.clone();
        bad.scheme = "x25519-hkdf-sha512-aes256gcm".into();
        assert!(unwrap_key(&bad, &ecu, &b).is_err());
    }

    #[test]
    fn low_order_points_are_refused() {
        let zero = EcuEncryptionPublicKey::from_bytes([0; 32]);
        assert!(wrap_key(&key(), &zero, &binding(TARGET, ECU)).is_err());
        let ecu = EcuDecryptionKey::generate();
        let mut wrapped = wrap_key(&key(), &ecu.public(), &binding(TARGET, ECU)).unwrap();
        wrapped.ephemeral_public_key = BASE64.encode([0u8; 32]);
        let err = unwrap_key(&wrapped, &ecu, &binding(TARGET, ECU)).unwrap_err();
        assert!(err.to_string().contains("low-order"), "{err}");
    }

    #[test]
    fn key_encodings() {
        let ecu = EcuDecryptionKey::generate();
        let public = ecu.public();
        assert_eq!(
            EcuEncryptionPublicKey::from_hex(&public.to_hex()).unwrap(),
            public
        );
        assert_eq!(
            EcuEncryptionPublicKey::from_base64(&public.to_base64()).unwrap(),
            public
        );
        assert_eq!(public.to_hex().len(), 64);
        for bad in ["", "zz", "00", &"00".repeat(33)] {
            assert!(EcuEncryptionPublicKey::from_hex(bad).is_err(), "{bad:?}");
        }
        assert!(EcuEncryptionPublicKey::from_base64("AAAA").is_err());
        assert!(EcuEncryptionPublicKey::from_base64("not base64!").is_err());
        let restored = EcuDecryptionKey::from_bytes(&ecu.to_bytes());
        assert_eq!(restored.public(), public);
        // Debug output never carries secrets.
        let secret_hex = hex::encode(*ecu.to_bytes());
        assert!(!format!("{ecu:?}").contains(&secret_hex));
        assert!(format!("{ecu:?}").contains(&public.key_id()));
        assert_eq!(format!("{:?}", key()), "ContentKey(..)");
        assert_ne!(
            ContentKey::generate().as_bytes(),
            ContentKey::generate().as_bytes()
        );
    }

    // ---- custom.encryption -------------------------------------------------------

    #[test]
    fn encryption_info_json_and_director_to_ecu_flow() {
        let ecus: Vec<(String, EcuDecryptionKey)> = (0..3)
            .map(|i| (format!("ECU-{i}"), EcuDecryptionKey::generate()))
            .collect();
        let plain = data(5000);
        let content = ContentKey::generate();
        let (enc, mut info) = encrypt_image(&content, &plain, 1024).unwrap();
        for (serial, k) in &ecus {
            info.wrap_key_for(TARGET, serial, &content, &k.public())
                .unwrap();
        }
        let custom = serde_json::json!({
            "ecuIdentifiers": {"ECU-0": {"hardwareId": "hw"}},
            "encryption": info,
        });
        let enc_json = &custom["encryption"];
        let fields: Vec<&str> = enc_json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            [
                "scheme",
                "chunkSize",
                "plaintextLength",
                "plaintextHashes",
                "keys"
            ]
        );
        assert_eq!(enc_json["scheme"], STREAM_SCHEME);
        assert_eq!(enc_json["chunkSize"], 1024);
        assert_eq!(enc_json["plaintextLength"], 5000);
        assert_eq!(
            enc_json["plaintextHashes"]["sha256"],
            hex::encode(Sha256::digest(&plain))
        );
        // Signed metadata carries no floats: it must canonicalise.
        crate::canonical::to_canonical(&custom).unwrap();

        let parsed = EncryptionInfo::from_custom(TARGET, Some(&custom))
            .unwrap()
            .unwrap();
        assert_eq!(parsed, info);
        for (serial, k) in &ecus {
            let key = parsed.unwrap_key_for(TARGET, serial, k).unwrap();
            assert_eq!(decrypt_image(TARGET, &key, &parsed, &enc).unwrap(), plain);
        }
        // Each ECU's entry is for that ECU only.
        let (_, k0) = &ecus[0];
        assert!(parsed.unwrap_key_for(TARGET, "ECU-1", k0).is_err());
        let mut moved = parsed.clone();
        let entry = moved.keys["ECU-0"].clone();
        moved.keys.insert("ECU-1".into(), entry);
        assert!(moved.unwrap_key_for(TARGET, "ECU-1", &ecus[1].1).is_err());
        assert!(parsed.unwrap_key_for(TARGET, "ECU-9", k0).is_err());
        assert!(parsed.unwrap_key_for("other.bin", "ECU-0", k0).is_err());
    }

    #[test]
    fn from_custom_absent_malformed_and_unknown_fields() {
        assert_eq!(EncryptionInfo::from_custom(TARGET, None).unwrap(), None);
        let no_enc = serde_json::json!({"releaseCounter": 3});
        assert_eq!(
            EncryptionInfo::from_custom(TARGET, Some(&no_enc)).unwrap(),
            None
        );
        for bad in [
            serde_json::json!({"encryption": 1}),
            serde_json::json!({"encryption": {"scheme": STREAM_SCHEME}}),
            serde_json::json!({"encryption": {"scheme": STREAM_SCHEME, "chunkSize": -1,
                "plaintextLength": 0, "plaintextHashes": {}}}),
        ] {
            assert!(matches!(
                EncryptionInfo::from_custom(TARGET, Some(&bad)),
                Err(Error::InvalidCustom { .. })
            ));
        }
        let mut info = EncryptionInfo::new(16, 0, "ab".repeat(32));
        info.unrecognized
            .insert("compression".into(), "none".into());
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["compression"], "none");
        let back: EncryptionInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back, info);
        // `keys` may be absent (an image not yet wrapped for anyone).
        let bare = serde_json::json!({"encryption": {"scheme": STREAM_SCHEME, "chunkSize": 16,
            "plaintextLength": 0, "plaintextHashes": {"sha256": "00"}}});
        let parsed = EncryptionInfo::from_custom(TARGET, Some(&bare))
            .unwrap()
            .unwrap();
        assert!(parsed.keys.is_empty());
    }

    // ---- properties --------------------------------------------------------------

    fn cuts() -> impl Strategy<Value = Vec<Index>> {
        proptest::collection::vec(any::<Index>(), 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_round_trip_any_slicing(
            plain in proptest::collection::vec(any::<u8>(), 0..3000),
            cs in 1u32..512,
            cuts in cuts(),
        ) {
            let (enc, info) = seal(&plain, cs);
            prop_assert_eq!(enc.len() as u64, info.encrypted_length().unwrap());
            let cuts: Vec<usize> = cuts.iter().map(|i| i.index(enc.len() + 1)).collect();
            prop_assert_eq!(open_sliced(&info, &enc, &cuts).unwrap(), plain);
        }

        #[test]
        fn prop_any_truncation_fails(
            plain in proptest::collection::vec(any::<u8>(), 0..1024),
            cs in 1u32..128,
            cut in any::<Index>(),
            cuts in cuts(),
        ) {
            let (enc, info) = seal(&plain, cs);
            let short = &enc[..cut.index(enc.len())];
            let cuts: Vec<usize> = cuts.iter().map(|i| i.index(short.len() + 1)).collect();
            prop_assert!(open_sliced(&info, short, &cuts).is_err());
        }

        #[test]
        fn prop_any_bit_flip_fails(
            plain in proptest::collection::vec(any::<u8>(), 0..1024),
            cs in 1u32..128,
            at in any::<Index>(),
            bit in 0u8..8,
            cuts in cuts(),
        ) {
            let (mut enc, info) = seal(&plain, cs);
            let at = at.index(enc.len());
            enc[at] ^= 1 << bit;
            let cuts: Vec<usize> = cuts.iter().map(|i| i.index(enc.len() + 1)).collect();
            prop_assert!(open_sliced(&info, &enc, &cuts).is_err());
        }

        #[test]
        fn prop_reordering_fails(
            plain in proptest::collection::vec(any::<u8>(), 2..1024),
            cs_seed in any::<Index>(),
            i in any::<Index>(),
            j in any::<Index>(),
        ) {
            // At least two chunks.
            let cs = 1 + cs_seed.index(plain.len() - 1) as u32;
            let (enc, info) = seal(&plain, cs);
            let (header, mut chunks) = split(&info, &enc);
            let (i, j) = (i.index(chunks.len()), j.index(chunks.len()));
            prop_assume!(i != j);
            chunks.swap(i, j);
            prop_assert!(open(&info, &join(&header, &chunks)).is_err());
        }

        #[test]
        fn prop_dropping_or_duplicating_a_chunk_fails(
            plain in proptest::collection::vec(any::<u8>(), 0..1024),
            cs in 1u32..128,
            which in any::<Index>(),
            duplicate in any::<bool>(),
        ) {
            let (enc, info) = seal(&plain, cs);
            let (header, mut chunks) = split(&info, &enc);
            let k = which.index(chunks.len());
            if duplicate {
                let copy = chunks[k].clone();
                chunks.insert(k, copy);
            } else {
                chunks.remove(k);
            }
            prop_assert!(open(&info, &join(&header, &chunks)).is_err());
        }

        #[test]
        fn prop_appended_data_fails(
            plain in proptest::collection::vec(any::<u8>(), 0..1024),
            cs in 1u32..128,
            extra in proptest::collection::vec(any::<u8>(), 1..64),
        ) {
            let (mut enc, info) = seal(&plain, cs);
            enc.extend_from_slice(&extra);
            prop_assert!(open(&info, &enc).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_unwrap_is_bound(
            target in "[a-z./-]{0,12}",
            ecu in "[A-Z0-9-]{0,8}",
            other_target in "[a-z./-]{0,12}",
            other_ecu in "[A-Z0-9-]{0,8}",
            secret in any::<[u8; 32]>(),
            content in any::<[u8; 32]>(),
        ) {
            let ecu_key = EcuDecryptionKey::from_bytes(&secret);
            let content = ContentKey::from_bytes(&content);
            let wrapped = wrap_key(&content, &ecu_key.public(), &binding(&target, &ecu)).unwrap();
            let back = unwrap_key(&wrapped, &ecu_key, &binding(&target, &ecu)).unwrap();
            prop_assert_eq!(back.as_bytes(), content.as_bytes());
            let result = unwrap_key(&wrapped, &ecu_key, &binding(&other_target, &other_ecu));
            prop_assert_eq!(result.is_ok(), target == other_target && ecu == other_ecu);
        }
    }
}
