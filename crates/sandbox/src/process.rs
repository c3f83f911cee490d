//! The parent side of a run: prepares the run directory and cgroups, starts
//! the init, writes id maps on request, streams stdout/stderr, enforces the
//! timeout, relays cancellation, and cleans up.
//!
//! Killing is by PID namespace: the monitor SIGKILLs pid 1 and the kernel
//! kills every other process of the namespace before pid 1 can be reaped, so
//! when the monitor reports, nothing of the run is left. If the monitor does
//! not report within [`KILL_GRACE`] of a kill request, the parent SIGKILLs
//! the monitor and pid 1 itself (pid 1 also dies with its monitor).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::cgroups::{self, Cgroup};
use crate::error::{Error, SpecError};
use crate::namespaces::{self, IdMap};
use crate::rootfs::{self, Layout, PlanMode};
use crate::spec::{ExitStatus, Network, Outcome, RunSpec, Security};
use crate::wire::{Control, InitMsg, MonitorPlan, Pid1Plan, Report, encode};

/// How long a kill request may take before the parent kills harder.
pub const KILL_GRACE: Duration = Duration::from_millis(500);

/// How a run is isolated. See the crate docs for what each needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Root on a VM: new mount, PID, UTS, IPC and cgroup namespaces, no
    /// user namespace (root inside is root outside, with Docker's
    /// capability set), cgroup limits.
    Root,
    /// A user namespace with these maps (written by the parent, through
    /// `newuidmap`/`newgidmap` for subordinate ranges). Works unprivileged.
    UserNamespace {
        /// uid map.
        uid_map: Vec<IdMap>,
        /// gid map.
        gid_map: Vec<IdMap>,
    },
    /// **No isolation at all** (kaniko's approach, for pods that allow
    /// neither root nor user namespaces): the process runs on the host's
    /// root filesystem, in its own process group, with the timeout and
    /// cancellation still enforced. The rootfs of the spec is ignored: the
    /// caller must already *be* in the image's filesystem. Never chosen by
    /// [`Mode::detect`].
    Unisolated,
}

impl Mode {
    /// The strongest mode this process can use: [`Mode::Root`] as root,
    /// else a user namespace mapping the caller to root if the kernel allows
    /// it. Never [`Mode::Unisolated`]: that one must be chosen explicitly.
    pub fn detect() -> Result<Mode, Error> {
        let euid = rustix::process::geteuid().as_raw();
        if euid == 0 {
            return Ok(Mode::Root);
        }
        if namespaces::user_namespaces_allowed() {
            let egid = rustix::process::getegid().as_raw();
            return Ok(Mode::UserNamespace {
                uid_map: vec![IdMap::root(euid)],
                gid_map: vec![IdMap::root(egid)],
            });
        }
        Err(Error::NoIsolation(
            "neither root nor user namespaces are available; isolation is impossible here. \
             Choose Mode::Unisolated explicitly to run without any isolation"
                .into(),
        ))
    }
}

/// How to start the init: a binary that calls [`crate::init::main`] when
/// given `args` (e.g. `slipway sandbox-init`) before starting any thread.
#[derive(Debug, Clone)]
pub struct InitCommand {
    /// The binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

/// Configuration of a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Isolation mode.
    pub mode: Mode,
    /// The init entry point.
    pub init: InitCommand,
    /// Where run directories are created (mode 0700; must allow overlay
    /// lower dirs, i.e. not itself on an overlay for rootless runs).
    pub state_dir: PathBuf,
    /// Cgroup mount point (normally [`cgroups::DEFAULT_ROOT`]).
    pub cgroup_root: PathBuf,
    /// Parent cgroup name for runs.
    pub cgroup_parent: String,
}

impl SandboxConfig {
    /// Defaults: cgroups under `/sys/fs/cgroup/**/slipway`.
    pub fn new(mode: Mode, init: InitCommand, state_dir: impl Into<PathBuf>) -> Self {
        SandboxConfig {
            mode,
            init,
            state_dir: state_dir.into(),
            cgroup_root: cgroups::DEFAULT_ROOT.into(),
            cgroup_parent: "slipway".into(),
        }
    }
}

/// Runs processes in root filesystems.
#[derive(Debug, Clone)]
pub struct Sandbox {
    config: SandboxConfig,
}

#[derive(Default)]
struct Progress {
    pid1: Option<u32>,
    report: Option<Report>,
    timed_out: bool,
    canceled: bool,
}

impl Sandbox {
    /// A sandbox with this configuration.
    pub fn new(config: SandboxConfig) -> Self {
        if config.mode == Mode::Unisolated {
            tracing::warn!(
                "sandbox mode is UNISOLATED: processes run directly on this host's filesystem, \
                 network and process table, with this process's privileges"
            );
        }
        Sandbox { config }
    }

    /// Its configuration.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Runs `spec`, writing the process's output to `stdout` and `stderr` as
    /// it comes, until it exits, its timeout passes or `cancel` fires. When
    /// this returns, no process of the run is left.
    pub async fn run<O, E>(
        &self,
        spec: &RunSpec,
        stdout: &mut O,
        stderr: &mut E,
        cancel: &CancellationToken,
    ) -> Result<Outcome, Error>
    where
        O: AsyncWrite + Unpin + Send + ?Sized,
        E: AsyncWrite + Unpin + Send + ?Sized,
    {
        spec.validate()?;
        let started = Instant::now();
        let (userns, setgroups) = match &self.config.mode {
            Mode::Root => (false, true),
            Mode::UserNamespace { uid_map, gid_map } => {
                let euid = rustix::process::geteuid().as_raw();
                let maps = |map: &[IdMap], id: u32| {
                    map.iter()
                        .any(|m| id >= m.inside && id - m.inside < m.count)
                };
                let p = &spec.process;
                if !maps(uid_map, p.uid)
                    || !maps(gid_map, p.gid)
                    || p.groups.iter().any(|g| !maps(gid_map, *g))
                {
                    return Err(SpecError::Unsupported(format!(
                        "uid {}/gid {} (groups {:?}) are not all mapped in the user namespace; \
                         map subordinate ids (newuidmap) to run as other users",
                        p.uid, p.gid, p.groups
                    ))
                    .into());
                }
                (true, namespaces::setgroups_allowed(euid, uid_map))
            }
            Mode::Unisolated => {
                return self
                    .run_unisolated(spec, stdout, stderr, cancel, started)
                    .await;
            }
        };

        std::fs::create_dir_all(&self.config.state_dir)
            .map_err(|e| Error::host(format!("creating {}", self.config.state_dir.display()), e))?;
        let run_dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&self.config.state_dir)
            .map_err(|e| {
                Error::host(
                    format!("creating a run dir in {}", self.config.state_dir.display()),
                    e,
                )
            })?;
        let layout = Layout::new(run_dir.path());
        let resolv = match (&spec.resolv_conf, spec.network) {
            (Some(r), _) => r.clone(),
            (None, Network::Host) => {
                std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
            }
            (None, Network::None) => String::new(),
        };
        rootfs::prepare(&layout, spec)?;
        let etc = rootfs::etc_files(&spec.process.hostname, &resolv);

        let mut limits_not_enforced = false;
        let cgroup = if spec.limits.needs_cgroup() {
            let name = run_dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("run-{}", std::process::id()));
            let cg = match cgroups::detect(&self.config.cgroup_root) {
                Some(h) => Cgroup::create(&h, &self.config.cgroup_parent, &name, &spec.limits)?,
                None => None,
            };
            if cg.is_none() {
                tracing::warn!(
                    "no writable cgroup memory/pids/cpu controller: memory, pids and CPU limits are not enforced"
                );
                limits_not_enforced = true;
            }
            cg
        } else {
            None
        };

        // Docker's device cgroup (root only: a user namespace cannot write
        // the host's hierarchy) and seccomp profile, unless insecure.
        let confined = spec.security == Security::Default;
        let mut cgroup_join = cgroup.as_ref().map(Cgroup::join_files).unwrap_or_default();
        if confined && self.config.mode == Mode::Root {
            match cgroups::device_cgroup(&self.config.cgroup_root, &self.config.cgroup_parent) {
                Ok(Some(tasks)) => cgroup_join.push(tasks),
                Ok(None) => no_device_cgroup_once(),
                Err(e) => {
                    if let Some(cg) = cgroup {
                        cg.remove().await;
                    }
                    return Err(e);
                }
            }
        }
        let seccomp = if confined {
            match crate::seccomp::docker_default(crate::caps::DOCKER_DEFAULT) {
                Ok(f) => Some(f),
                Err(e) => {
                    if let Some(cg) = cgroup {
                        cg.remove().await;
                    }
                    return Err(Error::Setup(e));
                }
            }
        } else {
            None
        };

        let mut env = spec.process.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={}", crate::spec::DEFAULT_PATH));
        }
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.push(format!("HOSTNAME={}", spec.process.hostname));
        }
        let plan = MonitorPlan {
            unshare: namespaces::clone_flags(userns, spec.network).bits(),
            userns,
            cgroup_join,
            pid1: Pid1Plan {
                ops: rootfs::plan(spec, &layout, PlanMode { userns, setgroups }, &etc, seccomp),
                argv: spec.process.argv.clone(),
                env,
                cwd: spec.process.cwd.clone(),
            },
        };

        let result = self
            .supervise(spec, plan, cgroup.as_ref(), stdout, stderr, cancel)
            .await;
        if let Some(cg) = cgroup {
            cg.remove().await;
        }
        if let Err(e) = run_dir.close() {
            tracing::warn!("removing the run dir: {e}");
        }
        let p = result?;
        match p.report {
            Some(Report::Exited(status)) => Ok(Outcome {
                status,
                timed_out: p.timed_out,
                canceled: p.canceled,
                limits_not_enforced,
                elapsed: started.elapsed(),
            }),
            Some(Report::SetupFailed(m)) if p.canceled || p.timed_out => Ok(Outcome {
                status: ExitStatus::signaled(9),
                timed_out: p.timed_out,
                canceled: p.canceled,
                limits_not_enforced,
                elapsed: {
                    tracing::debug!("killed during setup: {m}");
                    started.elapsed()
                },
            }),
            Some(Report::SetupFailed(m)) => Err(Error::Setup(m)),
            _ if p.canceled || p.timed_out => Ok(Outcome {
                status: ExitStatus::signaled(9),
                timed_out: p.timed_out,
                canceled: p.canceled,
                limits_not_enforced,
                elapsed: started.elapsed(),
            }),
            _ => Err(Error::Init("the monitor exited without reporting".into())),
        }
    }

    async fn supervise<O, E>(
        &self,
        spec: &RunSpec,
        plan: MonitorPlan,
        cgroup: Option<&Cgroup>,
        stdout: &mut O,
        stderr: &mut E,
        cancel: &CancellationToken,
    ) -> Result<Progress, Error>
    where
        O: AsyncWrite + Unpin + Send + ?Sized,
        E: AsyncWrite + Unpin + Send + ?Sized,
    {
        let (parent_end, child_end) =
            std::os::unix::net::UnixStream::pair().map_err(|e| Error::host("socketpair", e))?;
        let mut cmd = tokio::process::Command::new(&self.config.init.program);
        cmd.args(&self.config.init.args)
            .env_clear()
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(child_end)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            Error::host(
                format!("starting {}", self.config.init.program.display()),
                e,
            )
        })?;
        // The command still holds the child's end of the socket: without
        // this, the parent would never see EOF.
        drop(cmd);
        parent_end
            .set_nonblocking(true)
            .map_err(|e| Error::host("socket", e))?;
        let ctl =
            tokio::net::UnixStream::from_std(parent_end).map_err(|e| Error::host("socket", e))?;
        let (ctl_read, mut ctl_write) = ctl.into_split();
        ctl_write
            .write_all(&encode(&InitMsg::Monitor(plan)))
            .await
            .map_err(|e| Error::Init(format!("sending the plan: {e}")))?;

        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let copy_out = async {
            if let Some(o) = out.as_mut() {
                copy(o, stdout).await;
            }
        };
        let copy_err = async {
            if let Some(e) = err.as_mut() {
                copy(e, stderr).await;
            }
        };

        let control = async {
            let mut p = Progress::default();
            let mut lines = BufReader::new(ctl_read).lines();
            let timeout = async {
                match spec.limits.timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(timeout);
            let hard = tokio::time::sleep(Duration::MAX / 4);
            tokio::pin!(hard);
            let mut killing = false;
            let mut result = Ok(());
            loop {
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(l)) => match serde_json::from_str::<Report>(&l) {
                            Ok(Report::NeedMaps { pid }) => {
                                if let Mode::UserNamespace { uid_map, gid_map } = &self.config.mode {
                                    if let Err(e) = namespaces::write_id_maps(pid, uid_map, gid_map).await {
                                        result = Err(e);
                                        let _ = ctl_write.write_all(&encode(&Control::Kill)).await;
                                    } else {
                                        let _ = ctl_write.write_all(&encode(&Control::Mapped)).await;
                                    }
                                }
                            }
                            Ok(Report::Started { pid }) => p.pid1 = Some(pid),
                            Ok(r) => p.report = Some(r),
                            Err(e) => {
                                result = Err(Error::Init(format!("bad report {l:?}: {e}")));
                                break;
                            }
                        },
                        Ok(None) | Err(_) => break,
                    },
                    () = &mut timeout, if !killing => {
                        p.timed_out = true;
                        killing = true;
                        let _ = ctl_write.write_all(&encode(&Control::Kill)).await;
                        hard.as_mut().reset(tokio::time::Instant::now() + KILL_GRACE);
                    }
                    () = cancel.cancelled(), if !killing => {
                        p.canceled = true;
                        killing = true;
                        let _ = ctl_write.write_all(&encode(&Control::Kill)).await;
                        hard.as_mut().reset(tokio::time::Instant::now() + KILL_GRACE);
                    }
                    () = &mut hard, if killing => {
                        tracing::warn!("the sandbox monitor did not stop in time; killing it");
                        hard_kill(p.pid1, cgroup);
                        let _ = child.start_kill();
                        hard.as_mut().reset(tokio::time::Instant::now() + Duration::MAX / 4);
                    }
                }
            }
            drop(ctl_write);
            if child.wait().await.is_err() {
                let _ = child.start_kill();
            }
            // Should the monitor have died abnormally, pid 1 follows it by
            // PR_SET_PDEATHSIG; make sure before returning.
            if p.report.is_none() {
                hard_kill(p.pid1, cgroup);
            }
            result.map(|()| p)
        };
        let ((), (), p) = tokio::join!(copy_out, copy_err, control);
        let _ = stdout.flush().await;
        let _ = stderr.flush().await;
        p
    }

    async fn run_unisolated<O, E>(
        &self,
        spec: &RunSpec,
        stdout: &mut O,
        stderr: &mut E,
        cancel: &CancellationToken,
        started: Instant,
    ) -> Result<Outcome, Error>
    where
        O: AsyncWrite + Unpin + Send + ?Sized,
        E: AsyncWrite + Unpin + Send + ?Sized,
    {
        if !spec.mounts.is_empty() || !spec.secrets.is_empty() || spec.network != Network::Host {
            return Err(SpecError::Unsupported(
                "mounts, secrets and network isolation need Mode::Root or Mode::UserNamespace"
                    .into(),
            )
            .into());
        }
        tracing::warn!(argv = ?spec.process.argv, "running WITHOUT isolation");
        let p = &spec.process;
        let mut cmd = tokio::process::Command::new(&p.argv[0]);
        cmd.args(&p.argv[1..])
            .env_clear()
            .envs(p.env.iter().filter_map(|e| e.split_once('=')))
            .current_dir(&p.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if p.uid != rustix::process::geteuid().as_raw() {
            cmd.uid(p.uid);
        }
        if p.gid != rustix::process::getegid().as_raw() {
            cmd.gid(p.gid);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Setup(format!("exec {:?}: {e}", p.argv[0])))?;
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        let kill_group = || {
            if let Some(g) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(g),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        };
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let (mut timed_out, mut canceled) = (false, false);
        let wait = async {
            let timeout = async {
                match spec.limits.timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            let status = tokio::select! {
                s = child.wait() => s,
                () = timeout => { timed_out = true; kill_group(); child.wait().await }
                () = cancel.cancelled() => { canceled = true; kill_group(); child.wait().await }
            };
            // The leader is gone; take the rest of its group with it.
            kill_group();
            status
        };
        let copy_out = async {
            if let Some(o) = out.as_mut() {
                copy(o, stdout).await;
            }
        };
        let copy_err = async {
            if let Some(e) = err.as_mut() {
                copy(e, stderr).await;
            }
        };
        let ((), (), status) = tokio::join!(copy_out, copy_err, wait);
        let status = status.map_err(|e| Error::host("waiting for the process", e))?;
        use std::os::unix::process::ExitStatusExt;
        let status = match (status.code(), status.signal()) {
            (Some(c), _) => ExitStatus::exited(c),
            (None, Some(s)) => ExitStatus::signaled(s),
            (None, None) => ExitStatus::exited(255),
        };
        Ok(Outcome {
            status,
            timed_out,
            canceled,
            limits_not_enforced: spec.limits.needs_cgroup(),
            elapsed: started.elapsed(),
        })
    }
}

/// Says once per process that the device cgroup is missing.
fn no_device_cgroup_once() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        tracing::info!(
            "no writable cgroup v1 devices controller: no device cgroup for runs \
             (nodev mounts still keep device nodes made inside inert)"
        );
    });
}

fn hard_kill(pid1: Option<u32>, cgroup: Option<&Cgroup>) {
    if let Some(p) = pid1.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let Some(cg) = cgroup {
        cg.kill_all();
    }
}

/// Copies until EOF; a failing sink does not stop the draining (the
/// process must never block on a full pipe).
async fn copy<R, W>(r: &mut R, w: &mut W)
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sink_ok = true;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sink_ok && w.write_all(&buf[..n]).await.is_err() {
                    sink_ok = false;
                }
                if sink_ok {
                    let _ = w.flush().await;
                }
            }
        }
    }
}
