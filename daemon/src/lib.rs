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
//! - [`fs`]: durable file writes ([`fs::atomic_write`]), used by everything
//!   that writes state, keys or cache.
//! - [`store`]: the state directory: trusted metadata, installed versions,
//!   counters, the time floor.
//! - [`keys`]: the Primary's P-256 signing and X25519 decryption keys.
//! - [`clock`]: the injected time source with a persisted time floor.
//! - [`fetch`]: the backend's HTTPS client (TLS 1.3 only, configured CA,
//!   proxies), signed requests and capped metadata reads, and streaming,
//!   verified, resumable image downloads.
//! - [`install`]: the Primary's installers, the install journal, decryption.
//! - [`ecus`]: the secondary ECUs' transports (UDS over DoIP or ISO-TP), the
//!   transport trait, the metadata bundle a secondary verifies.
//! - [`inhibit`]: inhibit files, read without following links or blocking.
//! - [`notify`]: systemd `sd_notify` without libsystemd.
//! - [`schedule`]: check-in interval, jitter, backoff, triggers.
//! - [`push`]: optional MQTT nudges (`[push]`) that trigger a check-in,
//!   rate-limited; polling stays the fallback.
//! - [`agent`]: the Uptane cycle (check-in, verification, download, consent,
//!   install, report, provisioning).
//! - [`phase`]: the one operation model: which operation runs, its phase,
//!   what a request may do meanwhile (held under the agent's mutex).
//! - [`dbus_service`]: the D-Bus controller over the agent, error codes.
//! - [`run`]: start-up, [`run()`], and the integration points for
//!   check-in ([`schedule::UpdateCycle`]) and D-Bus ([`run::ControlService`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod agent;
pub mod clock;
pub mod config;
pub mod dbus_service;
pub mod ecus;
pub mod error;
pub mod fetch;
pub mod fs;
pub mod inhibit;
pub mod install;
pub mod keys;
pub mod notify;
pub mod phase;
pub mod push;
pub mod run;
pub mod schedule;
pub mod store;

pub use error::{Error, Result};
pub use run::{run, run_with, Daemon, Integrations};
