//! One simulated vehicle: its ECUs' real P-256 keys, its trusted Director
//! state and what it has installed, and the check-in cycle a Primary runs.
//!
//! A check-in is what `secureev-otad` does each cycle when nothing else is
//! asked of it: a signed GET of its Director `timestamp.json`, a signed GET
//! of the Image repository's `timestamp.json` (refreshed once for the fleet,
//! see [`crate::trust`]), and when either changed, full verification through
//! the core's [`UpdateClient`] — the Director's root chain, timestamp,
//! snapshot and targets in the client's order, from the vehicle's stored
//! copies, then the match against the refreshed Image repository — the
//! download and hash check of each assigned image, and a signed manifest
//! with one signed version report per ECU. The daemon's probe for a newer
//! root (`N+1.root.json`, a 404 on an unchanged repository) is made only in
//! cycles where a timestamp changed; the daemon makes it every cycle.

use crate::error::{Result, SimError};
use crate::http::{Conn, Dump};
use crate::trust::{earliest_expiry, required, verify as failed, ImageState, Trust};
use secureev_uptane::client::{Decision, Repo, Role, Step, UpdateClient};
use secureev_uptane::error::Attack;
use secureev_uptane::manifest::{
    random_nonce, sign_ecu_report, sign_manifest, EcuVersionReport, InstallationResult,
    InstalledImage as ReportedImage, VehicleManifest,
};
use secureev_uptane::quote::quote_component;
use secureev_uptane::uptane::{EcuInfo, InstalledImage, UpdatePlan, Vehicle};
use secureev_uptane::{did, SigningKey, Timestamp, Verified};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// What a configured share of vehicles does with an assigned image, decided
/// per (vehicle, image) from the seed, so runs are reproducible.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Share of installs that fail (reported as a failed installation).
    pub fail_fraction: f64,
    /// Share of assigned images reported as an attack (`arbitrary-software`)
    /// instead of installed.
    pub attack_fraction: f64,
    /// Seed of keys and fates.
    pub seed: String,
}

/// What one check-in did besides checking in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Images downloaded and verified.
    pub downloads: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Installs reported as successful.
    pub installs_ok: u64,
    /// Installs reported as failed.
    pub installs_failed: u64,
    /// Attacks reported.
    pub attacks: u64,
}

impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, o: Outcome) {
        self.downloads += o.downloads;
        self.bytes += o.bytes;
        self.installs_ok += o.installs_ok;
        self.installs_failed += o.installs_failed;
        self.attacks += o.attacks;
    }
}

/// The shared things a check-in uses.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The worker's connection.
    pub conn: &'a Conn,
    /// Shared trust.
    pub trust: &'a Trust,
    /// Where metadata bodies are kept for the static ceiling.
    pub dump: &'a Dump,
    /// Fates.
    pub behaviour: &'a Behaviour,
}

/// One ECU of a simulated vehicle.
#[derive(Debug, Clone)]
pub struct Ecu {
    /// Serial.
    pub serial: String,
    /// Hardware ID.
    pub hardware_id: String,
    /// Its own P-256 key.
    pub key: SigningKey,
    installed: Option<InstalledImage>,
}

/// A simulated vehicle.
#[derive(Debug)]
pub struct SimVehicle {
    /// VIN.
    pub vin: String,
    /// ECUs; the first is the Primary.
    pub ecus: Vec<Ecu>,
    counter: u64,
    /// The Director files trusted by the last complete verification, by
    /// role (timestamp, snapshot, targets): the client's stored copies.
    director_files: BTreeMap<String, Vec<u8>>,
    /// The Director timestamp bytes that verification was served.
    director_ts: Vec<u8>,
    director_expires: Option<Timestamp>,
    /// The Image repository generation of the last complete verification.
    plan_for: Option<u64>,
    given_up: BTreeSet<(String, String)>,
    results: Vec<(String, InstallationResult)>,
    attacks: BTreeMap<String, Vec<Attack>>,
}

/// The VIN of simulated vehicle `index`.
pub fn vin(index: usize) -> String {
    format!("SIM{index:010}")
}

/// A P-256 key that is a function of the seed and a name: the same fleet can
/// be registered once and simulated again in another run.
pub fn derived_key(seed: &str, name: &str) -> SigningKey {
    let mut input = Sha256::digest(format!("secureev-fleet-sim\n{seed}\n{name}").as_bytes());
    loop {
        // Fails only for the zero scalar or one above the group order
        // (probability about 2^-32): hash again.
        if let Ok(k) = SigningKey::p256_from_bytes(&input.into()) {
            return k;
        }
        input = Sha256::digest(input);
    }
}

fn fraction(seed: &str, vin: &str, name: &str) -> f64 {
    let h = Sha256::digest(format!("fate\n{seed}\n{vin}\n{name}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn verify(what: impl Into<String>) -> impl FnOnce(secureev_uptane::Error) -> SimError {
    let what = what.into();
    move |source| SimError::Verify {
        what,
        source: Box::new(source),
    }
}

impl SimVehicle {
    /// Vehicle `index` of the fleet: `ecus` ECUs (the first the Primary,
    /// hardware ID `hardware_id`; the others `<hardware_id>-<n>`).
    pub fn new(seed: &str, index: usize, ecus: usize, hardware_id: &str) -> Self {
        let vin = vin(index);
        let ecus = (0..ecus.max(1))
            .map(|n| {
                let serial = format!("{vin}-E{n}");
                Ecu {
                    key: derived_key(seed, &serial),
                    hardware_id: if n == 0 {
                        hardware_id.to_owned()
                    } else {
                        format!("{hardware_id}-{n}")
                    },
                    serial,
                    installed: None,
                }
            })
            .collect();
        SimVehicle {
            vin,
            ecus,
            counter: 0,
            director_files: BTreeMap::new(),
            director_ts: Vec::new(),
            director_expires: None,
            plan_for: None,
            given_up: BTreeSet::new(),
            results: Vec::new(),
            attacks: BTreeMap::new(),
        }
    }

    /// The registration `POST /enroll` takes.
    pub fn registration(&self) -> serde_json::Value {
        json!({
            "vin": self.vin,
            "primary_serial": self.ecus[0].serial,
            "ecus": self.ecus.iter().map(|e| json!({
                "serial": e.serial,
                "hardware_id": e.hardware_id,
                "public_key": did::to_did(&e.key.verifying_key()),
            })).collect::<Vec<_>>(),
        })
    }

    fn uptane_vehicle(&self) -> Vehicle {
        Vehicle::new(
            &self.vin,
            &self.ecus[0].serial,
            self.ecus.iter().map(|e| EcuInfo {
                serial: e.serial.clone(),
                hardware_id: e.hardware_id.clone(),
                installed: e.installed.clone(),
            }),
        )
    }

    /// Full verification through the core's client: the Director from the
    /// fleet's trusted root and this vehicle's stored copies, the Image
    /// repository as refreshed for the fleet. The stored copies and the
    /// timestamp change only when the run completes, so a failed run is
    /// repeated at the next check-in.
    async fn verify(
        &mut self,
        ctx: Ctx<'_>,
        ts: &[u8],
        image: &ImageState,
        now: Timestamp,
    ) -> Result<Verified<UpdatePlan>> {
        let key = self.ecus[0].key.clone();
        let base = format!("/director/{}", self.vin);
        let refreshed = image
            .refreshed
            .as_ref()
            .ok_or_else(|| SimError::Local("the image repository was not refreshed".into()))?;
        let mut client = UpdateClient::primary_with_image(
            self.uptane_vehicle(),
            ctx.trust.director_root(),
            refreshed,
            now,
        )
        .map_err(failed)?;
        let mut accepted = BTreeMap::new();
        loop {
            match client.next_step().map_err(failed)? {
                Step::Load {
                    repo: Repo::Director,
                    role,
                } => match self.director_files.get(role.as_str()) {
                    Some(bytes) => client.offer(bytes),
                    None => client.offer_not_found(),
                },
                Step::Load { .. } => client.offer_not_found(),
                // The bytes this check-in was served.
                Step::Fetch(req) if req.repo == Repo::Director && req.role == Role::Timestamp => {
                    client.offer(ts)
                }
                Step::Fetch(req) => {
                    let path = match req.repo {
                        Repo::Director => format!("{base}/{}", req.file),
                        Repo::Image => format!("/image/{}", req.file),
                    };
                    match ctx.conn.get(&key, &self.vin, &path, now, ctx.dump).await? {
                        Some(bytes) => client.offer(&bytes),
                        None => client.offer_not_found(),
                    }
                }
                Step::Persist {
                    repo: Repo::Director,
                    role,
                    bytes,
                    ..
                } => {
                    // A rotated root is walked again from the fleet's root
                    // in each run; only the per-vehicle roles are kept.
                    if role != Role::Root {
                        accepted.insert(role.as_str().to_owned(), bytes);
                    }
                    Ok(())
                }
                Step::Persist { .. } => Ok(()),
                Step::Done(Decision::Plan(plan)) => {
                    self.director_files.extend(accepted);
                    self.director_ts = ts.to_vec();
                    self.director_expires =
                        client.repository(Repo::Director).and_then(earliest_expiry);
                    return Ok(plan);
                }
                Step::Done(other) => {
                    return Err(SimError::Local(format!(
                        "full verification decided {other:?}"
                    )))
                }
            }
            .map_err(failed)?;
        }
    }

    /// One check-in cycle at `now` (see the module documentation).
    pub async fn check_in(&mut self, ctx: Ctx<'_>, now: Timestamp) -> Result<Outcome> {
        let key = self.ecus[0].key.clone();
        let vin = self.vin.clone();
        let base = format!("/director/{vin}");
        let conn = ctx.conn;

        // Both timestamps; the Image repository refreshed once for the fleet.
        let ts = required(
            conn,
            &key,
            &vin,
            &format!("{base}/timestamp.json"),
            now,
            ctx.dump,
        )
        .await?;
        let its = required(conn, &key, &vin, "/image/timestamp.json", now, ctx.dump).await?;
        let image = ctx
            .trust
            .image_for(&its, conn, &key, &vin, now, ctx.dump)
            .await?;

        // Full verification when either repository changed.
        let mut outcome = Outcome::default();
        let changed = self.director_ts.is_empty() || ts != self.director_ts;
        if !changed {
            if let Some(e) = self.director_expires.filter(|e| *e <= now) {
                return Err(SimError::Expired {
                    what: "director metadata".into(),
                    expires: e.to_string(),
                });
            }
        }
        if changed || self.plan_for != Some(image.generation) {
            let plan = self.verify(ctx, &ts, &image, now).await?;
            let plan = plan.value();
            for t in plan.targets() {
                let serial = t.ecu_serial().to_owned();
                let sha256 = t
                    .assignment()
                    .director_target
                    .hashes
                    .get("sha256")
                    .cloned()
                    .unwrap_or_default();
                if self.given_up.contains(&(serial.clone(), sha256.clone())) {
                    continue;
                }
                let path = target_path(t.name(), &sha256);
                let bytes = required(conn, &key, &vin, &path, now, &Dump::default()).await?;
                let mut check = t.stream_verifier().map_err(verify(t.name()))?;
                check.update(&bytes).map_err(verify(t.name()))?;
                check.finish().map_err(verify(t.name()))?;
                outcome.downloads += 1;
                outcome.bytes += bytes.len() as u64;
                let fate = fraction(&ctx.behaviour.seed, &vin, t.name());
                if fate < ctx.behaviour.attack_fraction {
                    self.attacks
                        .entry(serial.clone())
                        .or_default()
                        .push(Attack::ArbitrarySoftware);
                    self.given_up.insert((serial, sha256));
                    outcome.attacks += 1;
                } else if fate < ctx.behaviour.attack_fraction + ctx.behaviour.fail_fraction {
                    self.results.push((
                        serial.clone(),
                        InstallationResult::new(false, "SIM_INSTALL_FAILED", "simulated failure"),
                    ));
                    self.given_up.insert((serial, sha256));
                    outcome.installs_failed += 1;
                } else {
                    if let Some(ecu) = self.ecus.iter_mut().find(|e| e.serial == serial) {
                        ecu.installed = Some(t.installed_image());
                    }
                    self.results
                        .push((serial, InstallationResult::new(true, "OK", "installed")));
                    outcome.installs_ok += 1;
                }
            }
            self.plan_for = Some(image.generation);
        }

        // The signed manifest, one signed report per ECU.
        self.counter = (self.counter + 1).max(unix_millis());
        let mut manifest = VehicleManifest::new(&vin, &self.ecus[0].serial, self.counter);
        for e in &self.ecus {
            let mut r = EcuVersionReport::new(&e.serial, &e.hardware_id, now, self.counter)
                .with_nonce(random_nonce());
            if let Some(i) = &e.installed {
                r = r.with_installed_image(ReportedImage::of(i));
            }
            if let Some(a) = self.attacks.get(&e.serial) {
                r = r.with_attacks(a);
            }
            if let Some((_, res)) = self.results.iter().find(|(s, _)| s == &e.serial) {
                r = r.with_installation_result(res.clone());
            }
            let signed = sign_ecu_report(&r, &e.key)
                .map_err(|e| SimError::Local(format!("signing a report: {e}")))?;
            manifest
                .add_report(signed)
                .map_err(|e| SimError::Local(format!("manifest: {e}")))?;
        }
        let body = serde_json::to_vec(
            &sign_manifest(&manifest, &key)
                .map_err(|e| SimError::Local(format!("signing the manifest: {e}")))?,
        )
        .map_err(|e| SimError::Local(format!("manifest JSON: {e}")))?;
        conn.put_json(&key, &vin, &format!("{base}/manifest"), body, now)
            .await?;
        self.results.clear();
        self.attacks.clear();
        Ok(outcome)
    }
}

/// The Image repository path of a target: hash-prefixed last component,
/// each component percent-encoded (as the daemon builds it).
pub fn target_path(name: &str, sha256: &str) -> String {
    let (dir, base) = match name.rsplit_once('/') {
        Some((d, b)) => (Some(d), b),
        None => (None, name),
    };
    let mut path = String::from("/image/targets/");
    if let Some(d) = dir {
        for part in d.split('/') {
            path.push_str(&quote_component(part));
            path.push('/');
        }
    }
    path.push_str(&quote_component(&format!("{sha256}.{base}")));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_fates_are_functions_of_the_seed() {
        let a = SimVehicle::new("s", 7, 2, "hw");
        let b = SimVehicle::new("s", 7, 2, "hw");
        let c = SimVehicle::new("t", 7, 2, "hw");
        assert_eq!(a.ecus[1].key.keyid(), b.ecus[1].key.keyid());
        assert_ne!(a.ecus[1].key.keyid(), c.ecus[1].key.keyid());
        assert_ne!(a.ecus[0].key.keyid(), a.ecus[1].key.keyid());
        assert_eq!(a.ecus[1].hardware_id, "hw-1");
        let f = fraction("s", "V", "fw");
        assert!((0.0..1.0).contains(&f));
        assert_eq!(f, fraction("s", "V", "fw"));
        // Fates spread: about a fifth of 1,000 vehicles fall under 0.2.
        let under = (0..1000)
            .filter(|i| fraction("s", &vin(*i), "fw") < 0.2)
            .count();
        assert!((150..250).contains(&under), "{under}");
    }

    #[test]
    fn target_paths_are_hash_prefixed_and_quoted() {
        assert_eq!(
            target_path("fw/ecu a.bin", "ab12"),
            "/image/targets/fw/ab12.ecu%20a.bin"
        );
    }
}
