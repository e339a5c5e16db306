//! [`UpdateClient`]: the whole update workflow as one sans-IO state machine.
//!
//! Every program that verifies Uptane or TUF metadata drives this one machine:
//! the Primary's daemon, the Secondary ECU (`secureev-ecu`), the TUF
//! conformance client, the attack-fixture runner, the benches. It owns the
//! *order* of the checks (TUF 1.0 §5.3, Uptane 2.1 §5.4.4.2 full and
//! §5.4.4.1 partial verification); the checks themselves live in
//! [`crate::trusted`] (per role) and [`crate::uptane`] (the Director rules and
//! the Director/Image match). The caller only moves bytes:
//!
//! ```
//! use secureev_uptane::builder::RepoBuilder;
//! use secureev_uptane::client::{Decision, Repo, Step, UpdateClient};
//! use secureev_uptane::custom::{EcuIdentifier, TargetCustom};
//! use secureev_uptane::uptane::{EcuInfo, Vehicle};
//! use secureev_uptane::Timestamp;
//! use std::collections::BTreeMap;
//!
//! let now = Timestamp::from_unix(1_800_000_000);
//! // An Image repository with one image, and a Director assigning it to ECU-1.
//! let mut image = RepoBuilder::new(now);
//! image.add_target("fw.bin", b"firmware", None);
//! let mut director = RepoBuilder::new(now);
//! let mut entry = image.targets["fw.bin"].clone();
//! let ids = BTreeMap::from([("ECU-1".to_string(), EcuIdentifier {
//!     hardware_id: "hw".into(), unrecognized: Default::default() })]);
//! entry.custom = Some(TargetCustom { ecu_identifiers: ids, ..Default::default() }.to_value());
//! director.targets.insert("fw.bin".into(), entry);
//! let (image, director) = (image.publish().unwrap(), director.publish().unwrap());
//!
//! let ecu = EcuInfo { serial: "ECU-1".into(), hardware_id: "hw".into(), installed: None };
//! let vehicle = Vehicle::new("VIN", "ECU-1", [ecu]);
//! let mut client = UpdateClient::primary(vehicle, &director.root, &image.root, now).unwrap();
//! let plan = loop {
//!     match client.next_step().unwrap() {
//!         // Nothing stored yet: no trusted timestamp, snapshot or targets.
//!         Step::Load { .. } => client.offer_not_found().unwrap(),
//!         Step::Fetch(req) => {
//!             let repo = if req.repo == Repo::Director { &director } else { &image };
//!             match req.role.as_str() {
//!                 "root" => client.offer_not_found().unwrap(), // no newer root
//!                 "timestamp" => client.offer(&repo.timestamp).unwrap(),
//!                 "snapshot" => client.offer(&repo.snapshot).unwrap(),
//!                 _ => client.offer(&repo.targets).unwrap(),
//!             }
//!         }
//!         // The exact bytes accepted: a real caller writes them to storage.
//!         Step::Persist { .. } => {}
//!         Step::Done(Decision::Plan(plan)) => break plan,
//!         Step::Done(other) => panic!("{other:?}"),
//!     }
//! };
//! assert_eq!(plan.targets()[0].name(), "fw.bin");
//! ```
//!
//! ## Steps
//! [`UpdateClient::next`] says what to do; each request stays the current one
//! until it is answered:
//! - [`Step::Load`]: offer the *stored* copy of a role (or
//!   [`UpdateClient::offer_not_found`] when there is none). Stored copies come
//!   first, as the rollback reference and so that nothing unchanged is
//!   downloaded twice; one that no longer verifies is ignored.
//! - [`Step::Fetch`]: get a file from the repository, at most
//!   [`MetaRequest::max_length`] bytes, and offer it. Only a root `N+1`
//!   ([`MetaRequest::optional`]) may be answered with "not found": it ends the
//!   root chain. For any other file "not found" is an error, and a caller
//!   usually reports its own (an HTTP 404, a file the Primary did not send).
//! - [`Step::Persist`]: store these exact bytes as the trusted copy of the
//!   role. It is handed out once; the next call to `next_step` moves on.
//! - [`Step::Done`]: the [`Decision`].
//!
//! An offer that fails verification ends the run with a [`Failure`]: the
//! core's attack-named [`Error`] and what was being checked. When the offered
//! file itself was accepted and a check after it failed (the delegation search
//! or the Director/Image match), the offer succeeds, the file is handed out
//! with [`Step::Persist`] as usual, and the next `next_step` returns the
//! failure.

use crate::error::{Error, Result};
use crate::metadata::TargetFile;
use crate::quote::quote_component;
use crate::time::Timestamp;
use crate::trusted::{Layout, Limits, TargetSearch, TimestampUpdate, TrustedRepository};
use crate::uptane::{
    director_assignments, full_verification, partial_verification, secondary_full_verification,
    Assignment, EcuInfo, FullVerification, UpdatePlan, Vehicle,
};
use crate::verify::Verified;
use std::collections::{BTreeSet, VecDeque};
use std::fmt;

/// One of the two Uptane repositories. A TUF client ([`UpdateClient::tuf`])
/// has one repository, reported as [`Repo::Image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Repo {
    /// The Director repository.
    Director,
    /// The Image repository (or the one repository of a TUF client).
    Image,
}

impl Repo {
    /// `"director"` or `"image"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Repo::Director => "director",
            Repo::Image => "image",
        }
    }
}

impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A metadata role of one repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Root.
    Root,
    /// Timestamp.
    Timestamp,
    /// Snapshot.
    Snapshot,
    /// Top-level targets.
    Targets,
    /// A delegated targets role, by name (which the repository chose: quote
    /// it before using it in a path, see [`crate::quote`]).
    Delegated(String),
}

impl Role {
    /// The role's name in metadata (`"root"`, ..., or the delegated name).
    pub fn as_str(&self) -> &str {
        match self {
            Role::Root => "root",
            Role::Timestamp => "timestamp",
            Role::Snapshot => "snapshot",
            Role::Targets => "targets",
            Role::Delegated(name) => name,
        }
    }

    fn named(name: &str) -> Role {
        match name {
            "targets" => Role::Targets,
            other => Role::Delegated(other.to_owned()),
        }
    }
}

/// A file to fetch from a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// Which repository.
    pub repo: Repo,
    /// Which role.
    pub role: Role,
    /// The file name as TUF 1.0 §5 spells it: `<N>.root.json`,
    /// `timestamp.json`, `<V>.<role>.json` under consistent snapshots, else
    /// `<role>.json`; role names percent-encoded
    /// ([`crate::quote::quote_component`]).
    pub file: String,
    /// The version in the file name, if any.
    pub version: Option<u64>,
    /// Accept at most this many bytes (endless-data attack): the length the
    /// referring metadata gives, or the cap in [`Limits`].
    pub max_length: u64,
}

impl MetaRequest {
    fn new(repo: Repo, role: Role, version: Option<u64>, max_length: u64) -> Self {
        let name = match &role {
            Role::Delegated(name) => quote_component(name),
            other => other.as_str().to_owned(),
        };
        let file = match version {
            Some(v) => format!("{v}.{name}.json"),
            None => format!("{name}.json"),
        };
        MetaRequest {
            repo,
            role,
            file,
            version,
            max_length,
        }
    }

    /// Whether "not found" is an answer: true only for root `N+1`, whose
    /// absence ends the root chain (Uptane 2.1 §5.4.4.3 step 2.2).
    pub fn optional(&self) -> bool {
        self.role == Role::Root
    }
}

/// What the caller does next.
#[derive(Debug, Clone)]
// One step at a time is alive; boxing the decision would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// Offer the stored copy of this role, or report that there is none.
    Load {
        /// Which repository.
        repo: Repo,
        /// Which role.
        role: Role,
    },
    /// Fetch this file and offer it.
    Fetch(MetaRequest),
    /// Store these exact bytes as the trusted copy of `role` (for a root: as
    /// version `version` and as the current root).
    Persist {
        /// Which repository.
        repo: Repo,
        /// Which role.
        role: Role,
        /// The version of the metadata in `bytes`.
        version: u64,
        /// The bytes that were received and verified.
        bytes: Vec<u8>,
    },
    /// The run is complete.
    Done(Decision),
}

/// What a completed run decided.
#[derive(Debug, Clone)]
// Made once per run.
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    /// Full verification: what to install. On a Primary
    /// ([`UpdateClient::primary`]) every ECU of the vehicle; on a Secondary
    /// ([`UpdateClient::secondary_full`]) at most its own image. Empty when
    /// nothing is assigned that is not installed already.
    Plan(Verified<UpdatePlan>),
    /// Partial verification ([`UpdateClient::secondary_partial`]): this ECU's
    /// Director assignment, if there is one.
    Assignment(Option<Verified<Assignment>>),
    /// A TUF client's top-level metadata is up to date; look targets up with
    /// [`UpdateClient::find_target`].
    Refreshed,
    /// A TUF client's target lookup found this entry.
    Target {
        /// The targets role that lists it.
        role: String,
        /// The entry (length, hashes, custom).
        target: TargetFile,
    },
}

/// Whether a repository served anything new in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Not checked in this run (Uptane 2.1 §5.4.4.2 step 6: the Director
    /// assigned nothing that is not installed, so the Image repository was
    /// not asked).
    NotChecked,
    /// The stored metadata is still current: "there are no new updates"
    /// (§5.4.4.2 step 4 and 8); nothing but the timestamp was downloaded.
    Unchanged,
    /// New metadata was accepted.
    Updated,
}

/// Why a run stopped: the core's error and what was being checked when it
/// was raised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", .0.context, .0.error)]
pub struct Failure(Box<FailureInner>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct FailureInner {
    context: String,
    repo: Option<Repo>,
    file: Option<String>,
    error: Error,
}

impl Failure {
    fn new(context: String, repo: Option<Repo>, file: Option<String>, error: Error) -> Self {
        Failure(Box::new(FailureInner {
            context,
            repo,
            file,
            error,
        }))
    }

    fn file(repo: Repo, file: &str, error: Error) -> Self {
        Self::new(
            format!("{repo} {file}"),
            Some(repo),
            Some(file.to_owned()),
            error,
        )
    }

    fn step(context: impl Into<String>, error: Error) -> Self {
        Self::new(context.into(), None, None, error)
    }

    /// What was being checked: `"director 2.root.json"`, `"image
    /// 3.snapshot.json"`, `"full verification"`, ...
    pub fn context(&self) -> &str {
        &self.0.context
    }

    /// The repository, when the failure concerns one file of it.
    pub fn repo(&self) -> Option<Repo> {
        self.0.repo
    }

    /// The file, when the failure concerns one ([`MetaRequest::file`]).
    pub fn file_name(&self) -> Option<&str> {
        self.0.file.as_deref()
    }

    /// The attack-named error.
    pub fn error(&self) -> &Error {
        &self.0.error
    }

    /// The attack-named error, by value.
    pub fn into_error(self) -> Error {
        self.0.error
    }
}

/// Who verifies, and so what a run decides.
#[derive(Debug, Clone)]
enum Mode {
    Primary(Vehicle),
    SecondaryFull(EcuInfo),
    SecondaryPartial(EcuInfo),
    Tuf,
}

/// The expectations, one per request: each consumes itself when answered and
/// returns the next state.
#[derive(Debug, Clone)]
// One state per client.
#[allow(clippy::large_enum_variant)]
enum State {
    /// Root `version` (= N+1); `walked` roots accepted in this run so far.
    ExpectRoot {
        repo: Repo,
        version: u64,
        walked: u64,
    },
    ExpectStoredTimestamp(Repo),
    ExpectTimestamp(Repo),
    ExpectStoredSnapshot(Repo),
    ExpectSnapshot(MetaRequest),
    ExpectStoredTargets(Repo),
    ExpectTargets {
        request: MetaRequest,
        stored: Option<Vec<u8>>,
    },
    ExpectStoredDelegated {
        role: String,
        parent: String,
    },
    ExpectDelegated {
        request: MetaRequest,
        parent: String,
    },
    Done(Decision),
    /// A failure ended the run; it is returned again.
    Failed(Failure),
}

/// What is being looked up through the Image repository's delegations.
#[derive(Debug, Clone)]
enum Search {
    /// The Director/Image match of the decision (full verification).
    Match,
    /// One target of a TUF client.
    Target(String),
}

/// The update workflow of one run (see the module documentation).
#[derive(Debug, Clone)]
pub struct UpdateClient {
    mode: Mode,
    now: Timestamp,
    director: TrustedRepository,
    image: Option<TrustedRepository>,
    state: State,
    persist: VecDeque<Step>,
    freshness: [Freshness; 2],
    search: Search,
    /// Delegated roles loaded by the current search, with their delegator:
    /// a role asked for again would loop.
    loaded: BTreeSet<(String, String)>,
    /// The Image repository was refreshed by another run in this cycle
    /// ([`UpdateClient::primary_with_image`]): it is matched, not fetched.
    image_refreshed: bool,
}

/// An Image repository whose top-level metadata a TUF run of this client
/// refreshed ([`UpdateClient::into_refreshed`]): the only way to hand a
/// verified repository state to another run
/// ([`UpdateClient::primary_with_image`]), e.g. one Image repository refresh
/// shared by many vehicles of a fleet simulator that are served the same
/// bytes in the same cycle.
#[derive(Debug, Clone)]
pub struct RefreshedRepository {
    repo: TrustedRepository,
    at: Timestamp,
}

impl RefreshedRepository {
    /// The refreshed trusted state.
    pub fn repository(&self) -> &TrustedRepository {
        &self.repo
    }

    /// The time the refresh checked expiry against.
    pub fn verified_at(&self) -> Timestamp {
        self.at
    }
}

impl UpdateClient {
    /// Full verification on a Primary (Uptane 2.1 §5.4.4.2): both
    /// repositories, every ECU of `vehicle`. The roots are the trusted ones
    /// (shipped or stored); each must be signed by a threshold of its own keys.
    pub fn primary(
        vehicle: Vehicle,
        director_root: &[u8],
        image_root: &[u8],
        now: Timestamp,
    ) -> std::result::Result<Self, Failure> {
        Self::new(Mode::Primary(vehicle), director_root, Some(image_root), now)
    }

    /// Full verification on a Primary whose Image repository was refreshed
    /// by a TUF run of this client in the same cycle
    /// ([`UpdateClient::into_refreshed`]). The Director repository is
    /// verified as by [`UpdateClient::primary`], from `director`, which must
    /// hold only its trusted root ([`TrustedRepository::is_root_only`]; a
    /// root verified once and shared). Nothing is fetched from the Image
    /// repository: its refreshed state is checked to be unexpired at `now`
    /// (freeze) and matched against the Director's assignments, delegated
    /// roles being loaded as usual; [`UpdateClient::freshness`] reports it
    /// [`Freshness::Unchanged`].
    pub fn primary_with_image(
        vehicle: Vehicle,
        director: &TrustedRepository,
        image: &RefreshedRepository,
        now: Timestamp,
    ) -> std::result::Result<Self, Failure> {
        if !director.is_root_only() {
            return Err(Failure::step(
                "start",
                Error::Workflow("a run starts from the Director's trusted root only".into()),
            ));
        }
        let mut client = Self::with_repositories(
            Mode::Primary(vehicle),
            director.clone(),
            Some(image.repo.clone()),
            now,
        );
        client.image_refreshed = true;
        client.state = client.start(Repo::Director);
        Ok(client)
    }

    /// The refreshed repository of a completed TUF run
    /// ([`Decision::Refreshed`] or a found target), to start other runs from
    /// ([`UpdateClient::primary_with_image`]).
    pub fn into_refreshed(self) -> std::result::Result<RefreshedRepository, Failure> {
        match (&self.mode, &self.state, self.image) {
            (Mode::Tuf, State::Done(Decision::Refreshed | Decision::Target { .. }), Some(repo)) => {
                Ok(RefreshedRepository { repo, at: self.now })
            }
            _ => Err(Failure::step(
                "refreshed repository",
                Error::Workflow("only a TUF run that refreshed its repository has one".into()),
            )),
        }
    }

    /// Full verification on a Secondary: both repositories, and only this
    /// ECU's image is matched (§5.4.4.2 step 10).
    pub fn secondary_full(
        ecu: EcuInfo,
        director_root: &[u8],
        image_root: &[u8],
        now: Timestamp,
    ) -> std::result::Result<Self, Failure> {
        Self::new(
            Mode::SecondaryFull(ecu),
            director_root,
            Some(image_root),
            now,
        )
    }

    /// Partial verification on a Secondary (Uptane 2.1 §5.4.4.1): the
    /// Director root chain (to follow a rotation of the Director's Targets
    /// key, as §5.4.4.1 suggests) and the Director targets. The Director
    /// repository is read as [`Layout::RootAndTargetsOnly`]: a partial ECU
    /// keeps no timestamp or snapshot.
    pub fn secondary_partial(
        ecu: EcuInfo,
        director_root: &[u8],
        now: Timestamp,
    ) -> std::result::Result<Self, Failure> {
        let mut c = Self::new(Mode::SecondaryPartial(ecu), director_root, None, now)?;
        c.director = c.director.with_layout(Layout::RootAndTargetsOnly);
        Ok(c)
    }

    /// A TUF 1.0 client of one repository (§5.3): refresh the top-level
    /// metadata to [`Decision::Refreshed`], then look targets up with
    /// [`UpdateClient::find_target`].
    pub fn tuf(name: &str, root: &[u8], now: Timestamp) -> std::result::Result<Self, Failure> {
        // TUF 1.0 §5.2: "Load the trusted root metadata file."
        let repo = TrustedRepository::new(name, root)
            .map_err(|e| Failure::step("trusted root.json", e))?;
        // The one repository is the Image repository; `director` holds an
        // unused copy so that the machine needs no second representation.
        let mut c = Self::with_repositories(Mode::Tuf, repo.clone(), Some(repo), now);
        c.state = c.start(Repo::Image);
        Ok(c)
    }

    fn new(
        mode: Mode,
        director_root: &[u8],
        image_root: Option<&[u8]>,
        now: Timestamp,
    ) -> std::result::Result<Self, Failure> {
        let director = TrustedRepository::new(Repo::Director.as_str(), director_root)
            .map_err(|e| Failure::file(Repo::Director, "root.json", e))?;
        let image = image_root
            .map(|root| {
                TrustedRepository::new(Repo::Image.as_str(), root)
                    .map_err(|e| Failure::file(Repo::Image, "root.json", e))
            })
            .transpose()?;
        let mut client = Self::with_repositories(mode, director, image, now);
        client.state = client.start(Repo::Director);
        Ok(client)
    }

    fn with_repositories(
        mode: Mode,
        director: TrustedRepository,
        image: Option<TrustedRepository>,
        now: Timestamp,
    ) -> Self {
        UpdateClient {
            mode,
            now,
            director,
            image,
            state: State::Failed(Failure::step(
                "start",
                Error::Workflow("not started".into()),
            )),
            persist: VecDeque::new(),
            freshness: [Freshness::NotChecked; 2],
            search: Search::Match,
            loaded: BTreeSet::new(),
            image_refreshed: false,
        }
    }

    /// Size caps and search bounds for both repositories. Call before the
    /// first step.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.director = self.director.with_limits(limits.clone());
        self.image = self.image.map(|i| i.with_limits(limits));
        self
    }

    /// The Director repository's layout ([`Layout::Tuf`] by default;
    /// [`Layout::RootAndTargetsOnly`] for Directors that serve no timestamp
    /// or snapshot). Call before the first step; ignored by partial
    /// verification, which always reads root and targets only.
    pub fn with_director_layout(mut self, layout: Layout) -> Self {
        if !matches!(self.mode, Mode::SecondaryPartial(_) | Mode::Tuf) {
            self.director = self.director.with_layout(layout);
        }
        self
    }

    /// What to do next. A [`Step::Persist`] is handed out once; every other
    /// step stays current until it is answered. After a failure the failure
    /// is returned again.
    pub fn next_step(&mut self) -> std::result::Result<Step, Failure> {
        if let Some(step) = self.persist.pop_front() {
            return Ok(step);
        }
        Ok(match &self.state {
            State::ExpectRoot { repo, version, .. } => Step::Fetch(MetaRequest::new(
                *repo,
                Role::Root,
                Some(*version),
                self.repo(*repo).limits().root_max_length,
            )),
            State::ExpectStoredTimestamp(repo) => Step::Load {
                repo: *repo,
                role: Role::Timestamp,
            },
            State::ExpectTimestamp(repo) => Step::Fetch(MetaRequest::new(
                *repo,
                Role::Timestamp,
                None,
                self.repo(*repo).limits().timestamp_max_length,
            )),
            State::ExpectStoredSnapshot(repo) => Step::Load {
                repo: *repo,
                role: Role::Snapshot,
            },
            State::ExpectSnapshot(request) => Step::Fetch(request.clone()),
            State::ExpectStoredTargets(repo) => Step::Load {
                repo: *repo,
                role: Role::Targets,
            },
            State::ExpectTargets { request, .. } => Step::Fetch(request.clone()),
            State::ExpectStoredDelegated { role, .. } => Step::Load {
                repo: Repo::Image,
                role: Role::named(role),
            },
            State::ExpectDelegated { request, .. } => Step::Fetch(request.clone()),
            State::Done(decision) => Step::Done(decision.clone()),
            State::Failed(failure) => return Err(failure.clone()),
        })
    }

    /// Answer the current [`Step::Load`] or [`Step::Fetch`] with bytes.
    pub fn offer(&mut self, bytes: &[u8]) -> std::result::Result<(), Failure> {
        self.answer(Some(bytes))
    }

    /// Answer the current [`Step::Load`] with "nothing stored", or a
    /// [`Step::Fetch`] of an optional file with "not found".
    pub fn offer_not_found(&mut self) -> std::result::Result<(), Failure> {
        self.answer(None)
    }

    /// After [`Decision::Refreshed`] or a found target: look `target` up
    /// through the delegations (TUF 1.0 §5.6.7), loading the roles it needs.
    pub fn find_target(&mut self, target: &str) -> std::result::Result<(), Failure> {
        match (&self.mode, &self.state) {
            (Mode::Tuf, State::Done(Decision::Refreshed | Decision::Target { .. })) => {}
            _ => {
                return Err(Failure::step(
                    format!("target {target:?}"),
                    Error::Workflow("find_target needs a refreshed TUF client".into()),
                ))
            }
        }
        self.search = Search::Target(target.to_owned());
        self.loaded.clear();
        let next = self.resolve();
        self.settle(next)
    }

    /// The trusted state of a repository as far as this run got (for the
    /// Image repository: `None` for partial verification).
    pub fn repository(&self, repo: Repo) -> Option<&TrustedRepository> {
        match repo {
            Repo::Director if !matches!(self.mode, Mode::Tuf) => Some(&self.director),
            Repo::Director => None,
            Repo::Image => self.image.as_ref(),
        }
    }

    /// Whether `repo` served anything new in this run.
    pub fn freshness(&self, repo: Repo) -> Freshness {
        self.freshness[repo as usize]
    }

    /// The time the run checks expiry against.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    // ---- transitions ---------------------------------------------------------------

    fn repo(&self, repo: Repo) -> &TrustedRepository {
        match (repo, &self.image) {
            (Repo::Image, Some(image)) => image,
            _ => &self.director,
        }
    }

    fn repo_mut(&mut self, repo: Repo) -> &mut TrustedRepository {
        match (repo, &mut self.image) {
            (Repo::Image, Some(image)) => image,
            _ => &mut self.director,
        }
    }

    fn queue_persist(&mut self, repo: Repo, role: Role, version: u64, bytes: &[u8]) {
        self.persist.push_back(Step::Persist {
            repo,
            role,
            version,
            bytes: bytes.to_vec(),
        });
    }

    fn updated(&mut self, repo: Repo) {
        self.freshness[repo as usize] = Freshness::Updated;
    }

    fn answer(&mut self, bytes: Option<&[u8]>) -> std::result::Result<(), Failure> {
        let state = std::mem::replace(
            &mut self.state,
            State::Failed(Failure::step(
                "answer",
                Error::Workflow("re-entered".into()),
            )),
        );
        let next = match state {
            State::Done(decision) => {
                self.state = State::Done(decision);
                return Err(Failure::step(
                    "offer",
                    Error::Workflow("the run is done; nothing was asked".into()),
                ));
            }
            State::Failed(failure) => Err(failure),
            other => {
                if !self.persist.is_empty() {
                    // The caller skipped a Persist step: what it offers was
                    // not what the machine asked for.
                    self.state = other;
                    return Err(Failure::step(
                        "offer",
                        Error::Workflow("a Persist step was not taken before offering".into()),
                    ));
                }
                self.transition(other, bytes)
            }
        };
        self.settle(next)
    }

    fn settle(&mut self, next: std::result::Result<State, Failure>) -> Result<(), Failure> {
        match next {
            Ok(state) => {
                self.state = state;
                Ok(())
            }
            // The offered bytes were accepted and a later check (the search,
            // the match) failed: the accepted file is still handed out to be
            // persisted, as it would have been had the run gone on, and
            // `next_step` reports the failure after it.
            Err(failure) if !self.persist.is_empty() => {
                self.state = State::Failed(failure);
                Ok(())
            }
            Err(failure) => {
                self.state = State::Failed(failure.clone());
                Err(failure)
            }
        }
    }

    fn transition(
        &mut self,
        state: State,
        bytes: Option<&[u8]>,
    ) -> std::result::Result<State, Failure> {
        let now = self.now;
        match state {
            State::ExpectRoot {
                repo,
                version,
                walked,
            } => {
                let file = format!("{version}.root.json");
                let Some(bytes) = bytes else {
                    // §5.4.4.3 step 2.2: "If this file is not available, the
                    // current Root metadata file is the latest".
                    return Ok(self.after_root(repo));
                };
                // §5.4.4.3 steps 2.3-2.4: "Version N+1 of the Root metadata
                // file SHALL have been signed by the following: (1) a
                // threshold of unique keys specified in the latest Root
                // metadata file (version N), and (2) a threshold of unique
                // keys specified in the new Root metadata file being
                // validated (version N+1)" and its version "is indeed N+1".
                // Step 4 (fast-forward recovery) is recorded by the core: a
                // rotated timestamp or snapshot key discards the stored copies.
                self.repo_mut(repo)
                    .update_root(bytes)
                    .map_err(|e| Failure::file(repo, &file, e))?;
                self.queue_persist(repo, Role::Root, version, bytes);
                self.updated(repo);
                let walked = walked + 1;
                // At most `max_root_rotations` in one run, so that a
                // repository cannot keep a client walking forever.
                if walked >= self.repo(repo).limits().max_root_rotations {
                    return Ok(self.after_root(repo));
                }
                Ok(State::ExpectRoot {
                    repo,
                    version: version + 1,
                    walked,
                })
            }
            State::ExpectStoredTimestamp(repo) => {
                if let Some(bytes) = bytes {
                    // The stored timestamp is the rollback reference for the
                    // new one (§5.4.4.4 step 3: "the version number of the
                    // previous Timestamp metadata file, if any"), unless the
                    // root chain rotated the timestamp or snapshot keys:
                    // §5.4.4.3 step 4, "If the Timestamp and/or Snapshot keys
                    // have been rotated, delete the previous Timestamp and
                    // Snapshot metadata files." A stored file that fails is
                    // ignored; an expired one is still kept as the reference.
                    let _ignored = self.repo_mut(repo).update_timestamp_local(bytes, now);
                }
                Ok(State::ExpectTimestamp(repo))
            }
            State::ExpectTimestamp(repo) => {
                let file = "timestamp.json";
                let bytes = bytes.ok_or_else(|| not_found(repo, file))?;
                // §5.4.4.4: threshold of the root's timestamp keys, no
                // rollback, not expired (and the final root not expired,
                // §5.4.4.3 step 3).
                match self
                    .repo_mut(repo)
                    .update_timestamp(bytes, now)
                    .map_err(|e| Failure::file(repo, file, e))?
                {
                    TimestampUpdate::Updated => {
                        let version = self.repo(repo).timestamp().map_or(0, |t| t.common.version);
                        self.queue_persist(repo, Role::Timestamp, version, bytes);
                        self.updated(repo);
                    }
                    TimestampUpdate::Unchanged => {}
                }
                Ok(State::ExpectStoredSnapshot(repo))
            }
            State::ExpectStoredSnapshot(repo) => {
                // §5.4.4.2 step 4 (Director) and 8 (Image): "Check the
                // previously downloaded Snapshot metadata file ... (if
                // available). If the hashes and version number of that file
                // match the hashes and version number listed in the new
                // Timestamp metadata, there are no new updates and the
                // verification process SHALL be stopped and considered
                // complete." Nothing more is downloaded from this repository:
                // the stored targets it vouches for are the current ones.
                if let Some(bytes) = bytes {
                    if self
                        .repo_mut(repo)
                        .update_snapshot_local_skip_hashes(bytes, now)
                        .is_ok()
                    {
                        return Ok(State::ExpectStoredTargets(repo));
                    }
                }
                // "Otherwise, download and check the Snapshot metadata file"
                // (the stored one, if it verified, stays the rollback
                // reference).
                let request = self
                    .repo(repo)
                    .snapshot_request()
                    .map_err(|e| Failure::file(repo, "timestamp.json", e))?;
                Ok(State::ExpectSnapshot(MetaRequest::new(
                    repo,
                    Role::Snapshot,
                    request.version,
                    request.max_length,
                )))
            }
            State::ExpectSnapshot(request) => {
                let repo = request.repo;
                let bytes = bytes.ok_or_else(|| not_found(repo, &request.file))?;
                // §5.4.4.5: hashes and version as the timestamp lists them,
                // threshold, no rollback of it or of any targets role it
                // lists, not expired.
                self.repo_mut(repo)
                    .update_snapshot(bytes, now)
                    .map_err(|e| Failure::file(repo, &request.file, e))?;
                let version = self.repo(repo).snapshot().map_or(0, |s| s.common.version);
                self.queue_persist(repo, Role::Snapshot, version, bytes);
                self.updated(repo);
                Ok(State::ExpectStoredTargets(repo))
            }
            State::ExpectStoredTargets(repo) => {
                let layout = self.repo(repo).layout();
                if let Some(bytes) = bytes {
                    match layout {
                        // A stored targets file that the trusted snapshot
                        // still lists (same hashes and version) is current.
                        Layout::Tuf => {
                            if self.repo_mut(repo).update_targets(bytes, now).is_ok() {
                                return self.after_targets(repo);
                            }
                        }
                        // Without a snapshot the stored targets are only the
                        // rollback reference (§5.4.4.6 step 4: "the version
                        // number of the previous Targets metadata file, if
                        // any"); the Director is asked every time.
                        Layout::RootAndTargetsOnly => {
                            let _ignored = self.repo_mut(repo).update_targets(bytes, now);
                        }
                    }
                }
                let request = self
                    .repo(repo)
                    .targets_request("targets")
                    .map_err(|e| Failure::file(repo, "snapshot.json", e))?;
                Ok(State::ExpectTargets {
                    request: MetaRequest::new(
                        repo,
                        Role::Targets,
                        request.version,
                        request.max_length,
                    ),
                    stored: match layout {
                        Layout::RootAndTargetsOnly => bytes.map(<[u8]>::to_vec),
                        Layout::Tuf => None,
                    },
                })
            }
            State::ExpectTargets { request, stored } => {
                let repo = request.repo;
                let bytes = bytes.ok_or_else(|| not_found(repo, &request.file))?;
                // §5.4.4.6: version as the snapshot lists it (or no rollback
                // without a snapshot), threshold of the root's targets keys,
                // not expired.
                self.repo_mut(repo)
                    .update_targets(bytes, now)
                    .map_err(|e| Failure::file(repo, &request.file, e))?;
                let version = self.repo(repo).targets().map_or(0, |t| t.common.version);
                self.queue_persist(repo, Role::Targets, version, bytes);
                if stored.as_deref() != Some(bytes) {
                    self.updated(repo);
                }
                self.after_targets(repo)
            }
            State::ExpectStoredDelegated { role, parent } => {
                // A stored copy that the trusted snapshot still lists is
                // current; otherwise it is fetched.
                if let Some(bytes) = bytes {
                    if self
                        .repo_mut(Repo::Image)
                        .update_delegated_targets(bytes, &role, &parent, now)
                        .is_ok()
                    {
                        return self.resolve();
                    }
                }
                let request = self
                    .repo(Repo::Image)
                    .targets_request(&role)
                    .map_err(|e| Failure::file(Repo::Image, "snapshot.json", e))?;
                Ok(State::ExpectDelegated {
                    request: MetaRequest::new(
                        Repo::Image,
                        Role::Delegated(role),
                        request.version,
                        request.max_length,
                    ),
                    parent,
                })
            }
            State::ExpectDelegated { request, parent } => {
                let bytes = bytes.ok_or_else(|| not_found(Repo::Image, &request.file))?;
                let role = request.role.as_str().to_owned();
                // §5.4.4.7 step 1: "Download and check the current metadata
                // file, following the procedure in {{check_targets}}", with
                // the threshold "specified in the Targets metadata file that
                // delegated authority to this role".
                self.repo_mut(Repo::Image)
                    .update_delegated_targets(bytes, &role, &parent, now)
                    .map_err(|e| {
                        Failure::new(
                            format!("image {} (delegated by {parent})", request.file),
                            Some(Repo::Image),
                            Some(request.file.clone()),
                            e,
                        )
                    })?;
                let version = self
                    .repo(Repo::Image)
                    .delegated(&role)
                    .map_or(0, |t| t.common.version);
                self.queue_persist(Repo::Image, Role::Delegated(role), version, bytes);
                self.resolve()
            }
            State::Done(_) | State::Failed(_) => Err(Failure::step(
                "offer",
                Error::Workflow("nothing was asked".into()),
            )),
        }
    }

    /// The first request for a repository: root N+1.
    fn start(&mut self, repo: Repo) -> State {
        if self.freshness[repo as usize] == Freshness::NotChecked {
            self.freshness[repo as usize] = Freshness::Unchanged;
        }
        State::ExpectRoot {
            repo,
            version: self.repo(repo).root().common.version + 1,
            walked: 0,
        }
    }

    fn after_root(&mut self, repo: Repo) -> State {
        match self.repo(repo).layout() {
            // Timestamp next (§5.4.4.2 step 3 / 7). The expiry of the final
            // root (§5.4.4.3 step 3) is checked with the timestamp.
            Layout::Tuf => State::ExpectStoredTimestamp(repo),
            Layout::RootAndTargetsOnly => State::ExpectStoredTargets(repo),
        }
    }

    fn after_targets(&mut self, repo: Repo) -> std::result::Result<State, Failure> {
        match (repo, &self.mode) {
            (Repo::Director, Mode::SecondaryPartial(ecu)) => {
                // §5.4.4.1 step 2 and §5.4.4.6 steps 6-7 for this ECU.
                let assignment = partial_verification(&self.director, ecu)
                    .map_err(|e| Failure::step("partial verification", e))?;
                Ok(State::Done(Decision::Assignment(assignment)))
            }
            (Repo::Director, Mode::Primary(vehicle)) => {
                // §5.4.4.6 steps 6-8 on the Director targets, then step 6 of
                // §5.4.4.2: "If the Targets metadata from the Directory
                // repository indicates that there are no new targets that are
                // not already currently installed, the verification process
                // SHOULD be stopped and considered complete."
                let assignments = director_assignments(&self.director, vehicle)
                    .map_err(|e| Failure::step("full verification", e))?;
                let pending = assignments
                    .iter()
                    .any(|a| !a.is_installed_on(&vehicle.ecus[&a.ecu_serial]));
                if !pending {
                    self.resolve()
                } else if self.image_refreshed {
                    // Refreshed in this cycle by another run: §5.4.4.2 steps
                    // 7-9 were done there; freeze is checked again here.
                    self.repo(Repo::Image)
                        .check_current(self.now)
                        .map_err(|e| Failure::step("image repository (refreshed)", e))?;
                    self.freshness[Repo::Image as usize] = Freshness::Unchanged;
                    self.after_targets(Repo::Image)
                } else {
                    Ok(self.start(Repo::Image))
                }
            }
            (Repo::Director, Mode::SecondaryFull(ecu)) => {
                let pending = partial_verification(&self.director, ecu)
                    .map_err(|e| Failure::step("full verification", e))?
                    .is_some_and(|a| !a.is_installed_on(ecu));
                if pending {
                    Ok(self.start(Repo::Image))
                } else {
                    self.resolve()
                }
            }
            (Repo::Image, Mode::Tuf) => Ok(State::Done(Decision::Refreshed)),
            (Repo::Director, Mode::Tuf) => Err(Failure::step(
                "refresh",
                Error::Workflow("a TUF client has no Director".into()),
            )),
            (Repo::Image, _) => {
                self.search = Search::Match;
                self.loaded.clear();
                self.resolve()
            }
        }
    }

    /// Run the current search with the roles loaded so far; ask for the next
    /// delegated role it needs, or decide.
    fn resolve(&mut self) -> std::result::Result<State, Failure> {
        let image = self.image.as_ref();
        let outcome = match (&self.mode, &self.search) {
            (Mode::Tuf, Search::Target(name)) => {
                let image = image.ok_or_else(no_image)?;
                // TUF 1.0 §5.6.7: pre-order depth-first search of the
                // delegation graph.
                match image
                    .find_target(name)
                    .map_err(|e| Failure::step(format!("delegations for {name:?}"), e))?
                {
                    TargetSearch::Found { role, target } => {
                        return Ok(State::Done(Decision::Target { role, target }))
                    }
                    TargetSearch::NeedRole { role, parent } => {
                        FullVerification::NeedImageRole { role, parent }
                    }
                    TargetSearch::NotFound => {
                        return Err(Failure::step(
                            format!("target {name:?}"),
                            Error::TargetNotFound {
                                target: name.clone(),
                            },
                        ))
                    }
                }
            }
            (Mode::Primary(vehicle), _) => {
                // §5.4.4.2 step 10 for every assignment not yet installed
                // (an Image repository that was not refreshed is never
                // consulted: nothing is pending then).
                let image = image.ok_or_else(no_image)?;
                full_verification(&self.director, image, vehicle)
                    .map_err(|e| Failure::step("full verification", e))?
            }
            (Mode::SecondaryFull(ecu), _) => {
                let image = image.ok_or_else(no_image)?;
                secondary_full_verification(&self.director, image, ecu)
                    .map_err(|e| Failure::step("full verification", e))?
            }
            (Mode::SecondaryPartial(_), _) | (Mode::Tuf, Search::Match) => {
                return Err(Failure::step(
                    "delegations",
                    Error::Workflow("no search in this mode".into()),
                ))
            }
        };
        match outcome {
            FullVerification::Done(plan) => Ok(State::Done(Decision::Plan(plan))),
            FullVerification::NeedImageRole { role, parent } => {
                // §5.4.4.7 step 4.3: "perform delegation resolution, starting
                // at step 1" for the delegated role. Each role is loaded once
                // per search; asked for again, the search would never end.
                if !self.loaded.insert((role.clone(), parent.clone())) {
                    return Err(Failure::step(
                        format!("image {role} (delegated by {parent})"),
                        Error::Workflow(format!("role {role} requested again after it was loaded")),
                    ));
                }
                Ok(State::ExpectStoredDelegated { role, parent })
            }
        }
    }
}

fn not_found(repo: Repo, file: &str) -> Failure {
    Failure::file(
        repo,
        file,
        Error::Workflow(format!("{repo} repository did not serve {file}")),
    )
}

fn no_image() -> Failure {
    Failure::step(
        "full verification",
        Error::Workflow("no image repository in this mode".into()),
    )
}

/// The state of a repository, for callers that keep no state between runs
/// (servers checking what they are about to publish). Root `N+1` must be
/// signed by a threshold of root N's keys and of its own, with version N+1
/// (Uptane 2.1 §5.4.4.3 steps 2.3-2.4); returns the trusted state with `next`
/// as its root.
pub fn check_next_root(
    name: &str,
    trusted_root: &[u8],
    next: &[u8],
) -> std::result::Result<TrustedRepository, Error> {
    let mut t = TrustedRepository::new(name, trusted_root)?;
    t.update_root(next)?;
    Ok(t)
}

/// A synchronous driver for callers that hold everything in memory (tests,
/// tools, benches): `fetch` answers [`Step::Fetch`], `load` answers
/// [`Step::Load`] (both `None` for "not found"), `persist` takes
/// [`Step::Persist`]. Returns the decision.
pub fn drive(
    client: &mut UpdateClient,
    mut fetch: impl FnMut(&MetaRequest) -> Option<Vec<u8>>,
    mut load: impl FnMut(Repo, &Role) -> Option<Vec<u8>>,
    mut persist: impl FnMut(Repo, &Role, u64, &[u8]),
) -> std::result::Result<Decision, Failure> {
    loop {
        match client.next_step()? {
            Step::Load { repo, role } => match load(repo, &role) {
                Some(bytes) => client.offer(&bytes)?,
                None => client.offer_not_found()?,
            },
            Step::Fetch(request) => match fetch(&request) {
                Some(bytes) => client.offer(&bytes)?,
                None => client.offer_not_found()?,
            },
            Step::Persist {
                repo,
                role,
                version,
                bytes,
            } => persist(repo, &role, version, &bytes),
            Step::Done(decision) => return Ok(decision),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Published, RepoBuilder};
    use crate::custom::{EcuIdentifier, TargetCustom};
    use crate::keys::SigningKey;
    use crate::metadata::TargetFile;
    use crate::uptane::InstalledImage;
    use std::collections::BTreeMap;

    const NOW: Timestamp = Timestamp::from_unix(1_900_000_000);
    const VIN: &str = "VIN-1";

    fn ecu(installed: Option<&TargetFile>, name: &str) -> EcuInfo {
        EcuInfo {
            serial: "ECU-1".into(),
            hardware_id: "hw".into(),
            installed: installed.map(|t| InstalledImage {
                name: name.into(),
                length: t.length,
                hashes: t.hashes.clone(),
                release_counter: 0,
            }),
        }
    }

    fn vehicle(ecu: EcuInfo) -> Vehicle {
        Vehicle::new(VIN, "ECU-1", [ecu])
    }

    /// A Director assigning `entry` (named `name`) to ECU-1.
    fn director_for(name: &str, entry: &TargetFile) -> RepoBuilder {
        let mut d = RepoBuilder::new(NOW);
        let mut t = entry.clone();
        let ids = BTreeMap::from([(
            "ECU-1".to_string(),
            EcuIdentifier {
                hardware_id: "hw".into(),
                unrecognized: Default::default(),
            },
        )]);
        t.custom = Some(
            TargetCustom {
                ecu_identifiers: ids,
                ..Default::default()
            }
            .to_value(),
        );
        d.targets.insert(name.into(), t);
        d.targets_extra
            .insert("custom".into(), serde_json::json!({ "vin": VIN }));
        d
    }

    /// Served repositories, the client's storage, and a log of every step.
    #[derive(Default)]
    struct World {
        director: Published,
        image: Published,
        stored: BTreeMap<(Repo, Role), Vec<u8>>,
        log: Vec<String>,
    }

    impl World {
        fn served(&self, repo: Repo) -> &Published {
            match repo {
                Repo::Director => &self.director,
                Repo::Image => &self.image,
            }
        }

        fn run(&mut self, client: &mut UpdateClient) -> std::result::Result<Decision, Failure> {
            let log = std::cell::RefCell::new(Vec::new());
            let stored = std::cell::RefCell::new(std::mem::take(&mut self.stored));
            let outcome = drive(
                client,
                |req| {
                    log.borrow_mut()
                        .push(format!("fetch {} {}", req.repo, req.file));
                    let p = self.served(req.repo);
                    match &req.role {
                        Role::Root => req.version.and_then(|v| p.roots.get(&v).cloned()),
                        Role::Timestamp => Some(p.timestamp.clone()),
                        Role::Snapshot => Some(p.snapshot.clone()),
                        Role::Targets => Some(p.targets.clone()),
                        Role::Delegated(name) => p.delegated.get(name).cloned(),
                    }
                },
                |repo, role| {
                    log.borrow_mut()
                        .push(format!("load {repo} {}", role.as_str()));
                    stored.borrow().get(&(repo, role.clone())).cloned()
                },
                |repo, role, version, bytes| {
                    log.borrow_mut()
                        .push(format!("persist {repo} {} v{version}", role.as_str()));
                    stored
                        .borrow_mut()
                        .insert((repo, role.clone()), bytes.to_vec());
                },
            );
            self.stored = stored.into_inner();
            self.log = log.into_inner();
            outcome
        }
    }

    /// An Image repository with `fw.bin` and a Director assigning it.
    fn simple_world() -> (World, TargetFile) {
        let mut image = RepoBuilder::new(NOW);
        image.add_target("fw.bin", b"firmware", None);
        let entry = image.targets["fw.bin"].clone();
        let world = World {
            image: image.publish().unwrap(),
            director: director_for("fw.bin", &entry).publish().unwrap(),
            ..Default::default()
        };
        (world, entry)
    }

    fn primary(world: &World, ecu: EcuInfo) -> UpdateClient {
        UpdateClient::primary(vehicle(ecu), &world.director.root, &world.image.root, NOW).unwrap()
    }

    fn plan_names(d: &Decision) -> Vec<String> {
        match d {
            Decision::Plan(p) => p.targets().iter().map(|t| t.name().to_owned()).collect(),
            other => panic!("not a plan: {other:?}"),
        }
    }

    #[test]
    fn full_verification_steps_follow_the_uptane_order() {
        let (mut world, _) = simple_world();
        let mut client = primary(&world, ecu(None, ""));
        let decision = world.run(&mut client).unwrap();
        assert_eq!(plan_names(&decision), ["fw.bin"]);
        let mut expected = Vec::new();
        for repo in ["director", "image"] {
            expected.extend([
                format!("fetch {repo} 2.root.json"),
                format!("load {repo} timestamp"),
                format!("fetch {repo} timestamp.json"),
                format!("persist {repo} timestamp v1"),
                format!("load {repo} snapshot"),
                format!("fetch {repo} 1.snapshot.json"),
                format!("persist {repo} snapshot v1"),
                format!("load {repo} targets"),
                format!("fetch {repo} 1.targets.json"),
                format!("persist {repo} targets v1"),
            ]);
        }
        assert_eq!(world.log, expected);
        assert_eq!(client.freshness(Repo::Director), Freshness::Updated);
        assert_eq!(client.freshness(Repo::Image), Freshness::Updated);
        // Done stays Done.
        assert!(matches!(
            client.next_step(),
            Ok(Step::Done(Decision::Plan(_)))
        ));
        assert!(client.offer(b"{}").is_err());
    }

    #[test]
    fn nothing_new_downloads_only_roots_and_timestamps() {
        let (mut world, entry) = simple_world();
        world.run(&mut primary(&world, ecu(None, ""))).unwrap();

        // Uptane 2.1 §5.4.4.2 step 4: the stored Director snapshot is the
        // one the timestamp lists; the stored targets are used. The image is
        // not installed yet (e.g. waiting for consent): steps 7-10 still
        // run, again from the stored copies.
        let mut client = primary(&world, ecu(None, ""));
        let decision = world.run(&mut client).unwrap();
        assert_eq!(plan_names(&decision), ["fw.bin"]);
        let fetched: Vec<&String> = world
            .log
            .iter()
            .filter(|l| l.starts_with("fetch"))
            .collect();
        assert_eq!(
            fetched,
            [
                "fetch director 2.root.json",
                "fetch director timestamp.json",
                "fetch image 2.root.json",
                "fetch image timestamp.json",
            ]
        );
        assert!(!world.log.iter().any(|l| l.starts_with("persist")));
        assert_eq!(client.freshness(Repo::Director), Freshness::Unchanged);
        assert_eq!(client.freshness(Repo::Image), Freshness::Unchanged);

        // Step 6: installed already, so the Image repository is not asked.
        let mut client = primary(&world, ecu(Some(&entry), "fw.bin"));
        let decision = world.run(&mut client).unwrap();
        assert!(plan_names(&decision).is_empty());
        assert!(
            !world.log.iter().any(|l| l.contains("image")),
            "{:?}",
            world.log
        );
        assert_eq!(client.freshness(Repo::Image), Freshness::NotChecked);
    }

    #[test]
    fn a_stored_snapshot_that_is_not_final_is_the_rollback_reference() {
        let mut image = RepoBuilder::new(NOW);
        image.add_target("fw.bin", b"firmware", None);
        let entry = image.targets["fw.bin"].clone();
        let v1 = image.publish().unwrap();
        let v2 = image.publish().unwrap();
        let mut world = World {
            image: v1.clone(),
            director: director_for("fw.bin", &entry).publish().unwrap(),
            ..Default::default()
        };
        world.run(&mut primary(&world, ecu(None, ""))).unwrap();
        world.image = v2;
        let mut client = primary(&world, ecu(None, ""));
        world.run(&mut client).unwrap();
        assert!(world
            .log
            .contains(&"fetch image 2.snapshot.json".to_string()));
        assert!(world.log.contains(&"persist image snapshot v2".to_string()));
        assert_eq!(client.freshness(Repo::Image), Freshness::Updated);
        assert_eq!(client.freshness(Repo::Director), Freshness::Unchanged);

        // Served v1 again (a rollback): the stored v2 timestamp refuses it.
        world.image = v1;
        let err = world.run(&mut primary(&world, ecu(None, ""))).unwrap_err();
        assert!(matches!(err.error(), Error::Rollback { .. }), "{err}");
        assert_eq!(err.context(), "image timestamp.json");
        assert_eq!(err.repo(), Some(Repo::Image));
    }

    #[test]
    fn not_found_ends_the_root_chain_and_fails_required_files() {
        let (world, _) = simple_world();
        let mut client = primary(&world, ecu(None, ""));
        let Step::Fetch(req) = client.next_step().unwrap() else {
            panic!("root first")
        };
        assert!(req.optional());
        assert_eq!(req.file, "2.root.json");
        // The same request until it is answered.
        assert!(matches!(client.next_step().unwrap(), Step::Fetch(r) if r == req));
        client.offer_not_found().unwrap();
        assert!(matches!(
            client.next_step().unwrap(),
            Step::Load {
                repo: Repo::Director,
                role: Role::Timestamp
            }
        ));
        client.offer_not_found().unwrap();
        let Step::Fetch(req) = client.next_step().unwrap() else {
            panic!("timestamp")
        };
        assert!(!req.optional());
        assert_eq!(req.max_length, Limits::default().timestamp_max_length);
        let err = client.offer_not_found().unwrap_err();
        assert_eq!(err.file_name(), Some("timestamp.json"));
        // Failed stays failed.
        assert_eq!(client.next_step().unwrap_err(), err);
    }

    #[test]
    fn root_chain_is_walked_and_capped() {
        let (mut world, _) = simple_world();
        let mut image = RepoBuilder::new(NOW);
        image.add_target("fw.bin", b"firmware", None);
        let v1_root = image.publish_root().unwrap();
        for _ in 0..3 {
            image.rotate_keys("root", vec![SigningKey::generate_p256()], 1);
            image.publish_root().unwrap();
        }
        let published = image.publish().unwrap();
        assert_eq!(published.roots.len(), 4);
        world.image = published;
        let run = |world: &mut World, cap: u64| {
            let mut client =
                UpdateClient::primary(vehicle(ecu(None, "")), &world.director.root, &v1_root, NOW)
                    .unwrap()
                    .with_limits(Limits {
                        max_root_rotations: cap,
                        ..Limits::default()
                    });
            let out = world.run(&mut client);
            (out, client)
        };
        let (out, client) = run(&mut world, 256);
        out.unwrap();
        assert_eq!(
            client
                .repository(Repo::Image)
                .unwrap()
                .root()
                .common
                .version,
            4
        );
        for v in 2..=4 {
            assert!(world.log.contains(&format!("persist image root v{v}")));
        }
        // With a cap of 2 the chain stops at root 3 in this run (only the
        // root keys rotated, so the rest still verifies); the next run goes on.
        let (out, client) = run(&mut world, 2);
        out.unwrap();
        assert!(!world.log.contains(&"fetch image 4.root.json".to_string()));
        assert_eq!(
            client
                .repository(Repo::Image)
                .unwrap()
                .root()
                .common
                .version,
            3
        );
    }

    #[test]
    fn fast_forward_recovery_discards_the_stored_timestamp() {
        let (mut world, entry) = simple_world();
        let mut image = RepoBuilder::new(NOW);
        image.add_target("fw.bin", b"firmware", None);
        let good = image.publish().unwrap();
        // An attacker with the timestamp key signs version 1,000,000.
        image.versions.insert("timestamp".into(), 999_999);
        let snapshot = good.snapshot.clone();
        let forwarded = image.sign_timestamp(1, &snapshot).unwrap();
        world.image = good.clone();
        world.director = director_for("fw.bin", &entry).publish().unwrap();
        world
            .stored
            .insert((Repo::Image, Role::Timestamp), forwarded.clone());
        // Without a rotation the stored timestamp stays the reference.
        let err = world.run(&mut primary(&world, ecu(None, ""))).unwrap_err();
        assert!(matches!(err.error(), Error::Rollback { .. }), "{err}");

        // The repository rotates the timestamp key (root 2) and restarts at
        // version 1: the stored timestamp is discarded (Uptane 2.1 §5.4.4.3
        // step 4) and the update goes through.
        image.rotate_keys("timestamp", vec![SigningKey::generate_p256()], 1);
        image.versions.insert("timestamp".into(), 0);
        world.image = image.publish().unwrap();
        world
            .stored
            .insert((Repo::Image, Role::Timestamp), forwarded);
        let decision = world
            .run(
                &mut UpdateClient::primary(
                    vehicle(ecu(None, "")),
                    &world.director.root,
                    &good.root,
                    NOW,
                )
                .unwrap(),
            )
            .unwrap();
        assert_eq!(plan_names(&decision), ["fw.bin"]);
        assert!(world
            .log
            .contains(&"persist image timestamp v1".to_string()));
    }

    #[test]
    fn delegation_search_is_pre_order_and_loads_each_role_once() {
        let mut image = RepoBuilder::new(NOW);
        image.add_target("top.bin", b"top", None);
        image.add_delegation("targets", "a", &["*"], false);
        image.add_delegation("targets", "b", &["*"], false);
        image.add_delegation("b", "c", &["*"], false);
        image.add_delegation("targets", "d", &["*"], false);
        image
            .add_delegated_target("c", "deep.bin", b"deep")
            .unwrap();
        image
            .add_delegated_target("d", "deep.bin", b"other")
            .unwrap();
        let entry = image.delegated[2].targets["deep.bin"].clone();
        let mut world = World {
            image: image.publish().unwrap(),
            director: director_for("deep.bin", &entry).publish().unwrap(),
            ..Default::default()
        };
        let decision = world.run(&mut primary(&world, ecu(None, ""))).unwrap();
        let Decision::Plan(plan) = decision else {
            panic!()
        };
        assert_eq!(plan.targets()[0].image_role(), "c");
        let delegated: Vec<&String> = world
            .log
            .iter()
            .filter(|l| l.contains("image") && !l.contains("targets") && !l.contains("root"))
            .filter(|l| !l.contains("timestamp") && !l.contains("snapshot"))
            .collect();
        assert_eq!(
            delegated,
            [
                "load image a",
                "fetch image 1.a.json",
                "persist image a v1",
                "load image b",
                "fetch image 1.b.json",
                "persist image b v1",
                "load image c",
                "fetch image 1.c.json",
                "persist image c v1",
            ]
        );
        // Next run: every role comes from storage, nothing is fetched again.
        world.run(&mut primary(&world, ecu(None, ""))).unwrap();
        assert!(!world.log.iter().any(|l| l.starts_with("fetch image 1.")));
    }

    #[test]
    fn an_accepted_role_is_persisted_before_a_later_failure() {
        let mut image = RepoBuilder::new(NOW);
        image.add_delegation("targets", "a", &["*"], false);
        let mut world = World {
            image: image.publish().unwrap(),
            ..Default::default()
        };
        let mut client = UpdateClient::tuf("repository", &world.image.root, NOW).unwrap();
        world.run(&mut client).unwrap();
        client.find_target("missing.bin").unwrap();
        let err = world.run(&mut client).unwrap_err();
        assert!(matches!(err.error(), Error::TargetNotFound { .. }), "{err}");
        assert_eq!(
            world.log,
            ["load image a", "fetch image 1.a.json", "persist image a v1"]
        );
    }

    #[test]
    fn meta_requests_name_files_as_tuf_does() {
        let req = |role: Role, version| MetaRequest::new(Repo::Image, role, version, 1).file;
        assert_eq!(req(Role::Snapshot, Some(3)), "3.snapshot.json");
        assert_eq!(req(Role::Targets, None), "targets.json");
        assert_eq!(req(Role::Root, Some(2)), "2.root.json");
        // Delegated role names are quoted as python-tuf quotes them.
        assert_eq!(
            req(Role::Delegated("../x".into()), Some(1)),
            "1...%2Fx.json"
        );
        assert_eq!(req(Role::Delegated("?".into()), None), "%3F.json");
    }

    #[test]
    fn persist_must_be_taken_before_the_next_offer() {
        let (world, _) = simple_world();
        let mut client = primary(&world, ecu(None, ""));
        client.offer_not_found().unwrap(); // no newer root
        client.offer_not_found().unwrap(); // nothing stored
        client.offer(&world.director.timestamp).unwrap();
        assert!(client.offer_not_found().is_err());
        assert!(matches!(
            client.next_step().unwrap(),
            Step::Persist {
                role: Role::Timestamp,
                ..
            }
        ));
        assert!(matches!(
            client.next_step().unwrap(),
            Step::Load {
                role: Role::Snapshot,
                ..
            }
        ));
    }

    #[test]
    fn partial_verification_reads_director_root_and_targets_only() {
        let (mut world, entry) = simple_world();
        let mut client =
            UpdateClient::secondary_partial(ecu(None, ""), &world.director.root, NOW).unwrap();
        let decision = world.run(&mut client).unwrap();
        let Decision::Assignment(Some(a)) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(a.name, "fw.bin");
        assert_eq!(
            world.log,
            [
                "fetch director 2.root.json",
                "load director targets",
                "fetch director targets.json",
                "persist director targets v1",
            ]
        );
        // Installed: still the assignment (the ECU decides it is installed).
        let mut client =
            UpdateClient::secondary_partial(ecu(Some(&entry), "fw.bin"), &world.director.root, NOW)
                .unwrap();
        assert!(matches!(
            world.run(&mut client).unwrap(),
            Decision::Assignment(Some(_))
        ));
        assert!(client.repository(Repo::Image).is_none());
    }

    #[test]
    fn secondary_full_verification_matches_only_its_own_image() {
        let (mut world, _) = simple_world();
        let mut client = UpdateClient::secondary_full(
            ecu(None, ""),
            &world.director.root,
            &world.image.root,
            NOW,
        )
        .unwrap();
        assert_eq!(plan_names(&world.run(&mut client).unwrap()), ["fw.bin"]);
        let other = EcuInfo {
            serial: "ECU-2".into(),
            ..ecu(None, "")
        };
        let mut client =
            UpdateClient::secondary_full(other, &world.director.root, &world.image.root, NOW)
                .unwrap();
        assert!(plan_names(&world.run(&mut client).unwrap()).is_empty());
        assert_eq!(client.freshness(Repo::Image), Freshness::NotChecked);
    }

    #[test]
    fn tuf_client_refreshes_then_finds_targets_on_demand() {
        let mut image = RepoBuilder::new(NOW);
        image.add_target("top.bin", b"top", None);
        image.add_delegation("targets", "a", &["a/*"], false);
        image.add_delegated_target("a", "a/x.bin", b"x").unwrap();
        let mut world = World {
            image: image.publish().unwrap(),
            ..Default::default()
        };
        let mut client = UpdateClient::tuf("repository", &world.image.root, NOW).unwrap();
        assert!(client.find_target("top.bin").is_err(), "not refreshed yet");
        assert!(matches!(
            world.run(&mut client).unwrap(),
            Decision::Refreshed
        ));
        client.find_target("top.bin").unwrap();
        assert!(matches!(
            world.run(&mut client).unwrap(),
            Decision::Target { role, .. } if role == "targets"
        ));
        assert!(
            world.log.is_empty(),
            "found in top-level targets: {:?}",
            world.log
        );
        client.find_target("a/x.bin").unwrap();
        assert!(matches!(
            world.run(&mut client).unwrap(),
            Decision::Target { role, .. } if role == "a"
        ));
        assert_eq!(
            world.log,
            ["load image a", "fetch image 1.a.json", "persist image a v1"]
        );
        client.find_target("missing").unwrap_err();
    }

    /// A TUF run of the Image repository, refreshed from `world`.
    fn refreshed_image(world: &mut World, now: Timestamp) -> RefreshedRepository {
        let mut tuf = UpdateClient::tuf("image", &world.image.root, now).unwrap();
        assert!(matches!(world.run(&mut tuf).unwrap(), Decision::Refreshed));
        tuf.into_refreshed().unwrap()
    }

    #[test]
    fn a_refreshed_image_repository_is_matched_not_fetched() {
        let (mut world, _) = simple_world();
        let image = refreshed_image(&mut world, NOW);
        world.stored.clear();
        let director = TrustedRepository::new("director", &world.director.root).unwrap();
        let mut client =
            UpdateClient::primary_with_image(vehicle(ecu(None, "")), &director, &image, NOW)
                .unwrap();
        let decision = world.run(&mut client).unwrap();
        assert_eq!(plan_names(&decision), ["fw.bin"]);
        // The Director as in a full run; nothing from the Image repository.
        assert!(
            world.log.iter().all(|l| !l.contains("image")),
            "{:?}",
            world.log
        );
        assert!(world
            .log
            .contains(&"fetch director 2.root.json".to_string()));
        assert!(world
            .log
            .contains(&"persist director targets v1".to_string()));
        assert_eq!(client.freshness(Repo::Director), Freshness::Updated);
        assert_eq!(client.freshness(Repo::Image), Freshness::Unchanged);

        // The same plan as a run that fetches the Image repository itself.
        world.stored.clear();
        let full = world.run(&mut primary(&world, ecu(None, ""))).unwrap();
        assert_eq!(plan_names(&full), plan_names(&decision));
    }

    #[test]
    fn a_refreshed_image_repository_that_expired_since_is_a_freeze() {
        let mut image = RepoBuilder::new(NOW);
        image.add_target("fw.bin", b"firmware", None);
        // The Image timestamp lives one hour; the Director's far longer.
        image
            .expires
            .insert("timestamp".into(), NOW.plus_secs(3_600));
        let entry = image.targets["fw.bin"].clone();
        let mut world = World {
            image: image.publish().unwrap(),
            director: director_for("fw.bin", &entry).publish().unwrap(),
            ..Default::default()
        };
        let refreshed = refreshed_image(&mut world, NOW);
        world.stored.clear();
        let later = NOW.plus_secs(7_200);
        let director = TrustedRepository::new("director", &world.director.root).unwrap();
        let mut client =
            UpdateClient::primary_with_image(vehicle(ecu(None, "")), &director, &refreshed, later)
                .unwrap();
        let failure = world.run(&mut client).unwrap_err();
        assert_eq!(
            failure.error().attack(),
            Some(crate::Attack::Freeze),
            "{failure}"
        );
        assert_eq!(failure.context(), "image repository (refreshed)");
    }

    #[test]
    fn only_a_finished_tuf_run_hands_out_its_repository_and_only_a_root_starts_a_run() {
        let (mut world, _) = simple_world();
        // Not refreshed yet; and not a TUF run.
        let tuf = UpdateClient::tuf("image", &world.image.root, NOW).unwrap();
        assert!(tuf.into_refreshed().is_err());
        let mut full = primary(&world, ecu(None, ""));
        world.run(&mut full).unwrap();
        let director = full.repository(Repo::Director).unwrap().clone();
        assert!(full.into_refreshed().is_err());
        // A Director state past its root is not a start.
        let image = refreshed_image(&mut world, NOW);
        assert!(!director.is_root_only());
        let err = UpdateClient::primary_with_image(vehicle(ecu(None, "")), &director, &image, NOW)
            .unwrap_err();
        assert!(matches!(err.error(), Error::Workflow(_)), "{err}");
    }

    #[test]
    fn check_next_root_refuses_a_root_not_signed_by_the_old_keys() {
        let mut repo = RepoBuilder::new(NOW);
        let v1 = repo.publish_root().unwrap();
        repo.rotate_keys("root", vec![SigningKey::generate_p256()], 1);
        let v2 = repo.publish_root().unwrap();
        assert_eq!(
            check_next_root("r", &v1, &v2)
                .unwrap()
                .root()
                .common
                .version,
            2
        );
        repo.previous_root_keys.clear();
        repo.rotate_keys("root", vec![SigningKey::generate_p256()], 1);
        repo.previous_root_keys.clear();
        let v3 = repo.publish_root().unwrap();
        assert!(matches!(
            check_next_root("r", &v2, &v3),
            Err(Error::ThresholdNotMet { .. })
        ));
    }
}
