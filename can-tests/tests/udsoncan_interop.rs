//! Interop: an independent UDS client, PyPI `udsoncan` over `can-isotp`'s
//! kernel ISO-TP socket (`can-tests/interop/udsoncan_flash.py`, written from
//! `docs/secondary-protocol.md` only), flashes a real `secureev-ecu` process,
//! on classic CAN (`SECUREEV_VCAN`) and CAN FD (`SECUREEV_VCAN_FD`), and is
//! refused with the documented NRCs and result codes where it must be. Each
//! test checks the script's verdict *and* the ECU's state afterwards. One
//! more test talks to the ECU with can-utils' `isotpsend`/`isotprecv`.
//!
//! Needs vcan and `SECUREEV_CAN_PYTHON` (a Python with udsoncan and
//! can-isotp): `bash can-tests/run-vm.sh` provides both. Elsewhere every test
//! prints `SKIPPED: …`; with `SECUREEV_REQUIRE_VCAN=1` a missing piece fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the report

use secureev_can_tests::{need, payload, python, sha256_hex, vcan, vcan_fd, EcuProcess, EcuSpec};
use secureev_uds::security::{HmacSha256Algorithm, SecurityAlgorithm};
use secureev_uptane::builder::RepoBuilder;
use secureev_uptane::manifest::verify_ecu_report;
use secureev_uptane::Timestamp;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The time the tester writes; the Director's metadata is signed for it.
const NOW: i64 = 1_800_000_000;
const HW: &str = "bms-v2";
const SECRET: [u8; 32] = [0xA7; 32];
/// How long one run of the script may take (a 1 MiB flash under QEMU TCG).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(600);
/// The script's P2client floor (the script's default for emulated CAN).
const P2_FLOOR: &str = "2";
/// Every request's first response (`7F xx 78` or the answer) within the
/// script's P2client, so that no request is ever repeated (a repeat makes the
/// ECU answer twice). The time includes sending the request over ISO-TP (a
/// 4 KB TransferData is about 600 frames); the slowest seen under TCG was
/// 0.3 s. secureev-ecu sends `7F xx 78` after P2server/2 when its work takes
/// longer (`secondary/src/serve.rs`, unit-tested there to the millisecond).
const MAX_FIRST_RESPONSE: &str = "2.0";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/udsoncan_flash.py")
}

fn assigned(serial: &str, hardware_id: &str) -> Value {
    json!({"ecuIdentifiers": {serial: {"hardwareId": hardware_id}}})
}

/// A `secureev-ecu` process with its Director repository and a scratch
/// directory for the files the script reads and writes.
struct Rig {
    dir: tempfile::TempDir,
    ecu: EcuProcess,
    director: RepoBuilder,
}

impl Rig {
    fn start(spec: EcuSpec) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut director = RepoBuilder::new(Timestamp::from_unix(NOW));
        let root = director.publish_root().unwrap();
        let ecu = EcuProcess::start(&dir.path().join("ecu"), spec.with_secret(SECRET), &root);
        Rig { dir, ecu, director }
    }

    /// Publishes Director targets with these targets added; returns the file.
    fn publish(&mut self, targets: &[(&str, &[u8], Value)]) -> PathBuf {
        for (name, bytes, custom) in targets {
            self.director.add_target(name, bytes, Some(custom.clone()));
        }
        let path = self.dir.path().join("director-targets.json");
        std::fs::write(&path, self.director.publish().unwrap().targets).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the script against this ECU; returns whether it passed and its
    /// output (also copied to this test's log).
    fn udsoncan(
        &self,
        py: &Path,
        scenario: &str,
        metadata: &Path,
        image: &[u8],
        extra: &[&str],
    ) -> (bool, String) {
        let image_path = self.path("image.bin");
        std::fs::write(&image_path, image).unwrap();
        let spec = &self.ecu.spec;
        let mut args: Vec<OsString> = vec![
            script().into(),
            "--iface".into(),
            spec.iface.clone().into(),
            "--tx-id".into(),
            format!("0x{:X}", spec.rx_id).into(),
            "--rx-id".into(),
            format!("0x{:X}", spec.tx_id).into(),
            "--secret".into(),
            hex::encode(spec.secret).into(),
            "--metadata".into(),
            metadata.into(),
            "--image".into(),
            image_path.into(),
            "--time".into(),
            NOW.to_string().into(),
            "--scenario".into(),
            scenario.into(),
            "--expect-serial".into(),
            spec.serial.clone().into(),
            "--expect-hardware-id".into(),
            spec.hardware_id.clone().into(),
            "--report-out".into(),
            self.path("report.json").into(),
            "--identity-out".into(),
            self.path("identity.json").into(),
            "--p2".into(),
            P2_FLOOR.into(),
            "--max-first-response".into(),
            MAX_FIRST_RESPONSE.into(),
        ];
        if spec.fd {
            args.push("--fd".into());
        }
        args.extend(extra.iter().map(OsString::from));
        run_python(py, &args, &format!("{scenario} on {}", spec.iface))
    }

    /// The ECU refused: still running, nothing installed, no slot switched.
    fn assert_unchanged(&mut self) {
        assert!(self.ecu.running(), "secureev-ecu died:\n{}", self.ecu.log());
        let state = self.ecu.state();
        assert!(state["installed"].is_null(), "installed: {state}");
        assert!(
            self.ecu.active_image().is_empty(),
            "the active slot was written: {state}"
        );
    }

    /// The version report the script read, verified with the key the ECU
    /// announced in DID 0xF1A2 (which must be its real key).
    fn verified_report(&self) -> secureev_uptane::manifest::EcuVersionReport {
        let identity: Value =
            serde_json::from_slice(&std::fs::read(self.path("identity.json")).unwrap()).unwrap();
        let did = identity["did"].as_str().unwrap();
        assert_eq!(
            did,
            self.ecu.identity()["did"],
            "0xF1A2 is the ECU's did:key"
        );
        let key = secureev_uptane::did::resolve(did).unwrap();
        let bytes = std::fs::read(self.path("report.json")).unwrap();
        verify_ecu_report(&bytes, &key, &self.ecu.spec.serial)
            .expect("the report read by udsoncan verifies with the ECU's key")
            .value()
            .clone()
    }
}

/// Runs `py args…` with a deadline; its output goes to this test's log
/// (written to stderr directly, so that it shows for passing tests too).
fn run_python(py: &Path, args: &[OsString], what: &str) -> (bool, String) {
    let mut child = Command::new(py)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the udsoncan script");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("udsoncan script ({what}) ran longer than {SCRIPT_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = format!("{}{}", reader.join().unwrap(), err_reader.join().unwrap());
    let _ = writeln!(
        std::io::stderr().lock(),
        "---- udsoncan: {what}: {status} ----\n{text}"
    );
    (status.success(), text)
}

/// A Director target list larger than one classic ISO-TP PDU: this ECU's
/// image plus images for 30 other ECUs.
fn big_targets<'a>(serial: &str, image: &'a [u8]) -> Vec<(String, &'a [u8], Value)> {
    let mut t: Vec<(String, &[u8], Value)> = (0..30)
        .map(|i| {
            (
                format!("other-ecu-{i:02}.bin"),
                &b"other"[..],
                assigned(&format!("OTHER-{i:02}"), "other-hw"),
            )
        })
        .collect();
    t.push(("fw.bin".into(), image, assigned(serial, HW)));
    t
}

fn check_flashed(rig: &mut Rig, ok: bool, out: &str, image: &[u8]) {
    assert!(ok, "udsoncan did not flash the ECU:\n{out}");
    assert!(rig.ecu.running(), "secureev-ecu died:\n{}", rig.ecu.log());
    let state = rig.ecu.state();
    assert_eq!(state["installed"]["name"], "fw.bin", "{state}");
    assert_eq!(state["installed"]["length"], image.len() as u64);
    assert_eq!(
        sha256_hex(&rig.ecu.active_image()),
        sha256_hex(image),
        "the active slot holds the image"
    );
    let report = rig.verified_report();
    let installed = report.installed_image.expect("report names the image");
    assert_eq!(installed.filepath, "fw.bin");
    assert_eq!(installed.fileinfo.hashes["sha256"], sha256_hex(image));
}

#[test]
fn udsoncan_flashes_over_classic_can() {
    let iface = need!(vcan());
    let py = need!(python());
    let mut rig = Rig::start(EcuSpec::new("UDS-1", HW, &iface, 0x7E8, 0x7E0));
    // More than one TransferData block, less than a minute under TCG.
    let image = payload(20_000, 1);
    let metadata = rig.publish(&[("fw.bin", &image, assigned("UDS-1", HW))]);
    let (ok, out) = rig.udsoncan(&py, "flash", &metadata, &image, &[]);
    assert!(
        out.contains("2E F1C3 Director targets"),
        "small metadata goes by WriteDataByIdentifier:\n{out}"
    );
    check_flashed(&mut rig, ok, &out, &image);
}

#[test]
fn udsoncan_flashes_over_can_fd_with_metadata_download_and_counter_wrap() {
    let iface = need!(vcan_fd());
    let py = need!(python());
    let mut rig = Rig::start(EcuSpec::new("UDS-FD", HW, &iface, 0x7E9, 0x7E1).with_fd());
    // 257 blocks of 4093 bytes: the block counter wraps 0xFF -> 0x00.
    let image = payload(256 * 4093 + 1000, 2);
    let targets = big_targets("UDS-FD", &image);
    let targets: Vec<(&str, &[u8], Value)> = targets
        .iter()
        .map(|(n, b, c)| (n.as_str(), *b, c.clone()))
        .collect();
    let metadata = rig.publish(&targets);
    let len = std::fs::metadata(&metadata).unwrap().len();
    assert!(len > 4095, "Director targets of {len} bytes exceed one PDU");
    let (ok, out) = rig.udsoncan(&py, "flash", &metadata, &image, &[]);
    assert!(
        out.contains("to 0xFE00F1C3"),
        "metadata above max_pdu goes by RequestDownload:\n{out}"
    );
    assert!(
        out.contains("in 257 TransferData blocks"),
        "257 blocks:\n{out}"
    );
    check_flashed(&mut rig, ok, &out, &image);
}

#[test]
fn udsoncan_wrong_security_key_gets_invalid_key_then_lockout() {
    let iface = need!(vcan());
    let py = need!(python());
    let mut rig = Rig::start(EcuSpec::new("UDS-KEY", HW, &iface, 0x6E8, 0x6E0));
    let image = payload(5_000, 3);
    let metadata = rig.publish(&[("fw.bin", &image, assigned("UDS-KEY", HW))]);
    let (ok, out) = rig.udsoncan(&py, "wrong-key", &metadata, &image, &[]);
    assert!(ok, "wrong-key expectations:\n{out}");
    assert!(out.contains("27 12 wrong key → 7F 27 35"), "{out}");
    rig.assert_unchanged();
}

#[test]
fn udsoncan_without_security_access_gets_security_access_denied_29bit_ids() {
    let iface = need!(vcan());
    let py = need!(python());
    let mut rig = Rig::start(EcuSpec::new(
        "UDS-LOCKED",
        HW,
        &iface,
        0x18DA_F1E9,
        0x18DA_E9F1,
    ));
    let image = payload(5_000, 4);
    let metadata = rig.publish(&[("fw.bin", &image, assigned("UDS-LOCKED", HW))]);
    let (ok, out) = rig.udsoncan(&py, "no-security", &metadata, &image, &[]);
    assert!(ok, "no-security expectations:\n{out}");
    assert!(out.contains("34 00 44 image → 7F 34 33"), "{out}");
    assert!(out.contains("36 01 TransferData → 7F 36 33"), "{out}");
    rig.assert_unchanged();
}

#[test]
fn udsoncan_image_not_matching_director_hashes_is_refused() {
    let iface = need!(vcan());
    let py = need!(python());
    let mut rig = Rig::start(EcuSpec::new("UDS-HASH", HW, &iface, 0x6EA, 0x6E2));
    let image = payload(9_000, 5);
    let metadata = rig.publish(&[("fw.bin", &image, assigned("UDS-HASH", HW))]);
    let mut tampered = image.clone();
    tampered[4_567] ^= 0x01;
    let (ok, out) = rig.udsoncan(&py, "hash-mismatch", &metadata, &tampered, &[]);
    assert!(ok, "hash-mismatch expectations:\n{out}");
    rig.assert_unchanged();
    let report = rig.verified_report();
    assert!(
        report.attacks().contains(&"arbitrary-software"),
        "{report:?}"
    );
}

#[test]
fn udsoncan_image_of_wrong_size_is_refused_at_request_download() {
    let iface = need!(vcan());
    let py = need!(python());
    let mut rig = Rig::start(EcuSpec::new("UDS-SIZE", HW, &iface, 0x6EB, 0x6E3));
    let image = payload(9_000, 6);
    let metadata = rig.publish(&[("fw.bin", &image, assigned("UDS-SIZE", HW))]);
    let mut longer = image.clone();
    longer.extend_from_slice(b"appended");
    let (ok, out) = rig.udsoncan(&py, "wrong-size", &metadata, &longer, &[]);
    assert!(ok, "wrong-size expectations:\n{out}");
    assert!(out.contains("→ 7F 34 31"), "{out}");
    rig.assert_unchanged();
}

#[test]
fn udsoncan_image_for_another_ecu_is_refused() {
    let iface = need!(vcan());
    let py = need!(python());
    let mut rig = Rig::start(EcuSpec::new("UDS-MINE", HW, &iface, 0x6EC, 0x6E4));
    let image = payload(5_000, 7);
    // The Director assigns the image only to another ECU (same hardware).
    let metadata = rig.publish(&[("fw.bin", &image, assigned("UDS-OTHER", HW))]);
    let (ok, out) = rig.udsoncan(&py, "other-ecu", &metadata, &image, &[]);
    assert!(ok, "other-ecu expectations:\n{out}");
    assert!(out.contains("71 01 D000 01 no-update"), "{out}");
    assert!(out.contains("→ 7F 34 22"), "{out}");
    rig.assert_unchanged();
    assert!(rig.verified_report().installed_image.is_none());
}

#[test]
fn udsoncan_image_for_other_hardware_is_refused() {
    let iface = need!(vcan());
    let py = need!(python());
    let mut rig = Rig::start(EcuSpec::new("UDS-HW", HW, &iface, 0x6ED, 0x6E5));
    let image = payload(5_000, 8);
    let metadata = rig.publish(&[("fw.bin", &image, assigned("UDS-HW", "other-hw"))]);
    let (ok, out) = rig.udsoncan(&py, "wrong-hardware", &metadata, &image, &[]);
    assert!(ok, "wrong-hardware expectations:\n{out}");
    assert!(out.contains("71 01 D000 15 wrong-hardware-id"), "{out}");
    rig.assert_unchanged();
    let report = rig.verified_report();
    assert!(
        report.attacks().contains(&"wrong-hardware-id"),
        "{report:?}"
    );
}

/// The script's SecurityAccess key (Python `hmac`, from §2.1 of the doc)
/// equals the reference implementation's for random seeds. Needs only the
/// Python, no vcan.
#[test]
fn udsoncan_key_algorithm_matches_the_reference() {
    let py = need!(python());
    let alg = HmacSha256Algorithm::new(&SECRET).unwrap();
    let seeds = [payload(16, 11), payload(16, 12), vec![0xFF; 16], vec![0x01]];
    let mut args: Vec<OsString> = vec![script().into(), "--self-test".into()];
    args.push(hex::encode(SECRET).into());
    args.extend(seeds.iter().map(|s| OsString::from(hex::encode(s))));
    let (ok, out) = run_python(&py, &args, "key self-test");
    assert!(ok, "{out}");
    let keys: Vec<&str> = out.lines().collect();
    assert_eq!(keys.len(), seeds.len(), "{out}");
    for (seed, key) in seeds.iter().zip(keys) {
        assert_eq!(
            key,
            hex::encode(alg.compute_key(0x11, seed)),
            "seed {}",
            hex::encode(seed)
        );
    }
}

/// can-utils' `isotpsend`/`isotprecv` (one PDU each way, single frames) read
/// the ECU serial and get `7F 85 11` for a service the protocol does not use.
#[test]
fn canutils_isotpsend_talks_uds_to_the_ecu() {
    let iface = need!(vcan());
    let present = Command::new("isotpsend")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !present {
        assert!(
            !secureev_can_tests::required(),
            "can-utils (isotpsend) is not installed"
        );
        println!("SKIPPED: can-utils not installed");
        return;
    }
    let rig = Rig::start(EcuSpec::new("CU-1", HW, &iface, 0x6A8, 0x6A0));
    assert_eq!(
        canutils_request(&iface, 0x6A0, 0x6A8, "22 F1 A0"),
        "62 F1 A0 43 55 2D 31",
        "ReadDataByIdentifier ECU_SERIAL"
    );
    assert_eq!(
        canutils_request(&iface, 0x6A0, 0x6A8, "85 01"),
        "7F 85 11",
        "docs/secondary-protocol.md: every other SID gets serviceNotSupported"
    );
    drop(rig);
}

/// Sends `request` with `isotpsend` and returns the ECU's final answer as
/// `isotprecv` printed it (upper-case hex).
///
/// `isotprecv -l` prints every PDU it receives (line-buffered through
/// `stdbuf`), so a `7F <sid> 78` responsePending — which the ECU sends when
/// the answer takes longer than P2, as it can on an emulated CPU under load —
/// is skipped and the final answer read after it. The request is sent only
/// once `isotprecv`'s ISO-TP socket is bound (its receive filter shows in
/// `/proc/net/can`), so the answer cannot go out before anyone listens.
fn canutils_request(iface: &str, tx: u32, rx: u32, request: &str) -> String {
    let before = isotp_filters(iface, rx);
    let mut recv = Command::new("stdbuf")
        .args(["-oL", "isotprecv", "-l"])
        .args(["-s", &format!("{tx:03X}"), "-d", &format!("{rx:03X}")])
        .arg(iface)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stdbuf isotprecv");
    let bound_by = Instant::now() + Duration::from_secs(10);
    while isotp_filters(iface, rx) <= before {
        if let Some(status) = recv.try_wait().unwrap() {
            let mut err = String::new();
            let _ = recv.stderr.take().unwrap().read_to_string(&mut err);
            panic!("isotprecv exited before it bound ({status}): {err}");
        }
        assert!(
            Instant::now() < bound_by,
            "isotprecv's receive filter for {rx:03X} on {iface} did not appear in /proc/net/can"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = recv.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line.trim().to_uppercase()).is_err() {
                break;
            }
        }
    });
    let mut send = Command::new("isotpsend")
        .args(["-s", &format!("{tx:03X}"), "-d", &format!("{rx:03X}")])
        .args(["-p", "CC:"])
        .arg(iface)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn isotpsend");
    send.stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    assert!(send.wait().unwrap().success(), "isotpsend failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let answer = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if is_response_pending(&line) => seen.push(line),
            Ok(line) => break Some(line),
            Err(_) => break None,
        }
    };
    let _ = recv.kill();
    let _ = recv.wait();
    let _ = reader.join();
    answer.unwrap_or_else(|| {
        panic!("no final answer to {request:?} through can-utils within 20 s (saw {seen:?})")
    })
}

/// Whether an answer is a negative response `7F <sid> 78` (responsePending).
fn is_response_pending(line: &str) -> bool {
    let bytes: Vec<&str> = line.split_whitespace().collect();
    bytes.len() == 3 && bytes[0] == "7F" && bytes[2] == "78"
}

/// How many ISO-TP receive filters for `can_id` on `iface` the kernel lists
/// in `/proc/net/can/rcvlist_*` (the `ident` column names the protocol).
fn isotp_filters(iface: &str, can_id: u32) -> usize {
    let dir = std::fs::read_dir("/proc/net/can").expect("/proc/net/can (the can module is loaded)");
    let mut n = 0;
    for entry in dir.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("rcvlist_") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        n += text
            .lines()
            .filter(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                f.len() >= 7
                    && f[0] == iface
                    && u32::from_str_radix(f[1], 16).ok() == Some(can_id)
                    && f[f.len() - 1] == "isotp"
            })
            .count();
    }
    n
}
