//! Interop with python-tuf: repositories built by python-tuf's Metadata API
//! with securesystemslib ECDSA P-256 signers (`tests/python/make_repo.py`),
//! served over HTTP on loopback, verified by the core directly and by the
//! client binary; and one tampered copy per attack, each of which must fail
//! with exit code 1 and the core error that names the attack.
//!
//! Needs a Python with `tuf` and `securesystemslib[crypto]`: set
//! `SECUREEV_PYTHON` to it (`scripts/python-venv.sh` makes one and prints its
//! path). Without it the tests skip with a message, except under CI (`CI`
//! set), where a skipped interop suite would pass unnoticed: there they fail.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_exit, list, now, variant, Cli, Server, TempDir};
use secureev_tuf_conformance::Client;
use secureev_uptane::client::{drive, Decision, Repo, UpdateClient};
use secureev_uptane::quote::quote_component;
use secureev_uptane::verify::check_length_and_hashes;
use secureev_uptane::Checked;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

struct Fixture {
    python: PathBuf,
    dir: PathBuf,
    manifest: Value,
}

impl Fixture {
    fn folder(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn content(&self, target: &str) -> Vec<u8> {
        hex::decode(
            self.manifest["targets"][target]["content"]
                .as_str()
                .unwrap(),
        )
        .unwrap()
    }

    /// A server with every folder of the fixture under its own name.
    fn server(&self) -> Server {
        let server = Server::start();
        for name in list(&self.dir) {
            if self.dir.join(&name).is_dir() {
                server.put_dir(&name, &self.dir.join(&name));
            }
        }
        server
    }

    fn read(&self, folder: &str, file: &str) -> Vec<u8> {
        fs::read(self.folder(folder).join("metadata").join(file)).unwrap()
    }
}

/// The Python to run, or `None` (after saying so) when the tests are to skip.
fn python() -> Option<PathBuf> {
    match std::env::var_os("SECUREEV_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ if std::env::var_os("CI").is_some() => panic!(
            "CI is set but SECUREEV_PYTHON is not: the python-tuf interop tests must run in CI. \
             Run scripts/python-venv.sh and export SECUREEV_PYTHON=<the python it prints>."
        ),
        _ => {
            // Straight to stderr, past libtest's output capture, once per run:
            // a skip must be visible without --nocapture.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED python-tuf interop tests: set SECUREEV_PYTHON to a Python with tuf \
                     and securesystemslib[crypto] (scripts/python-venv.sh prints one)"
                );
            });
            None
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/make_repo.py")
}

/// Build the repositories once per test run.
fn fixture() -> Option<&'static Fixture> {
    let python = python()?;
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    Some(FIXTURE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("python-tuf-repos-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let out = Command::new(&python)
            .arg(script())
            .arg("build")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make_repo.py build failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let manifest =
            serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        Fixture {
            python,
            dir,
            manifest,
        }
    }))
}

/// The core's client (TUF mode) against the python-tuf repository, files
/// answered straight from the build directory: the requests it makes, the
/// keys securesystemslib made, and the delegation search.
#[test]
fn core_client_verifies_the_python_tuf_repository() {
    let Some(f) = fixture() else { return };
    let now = now();
    let read = |file: &str| f.read("good", file);
    let requests = std::cell::RefCell::new(Vec::new());
    let run = |client: &mut UpdateClient| {
        drive(
            client,
            |req| {
                requests.borrow_mut().push(req.file.clone());
                let path = f.dir.join("good/metadata").join(&req.file);
                fs::read(path).ok()
            },
            |_, _| None,
            |_, _, _, _| {},
        )
        .unwrap()
    };
    let mut client = UpdateClient::tuf("python-tuf", &read("1.root.json"), now).unwrap();
    assert!(matches!(run(&mut client), Decision::Refreshed));
    // Root rotation: 2.root.json has a new root key and a new timestamp key
    // and is signed by both the old and the new root key.
    assert_eq!(
        requests.take(),
        [
            "2.root.json",
            "3.root.json",
            "timestamp.json",
            "2.snapshot.json",
            "2.targets.json"
        ]
    );
    let repo = client.repository(Repo::Image).unwrap();
    assert_eq!(repo.root().common.version, 2);
    for (keyid, key) in &repo.root().keys {
        assert_eq!(
            (key.keytype.as_str(), key.scheme.as_str()),
            ("ecdsa", "ecdsa-sha2-nistp256")
        );
        // securesystemslib and the core compute the same key ids.
        assert_eq!(&key.keyid().unwrap(), keyid);
    }
    assert!(repo.root().consistent_snapshot);

    let hello = f.content("hello.txt");
    client.find_target("hello.txt").unwrap();
    match run(&mut client) {
        Decision::Target { role, target } => {
            assert_eq!(role, "targets");
            check_length_and_hashes(
                &Checked::Target("hello.txt".into()),
                &hello,
                Some(target.length),
                Some(&target.hashes),
            )
            .unwrap();
        }
        other => panic!("hello.txt: {other:?}"),
    }
    assert!(requests.take().is_empty());

    let role = f.manifest["delegated_role"].as_str().unwrap();
    let image = f.content("firmware/ecu-a.bin");
    client.find_target("firmware/ecu-a.bin").unwrap();
    match run(&mut client) {
        Decision::Target {
            role: found_in,
            target,
        } => {
            assert_eq!(found_in, role);
            let algorithms: Vec<&str> = target.hashes.keys().map(String::as_str).collect();
            assert_eq!(algorithms, ["sha256", "sha512"]);
            check_length_and_hashes(
                &Checked::Target("firmware/ecu-a.bin".into()),
                &image,
                Some(target.length),
                Some(&target.hashes),
            )
            .unwrap();
            let mut tampered = image.clone();
            tampered[0] ^= 1;
            assert!(matches!(
                check_length_and_hashes(
                    &Checked::Target("firmware/ecu-a.bin".into()),
                    &tampered,
                    Some(target.length),
                    Some(&target.hashes)
                ),
                Err(secureev_uptane::Error::HashMismatch { .. })
            ));
        }
        other => panic!("firmware/ecu-a.bin: {other:?}"),
    }
    assert_eq!(
        requests.take(),
        [format!("1.{}.json", quote_component(role))]
    );
    // The firmware role is terminating, and `docs` (listed first) does not
    // match the path: an unknown firmware path ends the search there.
    let err = client.find_target("firmware/none.bin").unwrap_err();
    assert!(
        matches!(err.error(), secureev_uptane::Error::TargetNotFound { .. }),
        "{err}"
    );
}

#[test]
fn client_binary_refreshes_and_downloads_from_python_tuf() {
    let Some(f) = fixture() else { return };
    let server = f.server();
    let tmp = TempDir::new("py-good");
    let (metadata_dir, target_dir) = (tmp.sub("metadata"), tmp.sub("targets"));
    let cli = Cli {
        metadata_dir: metadata_dir.clone(),
        target_dir: target_dir.clone(),
        metadata_url: server.url("good/metadata"),
        targets_url: server.url("good/targets"),
    };
    assert_exit(&cli.init(&f.folder("good").join("initial_root.json")), 0);
    assert_exit(&cli.download(&["hello.txt", "firmware/ecu-a.bin"]), 0);

    let sha256 = |data: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(data))
    };
    let (hello, image) = (f.content("hello.txt"), f.content("firmware/ecu-a.bin"));
    assert_eq!(
        server.take_log(),
        [
            "good/metadata/2.root.json".to_owned(),
            "good/metadata/3.root.json".to_owned(),
            "good/metadata/timestamp.json".to_owned(),
            "good/metadata/2.snapshot.json".to_owned(),
            "good/metadata/2.targets.json".to_owned(),
            format!("good/targets/{}.hello.txt", sha256(&hello)),
            "good/metadata/1.firmware.json".to_owned(),
            format!("good/targets/firmware/{}.ecu-a.bin", sha256(&image)),
        ]
    );
    // Trusted metadata: the exact bytes python-tuf wrote, unversioned names.
    let expected: BTreeMap<&str, &str> = [
        ("firmware.json", "1.firmware.json"),
        ("root.json", "2.root.json"),
        ("snapshot.json", "2.snapshot.json"),
        ("targets.json", "2.targets.json"),
        ("timestamp.json", "timestamp.json"),
    ]
    .into();
    assert_eq!(
        list(&metadata_dir),
        expected.keys().copied().collect::<Vec<_>>()
    );
    for (stored, served) in expected {
        assert_eq!(
            fs::read(metadata_dir.join(stored)).unwrap(),
            f.read("good", served),
            "{stored}"
        );
    }
    assert_eq!(list(&target_dir), ["firmware%2Fecu-a.bin", "hello.txt"]);
    assert_eq!(fs::read(target_dir.join("hello.txt")).unwrap(), hello);
    assert_eq!(
        fs::read(target_dir.join("firmware%2Fecu-a.bin")).unwrap(),
        image
    );

    // A plain refresh later: nothing new, nothing but root N+1 and timestamp.
    assert_exit(&cli.refresh(), 0);
    assert_eq!(
        server.take_log(),
        ["good/metadata/3.root.json", "good/metadata/timestamp.json"]
    );
}

#[test]
fn client_rejects_every_tampered_python_tuf_repository() {
    let Some(f) = fixture() else { return };
    let server = f.server();
    let attacks = f.manifest["attacks"].as_array().unwrap();
    assert!(attacks.len() >= 10, "{} attacks", attacks.len());
    let mut failures = Vec::new();
    for attack in attacks {
        let name = attack["name"].as_str().unwrap();
        let step = attack["step"].as_str().unwrap();
        let target = attack["target"].as_str();
        let expected = attack["error"].as_str().unwrap();
        let after_good = attack["after_good"].as_bool().unwrap();
        let root = f.folder(name).join("initial_root.json");

        // The binary: exit code 1, trusted state untouched.
        let tmp = TempDir::new("py-attack");
        let (metadata_dir, target_dir) = (tmp.sub("metadata"), tmp.sub("targets"));
        let mut cli = Cli {
            metadata_dir: metadata_dir.clone(),
            target_dir: target_dir.clone(),
            metadata_url: server.url("good/metadata"),
            targets_url: server.url("good/targets"),
        };
        assert_exit(&cli.init(&root), 0);
        if after_good {
            assert_exit(&cli.refresh(), 0);
        }
        let before = common::walk(&metadata_dir);
        cli.metadata_url = server.url(&format!("{name}/metadata"));
        cli.targets_url = server.url(&format!("{name}/targets"));
        let out = match step {
            "refresh" => cli.refresh(),
            _ => cli.download(&[target.unwrap()]),
        };
        if out.status.code() != Some(1) {
            failures.push(format!("{name}: binary exited {:?}", out.status.code()));
        }
        if after_good && common::walk(&metadata_dir) != before {
            failures.push(format!(
                "{name}: trusted metadata changed by a rejected update"
            ));
        }
        if !list(&target_dir).is_empty() {
            failures.push(format!("{name}: stored a target: {:?}", list(&target_dir)));
        }

        // The library: the error names the attack.
        let tmp = TempDir::new("py-attack-lib");
        let metadata_dir = tmp.sub("metadata");
        let good = Client::new(&metadata_dir).with_metadata_url(&server.url("good/metadata"));
        good.init(&root).unwrap();
        if after_good {
            good.refresh(now()).unwrap();
        }
        let client =
            Client::new(&metadata_dir).with_metadata_url(&server.url(&format!("{name}/metadata")));
        let result = match step {
            "refresh" => client.refresh(now()).map(|_| ()),
            _ => client
                .download(
                    &[target.unwrap().to_owned()],
                    &server.url(&format!("{name}/targets")),
                    &tmp.sub("targets"),
                    now(),
                )
                .map(|_| ()),
        };
        match result {
            Ok(()) => failures.push(format!("{name}: library accepted it")),
            Err(e) => match e.verification() {
                None => failures.push(format!("{name}: not a verification error: {e:#}")),
                Some(core) => {
                    if variant(core) != expected {
                        failures.push(format!("{name}: expected {expected}, got {core:?}"));
                    }
                    if let Some(role) = attack["role"].as_str() {
                        if !format!("{core:?}").contains(&format!("role: {role:?}")) {
                            failures.push(format!("{name}: expected role {role}, got {core:?}"));
                        }
                    }
                }
            },
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn python_tuf_ngclient_agrees_on_the_fixtures() {
    // The fixtures are what they claim: python-tuf's own client accepts the
    // good repository and rejects each attack (except where the manifest says
    // python-tuf knowingly accepts, e.g. blake2b, which we do not implement).
    let Some(f) = fixture() else { return };
    let server = f.server();
    let out = Command::new(&f.python)
        .arg(script())
        .arg("ngclient")
        .arg(server.url(""))
        .arg(&f.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdicts["good"]["accepted"], true, "{verdicts:#}");
    for attack in f.manifest["attacks"].as_array().unwrap() {
        let name = attack["name"].as_str().unwrap();
        assert_eq!(
            verdicts[name]["accepted"], attack["python_tuf_accepts"],
            "python-tuf on {name}: {:#}",
            verdicts[name]
        );
    }
}
