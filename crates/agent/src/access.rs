//! What a run's build child needs to reach private dependencies, written
//! into the run's scratch dir and gone with it: a Docker `config.json`
//! (the lease's credentials for the server's registry and the pool's other
//! registries, over the agent's own config with its `credsStore` and
//! `credHelpers`), a git config (HTTP credentials per git host, the CA
//! bundle), and a CA bundle (the system's roots plus `--ca-cert` files).

use std::path::{Path, PathBuf};

use api::{CredentialKind, Lease};
use base64::Engine as _;

/// The files [`prepare`] wrote, for the child's flags and environment.
pub struct Access {
    /// `DOCKER_CONFIG` for the child.
    pub docker_dir: PathBuf,
    /// `GIT_CONFIG_GLOBAL` for the agent's own git fetch and the child.
    pub git_config: PathBuf,
    /// The `--ca-cert` files' PEM, for the agent's own downloads.
    pub ca_pems: Vec<Vec<u8>>,
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
    let git_config = dir.join("gitconfig");
    crate::write_private(&git_config, git.as_bytes())
        .map_err(|e| format!("writing the git config: {e}"))?;
    Ok(Access {
        docker_dir,
        git_config,
        ca_pems,
    })
}
