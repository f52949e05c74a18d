//! Who is connecting, and whether they may: the kernel's peer credentials
//! (`SO_PEERCRED` on Linux, `getpeereid` on macOS, both behind tokio's
//! `UnixStream::peer_cred`) and the group that grants access.

use std::ffi::CString;

use edr_config::api::API_GROUP;

use crate::wire::PeerInfo;

/// Who may use a socket besides root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Members of the group [`API_GROUP`]: the root service's socket.
    Group,
    /// This one uid: an agent a user runs (the menu-bar tray's engine)
    /// serves that user and nobody else.
    Owner(u32),
}

impl Access {
    /// The access a socket made by this process gets: [`Access::Group`]
    /// as root, else [`Access::Owner`] with our effective uid.
    pub fn for_this_process() -> Access {
        // SAFETY: geteuid has no side effects.
        match unsafe { libc::geteuid() } {
            0 => Access::Group,
            uid => Access::Owner(uid),
        }
    }
}

/// The credentials of one connection and what they allow.
#[derive(Debug, Clone)]
pub struct Peer {
    pub info: PeerInfo,
    pub authorized: bool,
    pub access: Access,
}

impl Peer {
    /// The refusal an unauthorized peer gets, naming who may.
    pub fn refusal(&self) -> String {
        match self.access {
            Access::Group => format!(
                "uid {} may not use the edr-agent API: only root and members of the group `{API_GROUP}` may \
                 (an administrator adds a user with `edr-agent service install --operator USER` \
                 or `usermod -aG {API_GROUP} USER`; log in again afterwards)",
                self.info.uid
            ),
            Access::Owner(owner) => format!(
                "uid {} may not use this edr-agent API: the agent runs as uid {owner} and serves \
                 only that user and root",
                self.info.uid
            ),
        }
    }
}

/// Decides for the peer: uid 0 always; under [`Access::Group`] a member of
/// [`API_GROUP`], under [`Access::Owner`] that uid only. Membership is the
/// union of the groups the peer process holds (its primary gid and, on
/// Linux, the supplementary groups of `/proc/<pid>/status`) and the groups
/// the user database gives its uid (`getgrouplist`). Blocking (the user
/// database may be remote): call it off the runtime threads.
pub fn authorize(info: PeerInfo, access: Access) -> Peer {
    if info.uid == 0 {
        return Peer {
            info,
            authorized: true,
            access,
        };
    }
    if let Access::Owner(owner) = access {
        return Peer {
            authorized: info.uid == owner,
            info,
            access,
        };
    }
    let Some(group) = group_gid(API_GROUP) else {
        return Peer {
            info,
            authorized: false,
            access,
        };
    };
    let authorized = info.gid == group
        || info
            .pid
            .is_some_and(|pid| process_groups(pid).contains(&group))
        || user_groups(info.uid).contains(&group);
    Peer {
        info,
        authorized,
        access,
    }
}

/// The gid of a group name, if the group exists.
pub fn group_gid(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: zeroed `group` is a valid out-parameter for getgrnam_r.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

/// The supplementary groups a live process holds (Linux: `Groups:` of
/// `/proc/<pid>/status`); empty elsewhere or if it is gone.
fn process_groups(pid: i32) -> Vec<u32> {
    if !cfg!(target_os = "linux") {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The login name of this process's real user, from the user database
/// (what `--operator` of `service install` takes).
pub fn current_user_name() -> Option<String> {
    // SAFETY: getuid has no side effects.
    let uid = unsafe { libc::getuid() };
    with_passwd(uid, |pw| {
        if pw.pw_name.is_null() {
            return None;
        }
        // SAFETY: pw_name is a NUL-terminated string in getpwuid_r's
        // buffer, alive for this call.
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
        name.to_str().ok().map(str::to_string)
    })
    .flatten()
}

/// The groups the user database gives a uid (primary included).
fn user_groups(uid: u32) -> Vec<u32> {
    with_passwd(uid, |pw| grouplist(pw.pw_name, pw.pw_gid)).unwrap_or_default()
}

/// Runs `f` on `uid`'s user database entry, whose strings live only as
/// long as the call; None when there is no entry.
fn with_passwd<T>(uid: u32, f: impl FnOnce(&libc::passwd) -> T) -> Option<T> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: zeroed `passwd` is a valid out-parameter for getpwuid_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some(f(&pw))
}

#[cfg(not(target_os = "macos"))]
fn grouplist(name: *const libc::c_char, gid: libc::gid_t) -> Vec<u32> {
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: `name` points into the getpwuid_r buffer, alive here;
        // `groups` has room for `count` entries.
        let rc = unsafe { libc::getgrouplist(name, gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        // Too small: `count` holds the size needed.
        if count <= n || n >= 65536 {
            return Vec::new();
        }
        n = count;
    }
}

#[cfg(target_os = "macos")]
fn grouplist(name: *const libc::c_char, gid: libc::gid_t) -> Vec<u32> {
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::c_int; n as usize];
        let mut count = n;
        // SAFETY: as above; macOS takes `int` group ids.
        let rc = unsafe {
            libc::getgrouplist(name, gid as libc::c_int, groups.as_mut_ptr(), &mut count)
        };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups.into_iter().map(|g| g as u32).collect();
        }
        if n >= 65536 {
            return Vec::new();
        }
        n *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_authorized_and_nobody_is_not() {
        let root = authorize(
            PeerInfo {
                uid: 0,
                gid: 0,
                pid: None,
            },
            Access::Group,
        );
        assert!(root.authorized);
        let nobody = authorize(
            PeerInfo {
                uid: 65534,
                gid: 65534,
                pid: None,
            },
            Access::Group,
        );
        assert!(!nobody.authorized);
        assert!(
            nobody.refusal().contains("`edr-agent`"),
            "{}",
            nobody.refusal()
        );
    }

    #[test]
    fn an_owner_socket_admits_its_owner_and_root_only() {
        let peer = |uid| PeerInfo {
            uid,
            gid: uid,
            pid: None,
        };
        assert!(authorize(peer(1000), Access::Owner(1000)).authorized);
        assert!(authorize(peer(0), Access::Owner(1000)).authorized);
        let other = authorize(peer(1001), Access::Owner(1000));
        assert!(!other.authorized);
        assert!(
            other.refusal().contains("runs as uid 1000"),
            "{}",
            other.refusal()
        );
    }

    #[test]
    fn the_root_user_database_is_read() {
        assert!(user_groups(0).contains(&0));
        assert_eq!(group_gid("root"), Some(0));
        assert_eq!(group_gid("no-such-group-edr"), None);
    }
}
