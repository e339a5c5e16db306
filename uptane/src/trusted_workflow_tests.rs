//! Workflow rules of the trusted state and of partial verification, built
//! with [`RepoBuilder`] in memory (no fixture files).
//!
//! These drive the per-role `update_*` steps of [`TrustedRepository`]
//! directly, so they live inside the crate: outside it only
//! [`crate::client::UpdateClient`] calls them, in the one order it owns.

use crate::builder::{meta_file, resign, sign_metadata, target_file, Published, RepoBuilder};
use crate::metadata::{Common, Delegations, Snapshot, SuccinctRoles, Targets};
use crate::trusted::{Layout, Limits, TargetSearch, TimestampUpdate, TrustedRepository};
use crate::uptane::{partial_verification, EcuInfo, InstalledImage};
use crate::{Error, SigningKey, Timestamp};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn now() -> Timestamp {
    Timestamp::from_unix(1_893_456_000) // 2030-01-01T00:00:00Z
}

fn root_v(p: &Published, version: u64) -> Result<&[u8], String> {
    p.roots
        .get(&version)
        .map(Vec::as_slice)
        .ok_or_else(|| format!("no root version {version}"))
}

fn first_key(repo: &RepoBuilder, role: &str) -> Result<SigningKey, String> {
    repo.keys
        .get(role)
        .and_then(|k| k.first())
        .cloned()
        .ok_or_else(|| format!("no {role} key"))
}

/// A client trusting root v1 of `p`, with timestamp, snapshot and targets
/// loaded.
fn loaded_client(p: &Published) -> Result<TrustedRepository, Box<dyn std::error::Error>> {
    let mut c = TrustedRepository::new("image", root_v(p, 1)?)?;
    c.update_timestamp(&p.timestamp, now())?;
    c.update_snapshot(&p.snapshot, now())?;
    c.update_targets(&p.targets, now())?;
    Ok(c)
}

/// Search for `target`, loading every delegated role the search asks for
/// from `roles`.
fn search(
    c: &mut TrustedRepository,
    roles: &BTreeMap<String, Vec<u8>>,
    target: &str,
) -> Result<TargetSearch, Box<dyn std::error::Error>> {
    loop {
        match c.find_target(target)? {
            TargetSearch::NeedRole { role, parent } => {
                let bytes = roles.get(&role).ok_or_else(|| format!("no {role}.json"))?;
                c.update_delegated_targets(bytes, &role, &parent, now())?;
            }
            other => return Ok(other),
        }
    }
}

#[test]
fn root_cannot_be_updated_after_timestamp() -> TestResult {
    let mut repo = RepoBuilder::new(now());
    let p1 = repo.publish()?;
    repo.rotate_keys("root", vec![SigningKey::generate_p256()], 1);
    let p2 = repo.publish()?;

    let mut c = TrustedRepository::new("image", root_v(&p1, 1)?)?;
    c.update_timestamp(&p1.timestamp, now())?;
    assert!(matches!(
        c.update_root(root_v(&p2, 2)?),
        Err(Error::Workflow(_))
    ));
    assert_eq!(c.root().common.version, 1);

    // A new cycle starts from a fresh state and settles the root chain first.
    let mut c = TrustedRepository::new("image", root_v(&p1, 1)?)?;
    c.update_root(root_v(&p2, 2)?)?;
    assert_eq!(c.root().common.version, 2);
    assert_eq!(
        c.update_timestamp(&p2.timestamp, now())?,
        TimestampUpdate::Updated
    );
    Ok(())
}

#[test]
fn equal_timestamp_version_is_unchanged() -> TestResult {
    let mut repo = RepoBuilder::new(now());
    let p = repo.publish()?;
    let mut c = TrustedRepository::new("image", root_v(&p, 1)?)?;
    assert_eq!(
        c.update_timestamp(&p.timestamp, now())?,
        TimestampUpdate::Updated
    );
    // Same version, other bytes (a later expiry): the trusted one is kept.
    let ts_key = first_key(&repo, "timestamp")?;
    let resigned = resign(&p.timestamp, &[&ts_key], |s| {
        s["expires"] = json!(now().plus_secs(7 * 86_400).to_string())
    })?;
    assert_eq!(
        c.update_timestamp(&resigned, now())?,
        TimestampUpdate::Unchanged
    );
    assert_eq!(c.timestamp().map(|t| t.raw()), Some(p.timestamp.as_slice()));
    Ok(())
}

#[test]
fn expired_timestamp_is_kept_for_rollback_protection() -> TestResult {
    let mut repo = RepoBuilder::new(now());
    let p1 = repo.publish()?;
    repo.expires
        .insert("timestamp".into(), now().plus_secs(-60));
    let expired_v2 = repo.sign_timestamp(1, &p1.snapshot)?;

    let mut c = TrustedRepository::new("image", root_v(&p1, 1)?)?;
    assert!(matches!(
        c.update_timestamp(&expired_v2, now()),
        Err(Error::Expired { ref role, .. }) if role == "timestamp"
    ));
    // Kept: it is the reference for the next offer ...
    assert_eq!(c.timestamp().map(|t| t.common.version), Some(2));
    assert_eq!(
        c.update_timestamp(&p1.timestamp, now()),
        Err(Error::Rollback {
            role: "timestamp".into(),
            trusted: 2,
            offered: 1
        })
    );
    // ... but nothing may be built on it.
    assert!(matches!(
        c.update_snapshot(&p1.snapshot, now()),
        Err(Error::Expired { ref role, .. }) if role == "timestamp"
    ));
    Ok(())
}

#[test]
fn consistent_snapshot_requests_carry_versions() -> TestResult {
    let mut repo = RepoBuilder::new(now());
    repo.publish()?;
    let p = repo.publish()?;
    let mut c = TrustedRepository::new("image", root_v(&p, 1)?)?;
    c.update_timestamp(&p.timestamp, now())?;
    let req = c.snapshot_request()?;
    assert_eq!(req.role, "snapshot");
    assert_eq!(req.version, Some(2));
    assert_eq!(req.max_length, p.snapshot.len() as u64);
    c.update_snapshot(&p.snapshot, now())?;
    let req = c.targets_request("targets")?;
    assert_eq!(req.version, Some(2));
    assert_eq!(req.max_length, p.targets.len() as u64);
    assert!(matches!(
        c.targets_request("unknown"),
        Err(Error::MissingMeta { .. })
    ));

    // Without consistent snapshots the files are fetched by plain name.
    let mut repo = RepoBuilder::new(now());
    repo.consistent_snapshot = false;
    let p = repo.publish()?;
    let mut c = TrustedRepository::new("image", root_v(&p, 1)?)?;
    c.update_timestamp(&p.timestamp, now())?;
    assert_eq!(c.snapshot_request()?.version, None);
    c.update_snapshot(&p.snapshot, now())?;
    assert_eq!(c.targets_request("targets")?.version, None);
    Ok(())
}

#[test]
fn root_and_targets_layout_refuses_timestamp_and_snapshot() -> TestResult {
    let mut repo = RepoBuilder::new(now());
    let p = repo.publish()?;
    let mut c =
        TrustedRepository::new("director", root_v(&p, 1)?)?.with_layout(Layout::RootAndTargetsOnly);
    assert!(matches!(
        c.update_timestamp(&p.timestamp, now()),
        Err(Error::Workflow(_))
    ));
    c.update_targets(&p.targets, now())?;
    assert_eq!(c.targets_request("targets")?.version, None);
    Ok(())
}

/// Regression: a root-and-targets Director's stored targets that expired
/// while the vehicle was offline used to be dropped, and with it the only
/// rollback reference (fixture rollback-director-targets-expired-stored).
#[test]
fn expired_stored_director_targets_still_block_rollback() -> TestResult {
    let mut director = RepoBuilder::new(now());
    director
        .expires
        .insert("targets".into(), now().plus_secs(86_400));
    let v1 = director.publish()?;
    director
        .expires
        .insert("targets".into(), now().plus_secs(-60));
    let v2_expired = director.publish()?;
    let mut c = TrustedRepository::new("director", root_v(&v1, 1)?)?
        .with_layout(Layout::RootAndTargetsOnly);
    assert!(matches!(
        c.update_targets(&v2_expired.targets, now()),
        Err(Error::Expired { ref role, .. }) if role == "targets"
    ));
    assert!(c.targets().is_none(), "expired targets must not be trusted");
    assert_eq!(
        c.update_targets(&v1.targets, now()),
        Err(Error::Rollback {
            role: "targets".into(),
            trusted: 2,
            offered: 1
        })
    );
    // A newer version is accepted.
    director
        .expires
        .insert("targets".into(), now().plus_secs(86_400));
    let v3 = director.publish()?;
    c.update_targets(&v3.targets, now())?;
    assert_eq!(c.targets().map(|t| t.common.version), Some(3));
    Ok(())
}

#[test]
fn find_target_respects_max_delegations() -> TestResult {
    // targets -> d1 -> d2 -> d3 -> d4, and only d4 lists the target: five
    // roles must be consulted.
    let mut repo = RepoBuilder::new(now());
    let mut parent = "targets".to_owned();
    for name in ["d1", "d2", "d3", "d4"] {
        repo.add_delegation(&parent, name, &["*"], false);
        parent = name.to_owned();
    }
    repo.add_delegated_target("d4", "deep.bin", b"deep")?;
    let p = repo.publish()?;

    let mut c = loaded_client(&p)?;
    assert!(matches!(
        search(&mut c, &p.delegated, "deep.bin")?,
        TargetSearch::Found { ref role, .. } if role == "d4"
    ));

    let limited = |max_delegations| Limits {
        max_delegations,
        ..Limits::default()
    };
    let mut c = loaded_client(&p)?.with_limits(limited(5));
    assert!(matches!(
        search(&mut c, &p.delegated, "deep.bin")?,
        TargetSearch::Found { .. }
    ));
    let mut c = loaded_client(&p)?.with_limits(limited(4));
    let err = search(&mut c, &p.delegated, "deep.bin")
        .err()
        .ok_or("search beyond the limit succeeded")?;
    assert_eq!(
        err.downcast_ref::<Error>(),
        Some(&Error::DelegationLimit {
            target: "deep.bin".into(),
            limit: 4
        })
    );
    Ok(())
}

#[test]
fn succinct_hash_bin_delegation_finds_a_target() -> TestResult {
    let mut repo = RepoBuilder::new(now());
    repo.publish_root()?;
    let expires = now().plus_secs(86_400);
    let bin_key = SigningKey::generate_p256();
    let succinct = SuccinctRoles {
        keyids: vec![bin_key.keyid().to_owned()],
        threshold: 1,
        bit_length: 4,
        name_prefix: "bin".into(),
        unrecognized: Map::new(),
    };
    let target = "ecu/bms-fw-7.bin";
    let bin = succinct.role_for(target);
    let mut keys = BTreeMap::new();
    keys.insert(bin_key.keyid().to_owned(), bin_key.public_key().clone());
    let top = Targets {
        common: Common::new("targets", 1, expires),
        targets: BTreeMap::new(),
        delegations: Some(Delegations {
            keys,
            roles: None,
            succinct_roles: Some(succinct.clone()),
            unrecognized: Map::new(),
        }),
        unrecognized: Map::new(),
    };
    let top_bytes = sign_metadata(&top, &[&first_key(&repo, "targets")?])?;
    let mut listed = BTreeMap::new();
    listed.insert(target.to_owned(), target_file(b"bms firmware 7", None));
    let bin_targets = Targets {
        common: Common::new("targets", 1, expires),
        targets: listed,
        delegations: None,
        unrecognized: Map::new(),
    };
    let bin_bytes = sign_metadata(&bin_targets, &[&bin_key])?;
    let mut meta = BTreeMap::new();
    meta.insert("targets.json".to_owned(), meta_file(1, &top_bytes));
    meta.insert(format!("{bin}.json"), meta_file(1, &bin_bytes));
    let snapshot = Snapshot {
        common: Common::new("snapshot", 1, expires),
        meta,
        unrecognized: Map::new(),
    };
    let snapshot_bytes = sign_metadata(&snapshot, &[&first_key(&repo, "snapshot")?])?;
    let timestamp_bytes = repo.sign_timestamp(1, &snapshot_bytes)?;

    let root = repo.roots.get(&1).ok_or("no root")?;
    let mut c = TrustedRepository::new("image", root)?;
    c.update_timestamp(&timestamp_bytes, now())?;
    c.update_snapshot(&snapshot_bytes, now())?;
    c.update_targets(&top_bytes, now())?;

    assert_eq!(
        c.find_target(target)?,
        TargetSearch::NeedRole {
            role: bin.clone(),
            parent: "targets".into()
        }
    );
    // A bin the snapshot does not list cannot be loaded.
    assert!(matches!(
        c.update_delegated_targets(&bin_bytes, "bin-zz", "targets", now()),
        Err(Error::MissingMeta { .. })
    ));
    let mut roles = BTreeMap::new();
    roles.insert(bin.clone(), bin_bytes);
    match search(&mut c, &roles, target)? {
        TargetSearch::Found { role, target: t } => {
            assert_eq!(role, bin);
            assert_eq!(t.length, b"bms firmware 7".len() as u64);
        }
        other => return Err(format!("expected Found, got {other:?}").into()),
    }
    // Another path maps to its own bin; unless that is the same bin, it must
    // be loaded first.
    let other = (0..64)
        .map(|i| format!("other-{i}.bin"))
        .find(|t| succinct.role_for(t) != bin)
        .ok_or("no target in another bin")?;
    assert!(matches!(
        c.find_target(&other)?,
        TargetSearch::NeedRole { ref role, .. } if *role != bin
    ));
    Ok(())
}

// ---- partial verification (Uptane 2.1 §5.4.4.1) -------------------------------------

fn director_custom(serial: &str, hardware_id: &str, release_counter: u64) -> Value {
    json!({
        "ecuIdentifiers": { serial: { "hardwareId": hardware_id } },
        "releaseCounter": release_counter
    })
}

/// A partial-verification secondary's view: Director root and targets only.
fn partial_director() -> Result<TrustedRepository, Box<dyn std::error::Error>> {
    let mut director = RepoBuilder::new(now());
    director.add_target(
        "bms-fw-2.bin",
        b"bms firmware 2",
        Some(director_custom("BMS-1", "secureev-bms", 2)),
    );
    director.add_target(
        "hu-fw-4.bin",
        b"head unit firmware 4",
        Some(director_custom("HU-1", "secureev-hu", 4)),
    );
    director
        .targets_extra
        .insert("custom".into(), json!({ "vin": "VIN-1" }));
    let p = director.publish()?;
    let mut c =
        TrustedRepository::new("director", root_v(&p, 1)?)?.with_layout(Layout::RootAndTargetsOnly);
    c.update_targets(&p.targets, now())?;
    Ok(c)
}

fn bms(hardware_id: &str, installed_counter: Option<u64>) -> EcuInfo {
    EcuInfo {
        serial: "BMS-1".into(),
        hardware_id: hardware_id.into(),
        installed: installed_counter.map(|rc| InstalledImage {
            name: "bms-fw-1.bin".into(),
            length: 14,
            hashes: target_file(b"bms firmware 1", None).hashes,
            release_counter: rc,
        }),
    }
}

#[test]
fn partial_verification_finds_the_ecus_assignment() -> TestResult {
    let c = partial_director()?;
    let a = partial_verification(&c, &bms("secureev-bms", Some(1)))?
        .ok_or("no assignment for BMS-1")?;
    assert_eq!(a.name, "bms-fw-2.bin");
    assert_eq!(a.ecu_serial, "BMS-1");
    assert_eq!(a.custom.release_counter, Some(2));
    assert_eq!(a.director_target.length, b"bms firmware 2".len() as u64);
    // Equal release counters are no rollback.
    assert!(partial_verification(&c, &bms("secureev-bms", Some(2)))?.is_some());
    Ok(())
}

#[test]
fn partial_verification_without_assignment_is_none() -> TestResult {
    let c = partial_director()?;
    let tcu = EcuInfo {
        serial: "TCU-1".into(),
        hardware_id: "secureev-tcu".into(),
        installed: None,
    };
    assert!(partial_verification(&c, &tcu)?.is_none());
    Ok(())
}

#[test]
fn partial_verification_refuses_wrong_hardware_id() -> TestResult {
    let c = partial_director()?;
    let err = partial_verification(&c, &bms("secureev-inverter", None))
        .err()
        .ok_or("wrong hardware ID accepted")?;
    assert!(matches!(err, Error::WrongHardwareId { ref ecu, .. } if ecu == "BMS-1"));
    assert!(err.attack().is_some());
    Ok(())
}

#[test]
fn partial_verification_refuses_release_counter_rollback() -> TestResult {
    let c = partial_director()?;
    assert_eq!(
        partial_verification(&c, &bms("secureev-bms", Some(3))).err(),
        Some(Error::ReleaseCounterRollback {
            target: "bms-fw-2.bin".into(),
            ecu: "BMS-1".into(),
            previous: 3,
            offered: 2
        })
    );
    Ok(())
}

/// Regression: the core enforced no size cap on root and timestamp itself,
/// only the caller's downloader did.
#[test]
fn oversized_root_and_timestamp_are_endless_data() -> TestResult {
    let mut repo = RepoBuilder::new(now());
    let p = repo.publish()?;
    let limits = Limits {
        timestamp_max_length: 16,
        root_max_length: 16,
        ..Limits::default()
    };
    let mut c = TrustedRepository::new("image", root_v(&p, 1)?)?.with_limits(limits);
    repo.rotate_keys("timestamp", vec![SigningKey::generate_p256()], 1);
    let p2 = repo.publish()?;
    assert!(matches!(
        c.update_root(root_v(&p2, 2)?),
        Err(Error::EndlessData { .. })
    ));
    assert!(matches!(
        c.update_timestamp(&p.timestamp, now()),
        Err(Error::EndlessData { .. })
    ));
    Ok(())
}

/// Uptane 2.1 §5.4.4.2 step 4: a stored snapshot of the current version but
/// with other content is not taken as current.
#[test]
fn stored_snapshot_must_match_timestamp_hashes() -> TestResult {
    let mut repo = RepoBuilder::new(now());
    let p = repo.publish()?;
    let snapshot_key = first_key(&repo, "snapshot")?;
    // Same version, validly signed, different content (e.g. written by a
    // compromised snapshot key and left in storage).
    let other = resign(&p.snapshot, &[&snapshot_key], |s| {
        s["x-other"] = json!(1);
    })?;
    let mut c = TrustedRepository::new("image", root_v(&p, 1)?)?;
    c.update_timestamp(&p.timestamp, now())?;
    assert!(matches!(
        c.update_snapshot_local_skip_hashes(&other, now()),
        Err(Error::HashMismatch { .. } | Error::LengthMismatch { .. })
    ));
    c.update_snapshot_local_skip_hashes(&p.snapshot, now())?;
    Ok(())
}

/// A diamond whose snapshot lists `release.json` by version only, so that two
/// different files can both pass the snapshot check: parent-a's copy (key A)
/// and parent-b's copy (key B). Trusting one role name with two contents in
/// one cycle would let either answer for the other's paths.
#[test]
fn diamond_role_offered_with_other_bytes_is_refused() -> TestResult {
    let mut repo = RepoBuilder::new(now());
    repo.add_delegation("targets", "parent-a", &["a-*"], false);
    repo.add_delegation("targets", "parent-b", &["b-*"], false);
    let ia = repo.add_delegation("parent-a", "release", &["a-*"], false);
    let ib = repo.add_delegation("parent-b", "release", &["b-*"], false);
    let (ka, kb) = (
        repo.delegated[ia].keys[0].clone(),
        repo.delegated[ib].keys[0].clone(),
    );
    let mut p = repo.publish()?;
    let base = p.delegated["release"].clone();
    let listing = json!({ "a-fw": target_file(b"a", None), "b-fw": target_file(b"b", None) });
    let by_a = resign(&base, &[&ka], |s| s["targets"] = listing.clone())?;
    let by_b = resign(&base, &[&kb], |s| s["targets"] = listing.clone())?;
    let snapshot_key = first_key(&repo, "snapshot")?;
    p.snapshot = resign(&p.snapshot, &[&snapshot_key], |s| {
        s["meta"]["release.json"] = json!({ "version": 1 });
    })?;
    p.timestamp = repo.sign_timestamp(1, &p.snapshot)?;
    let mut c = loaded_client(&p)?;
    let mut roles = p.delegated.clone();
    roles.insert("release".into(), by_a.clone());
    assert!(matches!(
        search(&mut c, &roles, "a-fw")?,
        TargetSearch::Found { .. }
    ));
    // b-fw needs release through parent-b: parent-b's own (differently signed)
    // copy is refused, because release was loaded with other bytes.
    roles.insert("release".into(), by_b);
    assert!(matches!(
        search(&mut c, &roles, "b-fw"),
        Err(e) if matches!(e.downcast_ref::<Error>(), Some(Error::InvalidDelegation { .. }))
    ));
    // The loaded copy, offered through parent-b, does not meet key B.
    roles.insert("release".into(), by_a);
    assert!(matches!(
        search(&mut c, &roles, "b-fw"),
        Err(e) if matches!(e.downcast_ref::<Error>(), Some(Error::ThresholdNotMet { .. }))
    ));
    Ok(())
}

#[test]
fn delegating_one_role_name_twice_is_refused() -> TestResult {
    let mut repo = RepoBuilder::new(now());
    repo.add_delegation("targets", "dup", &["a-*"], false);
    repo.add_delegation("targets", "dup", &["b-*"], false);
    let p = repo.publish()?;
    let mut c = TrustedRepository::new("image", root_v(&p, 1)?)?;
    c.update_timestamp(&p.timestamp, now())?;
    c.update_snapshot(&p.snapshot, now())?;
    assert!(matches!(
        c.update_targets(&p.targets, now()),
        Err(Error::InvalidDelegation { role, .. }) if role == "dup"
    ));
    Ok(())
}
