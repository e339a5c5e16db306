//! Counting and the final report: check-ins per second, latency
//! percentiles and errors by kind.

use crate::vehicle::Outcome;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Live counters, read by the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    /// Completed check-ins.
    pub checkins: AtomicU64,
    /// Failed check-ins.
    pub errors: AtomicU64,
}

/// What one worker measured.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Latency of each completed check-in, microseconds.
    pub latencies_us: Vec<u32>,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// The first error message of each kind (for the report).
    pub examples: BTreeMap<String, String>,
    /// Downloads, installs, attacks.
    pub outcome: Outcome,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The final report of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Vehicles registered (or assumed registered) in the fleet.
    pub fleet: usize,
    /// Vehicles that checked in.
    pub active: usize,
    /// Connections (one per worker).
    pub connections: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// Completed check-ins.
    pub checkins: u64,
    /// Completed check-ins per second.
    pub checkins_per_sec: f64,
    /// Latency of a completed check-in.
    pub latency: Latency,
    /// Failed check-ins by kind.
    pub errors: BTreeMap<String, u64>,
    /// One message per error kind.
    pub error_examples: BTreeMap<String, String>,
    /// Images downloaded and verified.
    pub downloads: u64,
    /// Their bytes.
    pub downloaded_bytes: u64,
    /// Installs reported as successful.
    pub installs_ok: u64,
    /// Installs reported as failed.
    pub installs_failed: u64,
    /// Attacks reported in manifests.
    pub attacks_reported: u64,
    /// Vehicles registered by this run.
    pub registered: usize,
    /// The simulator's own CPU per check-in, milliseconds.
    pub sim_cpu_ms_per_checkin: Option<f64>,
    /// The watched server processes' CPU per check-in, milliseconds.
    pub server_cpu_ms_per_checkin: Option<f64>,
    /// Their resident memory at the end, KiB.
    pub server_rss_kib: Option<u64>,
    /// Their peak resident memory, KiB.
    pub server_peak_rss_kib: Option<u64>,
}

/// A shared sink the workers hand their stats to.
#[derive(Debug, Default)]
pub struct Sink(pub Mutex<Vec<WorkerStats>>);

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

impl Report {
    /// Merge the workers' stats over `elapsed`.
    pub fn from_stats(stats: Vec<WorkerStats>, elapsed: Duration) -> Report {
        let mut lat: Vec<u32> = Vec::new();
        let mut r = Report::default();
        let mut outcome = Outcome::default();
        for s in stats {
            lat.extend_from_slice(&s.latencies_us);
            for (k, v) in s.errors {
                *r.errors.entry(k).or_default() += v;
            }
            for (k, v) in s.examples {
                r.error_examples.entry(k).or_insert(v);
            }
            outcome += s.outcome;
        }
        lat.sort_unstable();
        r.seconds = elapsed.as_secs_f64();
        r.checkins = lat.len() as u64;
        r.checkins_per_sec = if r.seconds > 0.0 {
            r.checkins as f64 / r.seconds
        } else {
            0.0
        };
        r.latency = Latency {
            p50_ms: percentile(&lat, 50.0),
            p90_ms: percentile(&lat, 90.0),
            p99_ms: percentile(&lat, 99.0),
            max_ms: lat.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        };
        r.downloads = outcome.downloads;
        r.downloaded_bytes = outcome.bytes;
        r.installs_ok = outcome.installs_ok;
        r.installs_failed = outcome.installs_failed;
        r.attacks_reported = outcome.attacks;
        r
    }

    /// Total failed check-ins.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "fleet {} vehicles, {} active, {} connections, {:.1} s",
            self.fleet, self.active, self.connections, self.seconds
        )?;
        writeln!(
            f,
            "check-ins: {} ({:.0}/s); latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.checkins,
            self.checkins_per_sec,
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.max_ms
        )?;
        writeln!(
            f,
            "images: {} downloaded ({} bytes), {} installed, {} failed, {} attacks reported",
            self.downloads,
            self.downloaded_bytes,
            self.installs_ok,
            self.installs_failed,
            self.attacks_reported
        )?;
        if let Some(c) = self.sim_cpu_ms_per_checkin {
            writeln!(f, "simulator CPU: {c:.3} ms per check-in")?;
        }
        if let (Some(c), Some(rss), Some(hwm)) = (
            self.server_cpu_ms_per_checkin,
            self.server_rss_kib,
            self.server_peak_rss_kib,
        ) {
            writeln!(
                f,
                "server CPU: {c:.3} ms per check-in; memory {:.1} MiB (peak {:.1} MiB)",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            )?;
        }
        if self.errors.is_empty() {
            write!(f, "errors: none")
        } else {
            write!(f, "errors: {}", self.error_count())?;
            for (k, v) in &self.errors {
                write!(f, "\n  {k}: {v}")?;
                if let Some(e) = self.error_examples.get(k) {
                    write!(f, " (e.g. {e})")?;
                }
            }
            Ok(())
        }
    }
}

/// Bump the live counters after a check-in.
pub fn count(c: &Counters, ok: bool) {
    if ok {
        c.checkins.fetch_add(1, Ordering::Relaxed);
    } else {
        c.errors.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_errors_merge() {
        let a = WorkerStats {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            errors: BTreeMap::from([("status-401".to_owned(), 2)]),
            ..Default::default()
        };
        let b = WorkerStats {
            errors: BTreeMap::from([("status-401".to_owned(), 1), ("connect".to_owned(), 1)]),
            ..Default::default()
        };
        let r = Report::from_stats(vec![a, b], Duration::from_secs(10));
        assert_eq!(r.checkins, 100);
        assert!((r.checkins_per_sec - 10.0).abs() < 1e-9);
        assert_eq!(r.latency.max_ms, 100.0);
        assert!((r.latency.p50_ms - 50.0).abs() <= 1.0);
        assert_eq!(r.errors["status-401"], 3);
        assert_eq!(r.error_count(), 4);
        assert!(r.to_string().contains("status-401: 3"));
    }
}
