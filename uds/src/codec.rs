//! UDS (ISO 14229-1) request and response codec for the services a flashing
//! sequence needs.
//!
//! Decoders take untrusted bytes and return a typed [`Error`]; they never panic
//! and never allocate more than the input's length.

use crate::error::{Error, Result};
use crate::nrc::Nrc;
use std::time::Duration;

/// Service identifiers.
pub mod sid {
    /// DiagnosticSessionControl.
    pub const DIAGNOSTIC_SESSION_CONTROL: u8 = 0x10;
    /// ECUReset.
    pub const ECU_RESET: u8 = 0x11;
    /// ReadDataByIdentifier.
    pub const READ_DATA_BY_IDENTIFIER: u8 = 0x22;
    /// SecurityAccess.
    pub const SECURITY_ACCESS: u8 = 0x27;
    /// WriteDataByIdentifier.
    pub const WRITE_DATA_BY_IDENTIFIER: u8 = 0x2E;
    /// RoutineControl.
    pub const ROUTINE_CONTROL: u8 = 0x31;
    /// RequestDownload.
    pub const REQUEST_DOWNLOAD: u8 = 0x34;
    /// TransferData.
    pub const TRANSFER_DATA: u8 = 0x36;
    /// RequestTransferExit.
    pub const REQUEST_TRANSFER_EXIT: u8 = 0x37;
    /// TesterPresent.
    pub const TESTER_PRESENT: u8 = 0x3E;
    /// Negative response.
    pub const NEGATIVE_RESPONSE: u8 = 0x7F;
    /// Added to a request SID to form its positive response SID.
    pub const POSITIVE_RESPONSE_OFFSET: u8 = 0x40;
}

/// Bit 7 of a sub-function byte: suppressPosRspMsgIndicationBit.
pub const SUPPRESS_POSITIVE_RESPONSE: u8 = 0x80;

/// A diagnostic session (DiagnosticSessionControl sub-function).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Session {
    /// 0x01 defaultSession.
    Default,
    /// 0x02 programmingSession.
    Programming,
    /// 0x03 extendedDiagnosticSession.
    Extended,
    /// 0x04 safetySystemDiagnosticSession.
    SafetySystem,
    /// Any other (manufacturer- or supplier-specific) value, without bit 7.
    Other(u8),
}

impl Session {
    /// From the sub-function value (bit 7 already removed).
    pub fn from_byte(b: u8) -> Self {
        match b {
            0x01 => Session::Default,
            0x02 => Session::Programming,
            0x03 => Session::Extended,
            0x04 => Session::SafetySystem,
            other => Session::Other(other),
        }
    }
    /// The sub-function value.
    pub fn as_byte(self) -> u8 {
        match self {
            Session::Default => 0x01,
            Session::Programming => 0x02,
            Session::Extended => 0x03,
            Session::SafetySystem => 0x04,
            Session::Other(b) => b & 0x7F,
        }
    }
}

/// An ECUReset type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetType {
    /// 0x01 hardReset.
    Hard,
    /// 0x02 keyOffOnReset.
    KeyOffOn,
    /// 0x03 softReset.
    Soft,
    /// 0x04 enableRapidPowerShutDown (its response carries powerDownTime).
    EnableRapidPowerShutDown,
    /// 0x05 disableRapidPowerShutDown.
    DisableRapidPowerShutDown,
    /// Any other value, without bit 7.
    Other(u8),
}

impl ResetType {
    /// From the sub-function value (bit 7 already removed).
    pub fn from_byte(b: u8) -> Self {
        match b {
            0x01 => ResetType::Hard,
            0x02 => ResetType::KeyOffOn,
            0x03 => ResetType::Soft,
            0x04 => ResetType::EnableRapidPowerShutDown,
            0x05 => ResetType::DisableRapidPowerShutDown,
            other => ResetType::Other(other),
        }
    }
    /// The sub-function value.
    pub fn as_byte(self) -> u8 {
        match self {
            ResetType::Hard => 0x01,
            ResetType::KeyOffOn => 0x02,
            ResetType::Soft => 0x03,
            ResetType::EnableRapidPowerShutDown => 0x04,
            ResetType::DisableRapidPowerShutDown => 0x05,
            ResetType::Other(b) => b & 0x7F,
        }
    }
}

/// A RoutineControl type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoutineControlType {
    /// 0x01 startRoutine.
    Start,
    /// 0x02 stopRoutine.
    Stop,
    /// 0x03 requestRoutineResults.
    RequestResults,
}

impl RoutineControlType {
    fn from_byte(sid: u8, b: u8) -> Result<Self> {
        match b {
            0x01 => Ok(Self::Start),
            0x02 => Ok(Self::Stop),
            0x03 => Ok(Self::RequestResults),
            other => Err(Error::SubFunctionNotSupported {
                sid,
                sub_function: other,
            }),
        }
    }
    /// The sub-function value.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::Start => 0x01,
            Self::Stop => 0x02,
            Self::RequestResults => 0x03,
        }
    }
}

/// P2/P2* timing a server announces in its DiagnosticSessionControl response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTiming {
    /// P2server_max: time to the first response (wire unit 1 ms).
    pub p2: Duration,
    /// P2*server_max: time to the final response after a 0x78 (wire unit 10 ms).
    pub p2_star: Duration,
}

impl Default for ServerTiming {
    /// ISO 14229-2 defaults: P2 50 ms, P2* 5000 ms.
    fn default() -> Self {
        ServerTiming {
            p2: Duration::from_millis(50),
            p2_star: Duration::from_millis(5000),
        }
    }
}

impl ServerTiming {
    fn encode(&self, out: &mut Vec<u8>) {
        let p2 = u16::try_from(self.p2.as_millis()).unwrap_or(u16::MAX);
        let p2s = u16::try_from(self.p2_star.as_millis() / 10).unwrap_or(u16::MAX);
        out.extend_from_slice(&p2.to_be_bytes());
        out.extend_from_slice(&p2s.to_be_bytes());
    }
}

/// Memory address and size of a RequestDownload, with the widths of both
/// fields (the addressAndLengthFormatIdentifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLocation {
    /// memoryAddress.
    pub address: u64,
    /// memorySize.
    pub size: u64,
    /// Bytes of memoryAddress on the wire (1..=8).
    pub address_len: u8,
    /// Bytes of memorySize on the wire (1..=8).
    pub size_len: u8,
}

impl MemoryLocation {
    /// A location with 4-byte address and size (ALFID 0x44), the usual choice
    /// and the one `docs/secondary-protocol.md` prescribes.
    pub fn new(address: u32, size: u32) -> Self {
        MemoryLocation {
            address: address.into(),
            size: size.into(),
            address_len: 4,
            size_len: 4,
        }
    }

    /// addressAndLengthFormatIdentifier: size width in the high nibble, address
    /// width in the low nibble.
    pub fn format_identifier(&self) -> u8 {
        (self.size_len << 4) | (self.address_len & 0x0F)
    }

    /// Encode `ALFID address size`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.format_identifier());
        push_be(out, self.address, self.address_len);
        push_be(out, self.size, self.size_len);
    }

    /// Decode `ALFID address size` exactly (no trailing bytes).
    pub fn decode(sid: u8, bytes: &[u8]) -> Result<Self> {
        let (&alfid, rest) = bytes.split_first().ok_or(Error::IncorrectLength {
            sid,
            len: bytes.len() + 1,
        })?;
        let size_len = alfid >> 4;
        let address_len = alfid & 0x0F;
        if !(1..=8).contains(&size_len) || !(1..=8).contains(&address_len) {
            return Err(Error::OutOfRange {
                sid,
                reason: "addressAndLengthFormatIdentifier field width must be 1..=8",
            });
        }
        let (a, s) = (usize::from(address_len), usize::from(size_len));
        if rest.len() != a + s {
            return Err(Error::IncorrectLength {
                sid,
                len: bytes.len() + 1,
            });
        }
        Ok(MemoryLocation {
            address: be(&rest[..a]),
            size: be(&rest[a..]),
            address_len,
            size_len,
        })
    }
}

fn push_be(out: &mut Vec<u8>, value: u64, len: u8) {
    let bytes = value.to_be_bytes();
    let len = usize::from(len.clamp(1, 8));
    out.extend_from_slice(&bytes[8 - len..]);
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// A UDS request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `10 session` DiagnosticSessionControl.
    DiagnosticSessionControl {
        /// Target session.
        session: Session,
        /// suppressPosRspMsgIndicationBit.
        suppress_response: bool,
    },
    /// `11 type` ECUReset.
    EcuReset {
        /// Reset type.
        reset_type: ResetType,
        /// suppressPosRspMsgIndicationBit.
        suppress_response: bool,
    },
    /// `27 level [data]` SecurityAccess requestSeed (odd level).
    RequestSeed {
        /// The odd requestSeed sub-function.
        level: u8,
        /// securityAccessDataRecord (usually empty).
        data: Vec<u8>,
    },
    /// `27 level+1 key` SecurityAccess sendKey (even sub-function).
    SendKey {
        /// The odd requestSeed level this key answers (the wire carries level+1).
        level: u8,
        /// The key.
        key: Vec<u8>,
    },
    /// `22 did [did...]` ReadDataByIdentifier.
    ReadDataByIdentifier {
        /// Data identifiers (at least one).
        dids: Vec<u16>,
    },
    /// `2E did data` WriteDataByIdentifier.
    WriteDataByIdentifier {
        /// Data identifier.
        did: u16,
        /// dataRecord (at least one byte).
        data: Vec<u8>,
    },
    /// `31 type rid [option]` RoutineControl.
    RoutineControl {
        /// start / stop / requestResults.
        control: RoutineControlType,
        /// Routine identifier.
        routine: u16,
        /// routineControlOptionRecord.
        data: Vec<u8>,
        /// suppressPosRspMsgIndicationBit.
        suppress_response: bool,
    },
    /// `34 DFI ALFID address size` RequestDownload.
    RequestDownload {
        /// dataFormatIdentifier: compression method (high nibble), encrypting
        /// method (low nibble); 0x00 = plain.
        data_format: u8,
        /// Where and how much.
        location: MemoryLocation,
    },
    /// `36 counter data` TransferData.
    TransferData {
        /// blockSequenceCounter (starts at 1, wraps 0xFF → 0x00).
        counter: u8,
        /// transferRequestParameterRecord.
        data: Vec<u8>,
    },
    /// `37 [record]` RequestTransferExit.
    RequestTransferExit {
        /// transferRequestParameterRecord.
        data: Vec<u8>,
    },
    /// `3E 00` / `3E 80` TesterPresent.
    TesterPresent {
        /// suppressPosRspMsgIndicationBit.
        suppress_response: bool,
    },
}

fn sub(value: u8, suppress: bool) -> u8 {
    (value & 0x7F)
        | if suppress {
            SUPPRESS_POSITIVE_RESPONSE
        } else {
            0
        }
}

impl Request {
    /// The service identifier.
    pub fn sid(&self) -> u8 {
        use sid::*;
        match self {
            Request::DiagnosticSessionControl { .. } => DIAGNOSTIC_SESSION_CONTROL,
            Request::EcuReset { .. } => ECU_RESET,
            Request::RequestSeed { .. } | Request::SendKey { .. } => SECURITY_ACCESS,
            Request::ReadDataByIdentifier { .. } => READ_DATA_BY_IDENTIFIER,
            Request::WriteDataByIdentifier { .. } => WRITE_DATA_BY_IDENTIFIER,
            Request::RoutineControl { .. } => ROUTINE_CONTROL,
            Request::RequestDownload { .. } => REQUEST_DOWNLOAD,
            Request::TransferData { .. } => TRANSFER_DATA,
            Request::RequestTransferExit { .. } => REQUEST_TRANSFER_EXIT,
            Request::TesterPresent { .. } => TESTER_PRESENT,
        }
    }

    /// Whether the request asks the server to suppress its positive response.
    pub fn suppress_response(&self) -> bool {
        match self {
            Request::DiagnosticSessionControl {
                suppress_response, ..
            }
            | Request::EcuReset {
                suppress_response, ..
            }
            | Request::RoutineControl {
                suppress_response, ..
            }
            | Request::TesterPresent { suppress_response } => *suppress_response,
            _ => false,
        }
    }

    /// Encode to the bytes of one UDS message (one ISO-TP PDU).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.sid()];
        match self {
            Request::DiagnosticSessionControl {
                session,
                suppress_response,
            } => out.push(sub(session.as_byte(), *suppress_response)),
            Request::EcuReset {
                reset_type,
                suppress_response,
            } => out.push(sub(reset_type.as_byte(), *suppress_response)),
            Request::RequestSeed { level, data } => {
                out.push(level & 0x7F);
                out.extend_from_slice(data);
            }
            Request::SendKey { level, key } => {
                out.push(level.wrapping_add(1) & 0x7F);
                out.extend_from_slice(key);
            }
            Request::ReadDataByIdentifier { dids } => {
                for d in dids {
                    out.extend_from_slice(&d.to_be_bytes());
                }
            }
            Request::WriteDataByIdentifier { did, data } => {
                out.extend_from_slice(&did.to_be_bytes());
                out.extend_from_slice(data);
            }
            Request::RoutineControl {
                control,
                routine,
                data,
                suppress_response,
            } => {
                out.push(sub(control.as_byte(), *suppress_response));
                out.extend_from_slice(&routine.to_be_bytes());
                out.extend_from_slice(data);
            }
            Request::RequestDownload {
                data_format,
                location,
            } => {
                out.push(*data_format);
                location.encode(&mut out);
            }
            Request::TransferData { counter, data } => {
                out.reserve(1 + data.len());
                out.push(*counter);
                out.extend_from_slice(data);
            }
            Request::RequestTransferExit { data } => out.extend_from_slice(data),
            Request::TesterPresent { suppress_response } => out.push(sub(0, *suppress_response)),
        }
        out
    }

    /// Decode one request from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        use sid::*;
        let (&sid, body) = bytes.split_first().ok_or(Error::Empty)?;
        let len = bytes.len();
        let bad_len = || Error::IncorrectLength { sid, len };
        let subfn = || body.first().copied().ok_or_else(bad_len);
        Ok(match sid {
            DIAGNOSTIC_SESSION_CONTROL | ECU_RESET | TESTER_PRESENT => {
                if body.len() != 1 {
                    return Err(bad_len());
                }
                let s = subfn()?;
                let (value, suppress) = (s & 0x7F, s & SUPPRESS_POSITIVE_RESPONSE != 0);
                match sid {
                    DIAGNOSTIC_SESSION_CONTROL => Request::DiagnosticSessionControl {
                        session: Session::from_byte(value),
                        suppress_response: suppress,
                    },
                    ECU_RESET => Request::EcuReset {
                        reset_type: ResetType::from_byte(value),
                        suppress_response: suppress,
                    },
                    _ => {
                        if value != 0 {
                            return Err(Error::SubFunctionNotSupported {
                                sid,
                                sub_function: s,
                            });
                        }
                        Request::TesterPresent {
                            suppress_response: suppress,
                        }
                    }
                }
            }
            SECURITY_ACCESS => {
                let s = subfn()?;
                if s == 0 || s >= 0x7F {
                    return Err(Error::SubFunctionNotSupported {
                        sid,
                        sub_function: s,
                    });
                }
                let data = body[1..].to_vec();
                if s % 2 == 1 {
                    Request::RequestSeed { level: s, data }
                } else {
                    if data.is_empty() {
                        return Err(bad_len());
                    }
                    Request::SendKey {
                        level: s - 1,
                        key: data,
                    }
                }
            }
            READ_DATA_BY_IDENTIFIER => {
                if body.is_empty() || body.len() % 2 != 0 {
                    return Err(bad_len());
                }
                Request::ReadDataByIdentifier {
                    dids: body
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect(),
                }
            }
            WRITE_DATA_BY_IDENTIFIER => {
                if body.len() < 3 {
                    return Err(bad_len());
                }
                Request::WriteDataByIdentifier {
                    did: u16_at(body, 0).ok_or_else(bad_len)?,
                    data: body[2..].to_vec(),
                }
            }
            ROUTINE_CONTROL => {
                if body.len() < 3 {
                    return Err(bad_len());
                }
                let s = subfn()?;
                Request::RoutineControl {
                    control: RoutineControlType::from_byte(sid, s & 0x7F)?,
                    routine: u16_at(body, 1).ok_or_else(bad_len)?,
                    data: body[3..].to_vec(),
                    suppress_response: s & SUPPRESS_POSITIVE_RESPONSE != 0,
                }
            }
            REQUEST_DOWNLOAD => {
                let (&data_format, rest) = body.split_first().ok_or_else(bad_len)?;
                Request::RequestDownload {
                    data_format,
                    location: MemoryLocation::decode(sid, rest).map_err(|e| match e {
                        Error::IncorrectLength { .. } => bad_len(),
                        other => other,
                    })?,
                }
            }
            TRANSFER_DATA => {
                let (&counter, data) = body.split_first().ok_or_else(bad_len)?;
                Request::TransferData {
                    counter,
                    data: data.to_vec(),
                }
            }
            REQUEST_TRANSFER_EXIT => Request::RequestTransferExit {
                data: body.to_vec(),
            },
            other => return Err(Error::UnknownService { sid: other }),
        })
    }
}

/// A UDS response: positive, or negative (`7F SID NRC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `50 session P2(2) P2*(2)`.
    DiagnosticSessionControl {
        /// The session entered.
        session: Session,
        /// The server's P2/P2*.
        timing: ServerTiming,
    },
    /// `51 type [powerDownTime]`.
    EcuReset {
        /// Reset type.
        reset_type: ResetType,
        /// powerDownTime, only for enableRapidPowerShutDown.
        power_down_time: Option<u8>,
    },
    /// `67 sub [seed]`: a seed for an odd sub-function, empty for a key.
    SecurityAccess {
        /// The echoed sub-function (odd: seed; even: key accepted).
        sub_function: u8,
        /// securitySeed (all zero: already unlocked).
        seed: Vec<u8>,
    },
    /// `62 did data`. Decoding assumes one DID per request, as this crate's
    /// client and protocol always send.
    ReadDataByIdentifier {
        /// Data identifier.
        did: u16,
        /// dataRecord.
        data: Vec<u8>,
    },
    /// `6E did`.
    WriteDataByIdentifier {
        /// Data identifier.
        did: u16,
    },
    /// `71 type rid [status]`.
    RoutineControl {
        /// Control type echoed.
        control: RoutineControlType,
        /// Routine identifier.
        routine: u16,
        /// routineInfo + routineStatusRecord.
        status: Vec<u8>,
    },
    /// `74 LFI maxNumberOfBlockLength`.
    RequestDownload {
        /// maxNumberOfBlockLength: the largest whole TransferData request
        /// (SID and counter included).
        max_block_length: u64,
    },
    /// `76 counter [data]`.
    TransferData {
        /// blockSequenceCounter echoed.
        counter: u8,
        /// transferResponseParameterRecord.
        data: Vec<u8>,
    },
    /// `77 [record]`.
    RequestTransferExit {
        /// transferResponseParameterRecord.
        data: Vec<u8>,
    },
    /// `7E 00`.
    TesterPresent,
    /// `7F sid nrc`.
    Negative {
        /// The rejected request's SID.
        sid: u8,
        /// Why.
        nrc: Nrc,
    },
}

impl Response {
    /// A negative response.
    pub fn negative(sid: u8, nrc: Nrc) -> Self {
        Response::Negative { sid, nrc }
    }

    /// The SID of the request this answers.
    pub fn request_sid(&self) -> u8 {
        use sid::*;
        match self {
            Response::DiagnosticSessionControl { .. } => DIAGNOSTIC_SESSION_CONTROL,
            Response::EcuReset { .. } => ECU_RESET,
            Response::SecurityAccess { .. } => SECURITY_ACCESS,
            Response::ReadDataByIdentifier { .. } => READ_DATA_BY_IDENTIFIER,
            Response::WriteDataByIdentifier { .. } => WRITE_DATA_BY_IDENTIFIER,
            Response::RoutineControl { .. } => ROUTINE_CONTROL,
            Response::RequestDownload { .. } => REQUEST_DOWNLOAD,
            Response::TransferData { .. } => TRANSFER_DATA,
            Response::RequestTransferExit { .. } => REQUEST_TRANSFER_EXIT,
            Response::TesterPresent => TESTER_PRESENT,
            Response::Negative { sid, .. } => *sid,
        }
    }

    /// Encode to the bytes of one UDS message.
    pub fn encode(&self) -> Vec<u8> {
        if let Response::Negative { sid, nrc } = self {
            return vec![sid::NEGATIVE_RESPONSE, *sid, nrc.as_byte()];
        }
        let mut out = vec![self
            .request_sid()
            .wrapping_add(sid::POSITIVE_RESPONSE_OFFSET)];
        match self {
            Response::DiagnosticSessionControl { session, timing } => {
                out.push(session.as_byte());
                timing.encode(&mut out);
            }
            Response::EcuReset {
                reset_type,
                power_down_time,
            } => {
                out.push(reset_type.as_byte());
                out.extend(power_down_time);
            }
            Response::SecurityAccess { sub_function, seed } => {
                out.push(*sub_function);
                out.extend_from_slice(seed);
            }
            Response::ReadDataByIdentifier { did, data } => {
                out.extend_from_slice(&did.to_be_bytes());
                out.extend_from_slice(data);
            }
            Response::WriteDataByIdentifier { did } => out.extend_from_slice(&did.to_be_bytes()),
            Response::RoutineControl {
                control,
                routine,
                status,
            } => {
                out.push(control.as_byte());
                out.extend_from_slice(&routine.to_be_bytes());
                out.extend_from_slice(status);
            }
            Response::RequestDownload { max_block_length } => {
                let width: u8 = if *max_block_length <= 0xFFFF {
                    2
                } else if *max_block_length <= 0xFFFF_FFFF {
                    4
                } else {
                    8
                };
                out.push(width << 4);
                push_be(&mut out, *max_block_length, width);
            }
            Response::TransferData { counter, data } => {
                out.push(*counter);
                out.extend_from_slice(data);
            }
            Response::RequestTransferExit { data } => out.extend_from_slice(data),
            Response::TesterPresent => out.push(0),
            Response::Negative { .. } => {}
        }
        out
    }

    /// Decode one response from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        use sid::*;
        let (&rsid, body) = bytes.split_first().ok_or(Error::Empty)?;
        let len = bytes.len();
        if rsid == NEGATIVE_RESPONSE {
            return match body {
                [sid, nrc] => Ok(Response::Negative {
                    sid: *sid,
                    nrc: Nrc::from_byte(*nrc),
                }),
                _ => Err(Error::IncorrectLength { sid: rsid, len }),
            };
        }
        let sid = rsid.wrapping_sub(POSITIVE_RESPONSE_OFFSET);
        let bad_len = || Error::IncorrectLength { sid: rsid, len };
        Ok(match sid {
            DIAGNOSTIC_SESSION_CONTROL => {
                if body.len() != 5 {
                    return Err(bad_len());
                }
                let p2 = u16_at(body, 1).ok_or_else(bad_len)?;
                let p2s = u16_at(body, 3).ok_or_else(bad_len)?;
                Response::DiagnosticSessionControl {
                    session: Session::from_byte(body[0] & 0x7F),
                    timing: ServerTiming {
                        p2: Duration::from_millis(p2.into()),
                        p2_star: Duration::from_millis(u64::from(p2s) * 10),
                    },
                }
            }
            ECU_RESET => match body {
                [t] => Response::EcuReset {
                    reset_type: ResetType::from_byte(t & 0x7F),
                    power_down_time: None,
                },
                [t, p] => Response::EcuReset {
                    reset_type: ResetType::from_byte(t & 0x7F),
                    power_down_time: Some(*p),
                },
                _ => return Err(bad_len()),
            },
            SECURITY_ACCESS => {
                let (&s, seed) = body.split_first().ok_or_else(bad_len)?;
                Response::SecurityAccess {
                    sub_function: s,
                    seed: seed.to_vec(),
                }
            }
            READ_DATA_BY_IDENTIFIER => {
                if body.len() < 2 {
                    return Err(bad_len());
                }
                Response::ReadDataByIdentifier {
                    did: u16_at(body, 0).ok_or_else(bad_len)?,
                    data: body[2..].to_vec(),
                }
            }
            WRITE_DATA_BY_IDENTIFIER => {
                if body.len() != 2 {
                    return Err(bad_len());
                }
                Response::WriteDataByIdentifier {
                    did: u16_at(body, 0).ok_or_else(bad_len)?,
                }
            }
            ROUTINE_CONTROL => {
                if body.len() < 3 {
                    return Err(bad_len());
                }
                Response::RoutineControl {
                    control: RoutineControlType::from_byte(rsid, body[0] & 0x7F)?,
                    routine: u16_at(body, 1).ok_or_else(bad_len)?,
                    status: body[3..].to_vec(),
                }
            }
            REQUEST_DOWNLOAD => {
                let (&lfi, rest) = body.split_first().ok_or_else(bad_len)?;
                let width = usize::from(lfi >> 4);
                if !(1..=8).contains(&width) {
                    return Err(Error::OutOfRange {
                        sid: rsid,
                        reason: "lengthFormatIdentifier must give 1..=8 bytes",
                    });
                }
                if rest.len() != width {
                    return Err(bad_len());
                }
                Response::RequestDownload {
                    max_block_length: be(rest),
                }
            }
            TRANSFER_DATA => {
                let (&counter, data) = body.split_first().ok_or_else(bad_len)?;
                Response::TransferData {
                    counter,
                    data: data.to_vec(),
                }
            }
            REQUEST_TRANSFER_EXIT => Response::RequestTransferExit {
                data: body.to_vec(),
            },
            TESTER_PRESENT => match body {
                [s] if s & 0x7F == 0 => Response::TesterPresent,
                [s] => {
                    return Err(Error::SubFunctionNotSupported {
                        sid: rsid,
                        sub_function: *s,
                    })
                }
                _ => return Err(bad_len()),
            },
            _ => return Err(Error::UnknownService { sid: rsid }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rt_req(bytes: &[u8], req: Request) {
        assert_eq!(Request::decode(bytes).unwrap(), req, "decode {bytes:02X?}");
        assert_eq!(req.encode(), bytes, "encode {req:?}");
    }

    fn rt_rsp(bytes: &[u8], rsp: Response) {
        assert_eq!(Response::decode(bytes).unwrap(), rsp, "decode {bytes:02X?}");
        assert_eq!(rsp.encode(), bytes, "encode {rsp:?}");
    }

    #[test]
    fn diagnostic_session_control() {
        rt_req(
            &[0x10, 0x02],
            Request::DiagnosticSessionControl {
                session: Session::Programming,
                suppress_response: false,
            },
        );
        rt_req(
            &[0x10, 0x83],
            Request::DiagnosticSessionControl {
                session: Session::Extended,
                suppress_response: true,
            },
        );
        // 50 03, P2 = 0x0032 = 50 ms, P2* = 0x01F4 * 10 ms = 5000 ms.
        rt_rsp(
            &[0x50, 0x03, 0x00, 0x32, 0x01, 0xF4],
            Response::DiagnosticSessionControl {
                session: Session::Extended,
                timing: ServerTiming::default(),
            },
        );
        assert_eq!(
            Request::decode(&[0x10]),
            Err(Error::IncorrectLength { sid: 0x10, len: 1 })
        );
        assert_eq!(
            Request::decode(&[0x10, 0x01, 0x00]).unwrap_err().nrc(),
            Some(Nrc::IncorrectMessageLengthOrInvalidFormat)
        );
    }

    #[test]
    fn ecu_reset() {
        rt_req(
            &[0x11, 0x01],
            Request::EcuReset {
                reset_type: ResetType::Hard,
                suppress_response: false,
            },
        );
        rt_rsp(
            &[0x51, 0x01],
            Response::EcuReset {
                reset_type: ResetType::Hard,
                power_down_time: None,
            },
        );
        rt_rsp(
            &[0x51, 0x04, 0x0A],
            Response::EcuReset {
                reset_type: ResetType::EnableRapidPowerShutDown,
                power_down_time: Some(10),
            },
        );
    }

    #[test]
    fn security_access() {
        rt_req(
            &[0x27, 0x11],
            Request::RequestSeed {
                level: 0x11,
                data: vec![],
            },
        );
        rt_req(
            &[0x27, 0x12, 0xAA, 0xBB],
            Request::SendKey {
                level: 0x11,
                key: vec![0xAA, 0xBB],
            },
        );
        rt_rsp(
            &[0x67, 0x11, 1, 2, 3, 4],
            Response::SecurityAccess {
                sub_function: 0x11,
                seed: vec![1, 2, 3, 4],
            },
        );
        rt_rsp(
            &[0x67, 0x12],
            Response::SecurityAccess {
                sub_function: 0x12,
                seed: vec![],
            },
        );
        // sendKey without a key, and the reserved sub-functions 0x00 / 0x7F.
        assert_eq!(
            Request::decode(&[0x27, 0x12]).unwrap_err().nrc(),
            Some(Nrc::IncorrectMessageLengthOrInvalidFormat)
        );
        assert_eq!(
            Request::decode(&[0x27, 0x00]).unwrap_err().nrc(),
            Some(Nrc::SubFunctionNotSupported)
        );
        assert_eq!(
            Request::decode(&[0x27, 0x7F]).unwrap_err().nrc(),
            Some(Nrc::SubFunctionNotSupported)
        );
    }

    #[test]
    fn data_by_identifier() {
        rt_req(
            &[0x22, 0xF1, 0xA0],
            Request::ReadDataByIdentifier { dids: vec![0xF1A0] },
        );
        rt_req(
            &[0x22, 0xF1, 0xA0, 0xF1, 0xA1],
            Request::ReadDataByIdentifier {
                dids: vec![0xF1A0, 0xF1A1],
            },
        );
        rt_rsp(
            &[0x62, 0xF1, 0xA0, b'E', b'1'],
            Response::ReadDataByIdentifier {
                did: 0xF1A0,
                data: b"E1".to_vec(),
            },
        );
        rt_req(
            &[0x2E, 0xF1, 0xA5, 0, 0, 0, 0, 0x65, 0x00, 0x00, 0x00],
            Request::WriteDataByIdentifier {
                did: 0xF1A5,
                data: vec![0, 0, 0, 0, 0x65, 0, 0, 0],
            },
        );
        rt_rsp(
            &[0x6E, 0xF1, 0xA5],
            Response::WriteDataByIdentifier { did: 0xF1A5 },
        );
        assert!(Request::decode(&[0x22, 0xF1]).is_err());
        assert!(Request::decode(&[0x2E, 0xF1, 0xA5]).is_err());
    }

    #[test]
    fn routine_control() {
        // 31 01 FF00 44 00000000 00100000: erase 1 MiB at 0.
        let mut erase = vec![0x31, 0x01, 0xFF, 0x00];
        MemoryLocation::new(0, 0x10_0000).encode(&mut erase);
        assert_eq!(&erase[4..], &[0x44, 0, 0, 0, 0, 0x00, 0x10, 0x00, 0x00]);
        rt_req(
            &erase,
            Request::RoutineControl {
                control: RoutineControlType::Start,
                routine: 0xFF00,
                data: erase[4..].to_vec(),
                suppress_response: false,
            },
        );
        rt_rsp(
            &[0x71, 0x01, 0xFF, 0x01, 0x00],
            Response::RoutineControl {
                control: RoutineControlType::Start,
                routine: 0xFF01,
                status: vec![0],
            },
        );
        assert_eq!(
            Request::decode(&[0x31, 0x04, 0xFF, 0x00])
                .unwrap_err()
                .nrc(),
            Some(Nrc::SubFunctionNotSupported)
        );
    }

    #[test]
    fn download() {
        // 34 00 44 00000000 00100000
        rt_req(
            &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0x00, 0x10, 0x00, 0x00],
            Request::RequestDownload {
                data_format: 0,
                location: MemoryLocation::new(0, 0x10_0000),
            },
        );
        // ALFID 0x24: 2-byte size, 4-byte address.
        let r = Request::decode(&[0x34, 0x00, 0x24, 0xFE, 0, 0xF1, 0xC3, 0x02, 0x8B]).unwrap();
        assert_eq!(
            r,
            Request::RequestDownload {
                data_format: 0,
                location: MemoryLocation {
                    address: 0xFE00_F1C3,
                    size: 0x028B,
                    address_len: 4,
                    size_len: 2
                },
            }
        );
        // 74 20 0FFF: maxNumberOfBlockLength 4095 (SID and counter included).
        rt_rsp(
            &[0x74, 0x20, 0x0F, 0xFF],
            Response::RequestDownload {
                max_block_length: 4095,
            },
        );
        rt_rsp(
            &[0x74, 0x40, 0x00, 0x01, 0x01, 0x02],
            Response::RequestDownload {
                max_block_length: 0x1_0102,
            },
        );
        assert_eq!(
            Request::decode(&[0x34, 0x00, 0x04, 0, 0, 0, 0])
                .unwrap_err()
                .nrc(),
            Some(Nrc::RequestOutOfRange)
        );
        assert_eq!(
            Request::decode(&[0x34, 0x00, 0x44, 0, 0, 0])
                .unwrap_err()
                .nrc(),
            Some(Nrc::IncorrectMessageLengthOrInvalidFormat)
        );
        rt_req(
            &[0x36, 0x01, 0xDE, 0xAD],
            Request::TransferData {
                counter: 1,
                data: vec![0xDE, 0xAD],
            },
        );
        rt_rsp(
            &[0x76, 0x00],
            Response::TransferData {
                counter: 0,
                data: vec![],
            },
        );
        rt_req(&[0x37], Request::RequestTransferExit { data: vec![] });
        rt_rsp(
            &[0x77, 0xCA, 0xFE],
            Response::RequestTransferExit {
                data: vec![0xCA, 0xFE],
            },
        );
    }

    #[test]
    fn tester_present_and_negative() {
        rt_req(
            &[0x3E, 0x00],
            Request::TesterPresent {
                suppress_response: false,
            },
        );
        rt_req(
            &[0x3E, 0x80],
            Request::TesterPresent {
                suppress_response: true,
            },
        );
        rt_rsp(&[0x7E, 0x00], Response::TesterPresent);
        assert_eq!(
            Request::decode(&[0x3E, 0x01]).unwrap_err().nrc(),
            Some(Nrc::SubFunctionNotSupported)
        );
        rt_rsp(
            &[0x7F, 0x31, 0x78],
            Response::Negative {
                sid: 0x31,
                nrc: Nrc::RequestCorrectlyReceivedResponsePending,
            },
        );
        assert!(Response::decode(&[0x7F, 0x31]).is_err());
        assert_eq!(
            Request::decode(&[0x85, 0x01]).unwrap_err().nrc(),
            Some(Nrc::ServiceNotSupported)
        );
        assert_eq!(Request::decode(&[]), Err(Error::Empty));
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..64);
        let some_bytes = || proptest::collection::vec(any::<u8>(), 1..64);
        prop_oneof![
            (1u8..0x7F, any::<bool>()).prop_map(|(s, b)| Request::DiagnosticSessionControl {
                session: Session::from_byte(s),
                suppress_response: b
            }),
            (1u8..0x7F, any::<bool>()).prop_map(|(s, b)| Request::EcuReset {
                reset_type: ResetType::from_byte(s),
                suppress_response: b
            }),
            (0u8..0x3F, bytes()).prop_map(|(l, data)| Request::RequestSeed {
                level: l * 2 + 1,
                data
            }),
            (0u8..0x3F, some_bytes()).prop_map(|(l, key)| Request::SendKey {
                level: l * 2 + 1,
                key
            }),
            proptest::collection::vec(any::<u16>(), 1..8)
                .prop_map(|dids| Request::ReadDataByIdentifier { dids }),
            (any::<u16>(), some_bytes())
                .prop_map(|(did, data)| Request::WriteDataByIdentifier { did, data }),
            (1u8..4, any::<u16>(), bytes(), any::<bool>()).prop_map(|(c, routine, data, s)| {
                Request::RoutineControl {
                    control: RoutineControlType::from_byte(0x31, c).unwrap(),
                    routine,
                    data,
                    suppress_response: s,
                }
            }),
            (any::<u8>(), 1u8..=8, 1u8..=8, any::<u64>(), any::<u64>()).prop_map(
                |(f, al, sl, a, s)| {
                    let mask = |w: u8, v: u64| {
                        if w == 8 {
                            v
                        } else {
                            v & ((1u64 << (8 * w)) - 1)
                        }
                    };
                    Request::RequestDownload {
                        data_format: f,
                        location: MemoryLocation {
                            address: mask(al, a),
                            size: mask(sl, s),
                            address_len: al,
                            size_len: sl,
                        },
                    }
                }
            ),
            (any::<u8>(), bytes())
                .prop_map(|(counter, data)| Request::TransferData { counter, data }),
            bytes().prop_map(|data| Request::RequestTransferExit { data }),
            any::<bool>().prop_map(|s| Request::TesterPresent {
                suppress_response: s
            }),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }

        #[test]
        fn random_bytes_after_a_valid_sid_never_panic(
            sid in prop_oneof![Just(0x10u8), Just(0x11), Just(0x22), Just(0x27), Just(0x2E), Just(0x31),
                               Just(0x34), Just(0x36), Just(0x37), Just(0x3E), Just(0x50), Just(0x51),
                               Just(0x62), Just(0x67), Just(0x6E), Just(0x71), Just(0x74), Just(0x76),
                               Just(0x77), Just(0x7E), Just(0x7F)],
            rest in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut bytes = vec![sid];
            bytes.extend(rest);
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }

        #[test]
        fn requests_round_trip(req in arb_request()) {
            let bytes = req.encode();
            prop_assert_eq!(Request::decode(&bytes).unwrap(), req);
        }
    }
}
