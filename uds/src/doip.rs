//! DoIP (ISO 13400-2) codec and a sans-IO framer for the TCP byte stream.
//!
//! Every message is a generic header — protocol version, its bitwise inverse,
//! payload type (u16 BE), payload length (u32 BE) — and a payload. UDS travels in
//! diagnostic messages (0x8001) between 16-bit logical addresses after a
//! routing activation (0x0005/0x0006); each is acknowledged (0x8002/0x8003).

use crate::error::{Error, Result};

/// TCP and UDP port of DoIP.
pub const PORT: u16 = 13400;
/// Protocol version of ISO 13400-2:2012.
pub const VERSION_2012: u8 = 0x02;
/// Protocol version of ISO 13400-2:2019.
pub const VERSION_2019: u8 = 0x03;
/// Protocol version "any", only for vehicle identification requests.
pub const VERSION_ANY: u8 = 0xFF;
/// Length of the generic header.
pub const HEADER_LEN: usize = 8;
/// Default payload limit of [`DoipFramer`]: a UDS message of 64 KiB plus
/// addresses, ample for TransferData blocks.
pub const DEFAULT_MAX_PAYLOAD: u32 = 65_536 + 4;

/// Payload types (ISO 13400-2:2019 Table 17).
pub mod payload_type {
    /// Generic DoIP header negative acknowledge.
    pub const GENERIC_NACK: u16 = 0x0000;
    /// Vehicle identification request.
    pub const VEHICLE_ID_REQUEST: u16 = 0x0001;
    /// Vehicle identification request with EID.
    pub const VEHICLE_ID_REQUEST_EID: u16 = 0x0002;
    /// Vehicle identification request with VIN.
    pub const VEHICLE_ID_REQUEST_VIN: u16 = 0x0003;
    /// Vehicle announcement / identification response.
    pub const VEHICLE_ANNOUNCEMENT: u16 = 0x0004;
    /// Routing activation request.
    pub const ROUTING_ACTIVATION_REQUEST: u16 = 0x0005;
    /// Routing activation response.
    pub const ROUTING_ACTIVATION_RESPONSE: u16 = 0x0006;
    /// Alive check request.
    pub const ALIVE_CHECK_REQUEST: u16 = 0x0007;
    /// Alive check response.
    pub const ALIVE_CHECK_RESPONSE: u16 = 0x0008;
    /// Diagnostic message.
    pub const DIAGNOSTIC_MESSAGE: u16 = 0x8001;
    /// Diagnostic message positive acknowledgement.
    pub const DIAGNOSTIC_ACK: u16 = 0x8002;
    /// Diagnostic message negative acknowledgement.
    pub const DIAGNOSTIC_NACK: u16 = 0x8003;
}

/// Generic DoIP header negative acknowledge codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenericNackCode {
    /// 0x00: incorrect pattern format (close the socket).
    IncorrectPatternFormat,
    /// 0x01: unknown payload type (discard the message).
    UnknownPayloadType,
    /// 0x02: message too large (discard).
    MessageTooLarge,
    /// 0x03: out of memory (discard).
    OutOfMemory,
    /// 0x04: invalid payload length (close the socket).
    InvalidPayloadLength,
    /// Another (reserved) value.
    Other(u8),
}

impl GenericNackCode {
    /// From the byte.
    pub fn from_byte(b: u8) -> Self {
        match b {
            0x00 => Self::IncorrectPatternFormat,
            0x01 => Self::UnknownPayloadType,
            0x02 => Self::MessageTooLarge,
            0x03 => Self::OutOfMemory,
            0x04 => Self::InvalidPayloadLength,
            o => Self::Other(o),
        }
    }
    /// The byte.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::IncorrectPatternFormat => 0x00,
            Self::UnknownPayloadType => 0x01,
            Self::MessageTooLarge => 0x02,
            Self::OutOfMemory => 0x03,
            Self::InvalidPayloadLength => 0x04,
            Self::Other(o) => o,
        }
    }
    /// Whether ISO 13400-2 requires closing the TCP socket after sending it.
    pub fn closes_socket(self) -> bool {
        matches!(
            self,
            Self::IncorrectPatternFormat | Self::InvalidPayloadLength
        )
    }
}

/// Routing activation response codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingActivationCode {
    /// 0x00: denied, unknown source address.
    UnknownSourceAddress,
    /// 0x01: denied, all TCP sockets registered and active.
    AllSocketsActive,
    /// 0x02: denied, source address differs from the one activated on this socket.
    DifferentSourceAddress,
    /// 0x03: denied, source address already active on another socket.
    SourceAddressAlreadyActive,
    /// 0x04: denied, missing authentication.
    MissingAuthentication,
    /// 0x05: denied, rejected confirmation.
    RejectedConfirmation,
    /// 0x06: denied, unsupported routing activation type.
    UnsupportedActivationType,
    /// 0x07: denied, a TLS connection is required.
    TlsRequired,
    /// 0x10: routing successfully activated.
    Success,
    /// 0x11: will be activated, confirmation required.
    ConfirmationRequired,
    /// Another (reserved or OEM) value.
    Other(u8),
}

impl RoutingActivationCode {
    /// From the byte.
    pub fn from_byte(b: u8) -> Self {
        match b {
            0x00 => Self::UnknownSourceAddress,
            0x01 => Self::AllSocketsActive,
            0x02 => Self::DifferentSourceAddress,
            0x03 => Self::SourceAddressAlreadyActive,
            0x04 => Self::MissingAuthentication,
            0x05 => Self::RejectedConfirmation,
            0x06 => Self::UnsupportedActivationType,
            0x07 => Self::TlsRequired,
            0x10 => Self::Success,
            0x11 => Self::ConfirmationRequired,
            o => Self::Other(o),
        }
    }
    /// The byte.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::UnknownSourceAddress => 0x00,
            Self::AllSocketsActive => 0x01,
            Self::DifferentSourceAddress => 0x02,
            Self::SourceAddressAlreadyActive => 0x03,
            Self::MissingAuthentication => 0x04,
            Self::RejectedConfirmation => 0x05,
            Self::UnsupportedActivationType => 0x06,
            Self::TlsRequired => 0x07,
            Self::Success => 0x10,
            Self::ConfirmationRequired => 0x11,
            Self::Other(o) => o,
        }
    }
}

/// Diagnostic message negative acknowledgement codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagnosticNackCode {
    /// 0x02: invalid source address.
    InvalidSourceAddress,
    /// 0x03: unknown target address.
    UnknownTargetAddress,
    /// 0x04: diagnostic message too large.
    MessageTooLarge,
    /// 0x05: out of memory.
    OutOfMemory,
    /// 0x06: target unreachable.
    TargetUnreachable,
    /// 0x07: unknown network.
    UnknownNetwork,
    /// 0x08: transport protocol error.
    TransportProtocolError,
    /// Another (reserved) value.
    Other(u8),
}

impl DiagnosticNackCode {
    /// From the byte.
    pub fn from_byte(b: u8) -> Self {
        match b {
            0x02 => Self::InvalidSourceAddress,
            0x03 => Self::UnknownTargetAddress,
            0x04 => Self::MessageTooLarge,
            0x05 => Self::OutOfMemory,
            0x06 => Self::TargetUnreachable,
            0x07 => Self::UnknownNetwork,
            0x08 => Self::TransportProtocolError,
            o => Self::Other(o),
        }
    }
    /// The byte.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::InvalidSourceAddress => 0x02,
            Self::UnknownTargetAddress => 0x03,
            Self::MessageTooLarge => 0x04,
            Self::OutOfMemory => 0x05,
            Self::TargetUnreachable => 0x06,
            Self::UnknownNetwork => 0x07,
            Self::TransportProtocolError => 0x08,
            Self::Other(o) => o,
        }
    }
}

/// A vehicle announcement / identification response (0x0004).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleAnnouncement {
    /// VIN (17 ASCII bytes).
    pub vin: [u8; 17],
    /// Logical address of the DoIP entity.
    pub logical_address: u16,
    /// Entity identification (usually a MAC address).
    pub eid: [u8; 6],
    /// Group identification.
    pub gid: [u8; 6],
    /// Further action required (0x00 none, 0x10 routing activation for
    /// central security).
    pub further_action: u8,
    /// VIN/GID sync status (optional byte).
    pub sync_status: Option<u8>,
}

/// A DoIP message (payload decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 0x0000.
    GenericNack(GenericNackCode),
    /// 0x0001.
    VehicleIdentificationRequest,
    /// 0x0002.
    VehicleIdentificationRequestEid([u8; 6]),
    /// 0x0003.
    VehicleIdentificationRequestVin([u8; 17]),
    /// 0x0004.
    VehicleAnnouncement(VehicleAnnouncement),
    /// 0x0005.
    RoutingActivationRequest {
        /// Tester's logical address.
        source: u16,
        /// Activation type (0x00 default, 0x01 WWH-OBD, 0xE0 central security).
        activation_type: u8,
        /// OEM-specific 4 bytes, if present.
        oem: Option<[u8; 4]>,
    },
    /// 0x0006.
    RoutingActivationResponse {
        /// Tester's logical address.
        tester: u16,
        /// DoIP entity's logical address.
        entity: u16,
        /// Result.
        code: RoutingActivationCode,
        /// OEM-specific 4 bytes, if present.
        oem: Option<[u8; 4]>,
    },
    /// 0x0007.
    AliveCheckRequest,
    /// 0x0008.
    AliveCheckResponse {
        /// Tester's logical address.
        source: u16,
    },
    /// 0x8001.
    DiagnosticMessage {
        /// Source logical address.
        source: u16,
        /// Target logical address.
        target: u16,
        /// The UDS message.
        data: Vec<u8>,
    },
    /// 0x8002.
    DiagnosticAck {
        /// Source logical address (the entity).
        source: u16,
        /// Target logical address (the tester).
        target: u16,
        /// Acknowledge code (0x00).
        code: u8,
        /// Copy of (a prefix of) the acknowledged message.
        previous: Vec<u8>,
    },
    /// 0x8003.
    DiagnosticNack {
        /// Source logical address.
        source: u16,
        /// Target logical address.
        target: u16,
        /// Why.
        code: DiagnosticNackCode,
        /// Copy of (a prefix of) the refused message.
        previous: Vec<u8>,
    },
}

/// A generic header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version.
    pub version: u8,
    /// Payload type.
    pub payload_type: u16,
    /// Payload length.
    pub payload_len: u32,
}

impl Header {
    /// Decode and check the version/inverse pattern.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self> {
        let (version, inverse) = (bytes[0], bytes[1]);
        if version != !inverse {
            return Err(Error::DoipIncorrectPattern { version, inverse });
        }
        Ok(Header {
            version,
            payload_type: u16::from_be_bytes([bytes[2], bytes[3]]),
            payload_len: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        })
    }

    /// Encode.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let t = self.payload_type.to_be_bytes();
        let l = self.payload_len.to_be_bytes();
        [
            self.version,
            !self.version,
            t[0],
            t[1],
            l[0],
            l[1],
            l[2],
            l[3],
        ]
    }
}

fn u16_at(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

fn array<const N: usize>(p: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&p[..N]);
    a
}

impl Message {
    /// Its payload type.
    pub fn payload_type(&self) -> u16 {
        use payload_type::*;
        match self {
            Message::GenericNack(_) => GENERIC_NACK,
            Message::VehicleIdentificationRequest => VEHICLE_ID_REQUEST,
            Message::VehicleIdentificationRequestEid(_) => VEHICLE_ID_REQUEST_EID,
            Message::VehicleIdentificationRequestVin(_) => VEHICLE_ID_REQUEST_VIN,
            Message::VehicleAnnouncement(_) => VEHICLE_ANNOUNCEMENT,
            Message::RoutingActivationRequest { .. } => ROUTING_ACTIVATION_REQUEST,
            Message::RoutingActivationResponse { .. } => ROUTING_ACTIVATION_RESPONSE,
            Message::AliveCheckRequest => ALIVE_CHECK_REQUEST,
            Message::AliveCheckResponse { .. } => ALIVE_CHECK_RESPONSE,
            Message::DiagnosticMessage { .. } => DIAGNOSTIC_MESSAGE,
            Message::DiagnosticAck { .. } => DIAGNOSTIC_ACK,
            Message::DiagnosticNack { .. } => DIAGNOSTIC_NACK,
        }
    }

    /// The payload bytes.
    pub fn encode_payload(&self) -> Vec<u8> {
        let mut p = Vec::new();
        match self {
            Message::GenericNack(c) => p.push(c.as_byte()),
            Message::VehicleIdentificationRequest | Message::AliveCheckRequest => {}
            Message::VehicleIdentificationRequestEid(eid) => p.extend_from_slice(eid),
            Message::VehicleIdentificationRequestVin(vin) => p.extend_from_slice(vin),
            Message::VehicleAnnouncement(a) => {
                p.extend_from_slice(&a.vin);
                p.extend_from_slice(&a.logical_address.to_be_bytes());
                p.extend_from_slice(&a.eid);
                p.extend_from_slice(&a.gid);
                p.push(a.further_action);
                p.extend(a.sync_status);
            }
            Message::RoutingActivationRequest {
                source,
                activation_type,
                oem,
            } => {
                p.extend_from_slice(&source.to_be_bytes());
                p.push(*activation_type);
                p.extend_from_slice(&[0; 4]);
                if let Some(o) = oem {
                    p.extend_from_slice(o);
                }
            }
            Message::RoutingActivationResponse {
                tester,
                entity,
                code,
                oem,
            } => {
                p.extend_from_slice(&tester.to_be_bytes());
                p.extend_from_slice(&entity.to_be_bytes());
                p.push(code.as_byte());
                p.extend_from_slice(&[0; 4]);
                if let Some(o) = oem {
                    p.extend_from_slice(o);
                }
            }
            Message::AliveCheckResponse { source } => p.extend_from_slice(&source.to_be_bytes()),
            Message::DiagnosticMessage {
                source,
                target,
                data,
            } => {
                p.reserve(4 + data.len());
                p.extend_from_slice(&source.to_be_bytes());
                p.extend_from_slice(&target.to_be_bytes());
                p.extend_from_slice(data);
            }
            Message::DiagnosticAck {
                source,
                target,
                code,
                previous,
            } => {
                p.extend_from_slice(&source.to_be_bytes());
                p.extend_from_slice(&target.to_be_bytes());
                p.push(*code);
                p.extend_from_slice(previous);
            }
            Message::DiagnosticNack {
                source,
                target,
                code,
                previous,
            } => {
                p.extend_from_slice(&source.to_be_bytes());
                p.extend_from_slice(&target.to_be_bytes());
                p.push(code.as_byte());
                p.extend_from_slice(previous);
            }
        }
        p
    }

    /// Header and payload, with this protocol version.
    pub fn encode(&self, version: u8) -> Vec<u8> {
        let payload = self.encode_payload();
        let header = Header {
            version,
            payload_type: self.payload_type(),
            payload_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&payload);
        out
    }

    /// Decode a payload of `payload_type` (untrusted bytes).
    pub fn decode(payload_type: u16, p: &[u8]) -> Result<Self> {
        use payload_type::*;
        let bad = || Error::DoipInvalidPayloadLength {
            payload_type,
            len: u32::try_from(p.len()).unwrap_or(u32::MAX),
        };
        let n = p.len();
        Ok(match payload_type {
            GENERIC_NACK if n == 1 => Message::GenericNack(GenericNackCode::from_byte(p[0])),
            VEHICLE_ID_REQUEST if n == 0 => Message::VehicleIdentificationRequest,
            VEHICLE_ID_REQUEST_EID if n == 6 => Message::VehicleIdentificationRequestEid(array(p)),
            VEHICLE_ID_REQUEST_VIN if n == 17 => Message::VehicleIdentificationRequestVin(array(p)),
            VEHICLE_ANNOUNCEMENT if n == 32 || n == 33 => {
                Message::VehicleAnnouncement(VehicleAnnouncement {
                    vin: array(p),
                    logical_address: u16_at(p, 17),
                    eid: array(&p[19..]),
                    gid: array(&p[25..]),
                    further_action: p[31],
                    sync_status: p.get(32).copied(),
                })
            }
            ROUTING_ACTIVATION_REQUEST if n == 7 || n == 11 => Message::RoutingActivationRequest {
                source: u16_at(p, 0),
                activation_type: p[2],
                oem: (n == 11).then(|| array(&p[7..])),
            },
            ROUTING_ACTIVATION_RESPONSE if n == 9 || n == 13 => {
                Message::RoutingActivationResponse {
                    tester: u16_at(p, 0),
                    entity: u16_at(p, 2),
                    code: RoutingActivationCode::from_byte(p[4]),
                    oem: (n == 13).then(|| array(&p[9..])),
                }
            }
            ALIVE_CHECK_REQUEST if n == 0 => Message::AliveCheckRequest,
            ALIVE_CHECK_RESPONSE if n == 2 => Message::AliveCheckResponse {
                source: u16_at(p, 0),
            },
            // ISO 13400-2: a diagnostic message carries at least one byte of user data.
            DIAGNOSTIC_MESSAGE if n >= 5 => Message::DiagnosticMessage {
                source: u16_at(p, 0),
                target: u16_at(p, 2),
                data: p[4..].to_vec(),
            },
            DIAGNOSTIC_ACK if n >= 5 => Message::DiagnosticAck {
                source: u16_at(p, 0),
                target: u16_at(p, 2),
                code: p[4],
                previous: p[5..].to_vec(),
            },
            DIAGNOSTIC_NACK if n >= 5 => Message::DiagnosticNack {
                source: u16_at(p, 0),
                target: u16_at(p, 2),
                code: DiagnosticNackCode::from_byte(p[4]),
                previous: p[5..].to_vec(),
            },
            GENERIC_NACK
            | VEHICLE_ID_REQUEST
            | VEHICLE_ID_REQUEST_EID
            | VEHICLE_ID_REQUEST_VIN
            | VEHICLE_ANNOUNCEMENT
            | ROUTING_ACTIVATION_REQUEST
            | ROUTING_ACTIVATION_RESPONSE
            | ALIVE_CHECK_REQUEST
            | ALIVE_CHECK_RESPONSE
            | DIAGNOSTIC_MESSAGE
            | DIAGNOSTIC_ACK
            | DIAGNOSTIC_NACK => return Err(bad()),
            other => {
                return Err(Error::DoipUnknownPayloadType {
                    payload_type: other,
                })
            }
        })
    }
}

/// Splits a TCP byte stream into DoIP messages, whatever the read sizes.
///
/// Feed it bytes with [`DoipFramer::push`], then take messages with
/// [`DoipFramer::next_message`] until it returns `Ok(None)`. An error carries
/// the generic NACK to send ([`Error::doip_nack`]); after
/// [`GenericNackCode::closes_socket`] errors the connection must be closed, after
/// the others the framer has already skipped the offending payload and can
/// continue.
#[derive(Debug)]
pub struct DoipFramer {
    buf: Vec<u8>,
    max_payload: u32,
    /// Payload bytes still to skip after a discarded message.
    discard: u64,
    poisoned: bool,
}

impl Default for DoipFramer {
    fn default() -> Self {
        DoipFramer::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl DoipFramer {
    /// A framer that refuses payloads above `max_payload` bytes.
    pub fn new(max_payload: u32) -> Self {
        DoipFramer {
            buf: Vec::new(),
            max_payload,
            discard: 0,
            poisoned: false,
        }
    }

    /// Bytes received from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned {
            return;
        }
        let mut bytes = bytes;
        if self.discard > 0 {
            let skip = usize::try_from(self.discard)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            self.discard -= skip as u64;
            bytes = &bytes[skip..];
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered (at most one header plus `max_payload`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<(Header, Message)>> {
        if self.poisoned {
            return Ok(None);
        }
        let Some(head) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(head);
        let header = match Header::decode(&h) {
            Ok(header) => header,
            Err(e) => {
                // No way to resynchronise: the socket must be closed.
                self.poisoned = true;
                self.buf.clear();
                return Err(e);
            }
        };
        if header.payload_len > self.max_payload {
            // Skip the whole message, as ISO 13400-2 asks for NACK 0x02.
            let total = HEADER_LEN as u64 + u64::from(header.payload_len);
            let have = self.buf.len() as u64;
            let drop = have.min(total) as usize;
            self.buf.drain(..drop);
            self.discard = total - drop as u64;
            return Err(Error::DoipMessageTooLarge {
                len: header.payload_len,
                max: self.max_payload,
            });
        }
        let total = HEADER_LEN + header.payload_len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let result = Message::decode(header.payload_type, &self.buf[HEADER_LEN..total]);
        self.buf.drain(..total);
        match result {
            Ok(m) => Ok(Some((header, m))),
            Err(e @ Error::DoipInvalidPayloadLength { .. }) => {
                self.poisoned = true;
                self.buf.clear();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routing_activation_vectors() {
        // 02 FD 0005 00000007 | SA 0E00, type 00, reserved 00000000
        let req = Message::RoutingActivationRequest {
            source: 0x0E00,
            activation_type: 0,
            oem: None,
        };
        let bytes = [
            0x02, 0xFD, 0x00, 0x05, 0, 0, 0, 7, 0x0E, 0x00, 0x00, 0, 0, 0, 0,
        ];
        assert_eq!(req.encode(VERSION_2012), bytes);
        let mut f = DoipFramer::default();
        f.push(&bytes);
        assert_eq!(
            f.next_message().unwrap(),
            Some((
                Header {
                    version: 2,
                    payload_type: 5,
                    payload_len: 7
                },
                req
            ))
        );
        // 02 FD 0006 00000009 | tester 0E00, entity 1001, 10 success, reserved
        let rsp = Message::RoutingActivationResponse {
            tester: 0x0E00,
            entity: 0x1001,
            code: RoutingActivationCode::Success,
            oem: None,
        };
        let bytes = [
            0x02, 0xFD, 0x00, 0x06, 0, 0, 0, 9, 0x0E, 0x00, 0x10, 0x01, 0x10, 0, 0, 0, 0,
        ];
        assert_eq!(rsp.encode(VERSION_2012), bytes);
        assert_eq!(Message::decode(6, &bytes[8..]).unwrap(), rsp);
        assert_eq!(
            RoutingActivationCode::from_byte(0x06),
            RoutingActivationCode::UnsupportedActivationType
        );
    }

    #[test]
    fn diagnostic_message_vectors() {
        // 03 FC 8001 00000006 | SA 0E00, TA 1001, UDS 10 02
        let m = Message::DiagnosticMessage {
            source: 0x0E00,
            target: 0x1001,
            data: vec![0x10, 0x02],
        };
        let bytes = [
            0x03, 0xFC, 0x80, 0x01, 0, 0, 0, 6, 0x0E, 0x00, 0x10, 0x01, 0x10, 0x02,
        ];
        assert_eq!(m.encode(VERSION_2019), bytes);
        assert_eq!(Message::decode(0x8001, &bytes[8..]).unwrap(), m);
        // 02 FD 8002 00000005 | SA 1001, TA 0E00, ack 00
        let ack = Message::DiagnosticAck {
            source: 0x1001,
            target: 0x0E00,
            code: 0,
            previous: vec![],
        };
        assert_eq!(
            ack.encode(VERSION_2012),
            [0x02, 0xFD, 0x80, 0x02, 0, 0, 0, 5, 0x10, 0x01, 0x0E, 0x00, 0x00]
        );
        let nack = Message::DiagnosticNack {
            source: 0x1001,
            target: 0x0E00,
            code: DiagnosticNackCode::UnknownTargetAddress,
            previous: vec![0x10],
        };
        let bytes = nack.encode(VERSION_2012);
        assert_eq!(&bytes[2..4], &[0x80, 0x03]);
        assert_eq!(bytes[12], 0x03);
        assert_eq!(Message::decode(0x8003, &bytes[8..]).unwrap(), nack);
        assert!(matches!(
            Message::decode(0x8001, &[0x0E, 0x00, 0x10, 0x01]),
            Err(Error::DoipInvalidPayloadLength { .. })
        ));
    }

    #[test]
    fn discovery_and_alive_check() {
        // Vehicle identification request: FF 00 0001 00000000.
        assert_eq!(
            Message::VehicleIdentificationRequest.encode(VERSION_ANY),
            [0xFF, 0x00, 0x00, 0x01, 0, 0, 0, 0]
        );
        let a = VehicleAnnouncement {
            vin: *b"WSECUREEV00000001",
            logical_address: 0x1001,
            eid: [0x02, 0, 0, 0, 0, 1],
            gid: [0; 6],
            further_action: 0,
            sync_status: Some(0),
        };
        let m = Message::VehicleAnnouncement(a);
        let bytes = m.encode(VERSION_2012);
        assert_eq!(bytes.len(), 8 + 33);
        assert_eq!(&bytes[..8], &[0x02, 0xFD, 0x00, 0x04, 0, 0, 0, 33]);
        assert_eq!(&bytes[8 + 17..8 + 19], &[0x10, 0x01]);
        assert_eq!(Message::decode(4, &bytes[8..]).unwrap(), m);
        match Message::decode(4, &bytes[8..40]).unwrap() {
            Message::VehicleAnnouncement(a) => assert_eq!(a.sync_status, None),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Message::decode(4, &bytes[8..39]).unwrap_err().doip_nack(),
            Some(GenericNackCode::InvalidPayloadLength)
        );
        assert_eq!(
            Message::AliveCheckRequest.encode(2),
            [0x02, 0xFD, 0x00, 0x07, 0, 0, 0, 0]
        );
        assert_eq!(
            Message::AliveCheckResponse { source: 0x0E00 }.encode(2),
            [0x02, 0xFD, 0x00, 0x08, 0, 0, 0, 2, 0x0E, 0x00]
        );
        assert_eq!(
            Message::GenericNack(GenericNackCode::MessageTooLarge).encode(2),
            [0x02, 0xFD, 0, 0, 0, 0, 0, 1, 2]
        );
    }

    #[test]
    fn framer_handles_partial_reads_and_errors() {
        let m1 = Message::DiagnosticMessage {
            source: 0x0E00,
            target: 0x1001,
            data: vec![0x22, 0xF1, 0xA0],
        };
        let m2 = Message::AliveCheckRequest;
        let mut stream = m1.encode(2);
        stream.extend(m2.encode(2));
        let mut f = DoipFramer::default();
        let mut got = vec![];
        for b in &stream {
            f.push(std::slice::from_ref(b));
            while let Some((_, m)) = f.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![m1.clone(), m2]);
        assert_eq!(f.buffered(), 0);

        // Too large: NACK 0x02, the payload is skipped, the next message is read.
        let mut f = DoipFramer::new(16);
        let big = Message::DiagnosticMessage {
            source: 1,
            target: 2,
            data: vec![0; 100],
        }
        .encode(2);
        f.push(&big[..20]);
        let e = f.next_message().unwrap_err();
        assert_eq!(e, Error::DoipMessageTooLarge { len: 104, max: 16 });
        assert_eq!(e.doip_nack(), Some(GenericNackCode::MessageTooLarge));
        f.push(&big[20..]);
        f.push(&m1.encode(2));
        assert_eq!(f.next_message().unwrap().unwrap().1, m1);

        // Unknown payload type: NACK 0x01, skipped.
        let mut f = DoipFramer::default();
        f.push(&[0x02, 0xFD, 0x12, 0x34, 0, 0, 0, 1, 0xAA]);
        f.push(&Message::AliveCheckRequest.encode(2));
        assert_eq!(
            f.next_message().unwrap_err().doip_nack(),
            Some(GenericNackCode::UnknownPayloadType)
        );
        assert_eq!(
            f.next_message().unwrap().unwrap().1,
            Message::AliveCheckRequest
        );

        // Bad pattern: NACK 0x00, close.
        let mut f = DoipFramer::default();
        f.push(&[0x02, 0xFC, 0x80, 0x01, 0, 0, 0, 0]);
        let e = f.next_message().unwrap_err();
        assert_eq!(e.doip_nack(), Some(GenericNackCode::IncorrectPatternFormat));
        assert!(GenericNackCode::IncorrectPatternFormat.closes_socket());
        assert_eq!(f.next_message().unwrap(), None);
    }

    proptest! {
        #[test]
        fn random_streams_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..10)) {
            let mut f = DoipFramer::new(64);
            for c in &chunks {
                f.push(c);
                for _ in 0..8 {
                    match f.next_message() {
                        Ok(Some(_)) | Err(_) => {}
                        Ok(None) => break,
                    }
                }
                prop_assert!(f.buffered() <= HEADER_LEN + 64 + 40);
            }
        }

        #[test]
        fn random_payloads_never_panic(t in any::<u16>(), p in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode(t, &p);
            let _ = Message::decode(t & 0x800F, &p);
        }
    }
}
