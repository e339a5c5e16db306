//! Secondary ECU transports: the Uptane-over-UDS protocol of
//! `docs/secondary-protocol.md`, spoken to secondary ECUs over DoIP (TCP) or
//! kernel ISO-TP (CAN), behind the [`SecondaryTransport`] trait.
//!
//! The protocol logic is the sans-IO [`FlashClient`] of `secureev-uds`; this
//! module only moves its PDUs. One driver ([`drive`]) runs a
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

use crate::config::{Config, Verification};
use crate::fetch::download::Progress;
use crate::error::{Error, Result};
use crate::install::{MetadataBundle, SecondaryInfo, SecondaryTransport, TargetFacts};
use crate::store::{Repo, Role, Store};
use futures_util::future::BoxFuture;
use secureev_uds::client::{
    Action, ClientConfig, ClientStats, FlashClient, FlashPlan, ImageSource, Outcome, Step,
};
use secureev_uds::doip::{self, DoipFramer, Message, RoutingActivationCode};
use secureev_uds::protocol::{self, did, Capabilities, MetadataRole};
use secureev_uds::security::{HmacSha256Algorithm, SecurityAlgorithm};
use secureev_uptane::encryption::EcuEncryptionPublicKey;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

/// The Primary's DoIP tester logical address (`docs/secondary-protocol.md` §1).
pub const DEFAULT_TESTER_ADDRESS: u16 = 0x0E00;
/// How long to wait for a TCP connection and the routing activation.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Directory under `[keys] dir` with one SecurityAccess secret per secondary:
/// `secondaries/<serial>.secret`, hex (the format `secureev-ecu` reads).
pub const SECRETS_DIR: &str = "secondaries";
/// Largest UDS message sent before the ECU's capabilities are known: one
/// classic ISO-TP PDU.
pub const DEFAULT_MAX_PDU: usize = 4095;

/// A way to move whole UDS PDUs to one ECU and back.
pub trait UdsLink: Send {
    /// Send one request PDU.
    fn send(&mut self, pdu: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// The next response PDU, `None` when none arrived within `timeout`.
    fn recv(
        &mut self,
        timeout: Duration,
    ) -> impl Future<Output = io::Result<Option<Vec<u8>>>> + Send;
    /// Largest PDU the link carries.
    fn max_pdu(&self) -> usize;
}

/// Opens [`UdsLink`]s to one ECU.
pub trait Connector: Send + Sync + 'static {
    /// The link type.
    type Link: UdsLink + 'static;
    /// Open a link.
    fn connect(&self) -> impl Future<Output = io::Result<Self::Link>> + Send;
    /// Where the ECU is, for messages.
    fn describe(&self) -> String;
}

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

// ---- DoIP ---------------------------------------------------------------------------

/// UDS over DoIP (ISO 13400-2) on one TCP connection, after routing
/// activation.
#[derive(Debug)]
pub struct DoipLink {
    stream: TcpStream,
    framer: DoipFramer,
    tester: u16,
    ecu: u16,
    buf: Vec<u8>,
}

impl DoipLink {
    /// Connect to `address` and activate routing from `tester` to `ecu`.
    pub async fn connect(address: &str, tester: u16, ecu: u16) -> io::Result<Self> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
        stream.set_nodelay(true)?;
        let mut link = DoipLink {
            stream,
            framer: DoipFramer::default(),
            tester,
            ecu,
            buf: vec![0; 16 * 1024],
        };
        link.write(Message::RoutingActivationRequest {
            source: tester,
            activation_type: 0,
            oem: None,
        })
        .await?;
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            match link.read_until(deadline).await? {
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no routing activation response",
                    ))
                }
                Some(Message::RoutingActivationResponse { code, entity, .. }) => {
                    if code != RoutingActivationCode::Success {
                        return Err(io::Error::other(format!(
                            "routing activation refused: {code:?}"
                        )));
                    }
                    if entity != ecu {
                        tracing::debug!(entity, ecu, "DoIP entity serves another address");
                    }
                    return Ok(link);
                }
                Some(other) => tracing::debug!(?other, "DoIP message before routing activation"),
            }
        }
    }

    async fn write(&mut self, m: Message) -> io::Result<()> {
        self.stream.write_all(&m.encode(doip::VERSION_2012)).await
    }

    /// The next DoIP message, `None` at the deadline.
    async fn read_until(&mut self, deadline: tokio::time::Instant) -> io::Result<Option<Message>> {
        loop {
            match self.framer.next_message() {
                Ok(Some((_, m))) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let read = self.stream.read(&mut self.buf);
            let n = match tokio::time::timeout_at(deadline, read).await {
                Err(_) => return Ok(None),
                Ok(r) => r?,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "DoIP entity closed the connection",
                ));
            }
            self.framer.push(&self.buf[..n]);
        }
    }
}

impl UdsLink for DoipLink {
    async fn send(&mut self, pdu: &[u8]) -> io::Result<()> {
        self.write(Message::DiagnosticMessage {
            source: self.tester,
            target: self.ecu,
            data: pdu.to_vec(),
        })
        .await
    }

    async fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.read_until(deadline).await? {
                None => return Ok(None),
                Some(Message::DiagnosticMessage { source, data, .. }) if source == self.ecu => {
                    return Ok(Some(data))
                }
                Some(Message::DiagnosticAck { .. }) => {}
                Some(Message::DiagnosticNack { code, .. }) => {
                    return Err(io::Error::other(format!(
                        "diagnostic message refused: {code:?}"
                    )))
                }
                Some(Message::GenericNack(code)) => {
                    return Err(io::Error::other(format!("DoIP header refused: {code:?}")))
                }
                Some(Message::AliveCheckRequest) => {
                    let source = self.tester;
                    self.write(Message::AliveCheckResponse { source }).await?;
                }
                Some(other) => tracing::debug!(?other, "DoIP message ignored"),
            }
        }
    }

    fn max_pdu(&self) -> usize {
        // TCP carries any UDS message; the ECU's capabilities set the limit.
        usize::MAX
    }
}

/// Opens [`DoipLink`]s.
#[derive(Debug, Clone)]
pub struct DoipConnector {
    /// `host:port` of the DoIP entity.
    pub address: String,
    /// Our tester logical address.
    pub tester: u16,
    /// The ECU's logical address.
    pub ecu: u16,
}

impl Connector for DoipConnector {
    type Link = DoipLink;
    async fn connect(&self) -> io::Result<DoipLink> {
        DoipLink::connect(&self.address, self.tester, self.ecu).await
    }
    fn describe(&self) -> String {
        format!("DoIP {} (0x{:04X})", self.address, self.ecu)
    }
}

// ---- CAN ----------------------------------------------------------------------------

/// UDS over kernel ISO-TP.
#[derive(Debug)]
pub struct CanLink {
    socket: secureev_can::IsoTpSocket,
}

impl UdsLink for CanLink {
    async fn send(&mut self, pdu: &[u8]) -> io::Result<()> {
        self.socket.send(pdu).await.map_err(io::Error::other)
    }

    async fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        match tokio::time::timeout(timeout, self.socket.recv_vec()).await {
            Err(_) => Ok(None),
            Ok(Ok(pdu)) => Ok(Some(pdu)),
            // A broken transfer is a lost response: the client retries.
            Ok(Err(e)) if e.is_transfer_error() => {
                tracing::warn!(iface = self.socket.iface(), "ISO-TP receive: {e}");
                Ok(None)
            }
            Ok(Err(e)) => Err(io::Error::other(e)),
        }
    }

    fn max_pdu(&self) -> usize {
        self.socket.max_pdu()
    }
}

/// Opens [`CanLink`]s (the socket is opened at the first use, so a kernel
/// without `AF_CAN` fails that ECU's update, not the daemon's start).
#[derive(Debug, Clone)]
pub struct CanConnector {
    /// SocketCAN interface.
    pub interface: String,
    /// ISO-TP settings (tx/rx ids, FD).
    pub isotp: secureev_can::IsoTpConfig,
}

impl Connector for CanConnector {
    type Link = CanLink;
    async fn connect(&self) -> io::Result<CanLink> {
        let socket = secureev_can::IsoTpSocket::open(&self.interface, self.isotp.clone())
            .map_err(io::Error::other)?;
        Ok(CanLink { socket })
    }
    fn describe(&self) -> String {
        format!(
            "ISO-TP {} 0x{:X}/0x{:X}",
            self.interface, self.isotp.tx_id, self.isotp.rx_id
        )
    }
}

// ---- the transport ------------------------------------------------------------------

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

fn system_time() -> i64 {
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
    /// Target name → whether the Director's entry for this ECU is encrypted.
    encrypted: StdMutex<BTreeMap<String, bool>>,
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
            encrypted: StdMutex::new(BTreeMap::new()),
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

    /// Remember which of this ECU's targets are encrypted (the DFI of the
    /// download), from the Director targets the daemon verified.
    fn note_encryption(&self, bundle: &MetadataBundle) {
        let Some((_, bytes)) = bundle.director.iter().find(|(n, _)| n == "targets") else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            return;
        };
        let Some(targets) = v
            .get("signed")
            .and_then(|s| s.get("targets"))
            .and_then(|t| t.as_object())
        else {
            return;
        };
        let Ok(mut map) = self.encrypted.lock() else {
            return;
        };
        for (name, t) in targets {
            let custom = t.get("custom");
            let ours = custom
                .and_then(|c| c.get("ecuIdentifiers"))
                .and_then(|e| e.get(&self.serial))
                .is_some();
            if ours {
                let enc = custom.and_then(|c| c.get("encryption")).is_some();
                map.insert(name.clone(), enc);
            }
        }
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
            self.note_encryption(metadata);
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
        image: &'a Path,
        facts: &'a TargetFacts,
        progress: &'a (dyn Fn(Progress) + Send + Sync),
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let file = std::fs::File::open(image).map_err(|e| Error::io("open", image, e))?;
            let size = file
                .metadata()
                .map_err(|e| Error::io("stat", image, e))?
                .len();
            let known = self
                .encrypted
                .lock()
                .ok()
                .and_then(|m| m.get(&facts.name).copied());
            // Without the metadata (send_metadata not called in this
            // process), an image longer or shorter than its plaintext is the
            // encrypted stream.
            let encrypted = known.unwrap_or(size != facts.length);
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

    fn activate<'a>(&'a self, _facts: &'a TargetFacts) -> BoxFuture<'a, Result<()>> {
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
}

// ---- construction -------------------------------------------------------------------

/// Percent-encode a serial into a file name (as the store does for roles).
fn file_name_for(serial: &str) -> String {
    let mut out = String::with_capacity(serial.len());
    for b in serial.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where the SecurityAccess secret of ECU `serial` is read from (hex): its
/// `[[secondary]] security_secret_file`, else
/// `<keys.dir>/secondaries/<serial>.secret`.
pub fn secret_path(config: &Config, serial: &str) -> PathBuf {
    if let Some(p) = config
        .secondaries
        .iter()
        .find(|s| s.serial == serial)
        .and_then(|s| s.security_secret_file.clone())
    {
        return p;
    }
    config
        .keys
        .dir
        .join(SECRETS_DIR)
        .join(format!("{}.secret", file_name_for(serial)))
}

/// One transport per `[[secondary]]`, by serial, with the system clock.
pub fn transports_from_config(
    config: &Config,
) -> Result<BTreeMap<String, Arc<dyn SecondaryTransport>>> {
    transports_from_config_with(config, Arc::new(system_time))
}

/// [`transports_from_config`] with the daemon's clock.
pub fn transports_from_config_with(
    config: &Config,
    clock: TimeSource,
) -> Result<BTreeMap<String, Arc<dyn SecondaryTransport>>> {
    use crate::config::TransportKind;
    let mut out: BTreeMap<String, Arc<dyn SecondaryTransport>> = BTreeMap::new();
    for s in &config.secondaries {
        let secret = SecretSource::File(secret_path(config, &s.serial));
        let invalid = |what: &str| Error::Secondary {
            ecu: s.serial.clone(),
            reason: format!("transport = {:?} without [secondary.{what}]", s.transport),
        };
        let t: Arc<dyn SecondaryTransport> = match s.transport {
            TransportKind::Doip => {
                let d = s.doip.as_ref().ok_or_else(|| invalid("doip"))?;
                Arc::new(
                    DoipSecondary::new(
                        &s.serial,
                        &s.hardware_id,
                        s.verification,
                        DoipConnector {
                            address: d.address.clone(),
                            tester: DEFAULT_TESTER_ADDRESS,
                            ecu: d.logical_address,
                        },
                        secret,
                    )
                    .with_clock(clock.clone()),
                )
            }
            TransportKind::Can => {
                let c = s.can.as_ref().ok_or_else(|| invalid("can"))?;
                let isotp = c.isotp().map_err(|e| Error::Secondary {
                    ecu: s.serial.clone(),
                    reason: format!("[secondary.can]: {e}"),
                })?;
                Arc::new(
                    CanSecondary::new(
                        &s.serial,
                        &s.hardware_id,
                        s.verification,
                        CanConnector {
                            interface: c.interface.clone(),
                            isotp,
                        },
                        secret,
                    )
                    .with_clock(clock.clone()),
                )
            }
        };
        out.insert(s.serial.clone(), t);
    }
    Ok(out)
}

fn decode_file_name(stem: &str) -> Option<String> {
    let bytes = stem.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = stem.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The metadata a secondary verifies, from the daemon's stored trusted
/// metadata (original bytes): Director root and targets for partial
/// verification; every stored Director and Image role, delegated roles
/// included, for full verification. "root" is the chain of every root version
/// the Primary verified, oldest first (the ECU skips the ones it already
/// trusts), so an ECU that missed several rotations can follow them.
pub fn metadata_bundle(store: &Store, verification: Verification) -> Result<MetadataBundle> {
    let roles: &[(&str, Role<'static>)] = match verification {
        Verification::Partial => &[("root", Role::Root), ("targets", Role::Targets)],
        Verification::Full => &[
            ("root", Role::Root),
            ("timestamp", Role::Timestamp),
            ("snapshot", Role::Snapshot),
            ("targets", Role::Targets),
        ],
    };
    let mut bundle = MetadataBundle {
        director: stored_roles(store, Repo::Director, roles)?,
        ..MetadataBundle::default()
    };
    if !bundle.director.iter().any(|(n, _)| n == "targets") {
        return Err(Error::Secondary {
            ecu: String::new(),
            reason: "no trusted Director targets stored".into(),
        });
    }
    if verification == Verification::Full {
        bundle.image = stored_roles(store, Repo::Image, roles)?;
        let dir = store
            .metadata_path(Repo::Image, Role::Delegated("x"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut delegated = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let fname = e.file_name().to_string_lossy().into_owned();
                let Some(stem) = fname.strip_suffix(".json") else {
                    continue;
                };
                if stem.starts_with('.') {
                    continue;
                }
                let Some(name) = decode_file_name(stem) else {
                    continue;
                };
                let bytes =
                    std::fs::read(e.path()).map_err(|err| Error::io("read", e.path(), err))?;
                delegated.push((name, bytes));
            }
        }
        delegated.sort();
        bundle.image.extend(delegated);
    }
    Ok(bundle)
}

/// `(name, bytes)` of the stored `roles` of `repo`; "root" is the chain.
fn stored_roles(
    store: &Store,
    repo: Repo,
    roles: &[(&str, Role<'static>)],
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for (name, role) in roles {
        if *role == Role::Root {
            out.extend(
                root_chain(store, repo)?
                    .into_iter()
                    .map(|b| ("root".to_owned(), b)),
            );
        } else if let Some(b) = store.load_metadata(repo, *role)? {
            out.push(((*name).to_owned(), b));
        }
    }
    Ok(out)
}

/// The kept root versions of `repo` ending with the trusted `root.json`
/// (which is also the newest kept one, unless the state directory predates
/// kept roots or holds only the initial root).
fn root_chain(store: &Store, repo: Repo) -> Result<Vec<Vec<u8>>> {
    let mut chain = store.root_chain(repo)?;
    if let Some(current) = store.load_metadata(repo, Role::Root)? {
        if chain.last() != Some(&current) {
            chain.push(current);
        }
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_names_cannot_escape() {
        assert_eq!(file_name_for("ECU-1_a"), "ECU-1_a");
        assert_eq!(file_name_for("../x"), "%2E%2E%2Fx");
        assert_eq!(decode_file_name("%2E%2E%2Fx").as_deref(), Some("../x"));
        assert_eq!(decode_file_name("a%2"), None);
    }
}
