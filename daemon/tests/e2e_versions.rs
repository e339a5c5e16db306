//! Versions and release notes end to end (issue 13): what `secureev-server
//! image add --version --release-notes-file` signs into the Image
//! repository reaches `PendingUpdates`, `Ecus` and the history of the real
//! `secureev-otad` on a private `dbus-daemon`, read back by the Rust proxy,
//! `busctl` and `secureevctl` as independent clients; and display texts that
//! a compromised Image repository signs anyway (control characters,
//! bidirectional overrides, 10 KiB) are shown sanitised and bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_common;

use e2e_common::*;
use secureev_dbus::testing::PrivateBus;
use secureev_dbus::{ErrorCode, Ota1Proxy};
use serde_json::json;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zbus::zvariant::Value;

const NOTES: &str = "Charging timer fixed.\n\t- Ünïcode and tabs kept\n- second line\n";

/// The real backend: `init`, `serve`, enrollment, `image add` with a version
/// and release notes from a file, `assign`. The real daemon provisions, checks
/// and shows them; after the install `Ecus` and the history carry the
/// human version and the release counter apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_add_version_and_release_notes_reach_pending_updates_ecus_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path();
    let server = server_bin();
    let (port, aport) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{port}");
    let aurl = format!("https://127.0.0.1:{aport}");
    let data = w.join("server");
    let offline = w.join("offline");
    ok(Command::new(&server)
        .arg("init")
        .arg("--data-dir")
        .arg(&data)
        .arg("--offline-dir")
        .arg(&offline)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{aport}")]));
    let server_log = std::fs::File::create(w.join("server.log")).unwrap();
    let mut procs = Procs(vec![Command::new(&server)
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(server_log)
        .spawn()
        .unwrap()]);
    let s_args = |c: &mut Command| {
        c.args(["--server", &aurl]).arg("--data-dir").arg(&data);
    };

    // The trusted roots, over the admin API with the bootstrap token.
    let ca = std::fs::read(data.join("tls/ca.pem")).unwrap();
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let root = |repo: &'static str| {
        let (http, aurl, token) = (http.clone(), aurl.clone(), token.trim().to_owned());
        async move {
            http.get(format!("{aurl}/admin/{repo}/root"))
                .bearer_auth(token)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())?
                .bytes()
                .await
                .ok()
        }
    };
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    let director_root = loop {
        if let Some(b) = root("director").await {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "secureev-server did not serve:\n{}",
            std::fs::read_to_string(w.join("server.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let image_root = root("image").await.unwrap();
    let v = w.join("vehicle");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("director-root.json"), &director_root).unwrap();
    std::fs::write(v.join("image-root.json"), &image_root).unwrap();
    std::fs::write(v.join("installed.img"), b"factory").unwrap();

    let bus = PrivateBus::start().expect("dbus-daemon (Debian package `dbus`)");
    let d = v.display();
    std::fs::write(
        v.join("otad.toml"),
        format!(
            r#"[backend]
url = "{url}"
ca_file = "{ca}"

[vehicle]
vin = "{VIN}"
primary_serial = "{HU}"
hardware_id = "{HW}"

[keys]
dir = "{d}/keys"

[trust]
director_root = "{d}/director-root.json"
image_root = "{d}/image-root.json"

[state]
dir = "{d}/state"
cache_dir = "{d}/cache"

[checkin]
interval_secs = 3600
jitter_secs = 0

[dbus]
bus = "{bus}"

[install]
policy = "consent"
installer = "file"
inhibit_dir = "{d}/inhibit"

[install.file]
path = "{d}/installed.img"
"#,
            ca = data.join("tls/ca.pem").display(),
            bus = bus.address(),
        ),
    )
    .unwrap();
    let otad_log = v.join("otad.log");
    procs.0.push(
        Command::new(otad_bin())
            .arg("--config")
            .arg(v.join("otad.toml"))
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&otad_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let conn = bus.client().await.unwrap();
    let proxy = Ota1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let mut ops = proxy.receive_operation_completed().await.unwrap();
    let timeout = scaled(Duration::from_secs(60));
    // The start-up check-in of an unregistered vehicle fails; then provision.
    let deadline = Instant::now() + timeout;
    while proxy.state().await.ok().as_deref() != Some("error") {
        assert!(
            Instant::now() < deadline,
            "no failed start-up check-in:\n{}",
            std::fs::read_to_string(&otad_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut enroll = Command::new(&server);
    enroll.args(["enroll", "create", "--vin", VIN, "--quiet"]);
    s_args(&mut enroll);
    let credential = ok(&mut enroll).trim().to_owned();
    let id = proxy
        .provision(
            &url,
            HashMap::from([("token", Value::from(credential.as_str()))]),
        )
        .await
        .unwrap();
    let (code, message) = op_completed(&mut ops, Some(id), timeout, &otad_log).await;
    assert_eq!(code, 0, "provision: {message}");
    // The check-in a provisioning asks for (nothing assigned yet).
    let (code, message) = op_completed(&mut ops, None, timeout, &otad_log).await;
    assert_eq!(code, 0, "check-in after provisioning: {message}");

    let image = image_bytes(96 * 1024, 41);
    std::fs::write(w.join("rootfs.img"), &image).unwrap();
    std::fs::write(w.join("notes.txt"), NOTES).unwrap();
    let name = "hu/rootfs-2.4.1.img";
    let mut add = Command::new(&server);
    add.arg("image")
        .arg("add")
        .arg(w.join("rootfs.img"))
        .args(["--name", name, "--hardware-id", HW, "--version", "2.4.1"])
        .args(["--release-counter", "12", "--release-notes-file"])
        .arg(w.join("notes.txt"))
        .arg("--offline-dir")
        .arg(&offline);
    s_args(&mut add);
    ok(&mut add);
    // A control character in the notes is refused before anything is signed.
    let mut bad = Command::new(&server);
    bad.arg("image")
        .arg("add")
        .arg(w.join("rootfs.img"))
        .args([
            "--name",
            "hu/bad.img",
            "--hardware-id",
            HW,
            "--version",
            "9",
        ])
        .args(["--release-notes", "clear \u{1b}[2J"])
        .arg("--offline-dir")
        .arg(&offline);
    s_args(&mut bad);
    let (code, out, err) = run_command(&mut bad);
    assert!(code != 0 && err.contains("U+001B"), "{code} {out}{err}");
    let mut assign = Command::new(&server);
    assign.args(["assign", "--vin", VIN, "--ecu", HU, "--image", name]);
    s_args(&mut assign);
    ok(&mut assign);

    let id = proxy.check_for_updates(HashMap::new()).await.unwrap();
    let (code, message) = op_completed(&mut ops, Some(id), timeout, &otad_log).await;
    assert_eq!(code, 0, "check: {message}");
    let pending = proxy.pending_updates().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let p = &pending[0];
    assert_eq!(
        (
            p.target.as_str(),
            p.version.as_str(),
            p.release_counter,
            p.release_notes.as_str()
        ),
        (name, "2.4.1", 12, NOTES),
        "{p:?}"
    );

    // Independent clients see the same keys.
    let (code, out, err) = run_command(
        Command::new("busctl")
            .arg(format!("--address={}", bus.address()))
            .args(["--json=short", "get-property", "io.secureev.Ota1"])
            .args(["/io/secureev/Ota1", "io.secureev.Ota1", "PendingUpdates"]),
    );
    assert_eq!(code, 0, "{out}{err}");
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entry = &got["data"][0];
    assert_eq!(entry["version"]["data"], "2.4.1", "{out}");
    assert_eq!(entry["release-counter"]["data"], 12, "{out}");
    assert_eq!(entry["release-notes"]["data"], NOTES, "{out}");
    let ctl = || {
        let mut c = Command::new(ctl_bin());
        c.args(["--bus", bus.address()]);
        c
    };
    let status = ok(ctl().arg("status"));
    assert!(status.contains("-> 2.4.1 (#12)"), "{status}");
    assert!(status.contains("Charging timer fixed."), "{status}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(ctl().args(["--json", "status"]))).expect("status --json is JSON");
    let shown = status.to_string();
    assert!(
        shown.contains("\"release-counter\":12") && shown.contains("\"version\":\"2.4.1\""),
        "{shown}"
    );

    let (code, out, err) = run_command(ctl().args(["install", "--yes", "--wait"]));
    assert_eq!(
        code,
        0,
        "{out}{err}\n{}",
        std::fs::read_to_string(&otad_log).unwrap_or_default()
    );
    assert_eq!(std::fs::read(v.join("installed.img")).unwrap(), image);
    let ecus = proxy.ecus().await.unwrap();
    let hu = ecus.iter().find(|e| e.serial == HU).unwrap();
    assert_eq!(
        (
            hu.installed_version.as_str(),
            hu.installed_target.as_str(),
            hu.installed_release_counter
        ),
        ("2.4.1", name, 12),
        "{hu:?}"
    );
    let ecus_text = ok(ctl().arg("ecus"));
    assert!(ecus_text.contains("2.4.1 (#12)"), "{ecus_text}");
    let history = proxy.get_history().await.unwrap();
    let per_ecu = history
        .iter()
        .find(|h| h.action == "install" && h.ecu_serial == HU)
        .unwrap_or_else(|| panic!("no install entry for {HU}: {history:?}"));
    assert_eq!(
        (
            per_ecu.version.as_str(),
            per_ecu.release_counter,
            per_ecu.code
        ),
        ("2.4.1", 12, ErrorCode::Ok.as_u32()),
        "{per_ecu:?}"
    );
    drop(procs);
}

/// An Image repository that signs display texts the server would refuse
/// (a compromised or foreign one): the daemon installs nothing differently,
/// but shows the texts with every control and bidirectional formatting
/// character replaced and cut to the documented bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_versions_and_release_notes_are_sanitised_and_bounded() {
    use secureev_uptane::custom::{MAX_RELEASE_NOTES_LEN, MAX_VERSION_LEN};
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let mut repos = Repos::new();
    let target = dir.path().join("installed.img");
    std::fs::write(&target, b"factory").unwrap();
    let mut vehicle = Vehicle::with_policy(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(target),
        "",
        "consent",
        3600,
    );
    let name = "hu/rootfs-evil.img";
    let image = image_bytes(32 * 1024, 43);
    let long_version = format!("2.\u{1b}[31m{}", "9".repeat(200));
    let notes = format!(
        "line one\r\nsafe\u{202e}gnp.exe\u{7}\n{}",
        "é".repeat(8 * 1024)
    );
    repos.image.add_target(
        name,
        &image,
        Some(json!({
            "hardwareIds": [HW],
            "releaseCounter": 3,
            "version": long_version,
            "releaseNotes": notes,
        })),
    );
    repos.assign(name, &image, 3);
    let files = repos.publish(&[(name, &image)]);
    let (code, message) = vehicle
        .start_then_check(&backend, files, scaled(Duration::from_secs(30)))
        .await;
    assert_eq!(code, 0, "{message}\n{}", vehicle.log());
    let pending = vehicle.proxy().await.pending_updates().await.unwrap();
    let p = &pending[0];
    assert!(
        p.version.starts_with("2.\u{fffd}[31m999"),
        "{:?}",
        p.version
    );
    assert!(p.version.len() <= MAX_VERSION_LEN, "{}", p.version.len());
    assert!(
        p.release_notes
            .starts_with("line one\u{fffd}\nsafe\u{fffd}gnp.exe\u{fffd}\néé"),
        "{:?}",
        &p.release_notes[..40]
    );
    assert!(p.release_notes.len() <= MAX_RELEASE_NOTES_LEN);
    assert!(p.release_notes.len() > MAX_RELEASE_NOTES_LEN - 4);
    for c in p.version.chars().chain(p.release_notes.chars()) {
        assert!(
            !c.is_control() || c == '\n' || c == '\t',
            "U+{:04X} shown",
            u32::from(c)
        );
    }
    assert_eq!(p.release_counter, 3);
}
