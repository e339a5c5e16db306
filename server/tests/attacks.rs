//! Attacks on the API over real TLS: each must be refused with a 4xx JSON
//! error and leave nothing behind.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use secureev_server::client::{image_add, ImageSpec};
use secureev_uptane::manifest::{
    sign_ecu_report, sign_manifest, EcuVersionReport, VehicleManifest,
};
use secureev_uptane::request_auth::{sign_request_with_nonce, HEADER_TIMESTAMP};
use secureev_uptane::{SigningKey, Timestamp};
use serde_json::json;

fn now() -> Timestamp {
    Timestamp::from_unix(secureev_server::unix_now())
}

async fn setup(tag: &str) -> (Harness, TestVehicle) {
    let h = start(tag).await;
    let car = TestVehicle::new(
        &h,
        "VIN00000000000001",
        &[("HU-1", "hu"), ("BRK-1", "brake")],
    );
    car.register(&h).await;
    (h, car)
}

async fn manifest_counter(h: &Harness, vin: &str) -> serde_json::Value {
    h.admin
        .get(&format!("/admin/vehicles/{vin}"))
        .await
        .unwrap()
        .json()["vehicle"]["manifest_counter"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_manifests_are_refused_and_not_recorded() {
    let (h, mut car) = setup("forged").await;
    // An ECU report signed by a key that is not the registered one.
    let mut m = VehicleManifest::new(&car.vin, &car.primary, 1);
    let r = EcuVersionReport::new("BRK-1", "brake", now(), 1);
    m.add_report(sign_ecu_report(&r, &SigningKey::generate_p256()).unwrap())
        .unwrap();
    let body = serde_json::to_vec(&sign_manifest(&m, &car.ecus[0].key).unwrap()).unwrap();
    let resp = car.send_manifest(&body).await;
    assert_eq!(resp.status, 422);
    assert_eq!(error_code(&resp), "rejected");

    // The manifest signed by another key than the Primary's.
    let mut m = VehicleManifest::new(&car.vin, &car.primary, 1);
    m.add_report(sign_ecu_report(&r, &car.ecus[1].key).unwrap())
        .unwrap();
    let body =
        serde_json::to_vec(&sign_manifest(&m, &SigningKey::generate_p256()).unwrap()).unwrap();
    assert_eq!(car.send_manifest(&body).await.status, 422);

    // A report from an ECU the registry does not know.
    let mut m = VehicleManifest::new(&car.vin, &car.primary, 1);
    let ghost = SigningKey::generate_p256();
    m.add_report(
        sign_ecu_report(&EcuVersionReport::new("GHOST-1", "brake", now(), 1), &ghost).unwrap(),
    )
    .unwrap();
    let body = serde_json::to_vec(&sign_manifest(&m, &car.ecus[0].key).unwrap()).unwrap();
    let resp = car.send_manifest(&body).await;
    assert_eq!(resp.status, 422);
    assert!(resp.json()["message"]
        .as_str()
        .unwrap()
        .contains("not registered"));

    // A manifest naming another vehicle, correctly signed.
    let other = VehicleManifest::new("VIN-OTHER", &car.primary, 1);
    let body = serde_json::to_vec(&sign_manifest(&other, &car.ecus[0].key).unwrap()).unwrap();
    assert_eq!(car.send_manifest(&body).await.status, 422);

    assert_eq!(manifest_counter(&h, &car.vin).await, json!(null));
    // And a good one still goes through.
    let good = car.manifest(&[]);
    assert_eq!(car.send_manifest(&good).await.status, 200);
    assert_eq!(manifest_counter(&h, &car.vin).await, json!(car.counter));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_requests_and_manifests_are_refused() {
    let (h, mut car) = setup("replay").await;
    let path = format!("/director/{}/timestamp.json", car.vin);
    let t = now();
    let headers = sign_request_with_nonce(
        &car.ecus[0].key,
        "GET",
        &path,
        &car.vin,
        t,
        "0123456789abcdef0123456789abcdef",
        b"",
    )
    .unwrap();
    let send = || {
        let mut rb = h.http.get(format!("{}{path}", h.base));
        for (k, v) in headers.pairs() {
            rb = rb.header(k, v);
        }
        rb.send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    let again = send().await.unwrap();
    assert_eq!(again.status(), 401);
    assert_eq!(again.headers()["www-authenticate"], "SecureEV-Signature");

    // Stale: signed ten minutes ago.
    let old = car
        .client
        .request(
            reqwest::Method::GET,
            &path,
            b"",
            Timestamp::from_unix(t.unix() - 600),
        )
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);

    // A second timestamp header appended to a valid request.
    let doubled = car
        .client
        .request(reqwest::Method::GET, &path, b"", t)
        .unwrap()
        .header(HEADER_TIMESTAMP, (t.unix() + 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(doubled.status(), 401);
    // A tampered timestamp: the signature no longer matches.
    let mut tampered = car
        .client
        .request(reqwest::Method::GET, &path, b"", t)
        .unwrap()
        .build()
        .unwrap();
    tampered.headers_mut().insert(
        HEADER_TIMESTAMP,
        (t.unix() + 1).to_string().parse().unwrap(),
    );
    assert_eq!(h.http.execute(tampered).await.unwrap().status(), 401);

    // Unsigned and unknown vehicles.
    let unsigned = h
        .http
        .get(format!("{}{path}", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let stranger = secureev_server::client::VehicleClient::new(
        h.http.clone(),
        &h.base,
        "NOBODY",
        SigningKey::generate_p256(),
    );
    assert_eq!(
        stranger.get("/image/timestamp.json").await.unwrap().status,
        401
    );
    // Registered VIN, wrong key.
    let impostor = secureev_server::client::VehicleClient::new(
        h.http.clone(),
        &h.base,
        &car.vin,
        SigningKey::generate_p256(),
    );
    assert_eq!(impostor.get(&path).await.unwrap().status, 401);

    // Manifest counter replay: the same manifest (fresh request signature) twice.
    let m = car.manifest(&[]);
    assert_eq!(car.send_manifest(&m).await.status, 200);
    let r = car.send_manifest(&m).await;
    assert_eq!(r.status, 409);
    assert_eq!(error_code(&r), "replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vehicles_cannot_read_each_others_director_metadata() {
    let (h, car) = setup("cross").await;
    let other = TestVehicle::new(&h, "VIN00000000000002", &[("HU-2", "hu")]);
    other.register(&h).await;
    for file in [
        "timestamp.json",
        "1.targets.json",
        "1.snapshot.json",
        "1.root.json",
    ] {
        let r = other
            .client
            .get(&format!("/director/{}/{file}", car.vin))
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{file}");
        assert_eq!(error_code(&r), "forbidden");
    }
    let m = {
        let mut o = other;
        o.manifest(&[])
    };
    let r = car
        .client
        .put_json("/director/VIN00000000000002/manifest", &m)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    // Its own metadata is fine.
    assert_eq!(
        car.client
            .get(&format!("/director/{}/timestamp.json", car.vin))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_4xx_json_errors() {
    let (h, car) = setup("input").await;
    // Unregistered ECU in an assignment.
    let r = h
        .admin
        .post(
            "/admin/assignments",
            &json!({"vin": car.vin, "ecu_serial": "NOPE", "image": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(error_code(&r), "not_found");

    // Path traversal in target names, on download and on publication.
    for p in [
        "/image/targets/..%2F..%2Fdb.sqlite",
        "/image/targets/abcd.%2E%2E%2Fadmin-token",
        "/image/targets/x/..%2F..%2Fetc.passwd",
    ] {
        let r = car.client.get(p).await.unwrap();
        assert!(r.status == 400 || r.status == 404, "{p}: {}", r.status);
        assert!(r.json()["error"].is_string());
    }
    let spec = ImageSpec {
        name: "../evil.bin".into(),
        hardware_ids: vec!["brake".into()],
        version: None,
        release_counter: None,
        encrypt: false,
        release_notes: None,
    };
    assert!(image_add(&h.admin, &h.offline, &spec, b"x", now())
        .await
        .is_err());
    // Hand-signed targets with a traversal name are refused by the server too.
    let keys = secureev_server::layout::load_keys(&h.offline, "image", "targets").unwrap();
    let current = h.admin.get("/admin/image/targets").await.unwrap().body;
    let ok_spec = ImageSpec {
        name: "ok.bin".into(),
        ..spec.clone()
    };
    let (mut env, served, _) =
        secureev_server::client::sign_image_targets(&current, &keys, &ok_spec, b"payload", now())
            .unwrap();
    h.admin.put_blob(served).await.unwrap().ok().unwrap();
    let signed = env["signed"].clone();
    let mut signed2 = signed.clone();
    let entry = signed2["targets"]["ok.bin"].take();
    signed2["targets"] = json!({ "../../evil.bin": entry });
    let refs: Vec<&SigningKey> = keys.iter().collect();
    env = serde_json::from_slice(&secureev_uptane::builder::sign_value(signed2, &refs).unwrap())
        .unwrap();
    let r = h
        .admin
        .post("/admin/image/targets", &json!({"metadata": env}))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    // Targets signed by a key that is not the offline targets key.
    let forged =
        secureev_uptane::builder::sign_value(signed.clone(), &[&SigningKey::generate_p256()])
            .unwrap();
    let forged: serde_json::Value = serde_json::from_slice(&forged).unwrap();
    let r = h
        .admin
        .post("/admin/image/targets", &json!({"metadata": forged}))
        .await
        .unwrap();
    assert_eq!(r.status, 422);
    // Nothing was published by the refused attempts.
    assert_eq!(
        h.admin.get("/admin/images").await.unwrap().json()["images"],
        json!([])
    );

    // Oversized body: one byte over the 1 MiB default. (Much larger bodies get
    // the same 413, but the server stops reading and the client may see the
    // connection close before it reads the answer.)
    let big = vec![b' '; secureev_server::config::DEFAULT_MAX_BODY_BYTES + 1];
    let r = car
        .client
        .put_json(&format!("/director/{}/manifest", car.vin), &big)
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(error_code(&r), "payload_too_large");

    // Wrong content type, on the vehicle and the admin side.
    let m = serde_json::to_vec(&json!({})).unwrap();
    let r = car
        .client
        .request(
            reqwest::Method::PUT,
            &format!("/director/{}/manifest", car.vin),
            &m,
            now(),
        )
        .unwrap()
        .header("content-type", "text/plain")
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = h
        .http
        .post(format!("{}/admin/vehicles", h.admin_base))
        .bearer_auth(std::fs::read_to_string(h.data.join("admin-token")).unwrap())
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // Malformed JSON and unknown fields.
    let r = h
        .http
        .post(format!("{}/admin/vehicles", h.admin_base))
        .bearer_auth(std::fs::read_to_string(h.data.join("admin-token")).unwrap())
        .header("content-type", "application/json")
        .body("{\"vin\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    let mut reg = car.registration();
    reg["vin"] = json!("VIN2");
    reg["color"] = json!("red");
    assert_eq!(
        h.admin.post("/admin/vehicles", &reg).await.unwrap().status,
        400
    );

    // A registration that fails half way (duplicate serial) writes nothing.
    let mut reg = car.registration();
    reg["vin"] = json!("VIN3");
    reg["ecus"][1]["serial"] = reg["ecus"][0]["serial"].clone();
    assert_eq!(
        h.admin.post("/admin/vehicles", &reg).await.unwrap().status,
        400
    );
    assert_eq!(
        h.admin.get("/admin/vehicles/VIN3").await.unwrap().status,
        404
    );
    // Registering the same vehicle twice is a conflict.
    assert_eq!(
        h.admin
            .post("/admin/vehicles", &car.registration())
            .await
            .unwrap()
            .status,
        409
    );

    // Admin API without or with a wrong token.
    let r = h
        .http
        .get(format!("{}/admin/status", h.admin_base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .http
        .get(format!("{}/admin/status", h.admin_base))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let status = h.admin.get("/admin/status").await.unwrap().json();
    assert_eq!(status["counts"]["vehicles"], 1);

    // Unknown endpoint.
    let r = h.admin.get("/admin/nothing").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(error_code(&r), "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_respect_hardware_and_release_counters() {
    let (h, mut car) = setup("rules").await;
    let fw = b"brake firmware v5".to_vec();
    let spec = ImageSpec {
        name: "brake-5.bin".into(),
        hardware_ids: vec!["brake".into()],
        version: Some("5".into()),
        release_counter: Some(5),
        encrypt: false,
        release_notes: None,
    };
    image_add(&h.admin, &h.offline, &spec, &fw, now())
        .await
        .unwrap();
    // Wrong hardware.
    let r = h
        .admin
        .post(
            "/admin/assignments",
            &json!({"vin": car.vin, "ecu_serial": "HU-1", "image": "brake-5.bin"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409);
    // Report release counter 9 installed; assigning counter 5 is a rollback.
    let m = car.manifest(&[("BRK-1", "other.bin", b"x", 9)]);
    assert_eq!(car.send_manifest(&m).await.status, 200);
    let r = h
        .admin
        .post(
            "/admin/assignments",
            &json!({"vin": car.vin, "ecu_serial": "BRK-1", "image": "brake-5.bin"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("release counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_skip_ineligible_ecus_and_assigned_images_stay_listed() {
    let (h, mut car) = setup("campaign").await;
    let other = TestVehicle::new(
        &h,
        "VIN00000000000009",
        &[("HU-9", "hu"), ("BRK-9", "brake")],
    );
    other.register(&h).await;
    let spec = ImageSpec {
        name: "brake-5.bin".into(),
        hardware_ids: vec!["brake".into()],
        version: None,
        release_counter: Some(5),
        encrypt: false,
        release_notes: None,
    };
    image_add(&h.admin, &h.offline, &spec, b"v5", now())
        .await
        .unwrap();
    // car's brake ECU already runs release 9: the campaign skips it.
    let m = car.manifest(&[("BRK-1", "other.bin", b"x", 9)]);
    assert_eq!(car.send_manifest(&m).await.status, 200);
    let r = h
        .admin
        .post(
            "/admin/campaigns",
            &json!({"name": "c", "image": "brake-5.bin", "hardware_id": "brake"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let body = r.json();
    assert_eq!(body["assignments"], 1);
    assert_eq!(body["skipped"][0]["ecu_serial"], "BRK-1");

    // Dropping an image with pending assignments from the Image targets is refused.
    let keys = secureev_server::layout::load_keys(&h.offline, "image", "targets").unwrap();
    let current: serde_json::Value =
        serde_json::from_slice(&h.admin.get("/admin/image/targets").await.unwrap().body).unwrap();
    let mut signed = current["signed"].clone();
    signed["version"] = json!(signed["version"].as_u64().unwrap() + 1);
    signed["targets"] = json!({});
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let env: serde_json::Value =
        serde_json::from_slice(&secureev_uptane::builder::sign_value(signed, &refs).unwrap())
            .unwrap();
    let r = h
        .admin
        .post("/admin/image/targets", &json!({"metadata": env}))
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_primary_old_key_is_locked_out() {
    let (h, mut car) = setup("replace").await;
    let m = car.manifest(&[]);
    assert_eq!(car.send_manifest(&m).await.status, 200);
    let old_client = car.client.clone();
    let new_key = SigningKey::generate_p256();
    let r = h
        .admin
        .send_json(
            reqwest::Method::PUT,
            &format!("/admin/vehicles/{}/ecus/HU-1", car.vin),
            &json!({ "public_key": secureev_uptane::did::to_did(&new_key.verifying_key()) }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The old Primary key no longer authenticates.
    let path = format!("/director/{}/timestamp.json", car.vin);
    assert_eq!(old_client.get(&path).await.unwrap().status, 401);
    // The new unit does, and its counters start afresh.
    car.ecus[0].key = new_key.clone();
    car.ecus[0].counter = 0;
    car.counter = 0;
    car.client =
        secureev_server::client::VehicleClient::new(h.http.clone(), &h.base, &car.vin, new_key);
    assert_eq!(car.client.get(&path).await.unwrap().status, 200);
    let m = car.manifest(&[]);
    assert_eq!(car.send_manifest(&m).await.status, 200);
    // Unknown ECU.
    let r = h
        .admin
        .send_json(
            reqwest::Method::PUT,
            &format!("/admin/vehicles/{}/ecus/NOPE", car.vin),
            &json!({ "public_key": secureev_uptane::did::to_did(&SigningKey::generate_p256().verifying_key()) }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
}
