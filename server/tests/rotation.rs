//! Key rotation: vehicles that trust root N follow the chain to N+1 and keep
//! verifying, for the Image repository (offline keys) and the Director.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use secureev_server::client::{image_add, rotate_image_key, ImageSpec};
use secureev_server::repo::RotationMode;
use secureev_uptane::client::{Decision, Repo, UpdateClient};
use secureev_uptane::trusted::TrustedRepository;
use secureev_uptane::Timestamp;
use serde_json::json;

fn now() -> Timestamp {
    Timestamp::from_unix(secureev_server::unix_now())
}

/// A vehicle that trusts `root1` follows the root chain and refreshes the
/// repository at `prefix`, through the core's update client (TUF mode).
async fn chain(car: &TestVehicle, prefix: &str, root1: &[u8]) -> TrustedRepository {
    let mut client = UpdateClient::tuf("r", root1, now()).unwrap();
    let decision = car.drive(&mut client, |_| prefix.to_owned()).await;
    assert!(matches!(decision, Decision::Refreshed), "{decision:?}");
    client.repository(Repo::Image).unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_and_director_rotations_keep_vehicles_verifying() {
    let h = start("rotate").await;
    let car = TestVehicle::new(
        &h,
        "VINROT0000000001",
        &[("HU-1", "hu"), ("BRK-1", "brake")],
    );
    car.register(&h).await;
    let image_root1 = h.admin.get("/admin/image/root").await.unwrap().body;
    let director_root1 = h.admin.get("/admin/director/root").await.unwrap().body;
    let spec = ImageSpec {
        name: "fw.bin".into(),
        hardware_ids: vec!["brake".into()],
        version: None,
        release_counter: Some(1),
        encrypt: false,
        release_notes: None,
    };
    image_add(&h.admin, &h.offline, &spec, b"firmware", now())
        .await
        .unwrap();

    // Offline: replace the targets key, then add a second root key with threshold 2.
    assert_eq!(
        rotate_image_key(
            &h.admin,
            &h.offline,
            "targets",
            RotationMode::Replace,
            None,
            now()
        )
        .await
        .unwrap(),
        2
    );
    assert_eq!(
        rotate_image_key(
            &h.admin,
            &h.offline,
            "root",
            RotationMode::Add,
            Some(2),
            now()
        )
        .await
        .unwrap(),
        3
    );
    // Online keys: the server makes the new timestamp key, the offline root
    // keys (both, threshold 2) sign the root that lists it.
    assert_eq!(
        rotate_image_key(
            &h.admin,
            &h.offline,
            "timestamp",
            RotationMode::Replace,
            None,
            now()
        )
        .await
        .unwrap(),
        4
    );
    assert!(
        h.data
            .join("keys/image/timestamp.retired")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );
    // Publishing keeps working with the rotated targets key.
    let spec2 = ImageSpec {
        name: "fw2.bin".into(),
        ..spec.clone()
    };
    image_add(&h.admin, &h.offline, &spec2, b"firmware 2", now())
        .await
        .unwrap();
    let image = chain(&car, "/image", &image_root1).await;
    assert_eq!(image.root().common.version, 4);
    assert_eq!(image.root().roles["root"].threshold, 2);
    assert!(image.targets().unwrap().targets.contains_key("fw2.bin"));

    // A root signed by only one of the two root keys now is refused.
    let one_key = secureev_server::layout::load_keys(&h.offline, "image", "root").unwrap();
    let cur = h.admin.get("/admin/image/root").await.unwrap().body;
    let signed = secureev_server::repo::next_root(
        &cur,
        "targets",
        &[],
        RotationMode::Add,
        None,
        now().unix(),
    )
    .unwrap();
    let bytes = secureev_uptane::builder::sign_value(signed, &[&one_key[0]]).unwrap();
    let r = h
        .admin
        .post(
            "/admin/image/root/rotate",
            &json!({"root": serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));

    // Director: rotate targets and timestamp keys online; vehicles follow.
    let r = h
        .admin
        .post("/admin/director/rotate", &json!({"role": "targets"}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = h
        .admin
        .post("/admin/director/rotate", &json!({"role": "root"}))
        .await
        .unwrap();
    assert_eq!(r.json()["root_version"], 3);
    h.admin
        .post(
            "/admin/assignments",
            &json!({"vin": car.vin, "ecu_serial": "BRK-1", "image": "fw2.bin"}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let director = chain(&car, &format!("/director/{}", car.vin), &director_root1).await;
    assert_eq!(director.root().common.version, 3);
    assert!(director.targets().unwrap().targets.contains_key("fw2.bin"));
    assert!(h.data.join("keys/director/targets.retired").exists());

    // Bad rotation requests.
    let r = h
        .admin
        .post("/admin/director/rotate", &json!({"role": "nope"}))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = h
        .admin
        .post(
            "/admin/director/rotate",
            &json!({"role": "targets", "threshold": 3}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
}
