//! A kill right after a secondary activated its image (issue 11): the real
//! `secureev-otad` (the e2e harness: private `dbus-daemon`, in-test TLS
//! backend) with a `secureev-ecu` agent served in-process over DoIP on
//! loopback, behind a DoIP relay that withholds the ECU's positive response
//! to activate (`71 01 D002`) and tells the test, which then SIGKILLs the
//! daemon: the ECU runs the new image, the daemon never heard so, and the
//! backend still assigns it.
//!
//! After the restart the next cycle must end in success, not in "secondary …
//! refused: routine 0xD000 failed with result 0x01 (no-update)": the ECU's
//! own signed report shows the assigned image, so the install is done. The
//! image is not sent again, and the manifest carries the ECU's report naming
//! the image, with no attack.
//!
//! The ECU's own installation result survives the kill: it keeps it (in
//! `state.json`) in every report it signs until the Primary says a manifest
//! carrying one was accepted (`REPORT_DELIVERED`, 0xD004), so the reports
//! the restarted Primary reads (and the one it reads to check the ECU's
//! image) lose nothing. Exactly one manifest after the restart carries it,
//! and the ECU has forgotten it afterwards.
#![allow(clippy::unwrap_used)]

mod e2e_common;

use e2e_common::*;
use secureev_daemon::config::Verification;
use secureev_dbus::ErrorCode;
use secureev_secondary::serve::{self, SharedServer};
use secureev_uptane::manifest::verify_manifest;
use secureev_uptane::PublicKey;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const CHECK_TIMEOUT: Duration = Duration::from_secs(90);
const ECU: &str = "BMS-CRASH";
const ECU_HW: &str = "secureev-bms-crash";
const LA: u16 = 0x0E83;
const SECRET: [u8; 32] = [0x3C; 32];
const NAME: &str = "bms/fw-7.bin";

/// The positive response to RoutineControl start activate (0xD002).
const ACTIVATED: [u8; 4] = [0x71, 0x01, 0xD0, 0x02];
/// A TransferData request (an image being sent).
const TRANSFER_DATA: u8 = 0x36;

/// A DoIP relay in front of the ECU. While armed it withholds the first
/// ECU → tester diagnostic message that starts with [`ACTIVATED`] (and
/// everything after it on that connection) and fires `tripped`; it counts
/// the TransferData requests it relays.
struct Relay {
    addr: SocketAddr,
    tripped: tokio::sync::mpsc::UnboundedReceiver<()>,
    transfers: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Complete DoIP messages at the front of `buf` (8-byte header, payload
/// length at bytes 4..8), removed from it.
fn frames(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        if buf.len() < 8 {
            return out;
        }
        let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < 8 + len {
            return out;
        }
        out.push(buf.drain(..8 + len).collect());
    }
}

/// The UDS data of a DoIP diagnostic message (payload type 0x8001).
fn uds_data(frame: &[u8]) -> Option<&[u8]> {
    (frame[2..4] == [0x80, 0x01] && frame.len() >= 12).then(|| &frame[12..])
}

async fn relay(upstream: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, tripped) = tokio::sync::mpsc::unbounded_channel();
    let armed = Arc::new(AtomicBool::new(true));
    let transfers = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (count, halt) = (transfers.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let tester = tokio::select! {
                _ = halt.cancelled() => return,
                r = listener.accept() => r.unwrap().0,
            };
            let ecu = TcpStream::connect(upstream).await.unwrap();
            let (armed, tx, count, halt) = (armed.clone(), tx.clone(), count.clone(), halt.clone());
            tokio::spawn(async move {
                let (mut tr, mut tw) = tester.into_split();
                let (mut er, mut ew) = ecu.into_split();
                let up = async {
                    let mut buf = Vec::new();
                    let mut chunk = vec![0u8; 16 * 1024];
                    loop {
                        let n = match tr.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        for f in frames(&mut buf) {
                            if uds_data(&f).and_then(|d| d.first()) == Some(&TRANSFER_DATA) {
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                            if ew.write_all(&f).await.is_err() {
                                return;
                            }
                        }
                    }
                };
                let down = async {
                    let mut buf = Vec::new();
                    let mut chunk = vec![0u8; 16 * 1024];
                    let mut withholding = false;
                    loop {
                        let n = match er.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        for f in frames(&mut buf) {
                            if !withholding
                                && uds_data(&f).is_some_and(|d| d.starts_with(&ACTIVATED))
                                && armed.swap(false, Ordering::SeqCst)
                            {
                                withholding = true;
                                let _ = tx.send(());
                            }
                            if !withholding && tw.write_all(&f).await.is_err() {
                                return;
                            }
                        }
                    }
                };
                // Either side closing ends both (the ECU then sees its
                // tester's connection close, as after a real crash).
                tokio::select! {
                    _ = halt.cancelled() => {}
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    Relay {
        addr,
        tripped,
        transfers,
        stop,
    }
}

/// The ECU agent with its state in `dir`, trusting `director_root`.
async fn start_ecu(
    dir: &std::path::Path,
    director_root: &[u8],
) -> (SocketAddr, SharedServer, CancellationToken) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("director-root.json"), director_root).unwrap();
    std::fs::write(dir.join("security-secret"), hex::encode(SECRET)).unwrap();
    let cfg = secureev_secondary::config::parse_str(&format!(
        "serial = \"{ECU}\"\nhardware_id = \"{ECU_HW}\"\nstate_dir = \"{d}\"\ndirector_root = \"{d}/director-root.json\"\n[doip]\nlogical_address = {LA}\n",
        d = dir.display(),
    ))
    .unwrap();
    let server = serve::build_server(&cfg).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve::serve_doip(
        listener,
        server.clone(),
        LA,
        shutdown.clone(),
    ));
    (addr, server, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_right_after_the_secondary_activated_then_the_next_cycle_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut repos = Repos::new();
    let (ecu_addr, ecu, ecu_stop) = start_ecu(&dir.path().join("ecu"), &repos.director_root).await;
    let _ecu_stop = ecu_stop.drop_guard();
    let ecu_key: PublicKey = ecu.lock().await.backend().keys().signing.verifying_key();
    let mut relay = relay(ecu_addr).await;

    let firmware = image_bytes(96 * 1024, 77);
    repos.add_image(NAME, &firmware, 7, &[ECU_HW]);
    repos.director.targets.clear();
    repos.director.add_target(
        NAME,
        &firmware,
        Some(json!({
            "ecuIdentifiers": { ECU: { "hardwareId": ECU_HW } },
            "releaseCounter": 7,
        })),
    );
    let files = repos.publish(&[(NAME, &firmware)]);

    let backend = Backend::start().await;
    backend.set_open(false);
    let installed = dir.path().join("installed");
    std::fs::create_dir_all(&installed).unwrap();
    std::fs::write(installed.join("image.bin"), b"head unit factory image").unwrap();
    let mut vehicle = Vehicle::new(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(installed.join("image.bin")),
        &format!(
            "[[secondary]]\nserial = \"{ECU}\"\nhardware_id = \"{ECU_HW}\"\nverification = \"{}\"\ntransport = \"doip\"\ndoip = {{ address = \"{}\", logical_address = {LA} }}\n",
            match Verification::Partial {
                Verification::Partial => "partial",
                Verification::Full => "full",
            },
            relay.addr
        ),
    );
    let secrets = vehicle.dir.join("keys").join("secondaries");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join(format!("{ECU}.secret")), hex::encode(SECRET)).unwrap();

    // Cycle 1: the daemon sends the image, the ECU activates it, the relay
    // withholds the answer and the daemon is killed.
    vehicle.start().await;
    vehicle.settle_closed().await;
    backend.set_files(files);
    backend.set_open(true);
    vehicle
        .proxy()
        .await
        .check_for_updates(HashMap::new())
        .await
        .unwrap();
    tokio::time::timeout(CHECK_TIMEOUT, relay.tripped.recv())
        .await
        .unwrap_or_else(|_| panic!("the ECU never activated:\n{}", vehicle.log()))
        .unwrap();
    vehicle.kill();
    let sent = relay.transfers.load(Ordering::SeqCst);
    assert!(sent > 0, "the image went through the relay");
    {
        let s = ecu.lock().await;
        let installed = s.backend().state().installed.clone().expect("activated");
        assert_eq!(installed.name(), NAME);
    }
    let before: Vec<_> = backend.manifests();
    assert!(
        before.iter().all(
            |m| m["signed"]["ecu_version_reports"][ECU]["signed"]["installed_image"]["filepath"]
                != NAME
        ),
        "the backend heard of the activation before the kill"
    );

    // Restart: the Director still assigns the image.
    backend.set_open(false);
    vehicle.start().await;
    vehicle.settle_closed().await;
    backend.set_open(true);
    let (code, message) = vehicle.check(CHECK_TIMEOUT).await;
    assert_eq!(code, ErrorCode::Ok.as_u32(), "{message}\n{}", vehicle.log());
    assert!(
        !message.contains("refused") && !message.contains("no-update"),
        "{message}"
    );
    let (state, last_code, last_error) = vehicle.status().await;
    assert_eq!((state.as_str(), last_code), ("idle", 0), "{last_error}");
    // Not flashed again.
    assert_eq!(relay.transfers.load(Ordering::SeqCst), sent);
    // The UI shows the ECU on the new image, reached.
    let ecus = vehicle.proxy().await.ecus().await.unwrap();
    let e = ecus.iter().find(|e| e.serial == ECU).unwrap();
    assert_eq!(e.installed_target, NAME, "{e:?}");
    assert_eq!(e.status, "ok", "{e:?}");

    // The manifest the backend completes the assignment on: the ECU's own
    // signed report names the image (name, length, hash), no attack, no
    // failed installation anywhere.
    let (keys, _) = secureev_daemon::keys::load_or_provision(&vehicle.dir.join("keys")).unwrap();
    let primary = keys.signing.verifying_key();
    let manifests = backend.manifests();
    let last = manifests.last().expect("a manifest after the restart");
    let bytes = serde_json::to_vec(last).unwrap();
    let v = verify_manifest(&bytes, &primary, |s| {
        if s == ECU {
            Some(ecu_key.clone())
        } else if s == HU {
            Some(primary.clone())
        } else {
            None
        }
    })
    .unwrap_or_else(|e| panic!("the backend would refuse {last:#}: {e}"));
    let report = v.report(ECU).expect("the ECU's report");
    let image = report.installed_image.as_ref().expect("its image");
    assert_eq!(image.filepath, NAME);
    assert_eq!(image.fileinfo.length, firmware.len() as u64);
    assert_eq!(image.fileinfo.hashes["sha256"], sha256_hex(&firmware));
    assert_eq!(report.attacks_detected, "");
    for m in &manifests[before.len()..] {
        for (serial, r) in m["signed"]["ecu_version_reports"].as_object().unwrap() {
            let result = &r["signed"]["installation_result"];
            assert!(
                result.is_null() || result["success"] == true,
                "{serial}: {result}\n{}",
                vehicle.log()
            );
        }
    }
    assert!(
        !vehicle.log().contains("refused: routine 0xD000"),
        "{}",
        vehicle.log()
    );
    // The path taken: the ECU's no-update, checked against its own report.
    assert!(
        vehicle
            .log()
            .contains("the secondary already runs the assigned image"),
        "{}",
        vehicle.log()
    );
    // The Primary reports the install as done.
    let results = install_results(&manifests[before.len()..]);
    assert!(
        results.iter().any(|r| r["success"] == true
            && r["message"].as_str().is_some_and(|m| m.contains(ECU))),
        "{results:#?}"
    );
    // The ECU's own result of the activation the kill cut off: in exactly
    // one manifest after the restart, as the ECU signed it.
    let ecu_results = |ms: &[serde_json::Value]| -> Vec<serde_json::Value> {
        ms.iter()
            .map(|m| {
                m["signed"]["ecu_version_reports"][ECU]["signed"]["installation_result"].clone()
            })
            .filter(|r| !r.is_null())
            .collect()
    };
    let theirs = ecu_results(&manifests[before.len()..]);
    assert_eq!(theirs.len(), 1, "{theirs:#?}\n{}", vehicle.log());
    assert_eq!(theirs[0]["success"], true, "{theirs:#?}");
    assert_eq!(theirs[0]["code"], "OK", "{theirs:#?}");
    assert!(
        theirs[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(NAME)),
        "{theirs:#?}"
    );
    // Delivered, so forgotten on the ECU; the next check-in's manifest
    // carries the ECU's report without it.
    poll(
        "the ECU to hear its report was delivered",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            ecu.try_lock()
                .ok()
                .filter(|s| s.backend().state().last_install.is_none())
                .map(drop)
        },
    )
    .await;
    let (code, message) = vehicle.check(CHECK_TIMEOUT).await;
    assert_eq!(code, ErrorCode::Ok.as_u32(), "{message}");
    let manifests = backend.manifests();
    assert_eq!(ecu_results(&manifests[before.len()..]), theirs);
    assert!(!manifests.last().unwrap()["signed"]["ecu_version_reports"][ECU].is_null());
}
