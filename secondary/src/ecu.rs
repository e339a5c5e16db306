//! [`Ecu`]: the secondary ECU's behaviour behind the UDS protocol
//! ([`secureev_uds::server::EcuBackend`]): the DIDs and routines of
//! `docs/secondary-protocol.md`, Uptane verification with the time the Primary
//! wrote, A/B slot files, and signed version reports.
//!
//! Time is injected: verification uses the time written to DID `TIME`, never
//! below the persisted time floor; the host passes `Instant`s to the UDS
//! server only for protocol timers.

use crate::config::{Config, Verification, MAX_METADATA_LEN};
use crate::error::{Error, Result, StorageError, StorageOp};
use crate::keys::EcuKeys;
use crate::state::{LastInstall, Repo, Slot, State, StateDir};
use secureev_uds::codec::{ResetType, RoutineControlType, Session};
use secureev_uds::protocol::{
    self, did, routine, Capabilities, MetadataRole, Region, ReportInfo, ResultCode,
    VerificationType,
};
use secureev_uds::server::{Context, DownloadRequest, EcuBackend, ImageSink, Progress};
use secureev_uds::Nrc;
use secureev_uptane::client::{
    Decision, Failure, MetaRequest, Repo as UptaneRepo, Role, Step, UpdateClient,
};
use secureev_uptane::encryption::{EncryptionInfo, StreamDecryptor};
use secureev_uptane::manifest::{
    sign_ecu_report, EcuVersionReport, InstallationResult, ATTACK_SEPARATOR,
};
use secureev_uptane::trusted::TrustedRepository;
use secureev_uptane::uptane::{Assignment, EcuInfo, InstalledImage, UpdatePlan};
use secureev_uptane::Timestamp;
use secureev_uptane::Verified;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Metadata written by the Primary and not yet verified. Dropped on a return to
/// the default session (`docs/secondary-protocol.md` §2).
#[derive(Debug, Default)]
struct Staged {
    roles: BTreeMap<MetadataRole, Vec<u8>>,
    director_roots: Vec<Vec<u8>>,
    image_roots: Vec<Vec<u8>>,
}

impl Staged {
    fn put(&mut self, role: MetadataRole, bytes: Vec<u8>) {
        match role {
            MetadataRole::DirectorRoot => self.director_roots.push(bytes),
            MetadataRole::ImageRoot => self.image_roots.push(bytes),
            other => {
                self.roles.insert(other, bytes);
            }
        }
    }
}

/// The proof verify-metadata produced for this ECU, kept as it came from the
/// core's client: partial verification's `Verified<Assignment>`, or full
/// verification's `Verified<UpdatePlan>` holding this ECU's one target.
#[derive(Debug, Clone)]
enum Proof {
    Partial(Box<Verified<Assignment>>),
    Full(Verified<UpdatePlan>),
}

/// The target verify-metadata accepted for this ECU: the verified decision
/// itself (never a copy of its value) and its signed encryption parameters.
#[derive(Debug, Clone)]
struct Accepted {
    proof: Proof,
    encryption: Option<EncryptionInfo>,
}

impl Accepted {
    /// The accepted target for this ECU, if the decision names one.
    fn new(proof: Proof) -> Option<Self> {
        if let Proof::Full(plan) = &proof {
            plan.targets().first()?;
        }
        Some(Accepted {
            proof,
            encryption: None,
        })
    }

    /// The Director's verified assignment.
    fn assignment(&self) -> &Assignment {
        match &self.proof {
            Proof::Partial(a) => a,
            // `new` checked that the plan has its target.
            Proof::Full(p) => p.targets()[0].assignment(),
        }
    }

    fn name(&self) -> &str {
        &self.assignment().name
    }

    /// The length as served (the ciphertext, for an encrypted image).
    fn length(&self) -> u64 {
        self.assignment().director_target.length
    }

    fn hashes(&self) -> &BTreeMap<String, String> {
        &self.assignment().director_target.hashes
    }

    /// What the ECU runs once this image is active.
    fn installed(&self) -> InstalledImage {
        match &self.proof {
            Proof::Partial(a) => a.installed_image(),
            Proof::Full(p) => p.targets()[0].installed_image(),
        }
    }
}

#[derive(Debug)]
enum Download {
    Metadata { role: MetadataRole, buf: Vec<u8> },
    Image { file: File, path: PathBuf },
}

/// The outcome of an Uptane check: result code and detail.
type Outcome = (ResultCode, String);

/// Why verify-metadata or verify-image has no outcome of its own: the core
/// refused (an Uptane result code in the status record), or the ECU's own
/// storage failed (a negative response, [`StorageError::nrc`]: issue 11, it
/// used to be result `0x21 missing-metadata`, which blamed the Primary).
#[derive(Debug)]
enum Fault {
    Uptane(secureev_uptane::Error),
    Storage(StorageError),
}

impl From<secureev_uptane::Error> for Fault {
    fn from(e: secureev_uptane::Error) -> Self {
        Fault::Uptane(e)
    }
}

impl From<StorageError> for Fault {
    fn from(e: StorageError) -> Self {
        Fault::Storage(e)
    }
}

fn read_state(e: Error) -> StorageError {
    StorageError::from_state(StorageOp::ReadState, e)
}

fn write_state(e: Error) -> StorageError {
    StorageError::from_state(StorageOp::WriteState, e)
}

/// The secondary ECU (see the module documentation).
pub struct Ecu {
    serial: String,
    hardware_id: String,
    verification: Verification,
    max_pdu: u32,
    shipped_director_root: Vec<u8>,
    shipped_image_root: Option<Vec<u8>>,
    slots: [PathBuf; 2],
    keys: EcuKeys,
    dir: StateDir,
    state: State,
    staged: Staged,
    time_written: Option<i64>,
    accepted: Option<Accepted>,
    download: Option<Download>,
    /// The inactive slot holds the complete download.
    image_received: bool,
    /// The inactive slot holds the verified (decrypted) image.
    image_verified: bool,
    /// The verify-image worker, while it runs.
    job: Option<std::sync::mpsc::Receiver<std::result::Result<(), Fault>>>,
    last_result: Outcome,
    report: Vec<u8>,
    resets: u64,
}

impl std::fmt::Debug for Ecu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ecu")
            .field("serial", &self.serial)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("read", path, e))
}

fn outcome_of(e: &secureev_uptane::Error) -> Outcome {
    (ResultCode::from_uptane_error(e), e.to_string())
}

/// The state directory's name for a repository of the core's client.
fn local_repo(repo: UptaneRepo) -> Repo {
    match repo {
        UptaneRepo::Director => Repo::Director,
        UptaneRepo::Image => Repo::Image,
    }
}

/// `signed.version` of a metadata file, if it parses.
fn version_of(bytes: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("signed")?.get("version")?.as_u64()
}

impl Ecu {
    /// Open the ECU: state directory, keys (created on first start), state, and
    /// the shipped roots (checked to verify).
    pub fn open(config: &Config) -> Result<Self> {
        let dir = StateDir::open(&config.state_dir)?;
        let keys = crate::keys::load_or_create(dir.path())?;
        let state = dir.load()?;
        let shipped_director_root = read_file(&config.director_root)?;
        TrustedRepository::new("director", &shipped_director_root).map_err(|e| Error::Root {
            path: config.director_root.clone(),
            error: Box::new(e),
        })?;
        let shipped_image_root = match (&config.image_root, config.verification) {
            (Some(p), Verification::Full) => {
                let b = read_file(p)?;
                TrustedRepository::new("image", &b).map_err(|e| Error::Root {
                    path: p.clone(),
                    error: Box::new(e),
                })?;
                Some(b)
            }
            _ => None,
        };
        Ok(Ecu {
            serial: config.serial.clone(),
            hardware_id: config.hardware_id.clone(),
            verification: config.verification,
            max_pdu: config.max_pdu,
            shipped_director_root,
            shipped_image_root,
            slots: [
                config.in_state(&config.slot_a),
                config.in_state(&config.slot_b),
            ],
            keys,
            dir,
            state,
            staged: Staged::default(),
            time_written: None,
            accepted: None,
            download: None,
            image_received: false,
            image_verified: false,
            job: None,
            last_result: (ResultCode::NoUpdate, String::new()),
            report: Vec::new(),
            resets: 0,
        })
    }

    /// The persistent state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The ECU's keys.
    pub fn keys(&self) -> &EcuKeys {
        &self.keys
    }

    /// The file of a slot.
    pub fn slot_path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.slots[0],
            Slot::B => &self.slots[1],
        }
    }

    /// ECUReset requests accepted so far (the host restarts nothing: the new
    /// slot is already recorded as active).
    pub fn resets(&self) -> u64 {
        self.resets
    }

    fn inactive_path(&self) -> PathBuf {
        self.slot_path(self.state.active_slot.other()).to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            version: protocol::PROTOCOL_VERSION,
            verification: match self.verification {
                Verification::Partial => VerificationType::Partial,
                Verification::Full => VerificationType::Full,
            },
            max_pdu: self.max_pdu,
            encryption: true,
        }
    }

    fn save_state(&self) -> std::result::Result<(), Nrc> {
        self.dir.save(&self.state).map_err(|e| {
            let e = write_state(e);
            tracing::error!("{e}");
            e.nrc()
        })
    }

    /// A refused verification: the attack it names (result codes 0x10–0x17)
    /// and the failed installation go into the next version report.
    fn record_failure(&mut self, outcome: &Outcome) {
        let (code, message) = outcome;
        let b = code.as_byte();
        if (0x10..=0x17).contains(&b) {
            let name = code.name().to_owned();
            if !self.state.attacks.contains(&name) {
                self.state.attacks.push(name);
            }
        }
        self.state.last_install = Some(LastInstall {
            success: false,
            code: code.name().to_owned(),
            message: message.clone(),
            reported_in: None,
        });
        let _ = self.save_state();
    }

    /// The ECU's own storage failed in `routine`: logged, kept in
    /// `LAST_RESULT` and (if the state can still be written) as a failed
    /// installation in the next version report, never as an attack; the
    /// request gets the storage error's negative response.
    fn storage_failure(&mut self, routine: &str, e: &StorageError) -> Nrc {
        tracing::error!("{routine}: {e}");
        let outcome = (ResultCode::Failed, format!("{routine}: {e}"));
        self.record_failure(&outcome);
        self.last_result = outcome;
        e.nrc()
    }

    /// Issue 11: a content key this ECU cannot unwrap would fail only after
    /// the whole image had overwritten the inactive slot. Erase and
    /// RequestDownload check it first, so such an image never touches the
    /// slot; the refusal is recorded like a failed verify-image.
    fn check_content_key(&mut self) -> std::result::Result<(), Nrc> {
        let Some(t) = &self.accepted else {
            return Err(Nrc::ConditionsNotCorrect);
        };
        let Some(info) = &t.encryption else {
            return Ok(());
        };
        let key = secureev_uptane::encryption::EcuDecryptionKey::from_bytes(
            &self.keys.decryption.to_bytes(),
        );
        match info.unwrap_key_for(t.name(), &self.serial, &key) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(target = %t.name(), "the wrapped content key does not open: {e}");
                let outcome = outcome_of(&e);
                self.record_failure(&outcome);
                self.last_result = outcome;
                self.accepted = None;
                Err(Nrc::ConditionsNotCorrect)
            }
        }
    }

    fn ecu_info(&self) -> EcuInfo {
        EcuInfo {
            serial: self.serial.clone(),
            hardware_id: self.hardware_id.clone(),
            installed: self.state.installed.clone(),
        }
    }

    // ---- verify-metadata ----------------------------------------------------------

    fn verify_metadata(&mut self) -> std::result::Result<Outcome, Nrc> {
        self.accepted = None;
        self.image_received = false;
        self.image_verified = false;
        self.job = None;
        let outcome = match self.verify_metadata_inner() {
            Ok(o) => o,
            Err(Fault::Uptane(e)) => outcome_of(&e),
            Err(Fault::Storage(e)) => return Err(self.storage_failure("verify-metadata", &e)),
        };
        if !outcome.0.is_success() {
            self.record_failure(&outcome);
        }
        tracing::info!(code = outcome.0.name(), detail = %outcome.1, "verify-metadata");
        Ok(outcome)
    }

    /// The trusted root: the stored one, else the shipped one. A stored root
    /// that cannot be read is a storage failure, never a silent fall-back to
    /// the shipped root (which would forget a key rotation).
    fn trusted_root(&self, repo: Repo) -> std::result::Result<Vec<u8>, Fault> {
        let shipped = match repo {
            Repo::Director => Some(self.shipped_director_root.clone()),
            Repo::Image => self.shipped_image_root.clone(),
        };
        let stored = self.dir.metadata(repo, "root").map_err(read_state)?;
        Ok(stored
            .or(shipped)
            .ok_or_else(|| secureev_uptane::Error::Workflow("no trusted root".into()))?)
    }

    /// The staged copy the Primary wrote for a role, for a [`Step::Fetch`]:
    /// a staged root of exactly the requested version, a staged timestamp,
    /// snapshot or targets (else the stored one: the Primary need not send
    /// again what this ECU holds), or a delegated role from the staged
    /// delegation bundle.
    fn staged_for(
        &self,
        request: &MetaRequest,
        bundle: &[(String, Vec<u8>)],
    ) -> std::result::Result<Option<Vec<u8>>, StorageError> {
        use MetadataRole as R;
        let repo = local_repo(request.repo);
        let staged = |director: R, image: R| {
            let role = match repo {
                Repo::Director => director,
                Repo::Image => image,
            };
            self.staged.roles.get(&role).cloned()
        };
        let stored = || -> std::result::Result<Option<Vec<u8>>, StorageError> {
            self.dir
                .metadata(repo, request.role.as_str())
                .map_err(read_state)
        };
        let or_stored = |b: Option<Vec<u8>>| match b {
            Some(b) => Ok(Some(b)),
            None => stored(),
        };
        Ok(match &request.role {
            Role::Root => {
                let roots = match repo {
                    Repo::Director => &self.staged.director_roots,
                    Repo::Image => &self.staged.image_roots,
                };
                roots
                    .iter()
                    .find(|r| version_of(r) == request.version)
                    .cloned()
            }
            Role::Timestamp => return or_stored(staged(R::DirectorTimestamp, R::ImageTimestamp)),
            Role::Snapshot => return or_stored(staged(R::DirectorSnapshot, R::ImageSnapshot)),
            Role::Targets => return or_stored(staged(R::DirectorTargets, R::ImageTargets)),
            Role::Delegated(name) => bundle
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b.clone()),
        })
    }

    fn verify_metadata_inner(&mut self) -> std::result::Result<Outcome, Fault> {
        let Some(written) = self.time_written else {
            return Ok((ResultCode::NoTime, "no time written since power-up".into()));
        };
        // The ECU's clock never goes below the latest attested time (Uptane
        // 2.1 §5.4.4.1/2 step 1: "Load and verify the current time or the
        // most recent securely attested time").
        let now = Timestamp::from_unix(written.max(self.state.time_floor.unwrap_or(i64::MIN)));
        let ecu = self.ecu_info();
        let director_root = self.trusted_root(Repo::Director)?;
        // The one update client of the core: §5.4.4.1 (partial) or §5.4.4.2
        // (full, this ECU's image only); this loop only moves bytes between
        // it, the staged metadata and the state directory.
        let mut client = match self.verification {
            Verification::Partial => {
                UpdateClient::secondary_partial(ecu.clone(), &director_root, now)
            }
            Verification::Full => UpdateClient::secondary_full(
                ecu.clone(),
                &director_root,
                &self.trusted_root(Repo::Image)?,
                now,
            ),
        }
        .map_err(Failure::into_error)?;
        let bundle = match self.staged.roles.get(&MetadataRole::ImageDelegations) {
            Some(b) => protocol::decode_delegations(b)
                .map_err(|e| secureev_uptane::Error::Workflow(format!("delegation bundle: {e}")))?,
            None => Vec::new(),
        };
        // Persisted only once the whole check passed.
        let mut save: Vec<(Repo, &'static str, Vec<u8>)> = Vec::new();
        let decision = loop {
            match client.next_step().map_err(Failure::into_error)? {
                Step::Load { repo, role } => {
                    // A stored role that cannot be read is a storage
                    // failure: read as "none stored" it would drop the
                    // rollback reference it holds.
                    let stored = match role {
                        Role::Timestamp | Role::Snapshot | Role::Targets => self
                            .dir
                            .metadata(local_repo(repo), role.as_str())
                            .map_err(read_state)?,
                        // Delegated roles come with each bundle; none are kept.
                        Role::Root | Role::Delegated(_) => None,
                    };
                    match stored {
                        Some(b) => client.offer(&b),
                        None => client.offer_not_found(),
                    }
                    .map_err(Failure::into_error)?;
                }
                Step::Fetch(request) => match self.staged_for(&request, &bundle)? {
                    Some(b) => client.offer(&b).map_err(Failure::into_error)?,
                    None if request.optional() => {
                        client.offer_not_found().map_err(Failure::into_error)?
                    }
                    None => {
                        return Err(secureev_uptane::Error::Workflow(format!(
                            "{} {} was not sent",
                            request.repo,
                            request.role.as_str()
                        ))
                        .into())
                    }
                },
                Step::Persist {
                    repo, role, bytes, ..
                } => {
                    let role = match role {
                        Role::Timestamp => "timestamp",
                        Role::Snapshot => "snapshot",
                        Role::Targets => "targets",
                        // The final root is saved below; delegated roles are
                        // not kept.
                        Role::Root | Role::Delegated(_) => continue,
                    };
                    save.push((local_repo(repo), role, bytes));
                }
                Step::Done(decision) => break decision,
            }
        };
        let director = client
            .repository(UptaneRepo::Director)
            .ok_or_else(|| secureev_uptane::Error::Workflow("no director".into()))?;
        // §5.4.4.6 (3): the Director targets version must not roll back. With
        // root-and-targets only this is the one rollback reference.
        let version = director.targets().map(|t| t.common.version).unwrap_or(0);
        if let Some(trusted) = self.state.director_targets_version {
            if version < trusted {
                return Err(secureev_uptane::Error::Rollback {
                    role: "targets".into(),
                    trusted,
                    offered: version,
                }
                .into());
            }
        }
        // This ECU's entry, hardware ID and release counter were checked by
        // the client; an image already installed is nothing new.
        let target = match decision {
            Decision::Assignment(Some(a)) if !a.is_installed_on(&ecu) => {
                Accepted::new(Proof::Partial(Box::new(a)))
            }
            Decision::Assignment(_) => None,
            // §5.4.4.2 step 10: the Image repository entry matched.
            Decision::Plan(plan) => Accepted::new(Proof::Full(plan)),
            other => {
                return Err(secureev_uptane::Error::Workflow(format!(
                    "unexpected decision {other:?}"
                ))
                .into())
            }
        };
        let accepted = match target {
            None => None,
            Some(mut t) => {
                t.encryption = match &t.assignment().custom.encryption {
                    None => None,
                    Some(v) => {
                        let info = EncryptionInfo::from_value(t.name(), v)?;
                        if !info.keys.contains_key(&self.serial) {
                            return Ok((
                                ResultCode::Unsupported,
                                format!("{}: no content key wrapped for this ECU", t.name()),
                            ));
                        }
                        Some(info)
                    }
                };
                Some(t)
            }
        };
        // Verified: persist the new trust, then the time floor.
        let final_root = director.root().raw().to_vec();
        self.dir
            .save_metadata(Repo::Director, "root", &final_root)
            .map_err(write_state)?;
        if let Some(image) = client.repository(UptaneRepo::Image) {
            self.dir
                .save_metadata(Repo::Image, "root", image.root().raw())
                .map_err(write_state)?;
        }
        for (repo, role, bytes) in &save {
            self.dir
                .save_metadata(*repo, role, bytes)
                .map_err(write_state)?;
        }
        // The state is changed in memory only once it is on disk.
        let mut state = self.state.clone();
        state.director_targets_version = Some(version);
        state.time_floor = Some(now.unix());
        self.dir.save(&state).map_err(write_state)?;
        self.state = state;
        self.staged = Staged::default();
        Ok(match accepted {
            None => (ResultCode::NoUpdate, "nothing new for this ECU".into()),
            Some(t) => {
                let detail = format!("{} ({} bytes)", t.name(), t.length());
                self.accepted = Some(t);
                (ResultCode::Ok, detail)
            }
        })
    }

    // ---- verify-image and activate ------------------------------------------------

    /// verify-image: hashing and decrypting run on a worker thread, so the
    /// server answers `7F 31 78` until the result is ready
    /// (`docs/secondary-protocol.md` §3).
    fn verify_image(&mut self) -> std::result::Result<Progress<Outcome>, Nrc> {
        // docs/secondary-protocol.md §7: without a verified target, 0x22.
        let Some(t) = self.accepted.clone() else {
            return Err(Nrc::ConditionsNotCorrect);
        };
        if let Some(job) = &self.job {
            let result = match job.try_recv() {
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(Progress::Busy),
                Ok(r) => r,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.job = None;
                    tracing::error!("the verify-image worker died");
                    return Err(Nrc::GeneralReject);
                }
            };
            self.job = None;
            let outcome = match result {
                Ok(()) => {
                    self.image_verified = true;
                    (ResultCode::Ok, format!("{} verified", t.name()))
                }
                Err(Fault::Uptane(e)) => {
                    self.image_received = false;
                    outcome_of(&e)
                }
                Err(Fault::Storage(e)) => {
                    // What the slot holds is unknown now: send it again.
                    self.image_received = false;
                    return Err(self.storage_failure("verify-image", &e));
                }
            };
            if !outcome.0.is_success() {
                self.record_failure(&outcome);
            }
            tracing::info!(code = outcome.0.name(), detail = %outcome.1, "verify-image");
            return Ok(Progress::Ready(outcome));
        }
        if self.image_verified {
            // A repeated request (its response was lost): the slot already
            // holds the verified, decrypted image; never decrypt it twice.
            return Ok(Progress::Ready((
                ResultCode::Ok,
                format!("{} verified", t.name()),
            )));
        }
        if !self.image_received {
            return Ok(Progress::Ready((
                ResultCode::MissingMetadata,
                "the image was not sent".into(),
            )));
        }
        let path = self.inactive_path();
        let serial = self.serial.clone();
        let key = secureev_uptane::encryption::EcuDecryptionKey::from_bytes(
            &self.keys.decryption.to_bytes(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("verify-image".into())
            .spawn(move || {
                let _ = tx.send(check_image(&t, &path, &serial, &key));
            })
            .map_err(|e| {
                tracing::error!("cannot start the verify-image worker: {e}");
                Nrc::ConditionsNotCorrect
            })?;
        self.job = Some(rx);
        Ok(Progress::Busy)
    }

    fn activate(&mut self) -> std::result::Result<Outcome, Nrc> {
        let (Some(t), true) = (self.accepted.clone(), self.image_verified) else {
            return Err(Nrc::ConditionsNotCorrect);
        };
        // The switch: one atomic write of state.json.
        self.state.active_slot = self.state.active_slot.other();
        self.state.installed = Some(t.installed());
        self.state.last_install = Some(LastInstall {
            success: true,
            code: "OK".into(),
            message: format!(
                "{} installed in slot {:?}",
                t.name(),
                self.state.active_slot
            ),
            reported_in: None,
        });
        self.save_state()?;
        self.accepted = None;
        self.image_received = false;
        self.image_verified = false;
        tracing::info!(target = %t.name(), slot = ?self.state.active_slot, "activated");
        Ok((ResultCode::Ok, format!("{} active", t.name())))
    }

    // ---- version report ---------------------------------------------------------

    fn generate_report(&mut self, nonce: &[u8]) -> std::result::Result<Vec<u8>, Nrc> {
        if nonce.len() != secureev_uptane::manifest::NONCE_LEN {
            return Err(Nrc::IncorrectMessageLengthOrInvalidFormat);
        }
        let counter = self.state.report_counter;
        let time = Timestamp::from_unix(self.state.time_floor.unwrap_or(0));
        let mut report = EcuVersionReport::new(&self.serial, &self.hardware_id, time, counter)
            .with_nonce(hex::encode(nonce));
        if let Some(i) = &self.state.installed {
            report = report.with_installed_image(secureev_uptane::manifest::InstalledImage::of(i));
        }
        report.attacks_detected = self.state.attacks.join(ATTACK_SEPARATOR);
        if let Some(l) = &self.state.last_install {
            report = report.with_installation_result(InstallationResult::new(
                l.success,
                l.code.clone(),
                l.message.clone(),
            ));
        }
        let envelope = sign_ecu_report(&report, &self.keys.signing).map_err(|e| {
            tracing::error!("cannot sign the version report: {e}");
            Nrc::GeneralReject
        })?;
        let bytes = serde_json::to_vec(&envelope).map_err(|_| Nrc::GeneralReject)?;
        let chunk = u16::try_from(self.max_pdu.saturating_sub(3))
            .unwrap_or(u16::MAX)
            .min(protocol::CLASSIC_REPORT_CHUNK);
        let info = ReportInfo::for_report(&bytes, chunk).map_err(|_| Nrc::ResponseTooLong)?;
        // The counter is spent before the report leaves (a counter is never
        // used twice). The attacks and the installation result stay until a
        // report that carried them is delivered (REPORT_DELIVERED): a report
        // the Primary loses (a kill, a manifest the Director never got) must
        // not lose them.
        let mut state = self.state.clone();
        state.report_counter = counter + 1;
        for a in &state.attacks {
            state.attacks_reported.entry(a.clone()).or_insert(counter);
        }
        if let Some(l) = &mut state.last_install {
            l.reported_in.get_or_insert(counter);
        }
        self.dir.save(&state).map_err(|e| {
            let e = write_state(e);
            tracing::error!("{e}");
            e.nrc()
        })?;
        self.state = state;
        self.report = bytes;
        let mut status = vec![ResultCode::Ok.as_byte()];
        status.extend(info.encode());
        Ok(status)
    }

    /// REPORT_DELIVERED: the Director accepted a manifest with this ECU's
    /// report `counter`, so what that report (or an earlier one) carried is
    /// delivered: those attacks and that installation result are cleared.
    /// What came after it stays for the next report.
    fn report_delivered(&mut self, data: &[u8]) -> std::result::Result<Vec<u8>, Nrc> {
        let counter = <[u8; 8]>::try_from(data)
            .map(u64::from_be_bytes)
            .map_err(|_| Nrc::IncorrectMessageLengthOrInvalidFormat)?;
        // A report this ECU never signed cannot have been delivered.
        if counter >= self.state.report_counter {
            return Err(Nrc::RequestOutOfRange);
        }
        let mut state = self.state.clone();
        let delivered = |first: Option<&u64>| first.is_some_and(|&c| c <= counter);
        let reported = state.attacks_reported.clone();
        state.attacks.retain(|a| !delivered(reported.get(a)));
        state.attacks_reported.retain(|_, c| *c > counter);
        if state
            .last_install
            .as_ref()
            .is_some_and(|l| delivered(l.reported_in.as_ref()))
        {
            state.last_install = None;
        }
        if state != self.state {
            self.dir.save(&state).map_err(|e| {
                let e = write_state(e);
                tracing::error!("{e}");
                e.nrc()
            })?;
            tracing::info!(counter, "version report delivered");
            self.state = state;
        }
        Ok(vec![ResultCode::Ok.as_byte()])
    }

    fn report_chunk(&self, index: u16) -> std::result::Result<Vec<u8>, Nrc> {
        if self.report.is_empty() {
            return Err(Nrc::RequestOutOfRange);
        }
        let chunk = u16::try_from(self.max_pdu.saturating_sub(3))
            .unwrap_or(u16::MAX)
            .min(protocol::CLASSIC_REPORT_CHUNK);
        let info =
            ReportInfo::for_report(&self.report, chunk).map_err(|_| Nrc::RequestOutOfRange)?;
        let index = u8::try_from(index).map_err(|_| Nrc::RequestOutOfRange)?;
        info.chunk(&self.report, index)
            .map(<[u8]>::to_vec)
            .ok_or(Nrc::RequestOutOfRange)
    }

    fn metadata_allowed(&self, role: MetadataRole) -> bool {
        self.verification == Verification::Full
            || matches!(
                role,
                MetadataRole::DirectorRoot | MetadataRole::DirectorTargets
            )
    }
}

/// Uptane 2.1 §5.4.3.4 step 7 (length and hashes of the image as the
/// Director signed them); for encrypted images step 6 (unwrap the content
/// key with the ECU key) and step 7 again on the plaintext, which then
/// replaces the ciphertext in the slot.
fn check_image(
    t: &Accepted,
    path: &Path,
    serial: &str,
    ecu_key: &secureev_uptane::encryption::EcuDecryptionKey,
) -> std::result::Result<(), Fault> {
    let read = |e: std::io::Error| StorageError::new(StorageOp::ReadSlot, path, e);
    let mut verifier =
        secureev_uptane::verify::StreamVerifier::new(t.name(), t.length(), t.hashes())?;
    let mut f = File::open(path).map_err(read)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n])?;
    }
    verifier.finish()?;
    let Some(info) = &t.encryption else {
        return Ok(());
    };
    let key = info.unwrap_key_for(t.name(), serial, ecu_key)?;
    let mut dec = StreamDecryptor::new(t.name(), &key, info)?;
    let tmp = crate::fsutil::side_path(path, "decrypt");
    let write = |e: std::io::Error| StorageError::new(StorageOp::WriteSlot, &tmp, e);
    let result = (|| -> std::result::Result<(), Fault> {
        let mut input = File::open(path).map_err(read)?;
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::fsutil::FILE_MODE)
            .open(&tmp)
            .map_err(write)?;
        let mut plain = Vec::new();
        loop {
            let n = input.read(&mut buf).map_err(read)?;
            if n == 0 {
                break;
            }
            plain.clear();
            dec.update(&buf[..n], &mut plain)?;
            out.write_all(&plain).map_err(write)?;
        }
        // Checks the plaintext length and hashes from the signed
        // `encryption` object.
        dec.finish()?;
        out.sync_all().map_err(write)?;
        std::fs::rename(&tmp, path).map_err(write)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl ImageSink for Ecu {
    fn begin(&mut self, d: &DownloadRequest) -> std::result::Result<(), Nrc> {
        match Region::from_address(d.address) {
            None => Err(Nrc::RequestOutOfRange),
            Some(Region::Metadata(role)) => {
                if d.data_format != protocol::data_format::PLAIN
                    || !self.metadata_allowed(role)
                    || d.size > MAX_METADATA_LEN
                {
                    return Err(Nrc::RequestOutOfRange);
                }
                self.download = Some(Download::Metadata {
                    role,
                    buf: Vec::with_capacity(d.size as usize),
                });
                Ok(())
            }
            Some(Region::Image) => {
                // docs/secondary-protocol.md §7: no verified target → 0x22;
                // another size or format than the verified target's → 0x31.
                let Some(t) = &self.accepted else {
                    return Err(Nrc::ConditionsNotCorrect);
                };
                let format = if t.encryption.is_some() {
                    protocol::data_format::ENCRYPTED
                } else {
                    protocol::data_format::PLAIN
                };
                if d.size != t.length() || d.data_format != format {
                    return Err(Nrc::RequestOutOfRange);
                }
                self.check_content_key()?;
                let path = self.inactive_path();
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(crate::fsutil::FILE_MODE)
                    .open(&path)
                    .map_err(|e| {
                        tracing::error!("open {}: {e}", path.display());
                        Nrc::UploadDownloadNotAccepted
                    })?;
                self.image_received = false;
                self.image_verified = false;
                self.job = None;
                self.download = Some(Download::Image { file, path });
                Ok(())
            }
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> std::result::Result<(), Nrc> {
        match &mut self.download {
            Some(Download::Metadata { buf, .. }) => {
                buf.extend_from_slice(data);
                Ok(())
            }
            Some(Download::Image { file, path }) => file.write_all(data).map_err(|e| {
                // The server abandons the download after this NRC.
                let e = StorageError::new(StorageOp::WriteSlot, path.as_path(), e);
                tracing::error!("TransferData: {e}");
                e.nrc()
            }),
            None => Err(Nrc::RequestSequenceError),
        }
    }

    fn finish(&mut self) -> std::result::Result<Progress<Vec<u8>>, Nrc> {
        match self.download.take() {
            Some(Download::Metadata { role, buf }) => {
                self.staged.put(role, buf);
                Ok(Progress::Ready(vec![]))
            }
            Some(Download::Image { file, path }) => {
                file.sync_all().map_err(|e| {
                    let e = StorageError::new(StorageOp::WriteSlot, &path, e);
                    tracing::error!("RequestTransferExit: {e}");
                    e.nrc()
                })?;
                self.image_received = true;
                Ok(Progress::Ready(vec![]))
            }
            None => Err(Nrc::RequestSequenceError),
        }
    }

    fn abort(&mut self) {
        self.download = None;
    }
}

impl EcuBackend for Ecu {
    fn read_did(&mut self, d: u16, _cx: &Context) -> std::result::Result<Vec<u8>, Nrc> {
        Ok(match d {
            did::ECU_SERIAL => self.serial.as_bytes().to_vec(),
            did::HARDWARE_ID => self.hardware_id.as_bytes().to_vec(),
            did::PUBLIC_KEY => {
                secureev_uptane::did::to_did(&self.keys.signing.verifying_key()).into_bytes()
            }
            did::ENCRYPTION_KEY => self.keys.decryption.public().as_bytes().to_vec(),
            did::CAPABILITIES => self.capabilities().encode(),
            did::TIME => protocol::encode_time(self.state.time_floor.unwrap_or(0).max(0) as u64),
            did::LAST_RESULT => protocol::routine_status(self.last_result.0, &self.last_result.1),
            d if (did::REPORT_CHUNK_BASE..did::REPORT_CHUNK_BASE + 16).contains(&d) => {
                self.report_chunk(d - did::REPORT_CHUNK_BASE)?
            }
            _ => return Err(Nrc::RequestOutOfRange),
        })
    }

    fn write_did(&mut self, d: u16, data: &[u8], _cx: &Context) -> std::result::Result<(), Nrc> {
        if d == did::TIME {
            let t =
                protocol::decode_time(data).ok_or(Nrc::IncorrectMessageLengthOrInvalidFormat)?;
            let t = i64::try_from(t).map_err(|_| Nrc::RequestOutOfRange)?;
            // Never backwards: a time below the attested floor is ignored.
            let floor = self.state.time_floor.unwrap_or(i64::MIN);
            if t < floor {
                tracing::warn!(
                    written = t,
                    floor,
                    "time older than the attested time ignored"
                );
            }
            self.time_written = Some(t.max(floor));
            return Ok(());
        }
        match MetadataRole::from_did(d) {
            Some(role) if role.writable_by_did() && self.metadata_allowed(role) => {
                if data.len() as u64 > MAX_METADATA_LEN {
                    return Err(Nrc::RequestOutOfRange);
                }
                self.staged.put(role, data.to_vec());
                Ok(())
            }
            _ => Err(Nrc::RequestOutOfRange),
        }
    }

    fn routine(
        &mut self,
        control: RoutineControlType,
        r: u16,
        data: &[u8],
        _cx: &Context,
    ) -> std::result::Result<Progress<Vec<u8>>, Nrc> {
        if control != RoutineControlType::Start {
            return Err(Nrc::SubFunctionNotSupported);
        }
        let status = match r {
            routine::VERIFY_METADATA => {
                self.last_result = self.verify_metadata()?;
                protocol::routine_status(self.last_result.0, &self.last_result.1)
            }
            routine::ERASE_MEMORY => {
                let loc = secureev_uds::codec::MemoryLocation::decode(0x31, data)
                    .map_err(|_| Nrc::RequestOutOfRange)?;
                if loc.address != u64::from(protocol::address::IMAGE) {
                    return Err(Nrc::RequestOutOfRange);
                }
                let Some(t) = &self.accepted else {
                    return Err(Nrc::ConditionsNotCorrect);
                };
                if loc.size != t.length() {
                    return Err(Nrc::RequestOutOfRange);
                }
                self.check_content_key()?;
                let path = self.inactive_path();
                crate::fsutil::atomic_write(&path, &[]).map_err(|e| {
                    let e = StorageError::new(StorageOp::WriteSlot, &path, e);
                    tracing::error!("eraseMemory: {e}");
                    e.nrc()
                })?;
                self.image_received = false;
                self.image_verified = false;
                vec![ResultCode::Ok.as_byte()]
            }
            routine::VERIFY_IMAGE => match self.verify_image()? {
                Progress::Busy => return Ok(Progress::Busy),
                Progress::Ready(outcome) => {
                    self.last_result = outcome;
                    protocol::routine_status(self.last_result.0, &self.last_result.1)
                }
            },
            routine::CHECK_PROGRAMMING_DEPENDENCIES => {
                if self.image_verified {
                    vec![ResultCode::Ok.as_byte()]
                } else {
                    vec![ResultCode::MissingMetadata.as_byte()]
                }
            }
            routine::ACTIVATE => {
                self.last_result = self.activate()?;
                protocol::routine_status(self.last_result.0, &self.last_result.1)
            }
            routine::GENERATE_REPORT => self.generate_report(data)?,
            routine::REPORT_DELIVERED => self.report_delivered(data)?,
            _ => return Err(Nrc::RequestOutOfRange),
        };
        Ok(Progress::Ready(status))
    }

    fn reset(&mut self, reset_type: ResetType) -> std::result::Result<(), Nrc> {
        match reset_type {
            ResetType::Hard | ResetType::KeyOffOn | ResetType::Soft => {
                // A Linux agent does not reboot the machine: the active slot is
                // already switched in state.json; what a reboot would lose is
                // dropped here.
                self.resets += 1;
                self.staged = Staged::default();
                self.accepted = None;
                self.image_received = false;
                self.image_verified = false;
                self.job = None;
                self.time_written = None;
                Ok(())
            }
            _ => Err(Nrc::SubFunctionNotSupported),
        }
    }

    fn session_changed(&mut self, _from: Session, to: Session) {
        if to == Session::Default {
            self.staged = Staged::default();
        }
    }
}
