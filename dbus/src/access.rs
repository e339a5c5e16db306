//! Who may call what: roles decided from the caller's credentials.
//!
//! The bus policy (`systemd/usr/share/dbus-1/system.d/io.secureev.Ota1.conf`)
//! decides who may talk to the daemon at all and who receives its signals.
//! Within that, each method needs one [`Role`], decided here from the
//! caller's uid and groups as the bus reports them
//! (`org.freedesktop.DBus.GetConnectionCredentials`; supplementary groups
//! from `UnixGroupIDs` where the bus gives them, else from `/etc/group`, the
//! source of truth on a head unit without NSS services):
//!
//! | Role | Methods | Default groups |
//! |---|---|---|
//! | [`Role::Read`] | `GetHistory` (properties and signals: bus policy) | `secureev-ui`, `secureev-vehicle` |
//! | [`Role::Consent`] | `CheckForUpdates`, `Install`, `Postpone`, `Cancel` | `secureev-ui` |
//! | [`Role::Preconditions`] | `SetPrecondition` | `secureev-vehicle` |
//! | [`Role::Provision`] | `Provision` | none (root only) |
//!
//! Root and the daemon's own user hold every role. A refusal is
//! [`crate::OtaError::NotPermitted`] naming the role and the groups that hold
//! it.
//!
//! With [`AccessPolicy::with_polkit`] (as fwupd does), every caller but root
//! and the daemon's user is decided by polkit instead of groups: each role is
//! the action `io.secureev.Ota1.<role>`, asked with
//! `org.freedesktop.PolicyKit1.Authority.CheckAuthorization` for the subject
//! `("system-bus-name", {"name": <sender>})`, no interaction, within a bound.
//! Not authorized is `NotPermitted` naming the action; polkitd absent,
//! failing or not answering in time is [`crate::OtaError::Internal`]
//! ("authorization unavailable"): fail closed, never allowed.

use std::collections::BTreeSet;

use crate::OtaError;

/// What a caller may do (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Read state and history.
    Read,
    /// The HMI: check, consent, postpone, cancel.
    Consent,
    /// Vehicle services: set preconditions (each owned by its setter).
    Preconditions,
    /// End of line or a technician: register the vehicle.
    Provision,
}

impl Role {
    /// The name used in configuration keys and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Consent => "consent",
            Role::Preconditions => "preconditions",
            Role::Provision => "provision",
        }
    }
}

/// Who called, as the bus daemon vouches for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Unix uid.
    pub uid: u32,
    /// Primary and supplementary gids.
    pub gids: BTreeSet<u32>,
}

/// One role's holders: groups by name (for messages) and gid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Holders {
    names: Vec<String>,
    gids: BTreeSet<u32>,
}

/// The role assignment the daemon enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessPolicy {
    /// uids holding every role (root, the daemon's own user).
    trusted_uids: BTreeSet<u32>,
    read: Holders,
    consent: Holders,
    preconditions: Holders,
    provision: Holders,
    /// Everyone may do everything (tests and the fake service only).
    open: bool,
    /// Ask polkit (within this bound) instead of the groups.
    polkit: Option<std::time::Duration>,
}

/// The polkit action id of `role`: `io.secureev.Ota1.<role>`.
pub fn polkit_action(role: Role) -> String {
    format!("io.secureev.Ota1.{}", role.as_str())
}

impl AccessPolicy {
    /// Everyone holds every role. For tests and the example service; the
    /// daemon never uses it.
    pub fn allow_all() -> Self {
        AccessPolicy {
            trusted_uids: BTreeSet::new(),
            read: Holders::default(),
            consent: Holders::default(),
            preconditions: Holders::default(),
            provision: Holders::default(),
            open: true,
            polkit: None,
        }
    }

    /// Roles held by `trusted_uids` (all of them) and by the members of the
    /// groups given per role as `(name, gid)`.
    pub fn new(
        trusted_uids: impl IntoIterator<Item = u32>,
        groups: impl IntoIterator<Item = (Role, String, u32)>,
    ) -> Self {
        let mut p = AccessPolicy {
            trusted_uids: trusted_uids.into_iter().collect(),
            read: Holders::default(),
            consent: Holders::default(),
            preconditions: Holders::default(),
            provision: Holders::default(),
            open: false,
            polkit: None,
        };
        for (role, name, gid) in groups {
            let h = p.holders_mut(role);
            h.names.push(name);
            h.gids.insert(gid);
        }
        p
    }

    fn holders_mut(&mut self, role: Role) -> &mut Holders {
        match role {
            Role::Read => &mut self.read,
            Role::Consent => &mut self.consent,
            Role::Preconditions => &mut self.preconditions,
            Role::Provision => &mut self.provision,
        }
    }

    fn holders(&self, role: Role) -> &Holders {
        match role {
            Role::Read => &self.read,
            Role::Consent => &self.consent,
            Role::Preconditions => &self.preconditions,
            Role::Provision => &self.provision,
        }
    }

    /// Decide every caller but the trusted uids by polkit, each call bounded
    /// by `timeout`; the groups are then not used.
    pub fn with_polkit(mut self, timeout: std::time::Duration) -> Self {
        self.polkit = Some(timeout);
        self
    }

    /// The bound on a polkit check when polkit decides.
    pub fn polkit_timeout(&self) -> Option<std::time::Duration> {
        self.polkit
    }

    /// Whether the policy lets everyone do everything.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether `caller` is root or the daemon's user (holds every role).
    pub fn is_trusted(&self, caller: &Caller) -> bool {
        self.open || self.trusted_uids.contains(&caller.uid)
    }

    /// `Ok` if `caller` holds `role`, else `NotPermitted` naming the role
    /// and who holds it; `method` names the call in the message.
    pub fn check(&self, caller: &Caller, role: Role, method: &str) -> Result<(), OtaError> {
        if self.is_trusted(caller) {
            return Ok(());
        }
        let h = self.holders(role);
        if !h.gids.is_disjoint(&caller.gids) {
            return Ok(());
        }
        let who = if h.names.is_empty() {
            "root only".to_owned()
        } else {
            format!("members of {}", h.names.join(", "))
        };
        Err(OtaError::NotPermitted(format!(
            "{method} needs the {} role ({who}); uid {} does not hold it",
            role.as_str(),
            caller.uid
        )))
    }
}

/// Ask polkit whether the bus name `sender` may perform `role`'s action
/// (no interaction), within `timeout`. `Ok` if authorized, `NotPermitted`
/// naming the action if not, `Internal` if polkit cannot answer.
pub async fn polkit_check(
    conn: &zbus::Connection,
    sender: &str,
    role: Role,
    method: &str,
    timeout: std::time::Duration,
) -> Result<(), OtaError> {
    use std::collections::HashMap;
    use zbus::zvariant::Value;
    let action = polkit_action(role);
    let mut subject_details: HashMap<&str, Value<'_>> = HashMap::new();
    subject_details.insert("name", Value::from(sender));
    let details: HashMap<&str, &str> = HashMap::new();
    let body = (
        ("system-bus-name", subject_details),
        action.as_str(),
        details,
        0u32,
        "",
    );
    let call = conn.call_method(
        Some("org.freedesktop.PolicyKit1"),
        "/org/freedesktop/PolicyKit1/Authority",
        Some("org.freedesktop.PolicyKit1.Authority"),
        "CheckAuthorization",
        &body,
    );
    let unavailable = |why: String| {
        OtaError::Internal(format!(
            "authorization unavailable: polkit did not decide {action} for {method}: {why}"
        ))
    };
    let reply = match tokio::time::timeout(timeout, call).await {
        Err(_) => return Err(unavailable(format!("no answer within {timeout:?}"))),
        Ok(Err(e)) => return Err(unavailable(e.to_string())),
        Ok(Ok(m)) => m,
    };
    let (authorized, _challenge, _details): (bool, bool, HashMap<String, String>) = reply
        .body()
        .deserialize()
        .map_err(|e| unavailable(e.to_string()))?;
    if authorized {
        Ok(())
    } else {
        Err(OtaError::NotPermitted(format!(
            "{method} needs the {} role: polkit does not authorize {action} for this caller",
            role.as_str()
        )))
    }
}

/// The gid of group `name` and the members of every group, from
/// `/etc/group`-format text.
fn parse_group(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.to_owned();
            let _pw = f.next()?;
            let gid = f.next()?.parse().ok()?;
            let members = f
                .next()
                .unwrap_or_default()
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
            Some((name, gid, members))
        })
        .collect()
}

/// The gid of group `name` in the system's group database (`/etc/group`).
pub fn group_gid(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    parse_group(&text)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, gid, _)| gid)
}

/// The primary and supplementary gids of `uid` from `/etc/passwd` and
/// `/etc/group` (when the bus does not report them). Blocking.
pub fn gids_of_uid(uid: u32) -> BTreeSet<u32> {
    gids_from(
        uid,
        &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
        &std::fs::read_to_string("/etc/group").unwrap_or_default(),
    )
}

fn gids_from(uid: u32, passwd: &str, group: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Some((user, gid)) = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>() == Ok(uid))
            .then(|| (f[0].to_owned(), f[3].parse::<u32>().ok()))
    }) else {
        return out;
    };
    out.extend(gid);
    for (_, g, members) in parse_group(group) {
        if members.contains(&user) {
            out.insert(g);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gids: &[u32]) -> Caller {
        Caller {
            uid,
            gids: gids.iter().copied().collect(),
        }
    }

    #[test]
    fn roles_follow_groups_and_refusals_name_the_role() {
        let p = AccessPolicy::new(
            [0, 990],
            [
                (Role::Read, "secureev-ui".into(), 100),
                (Role::Consent, "secureev-ui".into(), 100),
                (Role::Read, "secureev-vehicle".into(), 101),
                (Role::Preconditions, "secureev-vehicle".into(), 101),
            ],
        );
        let ui = caller(1000, &[1000, 100]);
        let vehicle = caller(1001, &[101]);
        let outsider = caller(1002, &[1002]);
        assert!(p.check(&ui, Role::Consent, "Install").is_ok());
        assert!(p.check(&ui, Role::Read, "GetHistory").is_ok());
        let e = p
            .check(&ui, Role::Preconditions, "SetPrecondition")
            .unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::NotPermitted);
        assert!(
            e.to_string()
                .contains("preconditions role (members of secureev-vehicle)"),
            "{e}"
        );
        assert!(p
            .check(&vehicle, Role::Preconditions, "SetPrecondition")
            .is_ok());
        assert!(p.check(&vehicle, Role::Consent, "Install").is_err());
        let e = p.check(&ui, Role::Provision, "Provision").unwrap_err();
        assert!(e.to_string().contains("root only"), "{e}");
        for role in [
            Role::Read,
            Role::Consent,
            Role::Preconditions,
            Role::Provision,
        ] {
            assert!(p.check(&outsider, role, "x").is_err());
            assert!(p.check(&caller(0, &[]), role, "x").is_ok());
            assert!(p.check(&caller(990, &[]), role, "x").is_ok());
        }
    }

    #[test]
    fn groups_come_from_passwd_and_group() {
        let passwd = "root:x:0:0::/root:/bin/sh\nui:x:1000:1000::/home/ui:/bin/sh\n";
        let group =
            "root:x:0:\nui:x:1000:\nsecureev-ui:x:100:ui,other\nsecureev-vehicle:x:101:other\n";
        assert_eq!(gids_from(1000, passwd, group), BTreeSet::from([1000, 100]));
        assert_eq!(gids_from(4242, passwd, group), BTreeSet::new());
    }
}
