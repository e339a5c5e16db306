//! Issue 11, end to end: a full disk is `29 insufficient-storage`, loses
//! nothing, and the update completes once space returns. The real
//! `secureev-otad` on a private bus against the in-test TLS backend
//! (`e2e_common`), with its cache and state directories on small tmpfs
//! mounts that the test fills up at an observed point:
//!
//! - the cache file system fills up mid-download: code 29 over D-Bus, the
//!   part file kept; with the filler gone the download resumes with a
//!   `Range` request from the kept bytes and installs;
//! - the state file system fills up while the installer runs (the
//!   installed version cannot be recorded): code 29, the install journal
//!   kept, and the next check settles it and installs, with no restart;
//! - the `command` installer runs out of space on its own target and says
//!   so with exit status 28: code 29; after a remount with more room the
//!   update installs.
//!
//! Mounting needs root (CI runs as root). Without it each test prints
//! `SKIPPED` and passes, unless `SECUREEV_REQUIRE_ROOT=1`.
#![allow(clippy::unwrap_used)]

mod e2e_common;

use e2e_common::*;
use futures_util::StreamExt;
use secureev_dbus::ErrorCode;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NAME: &str = "hu/rootfs-2.img";
const FACTORY: &[u8] = b"factory image";
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// A tmpfs of `size` mounted on `dir` for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount one, or `None` when not root (and root is not required).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !rustix::process::geteuid().is_root() {
            assert!(
                std::env::var_os("SECUREEV_REQUIRE_ROOT").is_none(),
                "SECUREEV_REQUIRE_ROOT is set but the test does not run as root"
            );
            eprintln!("SKIPPED: mounting tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Some(Tmpfs(dir.to_owned()))
    }

    /// Give it `size` from now on.
    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {}", self.0.display());
    }

    /// Fill what is left with a file in `fill/` (a directory, so that the
    /// daemon's cache accounting and pruning leave it alone); its path.
    fn fill(&self) -> PathBuf {
        let dir = self.0.join("fill");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("blob");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // The last partial page too.
        while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
        f.sync_all().ok();
        let free = secureev_daemon::fetch::download::free_space(&self.0).unwrap();
        assert!(
            free < 4096,
            "{} still has {free} bytes free",
            self.0.display()
        );
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fields drop in order: the daemon first, then the mounts, the directory last.
struct Rig {
    vehicle: Vehicle,
    cache: Tmpfs,
    state: Tmpfs,
    backend: Backend,
    repos: Repos,
    dir: tempfile::TempDir,
}

/// The vehicle with its cache (`cache_size`) and state (`state_size`) on
/// tmpfs mounts, started against the closed backend.
async fn rig(install: impl FnOnce(&Path) -> InstallMode, sizes: (&str, &str)) -> Option<Rig> {
    let dir = tempfile::tempdir().unwrap();
    let vdir = dir.path().join("vehicle");
    let cache = Tmpfs::mount(&vdir.join("cache"), sizes.0)?;
    let state = Tmpfs::mount(&vdir.join("state"), sizes.1)?;
    let backend = Backend::start().await;
    backend.set_open(false);
    let repos = Repos::new();
    let mode = install(dir.path());
    let mut vehicle = Vehicle::new(&vdir, &backend, &repos, &mode, "");
    vehicle.start().await;
    vehicle.settle_closed().await;
    Some(Rig {
        vehicle,
        cache,
        state,
        backend,
        repos,
        dir,
    })
}

/// Trigger a check, run `during` (which waits for its own moment), and
/// return the `Completed` of that check.
async fn check_while(v: &Vehicle, during: impl std::future::Future<Output = ()>) -> (u32, String) {
    let proxy = v.proxy().await;
    let mut completed = proxy.receive_completed().await.unwrap();
    proxy.check_for_updates(HashMap::new()).await.unwrap();
    during.await;
    loop {
        let signal = tokio::time::timeout(CHECK_TIMEOUT, completed.next())
            .await
            .unwrap_or_else(|_| panic!("no Completed:\n{}", v.log()))
            .unwrap();
        let args = signal.args().unwrap();
        if args.code == ErrorCode::Network.as_u32() && args.message.contains("503") {
            continue;
        }
        return (args.code, args.message.to_owned());
    }
}

fn part_len(cache: &Path, image: &[u8]) -> u64 {
    std::fs::metadata(cache.join(format!("{}.part", sha256_hex(image))))
        .map(|m| m.len())
        .unwrap_or(0)
}

async fn assert_state(v: &Vehicle, state: &str, code: ErrorCode) {
    let (s, c, m) = v.status().await;
    assert_eq!((s.as_str(), c), (state, code.as_u32()), "{m}\n{}", v.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_full_mid_download_is_29_keeps_the_part_and_resumes_when_space_returns() {
    let Some(r) = rig(
        |d| {
            std::fs::write(d.join("image.bin"), FACTORY).unwrap();
            InstallMode::File(d.join("image.bin"))
        },
        ("4m", "4m"),
    )
    .await
    else {
        return;
    };
    let target = r.dir.path().join("image.bin");
    let mut repos = r.repos;
    let image = image_bytes(1024 * 1024, 31);
    repos.release(NAME, &image, 1);
    let path = repos.path_of(NAME);
    let mut files = repos.publish(&[(NAME, &image)]);
    files.get_mut(&path).unwrap().pace = Some(Pace {
        chunk: 16 * 1024,
        every: Duration::from_millis(10),
    });
    r.backend.set_files(files);
    r.backend.set_open(true);

    let cache = r.vehicle.dir.join("cache");
    let quarter = image.len() as u64 / 4;
    let mut filler = None;
    let (code, message) = check_while(&r.vehicle, async {
        poll(
            "a quarter of the image on disk",
            CHECK_TIMEOUT,
            Duration::from_millis(2),
            || (part_len(&cache, &image) >= quarter).then_some(()),
        )
        .await;
        filler = Some(r.cache.fill());
    })
    .await;
    assert_eq!(
        code,
        ErrorCode::InsufficientStorage.as_u32(),
        "{message}\n{}",
        r.vehicle.log()
    );
    assert!(message.contains(".part"), "{message}");
    assert_state(&r.vehicle, "error", ErrorCode::InsufficientStorage).await;
    // Nothing lost: the verified bytes stay for the resume, the old image
    // is in place, nothing was reported installed.
    let kept = part_len(&cache, &image);
    assert!(kept >= quarter && kept < image.len() as u64, "kept {kept}");
    assert_eq!(std::fs::read(&target).unwrap(), FACTORY);
    assert!(install_results(&r.backend.manifests()).is_empty());

    // Space returns: the download resumes from the kept bytes and installs.
    std::fs::remove_file(filler.unwrap()).unwrap();
    r.backend.set_pace(&path, None);
    let (code, message) = r.vehicle.check(CHECK_TIMEOUT).await;
    assert_eq!(code, 0, "{message}\n{}", r.vehicle.log());
    assert!(message.contains("installed on"), "{message}");
    assert_eq!(std::fs::read(&target).unwrap(), image);
    let fetches: Vec<Option<u64>> = r
        .backend
        .requests_for(&path)
        .iter()
        .map(|l| l.range_from)
        .collect();
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    assert_eq!(fetches[0], None);
    assert!(
        fetches[1].is_some_and(|f| f > 0 && f <= kept),
        "{fetches:?}, kept {kept}"
    );
    let results = install_results(&r.backend.manifests());
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["success"], true, "{results:?}");
    assert_state(&r.vehicle, "idle", ErrorCode::Ok).await;
}

/// An installer command that logs each start, waits (when `<dir>/gate`, a
/// FIFO, exists) until the test writes a line to it, then installs by
/// copying the image beside its target and renaming it.
fn gated_installer(dir: &Path) -> PathBuf {
    let script = dir.join("install-image.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
set -e
d="{d}"
echo "start" >> "$d/installer.log"
if [ -p "$d/gate" ]; then read line < "$d/gate"; fi
cp "$1" "$d/installed.tmp"
mv "$d/installed.tmp" "$d/installed.img"
echo "done" >> "$d/installer.log"
"#,
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn installer_runs(dir: &Path) -> (usize, usize) {
    let log = std::fs::read_to_string(dir.join("installer.log")).unwrap_or_default();
    (
        log.lines().filter(|l| *l == "start").count(),
        log.lines().filter(|l| *l == "done").count(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_full_mid_install_is_29_and_the_next_check_settles_and_installs() {
    let Some(r) = rig(|d| InstallMode::Command(gated_installer(d)), ("4m", "4m")).await else {
        return;
    };
    let root = r.dir.path().to_owned();
    let gate = root.join("gate");
    let made = Command::new("mkfifo").arg(&gate).status().unwrap();
    assert!(made.success());
    let mut repos = r.repos;
    let image = image_bytes(256 * 1024, 32);
    repos.release(NAME, &image, 1);
    r.backend.set_files(repos.publish(&[(NAME, &image)]));
    r.backend.set_open(true);

    let mut filler = None;
    let (code, message) = check_while(&r.vehicle, async {
        poll(
            "the installer to start",
            CHECK_TIMEOUT,
            Duration::from_millis(5),
            || (installer_runs(&root).0 == 1).then_some(()),
        )
        .await;
        // The journal is on disk; now the state file system fills up, and
        // the installer is let go.
        filler = Some(r.state.fill());
        let gate = gate.clone();
        tokio::task::spawn_blocking(move || std::fs::write(gate, "go\n").unwrap())
            .await
            .unwrap();
    })
    .await;
    assert_eq!(
        code,
        ErrorCode::InsufficientStorage.as_u32(),
        "{message}\n{}",
        r.vehicle.log()
    );
    assert!(message.contains("installed.json"), "{message}");
    assert_eq!(installer_runs(&root), (1, 1));
    assert_state(&r.vehicle, "error", ErrorCode::InsufficientStorage).await;
    // Nothing lost: the journal still says an install was under way, the
    // verified image is still cached, the state files still load.
    let store = secureev_daemon::store::Store::open(r.vehicle.dir.join("state")).unwrap();
    assert_eq!(store.journal().unwrap().unwrap().facts.name, NAME);
    assert!(!store.installed().unwrap().contains_key(HU));
    assert!(r
        .vehicle
        .dir
        .join("cache")
        .join(sha256_hex(&image))
        .exists());
    drop(store);

    // Space returns: no restart, the next check settles the journal (a
    // command cannot tell whether it finished: run again, as documented)
    // and records the install.
    std::fs::remove_file(filler.unwrap()).unwrap();
    std::fs::remove_file(&gate).unwrap();
    let (code, message) = r.vehicle.check(CHECK_TIMEOUT).await;
    assert_eq!(code, 0, "{message}\n{}", r.vehicle.log());
    assert!(message.contains("installed on"), "{message}");
    assert_eq!(installer_runs(&root), (2, 2));
    assert_eq!(std::fs::read(root.join("installed.img")).unwrap(), image);
    let store = secureev_daemon::store::Store::open(r.vehicle.dir.join("state")).unwrap();
    assert!(store.journal().unwrap().is_none());
    assert_eq!(store.installed().unwrap()[HU].name(), NAME);
    let results = install_results(&r.backend.manifests());
    assert_eq!(results.last().unwrap()["success"], true, "{results:?}");
    // Downloaded once: the verified image was kept across the failure.
    assert_eq!(r.backend.requests_for(&repos.path_of(NAME)).len(), 1);
    assert_state(&r.vehicle, "idle", ErrorCode::Ok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_installer_out_of_space_is_29_and_installs_after_a_remount() {
    let dir = tempfile::tempdir().unwrap();
    // The installer's own target file system: too small for the image.
    let Some(slot) = Tmpfs::mount(&dir.path().join("slot"), "256k") else {
        return;
    };
    let script = dir.path().join("install-image.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
s="{s}"
if ! cp "$1" "$s/new.img"; then rm -f "$s/new.img"; exit 28; fi
mv "$s/new.img" "$s/installed.img"
"#,
            s = slot.0.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let backend = Backend::start().await;
    backend.set_open(false);
    let mut repos = Repos::new();
    let image = image_bytes(1024 * 1024, 33);
    repos.release(NAME, &image, 1);
    let mut vehicle = Vehicle::new(
        &dir.path().join("vehicle"),
        &backend,
        &repos,
        &InstallMode::Command(script),
        "",
    );
    let (code, message) = vehicle
        .start_then_check(&backend, repos.publish(&[(NAME, &image)]), CHECK_TIMEOUT)
        .await;
    assert_eq!(
        code,
        ErrorCode::InsufficientStorage.as_u32(),
        "{message}\n{}",
        vehicle.log()
    );
    assert!(
        message.contains("out of space") && message.contains("exited with 28"),
        "{message}"
    );
    assert!(!slot.0.join("installed.img").exists());
    assert_state(&vehicle, "error", ErrorCode::InsufficientStorage).await;
    let results = install_results(&backend.manifests());
    assert_eq!(results.last().unwrap()["success"], false, "{results:?}");

    slot.resize("4m");
    let (code, message) = vehicle.check(CHECK_TIMEOUT).await;
    assert_eq!(code, 0, "{message}\n{}", vehicle.log());
    assert_eq!(std::fs::read(slot.0.join("installed.img")).unwrap(), image);
    assert_eq!(backend.requests_for(&repos.path_of(NAME)).len(), 1);
    // The daemon ends before the mount goes.
    drop(vehicle);
    drop(slot);
}
