//! A review of a live server's data directory as another local user
//! (`nobody`, through `setpriv`): `ls -l`, reading every file and `sqlite3`
//! find nothing secret readable (issue 12: `db.sqlite` was 0644, the data
//! directories 0755, content keys readable as `nobody`).
//!
//! The data directory is filled the way a pilot fills it (an enrolled-for
//! VIN, an operator, a registered vehicle, an encrypted image) and reviewed
//! while the server runs, so SQLite's `-wal` and `-shm` files exist. Two
//! passes: the directory as `init` made it (0700: nothing can even be listed),
//! and the directory opened to traversal (0711), where the file modes alone
//! must keep every key, token and the database closed: whatever `nobody` can
//! still read must be on the public list and hold no secret. A control file
//! shows the reviewer can read what is readable.
//!
//! Switching users needs root: without it the test skips with a message,
//! except under CI, where it fails.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use secureev_server::client::{image_add, ImageSpec};
use secureev_server::layout;
use secureev_server::operators::Role;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Files another user may read once the directory is traversable: the CA
/// and server certificates, the configuration, and image blobs (what the
/// vehicle listener serves anyway; encrypted images only as ciphertext).
fn public(rel: &str) -> bool {
    matches!(rel, "tls/ca.pem" | "tls/server.pem" | "server.toml") || rel.starts_with("blobs/")
}

/// What a curious local user would ask the database for.
const QUERY: &str = "SELECT * FROM enrollments; SELECT * FROM operators; SELECT * FROM images;";

/// Run `cmd` as `nobody` with no supplementary groups.
fn as_nobody(cmd: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(cmd)
        .output()
        .unwrap()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_finds_nothing_secret_in_the_data_directory() {
    if !rustix::process::getuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the test does not run as root: the review as another user must happen in CI"
        );
        eprintln!("skipping: switching to user nobody needs root");
        return;
    }
    let h = start("review").await;
    // Fill it: an enrollment credential, an operator, a vehicle, an encrypted image.
    let credential = h.enrollment_credential("WVWZZZ1JZXW000009").await;
    let _rita = h.operator("rita", &[Role::ReleaseManager]);
    let car = TestVehicle::new(
        &h,
        "WVWZZZ1JZXW000001",
        &[("HU-1", "hu"), ("BRK-1", "brake")],
    );
    car.register(&h).await;
    let firmware: Vec<u8> = b"PLAINTEXT-FIRMWARE-".repeat(5_000);
    let spec = ImageSpec {
        name: "brake/secret.bin".into(),
        hardware_ids: vec!["brake".into()],
        version: None,
        release_counter: Some(1),
        encrypt: true,
        release_notes: None,
    };
    image_add(
        &h.admin,
        &h.offline,
        &spec,
        &firmware,
        secureev_uptane::Timestamp::from_unix(secureev_server::unix_now()),
    )
    .await
    .unwrap();

    let data = h.data.clone();
    let mut files = Vec::new();
    files_under(&data, &mut files);
    let rel = |p: &Path| {
        p.strip_prefix(&data)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let names: Vec<String> = files.iter().map(|p| rel(p)).collect();
    for must in [
        layout::DB_FILE,
        "db.sqlite-wal",
        layout::ADMIN_TOKEN,
        layout::SERVER_KEY,
        "keys/kek",
    ] {
        assert!(names.iter().any(|n| n == must), "{must} missing: {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("keys/director/root/")));
    assert!(names.iter().any(|n| n.starts_with("blobs/")));

    // What counts as secret if it shows up in a readable file.
    let admin_token = std::fs::read(data.join(layout::ADMIN_TOKEN)).unwrap();
    let kek = std::fs::read(data.join("keys/kek")).unwrap();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("enrollment credential", credential.clone().into_bytes()),
        ("admin token", admin_token),
        ("KEK", kek),
        ("private key", b"PRIVATE KEY".to_vec()),
        ("image plaintext", b"PLAINTEXT-FIRMWARE-PLAINTEXT".to_vec()),
    ];

    // The reviewer must be able to reach the directory's parent, so the data
    // directory's own mode is what is reviewed.
    set_mode(&h.root, 0o755);
    // Control: a readable file is read, with its content.
    let probe = h.root.join("probe");
    std::fs::write(&probe, &credential).unwrap();
    set_mode(&probe, 0o644);
    let out = as_nobody(&["cat", probe.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, credential.as_bytes());

    // Pass 1: the directory as init made it.
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let ls = as_nobody(&["ls", "-lR", data.to_str().unwrap()]);
    assert!(!ls.status.success());
    assert!(
        String::from_utf8_lossy(&ls.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let listing = String::from_utf8_lossy(&ls.stdout);
    for n in ["db.sqlite", "keys", "admin-token", "tls", "blobs"] {
        assert!(!listing.contains(n), "ls -lR shows {n}: {listing}");
    }
    for f in &files {
        let out = as_nobody(&["cat", f.to_str().unwrap()]);
        assert!(!out.status.success(), "{} readable by nobody", rel(f));
        assert!(out.stdout.is_empty());
    }
    let sqlite = Command::new("sqlite3").arg("-version").output().is_ok();
    let db = data.join(layout::DB_FILE);
    let query = |db: &Path| as_nobody(&["sqlite3", "-readonly", db.to_str().unwrap(), QUERY]);
    if sqlite {
        // Control: the same query as the owner reads the tables.
        let own = Command::new("sqlite3")
            .args(["-readonly", db.to_str().unwrap(), QUERY])
            .output()
            .unwrap();
        assert!(
            own.status.success(),
            "{}",
            String::from_utf8_lossy(&own.stderr)
        );
        assert!(!own.stdout.is_empty());
        let out = query(&db);
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.stdout.is_empty());
    } else {
        eprintln!("sqlite3 not installed: the database was checked by reading it only");
    }

    // Pass 2: traversable, not listable. The file modes alone must hold.
    set_mode(&data, 0o711);
    let mut readable = Vec::new();
    for f in &files {
        let out = as_nobody(&["cat", f.to_str().unwrap()]);
        if out.status.success() {
            let r = rel(f);
            assert!(public(&r), "{r} is readable by nobody");
            for (what, s) in &secrets {
                assert!(
                    !contains(&out.stdout, s),
                    "{r} read by nobody holds the {what}"
                );
            }
            readable.push(r);
        }
    }
    // The reviewer really got into the directory: the public files were read.
    assert!(
        readable.iter().any(|r| r == layout::CA_CERT),
        "{readable:?}"
    );
    assert!(
        readable.iter().any(|r| r.starts_with("blobs/")),
        "{readable:?}"
    );
    for f in [layout::DB_FILE, "db.sqlite-wal", "db.sqlite-shm"] {
        assert!(!readable.iter().any(|r| r == f), "{f} readable");
    }
    let keys = as_nobody(&["ls", "-lR", data.join("keys").to_str().unwrap()]);
    assert!(!keys.status.success());
    assert!(keys.stdout.is_empty() || !String::from_utf8_lossy(&keys.stdout).contains(".pem"));
    if sqlite {
        let out = query(&db);
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.stdout.is_empty());
    }
    set_mode(&data, 0o700);
}
