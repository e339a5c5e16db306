//! Issue 12 over real TLS on loopback: per-vehicle enrollment credentials on
//! the vehicle listener, the admin API on its own listener, operator roles,
//! one 401 body, an authenticated registry, and the signed audit trail.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use secureev_server::operators::Role;
use serde_json::json;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_secureev-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_enrolls_its_vehicle_once_and_nothing_else() {
    let h = start("enroll").await;
    let car = TestVehicle::new(&h, "VINENROLL1", &[("HU-1", "hu"), ("BRK-1", "brake")]);
    let cred = h.enrollment_credential(&car.vin).await;
    // Stored hashed: the secret is nowhere in the database file.
    let hex = cred.trim_start_matches("seven_");
    if !on_postgres() {
        let db = std::fs::read(h.data.join("db.sqlite")).unwrap();
        assert!(!db.windows(hex.len()).any(|w| w == hex.as_bytes()));
    }

    // Bound to the VIN: another vehicle cannot use it (and does not use it up).
    let other = TestVehicle::new(&h, "VINOTHER1", &[("HU-9", "hu")]);
    let r = h.enroll(&cred, &other.registration()).await;
    assert_eq!(r.status, 401);
    // The bootstrap operator token is not an enrollment credential.
    let token = std::fs::read_to_string(h.data.join("admin-token")).unwrap();
    assert_eq!(
        h.enroll(token.trim(), &car.registration()).await.status,
        401
    );

    // Two racing uses of one credential: exactly one registers the vehicle.
    let reg = car.registration();
    let (a, b) = tokio::join!(h.enroll(&cred, &reg), h.enroll(&cred, &reg));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [201, 401], "{a:?} {b:?}");
    // Single use: a third try is refused.
    assert_eq!(h.enroll(&cred, &car.registration()).await.status, 401);
    // The vehicle is registered and its signed requests work.
    let r = car
        .client
        .get(&format!("/director/{}/timestamp.json", car.vin))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let v = h
        .admin
        .get(&format!("/admin/vehicles/{}", car.vin))
        .await
        .unwrap()
        .json();
    assert_eq!(v["ecus"].as_array().unwrap().len(), 2);
    let list = h.admin.get("/admin/enrollments").await.unwrap().json();
    assert!(list["enrollments"][0]["consumed_at"].is_i64());
    assert!(list.to_string().find(hex).is_none());

    // Short-lived: an expired credential is refused.
    let cred2 = h.enrollment_credential("VINOTHER1").await;
    let expire = "UPDATE enrollments SET expires_at = 0 WHERE vin = 'VINOTHER1'";
    h.sql(expire, expire);
    assert_eq!(h.enroll(&cred2, &other.registration()).await.status, 401);
    assert!(
        h.admin
            .get("/admin/vehicles/VINOTHER1")
            .await
            .unwrap()
            .status
            == 404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_not_on_the_vehicle_listener() {
    let h = start("listeners").await;
    let token = std::fs::read_to_string(h.data.join("admin-token")).unwrap();
    for path in ["/admin/status", "/admin/vehicles", "/admin/openapi.json"] {
        let r = h
            .http
            .get(format!("{}{path}", h.base))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path} on the vehicle listener");
    }
    // The operator token registers nothing on the vehicle listener.
    let car = TestVehicle::new(&h, "VINLISTEN1", &[("HU-1", "hu")]);
    let r = h
        .http
        .post(format!("{}/admin/vehicles", h.base))
        .bearer_auth(token.trim())
        .json(&car.registration())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = h.admin.get("/admin/status").await.unwrap();
    assert_eq!(r.status, 200);
    // And the vehicle routes are not on the admin listener.
    let r = h
        .http
        .get(format!("{}/image/timestamp.json", h.admin_base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_gate_the_admin_api_and_revocation_is_immediate() {
    let h = start("roles").await;
    let viewer = h.operator("vera", &[Role::Viewer]);
    let release = h.operator("rita", &[Role::ReleaseManager]);
    let keys = h.operator("kim", &[Role::KeyAdmin]);
    let fleet = h.operator("fred", &[Role::FleetAdmin]);
    assert_eq!(viewer.get("/admin/status").await.unwrap().status, 200);
    let r = viewer
        .post("/admin/enrollments", &json!({"vin": "V1"}))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(error_code(&r), "forbidden");
    // Key rotations and Director root changes need key-admin.
    for op in [&viewer, &release, &fleet] {
        let r = op
            .post("/admin/director/rotate", &json!({"role": "timestamp"}))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
        let r = op
            .post("/admin/image/online-keys", &json!({"role": "timestamp"}))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
    }
    let r = keys
        .post("/admin/director/rotate", &json!({"role": "timestamp"}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        fleet
            .post("/admin/enrollments", &json!({"vin": "V1"}))
            .await
            .unwrap()
            .status,
        201
    );
    assert_eq!(
        release
            .post("/admin/enrollments", &json!({"vin": "V2"}))
            .await
            .unwrap()
            .status,
        403
    );
    // Revoked on the command line: refused on the next request.
    let out = Command::new(BIN)
        .args(["operator", "revoke", "--name", "kim", "--data-dir"])
        .arg(&h.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = keys.get("/admin/status").await.unwrap();
    assert_eq!(r.status, 401);
    // operator list shows names and roles, never token digests.
    let out = Command::new(BIN)
        .args(["operator", "list", "--data-dir"])
        .arg(&h.data)
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "fred", "kim", "rita", "vera"]);
    assert!(list["operators"][0].get("digest").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_401_has_one_body_and_the_registry_needs_a_signature() {
    let h = start("uniform401").await;
    let car = TestVehicle::new(&h, "VINREG1", &[("HU-1", "hu")]);
    car.enroll(&h).await;
    let other = TestVehicle::new(&h, "VINREG2", &[("HU-2", "hu")]);
    other.enroll(&h).await;
    let path = format!("/director/{}/timestamp.json", car.vin);
    // Unknown vehicle; registered vehicle with a wrong key; no headers.
    let stranger = secureev_server::client::VehicleClient::new(
        h.http.clone(),
        &h.base,
        "NOSUCHVIN",
        secureev_uptane::SigningKey::generate_p256(),
    );
    let impostor = secureev_server::client::VehicleClient::new(
        h.http.clone(),
        &h.base,
        &car.vin,
        secureev_uptane::SigningKey::generate_p256(),
    );
    let unknown = stranger.get(&path).await.unwrap();
    let bad_sig = impostor.get(&path).await.unwrap();
    let unsigned = h
        .http
        .get(format!("{}{path}", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status, 401);
    assert_eq!(bad_sig.status, 401);
    assert_eq!(unsigned.status(), 401);
    let unsigned = unsigned.bytes().await.unwrap().to_vec();
    assert_eq!(unknown.body, bad_sig.body);
    assert_eq!(unknown.body, unsigned);
    let bad_token = h
        .http
        .get(format!("{}/admin/status", h.admin_base))
        .bearer_auth("sevop_0123456789abcdef.00")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bad_token.to_vec(), unknown.body);

    // Regression (issue 12): did.json answered 200/404 without authentication.
    let did_path = format!("/registry/{}/HU-1/did.json", car.vin);
    let r = h
        .http
        .get(format!("{}{did_path}", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .http
        .get(format!("{}/registry/NOSUCH/HU-1/did.json", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(car.client.get(&did_path).await.unwrap().status, 200);
    // Another vehicle's keys are not its business.
    assert_eq!(other.client.get(&did_path).await.unwrap().status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_signs_chains_and_names_the_first_broken_record() {
    let h = start("audit").await;
    let car = TestVehicle::new(&h, "VINAUDIT1", &[("HU-1", "hu")]);
    car.enroll(&h).await;
    let keys = h.operator("kim", &[Role::KeyAdmin]);
    let r = keys
        .post("/admin/director/rotate", &json!({"role": "snapshot"}))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // A refused vehicle request.
    let impostor = secureev_server::client::VehicleClient::new(
        h.http.clone(),
        &h.base,
        &car.vin,
        secureev_uptane::SigningKey::generate_p256(),
    );
    assert_eq!(
        impostor.get("/image/timestamp.json").await.unwrap().status,
        401
    );

    let export = Command::new(BIN)
        .args(["audit", "export", "--data-dir"])
        .arg(&h.data)
        .output()
        .unwrap();
    assert!(export.status.success());
    let records: Vec<serde_json::Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for want in [
        "init",
        "enrollment-created",
        "vehicle-enrolled",
        "admin-request",
        "request-refused",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let rotation = records
        .iter()
        .find(|r| {
            r["action"] == "admin-request"
                && r["detail"].as_str().unwrap().contains("director/rotate")
        })
        .expect("the rotation is audited");
    assert_eq!(rotation["actor"], "operator:kim");

    let verify = |h: &Harness| {
        Command::new(BIN)
            .args(["audit", "verify", "--data-dir"])
            .arg(&h.data)
            .output()
            .unwrap()
    };
    let ok = verify(&h);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&format!("{} records", records.len())));

    // Edit record 3 behind the server's back: verify names it.
    let edit = "UPDATE audit SET actor = 'operator:nobody' WHERE seq = 3";
    h.sql(edit, edit);
    let broken = verify(&h);
    assert_eq!(broken.status.code(), Some(1));
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(err.contains("record 3:"), "{err}");
}

// Regression (issue 12): a DELETE with a junk id answered text/plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_path_query_and_method_get_json_errors() {
    let h = start("json-errors").await;
    for r in [
        h.admin.delete("/admin/assignments/junk").await.unwrap(),
        h.admin.get("/admin/events?limit=-1").await.unwrap(),
        // Above the documented maximum: refused, never clamped.
        h.admin.get("/admin/events?limit=1001").await.unwrap(),
        h.admin.get("/admin/audit?limit=1001").await.unwrap(),
        h.admin.get("/admin/audit?after=-1").await.unwrap(),
        h.admin.get("/admin/enrollments?limit=1001").await.unwrap(),
        h.admin.get("/admin/assignments?color=red").await.unwrap(),
        h.admin.delete("/admin/status").await.unwrap(),
    ] {
        assert!(r.status == 400 || r.status == 405, "{}", r.status);
        assert!(
            r.json()["error"].is_string(),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
}
