//! Criterion benchmarks of the verification core.
//!
//! - `p256_verify`: one raw ECDSA P-256 signature check, the unit cost;
//! - `checkin_full_verification`: one complete check-in through the core's
//!   `UpdateClient` (the machine the daemon drives), Director and Image
//!   repository (8 roles) with 50 targets for 50 ECUs, from bytes to a verified
//!   update plan;
//! - `checkin_signatures_only`: the 8 raw signature checks of that same
//!   check-in (each over its canonical bytes, parsed beforehand), so that the
//!   overhead is measured in the same run;
//! - `image_repo_1000_targets`: loading a 1,000-target Image repository.
//!
//! Dividing the check-in time by the P-256 time shows the overhead of parsing,
//! canonicalisation and the Uptane checks over the signature checks themselves
//! (a check-in verifies 8 signatures). Results are recorded in docs/benchmarks.md.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use secureev_uptane::builder::{Published, RepoBuilder};
use secureev_uptane::client::{drive, Decision, Repo, Role, UpdateClient};
use secureev_uptane::custom::{EcuIdentifier, TargetCustom};
use secureev_uptane::trusted::TrustedRepository;
use secureev_uptane::uptane::{EcuInfo, Vehicle};
use secureev_uptane::verify::Envelope;
use secureev_uptane::PublicKey;
use secureev_uptane::{SigningKey, Timestamp};
use serde_json::Map;

const NOW: Timestamp = Timestamp::from_unix(1_900_000_000);

fn image_repo(n: usize) -> (RepoBuilder, Published) {
    let mut repo = RepoBuilder::new(NOW);
    for i in 0..n {
        let custom = TargetCustom {
            hardware_ids: vec![format!("hw-{i}")],
            release_counter: Some(1),
            ..Default::default()
        };
        repo.add_target(
            &format!("fw-{i}.bin"),
            format!("image {i}").as_bytes(),
            Some(custom.to_value()),
        );
    }
    let out = repo.publish().expect("publish");
    (repo, out)
}

fn director_repo(n: usize, image: &RepoBuilder) -> Published {
    let mut repo = RepoBuilder::new(NOW);
    for i in 0..n {
        let name = format!("fw-{i}.bin");
        let mut t = image.targets[&name].clone();
        let mut ids = std::collections::BTreeMap::new();
        ids.insert(
            format!("ECU-{i}"),
            EcuIdentifier {
                hardware_id: format!("hw-{i}"),
                unrecognized: Map::new(),
            },
        );
        t.custom = Some(
            TargetCustom {
                ecu_identifiers: ids,
                release_counter: Some(1),
                ..Default::default()
            }
            .to_value(),
        );
        repo.targets.insert(name, t);
    }
    repo.targets_extra
        .insert("custom".into(), serde_json::json!({"vin": "VIN0"}));
    repo.publish().expect("publish")
}

/// What a repository serves, answering the client's fetches.
fn serve(out: &Published, role: &Role, version: Option<u64>) -> Option<Vec<u8>> {
    match role {
        Role::Root => version.and_then(|v| out.roots.get(&v).cloned()),
        Role::Timestamp => Some(out.timestamp.clone()),
        Role::Snapshot => Some(out.snapshot.clone()),
        Role::Targets => Some(out.targets.clone()),
        Role::Delegated(name) => out.delegated.get(name).cloned(),
    }
}

/// One check-in through the client the daemon ships, nothing stored: both
/// repositories (8 roles) and the Uptane match.
fn checkin(director: &Published, image: &Published, vehicle: &Vehicle) -> Decision {
    let mut client =
        UpdateClient::primary(vehicle.clone(), &director.root, &image.root, NOW).expect("roots");
    drive(
        &mut client,
        |req| match req.repo {
            Repo::Director => serve(director, &req.role, req.version),
            Repo::Image => serve(image, &req.role, req.version),
        },
        |_, _| None,
        |_, _, _, _| {},
    )
    .expect("verify")
}

/// Loading one repository through the client (TUF mode).
fn load(out: &Published) -> Decision {
    let mut client = UpdateClient::tuf("image", &out.root, NOW).expect("root");
    drive(
        &mut client,
        |req| serve(out, &req.role, req.version),
        |_, _| None,
        |_, _, _, _| {},
    )
    .expect("refresh")
}

fn bench(c: &mut Criterion) {
    let key = SigningKey::generate_p256();
    let public = key.verifying_key();
    let msg = vec![0x5a_u8; 512];
    let sig = key.sign_raw(&msg);
    c.bench_function("p256_verify", |b| {
        b.iter(|| assert!(public.verify(black_box(&msg), black_box(&sig))))
    });

    let (image_builder, image) = image_repo(50);
    let director = director_repo(50, &image_builder);
    let vehicle = Vehicle::new(
        "VIN0",
        "ECU-0",
        (0..50).map(|i| EcuInfo {
            serial: format!("ECU-{i}"),
            hardware_id: format!("hw-{i}"),
            installed: None,
        }),
    );
    c.bench_function("checkin_full_verification_50_targets", |b| {
        b.iter(|| match checkin(&director, &image, &vehicle) {
            Decision::Plan(plan) => assert_eq!(plan.targets().len(), 50),
            other => unreachable!("{other:?}"),
        })
    });

    // The same check-in's signatures, each checked once over its canonical
    // bytes: both roots (self-signed), then timestamp, snapshot and targets
    // of both repositories.
    let mut checks: Vec<(PublicKey, Vec<u8>, String)> = Vec::new();
    for out in [&director, &image] {
        let root = TrustedRepository::new("r", &out.root).expect("root");
        let root = root.root();
        for (role, bytes) in [
            ("root", &out.root),
            ("timestamp", &out.timestamp),
            ("snapshot", &out.snapshot),
            ("targets", &out.targets),
        ] {
            let env = Envelope::parse(role, bytes).expect("envelope");
            let keyid = &root.roles[role].keyids[0];
            let public = root.keys[keyid].to_public().expect("key");
            let sig = env.signatures()[0].sig.clone();
            checks.push((public, env.canonical().to_vec(), sig));
        }
    }
    assert_eq!(checks.len(), 8);
    // What one check-in parses (each file once; nothing is stored, no newer
    // root is served): for docs/benchmarks.md.
    let parsed: usize = [&director, &image]
        .iter()
        .map(|o| o.root.len() + o.timestamp.len() + o.snapshot.len() + o.targets.len())
        .sum();
    let canonical: usize = checks.iter().map(|(_, m, _)| m.len()).sum();
    eprintln!("check-in: {parsed} metadata bytes parsed, {canonical} canonical bytes signed");
    c.bench_function("checkin_signatures_only_50_targets", |b| {
        b.iter(|| {
            for (key, msg, sig) in &checks {
                assert!(key.verify_hex(black_box(msg), black_box(sig)));
            }
        })
    });

    let (_, big) = image_repo(1000);
    c.bench_function("image_repo_1000_targets", |b| {
        b.iter(|| black_box(load(&big)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
