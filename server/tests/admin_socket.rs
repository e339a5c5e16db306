//! The admin API on a Unix socket (`admin_listen = "unix:/path"`): the
//! socket file has `admin_socket_mode`, the operator token is still
//! required, the admin client and the CLI reach it, and a socket left by an
//! earlier run is replaced while any other file is refused.
#![allow(clippy::unwrap_used)]

mod common;

use secureev_server::client::AdminClient;
use secureev_server::config::{Config, ListenAddr};
use secureev_server::init::{init, InitOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn prepare(tag: &str) -> (PathBuf, Config) {
    let root = common::temp_root(tag);
    let data = root.join("data");
    init(&InitOptions {
        database_url: None,
        data_dir: data.clone(),
        offline_dir: root.join("offline"),
        hostnames: vec!["127.0.0.1".into()],
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
    })
    .unwrap();
    let mut config = Config::load(&data.join("server.toml")).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    std::fs::create_dir_all(root.join("run")).unwrap();
    config.admin_listen = format!("unix:{}", root.join("run/admin.sock").display())
        .parse()
        .unwrap();
    (root, config)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_on_a_unix_socket_needs_the_token_and_the_socket_mode() {
    let (root, config) = prepare("admin-sock");
    let ListenAddr::Unix(socket) = config.admin_listen.clone() else {
        unreachable!()
    };
    let data = config.data_dir.clone();
    // A socket file left by an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let server = secureev_server::bind(config.clone()).await.unwrap();
    assert_eq!(server.admin_socket(), Some(socket.as_path()));
    assert!(server.admin_addr().is_err());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    assert_eq!(mode(&socket), 0o600);

    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let admin = AdminClient::unix(&socket, &token);
    let r = admin.get("/admin/status").await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = admin
        .post(
            "/admin/enrollments",
            &serde_json::json!({ "vin": "WSEVSOCK000000001" }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // No token, a wrong token: the uniform 401.
    for t in ["", "nope"] {
        let r = AdminClient::unix(&socket, t)
            .get("/admin/status")
            .await
            .unwrap();
        assert_eq!(r.status, 401);
        assert!(
            String::from_utf8_lossy(&r.body).contains(secureev_server::error::UNAUTHORIZED_MESSAGE)
        );
    }
    // The CLI with --server unix:/path.
    let bin = env!("CARGO_BIN_EXE_secureev-server");
    let server_arg = format!("unix:{}", socket.display());
    let out = tokio::process::Command::new(bin)
        .args(["enroll", "list", "--server", &server_arg, "--data-dir"])
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("WSEVSOCK000000001"));

    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "the socket is removed at shutdown");

    // 0o660 for a group of operators.
    let mut group = config.clone();
    group.admin_socket_mode = 0o660;
    let server = secureev_server::bind(group).await.unwrap();
    assert_eq!(mode(&socket), 0o660);
    drop(server);

    // Any other file at the path is refused, and left alone.
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, b"not a socket").unwrap();
    let e = secureev_server::bind(config).await.unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"not a socket");
    let _ = std::fs::remove_dir_all(root);
}
