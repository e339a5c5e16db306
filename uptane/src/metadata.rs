//! The TUF 1.0 / Uptane metadata model: root, timestamp, snapshot, targets and
//! delegated targets.
//!
//! Every struct keeps the fields it does not know in `unrecognized`, so metadata
//! from newer writers survives a round trip. These types are built only from
//! already verified `signed` values (see [`crate::verify`]); they are never
//! re-serialised to check a signature.

use crate::error::{Error, Result};
use crate::keys::Key;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The TUF specification version we write.
pub const SPEC_VERSION: &str = "1.0.31";

/// Behaviour shared by the four top-level role types.
pub trait RoleType: serde::de::DeserializeOwned + Serialize {
    /// The `_type` value, e.g. `"root"`.
    const TYPE: &'static str;
    /// Common fields.
    fn common(&self) -> &Common;
}

/// Fields every role has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Common {
    /// `_type`: root, timestamp, snapshot or targets.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF specification version the writer followed. Uptane dialects without it
    /// are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_version: Option<String>,
    /// Monotonic version of this role.
    pub version: u64,
    /// Expiry, `YYYY-MM-DDTHH:MM:SSZ`.
    pub expires: String,
}

impl Common {
    /// New common fields for `type_`.
    pub fn new(type_: &str, version: u64, expires: Timestamp) -> Self {
        Common {
            type_: type_.to_owned(),
            spec_version: Some(SPEC_VERSION.to_owned()),
            version,
            expires: expires.to_string(),
        }
    }

    /// Parsed expiry.
    pub fn expires_at(&self) -> Result<Timestamp> {
        Timestamp::parse(&self.expires)
    }

    /// Whether the role is expired at `now`. TUF: expired when `now >= expires`.
    pub fn is_expired(&self, now: Timestamp) -> Result<bool> {
        Ok(now >= self.expires_at()?)
    }
}

/// Signature entry of a signed envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Key that made the signature.
    pub keyid: String,
    /// Hex signature.
    pub sig: String,
    /// Fields this version does not know (e.g. `method`), kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// A role's keys and threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Authorised key ids.
    pub keyids: Vec<String>,
    /// How many distinct authorised keys must sign.
    pub threshold: u32,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// Root metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// Whether the repository serves `<version>.<role>.json` and hash-prefixed
    /// targets.
    #[serde(default)]
    pub consistent_snapshot: bool,
    /// All keys of the top-level roles, by key id.
    pub keys: BTreeMap<String, Key>,
    /// The top-level roles.
    pub roles: BTreeMap<String, RoleKeys>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

impl RoleType for Root {
    const TYPE: &'static str = "root";
    fn common(&self) -> &Common {
        &self.common
    }
}

impl Root {
    /// Keys and threshold of a top-level role.
    pub fn role(&self, name: &str) -> Result<&RoleKeys> {
        self.roles.get(name).ok_or_else(|| Error::MissingMeta {
            role: "root".into(),
            missing: format!("role {name}"),
        })
    }
}

/// Length, hashes and version of a metadata file, as listed by timestamp and
/// snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// Version of the listed role.
    pub version: u64,
    /// Length in bytes, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Hashes, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// Timestamp metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimestampMeta {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// Exactly one entry: `snapshot.json`.
    pub meta: BTreeMap<String, MetaFile>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

impl RoleType for TimestampMeta {
    const TYPE: &'static str = "timestamp";
    fn common(&self) -> &Common {
        &self.common
    }
}

impl TimestampMeta {
    /// The snapshot entry.
    pub fn snapshot_meta(&self) -> Result<&MetaFile> {
        self.meta
            .get("snapshot.json")
            .ok_or_else(|| Error::MissingMeta {
                role: "timestamp".into(),
                missing: "snapshot.json".into(),
            })
    }
}

/// Snapshot metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// `<role>.json` → version (and optionally length and hashes) of every
    /// targets role.
    pub meta: BTreeMap<String, MetaFile>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

impl RoleType for Snapshot {
    const TYPE: &'static str = "snapshot";
    fn common(&self) -> &Common {
        &self.common
    }
}

/// One target file entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Length in bytes (of the encrypted image when encrypted).
    pub length: u64,
    /// Hashes of the bytes (of the encrypted image when encrypted).
    pub hashes: BTreeMap<String, String>,
    /// Custom fields (Uptane: `ecuIdentifiers`, `hardwareIds`, `releaseCounter`,
    /// `uri`, `encryption`; see [`crate::custom`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// Targets metadata, top-level or delegated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// Target name → file entry.
    pub targets: BTreeMap<String, TargetFile>,
    /// Delegations to other targets roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    /// Unknown fields (e.g. Director `custom`), kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

impl RoleType for Targets {
    const TYPE: &'static str = "targets";
    fn common(&self) -> &Common {
        &self.common
    }
}

/// Delegations of a targets role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegations {
    /// Keys of the delegated roles.
    pub keys: BTreeMap<String, Key>,
    /// Delegated roles, in priority order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<DelegatedRole>>,
    /// TAP 15 succinct hash-bin delegation, instead of `roles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succinct_roles: Option<SuccinctRoles>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// One delegated role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedRole {
    /// Role name.
    pub name: String,
    /// Authorised key ids.
    pub keyids: Vec<String>,
    /// Signature threshold.
    pub threshold: u32,
    /// Whether the search stops at this role when it matches.
    #[serde(default)]
    pub terminating: bool,
    /// Shell-style path patterns this role may list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Hex prefixes of SHA-256 of target paths this role may list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

/// TAP 15 succinct hash-bin delegations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccinctRoles {
    /// Authorised key ids for every bin.
    pub keyids: Vec<String>,
    /// Threshold for every bin.
    pub threshold: u32,
    /// Number of bits of the target path hash that select the bin (1..=32).
    pub bit_length: u32,
    /// Bin role names are `<name_prefix>-<hex bin>`.
    pub name_prefix: String,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub unrecognized: Map<String, Value>,
}

impl SuccinctRoles {
    /// The bin role responsible for `target`.
    pub fn role_for(&self, target: &str) -> String {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(target.as_bytes());
        let first = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let bits = self.bit_length.clamp(1, 32);
        let bin = if bits == 32 {
            first
        } else {
            first >> (32 - bits)
        };
        let width = (bits as usize).div_ceil(4);
        format!("{}-{:0width$x}", self.name_prefix, bin, width = width)
    }

    /// Whether `name` is one of the bins.
    pub fn is_bin(&self, name: &str) -> bool {
        let bits = self.bit_length.clamp(1, 32);
        let width = (bits as usize).div_ceil(4);
        let Some(suffix) = name
            .strip_prefix(self.name_prefix.as_str())
            .and_then(|s| s.strip_prefix('-'))
        else {
            return false;
        };
        suffix.len() == width && u64::from_str_radix(suffix, 16).is_ok_and(|b| b < (1u64 << bits))
    }
}

impl DelegatedRole {
    /// Whether this role is trusted for `target` (TUF 1.0 §5.6.7.2.1).
    pub fn is_delegated_path(&self, target: &str) -> bool {
        if let Some(paths) = &self.paths {
            return paths.iter().any(|p| path_matches(p, target));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            use sha2::{Digest, Sha256};
            let h = hex::encode(Sha256::digest(target.as_bytes()));
            return prefixes.iter().any(|p| h.starts_with(p.as_str()));
        }
        false
    }
}

/// TUF path pattern matching: `/`-separated segments must be equally many, and
/// each segment matches with shell wildcards (`*`, `?`, `[...]`) where `*` never
/// crosses a `/`.
pub fn path_matches(pattern: &str, target: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let t: Vec<&str> = target.split('/').collect();
    p.len() == t.len()
        && p.iter()
            .zip(&t)
            .all(|(p, t)| glob(p.as_bytes(), t.as_bytes()))
}

fn glob(p: &[u8], t: &[u8]) -> bool {
    // Iterative wildcard matcher with backtracking on the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, len)) = class(&p[pi..], t[ti]) {
                        if matched {
                            pi += len;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        // Unclosed bracket: literal, as fnmatch does.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Match a `[...]` class at the start of `p` against `c`; returns (matched, length).
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(1), Some(b'!'));
    if negate {
        i += 1;
    }
    let start = i;
    let mut matched = false;
    while i < p.len() {
        if p[i] == b']' && i > start {
            return Some((matched != negate, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns_follow_fnmatch_per_segment() {
        assert!(path_matches("*", "file.txt"));
        assert!(!path_matches("*", "dir/file.txt"));
        assert!(path_matches("dir/*", "dir/file.txt"));
        assert!(path_matches("dir/*.tar.gz", "dir/a.tar.gz"));
        assert!(!path_matches("dir/*.tar.gz", "dir/a.tar"));
        assert!(path_matches("a/?/c", "a/b/c"));
        assert!(path_matches("ecu-[0-9]*", "ecu-7.bin"));
        assert!(!path_matches("ecu-[!0-9]*", "ecu-7.bin"));
        assert!(path_matches("targets/*/*", "targets/x/y"));
        assert!(!path_matches("targets/*/*", "targets/x"));
        assert!(path_matches("**", "abc"));
        assert!(path_matches("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn succinct_bins_cover_the_hash_space() {
        let s = SuccinctRoles {
            keyids: vec![],
            threshold: 1,
            bit_length: 8,
            name_prefix: "bin".into(),
            unrecognized: Map::new(),
        };
        let r = s.role_for("targetpath");
        assert!(s.is_bin(&r), "{r}");
        assert_eq!(r.len(), "bin-".len() + 2);
        assert!(!s.is_bin("bin-100"));
        assert!(!s.is_bin("other-00"));
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let json = serde_json::json!({
            "_type": "targets", "spec_version": "1.0.0", "version": 3,
            "expires": "2030-01-01T00:00:00Z", "targets": {}, "x-vendor": {"a": 1}
        });
        let t: Targets = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(t.unrecognized["x-vendor"], serde_json::json!({"a": 1}));
        assert_eq!(serde_json::to_value(&t).unwrap(), json);
    }
}
