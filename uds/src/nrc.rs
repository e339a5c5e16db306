//! Negative response codes (ISO 14229-1:2020 Annex A.1).

use std::fmt;

macro_rules! nrcs {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $text:literal;)*) => {
        /// A negative response code, the third byte of `7F SID NRC`.
        ///
        /// Every value decodes: codes this crate does not name become
        /// [`Nrc::Other`], so a decoder never fails on an unknown NRC.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Nrc {
            $($(#[$doc])* $name,)*
            /// A code that ISO reserves or that a manufacturer defines.
            Other(u8),
        }

        impl Nrc {
            /// The code for a byte (total: unknown bytes become [`Nrc::Other`]).
            pub fn from_byte(byte: u8) -> Self {
                match byte {
                    $($value => Nrc::$name,)*
                    other => Nrc::Other(other),
                }
            }

            /// The byte on the wire.
            pub fn as_byte(self) -> u8 {
                match self {
                    $(Nrc::$name => $value,)*
                    Nrc::Other(b) => b,
                }
            }

            /// The ISO 14229-1 name (`conditionsNotCorrect`).
            pub fn name(self) -> &'static str {
                match Nrc::from_byte(self.as_byte()) {
                    $(Nrc::$name => $text,)*
                    Nrc::Other(_) => "reserved",
                }
            }
        }
    };
}

nrcs! {
    /// 0x10: rejected, no more specific code applies.
    GeneralReject = 0x10, "generalReject";
    /// 0x11: the service identifier is unknown or not supported.
    ServiceNotSupported = 0x11, "serviceNotSupported";
    /// 0x12: the sub-function is unknown or not supported.
    SubFunctionNotSupported = 0x12, "subFunctionNotSupported";
    /// 0x13: the request has the wrong length or format.
    IncorrectMessageLengthOrInvalidFormat = 0x13, "incorrectMessageLengthOrInvalidFormat";
    /// 0x14: the response would exceed the transport's limit.
    ResponseTooLong = 0x14, "responseTooLong";
    /// 0x21: the server is busy with another request; repeat later.
    BusyRepeatRequest = 0x21, "busyRepeatRequest";
    /// 0x22: preconditions (state, voltage, verified metadata) are not met.
    ConditionsNotCorrect = 0x22, "conditionsNotCorrect";
    /// 0x24: the request came out of order (key before seed, 0x36 before 0x34).
    RequestSequenceError = 0x24, "requestSequenceError";
    /// 0x25: a sub-network component did not answer in time.
    NoResponseFromSubnetComponent = 0x25, "noResponseFromSubnetComponent";
    /// 0x26: a failure (DTC) prevents the action.
    FailurePreventsExecutionOfRequestedAction = 0x26, "failurePreventsExecutionOfRequestedAction";
    /// 0x31: a parameter (DID, RID, address, size, format) is out of range.
    RequestOutOfRange = 0x31, "requestOutOfRange";
    /// 0x33: security access is required and not granted.
    SecurityAccessDenied = 0x33, "securityAccessDenied";
    /// 0x34: authentication (service 0x29) is required.
    AuthenticationRequired = 0x34, "authenticationRequired";
    /// 0x35: the key does not match the seed.
    InvalidKey = 0x35, "invalidKey";
    /// 0x36: too many invalid keys; a delay is now enforced.
    ExceededNumberOfAttempts = 0x36, "exceededNumberOfAttempts";
    /// 0x37: the enforced delay after failed attempts has not expired.
    RequiredTimeDelayNotExpired = 0x37, "requiredTimeDelayNotExpired";
    /// 0x38: secure data transmission is required.
    SecureDataTransmissionRequired = 0x38, "secureDataTransmissionRequired";
    /// 0x39: secure data transmission is not allowed.
    SecureDataTransmissionNotAllowed = 0x39, "secureDataTransmissionNotAllowed";
    /// 0x3A: secured data failed verification.
    SecureDataVerificationFailed = 0x3A, "secureDataVerificationFailed";
    /// 0x70: the download or upload cannot be accepted.
    UploadDownloadNotAccepted = 0x70, "uploadDownloadNotAccepted";
    /// 0x71: the data transfer was halted by a fault.
    TransferDataSuspended = 0x71, "transferDataSuspended";
    /// 0x72: erasing or programming memory failed.
    GeneralProgrammingFailure = 0x72, "generalProgrammingFailure";
    /// 0x73: TransferData carried an unexpected block sequence counter.
    WrongBlockSequenceCounter = 0x73, "wrongBlockSequenceCounter";
    /// 0x78: request received, the final response follows (client switches to P2*).
    RequestCorrectlyReceivedResponsePending = 0x78, "requestCorrectlyReceived-ResponsePending";
    /// 0x7E: the sub-function is not supported in the active session.
    SubFunctionNotSupportedInActiveSession = 0x7E, "subFunctionNotSupportedInActiveSession";
    /// 0x7F: the service is not supported in the active session.
    ServiceNotSupportedInActiveSession = 0x7F, "serviceNotSupportedInActiveSession";
    /// 0x81: engine speed too high.
    RpmTooHigh = 0x81, "rpmTooHigh";
    /// 0x82: engine speed too low.
    RpmTooLow = 0x82, "rpmTooLow";
    /// 0x83: the engine is running.
    EngineIsRunning = 0x83, "engineIsRunning";
    /// 0x84: the engine is not running.
    EngineIsNotRunning = 0x84, "engineIsNotRunning";
    /// 0x85: engine run time too low.
    EngineRunTimeTooLow = 0x85, "engineRunTimeTooLow";
    /// 0x86: temperature too high.
    TemperatureTooHigh = 0x86, "temperatureTooHigh";
    /// 0x87: temperature too low.
    TemperatureTooLow = 0x87, "temperatureTooLow";
    /// 0x88: vehicle speed too high.
    VehicleSpeedTooHigh = 0x88, "vehicleSpeedTooHigh";
    /// 0x89: vehicle speed too low.
    VehicleSpeedTooLow = 0x89, "vehicleSpeedTooLow";
    /// 0x8A: throttle/pedal too high.
    ThrottlePedalTooHigh = 0x8A, "throttle/PedalTooHigh";
    /// 0x8B: throttle/pedal too low.
    ThrottlePedalTooLow = 0x8B, "throttle/PedalTooLow";
    /// 0x8C: transmission range not in neutral.
    TransmissionRangeNotInNeutral = 0x8C, "transmissionRangeNotInNeutral";
    /// 0x8D: transmission range not in gear.
    TransmissionRangeNotInGear = 0x8D, "transmissionRangeNotInGear";
    /// 0x8F: brake switch(es) not closed.
    BrakeSwitchesNotClosed = 0x8F, "brakeSwitch(es)NotClosed";
    /// 0x90: shifter lever not in park.
    ShifterLeverNotInPark = 0x90, "shifterLeverNotInPark";
    /// 0x91: torque converter clutch locked.
    TorqueConverterClutchLocked = 0x91, "torqueConverterClutchLocked";
    /// 0x92: supply voltage too high.
    VoltageTooHigh = 0x92, "voltageTooHigh";
    /// 0x93: supply voltage too low.
    VoltageTooLow = 0x93, "voltageTooLow";
    /// 0x94: a resource is temporarily not available.
    ResourceTemporarilyNotAvailable = 0x94, "resourceTemporarilyNotAvailable";
}

impl fmt::Display for Nrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02X})", self.name(), self.as_byte())
    }
}

impl From<u8> for Nrc {
    fn from(byte: u8) -> Self {
        Nrc::from_byte(byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(Nrc::from_byte(b).as_byte(), b);
        }
    }

    #[test]
    fn iso_values() {
        assert_eq!(Nrc::ConditionsNotCorrect.as_byte(), 0x22);
        assert_eq!(Nrc::RequestSequenceError.as_byte(), 0x24);
        assert_eq!(Nrc::WrongBlockSequenceCounter.as_byte(), 0x73);
        assert_eq!(Nrc::RequestCorrectlyReceivedResponsePending.as_byte(), 0x78);
        assert_eq!(Nrc::from_byte(0x36), Nrc::ExceededNumberOfAttempts);
        assert_eq!(Nrc::Other(0x11).name(), "serviceNotSupported");
        assert_eq!(Nrc::from_byte(0x50).to_string(), "reserved (0x50)");
    }
}
