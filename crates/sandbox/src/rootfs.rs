//! The root filesystem: the run directory on the host, the mount plan the
//! init executes (overlay, `/proc`, `/sys`, `/dev`, `/etc` files, extra
//! mounts, secrets, `pivot_root`), and the security steps after it.
//!
//! Mount points never touch the upper dir: every target the plan mounts on
//! is pre-created in a *skeleton* directory that is the **bottom** lower
//! layer of the overlay. Image layers above it win wherever they have an
//! entry (so the image's own `/etc`'s metadata is what a copy-up sees), and
//! the skeleton only fills gaps. `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf` are bind-mounted from the run directory, secrets live
//! on a tmpfs: none of them is ever written into the upper dir.
//!
//! Layout of a run directory (`<state>/run-XXXX/`, removed after the run):
//!
//! ```text
//! root/   mount point of the overlay, then the new root
//! skel/   bottom lower layer: empty mount points
//! etc/    hosts, hostname, resolv.conf
//! secrets/ secrets with a target of their own (on a tmpfs), bound onto it
//! ```

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::caps::DOCKER_DEFAULT;
use crate::error::Error;
use crate::spec::{Mount, Network, RunSpec};
use crate::sys::{Op, Target, ms};

/// Paths of one run directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub root: PathBuf,
    pub skel: PathBuf,
    pub etc: PathBuf,
    pub secrets: PathBuf,
}

impl Layout {
    pub fn new(run_dir: &Path) -> Self {
        Layout {
            root: run_dir.join("root"),
            skel: run_dir.join("skel"),
            etc: run_dir.join("etc"),
            secrets: run_dir.join("secrets"),
        }
    }
}

/// How the plan must adapt to the mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanMode {
    /// Inside a user namespace.
    pub userns: bool,
    /// `setgroups` is allowed inside.
    pub setgroups: bool,
}

const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Docker's masked paths (moby `oci/defaults.go`): files get `/dev/null`
/// bound over them, directories an empty read-only tmpfs.
const MASKED_FILES: &[&str] = &[
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
];
const MASKED_DIRS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// Docker's read-only paths.
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
const ETC_FILES: &[&str] = &["hosts", "hostname", "resolv.conf"];

/// What the skeleton layer must contain: `(container path, is_dir)`.
pub(crate) fn skeleton(
    spec: &RunSpec,
    source_is_dir: impl Fn(&Path) -> bool,
) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = ["/proc", "/sys", "/dev", "/etc"]
        .iter()
        .map(|p| (p.to_string(), true))
        .collect();
    v.extend(ETC_FILES.iter().map(|f| (format!("/etc/{f}"), false)));
    if spec.secrets.iter().any(|s| s.target.is_none()) {
        v.push(("/run/secrets".into(), true));
    }
    // A secret's own target is a file mount point, in the skeleton too.
    for t in spec.secrets.iter().filter_map(|s| s.target.as_ref()) {
        v.push((t.clone(), false));
    }
    for m in &spec.mounts {
        let is_dir = match m {
            Mount::Tmpfs { .. } | Mount::Cache { .. } => true,
            Mount::Bind { source, .. } => source_is_dir(source),
        };
        v.push((m.target().to_string(), is_dir));
    }
    v
}

/// Creates the run directory's contents: the overlay mount point, the
/// skeleton layer and the `/etc` files.
pub(crate) fn prepare(layout: &Layout, spec: &RunSpec) -> Result<(), Error> {
    let mk = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| Error::host(format!("creating {}", p.display()), e))
    };
    mk(&layout.root)?;
    mk(&layout.etc)?;
    mk(&layout.skel)?;
    if spec.secrets.iter().any(|s| s.target.is_some()) {
        mk(&layout.secrets)?;
    }
    let entries = skeleton(spec, |p| p.is_dir());
    for (path, is_dir) in entries {
        let host = layout.skel.join(path.trim_start_matches('/'));
        if is_dir {
            mk(&host)?;
        } else {
            if let Some(parent) = host.parent() {
                mk(parent)?;
            }
            std::fs::File::create(&host)
                .map_err(|e| Error::host(format!("creating {}", host.display()), e))?;
        }
    }
    Ok(())
}

/// Contents of the run's `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
pub(crate) fn etc_files(hostname: &str, resolv_conf: &str) -> Vec<(&'static str, String)> {
    vec![
        ("hosts", hosts_file(hostname)),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv_conf.to_string()),
    ]
}

fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

/// The init's steps for `spec`, in order: namespaces' contents, mounts,
/// `pivot_root`, then capabilities, ids and `no_new_privs`.
///
/// `seccomp`, when given, is installed last (see [`crate::seccomp`]).
pub(crate) fn plan(
    spec: &RunSpec,
    layout: &Layout,
    mode: PlanMode,
    etc_files: &[(&str, String)],
    seccomp: Option<Vec<crate::seccomp::Program>>,
) -> Vec<Op> {
    let root = &layout.root;
    let inr = |path: &str| Target::InRoot {
        root: root.clone(),
        path: path.to_string(),
    };
    let mount = |source: Option<&str>,
                 target: Target,
                 fstype: Option<&str>,
                 flags: MsFlags,
                 data: Option<String>| Op::Mount {
        source: source.map(str::to_string),
        target,
        fstype: fstype.map(str::to_string),
        flags: ms(flags),
        data,
        optional: false,
    };
    let bind = |source: &str, target: Target| {
        mount(
            Some(source),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
    };
    let bind_one =
        |source: &str, target: Target| mount(Some(source), target, None, MsFlags::MS_BIND, None);
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    let mut ops = vec![Op::ParentDeathKill, Op::OomScoreAdj(0)];
    if spec.network == Network::None {
        ops.push(Op::LoopbackUp);
    }
    ops.push(Op::SetHostname(spec.process.hostname.clone()));
    ops.push(Op::MakeRootPrivate);

    // The overlay: image layers on top of the skeleton. Inside a user
    // namespace, overlayfs cannot use trusted.* xattrs: `userxattr`, without
    // which removing a lower entry fails with EIO.
    let mut lower = spec.rootfs.lower.clone();
    lower.push(layout.skel.clone());
    ops.push(Op::Overlay {
        target: root.clone(),
        lower,
        upper: spec.rootfs.upper.clone(),
        work: spec.rootfs.work.clone(),
        userxattr: mode.userns,
    });

    // /proc, with Docker's masked and read-only paths.
    ops.push(mount(
        Some("proc"),
        inr("/proc"),
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    ));
    for p in MASKED_FILES {
        ops.push(optional(bind("/dev/null", inr(p))));
    }
    for p in READONLY {
        ops.push(Op::Remount {
            target: inr(p),
            readonly: true,
            bind_self: true,
            optional: true,
        });
    }

    // /sys, read-only. Outside a network namespace of its own user
    // namespace, sysfs cannot be mounted rootless: bind the host's.
    if mode.userns && spec.network == Network::Host {
        ops.push(bind("/sys", inr("/sys")));
        ops.push(Op::Remount {
            target: inr("/sys"),
            readonly: true,
            bind_self: false,
            optional: false,
        });
    } else {
        ops.push(mount(
            Some("sysfs"),
            inr("/sys"),
            Some("sysfs"),
            nosuid_nodev_noexec | MsFlags::MS_RDONLY,
            None,
        ));
    }
    for p in MASKED_DIRS {
        ops.push(optional(mount(
            Some("tmpfs"),
            inr(p),
            Some("tmpfs"),
            nosuid_nodev_noexec | MsFlags::MS_RDONLY,
            None,
        )));
    }

    // A minimal /dev: a nodev tmpfs (a node made in it cannot be opened),
    // with Docker's standard devices bound from the host's (each bind is a
    // mount of its own, with the host /dev's flags).
    ops.push(mount(
        Some("tmpfs"),
        inr("/dev"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k".into()),
    ));
    for d in DEVICES {
        let p = format!("/dev/{d}");
        ops.push(Op::CreateFile { target: inr(&p) });
        ops.push(bind(&p, inr(&p)));
    }
    ops.push(Op::Mkdir {
        target: inr("/dev/pts"),
        mode: 0o755,
    });
    let mut pts = "newinstance,ptmxmode=0666,mode=0620".to_string();
    if !mode.userns {
        pts.push_str(",gid=5");
    }
    ops.push(mount(
        Some("devpts"),
        inr("/dev/pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(pts),
    ));
    ops.push(Op::Mkdir {
        target: inr("/dev/shm"),
        mode: 0o1777,
    });
    ops.push(mount(
        Some("shm"),
        inr("/dev/shm"),
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some("mode=1777,size=65536k".into()),
    ));
    ops.push(Op::Mkdir {
        target: inr("/dev/mqueue"),
        mode: 0o755,
    });
    ops.push(mount(
        Some("mqueue"),
        inr("/dev/mqueue"),
        Some("mqueue"),
        nosuid_nodev_noexec,
        None,
    ));
    for (to, link) in [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        ops.push(Op::Symlink {
            to: to.into(),
            target: inr(link),
        });
    }

    // /etc files of the run, from a tmpfs over the run dir's etc/ (so
    // mountinfo shows no host path for them either).
    ops.push(mount(
        Some("tmpfs"),
        Target::Host(layout.etc.clone()),
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some("mode=755,size=64k".into()),
    ));
    for (f, data) in etc_files {
        let host = layout.etc.join(f);
        ops.push(Op::WriteFile {
            target: Target::Host(host.clone()),
            data: data.clone().into_bytes(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
        ops.push(bind(&host.display().to_string(), inr(&format!("/etc/{f}"))));
    }

    // Extra mounts, parents before children.
    let mut mounts: Vec<&Mount> = spec.mounts.iter().collect();
    mounts.sort_by_key(|m| m.target().matches('/').count());
    for m in mounts {
        // /dev is a fresh tmpfs, not in the skeleton: make the mount point.
        if m.target() == crate::spec::DEV_PIPES {
            ops.push(Op::Mkdir {
                target: inr(m.target()),
                mode: 0o755,
            });
        }
        match m {
            Mount::Tmpfs { target, size } => ops.push(mount(
                Some("tmpfs"),
                inr(target),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                size.map(|s| format!("size={s}")),
            )),
            // Not recursive: a mount below the source (a device-capable
            // one, say) does not come along. Then nosuid,nodev.
            Mount::Bind {
                source,
                target,
                readonly,
            } => {
                ops.push(bind_one(&source.display().to_string(), inr(target)));
                ops.push(Op::Remount {
                    target: inr(target),
                    readonly: *readonly,
                    bind_self: false,
                    optional: false,
                });
            }
            Mount::Cache { source, target } => {
                ops.push(bind_one(&source.display().to_string(), inr(target)));
                ops.push(Op::Remount {
                    target: inr(target),
                    readonly: false,
                    bind_self: false,
                    optional: false,
                });
            }
        }
    }

    // Secrets on a tmpfs, then read-only.
    let (targeted, default): (Vec<_>, Vec<_>) =
        spec.secrets.iter().partition(|s| s.target.is_some());
    if !default.is_empty() {
        let size: usize = default.iter().map(|s| s.data.len() + 4096).sum();
        ops.push(mount(
            Some("tmpfs"),
            inr("/run/secrets"),
            Some("tmpfs"),
            nosuid_nodev_noexec,
            Some(format!("mode=0755,size={}", size.max(4096))),
        ));
        for s in &default {
            let (uid, gid) = s.owner.unwrap_or((spec.process.uid, spec.process.gid));
            ops.push(Op::WriteFile {
                target: inr(&format!("/run/secrets/{}", s.name)),
                data: s.data.clone(),
                mode: s.mode,
                uid,
                gid,
            });
        }
        ops.push(Op::Remount {
            target: inr("/run/secrets"),
            readonly: true,
            bind_self: false,
            optional: false,
        });
    }
    // Secrets with a target of their own: files on a tmpfs over the run
    // dir's secrets/ (only this mount namespace sees it), each bound onto
    // its target read-only, so none of them is written to the upper dir.
    if !targeted.is_empty() {
        let size: usize = targeted.iter().map(|s| s.data.len() + 4096).sum();
        ops.push(mount(
            Some("tmpfs"),
            Target::Host(layout.secrets.clone()),
            Some("tmpfs"),
            nosuid_nodev_noexec,
            Some(format!("mode=0700,size={}", size.max(4096))),
        ));
        for s in &targeted {
            let (uid, gid) = s.owner.unwrap_or((spec.process.uid, spec.process.gid));
            let host = layout.secrets.join(&s.name);
            ops.push(Op::WriteFile {
                target: Target::Host(host.clone()),
                data: s.data.clone(),
                mode: s.mode,
                uid,
                gid,
            });
            let target = s.target.as_deref().unwrap_or("/");
            ops.push(bind(&host.display().to_string(), inr(target)));
            ops.push(Op::Remount {
                target: inr(target),
                readonly: true,
                bind_self: false,
                optional: false,
            });
        }
    }

    ops.push(Op::PivotRoot(root.clone()));
    ops.push(Op::LimitCapabilities {
        keep: DOCKER_DEFAULT.to_vec(),
    });
    ops.push(Op::SetIds {
        uid: spec.process.uid,
        gid: spec.process.gid,
        groups: mode.setgroups.then(|| spec.process.groups.clone()),
    });
    ops.push(Op::NoNewPrivs);
    // Changing credentials cleared these two.
    ops.push(Op::NotDumpable);
    ops.push(Op::ParentDeathKill);
    // Last, so that nothing pid 1 still does needs more than the profile.
    if let Some(filters) = seccomp {
        ops.push(Op::Seccomp(filters));
    }
    ops
}

/// Marks a mount as skippable when its target does not exist.
fn optional(mut op: Op) -> Op {
    if let Op::Mount { optional, .. } = &mut op {
        *optional = true;
    }
    op
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{RootFs, Secret};
    use crate::sys::RecordingSys;

    fn spec() -> RunSpec {
        let mut s = RunSpec::new(
            RootFs {
                lower: vec!["/img/l2".into(), "/img/l1".into()],
                upper: "/snap/up".into(),
                work: "/snap/work".into(),
            },
            vec!["sh".into()],
        );
        s.process.uid = 1000;
        s.process.gid = 1000;
        s.process.groups = vec![27];
        s
    }

    fn plan_t(s: &RunSpec, l: &Layout, m: PlanMode) -> Vec<Op> {
        plan(s, l, m, &etc_files("box", "nameserver 10.0.0.1\n"), None)
    }

    fn layout() -> Layout {
        Layout::new(Path::new("/run/x"))
    }

    const ROOT: PlanMode = PlanMode {
        userns: false,
        setgroups: true,
    };

    fn index(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter()
            .position(f)
            .unwrap_or_else(|| panic!("no such op in {ops:#?}"))
    }

    fn mount_on(ops: &[Op], path: &str) -> usize {
        index(
            ops,
            |o| matches!(o, Op::Mount { target: Target::InRoot { path: p, .. }, .. } if p == path),
        )
    }

    #[test]
    fn overlay_puts_skeleton_at_the_bottom() {
        let ops = plan_t(&spec(), &layout(), ROOT);
        let Op::Overlay {
            target,
            lower,
            upper,
            userxattr,
            ..
        } = &ops[index(&ops, |o| matches!(o, Op::Overlay { .. }))]
        else {
            panic!()
        };
        assert_eq!(target, &PathBuf::from("/run/x/root"));
        assert_eq!(
            lower,
            &[
                PathBuf::from("/img/l2"),
                "/img/l1".into(),
                "/run/x/skel".into()
            ]
        );
        assert_eq!(upper, &PathBuf::from("/snap/up"));
        assert!(!userxattr);
        let ops = plan_t(
            &spec(),
            &layout(),
            PlanMode {
                userns: true,
                setgroups: false,
            },
        );
        assert!(ops.iter().any(|o| matches!(
            o,
            Op::Overlay {
                userxattr: true,
                ..
            }
        )));
    }

    #[test]
    fn order_mounts_then_pivot_then_privileges() {
        let mut s = spec();
        s.secrets.push(Secret::new("token", "hunter2"));
        s.mounts.push(Mount::Bind {
            source: "/host/src".into(),
            target: "/src".into(),
            readonly: true,
        });
        let ops = plan_t(&s, &layout(), ROOT);
        let pivot = index(&ops, |o| matches!(o, Op::PivotRoot(_)));
        let private = index(&ops, |o| *o == Op::MakeRootPrivate);
        let overlay = index(&ops, |o| matches!(o, Op::Overlay { .. }));
        assert!(private < overlay);
        for (i, o) in ops.iter().enumerate() {
            if matches!(
                o,
                Op::Mount { .. } | Op::WriteFile { .. } | Op::Remount { .. }
            ) {
                assert!(i < pivot, "{o} after pivot_root");
            }
        }
        let caps = index(&ops, |o| matches!(o, Op::LimitCapabilities { .. }));
        let ids = index(&ops, |o| matches!(o, Op::SetIds { .. }));
        let nnp = index(&ops, |o| *o == Op::NoNewPrivs);
        assert!(pivot < caps && caps < ids && ids < nnp);
        assert_eq!(ops.last(), Some(&Op::ParentDeathKill));
        // proc before its masks, /dev tmpfs before devices, secrets tmpfs
        // before the secret, then read-only.
        assert!(mount_on(&ops, "/proc") < mount_on(&ops, "/proc/kcore"));
        assert!(mount_on(&ops, "/dev") < mount_on(&ops, "/dev/null"));
        let secret = index(&ops, |o| {
            matches!(
                o,
                Op::WriteFile {
                    target: Target::InRoot { .. },
                    ..
                }
            )
        });
        assert!(mount_on(&ops, "/run/secrets") < secret);
        assert!(
            matches!(&ops[secret + 1], Op::Remount { target: Target::InRoot { path, .. }, readonly: true, .. } if path == "/run/secrets")
        );
        // The secret belongs to the process's user.
        assert!(matches!(
            &ops[secret],
            Op::WriteFile {
                uid: 1000,
                gid: 1000,
                mode: 0o400,
                ..
            }
        ));
        // Read-only bind: bind, then remount.
        let src = mount_on(&ops, "/src");
        assert!(matches!(
            &ops[src + 1],
            Op::Remount {
                readonly: true,
                bind_self: false,
                ..
            }
        ));
        assert!(
            matches!(&ops[ids], Op::SetIds { uid: 1000, gid: 1000, groups: Some(g) } if g == &[27])
        );
    }

    #[test]
    fn etc_files_are_written_on_a_tmpfs_and_bound() {
        let ops = plan_t(&spec(), &layout(), ROOT);
        let tmpfs = index(
            &ops,
            |o| matches!(o, Op::Mount { target: Target::Host(p), .. } if p == Path::new("/run/x/etc")),
        );
        for f in ETC_FILES {
            let i = mount_on(&ops, &format!("/etc/{f}"));
            assert!(
                matches!(&ops[i], Op::Mount { source: Some(s), .. } if *s == format!("/run/x/etc/{f}"))
            );
            let w = index(
                &ops,
                |o| matches!(o, Op::WriteFile { target: Target::Host(p), .. } if *p == Path::new("/run/x/etc").join(f)),
            );
            assert!(tmpfs < w && w < i);
        }
        assert!(ops.iter().any(
            |o| matches!(o, Op::WriteFile { data, .. } if data.ends_with(b"127.0.1.1\tbox\n"))
        ));
    }

    #[test]
    fn network_none_brings_up_loopback_and_mounts_sysfs() {
        let mut s = spec();
        assert!(!plan_t(&s, &layout(), ROOT).contains(&Op::LoopbackUp));
        s.network = Network::None;
        let ops = plan_t(
            &s,
            &layout(),
            PlanMode {
                userns: true,
                setgroups: false,
            },
        );
        assert!(ops.contains(&Op::LoopbackUp));
        assert!(
            matches!(&ops[mount_on(&ops, "/sys")], Op::Mount { fstype: Some(t), .. } if t == "sysfs")
        );
        // Rootless with host network: the host's /sys, bound read-only.
        s.network = Network::Host;
        let ops = plan_t(
            &s,
            &layout(),
            PlanMode {
                userns: true,
                setgroups: false,
            },
        );
        assert!(
            matches!(&ops[mount_on(&ops, "/sys")], Op::Mount { source: Some(t), .. } if t == "/sys")
        );
        // Single-id user namespace: no setgroups, devpts without gid=5.
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::SetIds { groups: None, .. }))
        );
        assert!(ops.iter().any(|o| matches!(o, Op::Mount { fstype: Some(t), data: Some(d), .. } if t == "devpts" && !d.contains("gid"))));
    }

    #[test]
    fn nested_mounts_come_after_their_parents() {
        let mut s = spec();
        s.mounts.push(Mount::Tmpfs {
            target: "/a/b/c".into(),
            size: None,
        });
        s.mounts.push(Mount::Cache {
            source: "/cache".into(),
            target: "/a".into(),
        });
        let ops = plan_t(&s, &layout(), ROOT);
        assert!(mount_on(&ops, "/a") < mount_on(&ops, "/a/b/c"));
    }

    #[test]
    fn targeted_secrets_are_bound_from_a_private_tmpfs() {
        let mut s = spec();
        let mut sec = Secret::new("s0", "v");
        sec.target = Some("/root/.npmrc".into());
        sec.owner = Some((0, 0));
        s.secrets.push(sec);
        let ops = plan_t(&s, &layout(), ROOT);
        // No /run/secrets when every secret has its own target.
        assert!(!ops.iter().any(
            |o| matches!(o, Op::Mount { target: Target::InRoot { path, .. }, .. } if path == "/run/secrets")
        ));
        let tmpfs = index(
            &ops,
            |o| matches!(o, Op::Mount { target: Target::Host(p), .. } if p == Path::new("/run/x/secrets")),
        );
        let write = index(
            &ops,
            |o| matches!(o, Op::WriteFile { target: Target::Host(p), uid: 0, .. } if p == Path::new("/run/x/secrets/s0")),
        );
        let bound = mount_on(&ops, "/root/.npmrc");
        assert!(tmpfs < write && write < bound);
        assert!(matches!(
            &ops[bound + 1],
            Op::Remount { readonly: true, .. }
        ));
        let sk = skeleton(&s, |_| false);
        assert!(sk.contains(&("/root/.npmrc".to_string(), false)), "{sk:?}");
        assert!(!sk.iter().any(|(p, _)| p == "/run/secrets"));
    }

    #[test]
    fn skeleton_lists_every_mount_point() {
        let mut s = spec();
        s.secrets.push(Secret::new("a", "b"));
        s.mounts.push(Mount::Bind {
            source: "/f".into(),
            target: "/x/file".into(),
            readonly: false,
        });
        let sk = skeleton(&s, |_| false);
        for want in [
            ("/etc/hosts", false),
            ("/run/secrets", true),
            ("/x/file", false),
            ("/dev", true),
        ] {
            assert!(
                sk.contains(&(want.0.to_string(), want.1)),
                "{want:?} missing from {sk:?}"
            );
        }
    }

    #[test]
    fn prepare_writes_the_run_dir() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        let mut s = spec();
        s.secrets.push(Secret::new("a", "secret-value"));
        prepare(&l, &s).unwrap();
        assert!(l.skel.join("run/secrets").is_dir());
        assert!(l.skel.join("etc/resolv.conf").is_file());
        assert!(l.etc.is_dir() && l.root.is_dir());
        // No secret ever reaches the disk.
        for e in walk(dir.path()) {
            if e.is_file() {
                assert!(
                    !std::fs::read_to_string(&e)
                        .unwrap()
                        .contains("secret-value")
                );
            }
        }
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = vec![p.to_path_buf()];
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                out.extend(walk(&e.unwrap().path()));
            }
        }
        out
    }

    #[test]
    fn recording_sys_replays_the_plan_and_stops_at_a_failure() {
        let ops = plan_t(&spec(), &layout(), ROOT);
        let mut sys = RecordingSys {
            fail_at: Some(5),
            ..Default::default()
        };
        let err = crate::init::apply_all(&mut sys, &ops).err();
        assert_eq!(sys.ops.len(), 5);
        assert!(err.is_some_and(|e| e.op == ops[5].to_string()));
    }
}
