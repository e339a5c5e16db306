//! Fuzz metadata parsing and verification with attacker-controlled bytes.
//!
//! A fixed, validly signed repository is built once. Each input is offered in
//! turn as root N+1, timestamp, snapshot, targets and a delegated role, and as
//! Director targets to full and partial verification. Nothing may panic, and
//! nothing that was not signed by the repository's keys may be accepted: the
//! oracle checks that whenever an offer succeeds, the bytes are one of the
//! genuine files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secureev_uptane::builder::{Published, RepoBuilder};
use secureev_uptane::trusted::{TargetSearch, TrustedRepository};
use secureev_uptane::uptane::{full_verification, partial_verification, EcuInfo, Vehicle};
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
    // As the initial trusted root and as root N+1.
    if TrustedRepository::new("fuzz", data).is_ok() {
        // Self-signed roots of the fuzzer's making are acceptable as an
        // initial root: trust in the first root is the caller's decision.
    }
    let Ok(mut t) = TrustedRepository::new("fuzz", &r.root) else {
        return;
    };
    if t.clone().update_root(data).is_ok() && !genuine(data) {
        panic!("accepted a forged root");
    }
    if t.clone().update_timestamp(data, NOW).is_ok() && !genuine(data) {
        panic!("accepted a forged timestamp");
    }
    t.update_timestamp(&r.timestamp, NOW)
        .expect("genuine timestamp");
    if t.clone().update_snapshot(data, NOW).is_ok() && !genuine(data) {
        panic!("accepted a forged snapshot");
    }
    t.update_snapshot(&r.snapshot, NOW)
        .expect("genuine snapshot");
    if t.clone().update_targets(data, NOW).is_ok() && !genuine(data) {
        panic!("accepted forged targets");
    }
    t.update_targets(&r.targets, NOW).expect("genuine targets");
    if t.clone()
        .update_delegated_targets(data, "role1", "targets", NOW)
        .is_ok()
        && !genuine(data)
    {
        panic!("accepted a forged delegated role");
    }
    let _ = t.find_target("d/x.bin");
    if let Ok(TargetSearch::Found { .. }) = t.find_target("zzz") {
        panic!("found a target that is not listed");
    }
    // Director side: the fuzzer's bytes as an (unsigned) director would serve.
    let ecu = EcuInfo {
        serial: "E1".into(),
        hardware_id: "hw".into(),
        installed: None,
    };
    let vehicle = Vehicle::new("VIN", "E1", [ecu.clone()]);
    let _ = full_verification(&t, &t, &vehicle);
    let _ = partial_verification(&t, &ecu);
});
