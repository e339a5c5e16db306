//! SIGTERM while `installing` (issue 11: "SIGTERM ends the daemon within a
//! bounded, documented time in every phase ... install keeps its documented
//! point of no return"; `docs/configuration.md`, **Stopping**): the real
//! `secureev-otad` with a `command` installer that holds while `<dir>/hold`
//! exists. `e2e_stall.rs` covers checking, downloading and reporting.
//!
//! - An install that finishes after the SIGTERM is let finish: the daemon
//!   is still running (and the installer not cut) after it logged "shutting
//!   down", exits 0 once the installer is done, and the install is recorded
//!   and reported once after the restart. No manifest carried its result
//!   before the exit (SIGTERM cuts the report step); it is kept in the state
//!   directory and the first manifest after the restart carries it (success,
//!   `installed`), exactly once.
//! - The same with an installer that fails after the SIGTERM: the first
//!   manifest after the restart carries the failure (`install-failed`, the
//!   installer's exit status), exactly once.
//! - An install that does not finish: the daemon exits 0 after
//!   `SHUTDOWN_GRACE` (60 s, below the unit's `TimeoutStopSec=90s`), not
//!   before and not much later; the journal settles it at the next start,
//!   and the update installs.
#![allow(clippy::unwrap_used)]

mod e2e_common;

use e2e_common::*;
use secureev_daemon::run::SHUTDOWN_GRACE;
use secureev_daemon::store::Store;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NAME: &str = "hu/rootfs-3.img";

/// An installer command that logs each start, holds while `<dir>/hold`
/// exists, then installs atomically (copy beside, rename) and logs `done`,
/// or, while `<dir>/fail` exists, logs `failed` and exits 3.
fn held_installer(dir: &Path) -> PathBuf {
    let script = dir.join("install-image.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
set -e
d="{d}"
echo "start" >> "$d/installer.log"
while [ -e "$d/hold" ]; do sleep 0.05; done
if [ -e "$d/fail" ]; then echo "failed" >> "$d/installer.log"; exit 3; fi
cp "$1" "$d/installed.tmp"
mv "$d/installed.tmp" "$d/installed.img"
echo "done" >> "$d/installer.log"
"#,
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn runs(dir: &Path) -> (usize, usize) {
    let log = std::fs::read_to_string(dir.join("installer.log")).unwrap_or_default();
    (
        log.lines().filter(|l| *l == "start").count(),
        log.lines().filter(|l| *l == "done").count(),
    )
}

fn journal(vehicle: &Vehicle) -> Option<secureev_daemon::install::JournalRecord> {
    Store::open(vehicle.dir.join("state"))
        .unwrap()
        .journal()
        .unwrap()
}

struct Rig {
    _dir: tempfile::TempDir,
    root: PathBuf,
    backend: Backend,
    repos: Repos,
    image: Vec<u8>,
}

/// The daemon started against a backend that assigns [`NAME`]; its start-up
/// check-in downloads it and the installer starts and holds.
async fn installing() -> (Rig, Vehicle) {
    installing_with(false).await
}

/// [`installing`]; `fail`: the installer fails once released.
async fn installing_with(fail: bool) -> (Rig, Vehicle) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    if fail {
        std::fs::write(root.join("fail"), "").unwrap();
    }
    let backend = Backend::start().await;
    let mut repos = Repos::new();
    let image = image_bytes(256 * 1024, 91);
    repos.release(NAME, &image, 3);
    backend.set_files(repos.publish(&[(NAME, &image)]));
    std::fs::write(root.join("hold"), "").unwrap();
    let mut vehicle = Vehicle::new(
        &root.join("vehicle"),
        &backend,
        &repos,
        &InstallMode::Command(held_installer(&root)),
        "",
    );
    vehicle.start().await;
    poll(
        "the installer to start",
        Duration::from_secs(60),
        Duration::from_millis(10),
        || (runs(&root).0 == 1).then_some(()),
    )
    .await;
    let rig = Rig {
        _dir: dir,
        root,
        backend,
        repos,
        image,
    };
    (rig, vehicle)
}

/// SIGTERM the daemon on a blocking thread (it waits up to `timeout` for the
/// exit); returns the vehicle, how long the exit took and the exit status.
fn sigterm(
    vehicle: Vehicle,
    timeout: Duration,
) -> tokio::task::JoinHandle<(Vehicle, Duration, std::process::ExitStatus)> {
    tokio::task::spawn_blocking(move || {
        let mut vehicle = vehicle;
        let (took, status) = vehicle.terminate(timeout);
        (vehicle, took, status)
    })
}

/// The installation result kept in the state directory for the next
/// manifest, if any.
fn unreported(vehicle: &Vehicle) -> Option<secureev_daemon::store::UnreportedResult> {
    Store::open(vehicle.dir.join("state"))
        .unwrap()
        .unreported_result()
        .unwrap()
}

/// SIGTERM while the installer holds; release it once the daemon acted on
/// the signal; the daemon exits 0 when the installer ends, having sent no
/// manifest with an installation result (SIGTERM cut the report step).
async fn sigterm_then_release(r: &Rig, vehicle: Vehicle) -> Vehicle {
    let log_path = vehicle.log_path.clone();
    let term = sigterm(vehicle, SHUTDOWN_GRACE + Duration::from_secs(20));
    poll(
        "the daemon to act on SIGTERM",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("shutting down")
                .then_some(())
        },
    )
    .await;
    // Past the signal: the daemon waits, the installer was not cut.
    assert!(!term.is_finished(), "the daemon exited mid-install");
    assert_eq!(runs(&r.root), (1, 0));
    let released = Instant::now();
    std::fs::remove_file(r.root.join("hold")).unwrap();
    let (vehicle, took, status) = term.await.unwrap();
    assert!(status.success(), "{status}\n{}", vehicle.log());
    assert!(took < SHUTDOWN_GRACE, "{took:?}");
    eprintln!(
        "SIGTERM while installing: exit {:?} after the signal, {:?} after the installer was released",
        took,
        released.elapsed()
    );
    assert!(
        install_results(&r.backend.manifests()).is_empty(),
        "a manifest went out after SIGTERM: {:#?}",
        r.backend.manifests()
    );
    vehicle
}

/// After a restart: a manifest names the image as installed (the install
/// result too, exactly once, as a success with code `result`, when it is
/// reported), and a further check finds nothing to do.
async fn assert_installed_once(
    r: &Rig,
    vehicle: &Vehicle,
    installer_runs: (usize, usize),
    result: Option<&str>,
) {
    let sha = sha256_hex(&r.image);
    poll(
        "a manifest naming the installed image",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            r.backend
                .manifests()
                .iter()
                .any(|m| {
                    let i = &primary_report(m)["installed_image"];
                    i["filepath"] == NAME && i["fileinfo"]["hashes"]["sha256"] == sha.as_str()
                })
                .then_some(())
        },
    )
    .await;
    let results = install_results(&r.backend.manifests());
    if let Some(code) = result {
        assert_eq!(results.len(), 1, "{results:#?}");
        assert_eq!(results[0]["success"], true, "{results:#?}");
        assert_eq!(results[0]["code"], code, "{results:#?}");
    } else {
        assert!(results.iter().all(|r| r["success"] == true), "{results:#?}");
    }
    let (code, message) = vehicle
        .check_skipping(Duration::from_secs(30), &["installed on"])
        .await;
    // Delivered once: the check's manifest no longer carries it.
    assert_eq!(install_results(&r.backend.manifests()), results);
    assert!(unreported(vehicle).is_none(), "{:?}", unreported(vehicle));
    assert_eq!(
        (code, message.as_str()),
        (0, "up to date"),
        "{}",
        vehicle.log()
    );
    assert_eq!(runs(&r.root), installer_runs, "installed again");
    assert_eq!(
        std::fs::read(r.root.join("installed.img")).unwrap(),
        r.image
    );
    assert!(journal(vehicle).is_none());
    // From the verified cache: downloaded once.
    assert_eq!(r.backend.requests_for(&r.repos.path_of(NAME)).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_installing_lets_the_install_finish_then_exits() {
    let (r, vehicle) = installing().await;
    let mut vehicle = sigterm_then_release(&r, vehicle).await;
    assert_eq!(runs(&r.root), (1, 1));
    // Recorded before the exit: nothing for the journal to settle; the
    // result waits in the state directory for the next manifest.
    assert!(journal(&vehicle).is_none(), "{}", vehicle.log());
    let kept = unreported(&vehicle).expect("the result kept for the next manifest");
    assert!(kept.success && kept.code == "installed", "{kept:?}");
    vehicle.start().await;
    assert_installed_once(&r, &vehicle, (1, 1), Some("installed")).await;
    // The very first manifest after the restart carried it.
    let first = &r.backend.manifests()[0];
    let result = &primary_report(first)["installation_result"];
    assert_eq!(result["success"], true, "{first:#}");
    assert!(
        result["message"].as_str().unwrap_or_default().contains(HU),
        "{first:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_failing_after_sigterm_is_reported_after_the_restart() {
    let (mut r, vehicle) = installing_with(true).await;
    let mut vehicle = sigterm_then_release(&r, vehicle).await;
    let log = std::fs::read_to_string(r.root.join("installer.log")).unwrap();
    assert_eq!(log.lines().filter(|l| *l == "failed").count(), 1, "{log}");
    assert!(journal(&vehicle).is_none(), "{}", vehicle.log());
    let kept = unreported(&vehicle).expect("the failure kept for the next manifest");
    assert!(!kept.success && kept.code == "install-failed", "{kept:?}");
    // The Director withdrew the assignment meanwhile: the check-in after
    // the restart installs nothing, so its manifest can only carry the
    // failure of the install SIGTERM let finish.
    r.repos.director.targets.clear();
    r.backend.set_files(r.repos.publish(&[]));
    vehicle.start().await;
    poll(
        "a manifest after the restart",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || (!r.backend.manifests().is_empty()).then_some(()),
    )
    .await;
    let results = install_results(&r.backend.manifests());
    assert_eq!(results.len(), 1, "{results:#?}\n{}", vehicle.log());
    assert_eq!(results[0]["success"], false, "{results:#?}");
    assert_eq!(results[0]["code"], "install-failed", "{results:#?}");
    assert!(
        results[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(NAME),
        "{results:#?}"
    );
    // Exactly once: cleared once the Director accepted it.
    let (code, message) = vehicle.check(Duration::from_secs(30)).await;
    assert_eq!((code, message.as_str()), (0, "up to date"));
    assert_eq!(install_results(&r.backend.manifests()).len(), 1);
    assert!(unreported(&vehicle).is_none());
    assert_eq!(runs(&r.root), (1, 0), "installed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_an_install_hangs_exits_after_the_grace_and_the_journal_settles_it() {
    let (r, vehicle) = installing().await;
    let (mut vehicle, took, status) = sigterm(vehicle, SHUTDOWN_GRACE + Duration::from_secs(20))
        .await
        .unwrap();
    let log = vehicle.log();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        took >= SHUTDOWN_GRACE - Duration::from_secs(1)
            && took < SHUTDOWN_GRACE + Duration::from_secs(10),
        "exit {took:?} after SIGTERM, grace {SHUTDOWN_GRACE:?}\n{log}"
    );
    assert!(log.contains("did not finish in time"), "{log}");
    eprintln!("SIGTERM with a hanging install: exit after {took:?}");
    assert_eq!(runs(&r.root), (1, 0));
    assert!(
        journal(&vehicle).is_some(),
        "the journal keeps the cut install"
    );

    // The installer goes on (KillMode=mixed: SIGTERM reached the daemon
    // only) and finishes; the restarted daemon cannot tell that a command
    // finished, settles the journal as interrupted and installs again.
    std::fs::remove_file(r.root.join("hold")).unwrap();
    poll(
        "the orphaned installer to finish",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || (runs(&r.root).1 == 1).then_some(()),
    )
    .await;
    vehicle.start().await;
    assert_installed_once(&r, &vehicle, (2, 2), Some("installed")).await;
    assert!(
        vehicle.log().contains("recovered an interrupted install"),
        "{}",
        vehicle.log()
    );
}
