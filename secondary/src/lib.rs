//! # secureev-secondary
//!
//! `secureev-ecu`, a Linux secondary-ECU agent: it serves UDS (ISO 14229) with
//! the Uptane-over-UDS protocol of `docs/secondary-protocol.md` over DoIP on
//! TCP and over kernel ISO-TP on a CAN interface, verifies what the Primary
//! sends (partial verification by default, full by configuration), writes
//! images to A/B slot files and signs ECU version reports.
//!
//! ## Architecture and I/O boundary
//! The protocol state (sessions, security access, the download state machine,
//! 0x78 and S3) is the sans-IO [`secureev_uds::server::EcuServer`]; the
//! Uptane decisions are the sans-IO `secureev-uptane` core, given the time the
//! Primary wrote. This crate is the I/O around them:
//!
//! - [`config`]: the TOML configuration.
//! - [`ecu`]: [`ecu::Ecu`], the `EcuBackend`: DIDs, routines, verification,
//!   slot files, reports.
//! - [`state`]: `state.json` and the trusted metadata, written atomically.
//! - [`keys`]: the ECU's P-256 and X25519 keys (created on first start) and
//!   the provisioned SecurityAccess secret.
//! - [`serve`]: DoIP on TCP and ISO-TP on CAN.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
pub mod ecu;
pub mod error;
pub mod fsutil;
pub mod keys;
pub mod serve;
pub mod state;

pub use error::{Error, Result, StorageError, StorageOp};
