//! The cycle itself: check, download, consent and preconditions, install,
//! report, and how an operation's outcome is published.

use crate::agent::{attack_of, Agent, Inner, Pending, Plan, INHIBIT_PREFIX};
use crate::dbus_service::error_code;
use crate::error::Result;
use crate::fetch::download::{ImageRequest, Progress as DlProgress};
use crate::install::VerifiedFile;
use crate::phase::Ticket;
use crate::schedule::{CycleOutcome, UpdateCycle};
use futures_util::future::BoxFuture;
use secureev_dbus::{ErrorCode, PendingUpdate, State, UpdatePlan as DbusPlan};
use secureev_uptane::uptane::{UpdatePlan, UpdateTarget};
use secureev_uptane::Verified;
use tokio_util::sync::CancellationToken;

impl Agent {
    pub(crate) async fn download(
        &self,
        plan: &Verified<UpdatePlan>,
        cancel: &CancellationToken,
    ) -> Result<Vec<VerifiedFile>> {
        let total: u64 = plan.targets().iter().map(UpdateTarget::length).sum();
        let mut done_before = 0u64;
        let mut out = Vec::new();
        let requests: Vec<(&UpdateTarget, ImageRequest)> = plan
            .targets()
            .iter()
            .map(|t| {
                let sha256 = t
                    .assignment()
                    .director_target
                    .hashes
                    .get("sha256")
                    .cloned()
                    .unwrap_or_default();
                let url = match t.assignment().custom.uri.as_deref() {
                    Some(uri) if uri.starts_with("https://") => uri.to_owned(),
                    _ => self.backend.target_url(t.name(), &sha256),
                };
                (t, ImageRequest::for_target(t, url))
            })
            .collect();
        let keep: Vec<ImageRequest> = requests.iter().map(|(_, r)| r.clone()).collect();
        self.prune_cache(&keep);
        for (t, req) in requests {
            let ecu = t.ecu_serial().to_owned();
            let name = t.name().to_owned();
            let base = done_before;
            let report = |p: DlProgress| {
                self.progress(
                    State::Downloading,
                    base + p.done,
                    total,
                    &ecu,
                    &format!("downloading {name}"),
                );
            };
            let image = self
                .daemon
                .downloader
                .fetch_verified(t, req.url, &report, cancel)
                .await?;
            done_before += t.length();
            out.push(image);
        }
        Ok(out)
    }

    /// Issue 11: leftovers counted against the storage budget for good (an
    /// image left by a kill during reporting, an update replaced before
    /// consent). Every cycle removes the cache entries and part files that
    /// the current verified plan does not reference, before any storage check.
    pub(crate) fn prune_cache(&self, keep: &[ImageRequest]) {
        match self.daemon.downloader.prune(keep) {
            Ok(0) => {}
            Ok(freed) => tracing::info!(freed, "removed cache entries no update refers to"),
            Err(e) => tracing::warn!("pruning the download cache: {e}"),
        }
    }

    /// What holds an install back now: preconditions reported unmet over
    /// D-Bus and the inhibit files of the last scan ([`Self::refresh_inhibits`]).
    /// Touches no file: safe on the D-Bus executor.
    pub(crate) fn unmet_preconditions(&self) -> Vec<String> {
        let inner = self.lock();
        let mut unmet: Vec<String> = inner
            .preconditions
            .iter()
            .filter(|(_, (ok, _))| !ok)
            .map(|(name, (_, reason))| format!("{name}: {reason}"))
            .collect();
        // Required preconditions fail closed: never reported, reported
        // unsatisfied (listed above) or reported too long ago.
        let c = &self.daemon.config.install;
        let max_age = c
            .precondition_max_age_secs
            .unwrap_or(crate::config::DEFAULT_PRECONDITION_MAX_AGE_SECS);
        let now = self.now().unix();
        for name in &c.required_preconditions {
            match (inner.preconditions.get(name), inner.precondition_times.get(name)) {
                (None, _) => unmet.push(format!("{name}: required, never reported")),
                (Some((true, _)), Some(&at)) if now.saturating_sub(at) > max_age as i64 => {
                    unmet.push(format!(
                        "{name}: required, last reported satisfied {} s ago (more than {max_age} s)",
                        now.saturating_sub(at)
                    ))
                }
                _ => {}
            }
        }
        unmet.extend(
            inner
                .inhibits
                .iter()
                .map(|i| format!("inhibit file {}: {}", i.name, i.reason)),
        );
        unmet
    }

    /// Scan the inhibit directory (on the blocking pool, see
    /// [`crate::inhibit`]) and publish what it holds in `Preconditions`, as
    /// `inhibit/<file name>` (a name `SetPrecondition` cannot use).
    pub(crate) async fn refresh_inhibits(&self) {
        let now = crate::inhibit::scan_async(self.inhibit_dir.clone()).await;
        let before = std::mem::replace(&mut self.lock().inhibits, now.clone());
        if before == now {
            return;
        }
        for gone in before
            .iter()
            .filter(|b| !now.iter().any(|n| n.name == b.name))
        {
            self.state
                .remove_precondition(&format!("{INHIBIT_PREFIX}{}", gone.name));
        }
        for i in &now {
            self.state
                .set_precondition(&format!("{INHIBIT_PREFIX}{}", i.name), false, &i.reason);
        }
    }

    /// Operation `op` ended with `result`: `Progress`, `LastError`, history
    /// and `State` first, then, in one critical section, the phase is freed
    /// and `Completed` queued, so a client that acts on `Completed` finds
    /// the daemon idle.
    pub(crate) fn finish(&self, op: &Ticket, update_id: &str, result: &Result<String>) {
        let action = op.kind.as_str();
        let (code, message) = match result {
            Ok(message) => {
                let waiting = self.lock().pending.is_some();
                let state = if waiting {
                    State::AwaitingConsent
                } else {
                    State::Idle
                };
                self.end_progress(true, state, message);
                self.state.clear_last_error();
                self.history(action, update_id, ErrorCode::Ok, message);
                self.status(state, message);
                (ErrorCode::Ok, message.clone())
            }
            Err(e) => {
                let code = error_code(e);
                let message = e.to_string();
                let state = if code == ErrorCode::Cancelled {
                    State::Idle
                } else {
                    State::Error
                };
                self.end_progress(false, state, &message);
                self.state.set_last_error(code, message.clone());
                self.history(action, update_id, code, &message);
                self.status(state, &message);
                (code, message)
            }
        };
        let mut inner = self.lock();
        inner.transaction_ids.remove(&op.id);
        if op.kind == crate::phase::Kind::Check || op.kind == crate::phase::Kind::Provision {
            self.note_registration(&mut inner, op.kind, result);
        }
        if inner.phase.end(op.id).is_none() {
            tracing::error!(op = %op.id, "operation model: ended an operation that was not running");
        }
        self.state
            .emit_operation_completed(op.id.get(), op.kind.as_str(), code, message);
        drop(inner);
    }

    pub(crate) async fn cycle(&self, op: &Ticket, cancel: CancellationToken) -> Result<String> {
        let now = self.now();
        self.status(State::Checking, "checking for updates");
        self.progress(State::Checking, 0, 0, "", "checking for updates");
        // Dropping the check mid-way is safe: every metadata file is stored
        // atomically once verified, and the next check starts over from the
        // trusted state (TUF's update order).
        let check = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(crate::error::Error::Cancelled("check".into())),
            r = self.verify(now, &cancel) => r,
        };
        let plan = match check {
            Ok(p) => p,
            Err(e) => {
                if let Some(a) = attack_of(&e) {
                    self.lock().attacks.push(a);
                    let attacks = self.lock().attacks.clone();
                    if let Err(r) = self.report(&attacks).await {
                        tracing::warn!("reporting the attack failed: {r}");
                    }
                }
                return Err(e);
            }
        };
        self.state.set_last_check(now.unix());
        if plan.targets().is_empty() {
            {
                let mut inner = self.lock();
                self.end_deferred(
                    &mut inner,
                    ErrorCode::NoSuchUpdate,
                    "the deferred update is no longer assigned",
                );
                inner.pending = None;
            }
            self.state.clear_pending();
            self.prune_cache(&[]);
            let attacks = std::mem::take(&mut self.lock().attacks);
            self.report(&attacks).await?;
            return Ok("up to date".into());
        }
        self.enter(op.id, State::Downloading)?;
        self.status(State::Downloading, "downloading");
        let targets = match self.download(&plan, &cancel).await {
            Ok(t) => t,
            Err(e) => {
                if let Some(a) = attack_of(&e) {
                    self.lock().attacks.push(a);
                    let attacks = self.lock().attacks.clone();
                    if let Err(r) = self.report(&attacks).await {
                        tracing::warn!("reporting the attack failed: {r}");
                    }
                }
                return Err(e);
            }
        };
        self.enter(op.id, State::Verifying)?;
        self.status(State::Verifying, "images verified");
        let dbus_plan = DbusPlan::new(
            targets
                .iter()
                .map(|i| i.target())
                .map(|t| PendingUpdate {
                    update_id: String::new(),
                    ecu_serial: t.ecu_serial().to_owned(),
                    hardware_id: t.assignment().hardware_id.clone(),
                    target: t.name().to_owned(),
                    version: crate::agent::apply::shown_version(t).unwrap_or_default(),
                    release_counter: t.release_counter(),
                    size: t.length(),
                    sha256: t
                        .assignment()
                        .director_target
                        .hashes
                        .get("sha256")
                        .cloned()
                        .unwrap_or_default(),
                    // From the Image repository's entry (signed by its
                    // targets role), not the Director's.
                    release_notes: crate::agent::apply::shown_release_notes(t),
                })
                .collect(),
        );
        let pending = Pending {
            plan: dbus_plan.clone(),
            targets,
        };
        let is_new = {
            let mut inner = self.lock();
            let same = inner
                .pending
                .as_ref()
                .is_some_and(|p| p.plan.id() == dbus_plan.id());
            if !same {
                // Consent binds to exactly what was shown: a changed plan needs new consent.
                inner.consented = None;
                self.end_deferred(
                    &mut inner,
                    ErrorCode::NoSuchUpdate,
                    &format!(
                        "the deferred update was replaced by {} before it could start",
                        dbus_plan.id().as_str()
                    ),
                );
            }
            inner.pending = Some(pending);
            !same
        };
        self.state.set_pending(&dbus_plan);
        if is_new {
            self.state.emit_update_available(&dbus_plan);
        }
        self.try_install(op).await
    }

    /// Whether policy, consent and postponement let the pending update
    /// install now (preconditions are checked apart: they touch the inhibit
    /// scan).
    pub(crate) fn may_install(&self, inner: &Inner) -> bool {
        let Some(p) = &inner.pending else {
            return false;
        };
        let consented = inner.consented.as_ref() == Some(p.plan.id());
        let auto = self.daemon.config.install.policy == crate::config::InstallPolicy::Auto;
        // A postponement binds to the update it was given for.
        let postponed = inner.postponed_until > self.now().unix()
            && inner.postponed_id.as_ref() == Some(p.plan.id());
        consented || (auto && !postponed)
    }

    /// Within operation `op`: install the pending update if policy,
    /// consent, postponement and preconditions allow; otherwise leave it
    /// waiting. Entering `installing` is decided under the agent's lock
    /// together with the phase model, so a `Cancel` accepted before it
    /// stops the install from starting.
    pub(crate) async fn try_install(&self, op: &Ticket) -> Result<String> {
        // Scanned first (blocking pool), then decided under one lock.
        self.refresh_inhibits().await;
        let unmet = self.unmet_preconditions();
        let decision = {
            let mut inner = self.lock();
            match inner.pending.clone() {
                None => return Ok("nothing to install".to_owned()),
                Some(p) => {
                    let id = p.plan.id().as_str().to_owned();
                    if let Some(deferred) = inner.phase.deferred() {
                        // It starts under its own id once nothing runs.
                        Err(format!(
                            "update {id} verified; its install (operation {deferred}) is deferred until the preconditions hold"
                        ))
                    } else if !self.may_install(&inner) {
                        Err(format!("update {id} verified and waiting for consent"))
                    } else if !unmet.is_empty() {
                        // Uptane consent is for "now": a refused start
                        // ends it (issue 13); Install again when ready.
                        inner.consented = None;
                        Err(format!("install held back: {}", unmet.join("; ")))
                    } else {
                        match inner.phase.enter(op.id, State::Installing) {
                            Ok(()) => Ok(p),
                            Err(crate::phase::Refusal::Cancelled(_)) => {
                                return Err(crate::error::Error::Cancelled("install".into()))
                            }
                            Err(e) => {
                                tracing::error!("operation model: {e}");
                                debug_assert!(false, "operation model: {e}");
                                Ok(p)
                            }
                        }
                    }
                }
            }
        };
        let pending = match decision {
            Ok(p) => p,
            Err(message) => {
                self.status(State::AwaitingConsent, &message);
                if message.starts_with("install held back") {
                    self.progress(State::AwaitingConsent, 0, 0, "", &message);
                }
                return Ok(message);
            }
        };
        self.status(State::Installing, "installing");
        let result = self.install(&pending).await;
        {
            let mut inner = self.lock();
            inner.pending = None;
            inner.consented = None;
        }
        self.state.clear_pending();
        let attacks = std::mem::take(&mut self.lock().attacks);
        // An A/B install through the bootloader (RAUC) is settled after the
        // reboot; until then the manifest reports the running image and no
        // installation result (recover() reports the outcome after the boot).
        let pending_reboot = self
            .daemon
            .store
            .journal()
            .ok()
            .flatten()
            .is_some_and(|j| j.pending_reboot);
        let outcome = match &result {
            Ok(ecus) if pending_reboot => (
                true,
                "pending-reboot",
                format!(
                    "installed on {}; active after the next boot",
                    ecus.join(", ")
                ),
            ),
            Ok(ecus) => (
                true,
                "installed",
                format!("installed on {}", ecus.join(", ")),
            ),
            Err(e) => (false, "install-failed", e.to_string()),
        };
        // Kept (on disk) before the report step, which SIGTERM or Cancel may
        // cut: the next manifest carries it, after a restart too, until the
        // Director accepted one that did.
        if !pending_reboot || result.is_err() {
            self.keep_result(crate::store::UnreportedResult {
                success: outcome.0,
                code: outcome.1.to_owned(),
                message: outcome.2.clone(),
            });
        }
        if let Err(e) = self.report(&attacks).await {
            tracing::warn!("reporting the install failed: {e}");
        }
        // A failed install keeps its verified images for the retry; the next
        // cycle prunes whatever is no longer assigned.
        if result.is_ok() {
            self.prune_cache(&[]);
        }
        result.map(|_| outcome.2)
    }
}

impl UpdateCycle for Agent {
    fn run_cycle(&self, shutdown: CancellationToken) -> BoxFuture<'_, CycleOutcome> {
        Box::pin(async move {
            // Adopt the check-in a CheckForUpdates asked for, or begin the
            // schedule's own; skipped while anything else runs (a
            // provisioning, an install): never two operations at once.
            let (op, may_install) = {
                let mut inner = self.lock();
                match inner.phase.begin_cycle() {
                    Ok(op) => {
                        let may = self.daemon.config.install.policy
                            == crate::config::InstallPolicy::Auto
                            || inner.consented.is_some();
                        (op, may)
                    }
                    Err(busy) => {
                        tracing::info!("scheduled check-in skipped: {busy}");
                        return CycleOutcome::Done;
                    }
                }
            };
            let plan = if may_install {
                Plan::CheckAndInstall
            } else {
                Plan::Check
            };
            self.begin_operation(plan, State::Checking, "checking for updates");
            // Shutdown cancels the cycle like Cancel does, at every long await.
            let cancel = op.cancel.clone();
            let watch = tokio::spawn(async move {
                shutdown.cancelled().await;
                cancel.cancel();
            });
            let result = self.cycle(&op, op.cancel.clone()).await;
            watch.abort();
            let id = self
                .lock()
                .pending
                .as_ref()
                .map(|p| p.plan.id().as_str().to_owned())
                .unwrap_or_default();
            self.finish(&op, &id, &result);
            match result {
                Ok(_) => CycleOutcome::Done,
                Err(e) if attack_of(&e).is_some() => CycleOutcome::Done,
                Err(_) => CycleOutcome::Failed,
            }
        })
    }
}
