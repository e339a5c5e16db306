//! Staged rollouts over real TLS: the server on loopback, vehicles with their
//! own keys reporting signed manifests (installed images, failed
//! installations, attacks), operators with tokens and roles.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::{Harness, TestVehicle};
use secureev_server::client::{image_add, AdminClient, ImageSpec};
use secureev_server::operators::Role;
use secureev_uptane::manifest::{
    sign_ecu_report, sign_manifest, EcuVersionReport, InstallationResult, VehicleManifest,
};
use secureev_uptane::{Attack, Timestamp};
use serde_json::{json, Value};

const IMAGE: &str = "hu/rollout-2.0.bin";
const FIRMWARE: &[u8] = &[0x5a; 2048];

fn now() -> Timestamp {
    Timestamp::from_unix(secureev_server::unix_now())
}

/// What a vehicle reports in its next manifest.
#[derive(Clone, Copy)]
enum Report {
    Installed,
    Failed,
    Attack,
}

/// A signed manifest from `v`'s only ECU reporting `what`.
fn manifest(v: &mut TestVehicle, what: Report) -> Vec<u8> {
    v.counter += 1;
    let mut m = VehicleManifest::new(&v.vin, &v.primary, v.counter);
    let e = &mut v.ecus[0];
    e.counter += 1;
    let mut r = EcuVersionReport::new(&e.serial, &e.hardware_id, now(), e.counter);
    match what {
        Report::Installed => {
            let tf = secureev_uptane::builder::target_file(FIRMWARE, None);
            r = r
                .with_installed_image(
                    secureev_uptane::manifest::InstalledImage::new(IMAGE, tf.length, tf.hashes)
                        .with_release_counter(2),
                )
                .with_installation_result(InstallationResult::new(true, "OK", "installed"));
        }
        Report::Failed => {
            r = r.with_installation_result(InstallationResult::new(
                false,
                "FLASH_FAILED",
                "verify after write failed",
            ));
        }
        Report::Attack => r = r.with_attacks(&[Attack::ArbitrarySoftware]),
    }
    m.add_report(sign_ecu_report(&r, &e.key).unwrap()).unwrap();
    serde_json::to_vec(&sign_manifest(&m, &v.ecus[0].key).unwrap()).unwrap()
}

async fn report(v: &mut TestVehicle, what: Report) {
    let body = manifest(v, what);
    let r = v.send_manifest(&body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// A server with `n` vehicles `RV00`.. (one head unit each) and the image.
async fn fleet(tag: &str, n: usize) -> (Harness, Vec<TestVehicle>) {
    let h = common::start(tag).await;
    let spec = ImageSpec {
        name: IMAGE.into(),
        hardware_ids: vec!["hu".into()],
        version: Some("2.0".into()),
        release_counter: Some(2),
        encrypt: false,
        release_notes: None,
    };
    image_add(&h.admin, &h.offline, &spec, FIRMWARE, now())
        .await
        .unwrap();
    let mut vehicles = Vec::new();
    for i in 0..n {
        let v = TestVehicle::new(&h, &format!("RV{i:02}"), &[("hu-1", "hu")]);
        v.register(&h).await;
        vehicles.push(v);
    }
    (h, vehicles)
}

async fn get(c: &AdminClient, path: &str) -> Value {
    let r = c.get(path).await.unwrap();
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

async fn post(c: &AdminClient, path: &str, body: &Value) -> (u16, Value) {
    let r = c.post(path, body).await.unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// VINs with a pending assignment of the rollout's campaign.
async fn pending_vins(h: &Harness, campaign: &Value) -> Vec<String> {
    let a = get(
        &h.admin,
        &format!("/admin/assignments?campaign={campaign}&status=pending"),
    )
    .await;
    a["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["vin"].as_str().unwrap().to_owned())
        .collect()
}

fn group(v: &Value, n: usize) -> &Value {
    &v["groups"][n - 1]
}

fn vins(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("RV{i:02}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_cascade_on_success_and_a_group_above_its_error_threshold_stops_the_rollout() {
    let (h, mut v) = fleet("rollout-cascade", 30).await;
    let (status, created) = post(
        &h.admin,
        "/admin/rollouts",
        &json!({
            "name": "hu 2.0 staged",
            "image": IMAGE,
            "groups": [
                { "name": "canary", "count": 10 },
                { "vin_pattern": "RV1*" },
                {}
            ],
            "success_threshold": 80,
            "error_threshold": 20
        }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["rollout"]["id"].clone();
    let campaign = created["rollout"]["campaign_id"].clone();
    assert_eq!(created["rollout"]["state"], "ready");
    for n in 1..=3 {
        assert_eq!(group(&created, n)["progress"]["targets"], 10, "{created}");
        assert_eq!(group(&created, n)["state"], "scheduled");
    }
    assert!(pending_vins(&h, &campaign).await.is_empty());

    let (status, started) =
        post(&h.admin, &format!("/admin/rollouts/{id}/start"), &json!({})).await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["rollout"]["state"], "running");
    assert_eq!(started["current_group"], 1);
    assert_eq!(pending_vins(&h, &campaign).await, vins(0..10));
    // The first group's vehicles see the image in their Director metadata.
    let plan = v[0].full_verification(&h, &[]).await;
    assert_eq!(plan.targets().len(), 1);

    // Group 1: 7 of 10 installed (below 80 %) and one failure (10 %, not
    // above 20 %): the rollout continues, group 2 waits.
    for ve in v.iter_mut().take(7) {
        report(ve, Report::Installed).await;
    }
    report(&mut v[7], Report::Failed).await;
    // The same failure in a later manifest counts once.
    report(&mut v[7], Report::Failed).await;
    let s = get(&h.admin, &format!("/admin/rollouts/{id}")).await;
    let p = &group(&s, 1)["progress"];
    assert_eq!(
        (
            p["assigned"].clone(),
            p["installed"].clone(),
            p["failed"].clone(),
            p["pending"].clone()
        ),
        (json!(10), json!(7), json!(1), json!(2)),
        "{s}"
    );
    assert_eq!(group(&s, 1)["state"], "running");
    assert_eq!(group(&s, 2)["state"], "scheduled");
    assert_eq!(pending_vins(&h, &campaign).await.len(), 3);

    // The eighth install reaches 80 %: group 2 (RV1*) starts.
    report(&mut v[8], Report::Installed).await;
    let s = get(&h.admin, &format!("/admin/rollouts/{id}")).await;
    assert_eq!(group(&s, 1)["state"], "succeeded", "{s}");
    assert_eq!(group(&s, 2)["state"], "running");
    assert_eq!(s["current_group"], 2);
    let mut expected = vec!["RV07".to_owned(), "RV09".to_owned()];
    expected.extend(vins(10..20));
    assert_eq!(pending_vins(&h, &campaign).await, expected);

    // Group 2: two failures are 20 %, not above the threshold: it continues.
    report(&mut v[10], Report::Failed).await;
    report(&mut v[11], Report::Installed).await;
    report(&mut v[12], Report::Failed).await;
    let s = get(&h.admin, &format!("/admin/rollouts/{id}")).await;
    assert_eq!(s["rollout"]["state"], "running", "{s}");
    // An attack reported in a signed manifest is a failure too: 30 % > 20 %,
    // the emergency stop.
    report(&mut v[13], Report::Attack).await;
    let s = get(&h.admin, &format!("/admin/rollouts/{id}")).await;
    assert_eq!(s["rollout"]["state"], "stopped", "{s}");
    assert!(
        s["rollout"]["reason"].as_str().unwrap().contains("group 2"),
        "{s}"
    );
    assert_eq!(group(&s, 2)["state"], "stopped");
    assert_eq!(group(&s, 3)["state"], "cancelled");
    let p = &group(&s, 2)["progress"];
    assert_eq!(
        (
            p["installed"].clone(),
            p["failed"].clone(),
            p["attacks"].clone(),
            p["cancelled"].clone()
        ),
        (json!(1), json!(2), json!(1), json!(6)),
        "{s}"
    );
    // No further assignments: every pending one of the rollout is cancelled,
    // group 3 was never assigned, and the vehicles' Director metadata no
    // longer lists the image.
    assert!(pending_vins(&h, &campaign).await.is_empty());
    let all = get(&h.admin, &format!("/admin/assignments?campaign={campaign}")).await;
    assert_eq!(all["assignments"].as_array().unwrap().len(), 20);
    assert!(all["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| !a["vin"].as_str().unwrap().starts_with("RV2")));
    // Per target: RV13 reported the attack, RV14 was cancelled by the stop.
    let t = get(&h.admin, &format!("/admin/rollouts/{id}/groups/2/targets")).await;
    let t = t["targets"].as_array().unwrap();
    assert_eq!(t.len(), 10);
    assert_eq!(
        (t[3]["vin"].clone(), t[3]["outcome"].clone()),
        (json!("RV13"), json!("attack"))
    );
    assert_eq!(t[4]["assignment_status"], "cancelled");
    assert_eq!(t[4]["outcome"], Value::Null);
    let r = h
        .admin
        .get(&format!("/admin/rollouts/{id}/groups/4/targets"))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let plan = v[14].full_verification(&h, &[]).await;
    assert!(plan.targets().is_empty());
    // A stopped rollout stays stopped; later reports change nothing.
    let (status, _) = post(
        &h.admin,
        &format!("/admin/rollouts/{id}/resume"),
        &json!({}),
    )
    .await;
    assert_eq!(status, 409);
    report(&mut v[15], Report::Installed).await;
    let after = get(&h.admin, &format!("/admin/rollouts/{id}")).await;
    assert_eq!(after["groups"], s["groups"]);

    // Every change is in the audit trail: the operator's and the server's.
    let audit = get(&h.admin, "/admin/audit?limit=1000").await;
    let actions: Vec<(String, String)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"].as_str().unwrap().starts_with("rollout-"))
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let names: Vec<&str> = actions.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        names,
        [
            "rollout-created",
            "rollout-started",
            "rollout-group-started",
            "rollout-emergency-stop"
        ],
        "{actions:?}"
    );
    assert_eq!(actions[3].1, "server");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_secureev-server"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&h.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_cancel_and_a_viewer_cannot_start() {
    let (h, mut v) = fleet("rollout-ops", 6).await;
    let viewer = h.operator("vera", &[Role::Viewer]);
    let rm = h.operator("rita", &[Role::ReleaseManager]);
    let body = json!({
        "name": "hu 2.0 thirds",
        "image": IMAGE,
        "groups": [ { "percent": 34 }, { "count": 2 }, {} ],
        "success_threshold": 50,
        "error_threshold": 50
    });
    // A viewer may read but neither create nor start.
    let (status, _) = post(&viewer, "/admin/rollouts", &body).await;
    assert_eq!(status, 403);
    let (status, created) = post(&rm, "/admin/rollouts", &body).await;
    assert_eq!(status, 201, "{created}");
    let id = created["rollout"]["id"].clone();
    let campaign = created["rollout"]["campaign_id"].clone();
    // 34 % of 6, rounded up, is 3.
    let sizes: Vec<Value> = (1..=3)
        .map(|n| group(&created, n)["progress"]["targets"].clone())
        .collect();
    assert_eq!(sizes, [json!(3), json!(2), json!(1)], "{created}");
    let (status, _) = post(&viewer, &format!("/admin/rollouts/{id}/start"), &json!({})).await;
    assert_eq!(status, 403);
    assert_eq!(
        get(&viewer, &format!("/admin/rollouts/{id}")).await["rollout"]["state"],
        "ready"
    );
    let (status, s) = post(&rm, &format!("/admin/rollouts/{id}/start"), &json!({})).await;
    assert_eq!(status, 200, "{s}");
    let (status, _) = post(&rm, &format!("/admin/rollouts/{id}/start"), &json!({})).await;
    assert_eq!(status, 409, "a running rollout cannot be started again");

    // Paused: group 1 passes its threshold, but group 2 does not start.
    let (status, s) = post(&rm, &format!("/admin/rollouts/{id}/pause"), &json!({})).await;
    assert_eq!(
        (status, s["rollout"]["state"].clone()),
        (200, json!("paused"))
    );
    let (status, _) = post(&viewer, &format!("/admin/rollouts/{id}/pause"), &json!({})).await;
    assert_eq!(status, 403);
    report(&mut v[0], Report::Installed).await;
    report(&mut v[1], Report::Installed).await;
    let s = get(&viewer, &format!("/admin/rollouts/{id}")).await;
    assert_eq!(group(&s, 1)["state"], "running", "{s}");
    assert_eq!(pending_vins(&h, &campaign).await, vins(2..3));

    // Resumed: evaluated at once, group 2 starts.
    let (status, s) = post(&rm, &format!("/admin/rollouts/{id}/resume"), &json!({})).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["rollout"]["state"], "running");
    assert_eq!(s["current_group"], 2, "{s}");
    assert_eq!(
        s["transitions"],
        json!(["resumed", "group 1 succeeded, group 2 started"])
    );
    assert_eq!(pending_vins(&h, &campaign).await, vins(2..5));

    // Cancelled: pending assignments withdrawn, group 3 never starts.
    let (status, s) = post(&rm, &format!("/admin/rollouts/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["rollout"]["state"], "cancelled");
    assert_eq!(group(&s, 3)["state"], "cancelled");
    assert!(pending_vins(&h, &campaign).await.is_empty());
    for path in ["resume", "start", "pause", "cancel"] {
        let (status, e) = post(&rm, &format!("/admin/rollouts/{id}/{path}"), &json!({})).await;
        assert_eq!(
            (status, e["error"].clone()),
            (409, json!("conflict")),
            "{path}"
        );
    }
    // The ECUs are free again for a new rollout.
    let (status, again) = post(
        &rm,
        "/admin/rollouts",
        &json!({
            "name": "retry", "image": IMAGE, "groups": [{}], "start": true
        }),
    )
    .await;
    assert_eq!(status, 201, "{again}");
    // RV00 and RV01 installed 2.0 (release counter 2, still assignable).
    assert_eq!(group(&again, 1)["progress"]["assigned"], 6, "{again}");
    let (status, _) = post(&rm, "/admin/rollouts/999/start", &json!({})).await;
    assert_eq!(status, 404);

    // The CLI: a rollout made with --group, its status, a refused transition.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_secureev-server"))
            .arg("rollout")
            .args(args)
            .args(["--server", &h.admin_base, "--data-dir"])
            .arg(&h.data)
            .output()
            .unwrap()
    };
    let out = cli(&["cancel", &again["rollout"]["id"].to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "create",
        "--name",
        "cli",
        "--image",
        IMAGE,
        "--group",
        "count=1,vin=RV0?,name=first",
        "--group",
        "percent=50,error=10",
        "--group",
        "",
        "--success-threshold",
        "100",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(group(&made, 1)["name"], "first", "{made}");
    assert_eq!(group(&made, 1)["success_threshold"], 100);
    assert_eq!(group(&made, 2)["error_threshold"], 10);
    let sizes: Vec<Value> = (1..=3)
        .map(|n| group(&made, n)["progress"]["targets"].clone())
        .collect();
    assert_eq!(sizes, [json!(1), json!(3), json!(2)], "{made}");
    let cid = made["rollout"]["id"].to_string();
    let out = cli(&["status", &cid]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["rollout"]["state"], "ready");
    let out = cli(&["resume", &cid]);
    assert!(!out.status.success(), "a ready rollout cannot be resumed");
    let out = cli(&["--group", "count=1,bogus=2"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rollout_requests_are_refused_with_400_or_409() {
    let (h, _v) = fleet("rollout-bad", 1).await;
    for (body, code) in [
        (json!({ "name": "x", "image": IMAGE, "groups": [] }), 400),
        (
            json!({ "name": "x", "image": IMAGE, "groups": [{ "count": 1, "percent": 5 }] }),
            400,
        ),
        (
            json!({ "name": "x", "image": IMAGE, "groups": [{ "percent": 101 }] }),
            400,
        ),
        (
            json!({ "name": "x", "image": IMAGE, "groups": [{ "count": 0 }] }),
            400,
        ),
        (
            json!({ "name": "x", "image": IMAGE, "groups": [{ "vin_pattern": "a b" }] }),
            400,
        ),
        (
            json!({ "name": "x", "image": IMAGE, "groups": [{}], "error_threshold": 101 }),
            400,
        ),
        (
            json!({ "name": "x", "image": IMAGE, "groups": [{}], "surprise": 1 }),
            400,
        ),
        (
            json!({ "name": "x", "image": IMAGE, "groups": [{}], "hardware_ids": ["ecm"] }),
            409,
        ),
        (json!({ "name": "x", "image": "nope", "groups": [{}] }), 404),
    ] {
        let (status, e) = post(&h.admin, "/admin/rollouts", &body).await;
        assert_eq!(status, code, "{body}: {e}");
    }
    assert!(get(&h.admin, "/admin/rollouts").await["rollouts"]
        .as_array()
        .unwrap()
        .is_empty());
}
