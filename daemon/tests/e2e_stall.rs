//! Issue 11, end to end: a backend that lets the TLS handshake through (or
//! not) and then withholds data must not wedge the vehicle. The real
//! `secureev-otad` on a private bus against the in-test TLS backend
//! (`e2e_common::Backend`) stalling each kind of request:
//!
//! - response headers of a metadata file never sent, a metadata body
//!   trickled at a few bytes per second, the manifest PUT never answered, a
//!   TCP connection accepted without a TLS handshake: each ends within its
//!   configured bound (small here, so that the test is fast) with the right
//!   code, the stall is reported as slow retrieval, and the honest update
//!   installs afterwards;
//! - the scheduled check-ins go on while the backend stalls;
//! - `Cancel` ends checking, downloading and reporting, and SIGTERM ends the
//!   daemon in each of them within a second, leaving state that the next start
//!   resumes from.
//!
//! The measured times are printed (`--nocapture`) for the report.
#![allow(clippy::unwrap_used)]

mod e2e_common;

use e2e_common::*;
use futures_util::StreamExt;
use secureev_dbus::ErrorCode;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NAME: &str = "hu/rootfs-2.img";
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// The bounds of [`tight`]: what each stall must end within.
const CONNECT: u64 = 1;
const RESPONSE: u64 = 2;
const METADATA: u64 = 3;
const MANIFEST: u64 = 2;
/// Slack on top of a bound: TLS, signing, the D-Bus signal.
const SLACK: Duration = Duration::from_secs(3);
/// SIGTERM must end the daemon within this in checking, downloading and
/// reporting (docs/configuration.md, "Stopping").
const SIGTERM_BOUND: Duration = Duration::from_secs(3);

fn tight() -> String {
    format!(
        "[network]\nconnect_timeout_secs = {CONNECT}\nresponse_timeout_secs = {RESPONSE}\n\
         metadata_timeout_secs = {METADATA}\nmanifest_timeout_secs = {MANIFEST}\n"
    )
}

struct Rig {
    _dir: tempfile::TempDir,
    backend: Backend,
    repos: Repos,
    vehicle: Vehicle,
    target: PathBuf,
}

async fn rig(extra: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let repos = Repos::new();
    let target = dir.path().join("installed.img");
    std::fs::write(&target, b"factory").unwrap();
    let vehicle = Vehicle::new(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(target.clone()),
        extra,
    );
    Rig {
        _dir: dir,
        backend,
        repos,
        vehicle,
        target,
    }
}

fn timestamp() -> String {
    format!("/director/{VIN}/timestamp.json")
}

/// `CheckForUpdates`, wait for `(code, message)`, and how long it took.
async fn timed_check(v: &Vehicle) -> ((u32, String), Duration) {
    let t0 = Instant::now();
    let r = v.check(CHECK_TIMEOUT).await;
    (r, t0.elapsed())
}

/// Start a check, wait until the daemon is in `phase`, call `Cancel`, and
/// return the `Completed` of that check and the time from `Cancel` to it.
/// Completed signals whose message contains one of `stale` are of a cycle
/// that ended just before (as in `Vehicle::check_skipping`).
async fn cancel_in(v: &Vehicle, phase: &str, stale: &[&str]) -> ((u32, String), Duration) {
    let proxy = v.proxy().await;
    let mut completed = proxy.receive_completed().await.unwrap();
    proxy.check_for_updates(HashMap::new()).await.unwrap();
    v.wait_for(phase, Duration::from_secs(20), |s, _| s == phase)
        .await;
    let t0 = Instant::now();
    proxy.cancel().await.unwrap();
    loop {
        let signal = tokio::time::timeout(Duration::from_secs(10), completed.next())
            .await
            .unwrap_or_else(|_| panic!("no Completed after Cancel in {phase}:\n{}", v.log()))
            .unwrap();
        let args = signal.args().unwrap();
        // A late Completed of the start-up check-in against the closed
        // backend (as Vehicle::check skips it).
        if (args.code == ErrorCode::Network.as_u32() && args.message.contains("503"))
            || stale.iter().any(|s| args.message.contains(s))
        {
            continue;
        }
        return ((args.code, args.message.to_owned()), t0.elapsed());
    }
}

/// Start a check, wait until the daemon is in `phase`, SIGTERM it; the time
/// to its exit. It must exit cleanly.
async fn sigterm_in(v: &mut Vehicle, phase: &str, ready: impl Fn() -> bool) -> Duration {
    let proxy = v.proxy().await;
    // The start-up check-in may be in `phase` already (then this is Busy).
    let _ = proxy.check_for_updates(HashMap::new()).await;
    v.wait_for(phase, Duration::from_secs(20), |s, _| s == phase)
        .await;
    poll(
        "the phase to be under way",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || ready().then_some(()),
    )
    .await;
    let (took, status) = v.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit {status} in {phase}:\n{}", v.log());
    assert!(
        took < SIGTERM_BOUND,
        "SIGTERM in {phase} took {took:?}:\n{}",
        v.log()
    );
    eprintln!("SIGTERM in {phase}: exited after {took:?}");
    took
}

fn assert_within(what: &str, took: Duration, bound_secs: u64, log: &str) {
    let bound = Duration::from_secs(bound_secs);
    assert!(
        took + Duration::from_millis(100) >= bound && took <= bound + SLACK,
        "{what}: outcome after {took:?}, bound {bound:?}\n{log}"
    );
    eprintln!("{what}: outcome {took:?} after the request (bound {bound:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stall_ends_within_its_bound_and_the_honest_update_installs_afterwards() {
    let mut r = rig(&tight()).await;
    let image = image_bytes(64 * 1024, 1);
    r.repos.release(NAME, &image, 1);
    let files = r.repos.publish(&[(NAME, &image)]);
    r.vehicle.start().await;
    r.vehicle.settle_closed().await;
    r.backend.set_files(files);
    r.backend.set_open(true);

    // Response headers of the timestamp never sent.
    r.backend.set_stall(Stall::Headers(timestamp()), true);
    let ((code, message), took) = timed_check(&r.vehicle).await;
    assert_eq!(code, ErrorCode::SlowRetrievalAttack.as_u32(), "{message}");
    assert!(message.contains("response headers"), "{message}");
    assert_within("headers never sent", took, RESPONSE, &r.vehicle.log());
    r.backend.set_stall(Stall::Headers(timestamp()), false);
    // The stall is reported as the attack it is, in a manifest that went out.
    let last = r.backend.manifests().last().cloned().unwrap();
    assert!(
        attacks_detected(&last).contains("slow-retrieval"),
        "{last:#}"
    );

    // The timestamp body trickled at 8 bytes/s.
    r.backend.set_pace(
        &timestamp(),
        Some(Pace {
            chunk: 4,
            every: Duration::from_millis(500),
        }),
    );
    let ((code, message), took) = timed_check(&r.vehicle).await;
    assert_eq!(code, ErrorCode::SlowRetrievalAttack.as_u32(), "{message}");
    assert!(message.contains("whole body"), "{message}");
    assert_within("metadata body trickled", took, METADATA, &r.vehicle.log());
    r.backend.set_pace(&timestamp(), None);

    // No TLS handshake at all: a connect timeout, a network failure.
    r.backend.set_stall(Stall::Handshake, true);
    let ((code, message), took) = timed_check(&r.vehicle).await;
    assert_eq!(code, ErrorCode::Network.as_u32(), "{message}");
    assert_within("TLS handshake withheld", took, CONNECT, &r.vehicle.log());
    r.backend.set_stall(Stall::Handshake, false);

    // Honest again: the update installs.
    let ((code, message), _) = timed_check(&r.vehicle).await;
    assert_eq!(
        code,
        ErrorCode::Ok.as_u32(),
        "{message}\n{}",
        r.vehicle.log()
    );
    assert!(std::fs::read(&r.target).unwrap() == image, "not the image");

    // The manifest PUT never answered: the check ends, not stuck in
    // reporting.
    r.backend.set_stall(Stall::Manifest, true);
    let ((code, message), took) = timed_check(&r.vehicle).await;
    assert_eq!(code, ErrorCode::SlowRetrievalAttack.as_u32(), "{message}");
    assert!(message.contains("answer to the manifest"), "{message}");
    assert_within(
        "manifest PUT never answered",
        took,
        MANIFEST,
        &r.vehicle.log(),
    );
    r.vehicle
        .wait_for("state error", Duration::from_secs(5), |s, _| s == "error")
        .await;
    r.backend.set_stall(Stall::Manifest, false);
    // Leftovers no update refers to (a kill during reporting, an update
    // replaced before consent) are pruned at the start of the next cycle.
    let cache = r.vehicle.dir.join("cache");
    let stale = [
        cache.join("ab".repeat(32)),
        cache.join(format!("{}.part", "cd".repeat(32))),
    ];
    for f in &stale {
        std::fs::write(f, vec![0u8; 4096]).unwrap();
    }
    let ((code, message), _) = timed_check(&r.vehicle).await;
    assert_eq!(code, ErrorCode::Ok.as_u32(), "{message}");
    assert!(message.contains("up to date"), "{message}");
    for f in &stale {
        assert!(!f.exists(), "{} survived the cycle", f.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_check_ins_go_on_while_the_backend_stalls() {
    let mut r = rig(&tight()).await;
    let drop_in = r.vehicle.dir.join("otad.toml.d");
    std::fs::create_dir_all(&drop_in).unwrap();
    std::fs::write(
        drop_in.join("50-often.toml"),
        "[checkin]\ninterval_secs = 1\nbackoff_max_secs = 1\n",
    )
    .unwrap();
    let files = r.repos.publish(&[]);
    r.backend.set_files(files);
    r.backend.set_stall(Stall::Headers(timestamp()), true);
    r.backend.set_open(true);
    r.vehicle.start().await;
    // Nobody triggers a check: the scheduler keeps checking in, each time
    // cut off after RESPONSE seconds.
    let stalled = |b: &Backend| {
        b.requests_for(&timestamp())
            .iter()
            .filter(|l| l.status == 0)
            .count()
    };
    let t0 = Instant::now();
    poll(
        "three scheduled check-ins against the stalling backend",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (stalled(&r.backend) >= 3).then_some(()),
    )
    .await;
    eprintln!("three stalled check-ins in {:?}", t0.elapsed());
    r.backend.set_stall(Stall::Headers(timestamp()), false);
    // And it recovers by itself once the backend answers.
    r.vehicle
        .wait_for("an up-to-date check-in", Duration::from_secs(20), |s, c| {
            s == "idle" && c == 0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_sigterm_end_checking_downloading_and_reporting() {
    // Generous bounds: here Cancel and SIGTERM are what end the stalls.
    let mut r = rig(
        "[network]\nresponse_timeout_secs = 120\nmetadata_timeout_secs = 120\nmanifest_timeout_secs = 120\n",
    )
    .await;
    let image = image_bytes(512 * 1024, 2);
    r.repos.release(NAME, &image, 1);
    let files = r.repos.publish(&[(NAME, &image)]);
    let image_path = r.repos.path_of(NAME);
    r.vehicle.start().await;
    r.vehicle.settle_closed().await;
    r.backend.set_files(files);
    r.backend.set_open(true);
    let cancelled = ErrorCode::Cancelled.as_u32();
    let slow_image = Some(Pace {
        chunk: 8 * 1024,
        every: Duration::from_millis(100),
    });

    // Cancel in each busy phase.
    r.backend.set_stall(Stall::Headers(timestamp()), true);
    let ((code, message), took) = cancel_in(&r.vehicle, "checking", &[]).await;
    assert_eq!(code, cancelled, "{message}");
    eprintln!("Cancel in checking: Completed after {took:?}");
    r.backend.set_stall(Stall::Headers(timestamp()), false);

    r.backend.set_pace(&image_path, slow_image);
    let ((code, message), took) = cancel_in(&r.vehicle, "downloading", &[]).await;
    assert_eq!(code, cancelled, "{message}");
    eprintln!("Cancel in downloading: Completed after {took:?}");

    // SIGTERM in each busy phase; each restart resumes.
    let mut times = Vec::new();
    // Killed with part of the image on disk: the next run resumes it.
    let cache = r.vehicle.dir.join("cache");
    let part_has_bytes = || {
        std::fs::read_dir(&cache).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(".part")
                && e.metadata().is_ok_and(|m| m.len() > 0)
        })
    };
    times.push(sigterm_in(&mut r.vehicle, "downloading", part_has_bytes).await);
    // The start-up check-in of the next run stalls in checking.
    r.backend.set_stall(Stall::Headers(timestamp()), true);
    r.vehicle.start().await;
    times.push(sigterm_in(&mut r.vehicle, "checking", || true).await);
    r.backend.set_stall(Stall::Headers(timestamp()), false);
    r.backend.set_pace(&image_path, None);
    // Honest now: the start-up check-in resumes the download and installs.
    r.vehicle.start().await;
    poll(
        "the install reported",
        CHECK_TIMEOUT,
        Duration::from_millis(50),
        || (!install_results(&r.backend.manifests()).is_empty()).then_some(()),
    )
    .await;
    assert!(std::fs::read(&r.target).unwrap() == image, "not the image");
    r.vehicle
        .wait_for("idle after the install", CHECK_TIMEOUT, |s, c| {
            s == "idle" && c == 0
        })
        .await;
    // The download resumed rather than restarting from zero after the kills.
    let ranged = r
        .backend
        .requests_for(&image_path)
        .iter()
        .any(|l| l.range_from.is_some_and(|f| f > 0));
    assert!(
        ranged,
        "{:?}\n{}",
        r.backend.requests_for(&image_path),
        r.vehicle.log()
    );

    r.backend.set_stall(Stall::Manifest, true);
    let ((code, message), took) = cancel_in(&r.vehicle, "reporting", &["installed on"]).await;
    assert_eq!(code, cancelled, "{message}");
    eprintln!("Cancel in reporting: Completed after {took:?}");
    times.push(sigterm_in(&mut r.vehicle, "reporting", || true).await);
    r.backend.set_stall(Stall::Manifest, false);

    // A newer honest release still goes in after all of it: the start-up
    // check-in of the next run installs it.
    let v2 = image_bytes(32 * 1024, 3);
    r.repos.release(NAME, &v2, 2);
    let files = r.repos.publish(&[(NAME, &v2)]);
    r.backend.set_files(files);
    r.vehicle.start().await;
    poll(
        "v2 installed",
        CHECK_TIMEOUT,
        Duration::from_millis(50),
        || (std::fs::read(&r.target).ok()? == v2).then_some(()),
    )
    .await;
    eprintln!("SIGTERM exit times (downloading, checking, reporting): {times:?}");
}

/// `[download] timeout_secs` of the image-stall tests, and the tries per
/// image fetch (`DEFAULT_ATTEMPTS`, first included).
const IMAGE_HEADERS: u64 = 2;
const IMAGE_ATTEMPTS: u64 = 3;

fn tight_image() -> String {
    format!(
        "{}[download]\ntimeout_secs = {IMAGE_HEADERS}\nmin_rate_bytes_per_sec = 1024\nmin_rate_window_secs = 1\n",
        tight()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_stalls_is_slow_retrieval_and_a_stalled_manifest_is_reported_next() {
    let mut r = rig(&tight_image()).await;
    let image = image_bytes(64 * 1024, 4);
    r.repos.release(NAME, &image, 1);
    let files = r.repos.publish(&[(NAME, &image)]);
    let image_path = r.repos.path_of(NAME);
    r.vehicle.start().await;
    r.vehicle.settle_closed().await;
    r.backend.set_files(files);
    r.backend.set_open(true);

    // The image's response headers never sent: each try is cut off after
    // IMAGE_HEADERS seconds, and after the last the stall is the attack.
    r.backend
        .set_stall(Stall::Headers(image_path.clone()), true);
    let ((code, message), took) = timed_check(&r.vehicle).await;
    assert_eq!(code, ErrorCode::SlowRetrievalAttack.as_u32(), "{message}");
    assert!(message.contains("response headers"), "{message}");
    let bound = Duration::from_secs(IMAGE_HEADERS * IMAGE_ATTEMPTS);
    // Pauses between tries: 200 ms, 400 ms.
    assert!(
        took >= bound && took <= bound + Duration::from_millis(600) + SLACK,
        "outcome after {took:?}, bound {bound:?}\n{}",
        r.vehicle.log()
    );
    eprintln!("image headers never sent: outcome {took:?} (bound {bound:?} + pauses)");
    let stalled = r
        .backend
        .requests_for(&image_path)
        .iter()
        .filter(|l| l.status == 0)
        .count();
    assert_eq!(stalled as u64, IMAGE_ATTEMPTS);
    let last = r.backend.manifests().last().cloned().unwrap();
    assert!(
        attacks_detected(&last).contains("slow-retrieval"),
        "{last:#}"
    );
    r.backend
        .set_stall(Stall::Headers(image_path.clone()), false);

    // The image body trickled (4 bytes every 500 ms, below 1024 bytes/s).
    r.backend.set_pace(
        &image_path,
        Some(Pace {
            chunk: 4,
            every: Duration::from_millis(500),
        }),
    );
    let ((code, message), took) = timed_check(&r.vehicle).await;
    assert_eq!(code, ErrorCode::SlowRetrievalAttack.as_u32(), "{message}");
    assert!(message.contains("slow retrieval"), "{message}");
    assert!(took <= Duration::from_secs(1) + SLACK, "{took:?}");
    eprintln!("image body trickled: outcome {took:?} (window 1 s)");
    r.backend.set_pace(&image_path, None);

    // Honest: it installs, and that manifest carries the attacks so far.
    let ((code, message), _) = timed_check(&r.vehicle).await;
    assert_eq!(code, 0, "{message}\n{}", r.vehicle.log());
    assert!(std::fs::read(&r.target).unwrap() == image, "not the image");

    // A manifest PUT never answered: the attack goes into the next
    // manifest, and only that one.
    r.backend.set_stall(Stall::Manifest, true);
    let ((code, message), _) = timed_check(&r.vehicle).await;
    assert_eq!(code, ErrorCode::SlowRetrievalAttack.as_u32(), "{message}");
    r.backend.set_stall(Stall::Manifest, false);
    let sent = r.backend.manifests().len();
    let ((code, message), _) = timed_check(&r.vehicle).await;
    assert_eq!(code, 0, "{message}");
    let manifests = r.backend.manifests();
    assert_eq!(manifests.len(), sent + 1);
    assert!(
        attacks_detected(&manifests[sent]).contains("slow-retrieval"),
        "{:#}",
        manifests[sent]
    );
    let ((code, message), _) = timed_check(&r.vehicle).await;
    assert_eq!(code, 0, "{message}");
    let last = r.backend.manifests().last().cloned().unwrap();
    assert_eq!(attacks_detected(&last), "", "{last:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_check_ins_go_on_while_the_image_stalls() {
    let mut r = rig(&tight_image()).await;
    let drop_in = r.vehicle.dir.join("otad.toml.d");
    std::fs::create_dir_all(&drop_in).unwrap();
    std::fs::write(
        drop_in.join("50-often.toml"),
        "[checkin]\ninterval_secs = 1\nbackoff_max_secs = 1\n",
    )
    .unwrap();
    let image = image_bytes(32 * 1024, 5);
    r.repos.release(NAME, &image, 1);
    let image_path = r.repos.path_of(NAME);
    r.backend.set_files(r.repos.publish(&[(NAME, &image)]));
    r.backend
        .set_stall(Stall::Headers(image_path.clone()), true);
    r.backend.set_open(true);
    r.vehicle.start().await;
    // Nobody triggers a check: two scheduled cycles each try the image
    // IMAGE_ATTEMPTS times and end.
    poll(
        "two scheduled check-ins against the stalling image",
        Duration::from_secs(40),
        Duration::from_millis(100),
        || {
            let n = r
                .backend
                .requests_for(&image_path)
                .iter()
                .filter(|l| l.status == 0)
                .count() as u64;
            (n >= 2 * IMAGE_ATTEMPTS).then_some(())
        },
    )
    .await;
    r.backend.set_stall(Stall::Headers(image_path), false);
    poll(
        "the image installed by a scheduled check-in",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (std::fs::read(&r.target).ok()? == image).then_some(()),
    )
    .await;
}
