//! Attack fixtures: every folder under `tests/data/` is one scenario (see
//! `tests/data/README.md`), replayed here through the same
//! [`UpdateClient`] the daemon ships, as a Primary runs an update cycle, and
//! compared with the outcome its `case.json` names.
//!
//! The fixtures are written by `examples/gen_fixtures.rs`; the runner knows
//! nothing about how they were made, only the folder layout.

use secureev_uptane::client::{Decision, Failure, MetaRequest, Repo, Role, Step, UpdateClient};
use secureev_uptane::error::Error;
use secureev_uptane::trusted::Layout;
use secureev_uptane::uptane::{EcuInfo, InstalledImage, Vehicle};
use secureev_uptane::Timestamp;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Where the case folders live.
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// Images are streamed in chunks of this (odd) size, as a download would
/// deliver them.
const CHUNK: usize = 61;

/// Upper bound on the client's steps in one case, so that a core bug in the
/// workflow shows up as a failure rather than a hang.
const MAX_STEPS: usize = 1_000;

/// Every case the generator writes. A deleted or renamed folder fails
/// [`fixtures_cover_every_attack`].
const REQUIRED_CASES: &[&str] = &[
    // valid scenarios
    "valid-update",
    "valid-root-rotation",
    "valid-fast-forward-recovery",
    "valid-fast-forward-recovery-snapshot",
    "valid-director-root-and-targets-only",
    "valid-nothing-new",
    // arbitrary software
    "arbitrary-software-image",
    "arbitrary-software-director-targets",
    // rollback of each role
    "rollback-timestamp",
    "rollback-snapshot",
    "rollback-targets",
    "rollback-director-targets",
    "rollback-director-targets-expired-stored",
    "rollback-root",
    "fast-forward-without-rotation",
    // indefinite freeze
    "freeze-timestamp",
    "freeze-snapshot",
    "freeze-targets",
    "freeze-root",
    "freeze-director-targets",
    // endless data
    "endless-data-image",
    "endless-data-snapshot",
    // mix-and-match, partial bundles
    "mix-and-match-snapshot-version",
    "mix-and-match-director-image",
    "mix-and-match-targets-hash",
    "partial-bundle",
    "partial-bundle-targets",
    // wrong hardware, ECU, vehicle; Director rules
    "wrong-hardware-id",
    "wrong-hardware-id-director",
    "wrong-ecu",
    "wrong-vehicle",
    "duplicate-ecu",
    "director-delegations",
    // key compromise and signatures
    "below-threshold-key-compromise",
    "duplicate-signature",
    // root rotation faults
    "root-rotation-not-self-signed",
    "root-rotation-not-signed-by-old",
    "root-rotation-version-skip",
    // delegation faults
    "delegation-outside-paths",
    "delegation-bad-signature",
    "delegation-terminating",
    "delegation-cycle",
    "delegation-diamond-a-then-b",
    "delegation-diamond-b-then-a",
    "delegation-diamond-stored-a-then-b",
    "delegation-diamond-stored-b-then-a",
    "valid-delegation-diamond",
    // duplicate object keys (parser differential), at every level
    "duplicate-key-envelope",
    "duplicate-key-signed",
    "duplicate-key-targets",
    "duplicate-key-delegations",
    // RSA-PSS interop
    "valid-rsa-pss",
    "rsa-pss-bad-signature",
    "rsa-pss-1024-bit-key",
    // Uptane custom fields, hashes, types
    "release-counter-rollback",
    "unknown-hash-algorithm",
    "wrong-type",
];

/// A case as `case.json` describes it.
struct Case {
    now: Timestamp,
    vehicle: Vehicle,
    director_layout: Layout,
    expect: Expect,
}

/// The outcome a case expects.
enum Expect {
    /// Verification succeeds and these targets (sorted) are planned and verify.
    Ok(Vec<String>),
    /// This error.
    Fail {
        /// Variant name, e.g. "Rollback".
        variant: String,
        /// The role the error names, when given.
        role: Option<String>,
        /// `Error::attack()` as its `as_str()`; `None` for non-attack errors.
        attack: Option<String>,
        /// A substring of the error's message, when given.
        message: Option<String>,
    },
}

/// Why a simulated update cycle stopped.
enum Stop {
    /// The core refused something, at this step.
    Core { step: String, error: Box<Error> },
    /// The fixture itself is broken (missing file, bad case.json).
    Harness(String),
}

type Sim<T> = Result<T, Stop>;

/// Attach the step to a core error.
fn core<T>(step: impl Into<String>, r: Result<T, Error>) -> Sim<T> {
    r.map_err(|error| Stop::Core {
        step: step.into(),
        error: Box::new(error),
    })
}

fn harness(msg: impl Into<String>) -> Stop {
    Stop::Harness(msg.into())
}

fn read(path: &Path) -> Sim<Vec<u8>> {
    fs::read(path).map_err(|e| harness(format!("cannot read {}: {e}", path.display())))
}

fn read_optional(path: &Path) -> Sim<Option<Vec<u8>>> {
    if path.exists() {
        read(path).map(Some)
    } else {
        Ok(None)
    }
}

// ---- case.json -----------------------------------------------------------------------

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("case.json: missing string field {key:?}"))
}

fn opt_str_field(v: &Value, key: &str) -> Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("case.json: {key:?} is not a string: {other}")),
    }
}

fn parse_ecu(v: &Value) -> Result<EcuInfo, String> {
    let installed = match v.get("installed") {
        None | Some(Value::Null) => None,
        Some(i) => {
            let hashes: BTreeMap<String, String> =
                serde_json::from_value(i.get("hashes").cloned().unwrap_or(Value::Null))
                    .map_err(|e| format!("case.json: installed.hashes: {e}"))?;
            let length = i
                .get("length")
                .and_then(Value::as_u64)
                .ok_or("case.json: installed.length")?;
            let release_counter = i
                .get("releaseCounter")
                .and_then(Value::as_u64)
                .ok_or("case.json: installed.releaseCounter")?;
            // What the ECU's own state file would hold.
            let image: InstalledImage = serde_json::from_value(serde_json::json!({
                "name": str_field(i, "name")?,
                "length": length,
                "hashes": hashes,
                "release_counter": release_counter,
            }))
            .map_err(|e| format!("case.json: installed: {e}"))?;
            Some(image)
        }
    };
    Ok(EcuInfo {
        serial: str_field(v, "serial")?.to_owned(),
        hardware_id: str_field(v, "hardwareId")?.to_owned(),
        installed,
    })
}

fn parse_case(bytes: &[u8]) -> Result<Case, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("case.json: {e}"))?;
    if str_field(&v, "description")?.trim().is_empty() {
        return Err("case.json: empty description".into());
    }
    let now = Timestamp::parse(str_field(&v, "now")?).map_err(|e| format!("case.json: {e}"))?;
    let ecus = v
        .get("ecus")
        .and_then(Value::as_array)
        .ok_or("case.json: missing array \"ecus\"")?
        .iter()
        .map(parse_ecu)
        .collect::<Result<Vec<_>, _>>()?;
    let vehicle = Vehicle::new(str_field(&v, "vin")?, str_field(&v, "primary")?, ecus);
    let director_layout = match str_field(&v, "directorLayout")? {
        "tuf" => Layout::Tuf,
        "root-and-targets" => Layout::RootAndTargetsOnly,
        other => return Err(format!("case.json: unknown directorLayout {other:?}")),
    };
    let expect = match str_field(&v, "expect")? {
        "ok" => {
            let targets = v
                .get("expectTargets")
                .and_then(Value::as_array)
                .ok_or("case.json: an \"ok\" case needs \"expectTargets\"")?
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_owned)
                        .ok_or("expectTargets: not a string")
                })
                .collect::<Result<Vec<_>, _>>()?;
            Expect::Ok(sorted(targets))
        }
        variant => {
            if !v
                .as_object()
                .is_some_and(|o| o.contains_key("expectAttack"))
            {
                return Err(
                    "case.json: an error case must state \"expectAttack\" (or null)".into(),
                );
            }
            Expect::Fail {
                variant: variant.to_owned(),
                role: opt_str_field(&v, "expectRole")?,
                attack: opt_str_field(&v, "expectAttack")?,
                message: opt_str_field(&v, "expectMessage")?,
            }
        }
    };
    Ok(Case {
        now,
        vehicle,
        director_layout,
        expect,
    })
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---- the simulated Primary -----------------------------------------------------------

/// The folder of a repository in a case.
fn repo_dir(dir: &Path, repo: Repo) -> PathBuf {
    dir.join(repo.as_str())
}

/// The fixture file for a request: `remote/<N>.root.json` for roots, else the
/// unversioned `remote/<role>.json` (the runner does not simulate
/// consistent-snapshot URLs).
fn remote_file(dir: &Path, request: &MetaRequest) -> PathBuf {
    let remote = repo_dir(dir, request.repo).join("remote");
    match (&request.role, request.version) {
        (Role::Root, Some(v)) => remote.join(format!("{v}.root.json")),
        (role, _) => remote.join(format!("{}.json", role.as_str())),
    }
}

/// One update cycle of a Primary, as the daemon runs it: the one
/// [`UpdateClient`] in full verification, answering each step from the
/// case folder (stored copies from `trusted/`, served files from `remote/`),
/// then every planned image streamed through its verifier. Returns the planned
/// target names, sorted.
fn simulate(dir: &Path, case: &Case) -> Sim<Vec<String>> {
    let director_root = read(&dir.join("director/trusted/root.json"))?;
    let image_root = read(&dir.join("image/trusted/root.json"))?;
    let mut client = client_step(UpdateClient::primary(
        case.vehicle.clone(),
        &director_root,
        &image_root,
        case.now,
    ))?
    .with_director_layout(case.director_layout);

    let mut steps = 0;
    let plan = loop {
        steps += 1;
        if steps > MAX_STEPS {
            return Err(harness(format!("more than {MAX_STEPS} steps")));
        }
        match client_step(client.next_step())? {
            Step::Load { repo, role } => {
                // A copy stored by an earlier cycle, if the case has one
                // (delegated roles too: `image/trusted/<role>.json`).
                let stored = match role {
                    Role::Root => None,
                    role => read_optional(
                        &repo_dir(dir, repo)
                            .join("trusted")
                            .join(format!("{}.json", role.as_str())),
                    )?,
                };
                client_step(match stored {
                    Some(bytes) => client.offer(&bytes),
                    None => client.offer_not_found(),
                })?;
            }
            Step::Fetch(request) => {
                let served = read_optional(&remote_file(dir, &request))?;
                // A file the repository does not serve: only a newer root
                // may be missing; anything else is a broken fixture.
                match served {
                    Some(bytes) => client_step(client.offer(&bytes))?,
                    None if request.optional() => client_step(client.offer_not_found())?,
                    None => {
                        return Err(harness(format!(
                            "{} {} is not in the fixture",
                            request.repo, request.file
                        )))
                    }
                }
            }
            // The runner keeps nothing between cases.
            Step::Persist { .. } => {}
            Step::Done(Decision::Plan(plan)) => break plan,
            Step::Done(other) => return Err(harness(format!("unexpected decision {other:?}"))),
        }
    };

    let mut names = Vec::new();
    for target in plan.targets() {
        let name = target.name();
        let step = format!("image download: {name}");
        let data = read(&dir.join("image/targets").join(name))?;
        let mut verifier = core(step.clone(), target.stream_verifier())?;
        for chunk in data.chunks(CHUNK) {
            core(step.clone(), verifier.update(chunk))?;
        }
        core(step, verifier.finish())?;
        names.push(name.to_owned());
    }
    Ok(sorted(names))
}

/// Attach the client's context to its error.
fn client_step<T>(r: Result<T, Failure>) -> Sim<T> {
    r.map_err(|f| Stop::Core {
        step: f.context().to_owned(),
        error: Box::new(f.into_error()),
    })
}

/// Run one case folder and compare with its expectation.
fn check_case(dir: &Path) -> Result<String, String> {
    let case_file = dir.join("case.json");
    let bytes = fs::read(&case_file).map_err(|e| format!("cannot read case.json: {e}"))?;
    let case = parse_case(&bytes)?;
    judge(&case.expect, simulate(dir, &case))
}

/// Compare an outcome with the expectation.
fn judge(expect: &Expect, outcome: Sim<Vec<String>>) -> Result<String, String> {
    match (expect, outcome) {
        (_, Err(Stop::Harness(msg))) => Err(format!("broken fixture: {msg}")),
        (Expect::Ok(want), Ok(got)) if *want == got => Ok(format!("ok, planned {got:?}")),
        (Expect::Ok(want), Ok(got)) => Err(format!("planned {got:?}, expected {want:?}")),
        (Expect::Ok(_), Err(Stop::Core { step, error })) => Err(format!(
            "expected success, failed at {step} with {}: {error}",
            variant_name(&error)
        )),
        (Expect::Fail { variant, .. }, Ok(got)) => Err(format!(
            "expected {variant}, but verification succeeded with {got:?}"
        )),
        (
            Expect::Fail {
                variant,
                role,
                attack,
                message,
            },
            Err(Stop::Core { step, error }),
        ) => {
            let got = variant_name(&error);
            let text = error.to_string();
            let mut wrong = Vec::new();
            if got != variant {
                wrong.push(format!("variant {got}, expected {variant}"));
            }
            if let Some(role) = role {
                match error_role(&error) {
                    Some(r) if r == role => {}
                    other => wrong.push(format!("role {other:?}, expected {role:?}")),
                }
            }
            let got_attack = error.attack().map(|a| a.as_str().to_owned());
            if got_attack != *attack {
                wrong.push(format!("attack {got_attack:?}, expected {attack:?}"));
            }
            if let Some(m) = message {
                if !text.contains(m.as_str()) {
                    wrong.push(format!("message lacks {m:?}"));
                }
            }
            if wrong.is_empty() {
                Ok(format!("{got} at {step}: {text}"))
            } else {
                Err(format!("{} (at {step}: {text})", wrong.join("; ")))
            }
        }
    }
}

/// The name of an error's variant. A `match` rather than parsing `Debug`
/// output, so that a renamed variant is a compile error here.
fn variant_name(e: &Error) -> &'static str {
    match e {
        Error::Malformed { .. } => "Malformed",
        Error::Canonical(_) => "Canonical",
        Error::WrongType { .. } => "WrongType",
        Error::UnsupportedSpecVersion { .. } => "UnsupportedSpecVersion",
        Error::InvalidTime(_) => "InvalidTime",
        Error::InvalidKey { .. } => "InvalidKey",
        Error::ThresholdNotMet { .. } => "ThresholdNotMet",
        Error::DuplicateSignature { .. } => "DuplicateSignature",
        Error::InvalidRole { .. } => "InvalidRole",
        Error::Rollback { .. } => "Rollback",
        Error::VersionMismatch { .. } => "VersionMismatch",
        Error::Expired { .. } => "Expired",
        Error::MissingMeta { .. } => "MissingMeta",
        Error::HashMismatch { .. } => "HashMismatch",
        Error::LengthMismatch { .. } => "LengthMismatch",
        Error::EndlessData { .. } => "EndlessData",
        Error::UnsupportedHash { .. } => "UnsupportedHash",
        Error::NoHashes { .. } => "NoHashes",
        Error::TargetNotFound { .. } => "TargetNotFound",
        Error::DelegationLimit { .. } => "DelegationLimit",
        Error::InvalidDelegation { .. } => "InvalidDelegation",
        Error::Workflow(_) => "Workflow",
        Error::DirectorDelegations => "DirectorDelegations",
        Error::DuplicateEcu { .. } => "DuplicateEcu",
        Error::WrongEcu { .. } => "WrongEcu",
        Error::WrongHardwareId { .. } => "WrongHardwareId",
        Error::ReleaseCounterRollback { .. } => "ReleaseCounterRollback",
        Error::TargetMismatch { .. } => "TargetMismatch",
        Error::WrongVehicle { .. } => "WrongVehicle",
        Error::MissingVehicleId => "MissingVehicleId",
        Error::InvalidCustom { .. } => "InvalidCustom",
        Error::InvalidManifest { .. } => "InvalidManifest",
        Error::InvalidDid { .. } => "InvalidDid",
        Error::Decryption { .. } => "Decryption",
        // `Error` is non-exhaustive: a variant added later shows up by name
        // in the failure message through its Display text.
        _ => "<variant unknown to tests/attacks.rs>",
    }
}

/// The role an error names, for variants that name one (`WrongType`: the
/// role that was expected).
fn error_role(e: &Error) -> Option<&str> {
    match e {
        Error::Malformed { role, .. }
        | Error::UnsupportedSpecVersion { role, .. }
        | Error::ThresholdNotMet { role, .. }
        | Error::DuplicateSignature { role, .. }
        | Error::InvalidRole { role, .. }
        | Error::Rollback { role, .. }
        | Error::VersionMismatch { role, .. }
        | Error::Expired { role, .. }
        | Error::MissingMeta { role, .. }
        | Error::InvalidDelegation { role, .. } => Some(role),
        Error::WrongType { expected, .. } => Some(expected),
        _ => None,
    }
}

/// Case folders, sorted. Panics if the data folder is missing.
fn case_dirs() -> Vec<PathBuf> {
    let entries = fs::read_dir(DATA).unwrap_or_else(|e| panic!("cannot list {DATA}: {e}"));
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn dir_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn every_fixture_ends_as_its_case_json_says() {
    let dirs = case_dirs();
    assert!(!dirs.is_empty(), "no case folders in {DATA}");
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir_name(dir);
        // A panic in the core is a failure of this case, not of the run.
        let outcome = std::panic::catch_unwind(|| check_case(dir)).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Err(format!("panicked: {what}"))
        });
        match outcome {
            Ok(what) => println!("PASS {name}: {what}"),
            Err(why) => {
                println!("FAIL {name}: {why}");
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixture cases failed:\n  {}",
        failures.len(),
        dirs.len(),
        failures.join("\n  ")
    );
}

#[test]
fn fixtures_cover_every_attack() {
    let present: Vec<String> = case_dirs().iter().map(|d| dir_name(d)).collect();
    let missing: Vec<&&str> = REQUIRED_CASES
        .iter()
        .filter(|c| !present.iter().any(|p| p == *c))
        .collect();
    assert!(
        missing.is_empty(),
        "fixture folders missing from {DATA}: {missing:?} (regenerate with \
         `cargo run -p secureev-uptane --example gen_fixtures -- uptane/tests/data`)"
    );
    let unlisted: Vec<&String> = present
        .iter()
        .filter(|p| !REQUIRED_CASES.contains(&p.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "case folders not listed in REQUIRED_CASES: {unlisted:?}"
    );
}

/// The runner itself: a wrong expectation must be reported, not pass.
#[test]
fn runner_reports_wrong_expectations() {
    let dir = Path::new(DATA).join("valid-update");
    let case = parse_case(&fs::read(dir.join("case.json")).expect("valid-update/case.json"))
        .expect("valid-update/case.json parses");
    let wrong_variant = Expect::Fail {
        variant: "Rollback".into(),
        role: None,
        attack: Some("rollback".into()),
        message: None,
    };
    assert!(judge(&wrong_variant, simulate(&dir, &case)).is_err());
    let wrong_targets = Expect::Ok(vec!["primary-fw-2.bin".into()]);
    assert!(judge(&wrong_targets, simulate(&dir, &case)).is_err());

    let rollback = Path::new(DATA).join("rollback-timestamp");
    let case = parse_case(&fs::read(rollback.join("case.json")).expect("case.json"))
        .expect("rollback-timestamp/case.json parses");
    for wrong in [
        Expect::Ok(vec![]),
        Expect::Fail {
            variant: "Rollback".into(),
            role: Some("snapshot".into()),
            attack: Some("rollback".into()),
            message: None,
        },
        Expect::Fail {
            variant: "Rollback".into(),
            role: None,
            attack: None,
            message: None,
        },
        Expect::Fail {
            variant: "Rollback".into(),
            role: None,
            attack: Some("rollback".into()),
            message: Some("no such text".into()),
        },
    ] {
        assert!(judge(&wrong, simulate(&rollback, &case)).is_err());
    }
    assert!(judge(&case.expect, simulate(&rollback, &case)).is_ok());
}
