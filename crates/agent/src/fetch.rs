//! Getting a run's context onto the agent: an uploaded archive from the
//! server, a tarball URL, or a git repository (`URL#ref:subdir`, cloned
//! with the git CLI, which already speaks every transport and credential
//! helper a private git server may need). Errors are strings for the log.

use std::path::Path;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

/// Download `digest` from the server and unpack it into `ctx`.
pub async fn uploaded(
    config: &crate::AgentConfig,
    digest: &str,
    dir: &Path,
    ctx: &Path,
) -> Result<(), String> {
    let client =
        api::Client::new(&config.server, Some(config.token.clone())).map_err(|e| e.to_string())?;
    let d: oci::Digest = digest
        .parse()
        .map_err(|e| format!("context digest {digest}: {e}"))?;
    let mut backoff = crate::Backoff::new();
    let mut tries = 0;
    let resp = loop {
        match client.download_context(digest).await {
            Ok(r) => break r,
            Err(e) if e.is_transient() && tries < 20 => {
                tries += 1;
                tokio::time::sleep(backoff.delay()).await;
            }
            Err(e) => return Err(format!("downloading context {digest}: {e}")),
        }
    };
    let file = dir.join("context.tar");
    save(resp, &file).await?;
    unpack_file(&file, &d, ctx, config.unpack_limits).await
}

async fn save(resp: reqwest::Response, file: &Path) -> Result<oci::Digest, String> {
    let mut out = tokio::fs::File::create(file)
        .await
        .map_err(|e| format!("creating {}: {e}", file.display()))?;
    let mut digester = oci::Digester::new(oci::Algorithm::Sha256);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("downloading the context: {e}"))?;
        digester.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| format!("writing {}: {e}", file.display()))?;
    }
    out.flush()
        .await
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    Ok(digester.finish())
}

async fn unpack_file(
    file: &Path,
    digest: &oci::Digest,
    ctx: &Path,
    limits: context::UnpackLimits,
) -> Result<(), String> {
    let file = file.to_owned();
    let digest = digest.clone();
    let ctx = ctx.to_owned();
    tokio::task::spawn_blocking(move || {
        let f =
            std::fs::File::open(&file).map_err(|e| format!("opening {}: {e}", file.display()))?;
        context::unpack(std::io::BufReader::new(f), &digest, &ctx, limits)
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("unpacking: {e}"))?
}

/// A URL as it may be logged (no user info, no query: a SAS token).
pub use regclient::redact_url as redact;

/// `git@host:path` (git's scp-like SSH syntax): no scheme, a user before
/// the first `:`, and no `/` before it.
fn scp_like(url: &str) -> bool {
    !url.contains("://")
        && url
            .split_once(':')
            .is_some_and(|(h, _)| h.contains('@') && !h.contains('/'))
}

/// The `host[:port]` an SSH git URL connects to, as `--git-host` names it.
fn ssh_host(url: &str) -> Option<String> {
    let authority = if let Some(rest) = url.strip_prefix("ssh://") {
        rest.split('/').next().unwrap_or(rest)
    } else if scp_like(url) {
        url.split_once(':').map(|(h, _)| h).unwrap_or(url)
    } else {
        return None;
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(host.to_owned())
}

/// git's failure as one line. SSH's own words are replaced by what went
/// wrong with which host and what to do: its host key banner is a dozen
/// lines, and "Permission denied" does not say which credential.
fn git_failure(what: &str, url: &str, stderr: &str, access: &crate::access::Access) -> String {
    let stderr = stderr.trim();
    let Some(host) = ssh_host(url) else {
        return format!("{what}: {stderr}");
    };
    let bare = crate::access::split_host_port(&host).0.to_owned();
    let stored = access
        .ssh_hosts
        .iter()
        .find(|h| **h == host || crate::access::split_host_port(h).0 == bare);
    let why = if stderr.contains("Host key verification failed") {
        let changed = stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("has changed and you have requested strict checking");
        let whose = |h: &String| {
            if *h == host {
                "it".to_owned()
            } else {
                h.clone()
            }
        };
        match (stored, changed) {
            (Some(h), true) => format!(
                "host key verification failed: {host} offered a key that the known_hosts of the pool's git-ssh credential for {} does not list (the server's key changed, or the stored known_hosts is wrong: update the credential)",
                whose(h)
            ),
            (Some(h), false) => format!(
                "host key verification failed: the known_hosts of the pool's git-ssh credential for {h} has no key for {host} (agents never trust an unknown host key: update the credential)"
            ),
            (None, _) => format!(
                "host key verification failed for {host}: the pool has no git-ssh credential for it, and agents never trust an unknown host key (slipway credential add POOL --git-host {host} --ssh-key-file KEY --known-hosts-file FILE)"
            ),
        }
    } else if stderr.contains("Permission denied (publickey") {
        match stored {
            Some(h) => format!(
                "{host} refused the key of the pool's git-ssh credential for {h} (Permission denied (publickey)): check its key and user"
            ),
            None => format!(
                "{host} refused the login (Permission denied (publickey)): the pool has no git-ssh credential for it"
            ),
        }
    } else {
        return format!("{what}: {stderr}");
    };
    format!("{what}: {why}")
}

/// `https://host/repo.git#ref:subdir`, `git://…`, `ssh://…`,
/// `git@host:repo.git`, or a tarball URL. A git context reports the commit
/// (and branch) it resolved to.
pub async fn url(
    url: &str,
    dir: &Path,
    ctx: &Path,
    access: &crate::access::Access,
    limits: context::UnpackLimits,
) -> Result<Option<api::Revision>, String> {
    let (base, fragment) = url.split_once('#').unwrap_or((url, ""));
    let path = base.split('?').next().unwrap_or(base);
    let is_git = path.ends_with(".git")
        || base.starts_with("git://")
        || base.starts_with("ssh://")
        || scp_like(base)
        || !fragment.is_empty();
    let shown = redact(base);
    if !is_git {
        let http =
            regclient::http_client("slipway-agent", &access.ca_pems).map_err(|e| e.to_string())?;
        let resp = http.get(base).send().await.map_err(|e| {
            format!(
                "fetching the context from {shown}: {}",
                regclient::one_line(&e)
            )
        })?;
        if !resp.status().is_success() {
            return Err(format!(
                "fetching the context from {shown}: HTTP {}",
                resp.status()
            ));
        }
        let file = dir.join("context.tar");
        let digest = save(resp, &file).await?;
        unpack_file(&file, &digest, ctx, limits).await?;
        return Ok(None);
    }
    let (git_ref, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let checkout = dir.join("git");
    let git = |args: &[&str], cwd: Option<&Path>| {
        let mut c = tokio::process::Command::new("git");
        c.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_GLOBAL", &access.git_config)
            .stdin(std::process::Stdio::null());
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        c
    };
    let run = |mut c: tokio::process::Command, what: String| async move {
        let out = c
            .output()
            .await
            .map_err(|e| format!("{what}: cannot run git: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(git_failure(
                &what,
                base,
                &String::from_utf8_lossy(&out.stderr),
                access,
            ))
        }
    };
    let dest = checkout.to_string_lossy().into_owned();
    run(
        git(&["init", "-q", &dest], None),
        format!("git init {dest}"),
    )
    .await?;
    run(
        git(&["remote", "add", "origin", base], Some(&checkout)),
        "git remote add".into(),
    )
    .await?;
    let want = if git_ref.is_empty() { "HEAD" } else { git_ref };
    // Shallow first; servers that cannot (git's dumb HTTP) get a full fetch.
    let shallow = run(
        git(
            &["fetch", "-q", "--depth", "1", "origin", want],
            Some(&checkout),
        ),
        format!("git fetch {shown} {want}"),
    )
    .await;
    if shallow.is_err() {
        run(
            git(&["fetch", "-q", "origin", want], Some(&checkout)),
            format!("git fetch {shown} {want}"),
        )
        .await?;
    }
    run(
        git(&["checkout", "-q", "FETCH_HEAD"], Some(&checkout)),
        "git checkout".into(),
    )
    .await?;
    let commit = output(git(&["rev-parse", "HEAD"], Some(&checkout)))
        .await
        .ok_or_else(|| "git rev-parse HEAD: no commit after checkout".to_owned())?;
    let branch = if git_ref.is_empty() {
        // The remote's default branch: what HEAD points at there.
        output(git(
            &["ls-remote", "--symref", "origin", "HEAD"],
            Some(&checkout),
        ))
        .await
        .and_then(|o| {
            o.lines()
                .find_map(|l| l.strip_prefix("ref: refs/heads/"))
                .and_then(|r| r.split('\t').next())
                .map(str::to_owned)
        })
    } else if (git_ref.len() == 40 && git_ref.bytes().all(|b| b.is_ascii_hexdigit()))
        || git_ref.starts_with("refs/tags/")
    {
        // A commit or a tag is not on a branch.
        None
    } else {
        Some(
            git_ref
                .strip_prefix("refs/heads/")
                .unwrap_or(git_ref)
                .to_owned(),
        )
    };
    let _ = std::fs::remove_dir_all(checkout.join(".git"));
    let sub = Path::new(subdir.trim_matches('/'));
    if sub
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "context subdirectory {subdir:?} must be a relative path inside the repository"
        ));
    }
    let src = checkout.join(sub);
    // A symlink in the repository must not lead the context outside it.
    let inside = match (src.canonicalize(), checkout.canonicalize()) {
        (Ok(s), Ok(c)) => s.starts_with(c),
        _ => false,
    };
    if !inside || !src.is_dir() {
        return Err(format!(
            "{subdir:?} is not a directory of {shown} at {want}"
        ));
    }
    std::fs::rename(&src, ctx).map_err(|e| format!("moving the checkout: {e}"))?;
    Ok(Some(api::Revision { commit, branch }))
}

/// A command's trimmed stdout when it succeeds.
async fn output(mut c: tokio::process::Command) -> Option<String> {
    let out = c.output().await.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{scp_like, ssh_host};

    #[test]
    fn ssh_urls_and_their_hosts() {
        assert!(scp_like("git@host:org/repo.git"));
        assert!(!scp_like("ssh://git@host/repo.git"));
        assert!(!scp_like("https://h/r.git"));
        assert!(!scp_like("host:repo"));
        assert_eq!(
            ssh_host("ssh://root@10.0.0.2:2222/srv/repo.git").as_deref(),
            Some("10.0.0.2:2222")
        );
        assert_eq!(ssh_host("ssh://h/r.git").as_deref(), Some("h"));
        assert_eq!(ssh_host("git@h:r.git").as_deref(), Some("h"));
        assert_eq!(ssh_host("https://u@h/r.git"), None);
    }

    #[test]
    fn ssh_failures_are_one_line_naming_the_host_and_credential() {
        let access = crate::access::Access {
            docker_dir: "/nonexistent".into(),
            git_config: "/nonexistent".into(),
            ca_pems: Vec::new(),
            ssh_hosts: vec!["10.0.0.2:2222".into()],
        };
        let url = "ssh://root@10.0.0.2:2222/srv/repo.git";
        let changed = "@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
            Host key for [10.0.0.2]:2222 has changed and you have requested strict checking.\n\
            Host key verification failed.\nfatal: Could not read from remote repository.\n";
        let m = super::git_failure("git fetch X main", url, changed, &access);
        assert!(!m.contains('\n'), "{m}");
        assert!(
            m.starts_with("git fetch X main: host key verification failed"),
            "{m}"
        );
        assert!(m.contains("10.0.0.2:2222 offered a key"), "{m}");
        assert!(m.contains("git-ssh credential for it"), "{m}");
        let unknown = "No ED25519 host key is known for [10.0.0.2]:2222 and you have requested strict checking.\nHost key verification failed.\n";
        let m = super::git_failure("git fetch X main", url, unknown, &access);
        assert!(m.contains("has no key for 10.0.0.2:2222"), "{m}");
        let m = super::git_failure("f", "ssh://git@other/r.git", unknown, &access);
        assert!(m.contains("no git-ssh credential"), "{m}");
        let denied = "root@10.0.0.2: Permission denied (publickey).\nfatal: Could not read from remote repository.\n";
        let m = super::git_failure("f", url, denied, &access);
        assert!(
            m.contains("refused the key of the pool's git-ssh credential"),
            "{m}"
        );
        // HTTP failures keep git's words.
        let m = super::git_failure("f", "https://h/r.git", "fatal: nope\n", &access);
        assert_eq!(m, "f: fatal: nope");
    }
}
