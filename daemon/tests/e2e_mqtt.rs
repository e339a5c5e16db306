//! Push nudges over MQTT end to end (issue 15): a real Mosquitto broker
//! (Debian `mosquitto`, installed by `daemon/tests/mosquitto-prereqs.sh`) on a
//! loopback port, TLS 1.3 with a test CA, a password file and an ACL file (a
//! vehicle may only read its own topic, the backend may write every vehicle's
//! topic); the real `secureev-otad` on a private bus with
//! `[checkin] interval_secs = 3600` against the in-test TLS backend.
//!
//! - After an assignment and a nudge on the vehicle's topic the daemon checks
//!   in and installs within seconds (the `Completed` D-Bus signal, bounded).
//! - A nudge for another VIN is not delivered and causes no check-in.
//! - A flood of nudges inside `min_interval_secs` causes no further check-in.
//! - The vehicle's credentials cannot subscribe to another vehicle's topic.
//! - With the real `secureev-server` (`[push]`) and the real daemon:
//!   `secureev-server assign` is followed by the server's nudge and the
//!   install, within seconds, with no poll and no `CheckForUpdates`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_common;

use e2e_common::*;
use futures_util::StreamExt;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use secureev_dbus::ErrorCode;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OTHER_VIN: &str = "WSEVE2E0000000002";
const SERVER_USER: &str = "secureev-server";
const PREFIX: &str = "secureev/v1/vehicles";
const STEP: Duration = Duration::from_secs(20);

fn topic(vin: &str) -> String {
    format!("{PREFIX}/{vin}/nudge")
}

/// The broker, killed on drop.
struct Broker {
    child: Child,
    port: u16,
    ca_pem: String,
    log: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn start(dir: &Path) -> Broker {
        let bin = Path::new("/usr/sbin/mosquitto");
        assert!(
            bin.is_file(),
            "mosquitto is missing: run daemon/tests/mosquitto-prereqs.sh (Debian package `mosquitto`)"
        );
        std::fs::create_dir_all(dir).unwrap();
        // TLS: a CA and a certificate for localhost.
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("broker.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("broker.key"), key.serialize_pem()).unwrap();
        // Users and ACL.
        let passwd = dir.join("passwd");
        for (i, (user, pw)) in [
            (VIN, "vehicle-1-pw"),
            (OTHER_VIN, "vehicle-2-pw"),
            (SERVER_USER, "server-pw"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut c = Command::new("mosquitto_passwd");
            if i == 0 {
                c.arg("-c");
            }
            let st = c.arg("-b").arg(&passwd).arg(user).arg(pw).status().unwrap();
            assert!(st.success(), "mosquitto_passwd");
        }
        std::fs::write(
            dir.join("acl"),
            format!(
                "user {SERVER_USER}\ntopic write {PREFIX}/+/nudge\n\n\
                 pattern read {PREFIX}/%u/nudge\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "user root\npersistence false\nlog_dest stderr\nlog_type all\n\
                 per_listener_settings false\nallow_anonymous false\n\
                 password_file {d}/passwd\nacl_file {d}/acl\n\
                 listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/broker.pem\n\
                 keyfile {d}/broker.key\ntls_version tlsv1.3\n"
            ),
        )
        .unwrap();
        let log = dir.join("mosquitto.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut broker = Broker {
            child,
            port,
            ca_pem: ca.pem(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = broker.child.try_wait().unwrap() {
                panic!("mosquitto exited with {st}:\n{}", broker.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen:\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    /// A connected client (CONNACK received) with these credentials.
    async fn client(&self, id: &str, user: &str, pw: &str) -> (AsyncClient, EventLoop) {
        let tls = secureev_daemon::fetch::http::tls_config_from_pem(self.ca_pem.as_bytes(), None)
            .unwrap();
        let mut o = MqttOptions::new(id, "localhost", self.port);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )))
        .set_credentials(user, pw)
        .set_keep_alive(Duration::from_secs(30));
        let (c, mut ev) = AsyncClient::new(o, 1000);
        loop {
            match next(&mut ev).await {
                Event::Incoming(Packet::ConnAck(_)) => return (c, ev),
                _ => continue,
            }
        }
    }

    /// Publish `n` nudges on `topic` as the backend; returns once the broker
    /// acknowledged every one (QoS 1).
    async fn nudge(&self, topic: &str, n: usize) {
        let (c, mut ev) = self.client("test-server", SERVER_USER, "server-pw").await;
        for _ in 0..n {
            c.publish(topic, QoS::AtLeastOnce, false, Vec::<u8>::new())
                .await
                .unwrap();
        }
        let mut acked = 0;
        while acked < n {
            if let Event::Incoming(Packet::PubAck(_)) = next(&mut ev).await {
                acked += 1;
            }
        }
        c.disconnect().await.unwrap();
    }
}

async fn next(ev: &mut EventLoop) -> Event {
    tokio::time::timeout(STEP, ev.poll())
        .await
        .expect("MQTT event within the bound")
        .expect("MQTT connection")
}

/// Wait for a SUBACK; whether every filter was granted.
async fn suback(ev: &mut EventLoop) -> bool {
    loop {
        if let Event::Incoming(Packet::SubAck(a)) = next(ev).await {
            return a
                .return_codes
                .iter()
                .all(|c| !matches!(c, SubscribeReasonCode::Failure));
        }
    }
}

/// Wait for the next PUBLISH; its topic.
async fn received(ev: &mut EventLoop) -> String {
    received_with_payload(ev).await.0
}

/// Wait for the next PUBLISH; its topic and payload.
async fn received_with_payload(ev: &mut EventLoop) -> (String, Vec<u8>) {
    loop {
        if let Event::Incoming(Packet::Publish(p)) = next(ev).await {
            return (p.topic, p.payload.to_vec());
        }
    }
}

/// Check-ins the backend saw: manifest PUTs (each cycle ends with one).
fn checkins(backend: &Backend) -> usize {
    backend.manifests().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nudge_makes_the_vehicle_check_in_at_once_rate_limited_and_per_vehicle() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let backend = Backend::start().await;
    let mut repos = Repos::new();
    backend.set_files(repos.publish(&[]));
    let target = dir.path().join("image.bin");
    std::fs::write(&target, b"factory").unwrap();
    let v = dir.path().join("vehicle");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("mqtt-ca.pem"), &broker.ca_pem).unwrap();
    std::fs::write(v.join("mqtt-password"), "vehicle-1-pw\n").unwrap();
    let vd = v.display();
    let push = format!(
        "[push]\nmqtt_url = \"mqtts://localhost:{}\"\nca_file = \"{vd}/mqtt-ca.pem\"\n\
         password_file = \"{vd}/mqtt-password\"\nmin_interval_secs = 600\n\
         connect_timeout_secs = 5\nkeep_alive_secs = 30\nbackoff_max_secs = 5\n",
        broker.port
    );
    let mut vehicle = Vehicle::with_policy(
        &v,
        &backend,
        &repos,
        &InstallMode::File(target.clone()),
        &push,
        "auto",
        3600,
    );
    vehicle.start().await;
    // The start-up check-in, and the subscription.
    poll(
        "the start-up check-in",
        STEP,
        Duration::from_millis(20),
        || (checkins(&backend) == 1).then_some(()),
    )
    .await;
    poll(
        "the push subscription",
        STEP,
        Duration::from_millis(20),
        || vehicle.log().contains("push: subscribed").then_some(()),
    )
    .await;
    let proxy = vehicle.proxy().await;
    let mut completed = proxy.receive_completed().await.unwrap();

    // A nudge for another vehicle: the broker routes it (the other vehicle
    // gets it) but not to this one.
    let (other, mut other_ev) = broker.client("other-car", OTHER_VIN, "vehicle-2-pw").await;
    other
        .subscribe(topic(OTHER_VIN), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(suback(&mut other_ev).await);
    broker.nudge(&topic(OTHER_VIN), 1).await;
    assert_eq!(received(&mut other_ev).await, topic(OTHER_VIN));

    // An assignment, then its nudge: installed within seconds, with the
    // poll interval at an hour.
    let image = image_bytes(64 * 1024, 7);
    repos.release("hu/fw-2.img", &image, 2);
    backend.set_files(repos.publish(&[("hu/fw-2.img", &image)]));
    let t0 = Instant::now();
    broker.nudge(&topic(VIN), 1).await;
    // The start-up check-in's `Completed` may still be on its way: take
    // signals until the one after which the image is installed.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let signal = tokio::time::timeout_at(deadline, completed.next())
            .await
            .unwrap_or_else(|_| panic!("not installed after the nudge:\n{}", vehicle.log()))
            .unwrap();
        let args = signal.args().unwrap();
        assert_eq!(
            args.code,
            ErrorCode::Ok.as_u32(),
            "{}\n{}",
            args.message,
            vehicle.log()
        );
        if std::fs::read(&target).unwrap() == image {
            break;
        }
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    eprintln!("nudge to installed: {took:?}");
    // Exactly one check-in for the nudge: the other VIN's nudge caused none.
    assert_eq!(checkins(&backend), 2, "{}", vehicle.log());

    // A flood inside min_interval_secs: no check-in. A second subscriber with
    // the vehicle's own credentials sees the whole flood (the broker sent it
    // to the daemon as well), then a D-Bus check-in, which the daemon serves
    // after it has read what its connection received, is the only new one.
    let (own, mut own_ev) = broker.client("own-observer", VIN, "vehicle-1-pw").await;
    own.subscribe(topic(VIN), QoS::AtLeastOnce).await.unwrap();
    assert!(suback(&mut own_ev).await);
    const FLOOD: usize = 200;
    broker.nudge(&topic(VIN), FLOOD).await;
    for _ in 0..FLOOD {
        assert_eq!(received(&mut own_ev).await, topic(VIN));
    }
    let (code, message) = vehicle.check(STEP).await;
    assert_eq!(code, ErrorCode::Ok.as_u32(), "{message}");
    assert_eq!(
        checkins(&backend),
        3,
        "a flood of {FLOOD} nudges caused check-ins:\n{}",
        vehicle.log()
    );

    // ACL: the vehicle's credentials cannot read another vehicle's topic. The
    // broker refuses the subscription (SUBACK 0x80) or grants nothing: a
    // nudge there is not delivered, while one on the own topic, published
    // after it, is.
    let (spy, mut spy_ev) = broker.client("spy", VIN, "vehicle-1-pw").await;
    spy.subscribe(topic(OTHER_VIN), QoS::AtLeastOnce)
        .await
        .unwrap();
    let granted = suback(&mut spy_ev).await;
    eprintln!("subscription to another vehicle's topic granted by SUBACK: {granted}");
    spy.subscribe(topic(VIN), QoS::AtLeastOnce).await.unwrap();
    assert!(suback(&mut spy_ev).await);
    broker.nudge(&topic(OTHER_VIN), 1).await;
    broker.nudge(&topic(VIN), 1).await;
    assert_eq!(received(&mut spy_ev).await, topic(VIN), "{}", broker.log());
    // Nor publish: a vehicle's nudge for another vehicle is dropped by the
    // broker (the other vehicle, subscribed, gets only the backend's).
    spy.publish(
        topic(OTHER_VIN),
        QoS::AtLeastOnce,
        false,
        b"forged".to_vec(),
    )
    .await
    .unwrap();
    loop {
        if let Event::Incoming(Packet::PubAck(_)) = next(&mut spy_ev).await {
            break;
        }
    }
    broker.nudge(&topic(OTHER_VIN), 1).await;
    assert_eq!(
        received_with_payload(&mut other_ev).await,
        (topic(OTHER_VIN), Vec::new()),
        "a vehicle's forged nudge reached another vehicle"
    );
    assert_eq!(checkins(&backend), 3, "{}", vehicle.log());
    drop(vehicle);
}

// ---- the real backend publishing ------------------------------------------------

/// The real `secureev-server` with `[push]` and the real `secureev-otad`
/// with `[push]` and a poll interval of an hour: `secureev-server assign`
/// makes the server publish a nudge after its transaction commits, and the
/// daemon checks in and installs within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_server_nudges_after_an_assignment_and_the_daemon_installs_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path();
    let broker = Broker::start(&w.join("broker"));
    std::fs::write(w.join("mqtt-ca.pem"), &broker.ca_pem).unwrap();
    std::fs::write(w.join("server-mqtt-password"), "server-pw\n").unwrap();
    std::fs::write(w.join("vehicle-mqtt-password"), "vehicle-1-pw\n").unwrap();
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
    let toml_path = data.join("server.toml");
    let mut toml = std::fs::read_to_string(&toml_path).unwrap();
    toml.push_str(&format!(
        "\n[push]\nmqtt_url = \"mqtts://localhost:{}\"\nca_file = \"{}\"\n\
         password_file = \"{}\"\npublish_timeout_ms = 2000\n",
        broker.port,
        w.join("mqtt-ca.pem").display(),
        w.join("server-mqtt-password").display()
    ));
    std::fs::write(&toml_path, toml).unwrap();
    let server_log_path = w.join("server.log");
    let mut procs = Procs(vec![Command::new(&server)
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&server_log_path).unwrap())
        .spawn()
        .unwrap()]);
    let server_log = || std::fs::read_to_string(&server_log_path).unwrap_or_default();
    let s_args = |c: &mut Command| {
        c.args(["--server", &aurl]).arg("--data-dir").arg(&data);
    };
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
            server_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let image_root = root("image").await.unwrap();
    let v = w.join("vehicle");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("director-root.json"), &director_root).unwrap();
    std::fs::write(v.join("image-root.json"), &image_root).unwrap();
    std::fs::write(v.join("installed.img"), b"factory").unwrap();
    let bus = secureev_dbus::testing::PrivateBus::start().expect("dbus-daemon");
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

[push]
mqtt_url = "mqtts://localhost:{mport}"
ca_file = "{mca}"
password_file = "{mpw}"
min_interval_secs = 30

[install]
policy = "auto"
installer = "file"
inhibit_dir = "{d}/inhibit"

[install.file]
path = "{d}/installed.img"
"#,
            ca = data.join("tls/ca.pem").display(),
            bus = bus.address(),
            mport = broker.port,
            mca = w.join("mqtt-ca.pem").display(),
            mpw = w.join("vehicle-mqtt-password").display(),
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
    let proxy = secureev_dbus::Ota1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let mut ops = proxy.receive_operation_completed().await.unwrap();
    let timeout = scaled(Duration::from_secs(60));
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
            std::collections::HashMap::from([(
                "token",
                zbus::zvariant::Value::from(credential.as_str()),
            )]),
        )
        .await
        .unwrap();
    let (code, message) = op_completed(&mut ops, Some(id), timeout, &otad_log).await;
    assert_eq!(code, 0, "provision: {message}");
    let (code, message) = op_completed(&mut ops, None, timeout, &otad_log).await;
    assert_eq!(code, 0, "check-in after provisioning: {message}");
    poll(
        "the push subscription",
        STEP,
        Duration::from_millis(20),
        || {
            std::fs::read_to_string(&otad_log)
                .unwrap_or_default()
                .contains("push: subscribed")
                .then_some(())
        },
    )
    .await;
    poll(
        "the server's broker connection",
        STEP,
        Duration::from_millis(20),
        || {
            server_log()
                .contains("push: connected to the MQTT broker")
                .then_some(())
        },
    )
    .await;

    let image = image_bytes(96 * 1024, 43);
    std::fs::write(w.join("rootfs.img"), &image).unwrap();
    let name = "hu/rootfs-3.img";
    let mut add = Command::new(&server);
    add.arg("image")
        .arg("add")
        .arg(w.join("rootfs.img"))
        .args(["--name", name, "--hardware-id", HW, "--version", "3"])
        .args(["--release-counter", "3"])
        .arg("--offline-dir")
        .arg(&offline);
    s_args(&mut add);
    ok(&mut add);
    let mut assign = Command::new(&server);
    assign.args(["assign", "--vin", VIN, "--ecu", HU, "--image", name]);
    s_args(&mut assign);
    let t0 = Instant::now();
    ok(&mut assign);
    // No CheckForUpdates, no poll for an hour: only the nudge starts this.
    let (code, message) = op_completed(&mut ops, None, STEP, &otad_log).await;
    let took = t0.elapsed();
    assert_eq!(code, 0, "nudged check-in: {message}");
    assert!(
        std::fs::read(v.join("installed.img")).unwrap() == image,
        "not installed:\n{}",
        std::fs::read_to_string(&otad_log).unwrap_or_default()
    );
    assert!(
        std::fs::read_to_string(&otad_log)
            .unwrap_or_default()
            .contains("push: nudge; checking in"),
        "the check-in was not the nudge's"
    );
    eprintln!("assign to installed (real server, real daemon): {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
