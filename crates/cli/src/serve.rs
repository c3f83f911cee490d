//! The long-running processes: `slipway server`, `slipway up` (server plus a
//! local pool, for a first try) and `slipway agent`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use registry::{Registry, RegistryConfig};
use server::{AgentCommand, Server, ServerConfig};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Address to listen on, e.g. 127.0.0.1:5000 or 10.0.0.5:443.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Data directory: database, blobs, contexts and tokens live here. On
    /// first start an admin token is written to DATA/admin-token (mode 0600).
    #[arg(long, env = "SLIPWAY_DATA")]
    data: PathBuf,
    /// URL clients and agents reach this server at (the token realm of
    /// registry challenges, and the registry host of unqualified tags).
    /// Defaults to http://LISTEN.
    #[arg(long, env = "SLIPWAY_PUBLIC_URL")]
    public_url: Option<String>,
    /// Database URL: sqlite://PATH or postgres://… (default: SQLite in DATA).
    #[arg(long, env = "SLIPWAY_DATABASE")]
    database: Option<String>,
    /// How long an agent's lease lives without a heartbeat; a run whose
    /// agent goes silent this long is re-queued.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// Run time limit when a build gives none.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    default_timeout: Duration,
    /// Leases a run may use (agents lost) before it ends in error.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Finished runs with their logs, and uploaded contexts no queued or
    /// running build needs, are deleted after this long (checked hourly).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// The registry's garbage collection (blobs no manifest references,
    /// and the pools' layer caches beyond their newest steps) runs this
    /// often, on one replica at a time; 0 turns it off (then run
    /// `slipway registry gc`).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    gc_every: Duration,
    /// A kubeconfig (or `in-cluster`, the pod's service account): each
    /// pool's `count` then sets the replicas of its agent Deployment (label
    /// slipway.dev/pool=NAME) in --kube-namespace, on every pool change and
    /// every --kube-resync. Without it, scale agents with `kubectl scale`.
    #[arg(long, env = "SLIPWAY_KUBECONFIG", value_name = "FILE|in-cluster")]
    kubeconfig: Option<String>,
    /// The namespace of the pools' agent Deployments (default: the
    /// kubeconfig's).
    #[arg(long, env = "SLIPWAY_KUBE_NAMESPACE", requires = "kubeconfig")]
    kube_namespace: Option<String>,
    /// How often pool counts are checked against the Deployments (a
    /// `kubectl scale` by hand is undone then).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    kube_resync: Duration,
    /// Start the agents of pools created with --local (as `slipway up` does).
    #[arg(long)]
    local_agents: bool,
    /// A file of at least 32 random bytes every replica is given: the
    /// bearer-token signing key and the sealing key of secrets and
    /// credentials are derived from it (default: keys of this data dir's
    /// own, under DATA/auth/jwt-key and DATA/secret.key).
    #[arg(long, env = "SLIPWAY_SECRET_KEY_FILE", value_name = "FILE")]
    secret_key_file: Option<PathBuf>,
    /// Where registry blobs and build contexts live: file:///DIR (default:
    /// DATA), azure://ACCOUNT/CONTAINER[/PREFIX] (Azure Blob Storage; keys
    /// from AZURE_STORAGE_* or --blob-store-option), s3://BUCKET[/PREFIX]
    /// (S3 or compatible; AWS_* or --blob-store-option). Replicas of one
    /// server share it.
    #[arg(long, env = "SLIPWAY_BLOB_STORE", value_name = "URL")]
    blob_store: Option<String>,
    /// A setting of the object store, KEY=VALUE (account_key, sas_key,
    /// endpoint, region, access_key_id, secret_access_key,
    /// allow_http, use_emulator…); repeatable.
    #[arg(long = "blob-store-option", value_name = "KEY=VALUE")]
    blob_store_options: Vec<String>,
    /// Largest blob the registry accepts (413 past it): bytes or 8g, 512m…
    #[arg(long, default_value = "8g", value_parser = parse_size)]
    max_blob_size: u64,
    /// Largest build context accepted (413 past it).
    #[arg(long, default_value = "2g", value_parser = parse_size)]
    max_context_size: u64,
    /// A task files' image alias: NAME=IMAGE (`bash`, `curl`, `az`, … in a
    /// registry the pools reach); repeatable.
    #[arg(long = "image-alias", value_name = "NAME=IMAGE")]
    image_aliases: Vec<String>,
    /// Longest a client may take to send a request's headers; the
    /// connection is closed past it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Longest pause allowed inside a request body (an upload that stalls
    /// this long fails; one that keeps flowing may take any time).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    body_timeout: Duration,
}

use crate::unpack_limits::parse_size;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Data directory (running `up` again on it resumes).
    #[arg(long, default_value = ".slipway")]
    data: PathBuf,
    /// Agents in the local pool `default`.
    #[arg(long, default_value_t = 2)]
    agents: u32,
}

/// `slipway agent [check]`: serve a pool, or check this machine can.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AgentCmd {
    #[command(subcommand)]
    check: Option<AgentSub>,
    #[command(flatten)]
    serve: AgentArgs,
}

#[derive(clap::Subcommand)]
enum AgentSub {
    /// Check this machine can serve the pool, from where it runs: the
    /// server, the agent token, the registry builds push to, every --reach
    /// endpoint the builds need, isolation (namespaces, overlayfs, cgroups),
    /// the work dir and git. Changes nothing; exits 1 if a check fails.
    Check(AgentCheckArgs),
}

#[derive(clap::Args)]
struct AgentCheckArgs {
    #[command(flatten)]
    agent: AgentArgs,
    /// Another endpoint the builds need: http(s)://… (any HTTP answer
    /// counts: an internal registry, blob storage, a git server) or
    /// host:port (a TCP connection counts). Repeatable.
    #[arg(long = "reach", value_name = "URL|HOST:PORT")]
    reach: Vec<String>,
    /// Per network check.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// `json`: the checks as a JSON array.
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    output: String,
}

// Options, though clap requires them: `slipway agent check` parses these
// under its own name too, and the outer copy must not insist on values
// (from the environment, say) that went to the subcommand.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// Server URL.
    #[arg(long, env = "SLIPWAY_SERVER", required = true)]
    server: Option<String>,
    /// Pool this agent serves (must match its token).
    #[arg(long, required = true)]
    pool: Option<String>,
    /// Agent token of the pool (`slipway pool token NAME`).
    #[arg(long, env = "SLIPWAY_TOKEN", hide_env_values = true, required = true)]
    token: Option<String>,
    /// Scratch space for runs.
    #[arg(long, default_value = ".slipway-agent")]
    work_dir: PathBuf,
    /// Layer store and build cache (shared by agents of one machine);
    /// default WORK_DIR/build.
    #[arg(long, env = "SLIPWAY_BUILD_DATA")]
    build_data: Option<PathBuf>,
    /// Name shown in `slipway pool show` (default: host-pid).
    #[arg(long, env = "SLIPWAY_AGENT_ID")]
    agent_id: Option<String>,
    /// Registry host:port the builds may reach over plain HTTP; repeatable.
    /// Not needed for the server's own registry: an http:// --server says it.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// A CA certificate (PEM) to trust beside the system's, for internal
    /// registries, git servers and blob stores behind a private CA; repeatable.
    #[arg(long = "ca-cert", value_name = "FILE")]
    ca_certs: Vec<PathBuf>,
    #[command(flatten)]
    unpack: crate::unpack_limits::UnpackLimitArgs,
}

impl AgentArgs {
    /// Server, pool and token, which clap has made sure are there.
    fn identity(&self) -> Result<(String, String, String)> {
        let need =
            |v: &Option<String>, flag: &str| v.clone().with_context(|| format!("give {flag}"));
        Ok((
            need(&self.server, "--server")?,
            need(&self.pool, "--pool")?,
            need(&self.token, "--token")?,
        ))
    }
}

pub async fn open_registry(
    data: &Path,
    public_url: Option<String>,
    max_blob_bytes: u64,
    blobs: Option<(Arc<dyn store::BlobStore>, Arc<dyn store::kv::Kv>)>,
    signing_key: Option<Vec<u8>>,
) -> Result<Arc<Registry>> {
    std::fs::create_dir_all(data)
        .with_context(|| format!("creating data directory {}", data.display()))?;
    builder::data_dir::mark(data).with_context(|| format!("marking {}", data.display()))?;
    let mut config = RegistryConfig::new(data);
    config.auth.public_url = public_url;
    config.max_blob_bytes = max_blob_bytes;
    config.auth.signing_key = signing_key.map(registry::auth::SigningKey);
    let opened = match blobs {
        Some((b, meta)) => Registry::open_with(config, b, registry::meta::Meta::with_kv(meta)),
        None => Registry::open(config).await,
    };
    opened.with_context(|| format!("opening the registry in {}", data.display()))
}

/// The registry's blobs and repository metadata at a `--blob-store`
/// location (the server and `registry gc` open the same areas).
pub async fn registry_blobs(
    l: &store::Location,
) -> Result<(Arc<dyn store::BlobStore>, Arc<dyn store::kv::Kv>)> {
    Ok((l.open("store").await?, l.open_kv("repos")))
}

/// What `serve` started, for `up` to print.
struct Running {
    url: String,
}

async fn serve(args: ServerArgs, on_ready: impl FnOnce(&Running, &Arc<Server>)) -> Result<()> {
    let location = match &args.blob_store {
        Some(url) => Some(store::Location::parse(url, &args.blob_store_options)?),
        None => None,
    };
    let (blobs, contexts) = match &location {
        Some(l) => (
            Some(registry_blobs(l).await?),
            Some(l.open("contexts").await?),
        ),
        None => (None, None),
    };
    let secret = match &args.secret_key_file {
        Some(f) => {
            let s =
                std::fs::read(f).with_context(|| format!("--secret-key-file {}", f.display()))?;
            if s.len() < 32 {
                anyhow::bail!(
                    "--secret-key-file {}: give at least 32 random bytes (head -c 32 /dev/urandom > FILE)",
                    f.display()
                );
            }
            Some(s)
        }
        None => None,
    };
    let reg = open_registry(
        &args.data,
        args.public_url.clone(),
        args.max_blob_size,
        blobs,
        secret
            .as_ref()
            .map(|s| server::derive_key(s, "jwt").to_vec()),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let mut config = ServerConfig::new(&args.data, api::host_of(&url).to_owned());
    config.database_url = args.database.clone();
    config.lease_ttl = args.lease_ttl;
    config.default_timeout = args.default_timeout;
    config.max_attempts = args.max_attempts.max(1);
    config.retention = args.retention;
    config.gc_every = (!args.gc_every.is_zero()).then_some(args.gc_every);
    config.scale_every = args.kube_resync.max(Duration::from_secs(1));
    config.max_context_bytes = args.max_context_size;
    config.seal_key = secret.as_ref().map(|s| server::derive_key(s, "seal"));
    for a in &args.image_aliases {
        let (name, image) = a
            .split_once('=')
            .with_context(|| format!("--image-alias {a}: expected NAME=IMAGE"))?;
        config
            .image_aliases
            .insert(name.to_owned(), image.to_owned());
    }
    if args.local_agents {
        let mut agent_args = vec![
            "agent".to_owned(),
            "--build-data".to_owned(),
            args.data.join("build").to_string_lossy().into_owned(),
        ];
        if !addr.ip().is_loopback() {
            agent_args.push("--insecure-registry".into());
            agent_args.push(api::host_of(&url).to_owned());
        }
        config.agent_command = Some(AgentCommand {
            program: std::env::current_exe().context("locating the slipway binary")?,
            args: agent_args,
            work_root: args.data.join("agents"),
            env: Vec::new(),
        });
    }
    let opened = match contexts {
        Some(c) => Server::open_with(config, reg.clone(), c).await,
        None => Server::open(config, reg.clone()).await,
    };
    let srv =
        opened.with_context(|| format!("opening the control plane in {}", args.data.display()))?;
    if let Some(kubeconfig) = &args.kubeconfig {
        let scaler = kube_pools::Scaler::connect(kubeconfig, args.kube_namespace.as_deref())
            .await
            .context("--kubeconfig")?;
        eprintln!(
            "pools' agent Deployments in namespace {} follow their count",
            scaler.namespace()
        );
        srv.set_scaler(Arc::new(KubeScaler(scaler)));
    }
    // After the control plane: on a shared database, a replica that joins
    // finds the admin token there and makes none of its own.
    let token_path = server::admin_token_path(&args.data);
    if reg
        .auth()
        .ensure_admin_token(&token_path)
        .context("creating the admin token")?
    {
        eprintln!("created an admin API token in {}", token_path.display());
        srv.publish_tokens()
            .await
            .context("storing the admin token in the database")?;
    }
    let app = reg.router().merge(srv.router()).merge(console::router());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let background = {
        let srv = srv.clone();
        let url = url.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            srv.run_background(url, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        })
    };
    eprintln!("slipway server listening on {url} (console at /, API at /api/v1, registry at /v2/)");
    on_ready(&Running { url: url.clone() }, &srv);
    let mut rx = stop_rx.clone();
    let timeouts = crate::http_serve::Timeouts {
        headers: args.header_timeout,
        body_idle: args.body_timeout,
    };
    crate::http_serve::serve(listener, app, timeouts, async move {
        shutdown().await;
        let _ = stop_tx.send(true);
        let _ = rx.wait_for(|s| *s).await;
    })
    .await;
    // Local agents stop before we return (they die with us anyway).
    let _ = background.await;
    Ok(())
}

pub async fn server(args: ServerArgs) -> Result<()> {
    serve(args, |_, _| {}).await
}

pub async fn up(args: UpArgs) -> Result<()> {
    let data = args.data.clone();
    let agents = args.agents;
    let sargs = ServerArgs {
        listen: args.listen,
        data: args.data,
        public_url: None,
        database: None,
        lease_ttl: Duration::from_secs(10),
        default_timeout: Duration::from_secs(3600),
        max_attempts: 3,
        retention: Duration::from_secs(30 * 24 * 3600),
        gc_every: Duration::from_secs(24 * 3600),
        kubeconfig: None,
        kube_namespace: None,
        kube_resync: Duration::from_secs(30),
        local_agents: true,
        max_blob_size: registry::DEFAULT_MAX_BLOB_BYTES,
        max_context_size: 2 << 30,
        image_aliases: Vec::new(),
        blob_store: None,
        blob_store_options: Vec::new(),
        secret_key_file: None,
        header_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(60),
    };
    // The pool must exist before the supervisor's first look, so create it
    // through the database directly, before serving.
    serve(sargs, move |running, srv| {
        let srv = srv.clone();
        let url = running.url.clone();
        let token = server::admin_token_path(&data);
        tokio::spawn(async move {
            let spec = api::PoolSpec {
                name: "default".into(),
                tier: api::Tier::S1,
                count: agents,
                network: Some("local".into()),
                local: true,
                allow_insecure: false,
            };
            let db = srv.db();
            let made = db.create_pool(&spec).await;
            let updated = match made {
                Ok(true) => Ok(true),
                Ok(false) => {
                    let up = api::PoolUpdate {
                        count: Some(agents),
                        ..Default::default()
                    };
                    db.update_pool("default", &up).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = updated {
                eprintln!("error: creating the local pool: {e}");
                return;
            }
            let host = api::host_of(&url).to_owned();
            eprintln!(
                "\nlocal pool `default`: {agents} agents\nconsole: {url}/ (sign in with the admin token)\nadmin token: {}\n\nto build, paste:\n  export SLIPWAY_SERVER={url} SLIPWAY_TOKEN=$(cat {})\n  slipway build -t {host}/hello:1 examples/hello\n",
                token.display(),
                token.display(),
            );
        });
    })
    .await
}

pub async fn agent_command(cmd: AgentCmd) -> Result<()> {
    match cmd.check {
        Some(AgentSub::Check(args)) => agent_check(args).await,
        None => agent(cmd.serve).await,
    }
}

async fn agent_check(args: AgentCheckArgs) -> Result<()> {
    let (server, pool, token) = args.agent.identity()?;
    let config = agent::check::CheckConfig {
        server,
        token,
        pool,
        work_dir: args.agent.work_dir.clone(),
        insecure_registries: args.agent.insecure_registries.clone(),
        ca_certs: args
            .agent
            .ca_certs
            .iter()
            .map(|p| std::fs::read(p).with_context(|| format!("--ca-cert {}", p.display())))
            .collect::<Result<_>>()?,
        reach: args.reach.clone(),
        timeout: args.timeout,
    };
    let checks = agent::check::run(&config).await;
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let mark = match c.level {
                agent::check::Level::Ok => "ok  ",
                agent::check::Level::Warn => "WARN",
                agent::check::Level::Fail => "FAIL",
            };
            let target = if c.target.is_empty() {
                String::new()
            } else {
                format!(" {}", c.target)
            };
            println!("{mark} {}{target}: {} ({} ms)", c.name, c.detail, c.millis);
        }
    }
    if agent::check::failed(&checks) {
        std::process::exit(1);
    }
    Ok(())
}

pub async fn agent(args: AgentArgs) -> Result<()> {
    let (server, pool, token) = args.identity()?;
    let id = args.agent_id.clone().unwrap_or_else(|| {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        format!("{host}-{}", std::process::id())
    });
    let config = agent::AgentConfig {
        server: server.clone(),
        token,
        pool: pool.clone(),
        agent_id: id.clone(),
        build_data: args
            .build_data
            .clone()
            .unwrap_or_else(|| args.work_dir.join("build")),
        work_dir: args.work_dir.clone(),
        program: std::env::current_exe().context("locating the slipway binary")?,
        insecure_registries: args.insecure_registries.clone(),
        ca_certs: args.ca_certs.clone(),
        poll: Duration::from_secs(20),
        unpack_limits: args.unpack.limits(),
    };
    eprintln!("agent {id} of pool {pool} serving {server}");
    agent::run(config, shutdown())
        .await
        .with_context(|| format!("agent {id}"))
}

pub async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

/// The control plane's pool scaling, done by `kube_pools` on Kubernetes.
struct KubeScaler(kube_pools::Scaler);

impl server::PoolScaler for KubeScaler {
    fn reconcile(
        &self,
        pools: std::collections::BTreeMap<String, u32>,
    ) -> futures_util::future::BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let changed = self.0.reconcile(&pools).await.map_err(|e| e.to_string())?;
            Ok(changed
                .into_iter()
                .map(|c| {
                    format!(
                        "pool {}: Deployment {} scaled from {} to {} replicas",
                        c.pool, c.deployment, c.from, c.to
                    )
                })
                .collect())
        })
    }
}
