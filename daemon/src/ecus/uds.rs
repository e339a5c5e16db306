//! The UDS driver: runs a sans-IO [`FlashPlan`] over any [`UdsLink`], and
//! [`UdsSecondary`], the [`SecondaryTransport`] over a [`Connector`].

use super::link::{CanConnector, Connector, DoipConnector, UdsLink};
use super::{MetadataBundle, SecondaryInfo, SecondaryTransport};
use crate::config::Verification;
use crate::error::{Error, Result};
use crate::fetch::download::Progress;
use crate::install::VerifiedFile;
use futures_util::future::BoxFuture;
use secureev_uds::client::{
    Action, ClientConfig, ClientStats, FlashClient, FlashPlan, ImageSource, Outcome, Step,
};
use secureev_uds::protocol::{self, did, Capabilities, MetadataRole};
use secureev_uds::security::{HmacSha256Algorithm, SecurityAlgorithm};
use secureev_uds::Nrc;
use secureev_uptane::encryption::EcuEncryptionPublicKey;
use secureev_uptane::image::ImageForm;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use zeroize::Zeroizing;

/// Largest UDS message sent before the ECU's capabilities are known: one
/// classic ISO-TP PDU.
pub const DEFAULT_MAX_PDU: usize = 4095;

/// Why [`drive`] stopped.
#[derive(Debug)]
pub enum DriveError {
    /// The link failed.
    Link(io::Error),
    /// The ECU refused a step, a routine reported a failure, or it timed out.
    Uds(secureev_uds::Error),
}

impl std::fmt::Display for DriveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriveError::Link(e) => write!(f, "transport: {e}"),
            DriveError::Uds(e) => write!(f, "{e}"),
        }
    }
}

/// Whether a negative response says the ECU itself failed (storage,
/// programming) rather than refusing the request (`docs/secondary-protocol.md`
/// §7): these become [`Error::SecondaryFault`].
pub fn is_ecu_fault(nrc: Nrc) -> bool {
    matches!(
        nrc,
        Nrc::GeneralProgrammingFailure
            | Nrc::FailurePreventsExecutionOfRequestedAction
            | Nrc::UploadDownloadNotAccepted
            | Nrc::TransferDataSuspended
    )
}

/// Run `plan` over `link` to completion: the one driver of every transport.
/// `on_progress` sees the client's counters after every response.
pub async fn drive<L: UdsLink + ?Sized>(
    link: &mut L,
    plan: FlashPlan,
    algorithm: Box<dyn SecurityAlgorithm + Send>,
    config: ClientConfig,
    on_progress: &(dyn Fn(ClientStats) + Send + Sync),
) -> std::result::Result<Outcome, DriveError> {
    let mut client = FlashClient::new(plan, algorithm, config).map_err(DriveError::Uds)?;
    loop {
        match client.next_action(Instant::now()) {
            Action::Send(pdu) => link.send(&pdu).await.map_err(DriveError::Link)?,
            Action::Wait(d) => {
                match link.recv(d).await.map_err(DriveError::Link)? {
                    Some(rsp) => client
                        .handle_response(&rsp, Instant::now())
                        .map_err(DriveError::Uds)?,
                    None => client
                        .handle_timeout(Instant::now())
                        .map_err(DriveError::Uds)?,
                }
                on_progress(client.stats());
            }
            Action::Done => break,
        }
    }
    Ok(client.into_outcome())
}

/// Where the SecurityAccess secret of an ECU comes from.
#[derive(Clone)]
pub enum SecretSource {
    /// A hex file, read at each use (a missing file fails only this ECU).
    File(PathBuf),
    /// The secret itself.
    Bytes(Arc<Zeroizing<Vec<u8>>>),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::Bytes(_) => f.write_str("Bytes(<redacted>)"),
        }
    }
}

/// The time written to secondaries (Unix seconds): the daemon's clock.
pub type TimeSource = Arc<dyn Fn() -> i64 + Send + Sync>;

pub(crate) fn system_time() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What an ECU says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// ECU serial.
    pub serial: String,
    /// Hardware ID.
    pub hardware_id: String,
    /// Its signing key as a `did:key` (verifies its version reports).
    pub public_key_did: String,
    /// Its capabilities.
    pub capabilities: Capabilities,
    /// Its X25519 key, if it decrypts images.
    pub encryption_key: Option<EcuEncryptionPublicKey>,
}

/// A secondary ECU reached through a [`Connector`]. One link is kept open
/// between calls and reopened after any failure.
pub struct UdsSecondary<C: Connector> {
    serial: String,
    hardware_id: String,
    verification: Verification,
    connector: C,
    secret: SecretSource,
    client_config: ClientConfig,
    clock: TimeSource,
    link: tokio::sync::Mutex<Option<C::Link>>,
    /// The ECU's announced `max_pdu`.
    max_pdu: StdMutex<Option<usize>>,
}

impl<C: Connector> std::fmt::Debug for UdsSecondary<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdsSecondary")
            .field("serial", &self.serial)
            .field("at", &self.connector.describe())
            .finish_non_exhaustive()
    }
}

/// A secondary over DoIP.
pub type DoipSecondary = UdsSecondary<DoipConnector>;

/// A secondary over kernel ISO-TP.
pub type CanSecondary = UdsSecondary<CanConnector>;

struct FileSource {
    file: std::fs::File,
    size: u64,
}

impl ImageSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), String> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| e.to_string())
    }
}

fn no_progress(_: ClientStats) {}

impl<C: Connector> UdsSecondary<C> {
    /// A secondary with the configured serial and hardware ID (checked against
    /// what the ECU says), reached through `connector`.
    pub fn new(
        serial: impl Into<String>,
        hardware_id: impl Into<String>,
        verification: Verification,
        connector: C,
        secret: SecretSource,
    ) -> Self {
        UdsSecondary {
            serial: serial.into(),
            hardware_id: hardware_id.into(),
            verification,
            connector,
            secret,
            client_config: ClientConfig::default(),
            clock: Arc::new(system_time),
            link: tokio::sync::Mutex::new(None),
            max_pdu: StdMutex::new(None),
        }
    }

    /// Use this clock for the time written to the ECU (default: the system
    /// clock; the daemon passes its clock with the time floor).
    pub fn with_clock(mut self, clock: TimeSource) -> Self {
        self.clock = clock;
        self
    }

    /// Use these client timings and retries.
    pub fn with_client_config(mut self, config: ClientConfig) -> Self {
        self.client_config = config;
        self
    }

    fn err(&self, reason: impl std::fmt::Display) -> Error {
        Error::Secondary {
            ecu: self.serial.clone(),
            reason: format!("{} ({})", reason, self.connector.describe()),
        }
    }

    fn algorithm(&self) -> Result<HmacSha256Algorithm> {
        let secret = match &self.secret {
            SecretSource::Bytes(b) => b.clone(),
            SecretSource::File(p) => {
                let text = Zeroizing::new(std::fs::read(p).map_err(|e| Error::io("read", p, e))?);
                Arc::new(Zeroizing::new(
                    hex::decode(String::from_utf8_lossy(&text).trim()).map_err(|e| Error::Key {
                        path: p.clone(),
                        reason: format!("security secret is not hex: {e}"),
                    })?,
                ))
            }
        };
        HmacSha256Algorithm::new(&secret).map_err(|e| self.err(e))
    }

    fn ecu_max_pdu(&self) -> usize {
        self.max_pdu
            .lock()
            .ok()
            .and_then(|g| *g)
            .unwrap_or(DEFAULT_MAX_PDU)
    }

    /// Run a plan on the (re)opened link.
    async fn run(
        &self,
        plan: FlashPlan,
        on_progress: &(dyn Fn(ClientStats) + Send + Sync),
    ) -> Result<Outcome> {
        let algorithm = self.algorithm()?;
        let mut guard = self.link.lock().await;
        // The link is taken out while it works and put back only after a
        // complete exchange: if this future is dropped mid-exchange (a
        // timeout), the half-used connection is dropped with it and the next
        // call starts from a fresh connection and session, never reading a
        // late answer meant for the abandoned request.
        let mut link = match guard.take() {
            Some(l) => l,
            None => self.connector.connect().await.map_err(|e| self.err(e))?,
        };
        let mut config = self.client_config.clone();
        config.max_pdu = config.max_pdu.min(link.max_pdu()).min(self.ecu_max_pdu());
        match drive(&mut link, plan, Box::new(algorithm), config, on_progress).await {
            Ok(o) => {
                *guard = Some(link);
                Ok(o)
            }
            Err(e) => {
                // Start the next call from a fresh connection and session.
                match e {
                    DriveError::Uds(
                        u @ secureev_uds::Error::RoutineFailed {
                            routine: protocol::routine::VERIFY_METADATA,
                            code: 0x01,
                            ..
                        },
                    ) => Err(Error::SecondaryUpToDate {
                        ecu: self.serial.clone(),
                        reason: u.to_string(),
                    }),
                    // Issue 11: the ECU's own failure (its storage) is not
                    // a refusal of what the Primary sent.
                    DriveError::Uds(u @ secureev_uds::Error::NegativeResponse { nrc, .. })
                        if is_ecu_fault(nrc) =>
                    {
                        Err(Error::SecondaryFault {
                            ecu: self.serial.clone(),
                            nrc: nrc.as_byte(),
                            reason: format!("{} ({})", u, self.connector.describe()),
                        })
                    }
                    DriveError::Uds(
                        u @ (secureev_uds::Error::NegativeResponse { .. }
                        | secureev_uds::Error::RoutineFailed { .. }),
                    ) => Err(Error::SecondaryRefused {
                        ecu: self.serial.clone(),
                        reason: format!("{} ({})", u, self.connector.describe()),
                    }),
                    e => Err(self.err(e)),
                }
            }
        }
    }

    /// Read the ECU's identity (default session, no security access) and
    /// check that it is the configured ECU: a misconfigured address must not
    /// flash another ECU's image.
    pub async fn identify(&self) -> Result<Identity> {
        let out = self.run(FlashPlan::identify(), &no_progress).await?;
        let text = |d: u16| -> Result<String> {
            let b = out
                .read(d)
                .ok_or_else(|| self.err(format!("DID 0x{d:04X} not read")))?;
            String::from_utf8(b.to_vec())
                .map_err(|_| self.err(format!("DID 0x{d:04X} is not UTF-8")))
        };
        let (serial, hardware_id, public_key_did) = (
            text(did::ECU_SERIAL)?,
            text(did::HARDWARE_ID)?,
            text(did::PUBLIC_KEY)?,
        );
        if serial != self.serial || hardware_id != self.hardware_id {
            return Err(self.err(format!(
                "the ECU says it is {serial:?} ({hardware_id:?}); configured {:?} ({:?})",
                self.serial, self.hardware_id
            )));
        }
        let capabilities = Capabilities::decode(out.read(did::CAPABILITIES).unwrap_or_default())
            .map_err(|e| self.err(e))?;
        if let Ok(mut g) = self.max_pdu.lock() {
            *g = Some(capabilities.max_pdu as usize);
        }
        let encryption_key = if capabilities.encryption {
            let out = self
                .run(
                    FlashPlan::new().step(Step::ReadDid {
                        did: did::ENCRYPTION_KEY,
                    }),
                    &no_progress,
                )
                .await?;
            let raw: [u8; 32] = out
                .read(did::ENCRYPTION_KEY)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| self.err("encryption key is not 32 bytes"))?;
            Some(EcuEncryptionPublicKey::from_bytes(raw))
        } else {
            None
        };
        Ok(Identity {
            serial,
            hardware_id,
            public_key_did,
            capabilities,
            encryption_key,
        })
    }

    /// The roles to send, as the protocol names them. A partial-verification
    /// ECU gets the Director root and targets only.
    fn roles(&self, bundle: &MetadataBundle) -> Result<Vec<(MetadataRole, Vec<u8>)>> {
        let mut out = Vec::new();
        for (name, bytes) in &bundle.director {
            let role = match name.as_str() {
                "root" => MetadataRole::DirectorRoot,
                "targets" => MetadataRole::DirectorTargets,
                "timestamp" if self.verification == Verification::Full => {
                    MetadataRole::DirectorTimestamp
                }
                "snapshot" if self.verification == Verification::Full => {
                    MetadataRole::DirectorSnapshot
                }
                "timestamp" | "snapshot" => continue,
                other => return Err(self.err(format!("unknown Director role {other:?}"))),
            };
            out.push((role, bytes.clone()));
        }
        if self.verification == Verification::Full {
            let mut delegated = Vec::new();
            for (name, bytes) in &bundle.image {
                let role = match name.as_str() {
                    "root" => MetadataRole::ImageRoot,
                    "timestamp" => MetadataRole::ImageTimestamp,
                    "snapshot" => MetadataRole::ImageSnapshot,
                    "targets" => MetadataRole::ImageTargets,
                    _ => {
                        delegated.push((name.clone(), bytes.clone()));
                        continue;
                    }
                };
                out.push((role, bytes.clone()));
            }
            if !delegated.is_empty() {
                out.push((
                    MetadataRole::ImageDelegations,
                    protocol::encode_delegations(&delegated),
                ));
            }
        }
        Ok(out)
    }
}

impl<C: Connector> SecondaryTransport for UdsSecondary<C> {
    fn info(&self) -> BoxFuture<'_, Result<SecondaryInfo>> {
        Box::pin(async move {
            let id = self.identify().await?;
            Ok(SecondaryInfo {
                serial: id.serial,
                hardware_id: id.hardware_id,
                encryption_key: id.encryption_key,
                did: Some(id.public_key_did),
            })
        })
    }

    fn send_metadata<'a>(&'a self, metadata: &'a MetadataBundle) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let roles = self.roles(metadata)?;
            let now = (self.clock)();
            let time = u64::try_from(now).map_err(|_| self.err(format!("bad time {now}")))?;
            let plan = FlashPlan::open_programming().then(FlashPlan::send_metadata(
                time,
                roles,
                self.ecu_max_pdu(),
            ));
            self.run(plan, &no_progress).await.map(drop)
        })
    }

    fn send_image<'a>(
        &'a self,
        image: &'a VerifiedFile,
        progress: &'a (dyn Fn(Progress) + Send + Sync),
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // The ECU verifies the image as served (and decrypts it itself):
            // the data format follows the signed `encryption` field.
            if image.form() != ImageForm::AsServed {
                return Err(self.err("a secondary receives the image as served, not decrypted"));
            }
            let encrypted = image
                .encryption()
                .map_err(|e| Error::uptane(image.target().name(), e))?
                .is_some();
            let path = image.location();
            let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
            let size = file
                .metadata()
                .map_err(|e| Error::io("stat", path, e))?
                .len();
            let format = if encrypted {
                protocol::data_format::ENCRYPTED
            } else {
                protocol::data_format::PLAIN
            };
            let plan = FlashPlan::open_programming().then(FlashPlan::send_image(
                Box::new(FileSource { file, size }),
                format,
            ));
            let report = move |s: ClientStats| {
                progress(Progress {
                    done: s.bytes.min(size),
                    total: size,
                })
            };
            self.run(plan, &report).await.map(drop)
        })
    }

    fn activate<'a>(&'a self, _image: &'a VerifiedFile) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let plan = FlashPlan::open_programming().then(FlashPlan::activate());
            self.run(plan, &no_progress).await.map(drop)
        })
    }

    fn report(&self) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let mut nonce = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
            let out = self.run(FlashPlan::report(nonce), &no_progress).await?;
            let bytes = out
                .report
                .ok_or_else(|| self.err("no version report read"))?;
            // A report without our fresh nonce is a replay.
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| self.err(format!("version report is not JSON: {e}")))?;
            let got = v
                .get("signed")
                .and_then(|s| s.get("nonce"))
                .and_then(|n| n.as_str());
            if got != Some(hex::encode(nonce).as_str()) {
                return Err(self.err("version report does not carry the nonce sent"));
            }
            Ok(bytes)
        })
    }

    fn report_delivered(&self, report_counter: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.run(FlashPlan::report_delivered(report_counter), &no_progress)
                .await
                .map(drop)
        })
    }
}
