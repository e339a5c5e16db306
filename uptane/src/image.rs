//! Images checked against a verified target: the proof that reaches installers.
//!
//! A [`VerifiedImage`] says "these bytes, at this location, are the image the
//! verified plan names": every byte went through an [`ImageVerifier`] made from
//! an [`UpdateTarget`] of a `Verified<UpdatePlan>` (length capped while the
//! bytes arrive, then the length and every signed hash checked, Uptane 2.1
//! §5.4.3.4), and, for an encrypted image, through an [`ImageDecryptor`] that
//! checks the plaintext length and hashes from the signed `encryption` field.
//! The location is whatever the caller stores the bytes in (a path, a buffer);
//! the core does no I/O. Its fields are private and only [`ImageVerifier::finish`]
//! and [`ImageDecryptor::finish`] make one, so an installer that takes a
//! `VerifiedImage` cannot be handed unchecked bytes:
//!
//! ```compile_fail
//! # use secureev_uptane::image::VerifiedImage;
//! fn install(image: &VerifiedImage<std::path::PathBuf>) {}
//! install(&std::path::PathBuf::from("/tmp/unchecked.bin"));
//! ```
//!
//! ```compile_fail
//! # use secureev_uptane::image::{ImageForm, VerifiedImage};
//! # fn forge(t: secureev_uptane::uptane::UpdateTarget) {
//! let image = VerifiedImage { target: t, location: (), form: ImageForm::AsServed };
//! # }
//! ```
//!
//! The caller keeps the verifier across chunks (and restarts it from the first
//! byte after a resumed download, as it must re-hash what it kept).
//!
//! The files the caller writes stay the caller's: a `VerifiedImage<PathBuf>`
//! proves what the bytes were when they were checked, so a caller writes them
//! where nobody else can change them before the installer reads them.

use crate::encryption::{ContentKey, EncryptionInfo, StreamDecryptor};
use crate::error::{Error, Result};
use crate::uptane::{InstalledImage, UpdateTarget};
use crate::verify::StreamVerifier;

/// Which bytes a [`VerifiedImage`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageForm {
    /// The bytes as served, checked against the Director's length and hashes
    /// (for an encrypted image: the ciphertext).
    AsServed,
    /// The plaintext of an encrypted image, checked against the signed
    /// plaintext length and hashes.
    Decrypted,
}

/// Image bytes checked against a verified target. See the module docs.
#[derive(Debug, Clone)]
pub struct VerifiedImage<L> {
    target: UpdateTarget,
    location: L,
    form: ImageForm,
}

impl<L> VerifiedImage<L> {
    /// The verified target these bytes are.
    pub fn target(&self) -> &UpdateTarget {
        &self.target
    }

    /// Where the caller keeps the bytes.
    pub fn location(&self) -> &L {
        &self.location
    }

    /// Ciphertext as served, or checked plaintext.
    pub fn form(&self) -> ImageForm {
        self.form
    }

    /// The signed encryption parameters, if the image is encrypted.
    pub fn encryption(&self) -> Result<Option<EncryptionInfo>> {
        encryption_of(&self.target)
    }

    /// What the ECU has installed once this image is installed: the name,
    /// length and hashes the Director signed (those of the image as served)
    /// and the release counter.
    pub fn installed_image(&self) -> InstalledImage {
        self.target.installed_image()
    }

    /// Start decrypting an encrypted image checked as served, with the
    /// content key unwrapped for this ECU. The plaintext length and hashes come
    /// from the signed `encryption` field of the target.
    pub fn decryptor(&self, key: &ContentKey) -> Result<ImageDecryptor> {
        let name = self.target.name();
        if self.form != ImageForm::AsServed {
            return Err(Error::Decryption {
                what: name.to_owned(),
                reason: "the image is already decrypted".into(),
            });
        }
        let info = encryption_of(&self.target)?.ok_or_else(|| Error::Decryption {
            what: name.to_owned(),
            reason: "the target is not encrypted".into(),
        })?;
        Ok(ImageDecryptor {
            target: self.target.clone(),
            inner: StreamDecryptor::new(name, key, &info)?,
        })
    }
}

fn encryption_of(target: &UpdateTarget) -> Result<Option<EncryptionInfo>> {
    match &target.assignment().custom.encryption {
        None => Ok(None),
        Some(v) => EncryptionInfo::from_value(target.name(), v).map(Some),
    }
}

impl UpdateTarget {
    /// A verifier for this target's bytes as served; [`ImageVerifier::finish`]
    /// turns them into a [`VerifiedImage`].
    pub fn image_verifier(&self) -> Result<ImageVerifier> {
        Ok(ImageVerifier {
            stream: self.stream_verifier()?,
            target: self.clone(),
        })
    }
}

/// Checks an image as it arrives (Uptane 2.1 §5.4.3.4): more bytes than the
/// signed length fail at once (endless data); at the end the length and every
/// signed hash must match.
#[derive(Clone)]
pub struct ImageVerifier {
    target: UpdateTarget,
    stream: StreamVerifier,
}

impl ImageVerifier {
    /// Feed the next bytes.
    pub fn update(&mut self, chunk: &[u8]) -> Result<()> {
        self.stream.update(chunk)
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.stream.seen()
    }

    /// Check length and hashes; the bytes the caller kept at `location` are
    /// then the verified image.
    pub fn finish<L>(self, location: L) -> Result<VerifiedImage<L>> {
        self.stream.finish()?;
        Ok(VerifiedImage {
            target: self.target,
            location,
            form: ImageForm::AsServed,
        })
    }
}

/// Decrypts a verified encrypted image and checks the plaintext (Uptane 2.1
/// §5.4.3.4: "every hash and the length" of the decrypted image).
pub struct ImageDecryptor {
    target: UpdateTarget,
    inner: StreamDecryptor,
}

impl ImageDecryptor {
    /// Decrypt the next ciphertext bytes, appending plaintext to `out`.
    pub fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.inner.update(input, out)
    }

    /// Authenticate the end of the stream and check the plaintext length and
    /// hashes; the plaintext the caller kept at `location` is then verified.
    pub fn finish<M>(self, location: M) -> Result<VerifiedImage<M>> {
        self.inner.finish()?;
        Ok(VerifiedImage {
            target: self.target,
            location,
            form: ImageForm::Decrypted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::RepoBuilder;
    use crate::trusted::TrustedRepository;
    use crate::uptane::{full_verification, EcuInfo, FullVerification, Vehicle};
    use crate::Timestamp;
    use serde_json::json;

    const NOW: Timestamp = Timestamp::from_unix(1_893_456_000);

    fn plan_for(image: &[u8]) -> crate::Verified<crate::uptane::UpdatePlan> {
        let mut i = RepoBuilder::new(NOW);
        i.add_target("fw.bin", image, None);
        let mut d = RepoBuilder::new(NOW);
        d.add_target(
            "fw.bin",
            image,
            Some(json!({ "ecuIdentifiers": { "ECU-1": { "hardwareId": "hw" } } })),
        );
        let load = |b: &mut RepoBuilder, name: &str| {
            let p = b.publish().unwrap();
            let mut t = TrustedRepository::new(name, &p.root).unwrap();
            t.update_timestamp(&p.timestamp, NOW).unwrap();
            t.update_snapshot(&p.snapshot, NOW).unwrap();
            t.update_targets(&p.targets, NOW).unwrap();
            t
        };
        let (director, image_repo) = (load(&mut d, "director"), load(&mut i, "image"));
        let vehicle = Vehicle::new(
            "VIN",
            "ECU-1",
            [EcuInfo {
                serial: "ECU-1".into(),
                hardware_id: "hw".into(),
                installed: None,
            }],
        );
        match full_verification(&director, &image_repo, &vehicle).unwrap() {
            FullVerification::Done(plan) => plan,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_the_signed_bytes_become_a_verified_image() {
        let image = b"firmware image bytes".repeat(10);
        let plan = plan_for(&image);
        let target = &plan.targets()[0];

        let mut v = target.image_verifier().unwrap();
        for chunk in image.chunks(7) {
            v.update(chunk).unwrap();
        }
        let verified = v.finish("slot-b").unwrap();
        assert_eq!(*verified.location(), "slot-b");
        assert_eq!(verified.form(), ImageForm::AsServed);
        assert_eq!(verified.installed_image().length, image.len() as u64);
        assert!(verified.encryption().unwrap().is_none());
        // Not encrypted: nothing to decrypt.
        assert!(verified.decryptor(&ContentKey::generate()).is_err());

        let mut changed = image.clone();
        changed[3] ^= 1;
        let mut v = target.image_verifier().unwrap();
        v.update(&changed).unwrap();
        assert!(matches!(v.finish(()), Err(Error::HashMismatch { .. })));

        let mut v = target.image_verifier().unwrap();
        v.update(&image).unwrap();
        assert!(matches!(v.update(b"x"), Err(Error::EndlessData { .. })));

        let mut v = target.image_verifier().unwrap();
        v.update(&image[..10]).unwrap();
        assert!(matches!(v.finish(()), Err(Error::LengthMismatch { .. })));
    }
}
