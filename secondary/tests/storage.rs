//! The ECU's own storage failures, end to end (issue 11): the real
//! `secureev-ecu` process, its state or its slots on a small tmpfs that the
//! test fills, driven over DoIP on loopback by the Primary's own transport
//! (`secureev_daemon::ecus::DoipSecondary`). A full slot or state directory
//! is answered with NRC 0x72 generalProgrammingFailure
//! (`docs/secondary-protocol.md` §7), which the Primary reports as
//! [`secureev_daemon::Error::SecondaryFault`] (D-Bus `30 install-failed`),
//! not as a refusal of its metadata: it used to be verify-metadata / verify-image
//! result `0x21 missing-metadata`. No attack is recorded, and the same update
//! installs once there is room again.
//!
//! A stored trusted root that cannot be read is NRC 0x26, not "none stored"
//! (no tmpfs: the file is replaced by a directory).
//!
//! Mounting tmpfs needs root; without it those tests say SKIPPED (and fail
//! when `SECUREEV_REQUIRE_ROOT` is set, as in CI).

// allow-unwrap-in-tests only covers the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../daemon/tests/verified/mod.rs"]
mod verified;

use secureev_daemon::config::Verification;
use secureev_daemon::ecus::{
    DoipConnector, DoipSecondary, MetadataBundle, SecondaryTransport, SecretSource,
    DEFAULT_TESTER_ADDRESS,
};
use secureev_daemon::install::VerifiedFile;
use secureev_daemon::Error;
use secureev_uptane::builder::RepoBuilder;
use secureev_uptane::encryption::{encrypt_image, ContentKey};
use secureev_uptane::Timestamp;
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const SECRET: [u8; 32] = [0x6B; 32];
const SERIAL: &str = "BMS-STORAGE";
const HW: &str = "bms-v3";
const LA: u16 = 0x0E82;
const NOW: i64 = 1_800_000_000;

/// A tmpfs of `size` on `dir` for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root {
            assert!(
                std::env::var_os("SECUREEV_REQUIRE_ROOT").is_none(),
                "SECUREEV_REQUIRE_ROOT is set but the test does not run as root"
            );
            eprintln!("SKIPPED: mounting tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Some(Tmpfs(dir.to_owned()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {}", self.0.display());
    }

    /// Fill what is left with `fill.blob`; its path.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("fill.blob");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The `secureev-ecu` process, killed on drop.
struct EcuProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for EcuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EcuProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Fields drop in order: the process first, then the mounts, the directory.
struct Rig {
    ecu: EcuProcess,
    _mounts: Vec<Tmpfs>,
    director: RepoBuilder,
    root: Vec<u8>,
    dir: tempfile::TempDir,
}

/// Where the ECU keeps what (`None`: a plain directory).
struct Layout {
    state: Option<&'static str>,
    slots: Option<&'static str>,
}

/// The ECU process with its state in `<dir>/state` and its slots in
/// `<dir>/slots`, each on a tmpfs of the given size; `None` when tmpfs
/// cannot be mounted (not root).
async fn rig(layout: Layout) -> Option<Rig> {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let slots = dir.path().join("slots");
    let mut mounts = Vec::new();
    for (path, size) in [(&state, layout.state), (&slots, layout.slots)] {
        match size {
            Some(size) => mounts.push(Tmpfs::mount(path, size)?),
            None => std::fs::create_dir_all(path).unwrap(),
        }
    }
    let mut director = RepoBuilder::new(Timestamp::from_unix(NOW));
    let root = director.publish_root().unwrap();
    let root_path = dir.path().join("director-root.json");
    std::fs::write(&root_path, &root).unwrap();
    std::fs::write(state.join("security-secret"), hex::encode(SECRET)).unwrap();
    let config = dir.path().join("ecu.toml");
    std::fs::write(
        &config,
        format!(
            "serial = \"{SERIAL}\"\nhardware_id = \"{HW}\"\nstate_dir = \"{}\"\n\
             director_root = \"{}\"\nslot_a = \"{}\"\nslot_b = \"{}\"\n\
             [doip]\nlogical_address = {LA}\n",
            state.display(),
            root_path.display(),
            slots.join("a.img").display(),
            slots.join("b.img").display(),
        ),
    )
    .unwrap();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let log = dir.path().join("ecu.log");
    let child = Command::new(env!("CARGO_BIN_EXE_secureev-ecu"))
        .arg("--config")
        .arg(&config)
        .arg("--doip")
        .arg(addr.to_string())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut ecu = EcuProcess { child, addr, log };
    // Serving once it accepts a connection (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = ecu.child.try_wait().unwrap() {
            panic!("secureev-ecu exited with {status}:\n{}", ecu.log());
        }
        assert!(
            Instant::now() < deadline,
            "secureev-ecu does not listen:\n{}",
            ecu.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(Rig {
        ecu,
        _mounts: mounts,
        director,
        root,
        dir,
    })
}

impl Rig {
    fn transport(&self) -> DoipSecondary {
        DoipSecondary::new(
            SERIAL,
            HW,
            Verification::Partial,
            DoipConnector {
                address: self.ecu.addr.to_string(),
                tester: DEFAULT_TESTER_ADDRESS,
                ecu: LA,
            },
            SecretSource::Bytes(Arc::new(Zeroizing::new(SECRET.to_vec()))),
        )
        .with_clock(Arc::new(|| NOW))
    }

    /// The Director assigns `name` (these bytes as served) to the ECU; the
    /// metadata the Primary sends and the served file, verified as the
    /// Primary verifies it.
    fn publish(
        &mut self,
        name: &str,
        served: &[u8],
        custom: Value,
    ) -> (MetadataBundle, VerifiedFile) {
        self.director.targets.clear();
        self.director.add_target(name, served, Some(custom.clone()));
        let p = self.director.publish().unwrap();
        let bundle = MetadataBundle {
            director: vec![
                ("root".into(), self.root.clone()),
                ("targets".into(), p.targets),
            ],
            image: Vec::new(),
        };
        let path = self.dir.path().join(name);
        let image = verified::verified_image(&path, name, served, SERIAL, HW, custom);
        (bundle, image)
    }

    /// The ECU's signed version report: `(installed filepath, attacks)`.
    async fn report(&self, t: &DoipSecondary) -> (Option<String>, String, Value) {
        let bytes = t.report().await.unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let signed = &v["signed"];
        (
            signed["installed_image"]["filepath"]
                .as_str()
                .map(str::to_owned),
            signed["attacks_detected"].as_str().unwrap_or("").to_owned(),
            signed["installation_result"].clone(),
        )
    }
}

fn custom(counter: u64) -> Value {
    json!({"ecuIdentifiers": {SERIAL: {"hardwareId": HW}}, "releaseCounter": counter})
}

fn image(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8)
        .collect()
}

/// `e` is the ECU's own failure with NRC 0x72, on service `sid`.
fn assert_programming_failure(e: &Error, sid: u8, log: &str) {
    assert_fault(e, sid, 0x72, "generalProgrammingFailure", log);
}

/// `e` is the ECU's own failure with NRC `code` (`name`), on service `sid`.
fn assert_fault(e: &Error, sid: u8, code: u8, name: &str, log: &str) {
    match e {
        Error::SecondaryFault { ecu, nrc, reason } => {
            assert_eq!(ecu, SERIAL);
            assert_eq!(*nrc, code, "{reason}");
            assert!(
                reason.contains(&format!("service 0x{sid:02X}")) && reason.contains(name),
                "{reason}"
            );
        }
        other => {
            panic!("expected SecondaryFault 0x{code:02X} on 0x{sid:02X}, got {other:?}\n{log}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_state_directory_fails_verify_metadata_with_0x72_not_missing_metadata() {
    let Some(mut rig) = rig(Layout {
        state: Some("1m"),
        slots: None,
    })
    .await
    else {
        return;
    };
    let t = rig.transport();
    t.info().await.unwrap();
    let fw = image(20_000, 1);
    let (bundle, img) = rig.publish("bms-2.bin", &fw, custom(2));

    let fill = rig._mounts[0].fill();
    let e = t.send_metadata(&bundle).await.unwrap_err();
    assert_programming_failure(&e, 0x31, &rig.ecu.log());
    assert!(rig.ecu.log().contains("No space left on device"));

    // Room again: the same metadata verifies, the image installs, and the
    // report names no attack.
    std::fs::remove_file(fill).unwrap();
    t.send_metadata(&bundle).await.unwrap();
    t.send_image(&img, &|_| {}).await.unwrap();
    t.activate(&img).await.unwrap();
    let (installed, attacks, _) = rig.report(&t).await;
    assert_eq!(installed.as_deref(), Some("bms-2.bin"));
    assert_eq!(attacks, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_slot_fails_transfer_data_with_0x72_and_installs_when_room_returns() {
    let Some(mut rig) = rig(Layout {
        state: None,
        slots: Some("64k"),
    })
    .await
    else {
        return;
    };
    let t = rig.transport();
    t.info().await.unwrap();
    let fw = image(256 * 1024, 2);
    let (bundle, img) = rig.publish("bms-3.bin", &fw, custom(3));
    t.send_metadata(&bundle).await.unwrap();
    let e = t.send_image(&img, &|_| {}).await.unwrap_err();
    assert_programming_failure(&e, 0x36, &rig.ecu.log());

    rig._mounts[0].resize("1m");
    t.send_image(&img, &|_| {}).await.unwrap();
    t.activate(&img).await.unwrap();
    let (installed, attacks, _) = rig.report(&t).await;
    assert_eq!(installed.as_deref(), Some("bms-3.bin"));
    assert_eq!(attacks, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_room_to_decrypt_fails_verify_image_with_0x72_not_missing_metadata() {
    // Room for the ciphertext in the inactive slot, not for its plaintext
    // beside it.
    let Some(mut rig) = rig(Layout {
        state: None,
        slots: Some("320k"),
    })
    .await
    else {
        return;
    };
    let t = rig.transport();
    let ecu_key = t.info().await.unwrap().encryption_key.unwrap();
    let plain = image(200 * 1024, 3);
    let key = ContentKey::generate();
    let (cipher, mut info) = encrypt_image(&key, &plain, 8192).unwrap();
    info.wrap_key_for("bms-enc.bin", SERIAL, &key, &ecu_key)
        .unwrap();
    let mut c = custom(4);
    c["encryption"] = serde_json::to_value(&info).unwrap();
    let (bundle, img) = rig.publish("bms-enc.bin", &cipher, c);
    t.send_metadata(&bundle).await.unwrap();
    let e = t.send_image(&img, &|_| {}).await.unwrap_err();
    assert_programming_failure(&e, 0x31, &rig.ecu.log());
    assert!(
        rig.ecu.log().contains("verify-image: writing the slot"),
        "{}",
        rig.ecu.log()
    );
    // The failed installation is reported as what it was, with no attack.
    let (installed, attacks, result) = rig.report(&t).await;
    assert_eq!(installed, None);
    assert_eq!(attacks, "");
    assert_eq!(result["success"], false, "{result}");
    assert_eq!(result["code"], "failed", "{result}");
    assert!(
        result["message"]
            .as_str()
            .is_some_and(|m| m.contains("No space left")),
        "{result}"
    );

    rig._mounts[0].resize("1m");
    t.send_image(&img, &|_| {}).await.unwrap();
    t.activate(&img).await.unwrap();
    let (installed, attacks, _) = rig.report(&t).await;
    assert_eq!(installed.as_deref(), Some("bms-enc.bin"));
    assert_eq!(attacks, "");
}

/// A stored trusted root that cannot be read is a storage failure (NRC 0x26
/// failurePreventsExecutionOfRequestedAction), never "no root stored": read
/// as absent it used to fall back to the shipped root, forgetting a
/// rotation. No tmpfs needed: the stored file is replaced by a directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_stored_root_fails_verify_metadata_with_0x26() {
    let mut rig = rig(Layout {
        state: None,
        slots: None,
    })
    .await
    .expect("no mounts needed");
    let t = rig.transport();
    t.info().await.unwrap();
    let fw = image(10_000, 5);
    let (bundle, _) = rig.publish("bms-5.bin", &fw, custom(5));
    t.send_metadata(&bundle).await.unwrap();
    let stored = rig.dir.path().join("state/metadata/director/root.json");
    let good = std::fs::read(&stored).unwrap();
    std::fs::remove_file(&stored).unwrap();
    std::fs::create_dir(&stored).unwrap();

    let fw = image(10_000, 6);
    let (bundle, img) = rig.publish("bms-6.bin", &fw, custom(6));
    let e = t.send_metadata(&bundle).await.unwrap_err();
    assert_fault(
        &e,
        0x31,
        0x26,
        "failurePreventsExecutionOfRequestedAction",
        &rig.ecu.log(),
    );
    assert!(
        rig.ecu.log().contains("reading the state"),
        "{}",
        rig.ecu.log()
    );

    std::fs::remove_dir(&stored).unwrap();
    std::fs::write(&stored, good).unwrap();
    t.send_metadata(&bundle).await.unwrap();
    t.send_image(&img, &|_| {}).await.unwrap();
    t.activate(&img).await.unwrap();
    let (installed, attacks, _) = rig.report(&t).await;
    assert_eq!(installed.as_deref(), Some("bms-6.bin"));
    assert_eq!(attacks, "");
}
