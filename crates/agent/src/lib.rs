//! A build agent of one pool. It only dials out: it long-polls the server
//! for a lease, fetches the run's context (an upload, a tarball URL or a git
//! URL, fetched from inside the agent's network), runs the build as a child
//! `slipway build --local` process (so a cancel is one kill, and a crash of
//! the build cannot take the agent down), streams the child's output as
//! numbered log chunks, heartbeats, and reports the result. Every call after
//! the lease presents the lease token; a `409` means the run was taken away
//! (re-queued or ended) and the agent drops it.
//!
//! While the server is unreachable the agent keeps building and keeps its
//! log chunks, retrying with back-off: a restarted server accepts them
//! (its leases restart with a fresh period), and chunk numbers make the
//! retries idempotent.
//!
//! [`check`] is `slipway agent check`: what the agent can reach from where
//! it runs, and whether it can build there.

mod access;
pub mod check;
mod fetch;
mod logs;
mod steps;
mod task;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use api::{ApiError, ContextSource, Heartbeat, Lease, LeaseRequest, Outcome, RunResult};
use tokio::sync::watch;

pub use logs::LogSink;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the server refused this agent: {0}")]
    Refused(ApiError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Settings of one agent process.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    pub token: String,
    pub pool: String,
    pub agent_id: String,
    /// Per-run scratch: contexts, credentials; emptied after each run.
    pub work_dir: PathBuf,
    /// The builder's data (layer store, cache), kept across runs and
    /// shareable between agents of one machine.
    pub build_data: PathBuf,
    /// The `slipway` binary that runs `build --local`.
    pub program: PathBuf,
    /// Registries (host:port) the builder may reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// CA certificates (PEM files) trusted beside the system's, for the
    /// internal registries, git servers and blob stores builds reach.
    pub ca_certs: Vec<PathBuf>,
    /// How long one lease request waits on the server.
    pub poll: Duration,
    /// Bounds on what a context or layer may unpack to, here and in the
    /// builds this agent starts.
    pub unpack_limits: context::UnpackLimits,
}

/// Lease and build until `shutdown` resolves (then the current build is
/// stopped and its lease left to expire, so the server re-queues it).
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let client = api::Client::new(&config.server, Some(config.token.clone()))
        .map_err(AgentError::Refused)?;
    std::fs::create_dir_all(&config.work_dir).map_err(|source| AgentError::Io {
        context: format!("creating {}", config.work_dir.display()),
        source,
    })?;
    context::data_dir::mark(&config.work_dir).map_err(|source| AgentError::Io {
        context: format!("marking {}", config.work_dir.display()),
        source,
    })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopper = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    tokio::pin!(stopper);
    let work = async {
        let mut backoff = Backoff::new();
        loop {
            if *stop_rx.borrow() {
                return Ok(());
            }
            let req = LeaseRequest {
                agent: config.agent_id.clone(),
                wait_secs: config.poll.as_secs(),
            };
            let mut stop = stop_rx.clone();
            let got = tokio::select! {
                r = client.lease(&req) => r,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            match got {
                Ok(Some(lease)) => {
                    backoff.reset();
                    execute(&config, &client, lease, stop_rx.clone()).await;
                }
                Ok(None) => backoff.reset(),
                Err(e) if e.is_transient() => {
                    let d = backoff.delay();
                    tracing::warn!("leasing: {e}; retrying in {d:?}");
                    tokio::time::sleep(d).await;
                }
                Err(e) => return Err(AgentError::Refused(e)),
            }
        }
    };
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => return r,
        _ = &mut stopper => {}
    }
    // The stop is signalled: let the work loop wind down its build (kill
    // the child, flush the log with a note) instead of dropping it mid-way.
    work.await
}

/// Exponential back-off from 250 ms to 5 s.
pub struct Backoff(Duration);

impl Backoff {
    pub fn new() -> Self {
        Backoff(Duration::from_millis(250))
    }
    pub fn reset(&mut self) {
        self.0 = Duration::from_millis(250);
    }
    pub fn delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a build ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The server asked (cancel or timeout): report `stopped`.
    Server,
    /// The lease is gone: report nothing.
    LeaseLost,
    /// This agent is shutting down: report nothing; the lease expires.
    Shutdown,
}

async fn execute(
    config: &AgentConfig,
    client: &api::Client,
    lease: Lease,
    mut shutdown: watch::Receiver<bool>,
) {
    let run_id = lease.run.id.clone();
    tracing::info!(run = run_id, attempt = lease.attempt, "leased run");
    let dir = config
        .work_dir
        .join("runs")
        .join(format!("{run_id}-{}", lease.attempt));
    // Everything secret the lease carries is masked in the log: build
    // secrets, the run's registry token, the pool's stored credentials.
    let masks: Vec<String> = lease
        .secrets
        .values()
        .cloned()
        .chain(lease.registry.iter().map(|r| r.password.clone()))
        .chain(lease.credentials.iter().map(|c| c.password.clone()))
        .filter(|v| v.len() >= 2)
        .collect();
    let log = LogSink::start(client.clone(), run_id.clone(), lease.token.clone(), masks);

    // Heartbeats: extend the lease, and learn of cancels within a second.
    let (stop_tx, mut stop_rx) = watch::channel::<Option<Stop>>(None);
    let hb = {
        let client = client.clone();
        let run = run_id.clone();
        let token = lease.token.clone();
        let period = Duration::from_millis(lease.ttl_ms / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(1));
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                match client
                    .heartbeat(
                        &run,
                        &Heartbeat {
                            token: token.clone(),
                        },
                    )
                    .await
                {
                    Ok(r) if r.cancel => {
                        let _ = stop_tx.send(Some(Stop::Server));
                    }
                    Ok(_) => {}
                    Err(e) if e.status() == Some(409) => {
                        tracing::warn!(run, "lease lost: {e}");
                        let _ = stop_tx.send(Some(Stop::LeaseLost));
                        return;
                    }
                    Err(e) => tracing::warn!(run, "heartbeat: {e}"),
                }
            }
        })
    };
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            if shutdown.wait_for(|s| *s).await.is_ok() {
                let _ = stop_tx.send(Some(Stop::Shutdown));
            }
        });
    }

    let outcome = build(config, &lease, &dir, &log, &mut stop_rx).await;
    hb.abort();
    let stop = *stop_rx.borrow();
    let result = match (outcome, stop) {
        (_, Some(Stop::LeaseLost)) => None,
        (_, Some(Stop::Shutdown)) => {
            log.line("agent shutting down: build stopped; the run will be retried when its lease expires");
            None
        }
        (_, Some(Stop::Server)) => Some((
            Outcome::Stopped,
            None,
            None,
            Some("stopped on the server's request".to_owned()),
            None,
            Vec::new(),
        )),
        (Ok(b), None) if b.code == 0 => Some((
            Outcome::Succeeded,
            Some(0),
            b.digest,
            None,
            b.revision,
            b.steps,
        )),
        (Ok(b), None) => {
            let what = match b.steps.iter().find(|s| s.state == "failed") {
                Some(s) => format!("step {} failed", s.id),
                None => format!("build failed with exit code {}", b.code),
            };
            Some((
                Outcome::Failed,
                Some(b.code),
                None,
                Some(what),
                b.revision,
                b.steps,
            ))
        }
        (Err(msg), None) => {
            log.line(&format!("error: {msg}"));
            Some((Outcome::Error, None, None, Some(msg), None, Vec::new()))
        }
    };
    let lease_ok = log.finish().await;
    let _ = std::fs::remove_dir_all(&dir);
    let Some((outcome, exit_code, image_digest, message, revision, steps)) = result else {
        return;
    };
    if !lease_ok {
        return;
    }
    let report = RunResult {
        token: lease.token.clone(),
        outcome,
        exit_code,
        image_digest,
        message,
        revision,
        steps,
    };
    let mut backoff = Backoff::new();
    // Results matter: retry through a server restart (up to ~10 minutes).
    for _ in 0..150 {
        match client.report(&run_id, &report).await {
            Ok(run) => {
                tracing::info!(run = run_id, state = %run.state, "reported");
                return;
            }
            Err(e) if e.is_transient() => tokio::time::sleep(backoff.delay()).await,
            Err(e) => {
                tracing::warn!(run = run_id, "result refused: {e}");
                return;
            }
        }
    }
    tracing::error!(run = run_id, "gave up reporting the result");
}

struct Built {
    code: i32,
    digest: Option<String>,
    revision: Option<api::Revision>,
    steps: Vec<api::StepRecord>,
}

/// Prepare the context and run the build child. `Err`: the agent's own
/// failure (not the build's).
async fn build(
    config: &AgentConfig,
    lease: &Lease,
    dir: &Path,
    log: &LogSink,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Result<Built, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let spec = &lease.run.build;
    let ctx = dir.join("context");
    let server_host = api::host_of(&config.server).to_owned();
    let access = access::prepare(dir, lease, &server_host, &config.ca_certs)?;
    let mut revision = None;
    match &spec.context {
        ContextSource::Upload { digest } => {
            log.line(&format!("fetching context {digest}"));
            fetch::uploaded(config, digest, dir, &ctx).await?
        }
        ContextSource::Url { url } => {
            log.line(&format!("fetching context {}", fetch::redact(url)));
            let rev = fetch::url(url, dir, &ctx, &access, config.unpack_limits).await?;
            if let Some(r) = &rev {
                match &r.branch {
                    Some(b) => log.line(&format!("context at commit {} (branch {b})", r.commit)),
                    None => log.line(&format!("context at commit {}", r.commit)),
                }
            }
            revision = rev;
        }
    }
    if spec.task.is_some() {
        let env = task::TaskEnv {
            config: config.clone(),
            lease: lease.clone(),
            dir: dir.to_owned(),
            ctx: ctx.clone(),
            docker_dir: access.docker_dir.clone(),
            git_config: access.git_config.clone(),
            server_host: server_host.clone(),
            log: log.clone(),
            revision: revision.clone(),
        };
        let (code, steps) = task::run(env, stop.clone()).await?;
        return Ok(Built {
            code,
            digest: None,
            revision,
            steps,
        });
    }
    let dockerfile = match &spec.dockerfile_inline {
        Some(text) => {
            let p = dir.join("Dockerfile");
            std::fs::write(&p, text).map_err(|e| format!("writing the Dockerfile: {e}"))?;
            p
        }
        None => {
            let rel = Path::new(&spec.dockerfile);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(format!(
                    "Dockerfile path {:?} leaves the context",
                    spec.dockerfile
                ));
            }
            ctx.join(rel)
        }
    };
    let iid = dir.join("iid");
    let mut cmd = tokio::process::Command::new(&config.program);
    cmd.envs(config.unpack_limits.env());
    cmd.arg("build")
        .arg("--local")
        .arg("--data")
        .arg(&config.build_data)
        .arg("--progress")
        .arg("plain")
        .arg("-f")
        .arg(&dockerfile)
        .arg("--iidfile")
        .arg(&iid)
        .arg("--memory")
        .arg(lease.limits.memory_bytes.to_string())
        .arg("--cpus")
        .arg(lease.limits.cpus.to_string());
    if lease.allow_insecure {
        cmd.arg("--allow").arg("security.insecure");
    }
    // Tags name the server as the submitter reached it; this agent pushes
    // to the server as it was given it (another name for the same place).
    let own = lease.registry.as_ref().map(|r| r.host.as_str());
    for t in &spec.tags {
        match own
            .and_then(|o| t.strip_prefix(o))
            .filter(|r| r.starts_with('/'))
        {
            Some(rest) => cmd.arg("-t").arg(format!("{server_host}{rest}")),
            None => cmd.arg("-t").arg(t),
        };
    }
    for (k, v) in &spec.build_args {
        cmd.arg("--build-arg").arg(format!("{k}={v}"));
    }
    for (k, v) in &spec.labels {
        cmd.arg("--label").arg(format!("{k}={v}"));
    }
    if let Some(t) = &spec.target {
        cmd.arg("--target").arg(t);
    }
    if let Some(p) = &spec.platform {
        cmd.arg("--platform").arg(p);
    }
    if spec.no_cache {
        cmd.arg("--no-cache");
    }
    cmd.args(pool_cache_args(lease, &server_host, spec.no_cache));
    if spec.no_push {
        cmd.arg("--no-push");
    }
    for r in &config.insecure_registries {
        cmd.arg("--insecure-registry").arg(r);
    }
    // The server's registry speaks the scheme of the URL the agent was
    // given: plain HTTP there means plain HTTP for pushes too.
    if config.server.starts_with("http://") && !config.insecure_registries.contains(&server_host) {
        cmd.arg("--insecure-registry").arg(&server_host);
    }
    for c in &config.ca_certs {
        cmd.arg("--ca-cert").arg(c);
    }
    let mut secret_env: BTreeMap<String, String> = BTreeMap::new();
    for (i, (id, value)) in lease.secrets.iter().enumerate() {
        let var = format!("SLIPWAY_SECRET_{i}");
        cmd.arg("--secret").arg(format!("id={id},env={var}"));
        secret_env.insert(var, value.clone());
    }
    cmd.arg(&ctx)
        .envs(&secret_env)
        .env("DOCKER_CONFIG", &access.docker_dir)
        .env("GIT_CONFIG_GLOBAL", &access.git_config)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("SLIPWAY_DIE_WITH_PARENT", "1")
        .env_remove("SLIPWAY_TOKEN")
        .env_remove("SLIPWAY_SERVER")
        // Never the agent machine's own `slipway login`: a run gets only
        // its lease's credentials.
        .env("SLIPWAY_CONFIG", dir.join("no-login.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", config.program.display()))?;
    let tracker = steps::StepTracker::default();
    let pumps = [
        child.stdout.take().map(|o| {
            let (log, tracker) = (log.clone(), tracker.clone());
            tokio::spawn(async move {
                log.copy_lines_observed(o, "", |l| tracker.line(l, now_ms()))
                    .await;
            })
        }),
        child.stderr.take().map(|e| pump(e, log.clone())),
    ];
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| format!("waiting for the build: {e}"))?,
        _ = stop.wait_for(|s| s.is_some()) => {
            let _ = child.kill().await;
            let _ = child.wait().await;
            for p in pumps.into_iter().flatten() {
                let _ = p.await;
            }
            log.line("build stopped");
            return Ok(Built {
                code: 137,
                digest: None,
                revision,
                steps: tracker.finish(137, now_ms()),
            });
        }
    };
    for p in pumps.into_iter().flatten() {
        let _ = p.await;
    }
    let code = status.code().unwrap_or(128 + status_signal(&status));
    let digest = std::fs::read_to_string(&iid)
        .ok()
        .map(|s| s.trim().to_owned());
    Ok(Built {
        code,
        digest,
        revision,
        steps: tracker.finish(code, now_ms()),
    })
}

/// Milliseconds since the epoch, as the run record keeps times.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn status_signal(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.signal().unwrap_or(0)
}

fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    r: R,
    log: LogSink,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { log.copy_lines(r, "").await })
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// `--cache-from`/`--cache-to` for the pool's layer cache in the server's
/// registry, when the lease names one: every step of the build is exported
/// (BuildKit's `mode=max`), so an agent of the pool on another machine, with
/// empty build data, reuses what this one built. A cache that cannot be
/// written is a warning (`ignore-error`): the pool's cache is the agent's
/// business, not the build's. With `--no-cache` the cache is written, not read.
pub(crate) fn pool_cache_args(lease: &Lease, server_host: &str, no_cache: bool) -> Vec<String> {
    let (Some(repo), Some(_)) = (&lease.cache, &lease.registry) else {
        return Vec::new();
    };
    let r = format!("{server_host}/{repo}:{POOL_CACHE_TAG}");
    let mut args = Vec::new();
    if !no_cache {
        args.push("--cache-from".to_owned());
        args.push(format!("type=registry,ref={r}"));
    }
    args.push("--cache-to".to_owned());
    args.push(format!("type=registry,ref={r},mode=max,ignore-error=true"));
    args
}

/// The tag of a pool's cache: one cache per pool, which every export
/// extends (the builder keeps a bounded number of steps in it).
pub const POOL_CACHE_TAG: &str = "steps";
