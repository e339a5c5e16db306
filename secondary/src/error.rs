//! The agent's error type.

use std::path::PathBuf;

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when starting or running the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A file operation failed.
    #[error("{op} {path}: {error}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A key or secret file cannot be used.
    #[error("key file {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A state file cannot be understood.
    #[error("state file {path} is corrupt: {reason}")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The shipped root metadata does not verify.
    #[error("trusted root {path}: {error}")]
    Root {
        /// The file.
        path: PathBuf,
        /// The core's error.
        error: Box<secureev_uptane::Error>,
    },
    /// The CAN transport failed (no `AF_CAN` in this kernel, no interface ...).
    #[error("CAN: {0}")]
    Can(secureev_can::Error),
    /// A network socket failed.
    #[error("{what}: {error}")]
    Net {
        /// What was done.
        what: String,
        /// The OS error.
        error: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            error: source,
        }
    }
}

impl From<secureev_can::Error> for Error {
    fn from(e: secureev_can::Error) -> Self {
        Error::Can(e)
    }
}

/// What the ECU was doing with its own storage when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageOp {
    /// Erasing, writing or syncing the inactive slot, or replacing it with
    /// the decrypted image.
    WriteSlot,
    /// Reading the inactive slot back (verify-image).
    ReadSlot,
    /// Persisting `state.json` or trusted metadata.
    WriteState,
    /// Reading the trusted metadata.
    ReadState,
}

impl StorageOp {
    fn as_str(self) -> &'static str {
        match self {
            StorageOp::WriteSlot => "writing the slot",
            StorageOp::ReadSlot => "reading the slot",
            StorageOp::WriteState => "writing the state",
            StorageOp::ReadState => "reading the state",
        }
    }
}

impl std::fmt::Display for StorageOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ECU's own storage failed while it served a request: nothing the
/// tester sent was wrong, and no attack was seen. Answered with an ISO
/// 14229-1 negative response ([`StorageError::nrc`]), never with an Uptane
/// result code, which would blame the metadata (`docs/secondary-protocol.md`
/// §7).
#[derive(Debug, thiserror::Error)]
#[error("{op}: {path}: {error}")]
pub struct StorageError {
    /// What was being done.
    pub op: StorageOp,
    /// The file.
    pub path: PathBuf,
    /// The OS error.
    pub error: std::io::Error,
}

impl StorageError {
    /// A failure of `op` on `path`.
    pub fn new(op: StorageOp, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        StorageError {
            op,
            path: path.into(),
            error,
        }
    }

    /// From an [`Error`] of the state directory (an [`Error::Io`] keeps its
    /// path and OS error; anything else becomes an `InvalidData` error).
    pub fn from_state(op: StorageOp, e: Error) -> Self {
        match e {
            Error::Io { path, error, .. } => StorageError { op, path, error },
            Error::CorruptState { path, reason } => StorageError {
                op,
                path,
                error: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
            },
            other => StorageError {
                op,
                path: PathBuf::new(),
                error: std::io::Error::other(other.to_string()),
            },
        }
    }

    /// The negative response code (ISO 14229-1 Annex A.1):
    /// - `0x72 generalProgrammingFailure` ("an error when erasing or
    ///   programming a memory location in the permanent memory device") for
    ///   anything that programs or reads back the slot and for persisting
    ///   state and trust, which is programming non-volatile memory too;
    /// - `0x26 failurePreventsExecutionOfRequestedAction` ("a failure
    ///   condition ... has occurred and ... prevents the server from
    ///   performing the requested action") for reading the trusted metadata:
    ///   nothing is being programmed, the ECU cannot verify without it, and
    ///   `0x10 generalReject` is what a request that does not decode gets.
    pub fn nrc(&self) -> secureev_uds::Nrc {
        match self.op {
            StorageOp::WriteSlot | StorageOp::ReadSlot | StorageOp::WriteState => {
                secureev_uds::Nrc::GeneralProgrammingFailure
            }
            StorageOp::ReadState => secureev_uds::Nrc::FailurePreventsExecutionOfRequestedAction,
        }
    }
}
