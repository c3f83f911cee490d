//! What a run's build child needs to reach private dependencies, written
//! into the run's scratch dir and gone with it: a Docker `config.json`
//! (the lease's credentials for the server's registry and the pool's other
//! registries, over the agent's own config with its `credsStore` and
//! `credHelpers`), a git config (HTTP credentials per git host, the CA
//! bundle, and for git over SSH `core.sshCommand` naming an ssh config of
//! the run's own: per host its key, user and known_hosts, strict host key
//! checking), and a CA bundle (the system's roots plus `--ca-cert` files).

use std::path::{Path, PathBuf};

use api::{CredentialKind, CredentialSpec, Lease};
use base64::Engine as _;

/// The files [`prepare`] wrote, for the child's flags and environment.
pub struct Access {
    /// `DOCKER_CONFIG` for the child.
    pub docker_dir: PathBuf,
    /// `GIT_CONFIG_GLOBAL` for the agent's own git fetch and the child.
    pub git_config: PathBuf,
    /// The `--ca-cert` files' PEM, for the agent's own downloads.
    pub ca_pems: Vec<Vec<u8>>,
    /// Hosts (`host[:port]`) the lease has a git-ssh credential for.
    pub ssh_hosts: Vec<String>,
}

/// Where the system keeps its roots (Debian's `ca-certificates` first).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The agent's own Docker config: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`; `{}` when there is none.
fn own_docker_config() -> Result<serde_json::Value, String> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    let Some(path) = dir.map(|d| d.join("config.json")) else {
        return Ok(serde_json::json!({}));
    };
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| format!("{}: not a Docker config.json: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::json!({})),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Write the run's access files into `dir`. `server_host` is the host the
/// agent reaches the server at; the lease's own-registry credential is
/// stored under it (and under the name the submitter used, if another).
pub fn prepare(
    dir: &Path,
    lease: &Lease,
    server_host: &str,
    ca_certs: &[PathBuf],
) -> Result<Access, String> {
    let docker_dir = dir.join("docker");
    std::fs::create_dir_all(&docker_dir)
        .map_err(|e| format!("creating {}: {e}", docker_dir.display()))?;
    // The agent's own config is the base: its credsStore/credHelpers keep
    // working in the child; the lease's entries override it host by host.
    let mut config = own_docker_config()?;
    if !config.is_object() {
        config = serde_json::json!({});
    }
    let mut auths = serde_json::Map::new();
    if let Some(serde_json::Value::Object(m)) = config.get("auths") {
        auths = m.clone();
    }
    let mut put = |host: &str, user: &str, password: &str| {
        auths.insert(
            host.to_owned(),
            serde_json::json!({ "auth": b64(&format!("{user}:{password}")) }),
        );
    };
    for c in &lease.credentials {
        if c.kind == CredentialKind::Registry {
            put(&c.host, &c.username, &c.password);
        }
    }
    if let Some(reg) = &lease.registry {
        put(server_host, &reg.username, &reg.password);
        if reg.host != server_host {
            put(&reg.host, &reg.username, &reg.password);
        }
    }
    // A credential helper named for a host the lease covers would win over
    // `auths` in docker's lookup order: the lease's credential must.
    if let Some(serde_json::Value::Object(helpers)) = config.get_mut("credHelpers") {
        helpers.retain(|host, _| !auths.contains_key(host));
    }
    config["auths"] = serde_json::Value::Object(auths);
    crate::write_private(
        &docker_dir.join("config.json"),
        config.to_string().as_bytes(),
    )
    .map_err(|e| format!("writing registry credentials: {e}"))?;

    let mut ca_pems = Vec::new();
    for f in ca_certs {
        ca_pems.push(std::fs::read(f).map_err(|e| format!("--ca-cert {}: {e}", f.display()))?);
    }
    let ca_bundle = if ca_pems.is_empty() {
        None
    } else {
        let mut pem = Vec::new();
        if let Some(sys) = SYSTEM_BUNDLES.iter().find(|p| Path::new(p).is_file()) {
            pem = std::fs::read(sys).map_err(|e| format!("reading {sys}: {e}"))?;
            pem.push(b'\n');
        }
        for b in &ca_pems {
            pem.extend_from_slice(b);
            pem.push(b'\n');
        }
        let p = dir.join("ca-bundle.pem");
        std::fs::write(&p, pem).map_err(|e| format!("writing {}: {e}", p.display()))?;
        Some(p)
    };

    let mut git = String::new();
    if let Some(p) = &ca_bundle {
        git.push_str(&format!("[http]\n\tsslCAInfo = {}\n", p.display()));
    }
    for c in &lease.credentials {
        if c.kind != CredentialKind::Git {
            continue;
        }
        // A header rather than a credential-store file: it needs no URL
        // encoding of the user and password and works for any transport
        // git speaks over HTTP (smart, dumb), with or without TLS.
        let header = format!(
            "Authorization: Basic {}",
            b64(&format!("{}:{}", c.username, c.password))
        );
        for scheme in ["http", "https"] {
            git.push_str(&format!(
                "[http \"{scheme}://{}/\"]\n\textraHeader = {header}\n",
                c.host
            ));
        }
    }
    let ssh: Vec<&CredentialSpec> = lease
        .credentials
        .iter()
        .filter(|c| c.kind == CredentialKind::GitSsh)
        .collect();
    if !ssh.is_empty() {
        git.push_str(&ssh_section(&dir.join("ssh"), &ssh)?);
    }
    let git_config = dir.join("gitconfig");
    crate::write_private(&git_config, git.as_bytes())
        .map_err(|e| format!("writing the git config: {e}"))?;
    Ok(Access {
        docker_dir,
        git_config,
        ca_pems,
        ssh_hosts: ssh.iter().map(|c| c.host.clone()).collect(),
    })
}

/// The git config's `core.sshCommand`, naming the ssh config [`write_ssh`]
/// writes. git runs it with the shell; both the agent's fetch and the
/// build child's `ADD <git URL>` read it from GIT_CONFIG_GLOBAL.
fn ssh_section(dir: &Path, creds: &[&CredentialSpec]) -> Result<String, String> {
    let config = write_ssh(dir, creds)?;
    let command = format!(
        "ssh -F {} -o BatchMode=yes",
        shell_quote(&config.to_string_lossy())
    );
    Ok(format!(
        "[core]\n\tsshCommand = {}\n",
        git_config_quote(&command)
    ))
}

/// `host[:port]` → (host, port): `[fd00::1]:2222`, `h:2222`, `h`, `fd00::1`.
pub(crate) fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[')
        && let Some((h, tail)) = rest.split_once(']')
    {
        return (h, tail.strip_prefix(':').filter(|p| !p.is_empty()));
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && !p.is_empty() => (h, Some(p)),
        _ => (host, None),
    }
}

/// A path in an ssh config: quoted, `%` (ssh's token sign) doubled.
fn ssh_path(p: &Path) -> Result<String, String> {
    let s = p.to_string_lossy();
    if s.contains(['"', '\n', '\r']) {
        return Err(format!(
            "{}: the work dir's path cannot be named in an ssh config",
            p.display()
        ));
    }
    Ok(format!("\"{}\"", s.replace('%', "%%")))
}

/// A user name ssh takes as is (the server refuses others for git-ssh).
pub(crate) fn ssh_user_ok(user: &str) -> bool {
    !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn git_config_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The run's ssh config in `dir` (0700), with each git-ssh credential's
/// key (0600) and known_hosts. Credentials are grouped by host name: ssh
/// matches `Host` on the name alone (git gives the port with `-p`), so the
/// keys of one host on several ports are all offered there and their
/// known_hosts lines, which name `[host]:port`, share one file. Only those
/// known_hosts are trusted (not the system's); other hosts keep the
/// agent's own ssh configuration.
fn write_ssh(dir: &Path, creds: &[&CredentialSpec]) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut groups: Vec<(&str, Vec<&CredentialSpec>)> = Vec::new();
    for c in creds {
        let name = split_host_port(&c.host).0;
        match groups
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, g)) => g.push(c),
            None => groups.push((name, vec![c])),
        }
    }
    let mut config =
        String::from("# The pool's git-ssh credentials, for one run (written by slipway agent).\n");
    for (i, (name, group)) in groups.iter().enumerate() {
        let known = dir.join(format!("known_hosts-{i}"));
        let mut lines = String::new();
        for c in group {
            lines.push_str(c.known_hosts.as_deref().unwrap_or_default().trim_end());
            lines.push('\n');
        }
        crate::write_private(&known, lines.as_bytes())
            .map_err(|e| format!("writing {}: {e}", known.display()))?;
        config.push_str(&format!("Host {name}\n\tHostName {name}\n"));
        // One port for the name: scp-like URLs (which cannot name one)
        // reach it there too.
        if let [c] = group.as_slice()
            && let Some(port) = split_host_port(&c.host).1
        {
            config.push_str(&format!("\tPort {port}\n"));
        }
        let user = &group[0].username;
        if !ssh_user_ok(user) {
            return Err(format!(
                "the git-ssh credential for {}: user {user:?} cannot be named in an ssh config",
                group[0].host
            ));
        }
        config.push_str(&format!("\tUser {user}\n"));
        for (j, c) in group.iter().enumerate() {
            let key = dir.join(format!("key-{i}-{j}"));
            let mut text = c.password.trim_end().to_owned();
            text.push('\n');
            crate::write_private(&key, text.as_bytes())
                .map_err(|e| format!("writing the ssh key for {}: {e}", c.host))?;
            config.push_str(&format!("\tIdentityFile {}\n", ssh_path(&key)?));
        }
        config.push_str(&format!(
            "\tIdentitiesOnly yes\n\tUserKnownHostsFile {}\n\tGlobalKnownHostsFile /dev/null\n\
             \tStrictHostKeyChecking yes\n\tConnectTimeout 30\n",
            ssh_path(&known)?
        ));
    }
    // -F replaces the user's and the system's files: keep them for the
    // rest (the values above come first, so they win for these hosts).
    config.push_str("Match all\n\tInclude ~/.ssh/config\n\tInclude /etc/ssh/ssh_config\n");
    let path = dir.join("config");
    crate::write_private(&path, config.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use super::*;

    fn cred(host: &str, user: &str, key: &str, known: &str) -> CredentialSpec {
        CredentialSpec {
            kind: CredentialKind::GitSsh,
            host: host.into(),
            username: user.into(),
            password: key.into(),
            known_hosts: Some(known.into()),
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// The files and config for git over SSH, as the real `ssh -G` (which
    /// resolves a config without connecting) and `git config` read them.
    #[test]
    fn git_ssh_credentials_become_an_ssh_config_of_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        // A path git, the shell and ssh must all take as one word.
        let dir = tmp.path().join("run 1%x").join("ssh");
        let a = cred(
            "git.internal:2222",
            "deploy",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAA\n-----END OPENSSH PRIVATE KEY-----",
            "[git.internal]:2222 ssh-ed25519 AAAAone\n",
        );
        let b = cred(
            "other.internal:2200",
            "git",
            "KEY-B",
            "[other.internal]:2200 ssh-ed25519 AAAAtwo",
        );
        let c = cred(
            "other.internal:2201",
            "git",
            "KEY-C",
            "[other.internal]:2201 ssh-ed25519 AAAAthree",
        );
        let section = ssh_section(&dir, &[&a, &b, &c]).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let key = dir.join("key-0-0");
        assert_eq!(mode(&key), 0o600);
        assert!(std::fs::read_to_string(&key).unwrap().ends_with("-----\n"));
        assert_eq!(mode(&dir.join("config")), 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.join("known_hosts-1")).unwrap(),
            "[other.internal]:2200 ssh-ed25519 AAAAtwo\n[other.internal]:2201 ssh-ed25519 AAAAthree\n"
        );

        let gitconfig = tmp.path().join("gitconfig");
        std::fs::write(&gitconfig, &section).unwrap();
        let out = Command::new("git")
            .args(["config", "--file"])
            .arg(&gitconfig)
            .args(["core.sshCommand"])
            .output()
            .expect("git is installed");
        assert!(out.status.success(), "{out:?}");
        let command = String::from_utf8(out.stdout).unwrap();
        let config = dir.join("config");
        assert_eq!(
            command.trim(),
            format!("ssh -F '{}' -o BatchMode=yes", config.display())
        );

        let resolved = |host: &str| {
            let out = Command::new("ssh")
                .env("HOME", tmp.path())
                .arg("-F")
                .arg(&config)
                .args(["-G", host])
                .output()
                .expect("ssh (openssh-client) is installed");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap().to_lowercase()
        };
        let g = resolved("git.internal");
        for want in [
            "hostname git.internal\n".to_owned(),
            "port 2222\n".to_owned(),
            "user deploy\n".to_owned(),
            // -G shows identity files before their `%` tokens expand.
            format!("identityfile {}\n", key.display())
                .replace('%', "%%")
                .to_lowercase(),
            "identitiesonly yes\n".to_owned(),
            "stricthostkeychecking true\n".to_owned(),
            format!(
                "userknownhostsfile {}\n",
                dir.join("known_hosts-0").display()
            )
            .to_lowercase(),
            "globalknownhostsfile /dev/null\n".to_owned(),
        ] {
            assert!(g.contains(&want), "no {want:?} in:\n{g}");
        }
        // Two ports of one host: both keys, no port forced.
        let o = resolved("other.internal");
        assert!(o.contains("port 22\n"), "{o}");
        assert!(o.contains("key-1-0\n") && o.contains("key-1-1\n"), "{o}");
        // A host without a credential keeps ssh's defaults.
        let n = resolved("elsewhere.example");
        assert!(!n.contains("identitiesonly yes"), "{n}");
        assert!(!n.contains("/dev/null"), "{n}");
    }

    #[test]
    fn an_ssh_user_that_could_change_the_config_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = cred("h", "git\n\tProxyCommand x", "K", "h ssh-ed25519 A");
        let e = ssh_section(&tmp.path().join("ssh"), &[&bad]).unwrap_err();
        assert!(e.contains("cannot be named in an ssh config"), "{e}");
        assert_eq!(split_host_port("[fd00::1]:2222"), ("fd00::1", Some("2222")));
        assert_eq!(split_host_port("fd00::1"), ("fd00::1", None));
        assert_eq!(split_host_port("h:22"), ("h", Some("22")));
    }
}
