//! SecurityAccess (0x27) seed/key algorithms.
//!
//! UDS security access proves that the tester holds a secret before the ECU
//! accepts programming requests. It does not authenticate the *image*: that is
//! Uptane's job (signed metadata, verified on the ECU). It keeps unauthorised
//! testers from erasing flash or wearing it out, so the secret must be per ECU
//! and the algorithm a MAC, never the fixed XOR some bootloaders ship.

use crate::error::{Error, Result};
use hmac::{Mac, SimpleHmac};
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

/// Computes and checks SecurityAccess keys for a seed.
///
/// `level` is always the odd requestSeed sub-function (0x11 for the level this
/// project uses), on both sides.
pub trait SecurityAlgorithm {
    /// Length of the seeds a server generates.
    fn seed_len(&self) -> usize {
        16
    }

    /// The key a tester sends for `seed` at `level`.
    fn compute_key(&self, level: u8, seed: &[u8]) -> Vec<u8>;

    /// Whether `key` answers `seed` at `level`. Implementations must compare in
    /// constant time.
    fn verify_key(&self, level: u8, seed: &[u8], key: &[u8]) -> bool;
}

/// Minimum length of a provisioned secret.
pub const MIN_SECRET_LEN: usize = 16;

/// Length of the keys [`HmacSha256Algorithm`] produces by default.
pub const DEFAULT_KEY_LEN: usize = 16;

/// The default algorithm: `key = HMAC-SHA256(secret, seed || level)`, truncated
/// to the first `key_len` bytes (16 by default). The secret is provisioned per
/// ECU (e.g. derived from a master key and the ECU serial at the plant) and is
/// wiped from memory on drop.
#[derive(Clone)]
pub struct HmacSha256Algorithm {
    secret: Zeroizing<Vec<u8>>,
    key_len: usize,
}

impl fmt::Debug for HmacSha256Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacSha256Algorithm")
            .field("secret", &"<redacted>")
            .field("key_len", &self.key_len)
            .finish()
    }
}

impl HmacSha256Algorithm {
    /// An algorithm with this ECU's secret (at least [`MIN_SECRET_LEN`] bytes).
    pub fn new(secret: &[u8]) -> Result<Self> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(Error::WeakSecret {
                len: secret.len(),
                min: MIN_SECRET_LEN,
            });
        }
        Ok(HmacSha256Algorithm {
            secret: Zeroizing::new(secret.to_vec()),
            key_len: DEFAULT_KEY_LEN,
        })
    }

    /// Truncate keys to `len` bytes (clamped to 8..=32).
    pub fn with_key_len(mut self, len: usize) -> Self {
        self.key_len = len.clamp(8, 32);
        self
    }

    fn mac(&self, level: u8, seed: &[u8]) -> Option<SimpleHmac<Sha256>> {
        // HMAC takes keys of any length, so this is always `Some`; the
        // `Option` keeps the code free of panics all the same.
        let mut mac = <SimpleHmac<Sha256> as Mac>::new_from_slice(&self.secret).ok()?;
        mac.update(seed);
        mac.update(&[level]);
        Some(mac)
    }
}

impl SecurityAlgorithm for HmacSha256Algorithm {
    fn compute_key(&self, level: u8, seed: &[u8]) -> Vec<u8> {
        match self.mac(level, seed) {
            Some(mac) => mac.finalize().into_bytes()[..self.key_len].to_vec(),
            None => Vec::new(),
        }
    }

    fn verify_key(&self, level: u8, seed: &[u8], key: &[u8]) -> bool {
        // Truncated MACs of another length are refused outright;
        // `verify_truncated_left` compares in constant time.
        key.len() == self.key_len
            && self
                .mac(level, seed)
                .is_some_and(|mac| mac.verify_truncated_left(key).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // HMAC-SHA256(key = 16 x 0x0b, "seed" || 0x11), computed independently
        // with Python's hmac module.
        let alg = HmacSha256Algorithm::new(&[0x0b; 16]).unwrap();
        let key = alg.compute_key(0x11, b"seed");
        assert_eq!(
            key,
            [
                0x5a, 0xd4, 0xa4, 0xc8, 0x1b, 0x14, 0xbe, 0x42, 0xdf, 0x3d, 0x4d, 0xc2, 0xe0, 0x3c,
                0x87, 0xcf
            ]
        );
        assert!(alg.verify_key(0x11, b"seed", &key));
        assert!(!alg.verify_key(0x13, b"seed", &key), "bound to the level");
        assert!(!alg.verify_key(0x11, b"seeD", &key), "bound to the seed");
        assert!(!alg.verify_key(0x11, b"seed", &key[..15]), "length checked");
        let other = HmacSha256Algorithm::new(&[0x0c; 16]).unwrap();
        assert!(
            !other.verify_key(0x11, b"seed", &key),
            "bound to the secret"
        );
    }

    #[test]
    fn refuses_short_secrets_and_redacts() {
        assert_eq!(
            HmacSha256Algorithm::new(b"short").unwrap_err(),
            Error::WeakSecret { len: 5, min: 16 }
        );
        let alg = HmacSha256Algorithm::new(b"0123456789abcdef").unwrap();
        assert!(!format!("{alg:?}").contains("0123"));
    }
}
