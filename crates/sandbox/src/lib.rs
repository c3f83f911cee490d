//! Run a process in an image's root filesystem, without a daemon: the
//! executor of `RUN` steps and of task `cmd` steps.
//!
//! A [`RunSpec`] names an overlay rootfs (read-only lower dirs, an upper dir
//! that receives every write, a work dir), a [`Process`], extra [`Mount`]s,
//! [`Secret`]s, a [`Network`] mode and [`Limits`]. [`Sandbox::run`] runs it,
//! streams stdout/stderr as they come, and returns an [`Outcome`] whose
//! [`ExitStatus`] is the exit code, or `128 + n` for signal `n`.
//!
//! ```no_run
//! # async fn f() -> Result<(), sandbox::Error> {
//! use sandbox::*;
//! let init = InitCommand { program: "/usr/bin/slipway".into(), args: vec!["sandbox-init".into()] };
//! let sb = Sandbox::new(SandboxConfig::new(Mode::detect()?, init, "/var/lib/slipway/sandbox"));
//! let rootfs = RootFs { lower: vec!["/layers/a".into()], upper: "/snap/1/up".into(), work: "/snap/1/work".into() };
//! let spec = RunSpec::new(rootfs, vec!["sh".into(), "-c".into(), "echo hi".into()]);
//! let out = sb.run(&spec, &mut tokio::io::stdout(), &mut tokio::io::stderr(), &Default::default()).await?;
//! assert!(out.status.success());
//! # Ok(()) }
//! ```
//!
//! # How a run happens
//!
//! The caller's process is multi-threaded (tokio), where only
//! async-signal-safe work may follow a `fork`. So nothing is forked: the
//! sandbox re-executes an init binary ([`InitCommand`]; `slipway
//! sandbox-init` in production) twice. The **monitor** `unshare`s the mount,
//! PID, UTS, IPC and cgroup namespaces (plus user and network ones as the
//! mode and network require), has its id maps written by the parent, and
//! spawns **pid 1** of the new PID namespace, which mounts the overlay
//! (`nosuid,nodev`), `/proc` (with Docker's masked and read-only paths),
//! `/sys` read-only, a minimal `/dev` (a `nodev` tmpfs holding null, zero,
//! full, random, urandom and tty bound from the host, its own `pts`, `shm`,
//! `mqueue`), the run's `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`,
//! the extra mounts (binds non-recursive, remounted `nosuid,nodev`) and the
//! secrets tmpfs, then `pivot_root`s (not `chroot`) and detaches the
//! old root so no host path stays reachable, limits capabilities to Docker's
//! default set, switches to the process's uid/gid/groups, sets
//! `no_new_privs`, installs Docker's default seccomp profile ([`seccomp`]),
//! and spawns the program, reaping orphans until it exits. In
//! [`Mode::Root`] the monitor also joins a cgroup v1 `devices` cgroup with
//! Docker's device rules where the host has that controller
//! ([`cgroups::device_cgroup`]). [`Security::Insecure`] (`RUN
//! --security=insecure`, when the caller's policy allows it) leaves out the
//! seccomp filter and the device cgroup. Every privileged call is an
//! [`sys::Op`] executed through the [`sys::Sys`] trait, so the plan is
//! unit-tested with [`sys::RecordingSys`]. See [`init`] and [`process`].
//!
//! Nothing survives a run: when pid 1 ends (the program exited, or timeout
//! or cancel SIGKILLed pid 1) the kernel kills the rest of the namespace
//! before the monitor can reap it; pid 1 also dies with the monitor, and
//! the monitor kills pid 1 if the caller goes away.
//!
//! Nothing of the run's scaffolding lands in the upper dir: mount points come
//! from a skeleton layer at the bottom of the overlay, the `/etc` files are
//! bind mounts, secrets are on a tmpfs (see [`rootfs`]).
//!
//! # Modes
//!
//! - **[`Mode::Root`]** — root on a VM (or a privileged pod). Needs
//!   `CAP_SYS_ADMIN` and friends in the initial namespaces, overlayfs, and
//!   for limits a writable cgroup v2 hierarchy with `memory`/`pids`, or v1
//!   `memory`/`pids` hierarchies (hybrid hosts). Pod spec:
//!   `securityContext.privileged: true`.
//! - **[`Mode::UserNamespace`]** — rootless. The caller's uid is root inside;
//!   with [`namespaces::subid_map`] ranges from `/etc/subuid` (written via
//!   `newuidmap`/`newgidmap`, package `uidmap`) other ids exist too, else
//!   only 0 does and `setgroups` is denied. Needs unprivileged user
//!   namespaces (`user.max_user_namespaces > 0`; Debian's
//!   `kernel.unprivileged_userns_clone=1`; Ubuntu's
//!   `kernel.apparmor_restrict_unprivileged_userns=0`), overlayfs mountable
//!   in a user namespace (Linux ≥ 5.11; mounted with `userxattr`, without
//!   which removing a lower entry fails with EIO), and a `/proc` that is not
//!   partly masked (pods: `securityContext.procMount: Unmasked`, plus
//!   `seccompProfile: Unconfined` or a profile allowing `unshare`/`mount`,
//!   and AppArmor `unconfined`). `/sys` is the host's, bound read-only,
//!   unless the network is [`Network::None`]. Limits apply only if the
//!   cgroup is delegated to the user (otherwise
//!   [`Outcome::limits_not_enforced`]).
//! - **[`Mode::Unisolated`]** — for pods that allow neither: no isolation at
//!   all (kaniko's approach: the build container *is* the rootfs). Only the
//!   timeout, cancellation and process-group kill remain. Logged as a
//!   warning on every run; never chosen by [`Mode::detect`].
//!
//! # Dependencies chosen
//!
//! `nix` for the syscalls it wraps safely (`unshare`, `mount`,
//! `pivot_root`, `sethostname`, ids, signals, netlink socket); `rustix` for
//! what nix lacks or wraps less well (`openat2` with `RESOLVE_IN_ROOT`,
//! capability sets and the bounding set, `pidfd_open`, `poll`, `statvfs`).
//! youki's `libcontainer` was considered: it drives a full OCI runtime spec
//! and its own process model (`clone3` + fork of the caller), more than a
//! build step needs and at odds with a multi-threaded caller. `seccompiler`
//! (rust-vmm, Firecracker's) compiles the seccomp profile: no hand-written
//! BPF, no libseccomp to link. The crate has no `unsafe` code; that is also
//! why there is no cgroup v2 device filter: it is an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` loaded and attached with `bpf(2)`, which
//! no maintained crate offers through a safe API for a program assembled
//! at run time (youki assembles it with `rbpf` and loads it through
//! `libbpf-sys`, unsafe FFI; `aya` loads compiled ELF objects). On such
//! hosts `nodev` on every mount a run can create nodes on is what keeps a
//! `mknod`'d device unusable.

pub mod caps;
pub mod cgroups;
pub mod error;
pub mod image;
pub mod init;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod sys;
mod wire;

pub use error::{Error, SpecError, SysError};
pub use image::{ImageRun, image_process, resolve_user};
pub use namespaces::IdMap;
pub use process::{InitCommand, Mode, Sandbox, SandboxConfig};
pub use spec::{
    ExitStatus, Limits, Mount, Network, Outcome, Process, RootFs, RunSpec, Secret, Security,
};
pub use tokio_util::sync::CancellationToken;
