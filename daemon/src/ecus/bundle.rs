//! The metadata a secondary verifies, from the daemon's stored trusted
//! metadata.

use super::MetadataBundle;
use crate::config::Verification;
use crate::error::{Error, Result};
use crate::store::{Repo, Role, Store};
use std::path::Path;

fn decode_file_name(stem: &str) -> Option<String> {
    let bytes = stem.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = stem.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The metadata a secondary verifies, from the daemon's stored trusted
/// metadata (original bytes): Director root and targets for partial
/// verification; every stored Director and Image role, delegated roles
/// included, for full verification. "root" is the chain of every root version
/// the Primary verified, oldest first (the ECU skips the ones it already
/// trusts), so an ECU that missed several rotations can follow them.
pub fn metadata_bundle(store: &Store, verification: Verification) -> Result<MetadataBundle> {
    let roles: &[(&str, Role<'static>)] = match verification {
        Verification::Partial => &[("root", Role::Root), ("targets", Role::Targets)],
        Verification::Full => &[
            ("root", Role::Root),
            ("timestamp", Role::Timestamp),
            ("snapshot", Role::Snapshot),
            ("targets", Role::Targets),
        ],
    };
    let mut bundle = MetadataBundle {
        director: stored_roles(store, Repo::Director, roles)?,
        ..MetadataBundle::default()
    };
    if !bundle.director.iter().any(|(n, _)| n == "targets") {
        return Err(Error::Secondary {
            ecu: String::new(),
            reason: "no trusted Director targets stored".into(),
        });
    }
    if verification == Verification::Full {
        bundle.image = stored_roles(store, Repo::Image, roles)?;
        let dir = store
            .metadata_path(Repo::Image, Role::Delegated("x"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut delegated = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let fname = e.file_name().to_string_lossy().into_owned();
                let Some(stem) = fname.strip_suffix(".json") else {
                    continue;
                };
                if stem.starts_with('.') {
                    continue;
                }
                let Some(name) = decode_file_name(stem) else {
                    continue;
                };
                let bytes =
                    std::fs::read(e.path()).map_err(|err| Error::io("read", e.path(), err))?;
                delegated.push((name, bytes));
            }
        }
        delegated.sort();
        bundle.image.extend(delegated);
    }
    Ok(bundle)
}

/// `(name, bytes)` of the stored `roles` of `repo`; "root" is the chain.
fn stored_roles(
    store: &Store,
    repo: Repo,
    roles: &[(&str, Role<'static>)],
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for (name, role) in roles {
        if *role == Role::Root {
            out.extend(
                root_chain(store, repo)?
                    .into_iter()
                    .map(|b| ("root".to_owned(), b)),
            );
        } else if let Some(b) = store.load_metadata(repo, *role)? {
            out.push(((*name).to_owned(), b));
        }
    }
    Ok(out)
}

/// The kept root versions of `repo` ending with the trusted `root.json`
/// (which is also the newest kept one, unless the state directory predates
/// kept roots or holds only the initial root).
fn root_chain(store: &Store, repo: Repo) -> Result<Vec<Vec<u8>>> {
    let mut chain = store.root_chain(repo)?;
    if let Some(current) = store.load_metadata(repo, Role::Root)? {
        if chain.last() != Some(&current) {
            chain.push(current);
        }
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_file_names_decode() {
        assert_eq!(decode_file_name("%2E%2E%2Fx").as_deref(), Some("../x"));
        assert_eq!(decode_file_name("a%2"), None);
    }
}
