//! Staged rollouts driven by the simulated fleet over real TLS: 60 vehicles
//! with their own keys, a rollout in three groups of 20. With a tenth of the
//! installs failing (below the 30 % error threshold) the groups start one
//! after the other and the rollout finishes; with most installs failing the
//! first group stops the rollout and the other 40 vehicles never see the
//! image.
#![allow(missing_docs, clippy::unwrap_used)]

use secureev_fleet_sim::{run, Options};
use secureev_server::client::{image_add, AdminClient, ImageSpec};
use secureev_server::config::Config;
use secureev_server::init::{init, InitOptions};
use secureev_uptane::Timestamp;
use serde_json::{json, Value};
use std::time::Duration;

const FLEET: usize = 60;
/// Simulator runs (two check-ins per vehicle each) before a rollout must
/// have reached a final state.
const MAX_RUNS: usize = 6;

async fn publish(admin: &AdminClient, offline: &std::path::Path, name: &str, rc: u64) {
    let spec = ImageSpec {
        name: name.into(),
        hardware_ids: vec!["sim-hu".into()],
        version: Some(format!("{rc}.0")),
        release_counter: Some(rc),
        encrypt: false,
        release_notes: None,
    };
    let now = Timestamp::from_unix(secureev_server::unix_now());
    image_add(admin, offline, &spec, &[rc as u8; 1024], now)
        .await
        .unwrap();
}

async fn rollout(admin: &AdminClient, image: &str) -> Value {
    let r = admin
        .post(
            "/admin/rollouts",
            &json!({
                "name": image, "image": image,
                "groups": [{ "count": 20 }, { "count": 20 }, {}],
                "success_threshold": 50, "error_threshold": 30, "start": true
            }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn status(admin: &AdminClient, id: &Value) -> Value {
    admin
        .get(&format!("/admin/rollouts/{id}"))
        .await
        .unwrap()
        .ok()
        .unwrap()
        .json()
}

/// Run the fleet until the rollout is no longer running; returns its status
/// and the simulator's downloads.
async fn drive(opts: &Options, admin: &AdminClient, id: &Value) -> (Value, u64) {
    let mut downloads = 0;
    for _ in 0..MAX_RUNS {
        let report = run(opts).await.unwrap().report;
        assert_eq!(report.error_count(), 0, "{report}");
        downloads += report.downloads;
        let s = status(admin, id).await;
        if s["rollout"]["state"] != "running" {
            return (s, downloads);
        }
    }
    panic!(
        "rollout {id} still running after {MAX_RUNS} runs: {}",
        status(admin, id).await
    );
}

fn progress(s: &Value, group: usize, key: &str) -> u64 {
    s["groups"][group]["progress"][key].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_cascades_through_three_groups_and_a_failing_group_stops_the_rollout() {
    let root = std::env::temp_dir().join(format!(
        "secureev-fleet-sim-rollout-{}-{}",
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
    let http = secureev_server::client::http_client(Some(&ca)).unwrap();
    let admin = AdminClient::new(http, &admin_url, token.trim());

    let mut opts = Options::new(&url, ca.clone());
    opts.admin_url = Some(admin_url.clone());
    opts.admin_token = Some(token.trim().to_owned());
    opts.fleet = FLEET;
    opts.connections = 4;
    opts.register = true;
    opts.rounds = Some(1);
    opts.duration = Duration::from_secs(60);
    let first = run(&opts).await.unwrap().report;
    assert_eq!(first.registered, FLEET, "{first}");
    opts.register = false;

    // 1. A tenth of the installs fail: every group passes 50 % installed
    // without exceeding 30 % failed, so the groups cascade to the end.
    publish(&admin, &offline, "sim/hu-2.0.bin", 2).await;
    let created = rollout(&admin, "sim/hu-2.0.bin").await;
    assert_eq!(created["current_group"], 1, "{created}");
    opts.behaviour.fail_fraction = 0.1;
    let (s, downloads) = drive(&opts, &admin, &created["rollout"]["id"]).await;
    assert_eq!(s["rollout"]["state"], "finished", "{s}");
    for g in 0..3 {
        assert_eq!(s["groups"][g]["state"], "succeeded", "{s}");
        assert_eq!(progress(&s, g, "assigned"), 20, "{s}");
        assert!(progress(&s, g, "installed") >= 10, "{s}");
        assert!(progress(&s, g, "failed") * 100 <= 30 * 20, "{s}");
    }
    assert!(s["totals"]["failed"].as_u64().unwrap() > 0, "{s}");
    assert!(downloads >= FLEET as u64, "{downloads}");

    // 2. Most installs fail: the first group exceeds 30 % and the rollout
    // stops; the other 40 vehicles are never assigned the image.
    publish(&admin, &offline, "sim/hu-3.0.bin", 3).await;
    let created = rollout(&admin, "sim/hu-3.0.bin").await;
    opts.behaviour.fail_fraction = 0.7;
    let (s, downloads) = drive(&opts, &admin, &created["rollout"]["id"]).await;
    assert_eq!(s["rollout"]["state"], "stopped", "{s}");
    assert_eq!(s["groups"][0]["state"], "stopped", "{s}");
    assert!(progress(&s, 0, "failed") * 100 > 30 * 20, "{s}");
    for g in 1..3 {
        assert_eq!(s["groups"][g]["state"], "cancelled", "{s}");
        assert_eq!(progress(&s, g, "assigned"), 0, "{s}");
    }
    assert!(
        downloads <= 20,
        "only the first group downloads: {downloads}"
    );
    let campaign = &s["rollout"]["campaign_id"];
    let pending = admin
        .get(&format!(
            "/admin/assignments?campaign={campaign}&status=pending"
        ))
        .await
        .unwrap()
        .ok()
        .unwrap()
        .json();
    assert_eq!(pending["assignments"], json!([]), "{pending}");
    let _ = stop.send(());
    let _ = std::fs::remove_dir_all(&root);
}
