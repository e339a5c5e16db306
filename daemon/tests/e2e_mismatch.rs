//! `33 metadata-mismatch` versus `27 target-mismatch`, and `32 wrong-ecu`,
//! end to end (issue 11):
//! the real `secureev-otad` on a private bus against the in-test TLS backend
//! (`e2e_common`). The code comes from the kind the core puts in its
//! `HashMismatch`/`LengthMismatch` errors where it checks the bytes
//! (`secureev_uptane::Checked`), not from the shape of a file name: the old
//! name heuristic called a tampered target named `settings.json` a metadata
//! mismatch.
//!
//! Each test tampers with one file keeping its length (one hex digit of a
//! signature, one byte of an image), so only the signed hashes can tell; then
//! the honest files install, so each refusal is shown to be about the
//! tampered file alone.
#![allow(clippy::unwrap_used)]

mod e2e_common;

use e2e_common::*;
use secureev_dbus::ErrorCode;
use std::sync::Arc;
use std::time::Duration;

const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
const FACTORY: &[u8] = b"factory image, release counter 0";

struct Scenario {
    _dir: tempfile::TempDir,
    backend: Backend,
    repos: Repos,
    vehicle: Vehicle,
    target: std::path::PathBuf,
}

async fn scenario() -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let repos = Repos::new();
    let installed = dir.path().join("installed");
    std::fs::create_dir_all(&installed).unwrap();
    let target = installed.join("image.bin");
    std::fs::write(&target, FACTORY).unwrap();
    let vehicle = Vehicle::new(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(target.clone()),
        "",
    );
    Scenario {
        _dir: dir,
        backend,
        repos,
        vehicle,
        target,
    }
}

/// `bytes` with one hex digit of the first signature changed: same length,
/// still JSON, another hash.
fn flip_signature_digit(bytes: &[u8]) -> Vec<u8> {
    let key = bytes
        .windows(5)
        .position(|w| w == b"\"sig\"")
        .expect("a signature")
        + 5;
    // The first digit of the value (after `:`, any spaces and `"`).
    let at = key
        + bytes[key..]
            .iter()
            .position(|&b| b == b'"')
            .expect("the signature's value")
        + 1;
    let mut out = bytes.to_vec();
    out[at] = if out[at] == b'0' { b'1' } else { b'0' };
    out
}

/// `files` with the one file whose path ends in `suffix` replaced by `f` of it.
fn tamper(files: &Files, suffix: &str, f: impl Fn(&[u8]) -> Vec<u8>) -> Files {
    let mut out = files.clone();
    let paths: Vec<String> = out
        .keys()
        .filter(|p| p.ends_with(suffix))
        .cloned()
        .collect();
    assert_eq!(paths.len(), 1, "{suffix}: {paths:?}");
    let served = out.get_mut(&paths[0]).unwrap();
    let new = f(&served.body);
    assert_eq!(new.len(), served.body.len());
    assert_ne!(new, *served.body);
    served.body = Arc::new(new);
    out
}

impl Scenario {
    /// The check ended with `code`, `LastErrorCode` says the same, nothing
    /// was installed, and the manifest names the arbitrary-software attack.
    async fn assert_refused(&self, completed: &(u32, String), code: ErrorCode, about: &str) {
        assert_eq!(
            completed.0,
            code.as_u32(),
            "Completed({}, {}), expected {code:?}\n{}",
            completed.0,
            completed.1,
            self.vehicle.log()
        );
        assert!(completed.1.contains(about), "{}", completed.1);
        let (_, last_code, _) = self.vehicle.status().await;
        assert_eq!(last_code, code.as_u32());
        assert_eq!(std::fs::read(&self.target).unwrap(), FACTORY);
        let manifests = self.backend.manifests();
        let last = manifests.last().expect("a manifest reporting the attack");
        assert!(
            attacks_detected(last)
                .split(',')
                .any(|a| a.trim() == "arbitrary-software"),
            "{last:#}"
        );
    }

    /// The honest files install (code 0, the image in place).
    async fn assert_honest_installs(&self, files: Files, image: &[u8]) {
        self.backend.set_files(files);
        let (code, message) = self.vehicle.check(CHECK_TIMEOUT).await;
        assert_eq!(code, 0, "{message}\n{}", self.vehicle.log());
        assert_eq!(std::fs::read(&self.target).unwrap(), image);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_director_snapshot_is_a_metadata_mismatch() {
    let mut s = scenario().await;
    let image = image_bytes(32 * 1024, 71);
    s.repos.release("hu/fw-2.img", &image, 2);
    let files = s.repos.publish(&[("hu/fw-2.img", &image)]);
    let bad = tamper(
        &files,
        &format!("/director/{VIN}/1.snapshot.json"),
        flip_signature_digit,
    );
    let completed = s
        .vehicle
        .start_then_check(&s.backend, bad, CHECK_TIMEOUT)
        .await;
    s.assert_refused(&completed, ErrorCode::MetadataMismatch, "snapshot")
        .await;
    s.assert_honest_installs(files, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_image_repository_targets_is_a_metadata_mismatch() {
    let mut s = scenario().await;
    let image = image_bytes(32 * 1024, 72);
    s.repos.release("hu/fw-2.img", &image, 2);
    let files = s.repos.publish(&[("hu/fw-2.img", &image)]);
    let bad = tamper(&files, "/image/1.targets.json", flip_signature_digit);
    let completed = s
        .vehicle
        .start_then_check(&s.backend, bad, CHECK_TIMEOUT)
        .await;
    s.assert_refused(&completed, ErrorCode::MetadataMismatch, "targets")
        .await;
    s.assert_honest_installs(files, &image).await;
}

/// Regression for the name heuristic (`.json` without `/` = metadata): a
/// target called `settings.json` whose bytes were changed is an image
/// mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_target_named_like_metadata_is_a_target_mismatch() {
    let mut s = scenario().await;
    let image = image_bytes(32 * 1024, 73);
    s.repos.release("settings.json", &image, 2);
    let files = s.repos.publish(&[("settings.json", &image)]);
    let path = s.repos.path_of("settings.json");
    let bad = tamper(&files, &path, |b| {
        let mut b = b.to_vec();
        b[1000] ^= 0x01;
        b
    });
    let completed = s
        .vehicle
        .start_then_check(&s.backend, bad, CHECK_TIMEOUT)
        .await;
    s.assert_refused(&completed, ErrorCode::TargetMismatch, "settings.json")
        .await;
    s.assert_honest_installs(files, &image).await;
}

/// `32 wrong-ecu`, end to end: Director metadata for another vehicle (its
/// VIN in the signed targets) is refused as such, not as `28 wrong-hardware`
/// ("image meant for other hardware"), which it used to be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn director_metadata_for_another_vin_is_wrong_ecu() {
    let mut s = scenario().await;
    let image = image_bytes(32 * 1024, 74);
    s.repos.release("hu/fw-2.img", &image, 2);
    s.repos.director.targets_extra.insert(
        "custom".into(),
        serde_json::json!({ "vin": "WSEVOTHER00000002" }),
    );
    let bad = s.repos.publish(&[("hu/fw-2.img", &image)]);
    let completed = s
        .vehicle
        .start_then_check(&s.backend, bad, CHECK_TIMEOUT)
        .await;
    s.assert_wrong_ecu(&completed).await;
    s.repos
        .director
        .targets_extra
        .insert("custom".into(), serde_json::json!({ "vin": VIN }));
    let files = s.repos.publish(&[("hu/fw-2.img", &image)]);
    s.assert_honest_installs(files, &image).await;
}

/// `32 wrong-ecu`: the Director lists a target for an ECU serial this
/// vehicle does not have (Uptane 2.1 §5.4.4.6 (7)).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_for_an_ecu_the_vehicle_lacks_is_wrong_ecu() {
    let mut s = scenario().await;
    let image = image_bytes(32 * 1024, 75);
    s.repos.release("hu/fw-2.img", &image, 2);
    s.repos.director.add_target(
        "tcu/fw-9.img",
        &image,
        Some(serde_json::json!({
            "ecuIdentifiers": { "TCU-NOT-HERE": { "hardwareId": HW } },
            "releaseCounter": 9,
        })),
    );
    let bad = s.repos.publish(&[("hu/fw-2.img", &image)]);
    let completed = s
        .vehicle
        .start_then_check(&s.backend, bad, CHECK_TIMEOUT)
        .await;
    s.assert_wrong_ecu(&completed).await;
    assert!(completed.1.contains("TCU-NOT-HERE"), "{}", completed.1);
    s.repos.director.targets.remove("tcu/fw-9.img");
    let files = s.repos.publish(&[("hu/fw-2.img", &image)]);
    s.assert_honest_installs(files, &image).await;
}

impl Scenario {
    /// Refused with `32 wrong-ecu`, nothing installed, the manifest names
    /// the wrong-ecu attack.
    async fn assert_wrong_ecu(&self, completed: &(u32, String)) {
        assert_eq!(
            completed.0,
            ErrorCode::WrongEcu.as_u32(),
            "Completed({}, {})\n{}",
            completed.0,
            completed.1,
            self.vehicle.log()
        );
        let (_, last_code, _) = self.vehicle.status().await;
        assert_eq!(last_code, ErrorCode::WrongEcu.as_u32());
        assert_eq!(std::fs::read(&self.target).unwrap(), FACTORY);
        let manifests = self.backend.manifests();
        let last = manifests.last().expect("a manifest reporting the attack");
        assert!(
            attacks_detected(last)
                .split(',')
                .any(|a| a.trim() == "wrong-ecu"),
            "{last:#}"
        );
    }
}
