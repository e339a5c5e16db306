//! Trusted state shared between simulated vehicles where the bytes are
//! identical: the Director root (one for the whole fleet) and the Image
//! repository (the same metadata for every vehicle).
//!
//! A real vehicle verifies the Image repository's metadata itself; here the
//! first vehicle that sees new Image timestamp bytes verifies them (and the
//! snapshot and targets they name) with the core, and every vehicle that is
//! served the *same bytes* reuses that verdict. Sharing is keyed by the exact
//! bytes, so a vehicle served anything else verifies it itself. This is what
//! lets 10,000 vehicles with their own keys run on two cores.

use crate::error::{Result, SimError};
use crate::http::{Conn, Dump};
use secureev_uptane::trusted::{TimestampUpdate, TrustedRepository};
use secureev_uptane::{SigningKey, Timestamp};
use std::sync::{Arc, RwLock};

/// One verified state of the Image repository.
#[derive(Debug)]
pub struct ImageState {
    /// Increases with every new verified state.
    pub generation: u64,
    /// The timestamp bytes this state was verified from (empty at start).
    pub timestamp: Vec<u8>,
    /// The trusted repository.
    pub repo: TrustedRepository,
    /// Earliest expiry among its roles: past it, the state is not used.
    pub expires: Option<Timestamp>,
}

/// The fleet's shared trust.
#[derive(Debug)]
pub struct Trust {
    director: TrustedRepository,
    image_root: TrustedRepository,
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
        let image =
            TrustedRepository::new("image", image_root).map_err(|source| SimError::Verify {
                what: "image root".into(),
                source: Box::new(source),
            })?;
        Ok(Trust {
            director,
            image_root: image.clone(),
            image: RwLock::new(Arc::new(ImageState {
                generation: 0,
                timestamp: Vec::new(),
                repo: image,
                expires: None,
            })),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    /// A new Director verification cycle for a vehicle whose last trusted
    /// timestamp was `previous` (empty before its first check-in).
    pub fn director_cycle(&self, previous: &[u8], now: Timestamp) -> TrustedRepository {
        new_cycle(&self.director, previous, now)
    }

    fn current(&self) -> Arc<ImageState> {
        match self.image.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The verified Image repository state for the timestamp bytes `ts` a
    /// vehicle was just served, fetching and verifying snapshot and targets
    /// over `conn` when the bytes are new.
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
        let verify = |what: &str| {
            let what = what.to_owned();
            move |source| SimError::Verify {
                what,
                source: Box::new(source),
            }
        };
        let mut repo = new_cycle(&self.image_root, &cur.timestamp, now);
        let update = repo
            .update_timestamp(ts, now)
            .map_err(verify("image timestamp.json"))?;
        // A new cycle trusts no snapshot or targets yet: fetch both.
        if update == TimestampUpdate::Updated || repo.targets().is_none() {
            let req = repo
                .snapshot_request()
                .map_err(verify("image snapshot.json"))?;
            let path = match req.version {
                Some(v) => format!("/image/{v}.snapshot.json"),
                None => "/image/snapshot.json".to_owned(),
            };
            let bytes = required(conn, key, vin, &path, now, dump).await?;
            repo.update_snapshot(&bytes, now)
                .map_err(verify("image snapshot.json"))?;
            let req = repo
                .targets_request("targets")
                .map_err(verify("image targets.json"))?;
            let path = match req.version {
                Some(v) => format!("/image/{v}.targets.json"),
                None => "/image/targets.json".to_owned(),
            };
            let bytes = required(conn, key, vin, &path, now, dump).await?;
            repo.update_targets(&bytes, now)
                .map_err(verify("image targets.json"))?;
        }
        let expires = earliest_expiry(&repo);
        let next = Arc::new(ImageState {
            generation: cur.generation + 1,
            timestamp: ts.to_vec(),
            repo,
            expires,
        });
        match self.image.write() {
            Ok(mut g) => *g = next.clone(),
            Err(p) => *p.into_inner() = next.clone(),
        }
        Ok(next)
    }
}

/// A verification cycle starts from the trusted root (parsed and verified
/// once, shared) with the last trusted timestamp as the baseline for rollback
/// checks, as the daemon starts each cycle from its stored copies.
pub fn new_cycle(root: &TrustedRepository, previous: &[u8], now: Timestamp) -> TrustedRepository {
    let mut t = root.clone();
    if !previous.is_empty() {
        // An expired stored timestamp is refused but still kept as the
        // rollback baseline; the remote one decides.
        let _ = t.update_timestamp_local(previous, now);
    }
    t
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
