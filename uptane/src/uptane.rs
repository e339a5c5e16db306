//! Uptane 2.1 verification across the Director and Image repositories.
//!
//! [`crate::client::UpdateClient`] brings one [`TrustedRepository`] per
//! repository up to date and calls this module, which checks what only Uptane
//! adds on top of TUF:
//!
//! - Director targets rules (§5.4.4.6): no delegations, no ECU listed twice, only
//!   ECUs of this vehicle, the vehicle identifier;
//! - the Director/Image match (§5.4.4.2 step 10): each Director target is found in
//!   the Image repository (through delegations) with identical length and hashes,
//!   matching hardware ID and release counter, and a release counter not below
//!   the one installed on the ECU;
//! - partial verification for a secondary (§5.4.4.1): Director targets against
//!   Director root, for one ECU.
//!
//! The result is a [`Verified<UpdatePlan>`]: downstream code (download, install,
//! forwarding to secondaries) takes that proof and nothing else.

use crate::custom::{director_vin, TargetCustom};
use crate::error::{Error, Result};
use crate::metadata::{TargetFile, Targets};
use crate::trusted::{TargetSearch, TrustedRepository};
use crate::verify::{StreamVerifier, Verified};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the vehicle knows about one of its ECUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcuInfo {
    /// ECU serial (the Uptane ECU identifier).
    pub serial: String,
    /// Hardware ID.
    pub hardware_id: String,
    /// The image installed now, if known.
    pub installed: Option<InstalledImage>,
}

/// An image installed on an ECU: the one type for it. The Primary's store
/// (`installed.json`), the Secondary's `state.json` and, through
/// [`crate::manifest::InstalledImage::of`], the version reports all hold this.
///
/// Its fields are private. Outside the core it is made only from verified
/// inputs, when the image they name is installed
/// ([`crate::image::VerifiedImage::installed_image`],
/// [`UpdateTarget::installed_image`], `Verified<Assignment>::installed_image`),
/// or read back with serde from the device's own trusted state file. Its serde
/// form is `{"name", "length", "hashes", "release_counter"}`, the form those
/// files have always had:
///
/// ```
/// # use secureev_uptane::uptane::InstalledImage;
/// let json = r#"{"name":"fw.bin","length":3,"hashes":{"sha256":"ab"},"release_counter":2}"#;
/// let i: InstalledImage = serde_json::from_str(json).unwrap();
/// assert_eq!((i.name(), i.length(), i.release_counter()), ("fw.bin", 3, 2));
/// assert_eq!(serde_json::to_string(&i).unwrap(), json);
/// ```
///
/// ```compile_fail
/// # use secureev_uptane::uptane::InstalledImage;
/// let i = InstalledImage { name: "fw.bin".into(), length: 3, hashes: Default::default(), release_counter: 0 };
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledImage {
    /// Target name.
    pub(crate) name: String,
    /// Length in bytes, as the Director listed it (of the ciphertext, for an
    /// encrypted image).
    pub(crate) length: u64,
    /// Hashes as the Director listed them.
    pub(crate) hashes: BTreeMap<String, String>,
    /// Its release counter (0 when it had none).
    pub(crate) release_counter: u64,
}

impl InstalledImage {
    /// Target name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Length in bytes, as the Director listed it.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Hashes as the Director listed them.
    pub fn hashes(&self) -> &BTreeMap<String, String> {
        &self.hashes
    }

    /// Release counter (0 when it had none).
    pub fn release_counter(&self) -> u64 {
        self.release_counter
    }

    fn of_assignment(a: &Assignment, release_counter: u64) -> Self {
        InstalledImage {
            name: a.name.clone(),
            length: a.director_target.length,
            hashes: a.director_target.hashes.clone(),
            release_counter,
        }
    }
}

impl Verified<Assignment> {
    /// What the ECU has installed once the image of this partially verified
    /// assignment is installed: the name, length and hashes the Director
    /// signed, and its release counter (0 when it has none).
    pub fn installed_image(&self) -> InstalledImage {
        InstalledImage::of_assignment(self, self.custom.release_counter.unwrap_or(0))
    }
}

/// The vehicle as the Primary knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vehicle {
    /// Vehicle identifier (VIN).
    pub vin: String,
    /// Serial of the Primary ECU.
    pub primary_serial: String,
    /// Every ECU, by serial.
    pub ecus: BTreeMap<String, EcuInfo>,
}

impl Vehicle {
    /// A vehicle with the given ECUs.
    pub fn new(vin: &str, primary_serial: &str, ecus: impl IntoIterator<Item = EcuInfo>) -> Self {
        Vehicle {
            vin: vin.to_owned(),
            primary_serial: primary_serial.to_owned(),
            ecus: ecus.into_iter().map(|e| (e.serial.clone(), e)).collect(),
        }
    }
}

/// One Director decision: install `name` on ECU `ecu_serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Target name.
    pub name: String,
    /// ECU serial.
    pub ecu_serial: String,
    /// Hardware ID the Director states for the ECU.
    pub hardware_id: String,
    /// The Director's target entry.
    pub director_target: TargetFile,
    /// Its custom fields.
    pub custom: TargetCustom,
}

impl Assignment {
    /// Whether the ECU already has exactly this image installed.
    pub fn is_installed_on(&self, ecu: &EcuInfo) -> bool {
        ecu.installed.as_ref().is_some_and(|i| {
            i.name == self.name
                && i.length == self.director_target.length
                && common_hashes_equal(&i.hashes, &self.director_target.hashes).unwrap_or(false)
        })
    }
}

/// An image that passed full verification and may be installed on one ECU.
///
/// Its fields are private: it exists only inside a [`Verified<UpdatePlan>`]
/// that the Uptane match made (see [`crate::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateTarget {
    assignment: Assignment,
    image_target: TargetFile,
    image_custom: TargetCustom,
    image_role: String,
    release_counter: u64,
}

impl UpdateTarget {
    /// Target name.
    pub fn name(&self) -> &str {
        &self.assignment.name
    }

    /// ECU serial.
    pub fn ecu_serial(&self) -> &str {
        &self.assignment.ecu_serial
    }

    /// Length of the image as served (encrypted length for encrypted images).
    pub fn length(&self) -> u64 {
        self.assignment.director_target.length
    }

    /// The Director's assignment (its target entry and custom fields).
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// The Image repository's entry (identical length and hashes).
    pub fn image_target(&self) -> &TargetFile {
        &self.image_target
    }

    /// The Image repository role that listed it.
    pub fn image_role(&self) -> &str {
        &self.image_role
    }

    /// Release counter of the new image (0 when none is given).
    pub fn release_counter(&self) -> u64 {
        self.release_counter
    }

    /// What the ECU has installed once this image is installed: the name,
    /// length and hashes the Director signed (those of the image as served)
    /// and the release counter.
    pub fn installed_image(&self) -> InstalledImage {
        InstalledImage::of_assignment(&self.assignment, self.release_counter)
    }

    /// The custom fields of the Image repository's entry (as signed by the
    /// Image repository's targets role).
    pub fn image_custom(&self) -> &TargetCustom {
        &self.image_custom
    }

    /// The human version the Image repository signed for this image
    /// (`custom.version`), if any. Display text: bound and sanitise it
    /// before showing it.
    pub fn version(&self) -> Option<&str> {
        self.image_custom.version()
    }

    /// The release notes the Image repository signed for this image
    /// (`custom.releaseNotes`), if any. Display text, as [`Self::version`].
    pub fn release_notes(&self) -> Option<&str> {
        self.image_custom.release_notes()
    }

    /// A verifier for the image bytes as they are downloaded: length cap
    /// (endless data), then length and every hash at the end (Uptane 2.1
    /// §5.4.3.4).
    pub fn stream_verifier(&self) -> Result<StreamVerifier> {
        StreamVerifier::new(
            &self.assignment.name,
            self.assignment.director_target.length,
            &self.assignment.director_target.hashes,
        )
    }
}

/// What full verification decided. Private fields: the only way to get one
/// is inside the [`Verified<UpdatePlan>`] of [`full_verification`] or
/// [`secondary_full_verification`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePlan {
    targets: Vec<UpdateTarget>,
    director_targets_version: u64,
}

impl UpdatePlan {
    /// Images to install, one per ECU at most.
    pub fn targets(&self) -> &[UpdateTarget] {
        &self.targets
    }

    /// Director targets version the plan came from.
    pub fn director_targets_version(&self) -> u64 {
        self.director_targets_version
    }

    /// Whether nothing is to be installed.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// Outcome of one step of [`full_verification`].
#[derive(Debug, Clone)]
pub enum FullVerification {
    /// All Director targets matched; here is the plan (possibly empty).
    Done(Verified<UpdatePlan>),
    /// The Image repository search needs this delegated role loaded first.
    NeedImageRole {
        /// Role to load.
        role: String,
        /// Its delegator.
        parent: String,
    },
}

/// Check Director targets (Uptane 2.1 §5.4.4.6 plus the Primary's vehicle
/// check) and return the assignments that are not installed yet.
pub fn director_assignments(
    director: &TrustedRepository,
    vehicle: &Vehicle,
) -> Result<Vec<Assignment>> {
    let targets = director.targets().ok_or_else(|| {
        Error::Workflow("director targets must be loaded before verification".into())
    })?;
    let assignments = check_director_targets(
        targets,
        vehicle.ecus.keys().map(String::as_str).collect(),
        Some(&vehicle.vin),
    )?;
    for a in &assignments {
        let ecu = &vehicle.ecus[&a.ecu_serial];
        // The Director's statement of the hardware ID must match what the
        // vehicle knows about the ECU.
        if a.hardware_id != ecu.hardware_id {
            return Err(Error::WrongHardwareId {
                target: a.name.clone(),
                ecu: a.ecu_serial.clone(),
                ecu_hardware_id: ecu.hardware_id.clone(),
                image_hardware_ids: vec![a.hardware_id.clone()],
            });
        }
    }
    Ok(assignments)
}

/// Director targets rules; `known_ecus` is the set of ECUs that may appear.
fn check_director_targets(
    targets: &Targets,
    known_ecus: BTreeSet<&str>,
    vin: Option<&str>,
) -> Result<Vec<Assignment>> {
    // Uptane 2.1 §5.4.4.6 (5): "If checking Targets metadata from the Director
    // repository, verify that there are no delegations."
    if targets.delegations.is_some() {
        return Err(Error::DirectorDelegations);
    }
    // §5.2.3.1: Director targets with no images SHALL carry a vehicle
    // identifier, so that an empty assignment cannot be replayed across
    // vehicles. When it is present it must be ours.
    match (director_vin(targets), vin) {
        (Some(got), Some(expected)) if got != expected => {
            return Err(Error::WrongVehicle {
                expected: expected.to_owned(),
                got: got.to_owned(),
            })
        }
        (None, _) if targets.targets.is_empty() => return Err(Error::MissingVehicleId),
        _ => {}
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (name, t) in &targets.targets {
        let custom = TargetCustom::of(name, t)?;
        // §5.2.3.1.1: every Director target SHALL name an ECU.
        if custom.ecu_identifiers.is_empty() {
            return Err(Error::InvalidCustom {
                target: name.clone(),
                reason: "director target names no ECU (ecuIdentifiers)".into(),
            });
        }
        for (serial, id) in &custom.ecu_identifiers {
            // §5.4.4.6 (6): "verify that no ECU identifier is represented more
            // than once."
            if !seen.insert(serial.clone()) {
                return Err(Error::DuplicateEcu {
                    ecu: serial.clone(),
                });
            }
            // §5.4.4.6 (7): a Primary checks that every ECU listed is present
            // in the vehicle.
            if !known_ecus.contains(serial.as_str()) {
                return Err(Error::WrongEcu {
                    target: name.clone(),
                    ecu: serial.clone(),
                });
            }
            out.push(Assignment {
                name: name.clone(),
                ecu_serial: serial.clone(),
                hardware_id: id.hardware_id.clone(),
                director_target: t.clone(),
                custom: custom.clone(),
            });
        }
    }
    Ok(out)
}

/// Uptane 2.1 §5.4.4.2 step 10 for one assignment: match the Director's entry
/// with the Image repository's entry of the same name.
pub fn match_image(
    assignment: &Assignment,
    ecu: &EcuInfo,
    image_role: &str,
    image_target: &TargetFile,
) -> Result<UpdateTarget> {
    let name = &assignment.name;
    let d = &assignment.director_target;
    // (b) "non-custom metadata (length, hashes) ... is equal".
    if d.length != image_target.length {
        return Err(Error::TargetMismatch {
            target: name.clone(),
            field: format!(
                "length: director {} vs image {}",
                d.length, image_target.length
            ),
        });
    }
    match common_hashes_equal(&d.hashes, &image_target.hashes) {
        Some(true) => {}
        Some(false) => {
            return Err(Error::TargetMismatch {
                target: name.clone(),
                field: "hashes differ".into(),
            })
        }
        None => {
            return Err(Error::TargetMismatch {
                target: name.clone(),
                field: "no hash algorithm in common".into(),
            })
        }
    }
    let image_custom = TargetCustom::of(name, image_target)?;
    // (c) "SHALL match" custom fields: hardware ID. The Image repository lists
    // the hardware IDs an image is built for; the ECU's must be among them.
    if !image_custom.hardware_ids.is_empty()
        && !image_custom.hardware_ids.contains(&ecu.hardware_id)
    {
        return Err(Error::WrongHardwareId {
            target: name.clone(),
            ecu: ecu.serial.clone(),
            ecu_hardware_id: ecu.hardware_id.clone(),
            image_hardware_ids: image_custom.hardware_ids.clone(),
        });
    }
    // (c) release counters must agree where both repositories give one.
    let (dr, ir) = (
        assignment.custom.release_counter,
        image_custom.release_counter,
    );
    if let (Some(dr), Some(ir)) = (dr, ir) {
        if dr != ir {
            return Err(Error::TargetMismatch {
                target: name.clone(),
                field: format!("releaseCounter: director {dr} vs image {ir}"),
            });
        }
    }
    let offered = ir.or(dr).unwrap_or(0);
    check_release_counter(name, ecu, offered)?;
    Ok(UpdateTarget {
        assignment: assignment.clone(),
        image_target: image_target.clone(),
        image_custom,
        image_role: image_role.to_owned(),
        release_counter: offered,
    })
}

/// (d) "the previous release counter ≤ the new one" (§5.4.4.2 step 10,
/// §5.4.3.4).
fn check_release_counter(name: &str, ecu: &EcuInfo, offered: u64) -> Result<()> {
    if let Some(installed) = &ecu.installed {
        if offered < installed.release_counter {
            return Err(Error::ReleaseCounterRollback {
                target: name.to_owned(),
                ecu: ecu.serial.clone(),
                previous: installed.release_counter,
                offered,
            });
        }
    }
    Ok(())
}

/// `Some(true)` when both maps share at least one algorithm and all shared
/// algorithms agree; `Some(false)` on any disagreement; `None` without overlap.
fn common_hashes_equal(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Option<bool> {
    let mut shared = false;
    for (alg, h) in a {
        if let Some(other) = b.get(alg) {
            shared = true;
            if !h.eq_ignore_ascii_case(other) {
                return Some(false);
            }
        }
    }
    shared.then_some(true)
}

/// Full verification (Uptane 2.1 §5.4.4.2), after the caller has brought both
/// repositories up to date (steps 2–5 and 7–9 through [`TrustedRepository`]).
///
/// Performs the Director checks and step 10 for every assignment not yet
/// installed. If the Image repository search needs a delegated role, returns
/// [`FullVerification::NeedImageRole`]; load it and call again.
pub fn full_verification(
    director: &TrustedRepository,
    image: &TrustedRepository,
    vehicle: &Vehicle,
) -> Result<FullVerification> {
    let assignments = director_assignments(director, vehicle)?;
    let mut plan = UpdatePlan {
        targets: Vec::new(),
        director_targets_version: director.targets().map(|t| t.common.version).unwrap_or(0),
    };
    for a in assignments {
        let ecu = &vehicle.ecus[&a.ecu_serial];
        // Step 6: images already installed need no further checks.
        if a.is_installed_on(ecu) {
            continue;
        }
        // Step 10 (a): resolve delegations to the Image repository entry with
        // the identical file name.
        match image.find_target(&a.name)? {
            TargetSearch::Found { role, target } => {
                plan.targets.push(match_image(&a, ecu, &role, &target)?);
            }
            TargetSearch::NeedRole { role, parent } => {
                return Ok(FullVerification::NeedImageRole { role, parent })
            }
            TargetSearch::NotFound => {
                return Err(Error::TargetMismatch {
                    target: a.name.clone(),
                    field: "not listed by the image repository".into(),
                })
            }
        }
    }
    Ok(FullVerification::Done(derive_plan(director, plan)?))
}

/// The decision as a proof: derived (see [`Verified::derive`]) from the
/// verified Director targets it was made from, whose bytes it carries.
fn derive_plan(director: &TrustedRepository, plan: UpdatePlan) -> Result<Verified<UpdatePlan>> {
    let targets = director.targets().ok_or_else(|| {
        Error::Workflow("director targets must be loaded before verification".into())
    })?;
    Verified::derive(targets, |_| Ok(plan))
}

/// Full verification on a Secondary (Uptane 2.1 §5.4.4.2 step 10: "A
/// Secondary ECU can elect to perform this check only on the metadata for the
/// image it will install"): the Director rules as [`partial_verification`]
/// checks them, then the Image repository match for this ECU's assignment only.
/// The plan holds at most one target. Like [`full_verification`], returns
/// [`FullVerification::NeedImageRole`] while the search needs a delegated role.
pub fn secondary_full_verification(
    director: &TrustedRepository,
    image: &TrustedRepository,
    ecu: &EcuInfo,
) -> Result<FullVerification> {
    let mut plan = UpdatePlan {
        targets: Vec::new(),
        director_targets_version: director.targets().map(|t| t.common.version).unwrap_or(0),
    };
    if let Some(a) = partial_verification(director, ecu)? {
        // Step 6: an image already installed needs no further checks.
        if !a.is_installed_on(ecu) {
            // Step 10 (a): resolve delegations to the Image repository entry
            // with the identical file name.
            match image.find_target(&a.name)? {
                TargetSearch::Found { role, target } => {
                    plan.targets.push(match_image(&a, ecu, &role, &target)?);
                }
                TargetSearch::NeedRole { role, parent } => {
                    return Ok(FullVerification::NeedImageRole { role, parent })
                }
                TargetSearch::NotFound => {
                    return Err(Error::TargetMismatch {
                        target: a.name.clone(),
                        field: "not listed by the image repository".into(),
                    })
                }
            }
        }
    }
    Ok(FullVerification::Done(derive_plan(director, plan)?))
}

/// Partial verification for one secondary ECU (Uptane 2.1 §5.4.4.1): the
/// Director targets (already checked against the Director root by `director`)
/// must follow the Director rules, and the entry for this ECU must match its
/// hardware ID and not roll back its release counter. Returns the assignment for
/// this ECU, if any.
pub fn partial_verification(
    director: &TrustedRepository,
    ecu: &EcuInfo,
) -> Result<Option<Verified<Assignment>>> {
    let targets = director.targets().ok_or_else(|| {
        Error::Workflow("director targets must be loaded before verification".into())
    })?;
    // A secondary does not know the other ECUs of the vehicle: it checks the
    // rules that concern itself and that no ECU appears twice.
    let mut all: BTreeSet<String> = BTreeSet::new();
    for (name, t) in &targets.targets {
        all.extend(TargetCustom::of(name, t)?.ecu_identifiers.into_keys());
    }
    let assignments =
        check_director_targets(targets, all.iter().map(String::as_str).collect(), None)?;
    let Some(a) = assignments.into_iter().find(|a| a.ecu_serial == ecu.serial) else {
        return Ok(None);
    };
    if a.hardware_id != ecu.hardware_id {
        return Err(Error::WrongHardwareId {
            target: a.name.clone(),
            ecu: ecu.serial.clone(),
            ecu_hardware_id: ecu.hardware_id.clone(),
            image_hardware_ids: vec![a.hardware_id.clone()],
        });
    }
    check_release_counter(&a.name, ecu, a.custom.release_counter.unwrap_or(0))?;
    Ok(Some(Verified::derive(targets, |_| Ok(a))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::target_file;
    use serde_json::json;

    /// The human version and release notes come from the Image repository's
    /// entry (signed by its targets role), never from the Director's: the
    /// Director's copy of the same keys is ignored.
    #[test]
    fn version_and_release_notes_come_from_the_image_repository() -> Result<()> {
        let data = b"head unit image 2.4.1";
        let director_target = target_file(
            data,
            Some(json!({
                "ecuIdentifiers": { "HU-1": { "hardwareId": "hu" } },
                "releaseCounter": 7,
                "version": "director says 9.9",
                "releaseNotes": "director notes"
            })),
        );
        let assignment = Assignment {
            name: "hu-2.4.1.img".into(),
            ecu_serial: "HU-1".into(),
            hardware_id: "hu".into(),
            custom: TargetCustom::of("hu-2.4.1.img", &director_target)?,
            director_target,
        };
        let ecu = EcuInfo {
            serial: "HU-1".into(),
            hardware_id: "hu".into(),
            installed: None,
        };
        let image = target_file(
            data,
            Some(json!({
                "hardwareIds": ["hu"],
                "releaseCounter": 7,
                "version": "2.4.1",
                "releaseNotes": "Fixes the charging timer."
            })),
        );
        let t = match_image(&assignment, &ecu, "targets", &image)?;
        assert_eq!(t.version(), Some("2.4.1"));
        assert_eq!(t.release_notes(), Some("Fixes the charging timer."));
        assert_eq!(t.release_counter(), 7);

        // Absent, or not a string: none (display texts decide nothing).
        let bare = target_file(data, Some(json!({ "hardwareIds": ["hu"], "version": 3 })));
        let t = match_image(&assignment, &ecu, "targets", &bare)?;
        assert_eq!((t.version(), t.release_notes()), (None, None));
        Ok(())
    }
}
