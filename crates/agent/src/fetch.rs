//! Getting a run's context onto the agent: an uploaded archive from the
//! server, a tarball URL, or a git repository (`URL#ref:subdir`, cloned
//! with the git CLI, which already speaks every transport and credential
//! helper a private git server may need). Errors are strings for the log.

use std::path::Path;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

/// Download `digest` from the server and unpack it into `ctx`.
pub async fn uploaded(
    server: &str,
    token: &str,
    digest: &str,
    dir: &Path,
    ctx: &Path,
) -> Result<(), String> {
    let client = api::Client::new(server, Some(token.to_owned())).map_err(|e| e.to_string())?;
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
    unpack_file(&file, &d, ctx).await
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

async fn unpack_file(file: &Path, digest: &oci::Digest, ctx: &Path) -> Result<(), String> {
    let file = file.to_owned();
    let digest = digest.clone();
    let ctx = ctx.to_owned();
    tokio::task::spawn_blocking(move || {
        let f =
            std::fs::File::open(&file).map_err(|e| format!("opening {}: {e}", file.display()))?;
        context::unpack(std::io::BufReader::new(f), &digest, &ctx)
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("unpacking: {e}"))?
}

/// `https://host/repo.git#ref:subdir`, `git://…`, or a tarball URL.
pub async fn url(url: &str, dir: &Path, ctx: &Path) -> Result<(), String> {
    let (base, fragment) = url.split_once('#').unwrap_or((url, ""));
    let is_git = base.ends_with(".git") || base.starts_with("git://") || !fragment.is_empty();
    if !is_git {
        let resp = reqwest::get(base)
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("fetching {base}: {e}"))?;
        let file = dir.join("context.tar");
        let digest = save(resp, &file).await?;
        return unpack_file(&file, &digest, ctx).await;
    }
    let (git_ref, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let checkout = dir.join("git");
    let git = |args: &[&str], cwd: Option<&Path>| {
        let mut c = tokio::process::Command::new("git");
        c.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
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
            Err(format!(
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
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
        format!("git fetch {base} {want}"),
    )
    .await;
    if shallow.is_err() {
        run(
            git(&["fetch", "-q", "origin", want], Some(&checkout)),
            format!("git fetch {base} {want}"),
        )
        .await?;
    }
    run(
        git(&["checkout", "-q", "FETCH_HEAD"], Some(&checkout)),
        "git checkout".into(),
    )
    .await?;
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
        return Err(format!("{subdir:?} is not a directory of {base} at {want}"));
    }
    std::fs::rename(&src, ctx).map_err(|e| format!("moving the checkout: {e}"))
}
