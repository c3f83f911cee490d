//! What to run: the rootfs overlay, the process, extra mounts, secrets, the
//! network mode and limits, and what comes back (exit status, outcome).
//!
//! These are plain data; [`crate::Sandbox::run`] validates them before any
//! namespace is created.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// `PATH` given to a process whose environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The only mount target allowed under `/dev` (a directory).
pub const DEV_PIPES: &str = "/dev/pipes";

/// Everything one run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// The root filesystem, mounted as an overlay.
    pub rootfs: RootFs,
    /// The process to start inside it.
    pub process: Process,
    /// Mounts besides the standard ones (`/proc`, `/sys`, `/dev`, `/etc/hosts`…).
    pub mounts: Vec<Mount>,
    /// Files placed on a tmpfs under `/run/secrets`, never in the upper dir.
    pub secrets: Vec<Secret>,
    /// Network mode.
    pub network: Network,
    /// Timeout, memory, CPU and pids limits.
    pub limits: Limits,
    /// Contents of `/etc/resolv.conf` inside. `None`: the host's file in
    /// [`Network::Host`] mode, an empty one in [`Network::None`] mode.
    pub resolv_conf: Option<String>,
    /// Docker's default confinement, or less of it for `RUN
    /// --security=insecure` where the caller's policy allows that.
    #[serde(default)]
    pub security: Security,
}

impl RunSpec {
    /// A run of `argv` as root in `/` of `rootfs`, host network, no limits.
    pub fn new(rootfs: RootFs, argv: Vec<String>) -> Self {
        RunSpec {
            rootfs,
            process: Process::new(argv),
            mounts: Vec::new(),
            secrets: Vec::new(),
            network: Network::Host,
            limits: Limits::default(),
            resolv_conf: None,
            security: Security::Default,
        }
    }

    /// Checks what the kernel would otherwise reject obscurely, or what could
    /// escape the rootfs: relative or `..` container paths, overlay option
    /// separators in host paths, secret names that are not plain file names.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.process.argv.is_empty() {
            return Err(SpecError::EmptyArgv);
        }
        for p in self
            .rootfs
            .lower
            .iter()
            .chain([&self.rootfs.upper, &self.rootfs.work])
        {
            overlay_path(p)?;
        }
        if self.rootfs.lower.is_empty() {
            return Err(SpecError::NoLowerDir);
        }
        container_path(&self.process.cwd)?;
        if self.process.hostname.is_empty()
            || self.process.hostname.len() > 64
            || !self
                .process
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(SpecError::Hostname(self.process.hostname.clone()));
        }
        for e in &self.process.env {
            if !e.contains('=') || e.starts_with('=') || e.contains('\0') {
                return Err(SpecError::Env(e.clone()));
            }
        }
        for m in &self.mounts {
            let target = m.target();
            container_path(target)?;
            // /dev/pipes is the one place under /dev a mount may go: RUN
            // heredocs with a shebang run from there, as in BuildKit.
            if matches!(target, "/" | "/proc" | "/sys" | "/dev")
                || (["/proc/", "/sys/", "/dev/"]
                    .iter()
                    .any(|p| target.starts_with(p))
                    && target != DEV_PIPES)
            {
                return Err(SpecError::ReservedTarget(target.to_string()));
            }
            if let Mount::Bind { source, .. } | Mount::Cache { source, .. } = m
                && !source.is_absolute()
            {
                return Err(SpecError::RelativeSource(source.clone()));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.secrets {
            if s.name.is_empty()
                || s.name == "."
                || s.name == ".."
                || s.name.contains('/')
                || s.name.contains('\0')
                || !seen.insert(s.name.as_str())
            {
                return Err(SpecError::SecretName(s.name.clone()));
            }
            if let Some(t) = &s.target {
                container_path(t)?;
                if t == "/"
                    || ["/proc", "/sys", "/dev"]
                        .iter()
                        .any(|p| t == p || t.starts_with(&format!("{p}/")))
                {
                    return Err(SpecError::ReservedTarget(t.clone()));
                }
            }
        }
        Ok(())
    }
}

/// An absolute, normalized container path: starts with `/`, no `.` or `..`
/// components, no NUL.
pub(crate) fn container_path(p: &str) -> Result<(), SpecError> {
    if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c == ".." || c == ".") {
        return Err(SpecError::ContainerPath(p.to_string()));
    }
    Ok(())
}

/// A host path usable in overlay mount options: absolute, and free of the
/// characters the option parser treats specially.
fn overlay_path(p: &std::path::Path) -> Result<(), SpecError> {
    let s = p
        .to_str()
        .ok_or_else(|| SpecError::OverlayPath(p.to_path_buf()))?;
    if !p.is_absolute() || s.contains([',', ':', '\\', '\0']) {
        return Err(SpecError::OverlayPath(p.to_path_buf()));
    }
    Ok(())
}

/// The root filesystem as an overlay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootFs {
    /// Read-only layers, topmost first (overlayfs `lowerdir` order).
    pub lower: Vec<PathBuf>,
    /// Receives every write of the run.
    pub upper: PathBuf,
    /// Overlayfs work dir: empty, on the same filesystem as `upper`.
    pub work: PathBuf,
}

/// The process started inside.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Process {
    /// Program and arguments; a program without `/` is looked up in the
    /// `PATH` of `env` (or [`DEFAULT_PATH`]) inside the rootfs.
    pub argv: Vec<String>,
    /// `KEY=value` pairs; nothing of the caller's environment leaks in.
    pub env: Vec<String>,
    /// Working directory inside; must exist.
    pub cwd: String,
    /// User id inside.
    pub uid: u32,
    /// Group id inside.
    pub gid: u32,
    /// Supplementary groups inside.
    pub groups: Vec<u32>,
    /// Host name inside (its own UTS namespace).
    pub hostname: String,
}

impl Process {
    /// `argv` as root in `/`, with `PATH` only, host name `sandbox`.
    pub fn new(argv: Vec<String>) -> Self {
        Process {
            argv,
            env: vec![format!("PATH={DEFAULT_PATH}")],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            hostname: "sandbox".into(),
        }
    }
}

/// An extra mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Mount {
    /// A fresh tmpfs.
    Tmpfs {
        /// Container path.
        target: String,
        /// Size limit in bytes (kernel default: half of RAM).
        size: Option<u64>,
    },
    /// A host file or directory.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Container path.
        target: String,
        /// Mounted read-only.
        readonly: bool,
    },
    /// A persistent, writable cache directory kept by the caller between runs
    /// (`RUN --mount=type=cache`). Its contents never land in the upper dir.
    Cache {
        /// Host directory.
        source: PathBuf,
        /// Container path.
        target: String,
    },
}

impl Mount {
    /// The container path it is mounted on.
    pub fn target(&self) -> &str {
        match self {
            Mount::Tmpfs { target, .. }
            | Mount::Bind { target, .. }
            | Mount::Cache { target, .. } => target,
        }
    }
}

/// A secret file, visible at `/run/secrets/<name>` for the run only.
#[derive(Clone, Serialize, Deserialize)]
pub struct Secret {
    /// File name under `/run/secrets`.
    pub name: String,
    /// Contents.
    pub data: Vec<u8>,
    /// File mode (default `0400`).
    pub mode: u32,
    /// Owner inside; `None`: the process's uid/gid, so that it can read it.
    pub owner: Option<(u32, u32)>,
    /// Where it appears instead of `/run/secrets/<name>` (`RUN
    /// --mount=type=secret,target=…`): an absolute container path. Still
    /// never written to the upper dir: a file on a tmpfs bound onto it.
    pub target: Option<String>,
}

impl Secret {
    /// A secret readable by the process only.
    pub fn new(name: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Secret {
            name: name.into(),
            data: data.into(),
            mode: 0o400,
            owner: None,
            target: None,
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field(
                "data",
                &format_args!("<{} bytes redacted>", self.data.len()),
            )
            .field("mode", &format_args!("{:o}", self.mode))
            .field("owner", &self.owner)
            .field("target", &self.target)
            .finish()
    }
}

/// How much of Docker's default confinement a run gets. Whatever it is,
/// the run keeps its namespaces, Docker's capability set, `no_new_privs`,
/// the masked and read-only `/proc` and `/sys` paths, and `nodev,nosuid`
/// mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Security {
    /// Docker's defaults: its seccomp profile ([`crate::seccomp`]) and,
    /// in [`crate::Mode::Root`] where the host has a cgroup v1 `devices`
    /// controller, its device cgroup rules.
    #[default]
    Default,
    /// `RUN --security=insecure`: no seccomp filter and no device cgroup.
    /// Only for callers whose policy (the pool's) allows it.
    Insecure,
}

/// Network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Network {
    /// The agent's own network namespace: reaches what the agent reaches.
    #[default]
    Host,
    /// A fresh network namespace with only loopback, up.
    None,
}

/// Resource limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock limit; the whole process tree is killed when it passes.
    pub timeout: Option<Duration>,
    /// Memory limit in bytes (cgroup; swap included where v1 allows).
    pub memory: Option<u64>,
    /// CPU limit in CPUs (`1.5` = one and a half CPUs' worth of time per
    /// period): cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Maximum number of tasks (cgroup pids controller).
    pub pids: Option<u64>,
}

impl Limits {
    /// Whether any limit needs a cgroup (the timeout does not).
    pub fn needs_cgroup(&self) -> bool {
        self.memory.is_some() || self.pids.is_some() || self.cpus.is_some()
    }
}

/// How a run's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code; `128 + n` when killed by signal `n` (shell convention).
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// Exited with `code`.
    pub fn exited(code: i32) -> Self {
        ExitStatus { code, signal: None }
    }
    /// Killed by signal `n`.
    pub fn signaled(n: i32) -> Self {
        ExitStatus {
            code: 128 + n,
            signal: Some(n),
        }
    }
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// The result of a run that started.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit status of the process.
    pub status: ExitStatus,
    /// The timeout passed and the tree was killed.
    pub timed_out: bool,
    /// The run was canceled and the tree was killed.
    pub canceled: bool,
    /// Memory/pids limits were requested but no writable cgroup controller
    /// was found, so they were not enforced.
    pub limits_not_enforced: bool,
    /// Start to exit.
    pub elapsed: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec::new(
            RootFs {
                lower: vec!["/l".into()],
                upper: "/u".into(),
                work: "/w".into(),
            },
            vec!["true".into()],
        )
    }

    #[test]
    fn validates_paths_and_names() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.rootfs.lower = vec!["/a,b".into()];
        assert!(matches!(s.validate(), Err(SpecError::OverlayPath(_))));
        let mut s = spec();
        s.process.cwd = "/a/../..".into();
        assert!(matches!(s.validate(), Err(SpecError::ContainerPath(_))));
        let mut s = spec();
        s.mounts.push(Mount::Tmpfs {
            target: "tmp".into(),
            size: None,
        });
        assert!(matches!(s.validate(), Err(SpecError::ContainerPath(_))));
        let mut s = spec();
        s.mounts.push(Mount::Tmpfs {
            target: "/proc/sys".into(),
            size: None,
        });
        assert!(matches!(s.validate(), Err(SpecError::ReservedTarget(_))));
        let mut s = spec();
        s.secrets.push(Secret::new("../x", "v"));
        assert!(matches!(s.validate(), Err(SpecError::SecretName(_))));
        let mut s = spec();
        s.secrets.push(Secret::new("a", "v"));
        s.secrets.push(Secret::new("a", "w"));
        assert!(matches!(s.validate(), Err(SpecError::SecretName(_))));
        let mut s = spec();
        s.process.hostname = "a b".into();
        assert!(matches!(s.validate(), Err(SpecError::Hostname(_))));
        let mut s = spec();
        s.process.argv.clear();
        assert!(matches!(s.validate(), Err(SpecError::EmptyArgv)));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = format!("{:?}", Secret::new("tok", "hunter2"));
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn signal_maps_to_128_plus_n() {
        assert_eq!(ExitStatus::signaled(9).code, 137);
        assert!(ExitStatus::exited(0).success());
    }
}
