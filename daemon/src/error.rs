//! The daemon library's error type: one enum, variants named for what failed.

use std::fmt;
use std::path::PathBuf;

/// Result with the daemon's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which limit refused a download before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageLimit {
    /// `[state] storage_budget_bytes`: what the cache may hold in total.
    Budget,
    /// Free space on the file system of the cache directory.
    FreeSpace,
}

impl fmt::Display for StorageLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageLimit::Budget => "the storage budget",
            StorageLimit::FreeSpace => "the free space",
        })
    }
}

/// What a stalled request was waiting for ([`Error::Stalled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallStage {
    /// The response headers (`[network] response_timeout_secs`).
    Headers,
    /// The whole metadata body (`[network] metadata_timeout_secs`).
    Body,
    /// The body below the minimum rate over a whole window
    /// (`[download] min_rate_bytes_per_sec`).
    Rate,
    /// The answer to the manifest PUT (`[network] manifest_timeout_secs`).
    ManifestAnswer,
}

impl fmt::Display for StallStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StallStage::Headers => "the response headers",
            StallStage::Body => "the whole body",
            StallStage::Rate => "the body at the minimum rate",
            StallStage::ManifestAnswer => "the answer to the manifest",
        })
    }
}

/// Everything that can go wrong in the daemon library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration file is not valid TOML.
    #[error("{file}: {message}")]
    ConfigSyntax {
        /// The file.
        file: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A configuration file has a key the daemon does not know.
    #[error("{file}: unknown key `{key}`")]
    ConfigUnknownKey {
        /// The file that set the key (the last one, with drop-ins).
        file: PathBuf,
        /// Dotted path of the key, e.g. `checkin.intervall`.
        key: String,
    },
    /// A configuration key has a value the daemon cannot use.
    #[error("{file}: `{key}`: {reason}")]
    ConfigInvalid {
        /// The file that set the key (or the main file for missing keys).
        file: PathBuf,
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write", "rename", ...).
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds the state directory's lock.
    #[error("{path} is locked: another secureev-otad is running on this state directory")]
    AlreadyRunning {
        /// The lock file.
        path: PathBuf,
    },
    /// A state file exists but cannot be understood.
    #[error("state file {path} is corrupt: {reason}")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A key file exists but cannot be loaded.
    #[error("key file {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A TLS setting (CA, client certificate) cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The verification core refused something.
    #[error("{what}: {source}")]
    Uptane {
        /// What was being checked (a target name, a metadata file).
        what: String,
        /// The core's error; [`secureev_uptane::Error::attack`] names the attack.
        source: Box<secureev_uptane::Error>,
    },
    /// A download would not fit the storage budget or the free space; refused
    /// before any byte was fetched.
    #[error("{target}: {needed} more bytes needed but {limit} leaves only {available}")]
    InsufficientStorage {
        /// Target name.
        target: String,
        /// Bytes still to download.
        needed: u64,
        /// Bytes the limit allows.
        available: u64,
        /// Which limit.
        limit: StorageLimit,
    },
    /// The server sent fewer than the minimum bytes in a window (slow retrieval).
    #[error(
        "{target}: slow retrieval: {received} bytes in {window_secs:.1} s, \
         below the minimum of {min_rate} bytes/s"
    )]
    SlowRetrieval {
        /// Target name.
        target: String,
        /// Bytes received in the window.
        received: u64,
        /// Window length in seconds.
        window_secs: f64,
        /// Configured minimum rate in bytes per second.
        min_rate: u64,
    },
    /// A metadata fetch or the manifest PUT ran past its bound: the backend,
    /// a CDN or someone on the path let the connection through and then
    /// withheld the data (Uptane's slow retrieval attack).
    #[error("{url}: slow retrieval: {stage} did not arrive within {secs} s")]
    Stalled {
        /// URL requested.
        url: String,
        /// What did not arrive in time.
        stage: StallStage,
        /// The bound that ran out, in seconds.
        secs: u64,
    },
    /// The HTTP request failed (connection, TLS, timeout).
    #[error("{url}: {source}")]
    Http {
        /// URL requested.
        url: String,
        /// reqwest's error.
        source: reqwest::Error,
    },
    /// No response headers arrived in time.
    #[error("{url}: no response within {secs} s")]
    Timeout {
        /// URL requested.
        url: String,
        /// The timeout.
        secs: u64,
    },
    /// The server answered with an unexpected status.
    #[error("{url}: HTTP status {status}")]
    HttpStatus {
        /// URL requested.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The server's answer does not follow HTTP range semantics.
    #[error("{url}: bad range response: {reason}")]
    BadRange {
        /// URL requested.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The connection ended before the image was complete, after every retry.
    #[error("{target}: connection ended after {received} of {length} bytes")]
    Truncated {
        /// Target name.
        target: String,
        /// Bytes on disk.
        received: u64,
        /// Signed length.
        length: u64,
    },
    /// The operation was cancelled; partial downloads are kept for resuming.
    #[error("{0}: cancelled")]
    Cancelled(String),
    /// The installer failed.
    #[error("installing {target} on {ecu}: {reason}")]
    Install {
        /// Target name.
        target: String,
        /// ECU serial.
        ecu: String,
        /// What went wrong (for commands: exit status and the end of stderr).
        reason: String,
    },
    /// The installer ran out of space: an installer command exited with
    /// [`crate::install::COMMAND_EXIT_NO_SPACE`]. Reported as
    /// `29 insufficient-storage`, so that a UI can ask for space to be freed.
    #[error("installing {target} on {ecu}: out of space: {reason}")]
    InstallNoSpace {
        /// Target name.
        target: String,
        /// ECU serial.
        ecu: String,
        /// The installer's exit status and the end of its stderr.
        reason: String,
    },
    /// The D-Bus service could not be set up.
    #[error("D-Bus: {0}")]
    Bus(String),
    /// A secondary ECU could not be reached or did not answer in time (the
    /// link, its timeouts, a misconfiguration on the Primary's side).
    #[error("secondary {ecu}: {reason}")]
    Secondary {
        /// ECU serial.
        ecu: String,
        /// What went wrong.
        reason: String,
    },
    /// A secondary ECU verified the metadata and answered `no-update`: the
    /// Director assigns it nothing it does not have. Success when the ECU's
    /// version report shows the assigned image installed (a kill right after
    /// it activated the image, before the backend heard of it).
    #[error("secondary {ecu}: nothing new to install ({reason})")]
    SecondaryUpToDate {
        /// ECU serial.
        ecu: String,
        /// The ECU's answer.
        reason: String,
    },
    /// A secondary ECU reported a failure of its own (its storage, its
    /// programming): a negative response that says the ECU, not the
    /// Primary's request or metadata, is at fault (0x72
    /// generalProgrammingFailure, 0x26 failurePreventsExecutionOfRequestedAction,
    /// 0x70 uploadDownloadNotAccepted, 0x71 transferDataSuspended;
    /// `docs/secondary-protocol.md` §7). Not an attack; the update may
    /// succeed once the ECU is repaired or has room.
    #[error("secondary {ecu} failed: {reason}")]
    SecondaryFault {
        /// ECU serial.
        ecu: String,
        /// The negative response code.
        nrc: u8,
        /// The step, the service and the NRC.
        reason: String,
    },
    /// A secondary ECU answered and refused: a negative response (its own
    /// verification failed, wrong security key, ...) or a failed routine.
    #[error("secondary {ecu} refused: {reason}")]
    SecondaryRefused {
        /// ECU serial.
        ecu: String,
        /// The refusal, with the negative response code.
        reason: String,
    },
}

impl Error {
    /// Wrap an I/O error with the operation and path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Wrap an error of the verification core with what was being checked.
    pub fn uptane(what: impl Into<String>, source: secureev_uptane::Error) -> Self {
        Error::Uptane {
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// The attack this error reveals, by the stable name used in ECU version
    /// reports (`endless-data`, `slow-retrieval`, `arbitrary-software`, ...).
    pub fn attack_name(&self) -> Option<&'static str> {
        match self {
            Error::SlowRetrieval { .. } | Error::Stalled { .. } => Some("slow-retrieval"),
            Error::Uptane { source, .. } => source.attack().map(|a| a.as_str()),
            _ => None,
        }
    }
}
