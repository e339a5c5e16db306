//! Encrypted images (Uptane 2.1 §5.4.3.4): verified in their encrypted form
//! (that is what the signed hashes cover), then streamed through the core's
//! `ImageDecryptor` in constant memory by [`decrypt_image`], which returns the
//! decrypted image as a `VerifiedImage`.

use crate::error::{Error, Result};
use crate::fs::{remove_quietly, sync_dir};
use secureev_uptane::encryption::{ContentKey, EcuDecryptionKey, EncryptionInfo};
use secureev_uptane::image::VerifiedImage;
use secureev_uptane::uptane::UpdateTarget;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Bytes read from the encrypted image at a time.
const FILE_CHUNK: usize = 64 * 1024;

fn uptane(what: &str, source: secureev_uptane::Error) -> Error {
    Error::uptane(what, source)
}

/// The signed encryption parameters of a verified target, if it is encrypted.
pub fn encryption_info(target: &UpdateTarget) -> Result<Option<EncryptionInfo>> {
    match &target.assignment().custom.encryption {
        None => Ok(None),
        Some(v) => EncryptionInfo::from_value(target.name(), v)
            .map(Some)
            .map_err(|e| uptane(target.name(), e)),
    }
}

/// Unwrap the content key that the Director wrapped for `ecu_serial`.
pub fn unwrap_content_key(
    info: &EncryptionInfo,
    target: &str,
    ecu_serial: &str,
    ecu_key: &EcuDecryptionKey,
) -> Result<ContentKey> {
    info.unwrap_key_for(target, ecu_serial, ecu_key)
        .map_err(|e| uptane(target, e))
}

/// Decrypt the verified encrypted image `image` (as served) into `out`, in
/// constant memory (one chunk at a time), blocking, through the core's
/// `ImageDecryptor`. `out` appears, atomically and fsynced, only when the
/// whole stream authenticated and the decrypted image has the signed
/// plaintext length and hashes; it is then returned as the verified
/// decrypted image. On any error nothing is left behind. Run it with
/// `spawn_blocking` from async code.
pub fn decrypt_image(
    image: &VerifiedImage<PathBuf>,
    out: &Path,
    key: &ContentKey,
) -> Result<VerifiedImage<PathBuf>> {
    let target = image.target().name();
    let encrypted = image.location();
    let info = image
        .encryption()
        .map_err(|e| uptane(target, e))?
        .ok_or_else(|| {
            uptane(
                target,
                secureev_uptane::Error::Decryption {
                    what: target.to_owned(),
                    reason: "the target is not encrypted".into(),
                },
            )
        })?;
    let mut decryptor = image.decryptor(key).map_err(|e| uptane(target, e))?;
    let mut input = std::fs::File::open(encrypted).map_err(|e| Error::io("open", encrypted, e))?;
    let tmp = {
        let mut name = std::ffi::OsString::from(".");
        name.push(out.file_name().unwrap_or_default());
        name.push(format!(".tmp-decrypt-{}", std::process::id()));
        out.with_file_name(name)
    };
    let result = (|| {
        let mut w = std::fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        let mut buf = vec![0u8; FILE_CHUNK];
        let mut plain = Vec::with_capacity(FILE_CHUNK + info.chunk_size as usize);
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| Error::io("read", encrypted, e))?;
            if n == 0 {
                break;
            }
            plain.clear();
            decryptor
                .update(&buf[..n], &mut plain)
                .map_err(|e| uptane(target, e))?;
            w.write_all(&plain)
                .map_err(|e| Error::io("write", &tmp, e))?;
        }
        // Uptane 2.1 §5.4.3.4 step 7 on the decrypted image.
        let verified = decryptor
            .finish(out.to_path_buf())
            .map_err(|e| uptane(target, e))?;
        w.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        std::fs::rename(&tmp, out).map_err(|e| Error::io("rename", out, e))?;
        sync_dir(out.parent().unwrap_or(Path::new(".")))?;
        Ok(verified)
    })();
    if result.is_err() {
        remove_quietly(&tmp);
    }
    result
}
