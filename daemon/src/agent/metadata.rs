//! Step 1 of a cycle: bring the Director and Image repository up to date and
//! run full verification (Uptane 2.1 §5.4.4.2), persisting the exact bytes
//! accepted.

use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::fetch::backend::{quote, Repository};
use crate::store::{Repo, Role};
use secureev_uptane::trusted::{Layout, TimestampUpdate, TrustedRepository};
use secureev_uptane::uptane::{full_verification, FullVerification, UpdatePlan};
use secureev_uptane::Timestamp;
use tokio_util::sync::CancellationToken;

impl Agent {
    /// Bring one repository up to date (TUF 1.0 §5.3 / Uptane 2.1 §5.4.4.2
    /// steps 2–5 and 7–9), persisting every accepted file.
    pub(crate) async fn refresh(
        &self,
        repo: Repo,
        now: Timestamp,
    ) -> Result<(TrustedRepository, bool)> {
        let store = &self.daemon.store;
        let which = match repo {
            Repo::Director => Repository::Director,
            Repo::Image => Repository::Image,
        };
        let layout = match repo {
            Repo::Director => self.daemon.config.trust.director_layout.to_core(),
            Repo::Image => Layout::Tuf,
        };
        let uptane = |what: &str, e| Error::uptane(format!("{} {what}", repo.as_str()), e);
        let root = store
            .load_metadata(repo, Role::Root)?
            .ok_or_else(|| Error::CorruptState {
                path: store.metadata_path(repo, Role::Root),
                reason: "no trusted root".into(),
            })?;
        let mut t = TrustedRepository::new(repo.as_str(), &root)
            .map_err(|e| uptane("root.json", e))?
            .with_layout(layout);
        // Root chain: N+1 until the backend has no newer one.
        for _ in 0..t.limits().max_root_rotations {
            let next = t.root().common.version + 1;
            let file = format!("{next}.root.json");
            let Some(bytes) = self
                .backend
                .get_meta(which, &file, t.limits().root_max_length, now)
                .await?
            else {
                break;
            };
            t.update_root(&bytes).map_err(|e| uptane(&file, e))?;
            store.save_root_version(repo, next, &bytes)?;
            store.save_metadata(repo, Role::Root, &bytes)?;
        }
        let mut changed = true;
        if layout == Layout::Tuf {
            if let Some(local) = store.load_metadata(repo, Role::Timestamp)? {
                if let Err(e) = t.update_timestamp_local(&local, now) {
                    tracing::debug!(repository = repo.as_str(), "stored timestamp not used: {e}");
                }
            }
            let cap = t.limits().timestamp_max_length;
            let ts = self
                .backend
                .get_meta(which, "timestamp.json", cap, now)
                .await?
                .ok_or_else(|| Error::HttpStatus {
                    url: format!("{} timestamp.json", repo.as_str()),
                    status: 404,
                })?;
            match t
                .update_timestamp(&ts, now)
                .map_err(|e| uptane("timestamp.json", e))?
            {
                TimestampUpdate::Updated => store.save_metadata(repo, Role::Timestamp, &ts)?,
                // Uptane 2.1 §5.4.4.2 step 4 / 8: nothing new.
                TimestampUpdate::Unchanged => changed = false,
            }
            let local_ok = match store.load_metadata(repo, Role::Snapshot)? {
                Some(local) => t.update_snapshot_local_skip_hashes(&local, now).is_ok(),
                None => false,
            };
            if !local_ok {
                let req = t
                    .snapshot_request()
                    .map_err(|e| uptane("snapshot.json", e))?;
                let file = match req.version {
                    Some(v) => format!("{v}.snapshot.json"),
                    None => "snapshot.json".to_owned(),
                };
                let bytes = self.required(which, &file, req.max_length, now).await?;
                t.update_snapshot(&bytes, now)
                    .map_err(|e| uptane(&file, e))?;
                store.save_metadata(repo, Role::Snapshot, &bytes)?;
                changed = true;
            }
        }
        let local_targets = store.load_metadata(repo, Role::Targets)?;
        let local_ok = match (&local_targets, layout) {
            (Some(local), Layout::Tuf) => t.update_targets(local, now).is_ok(),
            (Some(local), Layout::RootAndTargetsOnly) => {
                // Only a rollback reference: the Director is asked every time.
                let _ = t.update_targets(local, now);
                false
            }
            _ => false,
        };
        if !local_ok {
            let req = t
                .targets_request("targets")
                .map_err(|e| uptane("targets.json", e))?;
            let file = match req.version {
                Some(v) => format!("{v}.targets.json"),
                None => "targets.json".to_owned(),
            };
            let bytes = self.required(which, &file, req.max_length, now).await?;
            t.update_targets(&bytes, now)
                .map_err(|e| uptane(&file, e))?;
            if local_targets.as_deref() != Some(bytes.as_slice()) {
                changed = true;
            }
            store.save_metadata(repo, Role::Targets, &bytes)?;
        }
        Ok((t, changed))
    }

    pub(crate) async fn required(
        &self,
        which: Repository,
        file: &str,
        cap: u64,
        now: Timestamp,
    ) -> Result<Vec<u8>> {
        self.backend
            .get_meta(which, file, cap, now)
            .await?
            .ok_or_else(|| Error::HttpStatus {
                url: file.to_owned(),
                status: 404,
            })
    }

    /// Steps 1–10 of full verification; returns the verified plan.
    pub(crate) async fn verify(
        &self,
        now: Timestamp,
        cancel: &CancellationToken,
    ) -> Result<UpdatePlan> {
        let (director, _) = self.refresh(Repo::Director, now).await?;
        if cancel.is_cancelled() {
            return Err(Error::Cancelled("check".into()));
        }
        let (mut image, _) = self.refresh(Repo::Image, now).await?;
        let vehicle = self.vehicle()?;
        loop {
            match full_verification(&director, &image, &vehicle)
                .map_err(|e| Error::uptane("full verification", e))?
            {
                FullVerification::Done(plan) => {
                    self.daemon
                        .clock
                        .record_verification(&self.daemon.store, now)?;
                    return Ok(plan.value().clone());
                }
                FullVerification::NeedImageRole { role, parent } => {
                    let store = &self.daemon.store;
                    let local = store.load_metadata(Repo::Image, Role::Delegated(&role))?;
                    if let Some(bytes) = local {
                        if image
                            .update_delegated_targets(&bytes, &role, &parent, now)
                            .is_ok()
                        {
                            continue;
                        }
                    }
                    let req = image
                        .targets_request(&role)
                        .map_err(|e| Error::uptane(role.clone(), e))?;
                    let file = match req.version {
                        Some(v) => format!("{v}.{}.json", quote(&role)),
                        None => format!("{}.json", quote(&role)),
                    };
                    let bytes = self
                        .required(Repository::Image, &file, req.max_length, now)
                        .await?;
                    image
                        .update_delegated_targets(&bytes, &role, &parent, now)
                        .map_err(|e| Error::uptane(file.clone(), e))?;
                    store.save_metadata(Repo::Image, Role::Delegated(&role), &bytes)?;
                }
            }
        }
    }
}
