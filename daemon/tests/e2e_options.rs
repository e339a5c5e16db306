//! `Install` and `CheckForUpdates` options and `NotProvisioned` through the
//! real `secureev-otad` on a private `dbus-daemon` (issue 13): `when-ready`
//! is the only deferred start, visible in `DeferredInstall`, cancellable;
//! without it `PreconditionFailed` ends the consent; `transaction-id` is in
//! the history entries; a vehicle the backend does not know is
//! `NotProvisioned` until it is provisioned.
#![allow(clippy::unwrap_used)]

mod e2e_common;

use e2e_common::*;
use futures_util::StreamExt;
use secureev_dbus::ErrorCode;
use std::collections::HashMap;
use std::time::Duration;
use zbus::zvariant::Value;

const FACTORY: &[u8] = b"factory image";
const NAME: &str = "hu/rootfs-4.img";

fn timeout() -> Duration {
    scaled(Duration::from_secs(30))
}

/// Wait for `OperationCompleted` of operation `id`: `(kind, code, message)`.
async fn completed_of(
    v: &Vehicle,
    stream: &mut secureev_dbus::OperationCompletedStream,
    id: u64,
) -> (String, u32, String) {
    let deadline = tokio::time::Instant::now() + timeout();
    loop {
        let s = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no OperationCompleted for {id}:\n{}", v.log()))
            .expect("signal stream ended");
        let a = s.args().unwrap();
        if a.id == id {
            return (a.kind, a.code, a.message);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_ready_defers_the_install_visibly_and_cancellably() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let mut repos = Repos::new();
    let target = dir.path().join("image.bin");
    std::fs::write(&target, FACTORY).unwrap();
    let mut v = Vehicle::with_policy(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(target.clone()),
        "",
        "consent",
        3600,
    );
    let image = image_bytes(64 * 1024, 5);
    repos.release(NAME, &image, 2);
    let files = repos.publish(&[(NAME, &image)]);
    let (code, message) = v.start_then_check(&backend, files, timeout()).await;
    assert_eq!(code, 0, "{message}\n{}", v.log());
    assert!(message.contains("waiting for consent"), "{message}");
    let proxy = v.proxy().await;
    let mut done = proxy.receive_operation_completed().await.unwrap();
    let id = proxy.pending_update_id().await.unwrap();
    proxy
        .set_precondition("parked", false, "vehicle moving")
        .await
        .unwrap();

    // Without when-ready: refused, and the consent is gone: parked=true
    // and a check-in later, nothing is installed.
    let e = proxy.install(&id, HashMap::new()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::PreconditionFailed, "{e}");
    assert!(e.to_string().contains("vehicle moving"), "{e}");
    assert_eq!(proxy.deferred_install().await.unwrap(), 0);
    proxy.set_precondition("parked", true, "").await.unwrap();
    let (code, message) = v.check(timeout()).await;
    assert_eq!(code, 0, "{message}");
    assert!(message.contains("waiting for consent"), "{message}");
    assert_eq!(std::fs::read(&target).unwrap(), FACTORY);

    // With when-ready: an id, shown in DeferredInstall, nothing running.
    proxy
        .set_precondition("parked", false, "vehicle moving")
        .await
        .unwrap();
    let tx = |t: &str| {
        HashMap::from([
            ("when-ready", Value::from(true)),
            ("transaction-id", Value::from(t.to_owned())),
        ])
    };
    let op = proxy.install(&id, tx("tx-cancelled")).await.unwrap();
    assert!(op > 0);
    assert_eq!(proxy.deferred_install().await.unwrap(), op);
    assert_eq!(v.status().await.0, "awaiting-consent");
    // A second Install is refused naming the deferral; a check still runs
    // and does not install it.
    let e = proxy.install(&id, tx("again")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Busy, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("operation {op}) is deferred")),
        "{e}"
    );
    let (code, message) = v.check(timeout()).await;
    assert_eq!(code, 0, "{message}");
    assert!(message.contains("is deferred"), "{message}");
    assert_eq!(proxy.deferred_install().await.unwrap(), op);
    // Cancel drops it: OperationCompleted(op, install, 10).
    proxy.cancel().await.unwrap();
    let (kind, code, _) = completed_of(&v, &mut done, op).await;
    assert_eq!(
        (kind.as_str(), code),
        ("install", ErrorCode::Cancelled.as_u32())
    );
    assert_eq!(proxy.deferred_install().await.unwrap(), 0);
    proxy.set_precondition("parked", true, "").await.unwrap();
    let (code, message) = v.check(timeout()).await;
    assert_eq!(code, 0, "{message}");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        FACTORY,
        "a cancelled deferral installed"
    );

    // Deferred again; the owner's parked=true starts it under its id.
    proxy
        .set_precondition("parked", false, "vehicle moving")
        .await
        .unwrap();
    let op2 = proxy.install(&id, tx("tx-42")).await.unwrap();
    assert!(op2 > op);
    assert_eq!(proxy.deferred_install().await.unwrap(), op2);
    proxy
        .set_precondition("parked", true, "parked")
        .await
        .unwrap();
    let (kind, code, message) = completed_of(&v, &mut done, op2).await;
    assert_eq!(
        (kind.as_str(), code),
        ("install", 0),
        "{message}\n{}",
        v.log()
    );
    assert_eq!(std::fs::read(&target).unwrap(), image);
    assert_eq!(proxy.deferred_install().await.unwrap(), 0);

    // transaction-id in the history: the cancelled deferral, the install's
    // own entry and the head unit's per-ECU entry.
    let history = proxy.get_history().await.unwrap();
    let with = |t: &str| {
        history
            .iter()
            .filter(|e| e.transaction_id == t)
            .collect::<Vec<_>>()
    };
    let cancelled = with("tx-cancelled");
    assert_eq!(cancelled.len(), 1, "{history:#?}");
    assert_eq!(cancelled[0].code, ErrorCode::Cancelled.as_u32());
    let installed = with("tx-42");
    assert!(
        installed
            .iter()
            .any(|e| e.ecu_serial.is_empty() && e.code == 0)
            && installed.iter().any(|e| e.ecu_serial == HU && e.code == 0),
        "{history:#?}"
    );
    assert!(with("again").is_empty(), "a refused call left history");

    // CheckForUpdates carries one too.
    let op3 = proxy
        .check_for_updates(HashMap::from([("transaction-id", Value::from("tx-check"))]))
        .await
        .unwrap();
    let (kind, code, _) = completed_of(&v, &mut done, op3).await;
    assert_eq!((kind.as_str(), code), ("check", 0));
    let history = proxy.get_history().await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.transaction_id == "tx-check" && e.action == "check"),
        "{history:#?}"
    );
}

/// The backend does not know the vehicle's key (401 on every signed request)
/// and the vehicle was never accepted: `CheckForUpdates` is `NotProvisioned`;
/// after a successful `Provision` (and the backend knowing the key) checks
/// run again. A vehicle once accepted that meets a 401 is `20 network`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_vehicle_is_not_provisioned_until_provisioned() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let mut repos = Repos::new();
    let target = dir.path().join("image.bin");
    std::fs::write(&target, FACTORY).unwrap();
    let mut v = Vehicle::new(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(target),
        "",
    );
    let (right_key, _) = secureev_daemon::keys::load_or_provision(&v.dir.join("keys")).unwrap();
    let (other, _) = secureev_daemon::keys::load_or_provision(&dir.path().join("other")).unwrap();
    backend.set_vehicle_key(other.signing.verifying_key());
    backend.set_files(repos.publish(&[]));
    v.start().await;
    v.settle_closed().await;
    let proxy = v.proxy().await;
    let mut done = proxy.receive_operation_completed().await.unwrap();
    backend.set_open(true);
    // Check-ins against the open backend get 401 (network, the first one
    // the daemon meets may be its own start-up check-in); after that one,
    // CheckForUpdates is NotProvisioned.
    let mut refused = None;
    for _ in 0..3 {
        match proxy.check_for_updates(HashMap::new()).await {
            Ok(op) => {
                let (_, code, message) = completed_of(&v, &mut done, op).await;
                assert_eq!(code, ErrorCode::Network.as_u32(), "{message}");
                assert!(message.contains("401"), "{message}");
            }
            Err(e) if e.code() == ErrorCode::Busy => {
                tokio::time::timeout(timeout(), done.next()).await.unwrap();
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("never NotProvisioned");
    assert_eq!(e.code(), ErrorCode::NotProvisioned, "{e}");
    assert!(e.to_string().contains("Provision"), "{e}");
    assert!(!backend.auth_failures().is_empty());
    // The same refusal as an independent client sees it: busctl and gdbus
    // name the D-Bus error (docs/dbus-api.md, CheckForUpdates row).
    for argv in [
        vec![
            "busctl".to_owned(),
            format!("--address={}", v.bus.address()),
            "call".to_owned(),
            "io.secureev.Ota1".to_owned(),
            "/io/secureev/Ota1".to_owned(),
            "io.secureev.Ota1".to_owned(),
            "CheckForUpdates".to_owned(),
            "a{sv}".to_owned(),
            "0".to_owned(),
        ],
        vec![
            "gdbus".to_owned(),
            "call".to_owned(),
            "--address".to_owned(),
            v.bus.address().to_owned(),
            "--dest".to_owned(),
            "io.secureev.Ota1".to_owned(),
            "--object-path".to_owned(),
            "/io/secureev/Ota1".to_owned(),
            "--method".to_owned(),
            "io.secureev.Ota1.CheckForUpdates".to_owned(),
            "{}".to_owned(),
        ],
    ] {
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{}: {text}", argv[0]);
        // gdbus prints the error's name, busctl only its message.
        let expected = if argv[0] == "gdbus" {
            "io.secureev.Ota1.Error.NotProvisioned"
        } else {
            "Call failed: "
        };
        assert!(text.contains(expected), "{}: {text}", argv[0]);
        assert!(text.contains("Provision"), "{}: {text}", argv[0]);
        eprintln!("{}: {}", argv[0], text.trim());
    }

    // Provisioned: the backend now knows the key; Provision ends, then its
    // own check-in; CheckForUpdates runs again.
    backend.set_vehicle_key(right_key.signing.verifying_key());
    let op = proxy
        .provision(&backend.base, HashMap::from([("token", Value::from("t"))]))
        .await
        .unwrap();
    let (kind, code, message) = completed_of(&v, &mut done, op).await;
    assert_eq!((kind.as_str(), code), ("provision", 0), "{message}");
    let (code, message) = v.check(timeout()).await;
    assert_eq!(code, 0, "{message}\n{}", v.log());

    // Once accepted, a 401 is an authentication failure, not NotProvisioned.
    backend.set_vehicle_key(other.signing.verifying_key());
    let (code, message) = v.check(timeout()).await;
    assert_eq!(code, ErrorCode::Network.as_u32(), "{message}");
    let (code, message) = v.check(timeout()).await;
    assert_eq!(code, ErrorCode::Network.as_u32(), "{message}");
}
