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
