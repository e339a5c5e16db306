//! The D-Bus control plane attacked as a local app would attack it: the real
//! `secureev-otad` on a private `dbus-daemon` with the in-test TLS backend
//! (`e2e_common`). Each scenario has its own directory, backend, bus and
//! daemon.
#![allow(clippy::unwrap_used)]

mod e2e_common;

use e2e_common::*;
use secureev_dbus::ErrorCode;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
const FACTORY: &[u8] = b"factory image, release counter 0";
const NAME: &str = "hu/rootfs-2.img";

struct Scenario {
    _dir: tempfile::TempDir,
    backend: Backend,
    repos: Repos,
    vehicle: Vehicle,
    target: PathBuf,
}

async fn scenario() -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let repos = Repos::new();
    let installed = dir.path().join("installed");
    std::fs::create_dir_all(&installed).unwrap();
    let target = installed.join("image.bin");
    std::fs::write(&target, FACTORY).unwrap();
    let vehicle = Vehicle::new(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(target.clone()),
        "",
    );
    Scenario {
        _dir: dir,
        backend,
        repos,
        vehicle,
        target,
    }
}

/// Everything a D-Bus client can read from the daemon, as one string: every
/// property, the history, and the extra texts given (signals, errors).
async fn everything_visible(v: &Vehicle, extra: &[String]) -> String {
    let p = v.proxy().await;
    let props = zbus::fdo::PropertiesProxy::builder(p.inner().connection())
        .destination(secureev_dbus::BUS_NAME)
        .unwrap()
        .path(secureev_dbus::OBJECT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let all = props
        .get_all(zbus::names::InterfaceName::from_static_str_unchecked(
            secureev_dbus::INTERFACE,
        ))
        .await
        .unwrap();
    let history = p.get_history().await.unwrap();
    format!("{all:?}\n{history:?}\n{extra:?}")
}

/// A member of the inhibit directory's group symlinks the Primary's signing
/// key into it and adds a FIFO. Neither is read: both hold the install back
/// (fail closed), the daemon keeps answering, and no reply, property, signal
/// or history entry carries a byte of the key. Regression test for the key
/// leak through `read_to_string` of a followed symlink, and the FIFO hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_to_a_key_and_a_fifo_in_the_inhibit_dir_are_refused_unread() {
    let mut s = scenario().await;
    let inhibit = s.vehicle.dir.join("inhibit");
    std::fs::create_dir_all(&inhibit).unwrap();
    let key = s.vehicle.dir.join("keys").join("primary-signing.pem");
    let key_text = std::fs::read_to_string(&key).unwrap();
    std::os::unix::fs::symlink(&key, inhibit.join("key-link")).unwrap();
    let fifo = inhibit.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());

    let image = image_bytes(64 * 1024, 7);
    s.repos.release(NAME, &image, 2);
    let files = s.repos.publish(&[(NAME, &image)]);
    let (code, message) = s
        .vehicle
        .start_then_check(&s.backend, files, CHECK_TIMEOUT)
        .await;
    assert_eq!(
        code,
        ErrorCode::Ok.as_u32(),
        "{message}\n{}",
        s.vehicle.log()
    );
    assert!(message.contains("install held back"), "{message}");
    assert!(
        message.contains("key-link") && message.contains("fifo"),
        "{message}"
    );
    // Nothing installed.
    assert_eq!(std::fs::read(&s.target).unwrap(), FACTORY);

    let proxy = s.vehicle.proxy().await;
    let pre = proxy.preconditions().await.unwrap();
    for name in ["inhibit/key-link", "inhibit/fifo"] {
        let p = pre
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} in {pre:?}"));
        assert!(!p.satisfied && p.reason.starts_with("(refused:"), "{p:?}");
    }
    // Consent does not get around it, and the refusal names no content.
    let id = proxy.pending_update_id().await.unwrap();
    let refused = proxy.install(&id, HashMap::new()).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::PreconditionFailed, "{refused}");

    let seen = everything_visible(&s.vehicle, &[message.clone(), refused.to_string()]).await;
    for line in key_text.lines().filter(|l| !l.is_empty()) {
        assert!(
            !seen.contains(line),
            "key material {line:?} visible over D-Bus:\n{seen}"
        );
    }
    assert!(!seen.contains("PRIVATE KEY"), "{seen}");

    // The FIFO never wedged the daemon: with the entries gone the update
    // installs at the next check.
    std::fs::remove_file(inhibit.join("key-link")).unwrap();
    std::fs::remove_file(&fifo).unwrap();
    let (code, message) = s.vehicle.check(CHECK_TIMEOUT).await;
    assert_eq!(code, ErrorCode::Ok.as_u32(), "{message}");
    assert!(message.contains("installed on"), "{message}");
    assert_eq!(std::fs::read(&s.target).unwrap(), image);
}

/// `busctl` or `gdbus` run as another user (uid:gid, no supplementary
/// groups) against the vehicle's bus: `(success, stdout + stderr)`.
fn as_user(uid: u32, tool: &str, bus: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(tool);
    match tool {
        "busctl" => cmd.arg(format!("--address={bus}")),
        _ => cmd.args(["call", "--address", bus]),
    };
    let out = cmd.args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Root is needed to switch uid; CI runs as root. Outside CI a non-root run
/// says so and skips; in CI it fails.
fn root_or_skip(test: &str) -> bool {
    if rustix::process::getuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root (distinct uids) and CI runs as root"
    );
    eprintln!("skipping {test}: needs root to run clients as other users");
    false
}

/// A vehicle service (uid 1, group `daemon`, given the preconditions role)
/// reports `parked=false`. A media app (uid 65534, group `nogroup`, also
/// given that role but not consent) can neither clear `parked` (it belongs
/// to uid 1) nor consent to the install: both refused with NotPermitted
/// naming why, from `busctl` and `gdbus` as independent clients. Only the
/// owner's `parked=true` lets the install run. Regression test for the
/// media app that cleared `parked` and installed while the vehicle moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_app_cannot_clear_a_vehicle_services_precondition_nor_consent() {
    if !root_or_skip("a_media_app_cannot_clear_a_vehicle_services_precondition_nor_consent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let mut repos = Repos::new();
    let installed = dir.path().join("installed");
    std::fs::create_dir_all(&installed).unwrap();
    let target = installed.join("image.bin");
    std::fs::write(&target, FACTORY).unwrap();
    let mut vehicle = Vehicle::new(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(target.clone()),
        // Inside [dbus]: both test users hold the preconditions role only.
        "precondition_groups = [\"daemon\", \"nogroup\"]\nconsent_groups = [\"secureev-nobody-has-this\"]",
    );
    // Let the other users reach the bus socket.
    let bus = vehicle.bus.address().to_owned();
    let socket = bus
        .strip_prefix("unix:path=")
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        std::path::Path::new(&socket).parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    vehicle.start().await;
    vehicle.settle_closed().await;

    let (ok, out) = as_user(
        1,
        "busctl",
        &bus,
        &[
            "call",
            "io.secureev.Ota1",
            "/io/secureev/Ota1",
            "io.secureev.Ota1",
            "SetPrecondition",
            "sbs",
            "parked",
            "false",
            "vehicle moving",
        ],
    );
    assert!(ok, "the vehicle service sets parked: {out}");

    let image = image_bytes(64 * 1024, 9);
    repos.release(NAME, &image, 2);
    backend.set_files(repos.publish(&[(NAME, &image)]));
    backend.set_open(true);
    let (code, message) = vehicle.check(CHECK_TIMEOUT).await;
    assert_eq!(code, ErrorCode::Ok.as_u32(), "{message}");
    assert!(
        message.contains("install held back") && message.contains("parked"),
        "{message}"
    );

    let (ok, out) = as_user(
        65534,
        "busctl",
        &bus,
        &[
            "call",
            "io.secureev.Ota1",
            "/io/secureev/Ota1",
            "io.secureev.Ota1",
            "SetPrecondition",
            "sbs",
            "parked",
            "true",
            "I am parked",
        ],
    );
    assert!(
        !ok && out.contains("set by uid 1"),
        "media app cleared parked: {out}"
    );
    let id = vehicle.proxy().await.pending_update_id().await.unwrap();
    let (ok, out) = as_user(
        65534,
        "gdbus",
        &bus,
        &[
            "--dest",
            "io.secureev.Ota1",
            "--object-path",
            "/io/secureev/Ota1",
            "--method",
            "io.secureev.Ota1.Install",
            &id,
            "{}",
        ],
    );
    assert!(
        !ok && out.contains("io.secureev.Ota1.Error.NotPermitted") && out.contains("consent role"),
        "media app consented: {out}"
    );
    assert_eq!(
        std::fs::read(&target).unwrap(),
        FACTORY,
        "installed while not parked"
    );
    let pre = vehicle.proxy().await.preconditions().await.unwrap();
    let parked = pre.iter().find(|p| p.name == "parked").unwrap();
    assert!(!parked.satisfied, "{pre:?}");

    // The owner may: the held install proceeds (policy auto).
    let (ok, out) = as_user(
        1,
        "busctl",
        &bus,
        &[
            "call",
            "io.secureev.Ota1",
            "/io/secureev/Ota1",
            "io.secureev.Ota1",
            "SetPrecondition",
            "sbs",
            "parked",
            "true",
            "",
        ],
    );
    assert!(ok, "{out}");
    poll(
        "the install after parked=true",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || (std::fs::read(&target).unwrap() == image).then_some(()),
    )
    .await;
}

/// `[install] required_preconditions = ["parked"]`: an install never starts
/// while `parked` was never reported, and a report survives a restart (a
/// daemon that forgot `parked=false` would fail open). Only the report
/// `parked=true` lets it run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_preconditions_fail_closed_and_survive_a_restart() {
    let mut s = scenario().await;
    let text = std::fs::read_to_string(&s.vehicle.config).unwrap();
    std::fs::write(
        &s.vehicle.config,
        text.replace(
            "policy = \"auto\"\n",
            "policy = \"auto\"\nrequired_preconditions = [\"parked\"]\n",
        ),
    )
    .unwrap();
    let image = image_bytes(64 * 1024, 11);
    s.repos.release(NAME, &image, 2);
    let files = s.repos.publish(&[(NAME, &image)]);
    let (code, message) = s
        .vehicle
        .start_then_check(&s.backend, files, CHECK_TIMEOUT)
        .await;
    assert_eq!(code, ErrorCode::Ok.as_u32(), "{message}");
    assert!(
        message.contains("parked: required, never reported"),
        "{message}"
    );
    assert_eq!(std::fs::read(&s.target).unwrap(), FACTORY);

    let proxy = s.vehicle.proxy().await;
    proxy
        .set_precondition("parked", false, "vehicle moving")
        .await
        .unwrap();
    s.vehicle.kill();
    s.vehicle.start().await;
    // The start-up check-in finds the update and holds it back again.
    s.vehicle
        .wait_for(
            "the start-up check to hold the install",
            CHECK_TIMEOUT,
            |st, _| st == "awaiting-consent",
        )
        .await;
    let pre = s.vehicle.proxy().await.preconditions().await.unwrap();
    let parked = pre.iter().find(|p| p.name == "parked").expect("persisted");
    assert!(
        !parked.satisfied && parked.reason == "vehicle moving",
        "{pre:?}"
    );
    assert_eq!(std::fs::read(&s.target).unwrap(), FACTORY);

    s.vehicle
        .proxy()
        .await
        .set_precondition("parked", true, "")
        .await
        .unwrap();
    poll(
        "the install after parked=true",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || (std::fs::read(&s.target).unwrap() == image).then_some(()),
    )
    .await;
}

/// `Progress` as a UI samples it over D-Bus: within one operation `percent`
/// never decreases and the operation starts from 0; a successful install
/// ends at 100 with every byte installed; an install that fails leaves
/// `phase` `error` with the failure, below 100, and `LastError` set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_overall_monotonic_and_a_failure_says_so() {
    use futures_util::StreamExt;
    let mut s = scenario().await;
    let image = image_bytes(2 << 20, 21);
    s.repos.release(NAME, &image, 2);
    let files = s.repos.publish(&[(NAME, &image)]);
    s.vehicle.start().await;
    s.vehicle.settle_closed().await;
    s.backend.set_files(files);
    s.backend.set_open(true);

    // Samples every PropertiesChanged carrying Progress until Completed.
    async fn sample(
        v: &Vehicle,
        start: impl std::future::Future<Output = ()>,
    ) -> (u32, Vec<secureev_dbus::Progress>) {
        let p = v.proxy().await;
        let props = zbus::fdo::PropertiesProxy::builder(p.inner().connection())
            .destination(secureev_dbus::BUS_NAME)
            .unwrap()
            .path(secureev_dbus::OBJECT_PATH)
            .unwrap()
            .build()
            .await
            .unwrap();
        let mut changes = props.receive_properties_changed().await.unwrap();
        let mut completed = p.receive_completed().await.unwrap();
        start.await;
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + CHECK_TIMEOUT;
        loop {
            tokio::select! {
                c = completed.next() => {
                    let c = c.unwrap();
                    let args = c.args().unwrap();
                    // The start-up check-in against the closed backend.
                    if args.code == ErrorCode::Network.as_u32() && args.message.contains("503") {
                        seen.clear();
                        continue;
                    }
                    let code = args.code;
                    // Property changes precede their Completed.
                    while let Some(Some(ch)) = changes.next().now_or_never() {
                        if let Some(v) = ch.args().unwrap().changed_properties().get("Progress") {
                            seen.push(secureev_dbus::Progress::try_from(v.try_to_owned().unwrap()).unwrap());
                        }
                    }
                    return (code, seen);
                }
                Some(ch) = changes.next() => {
                    if let Some(v) = ch.args().unwrap().changed_properties().get("Progress") {
                        seen.push(secureev_dbus::Progress::try_from(v.try_to_owned().unwrap()).unwrap());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => panic!("no Completed:\n{}", v.log()),
            }
        }
    }
    use futures_util::FutureExt;
    let proxy = s.vehicle.proxy().await;
    let (code, seen) = sample(&s.vehicle, async {
        proxy.check_for_updates(HashMap::new()).await.unwrap();
    })
    .await;
    assert_eq!(
        code,
        ErrorCode::Ok.as_u32(),
        "{seen:?}\n{}",
        s.vehicle.log()
    );
    assert_eq!(std::fs::read(&s.target).unwrap(), image);
    let percents: Vec<u32> = seen.iter().map(|p| p.percent).collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    let last = seen.last().unwrap();
    assert_eq!(last.percent, 100, "{seen:?}");
    assert!(
        seen.iter().any(|p| p.phase == "installing"
            && p.bytes_total == image.len() as u64
            && p.bytes_done == image.len() as u64),
        "{seen:?}"
    );

    // The next update cannot be written: the install fails.
    let image3 = image_bytes(256 << 10, 22);
    s.repos.release("hu/rootfs-3.img", &image3, 3);
    s.backend
        .set_files(s.repos.publish(&[("hu/rootfs-3.img", &image3)]));
    let dir = s.target.parent().unwrap().to_owned();
    std::fs::remove_file(&s.target).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    let (code, seen) = sample(&s.vehicle, async {
        proxy.check_for_updates(HashMap::new()).await.unwrap();
    })
    .await;
    assert_ne!(code, ErrorCode::Ok.as_u32(), "{seen:?}");
    // Reset at the start: the previous operation ended at 100.
    assert!(seen.first().unwrap().percent < 100, "{seen:?}");
    let percents: Vec<u32> = seen.iter().map(|p| p.percent).collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    let last = seen.last().unwrap();
    assert_eq!(last.phase, "error", "{seen:?}");
    assert!(last.percent < 100, "{seen:?}");
    let (_, last_code, last_error) = s.vehicle.status().await;
    assert_eq!(last_code, code);
    assert_eq!(last_error, last.message);
}

/// A seeded xorshift: the timings of a run repeat with its seed.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn timestamp_path() -> String {
    format!("/director/{VIN}/timestamp.json")
}

/// Wait for the next `Completed` whose message passes `want`, skipping
/// others (the check-ins the schedule runs meanwhile); bounded.
async fn completed_where(
    v: &Vehicle,
    stream: &mut secureev_dbus::CompletedStream,
    timeout: Duration,
    want: impl Fn(&str) -> bool,
) -> (u32, String) {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let signal = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no matching Completed:\n{}", v.log()))
            .expect("signal stream ended");
        let args = signal.args().unwrap();
        if want(&args.message) {
            return (args.code, args.message.clone());
        }
    }
}

/// The next `OperationCompleted` of operation `id`: `(kind, code)`; bounded.
async fn op_ended(
    v: &Vehicle,
    stream: &mut secureev_dbus::OperationCompletedStream,
    id: u64,
) -> (String, u32) {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + CHECK_TIMEOUT;
    loop {
        let signal = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("operation {id} did not end:\n{}", v.log()))
            .expect("signal stream ended");
        let a = signal.args().unwrap();
        if a.id == id {
            return (a.kind.clone(), a.code);
        }
    }
}

/// The demo's sequence, provision then check-in, 50 times against a daemon
/// whose schedule checks in every second, with seeded random timing of the
/// registration and of when it is asked for. A `Provision` that meets a
/// running check-in is refused with `Busy` (and asked again, as a client
/// does); a scheduled check-in that meets a running provisioning is
/// skipped. The backend sees no request arrive while it answers a
/// registration, and every provisioning completes with 0. Regression test
/// for the start-up check-in that overlapped `Provision` (issue 13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_never_overlaps_a_provisioning() {
    const ROUNDS: usize = 50;
    let seed = std::env::var("SECUREEV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5ec0_2e7a_u64);
    eprintln!("seed {seed} (SECUREEV_TEST_SEED)");
    let mut rng = Seeded(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut repos = Repos::new();
    backend.set_files(repos.publish(&[]));
    let installed = dir.path().join("installed");
    std::fs::create_dir_all(&installed).unwrap();
    std::fs::write(installed.join("image.bin"), FACTORY).unwrap();
    let mut vehicle = Vehicle::with_policy(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(installed.join("image.bin")),
        "",
        "auto",
        1,
    );
    vehicle.start().await;
    let proxy = vehicle.proxy().await;
    let mut ended = proxy.receive_operation_completed().await.unwrap();
    let bus = vehicle.bus.address().to_owned();
    let ctl = ctl_bin();
    let mut busy = 0;
    for round in 0..ROUNDS {
        backend.set_enroll_latency(Duration::from_millis(rng.below(200)));
        // When the request comes, anywhere in the schedule's one-second
        // interval (random timing, not a synchronisation).
        tokio::time::sleep(Duration::from_millis(rng.below(1100))).await;
        let deadline = tokio::time::Instant::now() + CHECK_TIMEOUT;
        // The demo's step: the real secureevctl, following its own
        // operation; exit status = that operation's code.
        let (provision_id, lines) = loop {
            let out = tokio::process::Command::new(&ctl)
                .args(["--bus", &bus, "--json", "--timeout", "30", "provision"])
                .arg(&backend.base)
                .args(["--token", "enroll-1", "--wait"])
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            match out.status.code() {
                Some(0) => {
                    let lines: Vec<serde_json::Value> = stdout
                        .lines()
                        .map(|l| serde_json::from_str(l).unwrap())
                        .collect();
                    let id = lines[0]["operation-id"].as_u64().unwrap();
                    break (id, lines);
                }
                Some(3) => {
                    busy += 1;
                    assert!(
                        stderr.contains("check (operation"),
                        "Busy names what runs: {stderr}"
                    );
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "round {round}: still busy: {stderr}\n{}",
                        vehicle.log()
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => panic!(
                    "round {round}: secureevctl exited {other:?}: {stdout}{stderr}\n{}",
                    vehicle.log()
                ),
            }
        };
        let last = lines.last().unwrap();
        assert_eq!(last["event"], "completed", "{lines:?}");
        assert_eq!(
            last["operation-id"].as_u64(),
            Some(provision_id),
            "{lines:?}"
        );
        assert_eq!(last["kind"], "provision", "{lines:?}");
        assert!(
            last["message"].as_str().unwrap().contains("registered"),
            "{lines:?}"
        );
        // Over the bus: that id ended as a provisioning, then the check-in
        // it asks for, a later operation of its own, never beside it.
        let deadline = tokio::time::Instant::now() + CHECK_TIMEOUT;
        let mut seen_provision = false;
        loop {
            use futures_util::StreamExt;
            let signal = tokio::time::timeout_at(deadline, ended.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "round {round}: no check-in after provisioning:\n{}",
                        vehicle.log()
                    )
                })
                .unwrap();
            let a = signal.args().unwrap();
            if a.id == provision_id {
                assert_eq!((a.kind.as_str(), a.code), ("provision", 0), "{}", a.message);
                seen_provision = true;
            } else if a.id > provision_id {
                assert!(
                    seen_provision,
                    "round {round}: {} before the provisioning ended",
                    a.id
                );
                assert_eq!((a.kind.as_str(), a.code), ("check", 0), "{}", a.message);
                break;
            }
        }
    }
    let overlaps = backend.overlaps_with_enroll();
    assert!(overlaps.is_empty(), "{overlaps:#?}");
    assert_eq!(backend.enrollments(), ROUNDS);
    let checkins = backend.manifests().len();
    eprintln!("{ROUNDS} provisionings, {checkins} check-ins, {busy} Busy refusals");
    assert!(checkins >= ROUNDS, "{checkins}");
}

/// `Install` right after `CheckForUpdates` returned, and during every
/// busy phase, is refused with `Busy` naming the running check; so are
/// `Provision` and a second `CheckForUpdates`. `Cancel` in each phase:
/// checking and downloading are cancelled (`Completed(10)`, state `idle`);
/// an install is not (`NotCancellable`) and completes; a reporting check
/// that installed nothing is cancelled; a provisioning is not cancellable;
/// with nothing running there is nothing to cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_cancel_in_every_phase() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let mut repos = Repos::new();
    let installed = dir.path().join("installed");
    std::fs::create_dir_all(&installed).unwrap();
    // The installer waits (bounded) until the test lets it go.
    let go = dir.path().join("go");
    let script = dir.path().join("install.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor i in $(seq 600); do [ -e {go} ] && exec cp \"$1\" {out}; sleep 0.05; done\nexit 1\n",
            go = go.display(),
            out = installed.join("image.bin").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut v = Vehicle::with_policy(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::Command(script.clone()),
        "[network]\nconnect_timeout_secs = 1\nresponse_timeout_secs = 2\nmetadata_timeout_secs = 3\nmanifest_timeout_secs = 2\n",
        "consent",
        3600,
    );
    let image = image_bytes(256 << 10, 31);
    repos.release(NAME, &image, 2);
    backend.set_files(repos.publish(&[(NAME, &image)]));
    v.start().await;
    v.settle_closed().await;
    backend.set_open(true);
    let proxy = v.proxy().await;
    let mut completed = proxy.receive_completed().await.unwrap();
    // Any outcome but the start-up check-in's against the closed backend
    // (its Completed may come after the subscription).
    let any = |m: &str| !m.contains("HTTP status 503");

    // Nothing runs: nothing to cancel.
    let e = proxy.cancel().await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotCancellable, "{e}");

    // A check finds the update (policy consent: it waits).
    proxy.check_for_updates(HashMap::new()).await.unwrap();
    let (code, message) = completed_where(&v, &mut completed, CHECK_TIMEOUT, any).await;
    assert_eq!(code, 0, "{message}");
    let id = proxy.pending_update_id().await.unwrap();
    assert!(!id.is_empty());

    // checking: the Director's timestamp withheld.
    backend.set_stall(Stall::Headers(timestamp_path()), true);
    let mut ended = proxy.receive_operation_completed().await.unwrap();
    let check_op = proxy.check_for_updates(HashMap::new()).await.unwrap();
    // At once, before the scheduler's cycle has even started.
    let e = proxy.install(&id, HashMap::new()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Busy, "{e}");
    assert!(e.to_string().contains("check (operation"), "{e}");
    v.wait_for("checking", CHECK_TIMEOUT, |s, _| s == "checking")
        .await;
    for e in [
        proxy.install(&id, HashMap::new()).await.unwrap_err(),
        proxy.check_for_updates(HashMap::new()).await.unwrap_err(),
        proxy
            .provision(
                &backend.base,
                HashMap::from([("token", zbus::zvariant::Value::from("t"))]),
            )
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), ErrorCode::Busy, "{e}");
    }
    proxy.cancel().await.unwrap();
    let (code, message) = completed_where(&v, &mut completed, CHECK_TIMEOUT, any).await;
    assert_eq!(code, ErrorCode::Cancelled.as_u32(), "{message}");
    // The same outcome, with the id CheckForUpdates returned.
    let (kind, code) = op_ended(&v, &mut ended, check_op).await;
    assert_eq!(
        (kind.as_str(), code),
        ("check", ErrorCode::Cancelled.as_u32())
    );
    v.wait_for("idle", CHECK_TIMEOUT, |s, _| s == "idle").await;

    // The real secureevctl: `check --wait` follows its own operation, and
    // gives up after --timeout with 75; `cancel` ends it, and a `--wait`
    // after that reports the cancellation (10) as its exit status.
    let bus = v.bus.address().to_owned();
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(ctl_bin())
            .args(["--bus", &bus])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (status, out) = ctl(&["check", "--wait", "--timeout", "1"]);
    assert_eq!(status, Some(75), "{out}");
    assert!(out.contains("did not end within 1 s"), "{out}");
    let ctl_op: u64 = out
        .split("(operation ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no operation id in {out:?}"));
    assert!(ctl_op > check_op, "{out}");
    let (status, out) = ctl(&["cancel"]);
    assert_eq!(status, Some(0), "{out}");
    let (kind, code) = op_ended(&v, &mut ended, ctl_op).await;
    assert_eq!(
        (kind.as_str(), code),
        ("check", ErrorCode::Cancelled.as_u32())
    );
    let (code, message) = completed_where(&v, &mut completed, CHECK_TIMEOUT, any).await;
    assert_eq!(code, ErrorCode::Cancelled.as_u32(), "{message}");
    backend.set_stall(Stall::Headers(timestamp_path()), false);

    // downloading: a new release whose image is withheld.
    let image3 = image_bytes(256 << 10, 32);
    repos.release("hu/rootfs-3.img", &image3, 3);
    backend.set_files(repos.publish(&[("hu/rootfs-3.img", &image3)]));
    let image3_path = repos.path_of("hu/rootfs-3.img");
    backend.set_stall(Stall::Headers(image3_path.clone()), true);
    proxy.check_for_updates(HashMap::new()).await.unwrap();
    v.wait_for("downloading", CHECK_TIMEOUT, |s, _| s == "downloading")
        .await;
    let e = proxy.install(&id, HashMap::new()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Busy, "{e}");
    proxy.cancel().await.unwrap();
    let (code, message) = completed_where(&v, &mut completed, CHECK_TIMEOUT, any).await;
    assert_eq!(code, ErrorCode::Cancelled.as_u32(), "{message}");
    backend.set_stall(Stall::Headers(image3_path), false);

    // installing: the consented install waits in its installer.
    proxy.check_for_updates(HashMap::new()).await.unwrap();
    let (code, message) = completed_where(&v, &mut completed, CHECK_TIMEOUT, any).await;
    assert_eq!(code, 0, "{message}");
    let id3 = proxy.pending_update_id().await.unwrap();
    proxy.install(&id3, HashMap::new()).await.unwrap();
    v.wait_for("installing", CHECK_TIMEOUT, |s, _| s == "installing")
        .await;
    for e in [
        proxy.install(&id3, HashMap::new()).await.unwrap_err(),
        proxy.check_for_updates(HashMap::new()).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), ErrorCode::Busy, "{e}");
    }
    let e = proxy.cancel().await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotCancellable, "{e}");
    // reporting after the install: not cancellable either.
    backend.set_stall(Stall::Manifest, true);
    std::fs::write(&go, b"").unwrap();
    v.wait_for("reporting", CHECK_TIMEOUT, |s, _| s == "reporting")
        .await;
    let e = proxy.cancel().await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotCancellable, "{e}");
    let (code, message) = completed_where(&v, &mut completed, CHECK_TIMEOUT, any).await;
    assert_eq!(code, 0, "{message}\n{}", v.log());
    assert!(message.contains("installed on"), "{message}");
    assert_eq!(std::fs::read(installed.join("image.bin")).unwrap(), image3);

    // reporting in a check that installed nothing: cancellable.
    proxy.check_for_updates(HashMap::new()).await.unwrap();
    v.wait_for("reporting", CHECK_TIMEOUT, |s, _| s == "reporting")
        .await;
    proxy.cancel().await.unwrap();
    let (code, message) = completed_where(&v, &mut completed, CHECK_TIMEOUT, any).await;
    assert_eq!(code, ErrorCode::Cancelled.as_u32(), "{message}");
    backend.set_stall(Stall::Manifest, false);

    // provisioning: one bounded exchange, not cancellable.
    backend.set_stall(Stall::Enroll, true);
    proxy
        .provision(
            &backend.base,
            HashMap::from([("token", zbus::zvariant::Value::from("t"))]),
        )
        .await
        .unwrap();
    v.wait_for("checking", CHECK_TIMEOUT, |s, _| s == "checking")
        .await;
    let e = proxy.cancel().await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotCancellable, "{e}");
    let e = proxy.check_for_updates(HashMap::new()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Busy, "{e}");
    assert!(e.to_string().contains("provision (operation"), "{e}");
    let (code, message) = completed_where(&v, &mut completed, CHECK_TIMEOUT, any).await;
    assert_eq!(code, ErrorCode::Network.as_u32(), "{message}");
}

/// `GetHistory` survives a restart and has an entry per ECU: after an
/// install, the head unit's entry (its serial, the release counter, code 0)
/// beside the operation's own; the daemon restarted (SIGTERM, start) serves
/// the same entries, read from `history.json` in the state directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_persisted_with_an_entry_per_ecu() {
    let mut s = scenario().await;
    let image = image_bytes(64 * 1024, 41);
    s.repos.release(NAME, &image, 2);
    let files = s.repos.publish(&[(NAME, &image)]);
    let (code, message) = s
        .vehicle
        .start_then_check(&s.backend, files, CHECK_TIMEOUT)
        .await;
    assert_eq!(code, 0, "{message}\n{}", s.vehicle.log());
    let before = s.vehicle.proxy().await.get_history().await.unwrap();
    let hu = before
        .iter()
        .find(|e| e.ecu_serial == HU)
        .unwrap_or_else(|| panic!("no entry for {HU}: {before:#?}"));
    assert_eq!(
        (hu.action.as_str(), hu.release_counter, hu.code),
        ("install", 2, 0),
        "{hu:?}"
    );
    assert!(hu.message.contains(NAME), "{hu:?}");
    assert!(!hu.update_id.is_empty(), "{hu:?}");
    assert!(
        before
            .iter()
            .any(|e| e.action == "check" && e.ecu_serial.is_empty() && e.code == 0),
        "{before:#?}"
    );
    assert!(s.vehicle.dir.join("state").join("history.json").is_file());

    s.vehicle.terminate(Duration::from_secs(10));
    s.backend.set_open(false);
    s.vehicle.start().await;
    s.vehicle.settle_closed().await;
    let after = s.vehicle.proxy().await.get_history().await.unwrap();
    assert!(after.len() > before.len(), "{after:#?}");
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "kept across the restart"
    );
}
