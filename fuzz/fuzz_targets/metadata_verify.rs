//! Fuzz metadata parsing and verification with attacker-controlled bytes.
//!
//! A fixed, validly signed repository is built once. Each input is served in
//! turn, through the core's update client (the one the daemon and the ECU
//! drive), as root N+1, timestamp, snapshot, targets and a delegated role, and
//! as Director targets to full and partial verification. Nothing may panic, and
//! nothing that was not signed by the repository's keys may be accepted: the
//! oracle checks that whenever an offer succeeds, the bytes are one of the
//! genuine files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secureev_uptane::builder::{Published, RepoBuilder};
use secureev_uptane::client::{drive, Decision, MetaRequest, Repo, Role, Step, UpdateClient};
use secureev_uptane::uptane::{EcuInfo, Vehicle};
use secureev_uptane::Timestamp;
use std::sync::OnceLock;

const NOW: Timestamp = Timestamp::from_unix(1_900_000_000);

fn repo() -> &'static Published {
    static REPO: OnceLock<Published> = OnceLock::new();
    REPO.get_or_init(|| {
        let mut b = RepoBuilder::new(NOW);
        b.add_target("a.bin", b"a", None);
        b.add_delegation("targets", "role1", &["d/*"], false);
        b.add_delegated_target("role1", "d/x.bin", b"x")
            .expect("delegation");
        b.publish().expect("publish")
    })
}

/// Which served file the fuzzer's bytes replace.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Root,
    Timestamp,
    Snapshot,
    Targets,
    Delegated,
}

/// Refresh the genuine repository through the core's update client (TUF
/// mode), serving `data` in place of `slot`. Returns whether the client
/// accepted `data` there.
fn accepted_at(r: &Published, slot: Slot, data: &[u8]) -> bool {
    let Ok(mut c) = UpdateClient::tuf("fuzz", &r.root, NOW) else {
        return false;
    };
    let mut searched = false;
    loop {
        let Ok(step) = c.next_step() else {
            return false;
        };
        let answered = match step {
            Step::Load { .. } => c.offer_not_found(),
            Step::Fetch(req) => {
                let (here, genuine) = match &req.role {
                    Role::Root => (Slot::Root, None),
                    Role::Timestamp => (Slot::Timestamp, Some(&r.timestamp)),
                    Role::Snapshot => (Slot::Snapshot, Some(&r.snapshot)),
                    Role::Targets => (Slot::Targets, Some(&r.targets)),
                    Role::Delegated(name) => (Slot::Delegated, r.delegated.get(name)),
                };
                if here == slot {
                    return c.offer(data).is_ok();
                }
                match genuine {
                    Some(bytes) => c.offer(bytes),
                    None => c.offer_not_found(),
                }
            }
            Step::Persist { .. } => Ok(()),
            Step::Done(Decision::Refreshed) if !searched => {
                searched = true;
                c.find_target("d/x.bin")
            }
            Step::Done(_) => return false,
        };
        if answered.is_err() {
            return false;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let r = repo();
    // Signatures cover the canonical `signed` value, so the same content with
    // other whitespace or key order is legitimately accepted: compare that.
    let signed = |d: &[u8]| -> Option<Vec<u8>> {
        let v: serde_json::Value = serde_json::from_slice(d).ok()?;
        secureev_uptane::canonical::to_canonical(v.get("signed")?).ok()
    };
    let genuine = |d: &[u8]| {
        let Some(s) = signed(d) else { return false };
        [&r.root, &r.timestamp, &r.snapshot, &r.targets]
            .into_iter()
            .chain(r.delegated.values())
            .any(|g| signed(g).as_deref() == Some(s.as_slice()))
    };
    // As the initial trusted root: self-signed roots of the fuzzer's making
    // are acceptable there (trust in the first root is the caller's
    // decision); nothing may panic.
    let _ = UpdateClient::tuf("fuzz", data, NOW);
    // As root N+1, timestamp, snapshot, targets and a delegated role.
    for (slot, what) in [
        (Slot::Root, "root"),
        (Slot::Timestamp, "timestamp"),
        (Slot::Snapshot, "snapshot"),
        (Slot::Targets, "targets"),
        (Slot::Delegated, "delegated role"),
    ] {
        if accepted_at(r, slot, data) && !genuine(data) {
            panic!("accepted a forged {what}");
        }
    }
    // Director side: the fuzzer's bytes as the Director's targets, in full
    // and partial verification.
    let ecu = EcuInfo {
        serial: "E1".into(),
        hardware_id: "hw".into(),
        installed: None,
    };
    let vehicle = Vehicle::new("VIN", "E1", [ecu.clone()]);
    let serve = |req: &MetaRequest| match (req.repo, &req.role) {
        (Repo::Director, Role::Targets) => Some(data.to_vec()),
        (_, Role::Timestamp) => Some(r.timestamp.clone()),
        (_, Role::Snapshot) => Some(r.snapshot.clone()),
        (_, Role::Targets) => Some(r.targets.clone()),
        (_, Role::Delegated(name)) => r.delegated.get(name).cloned(),
        (_, Role::Root) => None,
    };
    if let Ok(mut c) = UpdateClient::primary(vehicle, &r.root, &r.root, NOW) {
        let _ = drive(&mut c, serve, |_, _| None, |_, _, _, _| {});
    }
    if let Ok(mut c) = UpdateClient::secondary_partial(ecu, &r.root, NOW) {
        let _ = drive(&mut c, serve, |_, _| None, |_, _, _, _| {});
    }
});
