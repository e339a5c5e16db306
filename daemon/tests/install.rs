//! Installers, the install journal and the secondary transport trait.
// Test helpers outside #[test] functions unwrap too; clippy.toml's
// allow-unwrap-in-tests only covers the test functions themselves.
#![allow(clippy::unwrap_used)]

mod verified;

use futures_util::future::BoxFuture;
use secureev_daemon::ecus::{MetadataBundle, SecondaryInfo, SecondaryTransport};
use secureev_daemon::error::{Error, Result};
use secureev_daemon::fetch::download::Progress;
use secureev_daemon::install::JournalRecord;
use secureev_daemon::install::{
    install_image, recover, CommandInstaller, FileInstaller, FileTarget, InstallCheck,
    InstallOutcome, Installer, Recovery, TargetFacts, VerifiedFile,
};
use secureev_daemon::store::{InstalledRecord, Store};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn facts(image: &[u8], name: &str) -> TargetFacts {
    TargetFacts {
        name: name.into(),
        ecu_serial: "HU-1".into(),
        hardware_id: "hu-imx8".into(),
        release_counter: 7,
        length: image.len() as u64,
        sha256: sha256_hex(image),
    }
}

/// What the journal's recovery writes for `f`, as `installed.json` holds it.
fn record(f: &TargetFacts) -> InstalledRecord {
    serde_json::from_value(serde_json::json!({
        "name": f.name,
        "length": f.length,
        "hashes": {"sha256": f.sha256},
        "release_counter": f.release_counter,
        "installed_at": 1,
    }))
    .unwrap()
}

/// `bytes` in `dir/file`, verified as the target `name` for HU-1 (release
/// counter 7) through the core's client: the only thing installers take.
fn image(dir: &Path, file: &str, bytes: &[u8], name: &str) -> VerifiedFile {
    verified::verified_image(
        &dir.join(file),
        name,
        bytes,
        "HU-1",
        "hu-imx8",
        serde_json::json!({ "releaseCounter": 7 }),
    )
}

#[tokio::test]
async fn file_installer_replaces_a_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("installed.img");
    std::fs::write(&target, b"old").unwrap();
    let inst = FileInstaller::new(FileTarget::Single(target.clone()));
    let f = facts(b"new image", "fw-2");
    inst.install(&image(dir.path(), "cache", b"new image", "fw-2"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new image");
    assert_eq!(
        inst.check_installed(&f).await.unwrap(),
        InstallCheck::Installed
    );
    assert_eq!(
        inst.check_installed(&facts(b"other", "x")).await.unwrap(),
        InstallCheck::NotInstalled
    );
}

/// The head unit's own install is not 0 then 100: the `file` installer
/// reports the bytes written after every chunk, in order, up to the length.
#[tokio::test]
async fn file_installer_reports_the_bytes_it_has_written() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("installed.img");
    let bytes: Vec<u8> = (0..(1u32 << 20) + 123).map(|i| (i % 251) as u8).collect();
    let inst = FileInstaller::new(FileTarget::Single(target.clone()));
    let f = facts(&bytes, "fw-3");
    let seen = Mutex::new(Vec::new());
    let img = image(dir.path(), "cache", &bytes, "fw-3");
    assert_eq!(TargetFacts::of(&img).unwrap(), f);
    inst.install_with_progress(&img, &|p| {
        seen.lock().unwrap().push((p.bytes, p.percent));
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), bytes);
    let seen = seen.into_inner().unwrap();
    let total = bytes.len() as u64;
    assert!(seen.len() >= 16, "{} reports", seen.len());
    assert!(seen.iter().all(|(b, _)| b.is_some_and(|(_, t)| t == total)));
    let done: Vec<u64> = seen.iter().map(|(b, _)| b.unwrap().0).collect();
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
    assert!(done[0] > 0 && done[0] < total);
    assert_eq!(*done.last().unwrap(), total);
    assert_eq!(seen.last().unwrap().1, 100);
}

#[tokio::test]
async fn file_installer_refuses_an_image_changed_since_verification() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("installed.img");
    std::fs::write(&target, b"old").unwrap();
    let inst = FileInstaller::new(FileTarget::Single(target.clone()));
    let img = image(dir.path(), "cache", b"verified", "fw-2");
    // The cache file changed after it was verified.
    std::fs::write(img.location(), b"swapped!").unwrap();
    let err = inst.install(&img).await.unwrap_err();
    assert!(matches!(err, Error::Install { .. }), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "temporary file left behind"
    );
}

#[tokio::test]
async fn ab_slots_alternate_and_switch_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let slots = [dir.path().join("slot-a.img"), dir.path().join("slot-b.img")];
    let current = dir.path().join("current");
    let inst = FileInstaller::new(FileTarget::AbSlots {
        slots: slots.clone(),
        current: current.clone(),
    });
    assert_eq!(inst.active_slot(), None);

    let f1 = facts(b"image one", "fw-1");
    inst.install(&image(dir.path(), "c1", b"image one", "fw-1"))
        .await
        .unwrap();
    assert_eq!(inst.active_slot(), Some(0));
    assert_eq!(std::fs::read(&current).unwrap(), b"image one");

    let f2 = facts(b"image two", "fw-2");
    inst.install(&image(dir.path(), "c2", b"image two", "fw-2"))
        .await
        .unwrap();
    assert_eq!(inst.active_slot(), Some(1));
    assert_eq!(std::fs::read(&current).unwrap(), b"image two");
    // The previous image stays in the other slot for a fallback.
    assert_eq!(std::fs::read(&slots[0]).unwrap(), b"image one");
    assert_eq!(
        inst.check_installed(&f2).await.unwrap(),
        InstallCheck::Installed
    );
    assert_eq!(
        inst.check_installed(&f1).await.unwrap(),
        InstallCheck::NotInstalled
    );

    // A failed install leaves the active slot and the link alone.
    let bad = image(dir.path(), "c3", b"expected", "fw-3");
    std::fs::write(bad.location(), b"unexpected").unwrap();
    inst.install(&bad).await.unwrap_err();
    assert_eq!(inst.active_slot(), Some(1));
    assert_eq!(std::fs::read(&current).unwrap(), b"image two");
}

fn script(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("installer.sh");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[tokio::test]
async fn command_installer_passes_the_image_and_facts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    let prog = script(
        dir.path(),
        &format!(
            "echo \"$1|$2|$SECUREEV_TARGET|$SECUREEV_ECU|$SECUREEV_HARDWARE_ID|$SECUREEV_RELEASE_COUNTER|$SECUREEV_SHA256|$SECUREEV_LENGTH\" > {}",
            out.display()
        ),
    );
    let inst = CommandInstaller::new(&prog, vec!["--flag".into()]);
    let img = image(dir.path(), "cache", b"abc", "fw-9");
    let f = facts(b"abc", "fw-9");
    inst.install(&img).await.unwrap();
    let line = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        line.trim(),
        format!(
            "--flag|{}|fw-9|HU-1|hu-imx8|7|{}|3",
            img.location().display(),
            sha256_hex(b"abc")
        )
    );
    assert_eq!(
        inst.check_installed(&f).await.unwrap(),
        InstallCheck::Unknown
    );
}

#[tokio::test]
async fn command_failure_carries_the_stderr_tail() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "echo 'flash write failed at block 42' >&2; exit 3",
    );
    let err = CommandInstaller::new(&prog, vec![])
        .install(&image(dir.path(), "cache", b"abc", "fw"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("flash write failed at block 42") && msg.contains("exit status: 3"),
        "{msg}"
    );
    let err = CommandInstaller::new("/nonexistent/installer", vec![])
        .install(&image(dir.path(), "cache", b"abc", "fw"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot run"), "{err}");
}

/// The `command` installer's progress protocol: lines on
/// `$SECUREEV_PROGRESS_FD` reach the progress callback in order, malformed
/// ones are ignored, lines written just before the exit are not lost, and a
/// program that closes its stdout early still finishes.
#[tokio::test]
async fn command_installer_reports_the_progress_lines_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        r#"[ -n "$SECUREEV_PROGRESS_FD" ] || exit 9
# dash takes single-digit fds only: the pipe by its /proc name.
p=/proc/self/fd/$SECUREEV_PROGRESS_FD
echo "percent 10" > "$p"
echo "garbage here" > "$p"
echo "bytes 3 4" > "$p"
echo "percent 250" > "$p"
printf 'percent 100\n' > "$p"
exec >&-"#,
    );
    let seen = Mutex::new(Vec::new());
    CommandInstaller::new(&prog, vec![])
        .install_with_progress(&image(dir.path(), "cache", b"abc", "fw"), &|p| {
            seen.lock().unwrap().push((p.percent, p.bytes))
        })
        .await
        .unwrap();
    assert_eq!(
        seen.into_inner().unwrap(),
        [(10, None), (75, Some((3, 4))), (100, None)]
    );
    // The pipe's write end is not left open in the daemon: a second install
    // sees only its own lines.
    let seen = Mutex::new(Vec::new());
    let prog = script(
        dir.path(),
        r#"echo "percent 42" > /proc/self/fd/$SECUREEV_PROGRESS_FD; exit 3"#,
    );
    let err = CommandInstaller::new(&prog, vec![])
        .install_with_progress(&image(dir.path(), "cache", b"abc", "fw"), &|p| {
            seen.lock().unwrap().push(p.percent)
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exit status: 3"), "{err}");
    assert_eq!(seen.into_inner().unwrap(), [42]);
}

/// Counts installs; can be told to fail.
struct Counting {
    runs: AtomicU32,
    fail: bool,
    check: InstallCheck,
}

impl Installer for Counting {
    fn kind(&self) -> &'static str {
        "counting"
    }
    fn install<'a>(&'a self, image: &'a VerifiedFile) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let facts = TargetFacts::for_install(image)?;
            self.runs.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                Err(Error::Install {
                    target: facts.name.clone(),
                    ecu: facts.ecu_serial.clone(),
                    reason: "boom".into(),
                })
            } else {
                Ok(())
            }
        })
    }
    fn check_installed<'a>(
        &'a self,
        _facts: &'a TargetFacts,
    ) -> BoxFuture<'a, Result<InstallCheck>> {
        Box::pin(async move { Ok(self.check.clone()) })
    }
}

fn counting(fail: bool, check: InstallCheck) -> Counting {
    Counting {
        runs: AtomicU32::new(0),
        fail,
        check,
    }
}

#[tokio::test]
async fn journal_brackets_installs_and_never_installs_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state")).unwrap();
    let img = image(dir.path(), "cache", b"abc", "fw-1");
    let inst = counting(false, InstallCheck::Unknown);
    assert_eq!(
        install_image(&store, &inst, &img, 1).await.unwrap(),
        InstallOutcome::Installed
    );
    let installed = InstalledRecord::of(&img, 1);
    assert_eq!(installed.release_counter(), 7);
    assert_eq!(installed.hashes()["sha256"], sha256_hex(b"abc"));
    assert_eq!(store.installed().unwrap()["HU-1"], installed);
    assert!(store.journal().unwrap().is_none());
    assert_eq!(
        install_image(&store, &inst, &img, 2).await.unwrap(),
        InstallOutcome::AlreadyInstalled
    );
    assert_eq!(inst.runs.load(Ordering::SeqCst), 1);

    // A failing installer leaves the old record and no journal.
    let img2 = image(dir.path(), "cache2", b"def", "fw-2");
    let failing = counting(true, InstallCheck::Unknown);
    install_image(&store, &failing, &img2, 3).await.unwrap_err();
    assert_eq!(store.installed().unwrap()["HU-1"], installed);
    assert!(store.journal().unwrap().is_none());
}

fn journal(store: &Store, f: &TargetFacts) {
    store
        .begin_journal(&JournalRecord {
            facts: f.clone(),
            record: record(f),
            started_at: 5,
            pending_reboot: false,
        })
        .unwrap();
}

#[tokio::test]
async fn recovery_after_a_kill_between_record_and_journal_clear() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let f = facts(b"abc", "fw-1");
    journal(&store, &f);
    store.set_installed("HU-1", record(&f)).unwrap();
    let inst = counting(false, InstallCheck::NotInstalled);
    assert_eq!(
        recover(&store, &inst).await.unwrap(),
        Recovery::Completed(f)
    );
    assert!(store.journal().unwrap().is_none());
    assert_eq!(recover(&store, &inst).await.unwrap(), Recovery::Clean);
}

#[tokio::test]
async fn recovery_after_a_kill_during_the_installer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state")).unwrap();
    let f = facts(b"new", "fw-2");

    // The file installer finished its switch before the kill: recorded now.
    let target = dir.path().join("installed.img");
    std::fs::write(&target, b"new").unwrap();
    journal(&store, &f);
    let file = FileInstaller::new(FileTarget::Single(target.clone()));
    assert_eq!(
        recover(&store, &file).await.unwrap(),
        Recovery::Completed(f.clone())
    );
    assert_eq!(store.installed().unwrap()["HU-1"], record(&f));

    // It had not: the old image stays, nothing is recorded.
    let store = Store::open(dir.path().join("state2")).unwrap();
    std::fs::write(&target, b"old").unwrap();
    journal(&store, &f);
    assert_eq!(
        recover(&store, &file).await.unwrap(),
        Recovery::NotInstalled(f.clone())
    );
    assert!(store.installed().unwrap().is_empty());
    assert!(store.journal().unwrap().is_none());

    // A command cannot tell: interrupted, nothing recorded.
    journal(&store, &f);
    let cmd = CommandInstaller::new("/bin/true", vec![]);
    assert_eq!(
        recover(&store, &cmd).await.unwrap(),
        Recovery::Interrupted(f.clone())
    );
    assert!(store.installed().unwrap().is_empty());

    // A new install refuses to start over an unsettled journal.
    journal(&store, &f);
    let img = image(dir.path(), "cache", b"new", "fw-2");
    let err = install_image(&store, &counting(false, InstallCheck::Unknown), &img, 9)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unfinished"), "{err}");
}

/// A secondary in memory: the double that the secondary-ECU work replaces.
#[derive(Default)]
struct FakeSecondary {
    log: Mutex<Vec<String>>,
}

impl SecondaryTransport for FakeSecondary {
    fn info(&self) -> BoxFuture<'_, Result<SecondaryInfo>> {
        Box::pin(async {
            Ok(SecondaryInfo {
                serial: "BMS-1".into(),
                hardware_id: "bms".into(),
                encryption_key: None,
                did: None,
            })
        })
    }
    fn send_metadata<'a>(&'a self, metadata: &'a MetadataBundle) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let roles: Vec<_> = metadata.director.iter().map(|(r, _)| r.clone()).collect();
            self.log
                .lock()
                .unwrap()
                .push(format!("metadata {}", roles.join(",")));
            Ok(())
        })
    }
    fn send_image<'a>(
        &'a self,
        image: &'a VerifiedFile,
        progress: &'a (dyn Fn(Progress) + Send + Sync),
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let len = std::fs::metadata(image.location())
                .map(|m| m.len())
                .unwrap_or(0);
            progress(Progress {
                done: len,
                total: image.target().length(),
            });
            self.log
                .lock()
                .unwrap()
                .push(format!("image {}", image.target().name()));
            Ok(())
        })
    }
    fn activate<'a>(&'a self, image: &'a VerifiedFile) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.log
                .lock()
                .unwrap()
                .push(format!("activate {}", image.target().name()));
            Ok(())
        })
    }
    fn report(&self) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async { Ok(b"{}".to_vec()) })
    }
}

#[tokio::test]
async fn secondary_transport_is_usable_as_a_trait_object() {
    let dir = tempfile::tempdir().unwrap();
    let sec: Arc<dyn SecondaryTransport> = Arc::new(FakeSecondary::default());
    assert_eq!(sec.info().await.unwrap().serial, "BMS-1");
    let bundle = MetadataBundle {
        director: vec![
            ("root".into(), b"{}".to_vec()),
            ("targets".into(), b"{}".to_vec()),
        ],
        image: vec![],
    };
    sec.send_metadata(&bundle).await.unwrap();
    let img = verified::verified_image(
        &dir.path().join("img"),
        "bms-2",
        b"bms image",
        "BMS-1",
        "bms",
        serde_json::json!({}),
    );
    let seen = Mutex::new(None);
    sec.send_image(&img, &|p| *seen.lock().unwrap() = Some(p))
        .await
        .unwrap();
    sec.activate(&img).await.unwrap();
    assert_eq!(sec.report().await.unwrap(), b"{}");
    assert_eq!(*seen.lock().unwrap(), Some(Progress { done: 9, total: 9 }));
}
