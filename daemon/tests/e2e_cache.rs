//! Cache hygiene end to end (issue 11: "an update replaced by a newer
//! assignment before consent blocks every later update for good ('… more
//! bytes needed but the storage budget leaves only …')"): the real
//! `secureev-otad` with `policy = "consent"` and a storage budget that holds
//! one image, not two. The first update is downloaded and waits for consent;
//! the Director replaces it; the next cycle removes the unused image before
//! its storage check, downloads the new one, and the consented install
//! installs it.
#![allow(clippy::unwrap_used)]

mod e2e_common;

use e2e_common::*;
use secureev_dbus::ErrorCode;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
const FACTORY: &[u8] = b"factory image";
const IMAGE_LEN: usize = 256 * 1024;
/// One image and some, not two.
const BUDGET: usize = IMAGE_LEN * 3 / 2;

fn cache_files(vehicle: &Vehicle) -> Vec<PathBuf> {
    files_starting_with(&vehicle.dir.join("cache"), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_replaced_before_consent_does_not_block_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let mut repos = Repos::new();
    let target = dir.path().join("image.bin");
    std::fs::write(&target, FACTORY).unwrap();
    let mut vehicle = Vehicle::new(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::File(target.clone()),
        "",
    );
    let drop_in = vehicle.dir.join("otad.toml.d");
    std::fs::create_dir_all(&drop_in).unwrap();
    std::fs::write(
        drop_in.join("50-consent.toml"),
        format!("[install]\npolicy = \"consent\"\n[state]\nstorage_budget_bytes = {BUDGET}\n"),
    )
    .unwrap();

    let v2 = image_bytes(IMAGE_LEN, 2);
    repos.release("hu/fw-2.img", &v2, 2);
    let files = repos.publish(&[("hu/fw-2.img", &v2)]);
    let v2_path = repos.path_of("hu/fw-2.img");
    let (code, message) = vehicle
        .start_then_check(&backend, files, CHECK_TIMEOUT)
        .await;
    assert_eq!(code, ErrorCode::Ok.as_u32(), "{message}\n{}", vehicle.log());
    let proxy = vehicle.proxy().await;
    let first = proxy.pending_update_id().await.unwrap();
    assert!(!first.is_empty(), "{message}");
    assert_eq!(std::fs::read(&target).unwrap(), FACTORY);
    assert_eq!(backend.requests_for(&v2_path).len(), 1);
    let cached = cache_files(&vehicle);
    assert_eq!(cached.len(), 1, "{cached:?}");

    // Replaced before consent: v2 no longer assigned, v3 is.
    let v3 = image_bytes(IMAGE_LEN, 3);
    repos.director.targets.clear();
    repos.release("hu/fw-3.img", &v3, 3);
    let files = repos.publish(&[("hu/fw-2.img", &v2), ("hu/fw-3.img", &v3)]);
    backend.set_files(files);
    let (code, message) = vehicle.check(CHECK_TIMEOUT).await;
    assert_eq!(code, ErrorCode::Ok.as_u32(), "{message}\n{}", vehicle.log());
    let second = proxy.pending_update_id().await.unwrap();
    assert!(
        !second.is_empty() && second != first,
        "{first} then {second}"
    );
    assert_eq!(backend.requests_for(&repos.path_of("hu/fw-3.img")).len(), 1);
    // Only v3 left in the cache: v2's bytes were removed before the storage
    // check, which would otherwise have refused v3.
    let cached = cache_files(&vehicle);
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(std::fs::read(&cached[0]).unwrap(), v3);

    // The stale update cannot be installed; the shown one can.
    let stale = proxy.install(&first, HashMap::new()).await.unwrap_err();
    assert_eq!(stale.code(), ErrorCode::NoSuchUpdate, "{stale}");
    let mut completed = proxy.receive_completed().await.unwrap();
    proxy.install(&second, HashMap::new()).await.unwrap();
    let signal = tokio::time::timeout(CHECK_TIMEOUT, futures_util::StreamExt::next(&mut completed))
        .await
        .unwrap_or_else(|_| panic!("no Completed:\n{}", vehicle.log()))
        .unwrap();
    let args = signal.args().unwrap();
    assert_eq!(args.code, 0, "{}\n{}", args.message, vehicle.log());
    assert_eq!(std::fs::read(&target).unwrap(), v3);
    // v2 was downloaded once, never again.
    assert_eq!(backend.requests_for(&v2_path).len(), 1);
}
