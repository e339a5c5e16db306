//! End to end over real TLS on loopback: register → image add → assign →
//! Director metadata passes the core's full verification → download with
//! Range → manifest → assignment completed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use secureev_server::client::{image_add, ImageSpec};
use secureev_uptane::encryption::{decrypt_image, EncryptionInfo};
use secureev_uptane::Timestamp;
use serde_json::json;

fn now() -> Timestamp {
    Timestamp::from_unix(secureev_server::unix_now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_assign_verify_download_report_complete() {
    let h = start("e2e").await;
    let mut car = TestVehicle::new(
        &h,
        "WVWZZZ1JZXW000001",
        &[("HU-1", "hu-imx8"), ("BRK-1", "brake-v2")],
    );
    car.register(&h).await;

    let firmware: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let spec = ImageSpec {
        name: "brake/fw-2.1.bin".into(),
        hardware_ids: vec!["brake-v2".into()],
        version: Some("2.1".into()),
        release_counter: Some(7),
        encrypt: false,
        release_notes: None,
    };
    let v = image_add(&h.admin, &h.offline, &spec, &firmware, now())
        .await
        .unwrap();
    assert_eq!(v, 2);

    // Nothing assigned yet: the Director's targets are empty but name the vehicle.
    let plan = car.full_verification(&h, &[]).await;
    assert!(plan.targets().is_empty());

    let r = h
        .admin
        .post(
            "/admin/assignments",
            &json!({"vin": car.vin, "ecu_serial": "BRK-1", "image": spec.name}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let assignment_id = r.json()["assignment"]["id"].as_i64().unwrap();

    let plan = car.full_verification(&h, &[]).await;
    assert_eq!(plan.targets().len(), 1);
    let t = &plan.targets()[0];
    assert_eq!(t.ecu_serial(), "BRK-1");
    assert_eq!(t.release_counter(), 7);

    // Download in two ranges (a resumed download) and verify as the core does.
    let sha = &t.assignment().director_target.hashes["sha256"];
    let path = format!("/image/targets/brake/{sha}.fw-2.1.bin");
    let (first, cr) = car.client.get_range(&path, "bytes=0-99999").await.unwrap();
    assert_eq!(first.status, 206);
    assert_eq!(cr.as_deref(), Some("bytes 0-99999/300000"));
    let (rest, cr) = car.client.get_range(&path, "bytes=100000-").await.unwrap();
    assert_eq!(rest.status, 206);
    assert_eq!(cr.as_deref(), Some("bytes 100000-299999/300000"));
    let mut verifier = t.stream_verifier().unwrap();
    verifier.update(&first.body).unwrap();
    verifier.update(&rest.body).unwrap();
    verifier.finish().unwrap();
    let whole = car.client.get(&path).await.unwrap();
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, firmware);
    let (bad, _) = car.client.get_range(&path, "bytes=300000-").await.unwrap();
    assert_eq!(bad.status, 416);

    // The vehicle reports the install; the assignment completes.
    let m = car.manifest(&[("BRK-1", &spec.name, &firmware, 7)]);
    let r = car.send_manifest(&m).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["completed_assignments"], json!([assignment_id]));
    let v = h
        .admin
        .get(&format!("/admin/vehicles/{}", car.vin))
        .await
        .unwrap()
        .json();
    assert_eq!(v["assignments"][0]["status"], "completed");
    let brk = v["ecus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["serial"] == "BRK-1")
        .unwrap()
        .clone();
    assert_eq!(brk["installed_name"], spec.name);
    assert_eq!(brk["installed_release_counter"], 7);

    // The Director no longer lists it; metadata still verifies.
    let plan = car.full_verification(&h, &[]).await;
    assert!(plan.targets().is_empty());

    let hist = h
        .admin
        .get(&format!("/admin/vehicles/{}/history", car.vin))
        .await
        .unwrap()
        .json();
    let kinds: Vec<&str> = hist["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"completed") && kinds.contains(&"manifest") && kinds.contains(&"assigned")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_image_campaign_wraps_key_per_ecu() {
    let h = start("enc").await;
    let a = TestVehicle::new(
        &h,
        "VINA0000000000001",
        &[("HU-A", "hu"), ("BRK-A", "brake")],
    );
    let b = TestVehicle::new(
        &h,
        "VINB0000000000002",
        &[("HU-B", "hu"), ("BRK-B", "brake")],
    );
    a.register(&h).await;
    b.register(&h).await;
    let firmware = vec![0x5au8; 150_000];
    let spec = ImageSpec {
        name: "brake-secret.bin".into(),
        hardware_ids: vec!["brake".into()],
        version: None,
        release_counter: Some(3),
        encrypt: true,
        release_notes: None,
    };
    image_add(&h.admin, &h.offline, &spec, &firmware, now())
        .await
        .unwrap();
    let r = h
        .admin
        .post(
            "/admin/campaigns",
            &json!({"name": "brake fix", "image": spec.name, "hardware_id": "brake"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["assignments"], 2);

    for car in [&a, &b] {
        let plan = car.full_verification(&h, &[]).await;
        assert_eq!(plan.targets().len(), 1);
        let t = &plan.targets()[0];
        let serial = t.ecu_serial().to_owned();
        let info =
            EncryptionInfo::from_custom(t.name(), t.assignment().director_target.custom.as_ref())
                .unwrap()
                .unwrap();
        // Only this vehicle's ECU has a wrapped key here.
        assert_eq!(info.keys.keys().collect::<Vec<_>>(), vec![&serial]);
        let sha = &t.assignment().director_target.hashes["sha256"];
        let blob = car
            .client
            .get(&format!("/image/targets/{sha}.{}", t.name()))
            .await
            .unwrap();
        assert_eq!(blob.status, 200);
        assert_ne!(blob.body, firmware);
        let ecu = car.ecu(&serial);
        let key = info.unwrap_key_for(t.name(), &serial, &ecu.enc).unwrap();
        let plain = decrypt_image(t.name(), &key, &info, &blob.body).unwrap();
        assert_eq!(plain, firmware);
    }
    let c = h.admin.get("/admin/campaigns").await.unwrap().json();
    assert_eq!(c["campaigns"][0]["assignments"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_served_and_committed() {
    let h = start("openapi").await;
    let r = reqwest::get(format!("{}/admin/openapi.json", h.admin_base)).await;
    // The plain client does not trust the dev CA: TLS is really in use.
    assert!(r.is_err());
    let served = h
        .http
        .get(format!("{}/admin/openapi.json", h.admin_base))
        .send()
        .await
        .unwrap();
    let served: serde_json::Value = served.json().await.unwrap();
    assert_eq!(served, secureev_server::openapi::document());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .expect("docs/openapi.json is committed");
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(committed, served, "regenerate docs/openapi.json");
}

// The Director re-signs a vehicle's timestamp when it nears expiry, on the
// vehicle's next check-in, with no admin action (clock injected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn director_timestamp_is_resigned_before_it_expires() {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;
    let root = temp_root("clock");
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
    let t0 = secureev_server::unix_now();
    let clock = Arc::new(AtomicI64::new(t0));
    let c2 = clock.clone();
    let config = secureev_server::Config::load(&data.join("server.toml")).unwrap();
    let state = secureev_server::AppState::load_with_clock(
        config,
        Arc::new(move || c2.load(Ordering::SeqCst)),
    )
    .unwrap();
    let server = secureev_server::bind_with_state(state).await.unwrap();
    let base = format!("https://{}", server.local_addr().unwrap());
    let admin_base = format!("https://{}", server.admin_addr().unwrap());
    tokio::spawn(server.serve(std::future::pending()));
    let http = secureev_server::client::http_client(Some(
        &std::fs::read(data.join("tls/ca.pem")).unwrap(),
    ))
    .unwrap();
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let admin = secureev_server::client::AdminClient::new(http.clone(), &admin_base, &token);
    let key = secureev_uptane::SigningKey::generate_p256();
    let reg = json!({"vin": "CLOCK1", "primary_serial": "P", "ecus": [
        {"serial": "P", "hardware_id": "hu", "public_key": secureev_uptane::did::to_did(&key.verifying_key())}]});
    admin
        .post("/admin/vehicles", &reg)
        .await
        .unwrap()
        .ok()
        .unwrap();
    let car = secureev_server::client::VehicleClient::new(http, &base, "CLOCK1", key);
    let path = "/director/CLOCK1/timestamp.json";
    let fetch = |at: i64| {
        let rb = car
            .request(reqwest::Method::GET, path, b"", Timestamp::from_unix(at))
            .unwrap();
        async move {
            let r = rb.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.unwrap();
            (
                v["signed"]["version"].as_u64().unwrap(),
                v["signed"]["expires"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (v1, e1) = fetch(t0).await;
    let (v1b, _) = fetch(t0).await;
    assert_eq!(v1, v1b, "no re-signing on a fresh timestamp");
    // 13 hours later: past half of the 1-day lifetime.
    let later = t0 + 13 * 3600;
    clock.store(later, Ordering::SeqCst);
    let (v2, e2) = fetch(later).await;
    assert_eq!(v2, v1 + 1);
    assert!(Timestamp::parse(&e2).unwrap() > Timestamp::parse(&e1).unwrap());
    // A request signed with the old clock is now stale.
    let stale = car
        .request(reqwest::Method::GET, path, b"", Timestamp::from_unix(t0))
        .unwrap();
    assert_eq!(stale.send().await.unwrap().status(), 401);
    let _ = std::fs::remove_dir_all(&root);
}

/// `image add --version --release-notes`: both are signed into the Image
/// repository's targets (`custom.version`, `custom.releaseNotes`) and a
/// vehicle's full verification exposes them; text with control or
/// bidirectional formatting characters, or longer than the bound, is
/// refused by `image add` and, hand-signed, by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_release_notes_are_signed_and_bounded() {
    use secureev_uptane::custom::MAX_RELEASE_NOTES_LEN;
    let h = start("notes").await;
    let car = TestVehicle::new(&h, "VINN0000000000001", &[("HU-N", "hu")]);
    car.register(&h).await;
    let notes = "Charging timer fixed.\n\t- Ünïcode kept\n";
    let spec = ImageSpec {
        name: "hu/rootfs-2.4.1.img".into(),
        hardware_ids: vec!["hu".into()],
        version: Some("2.4.1".into()),
        release_counter: Some(12),
        encrypt: false,
        release_notes: Some(notes.into()),
    };
    assert_eq!(
        image_add(&h.admin, &h.offline, &spec, b"rootfs 2.4.1", now())
            .await
            .unwrap(),
        2
    );
    let r = h
        .admin
        .post(
            "/admin/assignments",
            &json!({"vin": car.vin, "ecu_serial": "HU-N", "image": spec.name}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let plan = car.full_verification(&h, &[]).await;
    let t = &plan.targets()[0];
    assert_eq!(t.version(), Some("2.4.1"));
    assert_eq!(t.release_notes(), Some(notes));
    assert_eq!(t.release_counter(), 12);

    // Refused before anything is signed or uploaded.
    for (version, notes) in [
        (Some("2.4\n.2"), None),
        (None, Some("clear screen \u{1b}[2J")),
        (None, Some("harmless\u{202e}exe.txt")),
        (None, Some(&*"x".repeat(MAX_RELEASE_NOTES_LEN + 1))),
    ] {
        let bad = ImageSpec {
            name: "hu/bad.img".into(),
            version: version.map(str::to_owned),
            release_notes: notes.map(str::to_owned),
            ..spec.clone()
        };
        let e = image_add(&h.admin, &h.offline, &bad, b"bad", now())
            .await
            .unwrap_err();
        assert!(
            matches!(e, secureev_server::error::Error::BadRequest(_)),
            "{e}"
        );
    }
    // Hand-signed with the offline key, past the client's check: the server
    // refuses it and publishes nothing.
    let keys = secureev_server::layout::load_keys(&h.offline, "image", "targets").unwrap();
    let current = h.admin.get("/admin/image/targets").await.unwrap().body;
    let ok = ImageSpec {
        name: "hu/hand.img".into(),
        ..spec.clone()
    };
    let (env, served, _) =
        secureev_server::client::sign_image_targets(&current, &keys, &ok, b"hand", now()).unwrap();
    h.admin.put_blob(served).await.unwrap().ok().unwrap();
    for bad in [json!("bell \u{7}"), json!(42)] {
        let mut signed = env["signed"].clone();
        signed["targets"]["hu/hand.img"]["custom"]["releaseNotes"] = bad;
        let refs: Vec<&secureev_uptane::SigningKey> = keys.iter().collect();
        let env: serde_json::Value =
            serde_json::from_slice(&secureev_uptane::builder::sign_value(signed, &refs).unwrap())
                .unwrap();
        let r = h
            .admin
            .post("/admin/image/targets", &json!({"metadata": env}))
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, 422, "{body}");
        assert!(body.contains("releaseNotes"), "{body}");
    }
    let status = h.admin.get("/admin/status").await.unwrap().json();
    assert_eq!(status["image_targets_version"], 2, "{status}");
}
