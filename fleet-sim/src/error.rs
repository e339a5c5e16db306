//! The simulator's errors. Every failed check-in is counted under
//! [`SimError::kind`] in the final report.

/// Why a simulated vehicle's step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The request did not complete (connection, TLS, timeout, body).
    #[error("{method} {path}: {source}")]
    Http {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        path: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The backend answered with an unexpected status.
    #[error("{method} {path}: HTTP {status}: {body}")]
    Status {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        path: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// Uptane verification refused what the backend served.
    #[error("verifying {what}: {source}")]
    Verify {
        /// The file or step.
        what: String,
        /// The core's verdict.
        #[source]
        source: Box<secureev_uptane::Error>,
    },
    /// Metadata trusted earlier has expired and nothing newer was served
    /// (a freeze attack, or a backend that stopped re-signing).
    #[error("{what} expired at {expires}")]
    Expired {
        /// Which metadata.
        what: String,
        /// Its expiry.
        expires: String,
    },
    /// A local step failed (signing, JSON, files).
    #[error("{0}")]
    Local(String),
}

impl SimError {
    /// A short, stable label for the report's error table: the class of
    /// failure, not its details (`http`, `status-401`, `verify-rollback`...).
    pub fn kind(&self) -> String {
        match self {
            SimError::Http { source, .. } if source.is_timeout() => "timeout".into(),
            SimError::Http { source, .. } if source.is_connect() => "connect".into(),
            SimError::Http { .. } => "http".into(),
            SimError::Status { status, .. } => format!("status-{status}"),
            SimError::Verify { source, .. } => match source.attack() {
                Some(a) => format!("verify-{}", a.as_str()),
                None => "verify".into(),
            },
            SimError::Expired { .. } => "verify-freeze".into(),
            SimError::Local(_) => "local".into(),
        }
    }
}

/// The simulator's result type.
pub type Result<T> = std::result::Result<T, SimError>;
