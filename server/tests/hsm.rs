//! Online keys and the KEK in a PKCS#11 token: a SoftHSM2 token made in a
//! temporary `SOFTHSM2_CONF`, `secureev-server hsm import` moving the PEM
//! online keys and the KEK of a fresh data directory into it, then the real
//! `secureev-server serve` over TLS on loopback signing with the token's keys
//! and sealing with its KEK. A vehicle verifies the Director's and the Image
//! repository's metadata with the core against roots whose keys are the
//! token's, and decrypts an encrypted image whose content key the token's
//! KEK sealed; a Director rotation makes its key inside the token; a wrong
//! PIN keeps the server from starting; after a restart the same keys serve.
//!
//! Needs SoftHSM2 (`server/tests/softhsm-prereqs.sh`, run by
//! scripts/test.sh): without it the test prints SKIPPED locally and fails
//! under CI.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use secureev_server::client::{image_add, ImageSpec};
use secureev_uptane::encryption::{decrypt_image, EncryptionInfo};
use secureev_uptane::Timestamp;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_secureev-server");
const MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];
const TOKEN: &str = "secureev-test";
const PIN: &str = "4711-secureev";

fn now() -> Timestamp {
    Timestamp::from_unix(secureev_server::unix_now())
}

/// The SoftHSM2 module, or `None` (SKIPPED) outside CI.
fn softhsm_module() -> Option<PathBuf> {
    let found = std::env::var_os("SECUREEV_SOFTHSM_MODULE")
        .map(PathBuf::from)
        .into_iter()
        .chain(MODULES.iter().map(PathBuf::from))
        .find(|p| p.exists());
    let util = Command::new("softhsm2-util").arg("--version").output();
    match (found, util) {
        (Some(m), Ok(o)) if o.status.success() => Some(m),
        _ if std::env::var_os("CI").is_some() => panic!(
            "CI is set but SoftHSM2 is missing: server/tests/softhsm-prereqs.sh must install it"
        ),
        _ => {
            eprintln!(
                "SKIPPED hsm: SoftHSM2 not installed (apt-get install softhsm2, or server/tests/softhsm-prereqs.sh as root)"
            );
            None
        }
    }
}

/// A fresh token labelled [`TOKEN`] with user PIN [`PIN`] in a SoftHSM2
/// configuration of its own under `root`; returns that configuration.
fn softhsm_token(root: &Path) -> PathBuf {
    std::fs::create_dir_all(root.join("tokens")).unwrap();
    let conf = root.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            root.join("tokens").display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN])
        .args(["--so-pin", "0000-so", "--pin", PIN])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    ok(&out);
    conf
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_0600(path: &Path, text: &str) {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The variable `pin_env` names in the second test; set for every child.
const PIN_ENV: &str = "SECUREEV_TEST_HSM_PIN";

/// `secureev-server <args>` with the token's configuration.
fn cli(conf: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .env(PIN_ENV, PIN)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `hsm list`: label → key ids of the private keys (and the KEK) in the
/// token, each checked to be sensitive and not extractable.
fn token_objects(conf: &Path, data: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let out = ok(&cli(
        conf,
        &["hsm", "list", "--data-dir", data.to_str().unwrap()],
    ));
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 4, "{line}");
        if f[2] != "public-key" {
            // Private keys and the KEK never leave the token.
            assert_eq!(f[3], "sensitive,not-extractable", "{line}");
            m.entry(f[0].to_owned())
                .or_default()
                .insert(f[1].to_owned());
        }
    }
    m
}

/// A running `secureev-server serve`; killed (and reaped) on drop.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the server and wait (bounded) until both listeners serve.
fn serve(conf: &Path, data: &Path) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(data)
        .env("SOFTHSM2_CONF", conf)
        .env(PIN_ENV, PIN)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = Vec::new();
    let mut serving = 0;
    while serving < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                serving += usize::from(line.contains("serving"));
                log.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start within 30 s:\n{}", log.join("\n"));
            }
        }
    }
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Server { child }
}

/// The key ids a root lists for `role`.
fn root_keyids(root: &[u8], role: &str) -> BTreeSet<String> {
    let v: Value = serde_json::from_slice(root).unwrap();
    v["signed"]["roles"][role]["keyids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

fn pem_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(pem_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_keys_and_kek_in_a_softhsm_token_serve_an_encrypted_update() {
    let Some(module) = softhsm_module() else {
        return;
    };
    let root = temp_root("hsm");
    let data = root.join("data");
    let offline = root.join("offline");

    // 1. A token in a private SoftHSM2 configuration.
    let conf = softhsm_token(&root);

    // 2. A data directory as `init` makes it (PEM keys), switched to the token.
    let (port, aport) = (free_port(), free_port());
    secureev_server::init::init(&secureev_server::init::InitOptions {
        database_url: None,
        data_dir: data.clone(),
        offline_dir: offline.clone(),
        hostnames: vec!["127.0.0.1".into()],
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        admin_listen: format!("127.0.0.1:{aport}").parse().unwrap(),
    })
    .unwrap();
    let keys_dir = data.join("keys");
    let pem_ids = |role: &str| -> BTreeSet<String> {
        secureev_server::layout::load_keys(&keys_dir, "director", role)
            .unwrap()
            .iter()
            .map(|k| k.keyid().to_owned())
            .collect()
    };
    let director_targets_pem = pem_ids("targets");
    let pin_file = root.join("hsm-pin");
    write_0600(&pin_file, &format!("{PIN}\n"));
    let toml = data.join("server.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        format!(
            "{text}key_store = \"pkcs11\"\n\n[pkcs11]\nmodule = {:?}\ntoken_label = \"{TOKEN}\"\npin_file = {:?}\n",
            module.display().to_string(),
            pin_file.display().to_string()
        ),
    )
    .unwrap();

    // 3. `hsm import`: every online key and the KEK into the token, the files gone.
    let d = data.to_str().unwrap();
    let imported = ok(&cli(&conf, &["hsm", "import", "--data-dir", d]));
    assert!(imported.contains("kek: imported"), "{imported}");
    let left = pem_files(&keys_dir);
    assert!(left.is_empty(), "files left under keys/: {left:?}");
    assert!(secureev_server::keystore::files_left(&data).is_empty());
    // The TLS key too: every handshake below signs in the token.
    assert!(!data.join("tls/server-key.pem").exists());
    let objects = token_objects(&conf, &data);
    for label in LABELS {
        assert_eq!(
            objects.get(label).map(|s| s.len()),
            Some(1),
            "{label}: {objects:?}"
        );
    }
    assert_eq!(objects["secureev/director/targets"], director_targets_pem);

    // 4. The real server, keys from the token.
    let h = Harness::external(root.clone(), data.clone(), offline.clone(), port, aport);
    let server = serve(&conf, &data);

    // The roots vehicles are provisioned with list the token's keys.
    let droot = h.admin.get("/admin/director/root").await.unwrap().body;
    let iroot = h.admin.get("/admin/image/root").await.unwrap().body;
    for role in ["root", "targets", "snapshot", "timestamp"] {
        assert_eq!(
            root_keyids(&droot, role),
            objects[&format!("secureev/director/{role}")],
            "director {role}"
        );
    }
    for role in ["snapshot", "timestamp"] {
        assert_eq!(
            root_keyids(&iroot, role),
            objects[&format!("secureev/image/{role}")],
            "image {role}"
        );
    }

    // 5. An encrypted image to one ECU: signed with token keys, its content
    // key sealed by the token's KEK, verified and decrypted by the vehicle.
    let car = TestVehicle::new(
        &h,
        "VINHSM00000000001",
        &[("HU-1", "hu"), ("BRK-1", "brake")],
    );
    car.register(&h).await;
    let firmware: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let spec = ImageSpec {
        name: "brake-hsm.bin".into(),
        hardware_ids: vec!["brake".into()],
        version: None,
        release_counter: Some(2),
        encrypt: true,
        release_notes: None,
    };
    image_add(&h.admin, &h.offline, &spec, &firmware, now())
        .await
        .unwrap();
    let r = h
        .admin
        .post(
            "/admin/assignments",
            &json!({"vin": car.vin, "ecu_serial": "BRK-1", "image": spec.name}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let decrypt = |plan: &secureev_uptane::Verified<secureev_uptane::uptane::UpdatePlan>| {
        assert_eq!(plan.targets().len(), 1);
        let t = &plan.targets()[0];
        let info =
            EncryptionInfo::from_custom(t.name(), t.assignment().director_target.custom.as_ref())
                .unwrap()
                .unwrap();
        let sha = t.assignment().director_target.hashes["sha256"].clone();
        let key = info
            .unwrap_key_for(t.name(), "BRK-1", &car.ecu("BRK-1").enc)
            .unwrap();
        (t.name().to_owned(), sha, key, info)
    };
    let plan = car.full_verification(&h, &[]).await;
    let (name, sha, key, info) = decrypt(&plan);
    let blob = car
        .client
        .get(&format!("/image/targets/{sha}.{name}"))
        .await
        .unwrap();
    assert_eq!(blob.status, 200);
    assert_ne!(blob.body, firmware);
    assert_eq!(
        decrypt_image(&name, &key, &info, &blob.body).unwrap(),
        firmware
    );

    // 6. A Director rotation makes its key inside the token.
    let r = h
        .admin
        .post("/admin/director/rotate", &json!({"role": "targets"}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let new_keyid = r.json()["new_keyid"].as_str().unwrap().to_owned();
    let objects = token_objects(&conf, &data);
    assert_eq!(
        objects["secureev/director/targets"],
        BTreeSet::from([new_keyid.clone()])
    );
    assert_eq!(
        objects["secureev/director/targets.retired"],
        director_targets_pem
    );
    assert!(
        pem_files(&keys_dir).is_empty(),
        "{:?}",
        pem_files(&keys_dir)
    );
    let droot2 = h.admin.get("/admin/director/root").await.unwrap().body;
    assert_eq!(root_keyids(&droot2, "targets"), BTreeSet::from([new_keyid]));
    // Director targets re-signed by the new token key verify.
    let plan = car.full_verification(&h, &[]).await;
    assert_eq!(decrypt(&plan).2.as_bytes(), key.as_bytes());

    // 7. The audit trail, signed by the token's audit key, verifies.
    let audit = ok(&cli(&conf, &["audit", "verify", "--data-dir", d]));
    assert!(audit.contains("audit trail intact"), "{audit}");

    // 8. A wrong PIN: the server does not start (exit 1, the login named).
    drop(server);
    write_0600(&pin_file, "0000\n");
    let out = cli(&conf, &["serve", "--data-dir", d]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("logging in to the token"), "{err}");

    // 9. Restarted with the right PIN: the token's keys (and KEK) still serve.
    write_0600(&pin_file, &format!("{PIN}\n"));
    let _server = serve(&conf, &data);
    let plan = car.full_verification(&h, &[]).await;
    let (name, _, key2, info) = decrypt(&plan);
    assert_eq!(
        decrypt_image(&name, &key2, &info, &blob.body).unwrap(),
        firmware
    );
}

/// The labels of a data directory's objects in the token, with one key each.
const LABELS: [&str; 9] = [
    "secureev/director/root",
    "secureev/director/targets",
    "secureev/director/snapshot",
    "secureev/director/timestamp",
    "secureev/image/snapshot",
    "secureev/image/timestamp",
    "secureev/audit/log",
    "secureev/tls/server",
    "secureev/kek",
];

// `init --pkcs11-…` generates every online key and the KEK inside the token:
// no key file is ever written, the server serves a verified, decrypted
// update from them, and a second data directory on the same token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_generates_every_online_key_and_the_kek_inside_the_token() {
    let Some(module) = softhsm_module() else {
        return;
    };
    let root = temp_root("hsm-init");
    let data = root.join("data");
    let offline = root.join("offline");
    let conf = softhsm_token(&root);
    let (port, aport) = (free_port(), free_port());
    let init = |data: &Path, offline: &Path| {
        cli(
            &conf,
            &[
                "init",
                "--data-dir",
                data.to_str().unwrap(),
                "--offline-dir",
                offline.to_str().unwrap(),
                "--hostname",
                "127.0.0.1",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{aport}"),
                "--pkcs11-module",
                module.to_str().unwrap(),
                "--pkcs11-token-label",
                TOKEN,
                "--pkcs11-pin-env",
                PIN_ENV,
            ],
        )
    };
    ok(&init(&data, &offline));
    let keys_dir = data.join("keys");
    assert!(
        pem_files(&keys_dir).is_empty(),
        "{:?}",
        pem_files(&keys_dir)
    );
    assert!(secureev_server::keystore::files_left(&data).is_empty());
    // The TLS key too: every handshake below signs in the token.
    assert!(!data.join("tls/server-key.pem").exists());
    let objects = token_objects(&conf, &data);
    for label in LABELS {
        assert_eq!(
            objects.get(label).map(|s| s.len()),
            Some(1),
            "{label}: {objects:?}"
        );
    }
    // A second data directory on the same token and prefix is refused.
    let again = init(&root.join("data2"), &root.join("offline2"));
    assert_eq!(again.status.code(), Some(3), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"));

    let h = Harness::external(root.clone(), data.clone(), offline.clone(), port, aport);
    let _server = serve(&conf, &data);
    let droot = h.admin.get("/admin/director/root").await.unwrap().body;
    assert_eq!(
        root_keyids(&droot, "targets"),
        objects["secureev/director/targets"]
    );
    let car = TestVehicle::new(
        &h,
        "VINHSM00000000002",
        &[("HU-1", "hu"), ("BRK-1", "brake")],
    );
    car.register(&h).await;
    let firmware = b"firmware sealed by a KEK that never left the token".repeat(100);
    let spec = ImageSpec {
        name: "brake-init.bin".into(),
        hardware_ids: vec!["brake".into()],
        version: None,
        release_counter: Some(1),
        encrypt: true,
        release_notes: None,
    };
    image_add(&h.admin, &h.offline, &spec, &firmware, now())
        .await
        .unwrap();
    let r = h
        .admin
        .post(
            "/admin/assignments",
            &json!({"vin": car.vin, "ecu_serial": "BRK-1", "image": spec.name}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let plan = car.full_verification(&h, &[]).await;
    let t = &plan.targets()[0];
    let info =
        EncryptionInfo::from_custom(t.name(), t.assignment().director_target.custom.as_ref())
            .unwrap()
            .unwrap();
    let sha = &t.assignment().director_target.hashes["sha256"];
    let blob = car
        .client
        .get(&format!("/image/targets/{sha}.{}", t.name()))
        .await
        .unwrap();
    let key = info
        .unwrap_key_for(t.name(), "BRK-1", &car.ecu("BRK-1").enc)
        .unwrap();
    assert_eq!(
        decrypt_image(t.name(), &key, &info, &blob.body).unwrap(),
        firmware
    );
    let audit = ok(&cli(
        &conf,
        &["audit", "verify", "--data-dir", data.to_str().unwrap()],
    ));
    assert!(audit.contains("audit trail intact"), "{audit}");
}
