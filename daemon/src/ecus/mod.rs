//! Secondary ECU transports: the Uptane-over-UDS protocol of
//! `docs/secondary-protocol.md`, spoken to secondary ECUs over DoIP (TCP) or
//! kernel ISO-TP (CAN), behind the [`SecondaryTransport`] trait.
//!
//! The protocol logic is the sans-IO [`FlashClient`] of `secureev-uds`; this
//! module only moves its PDUs: `link` (DoIP and ISO-TP links), `uds` (the
//! driver and the transport over it), `bundle` (the metadata a secondary
//! verifies), `config` (transports from `[[secondary]]`). One driver ([`drive`]) runs a
//! [`FlashPlan`] over anything that implements [`UdsLink`] (send a PDU,
//! receive one with a timeout), so DoIP ([`DoipLink`]) and ISO-TP
//! ([`CanLink`]) share every line of the flashing logic. [`UdsSecondary`]
//! implements [`SecondaryTransport`] over a [`Connector`] that opens links;
//! [`DoipSecondary`] and [`CanSecondary`] are its two instances.
//!
//! The Primary's sequence per secondary target (the lead's install step):
//! [`SecondaryTransport::send_metadata`] (time, Director root and targets, and
//! for full verification the other roles; the ECU runs verify-metadata) →
//! [`SecondaryTransport::send_image`] (erase, download the still-encrypted
//! image, verify-image, check dependencies) → [`SecondaryTransport::activate`]
//! (activate, hard reset) → [`SecondaryTransport::report`] (the signed ECU
//! version report, with a fresh nonce).

use crate::error::Result;
use crate::fetch::download::Progress;
use crate::install::VerifiedFile;
use futures_util::future::BoxFuture;

mod bundle;
mod config;
mod link;
mod uds;

pub use bundle::metadata_bundle;
pub use config::{secret_path, transports_from_config, transports_from_config_with, SECRETS_DIR};
pub use link::{
    CanConnector, CanLink, Connector, DoipConnector, DoipLink, UdsLink, CONNECT_TIMEOUT,
    DEFAULT_TESTER_ADDRESS,
};
pub use uds::{
    drive, is_ecu_fault, CanSecondary, DoipSecondary, DriveError, Identity, SecretSource,
    TimeSource, UdsSecondary, DEFAULT_MAX_PDU,
};

/// The metadata a secondary needs, as original bytes in verification order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataBundle {
    /// Director roles (`root`, `timestamp`, `snapshot`, `targets`), name and bytes.
    pub director: Vec<(String, Vec<u8>)>,
    /// Image repository roles (empty for partial verification).
    pub image: Vec<(String, Vec<u8>)>,
}

/// What a secondary says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryInfo {
    /// ECU serial.
    pub serial: String,
    /// Hardware ID.
    pub hardware_id: String,
    /// Its X25519 public key for image encryption, if it has one.
    pub encryption_key: Option<secureev_uptane::encryption::EcuEncryptionPublicKey>,
    /// Its report-signing key as a `did:key`, when the transport can read it
    /// (registered with the backend at provisioning).
    pub did: Option<String>,
}

/// How the Primary talks to one secondary ECU (CAN/ISO-TP or DoIP). The
/// secondary-ECU work implements it; the daemon only drives it.
pub trait SecondaryTransport: Send + Sync {
    /// The secondary's serial, hardware ID and keys.
    fn info(&self) -> BoxFuture<'_, Result<SecondaryInfo>>;
    /// Send the metadata it verifies (partial or full verification).
    fn send_metadata<'a>(&'a self, metadata: &'a MetadataBundle) -> BoxFuture<'a, Result<()>>;
    /// Send the verified image as served (still encrypted, if it is); only
    /// a [`VerifiedFile`] is accepted (see there).
    fn send_image<'a>(
        &'a self,
        image: &'a VerifiedFile,
        progress: &'a (dyn Fn(Progress) + Send + Sync),
    ) -> BoxFuture<'a, Result<()>>;
    /// Make the new image, sent by [`SecondaryTransport::send_image`], active.
    fn activate<'a>(&'a self, image: &'a VerifiedFile) -> BoxFuture<'a, Result<()>>;
    /// Its signed ECU version report (JSON bytes, as the secondary signed them).
    fn report(&self) -> BoxFuture<'_, Result<Vec<u8>>>;
    /// The Director accepted a manifest carrying its report with this
    /// `report_counter`: the ECU may forget the attacks and the installation
    /// result that report carried (`docs/secondary-protocol.md` §5.3). By
    /// default nothing is sent (a transport whose ECU forgets them itself).
    fn report_delivered(&self, report_counter: u64) -> BoxFuture<'_, Result<()>> {
        let _ = report_counter;
        Box::pin(async { Ok(()) })
    }
}
