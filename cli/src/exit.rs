//! Exit statuses. Scripts rely on them; they never change meaning.

use secureev_dbus::OtaError;

/// Success.
pub const OK: u8 = 0;
/// Unexpected failure.
pub const FAILURE: u8 = 1;
/// The install was not confirmed (answered no, or no terminal and no `--yes`).
pub const DECLINED: u8 = 64;
/// The daemon is not running (its bus name has no owner) or went away.
pub const NOT_RUNNING: u8 = 69;
/// The bus could not be reached.
pub const NO_BUS: u8 = 74;
/// `--wait` or `watch` gave up after `--timeout` seconds (EX_TEMPFAIL).
pub const TIMED_OUT: u8 = 75;

/// `--help` text listing the exit statuses.
pub const HELP: &str = "\
Exit status:
  0      success (for watch and --wait: the operation completed successfully)
  1      unexpected failure
  2      usage error
  3-63   the daemon's error code: a refused call (3 busy, 4 invalid argument,
         5 unknown option, 6 no such update, 7 precondition failed, 8 not
         permitted, 9 not provisioned, 11 not cancellable), or for watch and
         --wait the code of its operation's OperationCompleted signal (10 cancelled, 20-33 update
         failures); see docs/dbus-api.md
  64     install not confirmed
  69     daemon not running (io.secureev.Ota1 has no owner) or it went away
  74     cannot connect to the bus
  75     --wait or watch: the operation did not end within --timeout seconds";

/// An error that carries its exit status.
#[derive(Debug)]
pub struct Exit {
    /// Exit status.
    pub code: u8,
    /// Message for stderr.
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Fails with `code`.
pub fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    Exit {
        code,
        message: message.into(),
    }
    .into()
}

/// `NotPermitted`: the bus policy refused the call (`AccessDenied`).
pub const NOT_PERMITTED: u8 = 8;

/// The bus policy's refusal (`org.freedesktop.DBus.Error.AccessDenied`), as
/// one line: the caller is not in a group the policy lets talk to the
/// daemon (or receive its signals).
pub fn access_denied(e: &anyhow::Error) -> Option<String> {
    let OtaError::ZBus(z) = e.downcast_ref::<OtaError>()? else {
        return None;
    };
    match z {
        zbus::Error::MethodError(name, message, _)
            if name.as_str() == "org.freedesktop.DBus.Error.AccessDenied" =>
        {
            Some(message.clone().unwrap_or_default())
        }
        zbus::Error::FDO(f) => match f.as_ref() {
            zbus::fdo::Error::AccessDenied(m) => Some(m.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The exit status for an error from a command.
pub fn code_of(e: &anyhow::Error) -> u8 {
    if access_denied(e).is_some() {
        return NOT_PERMITTED;
    }
    if let Some(x) = e.downcast_ref::<Exit>() {
        return x.code;
    }
    if let Some(o) = e.downcast_ref::<OtaError>() {
        return ota_code(o);
    }
    FAILURE
}

/// The exit status for a daemon error.
pub fn ota_code(e: &OtaError) -> u8 {
    match e {
        OtaError::ZBus(zbus::Error::MethodError(name, _, _))
            if matches!(
                name.as_str(),
                "org.freedesktop.DBus.Error.ServiceUnknown"
                    | "org.freedesktop.DBus.Error.NameHasNoOwner"
            ) =>
        {
            NOT_RUNNING
        }
        OtaError::ZBus(_) => FAILURE,
        other => u8::try_from(other.code().as_u32()).unwrap_or(FAILURE),
    }
}

/// The exit status for a `Completed` code.
pub fn completed_code(code: u32) -> u8 {
    match u8::try_from(code) {
        Ok(c) if c < DECLINED => c,
        _ => FAILURE,
    }
}
