//! The seam around the kernel: every privileged call the init makes is an
//! [`Op`] executed by a [`Sys`]. [`RealSys`] performs it; [`RecordingSys`]
//! records it, so mount plans and their order are unit-tested without root.
//!
//! Container paths are resolved with `openat2(RESOLVE_IN_ROOT)` against the
//! new root and mounted through `/proc/self/fd/N` (the technique runc uses),
//! so a symlink in an image can never point a mount at a host path.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

use crate::error::SysError;

/// Where an [`Op`] acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// A host path (before `pivot_root`).
    Host(PathBuf),
    /// A container path, resolved inside `root` without leaving it.
    InRoot {
        /// The new root on the host.
        root: PathBuf,
        /// Absolute container path.
        path: String,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Host(p) => write!(f, "{}", p.display()),
            Target::InRoot { path, .. } => write!(f, "<root>{path}"),
        }
    }
}

/// One privileged step of the init.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `PR_SET_PDEATHSIG(SIGKILL)`: die with the monitor.
    ParentDeathKill,
    /// Write `/proc/self/oom_score_adj` (pid 1 undoes the monitor's -1000
    /// so that the program is what the OOM killer picks).
    OomScoreAdj(i32),
    /// Bring up `lo` in the (new) network namespace.
    LoopbackUp,
    /// `sethostname` in the (new) UTS namespace.
    SetHostname(String),
    /// `mount --make-rprivate /`: nothing propagates back to the host.
    MakeRootPrivate,
    /// `mount(2)`.
    Mount {
        /// Source (`None` for remounts); a host path for binds.
        source: Option<String>,
        /// Mount point.
        target: Target,
        /// File system type.
        fstype: Option<String>,
        /// `MS_*` flags.
        flags: u64,
        /// File system options.
        data: Option<String>,
        /// Skip silently when the target does not exist (masked paths that
        /// some kernels lack).
        optional: bool,
    },
    /// Mount an overlay on `target` (`nosuid,nodev`), naming every layer by an `O_PATH`
    /// descriptor (`/proc/self/fd/N`) so that no host path shows in the
    /// run's `/proc/self/mountinfo`.
    Overlay {
        /// Mount point.
        target: PathBuf,
        /// Lower dirs, topmost first.
        lower: Vec<PathBuf>,
        /// Upper dir.
        upper: PathBuf,
        /// Work dir.
        work: PathBuf,
        /// Add `userxattr` (inside a user namespace).
        userxattr: bool,
    },
    /// Remount a mount point `nosuid,nodev` (and read-only), keeping the
    /// flags it already has (those of a bind's source, which the kernel may
    /// lock: noexec, relatime…).
    Remount {
        /// The mount point.
        target: Target,
        /// Also make it read-only.
        readonly: bool,
        /// Bind `target` onto itself first (read-only paths under `/proc`).
        bind_self: bool,
        /// Skip silently when the target does not exist.
        optional: bool,
    },
    /// `mkdir` (existing directories are fine).
    Mkdir {
        /// The directory.
        target: Target,
        /// Its mode.
        mode: u32,
    },
    /// Create an empty file to bind a file onto.
    CreateFile {
        /// The file.
        target: Target,
    },
    /// `symlink(to, target)`.
    Symlink {
        /// What the link points to.
        to: String,
        /// The link.
        target: Target,
    },
    /// Write a new file (secrets, on a tmpfs).
    WriteFile {
        /// The file.
        target: Target,
        /// Contents (never printed).
        data: Vec<u8>,
        /// Mode.
        mode: u32,
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
    },
    /// `chdir(root); pivot_root(".", "."); umount2(".", MNT_DETACH)`: the old
    /// root, and every host path with it, is gone.
    PivotRoot(PathBuf),
    /// Keep only `keep` (capability numbers) in the bounding and inheritable
    /// sets; clear the ambient set.
    LimitCapabilities {
        /// Capability numbers to keep.
        keep: Vec<u8>,
    },
    /// `setgroups` (unless `None`: forbidden in a single-id user namespace),
    /// `setresgid`, `setresuid`.
    SetIds {
        /// uid.
        uid: u32,
        /// gid.
        gid: u32,
        /// Supplementary groups.
        groups: Option<Vec<u32>>,
    },
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// `PR_SET_DUMPABLE(0)`: the program cannot ptrace pid 1 or open its
    /// `/proc/1/exe` (the host's init binary).
    NotDumpable,
    /// Install seccomp filters, in order (the last step: pid 1 and the
    /// program it spawns run under them). See [`crate::seccomp`].
    Seccomp(Vec<crate::seccomp::Program>),
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::ParentDeathKill => write!(f, "pdeathsig SIGKILL"),
            Op::OomScoreAdj(n) => write!(f, "oom_score_adj {n}"),
            Op::LoopbackUp => write!(f, "ip link set lo up"),
            Op::SetHostname(h) => write!(f, "sethostname {h}"),
            Op::MakeRootPrivate => write!(f, "mount --make-rprivate /"),
            Op::Mount {
                source,
                target,
                fstype,
                flags,
                data,
                ..
            } => {
                write!(
                    f,
                    "mount {} on {target} type {} flags {:?}",
                    source.as_deref().unwrap_or("none"),
                    fstype.as_deref().unwrap_or("none"),
                    ms_flags(*flags),
                )?;
                if let Some(d) = data {
                    write!(f, " ({d})")?;
                }
                Ok(())
            }
            Op::Overlay {
                target,
                lower,
                upper,
                work,
                userxattr,
            } => write!(
                f,
                "mount overlay on {} (lower {lower:?}, upper {}, work {}{})",
                target.display(),
                upper.display(),
                work.display(),
                if *userxattr { ", userxattr" } else { "" }
            ),
            Op::Remount {
                target, readonly, ..
            } => write!(
                f,
                "remount {target} nosuid,nodev{}",
                if *readonly { ",ro" } else { "" }
            ),
            Op::Mkdir { target, mode } => write!(f, "mkdir -m {mode:o} {target}"),
            Op::CreateFile { target } => write!(f, "touch {target}"),
            Op::Symlink { to, target } => write!(f, "ln -s {to} {target}"),
            Op::WriteFile {
                target,
                mode,
                uid,
                gid,
                data,
            } => write!(
                f,
                "write {target} ({} bytes, mode {mode:o}, owner {uid}:{gid})",
                data.len()
            ),
            Op::PivotRoot(root) => write!(f, "pivot_root {}", root.display()),
            Op::LimitCapabilities { keep } => write!(f, "limit capabilities to {keep:?}"),
            Op::SetIds { uid, gid, groups } => write!(f, "set ids {uid}:{gid} groups {groups:?}"),
            Op::NoNewPrivs => write!(f, "no_new_privs"),
            Op::NotDumpable => write!(f, "not dumpable"),
            Op::Seccomp(filters) => write!(
                f,
                "seccomp: {} filter(s), {} instructions",
                filters.len(),
                filters.iter().map(|p| p.len()).sum::<usize>()
            ),
        }
    }
}

/// `MS_*` flags as stored in an [`Op`].
#[allow(clippy::useless_conversion)] // c_ulong is u32 on 32-bit targets
pub(crate) fn ms(f: MsFlags) -> u64 {
    u64::from(f.bits())
}

#[allow(clippy::useless_conversion)]
fn ms_flags(bits: u64) -> MsFlags {
    MsFlags::from_bits_truncate(nix::libc::c_ulong::try_from(bits).unwrap_or(0))
}

/// Executes privileged operations.
pub trait Sys {
    /// Performs `op`.
    fn apply(&mut self, op: &Op) -> Result<(), SysError>;
}

/// Records operations without performing them.
#[derive(Debug, Default)]
pub struct RecordingSys {
    /// Every operation applied, in order.
    pub ops: Vec<Op>,
    /// Fail the operation at this index (to test error paths).
    pub fail_at: Option<usize>,
}

impl Sys for RecordingSys {
    fn apply(&mut self, op: &Op) -> Result<(), SysError> {
        if self.fail_at == Some(self.ops.len()) {
            return Err(SysError::new(op, std::io::Error::other("injected failure")));
        }
        self.ops.push(op.clone());
        Ok(())
    }
}

/// The real kernel.
#[derive(Debug, Default)]
pub struct RealSys {
    _private: (),
}

impl RealSys {
    /// The real implementation.
    pub fn new() -> Self {
        RealSys { _private: () }
    }
}

impl Sys for RealSys {
    fn apply(&mut self, op: &Op) -> Result<(), SysError> {
        apply_real(op).map_err(|e| SysError::new(op, e))
    }
}

/// An opened target: keeps the `O_PATH` descriptor alive while its
/// `/proc/self/fd` path is used.
struct Resolved {
    _fd: Option<OwnedFd>,
    path: PathBuf,
}

fn resolve(target: &Target) -> std::io::Result<Resolved> {
    match target {
        Target::Host(p) => Ok(Resolved {
            _fd: None,
            path: p.clone(),
        }),
        Target::InRoot { root, path } => {
            let fd = open_in_root(root, path, OFlags::PATH | OFlags::CLOEXEC)?;
            let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            Ok(Resolved {
                _fd: Some(fd),
                path,
            })
        }
    }
}

fn open_in_root(root: &Path, path: &str, flags: OFlags) -> std::io::Result<OwnedFd> {
    let rootfd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    Ok(rustix::fs::openat2(
        rootfd.as_fd(),
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Opens the parent directory of a target and returns it with the file name.
fn parent_of(target: &Target) -> std::io::Result<(OwnedFd, String)> {
    let (parent, name) = match target {
        Target::Host(p) => {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| std::io::Error::other("path has no file name"))?
                .to_string();
            let parent = p.parent().unwrap_or(Path::new("/"));
            let fd = rustix::fs::open(
                parent,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            return Ok((fd, name));
        }
        Target::InRoot { root, path } => {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            (
                open_in_root(
                    root,
                    parent,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                )?,
                name,
            )
        }
    };
    if name.is_empty() {
        return Err(std::io::Error::other("path has no file name"));
    }
    Ok((parent, name.to_string()))
}

fn is_not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

fn apply_real(op: &Op) -> std::io::Result<()> {
    match op {
        Op::ParentDeathKill => {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
        }
        Op::OomScoreAdj(n) => match std::fs::write("/proc/self/oom_score_adj", n.to_string()) {
            // Lowering needs CAP_SYS_RESOURCE: rootless keeps what it has.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
            r => r?,
        },
        Op::LoopbackUp => crate::namespaces::loopback_up()?,
        Op::SetHostname(h) => nix::unistd::sethostname(h)?,
        Op::MakeRootPrivate => nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )?,
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
            optional,
        } => {
            let t = match resolve(target) {
                Err(e) if *optional && is_not_found(&e) => return Ok(()),
                r => r?,
            };
            nix::mount::mount(
                source.as_deref(),
                &t.path,
                fstype.as_deref(),
                ms_flags(*flags),
                data.as_deref(),
            )?;
        }
        Op::Overlay {
            target,
            lower,
            upper,
            work,
            userxattr,
        } => {
            let open = |p: &Path| {
                rustix::fs::open(
                    p,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| std::io::Error::other(format!("{}: {e}", p.display())))
            };
            let fds: Vec<OwnedFd> = lower.iter().map(|p| open(p)).collect::<Result<_, _>>()?;
            let (up, wk) = (open(upper)?, open(work)?);
            let name = |fd: &OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
            let mut data = format!(
                "lowerdir={},upperdir={},workdir={}",
                fds.iter().map(name).collect::<Vec<_>>().join(":"),
                name(&up),
                name(&wk)
            );
            if *userxattr {
                data.push_str(",userxattr");
            }
            // nosuid,nodev: a device node or setuid file from an image
            // layer (or made by a RUN step) is inert.
            nix::mount::mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(data.as_str()),
            )?;
        }
        Op::Remount {
            target,
            readonly,
            bind_self,
            optional,
        } => {
            let mut t = match resolve(target) {
                Err(e) if *optional && is_not_found(&e) => return Ok(()),
                r => r?,
            };
            if *bind_self {
                nix::mount::mount(
                    Some(&t.path),
                    &t.path,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )?;
                // The descriptor still names what is under the new mount.
                t = resolve(target)?;
            }
            let vfs = rustix::fs::statvfs(&t.path)?;
            let mut flags =
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if *readonly {
                flags |= MsFlags::MS_RDONLY;
            }
            use rustix::fs::StatVfsMountFlags as V;
            for (v, m) in [
                (V::RDONLY, MsFlags::MS_RDONLY),
                (V::NOEXEC, MsFlags::MS_NOEXEC),
                (V::NOATIME, MsFlags::MS_NOATIME),
                (V::NODIRATIME, MsFlags::MS_NODIRATIME),
                (V::RELATIME, MsFlags::MS_RELATIME),
            ] {
                if vfs.f_flag.contains(v) {
                    flags |= m;
                }
            }
            nix::mount::mount(None::<&str>, &t.path, None::<&str>, flags, None::<&str>)?;
        }
        Op::Mkdir { target, mode } => {
            let (dir, name) = parent_of(target)?;
            match rustix::fs::mkdirat(dir.as_fd(), name.as_str(), Mode::from_raw_mode(*mode)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Op::CreateFile { target } => {
            let (dir, name) = parent_of(target)?;
            let dir = reopen_dir(&dir)?;
            rustix::fs::openat(
                dir.as_fd(),
                name.as_str(),
                OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )?;
        }
        Op::Symlink { to, target } => {
            let (dir, name) = parent_of(target)?;
            let dir = reopen_dir(&dir)?;
            rustix::fs::symlinkat(to.as_str(), dir.as_fd(), name.as_str())?;
        }
        Op::WriteFile {
            target,
            data,
            mode,
            uid,
            gid,
        } => {
            let (dir, name) = parent_of(target)?;
            let dir = reopen_dir(&dir)?;
            let fd = rustix::fs::openat(
                dir.as_fd(),
                name.as_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(*mode),
            )?;
            rustix::fs::fchown(
                fd.as_fd(),
                Some(rustix::fs::Uid::from_raw(*uid)),
                Some(rustix::fs::Gid::from_raw(*gid)),
            )?;
            rustix::fs::fchmod(fd.as_fd(), Mode::from_raw_mode(*mode))?;
            File::from(fd).write_all(data)?;
        }
        Op::PivotRoot(root) => {
            nix::unistd::chdir(root)?;
            nix::unistd::pivot_root(".", ".")?;
            nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
            nix::unistd::chdir("/")?;
        }
        Op::LimitCapabilities { keep } => crate::caps::limit(keep)?,
        Op::SetIds { uid, gid, groups } => {
            use nix::unistd::{Gid, Uid};
            if let Some(groups) = groups {
                let g: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
                nix::unistd::setgroups(&g)?;
            }
            let g = Gid::from_raw(*gid);
            nix::unistd::setresgid(g, g, g)?;
            let u = Uid::from_raw(*uid);
            nix::unistd::setresuid(u, u, u)?;
        }
        Op::NoNewPrivs => nix::sys::prctl::set_no_new_privs()?,
        Op::NotDumpable => nix::sys::prctl::set_dumpable(false)?,
        Op::Seccomp(filters) => crate::seccomp::install(filters)?,
    }
    Ok(())
}

/// `O_PATH` descriptors cannot be used to create entries; reopen the
/// directory itself through its magic link.
fn reopen_dir(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_sys_records_and_injects_failures() {
        let mut sys = RecordingSys {
            fail_at: Some(1),
            ..Default::default()
        };
        assert!(sys.apply(&Op::MakeRootPrivate).is_ok());
        let err = sys.apply(&Op::NoNewPrivs).err();
        assert!(err.is_some_and(|e| e.op == "no_new_privs"));
        assert_eq!(sys.ops, vec![Op::MakeRootPrivate]);
    }

    #[test]
    fn secret_data_is_not_displayed() {
        let op = Op::WriteFile {
            target: Target::Host("/x".into()),
            data: b"hunter2".to_vec(),
            mode: 0o400,
            uid: 0,
            gid: 0,
        };
        assert!(!format!("{op:?}").contains("hunter2"));
    }

    #[test]
    fn in_root_resolution_stays_in_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // An absolute symlink must resolve inside the root, not on the host.
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        std::os::unix::fs::symlink("../../../../../../", root.join("up")).unwrap();
        let t = Target::InRoot {
            root: root.clone(),
            path: "/link/".into(),
        };
        let r = resolve(&t).unwrap();
        let real = std::fs::read_link(&r.path).unwrap();
        assert_eq!(real, root.join("etc"));
        let r = resolve(&Target::InRoot {
            root: root.clone(),
            path: "/up".into(),
        })
        .unwrap();
        assert_eq!(std::fs::read_link(&r.path).unwrap(), root);
    }
}
