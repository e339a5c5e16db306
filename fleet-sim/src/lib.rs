//! # secureev-fleet-sim
//!
//! A fleet of simulated vehicles checking in against `secureev-server`: each
//! vehicle has its own real P-256 keys (one per ECU), is registered through
//! the admin API, signs every request, verifies the Director's and the Image
//! repository's metadata with the real core ([`secureev_uptane`]), downloads
//! and hash-checks assigned images, and reports signed version manifests. A
//! configured share of vehicles can fail installs or report attacks, to drive
//! rollout thresholds. It is the load generator of the backend benchmark
//! (`fleet-sim/bench.sh`, figures in `docs/benchmarks.md`).
//!
//! ## Architecture
//! - [`http`]: one keep-alive TLS 1.3 connection per worker, signed requests.
//! - [`trust`]: trusted state shared where the bytes are identical (the
//!   Director root, the Image repository), so 10,000 vehicles fit on two
//!   cores without any vehicle trusting bytes nobody verified.
//! - [`vehicle`]: one vehicle's keys, trusted Director state and check-in.
//! - [`report`]: counters, latency percentiles, errors by kind.
//!
//! [`run`] registers the fleet (optionally), spreads the active vehicles
//! over the connections, runs one unmeasured warm-up round (first contact
//! fetches and verifies every role), then measures for the configured time
//! or number of rounds.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod http;
pub mod report;
pub mod trust;
pub mod vehicle;

use anyhow::Context;
use report::{Counters, Report, Sink, WorkerStats};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vehicle::{Behaviour, Ctx, SimVehicle};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Backend base URL, the vehicle listener (`https://host:port`).
    pub url: String,
    /// The admin listener's base URL (`url` when `None`).
    pub admin_url: Option<String>,
    /// CA certificate (PEM) the backend's certificate chains to.
    pub ca_pem: Vec<u8>,
    /// Admin token: needed to register vehicles and to fetch the roots.
    pub admin_token: Option<String>,
    /// Director root the vehicles trust (fetched through the admin API when
    /// `None`).
    pub director_root: Option<Vec<u8>>,
    /// Image repository root (likewise).
    pub image_root: Option<Vec<u8>>,
    /// Vehicles in the fleet (`SIM0000000000`...).
    pub fleet: usize,
    /// Vehicles that check in, spread evenly over the fleet (all when `None`).
    pub active: Option<usize>,
    /// ECUs per vehicle (the first is the Primary).
    pub ecus: usize,
    /// Hardware ID of the Primaries (secondaries: `<id>-<n>`).
    pub hardware_id: String,
    /// Connections, one worker each.
    pub connections: usize,
    /// Measured time (after the warm-up round).
    pub duration: Duration,
    /// Stop after this many measured rounds over the active vehicles.
    pub rounds: Option<u64>,
    /// Failure and attack shares, seed.
    pub behaviour: Behaviour,
    /// Register the whole fleet first (409, already registered, is fine).
    pub register: bool,
    /// Keep every metadata body served, by path (for the static ceiling).
    pub dump: bool,
    /// Print a progress line every second to stderr.
    pub progress: bool,
    /// Processes whose CPU time and memory to report (the server's).
    pub server_pids: Vec<u32>,
}

impl Options {
    /// Defaults for `url` with `ca_pem`: 100 vehicles with one ECU each,
    /// 32 connections, 10 s.
    pub fn new(url: &str, ca_pem: Vec<u8>) -> Self {
        Options {
            url: url.to_owned(),
            admin_url: None,
            ca_pem,
            admin_token: None,
            director_root: None,
            image_root: None,
            fleet: 100,
            active: None,
            ecus: 1,
            hardware_id: "sim-hu".into(),
            connections: 32,
            duration: Duration::from_secs(10),
            rounds: None,
            behaviour: Behaviour {
                seed: "secureev-fleet-sim".into(),
                ..Behaviour::default()
            },
            register: false,
            dump: false,
            progress: false,
            server_pids: Vec::new(),
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The report.
    pub report: Report,
    /// The bodies served, when asked for.
    pub dump: http::Dump,
    /// The Director root used.
    pub director_root: Vec<u8>,
    /// The Image root used.
    pub image_root: Vec<u8>,
}

/// CPU seconds (user + system) and resident memory of a process, from
/// `/proc` (Linux; USER_HZ is 100 on every Linux ABI this runs on).
pub fn process_usage(pid: u32) -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((ticks as f64 / 100.0, kb("VmRSS:"), kb("VmHWM:")))
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| process_usage(*p))
        .map(|u| u.0)
        .sum()
}

/// Register (optionally) and run the fleet.
pub async fn run(opts: &Options) -> anyhow::Result<RunOutput> {
    anyhow::ensure!(opts.fleet > 0, "the fleet needs at least one vehicle");
    anyhow::ensure!(opts.connections > 0, "at least one connection");
    let conns: Vec<http::Conn> = (0..opts.connections)
        .map(|_| Ok(http::Conn::new(http::client(&opts.ca_pem)?, &opts.url)))
        .collect::<anyhow::Result<_>>()?;
    let admin_url = opts.admin_url.clone().unwrap_or_else(|| opts.url.clone());
    let admin = http::Conn::new(http::client(&opts.ca_pem)?, &admin_url);
    let token = opts.admin_token.clone();
    let fetch_root = |path: &'static str| {
        let conn = admin.clone();
        let token = token.clone();
        async move {
            let token = token.context("an admin token or the roots are needed")?;
            conn.admin(&token, reqwest::Method::GET, path, None)
                .await?
                .with_context(|| format!("{path}: 409"))
        }
    };
    let director_root = match &opts.director_root {
        Some(r) => r.clone(),
        None => fetch_root("/admin/director/root").await?,
    };
    let image_root = match &opts.image_root {
        Some(r) => r.clone(),
        None => fetch_root("/admin/image/root").await?,
    };
    let trust = Arc::new(trust::Trust::new(&director_root, &image_root)?);

    let mut registered = 0;
    if opts.register {
        let token = token
            .clone()
            .context("registration needs the admin token")?;
        let mut tasks = Vec::new();
        for (k, conn) in conns.iter().enumerate() {
            let (conn, admin, token, opts) =
                (conn.clone(), admin.clone(), token.clone(), opts.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                for i in (k..opts.fleet).step_by(opts.connections) {
                    let v = SimVehicle::new(&opts.behaviour.seed, i, opts.ecus, &opts.hardware_id);
                    // Enrollment as the backend offers it: the fleet admin
                    // makes a one-time credential for the VIN, the vehicle
                    // presents it with its registration. 409: registered.
                    let Some(reply) = admin
                        .admin(
                            &token,
                            reqwest::Method::POST,
                            "/admin/enrollments",
                            Some(&serde_json::json!({ "vin": v.vin })),
                        )
                        .await?
                    else {
                        continue;
                    };
                    let reply: serde_json::Value = serde_json::from_slice(&reply)?;
                    let credential = reply["credential"]
                        .as_str()
                        .context("no credential in the enrollment reply")?;
                    conn.enroll(credential, &v.registration()).await?;
                    n += 1;
                }
                anyhow::Ok(n)
            }));
        }
        for t in tasks {
            registered += t.await??;
        }
        if opts.progress {
            eprintln!("registered {registered} new vehicles of {}", opts.fleet);
        }
    }

    let active = opts.active.unwrap_or(opts.fleet).clamp(1, opts.fleet);
    let mut per_worker: Vec<Vec<SimVehicle>> = (0..opts.connections).map(|_| Vec::new()).collect();
    for j in 0..active {
        let i = j * opts.fleet / active;
        per_worker[j % opts.connections].push(SimVehicle::new(
            &opts.behaviour.seed,
            i,
            opts.ecus,
            &opts.hardware_id,
        ));
    }
    let workers = per_worker.iter().filter(|v| !v.is_empty()).count();
    let dump = Arc::new(if opts.dump {
        http::Dump::keeping()
    } else {
        http::Dump::default()
    });
    let behaviour = Arc::new(opts.behaviour.clone());
    let counters = Arc::new(Counters::default());
    let sink = Arc::new(Sink::default());
    let warm = Arc::new(tokio::sync::Barrier::new(workers + 1));
    let measuring = Arc::new(tokio::sync::OnceCell::<Instant>::new());
    let mut tasks = Vec::new();
    for (vehicles, conn) in per_worker.into_iter().zip(conns) {
        if vehicles.is_empty() {
            continue;
        }
        let (trust, dump, behaviour) = (trust.clone(), dump.clone(), behaviour.clone());
        let (counters, sink, warm, measuring) = (
            counters.clone(),
            sink.clone(),
            warm.clone(),
            measuring.clone(),
        );
        let (duration, rounds) = (opts.duration, opts.rounds);
        tasks.push(tokio::spawn(async move {
            let mut vehicles = vehicles;
            let ctx = Ctx {
                conn: &conn,
                trust: &trust,
                dump: &dump,
                behaviour: &behaviour,
            };
            let mut stats = WorkerStats::default();
            // Warm-up: first contact, not timed (what it did and its errors
            // still count).
            for v in vehicles.iter_mut() {
                match v.check_in(ctx, now()).await {
                    Ok(o) => stats.outcome += o,
                    Err(e) => note_error(&mut stats, &e),
                }
            }
            warm.wait().await;
            let start = *measuring.get_or_init(|| async { Instant::now() }).await;
            let deadline = start + duration;
            let mut round = 0u64;
            'run: loop {
                if rounds.is_some_and(|r| round >= r) {
                    break;
                }
                for v in vehicles.iter_mut() {
                    if rounds.is_none() && Instant::now() >= deadline {
                        break 'run;
                    }
                    let t0 = Instant::now();
                    match v.check_in(ctx, now()).await {
                        Ok(o) => {
                            let us = t0.elapsed().as_micros();
                            stats
                                .latencies_us
                                .push(u32::try_from(us).unwrap_or(u32::MAX));
                            stats.outcome += o;
                            report::count(&counters, true);
                        }
                        Err(e) => {
                            note_error(&mut stats, &e);
                            report::count(&counters, false);
                            // No hot loop against a refusing backend.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                round += 1;
            }
            if let Ok(mut s) = sink.0.lock() {
                s.push(stats);
            }
        }));
    }
    warm.wait().await;
    let start = *measuring.get_or_init(|| async { Instant::now() }).await;
    let cpu0 = cpu_of(&opts.server_pids);
    let own0 = process_usage(std::process::id()).map_or(0.0, |u| u.0);
    let progress = opts.progress.then(|| {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = counters.checkins.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>4.0}s] {n} check-ins, {}/s, {} errors",
                    start.elapsed().as_secs_f64(),
                    n - last,
                    counters.errors.load(Ordering::Relaxed)
                );
                last = n;
            }
        })
    });
    for t in tasks {
        t.await.context("a worker panicked")?;
    }
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
    }
    let cpu = cpu_of(&opts.server_pids) - cpu0;
    let own = process_usage(std::process::id()).map_or(0.0, |u| u.0) - own0;
    let stats = std::mem::take(
        &mut *sink
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("stats lock poisoned"))?,
    );
    let mut report = Report::from_stats(stats, elapsed);
    report.fleet = opts.fleet;
    report.active = active;
    report.connections = workers;
    report.registered = registered;
    if report.checkins > 0 {
        let per = |s: f64| s * 1000.0 / report.checkins as f64;
        report.sim_cpu_ms_per_checkin = Some(per(own));
        if !opts.server_pids.is_empty() {
            report.server_cpu_ms_per_checkin = Some(per(cpu));
        }
    }
    if !opts.server_pids.is_empty() {
        let (rss, hwm) = opts
            .server_pids
            .iter()
            .filter_map(|p| process_usage(*p))
            .fold((0, 0), |a, u| (a.0 + u.1, a.1 + u.2));
        report.server_rss_kib = Some(rss);
        report.server_peak_rss_kib = Some(hwm);
    }
    let dump = Arc::try_unwrap(dump).unwrap_or_default();
    Ok(RunOutput {
        report,
        dump,
        director_root,
        image_root,
    })
}

fn now() -> secureev_uptane::Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    secureev_uptane::Timestamp::from_unix(i64::try_from(secs).unwrap_or(i64::MAX))
}

fn note_error(stats: &mut WorkerStats, e: &error::SimError) {
    let kind = e.kind();
    *stats.errors.entry(kind.clone()).or_default() += 1;
    stats.examples.entry(kind).or_insert_with(|| e.to_string());
}
