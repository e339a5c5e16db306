//! `Progress` as a UI sees it (issue 13), through the real `secureev-otad` on
//! a private `dbus-daemon`: a check-in that installs the head unit's image
//! with the `command` installer, which reports its progress on
//! `$SECUREEV_PROGRESS_FD`. Every `PropertiesChanged` of `Progress` is
//! recorded. The installer waits for the test to acknowledge each of its
//! steps (an `ack-N` file, written once the step's bytes were seen on the
//! bus), so intermediate values are proven published, not just written.
#![allow(clippy::unwrap_used)]

mod e2e_common;

use e2e_common::*;
use futures_util::StreamExt;
use secureev_dbus::{ErrorCode, Progress};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const NAME: &str = "hu/rootfs-3.img";
const LEN: usize = 256 * 1024;
const STEPS: u64 = 3;

/// The installer: `bytes k*L/4 L` for k = 1..=3, each acknowledged by the
/// test (bounded wait, exit 7 without it); then, unless `fail` exists,
/// copies the image to `installed` and exits 0, else exits 1 with a message.
fn installer(dir: &Path) -> PathBuf {
    let d = dir.display();
    let body = format!(
        r#"#!/bin/sh
p=/proc/self/fd/$SECUREEV_PROGRESS_FD
L=$SECUREEV_LENGTH
echo "percent 0" > "$p"
echo "not a progress line" > "$p"
for k in 1 2 3; do
  echo "bytes $((L * k / 4)) $L" > "$p"
  i=0
  while [ ! -e "{d}/ack-$k" ]; do
    i=$((i + 1)); [ "$i" -gt 6000 ] && echo "no ack $k" >&2 && exit 7
    sleep 0.01
  done
done
if [ -e "{d}/fail" ]; then echo "flash block 9 failed" >&2; exit 1; fi
cp "$1" "{d}/installed"
"#
    );
    let p = dir.join("install.sh");
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

struct Run {
    seen: Vec<Progress>,
    /// `LastError` values, each with how many `Progress` changes came before.
    errors: Vec<(usize, String)>,
    code: u32,
    message: String,
}

/// Start the vehicle (policy `auto`), let the start-up check-in fail on the
/// closed backend, publish the update and run one check-in, recording every
/// `Progress` change until that operation's `OperationCompleted`.
async fn run(dir: &Path, fail: bool) -> (Run, Vehicle, Vec<u8>) {
    let backend = Backend::start().await;
    backend.set_open(false);
    let mut repos = Repos::new();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    if fail {
        std::fs::write(work.join("fail"), b"").unwrap();
    }
    let mut vehicle = Vehicle::new(
        &dir.join("vehicle"),
        &backend,
        &repos,
        &InstallMode::Command(installer(&work)),
        "",
    );
    let image = image_bytes(LEN, 11);
    repos.release(NAME, &image, 3);
    let files = repos.publish(&[(NAME, &image)]);
    vehicle.start().await;
    vehicle.settle_closed().await;
    backend.set_files(files);
    backend.set_open(true);

    let r = record(&vehicle, &work).await;
    (r, vehicle, image)
}

/// Every change of `Progress` (and of `LastError`, as `Err`) in order, from
/// a `CheckForUpdates` to that operation's `OperationCompleted`;
/// acknowledges the installer's steps on the way.
async fn record(vehicle: &Vehicle, work: &Path) -> Run {
    let proxy = vehicle.proxy().await;
    let props = zbus::fdo::PropertiesProxy::builder(proxy.inner().connection())
        .destination(secureev_dbus::BUS_NAME)
        .unwrap()
        .path(secureev_dbus::OBJECT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut changes = props.receive_properties_changed().await.unwrap();
    let mut completed = proxy.receive_operation_completed().await.unwrap();
    let deadline = tokio::time::Instant::now() + scaled(Duration::from_secs(60));
    // A retry of the daemon's own may still run: wait for it, ask again.
    let id = loop {
        match proxy.check_for_updates(HashMap::new()).await {
            Ok(id) => break id,
            Err(secureev_dbus::OtaError::Busy(_)) => {
                tokio::time::timeout_at(deadline, completed.next())
                    .await
                    .expect("still busy")
                    .unwrap();
            }
            Err(e) => panic!("CheckForUpdates: {e}"),
        }
    };
    let mut seen = Vec::new();
    let mut errors = Vec::new();
    let mut acked = 0;
    let (code, message) = loop {
        // Biased: both streams are fed in the bus's order, so the changes
        // queued before the OperationCompleted are read first.
        tokio::select! {
            biased;
            c = changes.next() => {
                let c = c.expect("signal stream ended");
                let args = c.args().unwrap();
                let changed = args.changed_properties();
                if let Some(v) = changed.get("LastError") {
                    let e: String = v.try_to_owned().unwrap().try_into().unwrap();
                    errors.push((seen.len(), e));
                }
                if let Some(v) = changed.get("Progress") {
                    let p = Progress::try_from(v.try_to_owned().unwrap()).unwrap();
                    // Acknowledge each installer step once its bytes show.
                    while acked < STEPS
                        && p.phase == "installing"
                        && p.bytes_done >= LEN as u64 * (acked + 1) / 4
                    {
                        acked += 1;
                        let ack = work.join(format!("ack-{acked}"));
                        if !ack.exists() {
                            std::fs::write(ack, b"").unwrap();
                        }
                    }
                    seen.push(p);
                }
            }
            s = completed.next() => {
                let s = s.expect("signal stream ended");
                let args = s.args().unwrap();
                if args.id == id {
                    break (args.code, args.message);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                panic!("no OperationCompleted for {id}; progress {seen:#?}\n{}", vehicle.log())
            }
        }
    };
    assert_eq!(acked, STEPS, "{seen:#?}\n{}", vehicle.log());
    Run {
        seen,
        errors,
        code,
        message,
    }
}

fn percents(seen: &[Progress]) -> Vec<u32> {
    seen.iter().map(|p| p.percent).collect()
}

/// Monotonic over the whole operation, from 0, with the installer's three
/// steps each visible strictly inside the `installing` span (45–90), and 100
/// at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_installs_progress_reaches_the_bus_monotonic_to_100() {
    let dir = tempfile::tempdir().unwrap();
    let (r, vehicle, image) = run(dir.path(), false).await;
    assert_eq!(r.code, ErrorCode::Ok.as_u32(), "{}", r.message);
    assert!(r.message.contains("installed on"), "{}", r.message);
    assert_eq!(
        std::fs::read(dir.path().join("work/installed")).unwrap(),
        image
    );
    let p = percents(&r.seen);
    assert_eq!(p.first(), Some(&0), "reset at the start: {p:?}");
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "not monotonic: {p:?}");
    assert_eq!(p.last(), Some(&100), "{:#?}", r.seen);
    // Each acknowledged step is on the bus as its own value: 45 + 45 k / 4.
    let installing: Vec<(u32, u64)> = r
        .seen
        .iter()
        .filter(|p| p.phase == "installing" && p.bytes_total == LEN as u64)
        .map(|p| (p.percent, p.bytes_done))
        .collect();
    for k in 1..=STEPS {
        let bytes = LEN as u64 * k / 4;
        let percent = 45 + (45 * k / 4) as u32;
        assert!(
            installing.contains(&(percent, bytes)),
            "step {k} ({percent} %, {bytes} B) not seen: {installing:?}"
        );
    }
    // One percent scale over the phases (a fast phase may be coalesced by
    // the 100 ms throttle): it starts in `checking`.
    assert_eq!(r.seen[0].phase, "checking", "{:#?}", r.seen);
    let (_, code, last) = vehicle.status().await;
    assert_eq!((code, last.as_str()), (0, ""));
}

/// The installer fails after two steps: `Progress` stays where it stopped
/// (below 90, never 100), says `error` with the failure; `LastError` names it.
/// The next operation starts again from 0 with `LastError` cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_install_leaves_progress_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let (r, vehicle, _) = run(dir.path(), true).await;
    assert_eq!(r.code, ErrorCode::InstallFailed.as_u32(), "{}", r.message);
    let p = percents(&r.seen);
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "not monotonic: {p:?}");
    let last = r.seen.last().unwrap();
    assert_eq!(last.phase, "error", "{last:?}");
    assert!(
        last.percent >= 45 + 45 * 3 / 4 && last.percent < 90,
        "{last:?}"
    );
    assert!(last.message.contains("flash block 9 failed"), "{last:?}");
    assert!(!p.contains(&100), "{p:?}");
    let proxy = vehicle.proxy().await;
    assert_eq!(proxy.progress().await.unwrap(), *last);
    let (state, code, error) = vehicle.status().await;
    assert_eq!((state.as_str(), code), ("error", 30), "{error}");
    assert!(error.contains("flash block 9 failed"), "{error}");
    assert!(!dir.path().join("work/installed").exists());

    // The next operation: the installer succeeds now. `LastError` is
    // cleared with (or before) its first `Progress`, and percent starts
    // again below where the failure stopped (the image is cached, so 0 in
    // `checking` may be coalesced with `installing` by the throttle; the
    // installer waits for fresh acknowledgements).
    std::fs::remove_file(dir.path().join("work/fail")).unwrap();
    for k in 1..=STEPS {
        std::fs::remove_file(dir.path().join(format!("work/ack-{k}"))).unwrap();
    }
    let r = record(&vehicle, &dir.path().join("work")).await;
    assert_eq!(r.code, 0, "{}", r.message);
    let first = r.seen.first().expect("no Progress in the second operation");
    assert!(first.percent < last.percent, "not reset: {first:?}");
    assert!(
        r.errors.iter().any(|(at, e)| e.is_empty() && *at <= 1),
        "LastError not cleared when the operation began: {:?}",
        r.errors
    );
    assert_eq!(r.seen.last().unwrap().percent, 100);
}
