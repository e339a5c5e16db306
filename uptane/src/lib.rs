//! # secureev-uptane
//!
//! The sans-IO Uptane 2.1 / TUF 1.0 verification core of SecureEV-OTA.
//!
//! This crate answers one question: *may these metadata and this image be trusted
//! by this ECU, now?* It does no I/O at all: no sockets, no files, no clock, no
//! async runtime. Callers hand in bytes and an explicit [`Timestamp`]; the crate
//! hands back typed decisions ([`Verified`] proofs) or a typed [`Error`] that names
//! the attack.
//!
//! ## Architecture
//! - [`json`]: the one JSON parser for untrusted input (refuses duplicate keys).
//! - [`canonical`]: OLPC canonical JSON, the bytes that signatures cover.
//! - [`keys`]: ECDSA P-256 and Ed25519 keys, key ids, signing.
//! - [`metadata`]: the typed metadata model (unknown fields kept).
//! - [`verify`]: envelope parsing, threshold signature checks, hashes; the only
//!   place that makes a [`Verified`].
//! - [`trusted`]: the trusted state of one repository (root chain, timestamp,
//!   snapshot, targets, delegations), as TUF 1.0 §5.3 and Uptane 2.1 §5.4.4.3–7.
//! - [`client`]: [`client::UpdateClient`], the whole update workflow as one
//!   sans-IO state machine (the order of TUF 1.0 §5.3 and Uptane 2.1 §5.4.4);
//!   every binary drives it with a thin I/O loop.
//! - [`uptane`]: full (§5.4.4.2) and partial (§5.4.4.1) verification across the
//!   Director and Image repositories.
//! - [`image`]: [`image::VerifiedImage`], image bytes checked against a verified
//!   target (and, when encrypted, their plaintext): what installers take.
//! - [`custom`]: the custom target fields our backend and client share.
//! - [`manifest`]: vehicle version manifests and ECU version reports.
//! - [`encryption`]: per-ECU key wrapping and the chunked AES-256-GCM image stream.
//! - [`did`]: `did:key` for P-256 ECU keys.
//! - [`builder`]: repository builders for the backend and tests.
#![deny(missing_docs)]

pub mod builder;
pub mod canonical;
pub mod client;
pub mod custom;
pub mod did;
pub mod encryption;
pub mod error;
pub mod image;
pub mod json;
pub mod keys;
pub mod manifest;
pub mod metadata;
pub mod quote;
pub mod request_auth;
pub mod time;
pub mod trusted;
pub mod uptane;
pub mod verify;

pub use error::{Attack, Checked, Error, Result};
pub use keys::{Key, PublicKey, SigningKey};
pub use time::Timestamp;
pub use verify::Verified;
