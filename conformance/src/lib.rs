//! # secureev-tuf-conformance
//!
//! A TUF 1.0 client for the public TUF conformance suite
//! (`theupdateframework/tuf-conformance`), built on the sans-IO verification
//! core [`secureev_uptane`]. It lets the suite check the core against the
//! specification and against python-tuf, which the suite's expectations follow.
//!
//! ## Architecture and the I/O boundary
//! Every decision about trust, and the order of the TUF 1.0 §5.3 client
//! workflow, is the core's: [`secureev_uptane::client::UpdateClient`] in its
//! TUF mode, the same machine the Uptane daemon and ECU drive. This crate only
//! moves bytes: [`Client`] answers the machine's steps from the trusted files
//! of a metadata directory and over HTTP ([`fetch`]), and persists exactly the
//! bytes the core accepted ([`store`]). The current time is an argument: the binary reads the
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
use secureev_uptane::client::{Decision, Failure, Repo, Role, Step, UpdateClient};
use secureev_uptane::metadata::TargetFile;
use secureev_uptane::trusted::Limits;
use secureev_uptane::verify::check_length_and_hashes;
use secureev_uptane::Checked;
use secureev_uptane::Timestamp;
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

    /// Update the top-level metadata (TUF 1.0 §5.3) and return the refreshed
    /// client, ready for target lookups ([`Client::download_target`]).
    pub fn refresh(&self, now: Timestamp) -> Result<UpdateClient> {
        let base = self.base("refresh")?;
        // TUF 1.0 §5.2: "Load the trusted root metadata file." It must be
        // signed by a threshold of its own keys; a root that is not fails the
        // refresh before any request is made.
        let root = self.metadata.load(ROOT)?.ok_or_else(|| {
            Error::Usage(format!(
                "no trusted root in {}: run init first",
                self.metadata.dir().display()
            ))
        })?;
        let mut client = UpdateClient::tuf("repository", &root, now)
            .map_err(|f| Error::verification_of("trusted root.json", f.into_error()))?
            .with_limits(self.limits.clone());
        match self.drive(&mut client, base)? {
            Decision::Refreshed => Ok(client),
            other => Err(unexpected(&other)),
        }
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
        let mut client = self.refresh(now)?;
        target_names
            .iter()
            .map(|name| self.download_target(&mut client, name, target_base_url, target_dir))
            .collect()
    }

    /// Find `name` through the delegations of a refreshed `client` and store
    /// the verified target as `target_dir/<quote(name, safe="")>`. A file
    /// already there whose length and hashes match is kept and not downloaded
    /// again.
    pub fn download_target(
        &self,
        client: &mut UpdateClient,
        name: &str,
        target_base_url: &str,
        target_dir: &Path,
    ) -> Result<PathBuf> {
        let base = self.base("download")?;
        // TUF 1.0 §5.6.7: the client searches the delegations, asking for the
        // roles it needs.
        client.find_target(name).map_err(failure(base))?;
        let target = match self.drive(client, base)? {
            Decision::Target { target, .. } => target,
            other => return Err(unexpected(&other)),
        };
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
            check_length_and_hashes(
                &Checked::Target(name.to_owned()),
                data,
                Some(target.length),
                Some(&target.hashes),
            )
        };
        let path = target_dir.join(quote_component(name));
        if let Ok(existing) = fs::read(&path) {
            if verify(&existing).is_ok() {
                return Ok(path);
            }
        }
        let consistent_snapshot = client
            .repository(Repo::Image)
            .is_some_and(|r| r.root().consistent_snapshot);
        let url = target_url(
            &with_trailing_slash(target_base_url),
            name,
            &target,
            consistent_snapshot,
        );
        let data = self.fetcher.fetch(&url, target.length)?;
        verify(&data).map_err(Error::verify(url))?;
        fs::create_dir_all(target_dir).map_err(Error::io(target_dir))?;
        write_atomic(&path, &data)?;
        Ok(path)
    }

    fn base(&self, what: &str) -> Result<&str> {
        self.metadata_url
            .as_deref()
            .ok_or_else(|| Error::Usage(format!("{what} needs a metadata URL")))
    }

    /// The I/O loop around the core's [`UpdateClient`]: it decides the order
    /// (python-tuf ngclient's, which the suite checks: `<N+1>.root.json`
    /// until 403/404, `timestamp.json`, the snapshot unless the local one is
    /// still current, the targets unless the local copy still matches, then
    /// delegated roles as the search asks); this loop reads local files,
    /// fetches, and stores exactly the bytes the core accepted.
    fn drive(&self, client: &mut UpdateClient, base: &str) -> Result<Decision> {
        loop {
            match client.next_step().map_err(failure(base))? {
                Step::Load { role, .. } => {
                    // Delegated roles share the directory with the top-level
                    // roles: a delegation named like one would overwrite its
                    // trusted file.
                    if let Role::Delegated(name) = &role {
                        if TOP_LEVEL_ROLES.contains(&name.as_str()) {
                            return Err(Error::verification_of(
                                "delegation",
                                secureev_uptane::Error::InvalidDelegation {
                                    role: name.clone(),
                                    reason: "a delegated role may not take the name of a \
                                             top-level role"
                                        .into(),
                                },
                            ));
                        }
                    }
                    // A local file that cannot be read counts as absent.
                    match self.metadata.load(role.as_str()) {
                        Ok(Some(local)) => client.offer(&local),
                        _ => client.offer_not_found(),
                    }
                    .map_err(failure(base))?;
                }
                Step::Fetch(request) => {
                    let url = format!("{base}{}", request.file);
                    match self.fetcher.fetch(&url, request.max_length) {
                        Ok(bytes) => client.offer(&bytes).map_err(failure(base))?,
                        // TUF 1.0 §5.3.3: no newer root.
                        Err(Error::HttpStatus {
                            status: 403 | 404, ..
                        }) if request.optional() => {
                            client.offer_not_found().map_err(failure(base))?
                        }
                        Err(e) => return Err(e),
                    }
                }
                Step::Persist { role, bytes, .. } => self.metadata.store(role.as_str(), &bytes)?,
                Step::Done(decision) => return Ok(decision),
            }
        }
    }
}

/// A core failure as this client's error: named by the URL of the file that
/// failed, or by what was being checked.
fn failure(base: &str) -> impl Fn(Failure) -> Error + '_ {
    move |f| {
        let what = match f.file_name() {
            Some(file) => format!("{base}{file}"),
            None => f.context().to_owned(),
        };
        Error::verification_of(what, f.into_error())
    }
}

fn unexpected(decision: &Decision) -> Error {
    Error::verification_of(
        "refresh",
        secureev_uptane::Error::Workflow(format!("unexpected decision {decision:?}")),
    )
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
    fn base_urls_get_one_trailing_slash() {
        assert_eq!(with_trailing_slash("http://h/m"), "http://h/m/");
        assert_eq!(with_trailing_slash("http://h/m/"), "http://h/m/");
    }
}
