//! `slipway run` (`az acr run`), `slipway task …` (`az acr task …`) and
//! `slipway secret …`: ACR task files run on a pool. The file is checked
//! here (rendered with placeholders) before anything is uploaded, again by
//! the server when it queues the run, and rendered for real by the agent
//! with the run's id, date and values.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use api::{ContextSource, RunRequest, RunState, TaskDef, TaskRunRequest, TaskSpec};
use clap::Subcommand;

use crate::ctl::{ClientArgs, Format, client, print_json};

/// What renders a task file: `--values`, `--set`, `--set-secret`.
#[derive(clap::Args, Clone, Default)]
pub struct RenderArgs {
    /// A values file (YAML) for `{{.Values.x}}`; repeatable, later wins.
    #[arg(long = "values", value_name = "FILE")]
    values: Vec<PathBuf>,
    /// KEY=VALUE for `{{.Values.KEY}}`, after the values files; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// KEY=VALUE for `{{.Secrets.KEY}}`: sealed on the server, handed to the
    /// agent with the lease only, masked in the log; repeatable.
    #[arg(long = "set-secret", value_name = "KEY=VALUE")]
    set_secret: Vec<String>,
}

impl RenderArgs {
    fn values(&self) -> Result<Vec<String>> {
        self.values
            .iter()
            .map(|p| {
                std::fs::read_to_string(p).with_context(|| format!("--values {}", p.display()))
            })
            .collect()
    }

    fn secrets(&self) -> Result<BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        for kv in &self.set_secret {
            let (k, v) = kv.split_once('=').with_context(|| {
                format!(
                    "--set-secret {k}: expected KEY=VALUE",
                    k = kv.split('=').next().unwrap_or(kv)
                )
            })?;
            m.insert(k.to_owned(), v.to_owned());
        }
        for w in api::short_secret_warnings(&m) {
            eprintln!("warning: {w}");
        }
        Ok(m)
    }
}

/// The task file: `-f FILE` (`-` for stdin), or `--cmd "IMAGE args"` as a
/// one-step task.
#[derive(clap::Args, Clone, Default)]
pub struct FileArgs {
    /// The task file (acb.yaml); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<String>,
    /// A one-step task: run IMAGE with args (e.g. --cmd "busybox echo hi").
    #[arg(long = "cmd", value_name = "IMAGE ARGS", conflicts_with = "file")]
    cmd: Option<String>,
}

impl FileArgs {
    /// `(text, origin)` of the task file.
    fn read(&self) -> Result<(String, String)> {
        match (&self.file, &self.cmd) {
            (Some(f), None) if f == "-" => {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the task file from standard input")?;
                Ok((s, "stdin".into()))
            }
            (Some(f), None) => Ok((
                std::fs::read_to_string(f).with_context(|| format!("reading the task file {f}"))?,
                f.clone(),
            )),
            (None, Some(cmd)) => {
                // A YAML string with every character escaped as JSON does
                // (JSON strings are YAML): no quoting mistakes.
                let quoted = serde_json::to_string(cmd)?;
                Ok((
                    format!("version: v1.1.0\nsteps:\n  - cmd: {quoted}\n"),
                    "--cmd".into(),
                ))
            }
            _ => bail!(
                "give the task file with -f FILE (or -f - for stdin), or --cmd \"IMAGE args\""
            ),
        }
    }
}

fn spec(file: &FileArgs, render: &RenderArgs) -> Result<TaskSpec> {
    let (text, origin) = file.read()?;
    Ok(TaskSpec {
        file: text,
        origin,
        values: render.values()?,
        set: render.set.clone(),
        ..Default::default()
    })
}

/// Render and plan with placeholders: what `--dry-run` prints, and the check
/// before anything is uploaded. Errors name FILE:LINE.
fn plan(spec: &TaskSpec, secrets: &BTreeMap<String, String>) -> Result<tasks::Plan> {
    let mut ctx = tasks::RenderContext::new(tasks::RunInfo {
        id: "dry-run".into(),
        shared_volume: "workspace".into(),
        registry: "registry".into(),
        date: std::time::SystemTime::now(),
        os: "linux".into(),
        architecture: "amd64".into(),
        task_name: spec.name.clone().unwrap_or_default(),
        ..Default::default()
    });
    ctx.placeholder_secrets = true;
    ctx.secrets = secrets.clone();
    for (i, v) in spec.values.iter().enumerate() {
        ctx.add_values_yaml(v, &format!("values file {}", i + 1))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for kv in &spec.set {
        ctx.set(kv).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    tasks::load(&spec.file, &spec.origin, &ctx, &tasks::Policy::default())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A local directory is packed and uploaded; a URL is fetched by the agent;
/// `/dev/null` is no context (an empty one).
async fn context_source(c: &api::Client, ctx: &str) -> Result<ContextSource> {
    if crate::remote::is_url(ctx) {
        return Ok(ContextSource::Url {
            url: ctx.to_owned(),
        });
    }
    if ctx == "/dev/null" {
        let empty = tempfile::tempdir().context("creating an empty context")?;
        let digest = crate::remote::upload_context(c, empty.path(), "Dockerfile").await?;
        return Ok(ContextSource::Upload { digest });
    }
    let dir = Path::new(ctx);
    if !dir.is_dir() {
        bail!("context {ctx}: not a directory, a git or tarball URL, or /dev/null");
    }
    let digest = crate::remote::upload_context(c, dir, "Dockerfile").await?;
    Ok(ContextSource::Upload { digest })
}

/// Follow a queued run and exit as it ended.
async fn follow(c: &api::Client, run: api::Run, wait: bool, logs: bool, json: bool) -> Result<()> {
    if !wait {
        println!("{}", run.id);
        return Ok(());
    }
    eprintln!("run {} queued on pool {}", run.id, run.pool);
    let run = crate::ctl::follow(c, &run.id, true, logs).await?;
    if json {
        print_json(&run)?;
    } else {
        for s in &run.steps {
            let took = match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) => format!("{:.1}s", (b - a) as f64 / 1000.0),
                _ => "-".into(),
            };
            eprintln!(
                "step {:<20} {:<6} {:<10} {took:>8} {}",
                s.id,
                s.kind,
                s.state,
                s.images.join(" ")
            );
        }
    }
    match run.state {
        RunState::Succeeded => Ok(()),
        state => {
            let why = run.message.clone().unwrap_or_default();
            eprintln!("error: run {} {state}: {why}", run.id);
            std::process::exit(run.exit_code.unwrap_or(1).clamp(1, 255));
        }
    }
}

/// `slipway run`: a task file run once, like `az acr run`.
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    file: FileArgs,
    #[command(flatten)]
    render: RenderArgs,
    /// The context: a directory (uploaded), a git or tarball URL (fetched by
    /// the agent), or /dev/null for none.
    #[arg(default_value = ".")]
    context: String,
    /// Pool to run on.
    #[arg(long, default_value = "default")]
    pool: String,
    /// Run time limit (e.g. 600s, 30m).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Print the run id and return.
    #[arg(long)]
    no_wait: bool,
    /// Wait without printing the log.
    #[arg(long)]
    no_logs: bool,
    /// Check and render the file, print the plan (secrets as ***), and exit:
    /// no server needed. Exit 1 with FILE:LINE on an error.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: RunArgs) -> Result<()> {
    let spec = spec(&args.file, &args.render)?;
    let secrets = args.render.secrets()?;
    let plan = plan(&spec, &secrets)?;
    if args.dry_run {
        print!("{}", plan.display());
        return Ok(());
    }
    let c = client(args.client.server.as_deref())?;
    let context = context_source(&c, &args.context).await?;
    let run = c
        .submit_run(&RunRequest {
            pool: args.pool.clone(),
            build: api::BuildSpec::for_task(context, spec),
            secrets,
            timeout_secs: args.timeout.map(|d| d.as_secs().max(1)),
        })
        .await
        .context("queueing the task")?;
    follow(
        &c,
        run,
        !args.no_wait,
        !args.no_logs,
        args.client.output == Format::Json,
    )
    .await
}

/// What defines a stored task (`task create`, `task update`).
#[derive(clap::Args)]
pub struct DefArgs {
    #[command(flatten)]
    file: FileArgs,
    #[command(flatten)]
    render: RenderArgs,
    /// Instead of a task file: build this Dockerfile (with -t) as a one-step
    /// build and push task.
    #[arg(long = "dockerfile", value_name = "FILE", conflicts_with_all = ["file", "cmd"])]
    dockerfile: Option<String>,
    /// With --dockerfile: image tags; repeatable.
    #[arg(short = 't', long = "image", value_name = "IMAGE")]
    images: Vec<String>,
    /// With --dockerfile: build arguments; repeatable.
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Default context: a git or tarball URL.
    #[arg(short = 'c', long = "context")]
    context: Option<String>,
    /// Run time limit (e.g. 600s, 30m).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Enabled or Disabled.
    #[arg(long, default_value = "Enabled")]
    status: String,
}

impl DefArgs {
    fn def(&self, name: &str, pool: &str) -> Result<TaskDef> {
        if !self.render.set_secret.is_empty() {
            bail!(
                "--set-secret belongs to `task run`; a stored task reads stored secrets (slipway secret set)"
            );
        }
        let task = match &self.dockerfile {
            Some(df) => {
                if self.images.is_empty() {
                    bail!("--dockerfile needs at least one -t IMAGE");
                }
                let mut build = format!("-f {}", shell_words::quote(df));
                for t in &self.images {
                    build.push_str(&format!(" -t {}", shell_words::quote(t)));
                }
                for a in &self.build_args {
                    build.push_str(&format!(" --build-arg {}", shell_words::quote(a)));
                }
                build.push_str(" .");
                let images: Vec<String> = self
                    .images
                    .iter()
                    .map(serde_json::to_string)
                    .collect::<Result<_, _>>()?;
                TaskSpec {
                    file: format!(
                        "version: v1.1.0\nsteps:\n  - build: {}\n  - push: [{}]\n",
                        serde_json::to_string(&build)?,
                        images.join(", ")
                    ),
                    origin: "--dockerfile".into(),
                    values: self.render.values()?,
                    set: self.render.set.clone(),
                    ..Default::default()
                }
            }
            None => spec(&self.file, &self.render)?,
        };
        plan(&task, &BTreeMap::new())?;
        Ok(TaskDef {
            name: name.to_owned(),
            pool: pool.to_owned(),
            task,
            context: self.context.clone(),
            timeout_secs: self.timeout.map(|d| d.as_secs().max(1)),
            status: self.status.clone(),
            created_at: 0,
            updated_at: 0,
        })
    }
}

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Store a task (admin token): a task file, a Dockerfile build, or --cmd.
    Create {
        name: String,
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        def: Box<DefArgs>,
    },
    /// Replace a stored task's definition (admin token).
    Update {
        name: String,
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        def: Box<DefArgs>,
    },
    /// A stored task: pool, context, the file.
    Show { name: String },
    /// Stored tasks.
    List,
    /// Delete a stored task (admin token).
    Delete { name: String },
    /// Run a stored task, follow its log, exit with its result.
    Run {
        name: String,
        /// The context (a directory, URL or /dev/null); default: the task's.
        #[arg(short = 'c', long = "context")]
        context: Option<String>,
        /// KEY=VALUE after the task's own; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// KEY=VALUE for `{{.Secrets.KEY}}`; repeatable.
        #[arg(long = "set-secret", value_name = "KEY=VALUE")]
        set_secret: Vec<String>,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        no_logs: bool,
    },
    /// A stored task's recent runs.
    ListRuns {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

pub async fn task(args: &ClientArgs, cmd: TaskCommand) -> Result<()> {
    let c = client(args.server.as_deref())?;
    let json = args.output == Format::Json;
    match cmd {
        TaskCommand::Create { name, pool, def } => {
            let t = c.create_task(&def.def(&name, &pool)?).await?;
            if json {
                return print_json(&t);
            }
            println!("task {} created on pool {}", t.name, t.pool);
        }
        TaskCommand::Update { name, pool, def } => {
            let t = c.update_task(&def.def(&name, &pool)?).await?;
            if json {
                return print_json(&t);
            }
            println!("task {} updated", t.name);
        }
        TaskCommand::Show { name } => {
            let t = c.task(&name).await?;
            if json {
                return print_json(&t);
            }
            println!("task     {}", t.name);
            println!("pool     {}", t.pool);
            println!("status   {}", t.status);
            println!("context  {}", t.context.as_deref().unwrap_or("-"));
            println!("file     {}", t.task.origin);
            print!("{}", t.task.file);
        }
        TaskCommand::List => {
            let list = c.list_tasks().await?;
            if json {
                return print_json(&list);
            }
            println!("{:<24} {:<12} {:<9} CONTEXT", "NAME", "POOL", "STATUS");
            for t in &list {
                println!(
                    "{:<24} {:<12} {:<9} {}",
                    t.name,
                    t.pool,
                    t.status,
                    t.context.as_deref().unwrap_or("-")
                );
            }
        }
        TaskCommand::Delete { name } => {
            c.delete_task(&name).await?;
            println!("task {name} deleted");
        }
        TaskCommand::Run {
            name,
            context,
            set,
            set_secret,
            timeout,
            no_wait,
            no_logs,
        } => {
            let context = match context {
                Some(ctx) => Some(context_source(&c, &ctx).await?),
                None => None,
            };
            let secrets = RenderArgs {
                set_secret,
                ..Default::default()
            }
            .secrets()?;
            let run = c
                .run_task(
                    &name,
                    &TaskRunRequest {
                        context,
                        set,
                        secrets,
                        timeout_secs: timeout.map(|d| d.as_secs().max(1)),
                    },
                )
                .await
                .with_context(|| format!("running task {name}"))?;
            return follow(&c, run, !no_wait, !no_logs, json).await;
        }
        TaskCommand::ListRuns { name, limit } => {
            let runs = c.task_runs(&name, limit).await?;
            if json {
                return print_json(&runs);
            }
            for r in &runs {
                println!(
                    "{:<8} {:<10} {}",
                    r.id,
                    r.state,
                    r.message.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Store a secret tasks read by name (`secrets: - id: NAME`), sealed
    /// on the server (admin token).
    Set {
        name: String,
        /// Read the value from standard input.
        #[arg(long, required = true)]
        value_stdin: bool,
    },
    /// Stored secrets' names (never their values).
    List,
    /// Delete a stored secret.
    Delete { name: String },
}

pub async fn secret(args: &ClientArgs, cmd: SecretCommand) -> Result<()> {
    let c = client(args.server.as_deref())?;
    match cmd {
        SecretCommand::Set { name, .. } => {
            let mut v = String::new();
            std::io::stdin()
                .read_to_string(&mut v)
                .context("reading the secret from standard input")?;
            let v = v.strip_suffix('\n').unwrap_or(&v);
            if v.is_empty() {
                bail!("the secret is empty");
            }
            c.put_secret(&name, v).await?;
            println!("secret {name} stored");
        }
        SecretCommand::List => {
            let list = c.list_secrets().await?;
            if args.output == Format::Json {
                return print_json(&list);
            }
            for s in &list {
                println!("{:<32} {}", s.name, crate::ctl::time(Some(s.updated_at)));
            }
        }
        SecretCommand::Delete { name } => {
            c.delete_secret(&name).await?;
            println!("secret {name} deleted");
        }
    }
    Ok(())
}
