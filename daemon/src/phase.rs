//! The one operation model: which operation runs, in which phase, and what
//! a request may do meanwhile (docs/dbus-api.md, "Operations").
//!
//! The daemon runs at most one operation at a time: a check-in (scheduled or
//! `CheckForUpdates`; it may go on to install), an `Install` (or a held-back
//! install that starts), or a `Provision`. [`Phases`] is the single owner of
//! that fact. It lives inside the agent's mutex (`agent::Inner`), so that
//! deciding "nothing runs" and claiming the phase are one critical section:
//! two operations can never overlap, whoever asks (the scheduler, a D-Bus
//! method, a precondition that turns true).
//!
//! No I/O here: requests in, a [`Ticket`] or a typed [`Refusal`] out.
//!
//! ```text
//!              begin(kind)                     enter(phase), forward only
//! idle ───────────────────────▶ running{id, kind, phase} ─────────────────┐
//!  ▲                                │  ▲                                  │
//!  └────────── end(id) ─────────────┘  └──────────────────────────────────┘
//! ```
//!
//! | Kind | Phases, in order (a phase may be skipped) | `Cancel` |
//! |---|---|---|
//! | check | checking, downloading, verifying, installing, reporting | while checking, downloading, verifying, and reporting when nothing was installed |
//! | install | installing, reporting | never (`NotCancellable`) |
//! | provision | checking | never: one bounded exchange with the backend |
//!
//! While anything runs, `begin` is refused with [`Refusal::Busy`] naming what
//! runs.
//!
//! An install asked for with `when-ready` while preconditions hold it back is
//! *deferred*: [`Phases::defer`] gives it its id now, nothing runs, and
//! [`Phases::begin_deferred`] starts it under that id once they hold. While
//! one is deferred another install is refused ([`Refusal::Deferred`]); checks
//! and provisioning still run. `Cancel` with nothing running drops it. A scheduled check-in that finds another operation running is skipped
//! (the next one comes at its time); a check-in the bus asked for is started
//! by the scheduler and *adopted* by its cycle, keeping the id the method
//! returned.

use secureev_dbus::State;
use std::fmt;
use tokio_util::sync::CancellationToken;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A check-in: metadata, download, and the install it may go on to.
    Check,
    /// `Install` of the pending update.
    Install,
    /// `Provision`: registration with a backend.
    Provision,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Check, Kind::Install, Kind::Provision];

    /// The name on the bus and in history (`check`, `install`, `provision`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Check => "check",
            Kind::Install => "install",
            Kind::Provision => "provision",
        }
    }

    /// The phase an operation of this kind starts in.
    pub fn first_phase(self) -> State {
        match self {
            Kind::Check | Kind::Provision => State::Checking,
            Kind::Install => State::Installing,
        }
    }

    /// The phases of this kind, in the only order they may be entered.
    pub fn phases(self) -> &'static [State] {
        match self {
            Kind::Check => &[
                State::Checking,
                State::Downloading,
                State::Verifying,
                State::Installing,
                State::Reporting,
            ],
            Kind::Install => &[State::Installing, State::Reporting],
            Kind::Provision => &[State::Checking],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation's id: unique for the daemon's lifetime, increasing, never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(u64);

impl OpId {
    /// The number on the bus.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who asked for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A D-Bus method (`CheckForUpdates`, `Install`, `Provision`).
    Bus,
    /// The daemon itself: the check-in schedule, or a held-back install whose
    /// preconditions now hold.
    Daemon,
}

/// A claimed operation: its id and the token that `Cancel` (and shutdown,
/// where the runner links it) fires.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The operation's id.
    pub id: OpId,
    /// Its kind.
    pub kind: Kind,
    /// Cancelled by an accepted `Cancel`.
    pub cancel: CancellationToken,
}

/// The running operation.
#[derive(Debug, Clone)]
pub struct Running {
    /// Its id.
    pub id: OpId,
    /// Its kind.
    pub kind: Kind,
    /// Who asked.
    pub origin: Origin,
    /// The phase it is in.
    pub phase: State,
    /// A bus check-in: whether the scheduler's cycle has picked it up.
    pub adopted: bool,
    /// Whether it has entered `installing` (past that, never cancellable).
    pub installed: bool,
    /// Whether `Cancel` was accepted.
    pub cancelled: bool,
    cancel: CancellationToken,
}

impl Running {
    /// The token an accepted `Cancel` fires.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another operation runs.
    Busy {
        /// Its id.
        id: OpId,
        /// Its kind.
        kind: Kind,
        /// Its phase.
        phase: State,
    },
    /// `Cancel` with nothing running.
    NothingToCancel,
    /// `Cancel` of an operation that cannot be cancelled now.
    NotCancellable {
        /// Its id.
        id: OpId,
        /// Its kind.
        kind: Kind,
        /// Its phase.
        phase: State,
        /// Why (English).
        why: &'static str,
    },
    /// The operation was cancelled: it enters no further phase.
    Cancelled(OpId),
    /// A phase the operation's kind does not have, or a step backwards.
    Transition {
        /// The operation.
        id: OpId,
        /// Its kind.
        kind: Kind,
        /// The phase it is in.
        from: State,
        /// The phase asked for.
        to: State,
    },
    /// The id is not the running operation (it ended).
    NotRunning(OpId),
    /// An install is deferred until its preconditions hold.
    Deferred(OpId),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Busy { id, kind, phase } => {
                write!(
                    f,
                    "another operation is running: {kind} (operation {id}), {phase}"
                )
            }
            Refusal::NothingToCancel => f.write_str("nothing to cancel"),
            Refusal::NotCancellable {
                id,
                kind,
                phase,
                why,
            } => write!(
                f,
                "{kind} (operation {id}) cannot be cancelled while {phase}: {why}"
            ),
            Refusal::Cancelled(id) => write!(f, "operation {id} was cancelled"),
            Refusal::Transition { id, kind, from, to } => {
                write!(f, "{kind} (operation {id}) cannot go from {from} to {to}")
            }
            Refusal::NotRunning(id) => write!(f, "operation {id} is not running"),
            Refusal::Deferred(id) => write!(
                f,
                "install (operation {id}) is deferred until its preconditions hold; Cancel it first"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// The operation model (see the module documentation).
#[derive(Debug, Default)]
pub struct Phases {
    running: Option<Running>,
    last_id: u64,
    /// An install waiting for its preconditions (`when-ready`).
    deferred: Option<OpId>,
}

impl Phases {
    /// The running operation, if any.
    pub fn running(&self) -> Option<&Running> {
        self.running.as_ref()
    }

    /// Whether `id` is the running operation.
    pub fn is_running(&self, id: OpId) -> bool {
        self.running.as_ref().is_some_and(|r| r.id == id)
    }

    fn busy(&self) -> Result<(), Refusal> {
        match &self.running {
            Some(r) => Err(Refusal::Busy {
                id: r.id,
                kind: r.kind,
                phase: r.phase,
            }),
            None => Ok(()),
        }
    }

    /// The deferred install, if any.
    pub fn deferred(&self) -> Option<OpId> {
        self.deferred
    }

    /// An install that waits for its preconditions: its id now, nothing
    /// runs. Refused while anything runs or another install is deferred.
    pub fn defer(&mut self) -> Result<OpId, Refusal> {
        self.busy()?;
        if let Some(id) = self.deferred {
            return Err(Refusal::Deferred(id));
        }
        self.last_id += 1;
        let id = OpId(self.last_id);
        self.deferred = Some(id);
        Ok(id)
    }

    /// Start the deferred install under its id (`Ok(None)`: none deferred;
    /// [`Refusal::Busy`] while another operation runs, the deferral kept).
    pub fn begin_deferred(&mut self) -> Result<Option<Ticket>, Refusal> {
        let Some(id) = self.deferred else {
            return Ok(None);
        };
        self.busy()?;
        self.deferred = None;
        Ok(Some(self.start(id, Kind::Install, Origin::Daemon)))
    }

    /// Drop the deferred install (its update was replaced, postponed or
    /// cancelled); its id, if there was one.
    pub fn drop_deferred(&mut self) -> Option<OpId> {
        self.deferred.take()
    }

    /// Claim the phase for a new operation of `kind`; refused with
    /// [`Refusal::Busy`] while another runs, and an install with
    /// [`Refusal::Deferred`] while one is deferred.
    pub fn begin(&mut self, kind: Kind, origin: Origin) -> Result<Ticket, Refusal> {
        self.busy()?;
        if let (Kind::Install, Some(id)) = (kind, self.deferred) {
            return Err(Refusal::Deferred(id));
        }
        self.last_id += 1;
        Ok(self.start(OpId(self.last_id), kind, origin))
    }

    fn start(&mut self, id: OpId, kind: Kind, origin: Origin) -> Ticket {
        let running = Running {
            id,
            kind,
            origin,
            phase: kind.first_phase(),
            adopted: origin == Origin::Daemon,
            installed: false,
            cancelled: false,
            cancel: CancellationToken::new(),
        };
        let ticket = Ticket {
            id: running.id,
            kind,
            cancel: running.cancel.clone(),
        };
        self.running = Some(running);
        ticket
    }

    /// The scheduler's cycle starts: it adopts a check-in the bus asked for
    /// (keeping its id) or begins its own; while anything else runs it is
    /// refused ([`Refusal::Busy`]) and the cycle is skipped.
    pub fn begin_cycle(&mut self) -> Result<Ticket, Refusal> {
        if let Some(r) = &mut self.running {
            if r.kind == Kind::Check && r.origin == Origin::Bus && !r.adopted {
                r.adopted = true;
                return Ok(Ticket {
                    id: r.id,
                    kind: r.kind,
                    cancel: r.cancel.clone(),
                });
            }
        }
        self.begin(Kind::Check, Origin::Daemon)
    }

    /// Operation `id` moves to `phase`: a phase of its kind, never backwards
    /// (staying is fine). Refused once it was cancelled.
    pub fn enter(&mut self, id: OpId, phase: State) -> Result<(), Refusal> {
        let r = match &mut self.running {
            Some(r) if r.id == id => r,
            _ => return Err(Refusal::NotRunning(id)),
        };
        if r.cancelled {
            return Err(Refusal::Cancelled(id));
        }
        let order = r.kind.phases();
        let from = order.iter().position(|p| *p == r.phase);
        let to = order.iter().position(|p| *p == phase);
        match (from, to) {
            (Some(from), Some(to)) if to >= from => {
                r.phase = phase;
                if phase == State::Installing {
                    r.installed = true;
                }
                Ok(())
            }
            _ => Err(Refusal::Transition {
                id,
                kind: r.kind,
                from: r.phase,
                to: phase,
            }),
        }
    }

    /// `Cancel`: fires the running operation's token where its phase allows
    /// (see the module documentation); returns its id.
    /// With nothing running, it drops the deferred install instead.
    pub fn cancel(&mut self) -> Result<OpId, Refusal> {
        let Some(r) = &mut self.running else {
            return self.deferred.take().ok_or(Refusal::NothingToCancel);
        };
        let why = match (r.kind, r.phase) {
            (Kind::Provision, _) => Some(
                "registration is one exchange with the backend; it completes or fails within its bound",
            ),
            (Kind::Install, _) | (Kind::Check, State::Installing) => Some(
                "the install has begun; it completes or leaves the running software as it was",
            ),
            (Kind::Check, State::Reporting) if r.installed => Some(
                "the install is done; its report goes to the backend (or into the next manifest)",
            ),
            _ => None,
        };
        if let Some(why) = why {
            return Err(Refusal::NotCancellable {
                id: r.id,
                kind: r.kind,
                phase: r.phase,
                why,
            });
        }
        r.cancelled = true;
        r.cancel.cancel();
        Ok(r.id)
    }

    /// Operation `id` ended: the phase is free. `None` if `id` was not running.
    pub fn end(&mut self, id: OpId) -> Option<Running> {
        if self.is_running(id) {
            self.running.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The situations a request can meet: nothing running, or an operation
    /// of each kind in each of its phases, before and after installing,
    /// cancelled or not, and a bus check-in not yet adopted.
    fn situations() -> Vec<(String, Phases)> {
        let mut out = vec![("idle".to_owned(), Phases::default())];
        for kind in Kind::ALL {
            for (i, &phase) in kind.phases().iter().enumerate() {
                for origin in [Origin::Bus, Origin::Daemon] {
                    for cancelled in [false, true] {
                        let mut p = Phases::default();
                        let t = p.begin(kind, origin).unwrap();
                        // Walk through every phase up to this one.
                        for &step in &kind.phases()[..=i] {
                            p.enter(t.id, step).unwrap();
                        }
                        if cancelled && p.cancel().is_err() {
                            continue;
                        }
                        let r = p.running().unwrap();
                        out.push((
                            format!(
                                "{kind}/{phase}/{origin:?}/installed={}/cancelled={cancelled}",
                                r.installed
                            ),
                            p,
                        ));
                    }
                }
            }
        }
        // A check that skipped installing (up to date) and reports.
        let mut p = Phases::default();
        let t = p.begin(Kind::Check, Origin::Daemon).unwrap();
        p.enter(t.id, State::Reporting).unwrap();
        out.push(("check/reporting/uninstalled".into(), p));
        let mut p = Phases::default();
        let t = p.begin(Kind::Check, Origin::Bus).unwrap();
        p.enter(t.id, State::Reporting).unwrap();
        p.cancel().unwrap();
        out.push(("check/reporting/uninstalled/cancelled".into(), p));
        out
    }

    #[derive(Debug, Clone, Copy)]
    enum Request {
        Begin(Kind, Origin),
        Cycle,
        Cancel,
        Enter(State),
        End,
    }

    fn requests() -> Vec<Request> {
        let mut r = vec![Request::Cycle, Request::Cancel, Request::End];
        for k in Kind::ALL {
            r.push(Request::Begin(k, Origin::Bus));
            r.push(Request::Begin(k, Origin::Daemon));
        }
        for &s in State::ALL {
            r.push(Request::Enter(s));
        }
        r
    }

    /// Every (situation, request) pair against the rules as the docs state
    /// them: never two operations, cancel only where allowed, phases only
    /// forward within the kind, an ended operation frees the phase.
    #[test]
    fn every_request_in_every_situation() {
        let (cases, requests) = (situations(), requests());
        // idle, 8 (kind, phase) × 2 origins, the 3 of them that can be
        // cancelled × 2 origins, cancelled, a check reporting without
        // install, and that one cancelled.
        assert_eq!(
            cases.len(),
            1 + 16 + 6 + 2,
            "{:?}",
            cases.iter().map(|s| &s.0).collect::<Vec<_>>()
        );
        let mut checked = 0;
        for i in 0..cases.len() {
            for &req in &requests {
                checked += 1;
                // Built afresh for every request: no token shared with
                // another case.
                let (name, mut p) = situations().swap_remove(i);
                let before_last_id = p.last_id;
                let running = p.running.clone();
                let what = format!("{name} + {req:?}");
                match req {
                    Request::Begin(kind, origin) => {
                        let got = p.begin(kind, origin);
                        match &running {
                            None => {
                                let t = got.unwrap();
                                assert_eq!(t.id, OpId(before_last_id + 1), "{what}");
                                let r = p.running().unwrap();
                                assert_eq!((r.kind, r.phase), (kind, kind.first_phase()));
                            }
                            Some(r) => {
                                assert_eq!(
                                    got.unwrap_err(),
                                    Refusal::Busy {
                                        id: r.id,
                                        kind: r.kind,
                                        phase: r.phase
                                    },
                                    "{what}"
                                );
                                // The running operation is untouched.
                                assert_eq!(p.running().unwrap().id, r.id, "{what}");
                            }
                        }
                    }
                    Request::Cycle => {
                        let got = p.begin_cycle();
                        match &running {
                            None => assert_eq!(got.unwrap().kind, Kind::Check, "{what}"),
                            Some(r)
                                if r.kind == Kind::Check
                                    && r.origin == Origin::Bus
                                    && !r.adopted =>
                            {
                                assert_eq!(got.unwrap().id, r.id, "{what}: adopts");
                                // Adopted once only.
                                assert!(p.begin_cycle().is_err(), "{what}");
                            }
                            Some(r) => assert!(
                                matches!(got, Err(Refusal::Busy { id, .. }) if id == r.id),
                                "{what}"
                            ),
                        }
                    }
                    Request::Cancel => {
                        let got = p.cancel();
                        let Some(r) = &running else {
                            assert_eq!(got, Err(Refusal::NothingToCancel), "{what}");
                            continue;
                        };
                        let allowed = r.kind == Kind::Check
                            && match r.phase {
                                State::Checking | State::Downloading | State::Verifying => true,
                                State::Reporting => !r.installed,
                                _ => false,
                            };
                        if allowed {
                            assert_eq!(got, Ok(r.id), "{what}");
                            assert!(r.cancel.is_cancelled(), "{what}: token fired");
                            assert!(p.running().unwrap().cancelled);
                        } else {
                            assert!(
                                matches!(got, Err(Refusal::NotCancellable { id, .. }) if id == r.id),
                                "{what}: {got:?}"
                            );
                            assert_eq!(r.cancel.is_cancelled(), r.cancelled, "{what}");
                        }
                    }
                    Request::Enter(to) => {
                        let got = p.enter(running.as_ref().map_or(OpId(99), |r| r.id), to);
                        let Some(r) = &running else {
                            assert_eq!(got, Err(Refusal::NotRunning(OpId(99))), "{what}");
                            continue;
                        };
                        let order = r.kind.phases();
                        let from = order.iter().position(|s| *s == r.phase).unwrap();
                        let forward = order
                            .iter()
                            .position(|s| *s == to)
                            .is_some_and(|t| t >= from);
                        if r.cancelled {
                            assert_eq!(got, Err(Refusal::Cancelled(r.id)), "{what}");
                        } else if forward {
                            assert_eq!(got, Ok(()), "{what}");
                            assert_eq!(p.running().unwrap().phase, to);
                        } else {
                            assert!(matches!(got, Err(Refusal::Transition { .. })), "{what}");
                            assert_eq!(p.running().unwrap().phase, r.phase, "{what}");
                        }
                    }
                    Request::End => match &running {
                        None => assert!(p.end(OpId(1)).is_none(), "{what}"),
                        Some(r) => {
                            // Another id does not end it; its own does.
                            assert!(p.end(OpId(r.id.get() + 1)).is_none(), "{what}");
                            assert_eq!(p.end(r.id).unwrap().id, r.id, "{what}");
                            assert!(p.running().is_none());
                            assert!(p.begin(Kind::Install, Origin::Bus).is_ok(), "{what}");
                        }
                    },
                }
            }
        }
        assert_eq!(checked, cases.len() * requests.len());
    }

    /// The bug this model closes: `Install` right after `CheckForUpdates`
    /// (before the scheduler's cycle ran) started an install beside the
    /// check, and a scheduled check-in overlapped a provisioning.
    #[test]
    fn install_during_a_check_and_a_check_during_provisioning_are_refused() {
        let mut p = Phases::default();
        let check = p.begin(Kind::Check, Origin::Bus).unwrap();
        assert_eq!(
            p.begin(Kind::Install, Origin::Bus).unwrap_err().to_string(),
            "another operation is running: check (operation 1), checking"
        );
        assert_eq!(p.begin_cycle().unwrap().id, check.id);
        p.enter(check.id, State::Downloading).unwrap();
        assert!(p.begin(Kind::Provision, Origin::Bus).is_err());
        p.end(check.id).unwrap();

        let prov = p.begin(Kind::Provision, Origin::Bus).unwrap();
        assert_eq!(prov.id, OpId(2));
        assert!(matches!(
            p.begin_cycle(),
            Err(Refusal::Busy {
                kind: Kind::Provision,
                ..
            })
        ));
        assert!(matches!(p.cancel(), Err(Refusal::NotCancellable { .. })));
        p.end(prov.id).unwrap();
        assert_eq!(p.begin_cycle().unwrap().id, OpId(3));
    }

    #[test]
    fn a_cancelled_check_never_goes_on_to_install() {
        let mut p = Phases::default();
        let t = p.begin_cycle().unwrap();
        p.enter(t.id, State::Verifying).unwrap();
        assert_eq!(p.cancel(), Ok(t.id));
        assert!(t.cancel.is_cancelled());
        assert_eq!(
            p.enter(t.id, State::Installing),
            Err(Refusal::Cancelled(t.id))
        );
        // Cancel again: still this operation, already cancelled.
        assert_eq!(p.cancel(), Ok(t.id));
    }

    /// `Install` with `when-ready` while preconditions hold it back: an id
    /// now, nothing running; checks and provisioning still run, another
    /// install is refused naming the deferral; it starts under its own id.
    #[test]
    fn a_deferred_install_keeps_its_id_and_blocks_only_installs() {
        let mut p = Phases::default();
        let id = p.defer().unwrap();
        assert_eq!(id, OpId(1));
        assert!(p.running().is_none());
        assert_eq!(p.deferred(), Some(id));
        // Another deferral or install is refused, naming this one.
        assert_eq!(p.defer(), Err(Refusal::Deferred(id)));
        for origin in [Origin::Bus, Origin::Daemon] {
            let e = p.begin(Kind::Install, origin).unwrap_err();
            assert_eq!(e, Refusal::Deferred(id));
            assert!(e.to_string().contains("operation 1) is deferred"), "{e}");
        }
        // A check runs meanwhile; the deferred install cannot start beside it.
        let check = p.begin_cycle().unwrap();
        assert_eq!(check.id, OpId(2));
        assert!(matches!(p.begin_deferred(), Err(Refusal::Busy { id, .. }) if id == check.id));
        assert_eq!(p.deferred(), Some(id), "kept while busy");
        p.end(check.id).unwrap();
        // Once free it starts under the id Install returned.
        let t = p.begin_deferred().unwrap().unwrap();
        assert_eq!((t.id, t.kind), (id, Kind::Install));
        let r = p.running().unwrap();
        assert_eq!((r.phase, r.origin), (State::Installing, Origin::Daemon));
        assert_eq!(p.deferred(), None);
        assert!(matches!(p.cancel(), Err(Refusal::NotCancellable { .. })));
        p.end(id).unwrap();
        assert_eq!(p.begin_deferred().unwrap().map(|t| t.id), None);
        assert_eq!(p.begin(Kind::Check, Origin::Bus).unwrap().id, OpId(3));
    }

    #[test]
    fn cancel_with_nothing_running_drops_the_deferred_install() {
        let mut p = Phases::default();
        let id = p.defer().unwrap();
        // While a check runs, Cancel is the check's.
        let check = p.begin(Kind::Check, Origin::Bus).unwrap();
        assert_eq!(p.cancel(), Ok(check.id));
        p.end(check.id).unwrap();
        assert_eq!(p.deferred(), Some(id));
        assert_eq!(p.cancel(), Ok(id));
        assert_eq!(p.deferred(), None);
        assert_eq!(p.cancel(), Err(Refusal::NothingToCancel));
        assert!(p.begin(Kind::Install, Origin::Bus).is_ok());
        // Dropped (the update was replaced): gone, ids go on increasing.
        let mut p = Phases::default();
        let id = p.defer().unwrap();
        assert_eq!(p.drop_deferred(), Some(id));
        assert_eq!(p.drop_deferred(), None);
        assert!(p.begin(Kind::Install, Origin::Bus).unwrap().id > id);
    }
}
