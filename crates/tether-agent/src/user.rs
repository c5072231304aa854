//! Who a command runs as: resolved before fork, applied in the child.

use nix::unistd::{Gid, Group, Uid, User};
use std::ffi::CString;
use std::path::PathBuf;

/// A resolved user: ids, supplementary groups, and what a login would set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: Uid,
    /// Primary group id.
    pub gid: Gid,
    /// Supplementary groups (including the primary one).
    pub groups: Vec<Gid>,
    /// Name, when the user exists in the user database.
    pub name: Option<String>,
    /// Home directory, when known.
    pub home: Option<PathBuf>,
    /// Login shell, when known.
    pub shell: Option<PathBuf>,
}

/// Resolves `name`, `uid` or `uid:gid`.
pub fn resolve(spec: &str) -> Result<Identity, String> {
    if let Some((u, g)) = spec.split_once(':') {
        let uid = parse_id(u, "uid")?;
        let gid = match g.parse::<u32>() {
            Ok(g) => Gid::from_raw(g),
            Err(_) => {
                Group::from_name(g)
                    .map_err(|e| format!("looking up group `{g}`: {e}"))?
                    .ok_or_else(|| format!("no group `{g}`"))?
                    .gid
            }
        };
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        return Ok(Identity {
            uid: Uid::from_raw(uid),
            gid,
            groups: vec![gid],
            name: user.as_ref().map(|u| u.name.clone()),
            home: user.as_ref().map(|u| u.dir.clone()),
            shell: user.map(|u| u.shell),
        });
    }
    let user = if let Ok(uid) = spec.parse::<u32>() {
        match User::from_uid(Uid::from_raw(uid))
            .map_err(|e| format!("looking up uid {uid}: {e}"))?
        {
            Some(u) => u,
            None => {
                // A uid with no entry, as in containers: its own number as group.
                return Ok(Identity {
                    uid: Uid::from_raw(uid),
                    gid: Gid::from_raw(uid),
                    groups: vec![Gid::from_raw(uid)],
                    name: None,
                    home: None,
                    shell: None,
                });
            }
        }
    } else {
        User::from_name(spec)
            .map_err(|e| format!("looking up user `{spec}`: {e}"))?
            .ok_or_else(|| format!("no user `{spec}` in the guest"))?
    };
    let cname = CString::new(user.name.clone()).map_err(|_| "user name has a NUL".to_string())?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid).unwrap_or_else(|_| vec![user.gid]);
    Ok(Identity {
        uid: user.uid,
        gid: user.gid,
        groups,
        name: Some(user.name),
        home: Some(user.dir),
        shell: Some(user.shell),
    })
}

fn parse_id(s: &str, what: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not a {what}: expected a name, a uid, or uid:gid"))
}

/// The agent's own user's login shell, for login shells without a user switch.
pub fn own_shell() -> Option<PathBuf> {
    User::from_uid(Uid::current())
        .ok()
        .flatten()
        .map(|u| u.shell)
}
