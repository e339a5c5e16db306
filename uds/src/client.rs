//! The tester (Primary) side: [`FlashClient`], a sans-IO state machine that
//! runs a [`FlashPlan`] against one ECU.
//!
//! The host loop asks [`FlashClient::next_action`] what to do, and reports what
//! happened with [`FlashClient::handle_response`] or
//! [`FlashClient::handle_timeout`]:
//!
//! ```
//! # use secureev_uds::client::*;
//! # use secureev_uds::codec::Session;
//! # use secureev_uds::security::HmacSha256Algorithm;
//! # use std::time::Instant;
//! let plan = FlashPlan::new().step(Step::Session(Session::Extended));
//! let alg = HmacSha256Algorithm::new(&[7; 32]).unwrap();
//! let mut client = FlashClient::new(plan, Box::new(alg), ClientConfig::default()).unwrap();
//! let now = Instant::now();
//! assert_eq!(client.next_action(now), Action::Send(vec![0x10, 0x03]));
//! // ... the transport sends it and waits at most this long:
//! assert!(matches!(client.next_action(now), Action::Wait(_)));
//! client.handle_response(&[0x50, 0x03, 0x00, 0x32, 0x01, 0xF4], now).unwrap();
//! assert_eq!(client.next_action(now), Action::Done);
//! ```
//!
//! Each request's expectation is a state that consumes itself and returns the
//! next one. Timing follows ISO 14229-2: P2 for the first response, P2* after
//! every `7F xx 78`. A request that times out is sent again (a TransferData
//! block with the same counter, which the server acknowledges without
//! rewriting; a lost key restarts at requestSeed); a stale acknowledgement of
//! the previous block is ignored.

use crate::codec::{
    sid, MemoryLocation, Request, ResetType, Response, RoutineControlType, Session,
};
use crate::error::{Error, Result};
use crate::nrc::Nrc;
use crate::protocol::{self, MetadataRole, ReportInfo, ResultCode};
use crate::security::SecurityAlgorithm;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes to download, read on demand.
pub trait ImageSource {
    /// Total size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` with the bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), String>;
}

fn slice_read(data: &[u8], offset: u64, buf: &mut [u8]) -> std::result::Result<(), String> {
    let start = usize::try_from(offset).map_err(|e| e.to_string())?;
    let src = data.get(start..start + buf.len()).ok_or_else(|| {
        format!(
            "read of {} bytes at {offset} beyond {} bytes",
            buf.len(),
            data.len()
        )
    })?;
    buf.copy_from_slice(src);
    Ok(())
}

impl ImageSource for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), String> {
        slice_read(self, offset, buf)
    }
}

impl ImageSource for Arc<[u8]> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), String> {
        slice_read(self, offset, buf)
    }
}

/// How a routine's status record is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutineCheck {
    /// Any status is fine (it is returned in the [`Outcome`]).
    Any,
    /// The first byte must be a successful [`ResultCode`] (`Ok` or `NoUpdate`;
    /// an empty record counts as `Ok`).
    Success,
    /// The first byte must be [`ResultCode::Ok`].
    Ok,
}

/// One step of a plan.
pub enum Step {
    /// DiagnosticSessionControl.
    Session(Session),
    /// SecurityAccess at this (odd) level.
    Unlock {
        /// requestSeed level.
        level: u8,
    },
    /// WriteDataByIdentifier.
    WriteDid {
        /// DID.
        did: u16,
        /// Data.
        data: Vec<u8>,
    },
    /// ReadDataByIdentifier (the data goes to [`Outcome::reads`]).
    ReadDid {
        /// DID.
        did: u16,
    },
    /// RequestDownload, TransferData blocks, RequestTransferExit.
    Download {
        /// memoryAddress (ALFID 0x44).
        address: u32,
        /// dataFormatIdentifier.
        data_format: u8,
        /// The bytes.
        source: Box<dyn ImageSource + Send>,
    },
    /// RoutineControl startRoutine (the status goes to [`Outcome::routines`]).
    Routine {
        /// Routine identifier.
        routine: u16,
        /// routineControlOptionRecord.
        data: Vec<u8>,
        /// How to judge the result.
        check: RoutineCheck,
    },
    /// Generate and read the signed ECU version report
    /// ([`protocol::routine::GENERATE_REPORT`], then the chunk DIDs).
    ReadReport {
        /// Nonce the ECU puts in the report.
        nonce: [u8; 16],
    },
    /// ECUReset.
    Reset(ResetType),
    /// TesterPresent.
    TesterPresent,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Session(s) => write!(f, "Session({s:?})"),
            Step::Unlock { level } => write!(f, "Unlock(0x{level:02X})"),
            Step::WriteDid { did, data } => {
                write!(f, "WriteDid(0x{did:04X}, {} bytes)", data.len())
            }
            Step::ReadDid { did } => write!(f, "ReadDid(0x{did:04X})"),
            Step::Download {
                address,
                data_format,
                source,
            } => write!(
                f,
                "Download(0x{address:08X}, format 0x{data_format:02X}, {} bytes)",
                source.size()
            ),
            Step::Routine {
                routine,
                data,
                check,
            } => {
                write!(
                    f,
                    "Routine(0x{routine:04X}, {} bytes, {check:?})",
                    data.len()
                )
            }
            Step::ReadReport { .. } => write!(f, "ReadReport"),
            Step::Reset(t) => write!(f, "Reset({t:?})"),
            Step::TesterPresent => write!(f, "TesterPresent"),
        }
    }
}

/// A sequence of steps.
#[derive(Debug, Default)]
pub struct FlashPlan {
    steps: VecDeque<Step>,
}

impl FlashPlan {
    /// An empty plan.
    pub fn new() -> Self {
        FlashPlan::default()
    }

    /// Append a step.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push_back(step);
        self
    }

    /// Append another plan.
    pub fn then(mut self, other: FlashPlan) -> Self {
        self.steps.extend(other.steps);
        self
    }

    /// The steps.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter()
    }

    /// Uptane over UDS: read serial, hardware ID, `did:key` and capabilities
    /// (default session, no security access).
    pub fn identify() -> Self {
        use protocol::did;
        [
            did::ECU_SERIAL,
            did::HARDWARE_ID,
            did::PUBLIC_KEY,
            did::CAPABILITIES,
        ]
        .into_iter()
        .fold(FlashPlan::new(), |p, d| p.step(Step::ReadDid { did: d }))
    }

    /// Uptane over UDS: programming session and security access.
    pub fn open_programming() -> Self {
        FlashPlan::new()
            .step(Step::Session(Session::Programming))
            .step(Step::Unlock {
                level: protocol::SECURITY_LEVEL,
            })
    }

    /// Uptane over UDS: write the time and the metadata (each role with
    /// WriteDataByIdentifier when `3 + len <= max_pdu`, else downloaded to its
    /// metadata address), then run verify-metadata, which must answer `Ok` (an
    /// update is assigned). Needs [`FlashPlan::open_programming`] first.
    pub fn send_metadata(
        unix_time: u64,
        metadata: Vec<(MetadataRole, Vec<u8>)>,
        max_pdu: usize,
    ) -> Self {
        let mut plan = FlashPlan::new().step(Step::WriteDid {
            did: protocol::did::TIME,
            data: protocol::encode_time(unix_time),
        });
        for (role, bytes) in metadata {
            plan = if role.writable_by_did() && bytes.len() + 3 <= max_pdu {
                plan.step(Step::WriteDid {
                    did: role.did(),
                    data: bytes,
                })
            } else {
                plan.step(Step::Download {
                    address: role.address(),
                    data_format: protocol::data_format::PLAIN,
                    source: Box::new(bytes),
                })
            };
        }
        plan.step(Step::Routine {
            routine: protocol::routine::VERIFY_METADATA,
            data: vec![],
            check: RoutineCheck::Ok,
        })
    }

    /// Uptane over UDS: erase the inactive slot, download the image (still
    /// encrypted, if it is: `data_format` [`protocol::data_format::ENCRYPTED`]),
    /// verify it on the ECU and check programming dependencies. Needs
    /// [`FlashPlan::send_metadata`] first, in the same session.
    pub fn send_image(source: Box<dyn ImageSource + Send>, data_format: u8) -> Self {
        let size = u32::try_from(source.size()).unwrap_or(u32::MAX);
        let mut erase = Vec::new();
        MemoryLocation::new(protocol::address::IMAGE, size).encode(&mut erase);
        FlashPlan::new()
            .step(Step::Routine {
                routine: protocol::routine::ERASE_MEMORY,
                data: erase,
                check: RoutineCheck::Success,
            })
            .step(Step::Download {
                address: protocol::address::IMAGE,
                data_format,
                source,
            })
            .step(Step::Routine {
                routine: protocol::routine::VERIFY_IMAGE,
                data: vec![],
                check: RoutineCheck::Ok,
            })
            .step(Step::Routine {
                routine: protocol::routine::CHECK_PROGRAMMING_DEPENDENCIES,
                data: vec![],
                check: RoutineCheck::Success,
            })
    }

    /// Uptane over UDS: activate the new image and hard-reset the ECU.
    pub fn activate() -> Self {
        FlashPlan::new()
            .step(Step::Routine {
                routine: protocol::routine::ACTIVATE,
                data: vec![],
                check: RoutineCheck::Ok,
            })
            .step(Step::Reset(ResetType::Hard))
    }

    /// Uptane over UDS: extended session, then generate and read the signed
    /// ECU version report.
    pub fn report(nonce: [u8; 16]) -> Self {
        FlashPlan::new()
            .step(Step::Session(Session::Extended))
            .step(Step::ReadReport { nonce })
    }

    /// Uptane over UDS: extended session, security access, then
    /// [`protocol::routine::REPORT_DELIVERED`] for the report with this
    /// `report_counter` (the Director accepted the manifest carrying it).
    pub fn report_delivered(report_counter: u64) -> Self {
        FlashPlan::new()
            .step(Step::Session(Session::Extended))
            .step(Step::Unlock {
                level: protocol::SECURITY_LEVEL,
            })
            .step(Step::Routine {
                routine: protocol::routine::REPORT_DELIVERED,
                data: report_counter.to_be_bytes().to_vec(),
                check: RoutineCheck::Ok,
            })
    }
}

/// Where P2/P2* come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimingSource {
    /// The configured values only.
    Configured,
    /// The server's values from its DiagnosticSessionControl response, but
    /// never below the configured ones (the transport adds latency; under
    /// emulation much more).
    #[default]
    ServerAtLeastConfigured,
}

/// Client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// P2client: wait for a first response.
    pub p2: Duration,
    /// P2*client: wait after a 0x78.
    pub p2_star: Duration,
    /// Where P2/P2* come from.
    pub timing: TimingSource,
    /// Times a request is sent again after a timeout.
    pub max_retries: u32,
    /// Delay before repeating a request answered 0x21 busyRepeatRequest.
    pub busy_delay: Duration,
    /// Times a request may be answered 0x21 before the step fails.
    pub max_busy: u32,
    /// Largest UDS message the transport carries (4095 on classic ISO-TP);
    /// TransferData blocks are at most this long.
    pub max_pdu: usize,
}

impl Default for ClientConfig {
    /// Generous timing (P2 1 s, P2* 10 s): CAN under emulation is slow.
    fn default() -> Self {
        ClientConfig {
            p2: Duration::from_secs(1),
            p2_star: Duration::from_secs(10),
            timing: TimingSource::default(),
            max_retries: 3,
            busy_delay: Duration::from_millis(50),
            max_busy: 100,
            max_pdu: 4095,
        }
    }
}

/// What the host should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this PDU to the ECU.
    Send(Vec<u8>),
    /// Wait at most this long for a response, then call
    /// [`FlashClient::handle_timeout`].
    Wait(Duration),
    /// The plan is complete (or failed: the error was returned); take the
    /// [`Outcome`].
    Done,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent (retries included).
    pub requests: u64,
    /// TransferData blocks acknowledged.
    pub blocks: u64,
    /// Payload bytes downloaded.
    pub bytes: u64,
    /// Requests sent again after a timeout.
    pub retries: u64,
    /// `7F xx 78` received.
    pub pending: u64,
    /// Responses ignored (stale, or for another request, or undecodable).
    pub ignored: u64,
}

/// What a finished plan produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// DIDs read, in order.
    pub reads: Vec<(u16, Vec<u8>)>,
    /// Routine status records, in order.
    pub routines: Vec<(u16, Vec<u8>)>,
    /// The ECU version report, if one was read.
    pub report: Option<Vec<u8>>,
    /// Counters.
    pub stats: ClientStats,
}

impl Outcome {
    /// The last data read from `did`.
    pub fn read(&self, did: u16) -> Option<&[u8]> {
        self.reads
            .iter()
            .rev()
            .find(|(d, _)| *d == did)
            .map(|(_, v)| v.as_slice())
    }
}

struct Shared {
    config: ClientConfig,
    algorithm: Box<dyn SecurityAlgorithm + Send>,
    outcome: Outcome,
    p2: Duration,
    p2_star: Duration,
}

// ---- expectations: one per outstanding request ------------------------------------

struct ExpectSession;
struct ExpectSeed {
    level: u8,
}
struct ExpectKey {
    level: u8,
}
struct ExpectWrite {
    did: u16,
}
struct ExpectRead {
    did: u16,
}
struct ExpectDownloadAccepted {
    source: Box<dyn ImageSource + Send>,
}
struct ExpectBlockAck {
    source: Box<dyn ImageSource + Send>,
    block_data: usize,
    offset: u64,
    counter: u8,
    len: usize,
}
struct ExpectTransferExit;
struct ExpectRoutine {
    routine: u16,
    check: RoutineCheck,
}
struct ExpectReportInfo;
struct ExpectReportChunk {
    info: ReportInfo,
    index: u8,
    report: Vec<u8>,
}
struct ExpectReset;
struct ExpectTesterPresent;

enum Expect {
    Session(ExpectSession),
    Seed(ExpectSeed),
    Key(ExpectKey),
    Write(ExpectWrite),
    Read(ExpectRead),
    DownloadAccepted(ExpectDownloadAccepted),
    Block(ExpectBlockAck),
    Exit(ExpectTransferExit),
    Routine(ExpectRoutine),
    ReportInfo(ExpectReportInfo),
    ReportChunk(ExpectReportChunk),
    Reset(ExpectReset),
    TesterPresent(ExpectTesterPresent),
}

/// What an expectation makes of a positive response.
enum Next {
    /// Send this request and expect this.
    Send(Expect, Vec<u8>),
    /// The step is done.
    StepDone,
    /// Not an answer to the outstanding request (a late duplicate).
    Ignore(Expect),
}

fn unexpected(step: &'static str, reason: impl Into<String>) -> Error {
    Error::UnexpectedResponse {
        step,
        reason: reason.into(),
    }
}

impl Expect {
    fn name(&self) -> &'static str {
        match self {
            Expect::Session(_) => "diagnostic session control",
            Expect::Seed(_) => "security access (seed)",
            Expect::Key(_) => "security access (key)",
            Expect::Write(_) => "write data by identifier",
            Expect::Read(_) => "read data by identifier",
            Expect::DownloadAccepted(_) => "request download",
            Expect::Block(_) => "transfer data",
            Expect::Exit(_) => "request transfer exit",
            Expect::Routine(_) => "routine control",
            Expect::ReportInfo(_) => "generate version report",
            Expect::ReportChunk(_) => "read version report",
            Expect::Reset(_) => "ECU reset",
            Expect::TesterPresent(_) => "tester present",
        }
    }

    /// The request to send again after a timeout, if it is not simply the last
    /// one (a lost key restarts at requestSeed: its seed is spent).
    fn on_timeout(self) -> (Expect, Option<Vec<u8>>) {
        match self {
            Expect::Key(ExpectKey { level }) => (
                Expect::Seed(ExpectSeed { level }),
                Some(
                    Request::RequestSeed {
                        level,
                        data: vec![],
                    }
                    .encode(),
                ),
            ),
            other => (other, None),
        }
    }

    fn on_positive(self, rsp: Response, cx: &mut Shared) -> Result<Next> {
        let name = self.name();
        match (self, rsp) {
            (Expect::Session(_), Response::DiagnosticSessionControl { timing, .. }) => {
                if cx.config.timing == TimingSource::ServerAtLeastConfigured {
                    cx.p2 = timing.p2.max(cx.config.p2);
                    cx.p2_star = timing.p2_star.max(cx.config.p2_star);
                }
                Ok(Next::StepDone)
            }
            (
                Expect::Seed(ExpectSeed { level }),
                Response::SecurityAccess { sub_function, seed },
            ) => {
                if sub_function != level {
                    return Err(unexpected(
                        name,
                        format!("seed for level 0x{sub_function:02X}"),
                    ));
                }
                if seed.iter().all(|b| *b == 0) {
                    // ISO 14229-1: an all-zero seed means already unlocked.
                    return Ok(Next::StepDone);
                }
                let key = cx.algorithm.compute_key(level, &seed);
                Ok(Next::Send(
                    Expect::Key(ExpectKey { level }),
                    Request::SendKey { level, key }.encode(),
                ))
            }
            (Expect::Key(ExpectKey { level }), Response::SecurityAccess { sub_function, .. }) => {
                if sub_function != level.wrapping_add(1) {
                    // A late answer to an earlier request (its seed).
                    return Ok(Next::Ignore(Expect::Key(ExpectKey { level })));
                }
                Ok(Next::StepDone)
            }
            (Expect::Write(ExpectWrite { did }), Response::WriteDataByIdentifier { did: got }) => {
                if got != did {
                    // A late answer to an earlier write.
                    return Ok(Next::Ignore(Expect::Write(ExpectWrite { did })));
                }
                Ok(Next::StepDone)
            }
            (
                Expect::Read(ExpectRead { did }),
                Response::ReadDataByIdentifier { did: got, data },
            ) => {
                if got != did {
                    // A late answer to an earlier read.
                    return Ok(Next::Ignore(Expect::Read(ExpectRead { did })));
                }
                cx.outcome.reads.push((did, data));
                Ok(Next::StepDone)
            }
            (
                Expect::DownloadAccepted(ExpectDownloadAccepted { source }),
                Response::RequestDownload { max_block_length },
            ) => {
                // maxNumberOfBlockLength counts the SID and the counter.
                let max = usize::try_from(max_block_length)
                    .unwrap_or(usize::MAX)
                    .min(cx.config.max_pdu);
                if max < 3 {
                    return Err(unexpected(
                        name,
                        format!("maxNumberOfBlockLength {max_block_length}"),
                    ));
                }
                let state = ExpectBlockAck {
                    source,
                    block_data: max - 2,
                    offset: 0,
                    counter: 1,
                    len: 0,
                };
                state.send_block()
            }
            (Expect::Block(mut b), Response::TransferData { counter, .. }) => {
                if counter != b.counter {
                    if counter == b.counter.wrapping_sub(1) {
                        // The acknowledgement of a block we sent again.
                        return Ok(Next::Ignore(Expect::Block(b)));
                    }
                    return Err(unexpected(
                        name,
                        format!("ack for block {counter}, sent {}", b.counter),
                    ));
                }
                cx.outcome.stats.blocks += 1;
                cx.outcome.stats.bytes += b.len as u64;
                b.offset += b.len as u64;
                b.counter = b.counter.wrapping_add(1);
                if b.offset == b.source.size() {
                    return Ok(Next::Send(
                        Expect::Exit(ExpectTransferExit),
                        Request::RequestTransferExit { data: vec![] }.encode(),
                    ));
                }
                b.send_block()
            }
            (Expect::Block(b), Response::RequestTransferExit { .. }) => {
                Ok(Next::Ignore(Expect::Block(b)))
            }
            (Expect::Exit(_), Response::RequestTransferExit { .. }) => Ok(Next::StepDone),
            (
                Expect::Routine(ExpectRoutine { routine, check }),
                Response::RoutineControl {
                    routine: got,
                    status,
                    ..
                },
            ) => {
                if got != routine {
                    // A late answer to an earlier routine (its request was
                    // repeated after P2 and both answers arrived).
                    return Ok(Next::Ignore(Expect::Routine(ExpectRoutine {
                        routine,
                        check,
                    })));
                }
                let (code, detail) = protocol::parse_routine_status(&status);
                let ok = match check {
                    RoutineCheck::Any => true,
                    RoutineCheck::Success => code.is_success(),
                    RoutineCheck::Ok => code == ResultCode::Ok,
                };
                cx.outcome.routines.push((routine, status));
                if !ok {
                    return Err(Error::RoutineFailed {
                        routine,
                        code: code.as_byte(),
                        name: code.name(),
                        detail,
                    });
                }
                Ok(Next::StepDone)
            }
            (
                Expect::ReportInfo(r),
                Response::RoutineControl {
                    routine, status, ..
                },
            ) => {
                if routine != protocol::routine::GENERATE_REPORT {
                    // A late answer to an earlier routine.
                    return Ok(Next::Ignore(Expect::ReportInfo(r)));
                }
                let (code, rest) = status
                    .split_first()
                    .map_or((ResultCode::Failed, &[][..]), |(c, r)| {
                        (ResultCode::from_byte(*c), r)
                    });
                if code != ResultCode::Ok {
                    return Err(Error::RoutineFailed {
                        routine,
                        code: code.as_byte(),
                        name: code.name(),
                        detail: String::from_utf8_lossy(rest).into_owned(),
                    });
                }
                let info = ReportInfo::decode(rest)?;
                if info.chunk_count == 0 {
                    return Err(unexpected(name, "empty report"));
                }
                let state = ExpectReportChunk {
                    info,
                    index: 0,
                    report: Vec::with_capacity(info.length as usize),
                };
                let req = state.request();
                Ok(Next::Send(Expect::ReportChunk(state), req))
            }
            (Expect::ReportChunk(mut c), Response::ReadDataByIdentifier { did, data }) => {
                let want = protocol::did::REPORT_CHUNK_BASE + u16::from(c.index);
                let start = usize::from(c.index) * usize::from(c.info.chunk_size);
                let expected_len = (c.info.length as usize)
                    .saturating_sub(start)
                    .min(usize::from(c.info.chunk_size));
                if did != want || data.len() != expected_len {
                    return Err(unexpected(
                        name,
                        format!("chunk 0x{did:04X} of {} bytes, expected 0x{want:04X} of {expected_len}", data.len()),
                    ));
                }
                c.report.extend_from_slice(&data);
                c.index += 1;
                if c.index < c.info.chunk_count {
                    let req = c.request();
                    return Ok(Next::Send(Expect::ReportChunk(c), req));
                }
                use sha2::Digest;
                let got: [u8; 32] = sha2::Sha256::digest(&c.report).into();
                if got != c.info.sha256 {
                    return Err(unexpected(name, "report does not match its SHA-256"));
                }
                cx.outcome.report = Some(c.report);
                Ok(Next::StepDone)
            }
            (Expect::Reset(_), Response::EcuReset { .. }) => Ok(Next::StepDone),
            (Expect::TesterPresent(_), Response::TesterPresent) => Ok(Next::StepDone),
            (state, _) => Ok(Next::Ignore(state)),
        }
    }
}

impl ExpectBlockAck {
    fn send_block(mut self) -> Result<Next> {
        let size = self.source.size();
        let len = usize::try_from(size - self.offset)
            .unwrap_or(usize::MAX)
            .min(self.block_data);
        let mut req = Vec::with_capacity(2 + len);
        req.push(sid::TRANSFER_DATA);
        req.push(self.counter);
        req.resize(2 + len, 0);
        self.source
            .read_at(self.offset, &mut req[2..])
            .map_err(Error::Source)?;
        self.len = len;
        Ok(Next::Send(Expect::Block(self), req))
    }
}

impl ExpectReportChunk {
    fn request(&self) -> Vec<u8> {
        Request::ReadDataByIdentifier {
            dids: vec![protocol::did::REPORT_CHUNK_BASE + u16::from(self.index)],
        }
        .encode()
    }
}

fn start_step(step: Step) -> Result<(Expect, Vec<u8>)> {
    Ok(match step {
        Step::Session(session) => (
            Expect::Session(ExpectSession),
            Request::DiagnosticSessionControl {
                session,
                suppress_response: false,
            }
            .encode(),
        ),
        Step::Unlock { level } => (
            Expect::Seed(ExpectSeed { level }),
            Request::RequestSeed {
                level,
                data: vec![],
            }
            .encode(),
        ),
        Step::WriteDid { did, data } => (
            Expect::Write(ExpectWrite { did }),
            Request::WriteDataByIdentifier { did, data }.encode(),
        ),
        Step::ReadDid { did } => (
            Expect::Read(ExpectRead { did }),
            Request::ReadDataByIdentifier { dids: vec![did] }.encode(),
        ),
        Step::Download {
            address,
            data_format,
            source,
        } => {
            let size = u32::try_from(source.size())
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| Error::Source(format!("cannot download {} bytes", source.size())))?;
            (
                Expect::DownloadAccepted(ExpectDownloadAccepted { source }),
                Request::RequestDownload {
                    data_format,
                    location: MemoryLocation::new(address, size),
                }
                .encode(),
            )
        }
        Step::Routine {
            routine,
            data,
            check,
        } => (
            Expect::Routine(ExpectRoutine { routine, check }),
            Request::RoutineControl {
                control: RoutineControlType::Start,
                routine,
                data,
                suppress_response: false,
            }
            .encode(),
        ),
        Step::ReadReport { nonce } => (
            Expect::ReportInfo(ExpectReportInfo),
            Request::RoutineControl {
                control: RoutineControlType::Start,
                routine: protocol::routine::GENERATE_REPORT,
                data: nonce.to_vec(),
                suppress_response: false,
            }
            .encode(),
        ),
        Step::Reset(reset_type) => (
            Expect::Reset(ExpectReset),
            Request::EcuReset {
                reset_type,
                suppress_response: false,
            }
            .encode(),
        ),
        Step::TesterPresent => (
            Expect::TesterPresent(ExpectTesterPresent),
            Request::TesterPresent {
                suppress_response: false,
            }
            .encode(),
        ),
    })
}

struct InFlight {
    request: Vec<u8>,
    deadline: Instant,
    timeout: Duration,
}

enum State {
    /// Between steps (transient).
    Idle,
    /// A request is outstanding (or about to be sent).
    Expecting(Expect),
    Done,
    Failed,
}

/// The tester side of a flashing sequence (see the module documentation).
pub struct FlashClient {
    steps: VecDeque<Step>,
    state: State,
    shared: Shared,
    /// The request to send next, and not before when.
    outgoing: Option<(Vec<u8>, Option<Instant>)>,
    in_flight: Option<InFlight>,
    attempts: u32,
    busy: u32,
}

impl std::fmt::Debug for FlashClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlashClient")
            .field("remaining_steps", &self.steps.len())
            .field("stats", &self.shared.outcome.stats)
            .finish_non_exhaustive()
    }
}

impl FlashClient {
    /// A client that will run `plan`. Fails if the first step cannot be
    /// encoded (a download of zero or more than 4 GiB bytes).
    pub fn new(
        plan: FlashPlan,
        algorithm: Box<dyn SecurityAlgorithm + Send>,
        config: ClientConfig,
    ) -> Result<Self> {
        let mut client = FlashClient {
            steps: plan.steps,
            state: State::Idle,
            shared: Shared {
                p2: config.p2,
                p2_star: config.p2_star,
                config,
                algorithm,
                outcome: Outcome::default(),
            },
            outgoing: None,
            in_flight: None,
            attempts: 0,
            busy: 0,
        };
        client.advance()?;
        Ok(client)
    }

    /// Counters so far.
    pub fn stats(&self) -> ClientStats {
        self.shared.outcome.stats
    }

    /// What was read so far, and the counters.
    pub fn outcome(&self) -> &Outcome {
        &self.shared.outcome
    }

    /// The results.
    pub fn into_outcome(self) -> Outcome {
        self.shared.outcome
    }

    /// Whether the plan completed.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn queue(&mut self, expect: Expect, request: Vec<u8>) {
        self.state = State::Expecting(expect);
        self.outgoing = Some((request, None));
        self.in_flight = None;
        self.attempts = 0;
        self.busy = 0;
    }

    fn advance(&mut self) -> Result<()> {
        match self.steps.pop_front() {
            Some(step) => match start_step(step) {
                Ok((expect, req)) => {
                    self.queue(expect, req);
                    Ok(())
                }
                Err(e) => self.fail(e),
            },
            None => {
                self.state = State::Done;
                self.outgoing = None;
                self.in_flight = None;
                Ok(())
            }
        }
    }

    fn fail<T>(&mut self, e: Error) -> Result<T> {
        self.state = State::Failed;
        self.outgoing = None;
        self.in_flight = None;
        Err(e)
    }

    /// What to do now.
    pub fn next_action(&mut self, now: Instant) -> Action {
        if let Some((req, not_before)) = self.outgoing.take() {
            if let Some(t) = not_before.filter(|t| *t > now) {
                self.outgoing = Some((req, not_before));
                return Action::Wait(t - now);
            }
            self.attempts += 1;
            self.shared.outcome.stats.requests += 1;
            let timeout = self.shared.p2;
            self.in_flight = Some(InFlight {
                request: req.clone(),
                deadline: now + timeout,
                timeout,
            });
            return Action::Send(req);
        }
        match &self.in_flight {
            Some(f) => Action::Wait(f.deadline.saturating_duration_since(now)),
            None => Action::Done,
        }
    }

    /// A response PDU arrived at `now`.
    pub fn handle_response(&mut self, bytes: &[u8], now: Instant) -> Result<()> {
        let expect = match std::mem::replace(&mut self.state, State::Idle) {
            State::Expecting(e) => e,
            other => {
                // Late responses after the end are ignored.
                self.state = other;
                self.shared.outcome.stats.ignored += 1;
                return Ok(());
            }
        };
        let Some(flight) = self.in_flight.as_mut() else {
            // Nothing outstanding (a resend is queued): ignore.
            self.state = State::Expecting(expect);
            self.shared.outcome.stats.ignored += 1;
            return Ok(());
        };
        let request_sid = flight.request.first().copied().unwrap_or(0);
        let rsp = match Response::decode(bytes) {
            Ok(r) if r.request_sid() == request_sid => r,
            _ => {
                self.state = State::Expecting(expect);
                self.shared.outcome.stats.ignored += 1;
                return Ok(());
            }
        };
        if let Response::Negative { sid, nrc } = rsp {
            match nrc {
                Nrc::RequestCorrectlyReceivedResponsePending => {
                    // ISO 14229-2: every 0x78 restarts the P2* timer.
                    flight.timeout = self.shared.p2_star;
                    flight.deadline = now + self.shared.p2_star;
                    self.shared.outcome.stats.pending += 1;
                    self.state = State::Expecting(expect);
                    Ok(())
                }
                Nrc::BusyRepeatRequest if self.busy < self.shared.config.max_busy => {
                    self.busy += 1;
                    let req = flight.request.clone();
                    self.in_flight = None;
                    self.outgoing = Some((req, Some(now + self.shared.config.busy_delay)));
                    self.attempts = self.attempts.saturating_sub(1);
                    self.state = State::Expecting(expect);
                    Ok(())
                }
                _ => {
                    let step = expect.name();
                    self.fail(Error::NegativeResponse { step, sid, nrc })
                }
            }
        } else {
            match expect.on_positive(rsp, &mut self.shared) {
                Ok(Next::Send(next, req)) => {
                    self.queue(next, req);
                    Ok(())
                }
                Ok(Next::StepDone) => {
                    self.in_flight = None;
                    self.state = State::Idle;
                    self.advance()
                }
                Ok(Next::Ignore(same)) => {
                    self.state = State::Expecting(same);
                    self.shared.outcome.stats.ignored += 1;
                    Ok(())
                }
                Err(e) => self.fail(e),
            }
        }
    }

    /// The wait returned by [`Action::Wait`] ended at `now` without a response.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<()> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(());
        };
        if now < flight.deadline {
            self.in_flight = Some(flight);
            return Ok(());
        }
        let State::Expecting(expect) = std::mem::replace(&mut self.state, State::Idle) else {
            return Ok(());
        };
        if self.attempts > self.shared.config.max_retries {
            let step = expect.name();
            return self.fail(Error::Timeout {
                step,
                timeout: flight.timeout,
                attempts: self.attempts,
            });
        }
        self.shared.outcome.stats.retries += 1;
        let (expect, replacement) = expect.on_timeout();
        self.state = State::Expecting(expect);
        self.outgoing = Some((replacement.unwrap_or(flight.request), None));
        Ok(())
    }
}
