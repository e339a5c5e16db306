//! Test harness: a real server over TLS on loopback, and a simulated vehicle.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use secureev_server::client::{http_client, AdminClient, Reply, VehicleClient};
use secureev_server::config::Config;
use secureev_server::init::{init, InitOptions};
use secureev_server::layout;
use secureev_uptane::client::{Decision, Repo, Step, UpdateClient};
use secureev_uptane::encryption::EcuDecryptionKey;
use secureev_uptane::manifest::{
    sign_ecu_report, sign_manifest, EcuVersionReport, VehicleManifest,
};
use secureev_uptane::uptane::{EcuInfo, UpdatePlan, Vehicle};
use secureev_uptane::{did, SigningKey, Timestamp, Verified};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Harness {
    /// The vehicle listener.
    pub base: String,
    /// The admin listener.
    pub admin_base: String,
    pub admin: AdminClient,
    pub http: reqwest::Client,
    pub data: PathBuf,
    pub offline: PathBuf,
    pub root: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn temp_root(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let p = std::env::temp_dir().join(format!(
        "secureev-server-{tag}-{}-{n}-{}",
        std::process::id(),
        secureev_server::unix_now()
    ));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// The environment variable naming a PostgreSQL server (a URL to a
/// database the tests may create others from, as a superuser): set, every
/// harness stores in a fresh PostgreSQL database of its own instead of
/// SQLite (scripts/test.sh runs the suites both ways).
pub const TEST_DATABASE_ENV: &str = "SECUREEV_TEST_DATABASE_URL";

/// Whether the harnesses store in PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var_os(TEST_DATABASE_ENV).is_some()
}

/// A fresh, empty PostgreSQL database for one harness (made with `psql`),
/// when [`TEST_DATABASE_ENV`] is set.
pub fn test_database_url(tag: &str) -> Option<String> {
    let admin = std::env::var(TEST_DATABASE_ENV).ok()?;
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let name: String = format!("t_{tag}_{}_{n}", std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &admin])
        .args(["-c", &format!("DROP DATABASE IF EXISTS {name}")])
        .args(["-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql (postgresql-client) is needed with SECUREEV_TEST_DATABASE_URL");
    assert!(
        out.status.success(),
        "creating database {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}

pub async fn start(tag: &str) -> Harness {
    start_tuned(tag, |_| {}).await
}

/// As [`start`], with `tune` applied to the configuration first.
pub async fn start_tuned(tag: &str, tune: impl FnOnce(&mut Config)) -> Harness {
    let root = temp_root(tag);
    let data = root.join("data");
    let offline = root.join("offline");
    init(&InitOptions {
        data_dir: data.clone(),
        offline_dir: offline.clone(),
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        database_url: test_database_url(tag),
    })
    .unwrap();
    let mut config = Config::load(&data.join("server.toml")).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    tune(&mut config);
    start_with(root, data, offline, config).await
}

pub async fn start_with(root: PathBuf, data: PathBuf, offline: PathBuf, config: Config) -> Harness {
    let server = secureev_server::bind(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let admin_addr = server.admin_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    let base = format!("https://{addr}");
    let admin_base = format!("https://{admin_addr}");
    let ca = std::fs::read(data.join(layout::CA_CERT)).unwrap();
    let http = http_client(Some(&ca)).unwrap();
    let token = std::fs::read_to_string(data.join(layout::ADMIN_TOKEN)).unwrap();
    let admin = AdminClient::new(http.clone(), &admin_base, &token);
    Harness {
        base,
        admin_base,
        admin,
        http,
        data,
        offline,
        root,
        stop: Some(tx),
    }
}

impl Harness {
    /// A harness for a server running elsewhere (a `secureev-server serve`
    /// process the test started and stops) on these addresses.
    pub fn external(
        root: PathBuf,
        data: PathBuf,
        offline: PathBuf,
        port: u16,
        admin_port: u16,
    ) -> Self {
        let base = format!("https://127.0.0.1:{port}");
        let admin_base = format!("https://127.0.0.1:{admin_port}");
        let ca = std::fs::read(data.join(layout::CA_CERT)).unwrap();
        let http = http_client(Some(&ca)).unwrap();
        let token = std::fs::read_to_string(data.join(layout::ADMIN_TOKEN)).unwrap();
        let admin = AdminClient::new(http.clone(), &admin_base, &token);
        Harness {
            base,
            admin_base,
            admin,
            http,
            data,
            offline,
            root,
            stop: None,
        }
    }

    /// A fresh enrollment credential for `vin`.
    pub async fn enrollment_credential(&self, vin: &str) -> String {
        let r = self
            .admin
            .post("/admin/enrollments", &json!({ "vin": vin }))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["credential"].as_str().unwrap().to_owned()
    }

    /// POST /enroll on the vehicle listener.
    pub async fn enroll(&self, credential: &str, registration: &Value) -> Reply {
        let r = self
            .http
            .post(format!("{}/enroll", self.base))
            .bearer_auth(credential)
            .json(registration)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        Reply {
            status,
            body: r.bytes().await.unwrap().to_vec(),
        }
    }

    /// The server's database, as its configuration names it.
    pub fn db(&self) -> secureev_server::db::Db {
        let config = Config::load(&self.data.join("server.toml")).unwrap();
        secureev_server::db::Db::open_store(&self.data, config.database_url.as_deref()).unwrap()
    }

    /// Run SQL behind the server's back, on another connection:
    /// `sqlite` on the SQLite file, `postgres` (with `psql`) on PostgreSQL.
    pub fn sql(&self, sqlite: &str, postgres: &str) {
        let config = Config::load(&self.data.join("server.toml")).unwrap();
        match config.database_url {
            None => {
                let c = rusqlite::Connection::open(self.data.join(layout::DB_FILE)).unwrap();
                c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
                c.execute_batch(sqlite).unwrap();
            }
            Some(url) => {
                let out = std::process::Command::new("psql")
                    .args([
                        "-X",
                        "-q",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-d",
                        &url,
                        "-c",
                        postgres,
                    ])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// An admin client with a new operator's token holding `roles`.
    pub fn operator(&self, name: &str, roles: &[secureev_server::operators::Role]) -> AdminClient {
        let db = self.db();
        let token = db
            .write(|tx| {
                secureev_server::operators::add(tx, name, roles, secureev_server::unix_now())
            })
            .unwrap();
        AdminClient::new(self.http.clone(), &self.admin_base, &token)
    }
}

pub struct TestEcu {
    pub serial: String,
    pub hardware_id: String,
    pub key: SigningKey,
    pub enc: EcuDecryptionKey,
    pub counter: u64,
}

pub struct TestVehicle {
    pub vin: String,
    pub primary: String,
    pub ecus: Vec<TestEcu>,
    pub client: VehicleClient,
    pub counter: u64,
}

impl TestVehicle {
    pub fn new(h: &Harness, vin: &str, ecus: &[(&str, &str)]) -> Self {
        let ecus: Vec<TestEcu> = ecus
            .iter()
            .map(|(s, hw)| TestEcu {
                serial: (*s).into(),
                hardware_id: (*hw).into(),
                key: SigningKey::generate_p256(),
                enc: EcuDecryptionKey::generate(),
                counter: 0,
            })
            .collect();
        let client = VehicleClient::new(h.http.clone(), &h.base, vin, ecus[0].key.clone());
        TestVehicle {
            vin: vin.into(),
            primary: ecus[0].serial.clone(),
            ecus,
            client,
            counter: 0,
        }
    }

    pub fn registration(&self) -> Value {
        json!({
            "vin": self.vin,
            "primary_serial": self.primary,
            "ecus": self.ecus.iter().map(|e| json!({
                "serial": e.serial,
                "hardware_id": e.hardware_id,
                "public_key": did::to_did(&e.key.verifying_key()),
                "encryption_key": e.enc.public().to_hex(),
            })).collect::<Vec<_>>(),
        })
    }

    pub async fn register(&self, h: &Harness) {
        let r = h
            .admin
            .post("/admin/vehicles", &self.registration())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    /// Enroll with a fresh credential on the vehicle listener.
    pub async fn enroll(&self, h: &Harness) {
        let cred = h.enrollment_credential(&self.vin).await;
        let r = h.enroll(&cred, &self.registration()).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    pub fn ecu(&self, serial: &str) -> &TestEcu {
        self.ecus.iter().find(|e| e.serial == serial).unwrap()
    }

    pub fn uptane_vehicle(
        &self,
        installed: &[(&str, secureev_uptane::uptane::InstalledImage)],
    ) -> Vehicle {
        Vehicle::new(
            &self.vin,
            &self.primary,
            self.ecus.iter().map(|e| EcuInfo {
                serial: e.serial.clone(),
                hardware_id: e.hardware_id.clone(),
                installed: installed
                    .iter()
                    .find(|(s, _)| *s == e.serial)
                    .map(|(_, i)| i.clone()),
            }),
        )
    }

    /// Drive the core's update client over HTTP: `prefix` gives each
    /// repository's path (`/director/<vin>`, `/image`). Nothing is stored.
    pub async fn drive(
        &self,
        client: &mut UpdateClient,
        prefix: impl Fn(Repo) -> String,
    ) -> Decision {
        loop {
            match client.next_step().unwrap() {
                Step::Load { .. } => client.offer_not_found().unwrap(),
                Step::Fetch(req) => {
                    let path = format!("{}/{}", prefix(req.repo), req.file);
                    let r = self.client.get(&path).await.unwrap();
                    if r.status == 404 && req.optional() {
                        client.offer_not_found().unwrap();
                    } else {
                        assert_eq!(
                            r.status,
                            200,
                            "{path}: {}",
                            String::from_utf8_lossy(&r.body)
                        );
                        client.offer(&r.body).unwrap();
                    }
                }
                Step::Persist { .. } => {}
                Step::Done(decision) => return decision,
            }
        }
    }

    /// A Primary's full verification against both repositories.
    pub async fn full_verification(
        &self,
        h: &Harness,
        installed: &[(&str, secureev_uptane::uptane::InstalledImage)],
    ) -> Verified<UpdatePlan> {
        let now = Timestamp::from_unix(secureev_server::unix_now());
        let droot = h
            .admin
            .get("/admin/director/root")
            .await
            .unwrap()
            .ok()
            .unwrap()
            .body;
        let iroot = h
            .admin
            .get("/admin/image/root")
            .await
            .unwrap()
            .ok()
            .unwrap()
            .body;
        let mut client =
            UpdateClient::primary(self.uptane_vehicle(installed), &droot, &iroot, now).unwrap();
        let vin = self.vin.clone();
        let prefix = move |repo| match repo {
            Repo::Director => format!("/director/{vin}"),
            Repo::Image => "/image".to_owned(),
        };
        match self.drive(&mut client, prefix).await {
            Decision::Plan(plan) => plan,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Build a signed manifest; `installed` maps serial → (name, bytes, release counter).
    pub fn manifest(&mut self, installed: &[(&str, &str, &[u8], u64)]) -> Vec<u8> {
        let now = Timestamp::from_unix(secureev_server::unix_now());
        self.counter += 1;
        let mut m = VehicleManifest::new(&self.vin, &self.primary, self.counter);
        for e in &mut self.ecus {
            e.counter += 1;
            let mut r = EcuVersionReport::new(&e.serial, &e.hardware_id, now, e.counter);
            if let Some((_, name, bytes, rc)) = installed.iter().find(|(s, ..)| *s == e.serial) {
                let tf = secureev_uptane::builder::target_file(bytes, None);
                r = r.with_installed_image(
                    secureev_uptane::manifest::InstalledImage::new(*name, tf.length, tf.hashes)
                        .with_release_counter(*rc),
                );
            }
            m.add_report(sign_ecu_report(&r, &e.key).unwrap()).unwrap();
        }
        serde_json::to_vec(&sign_manifest(&m, &self.ecus[0].key).unwrap()).unwrap()
    }

    /// As [`TestVehicle::send_manifest`], a transport failure as `Err`.
    pub async fn send_manifest_result(&self, body: &[u8]) -> Result<u16, String> {
        self.client
            .put_json(&format!("/director/{}/manifest", self.vin), body)
            .await
            .map(|r| r.status)
            .map_err(|e| e.to_string())
    }

    pub async fn send_manifest(&self, body: &[u8]) -> Reply {
        self.client
            .put_json(&format!("/director/{}/manifest", self.vin), body)
            .await
            .unwrap()
    }
}

pub fn error_code(r: &Reply) -> String {
    r.json()["error"]
        .as_str()
        .unwrap_or("<no JSON error body>")
        .to_owned()
}
