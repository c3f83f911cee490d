//! Capabilities: Docker's default set, applied through the bounding and
//! inheritable sets so that a root process inside gets exactly that set and
//! a non-root process gets none (the kernel clears them on `setuid`).

use rustix::thread::CapabilitySet;

/// Docker's default capability set (numbers from `linux/capability.h`):
/// CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
/// NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
pub const DOCKER_DEFAULT: &[u8] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// Drops every capability not in `keep` from the bounding set, sets the
/// inheritable set to `keep`, clears the ambient set. Effective and permitted
/// stay as they are until `setuid`/`execve` recompute them from these.
pub(crate) fn limit(keep: &[u8]) -> std::io::Result<()> {
    let keep_set = keep.iter().fold(CapabilitySet::empty(), |s, c| {
        s | CapabilitySet::from_bits_retain(1 << c)
    });
    for n in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1 << n);
        if keep_set.contains(cap) {
            continue;
        }
        match rustix::thread::capability_is_in_bounding_set(cap) {
            Ok(true) => rustix::thread::remove_capability_from_bounding_set(cap)?,
            Ok(false) => {}
            // Past CAP_LAST_CAP.
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let mut sets = rustix::thread::capabilities(None)?;
    sets.inheritable = keep_set & sets.permitted;
    rustix::thread::set_capabilities(None, sets)?;
    rustix::thread::clear_ambient_capability_set()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_matches_docker() {
        // 14 capabilities; no SYS_ADMIN (21), NET_ADMIN (12), SYS_PTRACE (19).
        assert_eq!(DOCKER_DEFAULT.len(), 14);
        for forbidden in [12, 19, 21, 16, 17] {
            assert!(!DOCKER_DEFAULT.contains(&forbidden));
        }
    }
}
