//! The SecureEV-OTA D-Bus API, `io.secureev.Ota1`, shared by the vehicle daemon
//! (`secureev-otad`), the `secureevctl` CLI and infotainment UI clients.
//!
//! # Architecture
//!
//! This crate is the adapter between D-Bus and the daemon. It owns no update logic:
//!
//! * [`Ota1Interface`] is the server-side object served at [`OBJECT_PATH`]. Its methods
//!   validate their arguments (unknown option keys are rejected with
//!   [`OtaError::UnknownOption`]), then hand the request to the daemon's
//!   [`Controller`], which refuses it while another operation runs, and return at once. The
//!   outcome of the work arrives later as property changes and the `Completed` signal.
//! * [`StateHandle`] is what the daemon's worker uses to publish state: every setter is
//!   synchronous and cheap; a single background task coalesces changes into at most
//!   one `PropertiesChanged` signal per [`DEFAULT_THROTTLE`] (always emitting the final
//!   value) and emits `UpdateAvailable` and `Completed` in order, after the property
//!   changes that preceded them.
//! * [`Ota1Proxy`] is the client proxy used by the CLI and UIs; its methods return the
//!   typed [`OtaError`].
//!
//! Consent binds to the exact update that was shown: [`UpdatePlan::new`] derives the
//! [`UpdateId`] from a hash of everything in the plan, and `Install` refuses any other
//! id with [`OtaError::NoSuchUpdate`].
//!
//! Every error and every `Completed` outcome carries a stable numeric [`ErrorCode`];
//! `docs/dbus-api.md` lists them. The interface XML is committed as
//! `dbus/io.secureev.Ota1.xml` and a test compares it with live introspection.
//!
//! # Serving
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn demo(controller: Arc<dyn secureev_dbus::Controller>) -> zbus::Result<()> {
//! use secureev_dbus::{State, StateHandle};
//!
//! let state = StateHandle::new();
//! state.set_state(State::Idle); // load state before taking the name
//! let connection = state
//!     .serve(zbus::connection::Builder::system()?, controller)
//!     .await?;
//! # drop(connection); Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod access;
mod controller;
mod error;
mod options;
mod proxy;
mod server;
mod types;

#[cfg(feature = "test-util")]
pub mod testing;

pub use access::{AccessPolicy, Caller, Role};
pub use controller::Controller;
pub use error::{ErrorCode, OtaError};
pub use options::{CheckOptions, InstallOptions, ProvisionOptions};
pub use proxy::{
    Completed, CompletedArgs, CompletedStream, OperationCompleted, OperationCompletedArgs,
    OperationCompletedStream, Ota1Proxy, UpdateAvailable, UpdateAvailableArgs,
    UpdateAvailableStream,
};
pub use server::{Ota1Interface, Snapshot, StateHandle, DEFAULT_THROTTLE};
pub use types::{
    Ecu, HistoryEntry, PendingUpdate, Precondition, Progress, State, UnknownState, UpdateId,
    UpdatePlan,
};

/// Well-known bus name owned by the daemon.
pub const BUS_NAME: &str = "io.secureev.Ota1";
/// Object path of the main object.
pub const OBJECT_PATH: &str = "/io/secureev/Ota1";
/// Name of the main interface.
pub const INTERFACE: &str = "io.secureev.Ota1";
/// Prefix of every typed D-Bus error name.
pub const ERROR_PREFIX: &str = "io.secureev.Ota1.Error";
/// Longest postponement `Postpone` accepts, in seconds (7 days).
pub const MAX_POSTPONE_SECS: u32 = 7 * 24 * 3600;
