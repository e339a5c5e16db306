//! Every admin change commits with its audit record, in one transaction
//! (issue 12): with the audit table refusing inserts, an assignment is
//! refused whole (500) and leaves nothing behind; once the table takes
//! records again the same request commits together with its record. A
//! request that changes nothing is recorded afterwards with its status.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use secureev_server::client::{image_add, ImageSpec};
use secureev_uptane::Timestamp;
use serde_json::{json, Value};

fn records(h: &Harness) -> Vec<Value> {
    let db = h.db();
    db.read(secureev_server::audit::all_records)
        .unwrap()
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap();
            v["detail"] = serde_json::from_str(v["detail"].as_str().unwrap()).unwrap();
            v
        })
        .collect()
}

fn assignment_records(h: &Harness) -> Vec<Value> {
    records(h)
        .into_iter()
        .filter(|r| r["action"] == "admin-request" && r["detail"]["path"] == "/admin/assignments")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_and_its_audit_record_commit_together_or_not_at_all() {
    let h = start("audit-atomic").await;
    let car = TestVehicle::new(
        &h,
        "VINAUDIT000000001",
        &[("HU-1", "hu"), ("BRK-1", "brake")],
    );
    car.register(&h).await;
    let spec = ImageSpec {
        name: "fw.bin".into(),
        hardware_ids: vec!["brake".into()],
        version: None,
        release_counter: Some(1),
        encrypt: false,
        release_notes: None,
    };
    image_add(
        &h.admin,
        &h.offline,
        &spec,
        b"firmware",
        Timestamp::from_unix(secureev_server::unix_now()),
    )
    .await
    .unwrap();
    let assign = json!({"vin": car.vin, "ecu_serial": "BRK-1", "image": spec.name});
    let pending = |h: &Harness| {
        let db = h.db();
        db.read(|tx| tx.pending_assignments("VINAUDIT000000001"))
            .unwrap()
            .len()
    };
    let director_targets = |h: &Harness| {
        let db = h.db();
        db.read(|tx| tx.latest_meta("director:VINAUDIT000000001", "targets"))
            .unwrap()
            .map(|m| m.version)
    };
    let targets_before = director_targets(&h);

    // The audit table refuses every insert (another connection's trigger).
    h.sql(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END;",
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$; \
         CREATE TRIGGER refuse_audit BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION refuse_audit();",
    );
    let r = h.admin.post("/admin/assignments", &assign).await.unwrap();
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    // Nothing of the change is left: no assignment, no new Director targets.
    assert_eq!(pending(&h), 0);
    assert_eq!(director_targets(&h), targets_before);
    assert!(assignment_records(&h).is_empty());

    // The table takes records again: the same request commits with its record.
    h.sql(
        "DROP TRIGGER refuse_audit;",
        "DROP TRIGGER refuse_audit ON audit;",
    );
    let r = h.admin.post("/admin/assignments", &assign).await.unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(pending(&h), 1);
    assert_ne!(director_targets(&h), targets_before);
    let recs = assignment_records(&h);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["detail"]["recorded"], "with-change");
    assert_eq!(recs[0]["detail"]["method"], "POST");
    assert_eq!(recs[0]["actor"], "operator:admin");

    // A refused change commits nothing and is recorded after, with its status.
    let r = h
        .admin
        .post(
            "/admin/assignments",
            &json!({"vin": car.vin, "ecu_serial": "NO-SUCH-ECU", "image": spec.name}),
        )
        .await
        .unwrap();
    assert!(r.status >= 400 && r.status < 500, "{}", r.status);
    let recs = assignment_records(&h);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[1]["detail"]["recorded"], "after-response");
    assert_eq!(recs[1]["detail"]["status"], r.status);
    assert_eq!(pending(&h), 1);

    // The chain still verifies.
    let db = h.db();
    let all = db.read(secureev_server::audit::all_records).unwrap();
    let keys =
        secureev_server::audit::public_keys(&secureev_server::keystore::KeyStore::files(&h.data))
            .unwrap();
    assert_eq!(secureev_server::audit::verify(&all, &keys), Ok(all.len()));
}
