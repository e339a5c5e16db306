//! Staged rollouts (Eclipse hawkBit is the model): a campaign split into
//! groups that start in cascade.
//!
//! A rollout names an image and the hardware IDs it goes to (default: every
//! hardware ID the image is built for). At creation, every ECU with one of
//! those hardware IDs that the image may go to is put into exactly one
//! group, in the order the groups are given (ECUs ordered by VIN and serial):
//! a group takes `count` ECUs, or `percent` of all the rollout's ECUs
//! (rounded up), or, with neither, every ECU left; optionally only ECUs whose
//! VIN matches `vin_pattern` (`*` any run, `?` one character) and/or with
//! `hardware_id`. No assignment is made yet.
//!
//! **Start** makes the first group's assignments (the rollout's campaign;
//! an ECU's earlier pending assignment is replaced, as by a campaign). From
//! then on the rollout is evaluated in the transaction of every manifest
//! that changes one of its targets' outcome, and after every operator action:
//! - **emergency stop**: when a started group's failed installs plus the
//!   attacks its ECUs reported while the assignment was pending exceed its
//!   `error_threshold` percent of the group's assigned ECUs, the rollout is
//!   `stopped`: every pending assignment of the rollout is cancelled (the
//!   vehicles' Director metadata no longer lists the image) and no further
//!   group starts. A stopped rollout stays stopped.
//! - **cascade**: when the running group's installed ECUs reach its
//!   `success_threshold` percent of its assigned ECUs, the group has
//!   `succeeded` and the next group starts; after the last, the rollout is
//!   `finished` (its pending assignments stay: stragglers still install).
//!
//! **Pause** stops the cascade (the emergency stop still applies);
//! **resume** evaluates at once; **cancel** cancels every pending assignment
//! and the groups not started. Every transition, by an operator or by the
//! server, is an audit record (`rollout-*`). Evaluation is idempotent: an
//! outcome is recorded once per target (a repeated report changes nothing)
//! and a transition happens only from the state it leaves.

use crate::admin::{check_assignable, check_id, JsonBody};
use crate::db::{self, RolloutGroupRow, RolloutProgress, RolloutRow, Tx};
use crate::director;
use crate::error::{Error, Result};
use crate::extract::Path;
use crate::operators::Operator;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Created, no group started.
pub const READY: &str = "ready";
/// Groups start in cascade.
pub const RUNNING: &str = "running";
/// No further group starts until resumed.
pub const PAUSED: &str = "paused";
/// Every group started and reached its success threshold.
pub const FINISHED: &str = "finished";
/// Emergency stop: a group exceeded its error threshold.
pub const STOPPED: &str = "stopped";
/// Cancelled by an operator.
pub const CANCELLED: &str = "cancelled";

/// Group not started.
pub const GROUP_SCHEDULED: &str = "scheduled";
/// Group's assignments made, success threshold not reached.
pub const GROUP_RUNNING: &str = "running";
/// Group reached its success threshold.
pub const GROUP_SUCCEEDED: &str = "succeeded";
/// Group exceeded its error threshold.
pub const GROUP_STOPPED: &str = "stopped";
/// Group not started when the rollout ended.
pub const GROUP_CANCELLED: &str = "cancelled";

/// Default percent of a group installed that starts the next group.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 80;
/// Default percent of a group failed (installs and attacks) above which the
/// rollout stops.
pub const DEFAULT_ERROR_THRESHOLD: u32 = 20;
/// Most groups in one rollout.
pub const MAX_GROUPS: usize = 100;

fn default_success() -> u32 {
    DEFAULT_SUCCESS_THRESHOLD
}

fn default_error() -> u32 {
    DEFAULT_ERROR_THRESHOLD
}

/// One group of a new rollout.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Name (default `group-<n>`, from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Take this many ECUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Take this percent of the rollout's ECUs (rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// Only ECUs of vehicles whose VIN matches (`*`, `?`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vin_pattern: Option<String>,
    /// Only ECUs with this hardware ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_id: Option<String>,
    /// This group's success threshold (default: the rollout's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    /// This group's error threshold (default: the rollout's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_threshold: Option<u32>,
}

/// A rollout request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRollout {
    /// Name.
    pub name: String,
    /// Image name.
    pub image: String,
    /// Hardware IDs (default: every one the image is built for).
    #[serde(default)]
    pub hardware_ids: Option<Vec<String>>,
    /// The groups, in the order they start.
    pub groups: Vec<GroupSpec>,
    /// Percent of a group installed that starts the next group (0-100).
    #[serde(default = "default_success")]
    pub success_threshold: u32,
    /// Percent of a group failed above which the rollout stops (0-100).
    #[serde(default = "default_error")]
    pub error_threshold: u32,
    /// Start the first group at once.
    #[serde(default)]
    pub start: bool,
}

fn check_percent(what: &str, v: u32) -> Result<()> {
    if v > 100 {
        return Err(Error::BadRequest(format!(
            "{what}: {v} is not a percentage (0-100)"
        )));
    }
    Ok(())
}

fn check_pattern(p: &str) -> Result<()> {
    if p.is_empty()
        || p.len() > 64
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*' | b'?'))
    {
        return Err(Error::BadRequest(format!(
            "vin_pattern {p:?} must be 1-64 characters of A-Z a-z 0-9 - _ . * ?"
        )));
    }
    Ok(())
}

/// Whether `s` matches the glob `pattern` (`*` any run, `?` one character).
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Parse a CLI group: `count=N` or `percent=P` (or neither), `vin=PATTERN`,
/// `hw=ID`, `name=NAME`, `success=P`, `error=P`, comma-separated.
pub fn parse_group_arg(arg: &str) -> Result<GroupSpec> {
    let mut g = GroupSpec {
        name: None,
        count: None,
        percent: None,
        vin_pattern: None,
        hardware_id: None,
        success_threshold: None,
        error_threshold: None,
    };
    let num = |k: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| Error::BadRequest(format!("{k}={v:?}: not a number")))
    };
    let pct = |k: &str, v: &str| -> Result<u32> {
        u32::try_from(num(k, v)?).map_err(|_| Error::BadRequest(format!("{k}={v}: too large")))
    };
    for part in arg.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| Error::BadRequest(format!("{part:?}: expected key=value")))?;
        match k {
            "count" => g.count = Some(num(k, v)?),
            "percent" => g.percent = Some(pct(k, v)?),
            "vin" => g.vin_pattern = Some(v.to_owned()),
            "hw" => g.hardware_id = Some(v.to_owned()),
            "name" => g.name = Some(v.to_owned()),
            "success" => g.success_threshold = Some(pct(k, v)?),
            "error" => g.error_threshold = Some(pct(k, v)?),
            other => {
                return Err(Error::BadRequest(format!(
                    "unknown group key {other:?}: count, percent, vin, hw, name, success, error"
                )))
            }
        }
    }
    Ok(g)
}

fn check_request(req: &NewRollout) -> Result<()> {
    if req.name.is_empty() || req.name.len() > 200 {
        return Err(Error::BadRequest(
            "rollout name must be 1-200 characters".into(),
        ));
    }
    check_percent("success_threshold", req.success_threshold)?;
    check_percent("error_threshold", req.error_threshold)?;
    if req.groups.is_empty() || req.groups.len() > MAX_GROUPS {
        return Err(Error::BadRequest(format!(
            "a rollout has 1 to {MAX_GROUPS} groups"
        )));
    }
    if let Some(hw) = &req.hardware_ids {
        if hw.is_empty() {
            return Err(Error::BadRequest(
                "hardware_ids: give at least one, or leave it out".into(),
            ));
        }
        for h in hw {
            check_id("hardware_id", h)?;
        }
    }
    for (i, g) in req.groups.iter().enumerate() {
        let n = i + 1;
        if let Some(name) = &g.name {
            if name.is_empty() || name.len() > 64 {
                return Err(Error::BadRequest(format!(
                    "group {n}: name must be 1-64 characters"
                )));
            }
        }
        match (g.count, g.percent) {
            (Some(_), Some(_)) => {
                return Err(Error::BadRequest(format!(
                    "group {n}: give count or percent, not both"
                )))
            }
            (Some(0), None) => {
                return Err(Error::BadRequest(format!(
                    "group {n}: count must be at least 1"
                )))
            }
            (None, Some(p)) if p == 0 || p > 100 => {
                return Err(Error::BadRequest(format!(
                    "group {n}: percent must be 1-100"
                )))
            }
            _ => {}
        }
        if let Some(p) = &g.vin_pattern {
            check_pattern(p)?;
        }
        if let Some(h) = &g.hardware_id {
            check_id("hardware_id", h)?;
        }
        if let Some(t) = g.success_threshold {
            check_percent(&format!("group {n}: success_threshold"), t)?;
        }
        if let Some(t) = g.error_threshold {
            check_percent(&format!("group {n}: error_threshold"), t)?;
        }
    }
    Ok(())
}

/// Create a rollout (and its campaign) in `tx`: every eligible ECU put into
/// its group, no assignment made. Returns the rollout id, the ECUs in no
/// group and the ECUs skipped (with why).
pub fn create(tx: &Tx<'_>, req: &NewRollout, actor: &str, now: i64) -> Result<(i64, Value)> {
    check_request(req)?;
    let img = tx
        .image(&req.image)?
        .ok_or_else(|| Error::NotFound(format!("image {:?}", req.image)))?;
    let hardware_ids = match &req.hardware_ids {
        Some(h) => {
            for id in h {
                if !img.hardware_ids.contains(id) {
                    return Err(Error::Conflict(format!(
                        "image {} is not built for {id}",
                        req.image
                    )));
                }
            }
            h.iter().cloned().collect::<BTreeSet<_>>()
        }
        None => img.hardware_ids.iter().cloned().collect(),
    };
    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    for hw in &hardware_ids {
        for e in tx.ecus_with_hardware(hw)? {
            let why = match tx.open_rollout_of(&e.vin, &e.serial)? {
                Some(other) => Some(format!("in rollout {other}, not over")),
                None => check_assignable(tx, &e.vin, &e.serial, &req.image)
                    .err()
                    .map(|e| e.to_string()),
            };
            match why {
                Some(reason) => {
                    skipped.push(json!({ "vin": e.vin, "ecu_serial": e.serial, "reason": reason }))
                }
                None => candidates.push((e.vin, e.serial, e.hardware_id)),
            }
        }
    }
    candidates.sort();
    let total = candidates.len() as u64;
    let hw_list: Vec<&str> = hardware_ids.iter().map(String::as_str).collect();
    let campaign = tx.insert_campaign(&req.name, &req.image, &hw_list.join(","), now)?;
    let id = tx.insert_rollout(campaign, &req.name, &req.image, actor, now)?;
    let mut taken = vec![false; candidates.len()];
    let mut sizes = Vec::new();
    for (i, g) in req.groups.iter().enumerate() {
        let want = match (g.count, g.percent) {
            (Some(c), _) => c,
            (None, Some(p)) => (total * u64::from(p)).div_ceil(100),
            (None, None) => u64::MAX,
        };
        let index = i as i64;
        let mut n = 0u64;
        for (k, (vin, serial, hw)) in candidates.iter().enumerate() {
            if n >= want {
                break;
            }
            if taken[k]
                || g.hardware_id.as_ref().is_some_and(|h| h != hw)
                || g.vin_pattern.as_ref().is_some_and(|p| !glob_match(p, vin))
            {
                continue;
            }
            taken[k] = true;
            n += 1;
            tx.insert_rollout_target(id, index, vin, serial, now)?;
        }
        let spec = serde_json::to_value(g).map_err(|e| Error::Internal(e.to_string()))?;
        tx.insert_rollout_group(
            id,
            &RolloutGroupRow {
                index,
                name: g.name.clone().unwrap_or_else(|| format!("group-{}", i + 1)),
                spec,
                success_threshold: g.success_threshold.unwrap_or(req.success_threshold),
                error_threshold: g.error_threshold.unwrap_or(req.error_threshold),
                state: GROUP_SCHEDULED.into(),
                started_at: None,
                finished_at: None,
            },
        )?;
        sizes.push(n);
    }
    let ungrouped: Vec<Value> = candidates
        .iter()
        .zip(&taken)
        .filter(|(_, t)| !**t)
        .map(|((vin, serial, _), _)| json!({ "vin": vin, "ecu_serial": serial }))
        .collect();
    Ok((
        id,
        json!({ "group_sizes": sizes, "ungrouped": ungrouped, "skipped": skipped }),
    ))
}

/// Make the assignments of group `index` and mark it running.
fn start_group(tx: &Tx<'_>, st: &AppState, r: &RolloutRow, index: i64, now: i64) -> Result<()> {
    let mut vins = BTreeSet::new();
    for t in tx.rollout_group_targets(r.id, index)? {
        // Checked again: the ECU may have changed since the rollout was made.
        if let Err(why) = check_assignable(tx, &t.vin, &t.ecu_serial, &r.image) {
            tx.set_rollout_target_assignment(
                r.id,
                &t.vin,
                &t.ecu_serial,
                Err(&why.to_string()),
                now,
            )?;
            continue;
        }
        tx.cancel_pending(&t.vin, &t.ecu_serial, now)?;
        let a = tx.insert_assignment(&t.vin, &t.ecu_serial, &r.image, Some(r.campaign_id), now)?;
        tx.set_rollout_target_assignment(r.id, &t.vin, &t.ecu_serial, Ok(a), now)?;
        tx.event(
            Some(&t.vin),
            Some(&t.ecu_serial),
            "assigned",
            &format!("{} (rollout {}, group {})", r.image, r.id, index + 1),
            now,
        )?;
        vins.insert(t.vin);
    }
    for vin in &vins {
        director::regenerate(tx, &st.director_keys(), vin, now)?;
    }
    tx.set_rollout_group_state(r.id, index, GROUP_RUNNING, now)?;
    Ok(())
}

/// Cancel every pending assignment of the rollout and every group not started.
fn withdraw(tx: &Tx<'_>, st: &AppState, r: &RolloutRow, why: &str, now: i64) -> Result<usize> {
    let pending = tx.assignments(None, Some(db::PENDING), Some(r.campaign_id))?;
    let mut vins = BTreeSet::new();
    for a in &pending {
        tx.set_assignment_status(a.id, db::CANCELLED, now)?;
        tx.event(
            Some(&a.vin),
            Some(&a.ecu_serial),
            "cancelled",
            &format!("{} (rollout {} {why})", a.image, r.id),
            now,
        )?;
        vins.insert(a.vin.clone());
    }
    for vin in &vins {
        director::regenerate(tx, &st.director_keys(), vin, now)?;
    }
    for g in tx.rollout_groups(r.id)? {
        if g.state == GROUP_SCHEDULED {
            tx.set_rollout_group_state(r.id, g.index, GROUP_CANCELLED, now)?;
        }
    }
    Ok(pending.len())
}

fn percent(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        (n as f64) * 100.0 / (of as f64)
    }
}

/// Whether a group's failures exceed its error threshold.
pub fn exceeds_errors(p: &RolloutProgress, error_threshold: u32) -> bool {
    p.assigned > 0 && (p.failed + p.attacks) * 100 > u64::from(error_threshold) * p.assigned
}

/// Whether a group reached its success threshold (an empty group has).
pub fn reaches_success(p: &RolloutProgress, success_threshold: u32) -> bool {
    p.assigned == 0 || p.installed * 100 >= u64::from(success_threshold) * p.assigned
}

/// Evaluate rollout `id` after a change: emergency stop, cascade, finish.
/// `trigger` names what changed (`vehicle:<vin>`, `operator:<name>`).
/// Returns the transitions made (empty when nothing changed: idempotent).
pub fn evaluate(
    tx: &Tx<'_>,
    st: &AppState,
    id: i64,
    trigger: &str,
    now: i64,
) -> Result<Vec<String>> {
    let mut done = Vec::new();
    loop {
        let r = tx
            .rollout(id)?
            .ok_or_else(|| Error::NotFound(format!("rollout {id}")))?;
        if r.state != RUNNING && r.state != PAUSED {
            return Ok(done);
        }
        let groups = tx.rollout_groups(id)?;
        let mut running = None;
        for g in &groups {
            if g.state != GROUP_RUNNING && g.state != GROUP_SUCCEEDED {
                continue;
            }
            let p = tx.rollout_group_progress(id, g.index)?;
            if exceeds_errors(&p, g.error_threshold) {
                let reason = format!(
                    "emergency stop: group {} ({}) has {} failed and {} attacks of {} assigned ({:.1} %), above its error threshold of {} %",
                    g.index + 1,
                    g.name,
                    p.failed,
                    p.attacks,
                    p.assigned,
                    percent(p.failed + p.attacks, p.assigned),
                    g.error_threshold
                );
                tx.set_rollout_group_state(id, g.index, GROUP_STOPPED, now)?;
                tx.set_rollout_state(id, STOPPED, Some(&reason), now)?;
                let cancelled = withdraw(tx, st, &r, "stopped", now)?;
                st.audit(
                    tx,
                    "server",
                    "rollout-emergency-stop",
                    json!({ "rollout": id, "group": g.index + 1, "progress": p,
                            "error_threshold": g.error_threshold, "cancelled_assignments": cancelled,
                            "trigger": trigger, "reason": reason }),
                )?;
                tx.event(
                    None,
                    None,
                    "rollout-stopped",
                    &format!("rollout {id}: {reason}"),
                    now,
                )?;
                done.push(format!("stopped at group {}", g.index + 1));
                return Ok(done);
            }
            if g.state == GROUP_RUNNING {
                running = Some((g, p));
            }
        }
        if r.state != RUNNING {
            return Ok(done);
        }
        let Some((g, p)) = running else {
            return Ok(done);
        };
        if !reaches_success(&p, g.success_threshold) {
            return Ok(done);
        }
        tx.set_rollout_group_state(id, g.index, GROUP_SUCCEEDED, now)?;
        let next = groups
            .iter()
            .find(|n| n.index > g.index && n.state == GROUP_SCHEDULED);
        match next {
            Some(n) => {
                start_group(tx, st, &r, n.index, now)?;
                st.audit(
                    tx,
                    "server",
                    "rollout-group-started",
                    json!({ "rollout": id, "group": n.index + 1, "after_group": g.index + 1,
                            "progress": p, "success_threshold": g.success_threshold, "trigger": trigger }),
                )?;
                done.push(format!(
                    "group {} succeeded, group {} started",
                    g.index + 1,
                    n.index + 1
                ));
            }
            None => {
                tx.set_rollout_state(id, FINISHED, None, now)?;
                st.audit(
                    tx,
                    "server",
                    "rollout-finished",
                    json!({ "rollout": id, "last_group": g.index + 1, "progress": p, "trigger": trigger }),
                )?;
                tx.event(
                    None,
                    None,
                    "rollout-finished",
                    &format!("rollout {id}"),
                    now,
                )?;
                done.push(format!("group {} succeeded, rollout finished", g.index + 1));
                return Ok(done);
            }
        }
    }
}

/// What a manifest reported, per ECU serial, for [`on_manifest`].
#[derive(Debug, Default)]
pub struct Reported {
    /// Assignments the manifest completed.
    pub completed: Vec<i64>,
    /// ECUs that reported a failed installation.
    pub failed: BTreeSet<String>,
    /// ECUs that reported attacks.
    pub attacked: BTreeSet<String>,
}

/// Inside a manifest's transaction: record its outcomes for the vehicle's
/// targets in active rollouts, and evaluate each rollout that changed.
pub fn on_manifest(tx: &Tx<'_>, st: &AppState, vin: &str, rep: &Reported, now: i64) -> Result<()> {
    if rep.completed.is_empty() && rep.failed.is_empty() && rep.attacked.is_empty() {
        return Ok(());
    }
    let mut changed = BTreeSet::new();
    for (t, status) in tx.active_rollout_targets(vin)? {
        let outcome = match t.assignment_id {
            Some(a) if rep.completed.contains(&a) => "installed",
            _ if status != db::PENDING => continue,
            _ if rep.attacked.contains(&t.ecu_serial) => "attack",
            _ if rep.failed.contains(&t.ecu_serial) => "failed",
            _ => continue,
        };
        if tx.set_rollout_target_outcome(t.rollout_id, vin, &t.ecu_serial, outcome, now)? {
            changed.insert(t.rollout_id);
        }
    }
    for id in changed {
        evaluate(tx, st, id, &format!("vehicle:{vin}"), now)?;
    }
    Ok(())
}

/// A rollout with its groups and their progress.
pub fn view(tx: &Tx<'_>, id: i64) -> Result<Value> {
    let r = tx
        .rollout(id)?
        .ok_or_else(|| Error::NotFound(format!("rollout {id}")))?;
    view_of(tx, r)
}

fn view_of(tx: &Tx<'_>, r: RolloutRow) -> Result<Value> {
    let mut total = RolloutProgress::default();
    let mut groups = Vec::new();
    let mut current = None;
    for g in tx.rollout_groups(r.id)? {
        let p = tx.rollout_group_progress(r.id, g.index)?;
        for (sum, v) in [
            (&mut total.targets, p.targets),
            (&mut total.assigned, p.assigned),
            (&mut total.installed, p.installed),
            (&mut total.failed, p.failed),
            (&mut total.attacks, p.attacks),
            (&mut total.pending, p.pending),
            (&mut total.cancelled, p.cancelled),
            (&mut total.skipped, p.skipped),
        ] {
            *sum += v;
        }
        if g.state == GROUP_RUNNING {
            current = Some(g.index + 1);
        }
        let mut v = serde_json::to_value(&g).map_err(|e| Error::Internal(e.to_string()))?;
        v["number"] = json!(g.index + 1);
        v["progress"] = json!(p);
        groups.push(v);
    }
    Ok(json!({ "rollout": r, "current_group": current, "totals": total, "groups": groups }))
}

// ---- admin API ---------------------------------------------------------------

fn actor(op: &Operator) -> String {
    format!("operator:{}", op.name)
}

/// POST /admin/rollouts
pub async fn create_handler(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    JsonBody(req): JsonBody<NewRollout>,
) -> Result<Response> {
    let now = st.now();
    let who = actor(&op);
    let (view, report) = st.db().write(|tx| {
        let (id, report) = create(tx, &req, &op.name, now)?;
        st.audit(
            tx,
            &who,
            "rollout-created",
            json!({ "rollout": id, "name": req.name, "image": req.image,
                    "groups": req.groups, "success_threshold": req.success_threshold,
                    "error_threshold": req.error_threshold,
                    "group_sizes": report["group_sizes"] }),
        )?;
        if req.start {
            start(tx, &st, id, &who, now)?;
        }
        Ok((view(tx, id)?, report))
    })?;
    let mut body = view;
    body["ungrouped"] = report["ungrouped"].clone();
    body["skipped"] = report["skipped"].clone();
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// GET /admin/rollouts
pub async fn list_handler(State(st): State<AppState>) -> Result<Json<Value>> {
    let rows = st.db().read(|tx| {
        tx.rollouts()?
            .into_iter()
            .map(|r| view_of(tx, r))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(Json(json!({ "rollouts": rows })))
}

/// GET /admin/rollouts/{id}
pub async fn get_handler(State(st): State<AppState>, Path(id): Path<i64>) -> Result<Json<Value>> {
    Ok(Json(st.db().read(|tx| view(tx, id))?))
}

/// GET /admin/rollouts/{id}/groups/{number}/targets: one group's ECUs, each
/// with its assignment, the assignment's status and the reported outcome.
pub async fn group_targets_handler(
    State(st): State<AppState>,
    Path((id, number)): Path<(i64, i64)>,
) -> Result<Json<Value>> {
    let targets = st.db().read(|tx| {
        tx.rollout(id)?
            .ok_or_else(|| Error::NotFound(format!("rollout {id}")))?;
        let groups = tx.rollout_groups(id)?;
        let g = groups
            .iter()
            .find(|g| g.index + 1 == number)
            .ok_or_else(|| Error::NotFound(format!("group {number} of rollout {id}")))?;
        let rows = tx.rollout_group_target_status(id, g.index)?;
        Ok(rows
            .into_iter()
            .map(|(t, status)| {
                json!({ "vin": t.vin, "ecu_serial": t.ecu_serial, "assignment_id": t.assignment_id,
                        "assignment_status": status, "outcome": t.outcome, "note": t.note })
            })
            .collect::<Vec<_>>())
    })?;
    Ok(Json(
        json!({ "rollout": id, "group": number, "targets": targets }),
    ))
}

fn rollout_in(tx: &Tx<'_>, id: i64, allowed: &[&str], action: &str) -> Result<RolloutRow> {
    let r = tx
        .rollout(id)?
        .ok_or_else(|| Error::NotFound(format!("rollout {id}")))?;
    if !allowed.contains(&r.state.as_str()) {
        return Err(Error::Conflict(format!(
            "rollout {id} is {}: cannot {action} it",
            r.state
        )));
    }
    Ok(r)
}

/// Start a `ready` rollout: its first group's assignments.
pub fn start(tx: &Tx<'_>, st: &AppState, id: i64, who: &str, now: i64) -> Result<Vec<String>> {
    let r = rollout_in(tx, id, &[READY], "start")?;
    tx.set_rollout_state(id, RUNNING, None, now)?;
    let first = tx
        .rollout_groups(id)?
        .first()
        .map(|g| g.index)
        .ok_or_else(|| Error::Internal(format!("rollout {id} has no group")))?;
    start_group(tx, st, &r, first, now)?;
    st.audit(
        tx,
        who,
        "rollout-started",
        json!({ "rollout": id, "group": first + 1 }),
    )?;
    tx.event(
        None,
        None,
        "rollout-started",
        &format!("rollout {id} by {who}"),
        now,
    )?;
    let mut done = vec![format!("started, group {} started", first + 1)];
    done.extend(evaluate(tx, st, id, who, now)?);
    Ok(done)
}

/// Pause a running rollout.
pub fn pause(tx: &Tx<'_>, st: &AppState, id: i64, who: &str, now: i64) -> Result<Vec<String>> {
    rollout_in(tx, id, &[RUNNING], "pause")?;
    tx.set_rollout_state(id, PAUSED, None, now)?;
    st.audit(tx, who, "rollout-paused", json!({ "rollout": id }))?;
    Ok(vec!["paused".into()])
}

/// Resume a paused rollout and evaluate it at once.
pub fn resume(tx: &Tx<'_>, st: &AppState, id: i64, who: &str, now: i64) -> Result<Vec<String>> {
    rollout_in(tx, id, &[PAUSED], "resume")?;
    tx.set_rollout_state(id, RUNNING, None, now)?;
    st.audit(tx, who, "rollout-resumed", json!({ "rollout": id }))?;
    let mut done = vec!["resumed".to_owned()];
    done.extend(evaluate(tx, st, id, who, now)?);
    Ok(done)
}

/// Cancel a rollout not yet over: pending assignments and unstarted groups.
pub fn cancel(tx: &Tx<'_>, st: &AppState, id: i64, who: &str, now: i64) -> Result<Vec<String>> {
    let r = rollout_in(tx, id, &[READY, RUNNING, PAUSED], "cancel")?;
    let reason = format!("cancelled by {who}");
    tx.set_rollout_state(id, CANCELLED, Some(&reason), now)?;
    let cancelled = withdraw(tx, st, &r, "cancelled", now)?;
    st.audit(
        tx,
        who,
        "rollout-cancelled",
        json!({ "rollout": id, "cancelled_assignments": cancelled }),
    )?;
    tx.event(
        None,
        None,
        "rollout-cancelled",
        &format!("rollout {id}: {reason}"),
        now,
    )?;
    Ok(vec![format!(
        "cancelled, {cancelled} pending assignments cancelled"
    )])
}

type Action = fn(&Tx<'_>, &AppState, i64, &str, i64) -> Result<Vec<String>>;

async fn act(st: AppState, op: Operator, id: i64, f: Action) -> Result<Json<Value>> {
    let now = st.now();
    let who = actor(&op);
    let (done, view) = st.db().write(|tx| {
        let done = f(tx, &st, id, &who, now)?;
        Ok((done, view(tx, id)?))
    })?;
    let mut body = view;
    body["transitions"] = json!(done);
    Ok(Json(body))
}

/// POST /admin/rollouts/{id}/start
pub async fn start_handler(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<i64>,
) -> Result<Json<Value>> {
    act(st, op, id, start).await
}

/// POST /admin/rollouts/{id}/pause
pub async fn pause_handler(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<i64>,
) -> Result<Json<Value>> {
    act(st, op, id, pause).await
}

/// POST /admin/rollouts/{id}/resume
pub async fn resume_handler(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<i64>,
) -> Result<Json<Value>> {
    act(st, op, id, resume).await
}

/// POST /admin/rollouts/{id}/cancel
pub async fn cancel_handler(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<i64>,
) -> Result<Json<Value>> {
    act(st, op, id, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        assert!(glob_match("WVW*", "WVW123"));
        assert!(glob_match("*", ""));
        assert!(glob_match("S?M*9", "SIM0009"));
        assert!(!glob_match("S?M*9", "SIM0008"));
        assert!(!glob_match("WVW", "WVW1"));
        assert!(glob_match("*A*B", "xxAyyB"));
    }

    #[test]
    fn thresholds_are_strict_above_for_errors_and_inclusive_for_success() {
        let p = |assigned, installed, failed, attacks| RolloutProgress {
            targets: assigned,
            assigned,
            installed,
            failed,
            attacks,
            ..RolloutProgress::default()
        };
        // 2 of 10 is exactly 20 %: not above a 20 % threshold.
        assert!(!exceeds_errors(&p(10, 0, 1, 1), 20));
        assert!(exceeds_errors(&p(10, 0, 2, 1), 20));
        assert!(reaches_success(&p(10, 8, 0, 0), 80));
        assert!(!reaches_success(&p(10, 7, 0, 0), 80));
        assert!(reaches_success(&p(0, 0, 0, 0), 100));
        assert!(!exceeds_errors(&p(0, 0, 0, 0), 0));
    }
}
