//! The SQL of staged rollouts ([`crate::rollout`]): rollouts, their groups and
//! their targets (one row per ECU, with the group it belongs to, the
//! assignment made when the group started and the outcome its manifests
//! reported).

use super::{Row, Tx};
use crate::error::Result;
use serde::Serialize;

/// A rollout.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutRow {
    /// Id.
    pub id: i64,
    /// The campaign its assignments belong to.
    pub campaign_id: i64,
    /// Name.
    pub name: String,
    /// Image name.
    pub image: String,
    /// `ready`, `running`, `paused`, `finished`, `stopped` or `cancelled`.
    pub state: String,
    /// Why it was stopped or cancelled.
    pub reason: Option<String>,
    /// Operator who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: i64,
    /// Last state change.
    pub updated_at: i64,
}

/// A group of a rollout.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutGroupRow {
    /// Position, from 0: groups start in this order.
    pub index: i64,
    /// Name.
    pub name: String,
    /// How it was selected (`count` or `percent`, filters), JSON.
    pub spec: serde_json::Value,
    /// Percent of the group's assigned targets installed that starts the next group.
    pub success_threshold: u32,
    /// Percent of failed installs and attacks above which the rollout stops.
    pub error_threshold: u32,
    /// `scheduled`, `running`, `succeeded`, `stopped` or `cancelled`.
    pub state: String,
    /// When its assignments were made.
    pub started_at: Option<i64>,
    /// When it reached a final state.
    pub finished_at: Option<i64>,
}

/// Counts of one group's targets.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RolloutProgress {
    /// ECUs in the group.
    pub targets: u64,
    /// ECUs given an assignment when the group started.
    pub assigned: u64,
    /// Reported the image installed.
    pub installed: u64,
    /// Reported a failed installation.
    pub failed: u64,
    /// Reported an attack while the assignment was pending.
    pub attacks: u64,
    /// Assigned, nothing reported yet, assignment still pending.
    pub pending: u64,
    /// Assigned, nothing reported, assignment cancelled (rollout stopped or
    /// cancelled, or replaced by another assignment).
    pub cancelled: u64,
    /// Not assignable when the group started (release counter, no key).
    pub skipped: u64,
}

/// One target of a rollout.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutTargetRow {
    /// Rollout.
    pub rollout_id: i64,
    /// Group index.
    pub group_index: i64,
    /// Vehicle.
    pub vin: String,
    /// ECU serial.
    pub ecu_serial: String,
    /// The assignment made when the group started.
    pub assignment_id: Option<i64>,
    /// `installed`, `failed`, `attack`, `skipped` or none yet.
    pub outcome: Option<String>,
    /// Why it was skipped.
    pub note: Option<String>,
}

const ROLLOUT_COLS: &str =
    "id, campaign_id, name, image, state, reason, created_by, created_at, updated_at";

fn rollout_of(r: &Row<'_>) -> Result<RolloutRow> {
    Ok(RolloutRow {
        id: r.get(0)?,
        campaign_id: r.get(1)?,
        name: r.get(2)?,
        image: r.get(3)?,
        state: r.get(4)?,
        reason: r.get(5)?,
        created_by: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

fn target_of(r: &Row<'_>) -> Result<RolloutTargetRow> {
    Ok(RolloutTargetRow {
        rollout_id: r.get(0)?,
        group_index: r.get(1)?,
        vin: r.get(2)?,
        ecu_serial: r.get(3)?,
        assignment_id: r.get(4)?,
        outcome: r.get(5)?,
        note: r.get(6)?,
    })
}

const TARGET_COLS: &str = "rollout_id, group_idx, vin, ecu_serial, assignment_id, outcome, note";

impl Tx<'_> {
    /// Insert a rollout (state `ready`).
    pub fn insert_rollout(
        &self,
        campaign_id: i64,
        name: &str,
        image: &str,
        created_by: &str,
        now: i64,
    ) -> Result<i64> {
        self.insert_id(
            "INSERT INTO rollouts (campaign_id, name, image, state, created_by, created_at, updated_at) VALUES (?1, ?2, ?3, 'ready', ?4, ?5, ?5)",
            params![campaign_id, name, image, created_by, now],
        )
    }

    /// Insert a group (state `scheduled`).
    pub fn insert_rollout_group(&self, rollout_id: i64, group: &RolloutGroupRow) -> Result<()> {
        self.exec(
            "INSERT INTO rollout_groups (rollout_id, idx, name, spec, success_threshold, error_threshold, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'scheduled')",
            params![
                rollout_id,
                group.index,
                group.name,
                group.spec.to_string(),
                group.success_threshold,
                group.error_threshold
            ],
        )?;
        Ok(())
    }

    /// Put an ECU into a group of a rollout.
    pub fn insert_rollout_target(
        &self,
        rollout_id: i64,
        group_index: i64,
        vin: &str,
        serial: &str,
        now: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO rollout_targets (rollout_id, group_idx, vin, ecu_serial, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![rollout_id, group_index, vin, serial, now],
        )?;
        Ok(())
    }

    /// One rollout.
    pub fn rollout(&self, id: i64) -> Result<Option<RolloutRow>> {
        self.one(
            &format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = ?1"),
            params![id],
            rollout_of,
        )
    }

    /// Every rollout, oldest first.
    pub fn rollouts(&self) -> Result<Vec<RolloutRow>> {
        self.all(
            &format!("SELECT {ROLLOUT_COLS} FROM rollouts ORDER BY id"),
            params![],
            rollout_of,
        )
    }

    /// A rollout's groups, in order.
    pub fn rollout_groups(&self, rollout_id: i64) -> Result<Vec<RolloutGroupRow>> {
        self.all(
            "SELECT idx, name, spec, success_threshold, error_threshold, state, started_at, finished_at FROM rollout_groups WHERE rollout_id = ?1 ORDER BY idx",
            params![rollout_id],
            |r| {
                let spec: String = r.get(2)?;
                Ok(RolloutGroupRow {
                    index: r.get(0)?,
                    name: r.get(1)?,
                    spec: serde_json::from_str(&spec).unwrap_or(serde_json::Value::Null),
                    success_threshold: r.get(3)?,
                    error_threshold: r.get(4)?,
                    state: r.get(5)?,
                    started_at: r.get(6)?,
                    finished_at: r.get(7)?,
                })
            },
        )
    }

    /// Progress of one group.
    pub fn rollout_group_progress(
        &self,
        rollout_id: i64,
        group_index: i64,
    ) -> Result<RolloutProgress> {
        let p = self.one(
            "SELECT COUNT(*), COUNT(t.assignment_id), \
             COALESCE(SUM(CASE WHEN t.outcome = 'installed' THEN 1 ELSE 0 END), 0), COALESCE(SUM(CASE WHEN t.outcome = 'failed' THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN t.outcome = 'attack' THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN t.outcome IS NULL AND a.status = 'pending' THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN t.outcome IS NULL AND a.status = 'cancelled' THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN t.outcome = 'skipped' THEN 1 ELSE 0 END), 0) \
             FROM rollout_targets t LEFT JOIN assignments a ON a.id = t.assignment_id \
             WHERE t.rollout_id = ?1 AND t.group_idx = ?2",
            params![rollout_id, group_index],
            |r| {
                let n = |i| r.get::<i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
                Ok(RolloutProgress {
                    targets: n(0)?,
                    assigned: n(1)?,
                    installed: n(2)?,
                    failed: n(3)?,
                    attacks: n(4)?,
                    pending: n(5)?,
                    cancelled: n(6)?,
                    skipped: n(7)?,
                })
            },
        )?;
        Ok(p.unwrap_or_default())
    }

    /// The targets of one group.
    pub fn rollout_group_targets(
        &self,
        rollout_id: i64,
        group_index: i64,
    ) -> Result<Vec<RolloutTargetRow>> {
        self.all(
            &format!("SELECT {TARGET_COLS} FROM rollout_targets WHERE rollout_id = ?1 AND group_idx = ?2 ORDER BY vin, ecu_serial"),
            params![rollout_id, group_index],
            target_of,
        )
    }

    /// The targets of one group with their assignment's status (none when
    /// not assigned), for the per-target view.
    pub fn rollout_group_target_status(
        &self,
        rollout_id: i64,
        group_index: i64,
    ) -> Result<Vec<(RolloutTargetRow, Option<String>)>> {
        self.all(
            "SELECT t.rollout_id, t.group_idx, t.vin, t.ecu_serial, t.assignment_id, t.outcome, t.note, a.status \
             FROM rollout_targets t LEFT JOIN assignments a ON a.id = t.assignment_id \
             WHERE t.rollout_id = ?1 AND t.group_idx = ?2 ORDER BY t.vin, t.ecu_serial",
            params![rollout_id, group_index],
            |r| Ok((target_of(r)?, r.get(7)?)),
        )
    }

    /// A vehicle's assigned targets in rollouts that are `running` or
    /// `paused`, with their assignment's status: what a manifest of this
    /// vehicle can change (index `rollout_targets_vin`).
    pub fn active_rollout_targets(&self, vin: &str) -> Result<Vec<(RolloutTargetRow, String)>> {
        self.all(
            "SELECT t.rollout_id, t.group_idx, t.vin, t.ecu_serial, t.assignment_id, t.outcome, t.note, a.status \
             FROM rollout_targets t JOIN rollouts r ON r.id = t.rollout_id \
             JOIN assignments a ON a.id = t.assignment_id \
             WHERE t.vin = ?1 AND r.state IN ('running', 'paused') \
             ORDER BY t.rollout_id, t.ecu_serial",
            params![vin],
            |r| Ok((target_of(r)?, r.get(7)?)),
        )
    }

    /// The rollout not yet over (`ready`, `running`, `paused`) that an ECU
    /// is a target of, if any.
    pub fn open_rollout_of(&self, vin: &str, serial: &str) -> Result<Option<i64>> {
        self.one(
            "SELECT t.rollout_id FROM rollout_targets t JOIN rollouts r ON r.id = t.rollout_id \
             WHERE t.vin = ?1 AND t.ecu_serial = ?2 AND r.state IN ('ready', 'running', 'paused') LIMIT 1",
            params![vin, serial],
            |r| r.get(0),
        )
    }

    /// Set a rollout's state (and the reason, when given).
    pub fn set_rollout_state(
        &self,
        id: i64,
        state: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.exec(
            "UPDATE rollouts SET state = ?2, reason = COALESCE(?3, reason), updated_at = ?4 WHERE id = ?1",
            params![id, state, reason, now],
        )?;
        Ok(())
    }

    /// Set a group's state; `started` stamps `started_at`, a final state
    /// stamps `finished_at`.
    pub fn set_rollout_group_state(
        &self,
        rollout_id: i64,
        group_index: i64,
        state: &str,
        now: i64,
    ) -> Result<()> {
        self.exec(
            "UPDATE rollout_groups SET state = ?3, \
             started_at = CASE WHEN ?3 = 'running' THEN ?4 ELSE started_at END, \
             finished_at = CASE WHEN ?3 IN ('succeeded', 'stopped', 'cancelled') THEN ?4 ELSE finished_at END \
             WHERE rollout_id = ?1 AND idx = ?2",
            params![rollout_id, group_index, state, now],
        )?;
        Ok(())
    }

    /// Record the assignment made for a target, or why none was.
    pub fn set_rollout_target_assignment(
        &self,
        rollout_id: i64,
        vin: &str,
        serial: &str,
        assignment: std::result::Result<i64, &str>,
        now: i64,
    ) -> Result<()> {
        let (id, outcome, note) = match assignment {
            Ok(id) => (Some(id), None, None),
            Err(why) => (None, Some("skipped"), Some(why)),
        };
        self.exec(
            "UPDATE rollout_targets SET assignment_id = ?4, outcome = ?5, note = ?6, updated_at = ?7 WHERE rollout_id = ?1 AND vin = ?2 AND ecu_serial = ?3",
            params![rollout_id, vin, serial, id, outcome, note, now],
        )?;
        Ok(())
    }

    /// Record an outcome reported for a target; returns whether it changed.
    /// `installed` and `attack` replace nothing or `failed` (a retry
    /// succeeded, or the retry was attacked); `failed` is recorded only while
    /// nothing is, so a report repeated in later manifests changes nothing.
    pub fn set_rollout_target_outcome(
        &self,
        rollout_id: i64,
        vin: &str,
        serial: &str,
        outcome: &str,
        now: i64,
    ) -> Result<bool> {
        let sql = if outcome == "failed" {
            "UPDATE rollout_targets SET outcome = ?4, updated_at = ?5 WHERE rollout_id = ?1 AND vin = ?2 AND ecu_serial = ?3 AND outcome IS NULL"
        } else {
            "UPDATE rollout_targets SET outcome = ?4, updated_at = ?5 WHERE rollout_id = ?1 AND vin = ?2 AND ecu_serial = ?3 AND (outcome IS NULL OR outcome = 'failed')"
        };
        Ok(self.exec(sql, params![rollout_id, vin, serial, outcome, now])? > 0)
    }
}
