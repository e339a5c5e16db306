//! Trusted state shared between simulated vehicles where the bytes are
//! identical: the Director root (one for the whole fleet) and the Image
//! repository (the same metadata for every vehicle).
//!
//! A real vehicle verifies the Image repository's metadata itself; here the
//! first vehicle that sees new Image timestamp bytes refreshes the Image
//! repository with the core's [`UpdateClient`] (a TUF run: root chain,
//! timestamp, snapshot, targets, in the client's order), and every vehicle
//! that is served the *same bytes* starts its full verification from that
//! [`RefreshedRepository`] ([`UpdateClient::primary_with_image`], which
//! checks it is still unexpired). Sharing is keyed by the exact bytes, so a
//! vehicle served anything else is verified against them itself. This is
//! what lets 10,000 vehicles with their own keys run on two cores.

use crate::error::{Result, SimError};
use crate::http::{Conn, Dump};
use secureev_uptane::client::{Decision, Failure, RefreshedRepository, Role, Step, UpdateClient};
use secureev_uptane::trusted::TrustedRepository;
use secureev_uptane::{SigningKey, Timestamp};
use std::sync::{Arc, RwLock};

/// One verified state of the Image repository.
#[derive(Debug)]
pub struct ImageState {
    /// Increases with every new verified state.
    pub generation: u64,
    /// The timestamp bytes this state was verified from (empty at start).
    pub timestamp: Vec<u8>,
    /// The refreshed repository (`None` before the first refresh).
    pub refreshed: Option<RefreshedRepository>,
    /// Earliest expiry among its roles: past it, the state is not used.
    pub expires: Option<Timestamp>,
}

/// The fleet's shared trust.
#[derive(Debug)]
pub struct Trust {
    director: TrustedRepository,
    image_root: Vec<u8>,
    image: RwLock<Arc<ImageState>>,
    refresh: tokio::sync::Mutex<()>,
}

impl Trust {
    /// Trust anchored in the Director's and the Image repository's roots (as
    /// provisioned into a vehicle at the factory).
    pub fn new(director_root: &[u8], image_root: &[u8]) -> Result<Self> {
        let director = TrustedRepository::new("director", director_root).map_err(|source| {
            SimError::Verify {
                what: "director root".into(),
                source: Box::new(source),
            }
        })?;
        // Checked once here, so that a bad root fails the run at start.
        TrustedRepository::new("image", image_root).map_err(|source| SimError::Verify {
            what: "image root".into(),
            source: Box::new(source),
        })?;
        Ok(Trust {
            director,
            image_root: image_root.to_vec(),
            image: RwLock::new(Arc::new(ImageState {
                generation: 0,
                timestamp: Vec::new(),
                refreshed: None,
                expires: None,
            })),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    /// The Director's trusted root (verified once, shared): where every
    /// vehicle's Director verification starts.
    pub fn director_root(&self) -> &TrustedRepository {
        &self.director
    }

    fn current(&self) -> Arc<ImageState> {
        match self.image.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The verified Image repository state for the timestamp bytes `ts` a
    /// vehicle was just served, refreshing it over `conn` with the core's
    /// client when the bytes are new.
    pub async fn image_for(
        &self,
        ts: &[u8],
        conn: &Conn,
        key: &SigningKey,
        vin: &str,
        now: Timestamp,
        dump: &Dump,
    ) -> Result<Arc<ImageState>> {
        let cur = self.current();
        if cur.timestamp == ts {
            return fresh(cur, now);
        }
        let _one = self.refresh.lock().await;
        let cur = self.current();
        if cur.timestamp == ts {
            return fresh(cur, now);
        }
        let mut client = UpdateClient::tuf("image", &self.image_root, now).map_err(verify)?;
        loop {
            match client.next_step().map_err(verify)? {
                // The last trusted timestamp is the rollback reference; a
                // new state fetches snapshot and targets again.
                Step::Load {
                    role: Role::Timestamp,
                    ..
                } if !cur.timestamp.is_empty() => client.offer(&cur.timestamp),
                Step::Load { .. } => client.offer_not_found(),
                // The bytes this vehicle was served.
                Step::Fetch(req) if req.role == Role::Timestamp => client.offer(ts),
                Step::Fetch(req) => {
                    let path = format!("/image/{}", req.file);
                    match conn.get(key, vin, &path, now, dump).await? {
                        Some(bytes) => client.offer(&bytes),
                        None => client.offer_not_found(),
                    }
                }
                Step::Persist { .. } => Ok(()),
                Step::Done(Decision::Refreshed) => break,
                Step::Done(other) => {
                    return Err(SimError::Local(format!("image refresh decided {other:?}")))
                }
            }
            .map_err(verify)?;
        }
        let refreshed = client.into_refreshed().map_err(verify)?;
        let expires = earliest_expiry(refreshed.repository());
        let next = Arc::new(ImageState {
            generation: cur.generation + 1,
            timestamp: ts.to_vec(),
            refreshed: Some(refreshed),
            expires,
        });
        match self.image.write() {
            Ok(mut g) => *g = next.clone(),
            Err(p) => *p.into_inner() = next.clone(),
        }
        Ok(next)
    }
}

/// A run of the core's client that stopped: what it was checking and why.
pub fn verify(failure: Failure) -> SimError {
    SimError::Verify {
        what: failure.context().to_owned(),
        source: Box::new(failure.into_error()),
    }
}

fn fresh(state: Arc<ImageState>, now: Timestamp) -> Result<Arc<ImageState>> {
    // Uptane 2.1 §5.4.4.2 (freeze): shared bytes are no excuse for
    // trusting expired metadata.
    match state.expires {
        Some(e) if e <= now => Err(SimError::Expired {
            what: "image metadata".into(),
            expires: e.to_string(),
        }),
        _ => Ok(state),
    }
}

/// The earliest `expires` among the repository's loaded roles.
pub fn earliest_expiry(repo: &TrustedRepository) -> Option<Timestamp> {
    let mut all = vec![repo.root().common.expires_at().ok()];
    all.push(repo.timestamp().and_then(|t| t.common.expires_at().ok()));
    all.push(repo.snapshot().and_then(|t| t.common.expires_at().ok()));
    all.push(repo.targets().and_then(|t| t.common.expires_at().ok()));
    all.into_iter().flatten().min()
}

/// A signed GET that must find the file.
pub async fn required(
    conn: &Conn,
    key: &SigningKey,
    vin: &str,
    path: &str,
    now: Timestamp,
    dump: &Dump,
) -> Result<Vec<u8>> {
    conn.get(key, vin, path, now, dump)
        .await?
        .ok_or_else(|| SimError::Status {
            method: "GET",
            path: path.to_owned(),
            status: 404,
            body: String::new(),
        })
}
