//! Errors of the conformance client.

use std::path::PathBuf;

/// Why an `init`, `refresh` or `download` failed.
///
/// Verification failures keep the core's [`secureev_uptane::Error`] as their
/// source, so callers (and our tests) can tell which attack was caught; see
/// [`Error::verification`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Metadata or a target failed verification by the core.
    #[error("verifying {what}")]
    Verification {
        /// What was verified: a metadata file, a URL or a target path.
        what: String,
        /// The core's verdict (boxed: the core's error is large, and this one
        /// travels through every `Result` of the client).
        #[source]
        source: Box<secureev_uptane::Error>,
    },
    /// The server answered with a status other than 200.
    #[error("GET {url}: HTTP status {status}")]
    HttpStatus {
        /// Requested URL.
        url: String,
        /// Status code.
        status: u16,
    },
    /// The request failed below HTTP (connection refused, timeout, bad URL).
    #[error("GET {url}: {reason}")]
    Transport {
        /// Requested URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Reading or writing a local file failed.
    #[error("{}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The client was asked for something it cannot do with the arguments
    /// given (no metadata URL, no trusted root, no target name).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The core's verification error, when this is one.
    pub fn verification(&self) -> Option<&secureev_uptane::Error> {
        match self {
            Error::Verification { source, .. } => Some(source),
            _ => None,
        }
    }

    pub(crate) fn verify(what: impl Into<String>) -> impl FnOnce(secureev_uptane::Error) -> Self {
        let what = what.into();
        move |source| Error::Verification {
            what,
            source: Box::new(source),
        }
    }

    pub(crate) fn verification_of(what: impl Into<String>, source: secureev_uptane::Error) -> Self {
        Error::Verification {
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
