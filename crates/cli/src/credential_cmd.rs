//! `slipway credential …`: a pool's credentials for registries other than
//! the server's own (`--login-server`, as `az acr task credential` names it)
//! and for git servers (`--git-host`). Stored sealed on the server, handed
//! to an agent with a lease only; never printed back.

use std::io::Read;

use anyhow::{Context, Result, bail};
use api::{CredentialKind, CredentialSpec};
use clap::Subcommand;

use crate::ctl::{ClientArgs, Format, client, print_json};

/// Which credential: a registry or a git server, by host.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// A registry's host[:port], as images name it (`FROM HOST/base:1`).
    #[arg(long, value_name = "HOST")]
    login_server: Option<String>,
    /// A git server's host[:port], as a context or `ADD` URL names it.
    #[arg(long, value_name = "HOST")]
    git_host: Option<String>,
}

impl Target {
    fn resolve(&self) -> Result<(CredentialKind, String)> {
        let (kind, raw) = match (&self.login_server, &self.git_host) {
            (Some(h), None) => (CredentialKind::Registry, h),
            (None, Some(h)) => (CredentialKind::Git, h),
            _ => bail!("give one of --login-server HOST or --git-host HOST"),
        };
        // `https://host:5000/` is accepted as `host:5000`, as docker login does.
        let host = raw
            .trim()
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        if host.is_empty() || host.contains('/') {
            bail!("{raw:?}: give host or host:port, without a path");
        }
        Ok((kind, host))
    }
}

/// Where the password comes from: never a command-line argument, which
/// other users of the machine could read.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Password {
    /// Read the password (or token) from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Read the password from this environment variable.
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
}

impl Password {
    fn read(&self) -> Result<String> {
        let text = match &self.password_env {
            Some(var) => std::env::var(var)
                .with_context(|| format!("--password-env: {var} is not set (or not UTF-8)"))?,
            None => {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the password from standard input")?;
                s
            }
        };
        let p = text.trim_end_matches(['\n', '\r']).to_owned();
        if p.is_empty() {
            bail!("the password is empty");
        }
        Ok(p)
    }
}

#[derive(Subcommand)]
pub enum CredentialCommand {
    /// Store a credential for POOL's builds (FROM, COPY --from, RUN
    /// --mount=from, cache imports; git contexts and ADD of git URLs).
    Add {
        pool: String,
        #[command(flatten)]
        target: Target,
        #[arg(long, short = 'u')]
        username: String,
        #[command(flatten)]
        password: Password,
    },
    /// Replace a stored credential's username and password.
    Update {
        pool: String,
        #[command(flatten)]
        target: Target,
        #[arg(long, short = 'u')]
        username: String,
        #[command(flatten)]
        password: Password,
    },
    /// Delete a stored credential.
    Remove {
        pool: String,
        #[command(flatten)]
        target: Target,
    },
    /// POOL's credentials: kind, host, username (never the password).
    List { pool: String },
}

pub async fn run(args: &ClientArgs, cmd: CredentialCommand) -> Result<()> {
    let c = client(args.server.as_deref())?;
    let json = args.output == Format::Json;
    match cmd {
        CredentialCommand::Add {
            pool,
            target,
            username,
            password,
        } => {
            let (kind, host) = target.resolve()?;
            let spec = CredentialSpec {
                kind,
                host,
                username,
                password: password.read()?,
            };
            let info = c.add_credential(&pool, &spec).await?;
            if json {
                return print_json(&info);
            }
            println!(
                "pool {pool}: {} credential for {} stored",
                info.kind, info.host
            );
        }
        CredentialCommand::Update {
            pool,
            target,
            username,
            password,
        } => {
            let (kind, host) = target.resolve()?;
            let spec = CredentialSpec {
                kind,
                host,
                username,
                password: password.read()?,
            };
            let info = c.update_credential(&pool, &spec).await?;
            if json {
                return print_json(&info);
            }
            println!(
                "pool {pool}: {} credential for {} updated",
                info.kind, info.host
            );
        }
        CredentialCommand::Remove { pool, target } => {
            let (kind, host) = target.resolve()?;
            c.delete_credential(&pool, kind, &host).await?;
            println!("pool {pool}: {kind} credential for {host} removed");
        }
        CredentialCommand::List { pool } => {
            let list = c.list_credentials(&pool).await?;
            if json {
                return print_json(&list);
            }
            println!("{:<9} {:<32} {:<20} UPDATED", "KIND", "HOST", "USERNAME");
            for i in &list {
                println!(
                    "{:<9} {:<32} {:<20} {}",
                    i.kind,
                    i.host,
                    i.username,
                    crate::ctl::time(Some(i.updated_at))
                );
            }
        }
    }
    Ok(())
}
