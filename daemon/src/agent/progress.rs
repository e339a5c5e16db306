//! `Progress` as a UI draws it: one `percent` over the whole operation,
//! never decreasing within it, reset when an operation starts, and left
//! saying so when it fails (docs/dbus-api.md, "Progress").
//!
//! Each operation has a fixed plan of phases with weights ([`Plan`]); a
//! phase's bytes move `percent` across its span. A phase outside the plan
//! (or a step backwards) leaves `percent` where it is.

use secureev_dbus::{Progress, State};

/// What an operation will go through, decided when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// A check-in that stops at the pending update (policy `consent`).
    Check,
    /// A check-in that may go on to install (policy `auto`, or the pending
    /// update has consent).
    CheckAndInstall,
    /// `Install`, or a held-back install that starts.
    Install,
    /// `Provision`.
    Provision,
}

impl Plan {
    /// `(phase, first percent, last percent)`, in order.
    fn spans(self) -> &'static [(State, u32, u32)] {
        match self {
            Plan::Check => &[
                (State::Checking, 0, 10),
                (State::Downloading, 10, 95),
                (State::Verifying, 95, 95),
                (State::Reporting, 95, 100),
            ],
            Plan::CheckAndInstall => &[
                (State::Checking, 0, 5),
                (State::Downloading, 5, 45),
                (State::Verifying, 45, 45),
                (State::Installing, 45, 90),
                (State::Reporting, 90, 100),
            ],
            Plan::Install => &[(State::Installing, 0, 90), (State::Reporting, 90, 100)],
            Plan::Provision => &[(State::Checking, 0, 100)],
        }
    }
}

/// The running operation's progress.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    plan: Option<Plan>,
    last: Progress,
}

impl Meter {
    /// Start an operation: `percent` 0, bytes 0.
    pub(crate) fn begin(&mut self, plan: Plan, phase: State, message: &str) -> Progress {
        self.plan = Some(plan);
        self.last = Progress {
            percent: 0,
            phase: phase.as_str().to_owned(),
            message: message.to_owned(),
            ..Progress::default()
        };
        self.last.clone()
    }

    /// Whether an operation is running.
    #[cfg(test)]
    pub(crate) fn active(&self) -> bool {
        self.plan.is_some()
    }

    /// `done` of `total` bytes of `phase` (total 0: unknown).
    pub(crate) fn update(
        &mut self,
        phase: State,
        done: u64,
        total: u64,
        ecu: &str,
        message: &str,
    ) -> Progress {
        let span = self
            .plan
            .and_then(|p| p.spans().iter().find(|(s, _, _)| *s == phase));
        let percent = match span {
            Some(&(_, from, to)) => {
                let part = if total == 0 {
                    0
                } else {
                    (u128::from(done.min(total)) * u128::from(to - from) / u128::from(total)) as u32
                };
                from + part
            }
            None => self.last.percent,
        };
        self.last = Progress {
            percent: percent.max(self.last.percent),
            phase: phase.as_str().to_owned(),
            bytes_done: if total == 0 { done } else { done.min(total) },
            bytes_total: total,
            ecu: ecu.to_owned(),
            message: message.to_owned(),
        };
        self.last.clone()
    }

    /// The operation ended: on success `percent` 100; on failure `percent`
    /// and bytes stay where it stopped and `phase` is the state it ended in
    /// (`error`, or `idle` when cancelled).
    /// `None` when no operation was running (an `Install` that found the
    /// update held back again started nothing).
    pub(crate) fn end(&mut self, ok: bool, ended_in: State, message: &str) -> Option<Progress> {
        self.plan.take()?;
        if ok {
            self.last.percent = 100;
        } else {
            self.last.phase = ended_in.as_str().to_owned();
        }
        self.last.message = message.to_owned();
        Some(self.last.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_overall_and_never_decreases_within_an_operation() {
        let mut m = Meter::default();
        let mut seen = vec![m.begin(Plan::CheckAndInstall, State::Checking, "").percent];
        seen.push(m.update(State::Checking, 0, 0, "", "").percent);
        for done in [0, 50, 100] {
            seen.push(m.update(State::Downloading, done, 100, "HU", "").percent);
        }
        seen.push(m.update(State::Verifying, 0, 0, "", "").percent);
        for done in [0, 10, 100] {
            seen.push(m.update(State::Installing, done, 100, "HU", "").percent);
        }
        // A phase outside the plan, and a step back, hold the percent.
        seen.push(m.update(State::AwaitingConsent, 0, 0, "", "").percent);
        seen.push(m.update(State::Installing, 0, 100, "HU", "").percent);
        seen.push(m.update(State::Reporting, 0, 0, "", "").percent);
        seen.push(m.end(true, State::Idle, "installed").unwrap().percent);
        assert_eq!(seen, [0, 0, 5, 25, 45, 45, 45, 49, 90, 90, 90, 90, 100]);
    }

    #[test]
    fn a_new_operation_starts_from_zero() {
        let mut m = Meter::default();
        m.begin(Plan::Check, State::Checking, "");
        m.update(State::Downloading, 10, 10, "HU", "");
        assert_eq!(
            m.end(true, State::AwaitingConsent, "").unwrap().percent,
            100
        );
        assert_eq!(m.end(true, State::Idle, ""), None);
        let p = m.begin(Plan::Install, State::Installing, "installing");
        assert_eq!((p.percent, p.bytes_done, p.bytes_total), (0, 0, 0));
        assert!(m.active());
    }

    #[test]
    fn a_failure_is_not_shown_as_finished() {
        let mut m = Meter::default();
        m.begin(Plan::Install, State::Installing, "");
        m.update(State::Installing, 30, 100, "HU", "");
        let p = m.end(false, State::Error, "install failed: disk").unwrap();
        assert_eq!(p.percent, 27);
        assert_eq!(p.phase, "error");
        assert_eq!((p.bytes_done, p.bytes_total), (30, 100));
        assert_eq!(p.message, "install failed: disk");
        assert!(!m.active());
    }
}
