//! Check-in cost: one vehicle fetches its Director timestamp, snapshot and
//! targets and submits a signed manifest, over TLS on loopback. Then a
//! sustained run: many vehicles checking in concurrently for a fixed time,
//! reported as check-ins per second (recorded in docs/server.md).
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::Criterion;
use secureev_server::client::{http_client, AdminClient, VehicleClient};
use secureev_server::config::Config;
use secureev_server::init::{init, InitOptions};
use secureev_uptane::manifest::{
    sign_ecu_report, sign_manifest, EcuVersionReport, VehicleManifest,
};
use secureev_uptane::{did, SigningKey, Timestamp};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Car {
    client: VehicleClient,
    vin: String,
    keys: Vec<(String, SigningKey)>,
    counter: u64,
}

impl Car {
    async fn check_in(&mut self) {
        let base = format!("/director/{}", self.vin);
        let ts = self
            .client
            .get(&format!("{base}/timestamp.json"))
            .await
            .unwrap();
        assert_eq!(ts.status, 200);
        let ts: serde_json::Value = serde_json::from_slice(&ts.body).unwrap();
        let sv = ts["signed"]["meta"]["snapshot.json"]["version"]
            .as_u64()
            .unwrap();
        let sn = self
            .client
            .get(&format!("{base}/{sv}.snapshot.json"))
            .await
            .unwrap();
        let sn: serde_json::Value = serde_json::from_slice(&sn.body).unwrap();
        let tv = sn["signed"]["meta"]["targets.json"]["version"]
            .as_u64()
            .unwrap();
        let tg = self
            .client
            .get(&format!("{base}/{tv}.targets.json"))
            .await
            .unwrap();
        assert_eq!(tg.status, 200);
        self.counter += 1;
        let now = Timestamp::from_unix(secureev_server::unix_now());
        let mut m = VehicleManifest::new(&self.vin, &self.keys[0].0, self.counter);
        for (serial, key) in &self.keys {
            let r = EcuVersionReport::new(serial, "hw", now, self.counter);
            m.add_report(sign_ecu_report(&r, key).unwrap()).unwrap();
        }
        let body = serde_json::to_vec(&sign_manifest(&m, &self.keys[0].1).unwrap()).unwrap();
        let r = self
            .client
            .put_json(&format!("{base}/manifest"), &body)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}

struct Env {
    http: reqwest::Client,
    base: String,
    admin: AdminClient,
    root: std::path::PathBuf,
}

async fn env() -> Env {
    let root = std::env::temp_dir().join(format!("secureev-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    init(&InitOptions {
        database_url: None,
        data_dir: root.join("data"),
        offline_dir: root.join("offline"),
        hostnames: vec!["127.0.0.1".into()],
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
    })
    .unwrap();
    let config = Config::load(&root.join("data/server.toml")).unwrap();
    let server = secureev_server::bind(config).await.unwrap();
    let base = format!("https://{}", server.local_addr().unwrap());
    let admin_base = format!("https://{}", server.admin_addr().unwrap());
    tokio::spawn(server.serve(std::future::pending()));
    let ca = std::fs::read(root.join("data/tls/ca.pem")).unwrap();
    let http = http_client(Some(&ca)).unwrap();
    let token = std::fs::read_to_string(root.join("data/admin-token")).unwrap();
    let admin = AdminClient::new(http.clone(), &admin_base, &token);
    Env {
        http,
        base,
        admin,
        root,
    }
}

async fn car(env: &Env, i: usize) -> Car {
    let vin = format!("BENCH{i:012}");
    let keys: Vec<(String, SigningKey)> = (0..3)
        .map(|e| (format!("ECU-{i}-{e}"), SigningKey::generate_p256()))
        .collect();
    let reg = json!({
        "vin": vin,
        "primary_serial": keys[0].0,
        "ecus": keys.iter().map(|(s, k)| json!({"serial": s, "hardware_id": "hw", "public_key": did::to_did(&k.verifying_key())})).collect::<Vec<_>>(),
    });
    env.admin
        .post("/admin/vehicles", &reg)
        .await
        .unwrap()
        .ok()
        .unwrap();
    let client = VehicleClient::new(env.http.clone(), &env.base, &vin, keys[0].1.clone());
    Car {
        client,
        vin,
        keys,
        counter: 0,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = rt.block_on(env());
    let mut one = rt.block_on(car(&env, 0));

    let mut c = Criterion::default().configure_from_args().sample_size(30);
    c.bench_function(
        "check-in (3 director GETs + manifest with 3 ECU reports, TLS)",
        |b| b.iter(|| rt.block_on(one.check_in())),
    );
    c.final_summary();

    // Sustained: 32 vehicles, each checking in back to back, for 10 seconds.
    let vehicles = 32;
    let secs = std::env::var("SECUREEV_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10u64);
    let env = Arc::new(env);
    let total = rt.block_on(async {
        let mut cars = Vec::new();
        for i in 0..vehicles {
            cars.push(car(&env, i + 1).await);
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for mut c in cars {
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    c.check_in().await;
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    let _ = std::fs::remove_dir_all(&env.root);
    println!(
        "sustained: {total} check-ins by {vehicles} vehicles in {secs} s = {:.0} check-ins/s (client and server share this machine)",
        total as f64 / secs as f64
    );
}
