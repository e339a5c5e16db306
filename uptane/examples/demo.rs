//! The SecureEV-OTA verification demo: a complete Uptane update in memory.
//!
//! Run with `cargo run --release -p secureev-uptane --example demo`.
//!
//! An OEM publishes two images in the Image repository (a head-unit root file
//! system and an encrypted battery-management firmware); the Director assigns them
//! to one vehicle, wrapping the firmware's content key for the BMS ECU. The
//! Primary performs Uptane full verification of both repositories, checks each
//! image while "downloading" it, decrypts the BMS image with the ECU's X25519 key,
//! and reports a signed vehicle version manifest that the backend verifies. Then
//! three attacks are shown being refused by name.

use secureev_uptane::builder::{resign, Published, RepoBuilder};
use secureev_uptane::client::{drive, Decision, Repo, Role, UpdateClient};
use secureev_uptane::custom::{EcuIdentifier, TargetCustom};
use secureev_uptane::encryption::{encrypt_image, ContentKey, EcuDecryptionKey, StreamDecryptor};
use secureev_uptane::manifest::{
    sign_ecu_report, sign_manifest, verify_manifest, EcuVersionReport, InstalledImage,
    VehicleManifest,
};
use secureev_uptane::uptane::{EcuInfo, UpdatePlan, Vehicle};
use secureev_uptane::{did, Error, SigningKey, Timestamp, Verified};
use std::collections::BTreeMap;
use std::time::Instant;

const VIN: &str = "WSEV0000000000001";
const HU: (&str, &str) = ("HU-0001", "secureev-hu-imx8");
const BMS: (&str, &str) = ("BMS-0042", "secureev-bms-s32k");

struct World {
    now: Timestamp,
    image: Published,
    director_builder: RepoBuilder,
    director: Published,
    images: BTreeMap<String, Vec<u8>>,
    bms_plain: Vec<u8>,
    bms_x25519: EcuDecryptionKey,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let now = Timestamp::from_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64,
    );
    println!("SecureEV-OTA verification demo (now = {now})\n");
    let world = build_world(now)?;

    println!("== Primary: Uptane 2.1 full verification ==");
    let vehicle = vehicle();
    let started = Instant::now();
    let plan = verify(&world, &world.director, &world.image, &vehicle)?;
    println!(
        "  verified Director + Image repository (8 roles) in {:.2} ms; {} image(s) to install",
        started.elapsed().as_secs_f64() * 1e3,
        plan.targets().len()
    );

    let ecu_keys: BTreeMap<&str, SigningKey> = [
        (HU.0, SigningKey::generate_p256()),
        (BMS.0, SigningKey::generate_p256()),
    ]
    .into();
    let mut reports = Vec::new();
    for t in plan.targets() {
        let served = &world.images[t.name()];
        let mut v = t.stream_verifier()?;
        for chunk in served.chunks(16 * 1024) {
            v.update(chunk)?;
        }
        v.finish()?;
        let custom = &t.assignment().custom;
        let installed_bytes = if let Some(enc) = &custom.encryption {
            let info = secureev_uptane::encryption::EncryptionInfo::from_value(t.name(), enc)?;
            let key = info.unwrap_key_for(t.name(), t.ecu_serial(), &world.bms_x25519)?;
            let mut dec = StreamDecryptor::new(t.name(), &key, &info)?;
            let mut plain = Vec::new();
            for chunk in served.chunks(7_000) {
                dec.update(chunk, &mut plain)?;
            }
            dec.finish()?;
            assert_eq!(plain, world.bms_plain);
            println!(
                "  {} -> {}: {} bytes verified, decrypted with the ECU's X25519 key ({} bytes, plaintext hash checked)",
                t.name(),
                t.ecu_serial(),
                served.len(),
                plain.len()
            );
            plain
        } else {
            println!(
                "  {} -> {}: {} bytes verified (sha256 + sha512, length)",
                t.name(),
                t.ecu_serial(),
                served.len()
            );
            served.clone()
        };
        let _ = installed_bytes;
        let image = InstalledImage::new(
            t.name(),
            t.length(),
            t.assignment().director_target.hashes.clone(),
        )
        .with_release_counter(t.release_counter());
        let report = EcuVersionReport::new(t.ecu_serial(), &t.assignment().hardware_id, now, 1)
            .with_installed_image(image);
        reports.push(sign_ecu_report(&report, &ecu_keys[t.ecu_serial()])?);
    }

    println!("\n== Primary -> backend: signed vehicle version manifest ==");
    let mut manifest = VehicleManifest::new(VIN, HU.0, 1);
    for r in reports {
        manifest.add_report(r)?;
    }
    let bytes = serde_json::to_vec(&sign_manifest(&manifest, &ecu_keys[HU.0])?)?;
    let verified = verify_manifest(&bytes, &ecu_keys[HU.0].verifying_key(), |serial| {
        ecu_keys.get(serial).map(SigningKey::verifying_key)
    })?;
    println!(
        "  backend verified the manifest of {} with {} ECU report(s); primary key {}",
        verified.vin(),
        verified.reports().len(),
        did::to_did(&ecu_keys[HU.0].verifying_key())
    );

    println!("\n== Attacks, each refused by name ==");
    attack("tampered image (arbitrary software)", || {
        let mut w = world.images.clone();
        if let Some(img) = w.get_mut("hu-rootfs-2.4.0.img") {
            img[100] ^= 1;
        }
        let plan = verify(&world, &world.director, &world.image, &vehicle)?;
        for t in plan.targets() {
            let mut v = t.stream_verifier()?;
            v.update(&w[t.name()])?;
            v.finish()?;
        }
        Ok(())
    });
    attack("director targets rolled back to an older version", || {
        // The vehicle already trusts a newer Director state; a man in the
        // middle replays the older one.
        let newer = world.director_builder.clone().publish()?;
        let stored = (Repo::Director, Role::Timestamp, newer.timestamp);
        verify_with(
            &world,
            &world.director,
            &world.image,
            &vehicle,
            Some(stored),
        )
        .map(|_| ())
    });
    attack("image for another hardware ID", || {
        let mut v = vehicle.clone();
        if let Some(e) = v.ecus.get_mut(BMS.0) {
            e.hardware_id = "secureev-bms-other".into();
        }
        verify(&world, &world.director, &world.image, &v).map(|_| ())
    });
    attack("director timestamp signed by an attacker's key", || {
        let forged = resign(
            &world.director.timestamp,
            &[&SigningKey::generate_p256()],
            |_| {},
        )?;
        let mut bad = world.director.clone();
        bad.timestamp = forged;
        verify(&world, &bad, &world.image, &vehicle).map(|_| ())
    });
    println!("\nDone: 2 images verified and installed, manifest accepted, 4 attacks refused.");
    Ok(())
}

fn attack(name: &str, f: impl FnOnce() -> Result<(), Error>) {
    match f() {
        Ok(()) => {
            println!("  !! {name}: NOT refused");
            std::process::exit(1);
        }
        Err(e) => println!(
            "  {name}: refused [{}] {e}",
            e.attack().map(|a| a.as_str()).unwrap_or("error")
        ),
    }
}

fn vehicle() -> Vehicle {
    Vehicle::new(
        VIN,
        HU.0,
        [HU, BMS].map(|(serial, hw)| EcuInfo {
            serial: serial.into(),
            hardware_id: hw.into(),
            installed: None,
        }),
    )
}

fn build_world(now: Timestamp) -> Result<World, Error> {
    println!("== OEM: Image repository ==");
    let mut image = RepoBuilder::new(now);
    let hu_image: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let bms_plain: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 253) as u8).collect();
    let content_key = ContentKey::generate();
    let (bms_encrypted, mut enc) = encrypt_image(&content_key, &bms_plain, 64 * 1024)?;
    let hw = |h: &str, rc: u64| TargetCustom {
        hardware_ids: vec![h.into()],
        release_counter: Some(rc),
        ..Default::default()
    };
    image.add_target(
        "hu-rootfs-2.4.0.img",
        &hu_image,
        Some(hw(HU.1, 24).to_value()),
    );
    image.add_target(
        "bms-fw-1.9.2.bin",
        &bms_encrypted,
        Some(hw(BMS.1, 7).to_value()),
    );
    let image_out = image.publish()?;
    println!(
        "  published 2 targets ({} KiB head-unit image, {} KiB encrypted BMS firmware), ECDSA P-256 keys",
        hu_image.len() / 1024,
        bms_encrypted.len() / 1024
    );

    println!("== Director: assignments for {VIN} ==");
    let bms_x25519 = EcuDecryptionKey::generate();
    enc.wrap_key_for(
        "bms-fw-1.9.2.bin",
        BMS.0,
        &content_key,
        &bms_x25519.public(),
    )?;
    let mut director = RepoBuilder::new(now);
    for (name, (serial, hwid), rc, encryption) in [
        ("hu-rootfs-2.4.0.img", HU, 24, None),
        (
            "bms-fw-1.9.2.bin",
            BMS,
            7,
            Some(serde_json::to_value(&enc).map_err(|e| Error::Canonical(e.to_string()))?),
        ),
    ] {
        let mut t = image.targets[name].clone();
        let mut ids = BTreeMap::new();
        ids.insert(
            serial.to_owned(),
            EcuIdentifier {
                hardware_id: hwid.to_owned(),
                unrecognized: Default::default(),
            },
        );
        t.custom = Some(
            TargetCustom {
                ecu_identifiers: ids,
                release_counter: Some(rc),
                encryption,
                ..Default::default()
            }
            .to_value(),
        );
        director.targets.insert(name.to_owned(), t);
    }
    director
        .targets_extra
        .insert("custom".into(), serde_json::json!({ "vin": VIN }));
    let director_out = director.publish()?;
    println!("  assigned hu-rootfs-2.4.0.img -> {}, bms-fw-1.9.2.bin -> {} (content key wrapped for the ECU)\n", HU.0, BMS.0);

    let images = [
        ("hu-rootfs-2.4.0.img".to_owned(), hu_image),
        ("bms-fw-1.9.2.bin".to_owned(), bms_encrypted),
    ]
    .into();
    Ok(World {
        now,
        image: image_out,
        director_builder: director,
        director: director_out,
        images,
        bms_plain,
        bms_x25519,
    })
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

fn verify(
    world: &World,
    director: &Published,
    image: &Published,
    vehicle: &Vehicle,
) -> Result<UpdatePlan, Error> {
    verify_with(world, director, image, vehicle, None)
}

/// Full verification through the core's update client, as the daemon runs
/// it; `stored` is a role the vehicle kept from an earlier cycle.
fn verify_with(
    world: &World,
    director: &Published,
    image: &Published,
    vehicle: &Vehicle,
    stored: Option<(Repo, Role, Vec<u8>)>,
) -> Result<UpdatePlan, Error> {
    let mut client = UpdateClient::primary(vehicle.clone(), &director.root, &image.root, world.now)
        .map_err(|f| f.into_error())?;
    let decision = drive(
        &mut client,
        |req| match req.repo {
            Repo::Director => serve(director, &req.role, req.version),
            Repo::Image => serve(image, &req.role, req.version),
        },
        |repo, role| match &stored {
            Some((r, s, bytes)) if *r == repo && s == role => Some(bytes.clone()),
            _ => None,
        },
        |_, _, _, _| {},
    )
    .map_err(|f| f.into_error())?;
    match decision {
        Decision::Plan(plan) => Ok(Verified::value(&plan).clone()),
        other => Err(Error::Workflow(format!("unexpected decision {other:?}"))),
    }
}
