//! Typed D-Bus errors and the stable numeric code space shared by method errors,
//! `LastErrorCode` and the `Completed` signal.

use zbus::DBusError;

/// Stable numeric codes for UIs and scripts.
///
/// One code space serves three places: the typed error a method call fails with
/// ([`OtaError::code`]), the `LastErrorCode` property and the `code` argument of the
/// `Completed` signal. Codes never change meaning; new ones are only added. All codes
/// stay below 64 so that `secureevctl` can use them as its exit status unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Success.
    Ok = 0,
    /// Unexpected internal failure (bug, I/O error on the vehicle).
    Internal = 1,
    // 2 is reserved: it is the CLI's exit status for a usage error.
    /// The daemon is busy with another operation.
    Busy = 3,
    /// An argument is malformed or out of range.
    InvalidArgument = 4,
    /// An options dictionary contained a key this version does not know.
    UnknownOption = 5,
    /// The update id is not the currently pending update (stale consent), or nothing
    /// is pending.
    NoSuchUpdate = 6,
    /// A precondition (parked, battery, inhibit file...) holds the operation back.
    PreconditionFailed = 7,
    /// The caller may not do this.
    NotPermitted = 8,
    /// The vehicle is not provisioned with a backend yet.
    NotProvisioned = 9,
    /// The operation was cancelled with `Cancel`.
    Cancelled = 10,
    /// Nothing to cancel, or the current phase is past its point of no return.
    NotCancellable = 11,
    /// The backend could not be reached or answered with an error.
    Network = 20,
    /// Metadata failed verification (signature, threshold, format).
    VerificationFailed = 21,
    /// Rollback attack: metadata or image version older than trusted.
    RollbackAttack = 22,
    /// Freeze attack: metadata expired.
    FreezeAttack = 23,
    /// Mix-and-match attack: Director and Image repository disagree.
    MixAndMatchAttack = 24,
    /// Endless-data attack: more bytes than the metadata allows.
    EndlessDataAttack = 25,
    /// Slow-retrieval attack: download rate below the configured minimum.
    SlowRetrievalAttack = 26,
    /// An image did not match its hashes or length (tampered image).
    TargetMismatch = 27,
    /// An image is meant for other hardware.
    WrongHardware = 28,
    /// Not enough storage budget or free space for the download.
    InsufficientStorage = 29,
    /// An installer or a secondary ECU failed to install.
    InstallFailed = 30,
    /// A secondary ECU could not be reached.
    EcuUnreachable = 31,
    /// Metadata for another ECU or another vehicle (wrong ECU serial, wrong
    /// VIN, another vehicle's replayed metadata).
    WrongEcu = 32,
    /// A metadata file did not match the hash or length its signed parent
    /// lists for it (e.g. a snapshot that timestamp does not describe).
    MetadataMismatch = 33,
}

impl ErrorCode {
    /// Every code, in numeric order (for documentation and tests).
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::Ok,
        ErrorCode::Internal,
        ErrorCode::Busy,
        ErrorCode::InvalidArgument,
        ErrorCode::UnknownOption,
        ErrorCode::NoSuchUpdate,
        ErrorCode::PreconditionFailed,
        ErrorCode::NotPermitted,
        ErrorCode::NotProvisioned,
        ErrorCode::Cancelled,
        ErrorCode::NotCancellable,
        ErrorCode::Network,
        ErrorCode::VerificationFailed,
        ErrorCode::RollbackAttack,
        ErrorCode::FreezeAttack,
        ErrorCode::MixAndMatchAttack,
        ErrorCode::EndlessDataAttack,
        ErrorCode::SlowRetrievalAttack,
        ErrorCode::TargetMismatch,
        ErrorCode::WrongHardware,
        ErrorCode::InsufficientStorage,
        ErrorCode::InstallFailed,
        ErrorCode::EcuUnreachable,
        ErrorCode::WrongEcu,
        ErrorCode::MetadataMismatch,
    ];

    /// The numeric value sent on the bus.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The code for a number received from the bus, if this version knows it.
    pub fn from_u32(code: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_u32() == code)
    }

    /// A short stable identifier (`kebab-case`), suitable for logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Ok => "ok",
            ErrorCode::Internal => "internal",
            ErrorCode::Busy => "busy",
            ErrorCode::InvalidArgument => "invalid-argument",
            ErrorCode::UnknownOption => "unknown-option",
            ErrorCode::NoSuchUpdate => "no-such-update",
            ErrorCode::PreconditionFailed => "precondition-failed",
            ErrorCode::NotPermitted => "not-permitted",
            ErrorCode::NotProvisioned => "not-provisioned",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::NotCancellable => "not-cancellable",
            ErrorCode::Network => "network",
            ErrorCode::VerificationFailed => "verification-failed",
            ErrorCode::RollbackAttack => "rollback-attack",
            ErrorCode::FreezeAttack => "freeze-attack",
            ErrorCode::MixAndMatchAttack => "mix-and-match-attack",
            ErrorCode::EndlessDataAttack => "endless-data-attack",
            ErrorCode::SlowRetrievalAttack => "slow-retrieval-attack",
            ErrorCode::TargetMismatch => "target-mismatch",
            ErrorCode::WrongHardware => "wrong-hardware",
            ErrorCode::InsufficientStorage => "insufficient-storage",
            ErrorCode::InstallFailed => "install-failed",
            ErrorCode::EcuUnreachable => "ecu-unreachable",
            ErrorCode::WrongEcu => "wrong-ecu",
            ErrorCode::MetadataMismatch => "metadata-mismatch",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u32())
    }
}

/// Errors of the `io.secureev.Ota1` methods, sent as `io.secureev.Ota1.Error.<Variant>`.
///
/// The daemon converts its own errors into these explicitly in its [`crate::Controller`]
/// implementation; clients receive them typed through [`crate::Ota1Proxy`]. The string
/// is an English message for logs; UIs localise from [`OtaError::code`].
#[derive(Debug, DBusError)]
#[zbus(prefix = "io.secureev.Ota1.Error")]
#[non_exhaustive]
pub enum OtaError {
    /// A transport or protocol error from zbus (client side: no reply, bus gone...).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Another operation is running; retry when `State` is idle.
    Busy(String),
    /// An argument is malformed or out of range.
    InvalidArgument(String),
    /// An options dictionary contained an unknown key (the message names it).
    UnknownOption(String),
    /// The update id is not the pending update (stale consent), or nothing is pending.
    NoSuchUpdate(String),
    /// A precondition holds the operation back (the message names it).
    PreconditionFailed(String),
    /// The caller may not do this.
    NotPermitted(String),
    /// The vehicle is not provisioned with a backend yet.
    NotProvisioned(String),
    /// Nothing to cancel, or the running phase cannot be cancelled any more.
    NotCancellable(String),
    /// Unexpected failure inside the daemon.
    Internal(String),
}

impl OtaError {
    /// The stable numeric code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            OtaError::ZBus(_) | OtaError::Internal(_) => ErrorCode::Internal,
            OtaError::Busy(_) => ErrorCode::Busy,
            OtaError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            OtaError::UnknownOption(_) => ErrorCode::UnknownOption,
            OtaError::NoSuchUpdate(_) => ErrorCode::NoSuchUpdate,
            OtaError::PreconditionFailed(_) => ErrorCode::PreconditionFailed,
            OtaError::NotPermitted(_) => ErrorCode::NotPermitted,
            OtaError::NotProvisioned(_) => ErrorCode::NotProvisioned,
            OtaError::NotCancellable(_) => ErrorCode::NotCancellable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_fit_an_exit_status() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_u32()), "duplicate {code}");
            assert!(code.as_u32() < 64, "{code} does not fit an exit status");
            assert_ne!(code.as_u32(), 2, "2 is the CLI usage error");
            assert_eq!(ErrorCode::from_u32(code.as_u32()), Some(*code));
        }
    }

    #[test]
    fn error_names_use_the_prefix() {
        use zbus::DBusError as _;
        let e = OtaError::Busy("x".into());
        assert_eq!(e.name().as_str(), "io.secureev.Ota1.Error.Busy");
        assert_eq!(e.code(), ErrorCode::Busy);
    }
}
