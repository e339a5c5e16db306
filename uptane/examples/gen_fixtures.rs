//! Generates the attack fixtures under `uptane/tests/data/`: one folder per
//! attack (or per valid scenario), each holding what an ECU trusts, what an
//! honest or malicious Director and Image repository serve, the image bytes,
//! and a `case.json` naming the expected outcome. `tests/attacks.rs` replays
//! every folder as a Primary would.
//!
//! ```text
//! cargo run -p secureev-uptane --example gen_fixtures -- uptane/tests/data
//! cargo run -p secureev-uptane --example gen_fixtures -- uptane/tests/data <case>...
//! ```
//!
//! Keys are random, so every run rewrites every file; the outcomes do not
//! change. Expiries are fixed (valid metadata expires in 2040, expired metadata
//! in 2029) and `case.json` fixes "now" to 2030-01-01, so the fixtures do not
//! rot. Only the case folders this program knows are deleted and rewritten;
//! other entries (the README) are left alone.

use secureev_uptane::builder::{
    meta_file, resign, target_file, Published, RepoBuilder, TOP_LEVEL_ROLES,
};
use secureev_uptane::{SigningKey, Timestamp};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fs;
use std::path::{Path, PathBuf};

type Res<T> = Result<T, Box<dyn StdError>>;

/// The time every case is checked at.
const NOW: &str = "2030-01-01T00:00:00Z";
/// Expiry of valid metadata.
const VALID_UNTIL: &str = "2040-01-01T00:00:00Z";
/// Expiry of expired metadata (freeze attacks).
const EXPIRED_AT: &str = "2029-06-01T00:00:00Z";

const VIN: &str = "SEVOTA0FIXTURE001";
const OTHER_VIN: &str = "SEVOTA0FIXTURE999";
const PRIMARY: &str = "PRI-0001";
const PRIMARY_HW: &str = "secureev-primary";
const BMS: &str = "BMS-0001";
const BMS_HW: &str = "secureev-bms";
const INVERTER_HW: &str = "secureev-inverter";

const PRIMARY_IMG: &str = "primary-fw-2.bin";
const BMS_IMG: &str = "bms-fw-2.bin";
const INVERTER_IMG: &str = "inverter-fw-2.bin";
/// The Image repository role trusted for `bms-*` images.
const BMS_ROLE: &str = "bms";

const PRIMARY_LEN: usize = 3000;
const BMS_LEN: usize = 1500;

fn main() -> Res<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"));
    fs::create_dir_all(&out)?;
    // Optional case names after the folder: write only those (keys are
    // random, so regenerating everything rewrites every file).
    let only: Vec<String> = std::env::args().skip(2).collect();
    let mut cases = cases();
    if !only.is_empty() {
        let unknown: Vec<&String> = only
            .iter()
            .filter(|o| !cases.iter().any(|(n, _)| n == o))
            .collect();
        if !unknown.is_empty() {
            return Err(format!("unknown cases: {unknown:?}").into());
        }
        cases.retain(|(n, _)| only.iter().any(|o| o == n));
    }
    for (name, build) in &cases {
        let fixture = build().map_err(|e| format!("{name}: {e}"))?;
        let dir = out.join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fixture.write(&dir)?;
        println!("{name}");
    }
    println!("wrote {} cases to {}", cases.len(), out.display());
    Ok(())
}

type CaseFn = fn() -> Res<Fixture>;

/// Every case, by folder name.
fn cases() -> Vec<(&'static str, CaseFn)> {
    vec![
        ("valid-update", valid_update),
        ("valid-root-rotation", valid_root_rotation),
        ("valid-fast-forward-recovery", valid_fast_forward_recovery),
        (
            "valid-fast-forward-recovery-snapshot",
            valid_fast_forward_recovery_snapshot,
        ),
        (
            "valid-director-root-and-targets-only",
            valid_director_root_and_targets_only,
        ),
        ("valid-nothing-new", valid_nothing_new),
        (
            "fast-forward-without-rotation",
            fast_forward_without_rotation,
        ),
        ("arbitrary-software-image", arbitrary_software_image),
        (
            "arbitrary-software-director-targets",
            arbitrary_software_director_targets,
        ),
        ("rollback-timestamp", rollback_timestamp),
        ("rollback-snapshot", rollback_snapshot),
        ("rollback-targets", rollback_targets),
        ("rollback-director-targets", rollback_director_targets),
        (
            "rollback-director-targets-expired-stored",
            rollback_director_targets_expired_stored,
        ),
        ("rollback-root", rollback_root),
        ("freeze-timestamp", || freeze("image", "timestamp")),
        ("freeze-snapshot", || freeze("image", "snapshot")),
        ("freeze-targets", || freeze("image", "targets")),
        ("freeze-root", || freeze("image", "root")),
        ("freeze-director-targets", || freeze("director", "targets")),
        ("endless-data-image", endless_data_image),
        ("endless-data-snapshot", endless_data_snapshot),
        (
            "mix-and-match-snapshot-version",
            mix_and_match_snapshot_version,
        ),
        ("mix-and-match-director-image", mix_and_match_director_image),
        ("mix-and-match-targets-hash", mix_and_match_targets_hash),
        ("partial-bundle", partial_bundle),
        ("partial-bundle-targets", partial_bundle_targets),
        ("wrong-hardware-id", wrong_hardware_id),
        ("wrong-hardware-id-director", wrong_hardware_id_director),
        ("wrong-ecu", wrong_ecu),
        ("wrong-vehicle", wrong_vehicle),
        ("duplicate-ecu", duplicate_ecu),
        ("director-delegations", director_delegations),
        (
            "below-threshold-key-compromise",
            below_threshold_key_compromise,
        ),
        ("duplicate-signature", duplicate_signature),
        ("root-rotation-not-self-signed", || {
            root_rotation_fault(RootFault::NotSelfSigned)
        }),
        ("root-rotation-not-signed-by-old", || {
            root_rotation_fault(RootFault::NotSignedByOld)
        }),
        ("root-rotation-version-skip", || {
            root_rotation_fault(RootFault::VersionSkip)
        }),
        ("delegation-outside-paths", delegation_outside_paths),
        ("delegation-bad-signature", delegation_bad_signature),
        ("delegation-terminating", delegation_terminating),
        ("delegation-cycle", delegation_cycle),
        ("delegation-diamond-a-then-b", || {
            delegation_diamond(Diamond::SignedByA, Restart::No)
        }),
        ("delegation-diamond-b-then-a", || {
            delegation_diamond(Diamond::SignedByB, Restart::No)
        }),
        ("delegation-diamond-stored-a-then-b", || {
            delegation_diamond(Diamond::SignedByA, Restart::Stored)
        }),
        ("delegation-diamond-stored-b-then-a", || {
            delegation_diamond(Diamond::SignedByB, Restart::Stored)
        }),
        ("valid-delegation-diamond", || {
            delegation_diamond(Diamond::SignedByBoth, Restart::No)
        }),
        ("duplicate-key-envelope", || {
            duplicate_key(DupLevel::Envelope)
        }),
        ("duplicate-key-signed", || duplicate_key(DupLevel::Signed)),
        ("duplicate-key-targets", || duplicate_key(DupLevel::Targets)),
        ("duplicate-key-delegations", || {
            duplicate_key(DupLevel::Delegations)
        }),
        ("valid-rsa-pss", || rsa_pss(RsaCase::Valid)),
        ("rsa-pss-bad-signature", || rsa_pss(RsaCase::BadSignature)),
        ("rsa-pss-1024-bit-key", || rsa_pss(RsaCase::Key1024)),
        ("release-counter-rollback", release_counter_rollback),
        ("unknown-hash-algorithm", unknown_hash_algorithm),
        ("wrong-type", wrong_type),
    ]
}

// ---- building blocks ---------------------------------------------------------------

fn time(s: &str) -> Res<Timestamp> {
    Ok(Timestamp::parse(s)?)
}

/// A repository whose every role expires in 2040.
fn repo() -> Res<RepoBuilder> {
    let mut b = RepoBuilder::new(time(NOW)?);
    for role in TOP_LEVEL_ROLES {
        b.expires.insert(role.to_owned(), time(VALID_UNTIL)?);
    }
    Ok(b)
}

/// Deterministic pseudo-random image bytes (xorshift seeded by `seed`).
fn image_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = seed.bytes().fold(0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Custom fields of an Image repository target.
fn image_custom(hardware_id: &str, release_counter: u64) -> Value {
    json!({ "hardwareIds": [hardware_id], "releaseCounter": release_counter })
}

/// Custom fields of a Director target for one ECU.
fn director_custom(serial: &str, hardware_id: &str, release_counter: u64) -> Value {
    json!({
        "ecuIdentifiers": { serial: { "hardwareId": hardware_id } },
        "releaseCounter": release_counter
    })
}

/// A target entry (length, sha256, sha512, custom) as JSON.
fn target_value(data: &[u8], custom: Value) -> Res<Value> {
    Ok(serde_json::to_value(target_file(data, Some(custom)))?)
}

/// A snapshot/timestamp `meta` entry for `bytes` as JSON.
fn meta_value(version: u64, bytes: &[u8]) -> Res<Value> {
    Ok(serde_json::to_value(meta_file(version, bytes))?)
}

/// Put `target` into delegated role `role` of `b`, with custom fields.
fn put_delegated(
    b: &mut RepoBuilder,
    role: &str,
    target: &str,
    data: &[u8],
    custom: Value,
) -> Res<()> {
    let d = b
        .delegated
        .iter_mut()
        .find(|d| d.role.name == role)
        .ok_or_else(|| format!("no delegated role {role}"))?;
    d.targets
        .insert(target.to_owned(), target_file(data, Some(custom)));
    Ok(())
}

/// The keys of a top-level role of `b`.
fn role_keys(b: &RepoBuilder, role: &str) -> Res<Vec<SigningKey>> {
    Ok(b.keys
        .get(role)
        .cloned()
        .ok_or_else(|| format!("no {role} keys"))?)
}

/// Re-sign `bytes` with every key of top-level role `role` after `edit`.
fn sign_as(
    b: &RepoBuilder,
    role: &str,
    bytes: &[u8],
    edit: impl FnOnce(&mut Value),
) -> Res<Vec<u8>> {
    let keys = role_keys(b, role)?;
    let refs: Vec<&SigningKey> = keys.iter().collect();
    Ok(resign(bytes, &refs, edit)?)
}

/// `signed.version` of an envelope.
fn version_of(bytes: &[u8]) -> Res<u64> {
    let v: Value = serde_json::from_slice(bytes)?;
    Ok(v["signed"]["version"]
        .as_u64()
        .ok_or("envelope has no signed.version")?)
}

/// Re-sign the snapshot of `p` after `edit` with the repository's snapshot
/// key, and sign a new timestamp (next version) for it.
fn resnapshot(b: &mut RepoBuilder, p: &mut Published, edit: impl FnOnce(&mut Value)) -> Res<()> {
    p.snapshot = sign_as(b, "snapshot", &p.snapshot, edit)?;
    let version = version_of(&p.snapshot)?;
    p.timestamp = b.sign_timestamp(version, &p.snapshot)?;
    Ok(())
}

/// Serialise an envelope compactly and pad it with trailing whitespace to
/// exactly `len` bytes: a file of the same length but other content.
fn same_length(bytes: &[u8], len: usize) -> Res<Vec<u8>> {
    let v: Value = serde_json::from_slice(bytes)?;
    let mut out = serde_json::to_vec(&v)?;
    if out.len() > len {
        return Err(format!("compact form is {} bytes, longer than {len}", out.len()).into());
    }
    out.resize(len, b' ');
    Ok(out)
}

// ---- the vehicle and its repositories ------------------------------------------------

/// An ECU of the vehicle, and what it has installed.
#[derive(Clone)]
struct Ecu {
    serial: &'static str,
    hardware_id: &'static str,
    installed: Option<(String, Vec<u8>, u64)>,
}

impl Ecu {
    fn to_json(&self) -> Value {
        let installed = match &self.installed {
            None => Value::Null,
            Some((name, data, release_counter)) => {
                let t = target_file(data, None);
                json!({
                    "name": name,
                    "length": t.length,
                    "hashes": t.hashes,
                    "releaseCounter": release_counter,
                })
            }
        };
        json!({ "serial": self.serial, "hardwareId": self.hardware_id, "installed": installed })
    }
}

/// Both repositories in their honest state, the images they serve, and the
/// vehicle: a Primary (`PRI-0001`) and one secondary (`BMS-0001`).
///
/// Image repository: `primary-fw-2.bin` in the top-level targets, `bms-fw-2.bin`
/// in the delegated role `bms` (trusted for `bms-*`). Director: both images,
/// one per ECU, release counter 2, and the VIN. Installed: version 1 of each
/// image, release counter 1.
struct World {
    director: RepoBuilder,
    image: RepoBuilder,
    images: BTreeMap<String, Vec<u8>>,
    vin: String,
    ecus: Vec<Ecu>,
}

impl World {
    fn standard() -> Res<World> {
        let primary = image_bytes(PRIMARY_IMG, PRIMARY_LEN);
        let bms = image_bytes(BMS_IMG, BMS_LEN);

        let mut image = repo()?;
        image.add_target(PRIMARY_IMG, &primary, Some(image_custom(PRIMARY_HW, 2)));
        image.add_delegation("targets", BMS_ROLE, &["bms-*"], false);
        put_delegated(&mut image, BMS_ROLE, BMS_IMG, &bms, image_custom(BMS_HW, 2))?;

        let mut director = repo()?;
        director.add_target(
            PRIMARY_IMG,
            &primary,
            Some(director_custom(PRIMARY, PRIMARY_HW, 2)),
        );
        director.add_target(BMS_IMG, &bms, Some(director_custom(BMS, BMS_HW, 2)));
        director
            .targets_extra
            .insert("custom".into(), json!({ "vin": VIN }));

        let mut images = BTreeMap::new();
        images.insert(PRIMARY_IMG.to_owned(), primary);
        images.insert(BMS_IMG.to_owned(), bms);
        let ecus = vec![
            Ecu {
                serial: PRIMARY,
                hardware_id: PRIMARY_HW,
                installed: Some((
                    "primary-fw-1.bin".into(),
                    image_bytes("primary-fw-1.bin", 2900),
                    1,
                )),
            },
            Ecu {
                serial: BMS,
                hardware_id: BMS_HW,
                installed: Some(("bms-fw-1.bin".into(), image_bytes("bms-fw-1.bin", 1400), 1)),
            },
        ];
        Ok(World {
            director,
            image,
            images,
            vin: VIN.into(),
            ecus,
        })
    }

    /// Publish a new version of every role of both repositories.
    fn publish(&mut self) -> Res<(Published, Published)> {
        Ok((self.director.publish()?, self.image.publish()?))
    }

    /// Record that ECU `serial` has `name` (with these bytes) installed.
    fn install(&mut self, serial: &str, name: &str, data: Vec<u8>, release_counter: u64) {
        if let Some(e) = self.ecus.iter_mut().find(|e| e.serial == serial) {
            e.installed = Some((name.to_owned(), data, release_counter));
        }
    }

    fn image_of(&self, name: &str) -> Res<Vec<u8>> {
        Ok(self
            .images
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no image {name}"))?)
    }
}

/// The files of one repository in a case folder.
#[derive(Default, Clone)]
struct RepoFiles {
    /// `trusted/`: what the ECU stored in an earlier cycle.
    trusted: BTreeMap<String, Vec<u8>>,
    /// `remote/`: what the repository serves now.
    remote: BTreeMap<String, Vec<u8>>,
}

impl RepoFiles {
    /// The ECU trusts root version `trusted_root`; the repository serves every
    /// newer root and the current metadata of `p`.
    fn serve(p: &Published, trusted_root: u64) -> Res<Self> {
        let mut f = RepoFiles::default();
        let root = p
            .roots
            .get(&trusted_root)
            .ok_or_else(|| format!("no root version {trusted_root}"))?;
        f.trusted.insert("root.json".into(), root.clone());
        for (v, bytes) in p.roots.range(trusted_root + 1..) {
            f.remote.insert(format!("{v}.root.json"), bytes.clone());
        }
        f.remote
            .insert("timestamp.json".into(), p.timestamp.clone());
        f.remote.insert("snapshot.json".into(), p.snapshot.clone());
        f.remote.insert("targets.json".into(), p.targets.clone());
        for (role, bytes) in &p.delegated {
            f.remote.insert(format!("{role}.json"), bytes.clone());
        }
        Ok(f)
    }

    /// The ECU stored timestamp and snapshot of `p` in an earlier cycle (the
    /// stored snapshot protects targets against rollback).
    fn trusting(mut self, p: &Published) -> Self {
        self.trusted
            .insert("timestamp.json".into(), p.timestamp.clone());
        self.trusted
            .insert("snapshot.json".into(), p.snapshot.clone());
        self
    }

    /// The ECU stored targets of `p` in an earlier cycle: the only rollback
    /// protection of a root-and-targets Director.
    fn trusting_targets(mut self, p: &Published) -> Self {
        self.trusted
            .insert("targets.json".into(), p.targets.clone());
        self
    }

    /// An Uptane 1.x-style Director: no timestamp, no snapshot.
    fn root_and_targets(mut self) -> Self {
        for f in ["timestamp.json", "snapshot.json"] {
            self.trusted.remove(f);
            self.remote.remove(f);
        }
        self
    }

    fn remote(&mut self, file: &str, bytes: Vec<u8>) {
        self.remote.insert(file.to_owned(), bytes);
    }

    fn write(&self, dir: &Path) -> Res<()> {
        for (sub, files) in [("trusted", &self.trusted), ("remote", &self.remote)] {
            let d = dir.join(sub);
            fs::create_dir_all(&d)?;
            for (name, bytes) in files {
                fs::write(d.join(name), bytes)?;
            }
        }
        Ok(())
    }
}

/// What the runner must observe.
enum Expect {
    /// Full verification succeeds and every image streams clean; these targets
    /// are planned (sorted).
    Ok(Vec<&'static str>),
    /// This error.
    Fail(Failure),
}

/// An expected error: its variant, the role it names, the attack class
/// `Error::attack()` reports, and a substring of its message.
struct Failure {
    variant: &'static str,
    role: Option<&'static str>,
    attack: Option<&'static str>,
    message: Option<String>,
}

fn fails(variant: &'static str, attack: Option<&'static str>) -> Failure {
    Failure {
        variant,
        role: None,
        attack,
        message: None,
    }
}

impl Failure {
    fn role(mut self, role: &'static str) -> Self {
        self.role = Some(role);
        self
    }

    fn message(mut self, m: &str) -> Self {
        self.message = Some(m.to_owned());
        self
    }

    fn done(self) -> Expect {
        Expect::Fail(self)
    }
}

/// One case folder.
struct Fixture {
    description: String,
    director_layout: &'static str,
    vin: String,
    ecus: Vec<Ecu>,
    director: RepoFiles,
    image: RepoFiles,
    images: BTreeMap<String, Vec<u8>>,
    expect: Expect,
}

impl Fixture {
    fn new(
        description: &str,
        w: &World,
        director: RepoFiles,
        image: RepoFiles,
        expect: Expect,
    ) -> Self {
        Fixture {
            description: description.to_owned(),
            director_layout: "tuf",
            vin: w.vin.clone(),
            ecus: w.ecus.clone(),
            director,
            image,
            images: w.images.clone(),
            expect,
        }
    }

    /// Honest repositories serving `d` and `i`, trusting root version 1.
    fn honest(
        description: &str,
        w: &World,
        d: &Published,
        i: &Published,
        expect: Expect,
    ) -> Res<Self> {
        Ok(Self::new(
            description,
            w,
            RepoFiles::serve(d, 1)?,
            RepoFiles::serve(i, 1)?,
            expect,
        ))
    }

    fn root_and_targets(mut self) -> Self {
        self.director_layout = "root-and-targets";
        self.director = self.director.root_and_targets();
        self
    }

    fn case_json(&self) -> Value {
        let mut c = Map::new();
        c.insert("description".into(), json!(self.description));
        c.insert("now".into(), json!(NOW));
        c.insert("vin".into(), json!(self.vin));
        c.insert("primary".into(), json!(PRIMARY));
        c.insert("ecus".into(), self.ecus.iter().map(Ecu::to_json).collect());
        c.insert("directorLayout".into(), json!(self.director_layout));
        match &self.expect {
            Expect::Ok(targets) => {
                c.insert("expect".into(), json!("ok"));
                let mut t = targets.clone();
                t.sort_unstable();
                c.insert("expectTargets".into(), json!(t));
            }
            Expect::Fail(f) => {
                c.insert("expect".into(), json!(f.variant));
                if let Some(r) = f.role {
                    c.insert("expectRole".into(), json!(r));
                }
                c.insert("expectAttack".into(), json!(f.attack));
                if let Some(m) = &f.message {
                    c.insert("expectMessage".into(), json!(m));
                }
            }
        }
        Value::Object(c)
    }

    fn write(&self, dir: &Path) -> Res<()> {
        self.director.write(&dir.join("director"))?;
        self.image.write(&dir.join("image"))?;
        let targets = dir.join("image/targets");
        fs::create_dir_all(&targets)?;
        for (name, data) in &self.images {
            fs::write(targets.join(name), data)?;
        }
        let mut case = serde_json::to_vec_pretty(&self.case_json())?;
        case.push(b'\n');
        fs::write(dir.join("case.json"), case)?;
        Ok(())
    }
}

// ---- valid scenarios -----------------------------------------------------------------

fn valid_update() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d1, i1) = w.publish()?;
    let (d2, i2) = w.publish()?;
    Ok(Fixture::new(
        "A regular update cycle. Both repositories serve version 2 of every role; the ECU \
         stored version 1 of timestamp and snapshot in the previous cycle. The Director \
         assigns primary-fw-2.bin to the Primary and bms-fw-2.bin to the BMS secondary; the \
         Image repository lists the first in its top-level targets and the second in the \
         delegated role 'bms'. Both images verify.",
        &w,
        RepoFiles::serve(&d2, 1)?.trusting(&d1),
        RepoFiles::serve(&i2, 1)?.trusting(&i1),
        Expect::Ok(vec![BMS_IMG, PRIMARY_IMG]),
    ))
}

fn valid_root_rotation() -> Res<Fixture> {
    let mut w = World::standard()?;
    // Image repository: root v2 replaces the root key by a 2-of-2 pair
    // (P-256 and Ed25519); root v3 rotates the targets and timestamp keys.
    w.image.publish_root()?;
    w.image.rotate_keys(
        "root",
        vec![SigningKey::generate_p256(), SigningKey::generate_ed25519()],
        2,
    );
    w.image.publish_root()?;
    w.image
        .rotate_keys("targets", vec![SigningKey::generate_ed25519()], 1);
    w.image
        .rotate_keys("timestamp", vec![SigningKey::generate_p256()], 1);
    // Director: root v2 with a new root key.
    w.director.publish_root()?;
    w.director
        .rotate_keys("root", vec![SigningKey::generate_p256()], 1);
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Root rotation. The ECU trusts root v1 of both repositories. The Image repository \
         serves 2.root.json (new 2-of-2 root keys, signed by the old and the new keys) and \
         3.root.json (new targets and timestamp keys); the Director serves 2.root.json with \
         a new root key. All other metadata is signed with the new keys. The update succeeds.",
        &w,
        &d,
        &i,
        Expect::Ok(vec![BMS_IMG, PRIMARY_IMG]),
    )
}

/// The ECU trusts a timestamp of version 1,000,000 that a compromised (but
/// still authorised) timestamp key signed.
fn fast_forwarded(w: &mut World) -> Res<(Published, Vec<u8>)> {
    let i1 = w.image.publish()?;
    let ff = sign_as(&w.image, "timestamp", &i1.timestamp, |s| {
        s["version"] = json!(1_000_000)
    })?;
    Ok((i1, ff))
}

fn valid_fast_forward_recovery() -> Res<Fixture> {
    let mut w = World::standard()?;
    let d = w.director.publish()?;
    let (i1, ff) = fast_forwarded(&mut w)?;
    // Recovery: root v2 rotates the timestamp key.
    w.image
        .rotate_keys("timestamp", vec![SigningKey::generate_p256()], 1);
    let i2 = w.image.publish()?;
    let mut image = RepoFiles::serve(&i2, 1)?;
    image.trusted.insert("timestamp.json".into(), ff);
    image
        .trusted
        .insert("snapshot.json".into(), i1.snapshot.clone());
    Ok(Fixture::new(
        "Fast-forward attack recovery (TUF 1.0 §5.3.11, Uptane 2.1 §5.4.4.3). A compromised \
         timestamp key signed timestamp version 1000000, which the ECU stored. The Image \
         repository then rotated the timestamp key (2.root.json) and serves timestamp \
         version 2. Because the timestamp key changed, the stored timestamp and snapshot \
         are discarded (the old key no longer verifies under the new root either) and the \
         update succeeds. See valid-fast-forward-recovery-snapshot for the case where only \
         the discarding saves the ECU.",
        &w,
        RepoFiles::serve(&d, 1)?,
        image,
        Expect::Ok(vec![BMS_IMG, PRIMARY_IMG]),
    ))
}

fn valid_fast_forward_recovery_snapshot() -> Res<Fixture> {
    let mut w = World::standard()?;
    let d = w.director.publish()?;
    let i1 = w.image.publish()?;
    // A compromised snapshot key signed snapshot version 1000000; the honest
    // online timestamp service listed it in timestamp version 2. The ECU
    // stored both.
    let ff_snapshot = sign_as(&w.image, "snapshot", &i1.snapshot, |s| {
        s["version"] = json!(1_000_000)
    })?;
    let ff_timestamp = w.image.sign_timestamp(1_000_000, &ff_snapshot)?;
    // Recovery: root v2 rotates the snapshot key only.
    w.image
        .rotate_keys("snapshot", vec![SigningKey::generate_p256()], 1);
    let i2 = w.image.publish()?;
    let mut image = RepoFiles::serve(&i2, 1)?;
    image.trusted.insert("timestamp.json".into(), ff_timestamp);
    image.trusted.insert("snapshot.json".into(), ff_snapshot);
    Ok(Fixture::new(
        "Fast-forward attack recovery for the snapshot (TUF 1.0 §5.3.11). A compromised \
         snapshot key signed snapshot version 1000000, and the (uncompromised) timestamp \
         key listed it in timestamp version 2; the ECU stored both. The repository rotated \
         the snapshot key (2.root.json) and serves timestamp version 3 listing snapshot \
         version 2. The stored timestamp still verifies, so only discarding it because the \
         snapshot key changed avoids a snapshot rollback error. The update succeeds.",
        &w,
        RepoFiles::serve(&d, 1)?,
        image,
        Expect::Ok(vec![BMS_IMG, PRIMARY_IMG]),
    ))
}

fn fast_forward_without_rotation() -> Res<Fixture> {
    let mut w = World::standard()?;
    let d = w.director.publish()?;
    let (_, ff) = fast_forwarded(&mut w)?;
    let i2 = w.image.publish()?;
    let mut image = RepoFiles::serve(&i2, 1)?;
    image.trusted.insert("timestamp.json".into(), ff);
    Ok(Fixture::new(
        "Counterpart of valid-fast-forward-recovery: the ECU stored timestamp version \
         1000000 signed by a compromised timestamp key, and the repository has not rotated \
         that key. Timestamp version 2 is then a rollback; the ECU stays frozen until the \
         key is rotated.",
        &w,
        RepoFiles::serve(&d, 1)?,
        image,
        fails("Rollback", Some("rollback"))
            .role("timestamp")
            .message("trusted version 1000000, offered 2")
            .done(),
    ))
}

fn valid_director_root_and_targets_only() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d1, _) = w.publish()?;
    let (d2, i2) = w.publish()?;
    Ok(Fixture::new(
        "Uptane 1.x compatibility: the Director serves only root and targets (as ota-tuf \
         does); the ECU stored Director targets version 1 and is offered version 2. The \
         Image repository serves all four roles. The update succeeds.",
        &w,
        RepoFiles::serve(&d2, 1)?.trusting_targets(&d1),
        RepoFiles::serve(&i2, 1)?,
        Expect::Ok(vec![BMS_IMG, PRIMARY_IMG]),
    )
    .root_and_targets())
}

fn valid_nothing_new() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, i) = w.publish()?;
    let primary = w.image_of(PRIMARY_IMG)?;
    let bms = w.image_of(BMS_IMG)?;
    w.install(PRIMARY, PRIMARY_IMG, primary, 2);
    w.install(BMS, BMS_IMG, bms, 2);
    Ok(Fixture::new(
        "Nothing new: the ECU already stored the timestamp and snapshot both repositories \
         serve (the timestamp is unchanged, the stored snapshot is final) and every ECU \
         already runs the image the Director assigns. The plan is empty.",
        &w,
        RepoFiles::serve(&d, 1)?.trusting(&d),
        RepoFiles::serve(&i, 1)?.trusting(&i),
        Expect::Ok(vec![]),
    ))
}

// ---- arbitrary software --------------------------------------------------------------

fn arbitrary_software_image() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, i) = w.publish()?;
    let img = w.images.get_mut(PRIMARY_IMG).ok_or("no primary image")?;
    img[1234] ^= 0x5a;
    Fixture::honest(
        "Arbitrary software: metadata is honest, but the primary-fw-2.bin bytes served \
         have one byte changed (same length). The streamed image fails its signed hash.",
        &w,
        &d,
        &i,
        fails("HashMismatch", Some("arbitrary-software"))
            .message(PRIMARY_IMG)
            .done(),
    )
}

fn arbitrary_software_director_targets() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, i) = w.publish()?;
    let evil = image_bytes("evil primary", PRIMARY_LEN);
    let attacker = SigningKey::generate_p256();
    let entry = target_value(&evil, director_custom(PRIMARY, PRIMARY_HW, 2))?;
    let forged = resign(&d.targets, &[&attacker], |s| {
        s["version"] = json!(2);
        s["targets"][PRIMARY_IMG] = entry;
    })?;
    w.images.insert(PRIMARY_IMG.into(), evil);
    let mut director = RepoFiles::serve(&d, 1)?;
    director.remote("targets.json", forged);
    Ok(Fixture::new(
        "Arbitrary software through the Director: a Director without timestamp and \
         snapshot (root-and-targets layout) serves targets.json assigning a malicious \
         primary image, signed by a key the Director root does not know.",
        &w,
        director,
        RepoFiles::serve(&i, 1)?,
        fails("ThresholdNotMet", Some("arbitrary-software"))
            .role("targets")
            .message("0 of 1")
            .done(),
    )
    .root_and_targets())
}

// ---- rollback ------------------------------------------------------------------------

/// Image repository states 3 and 5 (the ECU trusts 5), and the Director.
fn three_and_five(w: &mut World) -> Res<(Published, Published, Published)> {
    let d = w.director.publish()?;
    w.image.publish()?;
    w.image.publish()?;
    let i3 = w.image.publish()?;
    w.image.publish()?;
    let i5 = w.image.publish()?;
    Ok((d, i3, i5))
}

fn rollback_timestamp() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, i3, i5) = three_and_five(&mut w)?;
    Ok(Fixture::new(
        "Rollback of the timestamp: the ECU stored timestamp and snapshot version 5; the \
         Image repository (or a man in the middle) replays the complete, validly signed \
         state of version 3.",
        &w,
        RepoFiles::serve(&d, 1)?,
        RepoFiles::serve(&i3, 1)?.trusting(&i5),
        fails("Rollback", Some("rollback"))
            .role("timestamp")
            .message("trusted version 5, offered 3")
            .done(),
    ))
}

fn rollback_snapshot() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, i3, i5) = three_and_five(&mut w)?;
    let mut stale = i3.clone();
    // A new timestamp (version 6) that points at the old snapshot version 3.
    stale.timestamp = w.image.sign_timestamp(3, &i3.snapshot)?;
    Ok(Fixture::new(
        "Rollback of the snapshot: the ECU stored timestamp and snapshot version 5; the \
         repository serves a new timestamp (version 6, validly signed, e.g. by a \
         compromised online key) that lists the old snapshot version 3.",
        &w,
        RepoFiles::serve(&d, 1)?,
        RepoFiles::serve(&stale, 1)?.trusting(&i5),
        fails("Rollback", Some("rollback"))
            .role("snapshot")
            .message("trusted version 5, offered 3")
            .done(),
    ))
}

fn rollback_targets() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, i3, i5) = three_and_five(&mut w)?;
    let mut p = i5.clone();
    p.targets = i3.targets.clone();
    let old_targets = meta_value(3, &i3.targets)?;
    resnapshot(&mut w.image, &mut p, |s| {
        s["version"] = json!(6);
        s["meta"]["targets.json"] = old_targets;
    })?;
    Ok(Fixture::new(
        "Rollback of the Image targets: the ECU stored snapshot version 5, which lists \
         targets.json version 5. The repository serves timestamp and snapshot version 6 \
         (validly signed) listing the old targets.json version 3, and serves that file.",
        &w,
        RepoFiles::serve(&d, 1)?,
        RepoFiles::serve(&p, 1)?.trusting(&i5),
        fails("Rollback", Some("rollback"))
            .role("targets")
            .message("trusted version 5, offered 3")
            .done(),
    ))
}

fn rollback_director_targets() -> Res<Fixture> {
    let mut w = World::standard()?;
    let i = w.image.publish()?;
    w.director.publish()?;
    w.director.publish()?;
    let d3 = w.director.publish()?;
    w.director.publish()?;
    let d5 = w.director.publish()?;
    Ok(Fixture::new(
        "Rollback of the Director targets. The Director serves only root and targets \
         (root-and-targets layout), so the targets version is the only rollback \
         protection: the ECU stored version 5 and is offered the validly signed version 3.",
        &w,
        RepoFiles::serve(&d3, 1)?.trusting_targets(&d5),
        RepoFiles::serve(&i, 1)?,
        fails("Rollback", Some("rollback"))
            .role("targets")
            .message("trusted version 5, offered 3")
            .done(),
    )
    .root_and_targets())
}

fn rollback_director_targets_expired_stored() -> Res<Fixture> {
    let mut w = World::standard()?;
    let i = w.image.publish()?;
    w.director.publish()?;
    w.director.publish()?;
    let d3 = w.director.publish()?;
    // Later versions were signed with a shorter lifetime and have expired
    // while the vehicle was offline.
    w.director
        .expires
        .insert("targets".into(), time(EXPIRED_AT)?);
    w.director.publish()?;
    let d5 = w.director.publish()?;
    Ok(Fixture::new(
        "Rollback of the Director targets past an expired stored copy. The Director \
         serves only root and targets; the ECU stored targets version 5, which has since \
         expired (the vehicle was offline). The attacker replays the validly signed \
         version 3, which was issued with a longer lifetime and has not expired. The \
         expired stored copy must still serve as the rollback reference.",
        &w,
        RepoFiles::serve(&d3, 1)?.trusting_targets(&d5),
        RepoFiles::serve(&i, 1)?,
        fails("Rollback", Some("rollback"))
            .role("targets")
            .message("trusted version 5, offered 3")
            .done(),
    )
    .root_and_targets())
}

fn rollback_root() -> Res<Fixture> {
    let mut w = World::standard()?;
    // Three root versions, all signed by the same root key.
    w.image.publish_root()?;
    w.image.touch_root();
    w.image.publish_root()?;
    w.image.touch_root();
    let i = w.image.publish()?;
    let d = w.director.publish()?;
    let old_root = i.roots.get(&2).ok_or("no root v2")?.clone();
    let mut image = RepoFiles::serve(&i, 3)?;
    image.remote("4.root.json", old_root);
    Ok(Fixture::new(
        "Rollback of the root: the ECU trusts Image root version 3. The repository serves \
         the validly signed root version 2 under the name 4.root.json.",
        &w,
        RepoFiles::serve(&d, 1)?,
        image,
        fails("VersionMismatch", Some("mix-and-match"))
            .role("root")
            .message("version 2 does not match the expected version 4")
            .done(),
    ))
}

// ---- indefinite freeze ---------------------------------------------------------------

fn freeze(repository: &str, role: &'static str) -> Res<Fixture> {
    let mut w = World::standard()?;
    let expired = time(EXPIRED_AT)?;
    let b = if repository == "director" {
        &mut w.director
    } else {
        &mut w.image
    };
    b.expires.insert(role.to_owned(), expired);
    let (d, i) = w.publish()?;
    let description = format!(
        "Indefinite freeze: the {repository} repository serves {role} metadata that \
         expired at {EXPIRED_AT}, before now ({NOW}); everything else is valid."
    );
    Fixture::honest(
        &description,
        &w,
        &d,
        &i,
        fails("Expired", Some("freeze"))
            .role(role)
            .message(&format!("expired at {EXPIRED_AT}"))
            .done(),
    )
}

// ---- endless data --------------------------------------------------------------------

fn endless_data_image() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, i) = w.publish()?;
    let img = w.images.get_mut(BMS_IMG).ok_or("no bms image")?;
    img.extend(image_bytes("more", 4096));
    Fixture::honest(
        "Endless data: the server keeps sending after the signed length of bms-fw-2.bin \
         (1500 bytes); the download is cut as soon as byte 1501 arrives.",
        &w,
        &d,
        &i,
        fails("EndlessData", Some("endless-data"))
            .message(BMS_IMG)
            .done(),
    )
}

fn endless_data_snapshot() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, i) = w.publish()?;
    let mut image = RepoFiles::serve(&i, 1)?;
    let mut long = i.snapshot.clone();
    long.extend(std::iter::repeat_n(b' ', 8192));
    image.remote("snapshot.json", long);
    Ok(Fixture::new(
        "Endless data in metadata: snapshot.json is longer than the length the timestamp \
         signs for it (padded with 8 KiB of whitespace, still valid JSON with a valid \
         signature).",
        &w,
        RepoFiles::serve(&d, 1)?,
        image,
        // The core files any length that differs from the signed one under
        // arbitrary software (a short file is not endless data).
        fails("LengthMismatch", Some("arbitrary-software"))
            .message("snapshot.json")
            .done(),
    ))
}

// ---- mix and match -------------------------------------------------------------------

fn mix_and_match_snapshot_version() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, mut i) = w.publish()?;
    let v = version_of(&i.snapshot)?;
    // The timestamp lists version v+1 with the hashes of snapshot version v.
    i.timestamp = w.image.sign_timestamp(v + 1, &i.snapshot)?;
    Fixture::honest(
        "Mix-and-match: the timestamp lists snapshot version 2, but the snapshot it \
         carries the hashes of (and that is served) is version 1.",
        &w,
        &d,
        &i,
        fails("VersionMismatch", Some("mix-and-match"))
            .role("snapshot")
            .message("version 1 does not match the expected version 2")
            .done(),
    )
}

fn mix_and_match_director_image() -> Res<Fixture> {
    let mut w = World::standard()?;
    let evil = image_bytes("evil primary", PRIMARY_LEN);
    w.director.add_target(
        PRIMARY_IMG,
        &evil,
        Some(director_custom(PRIMARY, PRIMARY_HW, 2)),
    );
    w.images.insert(PRIMARY_IMG.into(), evil);
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Mix-and-match between repositories: a compromised Director assigns \
         primary-fw-2.bin with the length of the Image repository's entry but the hashes \
         of other bytes (which are served).",
        &w,
        &d,
        &i,
        fails("TargetMismatch", Some("mix-and-match"))
            .message("hashes differ")
            .done(),
    )
}

fn mix_and_match_targets_hash() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, i) = w.publish()?;
    let evil = image_bytes("evil primary", PRIMARY_LEN);
    let entry = target_value(&evil, image_custom(PRIMARY_HW, 2))?;
    let other = sign_as(&w.image, "targets", &i.targets, |s| {
        s["targets"][PRIMARY_IMG] = entry;
    })?;
    let mut image = RepoFiles::serve(&i, 1)?;
    image.remote("targets.json", same_length(&other, i.targets.len())?);
    Ok(Fixture::new(
        "Mix-and-match within the Image repository: targets.json is validly signed by the \
         targets key and has the version and length the snapshot lists, but it is another \
         file (it lists other primary-fw-2.bin hashes) than the one the snapshot hashes.",
        &w,
        RepoFiles::serve(&d, 1)?,
        image,
        fails("HashMismatch", Some("arbitrary-software"))
            .message("targets.json")
            .done(),
    ))
}

fn partial_bundle() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, mut i) = w.publish()?;
    resnapshot(&mut w.image, &mut i, |s| {
        if let Some(m) = s["meta"].as_object_mut() {
            m.remove("bms.json");
        }
    })?;
    Fixture::honest(
        "Partial bundle: the Image snapshot omits the delegated role bms.json that the \
         search for bms-fw-2.bin needs (bms.json itself is served).",
        &w,
        &d,
        &i,
        fails("MissingMeta", Some("mix-and-match"))
            .role("snapshot")
            .message("bms.json")
            .done(),
    )
}

fn partial_bundle_targets() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, mut i) = w.publish()?;
    resnapshot(&mut w.image, &mut i, |s| {
        if let Some(m) = s["meta"].as_object_mut() {
            m.remove("targets.json");
        }
    })?;
    Fixture::honest(
        "Partial bundle: the Image snapshot omits targets.json.",
        &w,
        &d,
        &i,
        fails("MissingMeta", Some("mix-and-match"))
            .role("snapshot")
            .message("targets.json")
            .done(),
    )
}

// ---- wrong ECU, hardware, vehicle ----------------------------------------------------

fn wrong_hardware_id() -> Res<Fixture> {
    let mut w = World::standard()?;
    let inverter = image_bytes(INVERTER_IMG, 2000);
    w.image
        .add_target(INVERTER_IMG, &inverter, Some(image_custom(INVERTER_HW, 2)));
    w.director.targets.remove(BMS_IMG);
    w.director.add_target(
        INVERTER_IMG,
        &inverter,
        Some(director_custom(BMS, BMS_HW, 2)),
    );
    w.images.insert(INVERTER_IMG.into(), inverter);
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Wrong hardware ID: a compromised Director assigns inverter-fw-2.bin to the BMS \
         (claiming the BMS hardware ID); the Image repository says the image is built for \
         secureev-inverter only.",
        &w,
        &d,
        &i,
        fails("WrongHardwareId", Some("wrong-hardware-id"))
            .message(INVERTER_IMG)
            .done(),
    )
}

fn wrong_hardware_id_director() -> Res<Fixture> {
    let mut w = World::standard()?;
    let bms = w.image_of(BMS_IMG)?;
    w.director
        .add_target(BMS_IMG, &bms, Some(director_custom(BMS, INVERTER_HW, 2)));
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Wrong hardware ID: the Director entry for the BMS states hardware ID \
         secureev-inverter, but the vehicle knows the BMS as secureev-bms.",
        &w,
        &d,
        &i,
        fails("WrongHardwareId", Some("wrong-hardware-id"))
            .message(BMS)
            .done(),
    )
}

fn wrong_ecu() -> Res<Fixture> {
    let mut w = World::standard()?;
    let tcu = image_bytes("tcu-fw-2.bin", 1000);
    w.image
        .add_target("tcu-fw-2.bin", &tcu, Some(image_custom("secureev-tcu", 2)));
    w.director.add_target(
        "tcu-fw-2.bin",
        &tcu,
        Some(director_custom("TCU-9999", "secureev-tcu", 2)),
    );
    w.images.insert("tcu-fw-2.bin".into(), tcu);
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Wrong ECU: the Director assigns an image to ECU TCU-9999, which is not part of \
         this vehicle (metadata for another vehicle, or a confused Director).",
        &w,
        &d,
        &i,
        fails("WrongEcu", Some("wrong-ecu"))
            .message("TCU-9999")
            .done(),
    )
}

fn wrong_vehicle() -> Res<Fixture> {
    let mut w = World::standard()?;
    w.director
        .targets_extra
        .insert("custom".into(), json!({ "vin": OTHER_VIN }));
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Wrong vehicle: Director targets carry another vehicle's identifier (a replay of \
         another vehicle's metadata).",
        &w,
        &d,
        &i,
        fails("WrongVehicle", Some("wrong-ecu"))
            .message(OTHER_VIN)
            .done(),
    )
}

fn duplicate_ecu() -> Res<Fixture> {
    let mut w = World::standard()?;
    let bms3 = image_bytes("bms-fw-3.bin", 1600);
    w.image
        .add_target("bms-fw-3.bin", &bms3, Some(image_custom(BMS_HW, 3)));
    w.director
        .add_target("bms-fw-3.bin", &bms3, Some(director_custom(BMS, BMS_HW, 3)));
    w.images.insert("bms-fw-3.bin".into(), bms3);
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Duplicate ECU: the Director assigns two images (bms-fw-2.bin and bms-fw-3.bin) to \
         the same ECU BMS-0001 (Uptane 2.1 §5.4.4.6).",
        &w,
        &d,
        &i,
        fails("DuplicateEcu", Some("wrong-ecu")).message(BMS).done(),
    )
}

fn director_delegations() -> Res<Fixture> {
    let mut w = World::standard()?;
    w.director
        .add_delegation("targets", "director-extra", &["*"], false);
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Director delegations: Director targets metadata delegates to another role, which \
         Uptane 2.1 §5.4.4.6 forbids. The core reports no attack class for this error.",
        &w,
        &d,
        &i,
        fails("DirectorDelegations", None).done(),
    )
}

// ---- key compromise and signatures ----------------------------------------------------

fn below_threshold_key_compromise() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (k1, k2) = (SigningKey::generate_p256(), SigningKey::generate_p256());
    w.image.rotate_keys("targets", vec![k1.clone(), k2], 2);
    let (d, mut i) = w.publish()?;
    // The attacker holds the online timestamp and snapshot keys and one of the
    // two targets keys.
    let evil = image_bytes("evil primary", PRIMARY_LEN);
    let entry = target_value(&evil, image_custom(PRIMARY_HW, 2))?;
    i.targets = resign(&i.targets, &[&k1], |s| {
        s["targets"][PRIMARY_IMG] = entry;
    })?;
    let targets_meta = meta_value(version_of(&i.targets)?, &i.targets)?;
    resnapshot(&mut w.image, &mut i, |s| {
        s["meta"]["targets.json"] = targets_meta;
    })?;
    w.images.insert(PRIMARY_IMG.into(), evil);
    Fixture::honest(
        "Key compromise below the threshold: Image targets need 2 of 2 keys. The attacker \
         holds the online timestamp and snapshot keys and one targets key, and serves \
         targets (listing a malicious primary image) signed by that one key, with a \
         matching snapshot and timestamp.",
        &w,
        &d,
        &i,
        fails("ThresholdNotMet", Some("arbitrary-software"))
            .role("targets")
            .message("1 of 2")
            .done(),
    )
}

fn duplicate_signature() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (t1, t2) = (SigningKey::generate_p256(), SigningKey::generate_p256());
    w.image.rotate_keys("timestamp", vec![t1.clone(), t2], 2);
    let (d, mut i) = w.publish()?;
    i.timestamp = resign(&i.timestamp, &[&t1, &t1], |s| s["version"] = json!(2))?;
    Fixture::honest(
        "Duplicate signature: the Image timestamp needs 2 of 2 keys; an attacker holding \
         one of them signs a timestamp and lists that signature twice.",
        &w,
        &d,
        &i,
        fails("DuplicateSignature", Some("arbitrary-software"))
            .role("timestamp")
            .done(),
    )
}

#[derive(Clone, Copy)]
enum RootFault {
    NotSelfSigned,
    NotSignedByOld,
    VersionSkip,
}

fn root_rotation_fault(fault: RootFault) -> Res<Fixture> {
    let mut w = World::standard()?;
    w.image.publish_root()?;
    let old = role_keys(&w.image, "root")?;
    let new = SigningKey::generate_p256();
    w.image.rotate_keys("root", vec![new.clone()], 1);
    let (d, i) = w.publish()?;
    let v2 = i.roots.get(&2).ok_or("no root v2")?;
    let mut both: Vec<&SigningKey> = old.iter().collect();
    both.push(&new);
    let old_refs: Vec<&SigningKey> = old.iter().collect();
    let (bad, description, expect) = match fault {
        RootFault::NotSelfSigned => (
            resign(v2, &old_refs, |_| {})?,
            "Root rotation fault: 2.root.json (new root key) is signed by the old root key \
             only, not by its own new key.",
            fails("ThresholdNotMet", Some("arbitrary-software"))
                .role("root")
                .message("0 of 1"),
        ),
        RootFault::NotSignedByOld => (
            resign(v2, &[&new], |_| {})?,
            "Root rotation fault: 2.root.json (new root key) is signed by its own new key \
             only, not by the trusted root key.",
            fails("ThresholdNotMet", Some("arbitrary-software"))
                .role("root")
                .message("0 of 1"),
        ),
        RootFault::VersionSkip => (
            resign(v2, &both, |s| s["version"] = json!(3))?,
            "Root rotation fault: the file served as 2.root.json is root version 3 \
             (validly signed by the old and the new key), skipping version 2.",
            fails("VersionMismatch", Some("mix-and-match"))
                .role("root")
                .message("version 3 does not match the expected version 2"),
        ),
    };
    let mut image = RepoFiles::serve(&i, 1)?;
    image.remote("2.root.json", bad);
    Ok(Fixture::new(
        description,
        &w,
        RepoFiles::serve(&d, 1)?,
        image,
        expect.done(),
    ))
}

// ---- delegations ---------------------------------------------------------------------

fn delegation_outside_paths() -> Res<Fixture> {
    let mut w = World::standard()?;
    let evil = image_bytes("evil primary", PRIMARY_LEN);
    w.image.targets.remove(PRIMARY_IMG);
    put_delegated(
        &mut w.image,
        BMS_ROLE,
        PRIMARY_IMG,
        &evil,
        image_custom(PRIMARY_HW, 2),
    )?;
    w.director.add_target(
        PRIMARY_IMG,
        &evil,
        Some(director_custom(PRIMARY, PRIMARY_HW, 2)),
    );
    w.images.insert(PRIMARY_IMG.into(), evil);
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Delegation outside its paths: the role 'bms' (trusted for bms-* only) lists a \
         malicious primary-fw-2.bin, and a compromised Director assigns it. The top-level \
         Image targets do not list primary-fw-2.bin, and no role trusted for that path \
         does, so the image is not found.",
        &w,
        &d,
        &i,
        fails("TargetMismatch", Some("mix-and-match"))
            .message("not listed")
            .done(),
    )
}

fn delegation_bad_signature() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, mut i) = w.publish()?;
    let attacker = SigningKey::generate_p256();
    let bms = i.delegated.get(BMS_ROLE).ok_or("no bms.json")?;
    let forged = resign(bms, &[&attacker], |_| {})?;
    let meta = meta_value(version_of(&forged)?, &forged)?;
    i.delegated.insert(BMS_ROLE.into(), forged);
    resnapshot(&mut w.image, &mut i, |s| s["meta"]["bms.json"] = meta)?;
    Fixture::honest(
        "Delegated role with a bad signature: bms.json is signed by a key the delegation \
         does not name (the snapshot, signed by the online key, lists that file).",
        &w,
        &d,
        &i,
        fails("ThresholdNotMet", Some("arbitrary-software"))
            .role(BMS_ROLE)
            .done(),
    )
}

fn delegation_terminating() -> Res<Fixture> {
    let mut w = World::standard()?;
    let evil = image_bytes("evil bms", BMS_LEN);
    let old = image_bytes("bms-fw-1.bin", 1400);
    w.image.delegated.clear();
    // targets -> [bms, bms-staging]; bms -> [bms-release (terminating),
    // bms-beta]. All are trusted for bms-*.
    w.image
        .add_delegation("targets", BMS_ROLE, &["bms-*"], false);
    w.image
        .add_delegation("targets", "bms-staging", &["bms-*"], false);
    w.image
        .add_delegation(BMS_ROLE, "bms-release", &["bms-*"], true);
    w.image
        .add_delegation(BMS_ROLE, "bms-beta", &["bms-*"], false);
    put_delegated(
        &mut w.image,
        "bms-release",
        "bms-fw-1.bin",
        &old,
        image_custom(BMS_HW, 1),
    )?;
    for role in ["bms-staging", "bms-beta"] {
        put_delegated(&mut w.image, role, BMS_IMG, &evil, image_custom(BMS_HW, 2))?;
    }
    w.director
        .add_target(BMS_IMG, &evil, Some(director_custom(BMS, BMS_HW, 2)));
    w.images.insert(BMS_IMG.into(), evil);
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Terminating delegation: targets delegates bms-* to 'bms', then to 'bms-staging'; \
         'bms' delegates bms-* to 'bms-release' (terminating), then to 'bms-beta'. Only \
         bms-staging and bms-beta list bms-fw-2.bin (malicious bytes, which a compromised \
         Director assigns). The search reaches bms-release first, which does not list \
         it; being terminating, it ends the search: neither its later sibling bms-beta \
         nor the pending bms-staging is consulted, so the image is not found.",
        &w,
        &d,
        &i,
        fails("TargetMismatch", Some("mix-and-match"))
            .message("not listed")
            .done(),
    )
}

fn delegation_cycle() -> Res<Fixture> {
    let mut w = World::standard()?;
    w.image.delegated.clear();
    w.image
        .add_delegation("targets", BMS_ROLE, &["bms-*"], false);
    w.image
        .add_delegation(BMS_ROLE, "bms-inner", &["bms-*"], false);
    let (d, mut i) = w.publish()?;
    let outer = w
        .image
        .delegated
        .iter()
        .find(|r| r.role.name == BMS_ROLE)
        .ok_or("no bms role")?
        .clone();
    let inner_keys = w
        .image
        .delegated
        .iter()
        .find(|r| r.role.name == "bms-inner")
        .ok_or("no bms-inner role")?
        .keys
        .clone();
    let mut keys = Map::new();
    for k in &outer.keys {
        keys.insert(k.keyid().to_owned(), serde_json::to_value(k.public_key())?);
    }
    let back = json!({ "keys": keys, "roles": [serde_json::to_value(&outer.role)?] });
    let inner = i.delegated.get("bms-inner").ok_or("no bms-inner.json")?;
    let refs: Vec<&SigningKey> = inner_keys.iter().collect();
    let cyclic = resign(inner, &refs, |s| s["delegations"] = back)?;
    let meta = meta_value(version_of(&cyclic)?, &cyclic)?;
    i.delegated.insert("bms-inner".into(), cyclic);
    resnapshot(&mut w.image, &mut i, |s| s["meta"]["bms-inner.json"] = meta)?;
    Fixture::honest(
        "Delegation cycle: targets delegates bms-* to 'bms', 'bms' to 'bms-inner', and \
         'bms-inner' back to 'bms'. No role lists bms-fw-2.bin. The search must end \
         (not found) instead of looping or hitting the delegation limit.",
        &w,
        &d,
        &i,
        fails("TargetMismatch", Some("mix-and-match"))
            .message("not listed")
            .done(),
    )
}

/// Who signs `release` in the delegation diamond.
#[derive(Clone, Copy, PartialEq)]
enum Diamond {
    /// Only parent-a's key for `release`: trusted for team-a-* only.
    SignedByA,
    /// Only parent-b's key for `release`: trusted for team-b-* only.
    SignedByB,
    /// Both keys: trusted through both delegators (a valid diamond).
    SignedByBoth,
}

/// Whether the ECU stored `release.json` in an earlier cycle.
#[derive(Clone, Copy, PartialEq)]
enum Restart {
    No,
    /// `image/trusted/release.json` holds the same file, stored in the cycle
    /// before a restart; the runner offers it before the repository's.
    Stored,
}

const TEAM_A_IMG: &str = "team-a-primary-fw-2.bin";
const TEAM_B_IMG: &str = "team-b-bms-fw-2.bin";

/// The delegation diamond: targets delegates team-a-* to parent-a and team-b-*
/// to parent-b; parent-a delegates team-a-* to `release` with key A, parent-b
/// delegates team-b-* to `release` with key B. `release.json` lists both
/// images. The Director assigns the team-a image to the Primary and the team-b
/// image to the BMS; the Primary resolves them in name order, team-a first.
fn delegation_diamond(signers: Diamond, restart: Restart) -> Res<Fixture> {
    let mut w = World::standard()?;
    let a_img = image_bytes(TEAM_A_IMG, PRIMARY_LEN);
    let b_img = image_bytes(TEAM_B_IMG, BMS_LEN);
    w.image.targets.clear();
    w.image.delegated.clear();
    w.image
        .add_delegation("targets", "parent-a", &["team-a-*"], false);
    w.image
        .add_delegation("targets", "parent-b", &["team-b-*"], false);
    let a = w
        .image
        .add_delegation("parent-a", "release", &["team-a-*"], false);
    let b = w
        .image
        .add_delegation("parent-b", "release", &["team-b-*"], false);
    let (key_a, key_b) = (
        w.image.delegated[a].keys[0].clone(),
        w.image.delegated[b].keys[0].clone(),
    );
    w.director.targets.clear();
    w.director.add_target(
        TEAM_A_IMG,
        &a_img,
        Some(director_custom(PRIMARY, PRIMARY_HW, 2)),
    );
    w.director
        .add_target(TEAM_B_IMG, &b_img, Some(director_custom(BMS, BMS_HW, 2)));
    w.images.clear();
    w.images.insert(TEAM_A_IMG.into(), a_img.clone());
    w.images.insert(TEAM_B_IMG.into(), b_img.clone());
    let (d, mut i) = w.publish()?;
    // The builder writes one release.json per delegation entry; replace it
    // with the one file both delegators point at.
    let base = i.delegated.get("release").ok_or("no release.json")?.clone();
    let listing = json!({
        TEAM_A_IMG: target_value(&a_img, image_custom(PRIMARY_HW, 2))?,
        TEAM_B_IMG: target_value(&b_img, image_custom(BMS_HW, 2))?,
    });
    let keys: Vec<&SigningKey> = match signers {
        Diamond::SignedByA => vec![&key_a],
        Diamond::SignedByB => vec![&key_b],
        Diamond::SignedByBoth => vec![&key_a, &key_b],
    };
    let release = resign(&base, &keys, |s| s["targets"] = listing)?;
    let meta = meta_value(version_of(&release)?, &release)?;
    i.delegated.insert("release".into(), release.clone());
    resnapshot(&mut w.image, &mut i, |s| s["meta"]["release.json"] = meta)?;
    let mut image = RepoFiles::serve(&i, 1)?;
    if restart == Restart::Stored {
        image = image.trusting(&i);
        image.trusted.insert("release.json".into(), release);
    }
    let (order, story) = match signers {
        Diamond::SignedByA => (
            "The first lookup (team-a, through parent-a) loads release legitimately; the \
             second (team-b, through parent-b) must not reuse it",
            "release is signed by key A only",
        ),
        Diamond::SignedByB => (
            "The first lookup (team-a, through parent-a) already needs key A, which did \
             not sign",
            "release is signed by key B only",
        ),
        Diamond::SignedByBoth => (
            "Each lookup verifies release again against its own delegator's key",
            "release is signed by both keys",
        ),
    };
    let when = match restart {
        Restart::No => "All in one update cycle.",
        Restart::Stored => {
            "Across a restart: the ECU stored release.json (and the current timestamp \
             and snapshot) in an earlier cycle, and the stored copy is offered first."
        }
    };
    let description = format!(
        "Delegation diamond: targets delegates team-a-* to parent-a and team-b-* to \
         parent-b; both delegate to the same role 'release', parent-a with key A for \
         team-a-*, parent-b with key B for team-b-*. release.json lists {TEAM_A_IMG} and \
         {TEAM_B_IMG}, and {story}. The Director assigns both. {order}. {when} A role \
         is trusted per delegator (keys and threshold of the delegator that leads to \
         it), not by name."
    );
    let expect = match signers {
        Diamond::SignedByBoth => Expect::Ok(vec![TEAM_A_IMG, TEAM_B_IMG]),
        _ => fails("ThresholdNotMet", Some("arbitrary-software"))
            .role("release")
            .done(),
    };
    Ok(Fixture::new(
        &description,
        &w,
        RepoFiles::serve(&d, 1)?,
        image,
        expect,
    ))
}

// ---- duplicate object keys -------------------------------------------------------

/// Where the duplicate key goes.
#[derive(Clone, Copy)]
enum DupLevel {
    /// A second `signed` at the top of the Image targets envelope.
    Envelope,
    /// A second `version` inside the Image timestamp's `signed`.
    Signed,
    /// A second entry for primary-fw-2.bin in the Image targets' `targets`.
    Targets,
    /// A second `keys` in the Image targets' `delegations`.
    Delegations,
}

/// Insert `text` right after the first occurrence of `anchor` in `bytes`:
/// duplicate keys cannot be written through `serde_json::Value`.
fn inject(bytes: &[u8], anchor: &str, text: &str) -> Res<Vec<u8>> {
    let s = std::str::from_utf8(bytes)?;
    let at = s
        .find(anchor)
        .ok_or_else(|| format!("no {anchor:?} in file"))?
        + anchor.len();
    Ok(format!("{}{text}{}", &s[..at], &s[at..]).into_bytes())
}

/// A parser differential: the honest, validly signed file gets a duplicate
/// key placed *before* the signed one. serde_json (last one wins) would see
/// the honest value and accept; a first-wins reader (another tool, a
/// Secondary, an auditor) would see the attacker's. The core refuses the
/// document as malformed.
fn duplicate_key(level: DupLevel) -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, mut i) = w.publish()?;
    let evil = image_bytes("evil primary", PRIMARY_LEN);
    let evil_entry = serde_json::to_string(&target_value(&evil, image_custom(PRIMARY_HW, 2))?)?;
    let (role, what) = match level {
        DupLevel::Envelope => {
            let mut signed: Value = serde_json::from_slice::<Value>(&i.targets)?["signed"].clone();
            signed["targets"][PRIMARY_IMG] = serde_json::from_str(&evil_entry)?;
            let text = format!("\n  \"signed\": {},", serde_json::to_string(&signed)?);
            i.targets = inject(&i.targets, "{", &text)?;
            (
                "targets",
                "the Image targets envelope carries a second \"signed\" before the signed \
                 one, listing a malicious primary-fw-2.bin",
            )
        }
        DupLevel::Signed => {
            i.timestamp = inject(&i.timestamp, "\"signed\": {", "\n    \"version\": 999999,")?;
            (
                "timestamp",
                "the Image timestamp's signed object names \"version\" twice, 999999 \
                 first (a fast-forward for a first-wins reader)",
            )
        }
        DupLevel::Targets => {
            let text = format!("\n      \"{PRIMARY_IMG}\": {evil_entry},");
            i.targets = inject(&i.targets, "\"targets\": {", &text)?;
            (
                "targets",
                "the Image targets list primary-fw-2.bin twice, the malicious entry first",
            )
        }
        DupLevel::Delegations => {
            let attacker = SigningKey::generate_p256();
            let bms = w
                .image
                .delegated
                .iter()
                .find(|r| r.role.name == BMS_ROLE)
                .ok_or("no bms role")?;
            let keyid = bms.keys[0].keyid().to_owned();
            let text = format!(
                "\n      \"keys\": {{\"{keyid}\": {}}},",
                serde_json::to_string(attacker.public_key())?
            );
            i.targets = inject(&i.targets, "\"delegations\": {", &text)?;
            (
                "targets",
                "the Image targets' delegations name \"keys\" twice, the first mapping the \
                 bms role's key id to an attacker's key",
            )
        }
    };
    if role == "targets" {
        let meta = meta_value(version_of(&i.targets)?, &i.targets)?;
        resnapshot(&mut w.image, &mut i, |s| s["meta"]["targets.json"] = meta)?;
    }
    Fixture::honest(
        &format!(
            "Duplicate object key: {what}. The signatures are valid for the last value of \
             the key, which is the honest one, so a parser that keeps the last value (as \
             serde_json does) would accept the file while a parser that keeps the first \
             would see the attacker's. Any duplicate key makes the document malformed."
        ),
        &w,
        &d,
        &i,
        fails("Malformed", None)
            .role(role)
            .message("duplicate object key")
            .done(),
    )
}

// ---- RSA-PSS (interop with aktualizr-style repositories) ------------------------

/// An RSA key made by `openssl` at generation time. Only its public half goes
/// into the fixture; the private PEM lives in a temporary file while the
/// generator signs with it.
struct RsaKey {
    private: tempfile_path::TempPath,
    key: secureev_uptane::Key,
    keyid: String,
}

/// Just enough of a temporary file for the generator (no extra dependency).
mod tempfile_path {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static NEXT: AtomicUsize = AtomicUsize::new(0);

    pub struct TempPath(PathBuf);

    impl TempPath {
        pub fn new(suffix: &str) -> Self {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            TempPath(
                std::env::temp_dir()
                    .join(format!("secureev-gen-{}-{n}{suffix}", std::process::id())),
            )
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn openssl(args: &[&str], input: Option<&Path>) -> Res<Vec<u8>> {
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(args);
    if let Some(i) = input {
        cmd.stdin(fs::File::open(i)?);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(out.stdout)
}

fn rsa_key(bits: u32) -> Res<RsaKey> {
    let private = tempfile_path::TempPath::new(".pem");
    let path = private
        .path()
        .to_str()
        .ok_or("temp path is not UTF-8")?
        .to_owned();
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            &format!("rsa_keygen_bits:{bits}"),
            "-out",
            &path,
        ],
        None,
    )?;
    let public = String::from_utf8(openssl(&["pkey", "-in", &path, "-pubout"], None)?)?;
    let key: secureev_uptane::Key = serde_json::from_value(json!({
        "keytype": "rsa",
        "scheme": "rsassa-pss-sha256",
        "keyval": { "public": public },
    }))?;
    let keyid = key.keyid()?;
    Ok(RsaKey {
        private,
        key,
        keyid,
    })
}

/// RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt (securesystemslib's and
/// aktualizr's parameters), hex.
fn rsa_sign(k: &RsaKey, msg: &[u8]) -> Res<String> {
    let m = tempfile_path::TempPath::new(".msg");
    fs::write(m.path(), msg)?;
    let key = k.private.path().to_str().ok_or("temp path is not UTF-8")?;
    let sig = openssl(
        &[
            "dgst",
            "-sha256",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
            "-sign",
            key,
        ],
        Some(m.path()),
    )?;
    Ok(hex::encode(sig))
}

/// Sign a `signed` value with RSA keys into a pretty-printed envelope.
fn rsa_envelope(signed: &Value, keys: &[&RsaKey]) -> Res<Vec<u8>> {
    let canonical = secureev_uptane::canonical::to_canonical(signed)?;
    let signatures = keys
        .iter()
        .map(|k| Ok(json!({ "keyid": k.keyid, "sig": rsa_sign(k, &canonical)? })))
        .collect::<Res<Vec<Value>>>()?;
    Ok(serde_json::to_vec_pretty(
        &json!({ "signatures": signatures, "signed": signed }),
    )?)
}

#[derive(Clone, Copy, PartialEq)]
enum RsaCase {
    /// 4096-bit root key, 2048-bit targets key, both valid.
    Valid,
    /// As `Valid`, with one byte of the targets signature changed.
    BadSignature,
    /// A 1024-bit targets key: below the 2048-bit minimum.
    Key1024,
}

/// An Image repository whose root and targets roles use RSA-PSS keys (as an
/// aktualizr-era repository would); snapshot and timestamp stay P-256.
fn rsa_pss(case: RsaCase) -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, mut i) = w.publish()?;
    let root_key = rsa_key(4096)?;
    let targets_key = rsa_key(if case == RsaCase::Key1024 { 1024 } else { 2048 })?;
    let mut root = serde_json::to_value(w.image.root_metadata(1))?;
    for (role, k) in [("root", &root_key), ("targets", &targets_key)] {
        for old in root["roles"][role]["keyids"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if let Some(id) = old.as_str() {
                root["keys"].as_object_mut().ok_or("root keys")?.remove(id);
            }
        }
        root["keys"][k.keyid.as_str()] = serde_json::to_value(&k.key)?;
        root["roles"][role]["keyids"] = json!([k.keyid]);
    }
    let root_bytes = rsa_envelope(&root, &[&root_key])?;
    i.roots = BTreeMap::from([(1, root_bytes.clone())]);
    i.root = root_bytes;
    let signed = serde_json::from_slice::<Value>(&i.targets)?["signed"].clone();
    let mut targets = rsa_envelope(&signed, &[&targets_key])?;
    if case == RsaCase::BadSignature {
        let mut env: Value = serde_json::from_slice(&targets)?;
        let sig = env["signatures"][0]["sig"]
            .as_str()
            .ok_or("no sig")?
            .to_owned();
        let flipped = if sig.starts_with('0') { "1" } else { "0" };
        env["signatures"][0]["sig"] = json!(format!("{flipped}{}", &sig[1..]));
        targets = serde_json::to_vec_pretty(&env)?;
    }
    i.targets = targets;
    let meta = meta_value(version_of(&i.targets)?, &i.targets)?;
    resnapshot(&mut w.image, &mut i, |s| s["meta"]["targets.json"] = meta)?;
    let (description, expect) = match case {
        RsaCase::Valid => (
            "RSA-PSS interop: the Image repository's root is signed with a 4096-bit RSA key \
             and its top-level targets with a 2048-bit RSA key (keytype rsa, scheme \
             rsassa-pss-sha256, PEM SubjectPublicKeyInfo; RSASSA-PSS with SHA-256, MGF1 and a \
             32-byte salt, made with openssl). Snapshot and timestamp stay ECDSA P-256. Both \
             images verify.",
            Expect::Ok(vec![BMS_IMG, PRIMARY_IMG]),
        ),
        RsaCase::BadSignature => (
            "RSA-PSS with a bad signature: as valid-rsa-pss, but the first byte of the \
             targets signature is changed. It does not count, so the threshold is not met.",
            fails("ThresholdNotMet", Some("arbitrary-software"))
                .role("targets")
                .done(),
        ),
        RsaCase::Key1024 => (
            "RSA key too small: as valid-rsa-pss, but the targets key is a 1024-bit RSA key \
             (validly signed). Keys below 2048 bits do not parse, so its signature does not \
             count and the threshold is not met.",
            fails("ThresholdNotMet", Some("arbitrary-software"))
                .role("targets")
                .done(),
        ),
    };
    Fixture::honest(description, &w, &d, &i, expect)
}

// ---- Uptane custom fields, hashes, types ---------------------------------------------

fn release_counter_rollback() -> Res<Fixture> {
    let mut w = World::standard()?;
    w.install(BMS, "bms-fw-5.bin", image_bytes("bms-fw-5.bin", 1450), 5);
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Release counter rollback: the BMS runs an image with release counter 5; the \
         Director assigns bms-fw-2.bin with release counter 2 (an old, validly signed \
         image).",
        &w,
        &d,
        &i,
        fails("ReleaseCounterRollback", Some("release-counter-rollback"))
            .message("installed 5, offered 2")
            .done(),
    )
}

fn unknown_hash_algorithm() -> Res<Fixture> {
    let mut w = World::standard()?;
    let fake = "5e".repeat(32);
    if let Some(t) = w.director.targets.get_mut(BMS_IMG) {
        t.hashes.insert("sha3-256".into(), fake.clone());
    }
    for r in &mut w.image.delegated {
        if let Some(t) = r.targets.get_mut(BMS_IMG) {
            t.hashes.insert("sha3-256".into(), fake.clone());
        }
    }
    let (d, i) = w.publish()?;
    Fixture::honest(
        "Unknown hash algorithm: both repositories list bms-fw-2.bin with sha256, sha512 \
         and sha3-256, which this client does not implement. Every listed hash must be \
         checked, so the image is refused before download. Not an attack class.",
        &w,
        &d,
        &i,
        fails("UnsupportedHash", None).message("sha3-256").done(),
    )
}

fn wrong_type() -> Res<Fixture> {
    let mut w = World::standard()?;
    let (d, mut i) = w.publish()?;
    // A timestamp that lists the snapshot by version only (TUF allows leaving
    // out length and hashes), so nothing but the type can tell them apart.
    i.timestamp = sign_as(&w.image, "timestamp", &i.timestamp, |s| {
        if let Some(m) = s["meta"]["snapshot.json"].as_object_mut() {
            m.remove("length");
            m.remove("hashes");
        }
    })?;
    i.snapshot = i.timestamp.clone();
    Fixture::honest(
        "Wrong type: the Image timestamp lists snapshot.json by version only (no length, \
         no hashes), and the server answers the snapshot request with the timestamp file. \
         The _type check refuses it. The core reports no attack class for this error.",
        &w,
        &d,
        &i,
        fails("WrongType", None)
            .role("snapshot")
            .message("got timestamp")
            .done(),
    )
}
