//! The one error type of this crate.

use crate::nrc::Nrc;
use std::time::Duration;

/// Errors from decoding UDS and DoIP messages and from the flashing client.
///
/// Decoding errors carry what a server needs to pick its negative response
/// ([`Error::nrc`]) or a DoIP entity its generic header NACK
/// ([`Error::doip_nack`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- UDS decoding ----------------------------------------------------------
    /// An empty message (no service identifier).
    #[error("empty UDS message")]
    Empty,
    /// A service identifier this codec does not implement.
    #[error("unsupported UDS service 0x{sid:02X}")]
    UnknownService {
        /// The service identifier.
        sid: u8,
    },
    /// The message is too short or too long for its service.
    #[error("UDS service 0x{sid:02X}: incorrect message length {len}")]
    IncorrectLength {
        /// The service identifier.
        sid: u8,
        /// Length of the whole message.
        len: usize,
    },
    /// A sub-function value the service does not define.
    #[error("UDS service 0x{sid:02X}: sub-function 0x{sub_function:02X} not supported")]
    SubFunctionNotSupported {
        /// The service identifier.
        sid: u8,
        /// The sub-function byte.
        sub_function: u8,
    },
    /// A parameter outside its defined range (e.g. an addressAndLengthFormat
    /// identifier with a zero or too-wide field).
    #[error("UDS service 0x{sid:02X}: {reason}")]
    OutOfRange {
        /// The service identifier.
        sid: u8,
        /// What is out of range.
        reason: &'static str,
    },

    // ---- security access ---------------------------------------------------------
    /// A provisioned security-access secret is too short to resist guessing.
    #[error("security access secret is {len} bytes; at least {min} are required")]
    WeakSecret {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },

    // ---- flashing client ---------------------------------------------------------
    /// The ECU answered a step with a negative response.
    #[error("{step}: ECU answered service 0x{sid:02X} with {nrc}")]
    NegativeResponse {
        /// The step that failed.
        step: &'static str,
        /// The request's service identifier.
        sid: u8,
        /// The negative response code.
        nrc: Nrc,
    },
    /// No (final) response within P2/P2*, after all retries.
    #[error("{step}: no response from the ECU within {timeout:?} after {attempts} attempts")]
    Timeout {
        /// The step that timed out.
        step: &'static str,
        /// The last timeout applied (P2 or P2*).
        timeout: Duration,
        /// Requests sent for this step.
        attempts: u32,
    },
    /// The ECU answered with a positive response that contradicts the request
    /// (another DID or routine, a bad block length, a broken report).
    #[error("{step}: unexpected response from the ECU: {reason}")]
    UnexpectedResponse {
        /// The step.
        step: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A routine ran and reported a failure result code.
    #[error("routine 0x{routine:04X} failed with result 0x{code:02X} ({name}){}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    RoutineFailed {
        /// Routine identifier.
        routine: u16,
        /// Result code (first byte of the routine status record).
        code: u8,
        /// Name of the result code (an Uptane attack name where one applies).
        name: &'static str,
        /// Detail text from the ECU, if any.
        detail: String,
    },
    /// The image source could not deliver bytes.
    #[error("image source: {0}")]
    Source(String),
    /// The client was driven after it had finished or failed.
    #[error("the flashing client has already {0}")]
    Finished(&'static str),

    // ---- DoIP --------------------------------------------------------------------
    /// Protocol version and its inverse do not match (ISO 13400-2 generic
    /// header NACK 0x00: close the socket).
    #[error("DoIP header: incorrect pattern (version 0x{version:02X}, inverse 0x{inverse:02X})")]
    DoipIncorrectPattern {
        /// Protocol version byte.
        version: u8,
        /// Inverse protocol version byte.
        inverse: u8,
    },
    /// A payload type this codec does not know (NACK 0x01: discard).
    #[error("DoIP: unknown payload type 0x{payload_type:04X}")]
    DoipUnknownPayloadType {
        /// The payload type.
        payload_type: u16,
    },
    /// The payload exceeds the configured maximum (NACK 0x02: discard).
    #[error("DoIP: payload of {len} bytes exceeds the limit of {max}")]
    DoipMessageTooLarge {
        /// Announced payload length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The payload length does not fit the payload type (NACK 0x04: close the
    /// socket).
    #[error("DoIP: invalid payload length {len} for payload type 0x{payload_type:04X}")]
    DoipInvalidPayloadLength {
        /// The payload type.
        payload_type: u16,
        /// The payload length.
        len: u32,
    },
}

impl Error {
    /// The negative response code a server sends for a request that failed to
    /// decode with this error.
    pub fn nrc(&self) -> Option<Nrc> {
        Some(match self {
            Error::Empty | Error::UnknownService { .. } => Nrc::ServiceNotSupported,
            Error::IncorrectLength { .. } => Nrc::IncorrectMessageLengthOrInvalidFormat,
            Error::SubFunctionNotSupported { .. } => Nrc::SubFunctionNotSupported,
            Error::OutOfRange { .. } => Nrc::RequestOutOfRange,
            Error::NegativeResponse { nrc, .. } => *nrc,
            _ => return None,
        })
    }

    /// The ISO 13400-2 generic DoIP header negative acknowledge code for a
    /// framing error.
    pub fn doip_nack(&self) -> Option<crate::doip::GenericNackCode> {
        use crate::doip::GenericNackCode as C;
        Some(match self {
            Error::DoipIncorrectPattern { .. } => C::IncorrectPatternFormat,
            Error::DoipUnknownPayloadType { .. } => C::UnknownPayloadType,
            Error::DoipMessageTooLarge { .. } => C::MessageTooLarge,
            Error::DoipInvalidPayloadLength { .. } => C::InvalidPayloadLength,
            _ => return None,
        })
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
