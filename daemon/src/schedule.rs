//! When to check in: a fixed interval with random jitter, exponential backoff
//! after failures, and on demand.
//!
//! After a successful cycle the next one starts `interval + U(0, jitter)` later;
//! the jitter spreads a fleet's check-ins so that vehicles started together do
//! not reach the backend together. After `n` consecutive failures the wait is
//! `min(BACKOFF_START × 2^(n-1), backoff_max)` (never more than `backoff_max`,
//! never less than a second) plus the same jitter, so that an outage is retried
//! soon, then less and less often. A [`Trigger`] (D-Bus `CheckForUpdates`) starts a
//! cycle at once, inside the back-off or not; a forced one (`force`) also
//! starts the back-off over, so that if it fails the next retry comes after
//! [`BACKOFF_START`] again rather than after the doubled wait.

use crate::config::CheckinConfig;
use futures_util::future::BoxFuture;
use rand_core::RngCore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The first wait after a failure (capped by the interval).
pub const BACKOFF_START: Duration = Duration::from_secs(60);

/// The check-in schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Time between successful check-ins.
    pub interval: Duration,
    /// Largest random addition to each wait.
    pub jitter: Duration,
    /// Longest wait after failures.
    pub backoff_max: Duration,
}

impl Schedule {
    /// From `[checkin]`.
    pub fn from_config(c: &CheckinConfig) -> Self {
        Schedule {
            interval: Duration::from_secs(c.interval_secs),
            jitter: Duration::from_secs(c.jitter_secs),
            backoff_max: Duration::from_secs(c.backoff_max_secs),
        }
    }

    /// The wait before the next cycle after `failures` consecutive failures, with
    /// `unit` in `[0, 1)` choosing the jitter.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let base = if failures == 0 {
            self.interval
        } else {
            let start = BACKOFF_START.min(self.interval).max(Duration::from_secs(1));
            let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
            start.saturating_mul(factor).min(self.backoff_max)
        };
        base + self.jitter.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// [`delay`](Self::delay) with jitter from the OS random source.
    pub fn random_delay(&self, failures: u32) -> Duration {
        let unit = (rand_core::OsRng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        self.delay(failures, unit)
    }
}

/// How a cycle ended, for the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleOutcome {
    /// The backend was reached and the cycle completed (whether or not anything
    /// was installed, and including attacks that were refused and reported).
    Done,
    /// The cycle failed (network, backend); back off.
    Failed,
}

/// **Integration point: check-in.** One update cycle: fetch and verify
/// metadata through the core, download, install according to the policy,
/// report. Implemented by the check-in module on top of
/// [`crate::run::Daemon`]'s parts. `cancel` fires on shutdown or D-Bus
/// `Cancel`; the cycle must finish its current atomic step and return.
pub trait UpdateCycle: Send + Sync {
    /// Run one cycle.
    fn run_cycle(&self, cancel: CancellationToken) -> BoxFuture<'_, CycleOutcome>;
}

/// Asks the scheduler for a cycle now (D-Bus `CheckForUpdates`).
#[derive(Debug, Clone)]
pub struct Trigger(mpsc::Sender<bool>);

impl Trigger {
    /// A trigger and the receiver the scheduler listens on (`true`: forced).
    pub fn new() -> (Self, mpsc::Receiver<bool>) {
        // One pending request is enough: more while one waits change nothing.
        let (tx, rx) = mpsc::channel(1);
        (Trigger(tx), rx)
    }

    /// Request a cycle; returns `false` when one is already requested or the
    /// scheduler is gone.
    pub fn check_now(&self) -> bool {
        self.0.try_send(false).is_ok()
    }

    /// [`Self::check_now`], and start the back-off over (D-Bus `force`).
    pub fn check_now_forced(&self) -> bool {
        self.0.try_send(true).is_ok()
    }
}

/// Run cycles on `schedule` (and when triggered) until `shutdown`. The first
/// cycle runs at once. Returns after the running cycle has finished.
pub async fn run_scheduler(
    cycle: Arc<dyn UpdateCycle>,
    schedule: Schedule,
    mut triggers: mpsc::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match cycle.run_cycle(shutdown.child_token()).await {
            CycleOutcome::Done => failures = 0,
            CycleOutcome::Failed => failures = failures.saturating_add(1),
        }
        let wait = schedule.random_delay(failures);
        tracing::debug!(?wait, failures, "next check-in");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            t = triggers.recv() => {
                if t == Some(true) {
                    tracing::info!(failures, "forced check-in: the back-off starts over");
                    failures = 0;
                }
                if t.is_none() {
                    // Every trigger was dropped: keep to the schedule alone.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    fn schedule() -> Schedule {
        Schedule {
            interval: Duration::from_secs(3600),
            jitter: Duration::from_secs(300),
            backoff_max: Duration::from_secs(6 * 3600),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = schedule();
        assert_eq!(s.delay(0, 0.0), Duration::from_secs(3600));
        assert_eq!(s.delay(0, 0.5), Duration::from_secs(3750));
        assert_eq!(s.delay(1, 0.0), Duration::from_secs(60));
        assert_eq!(s.delay(2, 0.0), Duration::from_secs(120));
        assert_eq!(s.delay(9, 0.0), Duration::from_secs(15360));
        assert_eq!(s.delay(10, 0.0), Duration::from_secs(6 * 3600));
        assert_eq!(s.delay(u32::MAX, 0.0), Duration::from_secs(6 * 3600));
        let d = s.random_delay(0);
        assert!(d >= Duration::from_secs(3600) && d <= Duration::from_secs(3900));
    }

    struct Script {
        outcomes: Mutex<Vec<CycleOutcome>>,
        runs: AtomicU32,
        at: Mutex<Vec<tokio::time::Instant>>,
    }

    impl UpdateCycle for Script {
        fn run_cycle(&self, _cancel: CancellationToken) -> BoxFuture<'_, CycleOutcome> {
            Box::pin(async move {
                self.runs.fetch_add(1, Ordering::SeqCst);
                self.at.lock().unwrap().push(tokio::time::Instant::now());
                self.outcomes
                    .lock()
                    .unwrap()
                    .pop()
                    .unwrap_or(CycleOutcome::Done)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scheduler_backs_off_recovers_and_obeys_triggers() {
        let s = Schedule {
            interval: Duration::from_secs(1000),
            jitter: Duration::ZERO,
            backoff_max: Duration::from_secs(5000),
        };
        // Popped from the end: fail, fail, then succeed.
        let script = Arc::new(Script {
            outcomes: Mutex::new(vec![
                CycleOutcome::Done,
                CycleOutcome::Failed,
                CycleOutcome::Failed,
            ]),
            runs: AtomicU32::new(0),
            at: Mutex::new(Vec::new()),
        });
        let (trigger, rx) = Trigger::new();
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(run_scheduler(script.clone(), s, rx, shutdown.clone()));
        // Runs at 0 (fail), 60 (fail), 180 (done), 1180.
        tokio::time::sleep(Duration::from_secs(1181)).await;
        let at: Vec<u64> = script
            .at
            .lock()
            .unwrap()
            .iter()
            .map(|t| (*t - start).as_secs())
            .collect();
        assert_eq!(at, vec![0, 60, 180, 1180]);
        assert!(trigger.check_now());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(script.runs.load(Ordering::SeqCst), 5);
        shutdown.cancel();
        task.await.unwrap();
    }

    /// `force`: a triggered check inside the back-off runs at once either
    /// way; forced, a failure is then retried after BACKOFF_START (60 s)
    /// instead of the doubled wait (the third failure would wait 240 s).
    #[tokio::test(start_paused = true)]
    async fn a_forced_check_starts_the_backoff_over() {
        let s = Schedule {
            interval: Duration::from_secs(1000),
            jitter: Duration::ZERO,
            backoff_max: Duration::from_secs(5000),
        };
        for (forced, expected) in [(true, vec![0, 60, 70, 130]), (false, vec![0, 60, 70, 310])] {
            let script = Arc::new(Script {
                outcomes: Mutex::new(vec![CycleOutcome::Failed; 8]),
                runs: AtomicU32::new(0),
                at: Mutex::new(Vec::new()),
            });
            let (trigger, rx) = Trigger::new();
            let shutdown = CancellationToken::new();
            let start = tokio::time::Instant::now();
            let task = tokio::spawn(run_scheduler(script.clone(), s, rx, shutdown.clone()));
            tokio::time::sleep(Duration::from_secs(70)).await;
            assert!(if forced {
                trigger.check_now_forced()
            } else {
                trigger.check_now()
            });
            tokio::time::sleep(Duration::from_secs(250)).await;
            let at: Vec<u64> = script
                .at
                .lock()
                .unwrap()
                .iter()
                .map(|t| (*t - start).as_secs())
                .take(4)
                .collect();
            assert_eq!(at, expected, "forced: {forced}");
            shutdown.cancel();
            task.await.unwrap();
        }
    }
}
