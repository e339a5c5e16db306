//! Runs the `secureevctl` binary against the fake controller on a private bus.
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use secureev_dbus::testing::{FakeController, PrivateBus};
use secureev_dbus::{Ota1Proxy, StateHandle};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_secureevctl");

struct Daemon {
    bus: PrivateBus,
    fake: FakeController,
    server: zbus::Connection,
}

async fn daemon(step: Duration) -> Daemon {
    let bus = PrivateBus::start().expect("private dbus-daemon");
    let state = StateHandle::new();
    let fake = FakeController::new(state.clone(), step);
    let server = state
        .serve(bus.builder().unwrap(), Arc::new(fake.clone()))
        .await
        .unwrap();
    Daemon { bus, fake, server }
}

/// Runs the CLI off the runtime's worker so the served object keeps answering.
async fn ctl(bus: &PrivateBus, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--bus").arg(bus.address()).args(args);
    cmd.stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Starts `secureevctl watch` and returns once it printed its first line, which it
/// does only after subscribing to the signals (no sleeps, no races).
async fn start_watch(bus: &PrivateBus, json: bool) -> (String, tokio::task::JoinHandle<Output>) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--bus").arg(bus.address());
    if json {
        cmd.arg("--json");
    }
    cmd.arg("watch")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (line, stdout)
    });
    let (first, mut stdout) = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("watch started")
        .unwrap();
    let rest = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).unwrap();
        let mut out = child.wait_with_output().unwrap();
        out.stdout = rest;
        out
    });
    (first, rest)
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_not_running_has_its_own_exit_code() {
    let bus = PrivateBus::start().unwrap();
    let out = ctl(&bus, &["status"]).await;
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(stderr(&out).contains("not running"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_bus_has_its_own_exit_code() {
    let out = tokio::task::spawn_blocking(|| {
        Command::new(BIN)
            .args(["--bus", "unix:path=/nonexistent/secureev-bus", "status"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(code(&out), 74, "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_install_cycle_with_json() {
    let d = daemon(Duration::from_millis(20)).await;

    let out = ctl(&d.bus, &["--json", "status"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let s = json(&out);
    assert_eq!(s["state"], "idle");
    assert_eq!(s["ecus"].as_array().unwrap().len(), 2);

    let out = ctl(&d.bus, &["--json", "check", "--wait"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let events: Vec<Value> = stdout(&out)
        .lines()
        .skip(1) // {"ok":true,...} from the call itself
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (last, before) = events.split_last().unwrap();
    assert_eq!(
        (last["event"].as_str(), last["code"].as_u64()),
        (Some("completed"), Some(0))
    );
    // Properties changed before Completed are delivered before it.
    let last_state = before.iter().rev().find(|e| e["event"] == "state").unwrap();
    assert_eq!(last_state["state"], "awaiting-consent", "{events:?}");

    let s = json(&ctl(&d.bus, &["--json", "status"]).await);
    assert_eq!(s["state"], "awaiting-consent");
    let id = s["pending-update-id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 64);
    assert_eq!(s["pending-updates"][0]["update-id"], id.as_str());

    // Human status shows the plan.
    let out = ctl(&d.bus, &["status"]).await;
    assert!(
        stdout(&out).contains(&format!("Pending update {id}")),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("1.0.0 (#10) -> 1.1.0 (#11)"),
        "{}",
        stdout(&out)
    );

    let out = ctl(&d.bus, &["install", "--yes", "--wait"]).await;
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("Completed: installed 2 update(s)"),
        "{}",
        stdout(&out)
    );
    assert!(d.fake.calls().contains(&format!("install {id}")));

    let ecus = json(&ctl(&d.bus, &["--json", "ecus"]).await);
    let hu = ecus
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["serial"] == "HU-0001")
        .unwrap();
    assert_eq!(hu["installed-version"], "1.1.0");

    let history = json(&ctl(&d.bus, &["--json", "history"]).await);
    let actions: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["check", "install"]);
    let out = ctl(&d.bus, &["history"]).await;
    assert!(stdout(&out).contains("[0 ok]"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_asks_and_binds_to_the_update_shown() {
    let d = daemon(Duration::from_millis(20)).await;

    let out = ctl(&d.bus, &["install", "--yes"]).await;
    assert_eq!(code(&out), 6, "nothing pending: {}", stderr(&out));

    assert_eq!(code(&ctl(&d.bus, &["check", "--wait"]).await), 0);

    // No terminal and no --yes: nothing is installed.
    let out = ctl(&d.bus, &["install"]).await;
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Pending update"),
        "plan shown: {}",
        stdout(&out)
    );
    assert!(!d.fake.calls().iter().any(|c| c.starts_with("install")));

    // Consent given for an id that is no longer pending.
    let out = ctl(&d.bus, &["install", "--yes", "--id", "0123"]).await;
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("NoSuchUpdate") || stderr(&out).contains("not the pending"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_with_the_daemon_error_code() {
    // Long phases: the daemon stays busy (and nothing pending) for the whole test.
    let d = daemon(Duration::from_secs(3)).await;
    assert_eq!(code(&ctl(&d.bus, &["check"]).await), 0);
    let out = ctl(&d.bus, &["check"]).await;
    assert_eq!(code(&out), 3, "busy: {}", stderr(&out));
    assert!(stderr(&out).contains("Busy"), "{}", stderr(&out));
    let out = ctl(&d.bus, &["postpone", "0"]).await;
    assert_eq!(code(&out), 4, "invalid: {}", stderr(&out));
    let out = ctl(&d.bus, &["postpone", "60"]).await;
    assert_eq!(code(&out), 6, "nothing pending: {}", stderr(&out));
    let out = ctl(&d.bus, &["postpone", "-1"]).await;
    assert_eq!(code(&out), 2, "usage: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_with_the_completed_code() {
    let d = daemon(Duration::from_millis(400)).await;
    let client = d.bus.client().await.unwrap();
    let proxy = Ota1Proxy::new(&client).await.unwrap();

    let (first, watch) = start_watch(&d.bus, true).await;
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["state"], "idle");
    proxy.check_for_updates(Default::default()).await.unwrap();
    let out = ctl(&d.bus, &["cancel"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let out = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        code(&out),
        10,
        "cancelled: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // (Intermediate states may be coalesced away by the throttle; the outcome may not.)
    let last = events.last().unwrap();
    assert_eq!(
        (last["event"].as_str(), last["code"].as_u64()),
        (Some("completed"), Some(10))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_a_vanished_daemon() {
    let d = daemon(Duration::from_secs(5)).await;
    let (_, watch) = start_watch(&d.bus, false).await;
    d.server.close().await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(stderr(&out).contains("went away"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_calls_the_daemon() {
    let d = daemon(Duration::from_millis(20)).await;
    let out = ctl(
        &d.bus,
        &[
            "provision",
            "https://backend.example:8443",
            "--vin",
            "WSE00000000000001",
            "--wait",
        ],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(d
        .fake
        .calls()
        .contains(&"provision https://backend.example:8443 vin=WSE00000000000001".to_owned()));
    let out = ctl(&d.bus, &["provision", "http://plain.example"]).await;
    assert_eq!(code(&out), 4, "{}", stderr(&out));
}

/// The bus policy refusing a call is one clear line and exit status 8
/// (NotPermitted), not a zbus error dump and 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_by_the_bus_policy_is_exit_8_with_one_line() {
    let bus = PrivateBus::start_with_policy(
        r#"<policy context="default">
    <deny send_destination="io.secureev.Ota1" send_interface="io.secureev.Ota1" send_member="GetHistory"/>
  </policy>"#,
    )
    .expect("private dbus-daemon");
    let state = StateHandle::new();
    let fake = FakeController::new(state.clone(), Duration::from_millis(50));
    let _server = state
        .serve(bus.builder().unwrap(), Arc::new(fake))
        .await
        .unwrap();
    let out = ctl(&bus, &["history"]).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 8, "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("access denied by the D-Bus policy"), "{err}");
}

/// `secureevctl --json history | head -1`: a closed stdout ends the program
/// quietly (status 0, nothing on stderr) instead of a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stdout_pipe_exits_quietly() {
    let d = daemon(Duration::from_millis(50)).await;
    let mut cmd = Command::new(BIN);
    cmd.arg("--bus")
        .arg(d.bus.address())
        .args(["--json", "history"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        // Close the read end before the CLI writes anything.
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 0, "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");
}
