//! `slipway credential …`: a pool's credentials for registries other than
//! the server's own (`--login-server`, as `az acr task credential` names it)
//! and for git servers (`--git-host`: a password or token over HTTP(S), or
//! `--ssh-key-file` with `--known-hosts-file` over SSH). Stored sealed on
//! the server, handed to an agent with a lease only; never printed back.

use std::io::Read;
use std::path::{Path, PathBuf};

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
    /// The kind and host; `ssh` picks `git-ssh` for a `--git-host`.
    fn resolve(&self, ssh: bool) -> Result<(CredentialKind, String)> {
        let (kind, raw) = match (&self.login_server, &self.git_host) {
            (Some(_), None) if ssh => {
                bail!("SSH (--ssh-key-file, --ssh) is for --git-host, not --login-server")
            }
            (Some(h), None) => (CredentialKind::Registry, h),
            (None, Some(h)) if ssh => (CredentialKind::GitSsh, h),
            (None, Some(h)) => (CredentialKind::Git, h),
            _ => bail!("give one of --login-server HOST or --git-host HOST"),
        };
        // `https://host:5000/` is accepted as `host:5000`, as docker login
        // does; `ssh://host:2222` as `host:2222`.
        let host = raw
            .trim()
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_start_matches("ssh://")
            .trim_end_matches('/')
            .to_owned();
        if host.is_empty() || host.contains('/') {
            bail!("{raw:?}: give host or host:port, without a path");
        }
        Ok((kind, host))
    }
}

/// The secret: a password, never a command-line argument (which other
/// users of the machine could read), or an SSH private key and the host
/// keys to trust, from files.
#[derive(clap::Args)]
#[group(required = true, multiple = true)]
pub struct Secret {
    /// Read the password (or token) from standard input.
    #[arg(long, conflicts_with_all = ["password_env", "ssh_key_file", "known_hosts_file"])]
    password_stdin: bool,
    /// Read the password from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with_all = ["ssh_key_file", "known_hosts_file"])]
    password_env: Option<String>,
    /// Git over SSH (with --git-host): the private key (OpenSSH or PEM, no
    /// passphrase) the agent authenticates with.
    #[arg(long, value_name = "FILE", requires_all = ["known_hosts_file", "git_host"])]
    ssh_key_file: Option<PathBuf>,
    /// Git over SSH: the host keys the agent may trust, as known_hosts
    /// lines (`ssh-keyscan -p PORT HOST`); an agent never trusts an
    /// unknown host key.
    #[arg(long, value_name = "FILE", requires = "ssh_key_file")]
    known_hosts_file: Option<PathBuf>,
}

impl Secret {
    fn ssh(&self) -> bool {
        self.ssh_key_file.is_some()
    }

    /// The password (or key) and, for SSH, the known_hosts text.
    fn read(&self, host: &str) -> Result<(String, Option<String>)> {
        if let (Some(key), Some(known)) = (&self.ssh_key_file, &self.known_hosts_file) {
            return Ok((read_ssh_key(key)?, Some(read_known_hosts(known, host)?)));
        }
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
        Ok((p, None))
    }
}

/// What `ssh-keygen` writes for a key without a passphrase: the base64 of
/// `openssh-key-v1\0` and the cipher name `none`.
const OPENSSH_MAGIC_B64: &str = "b3BlbnNzaC1rZXktdjE";
const OPENSSH_NO_CIPHER_B64: &str = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU";

/// A private key the agent's ssh can use without a prompt.
fn read_ssh_key(path: &Path) -> Result<String> {
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("--ssh-key-file {shown}"))?;
    if bytes.len() > 16 * 1024 {
        bail!("--ssh-key-file {shown}: larger than 16 KiB; not a private key");
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!("--ssh-key-file {shown}: not text (give the key in OpenSSH or PEM form)")
    })?;
    let t = text.trim();
    if t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-") {
        bail!(
            "--ssh-key-file {shown} is a public key: give the private key (the file without .pub)"
        );
    }
    if !(t.starts_with("-----BEGIN ") && t.contains("PRIVATE KEY-----")) {
        bail!("--ssh-key-file {shown}: not a private key (expected -----BEGIN … PRIVATE KEY-----)");
    }
    let body: String = t
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let encrypted = t.contains("ENCRYPTED")
        || (body.starts_with(OPENSSH_MAGIC_B64) && !body.starts_with(OPENSSH_NO_CIPHER_B64));
    if encrypted {
        bail!(
            "--ssh-key-file {shown} is protected by a passphrase: agents run git without a prompt, \
             so store a key without one (a deploy key; `ssh-keygen -p -N '' -f COPY` removes it from a copy)"
        );
    }
    // ssh reads a key only up to a final newline.
    Ok(format!("{t}\n"))
}

/// The known_hosts lines, checked to name `host` as ssh will look it up
/// (`[host]:port` for a port other than 22) when they can be read.
fn read_known_hosts(path: &Path, host: &str) -> Result<String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--known-hosts-file {shown}"))?;
    if text.len() > 64 * 1024 {
        bail!("--known-hosts-file {shown}: larger than 64 KiB");
    }
    let lookup = known_hosts_name(host);
    let mut entries = 0;
    let mut names_it = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        entries += 1;
        let Some(hosts) = line.split_whitespace().next() else {
            continue;
        };
        // Hashed names, markers and wildcards: ssh decides.
        names_it |= hosts.starts_with('|')
            || hosts.starts_with('@')
            || hosts.contains(['*', '?'])
            || hosts.split(',').any(|h| h == lookup);
    }
    if entries == 0 {
        bail!(
            "--known-hosts-file {shown} holds no host key; agents never trust an unknown host key \
             (get it with `ssh-keyscan{} {}` and check its fingerprint)",
            port_flag(host),
            bare_host(host)
        );
    }
    if !names_it {
        bail!(
            "--known-hosts-file {shown} has no key for {lookup}, the name ssh looks up for {host} \
             (`ssh-keyscan{} {}` prints it)",
            port_flag(host),
            bare_host(host)
        );
    }
    Ok(text)
}

/// `host` and its port, if any (`[::1]:2222`, `h:2222`, `h`).
fn split_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[')
        && let Some((h, tail)) = rest.split_once(']')
    {
        return (h, tail.strip_prefix(':'));
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (host, None),
    }
}

fn bare_host(host: &str) -> &str {
    split_port(host).0
}

fn port_flag(host: &str) -> String {
    match split_port(host).1 {
        Some(p) if p != "22" => format!(" -p {p}"),
        _ => String::new(),
    }
}

/// How ssh names the host in known_hosts.
fn known_hosts_name(host: &str) -> String {
    match split_port(host) {
        (h, Some(p)) if p != "22" => format!("[{h}]:{p}"),
        (h, _) => h.to_owned(),
    }
}

#[derive(Subcommand)]
pub enum CredentialCommand {
    /// Store a credential for POOL's builds (FROM, COPY --from, RUN
    /// --mount=from, cache imports; git contexts and ADD of git URLs).
    ///
    /// Git over SSH: `--git-host HOST[:PORT] --ssh-key-file KEY
    /// --known-hosts-file FILE` (user `git` unless -u says otherwise).
    Add {
        pool: String,
        #[command(flatten)]
        target: Target,
        /// The user (for SSH: the default user of URLs that name none;
        /// `git` if not given).
        #[arg(long, short = 'u', required_unless_present = "ssh_key_file")]
        username: Option<String>,
        #[command(flatten)]
        secret: Secret,
    },
    /// Replace a stored credential's username and password (or SSH key and
    /// known_hosts).
    Update {
        pool: String,
        #[command(flatten)]
        target: Target,
        /// The user (for SSH: `git` if not given).
        #[arg(long, short = 'u', required_unless_present = "ssh_key_file")]
        username: Option<String>,
        #[command(flatten)]
        secret: Secret,
    },
    /// Delete a stored credential.
    Remove {
        pool: String,
        #[command(flatten)]
        target: Target,
        /// The git-ssh credential of the --git-host (not its HTTP one).
        #[arg(long, requires = "git_host")]
        ssh: bool,
    },
    /// POOL's credentials: kind (registry, git, git-ssh), host, username
    /// (never the password or key).
    List { pool: String },
}

/// What `add` and `update` send.
fn spec(target: &Target, username: Option<String>, secret: &Secret) -> Result<CredentialSpec> {
    let (kind, host) = target.resolve(secret.ssh())?;
    let username = match username {
        Some(u) => u,
        None if secret.ssh() => "git".to_owned(),
        None => bail!("give --username"),
    };
    let (password, known_hosts) = secret.read(&host)?;
    Ok(CredentialSpec {
        kind,
        host,
        username,
        password,
        known_hosts,
    })
}

pub async fn run(args: &ClientArgs, cmd: CredentialCommand) -> Result<()> {
    // The arguments are checked (and files read) before the server is asked.
    let c = || client(args.server.as_deref());
    let json = args.output == Format::Json;
    let replace = matches!(cmd, CredentialCommand::Update { .. });
    match cmd {
        CredentialCommand::Add {
            pool,
            target,
            username,
            secret,
        }
        | CredentialCommand::Update {
            pool,
            target,
            username,
            secret,
        } => {
            let spec = spec(&target, username, &secret)?;
            let (info, done) = if replace {
                (c()?.update_credential(&pool, &spec).await?, "updated")
            } else {
                (c()?.add_credential(&pool, &spec).await?, "stored")
            };
            if json {
                return print_json(&info);
            }
            println!(
                "pool {pool}: {} credential for {} {done}",
                info.kind, info.host
            );
        }
        CredentialCommand::Remove { pool, target, ssh } => {
            let (kind, host) = target.resolve(ssh)?;
            c()?.delete_credential(&pool, kind, &host).await?;
            println!("pool {pool}: {kind} credential for {host} removed");
        }
        CredentialCommand::List { pool } => {
            let list = c()?.list_credentials(&pool).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_names_as_ssh_looks_them_up() {
        assert_eq!(known_hosts_name("git.internal:2222"), "[git.internal]:2222");
        assert_eq!(known_hosts_name("git.internal:22"), "git.internal");
        assert_eq!(known_hosts_name("git.internal"), "git.internal");
        assert_eq!(known_hosts_name("[fd00::1]:2222"), "[fd00::1]:2222");
        assert_eq!(known_hosts_name("fd00::1"), "fd00::1");
        assert_eq!(port_flag("h:2222"), " -p 2222");
        assert_eq!(port_flag("h"), "");
    }

    #[test]
    fn ssh_keys_and_known_hosts_are_checked_before_they_are_sent() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let plain = write(
            "id",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----",
        );
        let key = read_ssh_key(&plain).unwrap();
        assert!(key.ends_with("-----END OPENSSH PRIVATE KEY-----\n"));
        let locked = write(
            "locked",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0\n-----END OPENSSH PRIVATE KEY-----\n",
        );
        let e = read_ssh_key(&locked).unwrap_err().to_string();
        assert!(e.contains("passphrase"), "{e}");
        let public = write("id.pub", "ssh-ed25519 AAAAC3Nza t@h\n");
        let e = read_ssh_key(&public).unwrap_err().to_string();
        assert!(e.contains("public key"), "{e}");

        let kh = write("kh", "[10.0.0.2]:2222 ssh-ed25519 AAAAC3Nza\n");
        assert!(read_known_hosts(&kh, "10.0.0.2:2222").is_ok());
        let e = read_known_hosts(&kh, "10.0.0.2").unwrap_err().to_string();
        assert!(e.contains("no key for 10.0.0.2"), "{e}");
        let hashed = write("hashed", "|1|abc=|def= ssh-ed25519 AAAAC3Nza\n");
        assert!(read_known_hosts(&hashed, "10.0.0.2").is_ok());
        let empty = write("empty", "# nothing\n");
        let e = read_known_hosts(&empty, "h:2222").unwrap_err().to_string();
        assert!(e.contains("ssh-keyscan -p 2222 h"), "{e}");
    }
}
