//! Operators of the admin API: named API tokens with roles.
//!
//! A token is `sevop_<id>.<secret>`: the id (16 hex digits) finds the
//! operator, the secret (64 hex digits, 256 random bits) proves it. Only the
//! SHA-256 of the secret is stored, and it is compared in constant time. A
//! revoked operator's token is refused on its next request (the table is read
//! on every request, nothing is cached).
//!
//! Roles ([`Role`]) are independent grants; every role may read (`viewer`).
//! Which role each admin route needs is one table, [`required_role`]; a route
//! missing from it needs `key-admin`, so a new route is closed until someone
//! decides.

use crate::db::Tx;
use crate::error::{Error, Result};
use axum::http::Method;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of operator tokens.
pub const TOKEN_PREFIX: &str = "sevop_";

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Role {
    /// Read everything (every role includes this).
    Viewer,
    /// Upload and publish images; assignments, campaigns and rollouts.
    ReleaseManager,
    /// Vehicles: enrollment credentials, registration, ECU replacement.
    FleetAdmin,
    /// Key rotations, Director root changes, online keys.
    KeyAdmin,
}

impl Role {
    /// All roles.
    pub const ALL: [Role; 4] = [
        Role::Viewer,
        Role::ReleaseManager,
        Role::FleetAdmin,
        Role::KeyAdmin,
    ];

    /// The role's name (`viewer`, `release-manager`, `fleet-admin`, `key-admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::ReleaseManager => "release-manager",
            Role::FleetAdmin => "fleet-admin",
            Role::KeyAdmin => "key-admin",
        }
    }

    /// Parse a role name.
    pub fn parse(s: &str) -> Result<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "unknown role {s:?}: viewer, release-manager, fleet-admin or key-admin"
                ))
            })
    }
}

/// An authenticated operator (a request extension on the admin listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Name.
    pub name: String,
    /// Granted roles.
    pub roles: Vec<Role>,
}

impl Operator {
    /// Whether the operator holds `role` (every operator may view).
    pub fn may(&self, role: Role) -> bool {
        role == Role::Viewer || self.roles.contains(&role)
    }
}

fn parse_roles(s: &str) -> Vec<Role> {
    s.split(',').filter_map(|r| Role::parse(r).ok()).collect()
}

fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Create an operator; returns the token, which is shown once and never stored.
pub fn add(tx: &Tx<'_>, name: &str, roles: &[Role], now: i64) -> Result<String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return Err(Error::BadRequest(
            "operator names are 1-64 characters of A-Z a-z 0-9 - _ . @".into(),
        ));
    }
    if roles.is_empty() {
        return Err(Error::BadRequest("give at least one role".into()));
    }
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    let id = secureev_uptane::manifest::random_nonce()[..16].to_owned();
    let secret =
        secureev_uptane::manifest::random_nonce() + &secureev_uptane::manifest::random_nonce();
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    tx.insert_operator(&id, name, &names.join(","), &secret_digest(&secret), now)?;
    Ok(format!("{TOKEN_PREFIX}{id}.{secret}"))
}

/// Authenticate a bearer token. Every failure is the same
/// [`Error::Unauthorized`] to the client; the detail goes to the log.
pub fn authenticate(tx: &Tx<'_>, token: &str) -> Result<Operator> {
    let refused = |why: &str| Error::Unauthorized(format!("operator token: {why}"));
    let (id, secret) = token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|t| t.split_once('.'))
        .ok_or_else(|| refused("malformed"))?;
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) || secret.len() > 128 {
        return Err(refused("malformed"));
    }
    let row = tx.operator(id)?;
    let given = secret_digest(secret);
    // Compare even when the id is unknown, against a digest no secret has, so
    // the time taken does not tell which ids exist.
    let stored = row.as_ref().map(|r| r.digest.clone()).unwrap_or_default();
    let stored: [u8; 32] = stored.try_into().unwrap_or([0xff; 32]);
    let equal: bool = given.ct_eq(&stored).into();
    match row {
        Some(r) if equal && r.revoked_at.is_none() => Ok(Operator {
            name: r.name,
            roles: parse_roles(&r.roles),
        }),
        Some(r) if equal => Err(refused(&format!("operator {} is revoked", r.name))),
        _ => Err(refused("unknown or wrong token")),
    }
}

/// The role an admin route needs. `path` is the route's template as
/// registered (`/admin/vehicles/{vin}`).
pub fn required_role(method: &Method, path: &str) -> Role {
    match (method.as_str(), path) {
        ("GET", _) if path.starts_with("/admin/") => Role::Viewer,
        ("PUT", "/admin/blobs")
        | ("POST", "/admin/image/targets")
        | ("POST", "/admin/assignments")
        | ("DELETE", "/admin/assignments/{id}")
        | ("POST", "/admin/campaigns")
        | ("POST", "/admin/rollouts")
        | ("POST", "/admin/rollouts/{id}/start")
        | ("POST", "/admin/rollouts/{id}/pause")
        | ("POST", "/admin/rollouts/{id}/resume")
        | ("POST", "/admin/rollouts/{id}/cancel") => Role::ReleaseManager,
        ("POST", "/admin/vehicles")
        | ("PUT", "/admin/vehicles/{vin}/ecus/{serial}")
        | ("POST", "/admin/enrollments") => Role::FleetAdmin,
        // Key rotations, Director root changes and online keys; and anything
        // not listed above.
        _ => Role::KeyAdmin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn tokens_authenticate_until_revoked_and_nothing_else_does() {
        let db = Db::open_in_memory().unwrap();
        let token = db
            .write(|tx| add(tx, "alice", &[Role::ReleaseManager], 1))
            .unwrap();
        let op = db.read(|tx| authenticate(tx, &token)).unwrap();
        assert_eq!(op.name, "alice");
        assert!(op.may(Role::Viewer) && op.may(Role::ReleaseManager));
        assert!(!op.may(Role::KeyAdmin) && !op.may(Role::FleetAdmin));
        // A wrong secret with the right id, a truncated token, garbage.
        let (head, _) = token.split_once('.').unwrap();
        for bad in [
            format!("{head}.{}", "0".repeat(64)),
            token[..token.len() - 1].to_owned(),
            "sevop_".into(),
            String::new(),
        ] {
            assert!(matches!(
                db.read(|tx| authenticate(tx, &bad)),
                Err(Error::Unauthorized(_))
            ));
        }
        assert!(db.write(|tx| tx.revoke_operator("alice", 2)).unwrap());
        assert!(matches!(
            db.read(|tx| authenticate(tx, &token)),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn rotations_need_key_admin_and_unknown_routes_too() {
        assert_eq!(
            required_role(&Method::POST, "/admin/director/rotate"),
            Role::KeyAdmin
        );
        assert_eq!(
            required_role(&Method::POST, "/admin/image/root/rotate"),
            Role::KeyAdmin
        );
        assert_eq!(
            required_role(&Method::POST, "/admin/something-new"),
            Role::KeyAdmin
        );
        assert_eq!(required_role(&Method::GET, "/admin/vehicles"), Role::Viewer);
        for action in ["start", "pause", "resume", "cancel"] {
            assert_eq!(
                required_role(&Method::POST, &format!("/admin/rollouts/{{id}}/{action}")),
                Role::ReleaseManager
            );
        }
        assert_eq!(
            required_role(&Method::POST, "/admin/rollouts"),
            Role::ReleaseManager
        );
        assert_eq!(
            required_role(&Method::GET, "/admin/rollouts/{id}"),
            Role::Viewer
        );
    }
}
