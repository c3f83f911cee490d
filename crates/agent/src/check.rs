//! `slipway agent check`: can this machine serve its pool? An agent only
//! ever dials out, so what matters is what it can reach from inside its
//! network (the control plane, the registry builds push to, and whatever
//! the builds read: an internal base-image registry, blob storage, a git
//! server) and whether it can build at all (isolation, overlayfs, cgroups,
//! a writable work dir). Every check runs, each gets a line; nothing on the
//! server changes.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How a check came out. `Warn` does not stop the agent from working but
/// limits it (no cgroups: `--memory` is not enforced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`server`, `token`, `registry`, `reach`, …).
    pub name: String,
    /// The address or path it was about.
    pub target: String,
    pub level: Level,
    pub detail: String,
    pub millis: u64,
}

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub server: String,
    pub token: String,
    pub pool: String,
    pub work_dir: std::path::PathBuf,
    /// Registries the builds reach over plain HTTP (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
    /// `--ca-cert` files' PEM, trusted beside the system's roots.
    pub ca_certs: Vec<Vec<u8>>,
    /// More endpoints the builds need: `http(s)://…` (any HTTP answer
    /// counts) or `host:port` (a TCP connection counts).
    pub reach: Vec<String>,
    /// Per network check.
    pub timeout: Duration,
}

/// Run every check, in a fixed order.
pub async fn run(config: &CheckConfig) -> Vec<Check> {
    let mut out = Vec::new();
    let roots = config
        .ca_certs
        .iter()
        .map(|p| reqwest::Certificate::from_pem_bundle(p))
        .collect::<Result<Vec<_>, _>>();
    let http = roots.and_then(|r| {
        reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .tls_certs_merge(r.into_iter().flatten())
            .build()
    });
    let http = match http {
        Ok(h) => h,
        Err(e) => {
            out.push(line(
                "http client",
                "",
                Level::Fail,
                e.to_string(),
                Instant::now(),
            ));
            return out;
        }
    };

    let server = config.server.trim_end_matches('/');
    let url = format!("{server}{}/openapi.json", api::PREFIX);
    out.push(get("server", server, &http, &url, |s| s.is_success()).await);

    // The token: which pool it serves, and the registry the server names.
    let t = Instant::now();
    let mut registry = None;
    match api::Client::new(server, Some(config.token.clone())) {
        Err(e) => out.push(line("token", server, Level::Fail, e.to_string(), t)),
        Ok(c) => match c.agent_self().await {
            Ok(me) => {
                let (level, detail) = if me.pool == config.pool {
                    let d = format!("an agent token of pool {} (tier {:?})", me.pool, me.tier);
                    (Level::Ok, d)
                } else {
                    let d = format!("the token is pool {}'s, not {}'s", me.pool, config.pool);
                    (Level::Fail, d)
                };
                out.push(line("token", &config.pool, level, detail, t));
                registry = Some(me.registry);
            }
            Err(e) => out.push(line("token", &config.pool, Level::Fail, e.to_string(), t)),
        },
    }

    // The registry builds push to: `/v2/` answers 200 or 401 when it is one.
    let t = Instant::now();
    match registry {
        None => out.push(line(
            "registry",
            "",
            Level::Fail,
            "unknown: the server did not say (see the token check)".into(),
            t,
        )),
        Some(host) => {
            // As the builds will speak to it: the server's own registry
            // with the server URL's scheme; another plain-HTTP registry
            // that is not loopback needs --insecure-registry here too.
            let own_plain = server.starts_with("http://") && host == api::host_of(server);
            let scheme = if own_plain || regclient::plain_http(&host, &config.insecure_registries) {
                "http"
            } else {
                "https"
            };
            let url = format!("{scheme}://{host}/v2/");
            // `/v2/` answers 200, or 401 asking for a token.
            let registry = |s: reqwest::StatusCode| s.is_success() || s == 401;
            out.push(get("registry", &host, &http, &url, registry).await);
        }
    }

    for target in &config.reach {
        out.push(reach(&http, target, config.timeout).await);
    }
    out.push(isolation());
    out.push(work_dir(&config.work_dir));
    out.push(git());
    out
}

/// Whether any check failed.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.level == Level::Fail)
}

fn line(name: &str, target: &str, level: Level, detail: String, since: Instant) -> Check {
    Check {
        name: name.into(),
        target: target.into(),
        level,
        detail,
        millis: since.elapsed().as_millis() as u64,
    }
}

/// The error with its causes: reqwest's own message says little
/// ("error sending request"); the cause names the refusal or the timeout.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `GET url`; ok when `accept` takes the status.
async fn get(
    name: &str,
    target: &str,
    http: &reqwest::Client,
    url: &str,
    accept: impl Fn(reqwest::StatusCode) -> bool,
) -> Check {
    let t = Instant::now();
    match http.get(url).send().await {
        Ok(r) if accept(r.status()) => line(
            name,
            target,
            Level::Ok,
            format!("{url} answers {}", r.status()),
            t,
        ),
        Ok(r) => line(
            name,
            target,
            Level::Fail,
            format!("{url} answered {}", r.status()),
            t,
        ),
        Err(e) => line(name, target, Level::Fail, chain(&e), t),
    }
}

async fn reach(http: &reqwest::Client, target: &str, timeout: Duration) -> Check {
    let t = Instant::now();
    if target.starts_with("http://") || target.starts_with("https://") {
        // Any answer at all: the network lets us through.
        return get("reach", target, http, target, |_| true).await;
    }
    if !target.contains(':') {
        return line(
            "reach",
            target,
            Level::Fail,
            "give http(s)://… or host:port".into(),
            t,
        );
    }
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
        Ok(Ok(_)) => line("reach", target, Level::Ok, "TCP connection made".into(), t),
        Ok(Err(e)) => line("reach", target, Level::Fail, e.to_string(), t),
        Err(_) => line(
            "reach",
            target,
            Level::Fail,
            format!("no TCP connection within {timeout:?} (a firewall dropping it?)"),
            t,
        ),
    }
}

/// Can RUN steps be isolated here: root or user namespaces, overlayfs,
/// and cgroups for `--memory`/`--cpus` (a warning without them).
fn isolation() -> Check {
    let t = Instant::now();
    let mode = match sandbox::process::Mode::detect() {
        Ok(sandbox::process::Mode::Root) => "as root",
        Ok(_) => "rootless, in a user namespace",
        Err(e) => return line("isolation", "", Level::Fail, e.to_string(), t),
    };
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .map(|f| f.lines().any(|l| l.trim_end().ends_with("overlay")))
        .unwrap_or(false);
    if !overlay {
        return line(
            "isolation",
            "/proc/filesystems",
            Level::Fail,
            format!("{mode}, but the kernel has no overlayfs (modprobe overlay)"),
            t,
        );
    }
    let root = Path::new(sandbox::cgroups::DEFAULT_ROOT);
    match sandbox::cgroups::detect(root) {
        Some(_) => line(
            "isolation",
            "",
            Level::Ok,
            format!("{mode}, overlayfs, cgroups for --memory/--cpus"),
            t,
        ),
        None => line(
            "isolation",
            &root.display().to_string(),
            Level::Warn,
            format!(
                "{mode}, overlayfs; no usable cgroup hierarchy: tier limits will not be enforced"
            ),
            t,
        ),
    }
}

/// The work dir takes files, and has room for layers.
fn work_dir(dir: &Path) -> Check {
    let t = Instant::now();
    let target = dir.display().to_string();
    let probe = dir.join(".slipway-check");
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"probe"))
        .and_then(|()| std::fs::remove_file(&probe));
    if let Err(e) = written {
        return line(
            "work dir",
            &target,
            Level::Fail,
            format!("not writable: {e}"),
            t,
        );
    }
    match rustix::fs::statvfs(dir) {
        Ok(v) => {
            let free = v.f_bavail.saturating_mul(v.f_frsize);
            let gib = free as f64 / (1u64 << 30) as f64;
            // Below this a single base image and its layers may not fit.
            let level = if free < 2 << 30 {
                Level::Warn
            } else {
                Level::Ok
            };
            line(
                "work dir",
                &target,
                level,
                format!("writable, {gib:.1} GiB free"),
                t,
            )
        }
        Err(e) => line(
            "work dir",
            &target,
            Level::Warn,
            format!("writable; free space unknown: {e}"),
            t,
        ),
    }
}

/// `git` on PATH: the agent fetches git contexts and `ADD` git sources with it.
fn git() -> Check {
    let t = Instant::now();
    match std::process::Command::new("git").arg("--version").output() {
        Ok(o) if o.status.success() => line(
            "git",
            "",
            Level::Ok,
            String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            t,
        ),
        _ => line(
            "git",
            "",
            Level::Warn,
            "no git on PATH: git contexts and ADD of git sources will fail".into(),
            t,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reach_tells_an_open_port_from_a_closed_one() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let http = reqwest::Client::new();
        let t = Duration::from_secs(5);
        let ok = reach(&http, &open.local_addr().unwrap().to_string(), t).await;
        assert_eq!(ok.level, Level::Ok, "{ok:?}");
        let bad = reach(&http, &closed_addr, t).await;
        assert_eq!(bad.level, Level::Fail, "{bad:?}");
        assert!(bad.detail.to_lowercase().contains("refused"), "{bad:?}");
        let nonsense = reach(&http, "no-port-here", t).await;
        assert_eq!(nonsense.level, Level::Fail);
    }
}
