//! Namespaces: which ones a run unshares, the uid/gid maps of its user
//! namespace (written from outside by the parent), and bringing up loopback
//! in a fresh network namespace (one `RTM_NEWLINK` over rtnetlink).

use std::os::fd::AsRawFd;

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::spec::Network;

/// One line of `/proc/<pid>/uid_map` (or `gid_map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id outside.
    pub outside: u32,
    /// Number of ids.
    pub count: u32,
}

impl IdMap {
    /// Maps `outside` to root inside, and nothing else (`unshare
    /// --map-root-user`): only uid/gid 0 exist inside, `setgroups` is denied.
    pub fn root(outside: u32) -> Self {
        IdMap {
            inside: 0,
            outside,
            count: 1,
        }
    }
}

/// Reads the caller's subordinate id ranges from `/etc/subuid`-style
/// `contents` (`name:start:count` or `uid:start:count` lines) and returns the
/// map "caller → 0, first range → 1…". `None` when the user has no range.
pub fn subid_map(contents: &str, user: &str, id: u32) -> Option<Vec<IdMap>> {
    let id_s = id.to_string();
    contents.lines().find_map(|l| {
        let mut it = l.trim().split(':');
        let (who, start, count) = (it.next()?, it.next()?, it.next()?);
        if who != user && who != id_s {
            return None;
        }
        let (start, count) = (start.parse().ok()?, count.parse().ok()?);
        Some(vec![
            IdMap::root(id),
            IdMap {
                inside: 1,
                outside: start,
                count,
            },
        ])
    })
}

/// The namespaces the monitor unshares for a run.
pub(crate) fn clone_flags(userns: bool, network: Network) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWCGROUP;
    if userns {
        f |= CloneFlags::CLONE_NEWUSER;
    }
    if network == Network::None {
        f |= CloneFlags::CLONE_NEWNET;
    }
    f
}

/// Whether `setgroups` will be usable inside: not when an unprivileged
/// caller maps only its own ids (the kernel requires `setgroups` = deny).
pub(crate) fn setgroups_allowed(euid: u32, uid_map: &[IdMap]) -> bool {
    euid == 0 || !is_self_map(euid, uid_map)
}

fn is_self_map(id: u32, map: &[IdMap]) -> bool {
    matches!(map, [m] if m.outside == id && m.count == 1)
}

fn render(map: &[IdMap]) -> String {
    map.iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect()
}

/// Writes the id maps of `pid`'s user namespace: directly when root or when
/// mapping only the caller's own ids, through the setuid `newuidmap` /
/// `newgidmap` helpers (package `uidmap`) for subordinate ranges.
pub(crate) async fn write_id_maps(
    pid: u32,
    uid_map: &[IdMap],
    gid_map: &[IdMap],
) -> Result<(), Error> {
    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    let proc = format!("/proc/{pid}");
    let write = |file: &str, data: String| {
        let path = format!("{proc}/{file}");
        std::fs::write(&path, data).map_err(|e| Error::host(format!("writing {path}"), e))
    };
    if euid == 0 {
        write("uid_map", render(uid_map))?;
        return write("gid_map", render(gid_map));
    }
    if is_self_map(euid, uid_map) && is_self_map(egid, gid_map) {
        write("setgroups", "deny".into())?;
        write("uid_map", render(uid_map))?;
        return write("gid_map", render(gid_map));
    }
    for (tool, map) in [("newuidmap", uid_map), ("newgidmap", gid_map)] {
        let mut cmd = tokio::process::Command::new(tool);
        cmd.arg(pid.to_string());
        for m in map {
            cmd.args([
                m.inside.to_string(),
                m.outside.to_string(),
                m.count.to_string(),
            ]);
        }
        let out = cmd
            .output()
            .await
            .map_err(|e| Error::host(format!("running {tool} (package uidmap)"), e))?;
        if !out.status.success() {
            return Err(Error::host(
                format!("{tool} {pid}"),
                std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            ));
        }
    }
    Ok(())
}

/// Whether this kernel lets the current user create user namespaces, as far
/// as sysctls tell (AppArmor or seccomp policies may still refuse).
pub fn user_namespaces_allowed() -> bool {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return false;
    }
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return false;
    }
    read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() != Some("1")
}

/// Sets `IFF_UP` on `lo` with one `RTM_NEWLINK` request.
pub(crate) fn loopback_up() -> std::io::Result<()> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        socket,
    };
    let index = nix::net::if_::if_nametoindex("lo")?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    let msg = newlink_up(index);
    sendto(
        fd.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    parse_ack(&buf[..n])
}

const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const IFF_UP: u32 = 1;

fn newlink_up(index: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    m.extend_from_slice(&RTM_NEWLINK.to_ne_bytes()); // nlmsg_type
    m.extend_from_slice(&(1u16 | 4).to_ne_bytes()); // NLM_F_REQUEST | NLM_F_ACK
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid
    m.extend_from_slice(&[0, 0]); // ifi_family AF_UNSPEC, pad
    m.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    m.extend_from_slice(&index.to_ne_bytes()); // ifi_index
    m.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    m.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    m
}

fn parse_ack(b: &[u8]) -> std::io::Result<()> {
    let bad = || std::io::Error::other("malformed rtnetlink reply");
    let ty = u16::from_ne_bytes(b.get(4..6).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    if ty != NLMSG_ERROR {
        return Err(bad());
    }
    let code = i32::from_ne_bytes(
        b.get(16..20)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    if code == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(-code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_mode_and_network() {
        let f = clone_flags(false, Network::Host);
        assert!(f.contains(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS));
        assert!(!f.contains(CloneFlags::CLONE_NEWNET) && !f.contains(CloneFlags::CLONE_NEWUSER));
        let f = clone_flags(true, Network::None);
        assert!(f.contains(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUSER));
    }

    #[test]
    fn setgroups_only_denied_for_self_maps() {
        assert!(setgroups_allowed(0, &[IdMap::root(0)]));
        assert!(!setgroups_allowed(1000, &[IdMap::root(1000)]));
        let ranges = subid_map("alice:100000:65536\n", "alice", 1000).unwrap();
        assert!(setgroups_allowed(1000, &ranges));
        assert_eq!(render(&ranges), "0 1000 1\n1 100000 65536\n");
        assert!(subid_map("bob:1:2\n", "alice", 1000).is_none());
        assert!(subid_map("1000:5:6\n", "alice", 1000).is_some());
    }

    #[test]
    fn netlink_message_layout() {
        let m = newlink_up(1);
        assert_eq!(m.len(), 32);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 1);
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(parse_ack(&ack).is_ok());
        ack[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert!(parse_ack(&ack).is_err());
        assert!(parse_ack(&[0; 3]).is_err());
    }
}
