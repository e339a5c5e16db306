//! The daemon's time source: the wall clock, held up by a persisted floor.
//!
//! The verification core never reads a clock; the daemon hands it `now`. A vehicle
//! clock can be wrong (dead RTC battery, a spoofed GNSS or network time), and a
//! clock set back in time would make expired metadata look fresh again: the
//! freeze attack of Uptane 2.1 §4.3.1. So the daemon keeps a **time floor**:
//!
//! - *Definition.* The floor is the greatest `now` at which full verification of
//!   fresh metadata succeeded. Because that verification refused expired
//!   metadata, the floor never passes the expiry of metadata that was trusted at
//!   the time, so a wall clock set far into the future cannot push the floor past
//!   what the backend's signatures vouched for.
//! - *Use.* [`Clock::now`] is `max(wall clock, floor)`. A wall clock behind the
//!   floor is treated as the floor and reported ([`Reading::wall_behind_floor`],
//!   [`Clock::wall_behind_floor`]) for the logs and the D-Bus API.
//! - *Persistence.* [`Clock::record_verification`] raises the floor and writes it
//!   to the store (`time-floor.json`) atomically; it never lowers it.
//!
//! Time is injected through [`WallClock`], so tests use a fake clock.

use crate::error::Result;
use crate::store::Store;
use secureev_uptane::Timestamp;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

/// Where the current wall-clock time comes from.
pub trait WallClock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> i64;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_unix(&self) -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            // Before 1970: the floor, if any, takes over.
            Err(_) => 0,
        }
    }
}

/// One reading of the daemon's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The time to use: `max(wall clock, floor)`.
    pub now: Timestamp,
    /// The wall clock was behind the floor (and was overridden).
    pub wall_behind_floor: bool,
}

struct Inner {
    wall: Box<dyn WallClock>,
    /// `i64::MIN` when there is no floor yet.
    floor: AtomicI64,
    behind: AtomicBool,
}

/// The daemon's clock. Cheap to clone; clones share the floor.
#[derive(Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("floor", &self.floor())
            .field("wall_behind_floor", &self.wall_behind_floor())
            .finish()
    }
}

impl Clock {
    /// A clock on `wall` with an optional known floor.
    pub fn new(wall: impl WallClock + 'static, floor: Option<Timestamp>) -> Self {
        Clock {
            inner: Arc::new(Inner {
                wall: Box::new(wall),
                floor: AtomicI64::new(floor.map_or(i64::MIN, Timestamp::unix)),
                behind: AtomicBool::new(false),
            }),
        }
    }

    /// A clock on `wall` with the floor persisted in `store`.
    pub fn load(wall: impl WallClock + 'static, store: &Store) -> Result<Self> {
        Ok(Clock::new(
            wall,
            store.time_floor()?.map(Timestamp::from_unix),
        ))
    }

    /// The floor, if any verification has succeeded yet.
    pub fn floor(&self) -> Option<Timestamp> {
        match self.inner.floor.load(Ordering::SeqCst) {
            i64::MIN => None,
            f => Some(Timestamp::from_unix(f)),
        }
    }

    /// Read the clock: the wall clock, or the floor if the wall clock is behind it.
    pub fn now(&self) -> Reading {
        let wall = self.inner.wall.now_unix();
        let floor = self.inner.floor.load(Ordering::SeqCst);
        let behind = wall < floor;
        let was_behind = self.inner.behind.swap(behind, Ordering::SeqCst);
        if behind && !was_behind {
            tracing::warn!(
                wall = %Timestamp::from_unix(wall),
                floor = %Timestamp::from_unix(floor),
                "wall clock is behind the time floor; using the floor"
            );
        }
        Reading {
            now: Timestamp::from_unix(wall.max(floor)),
            wall_behind_floor: behind,
        }
    }

    /// Whether the last reading found the wall clock behind the floor.
    pub fn wall_behind_floor(&self) -> bool {
        self.inner.behind.load(Ordering::SeqCst)
    }

    /// Record that verification at `verified_at` (the `now` given to the core)
    /// succeeded: raise the floor to it and persist it. Returns whether the floor
    /// moved. The floor never goes down.
    pub fn record_verification(&self, store: &Store, verified_at: Timestamp) -> Result<bool> {
        let t = verified_at.unix();
        let prev = self.inner.floor.fetch_max(t, Ordering::SeqCst);
        if t > prev {
            store.save_time_floor(t)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wall clock the test sets.
    #[derive(Clone, Default)]
    struct FakeWall(Arc<AtomicI64>);
    impl WallClock for FakeWall {
        fn now_unix(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn wall_clock_behind_floor_is_held_up_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let wall = FakeWall::default();
        wall.0.store(1_000, Ordering::SeqCst);
        let clock = Clock::load(wall.clone(), &store).unwrap();
        assert_eq!(clock.floor(), None);
        assert_eq!(
            clock.now(),
            Reading {
                now: Timestamp::from_unix(1_000),
                wall_behind_floor: false
            }
        );
        let at = clock.now().now;
        assert!(clock.record_verification(&store, at).unwrap());

        // The clock is set back (RTC reset): the floor holds.
        wall.0.store(10, Ordering::SeqCst);
        let r = clock.now();
        assert_eq!(r.now, Timestamp::from_unix(1_000));
        assert!(r.wall_behind_floor && clock.wall_behind_floor());

        // The floor survives a restart.
        let clock = Clock::load(wall.clone(), &store).unwrap();
        assert_eq!(clock.floor(), Some(Timestamp::from_unix(1_000)));
        assert_eq!(clock.now().now, Timestamp::from_unix(1_000));

        // The wall clock recovers and moves on.
        wall.0.store(2_000, Ordering::SeqCst);
        assert_eq!(
            clock.now(),
            Reading {
                now: Timestamp::from_unix(2_000),
                wall_behind_floor: false
            }
        );
        assert!(!clock.wall_behind_floor());
    }

    #[test]
    fn floor_never_goes_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let clock = Clock::new(FakeWall::default(), Some(Timestamp::from_unix(500)));
        assert!(!clock
            .record_verification(&store, Timestamp::from_unix(400))
            .unwrap());
        assert_eq!(clock.floor(), Some(Timestamp::from_unix(500)));
        assert_eq!(store.time_floor().unwrap(), None);
        assert!(clock
            .record_verification(&store, Timestamp::from_unix(600))
            .unwrap());
        assert_eq!(store.time_floor().unwrap(), Some(600));
    }
}
