//! # secureev-tuf-conformance
//!
//! A TUF 1.0 client for the public TUF conformance suite
//! (`theupdateframework/tuf-conformance`), built on the sans-IO verification
//! core [`secureev_uptane`]. It lets the suite check the core against the
//! specification and against python-tuf, which the suite's expectations follow.
//!
//! ## Architecture and the I/O boundary
//! Every decision about trust is made by
//! [`secureev_uptane::trusted::TrustedRepository`]; this crate only moves
//! bytes. [`Client`] reads the trusted files of a metadata directory, fetches
//! files over HTTP ([`fetch`]), offers the bytes to the core in the order of
//! the TUF 1.0 §5.3 client workflow, and persists exactly the bytes the core
//! accepted ([`store`]). The current time is an argument: the binary reads the
//! wall clock once per run, tests pass whatever time they need.
//!
//! The request sequence is python-tuf ngclient's, because the suite checks it:
//! `<N+1>.root.json` until 403/404, `timestamp.json`, the snapshot (skipped
//! when the local snapshot is still the one the new timestamp lists), the
//! top-level targets, then delegated roles as the pre-order depth-first
//! delegation search asks for them. Local copies of timestamp, snapshot and
//! targets roles are offered first; one that fails verification is ignored.
//!
//! ```no_run
//! use secureev_tuf_conformance::Client;
//! use secureev_uptane::Timestamp;
//! # fn main() -> secureev_tuf_conformance::Result<()> {
//! let client = Client::new("/var/lib/tuf/metadata").with_metadata_url("http://127.0.0.1:8080/metadata");
//! client.init("root.json".as_ref())?;
//! let now = Timestamp::from_unix(1_900_000_000);
//! client.download(&["a/file.txt".into()], "http://127.0.0.1:8080/targets", "out".as_ref(), now)?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod fetch;
pub mod quote;
pub mod store;

pub use error::{Error, Result};
pub use fetch::{Fetch, HttpFetcher};

use quote::{quote_component, quote_path};
use secureev_uptane::metadata::TargetFile;
use secureev_uptane::trusted::{
    Limits, MetaRequest, TargetSearch, TimestampUpdate, TrustedRepository,
};
use secureev_uptane::verify::check_length_and_hashes;
use secureev_uptane::Timestamp;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use store::{write_atomic, MetadataDir};

const ROOT: &str = "root";
const TIMESTAMP: &str = "timestamp";
const SNAPSHOT: &str = "snapshot";
const TARGETS: &str = "targets";
const TOP_LEVEL_ROLES: [&str; 4] = [ROOT, TIMESTAMP, SNAPSHOT, TARGETS];

/// A TUF client over one metadata directory and one repository.
#[derive(Debug, Clone)]
pub struct Client<F = HttpFetcher> {
    metadata: MetadataDir,
    metadata_url: Option<String>,
    limits: Limits,
    fetcher: F,
}

impl Client<HttpFetcher> {
    /// A client keeping its trusted metadata in `metadata_dir`, fetching over
    /// HTTP, with the default [`Limits`].
    pub fn new(metadata_dir: impl Into<PathBuf>) -> Self {
        Client {
            metadata: MetadataDir::new(metadata_dir),
            metadata_url: None,
            limits: Limits::default(),
            fetcher: HttpFetcher::default(),
        }
    }
}

impl<F: Fetch> Client<F> {
    /// Fetch with `fetcher` instead.
    pub fn with_fetcher<G: Fetch>(self, fetcher: G) -> Client<G> {
        Client {
            metadata: self.metadata,
            metadata_url: self.metadata_url,
            limits: self.limits,
            fetcher,
        }
    }

    /// Base URL of the repository's metadata (a trailing `/` is added).
    pub fn with_metadata_url(mut self, url: &str) -> Self {
        self.metadata_url = Some(with_trailing_slash(url));
        self
    }

    /// Size caps and search bounds.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The metadata directory.
    pub fn metadata_dir(&self) -> &MetadataDir {
        &self.metadata
    }

    /// Install `trusted_root` as the trusted root (`root.json`). As the suite's
    /// CLI protocol asks, nothing is verified and nothing is fetched here: the
    /// root is checked against its own keys by the next [`Client::refresh`].
    pub fn init(&self, trusted_root: &Path) -> Result<()> {
        let bytes = fs::read(trusted_root).map_err(Error::io(trusted_root))?;
        fs::create_dir_all(self.metadata.dir()).map_err(Error::io(self.metadata.dir()))?;
        self.metadata.store(ROOT, &bytes)
    }

    /// Update the top-level metadata (TUF 1.0 §5.3) and return the trusted
    /// state, ready for target searches.
    pub fn refresh(&self, now: Timestamp) -> Result<TrustedRepository> {
        let base = self
            .metadata_url
            .as_deref()
            .ok_or_else(|| Error::Usage("refresh needs a metadata URL".into()))?;
        // TUF 1.0 §5.2: "Load the trusted root metadata file." It must be
        // signed by a threshold of its own keys; a root that is not fails the
        // refresh before any request is made.
        let root = self.metadata.load(ROOT)?.ok_or_else(|| {
            Error::Usage(format!(
                "no trusted root in {}: run init first",
                self.metadata.dir().display()
            ))
        })?;
        let mut repo = TrustedRepository::new("repository", &root)
            .map_err(Error::verify("trusted root.json"))?
            .with_limits(self.limits.clone());
        self.update_root(&mut repo, base)?;
        self.update_timestamp(&mut repo, base, now)?;
        self.update_snapshot(&mut repo, base, now)?;
        self.load_targets(&mut repo, base, TARGETS, ROOT, now)?;
        Ok(repo)
    }

    /// Refresh, then download and verify each target into `target_dir`,
    /// stopping at the first that fails. Returns the files written (or found
    /// already verified) in order.
    pub fn download(
        &self,
        target_names: &[String],
        target_base_url: &str,
        target_dir: &Path,
        now: Timestamp,
    ) -> Result<Vec<PathBuf>> {
        if target_names.is_empty() {
            return Err(Error::Usage(
                "download needs at least one target name".into(),
            ));
        }
        let mut repo = self.refresh(now)?;
        target_names
            .iter()
            .map(|name| self.download_target(&mut repo, name, target_base_url, target_dir, now))
            .collect()
    }

    /// Find `name` through the delegations of a refreshed `repo` and store the
    /// verified target as `target_dir/<quote(name, safe="")>`. A file already
    /// there whose length and hashes match is kept and not downloaded again.
    pub fn download_target(
        &self,
        repo: &mut TrustedRepository,
        name: &str,
        target_base_url: &str,
        target_dir: &Path,
        now: Timestamp,
    ) -> Result<PathBuf> {
        let base = self
            .metadata_url
            .as_deref()
            .ok_or_else(|| Error::Usage("download needs a metadata URL".into()))?;
        let target = self.find_target(repo, base, name, now)?;
        // TUF 1.0 §5.7.2: the target must match the length and hashes its
        // targets role lists. A target listed without hashes cannot be
        // verified at all, so it is refused rather than accepted unchecked.
        if target.hashes.is_empty() {
            return Err(Error::verification_of(
                name.to_owned(),
                secureev_uptane::Error::NoHashes {
                    what: name.to_owned(),
                },
            ));
        }
        let verify = |data: &[u8]| {
            check_length_and_hashes(name, data, Some(target.length), Some(&target.hashes))
        };
        let path = target_dir.join(quote_component(name));
        if let Ok(existing) = fs::read(&path) {
            if verify(&existing).is_ok() {
                return Ok(path);
            }
        }
        let url = target_url(
            &with_trailing_slash(target_base_url),
            name,
            &target,
            repo.root().consistent_snapshot,
        );
        let data = self.fetcher.fetch(&url, target.length)?;
        verify(&data).map_err(Error::verify(url))?;
        fs::create_dir_all(target_dir).map_err(Error::io(target_dir))?;
        write_atomic(&path, &data)?;
        Ok(path)
    }

    /// TUF 1.0 §5.3.2–§5.3.9: fetch root N+1, N+2, ... until the repository
    /// answers 403 or 404, at most `max_root_rotations` times; each must be
    /// signed by the trusted root and by itself, and is persisted at once.
    fn update_root(&self, repo: &mut TrustedRepository, base: &str) -> Result<()> {
        let first = repo.root().common.version.saturating_add(1);
        let end = first.saturating_add(self.limits.max_root_rotations);
        for version in first..end {
            let url = format!("{base}{version}.root.json");
            let bytes = match self.fetcher.fetch(&url, self.limits.root_max_length) {
                Ok(bytes) => bytes,
                Err(Error::HttpStatus {
                    status: 403 | 404, ..
                }) => break,
                Err(e) => return Err(e),
            };
            repo.update_root(&bytes).map_err(Error::verify(&url))?;
            self.metadata.store(ROOT, &bytes)?;
        }
        Ok(())
    }

    /// TUF 1.0 §5.4. The local timestamp goes first, so that the remote one
    /// is checked against it for rollback; a local file that fails is ignored
    /// (an expired one is still kept by the core as the rollback reference).
    /// A remote timestamp of the same version changes nothing and is not
    /// stored.
    fn update_timestamp(
        &self,
        repo: &mut TrustedRepository,
        base: &str,
        now: Timestamp,
    ) -> Result<()> {
        if let Ok(Some(local)) = self.metadata.load(TIMESTAMP) {
            let _ignored = repo.update_timestamp(&local, now);
        }
        let url = format!("{base}timestamp.json");
        let bytes = self.fetcher.fetch(&url, self.limits.timestamp_max_length)?;
        match repo
            .update_timestamp(&bytes, now)
            .map_err(Error::verify(&url))?
        {
            TimestampUpdate::Updated => self.metadata.store(TIMESTAMP, &bytes),
            TimestampUpdate::Unchanged => Ok(()),
        }
    }

    /// TUF 1.0 §5.5. A local snapshot that is still the one the timestamp
    /// lists (and not expired) is final: nothing is downloaded.
    fn update_snapshot(
        &self,
        repo: &mut TrustedRepository,
        base: &str,
        now: Timestamp,
    ) -> Result<()> {
        if let Ok(Some(local)) = self.metadata.load(SNAPSHOT) {
            if repo.update_snapshot_local_skip_hashes(&local, now).is_ok() {
                return Ok(());
            }
        }
        let request = repo
            .snapshot_request()
            .map_err(Error::verify("timestamp.json"))?;
        let url = meta_url(base, &request);
        let bytes = self.fetcher.fetch(&url, request.max_length)?;
        repo.update_snapshot(&bytes, now)
            .map_err(Error::verify(&url))?;
        self.metadata.store(SNAPSHOT, &bytes)
    }

    /// TUF 1.0 §5.6: load targets role `role` delegated by `parent` (`root`
    /// for the top-level targets), from the local copy when it still matches
    /// the snapshot, else from the repository.
    fn load_targets(
        &self,
        repo: &mut TrustedRepository,
        base: &str,
        role: &str,
        parent: &str,
        now: Timestamp,
    ) -> Result<()> {
        // Delegated roles share the directory with the top-level roles: a
        // delegation named like one would overwrite its trusted file.
        if parent != ROOT && TOP_LEVEL_ROLES.contains(&role) {
            return Err(Error::verification_of(
                format!("delegation from {parent}"),
                secureev_uptane::Error::InvalidDelegation {
                    role: role.to_owned(),
                    reason: "a delegated role may not take the name of a top-level role".into(),
                },
            ));
        }
        if let Ok(Some(local)) = self.metadata.load(role) {
            if repo
                .update_delegated_targets(&local, role, parent, now)
                .is_ok()
            {
                return Ok(());
            }
        }
        let request = repo
            .targets_request(role)
            .map_err(Error::verify(format!("snapshot entry for {role}")))?;
        let url = meta_url(base, &request);
        let bytes = self.fetcher.fetch(&url, request.max_length)?;
        repo.update_delegated_targets(&bytes, role, parent, now)
            .map_err(Error::verify(&url))?;
        self.metadata.store(role, &bytes)
    }

    /// TUF 1.0 §5.6.7: pre-order depth-first search, loading each delegated
    /// role the core asks for.
    fn find_target(
        &self,
        repo: &mut TrustedRepository,
        base: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<TargetFile> {
        let mut loaded: HashSet<String> = HashSet::new();
        loop {
            match repo
                .find_target(name)
                .map_err(Error::verify(format!("delegations for {name:?}")))?
            {
                TargetSearch::Found { target, .. } => return Ok(target),
                TargetSearch::NotFound => {
                    return Err(Error::verification_of(
                        format!("target {name:?}"),
                        secureev_uptane::Error::TargetNotFound {
                            target: name.to_owned(),
                        },
                    ))
                }
                TargetSearch::NeedRole { role, parent } => {
                    // Each role is loaded once; asking twice would loop forever.
                    if !loaded.insert(role.clone()) {
                        return Err(Error::verification_of(
                            format!("delegations for {name:?}"),
                            secureev_uptane::Error::Workflow(format!(
                                "role {role} requested again after it was loaded"
                            )),
                        ));
                    }
                    self.load_targets(repo, base, &role, &parent, now)?;
                }
            }
        }
    }
}

/// URL of a snapshot or targets role: `<base><version>.<role>.json` under
/// consistent snapshots, `<base><role>.json` otherwise, with the role name
/// quoted as python-tuf quotes it.
fn meta_url(base: &str, request: &MetaRequest) -> String {
    let role = quote_component(&request.role);
    match request.version {
        Some(version) => format!("{base}{version}.{role}.json"),
        None => format!("{base}{role}.json"),
    }
}

/// TUF 1.0 §5.7.3: with consistent snapshots a target is fetched as
/// `<dir>/<hash>.<file name>`, the hash prefixing the last path component.
/// SHA-256 is used when listed, else the first listed hash.
fn target_url(base: &str, name: &str, target: &TargetFile, consistent_snapshot: bool) -> String {
    let hash = target
        .hashes
        .get("sha256")
        .or_else(|| target.hashes.values().next());
    let path = match (consistent_snapshot, hash) {
        (true, Some(hash)) => match name.rsplit_once('/') {
            Some((dir, file)) => format!("{dir}/{hash}.{file}"),
            None => format!("{hash}.{name}"),
        },
        _ => name.to_owned(),
    };
    format!("{base}{}", quote_path(&path))
}

fn with_trailing_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn target(hashes: &[(&str, &str)]) -> TargetFile {
        TargetFile {
            length: 1,
            hashes: hashes
                .iter()
                .map(|(a, h)| ((*a).to_owned(), (*h).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            custom: None,
            unrecognized: Default::default(),
        }
    }

    #[test]
    fn target_urls_prefix_the_last_component_with_the_hash() {
        let t = target(&[("sha512", "bb"), ("sha256", "aa")]);
        assert_eq!(
            target_url("http://h/t/", "a/b/c.txt", &t, true),
            "http://h/t/a/b/aa.c.txt"
        );
        assert_eq!(
            target_url("http://h/t/", "c.txt", &t, true),
            "http://h/t/aa.c.txt"
        );
        assert_eq!(
            target_url("http://h/t/", "a/c.txt", &t, false),
            "http://h/t/a/c.txt"
        );
        let t = target(&[("sha512", "bb")]);
        assert_eq!(
            target_url("http://h/t/", "x y", &t, true),
            "http://h/t/bb.x%20y"
        );
    }

    #[test]
    fn meta_urls_quote_role_names() {
        let req = |role: &str, version| MetaRequest {
            role: role.into(),
            version,
            max_length: 1,
        };
        assert_eq!(
            meta_url("u/", &req("snapshot", Some(3))),
            "u/3.snapshot.json"
        );
        assert_eq!(meta_url("u/", &req("targets", None)), "u/targets.json");
        assert_eq!(meta_url("u/", &req("../x", Some(1))), "u/1...%2Fx.json");
        assert_eq!(meta_url("u/", &req("?", None)), "u/%3F.json");
    }

    #[test]
    fn base_urls_get_one_trailing_slash() {
        assert_eq!(with_trailing_slash("http://h/m"), "http://h/m/");
        assert_eq!(with_trailing_slash("http://h/m/"), "http://h/m/");
    }
}
