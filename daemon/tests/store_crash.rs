//! Kill -9 during writes: the state must load as the old or the new version,
//! never torn. The test re-executes its own binary as the writer.
// Test helpers outside #[test] functions unwrap too; clippy.toml's
// allow-unwrap-in-tests only covers the test functions themselves.
#![allow(clippy::unwrap_used)]

use secureev_daemon::store::{InstalledRecord, Store};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "SECUREEV_CRASH_CHILD_STATE_DIR";

/// A record whose every field is derived from `n`, so that a mix of two
/// versions is detectable; its size varies so that writes differ in length.
fn record(n: u64) -> InstalledRecord {
    serde_json::from_value(serde_json::json!({
        "name": format!("fw-{n}-{}", "x".repeat((n % 5000) as usize)),
        "length": n,
        "hashes": BTreeMap::from([("sha256".to_owned(), format!("{n:064x}"))]),
        "release_counter": n,
        "installed_at": n as i64,
    }))
    .unwrap()
}

fn consistent(r: &InstalledRecord) -> bool {
    *r == record(r.length())
}

/// The writer: not a real test unless the parent sets the variable.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(&dir).unwrap();
    let start = store
        .installed()
        .unwrap()
        .get("HU")
        .map_or(0, |r| r.length() + 1);
    for n in start.. {
        store.set_installed("HU", record(n)).unwrap();
        store
            .save_metadata(
                secureev_daemon::store::Repo::Director,
                secureev_daemon::store::Role::Targets,
                format!(
                    "{{\"v\":{n},\"pad\":\"{}\"}}",
                    "y".repeat((n % 7000) as usize)
                )
                .as_bytes(),
            )
            .unwrap();
        let _ = store.next_report_counter().unwrap();
    }
}

#[test]
fn state_survives_sigkill_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut last = None;
    let rounds = 25;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Random-ish points: 50..200 ms after the start (process start included).
        let delay = 50 + (round * 37 + std::process::id() as u64) % 150;
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = Store::open(dir.path()).unwrap();
        let installed = store.installed().unwrap();
        if let Some(r) = installed.get("HU") {
            assert!(consistent(r), "round {round}: torn record {r:?}");
            if let Some(prev) = last {
                assert!(
                    r.length() >= prev,
                    "round {round}: went back from {prev} to {}",
                    r.length()
                );
            }
            last = Some(r.length());
        }
        if let Some(meta) = store
            .load_metadata(
                secureev_daemon::store::Repo::Director,
                secureev_daemon::store::Role::Targets,
            )
            .unwrap()
        {
            let v: serde_json::Value = serde_json::from_slice(&meta)
                .unwrap_or_else(|e| panic!("round {round}: torn metadata: {e}"));
            assert!(v["v"].is_u64());
        }
        // Counters parse too (store.next_report_counter would fail on a torn file).
        store.next_report_counter().unwrap();
        // No temporary file survives the reopening.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
    }
    assert!(last.unwrap_or(0) > 0, "the writer never got going");
    eprintln!("{rounds} kills; last record written: {last:?}");
}
