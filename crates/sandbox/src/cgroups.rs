//! Cgroups for memory, pids and CPU limits: cgroup v2 (unified) when its
//! controllers are available, else the v1 `memory`, `pids` and `cpu`
//! hierarchies (hybrid hosts such as these CI VMs, where v2 has no
//! controllers). CPU is a bandwidth limit (CFS quota per 100 ms period),
//! the same as `docker run --cpus`.
//!
//! Detection is by looking, never by assuming: a host whose hierarchies are
//! missing or read-only (a rootless pod) gets no cgroup, and the run reports
//! [`crate::Outcome::limits_not_enforced`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;
use crate::spec::Limits;

/// The conventional cgroup mount point.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup layout a host offers for our limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Unified hierarchy with `memory` and `pids` available at its root.
    V2(PathBuf),
    /// Separate v1 hierarchies.
    V1 {
        /// The `memory` hierarchy, if mounted.
        memory: Option<PathBuf>,
        /// The `pids` hierarchy, if mounted.
        pids: Option<PathBuf>,
        /// The `cpu` hierarchy (often `cpu,cpuacct` behind a `cpu` link), if mounted.
        cpu: Option<PathBuf>,
    },
}

/// Finds the usable hierarchy under `root` (normally [`DEFAULT_ROOT`]).
pub fn detect(root: &Path) -> Option<Hierarchy> {
    if let Ok(c) = std::fs::read_to_string(root.join("cgroup.controllers")) {
        let has = |n: &str| c.split_whitespace().any(|w| w == n);
        return (has("memory") && has("pids")).then(|| Hierarchy::V2(root.to_path_buf()));
    }
    let memory = Some(root.join("memory")).filter(|p| p.join("cgroup.procs").exists());
    let pids = Some(root.join("pids")).filter(|p| p.join("cgroup.procs").exists());
    let cpu = Some(root.join("cpu")).filter(|p| p.join("cgroup.procs").exists());
    if memory.is_none() && pids.is_none() && cpu.is_none() {
        return None;
    }
    Some(Hierarchy::V1 { memory, pids, cpu })
}

/// Docker's default device rules (runc's allowed devices), written after
/// "deny all": `mknod` of any node, and read, write and `mknod` of
/// `/dev/null`, `zero`, `full`, `random`, `urandom`, `tty`, `ptmx`,
/// `/dev/pts/*` and `/dev/net/tun`.
pub const DEVICE_RULES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

/// Name of the device cgroup every root run joins, under the parent.
const DEVICE_CGROUP: &str = "sandbox-devices";

fn rules_in(list: &str) -> std::collections::BTreeSet<String> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The cgroup v1 `devices` cgroup `<root>/devices/<parent>/sandbox-devices`
/// with [`DEVICE_RULES`], shared by every run (the rules never change, so
/// there is nothing to create or remove per run): its `tasks` file, which
/// the monitor joins. `Ok(None)` when the host has no writable v1 `devices`
/// hierarchy (cgroup v2 only hosts: there a device filter is an eBPF
/// program, not done; `nodev` mounts still keep device nodes inert).
///
/// Set up once under an exclusive `flock` of the parent directory; "deny
/// all" is written only to a cgroup that still allows everything (a fresh
/// one), so a run already inside never loses its devices.
pub fn device_cgroup(root: &Path, parent: &str) -> Result<Option<PathBuf>, Error> {
    let base = root.join("devices");
    if !base.join("devices.list").exists() {
        return Ok(None);
    }
    let parent_dir = base.join(parent);
    let dir = parent_dir.join(DEVICE_CGROUP);
    let want: std::collections::BTreeSet<String> =
        DEVICE_RULES.iter().map(|r| r.to_string()).collect();
    let list = dir.join("devices.list");
    let read = || {
        std::fs::read_to_string(&list)
            .map(|l| rules_in(&l))
            .map_err(|e| Error::host(format!("reading {}", list.display()), e))
    };
    if list.exists() && read()? == want {
        return Ok(Some(dir.join("tasks")));
    }
    match std::fs::create_dir_all(&dir) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(Error::host(format!("creating cgroup {}", dir.display()), e)),
    }
    let lock = std::fs::File::open(&parent_dir)
        .map_err(|e| Error::host(format!("opening {}", parent_dir.display()), e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::host(format!("locking {}", parent_dir.display()), e))?;
    let have = read()?;
    if have != want {
        let empty = std::fs::read_to_string(dir.join("tasks"))
            .map(|t| t.trim().is_empty())
            .unwrap_or(false);
        // Reset to "deny all" only where no run can be inside yet.
        if have.contains("a *:* rwm") || empty {
            write(&dir.join("devices.deny"), "a")?;
        }
        for r in DEVICE_RULES {
            write(&dir.join("devices.allow"), r)?;
        }
        let now = read()?;
        if now != want {
            return Err(Error::host(
                format!("setting the device rules of {}", dir.display()),
                std::io::Error::other(format!("the kernel lists {now:?}")),
            ));
        }
    }
    Ok(Some(dir.join("tasks")))
}

/// The cgroup(s) of one run.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dirs: Vec<PathBuf>,
    v1: bool,
}

/// The CFS period Docker uses; the quota is `cpus` times it.
const CPU_PERIOD_US: u64 = 100_000;

/// The quota for `cpus` CPUs per [`CPU_PERIOD_US`] (at least 1 ms, the
/// kernel's minimum).
fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

fn write(path: &Path, data: &str) -> Result<(), Error> {
    std::fs::write(path, data).map_err(|e| Error::host(format!("writing {}", path.display()), e))
}

impl Cgroup {
    /// Creates `<parent>/<name>` in each needed hierarchy and applies
    /// `limits`. `Ok(None)` when the hierarchy cannot be written here.
    pub fn create(
        h: &Hierarchy,
        parent: &str,
        name: &str,
        limits: &Limits,
    ) -> Result<Option<Cgroup>, Error> {
        let mut cg = Cgroup {
            dirs: Vec::new(),
            v1: matches!(h, Hierarchy::V1 { .. }),
        };
        let mkdir = |base: &Path| -> Result<Option<PathBuf>, Error> {
            let parent_dir = base.join(parent);
            let dir = parent_dir.join(name);
            match std::fs::create_dir_all(&dir) {
                Ok(()) => Ok(Some(dir)),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::PermissionDenied
                            | std::io::ErrorKind::ReadOnlyFilesystem
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(Error::host(format!("creating cgroup {}", dir.display()), e)),
            }
        };
        match h {
            Hierarchy::V2(root) => {
                // Delegate the controllers down to our parent cgroup; cpu
                // only when asked for, as hosts may lack it.
                let controllers = if limits.cpus.is_some() {
                    "+memory +pids +cpu"
                } else {
                    "+memory +pids"
                };
                for dir in [root.clone(), root.join(parent)] {
                    std::fs::create_dir_all(&dir).ok();
                    if std::fs::write(dir.join("cgroup.subtree_control"), controllers).is_err() {
                        return Ok(None);
                    }
                }
                let Some(dir) = mkdir(root)? else {
                    return Ok(None);
                };
                if let Some(m) = limits.memory {
                    write(&dir.join("memory.max"), &m.to_string())?;
                    if dir.join("memory.swap.max").exists() {
                        write(&dir.join("memory.swap.max"), "0")?;
                    }
                }
                if let Some(p) = limits.pids {
                    write(&dir.join("pids.max"), &p.to_string())?;
                }
                if let Some(c) = limits.cpus {
                    write(
                        &dir.join("cpu.max"),
                        &format!("{} {CPU_PERIOD_US}", cpu_quota_us(c)),
                    )?;
                }
                cg.dirs.push(dir);
            }
            Hierarchy::V1 { memory, pids, cpu } => {
                if let Some(m) = limits.memory {
                    let Some(base) = memory else { return Ok(None) };
                    let Some(dir) = mkdir(base)? else {
                        return Ok(None);
                    };
                    cg.dirs.push(dir.clone());
                    write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &m.to_string())?;
                    }
                }
                if let Some(p) = limits.pids {
                    let Some(base) = pids else { return Ok(None) };
                    let Some(dir) = mkdir(base)? else {
                        return Ok(None);
                    };
                    cg.dirs.push(dir.clone());
                    write(&dir.join("pids.max"), &p.to_string())?;
                }
                if let Some(c) = limits.cpus {
                    let Some(base) = cpu else { return Ok(None) };
                    let Some(dir) = mkdir(base)? else {
                        return Ok(None);
                    };
                    cg.dirs.push(dir.clone());
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &cpu_quota_us(c).to_string())?;
                }
            }
        }
        Ok(Some(cg))
    }

    /// Moves `pid` (and its future children) into the cgroup(s).
    #[cfg(test)]
    pub fn add(&self, pid: u32) -> Result<(), Error> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The files the (single-threaded) monitor writes `0` to, to join.
    ///
    /// On v1 that is `tasks`: moving only the calling thread skips the
    /// global `cgroup_threadgroup_rwsem`, whose write side waits for an RCU
    /// grace period (5–20 ms measured here) when a process is moved by pid
    /// through `cgroup.procs`. On v2, `cgroup.procs`.
    pub fn join_files(&self) -> Vec<PathBuf> {
        let file = if self.v1 { "tasks" } else { "cgroup.procs" };
        self.dirs.iter().map(|d| d.join(file)).collect()
    }

    /// Pids still in the cgroup(s).
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// SIGKILLs everything left in it.
    pub fn kill_all(&self) {
        for pid in self.pids() {
            if let Ok(p) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Kills what is left and removes the directories (retrying while the
    /// kernel finishes reaping).
    pub async fn remove(self) {
        for d in &self.dirs {
            for attempt in 0..50 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if attempt == 49 => {
                        tracing::warn!("removing cgroup {}: {e}", d.display())
                    }
                    Err(_) => {
                        self.kill_all();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_v1_and_v2() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(detect(d.path()), None);
        std::fs::create_dir_all(d.path().join("pids")).unwrap();
        std::fs::write(d.path().join("pids/cgroup.procs"), "").unwrap();
        assert_eq!(
            detect(d.path()),
            Some(Hierarchy::V1 {
                memory: None,
                pids: Some(d.path().join("pids")),
                cpu: None,
            })
        );
        std::fs::write(d.path().join("cgroup.controllers"), "cpu io\n").unwrap();
        assert_eq!(detect(d.path()), None, "v2 without memory/pids is unusable");
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(
            detect(d.path()),
            Some(Hierarchy::V2(d.path().to_path_buf()))
        );
    }

    #[test]
    fn v1_limits_are_written() {
        let d = tempfile::tempdir().unwrap();
        let h = Hierarchy::V1 {
            memory: Some(d.path().join("memory")),
            pids: Some(d.path().join("pids")),
            cpu: Some(d.path().join("cpu")),
        };
        let limits = Limits {
            memory: Some(1 << 20),
            pids: Some(64),
            cpus: Some(1.5),
            ..Default::default()
        };
        let cg = Cgroup::create(&h, "slipway", "run1", &limits)
            .unwrap()
            .unwrap();
        let read = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(read("memory/slipway/run1/memory.limit_in_bytes"), "1048576");
        assert_eq!(read("pids/slipway/run1/pids.max"), "64");
        assert_eq!(read("cpu/slipway/run1/cpu.cfs_quota_us"), "150000");
        assert_eq!(read("cpu/slipway/run1/cpu.cfs_period_us"), "100000");
        cg.add(42).unwrap();
        assert_eq!(cg.pids(), vec![42]);
        assert_eq!(
            cg.join_files(),
            [
                d.path().join("memory/slipway/run1/tasks"),
                d.path().join("pids/slipway/run1/tasks"),
                d.path().join("cpu/slipway/run1/tasks")
            ]
        );
        // A pids-only limit on a host without a pids hierarchy: not enforceable.
        let h = Hierarchy::V1 {
            memory: Some(d.path().join("memory")),
            pids: None,
            cpu: None,
        };
        let only_pids = Limits {
            pids: Some(1),
            ..Default::default()
        };
        assert!(
            Cgroup::create(&h, "slipway", "run2", &only_pids)
                .unwrap()
                .is_none()
        );
    }
}
