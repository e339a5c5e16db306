//! The trait the daemon implements to receive requests from D-Bus.

use std::time::Duration;

use crate::{
    Caller, CheckOptions, HistoryEntry, InstallOptions, OtaError, ProvisionOptions, UpdateId,
};

/// What the daemon does when a D-Bus method is called.
///
/// Every method must return promptly (it runs on the bus connection's executor):
/// validate against the worker's own state, hand the work to the worker (e.g. with
/// `try_send` on a channel) and return. Progress and outcome are published through
/// [`crate::StateHandle`]; every operation started here ends with exactly one
/// `Completed` and one `OperationCompleted` signal
/// ([`crate::StateHandle::emit_operation_completed`]).
///
/// [`crate::Ota1Interface`] has already authorized the caller, parsed the options,
/// rejected unknown keys and checked `Install`'s id against the published plan.
/// Whether another operation runs is the implementation's decision alone (the
/// published `State` may lag its worker): it refuses with [`OtaError::Busy`],
/// naming what runs, deciding and claiming in one critical section, and re-checks
/// `Install`'s id atomically ([`OtaError::NoSuchUpdate`]).
pub trait Controller: Send + Sync + 'static {
    /// `CheckForUpdates`: start a check-in (then download and verify what it finds).
    /// Returns the operation's id (never 0), the `id` of its `OperationCompleted`
    /// ([`crate::StateHandle::emit_operation_completed`]).
    fn check(&self, options: CheckOptions) -> Result<u64, OtaError>;

    /// `Install`: the driver consented to exactly the plan `update_id`. Start it, or
    /// hold it until the preconditions allow (or refuse with
    /// [`OtaError::PreconditionFailed`]; document which).
    /// Returns the operation's id, as [`Controller::check`].
    fn install(&self, update_id: &UpdateId, options: InstallOptions) -> Result<u64, OtaError>;

    /// `Cancel`: stop the running operation. Cancelling a download must work; what
    /// it does during an install is the daemon's documented policy (refuse with
    /// [`OtaError::NotCancellable`] past the point of no return).
    fn cancel(&self) -> Result<(), OtaError>;

    /// `Postpone`: do not install the pending update (nor ask again) for `delay`.
    /// `delay` is between 1 s and [`crate::MAX_POSTPONE_SECS`].
    fn postpone(&self, delay: Duration) -> Result<(), OtaError>;

    /// `SetPrecondition`: a vehicle service reports whether `name` holds. The
    /// implementation publishes the result with
    /// [`crate::StateHandle::set_precondition`]. `name` has been validated
    /// (`[a-z0-9][a-z0-9._-]{0,63}`) and `caller` holds the preconditions role;
    /// the implementation decides who owns `name` (the daemon: whoever set it
    /// first) and refuses others with [`OtaError::NotPermitted`].
    fn set_precondition(
        &self,
        name: &str,
        satisfied: bool,
        reason: &str,
        caller: &Caller,
    ) -> Result<(), OtaError>;

    /// `GetHistory`: past operations, oldest first. Must not block on I/O; serve it
    /// from memory.
    fn history(&self) -> Result<Vec<HistoryEntry>, OtaError>;

    /// `Provision`: register the vehicle with the backend at `backend_url` (an
    /// `https://` URL, already checked). Ends with `Completed`. Returns the
    /// operation's id, as [`Controller::check`].
    fn provision(&self, backend_url: &str, options: ProvisionOptions) -> Result<u64, OtaError>;
}
