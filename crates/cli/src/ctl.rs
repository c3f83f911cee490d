//! Client commands against the control plane: `login`, `pool …`, `runs …`,
//! `logs`. Which server and token: `--server`/`SLIPWAY_SERVER` and
//! `SLIPWAY_TOKEN`, else what `slipway login` saved.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use api::{PoolSpec, PoolUpdate, Run, RunState, Tier};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Saved {
    server: Option<String>,
    token: Option<String>,
}

fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLIPWAY_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("slipway/config.json"))
}

fn saved() -> Saved {
    config_path()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The API client for the chosen server and token.
pub fn client(server: Option<&str>) -> Result<api::Client> {
    let saved = saved();
    let server = server
        .map(str::to_owned)
        .or(saved.server)
        .context("no server: pass --server URL, set SLIPWAY_SERVER, or run `slipway login URL`")?;
    let token = std::env::var("SLIPWAY_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or(saved.token)
        .context("no token: set SLIPWAY_TOKEN or run `slipway login URL --token-stdin`")?;
    api::Client::new(&server, Some(token)).context("connecting to the server")
}

/// The server's registry host and the token for it, from `SLIPWAY_SERVER`
/// and `SLIPWAY_TOKEN` or what `slipway login` saved, when both are known.
pub fn login_credential() -> Option<(String, String)> {
    let saved = saved();
    let server = std::env::var("SLIPWAY_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .or(saved.server)?;
    let token = std::env::var("SLIPWAY_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or(saved.token)?;
    Some((api::host_of(&server).to_owned(), token))
}

#[derive(clap::Args)]
pub struct LoginArgs {
    /// Server URL, e.g. http://127.0.0.1:5000.
    server: String,
    /// Read the API token from standard input (e.g. `< .slipway/admin-token`).
    #[arg(long)]
    token_stdin: bool,
}

pub async fn login(args: LoginArgs) -> Result<()> {
    if !args.token_stdin {
        bail!(
            "pass the token on standard input with --token-stdin (it must not sit in shell history)"
        );
    }
    let mut token = String::new();
    std::io::stdin()
        .read_to_string(&mut token)
        .context("reading the token from standard input")?;
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("no token on standard input");
    }
    let c = api::Client::new(&args.server, Some(token.clone()))?;
    c.list_runs(None, None, 1)
        .await
        .with_context(|| format!("checking the token against {}", args.server))?;
    let path = config_path().context("no HOME to keep the login in; set SLIPWAY_CONFIG")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let body = serde_json::to_vec_pretty(&Saved {
        server: Some(args.server.trim_end_matches('/').to_owned()),
        token: Some(token),
    })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(&body)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("logged in to {}; saved in {}", args.server, path.display());
    Ok(())
}

/// `--server` and `-o` of the client commands.
#[derive(clap::Args)]
pub struct ClientArgs {
    #[arg(long, env = "SLIPWAY_SERVER", global = true)]
    pub(crate) server: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub(crate) output: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Create a pool of build agents.
    Create {
        name: String,
        /// Agent size: S1 (2 CPUs, 3 GiB), S2 (4, 8 GiB), S3 (8, 16 GiB).
        #[arg(long, default_value = "S1")]
        tier: Tier,
        /// Agents in the pool.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Label of the network the agents sit in.
        #[arg(long)]
        network: Option<String>,
        /// The server runs the agents itself, on its own machine.
        #[arg(long)]
        local: bool,
        /// Allow `RUN --security=insecure` and privileged task steps (no
        /// seccomp filter, no device cgroup): only for pools whose
        /// machines run trusted builds alone.
        #[arg(long)]
        allow_insecure: bool,
    },
    /// Scale a pool, change its tier or its policy.
    Update {
        name: String,
        #[arg(long)]
        count: Option<u32>,
        #[arg(long)]
        tier: Option<Tier>,
        /// Allow (true) or refuse (false) `RUN --security=insecure` and
        /// privileged task steps.
        #[arg(long, value_name = "true|false")]
        allow_insecure: Option<bool>,
    },
    /// A pool's agents (status, last heartbeat, current run) and queue.
    Show { name: String },
    /// Every pool.
    List,
    /// Delete a pool; refused while runs are queued or running unless --force (which cancels them).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Create an agent token bound to the pool (shown once).
    Token { name: String },
}

pub async fn pool(args: &ClientArgs, cmd: PoolCommand) -> Result<()> {
    let c = client(args.server.as_deref())?;
    let json = args.output == Format::Json;
    match cmd {
        PoolCommand::Create {
            name,
            tier,
            count,
            network,
            local,
            allow_insecure,
        } => {
            let p = c
                .create_pool(&PoolSpec {
                    name,
                    tier,
                    count,
                    network,
                    local,
                    allow_insecure,
                })
                .await?;
            if json {
                return print_json(&p);
            }
            println!(
                "pool {} created: tier {}, {} agents{}",
                p.name,
                p.tier,
                p.count,
                if p.local { " (local)" } else { "" }
            );
            if !p.local {
                println!(
                    "next: `slipway pool token {}` and start agents with `slipway agent --pool {} …`",
                    p.name, p.name
                );
            }
        }
        PoolCommand::Update {
            name,
            count,
            tier,
            allow_insecure,
        } => {
            let up = PoolUpdate {
                count,
                tier,
                allow_insecure,
            };
            let p = c.update_pool(&name, &up).await?;
            if json {
                return print_json(&p);
            }
            println!(
                "pool {}: tier {}, {} agents{}",
                p.name,
                p.tier,
                p.count,
                if p.allow_insecure {
                    ", insecure RUN steps allowed"
                } else {
                    ""
                }
            );
        }
        PoolCommand::Show { name } => {
            let s = c.pool(&name).await?;
            if json {
                return print_json(&s);
            }
            let p = &s.pool;
            println!(
                "pool {}  tier {} ({} CPUs, {} GiB)  count {}  network {}  {}",
                p.name,
                p.tier,
                p.tier.cpus(),
                p.tier.memory_bytes() >> 30,
                p.count,
                p.network.as_deref().unwrap_or("-"),
                if p.local { "local" } else { "external" }
            );
            println!("queue: {} queued, {} running", p.queued, p.running);
            println!(
                "{:<32} {:<8} {:<22} RUN",
                "AGENT", "STATUS", "LAST HEARTBEAT"
            );
            for a in &s.agents {
                println!(
                    "{:<32} {:<8} {:<22} {}",
                    a.id,
                    a.status,
                    time(Some(a.last_heartbeat)),
                    a.current_run.as_deref().unwrap_or("-")
                );
            }
        }
        PoolCommand::List => {
            let pools = c.list_pools().await?;
            if json {
                return print_json(&pools);
            }
            println!(
                "{:<20} {:<5} {:>5} {:>7} {:>8}  NETWORK",
                "NAME", "TIER", "COUNT", "QUEUED", "RUNNING"
            );
            for p in pools {
                println!(
                    "{:<20} {:<5} {:>5} {:>7} {:>8}  {}",
                    p.name,
                    p.tier,
                    p.count,
                    p.queued,
                    p.running,
                    p.network.as_deref().unwrap_or("-")
                );
            }
        }
        PoolCommand::Delete { name, force } => {
            c.delete_pool(&name, force).await?;
            println!("pool {name} deleted");
        }
        PoolCommand::Token { name } => {
            let t = c.pool_token(&name).await?;
            if json {
                return print_json(&t);
            }
            println!("{}", t.token);
        }
    }
    Ok(())
}

/// `slipway token …`: API tokens for people and CI (admin token).
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once (stored hashed).
    Create {
        name: String,
        /// A grant: pool:NAME:build (submit to, see and cancel runs of
        /// pool NAME), repository:NAME:pull,push[,delete] (the registry),
        /// registry:catalog:*. A NAME ending in * matches a prefix.
        /// Repeatable.
        #[arg(long = "grant", value_name = "TYPE:NAME:ACTIONS")]
        grants: Vec<String>,
        /// A token that may do anything, including managing pools and tokens.
        #[arg(long)]
        admin: bool,
    },
    /// Every token: id, name, grants (never secrets).
    List,
    /// Revoke a token by id (the last admin token cannot go).
    Delete { id: String },
}

pub async fn token(args: &ClientArgs, cmd: TokenCommand) -> Result<()> {
    let c = client(args.server.as_deref())?;
    let json = args.output == Format::Json;
    match cmd {
        TokenCommand::Create {
            name,
            grants,
            admin,
        } => {
            let t = c
                .create_token(&api::TokenRequest {
                    name,
                    grants,
                    admin,
                })
                .await?;
            if json {
                return print_json(&t);
            }
            eprintln!(
                "token {} ({}) created: {}; the secret below is shown once",
                t.info.id,
                t.info.name,
                grants_text(&t.info)
            );
            println!("{}", t.token);
        }
        TokenCommand::List => {
            let list = c.list_tokens().await?;
            if json {
                return print_json(&list);
            }
            println!("{:<18} {:<24} {:<22} GRANTS", "ID", "NAME", "CREATED");
            for t in &list {
                println!(
                    "{:<18} {:<24} {:<22} {}",
                    t.id,
                    t.name,
                    time(Some(t.created as i64 * 1000)),
                    grants_text(t)
                );
            }
        }
        TokenCommand::Delete { id } => {
            c.delete_token(&id).await?;
            println!("token {id} deleted");
        }
    }
    Ok(())
}

fn grants_text(t: &api::ApiToken) -> String {
    if t.admin {
        "admin".into()
    } else {
        t.grants.join(" ")
    }
}

pub(crate) fn time(ms: Option<i64>) -> String {
    match ms {
        Some(ms) if ms > 0 => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(ms as u64),
        )
        .to_string(),
        _ => "-".into(),
    }
}

fn duration(run: &Run) -> String {
    match (run.started_at, run.finished_at) {
        (Some(s), Some(f)) => format!("{:.1}s", (f - s) as f64 / 1000.0),
        (Some(s), None) => format!("{:.0}s…", (api_now() - s) as f64 / 1000.0),
        _ => "-".into(),
    }
}

fn api_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Subcommand)]
pub enum RunsCommand {
    /// Recent runs, newest first.
    List {
        #[arg(long)]
        pool: Option<String>,
        /// queued, running, succeeded, failed, canceled, timed-out or error.
        #[arg(long)]
        state: Option<RunState>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One run: its build, attempts and result.
    Show { id: String },
    /// Cancel a run: a queued one at once, a running one within seconds.
    Cancel { id: String },
}

pub async fn runs(args: &ClientArgs, cmd: RunsCommand) -> Result<()> {
    let c = client(args.server.as_deref())?;
    let json = args.output == Format::Json;
    match cmd {
        RunsCommand::List { pool, state, limit } => {
            let runs = c.list_runs(pool.as_deref(), state, limit).await?;
            if json {
                return print_json(&runs);
            }
            println!(
                "{:<8} {:<12} {:<10} {:<22} {:>8}  TAGS",
                "RUN", "POOL", "STATE", "CREATED", "TIME"
            );
            for r in runs {
                println!(
                    "{:<8} {:<12} {:<10} {:<22} {:>8}  {}",
                    r.id,
                    r.pool,
                    r.state,
                    time(Some(r.created_at)),
                    duration(&r),
                    r.build.tags.join(",")
                );
            }
        }
        RunsCommand::Show { id } => {
            let r = c.run(&id).await?;
            if json {
                return print_json(&r);
            }
            show_run(&r);
        }
        RunsCommand::Cancel { id } => {
            let r = c.cancel_run(&id).await?;
            if json {
                return print_json(&r);
            }
            match r.state {
                RunState::Canceled => println!("run {id} canceled"),
                _ => println!("run {id}: cancel requested; its agent stops it"),
            }
        }
    }
    Ok(())
}

pub fn show_run(r: &Run) {
    println!("run        {}", r.id);
    println!("pool       {}", r.pool);
    println!("state      {}", r.state);
    println!("tags       {}", r.build.tags.join(", "));
    if let Some(d) = &r.image_digest {
        println!("digest     {d}");
    }
    if let Some(rev) = &r.revision {
        match &rev.branch {
            Some(b) => println!("revision   {} ({b})", rev.commit),
            None => println!("revision   {}", rev.commit),
        }
    }
    if let Some(c) = r.exit_code {
        println!("exit code  {c}");
    }
    if let Some(m) = &r.message {
        println!("message    {m}");
    }
    println!("created    {}", time(Some(r.created_at)));
    println!("started    {}", time(r.started_at));
    println!("finished   {}", time(r.finished_at));
    for a in &r.attempts {
        println!(
            "attempt {}  agent {}  fence {}  {} → {}  {}",
            a.number,
            a.agent,
            a.fence,
            time(Some(a.started_at)),
            time(a.ended_at),
            a.outcome.as_deref().unwrap_or("running")
        );
    }
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// Run id.
    id: String,
    /// Keep following until the run ends.
    #[arg(short, long)]
    follow: bool,
}

pub async fn logs(server: Option<&str>, args: LogsArgs) -> Result<()> {
    let c = client(server)?;
    let run = follow(&c, &args.id, args.follow, true).await?;
    if args.follow {
        eprintln!("run {} {}", run.id, run.state);
    }
    Ok(())
}

/// Print a run's log from the start; with `wait`, until the run ends,
/// resuming from the last position after a dropped connection or a server
/// restart (so no line is lost or printed twice).
pub async fn follow(c: &api::Client, id: &str, wait: bool, print: bool) -> Result<Run> {
    let mut after = 0;
    let mut backoff = agent::Backoff::new();
    let mut warned = false;
    loop {
        let page = match c
            .logs(
                id,
                after,
                if wait {
                    Duration::from_secs(20)
                } else {
                    Duration::ZERO
                },
            )
            .await
        {
            Ok(p) => p,
            Err(e) if e.is_transient() => {
                if !warned {
                    eprintln!("slipway: lost the server ({e}); resuming the log when it is back");
                    warned = true;
                }
                tokio::time::sleep(backoff.delay()).await;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("reading the log of run {id}")),
        };
        if warned {
            eprintln!("slipway: reconnected");
            warned = false;
        }
        backoff.reset();
        if print && !page.chunks.is_empty() {
            let mut out = std::io::stdout().lock();
            for ch in &page.chunks {
                out.write_all(ch.data.as_bytes())?;
            }
            out.flush()?;
        }
        after = page.next;
        if page.done || (!wait && page.chunks.is_empty()) {
            break;
        }
    }
    let mut backoff = agent::Backoff::new();
    loop {
        match c.run(id).await {
            Ok(r) => return Ok(r),
            Err(e) if e.is_transient() => tokio::time::sleep(backoff.delay()).await,
            Err(e) => return Err(e.into()),
        }
    }
}
