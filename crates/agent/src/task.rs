//! Task runs on the agent: the task file is rendered with the run's values
//! (`tasks` crate, pure), and its steps run as a graph, each as a child
//! `slipway` process so a cancel or timeout is one kill:
//!
//! - `build`: `slipway build --local`, pushed to a repository of the run's
//!   own in the server's registry (`slipway-tasks/RUN/…`): ACR keeps a
//!   build's image in the agent's docker daemon until a `push`; Slipway has
//!   no daemon, so the server's registry plays that part;
//! - `push`: `slipway image copy` from there to the tag the file names;
//! - `cmd`: `slipway image run`, the image (or one an earlier step built)
//!   run in the sandbox with the context bound at `/workspace`; detached
//!   steps are reachable from later steps by their step id.
//!
//! Every step shares the context directory, so a `cmd` step can fetch a
//! file that a later `build` copies. The first failing step (without
//! `ignoreErrors`) fails the run; steps that wait for it are skipped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use api::{Lease, StepRecord};
use tasks::{Action, PlanStep};
use tokio::sync::watch;

use crate::{AgentConfig, LogSink, Stop, now_ms};

/// Where the shared context is mounted in `cmd` steps.
const WORKSPACE: &str = "/workspace";

/// The variable (and, as `/run/secrets/slipway-token`, the file) holding
/// the run's registry token in `cmd` steps.
const RUN_TOKEN: &str = "SLIPWAY_RUN_TOKEN";

/// A step id as a host name (`acb_step_0` → `acb-step-0`): letters,
/// digits, `.` and `-`, at most 63 characters.
fn host_name(id: &str) -> String {
    let n: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if n.is_empty() { "step".into() } else { n }
}

/// Whether a `cmd` step runs the docker CLI (the `docker` alias or a
/// `docker` image), which on ACR would talk to a daemon.
fn is_docker(env: &TaskEnv, image: &str) -> bool {
    let alias = env
        .lease
        .run
        .build
        .task
        .as_ref()
        .and_then(|t| t.image_aliases.get("docker"));
    alias.is_some_and(|a| a == image)
        || image
            .rsplit('/')
            .next()
            .is_some_and(|n| n == "docker" || n.starts_with("docker:"))
}

/// `cmd: docker VERB …` carried out without a daemon: `build` and `run` as
/// the task's own build and cmd steps, `push` as a push step, `tag` names
/// an image of the run anew, `pull` is left to first use, `images` lists
/// the run's images.
async fn docker_shim(
    env: &TaskEnv,
    step: &PlanStep,
    built: &Mutex<HashMap<String, String>>,
    hosts: &[String],
    stop: watch::Receiver<Option<Stop>>,
    args: &[String],
) -> Result<StepEnd, String> {
    let done = |images: Vec<String>| StepEnd {
        code: Some(0),
        images,
        message: None,
        detached: None,
    };
    let mut as_step = step.clone();
    match tasks::docker_verb(args)? {
        tasks::DockerVerb::Build(b) => as_step.action = Action::Build(b),
        tasks::DockerVerb::Push(images) => as_step.action = Action::Push { images },
        tasks::DockerVerb::Run(r) => {
            as_step.action = Action::Cmd {
                image: r.image,
                args: r.args,
            };
            as_step.env.extend(r.env);
            if r.entrypoint.is_some() {
                as_step.entry_point = r.entrypoint;
            }
            if let Some(w) = r.workdir {
                as_step.working_directory = w;
            }
            if r.user.is_some() {
                as_step.user = r.user;
            }
            as_step.detach |= r.detach;
        }
        tasks::DockerVerb::Tag { source, target } => {
            let src = resolve_image(built, &source);
            built
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(normalize(&target), src.clone());
            env.log
                .line(&format!("docker tag: {target} now names {source}"));
            return Ok(done(Vec::new()));
        }
        tasks::DockerVerb::Pull(image) => {
            env.log.line(&format!(
                "docker pull {image}: pulled when a step uses it (no daemon to pull into)"
            ));
            return Ok(done(Vec::new()));
        }
        tasks::DockerVerb::Images => {
            let map = built.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            for n in names {
                env.log.raw(&format!("[{}] {n}\n", step.id));
            }
            return Ok(done(Vec::new()));
        }
    }
    attempt_step(env, &as_step, built, hosts, stop).await
}

/// `az login --identity` asks for a managed identity, which a private pool
/// does not have: say what a task gets instead.
fn refuse_managed_identity(env: &TaskEnv, image: &str, args: &[String]) -> Result<(), String> {
    let task = env.lease.run.build.task.as_ref();
    let az = task.and_then(|t| t.image_aliases.get("az"));
    let is_az = az.is_some_and(|a| a == image)
        || image
            .rsplit('/')
            .next()
            .is_some_and(|n| n == "az" || n.starts_with("az:") || n.starts_with("azure-cli"))
        || args.first().is_some_and(|a| a == "az");
    let login = args.iter().any(|a| a == "login") && args.iter().any(|a| a == "--identity");
    if is_az && login {
        return Err(format!(
            "az login --identity: Slipway tasks have no managed identity; each run gets a \
             scoped token instead (${RUN_TOKEN}, /run/secrets/slipway-token) for the server's \
             registry ({}), and stored secrets (slipway secret set) for anything else",
            env.server_host
        ));
    }
    Ok(())
}

/// What every step needs, shared by the steps running at once.
pub(crate) struct TaskEnv {
    pub config: AgentConfig,
    pub lease: Lease,
    /// The run's scratch dir.
    pub dir: PathBuf,
    /// The context: the working directory every step shares.
    pub ctx: PathBuf,
    pub docker_dir: PathBuf,
    pub git_config: PathBuf,
    /// `host:port` of the server as this agent reaches it.
    pub server_host: String,
    pub log: LogSink,
    pub revision: Option<api::Revision>,
}

/// How a step ended.
#[derive(Debug)]
struct StepEnd {
    code: Option<i32>,
    images: Vec<String>,
    message: Option<String>,
    /// A detached step's process, stopped when the task ends.
    detached: Option<tokio::process::Child>,
}

/// Run the task of `env.lease`; the exit code (0 when every step did) and
/// the step records.
pub(crate) async fn run(
    env: TaskEnv,
    stop: watch::Receiver<Option<Stop>>,
) -> Result<(i32, Vec<StepRecord>), String> {
    let Some(task) = env.lease.run.build.task.clone() else {
        return Err("not a task run".into());
    };
    let plan = match render(&env, &task) {
        Ok(p) => p,
        Err(e) => {
            env.log.line(&format!("error: {e}"));
            return Ok((1, Vec::new()));
        }
    };
    env.log.line(&format!(
        "task {} ({} steps)",
        task.name.as_deref().unwrap_or(&task.origin),
        plan.steps.len()
    ));
    if let Err(e) = write_volumes(&env, &plan) {
        env.log.line(&format!("error: {e}"));
        return Ok((1, Vec::new()));
    }
    let env = Arc::new(env);
    let built: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let detached_ids: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| s.detach)
        .map(|s| s.id.clone())
        .collect();

    let mut records: BTreeMap<String, StepRecord> = BTreeMap::new();
    let mut waiting: Vec<PlanStep> = plan.steps.clone();
    let mut running = tokio::task::JoinSet::new();
    let mut detached: Vec<(String, tokio::process::Child)> = Vec::new();
    let mut failed: Option<String> = None;
    loop {
        // Start every step whose dependencies are done; skip those whose
        // dependencies failed, and everything once the run has failed.
        let mut i = 0;
        while i < waiting.len() {
            let step = &waiting[i];
            let states: Vec<&str> = step
                .depends_on
                .iter()
                .map(|d| records.get(d).map_or("", |r| r.state.as_str()))
                .collect();
            let blocked = states
                .iter()
                .any(|s| matches!(*s, "failed" | "skipped" | "canceled"));
            if failed.is_some() || blocked {
                let step = waiting.remove(i);
                let why = match &failed {
                    Some(f) => format!("not run: step {f} failed"),
                    None => "not run: a step it waits for failed".to_owned(),
                };
                env.log.line(&format!("step {}: {why}", step.id));
                records.insert(step.id.clone(), record(&step, "skipped", None, Some(why)));
                continue;
            }
            if states
                .iter()
                .all(|s| matches!(*s, "succeeded" | "ignored" | "detached"))
            {
                let step = waiting.remove(i);
                let mut rec = record(&step, "running", None, None);
                rec.started_at = Some(now_ms());
                records.insert(step.id.clone(), rec);
                let env = env.clone();
                let built = built.clone();
                let hosts = detached_ids.clone();
                let stop = stop.clone();
                running.spawn(async move {
                    let end = run_step(&env, &step, &built, &hosts, stop).await;
                    (step, end)
                });
                continue;
            }
            i += 1;
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (step, end) = joined.map_err(|e| format!("a step's task failed: {e}"))?;
        let ok = end.code.is_some_and(|c| succeeded(&step, c)) && end.message.is_none();
        let state = match (ok, step.ignore_errors, &end.detached) {
            (true, _, Some(_)) => "detached",
            (true, _, None) => "succeeded",
            (false, true, _) => "ignored",
            (false, false, _) if stop.borrow().is_some() => "canceled",
            (false, false, _) => "failed",
        };
        let rec = records
            .entry(step.id.clone())
            .or_insert_with(|| record(&step, state, None, None));
        rec.state = state.to_owned();
        rec.exit_code = end.code;
        rec.images = end.images.clone();
        rec.message = end.message.clone();
        if end.detached.is_none() {
            rec.finished_at = Some(now_ms());
        }
        match state {
            "failed" => {
                let why = end
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("exit code {}", end.code.unwrap_or(-1)));
                env.log
                    .line(&format!("step {} failed ({why}): the run fails", step.id));
                if failed.is_none() {
                    failed = Some(step.id.clone());
                }
            }
            "ignored" => env.log.line(&format!(
                "step {} failed; ignoreErrors: the run goes on",
                step.id
            )),
            "canceled" => {
                failed.get_or_insert_with(|| step.id.clone());
            }
            _ => env.log.line(&format!("step {} {state}", step.id)),
        }
        if let Some(child) = end.detached {
            detached.push((step.id.clone(), child));
        }
    }
    // Detached steps end with the task.
    for (id, mut child) in detached {
        let _ = child.kill().await;
        let _ = child.wait().await;
        if let Some(r) = records.get_mut(&id)
            && r.state == "detached"
        {
            r.state = "stopped".into();
            r.finished_at = Some(now_ms());
        }
        env.log.line(&format!(
            "step {id}: detached, stopped at the end of the task"
        ));
    }
    // Records in the file's order.
    let steps: Vec<StepRecord> = plan
        .steps
        .iter()
        .filter_map(|s| records.remove(&s.id))
        .collect();
    let code = match failed {
        None => 0,
        Some(_) => 1,
    };
    Ok((code, steps))
}

fn record(step: &PlanStep, state: &str, code: Option<i32>, message: Option<String>) -> StepRecord {
    StepRecord {
        id: step.id.clone(),
        kind: match step.action {
            Action::Build(_) => "build",
            Action::Push { .. } => "push",
            Action::Cmd { .. } => "cmd",
        }
        .into(),
        state: state.into(),
        started_at: None,
        finished_at: None,
        exit_code: code,
        images: Vec::new(),
        message,
    }
}

/// Where a secret volume's files are written for the steps that mount it.
fn volume_dir(env: &TaskEnv, name: &str) -> PathBuf {
    env.dir.join("volumes").join(name)
}

/// The task's secret volumes as directories of files (0600 in a 0700
/// directory of the run's scratch, gone with it), bound read-only where a
/// step's `volumeMounts` say.
fn write_volumes(env: &TaskEnv, plan: &tasks::Plan) -> Result<(), String> {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;
    for v in &plan.volumes {
        let plain = |s: &str| {
            !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
        };
        if !plain(&v.name) {
            return Err(format!("volume name {:?}: a plain name", v.name));
        }
        let dir = volume_dir(env, &v.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        for (file, b64) in &v.files {
            if !plain(file) {
                return Err(format!(
                    "volume {}: file name {file:?}: a plain name",
                    v.name
                ));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("volume {}: {file}: not base64: {e}", v.name))?;
            crate::write_private(&dir.join(file), &bytes)
                .map_err(|e| format!("volume {}: writing {file}: {e}", v.name))?;
        }
    }
    Ok(())
}

/// `exitedWith` / `exitedWithout` decide, else exit code 0.
fn succeeded(step: &PlanStep, code: i32) -> bool {
    let c = i64::from(code);
    if !step.exited_with.is_empty() {
        return step.exited_with.contains(&c);
    }
    if !step.exited_without.is_empty() {
        return !step.exited_without.contains(&c);
    }
    code == 0
}

/// The task file rendered with this run's values and planned.
fn render(env: &TaskEnv, task: &api::TaskSpec) -> Result<tasks::Plan, String> {
    let run = &env.lease.run;
    let registry = env.server_host.clone();
    let mut ctx = tasks::RenderContext::new(tasks::RunInfo {
        id: run.id.clone(),
        shared_volume: "workspace".into(),
        registry,
        date: SystemTime::now(),
        os: "linux".into(),
        architecture: "amd64".into(),
        commit: env
            .revision
            .as_ref()
            .map(|r| r.commit.clone())
            .unwrap_or_default(),
        branch: env
            .revision
            .as_ref()
            .and_then(|r| r.branch.clone())
            .unwrap_or_default(),
        task_name: task.name.clone().unwrap_or_default(),
        ..Default::default()
    });
    ctx.image_aliases = task.image_aliases.clone();
    ctx.secrets = env.lease.secrets.clone();
    for (i, v) in task.values.iter().enumerate() {
        ctx.add_values_yaml(v, &format!("values file {}", i + 1))
            .map_err(|e| e.to_string())?;
    }
    for kv in &task.set {
        ctx.set(kv).map_err(|e| format!("--set {kv}: {e}"))?;
    }
    let policy = tasks::Policy {
        allow_privileged: env.lease.allow_insecure,
    };
    tasks::load(&task.file, &task.origin, &ctx, &policy).map_err(|e| e.to_string())
}

/// One step: its start delay, then `repeat + 1` runs, each retried up to
/// `retries` times `retryDelay` apart, each bounded by `timeout`.
async fn run_step(
    env: &TaskEnv,
    step: &PlanStep,
    built: &Mutex<HashMap<String, String>>,
    hosts: &[String],
    stop: watch::Receiver<Option<Stop>>,
) -> StepEnd {
    if step.start_delay > 0 {
        tokio::time::sleep(Duration::from_secs(step.start_delay)).await;
    }
    let mut last = StepEnd {
        code: None,
        images: Vec::new(),
        message: Some("not run".into()),
        detached: None,
    };
    for round in 0..=step.repeat {
        for attempt in 0..=step.retries {
            if stop.borrow().is_some() {
                last.message = Some("stopped".into());
                return last;
            }
            if attempt > 0 {
                env.log.line(&format!(
                    "step {}: retry {attempt} of {} in {}s",
                    step.id, step.retries, step.retry_delay
                ));
                tokio::time::sleep(Duration::from_secs(step.retry_delay)).await;
            }
            let what = if step.repeat > 0 {
                format!(" (repeat {} of {})", round + 1, step.repeat + 1)
            } else {
                String::new()
            };
            env.log.line(&format!("step {} started{what}", step.id));
            last = match attempt_step(env, step, built, hosts, stop.clone()).await {
                Ok(end) => end,
                Err(message) => StepEnd {
                    code: None,
                    images: Vec::new(),
                    message: Some(message),
                    detached: None,
                },
            };
            if last.detached.is_some()
                || (last.message.is_none() && last.code.is_some_and(|c| succeeded(step, c)))
            {
                break;
            }
        }
        let ok = last.message.is_none() && last.code.is_some_and(|c| succeeded(step, c));
        if !ok || last.detached.is_some() {
            return last;
        }
    }
    last
}

/// The image a reference names for this run: one an earlier `build` step
/// made (in the run's own repository), else the reference itself.
fn resolve_image(built: &Mutex<HashMap<String, String>>, image: &str) -> String {
    let map = built.lock().unwrap_or_else(|p| p.into_inner());
    map.get(&normalize(image))
        .cloned()
        .unwrap_or_else(|| image.to_owned())
}

/// `app` → `docker.io/library/app:latest`, so a tag matches however it is
/// spelt.
fn normalize(image: &str) -> String {
    image
        .parse::<oci::Reference>()
        .map_or_else(|_| image.to_owned(), |r| r.to_string())
}

/// Where a `build` step's `tag` lives until a `push`: a repository of the
/// run's own in the server's registry.
fn private_ref(env: &TaskEnv, tag: &str) -> String {
    let (repo, t) = match tag.parse::<oci::Reference>() {
        Ok(r) => (
            format!("{}/{}", r.registry, r.repository),
            r.tag.clone().unwrap_or_else(|| "latest".into()),
        ),
        Err(_) => (tag.to_owned(), "latest".to_owned()),
    };
    let clean: String = repo
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-').to_owned();
    format!(
        "{}/slipway-tasks/{}/{}:{t}",
        env.server_host,
        env.lease.run.id.to_ascii_lowercase(),
        if clean.is_empty() {
            "image".into()
        } else {
            clean
        }
    )
}

/// The context directory a step's working directory names.
fn host_dir(env: &TaskEnv, container_dir: &str) -> Result<PathBuf, String> {
    let rel = container_dir
        .strip_prefix(WORKSPACE)
        .ok_or_else(|| format!("working directory {container_dir} is outside {WORKSPACE}"))?;
    inside(
        &env.ctx,
        &env.ctx,
        rel.trim_start_matches('/'),
        "working directory",
    )
}

/// `rel` (a path the task file gives: a build context, `-f`, a secret's
/// `src`) under `base`, which is inside the run's context: no absolute path,
/// no `..`, and, where it exists, no symlink leading out of the context. A
/// task file is input from outside; it must not read the agent's own files.
fn inside(ctx: &Path, base: &Path, rel: &str, what: &str) -> Result<PathBuf, String> {
    let r = Path::new(rel);
    if r.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(format!(
            "{what} {rel:?}: a relative path inside the context, without '..'"
        ));
    }
    let p = base.join(r);
    if let (Ok(real), Ok(ctx)) = (p.canonicalize(), ctx.canonicalize())
        && !real.starts_with(&ctx)
    {
        return Err(format!("{what} {rel:?} leads outside the context"));
    }
    Ok(p)
}

/// A `slipway` child with the run's registry and git access, no login of
/// the agent machine's own, killed with the agent.
fn slipway(env: &TaskEnv) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&env.config.program);
    cmd.envs(env.config.unpack_limits.env());
    cmd.env("DOCKER_CONFIG", &env.docker_dir)
        .env("GIT_CONFIG_GLOBAL", &env.git_config)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("SLIPWAY_DIE_WITH_PARENT", "1")
        .env("SLIPWAY_CONFIG", env.dir.join("no-login.json"))
        .env_remove("SLIPWAY_TOKEN")
        .env_remove("SLIPWAY_SERVER")
        .env_remove("SLIPWAY_DATA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn registry_flags(env: &TaskEnv, cmd: &mut tokio::process::Command) {
    let mut insecure = env.config.insecure_registries.clone();
    if env.config.server.starts_with("http://") && !insecure.contains(&env.server_host) {
        insecure.push(env.server_host.clone());
    }
    for r in insecure {
        cmd.arg("--insecure-registry").arg(r);
    }
    for c in &env.config.ca_certs {
        cmd.arg("--ca-cert").arg(c);
    }
}

async fn attempt_step(
    env: &TaskEnv,
    step: &PlanStep,
    built: &Mutex<HashMap<String, String>>,
    hosts: &[String],
    stop: watch::Receiver<Option<Stop>>,
) -> Result<StepEnd, String> {
    let step_env: BTreeMap<String, String> = step
        .env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match &step.action {
        Action::Build(b) => {
            if b.context.contains("://") {
                return Err(format!(
                    "build context {}: a URL context in a task's build step is not supported; \
                     fetch it into the working directory with a cmd step first",
                    b.context
                ));
            }
            let workdir = host_dir(env, &step.working_directory)?;
            let context = inside(&env.ctx, &workdir, &b.context, "build context")?;
            let iid = env.dir.join(format!("iid-{}", step.id));
            let mut cmd = slipway(env);
            cmd.arg("build")
                .arg("--local")
                .arg("--data")
                .arg(&env.config.build_data)
                .arg("--progress")
                .arg("plain")
                .arg("--iidfile")
                .arg(&iid)
                .arg("--memory")
                .arg(env.lease.limits.memory_bytes.to_string())
                .arg("--cpus")
                .arg(env.lease.limits.cpus.to_string());
            if env.lease.allow_insecure {
                cmd.arg("--allow").arg("security.insecure");
            }
            if let Some(f) = &b.dockerfile {
                cmd.arg("-f").arg(inside(&env.ctx, &workdir, f, "-f")?);
            } else {
                cmd.arg("-f")
                    .arg(inside(&env.ctx, &context, "Dockerfile", "Dockerfile")?);
            }
            let mut privates = Vec::new();
            for t in &b.tags {
                let p = private_ref(env, t);
                cmd.arg("-t").arg(&p);
                privates.push((t.clone(), p));
            }
            if b.tags.is_empty() {
                cmd.arg("--no-push");
            }
            for a in &b.build_args {
                let value = a.value.clone().or_else(|| step_env.get(&a.name).cloned());
                if let Some(v) = value {
                    cmd.arg("--build-arg").arg(format!("{}={v}", a.name));
                }
            }
            for l in &b.labels {
                if let Some(v) = &l.value {
                    cmd.arg("--label").arg(format!("{}={v}", l.name));
                }
            }
            if let Some(t) = &b.target {
                cmd.arg("--target").arg(t);
            }
            if let Some(p) = &b.platform {
                cmd.arg("--platform").arg(p);
            }
            let no_cache = b.no_cache || step.cache == Some(tasks::Cache::Disabled);
            if no_cache {
                cmd.arg("--no-cache");
            }
            cmd.args(crate::pool_cache_args(
                &env.lease,
                &env.server_host,
                no_cache,
            ));
            let mut secret_env = BTreeMap::new();
            for (i, s) in b.secrets.iter().enumerate() {
                let value = match (&s.src, &s.env) {
                    (Some(src), _) => {
                        let p = inside(
                            &env.ctx,
                            &workdir,
                            src,
                            &format!("--secret id={}: src", s.id),
                        )?;
                        cmd.arg("--secret")
                            .arg(format!("id={},src={}", s.id, p.display()));
                        continue;
                    }
                    (None, Some(var)) => step_env
                        .get(var)
                        .or_else(|| env.lease.secrets.get(var))
                        .cloned(),
                    (None, None) => env.lease.secrets.get(&s.id).cloned(),
                };
                let Some(value) = value else {
                    return Err(format!("--secret id={}: no value for it", s.id));
                };
                let var = format!("SLIPWAY_STEP_SECRET_{i}");
                cmd.arg("--secret").arg(format!("id={},env={var}", s.id));
                secret_env.insert(var, value);
            }
            registry_flags(env, &mut cmd);
            cmd.arg(&context).envs(&secret_env);
            let code = supervise(env, step, cmd, stop).await?;
            let mut images = Vec::new();
            if code == 0 {
                let digest = std::fs::read_to_string(&iid)
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_default();
                let mut map = built.lock().unwrap_or_else(|p| p.into_inner());
                for (tag, p) in privates {
                    map.insert(normalize(&tag), p);
                    images.push(if digest.is_empty() {
                        tag
                    } else {
                        format!("{tag}@{digest}")
                    });
                }
            }
            Ok(StepEnd {
                code: Some(code),
                images,
                message: None,
                detached: None,
            })
        }
        Action::Push { images } => {
            let mut pushed = Vec::new();
            for image in images {
                let src = resolve_image(built, image);
                if src == *image {
                    return Err(format!(
                        "push {image}: no earlier build step of this task built it"
                    ));
                }
                let mut cmd = slipway(env);
                cmd.arg("image").arg("copy").arg(&src).arg(image);
                registry_flags(env, &mut cmd);
                let out = tokio::time::timeout(Duration::from_secs(step.timeout), cmd.output())
                    .await
                    .map_err(|_| format!("push {image}: timed out after {}s", step.timeout))?
                    .map_err(|e| format!("starting {}: {e}", env.config.program.display()))?;
                for l in String::from_utf8_lossy(&out.stderr).lines() {
                    env.log.raw(&format!("[{}] {l}\n", step.id));
                }
                if !out.status.success() {
                    return Ok(StepEnd {
                        code: Some(out.status.code().unwrap_or(1)),
                        images: pushed,
                        message: Some(format!("push {image} failed")),
                        detached: None,
                    });
                }
                let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                env.log.line(&format!("pushed {line}"));
                pushed.push(line);
            }
            Ok(StepEnd {
                code: Some(0),
                images: pushed,
                message: None,
                detached: None,
            })
        }
        Action::Cmd { image, args } if is_docker(env, image) => {
            Box::pin(docker_shim(env, step, built, hosts, stop, args)).await
        }
        Action::Cmd { image, args } => {
            refuse_managed_identity(env, image, args)?;
            let mut cmd = slipway(env);
            cmd.arg("image")
                .arg("run")
                .arg("--data")
                .arg(&env.config.build_data)
                .arg("-v")
                .arg(format!("{}:{WORKSPACE}", env.ctx.display()))
                .arg("-w")
                .arg(&step.working_directory)
                .arg("--hostname")
                .arg(host_name(&step.id));
            for e in &step.env {
                cmd.arg("-e").arg(e);
            }
            for (k, v) in [
                ("SLIPWAY_RUN_ID", env.lease.run.id.clone()),
                ("SLIPWAY_REGISTRY", env.server_host.clone()),
            ] {
                cmd.arg("-e").arg(format!("{k}={v}"));
            }
            // The task's identity: the run's own registry token (its
            // repositories, only while the run lasts), as a variable and a
            // file, so steps need no long-lived credential of their own.
            if let Some(reg) = &env.lease.registry {
                cmd.env(RUN_TOKEN, &reg.password)
                    .arg("--pass-env")
                    .arg(RUN_TOKEN)
                    .arg("--secret")
                    .arg(format!("id=slipway-token,env={RUN_TOKEN}"));
            }
            if let Some(e) = &step.entry_point {
                cmd.arg("--entrypoint").arg(e);
            }
            if let Some(u) = &step.user {
                cmd.arg("-u").arg(u);
            }
            if step.privileged {
                cmd.arg("--privileged");
            }
            if step.network.as_deref() == Some("none") {
                cmd.arg("--network").arg("none");
            }
            for m in &step.volume_mounts {
                let dir = volume_dir(env, &m.name);
                if !dir.is_dir() {
                    return Err(format!("volumeMounts: no volume {:?} in the task", m.name));
                }
                cmd.arg("-v")
                    .arg(format!("{}:{}:ro", dir.display(), m.mount_path));
            }
            for h in hosts.iter().filter(|h| **h != step.id) {
                cmd.arg("--add-host").arg(format!("{h}:127.0.0.1"));
            }
            registry_flags(env, &mut cmd);
            cmd.arg("--").arg(resolve_image(built, image)).args(args);
            if step.detach {
                let mut child = cmd
                    .spawn()
                    .map_err(|e| format!("starting {}: {e}", env.config.program.display()))?;
                pump_output(env, step, &mut child);
                return Ok(StepEnd {
                    code: Some(0),
                    images: Vec::new(),
                    message: None,
                    detached: Some(child),
                });
            }
            let code = supervise(env, step, cmd, stop).await?;
            Ok(StepEnd {
                code: Some(code),
                images: Vec::new(),
                message: None,
                detached: None,
            })
        }
    }
}

/// Stream a child's output into the log, each line under the step's id.
fn pump_output(env: &TaskEnv, step: &PlanStep, child: &mut tokio::process::Child) {
    fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(r: R, log: LogSink, id: String) {
        tokio::spawn(async move { log.copy_lines(r, &format!("[{id}] ")).await });
    }
    if let Some(o) = child.stdout.take() {
        pump(o, env.log.clone(), step.id.clone());
    }
    if let Some(e) = child.stderr.take() {
        pump(e, env.log.clone(), step.id.clone());
    }
}

/// Run a child to its end, its output in the log; killed on the step's
/// timeout or a stop. The exit code, or an error message.
async fn supervise(
    env: &TaskEnv,
    step: &PlanStep,
    mut cmd: tokio::process::Command,
    mut stop: watch::Receiver<Option<Stop>>,
) -> Result<i32, String> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", env.config.program.display()))?;
    pump_output(env, step, &mut child);
    let limit = Duration::from_secs(step.timeout.max(1));
    tokio::select! {
        s = child.wait() => {
            let s = s.map_err(|e| format!("waiting for step {}: {e}", step.id))?;
            use std::os::unix::process::ExitStatusExt;
            Ok(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)))
        }
        _ = tokio::time::sleep(limit) => {
            let _ = child.kill().await;
            let _ = child.wait().await;
            Err(format!("timed out after {}s", step.timeout))
        }
        _ = async { stop.wait_for(|s| s.is_some()).await.map(drop) } => {
            let _ = child.kill().await;
            let _ = child.wait().await;
            Err("stopped".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::inside;

    #[test]
    fn task_paths_stay_inside_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(ctx.join("app")).unwrap();
        std::os::unix::fs::symlink("/etc", ctx.join("out")).unwrap();
        assert!(inside(&ctx, &ctx, "app", "c").is_ok());
        assert!(inside(&ctx, &ctx, "", "c").is_ok());
        assert!(inside(&ctx, &ctx, "./app/Dockerfile", "c").is_ok());
        for bad in ["../x", "app/../../x", "/etc/passwd", "out", "out/passwd"] {
            assert!(
                inside(&ctx, &ctx, bad, "c").is_err(),
                "{bad} was let through"
            );
        }
    }
}
