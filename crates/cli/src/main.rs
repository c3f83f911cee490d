//! `slipway`: the one binary. Parses arguments, wires the library crates
//! together and reports errors; the logic lives in the crates it calls.

mod build_args;
mod build_cmd;
mod credential_cmd;
mod ctl;
mod dockerfile_cmd;
mod gc_cmd;
mod http_serve;
mod image_cmd;
mod image_run;
mod prune_cmd;
mod remote;
mod sandbox_cmd;
mod serve;
mod task_cmd;
mod unpack_limits;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    /// Run the control plane (/api/v1) with its embedded OCI registry (/v2/ and /token).
    Server(serve::ServerArgs),
    /// Everything on this machine for a first try: the server, its registry,
    /// SQLite and a local pool `default` of agents, until Ctrl-C.
    Up(serve::UpArgs),
    /// Run a build agent of one pool (it dials out to the server only);
    /// `agent check` checks this machine can.
    Agent(Box<serve::AgentCmd>),
    /// Build an image from a Dockerfile and push it (docker build's flags):
    /// on an agent pool, or on this machine with --local.
    Build(Box<build_args::BuildArgs>),
    /// Save a server URL and API token for the other commands.
    Login(ctl::LoginArgs),
    /// Manage agent pools (admin token).
    Pool {
        #[command(subcommand)]
        command: ctl::PoolCommand,
        #[command(flatten)]
        client: ctl::ClientArgs,
    },
    /// API tokens for people and CI, scoped by grants (admin token).
    Token {
        #[command(subcommand)]
        command: ctl::TokenCommand,
        #[command(flatten)]
        client: ctl::ClientArgs,
    },
    /// A pool's credentials for other registries and git servers (admin
    /// token): add, update, remove, list.
    Credential {
        #[command(subcommand)]
        command: credential_cmd::CredentialCommand,
        #[command(flatten)]
        client: ctl::ClientArgs,
    },
    /// Run a task file (acb.yaml) once on a pool, like `az acr run`;
    /// --dry-run checks and renders it without a server.
    Run(Box<task_cmd::RunArgs>),
    /// Stored tasks, like `az acr task`: create, update, show, list, delete,
    /// run, list-runs.
    Task {
        #[command(subcommand)]
        command: task_cmd::TaskCommand,
        #[command(flatten)]
        client: ctl::ClientArgs,
    },
    /// Secrets tasks read by name (admin token): set, list, delete.
    Secret {
        #[command(subcommand)]
        command: task_cmd::SecretCommand,
        #[command(flatten)]
        client: ctl::ClientArgs,
    },
    /// List, inspect and cancel runs.
    Runs {
        #[command(subcommand)]
        command: ctl::RunsCommand,
        #[command(flatten)]
        client: ctl::ClientArgs,
    },
    /// Print a run's log; -f follows it until the run ends.
    Logs {
        #[command(flatten)]
        args: ctl::LogsArgs,
        #[arg(long, env = "SLIPWAY_SERVER")]
        server: Option<String>,
    },
    /// Reclaim the builder's disk: layer snapshots, build cache steps and
    /// cache mounts no running build uses (waits for running builds).
    Prune(prune_cmd::PruneArgs),
    /// Image tools: import a root filesystem as an image.
    Image {
        #[command(subcommand)]
        command: image_cmd::ImageCommand,
    },
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

#[derive(Subcommand)]
enum RegistryCommand {
    /// Delete blobs that no manifest references, and the pools' layer
    /// caches' replaced manifests. Safe while the server runs: manifest
    /// pushes wait for the sweep (on every replica, given --database), and
    /// blobs younger than --grace are kept. `slipway server` also runs it
    /// every --gc-every.
    Gc(gc_cmd::GcArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
                // kube-client logs each failed request itself; the server
                // reports those failures once, with what it was doing.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if std::env::var_os("SLIPWAY_DIE_WITH_PARENT").is_some() {
        die_with_parent();
    }
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
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: libraries that
/// put their source in their own message (as many do) would otherwise show
/// the same cause two or three times down the chain.
fn report(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if parts.iter().any(|p| p.contains(msg.as_str())) {
            continue;
        }
        parts.push(msg);
    }
    parts.join(": ")
}

/// Agents started by a server, and builds started by an agent, go when
/// their parent goes (even by SIGKILL): nothing is left running that a
/// restarted parent would not know about.
fn die_with_parent() {
    let parent = rustix::process::getppid();
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
    {
        eprintln!("warning: cannot tie this process to its parent: {e}");
    }
    // The parent may have died before the call above took effect.
    if rustix::process::getppid() != parent {
        std::process::exit(1);
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
        Command::Server(args) => serve::server(args).await,
        Command::Up(args) => serve::up(args).await,
        Command::Agent(cmd) => serve::agent_command(*cmd).await,
        Command::Login(args) => ctl::login(args).await,
        Command::Pool { command, client } => ctl::pool(&client, command).await,
        Command::Runs { command, client } => ctl::runs(&client, command).await,
        Command::Token { command, client } => ctl::token(&client, command).await,
        Command::Credential { command, client } => credential_cmd::run(&client, command).await,
        Command::Run(args) => task_cmd::run(*args).await,
        Command::Task { command, client } => task_cmd::task(&client, command).await,
        Command::Secret { command, client } => task_cmd::secret(&client, command).await,
        Command::Logs { args, server } => ctl::logs(server.as_deref(), args).await,
        Command::Dockerfile { command } => {
            if !dockerfile_cmd::run(command)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Image { command } => image_cmd::run(command).await,
        Command::Prune(args) => prune_cmd::run(args).await,
        Command::SandboxInit => sandbox_cmd::not_here(),
        // Checked in one place, then built here or on a pool.
        Command::Build(args) => match args.check()? {
            build_args::Build::Local(b) => build_cmd::run(*b).await,
            build_args::Build::Pool(b) => remote::build(*b).await,
        },
        Command::Registry {
            command: RegistryCommand::Gc(args),
        } => gc_cmd::run(args).await,
    }
}
