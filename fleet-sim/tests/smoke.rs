//! Smoke run of the simulator against the real backend over TLS: 50
//! vehicles register and check in, an image campaign is created, the fleet
//! downloads, verifies and installs it with a fifth of the installs failing,
//! and the backend's campaign progress agrees with the simulator's report.
#![allow(missing_docs, clippy::unwrap_used)]

use secureev_fleet_sim::{run, Options};
use secureev_server::client::{image_add, AdminClient, ImageSpec};
use secureev_server::config::Config;
use secureev_server::init::{init, InitOptions};
use secureev_uptane::Timestamp;
use serde_json::json;
use std::time::Duration;

const FLEET: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_vehicles_check_in_and_install_a_campaign() {
    let root = std::env::temp_dir().join(format!(
        "secureev-fleet-sim-smoke-{}-{}",
        std::process::id(),
        secureev_server::unix_now()
    ));
    let _ = std::fs::remove_dir_all(&root);
    let (data, offline) = (root.join("data"), root.join("offline"));
    init(&InitOptions {
        database_url: None,
        data_dir: data.clone(),
        offline_dir: offline.clone(),
        hostnames: vec!["127.0.0.1".into()],
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
    })
    .unwrap();
    let config = Config::load(&data.join("server.toml")).unwrap();
    let server = secureev_server::bind(config).await.unwrap();
    let url = format!("https://{}", server.local_addr().unwrap());
    let admin_url = format!("https://{}", server.admin_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    let ca = std::fs::read(data.join("tls/ca.pem")).unwrap();
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();

    // 1. Register and check in twice; nothing is assigned yet.
    let mut opts = Options::new(&url, ca.clone());
    opts.admin_url = Some(admin_url.clone());
    opts.admin_token = Some(token.trim().to_owned());
    opts.fleet = FLEET;
    opts.connections = 4;
    opts.register = true;
    opts.rounds = Some(2);
    opts.duration = Duration::from_secs(60);
    let first = run(&opts).await.unwrap().report;
    assert_eq!(first.registered, FLEET, "{first}");
    assert_eq!(first.error_count(), 0, "{first}");
    assert_eq!(first.checkins, 2 * FLEET as u64, "{first}");
    assert_eq!(first.downloads, 0);

    // 2. A campaign for every simulated head unit.
    let http = secureev_server::client::http_client(Some(&ca)).unwrap();
    let admin = AdminClient::new(http, &admin_url, token.trim());
    let spec = ImageSpec {
        name: "sim/hu-2.0.bin".into(),
        hardware_ids: vec!["sim-hu".into()],
        version: Some("2.0".into()),
        release_counter: Some(2),
        encrypt: false,
        release_notes: None,
    };
    let now = Timestamp::from_unix(secureev_server::unix_now());
    image_add(&admin, &offline, &spec, &[0x42; 4096], now)
        .await
        .unwrap();
    let c = admin
        .post(
            "/admin/campaigns",
            &json!({"name": "smoke", "image": spec.name, "hardware_id": "sim-hu"}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap()
        .json();
    assert_eq!(c["assignments"], FLEET, "{c}");

    // 3. The same fleet (same seed: same keys) installs it; a fifth fail.
    opts.register = false;
    opts.behaviour.fail_fraction = 0.2;
    opts.rounds = Some(2);
    let second = run(&opts).await.unwrap().report;
    assert_eq!(second.error_count(), 0, "{second}");
    assert_eq!(second.downloads, FLEET as u64, "{second}");
    assert_eq!(second.downloaded_bytes, 4096 * FLEET as u64);
    assert_eq!(second.installs_ok + second.installs_failed, FLEET as u64);
    assert!(
        second.installs_failed > 0 && second.installs_ok > second.installs_failed,
        "{second}"
    );
    let campaigns = admin
        .get("/admin/campaigns")
        .await
        .unwrap()
        .ok()
        .unwrap()
        .json();
    assert_eq!(
        campaigns["campaigns"][0]["completed"], second.installs_ok,
        "{campaigns}"
    );
    assert!(second.latency.p50_ms > 0.0);
    let _ = stop.send(());
    let _ = std::fs::remove_dir_all(&root);
}
