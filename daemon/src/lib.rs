//! # secureev-daemon
//!
//! The foundations of `secureev-otad`, the SecureEV-OTA daemon on the vehicle's
//! head unit (the Uptane Primary). This crate is the I/O side of the
//! architecture: it reads files, talks HTTPS, runs installers and talks to
//! systemd, and hands bytes and an explicit `now` to the sans-IO verification
//! core `secureev-uptane`, which decides what may be trusted.
//!
//! One module per concern:
//!
//! - [`config`]: the TOML configuration with drop-ins, unknown keys rejected.
//! - [`store`]: the state directory; every write atomic ([`store::atomic_write`]).
//! - [`keys`]: the Primary's P-256 signing and X25519 decryption keys.
//! - [`clock`]: the injected time source with a persisted time floor.
//! - [`http`]: the backend's HTTPS client (TLS 1.3 only, configured CA, proxies).
//! - [`download`]: streaming, verified, resumable image downloads; decryption.
//! - [`install`]: installers, the install journal, the secondary transport trait.
//! - [`notify`]: systemd `sd_notify` without libsystemd.
//! - [`schedule`]: check-in interval, jitter, backoff, triggers.
//! - [`backend`]: signed requests to the Director, capped metadata reads.
//! - [`agent`]: the Uptane cycle (check-in, verification, download, consent,
//!   install, report) and the D-Bus controller.
//! - [`daemon`]: start-up, [`daemon::run`], and the integration points for
//!   check-in ([`schedule::UpdateCycle`]) and D-Bus ([`daemon::ControlService`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod agent;
pub mod backend;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod download;
pub mod error;
pub mod http;
pub mod install;
pub mod keys;
pub mod notify;
pub mod schedule;
pub mod secondary;
pub mod store;

pub use daemon::{run, run_with, Daemon, Integrations};
pub use error::{Error, Result};
