//! Device certificates over mutual TLS on loopback (`device_certificates =
//! "required"`): a vehicle connection needs a certificate from the fleet CA
//! whose subject commonName is the VIN that signs its requests. Vehicles
//! connect through the daemon's own HTTP client
//! (`secureev_daemon::fetch::http`, the TLS configuration `[backend]
//! client_cert`/`client_key` build).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rustls::pki_types::ServerName;
use secureev_server::client::VehicleClient;
use secureev_server::config::DeviceCertificates;
use secureev_server::tls::{issue_device_cert_files, DeviceKey};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const VIN_A: &str = "WSEVMTLSA00000001";
const VIN_B: &str = "WSEVMTLSB00000002";
const BOUND: Duration = Duration::from_secs(15);

async fn start_mtls(tag: &str) -> Harness {
    start_tuned(tag, |c| {
        let offline = c.data_dir.parent().unwrap().join("offline");
        secureev_server::tls::init_fleet_ca(&offline, Some(&c.data_dir)).unwrap();
        c.device_certificates = DeviceCertificates::Required;
    })
    .await
}

/// A device certificate and key for `vin` from the fleet CA in `offline`.
fn device(h: &Harness, offline: &Path, vin: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = h.root.join(format!(
        "device-{vin}-{}",
        offline.file_name().unwrap().to_string_lossy()
    ));
    let (cert, key) = (dir.join("client.pem"), dir.join("client-key.pem"));
    issue_device_cert_files(
        offline,
        vin,
        DeviceKey::Generate,
        &cert,
        Some(&key),
        secureev_server::unix_now(),
        30,
    )
    .unwrap();
    (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
}

/// The daemon's HTTP client with this client certificate (or none).
fn daemon_http(h: &Harness, client: Option<&(Vec<u8>, Vec<u8>)>) -> reqwest::Client {
    use secureev_daemon::fetch::http::{client_with_tls, tls_config_from_pem};
    let ca = std::fs::read(h.data.join("tls/ca.pem")).unwrap();
    let tls = tls_config_from_pem(&ca, client.map(|(c, k)| (c.as_slice(), k.as_slice()))).unwrap();
    client_with_tls(tls, Duration::from_secs(10)).unwrap()
}

/// Whether a raw TLS client with `client` gets any HTTP answer at all.
async fn any_answer(h: &Harness, client: Option<&(Vec<u8>, Vec<u8>)>) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = std::fs::read(h.data.join("tls/ca.pem")).unwrap();
    let tls = secureev_daemon::fetch::http::tls_config_from_pem(
        &ca,
        client.map(|(c, k)| (c.as_slice(), k.as_slice())),
    )
    .unwrap();
    let addr = h.base.trim_start_matches("https://").to_owned();
    tokio::time::timeout(BOUND, async {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3: the client's side of the handshake may finish before the
        // server has looked at its certificate; the refusal is then the
        // alert the first read gets.
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(
            b"GET /image/timestamp.json HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .await
            .map_err(|e| format!("{e} (after {:?})", String::from_utf8_lossy(&out)))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
    .await
    .expect("bounded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_fleet_certificate_is_refused_in_the_handshake() {
    let h = start_mtls("mtls-refused").await;
    // No certificate at all.
    let e = any_answer(&h, None).await.unwrap_err();
    assert!(
        e.contains("CertificateRequired") || e.contains("alert"),
        "{e}"
    );
    assert!(!e.contains("HTTP/1.1"), "{e}");
    // A certificate naming the VIN, from another CA.
    let other = h.root.join("other-offline");
    secureev_server::tls::init_fleet_ca(&other, None).unwrap();
    let stranger = device(&h, &other, VIN_A);
    let e = any_answer(&h, Some(&stranger)).await.unwrap_err();
    assert!(
        e.contains("UnknownCA") || e.contains("BadCertificate") || e.contains("alert"),
        "{e}"
    );
    assert!(!e.contains("HTTP/1.1"), "{e}");
    // The daemon's client without its certificate gets no HTTP answer either.
    let r = daemon_http(&h, None)
        .get(format!("{}/image/timestamp.json", h.base))
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    // With the fleet's certificate the same request is answered (401: unsigned).
    let own = device(&h, &h.offline, VIN_A);
    let text = any_answer(&h, Some(&own)).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    // The admin listener asks for no certificate.
    assert_eq!(h.admin.get("/admin/status").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_checks_in_with_its_certificate_and_no_other_vin_can_use_it() {
    let h = start_mtls("mtls-bind").await;
    let cert_a = device(&h, &h.offline, VIN_A);
    let cert_b = device(&h, &h.offline, VIN_B);
    let http_a = daemon_http(&h, Some(&cert_a));
    let http_b = daemon_http(&h, Some(&cert_b));
    let mut a = TestVehicle::new(&h, VIN_A, &[("HU-A", "hu")]);
    let mut b = TestVehicle::new(&h, VIN_B, &[("HU-B", "hu")]);

    // Enrollment: B's registration over A's certificate is the uniform 401
    // and leaves B's credential unused; each over its own is 201.
    let cred_b = h.enrollment_credential(VIN_B).await;
    let enroll = |http: &reqwest::Client, cred: &str, reg: &serde_json::Value| {
        let req = http
            .post(format!("{}/enroll", h.base))
            .bearer_auth(cred)
            .json(reg);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = enroll(&http_a, &cred_b, &b.registration()).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains(secureev_server::error::UNAUTHORIZED_MESSAGE),
        "{body}"
    );
    let (status, body) = enroll(&http_b, &cred_b, &b.registration()).await;
    assert_eq!(status, 201, "{body}");
    let cred_a = h.enrollment_credential(VIN_A).await;
    let (status, body) = enroll(&http_a, &cred_a, &a.registration()).await;
    assert_eq!(status, 201, "{body}");

    // Check-in of A through the daemon's client with A's certificate.
    a.client = VehicleClient::new(http_a.clone(), &h.base, VIN_A, a.ecus[0].key.clone());
    let r = a
        .client
        .get(&format!("/director/{VIN_A}/timestamp.json"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let plan = a.full_verification(&h, &[]).await;
    drop(plan);
    let m = a.manifest(&[]);
    let r = a.send_manifest(&m).await;
    assert!(
        (200..300).contains(&r.status),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    // A security event the vehicle reports (an attack in its manifest) is
    // an audit record of its own.
    {
        use secureev_uptane::manifest::{
            sign_ecu_report, sign_manifest, EcuVersionReport, VehicleManifest,
        };
        let now = secureev_uptane::Timestamp::from_unix(secureev_server::unix_now());
        a.counter += 1;
        let mut m = VehicleManifest::new(VIN_A, &a.primary, a.counter);
        let e = &mut a.ecus[0];
        e.counter += 1;
        let r = EcuVersionReport::new(&e.serial, &e.hardware_id, now, e.counter)
            .with_attacks(&[secureev_uptane::Attack::ArbitrarySoftware]);
        m.add_report(sign_ecu_report(&r, &e.key).unwrap()).unwrap();
        let body = serde_json::to_vec(&sign_manifest(&m, &a.ecus[0].key).unwrap()).unwrap();
        let r = a.send_manifest(&body).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }

    // B's own signed requests over A's certificate: 401, for B's paths and
    // for the Image repository alike.
    b.client = VehicleClient::new(http_a.clone(), &h.base, VIN_B, b.ecus[0].key.clone());
    for path in [
        format!("/director/{VIN_B}/timestamp.json"),
        "/image/timestamp.json".into(),
    ] {
        let r = b.client.get(&path).await.unwrap();
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(error_code(&r), "unauthorized");
        assert!(
            String::from_utf8_lossy(&r.body).contains(secureev_server::error::UNAUTHORIZED_MESSAGE)
        );
    }
    let m = b.manifest(&[]);
    assert_eq!(b.send_manifest(&m).await.status, 401);
    // Over its own certificate B checks in.
    b.client = VehicleClient::new(http_b, &h.base, VIN_B, b.ecus[0].key.clone());
    let r = b
        .client
        .get(&format!("/director/{VIN_B}/timestamp.json"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // The refusals are in the audit trail with their reason.
    let audit = h.admin.get("/admin/audit?limit=1000").await.unwrap();
    let text = String::from_utf8_lossy(&audit.body);
    assert!(
        text.contains(&format!("device certificate of {VIN_A} used for {VIN_B}")),
        "{text}"
    );
    let audit: serde_json::Value = serde_json::from_slice(&audit.body).unwrap();
    let event = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "vehicle-security-event")
        .unwrap_or_else(|| panic!("no vehicle-security-event in {text}"));
    assert_eq!(event["actor"], format!("vehicle:{VIN_A}"));
    assert!(event["detail"].to_string().contains("HU-A"), "{event}");
}

/// `secureev-server device-cert` end to end: init-ca, issue with a generated
/// key and from a device's CSR, the fleet CA key only in the offline
/// directory (0600), refusal to overwrite.
#[test]
fn the_device_cert_subcommand_issues_from_the_offline_fleet_ca() {
    use std::os::unix::fs::PermissionsExt;
    let root = temp_root("device-cert-cli");
    let (offline, data) = (root.join("offline"), root.join("data"));
    std::fs::create_dir_all(&data).unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_secureev-server"));
    let run = |args: &[&str]| {
        std::process::Command::new(&bin)
            .args(["device-cert"])
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&[
        "init-ca",
        "--offline-dir",
        offline.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let key = offline.join(secureev_server::layout::FLEET_CA_KEY);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(data.join(secureev_server::layout::FLEET_CA_CERT).exists());
    assert!(!std::fs::read_dir(data.join("tls")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("key")));
    let again = run(&["init-ca", "--offline-dir", offline.to_str().unwrap()]);
    assert!(!again.status.success());

    let out = root.join("a.pem");
    let key_out = root.join("a-key.pem");
    let o = run(&[
        "issue",
        "--offline-dir",
        offline.to_str().unwrap(),
        "--vin",
        VIN_A,
        "--key-out",
        key_out.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::metadata(&key_out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let der = rustls::pki_types::pem::PemObject::from_pem_file(&out).unwrap();
    let der: rustls::pki_types::CertificateDer = der;
    assert_eq!(
        secureev_server::tls::certificate_vin(der.as_ref()).unwrap(),
        VIN_A
    );

    // From a CSR made on the "device" (rcgen here; openssl req in docs).
    let device_key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&device_key)
        .unwrap()
        .pem()
        .unwrap();
    let csr_path = root.join("b.csr");
    std::fs::write(&csr_path, csr).unwrap();
    let out_b = root.join("b.pem");
    let o = run(&[
        "issue",
        "--offline-dir",
        offline.to_str().unwrap(),
        "--vin",
        VIN_B,
        "--csr",
        csr_path.to_str().unwrap(),
        "--out",
        out_b.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let der: rustls::pki_types::CertificateDer =
        rustls::pki_types::pem::PemObject::from_pem_file(&out_b).unwrap();
    assert_eq!(
        secureev_server::tls::certificate_vin(der.as_ref()).unwrap(),
        VIN_B
    );
    // Not over an existing certificate; not without --csr or --key-out.
    let o = run(&[
        "issue",
        "--offline-dir",
        offline.to_str().unwrap(),
        "--vin",
        VIN_B,
        "--csr",
        csr_path.to_str().unwrap(),
        "--out",
        out_b.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let o = run(&[
        "issue",
        "--offline-dir",
        offline.to_str().unwrap(),
        "--vin",
        VIN_B,
        "--out",
        "/tmp/x.pem",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&root);
}
