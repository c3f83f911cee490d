//! `slipway`: the one binary. Parses arguments, wires the library crates
//! together and reports errors; the logic lives in the crates it calls.

mod build_cmd;
mod dockerfile_cmd;
mod sandbox_cmd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use registry::{Registry, RegistryConfig};

#[derive(Parser)]
#[command(
    name = "slipway",
    version,
    about = "Build container images on dedicated agent pools, and serve them from an embedded OCI registry.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane with its embedded OCI registry (/v2/ and /token).
    Server(ServerArgs),
    /// Everything on this machine for a first try: the server on a loopback
    /// port with its data under ./.slipway.
    Up {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:5000")]
        listen: SocketAddr,
        /// Data directory.
        #[arg(long, default_value = ".slipway")]
        data: PathBuf,
    },
    /// Build an image from a Dockerfile and push it (docker build's flags).
    Build(build_cmd::BuildArgs),
    /// Dockerfile tools.
    Dockerfile {
        #[command(subcommand)]
        command: dockerfile_cmd::DockerfileCommand,
    },
    /// The sandbox's init (internal: started by the sandbox library).
    #[command(hide = true)]
    SandboxInit,
    /// Registry maintenance.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Address to listen on, e.g. 127.0.0.1:5000 or 10.0.0.5:443.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Data directory: blobs, repository metadata and tokens live here. On
    /// first start an admin token is written to DATA/admin-token (mode 0600).
    #[arg(long, env = "SLIPWAY_DATA")]
    data: PathBuf,
    /// URL clients reach this server at, used in the token realm of auth
    /// challenges. Defaults to http://<Host header>.
    #[arg(long, env = "SLIPWAY_PUBLIC_URL")]
    public_url: Option<String>,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Delete blobs that no manifest references. Safe while the server runs:
    /// manifest pushes wait for the sweep, and blobs younger than --grace are kept.
    Gc {
        /// Data directory of the server.
        #[arg(long, env = "SLIPWAY_DATA")]
        data: PathBuf,
        /// Keep unreferenced blobs younger than this (their manifest may be on its way).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if matches!(cli.command, Command::SandboxInit) {
        return sandbox_cmd::main();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`slipway … | head`) is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .map(|io| io.kind())
            .or_else(|| {
                c.downcast_ref::<serde_json::Error>()
                    .and_then(|j| j.io_error_kind())
            })
            == Some(std::io::ErrorKind::BrokenPipe)
    })
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Server(args) => serve(args).await,
        Command::Up { listen, data } => {
            serve(ServerArgs {
                listen,
                data,
                public_url: None,
            })
            .await
        }
        Command::Dockerfile { command } => {
            if !dockerfile_cmd::run(command)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::SandboxInit => sandbox_cmd::not_here(),
        Command::Build(args) => build_cmd::run(args).await,
        Command::Registry {
            command:
                RegistryCommand::Gc {
                    data,
                    grace,
                    dry_run,
                },
        } => gc(&data, grace, dry_run).await,
    }
}

async fn open_registry(
    data: &Path,
    public_url: Option<String>,
) -> Result<std::sync::Arc<Registry>> {
    std::fs::create_dir_all(data)
        .with_context(|| format!("creating data directory {}", data.display()))?;
    let mut config = RegistryConfig::new(data);
    config.auth.public_url = public_url;
    Registry::open(config)
        .await
        .with_context(|| format!("opening the registry in {}", data.display()))
}

async fn serve(args: ServerArgs) -> Result<()> {
    let reg = open_registry(&args.data, args.public_url).await?;
    let token_path = args.data.join("admin-token");
    if reg
        .auth()
        .ensure_admin_token(&token_path)
        .context("creating the admin token")?
    {
        eprintln!("created an admin API token in {}", token_path.display());
    } else {
        eprintln!("admin API token: {}", token_path.display());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    eprintln!("slipway server listening on http://{addr} (registry at /v2/)");
    // Small responses (manifests, HEADs, small blobs) must not wait on
    // Nagle's algorithm and the client's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, reg.router())
        .with_graceful_shutdown(shutdown())
        .await
        .context("serving HTTP")?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

async fn gc(data: &Path, grace: Duration, dry_run: bool) -> Result<()> {
    if !registry::gc::is_data_dir(data) {
        anyhow::bail!(
            "{} is not a slipway data directory (no store/ in it)",
            data.display()
        );
    }
    let reg = open_registry(data, None).await?;
    let opts = registry::gc::GcOptions {
        grace,
        dry_run,
        ..Default::default()
    };
    let r = registry::gc::collect(&reg, &opts)
        .await
        .map_err(|e| anyhow::anyhow!("garbage collection failed: {}", e.message))?;
    println!(
        "{}{} repositories, {} manifests; {} blobs kept, {} deleted ({} bytes freed), {} links removed, {} stale uploads removed",
        if dry_run { "dry run: " } else { "" },
        r.repositories,
        r.manifests,
        r.blobs_kept,
        r.blobs_deleted,
        r.bytes_freed,
        r.links_removed,
        r.uploads_purged
    );
    Ok(())
}
