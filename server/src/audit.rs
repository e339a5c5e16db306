//! The audit trail: an append-only chain of signed records in the database.
//!
//! Each record's `hash` is the SHA-256 of the canonical JSON (OLPC) of
//! `{seq, at, actor, action, detail, prev}`, where `prev` is the previous
//! record's hash (64 zeros before the first); the audit key signs the hash
//! (ECDSA P-256). A record is appended in the same transaction as the change
//! it records where there is one (enrollment, manifest), so the two commit or
//! roll back together; `IMMEDIATE` write transactions serialise appends, also
//! across processes (`secureev-server operator add` runs beside the server).
//!
//! [`verify`] recomputes every hash, checks every link and signature, and
//! names the first record that fails: an edited, deleted, reordered or
//! inserted record breaks the chain at that point. Whoever holds the audit key
//! and the database could rewrite the whole chain; export it (`audit
//! export`) to a SIEM, and pin the audit public key there, to bound that.

use crate::db::{AuditRow, Tx};
use crate::error::Result;
use crate::keystore::{KeyStore, OnlineKey};
use secureev_uptane::PublicKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Key-store "repository" of the audit key: `keys/audit/log/<keyid>.pem`.
pub const AUDIT_REPO: &str = "audit";
/// Key-store role of the audit key.
pub const AUDIT_ROLE: &str = "log";

/// The hash a record must carry.
pub fn record_hash(
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    detail: &Value,
    prev: &str,
) -> Result<String> {
    let v = json!({
        "seq": seq, "at": at, "actor": actor, "action": action, "detail": detail, "prev": prev,
    });
    let bytes = secureev_uptane::canonical::to_canonical(&v)?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Append one record, chained to the newest, signed by `key`. Returns its `seq`.
pub fn append(
    tx: &Tx<'_>,
    key: &OnlineKey,
    now: i64,
    actor: &str,
    action: &str,
    detail: Value,
) -> Result<i64> {
    let (seq, prev) = match tx.audit_head()? {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_owned()),
    };
    let hash = record_hash(seq, now, actor, action, &detail, &prev)?;
    let sig = key.sign_hex(hash.as_bytes())?;
    tx.insert_audit(&AuditRow {
        seq,
        at: now,
        actor: actor.to_owned(),
        action: action.to_owned(),
        detail: detail.to_string(),
        prev,
        hash,
        keyid: key.keyid().to_owned(),
        sig,
    })?;
    Ok(seq)
}

/// The `admin-request` record of the admin request being served. While a
/// request runs inside [`RequestRecord::scope`], the first write
/// transaction it commits ([`crate::db::Db::write`]) appends this record
/// before committing, so the change and its record commit or roll back
/// together; a crash cannot keep one without the other. A request that
/// commits nothing is recorded after it answers, with its status
/// ([`RequestRecord::scope`] returns whether the record is written).
pub struct RequestRecord {
    key: OnlineKey,
    clock: crate::Clock,
    actor: String,
    detail: Value,
    committed: std::cell::Cell<bool>,
}

tokio::task_local! {
    static ADMIN_REQUEST: RequestRecord;
}

impl RequestRecord {
    /// A record by `actor` (`operator:<name>`) with `detail` (method, path,
    /// route, peer), signed by `key`, stamped by `clock` when appended.
    pub fn new(key: OnlineKey, clock: crate::Clock, actor: String, detail: Value) -> Self {
        RequestRecord {
            key,
            clock,
            actor,
            detail,
            committed: std::cell::Cell::new(false),
        }
    }

    /// Run `f` (the handler) with this record pending; returns its output
    /// and whether the record was committed with a change.
    pub async fn scope<F: std::future::Future>(self, f: F) -> (F::Output, bool) {
        ADMIN_REQUEST
            .scope(self, async move {
                let out = f.await;
                let committed = ADMIN_REQUEST.with(|r| r.committed.get());
                (out, committed)
            })
            .await
    }
}

/// Inside a write transaction, just before it commits: append the pending
/// admin-request record, if a request is being served and its record is not
/// written yet. Returns whether it appended one.
pub fn append_pending(tx: &Tx<'_>) -> Result<bool> {
    ADMIN_REQUEST
        .try_with(|r| {
            if r.committed.get() {
                return Ok(false);
            }
            let mut detail = r.detail.clone();
            detail["recorded"] = json!("with-change");
            append(tx, &r.key, (r.clock)(), &r.actor, "admin-request", detail)?;
            Ok(true)
        })
        .unwrap_or(Ok(false))
}

/// After the transaction that [`append_pending`] wrote to committed.
pub fn pending_committed() {
    let _ = ADMIN_REQUEST.try_with(|r| r.committed.set(true));
}

/// Why a record fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Broken {
    /// A record is missing or out of order.
    #[error(
        "record {seq}: expected sequence number {expected} (a record was deleted or inserted)"
    )]
    Sequence {
        /// The record's number.
        seq: i64,
        /// The number it should have.
        expected: i64,
    },
    /// `prev` is not the previous record's hash.
    #[error("record {seq}: does not chain to the previous record")]
    Link {
        /// The record.
        seq: i64,
    },
    /// The content does not match the stored hash (edited).
    #[error("record {seq}: content does not match its hash (edited)")]
    Hash {
        /// The record.
        seq: i64,
    },
    /// The signature does not verify, or its key is unknown.
    #[error("record {seq}: signature does not verify with audit key {keyid}")]
    Signature {
        /// The record.
        seq: i64,
        /// Key id named in the record.
        keyid: String,
    },
    /// `detail` is not JSON.
    #[error("record {seq}: detail is not JSON")]
    Detail {
        /// The record.
        seq: i64,
    },
}

/// Verify a chain (oldest first) against `keys` (by key id). `Ok(n)`: all `n`
/// records hold; otherwise the first broken one.
pub fn verify(
    records: &[AuditRow],
    keys: &BTreeMap<String, PublicKey>,
) -> std::result::Result<usize, Broken> {
    let mut prev = GENESIS.to_owned();
    for (i, r) in records.iter().enumerate() {
        let expected = i64::try_from(i).unwrap_or(i64::MAX) + 1;
        if r.seq != expected {
            return Err(Broken::Sequence {
                seq: r.seq,
                expected,
            });
        }
        if r.prev != prev {
            return Err(Broken::Link { seq: r.seq });
        }
        let detail: Value =
            serde_json::from_str(&r.detail).map_err(|_| Broken::Detail { seq: r.seq })?;
        let hash = record_hash(r.seq, r.at, &r.actor, &r.action, &detail, &r.prev)
            .map_err(|_| Broken::Detail { seq: r.seq })?;
        if hash != r.hash {
            return Err(Broken::Hash { seq: r.seq });
        }
        let ok = keys
            .get(&r.keyid)
            .is_some_and(|k| k.verify_hex(r.hash.as_bytes(), &r.sig));
        if !ok {
            return Err(Broken::Signature {
                seq: r.seq,
                keyid: r.keyid.clone(),
            });
        }
        prev = r.hash.clone();
    }
    Ok(records.len())
}

/// Load the audit signing key from the key store, creating it on first use.
pub fn load_or_create_key(store: &KeyStore) -> Result<OnlineKey> {
    match store.load_optional(AUDIT_REPO, AUDIT_ROLE)?.pop() {
        Some(k) => Ok(k),
        None => store.generate(AUDIT_REPO, AUDIT_ROLE),
    }
}

/// The audit public keys of a key store (current and retired), by key id.
pub fn public_keys(store: &KeyStore) -> Result<BTreeMap<String, PublicKey>> {
    let mut out = BTreeMap::new();
    for role in [AUDIT_ROLE, "log.retired"] {
        for k in store.load_optional(AUDIT_REPO, role)? {
            out.insert(k.keyid().to_owned(), k.verifying_key().clone());
        }
    }
    Ok(out)
}

/// Every record, oldest first.
pub fn all_records(tx: &Tx<'_>) -> Result<Vec<AuditRow>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = tx.audit_records(after, 10_000)?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        out.extend(batch);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn chain(n: usize) -> (Vec<AuditRow>, BTreeMap<String, PublicKey>) {
        let db = Db::open_in_memory().unwrap();
        let key = OnlineKey::generate_p256();
        for i in 0..n {
            db.write(|tx| {
                append(
                    tx,
                    &key,
                    100 + i as i64,
                    "operator:a",
                    "test",
                    json!({"i": i}),
                )
            })
            .unwrap();
        }
        let recs = db.read(all_records).unwrap();
        let keys = BTreeMap::from([(key.keyid().to_owned(), key.verifying_key().clone())]);
        (recs, keys)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (recs, keys) = chain(5);
        assert_eq!(verify(&recs, &keys), Ok(5));
    }

    #[test]
    fn each_kind_of_tampering_names_the_record() {
        let (recs, keys) = chain(5);
        let mut edited = recs.clone();
        edited[2].detail = json!({"i": 99}).to_string();
        assert_eq!(verify(&edited, &keys), Err(Broken::Hash { seq: 3 }));
        let mut deleted = recs.clone();
        deleted.remove(1);
        assert!(matches!(
            verify(&deleted, &keys),
            Err(Broken::Sequence { seq: 3, .. })
        ));
        // Rehashed after an edit but not re-signed.
        let mut rehashed = recs.clone();
        rehashed[3].action = "other".into();
        rehashed[3].hash = record_hash(
            4,
            rehashed[3].at,
            "operator:a",
            "other",
            &json!({"i": 3}),
            &rehashed[3].prev,
        )
        .unwrap();
        assert!(matches!(
            verify(&rehashed, &keys),
            Err(Broken::Signature { seq: 4, .. })
        ));
        let mut relinked = recs;
        relinked[4].prev = GENESIS.into();
        assert_eq!(verify(&relinked, &keys), Err(Broken::Link { seq: 5 }));
    }
}
