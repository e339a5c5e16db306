//! The vcan rig: the real `secureev-otad` (on a private `dbus-daemon`,
//! checking in over TLS 1.3 with the end-to-end test backend of
//! `daemon/tests/e2e_common`) updating real `secureev-ecu` processes over
//! kernel ISO-TP on vcan: classic CAN (11- and 29-bit ids) and CAN FD, two and
//! three secondaries in one cycle, a secondary that vanishes mid-transfer and
//! comes back, garbage and foreign frames on the bus, and an image for the
//! wrong hardware.
//!
//! The tests run in parallel on the same two buses: each uses its own CAN ids
//! (0x7E_, 0x6E_, 0x5E_, 0x4E_ and one 29-bit pair).
//!
//! Needs `SECUREEV_VCAN` (classic) and `SECUREEV_VCAN_FD` (MTU 72), which
//! `can-tests/run-vm.sh` sets inside its VM; elsewhere every test prints
//! `SKIPPED` and returns (a failure under `SECUREEV_REQUIRE_VCAN=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../daemon/tests/e2e_common/mod.rs"]
mod e2e_common;

use e2e_common::*;
use secureev_can::{CanFrame, RawCanSocket};
use secureev_can_tests::{need, payload, vcan, vcan_fd, EcuProcess, EcuSpec};
use secureev_dbus::ErrorCode;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One cycle over a slow emulated bus: generous (QEMU TCG).
const CHECK_TIMEOUT: Duration = Duration::from_secs(300);
/// What the head unit runs before any update.
const FACTORY: &[u8] = b"factory image";

/// Backend, repositories, the vehicle (daemon not started) and its ECUs.
struct Rig {
    _dir: tempfile::TempDir,
    backend: Backend,
    repos: Repos,
    vehicle: Vehicle,
    ecus: Vec<EcuProcess>,
    hu_target: PathBuf,
}

/// The `[[secondary]]` table the Primary needs for `spec`.
fn secondary_toml(spec: &EcuSpec) -> String {
    format!(
        "[[secondary]]\nserial = \"{}\"\nhardware_id = \"{}\"\nverification = \"partial\"\n\
         transport = \"can\"\ncan = {{ interface = \"{}\", tx_id = {}, rx_id = {}, fd = {}{}{} }}\n",
        spec.serial,
        spec.hardware_id,
        spec.iface,
        spec.rx_id,
        spec.tx_id,
        spec.fd,
        if spec.primary_can.is_empty() { "" } else { ", " },
        spec.primary_can
    )
}

/// Start `specs` as `secureev-ecu` processes and write a vehicle whose
/// configuration declares `declared` (normally the same ECUs).
async fn rig(specs: Vec<EcuSpec>, declared: &[EcuSpec]) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let repos = Repos::new();
    let hu_target = dir.path().join("hu-image.bin");
    std::fs::write(&hu_target, FACTORY).unwrap();
    let extra: String = declared.iter().map(secondary_toml).collect();
    let vehicle = Vehicle::new(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(hu_target.clone()),
        &extra,
    );
    // The SecurityAccess secret, provisioned on both sides.
    let secrets = vehicle.dir.join("keys/secondaries");
    std::fs::create_dir_all(&secrets).unwrap();
    for s in declared {
        std::fs::write(
            secrets.join(format!("{}.secret", s.serial)),
            hex::encode(s.secret),
        )
        .unwrap();
    }
    let ecus = specs
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            EcuProcess::start(
                &dir.path().join(format!("ecu-{i}")),
                s,
                &repos.director_root,
            )
        })
        .collect();
    Rig {
        _dir: dir,
        backend,
        repos,
        vehicle,
        ecus,
        hu_target,
    }
}

impl Rig {
    /// The Director assigns `bytes` (as `name`, release counter `rc`) to the
    /// ECU `serial` of hardware `hw`; the Image repository has it for `hw`.
    fn assign(&mut self, serial: &str, hw: &str, name: &str, bytes: &[u8], rc: u64) {
        self.repos.add_image(name, bytes, rc, &[hw]);
        self.repos.director.add_target(
            name,
            bytes,
            Some(json!({
                "ecuIdentifiers": { serial: { "hardwareId": hw } },
                "releaseCounter": rc,
            })),
        );
    }

    /// Start the daemon against the closed backend, then serve `images` with
    /// the published metadata and run one triggered check.
    async fn start_and_check(&mut self, images: &[(&str, &[u8])]) -> (u32, String) {
        let files = self.repos.publish(images);
        self.vehicle
            .start_then_check(&self.backend, files, CHECK_TIMEOUT)
            .await
    }

    fn ecu(&mut self, serial: &str) -> &mut EcuProcess {
        self.ecus
            .iter_mut()
            .find(|e| e.spec.serial == serial)
            .expect("an ECU of that serial")
    }

    fn logs(&self) -> String {
        let mut s = format!("--- secureev-otad ---\n{}\n", self.vehicle.log());
        for e in &self.ecus {
            s.push_str(&format!(
                "--- secureev-ecu {} ---\n{}\n",
                e.spec.serial,
                e.log()
            ));
        }
        s
    }

    /// The newest manifest's signed report of `serial` (`Value::Null` if none).
    fn last_report(&self, serial: &str) -> Value {
        self.backend
            .manifests()
            .last()
            .map(|m| m["signed"]["ecu_version_reports"][serial]["signed"].clone())
            .unwrap_or(Value::Null)
    }
}

fn ok() -> u32 {
    ErrorCode::Ok.as_u32()
}

/// Installed image of an ECU version report, as `(filepath, sha256)`.
fn installed(report: &Value) -> (String, String) {
    let i = &report["installed_image"];
    (
        i["filepath"].as_str().unwrap_or_default().to_owned(),
        i["fileinfo"]["hashes"]["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Three secondaries updated in one cycle, with the head unit: two on the
/// classic bus (11-bit and 29-bit ids) and one on the CAN FD bus. Each gets
/// exactly its image, and each one's signed report reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_secondaries_classic_29bit_and_fd_in_one_cycle() {
    let classic = need!(vcan());
    let fd = need!(vcan_fd());
    let specs = vec![
        // BMS-1 asks for blocks of 8 frames at 500 µs, and both ends pad
        // with 0xAA and require padding: a typical OEM bootloader.
        EcuSpec::new("BMS-1", "bms-v2", &classic, 0x7E8, 0x7E0)
            .with_secret([0x11; 32])
            .with_ecu_can(
                "block_size = 8\nst_min_us = 500\npadding = \"strict\"\npadding_byte = 0xAA",
            )
            .with_primary_can("padding = \"strict\", padding_byte = 0xAA"),
        EcuSpec::new("INV-1", "inverter-v1", &classic, 0x18DA_F110, 0x18DA_10F1)
            .with_secret([0x22; 32]),
        EcuSpec::new("ADAS-1", "adas-v3", &fd, 0x7E9, 0x7E1)
            .with_fd()
            .with_secret([0x33; 32]),
    ];
    let mut rig = rig(specs.clone(), &specs).await;
    let hu = payload(4_000, 1);
    let bms = payload(20_000, 2);
    let inv = payload(9_000, 3);
    let adas = payload(60_000, 4);
    rig.repos.release("hu/rootfs-2.img", &hu, 2);
    rig.assign("BMS-1", "bms-v2", "bms/fw-7.bin", &bms, 7);
    rig.assign("INV-1", "inverter-v1", "inv/fw-3.bin", &inv, 3);
    rig.assign("ADAS-1", "adas-v3", "adas/fw-9.bin", &adas, 9);
    let bus = RawCanSocket::open(&classic).unwrap();
    bus.set_recv_buffer(16 << 20).unwrap();
    let (code, message) = rig
        .start_and_check(&[
            ("hu/rootfs-2.img", &hu),
            ("bms/fw-7.bin", &bms),
            ("inv/fw-3.bin", &inv),
            ("adas/fw-9.bin", &adas),
        ])
        .await;
    assert_eq!(code, ok(), "{message}\n{}", rig.logs());
    assert_eq!(std::fs::read(&rig.hu_target).unwrap(), hu);
    // What went over the classic bus to and from BMS-1: its flow control
    // carries its block size and STmin, and every frame both ends sent is
    // padded to 8 bytes with 0xAA.
    let (mut fc, mut to_bms) = (0, 0);
    while let Ok(f) = bus.recv_timeout(Duration::from_millis(200)).await {
        match f.id {
            0x7E8 if f.data.first() == Some(&0x30) => {
                fc += 1;
                assert_eq!(f.data[..3], [0x30, 8, 0xF5], "BMS-1 flow control");
                assert_eq!(f.data.len(), 8, "{:02X?}", f.data);
            }
            0x7E0 => {
                to_bms += 1;
                assert_eq!(f.data.len(), 8, "unpadded frame to BMS-1: {:02X?}", f.data);
                if f.data[0] >> 4 == 0 {
                    let used = 1 + usize::from(f.data[0] & 0x0F);
                    assert!(
                        f.data[used..].iter().all(|&b| b == 0xAA),
                        "single frame padding: {:02X?}",
                        f.data
                    );
                }
            }
            _ => {}
        }
    }
    assert!(
        fc > 100 && to_bms > 1000,
        "{fc} flow controls, {to_bms} frames to BMS-1"
    );
    for (serial, image, name) in [
        ("BMS-1", &bms, "bms/fw-7.bin"),
        ("INV-1", &inv, "inv/fw-3.bin"),
        ("ADAS-1", &adas, "adas/fw-9.bin"),
    ] {
        let e = rig.ecu(serial);
        assert!(e.running(), "{serial} died:\n{}", e.log());
        assert_eq!(&e.active_image(), image, "{serial}'s active slot");
        assert_eq!(e.state()["installed"]["name"], name, "{serial}");
        let report = rig.last_report(serial);
        assert_eq!(
            installed(&report),
            (name.to_owned(), sha256_hex(image)),
            "{serial}'s report in the manifest: {report}\n{}",
            rig.logs()
        );
    }
}

/// A secondary that disappears in the middle of the image transfer (its
/// process killed: a power cut on that ECU) fails only its own update: the
/// other secondary and the head unit are updated in the same cycle, the
/// vanished ECU keeps running its old image, and after it comes back the next
/// cycle completes its update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_vanishing_mid_transfer_fails_alone_and_recovers() {
    let classic = need!(vcan());
    let fd = need!(vcan_fd());
    let specs = vec![
        EcuSpec::new("BMS-1", "bms-v2", &classic, 0x6E8, 0x6E0),
        EcuSpec::new("ADAS-1", "adas-v3", &fd, 0x6E9, 0x6E1).with_fd(),
    ];
    let mut rig = rig(specs.clone(), &specs).await;
    let hu = payload(3_000, 5);
    // Large enough that the transfer is seen in flight on an emulated bus.
    let bms = payload(200_000, 6);
    let adas = payload(30_000, 7);
    rig.repos.release("hu/rootfs-2.img", &hu, 2);
    rig.assign("BMS-1", "bms-v2", "bms/fw-8.bin", &bms, 8);
    rig.assign("ADAS-1", "adas-v3", "adas/fw-4.bin", &adas, 4);
    rig.vehicle.start().await;
    rig.vehicle.settle_closed().await;
    let files = rig.repos.publish(&[
        ("hu/rootfs-2.img", &hu),
        ("bms/fw-8.bin", &bms),
        ("adas/fw-4.bin", &adas),
    ]);
    rig.backend.set_files(files);
    rig.backend.set_open(true);

    // Trigger the check, and kill BMS-1 once a quarter of its image is out.
    let killed = Arc::new(AtomicBool::new(false));
    let (code, message) = {
        let proxy = rig.vehicle.proxy().await;
        let check = rig.vehicle.check(CHECK_TIMEOUT);
        let watch = async {
            loop {
                let p = proxy.progress().await.unwrap_or_default();
                if p.ecu == "BMS-1" && p.message.starts_with("sending") && p.bytes_done > 0 {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::pin!(check);
        tokio::select! {
            r = &mut check => panic!("the cycle ended before BMS-1's transfer was seen: {r:?}\n{}", rig.logs()),
            p = watch => {
                let bms_ecu = rig.ecus.iter_mut().find(|e| e.spec.serial == "BMS-1").unwrap();
                bms_ecu.kill();
                killed.store(true, Ordering::SeqCst);
                eprintln!("killed BMS-1 at {p:?}");
                check.await
            }
        }
    };
    assert!(killed.load(Ordering::SeqCst));
    assert_ne!(
        code,
        ok(),
        "the cycle must report BMS-1's failure\n{}",
        rig.logs()
    );
    assert!(
        message.contains("BMS-1"),
        "the error names the ECU: {message}"
    );
    // The others are updated regardless.
    assert_eq!(std::fs::read(&rig.hu_target).unwrap(), hu);
    assert_eq!(rig.ecu("ADAS-1").active_image(), adas);
    // The vanished ECU still runs what it had (nothing, here): its active
    // slot was never touched by the half transfer.
    assert_eq!(rig.ecu("BMS-1").state()["installed"], Value::Null);
    assert_ne!(rig.ecu("BMS-1").active_image(), bms);

    // The UI sees it unreachable (no exchange with it has completed yet: it
    // vanished in the middle of the first), the other secondary reachable,
    // both on CAN.
    let ecus = rig.vehicle.proxy().await.ecus().await.unwrap();
    let bms_link = ecus.iter().find(|e| e.serial == "BMS-1").unwrap();
    assert_eq!(
        (bms_link.status.as_str(), bms_link.transport.as_str()),
        ("unreachable", "can"),
        "{bms_link:?}"
    );
    assert_eq!(bms_link.last_contact, 0, "{bms_link:?}");
    let adas_link = ecus.iter().find(|e| e.serial == "ADAS-1").unwrap();
    assert_eq!(adas_link.status, "ok", "{adas_link:?}");

    // It comes back; the next cycle completes its update and only its.
    rig.ecu("BMS-1").restart();
    let (code, message) = rig.vehicle.check(CHECK_TIMEOUT).await;
    assert_eq!(code, ok(), "{message}\n{}", rig.logs());
    assert_eq!(rig.ecu("BMS-1").active_image(), bms);
    assert_eq!(rig.ecu("ADAS-1").active_image(), adas);
    let ecus = rig.vehicle.proxy().await.ecus().await.unwrap();
    let bms_link = ecus.iter().find(|e| e.serial == "BMS-1").unwrap();
    assert_eq!(bms_link.status, "ok", "{bms_link:?}");
    assert!(bms_link.last_contact > 0, "{bms_link:?}");
    assert_eq!(
        installed(&rig.last_report("BMS-1")),
        ("bms/fw-8.bin".to_owned(), sha256_hex(&bms)),
        "{}",
        rig.logs()
    );
}

/// Frames the rig's noise source put on the bus.
struct Noise {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Noise {
    /// Foreign traffic: other ids (11- and 29-bit), classic or FD, every
    /// `every`, until stopped.
    fn foreign(iface: &str, fd: bool, every: Duration) -> Noise {
        let sock = RawCanSocket::open(iface).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let ids = [0x100u32, 0x7DF, 0x7E3, 0x7EB, 0x18DA_F1AA, 0x1FFF_FFFF];
            let mut n = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                let id = ids[(n as usize) % ids.len()];
                let data = payload(if fd { 48 } else { 8 }, n);
                let frame = if fd {
                    CanFrame::fd(id, &data)
                } else {
                    CanFrame::classic(id, &data)
                };
                if sock.send(&frame).await.is_ok() {
                    sent2.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                tokio::time::sleep(every).await;
            }
        });
        Noise { stop, sent, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.sent.load(Ordering::Relaxed)
    }
}

/// Malformed ISO-TP frames addressed to an ECU (`rx`, on `iface`): a stray
/// consecutive frame, a flow control from nowhere, unknown PCI types, a
/// first frame that never continues, an empty frame, a single frame with a
/// length beyond its data, and a UDS request for a service nobody offers.
async fn garbage_to(iface: &str, rx: u32) -> usize {
    let sock = RawCanSocket::open(iface).unwrap();
    let frames: Vec<Vec<u8>> = vec![
        vec![0x21, 1, 2, 3, 4, 5, 6, 7],
        vec![0x30, 0x00, 0x00, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA],
        vec![0x40, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        vec![0xF7, 0x00],
        vec![0x10, 0xFF, 0x36, 0x01, 0, 0, 0, 0],
        vec![],
        vec![0x07, 0x22, 0xF1],
        vec![0x02, 0xBA, 0x01, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA],
        vec![0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    ];
    for f in &frames {
        sock.send(&CanFrame::classic(rx, f)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    frames.len()
}

/// Garbage addressed to the ECU before the cycle and foreign traffic on the
/// bus throughout it: the ECU survives the garbage, ignores the foreign ids,
/// and the update completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_foreign_frames_on_the_bus_do_not_break_an_update() {
    let classic = need!(vcan());
    let fd = need!(vcan_fd());
    let specs = vec![
        EcuSpec::new("BMS-1", "bms-v2", &classic, 0x5E8, 0x5E0),
        EcuSpec::new("ADAS-1", "adas-v3", &fd, 0x5E9, 0x5E1).with_fd(),
    ];
    let mut rig = rig(specs.clone(), &specs).await;
    let garbage = garbage_to(&classic, 0x5E0).await;
    // The ECU is still there and still answers after the garbage.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rig.ecu("BMS-1").running(), "{}", rig.logs());

    let hu = payload(2_000, 8);
    let bms = payload(40_000, 9);
    let adas = payload(40_000, 10);
    rig.repos.release("hu/rootfs-2.img", &hu, 2);
    rig.assign("BMS-1", "bms-v2", "bms/fw-2.bin", &bms, 2);
    rig.assign("ADAS-1", "adas-v3", "adas/fw-2.bin", &adas, 2);
    let noise_classic = Noise::foreign(&classic, false, Duration::from_millis(2));
    let noise_fd = Noise::foreign(&fd, true, Duration::from_millis(2));
    let (code, message) = rig
        .start_and_check(&[
            ("hu/rootfs-2.img", &hu),
            ("bms/fw-2.bin", &bms),
            ("adas/fw-2.bin", &adas),
        ])
        .await;
    let n_classic = noise_classic.stop().await;
    let n_fd = noise_fd.stop().await;
    eprintln!(
        "{garbage} garbage frames; foreign frames during the cycle: {n_classic} classic, {n_fd} FD"
    );
    assert!(
        n_classic > 100 && n_fd > 100,
        "the noise must overlap the cycle"
    );
    assert_eq!(code, ok(), "{message}\n{}", rig.logs());
    assert_eq!(rig.ecu("BMS-1").active_image(), bms);
    assert_eq!(rig.ecu("ADAS-1").active_image(), adas);
    assert!(rig.ecu("BMS-1").running() && rig.ecu("ADAS-1").running());
}

/// UDS service ids of the requests that went to CAN id `rx` (single and
/// first frames of classic ISO-TP), from a raw socket opened before.
async fn requests_to(sock: &RawCanSocket, rx: u32) -> Vec<u8> {
    let mut sids = Vec::new();
    while let Ok(f) = sock.recv_timeout(Duration::from_millis(200)).await {
        if f.id != rx || f.data.is_empty() {
            continue;
        }
        match f.data[0] >> 4 {
            0 if f.data.len() > 1 => sids.push(f.data[1]),
            1 if f.data.len() > 2 => sids.push(f.data[2]),
            _ => {}
        }
    }
    sids
}

/// An image for the wrong hardware: the Director assigns BMS-1 an image
/// that both repositories list for other hardware ("inverter-v1"; BMS-1 is
/// "bms-v2"), next to a valid image for ADAS-1. Full verification on the
/// Primary refuses the Director's whole targets metadata (Uptane 2.1
/// §5.4.4.2): nothing is installed anywhere, no image transfer starts on the
/// bus, and the attack is named on D-Bus and in the signed manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_for_the_wrong_hardware_never_reaches_the_bus() {
    let classic = need!(vcan());
    let fd = need!(vcan_fd());
    let specs = vec![
        EcuSpec::new("BMS-1", "bms-v2", &classic, 0x4E8, 0x4E0),
        EcuSpec::new("ADAS-1", "adas-v3", &fd, 0x4E9, 0x4E1).with_fd(),
    ];
    let mut rig = rig(specs.clone(), &specs).await;
    let wrong = payload(10_000, 11);
    let adas = payload(10_000, 12);
    rig.assign("BMS-1", "inverter-v1", "inv/fw-5.bin", &wrong, 5);
    rig.assign("ADAS-1", "adas-v3", "adas/fw-5.bin", &adas, 5);
    let bus = RawCanSocket::open(&classic).unwrap();
    bus.set_recv_buffer(8 << 20).unwrap();
    let (code, message) = rig
        .start_and_check(&[("inv/fw-5.bin", &wrong), ("adas/fw-5.bin", &adas)])
        .await;
    assert_eq!(
        code,
        ErrorCode::WrongHardware.as_u32(),
        "{message}\n{}",
        rig.logs()
    );
    for serial in ["BMS-1", "ADAS-1"] {
        assert_eq!(
            rig.ecu(serial).state()["installed"],
            Value::Null,
            "{serial}"
        );
        assert!(rig.ecu(serial).active_image().is_empty(), "{serial}");
    }
    let sids = requests_to(&bus, 0x4E0).await;
    assert!(
        !sids.iter().any(|s| matches!(s, 0x34 | 0x36 | 0x37)),
        "an image transfer started to BMS-1: {sids:02X?}"
    );
    let manifests = rig.backend.manifests();
    assert!(
        manifests
            .iter()
            .any(|m| attacks_detected(m).contains("wrong-hardware-id")),
        "{manifests:?}"
    );
}
