//! The ECU (server) side: [`EcuServer`], a sans-IO UDS server for flashing.
//!
//! The host feeds it each request PDU with the current time
//! ([`EcuServer::handle`]) and sends back whatever it returns; between requests
//! it calls [`EcuServer::poll`] so that long operations (a verify routine, the
//! final write of an image) can finish and their `7F xx 78` keep-alives and
//! final responses go out. The server owns the protocol state (session,
//! security access, the download); the ECU's own behaviour (DIDs, routines,
//! flash) sits behind [`EcuBackend`] and [`ImageSink`].
//!
//! The download is a small state machine whose states consume themselves and
//! return the next one (`Idle` → [`ExpectTransferData`] →
//! `ExpectSinkFinish` → `Idle`), so a block can only be written in the state
//! that expects it.

use crate::codec::{
    sid, MemoryLocation, Request, ResetType, Response, RoutineControlType, ServerTiming, Session,
};
use crate::nrc::Nrc;
use crate::protocol;
use crate::security::SecurityAlgorithm;
use rand_core::RngCore;
use std::time::{Duration, Instant};

/// The outcome of an operation that may take longer than P2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress<T> {
    /// Done.
    Ready(T),
    /// Still working: the server answers `7F xx 78` and asks again on
    /// [`EcuServer::poll`].
    Busy,
}

/// A RequestDownload the server accepted the format of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadRequest {
    /// memoryAddress (see [`protocol::address`]).
    pub address: u64,
    /// memorySize: the exact number of bytes that will follow.
    pub size: u64,
    /// dataFormatIdentifier (see [`protocol::data_format`]).
    pub data_format: u8,
}

/// Where downloaded bytes go (flash, a slot file, a metadata buffer).
pub trait ImageSink {
    /// A download of `download.size` bytes starts. Refuse with the NRC to send:
    /// 0x31 for an address, size or format the ECU does not accept, 0x22 when
    /// its state does not allow it (no verified metadata for an image), 0x70
    /// when it cannot take the download now.
    fn begin(&mut self, download: &DownloadRequest) -> Result<(), Nrc>;

    /// Write `data` at `offset` (bytes from the start of the download). Called
    /// exactly once per offset: repeated blocks are acknowledged by the server
    /// without a second write. Errors (usually 0x72) abort the download.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Nrc>;

    /// All bytes arrived (RequestTransferExit). Return the
    /// transferResponseParameterRecord, or [`Progress::Busy`] to be called
    /// again later (the server answers 0x78 meanwhile).
    fn finish(&mut self) -> Result<Progress<Vec<u8>>, Nrc>;

    /// The download was abandoned (session change, S3 timeout, reset, error).
    fn abort(&mut self) {}
}

/// What the backend may consult when deciding on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The active session.
    pub session: Session,
    /// Whether security access is unlocked.
    pub unlocked: bool,
}

/// The ECU's behaviour behind the UDS protocol: data identifiers, routines,
/// reset, and (through [`ImageSink`]) flash.
pub trait EcuBackend: ImageSink {
    /// Read a DID. Unknown DIDs: `Err(Nrc::RequestOutOfRange)`.
    fn read_did(&mut self, did: u16, cx: &Context) -> Result<Vec<u8>, Nrc>;

    /// Write a DID (the server has checked the access policy).
    fn write_did(&mut self, did: u16, data: &[u8], cx: &Context) -> Result<(), Nrc>;

    /// Run a routine (the server has checked the access policy). Return the
    /// routineStatusRecord, or [`Progress::Busy`] to be called again with the
    /// same arguments later (the server answers 0x78 meanwhile).
    fn routine(
        &mut self,
        control: RoutineControlType,
        routine: u16,
        data: &[u8],
        cx: &Context,
    ) -> Result<Progress<Vec<u8>>, Nrc>;

    /// Accept an ECUReset. The host performs the reset after sending the
    /// positive response. By default hard, key-off-on and soft resets are
    /// accepted.
    fn reset(&mut self, reset_type: ResetType) -> Result<(), Nrc> {
        match reset_type {
            ResetType::Hard | ResetType::KeyOffOn | ResetType::Soft => Ok(()),
            _ => Err(Nrc::SubFunctionNotSupported),
        }
    }

    /// The session changed (request, S3 timeout or reset). Staged, unverified
    /// state should be dropped on a return to the default session.
    fn session_changed(&mut self, _from: Session, _to: Session) {}
}

/// Sessions in which a request is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRequirement {
    /// Any session.
    Any,
    /// Extended or programming session.
    NonDefault,
    /// Programming session only.
    Programming,
}

/// Whether a request needs security access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityRequirement {
    /// Security access must be unlocked (the safe default).
    #[default]
    Unlocked,
    /// No security access needed (reads, signed metadata).
    None,
}

/// Session and security a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// Sessions.
    pub session: SessionRequirement,
    /// Security access.
    pub security: SecurityRequirement,
}

impl Requirement {
    /// Any session, no security access.
    pub const OPEN: Requirement = Requirement {
        session: SessionRequirement::Any,
        security: SecurityRequirement::None,
    };
    /// Extended or programming session, no security access.
    pub const NON_DEFAULT: Requirement = Requirement {
        session: SessionRequirement::NonDefault,
        security: SecurityRequirement::None,
    };
    /// Extended or programming session, security access unlocked.
    pub const NON_DEFAULT_UNLOCKED: Requirement = Requirement {
        session: SessionRequirement::NonDefault,
        security: SecurityRequirement::Unlocked,
    };
    /// Programming session, security access unlocked.
    pub const PROGRAMMING: Requirement = Requirement {
        session: SessionRequirement::Programming,
        security: SecurityRequirement::Unlocked,
    };

    fn session_ok(&self, s: Session) -> bool {
        match self.session {
            SessionRequirement::Any => true,
            SessionRequirement::NonDefault => s != Session::Default,
            SessionRequirement::Programming => s == Session::Programming,
        }
    }
}

/// Which requests need which session and security access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    /// ReadDataByIdentifier (all DIDs).
    pub read_did: Requirement,
    /// WriteDataByIdentifier, for DIDs not listed in `write_dids`.
    pub write_did: Requirement,
    /// Per-DID write requirements.
    pub write_dids: Vec<(u16, Requirement)>,
    /// RequestDownload / TransferData / RequestTransferExit.
    pub download: Requirement,
    /// RoutineControl, for routines not listed in `routines`.
    pub routine: Requirement,
    /// Per-routine requirements.
    pub routines: Vec<(u16, Requirement)>,
    /// ECUReset.
    pub reset: Requirement,
}

impl AccessPolicy {
    /// The policy of `docs/secondary-protocol.md`: reads are open; signed
    /// metadata may be written and verified in a non-default session without
    /// security access (its signatures authenticate it); the time (not signed)
    /// and everything that touches flash need security access, flash the
    /// programming session too; unknown routines need it as well.
    pub fn uptane() -> Self {
        use protocol::{did, routine};
        AccessPolicy {
            read_did: Requirement::OPEN,
            write_did: Requirement::NON_DEFAULT,
            write_dids: vec![(did::TIME, Requirement::NON_DEFAULT_UNLOCKED)],
            download: Requirement::PROGRAMMING,
            routine: Requirement::PROGRAMMING,
            routines: vec![
                (routine::VERIFY_METADATA, Requirement::NON_DEFAULT),
                (routine::GENERATE_REPORT, Requirement::NON_DEFAULT),
                (routine::REPORT_DELIVERED, Requirement::NON_DEFAULT_UNLOCKED),
                (routine::ERASE_MEMORY, Requirement::PROGRAMMING),
                (
                    routine::CHECK_PROGRAMMING_DEPENDENCIES,
                    Requirement::PROGRAMMING,
                ),
                (routine::VERIFY_IMAGE, Requirement::PROGRAMMING),
                (routine::ACTIVATE, Requirement::PROGRAMMING),
            ],
            reset: Requirement::OPEN,
        }
    }

    fn for_write(&self, d: u16) -> Requirement {
        self.write_dids
            .iter()
            .find(|(x, _)| *x == d)
            .map_or(self.write_did, |(_, r)| *r)
    }

    fn for_routine(&self, r: u16) -> Requirement {
        self.routines
            .iter()
            .find(|(x, _)| *x == r)
            .map_or(self.routine, |(_, q)| *q)
    }
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy::uptane()
    }
}

/// Default S3server: a non-default session falls back to default after 5 s
/// without a request.
pub const DEFAULT_S3: Duration = Duration::from_secs(5);
/// Default number of invalid keys before the lockout.
pub const DEFAULT_MAX_ATTEMPTS: u8 = 3;
/// Default lockout after too many invalid keys.
pub const DEFAULT_LOCKOUT: Duration = Duration::from_secs(10);
/// Default maxNumberOfBlockLength: one classic ISO-TP PDU.
pub const DEFAULT_MAX_BLOCK_LENGTH: u32 = 4095;

/// Server settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// P2/P2* announced in DiagnosticSessionControl responses; the server
    /// repeats 0x78 every P2*/2 while busy.
    pub timing: ServerTiming,
    /// S3server.
    pub s3: Duration,
    /// The requestSeed level that unlocks (sendKey is level + 1).
    pub security_level: u8,
    /// Invalid keys allowed before the lockout (the last one gets 0x36).
    pub max_attempts: u8,
    /// How long requestSeed answers 0x37 after 0x36.
    pub lockout: Duration,
    /// maxNumberOfBlockLength announced for downloads (SID and counter
    /// included; at least 3). Clamp it to the transport's PDU limit.
    pub max_block_length: u32,
    /// Longest response the transport can carry (longer ones get 0x14).
    pub max_response_len: usize,
    /// Access policy.
    pub policy: AccessPolicy,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            timing: ServerTiming::default(),
            s3: DEFAULT_S3,
            security_level: protocol::SECURITY_LEVEL,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            lockout: DEFAULT_LOCKOUT,
            max_block_length: DEFAULT_MAX_BLOCK_LENGTH,
            max_response_len: DEFAULT_MAX_BLOCK_LENGTH as usize,
            policy: AccessPolicy::uptane(),
        }
    }
}

/// Counters for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// TransferData blocks written to the sink.
    pub blocks_written: u64,
    /// Repeated TransferData blocks acknowledged without writing.
    pub blocks_repeated: u64,
    /// `7F xx 78` responses sent.
    pub pending_sent: u64,
    /// Invalid keys received.
    pub invalid_keys: u64,
    /// Times S3 expired.
    pub s3_timeouts: u64,
}

#[derive(Debug, Default)]
struct SecurityState {
    unlocked: bool,
    seed: Option<Vec<u8>>,
    failed: u8,
    locked_until: Option<Instant>,
}

/// Download state: waiting for TransferData.
#[derive(Debug)]
pub struct ExpectTransferData {
    download: DownloadRequest,
    max_block_length: u64,
    received: u64,
    next_counter: u8,
    last: Option<(u8, usize)>,
}

/// Download state: RequestTransferExit accepted, the sink is finishing.
#[derive(Debug)]
pub struct ExpectSinkFinish;

#[derive(Debug, Default)]
enum Transfer {
    #[default]
    Idle,
    Receiving(ExpectTransferData),
    Finishing(ExpectSinkFinish),
}

enum Reply {
    Positive(Vec<u8>),
    Negative(Nrc),
    Pending(PendingOp),
}

#[derive(Debug, Clone)]
enum PendingOp {
    Routine {
        control: RoutineControlType,
        routine: u16,
        data: Vec<u8>,
    },
    TransferExit,
}

#[derive(Debug)]
struct Pending {
    sid: u8,
    op: PendingOp,
    last_sent: Instant,
}

impl ExpectTransferData {
    fn block<S: ImageSink + ?Sized>(
        mut self,
        sink: &mut S,
        stats: &mut ServerStats,
        counter: u8,
        data: &[u8],
    ) -> (Transfer, Reply) {
        let ack = |c: u8| {
            Reply::Positive(
                Response::TransferData {
                    counter: c,
                    data: vec![],
                }
                .encode(),
            )
        };
        if data.is_empty() || data.len() as u64 + 2 > self.max_block_length {
            return (
                Transfer::Receiving(self),
                Reply::Negative(Nrc::IncorrectMessageLengthOrInvalidFormat),
            );
        }
        // ISO 14229-1 TransferData: a repeat of the last accepted block (its
        // response was lost) is acknowledged again, without writing it twice.
        if counter != self.next_counter {
            return match self.last {
                Some((c, len)) if c == counter && len == data.len() => {
                    stats.blocks_repeated += 1;
                    (Transfer::Receiving(self), ack(counter))
                }
                _ => (
                    Transfer::Receiving(self),
                    Reply::Negative(Nrc::WrongBlockSequenceCounter),
                ),
            };
        }
        if self.received + data.len() as u64 > self.download.size {
            return (
                Transfer::Receiving(self),
                Reply::Negative(Nrc::RequestOutOfRange),
            );
        }
        if let Err(nrc) = sink.write(self.received, data) {
            sink.abort();
            return (Transfer::Idle, Reply::Negative(nrc));
        }
        stats.blocks_written += 1;
        self.received += data.len() as u64;
        self.last = Some((counter, data.len()));
        self.next_counter = counter.wrapping_add(1);
        (Transfer::Receiving(self), ack(counter))
    }

    fn exit<S: ImageSink + ?Sized>(self, sink: &mut S) -> (Transfer, Reply) {
        if self.received != self.download.size {
            return (
                Transfer::Receiving(self),
                Reply::Negative(Nrc::RequestSequenceError),
            );
        }
        ExpectSinkFinish.finish(sink)
    }
}

impl ExpectSinkFinish {
    fn finish<S: ImageSink + ?Sized>(self, sink: &mut S) -> (Transfer, Reply) {
        match sink.finish() {
            Ok(Progress::Ready(record)) => (
                Transfer::Idle,
                Reply::Positive(Response::RequestTransferExit { data: record }.encode()),
            ),
            Ok(Progress::Busy) => (
                Transfer::Finishing(self),
                Reply::Pending(PendingOp::TransferExit),
            ),
            Err(nrc) => {
                sink.abort();
                (Transfer::Idle, Reply::Negative(nrc))
            }
        }
    }
}

/// A sans-IO UDS server for one ECU.
pub struct EcuServer<B> {
    backend: B,
    config: ServerConfig,
    algorithm: Box<dyn SecurityAlgorithm + Send>,
    rng: Box<dyn RngCore + Send>,
    session: Session,
    security: SecurityState,
    transfer: Transfer,
    pending: Option<Pending>,
    last_activity: Option<Instant>,
    stats: ServerStats,
}

impl<B> std::fmt::Debug for EcuServer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcuServer")
            .field("session", &self.session)
            .field("unlocked", &self.security.unlocked)
            .field("transfer", &self.transfer)
            .field("pending", &self.pending)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<B: EcuBackend> EcuServer<B> {
    /// A server in the default session, locked. `rng` makes the seeds (use
    /// `rand_core::OsRng` in production).
    pub fn new(
        backend: B,
        config: ServerConfig,
        algorithm: Box<dyn SecurityAlgorithm + Send>,
        rng: Box<dyn RngCore + Send>,
    ) -> Self {
        EcuServer {
            backend,
            config,
            algorithm,
            rng,
            session: Session::Default,
            security: SecurityState::default(),
            transfer: Transfer::Idle,
            pending: None,
            last_activity: None,
            stats: ServerStats::default(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The active session.
    pub fn session(&self) -> Session {
        self.session
    }

    /// Whether security access is unlocked.
    pub fn is_unlocked(&self) -> bool {
        self.security.unlocked
    }

    /// Whether a request is being processed (0x78 sent, final response due).
    pub fn is_busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    fn cx(&self) -> Context {
        Context {
            session: self.session,
            unlocked: self.security.unlocked,
        }
    }

    /// Handle one request PDU received at `now`. Returns the response PDU, or
    /// `None` when there is none (suppressed positive response, empty input).
    pub fn handle(&mut self, request: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.check_s3(now);
        let &sid = request.first()?;
        if self.pending.is_some() {
            // ISO 14229-1: a server busy with a request answers others 0x21.
            return Some(Response::negative(sid, Nrc::BusyRepeatRequest).encode());
        }
        let (reply, suppress) = match Request::decode(request) {
            Ok(req) => {
                let suppress = req.suppress_response();
                (self.dispatch(req, now), suppress)
            }
            Err(e) => (
                Reply::Negative(e.nrc().unwrap_or(Nrc::GeneralReject)),
                false,
            ),
        };
        self.last_activity = Some(now);
        match reply {
            Reply::Positive(bytes) if bytes.len() > self.config.max_response_len => {
                Some(Response::negative(sid, Nrc::ResponseTooLong).encode())
            }
            Reply::Positive(_) if suppress => None,
            Reply::Positive(bytes) => Some(bytes),
            Reply::Negative(nrc) => Some(Response::negative(sid, nrc).encode()),
            Reply::Pending(op) => {
                self.pending = Some(Pending {
                    sid,
                    op,
                    last_sent: now,
                });
                self.stats.pending_sent += 1;
                Some(pending(sid))
            }
        }
    }

    /// Let time pass: finish a pending operation (its final response, which is
    /// sent even if the request suppressed the positive response), repeat 0x78
    /// every P2*/2 while it is still busy, and apply the S3 timeout. Call it
    /// whenever no request is waiting, at least every P2*/2 while
    /// [`EcuServer::is_busy`].
    pub fn poll(&mut self, now: Instant) -> Option<Vec<u8>> {
        let Some(p) = self.pending.take() else {
            self.check_s3(now);
            return None;
        };
        let cx = self.cx();
        let reply = match &p.op {
            PendingOp::Routine {
                control,
                routine,
                data,
            } => match self.backend.routine(*control, *routine, data, &cx) {
                Ok(Progress::Ready(status)) => Reply::Positive(
                    Response::RoutineControl {
                        control: *control,
                        routine: *routine,
                        status,
                    }
                    .encode(),
                ),
                Ok(Progress::Busy) => Reply::Pending(p.op.clone()),
                Err(nrc) => Reply::Negative(nrc),
            },
            PendingOp::TransferExit => match std::mem::take(&mut self.transfer) {
                Transfer::Finishing(state) => {
                    let (next, reply) = state.finish(&mut self.backend);
                    self.transfer = next;
                    reply
                }
                other => {
                    self.transfer = other;
                    Reply::Negative(Nrc::RequestSequenceError)
                }
            },
        };
        self.last_activity = Some(now);
        match reply {
            Reply::Pending(op) => {
                let resend = self.config.timing.p2_star / 2;
                if now.saturating_duration_since(p.last_sent) >= resend {
                    self.pending = Some(Pending {
                        sid: p.sid,
                        op,
                        last_sent: now,
                    });
                    self.stats.pending_sent += 1;
                    Some(pending(p.sid))
                } else {
                    self.pending = Some(Pending { op, ..p });
                    None
                }
            }
            Reply::Positive(bytes) => Some(bytes),
            Reply::Negative(nrc) => Some(Response::negative(p.sid, nrc).encode()),
        }
    }

    fn check_s3(&mut self, now: Instant) {
        if self.session == Session::Default || self.pending.is_some() {
            return;
        }
        if let Some(t) = self.last_activity {
            if now.saturating_duration_since(t) > self.config.s3 {
                self.stats.s3_timeouts += 1;
                self.enter_session(Session::Default);
            }
        }
    }

    fn enter_session(&mut self, to: Session) {
        let from = self.session;
        // ISO 14229-1: every session transition relocks security access and
        // ends an active download.
        self.security.unlocked = false;
        self.security.seed = None;
        if !matches!(self.transfer, Transfer::Idle) {
            self.backend.abort();
        }
        self.transfer = Transfer::Idle;
        self.session = to;
        self.backend.session_changed(from, to);
    }

    fn check(&self, req: Requirement, service_level: bool) -> Result<(), Nrc> {
        if !req.session_ok(self.session) {
            // A service unavailable in this session: 0x7F; an identifier
            // unavailable in this session: 0x31 (ISO 14229-1 RDBI/WDBI/RC).
            return Err(if service_level {
                Nrc::ServiceNotSupportedInActiveSession
            } else {
                Nrc::RequestOutOfRange
            });
        }
        if req.security == SecurityRequirement::Unlocked && !self.security.unlocked {
            return Err(Nrc::SecurityAccessDenied);
        }
        Ok(())
    }

    fn dispatch(&mut self, req: Request, now: Instant) -> Reply {
        match self.dispatch_inner(req, now) {
            Ok(reply) => reply,
            Err(nrc) => Reply::Negative(nrc),
        }
    }

    fn dispatch_inner(&mut self, req: Request, now: Instant) -> Result<Reply, Nrc> {
        let positive = |r: Response| Ok(Reply::Positive(r.encode()));
        match req {
            Request::DiagnosticSessionControl { session, .. } => {
                if !matches!(
                    session,
                    Session::Default | Session::Programming | Session::Extended
                ) {
                    return Err(Nrc::SubFunctionNotSupported);
                }
                self.enter_session(session);
                positive(Response::DiagnosticSessionControl {
                    session,
                    timing: self.config.timing,
                })
            }
            Request::EcuReset { reset_type, .. } => {
                self.check(self.config.policy.reset, true)?;
                self.backend.reset(reset_type)?;
                self.enter_session(Session::Default);
                positive(Response::EcuReset {
                    reset_type,
                    power_down_time: None,
                })
            }
            Request::RequestSeed { level, .. } => {
                self.security_precheck(level, now)?;
                let len = self.algorithm.seed_len().max(1);
                let seed = if self.security.unlocked {
                    // ISO 14229-1: an unlocked server answers an all-zero seed.
                    vec![0; len]
                } else {
                    let mut seed = vec![0u8; len];
                    while seed.iter().all(|b| *b == 0) {
                        self.rng.fill_bytes(&mut seed);
                    }
                    self.security.seed = Some(seed.clone());
                    seed
                };
                positive(Response::SecurityAccess {
                    sub_function: level,
                    seed,
                })
            }
            Request::SendKey { level, key } => {
                self.security_precheck(level, now)?;
                let Some(seed) = self.security.seed.take() else {
                    return Err(Nrc::RequestSequenceError);
                };
                if self.algorithm.verify_key(level, &seed, &key) {
                    self.security.unlocked = true;
                    self.security.failed = 0;
                    return positive(Response::SecurityAccess {
                        sub_function: level.wrapping_add(1),
                        seed: vec![],
                    });
                }
                self.stats.invalid_keys += 1;
                self.security.failed = self.security.failed.saturating_add(1);
                if self.security.failed >= self.config.max_attempts {
                    self.security.locked_until = Some(now + self.config.lockout);
                    return Err(Nrc::ExceededNumberOfAttempts);
                }
                Err(Nrc::InvalidKey)
            }
            Request::ReadDataByIdentifier { dids } => {
                self.check(self.config.policy.read_did, true)?;
                let cx = self.cx();
                let mut out = vec![sid::READ_DATA_BY_IDENTIFIER + sid::POSITIVE_RESPONSE_OFFSET];
                for d in dids {
                    let data = self.backend.read_did(d, &cx)?;
                    out.extend_from_slice(&d.to_be_bytes());
                    out.extend_from_slice(&data);
                    if out.len() > self.config.max_response_len {
                        return Err(Nrc::ResponseTooLong);
                    }
                }
                Ok(Reply::Positive(out))
            }
            Request::WriteDataByIdentifier { did, data } => {
                self.check(self.config.policy.for_write(did), false)?;
                let cx = self.cx();
                self.backend.write_did(did, &data, &cx)?;
                positive(Response::WriteDataByIdentifier { did })
            }
            Request::RoutineControl {
                control,
                routine,
                data,
                ..
            } => {
                self.check(self.config.policy.for_routine(routine), false)?;
                let cx = self.cx();
                match self.backend.routine(control, routine, &data, &cx)? {
                    Progress::Ready(status) => positive(Response::RoutineControl {
                        control,
                        routine,
                        status,
                    }),
                    Progress::Busy => Ok(Reply::Pending(PendingOp::Routine {
                        control,
                        routine,
                        data,
                    })),
                }
            }
            Request::RequestDownload {
                data_format,
                location,
            } => {
                self.check(self.config.policy.download, true)?;
                if !matches!(self.transfer, Transfer::Idle) {
                    return Err(Nrc::ConditionsNotCorrect);
                }
                let MemoryLocation { address, size, .. } = location;
                if size == 0 {
                    return Err(Nrc::RequestOutOfRange);
                }
                let download = DownloadRequest {
                    address,
                    size,
                    data_format,
                };
                self.backend.begin(&download)?;
                let max = u64::from(self.config.max_block_length.max(3));
                self.transfer = Transfer::Receiving(ExpectTransferData {
                    download,
                    max_block_length: max,
                    received: 0,
                    next_counter: 1,
                    last: None,
                });
                positive(Response::RequestDownload {
                    max_block_length: max,
                })
            }
            Request::TransferData { counter, data } => {
                self.check(self.config.policy.download, true)?;
                match std::mem::take(&mut self.transfer) {
                    Transfer::Receiving(state) => {
                        let (next, reply) =
                            state.block(&mut self.backend, &mut self.stats, counter, &data);
                        self.transfer = next;
                        Ok(reply)
                    }
                    other => {
                        self.transfer = other;
                        Err(Nrc::RequestSequenceError)
                    }
                }
            }
            Request::RequestTransferExit { .. } => {
                self.check(self.config.policy.download, true)?;
                match std::mem::take(&mut self.transfer) {
                    Transfer::Receiving(state) => {
                        let (next, reply) = state.exit(&mut self.backend);
                        self.transfer = next;
                        Ok(reply)
                    }
                    other => {
                        self.transfer = other;
                        Err(Nrc::RequestSequenceError)
                    }
                }
            }
            Request::TesterPresent { .. } => positive(Response::TesterPresent),
        }
    }

    fn security_precheck(&mut self, level: u8, now: Instant) -> Result<(), Nrc> {
        if self.session == Session::Default {
            return Err(Nrc::ServiceNotSupportedInActiveSession);
        }
        if level != self.config.security_level {
            return Err(Nrc::SubFunctionNotSupported);
        }
        match self.security.locked_until {
            Some(until) if now < until => Err(Nrc::RequiredTimeDelayNotExpired),
            Some(_) => {
                // The delay is over: the attempt counter starts again.
                self.security.locked_until = None;
                self.security.failed = 0;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

fn pending(sid: u8) -> Vec<u8> {
    Response::negative(sid, Nrc::RequestCorrectlyReceivedResponsePending).encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{did, routine};
    use crate::security::HmacSha256Algorithm;

    /// Deterministic seeds for tests.
    struct CountingRng(u64);
    impl RngCore for CountingRng {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = (self.next_u64() >> 56) as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    #[derive(Default)]
    struct Mem {
        image: Vec<u8>,
        writes: usize,
        busy: u32,
        dids: std::collections::BTreeMap<u16, Vec<u8>>,
        aborted: usize,
    }
    impl ImageSink for Mem {
        fn begin(&mut self, d: &DownloadRequest) -> Result<(), Nrc> {
            if d.address != 0 {
                return Err(Nrc::RequestOutOfRange);
            }
            self.image = Vec::new();
            Ok(())
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Nrc> {
            assert_eq!(offset, self.image.len() as u64);
            self.writes += 1;
            self.image.extend_from_slice(data);
            Ok(())
        }
        fn finish(&mut self) -> Result<Progress<Vec<u8>>, Nrc> {
            Ok(Progress::Ready(vec![]))
        }
        fn abort(&mut self) {
            self.aborted += 1;
        }
    }
    impl EcuBackend for Mem {
        fn read_did(&mut self, d: u16, _: &Context) -> Result<Vec<u8>, Nrc> {
            self.dids.get(&d).cloned().ok_or(Nrc::RequestOutOfRange)
        }
        fn write_did(&mut self, d: u16, data: &[u8], _: &Context) -> Result<(), Nrc> {
            self.dids.insert(d, data.to_vec());
            Ok(())
        }
        fn routine(
            &mut self,
            _: RoutineControlType,
            r: u16,
            _: &[u8],
            _: &Context,
        ) -> Result<Progress<Vec<u8>>, Nrc> {
            if r == routine::VERIFY_IMAGE && self.busy > 0 {
                self.busy -= 1;
                return Ok(Progress::Busy);
            }
            Ok(Progress::Ready(vec![0]))
        }
    }

    const SECRET: &[u8] = b"per-ecu secret, 32 bytes long!!!";

    fn server() -> EcuServer<Mem> {
        EcuServer::new(
            Mem::default(),
            ServerConfig::default(),
            Box::new(HmacSha256Algorithm::new(SECRET).unwrap()),
            Box::new(CountingRng(7)),
        )
    }

    fn unlock(s: &mut EcuServer<Mem>, now: Instant) {
        assert_eq!(s.handle(&[0x10, 0x02], now).unwrap()[0], 0x50);
        let seed = s.handle(&[0x27, 0x11], now).unwrap();
        assert_eq!(&seed[..2], &[0x67, 0x11]);
        let key = HmacSha256Algorithm::new(SECRET)
            .unwrap()
            .compute_key(0x11, &seed[2..]);
        let mut req = vec![0x27, 0x12];
        req.extend(key);
        assert_eq!(s.handle(&req, now).unwrap(), [0x67, 0x12]);
    }

    #[test]
    fn session_control_reports_timing() {
        let mut s = server();
        let now = Instant::now();
        assert_eq!(
            s.handle(&[0x10, 0x03], now).unwrap(),
            [0x50, 0x03, 0x00, 0x32, 0x01, 0xF4]
        );
        assert_eq!(s.session(), Session::Extended);
        assert_eq!(s.handle(&[0x10, 0x81], now), None, "suppressed");
        assert_eq!(s.handle(&[0x10, 0x05], now).unwrap(), [0x7F, 0x10, 0x12]);
        assert_eq!(s.handle(&[0x10], now).unwrap(), [0x7F, 0x10, 0x13]);
        assert_eq!(s.handle(&[0x85, 0x01], now).unwrap(), [0x7F, 0x85, 0x11]);
        assert_eq!(s.handle(&[], now), None);
    }

    #[test]
    fn security_access_nrcs() {
        let mut s = server();
        let now = Instant::now();
        assert_eq!(
            s.handle(&[0x27, 0x11], now).unwrap(),
            [0x7F, 0x27, 0x7F],
            "not in default session"
        );
        s.handle(&[0x10, 0x02], now);
        assert_eq!(
            s.handle(&[0x27, 0x12, 1, 2], now).unwrap(),
            [0x7F, 0x27, 0x24],
            "key before seed"
        );
        assert_eq!(
            s.handle(&[0x27, 0x01], now).unwrap(),
            [0x7F, 0x27, 0x12],
            "other level"
        );
        let mut t = now;
        for attempt in 1..=3u8 {
            let seed = s.handle(&[0x27, 0x11], t).unwrap();
            assert_eq!(seed.len(), 18);
            let r = s
                .handle(
                    &[0x27, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    t,
                )
                .unwrap();
            assert_eq!(r, [0x7F, 0x27, if attempt < 3 { 0x35 } else { 0x36 }]);
            t += Duration::from_millis(10);
        }
        assert_eq!(
            s.handle(&[0x27, 0x11], t).unwrap(),
            [0x7F, 0x27, 0x37],
            "delay enforced"
        );
        assert_eq!(s.stats().invalid_keys, 3);
        // Still locked out just before the delay ends, unlocked after.
        let t = t + DEFAULT_LOCKOUT;
        s.handle(&[0x3E, 0x80], t);
        unlock(&mut s, t);
        assert!(s.is_unlocked());
        let zero = s.handle(&[0x27, 0x11], t).unwrap();
        assert!(zero[2..].iter().all(|b| *b == 0), "unlocked: zero seed");
        // A session change relocks.
        s.handle(&[0x10, 0x03], t);
        assert!(!s.is_unlocked());
    }

    #[test]
    fn access_policy() {
        let mut s = server();
        let now = Instant::now();
        s.backend_mut()
            .dids
            .insert(did::ECU_SERIAL, b"ECU-1".to_vec());
        assert_eq!(
            s.handle(&[0x22, 0xF1, 0xA0], now).unwrap(),
            b"\x62\xF1\xA0ECU-1"
        );
        assert_eq!(
            s.handle(&[0x22, 0xF1, 0xFF], now).unwrap(),
            [0x7F, 0x22, 0x31]
        );
        assert_eq!(
            s.handle(&[0x2E, 0xF1, 0xC3, b'{'], now).unwrap(),
            [0x7F, 0x2E, 0x31],
            "default session"
        );
        assert_eq!(
            s.handle(&[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0, 1], now)
                .unwrap(),
            [0x7F, 0x34, 0x7F]
        );
        s.handle(&[0x10, 0x03], now);
        assert_eq!(
            s.handle(&[0x2E, 0xF1, 0xC3, b'{'], now).unwrap(),
            [0x6E, 0xF1, 0xC3]
        );
        assert_eq!(
            s.handle(&[0x2E, 0xF1, 0xA5, 0, 0, 0, 0, 0, 0, 0, 1], now)
                .unwrap(),
            [0x7F, 0x2E, 0x33],
            "time needs security access"
        );
        assert_eq!(
            s.handle(&[0x31, 0x01, 0xD0, 0x00], now).unwrap(),
            [0x71, 0x01, 0xD0, 0x00, 0x00]
        );
        assert_eq!(
            s.handle(&[0x31, 0x01, 0xD0, 0x02], now).unwrap(),
            [0x7F, 0x31, 0x31],
            "activate: programming only"
        );
        s.handle(&[0x10, 0x02], now);
        assert_eq!(
            s.handle(&[0x31, 0x01, 0xD0, 0x02], now).unwrap(),
            [0x7F, 0x31, 0x33],
            "activate: locked"
        );
    }

    #[test]
    fn download_sequence_nrcs() {
        let mut s = server();
        let now = Instant::now();
        unlock(&mut s, now);
        assert_eq!(
            s.handle(&[0x36, 0x01, 0xAA], now).unwrap(),
            [0x7F, 0x36, 0x24],
            "36 without 34"
        );
        assert_eq!(
            s.handle(&[0x37], now).unwrap(),
            [0x7F, 0x37, 0x24],
            "37 without 34"
        );
        assert_eq!(
            s.handle(&[0x34, 0x00, 0x44, 0, 0, 0, 1, 0, 0, 0, 4], now)
                .unwrap(),
            [0x7F, 0x34, 0x31],
            "sink refuses address"
        );
        assert_eq!(
            s.handle(&[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0, 0], now)
                .unwrap(),
            [0x7F, 0x34, 0x31],
            "zero size"
        );
        assert_eq!(
            s.handle(&[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0, 4], now)
                .unwrap(),
            [0x74, 0x20, 0x0F, 0xFF]
        );
        assert_eq!(
            s.handle(&[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0, 4], now)
                .unwrap(),
            [0x7F, 0x34, 0x22],
            "already active"
        );
        assert_eq!(
            s.handle(&[0x36, 0x02, 0xAA], now).unwrap(),
            [0x7F, 0x36, 0x73],
            "counter must start at 1"
        );
        assert_eq!(
            s.handle(&[0x36, 0x01], now).unwrap(),
            [0x7F, 0x36, 0x13],
            "no data"
        );
        assert_eq!(
            s.handle(&[0x36, 0x01, 0xAA, 0xBB], now).unwrap(),
            [0x76, 0x01]
        );
        assert_eq!(
            s.handle(&[0x36, 0x01, 0xAA, 0xBB], now).unwrap(),
            [0x76, 0x01],
            "repeat acked"
        );
        assert_eq!(
            s.handle(&[0x36, 0x01, 0xAA], now).unwrap(),
            [0x7F, 0x36, 0x73],
            "not the same block"
        );
        assert_eq!(s.backend().writes, 1, "repeat not rewritten");
        assert_eq!(
            s.handle(&[0x37], now).unwrap(),
            [0x7F, 0x37, 0x24],
            "incomplete"
        );
        assert_eq!(
            s.handle(&[0x36, 0x02, 1, 2, 3], now).unwrap(),
            [0x7F, 0x36, 0x31],
            "beyond memorySize"
        );
        assert_eq!(
            s.handle(&[0x36, 0x02, 0xCC, 0xDD], now).unwrap(),
            [0x76, 0x02]
        );
        assert_eq!(s.handle(&[0x37], now).unwrap(), [0x77]);
        assert_eq!(s.backend().image, [0xAA, 0xBB, 0xCC, 0xDD]);
        let mut big = vec![0x36, 0x03];
        big.extend(vec![0; 4094]);
        s.handle(&[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x10, 0], now);
        assert_eq!(
            s.handle(&big, now).unwrap(),
            [0x7F, 0x36, 0x13],
            "block longer than maxNumberOfBlockLength"
        );
    }

    #[test]
    fn pending_routine_sends_78_then_final() {
        let mut s = server();
        let mut now = Instant::now();
        unlock(&mut s, now);
        s.backend_mut().busy = 3;
        assert_eq!(
            s.handle(&[0x31, 0x01, 0xD0, 0x01], now).unwrap(),
            [0x7F, 0x31, 0x78]
        );
        assert!(s.is_busy());
        assert_eq!(
            s.handle(&[0x3E, 0x00], now).unwrap(),
            [0x7F, 0x3E, 0x21],
            "busy"
        );
        assert_eq!(
            s.poll(now + Duration::from_millis(10)),
            None,
            "busy, 0x78 not yet due"
        );
        now += Duration::from_millis(2600);
        assert_eq!(
            s.poll(now).unwrap(),
            [0x7F, 0x31, 0x78],
            "repeated every P2*/2"
        );
        assert_eq!(s.poll(now).unwrap(), [0x71, 0x01, 0xD0, 0x01, 0x00]);
        assert!(!s.is_busy());
        assert_eq!(s.stats().pending_sent, 2);
    }

    #[test]
    fn s3_timeout_returns_to_default_and_aborts_download() {
        let mut s = server();
        let now = Instant::now();
        unlock(&mut s, now);
        s.handle(&[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0, 4], now);
        // Tester present keeps the session alive.
        let t = now + Duration::from_secs(4);
        assert_eq!(s.handle(&[0x3E, 0x80], t), None);
        assert_eq!(s.poll(t + Duration::from_secs(4)), None);
        assert_eq!(s.session(), Session::Programming);
        s.poll(t + Duration::from_secs(6));
        assert_eq!(s.session(), Session::Default);
        assert!(!s.is_unlocked());
        assert_eq!(s.backend().aborted, 1);
        assert_eq!(s.stats().s3_timeouts, 1);
        assert_eq!(
            s.handle(&[0x36, 0x01, 0], t + Duration::from_secs(6))
                .unwrap(),
            [0x7F, 0x36, 0x7F]
        );
    }

    #[test]
    fn reset_returns_to_default() {
        let mut s = server();
        let now = Instant::now();
        unlock(&mut s, now);
        assert_eq!(s.handle(&[0x11, 0x01], now).unwrap(), [0x51, 0x01]);
        assert_eq!(s.session(), Session::Default);
        assert_eq!(s.handle(&[0x11, 0x04], now).unwrap(), [0x7F, 0x11, 0x12]);
    }
}
