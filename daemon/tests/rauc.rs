//! The `rauc` installer against the real RAUC service (Debian's `rauc`, 1.8).
//!
//! Each test starts its own `dbus-daemon` (a private bus) and `rauc service`
//! on it (`DBUS_STARTER_BUS_TYPE=session`), with a file-backed system: two raw
//! slot files and `bootloader=custom`, whose backend script keeps the
//! bootloader's primary slot and slot states in files. Bundles are built and
//! signed in the test with `rauc bundle`, by a test CA made with `openssl`.
//! A reboot is simulated: RAUC is stopped, the "bootloader" picks the slot
//! from the backend's files (or falls back), the boot ID changes, and RAUC
//! starts again with `--override-boot-slot`.
//!
//! RAUC mounts bundles (squashfs on a loop device), so the tests need root and
//! a kernel with squashfs and loop. Without them they are skipped with a note,
//! except when `CI` or `SECUREEV_REQUIRE_RAUC=1` is set: then they fail.
//! `daemon/tests/rauc-prereqs.sh` installs rauc, squashfs-tools, openssl and
//! dbus (scripts/test.sh calls it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_common;
mod verified;

use secureev_daemon::config::{ManifestHashPolicy, RaucInstallConfig};
use secureev_daemon::install::rauc::{RaucInstaller, RaucPhase};
use secureev_daemon::install::{
    install_image_with_progress, recover, InstallOutcome, InstallProgress, Recovery, TargetFacts,
    VerifiedFile,
};
use secureev_daemon::store::{InstalledRecord, Store};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const COMPATIBLE: &str = "secureev-test";
/// Every wait on RAUC or the bus in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this host can run RAUC installs; the reason when not.
fn unavailable() -> Option<String> {
    for cmd in ["rauc", "dbus-daemon", "mksquashfs", "openssl"] {
        if !have(cmd) {
            return Some(format!(
                "{cmd} not installed (daemon/tests/rauc-prereqs.sh)"
            ));
        }
    }
    // The effective user, without unsafe code (`id -u`).
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("RAUC mounts bundles: root needed".into());
    }
    if !std::path::Path::new("/dev/loop-control").exists() {
        return Some("no loop devices (/dev/loop-control)".into());
    }
    if !std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .contains("squashfs")
    {
        return Some("kernel without squashfs".into());
    }
    None
}

/// `None` (test skipped) or panics when the environment must have RAUC.
fn require_rauc() -> bool {
    match unavailable() {
        None => true,
        Some(why) => {
            let required = std::env::var_os("CI").is_some()
                || std::env::var("SECUREEV_REQUIRE_RAUC").as_deref() == Ok("1");
            assert!(!required, "RAUC tests cannot run here: {why}");
            eprintln!("skipping RAUC test: {why}");
            false
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// A private bus, RAUC on it, two file slots and a bootloader made of files.
struct Rig {
    dir: tempfile::TempDir,
    bus: Child,
    address: String,
    rauc: Option<Child>,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["slots", "boot", "mnt", "state", "pki", "bundles"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // Test CA and a signer it certifies (no extendedKeyUsage: RAUC 1.8
        // refuses codeSigning for its default purpose check).
        let pki = d.join("pki");
        run(Command::new("openssl").current_dir(&pki).args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key.pem",
            "-out",
            "ca.cert.pem",
            "-subj",
            "/CN=SecureEV-OTA test CA",
            "-days",
            "3650",
        ]));
        run(Command::new("openssl").current_dir(&pki).args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "signer.key.pem",
            "-out",
            "signer.csr",
            "-subj",
            "/CN=SecureEV-OTA test bundle signer",
        ]));
        std::fs::write(
            pki.join("ext.cnf"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
        )
        .unwrap();
        run(Command::new("openssl").current_dir(&pki).args([
            "x509",
            "-req",
            "-in",
            "signer.csr",
            "-CA",
            "ca.cert.pem",
            "-CAkey",
            "ca.key.pem",
            "-CAcreateserial",
            "-out",
            "signer.cert.pem",
            "-days",
            "3650",
            "-extfile",
            "ext.cnf",
        ]));
        for slot in ["a", "b"] {
            std::fs::write(d.join(format!("slots/{slot}.img")), vec![0u8; 1 << 20]).unwrap();
        }
        // The custom bootloader backend (RAUC docs, "Custom bootloader
        // backend"): primary slot and per-slot state in files.
        let boot = d.join("boot");
        std::fs::write(boot.join("primary"), "A\n").unwrap();
        std::fs::write(boot.join("state.A"), "good\n").unwrap();
        std::fs::write(boot.join("state.B"), "good\n").unwrap();
        std::fs::write(boot.join("booted"), "A\n").unwrap();
        std::fs::write(boot.join("boot_id"), "boot-1\n").unwrap();
        let backend = d.join("backend.sh");
        std::fs::write(
            &backend,
            format!(
                "#!/bin/sh\n# set-primary also resets the slot to good, like a bootloader\n\
                 # that gives a new primary its boot attempts back.\nB={}\n\
                 echo \"$*\" >> \"$B/calls\"\n\
                 case \"$1\" in\n\
                 get-primary) cat \"$B/primary\" ;;\n\
                 set-primary) echo \"$2\" > \"$B/primary\"; echo good > \"$B/state.$2\" ;;\n\
                 get-state) cat \"$B/state.$2\" ;;\n\
                 set-state) echo \"$3\" > \"$B/state.$2\" ;;\n\
                 *) echo \"unknown backend call $*\" >&2; exit 1 ;;\n\
                 esac\n",
                boot.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&backend, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            d.join("system.conf"),
            format!(
                "[system]\ncompatible={COMPATIBLE}\nbootloader=custom\nstatusfile={d}/state/status.raucs\n\
                 mountprefix={d}/mnt\n\n[handlers]\nbootloader-custom-backend={d}/backend.sh\n\n\
                 [keyring]\npath={d}/pki/ca.cert.pem\n\n\
                 [slot.rootfs.0]\ndevice={d}/slots/a.img\ntype=raw\nbootname=A\n\n\
                 [slot.rootfs.1]\ndevice={d}/slots/b.img\ntype=raw\nbootname=B\n",
                d = d.display()
            ),
        )
        .unwrap();
        let socket = d.join("bus");
        std::fs::write(
            d.join("bus.conf"),
            format!(
                "<busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>",
                socket.display()
            ),
        )
        .unwrap();
        let bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", d.join("bus.conf").display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "dbus-daemon did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut rig = Rig {
            address: format!("unix:path={}", socket.display()),
            dir,
            bus,
            rauc: None,
        };
        rig.start_rauc();
        rig
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn boot_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("boot/{name}")))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn start_rauc(&mut self) {
        let booted = self.boot_file("booted");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("rauc.log"))
            .unwrap();
        let child = Command::new("rauc")
            .arg(format!("--conf={}", self.path("system.conf").display()))
            .arg("service")
            .arg(format!("--override-boot-slot={booted}"))
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .env("DBUS_STARTER_BUS_TYPE", "session")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.rauc = Some(child);
        // Ready when it owns its name.
        let deadline = Instant::now() + WAIT;
        loop {
            let out = Command::new("busctl")
                .args(["--address", &self.address, "status", "de.pengutronix.rauc"])
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rauc service did not take its name: {}",
                self.rauc_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_rauc(&mut self) {
        if let Some(mut c) = self.rauc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn rauc_log(&self) -> String {
        std::fs::read_to_string(self.path("rauc.log")).unwrap_or_default()
    }

    /// Simulated reboot: the bootloader boots the primary slot if its state is
    /// good, else the other one; `fail_new` makes the new primary fail its
    /// boot attempts (state bad), so the bootloader falls back.
    fn reboot(&mut self, fail_new: bool) {
        self.stop_rauc();
        let primary = self.boot_file("primary");
        if fail_new {
            std::fs::write(self.path(&format!("boot/state.{primary}")), "bad\n").unwrap();
        }
        let good = self.boot_file(&format!("state.{primary}")) == "good";
        let booted = match (good, primary.as_str()) {
            (true, p) => p.to_owned(),
            (false, "A") => "B".to_owned(),
            (false, _) => "A".to_owned(),
        };
        std::fs::write(self.path("boot/booted"), format!("{booted}\n")).unwrap();
        let n: u32 = self
            .boot_file("boot_id")
            .trim_start_matches("boot-")
            .parse()
            .unwrap();
        std::fs::write(self.path("boot/boot_id"), format!("boot-{}\n", n + 1)).unwrap();
        self.start_rauc();
    }

    /// A signed bundle whose rootfs image is `mib` MiB of `byte`; with
    /// `slow_hook_secs`, a post-install hook that sleeps that long (to kill
    /// the daemon during InstallBundle).
    fn bundle(&self, name: &str, byte: u8, kib: usize, slow_hook_secs: u32) -> PathBuf {
        let content = self.path(&format!("bundles/{name}.d"));
        std::fs::create_dir_all(&content).unwrap();
        std::fs::write(content.join("rootfs.img"), vec![byte; kib * 1024]).unwrap();
        let mut manifest = format!(
            "[update]\ncompatible={COMPATIBLE}\nversion={name}\n\n[bundle]\nformat=plain\n\n\
             [image.rootfs]\nfilename=rootfs.img\n"
        );
        if slow_hook_secs > 0 {
            manifest.push_str("hooks=post-install\n\n[hooks]\nfilename=hook.sh\n");
            std::fs::write(
                content.join("hook.sh"),
                format!(
                    "#!/bin/sh\ncase \"$1\" in slot-post-install) sleep {slow_hook_secs} ;; esac\n"
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                content.join("hook.sh"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        std::fs::write(content.join("manifest.raucm"), manifest).unwrap();
        let out = self.path(&format!("bundles/{name}.raucb"));
        let pki = self.path("pki");
        run(Command::new("rauc")
            .arg("bundle")
            .arg(format!("--cert={}", pki.join("signer.cert.pem").display()))
            .arg(format!("--key={}", pki.join("signer.key.pem").display()))
            .arg(format!("--keyring={}", pki.join("ca.cert.pem").display()))
            .arg(&content)
            .arg(&out));
        out
    }

    fn config(&self, health: Option<&Path>) -> RaucInstallConfig {
        RaucInstallConfig {
            bus: self.address.clone(),
            manifest_hash: ManifestHashPolicy::IfSupported,
            install_timeout_secs: WAIT.as_secs(),
            health_check: health
                .map(|p| vec![p.display().to_string()])
                .unwrap_or_default(),
            health_timeout_secs: 30,
            boot_id_file: self.path("boot/boot_id"),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop_rauc();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
        // RAUC unmounts its bundle after each install; be sure.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.path("mnt"))
            .output();
    }
}

fn facts(bundle: &Path, name: &str) -> TargetFacts {
    TargetFacts {
        name: name.into(),
        ecu_serial: "HU-1".into(),
        hardware_id: "hu-test".into(),
        release_counter: 2,
        length: std::fs::metadata(bundle).unwrap().len(),
        sha256: sha256_file(bundle),
    }
}

/// The bundle verified as the target `name` for HU-1, as the daemon's
/// download verifies it (installers take nothing else).
fn verified_bundle(bundle: &Path, name: &str) -> VerifiedFile {
    let bytes = std::fs::read(bundle).unwrap();
    let img = verified::verified_image(
        bundle,
        name,
        &bytes,
        "HU-1",
        "hu-test",
        serde_json::json!({ "releaseCounter": 2 }),
    );
    assert_eq!(TargetFacts::of(&img).unwrap(), facts(bundle, name));
    img
}

/// What `installed.json` gets for `img`, installed at 10.
fn record(img: &VerifiedFile) -> InstalledRecord {
    InstalledRecord::of(img, 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rauc_installs_reports_progress_and_marks_good_after_reboot_and_health_check() {
    if !require_rauc() {
        return;
    }
    let mut rig = Rig::new();
    let bundle = rig.bundle("2.0", 0x5a, 2048, 0);
    let state = rig.path("state/otad");
    let store = Store::open(&state).unwrap();
    let marker = rig.path("health-ran");
    let health = rig.path("health.sh");
    std::fs::write(&health, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&health, std::fs::Permissions::from_mode(0o755)).unwrap();
    let installer = RaucInstaller::new(rig.config(Some(&health)), &state);
    let f = facts(&bundle, "hu-rootfs-2.0.raucb");
    let img = verified_bundle(&bundle, "hu-rootfs-2.0.raucb");

    let seen: Arc<Mutex<Vec<InstallProgress>>> = Arc::default();
    let sink = seen.clone();
    let outcome =
        install_image_with_progress(&store, &installer, &img, 10, &move |p: InstallProgress| {
            sink.lock().unwrap().push(p)
        })
        .await
        .unwrap_or_else(|e| panic!("install: {e:#}\nRAUC log:\n{}", rig.rauc_log()));
    assert_eq!(outcome, InstallOutcome::PendingReboot);

    // RAUC's progress, mapped: percentages never go back and end at 100.
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "progress steps: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].percent <= w[1].percent),
        "{seen:?}"
    );
    assert_eq!(seen.last().unwrap().percent, 100, "{seen:?}");
    assert!(
        seen.iter().any(|p| p.message.contains("Installing")),
        "{seen:?}"
    );

    // Written to the other slot, which boots next; nothing recorded yet.
    assert_eq!(
        std::fs::read(rig.path("slots/b.img")).unwrap(),
        vec![0x5a; 2048 * 1024]
    );
    assert_eq!(rig.boot_file("primary"), "B");
    assert!(!store.installed().unwrap().contains_key("HU-1"));
    assert_eq!(
        installer.record().unwrap().unwrap().phase,
        RaucPhase::PendingReboot
    );

    // A daemon restart before the reboot: still pending, journal kept.
    let again = RaucInstaller::new(rig.config(Some(&health)), &state);
    assert_eq!(
        recover(&store, &again).await.unwrap(),
        Recovery::PendingReboot(f.clone())
    );
    assert!(store.journal().unwrap().is_some());
    assert!(!marker.exists(), "no health check before the reboot");

    rig.reboot(false);
    assert_eq!(rig.boot_file("booted"), "B");
    std::fs::write(rig.path("boot/calls"), "").unwrap();
    let after = RaucInstaller::new(rig.config(Some(&health)), &state);
    assert_eq!(
        recover(&store, &after).await.unwrap(),
        Recovery::Completed(f.clone())
    );
    assert!(marker.exists(), "the health check ran before Mark(good)");
    assert_eq!(store.installed().unwrap().get("HU-1"), Some(&record(&img)));
    assert!(store.journal().unwrap().is_none());
    assert!(after.record().unwrap().is_none());
    // Mark("good", "booted") reached the bootloader backend.
    let calls = rig.boot_file("calls");
    assert!(
        calls.lines().any(|l| l == "set-state B good"),
        "backend calls: {calls}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rauc_boot_that_fell_back_is_a_failed_install_with_its_reason() {
    if !require_rauc() {
        return;
    }
    let mut rig = Rig::new();
    let bundle = rig.bundle("2.0", 0x11, 512, 0);
    let state = rig.path("state/otad");
    let store = Store::open(&state).unwrap();
    let installer = RaucInstaller::new(rig.config(None), &state);
    let f = facts(&bundle, "hu-rootfs-2.0.raucb");
    let img = verified_bundle(&bundle, "hu-rootfs-2.0.raucb");
    let outcome = install_image_with_progress(&store, &installer, &img, 10, &|_| {})
        .await
        .unwrap();
    assert_eq!(outcome, InstallOutcome::PendingReboot);

    rig.reboot(true);
    assert_eq!(rig.boot_file("booted"), "A", "the bootloader fell back");
    let after = RaucInstaller::new(rig.config(None), &state);
    match recover(&store, &after).await.unwrap() {
        Recovery::Failed(got, reason) => {
            assert_eq!(got, f);
            assert!(
                reason.contains("booted slot A, not the new slot B"),
                "{reason}"
            );
            assert!(reason.contains("fell back"), "{reason}");
        }
        other => panic!("expected a failed install, got {other:?}"),
    }
    assert!(
        !store.installed().unwrap().contains_key("HU-1"),
        "nothing recorded as installed"
    );
    assert!(store.journal().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rauc_health_check_failure_marks_the_new_slot_bad() {
    if !require_rauc() {
        return;
    }
    let mut rig = Rig::new();
    let bundle = rig.bundle("2.0", 0x22, 512, 0);
    let state = rig.path("state/otad");
    let store = Store::open(&state).unwrap();
    let health = rig.path("health.sh");
    std::fs::write(
        &health,
        "#!/bin/sh\necho 'hmi did not come up' >&2\nexit 3\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&health, std::fs::Permissions::from_mode(0o755)).unwrap();
    let installer = RaucInstaller::new(rig.config(Some(&health)), &state);
    let img = verified_bundle(&bundle, "hu-rootfs-2.0.raucb");
    install_image_with_progress(&store, &installer, &img, 10, &|_| {})
        .await
        .unwrap();
    rig.reboot(false);
    let after = RaucInstaller::new(rig.config(Some(&health)), &state);
    match recover(&store, &after).await.unwrap() {
        Recovery::Failed(_, reason) => {
            assert!(reason.contains("health check failed"), "{reason}");
            assert!(reason.contains("hmi did not come up"), "{reason}");
        }
        other => panic!("expected a failed install, got {other:?}"),
    }
    assert_eq!(
        rig.boot_file("state.B"),
        "bad",
        "Mark(bad, booted) reached the bootloader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rauc_default_policy_refuses_a_rauc_without_manifest_hash_binding() {
    if !require_rauc() {
        return;
    }
    let rig = Rig::new();
    let bundle = rig.bundle("2.0", 0x33, 64, 0);
    let state = rig.path("state/otad");
    let store = Store::open(&state).unwrap();
    let mut config = rig.config(None);
    config.manifest_hash = ManifestHashPolicy::Require;
    let installer = RaucInstaller::new(config, &state);
    let img = verified_bundle(&bundle, "hu-rootfs-2.0.raucb");
    let err = install_image_with_progress(&store, &installer, &img, 10, &|_| {})
        .await
        .expect_err("RAUC 1.8 has no InspectBundle");
    assert!(
        format!("{err:#}").contains("require-manifest-hash"),
        "{err:#}"
    );
    assert_eq!(rig.boot_file("primary"), "A", "nothing installed");
}

/// The child half of the kill test: installs and waits to be killed. Does
/// nothing unless the parent test started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rauc_kill_child() {
    let Ok(spec) = std::env::var("SECUREEV_RAUC_KILL_CHILD") else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    let store = Store::open(s("state")).unwrap();
    let config = RaucInstallConfig {
        bus: s("bus"),
        manifest_hash: ManifestHashPolicy::IfSupported,
        install_timeout_secs: WAIT.as_secs(),
        health_check: Vec::new(),
        health_timeout_secs: 30,
        boot_id_file: PathBuf::from(s("boot_id")),
    };
    let installer = RaucInstaller::new(config, Path::new(&s("state")));
    let bundle = PathBuf::from(s("bundle"));
    let img = verified_bundle(&bundle, "hu-rootfs-3.0.raucb");
    let _ = install_image_with_progress(&store, &installer, &img, 10, &|_| {}).await;
    // The parent kills this process during InstallBundle; getting here means
    // it did not.
    std::process::exit(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rauc_kill_9_during_install_bundle_is_settled_at_restart() {
    if !require_rauc() {
        return;
    }
    let mut rig = Rig::new();
    // The post-install hook keeps RAUC busy for 3 s after the write.
    let bundle = rig.bundle("3.0", 0x77, 1024, 3);
    let state = rig.path("state/otad");
    std::fs::create_dir_all(&state).unwrap();
    let spec = serde_json::json!({
        "state": state, "bus": rig.address, "bundle": bundle,
        "boot_id": rig.path("boot/boot_id"),
    });
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rauc_kill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SECUREEV_RAUC_KILL_CHILD", spec.to_string())
        .spawn()
        .unwrap();
    // Kill it as soon as RAUC is installing (Operation property).
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new("busctl")
            .args([
                "--address",
                &rig.address,
                "get-property",
                "de.pengutronix.rauc",
                "/",
                "de.pengutronix.rauc.Installer",
                "Operation",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("installing") {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child ended before RAUC started installing"
        );
        assert!(
            Instant::now() < deadline,
            "RAUC never reported installing: {}",
            rig.rauc_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL: no cleanup in the daemon at all.
    run(Command::new("kill").args(["-9", &child.id().to_string()]));
    let status = child.wait().unwrap();
    assert!(!status.success());

    // The restarted daemon: RAUC may still be in its hook; recover waits for
    // it, sees the slot written and primary, and keeps the install pending.
    let store = Store::open(&state).unwrap();
    assert!(
        store.journal().unwrap().is_some(),
        "the journal survived the kill"
    );
    let installer = RaucInstaller::new(rig.config(None), &state);
    let f = facts(&bundle, "hu-rootfs-3.0.raucb");
    let img = verified_bundle(&bundle, "hu-rootfs-3.0.raucb");
    assert_eq!(
        recover(&store, &installer).await.unwrap(),
        Recovery::PendingReboot(f.clone())
    );
    assert_eq!(rig.boot_file("primary"), "B");

    rig.reboot(false);
    let after = RaucInstaller::new(rig.config(None), &state);
    assert_eq!(
        recover(&store, &after).await.unwrap(),
        Recovery::Completed(f.clone())
    );
    assert_eq!(store.installed().unwrap().get("HU-1"), Some(&record(&img)));
}

/// End to end: the real `secureev-otad` with `installer = "rauc"`, checking
/// in over TLS with the in-test backend, installs a RAUC bundle published as
/// an Uptane target. The manifest after the install carries no installation
/// result (pending reboot); after a reboot that fell back to the old slot, the
/// restarted daemon reports the install failed, with the reason, in its next
/// manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rauc_end_to_end_fallen_back_boot_is_reported_in_the_next_manifest() {
    use e2e_common::*;
    if !require_rauc() {
        return;
    }
    let mut rig = Rig::new();
    let bundle = rig.bundle("2.0", 0x44, 256, 0);
    let bytes = std::fs::read(&bundle).unwrap();
    let name = "hu/rootfs-2.0.raucb";
    let backend = Backend::start().await;
    let mut repos = Repos::new();
    repos.release(name, &bytes, 2);
    let files = repos.publish(&[(name, &bytes)]);
    let keys = format!(
        "bus = \"{}\"\nmanifest_hash = \"if-supported\"\ninstall_timeout_secs = 60\nboot_id_file = \"{}\"\n",
        rig.address,
        rig.path("boot/boot_id").display()
    );
    let mut vehicle = Vehicle::new(
        &rig.path("vehicle"),
        &backend,
        &repos,
        &InstallMode::Rauc(keys),
        "",
    );
    backend.set_open(false);
    let (code, message) = vehicle.start_then_check(&backend, files, WAIT).await;
    assert_eq!(
        code,
        0,
        "{message}\n{}\nRAUC:\n{}",
        vehicle.log(),
        rig.rauc_log()
    );
    assert!(message.contains("active after the next boot"), "{message}");
    let state_dir = rig.path("vehicle/state");
    let journal = || Store::open(&state_dir).unwrap().journal().unwrap();
    assert!(journal().is_some_and(|j| j.pending_reboot));
    assert_eq!(rig.boot_file("primary"), "B", "{}", vehicle.log());
    poll("a manifest", WAIT, Duration::from_millis(50), || {
        (!backend.manifests().is_empty()).then_some(())
    })
    .await;
    assert!(
        install_results(&backend.manifests()).is_empty(),
        "no result while the reboot is pending"
    );

    vehicle.kill();
    rig.reboot(true);
    vehicle.start().await;
    let result = poll(
        "the installation result",
        WAIT,
        Duration::from_millis(50),
        || install_results(&backend.manifests()).into_iter().next(),
    )
    .await;
    assert_eq!(result["success"], false, "{result}");
    assert_eq!(
        install_results(&backend.manifests()).len(),
        1,
        "only the failure is reported"
    );
    let text = result.to_string();
    assert!(text.contains("booted slot A, not the new slot B"), "{text}");
    assert!(text.contains("fell back"), "{text}");
    // (The Director still assigns the bundle, so the same check-in offers it
    // again; whether to retry after a fallback is the Director's decision.)
}
