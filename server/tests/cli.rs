//! The binary: `init`, plain HTTP only on request, exit codes; and `serve`
//! never needing the offline key directory.
#![allow(clippy::unwrap_used)]

mod common;

use secureev_server::client::{http_client, AdminClient};
use secureev_server::config::{Config, Transport};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_secureev-server");

#[test]
fn init_creates_the_layout_and_refuses_to_overwrite() {
    let root = common::temp_root("cli");
    let data = root.join("data");
    let offline = root.join("offline");
    let out = Command::new(BIN)
        .args(["init", "--data-dir"])
        .arg(&data)
        .arg("--offline-dir")
        .arg(&offline)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "server.toml",
        "admin-token",
        "db.sqlite",
        "tls/ca.pem",
        "tls/server.pem",
        "tls/server-key.pem",
        "keys/kek",
    ] {
        assert!(data.join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // Regression (issue 12): db.sqlite was 0644 and the data directory 0755.
    assert_eq!(mode(&data), 0o700);
    for f in ["tls/server-key.pem", "db.sqlite", "admin-token", "keys/kek"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&data.join("keys")), 0o700);
    // Regression (issue 12): the CA key sat in the serving directory.
    assert!(!data.join("tls/ca-key.pem").exists());
    assert_eq!(mode(&offline.join("tls/ca-key.pem")), 0o600);
    // Offline keys are only in the offline directory.
    assert!(offline.join("image/root").is_dir() && offline.join("image/targets").is_dir());
    assert!(!data.join("keys/image/root").exists() && !data.join("keys/image/targets").exists());
    // A second init into the same directory is a configuration error (exit 3).
    let again = Command::new(BIN)
        .args(["init", "--data-dir"])
        .arg(&data)
        .arg("--offline-dir")
        .arg(root.join("offline2"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(3));
    // Plain HTTP on a public address is refused before binding.
    let bad = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", "0.0.0.0:0", "--insecure-http"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // A data directory others can read is refused at start (exit 3).
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wide = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(
        wide.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&wide.stderr)
    );
    assert!(String::from_utf8_lossy(&wide.stderr).contains("wider than 700"));
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_http_on_loopback_without_the_offline_keys() {
    let root = common::temp_root("http");
    let data = root.join("data");
    secureev_server::init::init(&secureev_server::init::InitOptions {
        database_url: None,
        data_dir: data.clone(),
        offline_dir: root.join("offline"),
        hostnames: vec!["127.0.0.1".into()],
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
    })
    .unwrap();
    // The running server never needs the offline keys.
    std::fs::remove_dir_all(root.join("offline")).unwrap();
    let mut config = Config::load(&data.join("server.toml")).unwrap();
    config.transport = Transport::InsecureHttp;
    let server = secureev_server::bind(config).await.unwrap();
    let base = format!("http://{}", server.admin_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let admin = AdminClient::new(http_client(None).unwrap(), &base, &token);
    let status = admin.get("/admin/status").await.unwrap();
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["image_targets_version"], 1);
    let _ = tx.send(());
    let _ = std::fs::remove_dir_all(&root);
}
