//! # secureev-uds
//!
//! Sans-IO UDS (ISO 14229-1) and DoIP (ISO 13400-2) for flashing secondary
//! ECUs, and the Uptane-over-UDS protocol of `docs/secondary-protocol.md`.
//!
//! Like rustls, this crate makes no connections and reads no files or clocks:
//! bytes and an explicit `now: Instant` go in, bytes and decisions come out.
//! The `can` crate (kernel ISO-TP sockets) and the DoIP TCP glue move the bytes;
//! the daemon (Primary) and the secondary-ECU agent drive the state machines.
//!
//! ## Architecture
//! - [`codec`]: UDS requests and responses (0x10, 0x11, 0x22, 0x27, 0x2E, 0x31,
//!   0x34, 0x36, 0x37, 0x3E, and `7F SID NRC`), and [`nrc::Nrc`].
//! - [`security`]: the SecurityAccess [`security::SecurityAlgorithm`] trait and
//!   its default, HMAC-SHA256 over a per-ECU secret.
//! - [`server`]: [`server::EcuServer`], the ECU side: sessions, security access
//!   with attempt limits and lockout, S3, the download state machine writing to
//!   an [`server::ImageSink`], routines and DIDs through an
//!   [`server::EcuBackend`], 0x78 while the backend is busy.
//! - [`client`]: [`client::FlashClient`], the tester side, running a
//!   [`client::FlashPlan`] (session → security → DIDs → download → routines →
//!   reset) with P2/P2* timing, 0x78 handling and retries.
//! - [`protocol`]: Uptane over UDS: DIDs, routines, addresses, result codes.
//! - [`doip`]: DoIP messages and [`doip::DoipFramer`] for the TCP stream.
//!
//! Every decoder takes untrusted bytes and returns a typed [`Error`]; none
//! panics (property tests and the `uds_decode` fuzz target check this).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod codec;
pub mod doip;
pub mod error;
pub mod nrc;
pub mod protocol;
pub mod security;
pub mod server;

pub use error::{Error, Result};
pub use nrc::Nrc;
