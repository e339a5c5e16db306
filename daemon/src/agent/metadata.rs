//! Step 1 of a cycle: full verification (Uptane 2.1 §5.4.4.2) of the Director
//! and Image repository, persisting the exact bytes accepted.
//!
//! The order of the checks is the core's: this is the I/O loop around
//! [`secureev_uptane::client::UpdateClient`], the same state machine that
//! `secureev-ecu`, the conformance client and the attack fixtures drive. It
//! answers [`Step::Load`] from the [`crate::store::Store`], [`Step::Fetch`]
//! from the backend (each request within its size cap), writes every
//! [`Step::Persist`] at once, and stops at [`Step::Done`].

use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::fetch::backend::Repository;
use crate::store::{Repo, Role};
use secureev_uptane::client::{
    self, Decision, Failure, Repo as CoreRepo, Role as CoreRole, Step, UpdateClient,
};
use secureev_uptane::uptane::UpdatePlan;
use secureev_uptane::Timestamp;
use secureev_uptane::Verified;
use tokio_util::sync::CancellationToken;

/// The store's and the backend's names for a repository of the core's client.
fn repos(repo: CoreRepo) -> (Repo, Repository) {
    match repo {
        CoreRepo::Director => (Repo::Director, Repository::Director),
        CoreRepo::Image => (Repo::Image, Repository::Image),
    }
}

/// The store's name for a role of the core's client.
fn store_role(role: &CoreRole) -> Role<'_> {
    match role {
        CoreRole::Root => Role::Root,
        CoreRole::Timestamp => Role::Timestamp,
        CoreRole::Snapshot => Role::Snapshot,
        CoreRole::Targets => Role::Targets,
        CoreRole::Delegated(name) => Role::Delegated(name),
    }
}

/// A core failure as the daemon's error, named by repository and file (or by
/// the check) as the core reports it.
fn uptane(f: Failure) -> Error {
    let what = f.context().to_owned();
    Error::uptane(what, f.into_error())
}

impl Agent {
    /// Steps 1–10 of full verification; returns the verified plan.
    pub(crate) async fn verify(
        &self,
        now: Timestamp,
        cancel: &CancellationToken,
    ) -> Result<Verified<UpdatePlan>> {
        let store = &self.daemon.store;
        let trusted_root = |repo: Repo| {
            store
                .load_metadata(repo, Role::Root)?
                .ok_or_else(|| Error::CorruptState {
                    path: store.metadata_path(repo, Role::Root),
                    reason: "no trusted root".into(),
                })
        };
        let mut client = UpdateClient::primary(
            self.vehicle()?,
            &trusted_root(Repo::Director)?,
            &trusted_root(Repo::Image)?,
            now,
        )
        .map_err(uptane)?
        .with_director_layout(self.daemon.config.trust.director_layout.to_core());
        loop {
            match client.next_step().map_err(uptane)? {
                Step::Load { repo, role } => {
                    let (repo, _) = repos(repo);
                    match store.load_metadata(repo, store_role(&role))? {
                        Some(bytes) => client.offer(&bytes),
                        None => client.offer_not_found(),
                    }
                    .map_err(uptane)?;
                }
                Step::Fetch(request) => {
                    if cancel.is_cancelled() {
                        return Err(Error::Cancelled("check".into()));
                    }
                    let (repo, which) = repos(request.repo);
                    let served = self
                        .backend
                        .get_meta(which, &request.file, request.max_length, now)
                        .await?;
                    match served {
                        Some(bytes) => client.offer(&bytes),
                        // TUF: a 404/403 for root N+1 ends the root chain.
                        None if request.optional() => client.offer_not_found(),
                        None => {
                            return Err(Error::HttpStatus {
                                url: format!("{} {}", repo.as_str(), request.file),
                                status: 404,
                            })
                        }
                    }
                    .map_err(uptane)?;
                }
                Step::Persist {
                    repo,
                    role,
                    version,
                    bytes,
                } => {
                    let (repo, _) = repos(repo);
                    if role == CoreRole::Root {
                        // Every root version, for secondaries that are
                        // several rotations behind.
                        store.save_root_version(repo, version, &bytes)?;
                    }
                    store.save_metadata(repo, store_role(&role), &bytes)?;
                }
                Step::Done(Decision::Plan(plan)) => {
                    if client.freshness(CoreRepo::Director) == client::Freshness::Unchanged {
                        // Uptane 2.1 §5.4.4.2 step 4: nothing new from the
                        // Director; the decision is the stored one, re-checked.
                        tracing::debug!("director: no new metadata");
                    }
                    self.daemon
                        .clock
                        .record_verification(&self.daemon.store, now)?;
                    // The proof itself goes on: download takes it, not a copy.
                    return Ok(plan);
                }
                Step::Done(other) => {
                    return Err(Error::uptane(
                        "full verification",
                        secureev_uptane::Error::Workflow(format!("unexpected decision {other:?}")),
                    ))
                }
            }
        }
    }
}
