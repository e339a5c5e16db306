//! Verified images for tests. Installers and secondary transports take only a
//! `VerifiedImage`, so a test makes one the way the daemon does: a Director
//! and an Image repository publish the image for one ECU, the core's
//! `UpdateClient` (the one the daemon ships) verifies them as a Primary, and
//! the target's `ImageVerifier` checks the bytes written to `path`.

#![allow(dead_code, clippy::unwrap_used)]

use secureev_uptane::builder::{Published, RepoBuilder};
use secureev_uptane::client::{drive, Decision, MetaRequest, Role, UpdateClient};
use secureev_uptane::image::VerifiedImage;
use secureev_uptane::uptane::{EcuInfo, Vehicle};
use secureev_uptane::Timestamp;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const VIN: &str = "VIN-TEST";

fn answer(p: &Published, r: &MetaRequest) -> Option<Vec<u8>> {
    match &r.role {
        Role::Root => r.version.and_then(|v| p.roots.get(&v).cloned()),
        Role::Timestamp => Some(p.timestamp.clone()),
        Role::Snapshot => Some(p.snapshot.clone()),
        Role::Targets => Some(p.targets.clone()),
        Role::Delegated(name) => p.delegated.get(name).cloned(),
    }
}

/// `served` (the bytes as the Image repository serves them) written to
/// `path` and verified as the image `name` for ECU `serial` (hardware ID
/// `hw`); `custom` is the Director's custom object for the target (its
/// `ecuIdentifiers` default to this ECU; `releaseCounter`, `encryption` as
/// the test needs).
pub fn verified_image(
    path: &Path,
    name: &str,
    served: &[u8],
    serial: &str,
    hw: &str,
    custom: Value,
) -> VerifiedImage<PathBuf> {
    let now = Timestamp::from_unix(1_800_000_000);
    let mut custom = custom;
    if custom.get("ecuIdentifiers").is_none() {
        custom["ecuIdentifiers"] = json!({ serial: { "hardwareId": hw } });
    }
    let mut image_repo = RepoBuilder::new(now);
    image_repo.add_target(name, served, None);
    let mut director = RepoBuilder::new(now);
    director.add_target(name, served, Some(custom));
    director
        .targets_extra
        .insert("custom".into(), json!({ "vin": VIN }));
    let (d, i) = (director.publish().unwrap(), image_repo.publish().unwrap());
    let vehicle = Vehicle::new(
        VIN,
        serial,
        [EcuInfo {
            serial: serial.into(),
            hardware_id: hw.into(),
            installed: None,
        }],
    );
    let mut client = UpdateClient::primary(vehicle, &d.root, &i.root, now).unwrap();
    let decision = drive(
        &mut client,
        |r| match r.repo {
            secureev_uptane::client::Repo::Director => answer(&d, r),
            secureev_uptane::client::Repo::Image => answer(&i, r),
        },
        |_, _| None,
        |_, _, _, _| {},
    )
    .unwrap();
    let Decision::Plan(plan) = decision else {
        panic!("no plan: {decision:?}")
    };
    let target = &plan.targets()[0];
    // A file that already holds the bytes is left alone (a RAUC bundle may
    // be in use).
    if std::fs::read(path).ok().as_deref() != Some(served) {
        std::fs::write(path, served).unwrap();
    }
    let mut v = target.image_verifier().unwrap();
    v.update(served).unwrap();
    v.finish(path.to_path_buf()).unwrap()
}
