//! The client binary against repositories built in Rust
//! (`secureev_uptane::builder`) and served on loopback: exit codes, request
//! sequences, metadata and target files. No Python needed.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_exit, client, list, now, variant, version_of, Cli, Server, TempDir};
use secureev_tuf_conformance::quote::quote_component;
use secureev_tuf_conformance::Client;
use secureev_uptane::builder::{resign, Published, RepoBuilder};
use secureev_uptane::keys::SigningKey;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

const HELLO: &[u8] = b"hello, conformance\n";
const IMAGE: &[u8] = b"\x7fELF firmware image for ECU A";

/// Serve a published repository state under `<prefix>/metadata/` the way a
/// consistent-snapshot repository lays it out.
fn serve_published(server: &Server, prefix: &str, p: &Published) {
    for (version, bytes) in &p.roots {
        server.put(
            &format!("{prefix}/metadata/{version}.root.json"),
            bytes.clone(),
        );
    }
    server.put(
        &format!("{prefix}/metadata/timestamp.json"),
        p.timestamp.clone(),
    );
    let versioned = |role: &str, bytes: &[u8]| {
        let name = format!(
            "{prefix}/metadata/{}.{}.json",
            version_of(bytes),
            quote_component(role)
        );
        server.put(&name, bytes.to_vec());
    };
    versioned("snapshot", &p.snapshot);
    versioned("targets", &p.targets);
    for (role, bytes) in &p.delegated {
        versioned(role, bytes);
    }
}

/// Serve a target under `<prefix>/targets/`, hash-prefixed.
fn serve_target(server: &Server, prefix: &str, name: &str, data: &[u8]) -> String {
    let hash = hex::encode(Sha256::digest(data));
    let path = match name.rsplit_once('/') {
        Some((dir, file)) => format!("{prefix}/targets/{dir}/{hash}.{file}"),
        None => format!("{prefix}/targets/{hash}.{name}"),
    };
    server.put(&path, data.to_vec());
    path
}

struct Setup {
    server: Server,
    builder: RepoBuilder,
    published: Published,
    _scratch: TempDir,
    initial_root: PathBuf,
    metadata_dir: PathBuf,
    target_dir: PathBuf,
}

impl Setup {
    /// Root rotated once (1 -> 2), top-level target `hello.txt`, delegation
    /// `A` (paths `a/*`) with target `a/x.bin`, a second delegation `B`
    /// (`*.md`) that no search here needs.
    fn new() -> Setup {
        let mut builder = RepoBuilder::new(now());
        builder.add_target("hello.txt", HELLO, None);
        builder.add_delegation("targets", "B", &["*.md"], false);
        builder.add_delegation("targets", "A", &["a/*"], false);
        builder.add_delegated_target("A", "a/x.bin", IMAGE).unwrap();
        builder.publish().unwrap();
        builder.rotate_keys("root", vec![SigningKey::generate_p256()], 1);
        let published = builder.publish().unwrap();
        assert_eq!(published.roots.len(), 2);
        let server = Server::start();
        serve_published(&server, "repo", &published);
        serve_target(&server, "repo", "hello.txt", HELLO);
        serve_target(&server, "repo", "a/x.bin", IMAGE);
        let dir = TempDir::new("cli");
        let initial_root = dir.path().join("initial_root.json");
        fs::write(&initial_root, &published.roots[&1]).unwrap();
        let (metadata_dir, target_dir) = (dir.sub("metadata"), dir.sub("targets"));
        Setup {
            server,
            builder,
            published,
            _scratch: dir,
            initial_root,
            metadata_dir,
            target_dir,
        }
    }

    fn cli(&self) -> Cli {
        Cli {
            metadata_dir: self.metadata_dir.clone(),
            target_dir: self.target_dir.clone(),
            metadata_url: self.server.url("repo/metadata/"),
            targets_url: self.server.url("repo/targets/"),
        }
    }

    fn metadata_dir(&self) -> &Path {
        &self.metadata_dir
    }

    fn target_dir(&self) -> &Path {
        &self.target_dir
    }
}

fn md(role_version: &str) -> String {
    format!("repo/metadata/{role_version}.json")
}

#[test]
fn argument_errors_exit_1() {
    let dir = TempDir::new("args");
    let d = dir.path().to_str().unwrap();
    for args in [
        vec![],
        vec!["refresh"],
        vec!["--metadata-dir", d, "refresh"],
        vec!["--metadata-dir", d, "frobnicate"],
        vec!["--metadata-dir", d, "--no-such-flag", "refresh"],
        vec!["--metadata-dir", d, "init"],
        vec!["--metadata-dir", d, "init", "/nonexistent/root.json"],
        vec!["--metadata-dir", d, "--days-in-future", "soon", "refresh"],
        vec![
            "--metadata-dir",
            d,
            "--metadata-url",
            "http://127.0.0.1:9/",
            "download",
        ],
        vec![
            "--metadata-dir",
            d,
            "--metadata-url",
            "http://127.0.0.1:9/",
            "refresh",
        ],
    ] {
        let out = client(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_exit(&client(&["--help"]), 0);
}

#[test]
fn init_copies_the_root_and_fetches_nothing() {
    let s = Setup::new();
    assert_exit(&s.cli().init(&s.initial_root), 0);
    assert_eq!(list(s.metadata_dir()), ["root.json"]);
    assert_eq!(
        fs::read(s.metadata_dir().join("root.json")).unwrap(),
        s.published.roots[&1]
    );
    assert_eq!(s.server.take_log(), Vec::<String>::new());
}

#[test]
fn refresh_makes_exactly_the_workflow_requests_and_stores_served_bytes() {
    let s = Setup::new();
    let cli = s.cli();
    assert_exit(&cli.init(&s.initial_root), 0);
    assert_exit(&cli.refresh(), 0);
    assert_eq!(
        s.server.take_log(),
        [
            md("2.root"),
            md("3.root"),
            md("timestamp"),
            md("2.snapshot"),
            md("2.targets")
        ]
    );
    assert_eq!(
        list(s.metadata_dir()),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
    let stored = |name: &str| fs::read(s.metadata_dir().join(name)).unwrap();
    assert_eq!(stored("root.json"), s.published.roots[&2]);
    assert_eq!(stored("timestamp.json"), s.published.timestamp);
    assert_eq!(stored("snapshot.json"), s.published.snapshot);
    assert_eq!(stored("targets.json"), s.published.targets);

    // Nothing changed: the local snapshot and targets are still the ones the
    // timestamp vouches for, so only root N+1 and the timestamp are fetched.
    assert_exit(&cli.refresh(), 0);
    assert_eq!(s.server.take_log(), [md("3.root"), md("timestamp")]);
}

#[test]
fn download_walks_only_matching_delegations_and_caches_targets() {
    let s = Setup::new();
    let cli = s.cli();
    assert_exit(&cli.init(&s.initial_root), 0);
    assert_exit(&cli.download(&["a/x.bin", "hello.txt"]), 0);
    let log = s.server.take_log();
    let image_url = format!(
        "repo/targets/a/{}.x.bin",
        hex::encode(Sha256::digest(IMAGE))
    );
    let hello_url = format!(
        "repo/targets/{}.hello.txt",
        hex::encode(Sha256::digest(HELLO))
    );
    assert_eq!(
        log,
        [
            md("2.root"),
            md("3.root"),
            md("timestamp"),
            md("2.snapshot"),
            md("2.targets"),
            md("2.A"),
            image_url,
            hello_url,
        ]
    );
    assert_eq!(list(s.target_dir()), ["a%2Fx.bin", "hello.txt"]);
    assert_eq!(fs::read(s.target_dir().join("a%2Fx.bin")).unwrap(), IMAGE);
    assert_eq!(fs::read(s.target_dir().join("hello.txt")).unwrap(), HELLO);
    assert_eq!(
        list(s.metadata_dir()),
        [
            "A.json",
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
    assert_eq!(
        fs::read(s.metadata_dir().join("A.json")).unwrap(),
        s.published.delegated["A"]
    );

    // Second run: delegated role from disk, targets already verified on disk.
    assert_exit(&cli.download(&["a/x.bin"]), 0);
    assert_eq!(s.server.take_log(), [md("3.root"), md("timestamp")]);
}

#[test]
fn missing_target_fails_after_refreshing() {
    let s = Setup::new();
    let cli = s.cli();
    assert_exit(&cli.init(&s.initial_root), 0);
    assert_exit(&cli.download(&["nonexistent artifact"]), 1);
    // `*.md` (B) and `a/*` (A) do not match: no delegated role is fetched.
    assert_eq!(
        s.server.take_log(),
        [
            md("2.root"),
            md("3.root"),
            md("timestamp"),
            md("2.snapshot"),
            md("2.targets")
        ]
    );
    assert_eq!(list(s.target_dir()), Vec::<String>::new());
}

#[test]
fn odd_role_names_get_safe_file_names_and_quoted_urls() {
    let roles = ["?", "#", "/delegatedrole", "../delegatedrole"];
    let mut builder = RepoBuilder::new(now());
    for role in roles {
        builder.add_delegation("targets", role, &["*"], false);
    }
    let published = builder.publish().unwrap();
    let server = Server::start();
    serve_published(&server, "repo", &published);
    let dir = TempDir::new("odd");
    let root = dir.path().join("initial_root.json");
    fs::write(&root, &published.roots[&1]).unwrap();
    let (metadata_dir, target_dir) = (dir.sub("metadata"), dir.sub("targets"));
    let cli = Cli {
        metadata_dir: metadata_dir.clone(),
        target_dir: target_dir.clone(),
        metadata_url: server.url("repo/metadata"),
        targets_url: server.url("repo/targets"),
    };
    assert_exit(&cli.init(&root), 0);
    assert_exit(&cli.download(&["nonexistent target"]), 1);
    // Python's urllib.parse.quote(role, safe="") for each, in delegation order.
    assert_eq!(
        server.take_log()[4..],
        [
            md("1.%3F"),
            md("1.%23"),
            md("1.%2Fdelegatedrole"),
            md("1...%2Fdelegatedrole"),
        ]
    );
    assert_eq!(
        list(&metadata_dir),
        [
            "%23.json",
            "%2Fdelegatedrole.json",
            "%3F.json",
            "..%2Fdelegatedrole.json",
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json",
        ]
    );
    // Nothing was written outside the two directories.
    assert_eq!(
        list(dir.path()),
        ["initial_root.json", "metadata", "targets"]
    );
    assert_eq!(list(&target_dir), Vec::<String>::new());
}

#[test]
fn substituted_targets_are_never_stored() {
    // tuf-conformance test_repository_substitutes_target_file.
    let mut s = Setup::new();
    s.builder.add_target("other.txt", b"other", None);
    let published = s.builder.publish().unwrap();
    serve_published(&s.server, "repo", &published);
    let other = serve_target(&s.server, "repo", "other.txt", b"other");
    let cli = s.cli();
    assert_exit(&cli.init(&s.initial_root), 0);
    assert_exit(&cli.download(&["hello.txt"]), 0);

    let hello = serve_target(&s.server, "repo", "hello.txt", HELLO);
    s.server
        .put(&hello, b"malicious data - should not download".to_vec());
    s.server
        .put(&other, b"malicious data - should not download".to_vec());
    s.server.take_log();
    // Already on disk and verified: not fetched again.
    assert_exit(&cli.download(&["hello.txt"]), 0);
    assert!(!s.server.take_log().iter().any(|p| p.contains("/targets/")));
    assert_exit(&cli.download(&["other.txt"]), 1);
    assert_eq!(list(s.target_dir()), ["hello.txt"]);
    assert_eq!(fs::read(s.target_dir().join("hello.txt")).unwrap(), HELLO);
}

#[test]
fn timestamp_with_same_version_is_not_persisted() {
    // tuf-conformance test_timestamp_eq_versions_check.
    let s = Setup::new();
    let cli = s.cli();
    assert_exit(&cli.init(&s.initial_root), 0);
    assert_exit(&cli.refresh(), 0);
    let key = s.builder.keys["timestamp"][0].clone();
    let same_version = resign(&s.published.timestamp, &[&key], |signed| {
        signed["meta"]["snapshot.json"]["version"] = 100.into();
    })
    .unwrap();
    s.server.put("repo/metadata/timestamp.json", same_version);
    assert_exit(&cli.refresh(), 0);
    assert_eq!(
        fs::read(s.metadata_dir().join("timestamp.json")).unwrap(),
        s.published.timestamp
    );
}

#[test]
fn untrusted_initial_root_fails_before_any_request() {
    // tuf-conformance test_unsigned_initial_root / test_invalid_initial_root.
    let s = Setup::new();
    let cli = s.cli();
    let mut root: serde_json::Value = serde_json::from_slice(&s.published.roots[&1]).unwrap();
    root["signed"]["version"] = 7.into();
    fs::write(&s.initial_root, serde_json::to_vec(&root).unwrap()).unwrap();
    assert_exit(&cli.init(&s.initial_root), 0);
    assert_exit(&cli.refresh(), 1);
    root["signed"].as_object_mut().unwrap().remove("version");
    fs::write(&s.initial_root, serde_json::to_vec(&root).unwrap()).unwrap();
    assert_exit(&cli.init(&s.initial_root), 0);
    assert_exit(&cli.refresh(), 1);
    assert_eq!(s.server.take_log(), Vec::<String>::new());
}

#[test]
fn endless_timestamp_is_cut_off() {
    let s = Setup::new();
    s.server.endless("repo/metadata/timestamp.json");
    let cli = s.cli();
    assert_exit(&cli.init(&s.initial_root), 0);
    assert_exit(&cli.refresh(), 1);
    let err = Client::new(s.metadata_dir())
        .with_metadata_url(&s.server.url("repo/metadata"))
        .refresh(now())
        .unwrap_err();
    assert_eq!(
        variant(err.verification().unwrap()),
        "EndlessData",
        "{err:#}"
    );
    assert_eq!(list(s.metadata_dir()), ["root.json"]);
}

#[test]
fn endless_target_is_cut_off_and_not_stored() {
    let s = Setup::new();
    let hello = serve_target(&s.server, "repo", "hello.txt", HELLO);
    s.server.remove(&hello);
    s.server.endless(&hello);
    let cli = s.cli();
    assert_exit(&cli.init(&s.initial_root), 0);
    assert_exit(&cli.download(&["hello.txt"]), 1);
    assert_eq!(list(s.target_dir()), Vec::<String>::new());
}

#[test]
fn expired_local_timestamp_does_not_block_an_update() {
    // tuf-conformance test_expired_metadata: the local timestamp has expired
    // by the time of the next refresh, the repository's new one has not.
    let mut s = Setup::new();
    let cli = s.cli();
    assert_exit(&cli.init(&s.initial_root), 0);
    assert_exit(&cli.refresh(), 0);
    s.builder.set_lifetimes(now().plus_secs(3 * 86_400));
    let published = s.builder.publish().unwrap();
    serve_published(&s.server, "repo", &published);
    // Builder timestamps live one day: at +3 days the local one has expired.
    let out = client(&[
        "--metadata-url",
        &cli.metadata_url,
        "--metadata-dir",
        s.metadata_dir().to_str().unwrap(),
        "--days-in-future",
        "3",
        "refresh",
    ]);
    assert_exit(&out, 0);
    let md_dir = s.metadata_dir.clone();
    let stored = |name: &str| version_of(&fs::read(md_dir.join(name)).unwrap());
    assert_eq!(stored("timestamp.json"), 3);
    assert_eq!(stored("snapshot.json"), 3);
}

#[test]
fn timestamp_fast_forward_is_recovered_by_rotating_its_key() {
    // tuf-conformance test_new_timestamp_fast_forward_recovery.
    let mut s = Setup::new();
    let cli = s.cli();
    assert_exit(&cli.init(&s.initial_root), 0);
    s.builder.versions.insert("timestamp".into(), 99);
    let published = s.builder.publish().unwrap();
    serve_published(&s.server, "repo", &published);
    assert_exit(&cli.refresh(), 0);
    let md_dir = s.metadata_dir.clone();
    let stored = |name: &str| version_of(&fs::read(md_dir.join(name)).unwrap());
    assert_eq!(stored("timestamp.json"), 100);

    // The repository rotates the timestamp key (root v3) and starts over at 1.
    s.builder
        .rotate_keys("timestamp", vec![SigningKey::generate_p256()], 1);
    s.builder.versions.insert("timestamp".into(), 0);
    let published = s.builder.publish().unwrap();
    serve_published(&s.server, "repo", &published);
    assert_exit(&cli.refresh(), 0);
    assert_eq!(stored("root.json"), 3);
    assert_eq!(stored("timestamp.json"), 1);

    // Without a key rotation, going back is a rollback and is refused.
    let published = s.builder.publish().unwrap();
    serve_published(&s.server, "repo", &published);
    assert_exit(&cli.refresh(), 0);
    assert_eq!(stored("timestamp.json"), 2);
    s.builder.versions.insert("timestamp".into(), 0);
    let published = s.builder.publish().unwrap();
    serve_published(&s.server, "repo", &published);
    assert_exit(&cli.refresh(), 1);
    assert_eq!(stored("timestamp.json"), 2);
}
