//! `slipway build` on an agent pool: pack the context (honouring
//! `.dockerignore`), upload it unless the server has that digest, queue the
//! run, stream its log, and exit with the run's result. Takes a
//! [`PoolBuild`] whose flags `build_args` has checked; the local path is
//! `build_cmd.rs`, and neither knows the other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use api::{BuildSpec, ContextSource, RunRequest, RunState};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::ctl;

pub(crate) fn is_url(s: &str) -> bool {
    ["https://", "http://", "git://", "ssh://", "git@"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// `app:1` → `<registry>/app:1`: a tag without a registry host means the
/// server's own registry (a host has a `.` or `:`, or is `localhost`).
pub fn qualify_tag(tag: &str, registry: &str) -> String {
    let first = tag.split('/').next().unwrap_or(tag);
    let has_host =
        tag.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_host {
        tag.to_owned()
    } else {
        format!("{registry}/{tag}")
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

fn dir_size(dir: &Path) -> u64 {
    fn walk(d: &Path, total: &mut u64) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path(), total),
                Ok(m) if m.is_file() => *total += m.len(),
                _ => {}
            }
        }
    }
    let mut t = 0;
    walk(dir, &mut t);
    t
}

/// Pack and upload a local context; returns its digest.
pub(crate) async fn upload_context(
    c: &api::Client,
    dir: &Path,
    dockerfile_rel: &str,
) -> Result<String> {
    let tmp = tempfile::Builder::new()
        .prefix("slipway-context-")
        .suffix(".tar.zst")
        .tempfile()
        .context("creating a temporary file for the context")?;
    let out = tmp.path().to_owned();
    let total = dir_size(dir);
    let pb = bar(total, "packing");
    let (dir2, rel, pb2) = (dir.to_owned(), dockerfile_rel.to_owned(), pb.clone());
    let packed = tokio::task::spawn_blocking(move || {
        context::pack(&dir2, &rel, &out, &mut |n| pb2.set_position(n))
    })
    .await
    .context("packing the context")?
    .with_context(|| format!("packing the context {}", dir.display()))?;
    pb.finish_and_clear();
    let digest = packed.digest.to_string();
    if c.context_exists(&digest).await? {
        eprintln!(
            "context: {} entries, {} bytes packed, {digest} (already on the server)",
            packed.entries, packed.size
        );
        return Ok(digest);
    }
    let pb = bar(packed.size, "uploading");
    let file = tokio::fs::File::open(tmp.path())
        .await
        .context("reopening the packed context")?;
    let pb2 = pb.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |r| {
        if let Ok(b) = r {
            pb2.inc(b.len() as u64);
        }
    });
    c.upload_context(&digest, packed.size, reqwest::Body::wrap_stream(stream))
        .await
        .context("uploading the context")?;
    pb.finish_and_clear();
    eprintln!(
        "context: {} entries, {} bytes packed, {digest} (uploaded)",
        packed.entries, packed.size
    );
    Ok(digest)
}

/// A pool build, every flag read and checked (the flags only a local
/// build takes already refused).
pub(crate) struct PoolBuild {
    pub pool: String,
    pub server: Option<String>,
    pub no_wait: bool,
    pub no_logs: bool,
    /// Print the finished run as JSON (`--format json`, `-o json`).
    pub json: bool,
    pub timeout: Option<Duration>,
    pub file: Option<PathBuf>,
    /// As given: qualified with the server's registry here.
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub target: Option<String>,
    pub platform: String,
    pub no_cache: bool,
    pub no_push: bool,
    pub iidfile: Option<PathBuf>,
    pub context: PathBuf,
}

pub(crate) async fn build(b: PoolBuild) -> Result<()> {
    let c = ctl::client(b.server.as_deref())?;
    let registry = c.registry_host().to_owned();
    let tags: Vec<String> = b.tags.iter().map(|t| qualify_tag(t, &registry)).collect();
    for t in &tags {
        t.parse::<oci::Reference>()
            .with_context(|| format!("-t {t}"))?;
    }
    let (context, dockerfile, inline) = context_source(&c, &b).await?;
    let req = RunRequest {
        pool: b.pool.clone(),
        build: BuildSpec {
            context,
            dockerfile,
            dockerfile_inline: inline,
            tags,
            build_args: b.build_args.clone(),
            labels: b.labels.clone(),
            target: b.target.clone(),
            platform: Some(b.platform.clone()),
            no_cache: b.no_cache,
            no_push: b.no_push,
            task: None,
            registry: None,
        },
        secrets: b.secrets.clone(),
        timeout_secs: b.timeout.map(|d| d.as_secs().max(1)),
    };
    let run = c.submit_run(&req).await.context("queueing the build")?;
    if b.no_wait {
        println!("{}", run.id);
        return Ok(());
    }
    eprintln!("run {} queued on pool {}", run.id, run.pool);
    let run = ctl::follow(&c, &run.id, true, !b.no_logs).await?;
    finish(&b, &run)
}

/// Where the agent gets the context (a URL, or the local directory packed
/// and uploaded), the Dockerfile's path in it and its text when known.
async fn context_source(
    c: &api::Client,
    b: &PoolBuild,
) -> Result<(ContextSource, String, Option<String>)> {
    let ctx = b.context.to_string_lossy().into_owned();
    if is_url(&ctx) {
        let inline = match &b.file {
            Some(f) if f.exists() => Some(
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            ),
            _ => None,
        };
        let rel = b
            .file
            .as_ref()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".into());
        return Ok((ContextSource::Url { url: ctx.clone() }, rel, inline));
    }
    let dir = &b.context;
    let file: PathBuf = b.file.clone().unwrap_or_else(|| dir.join("Dockerfile"));
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading the Dockerfile {}", file.display()))?;
    // Check it here: a broken Dockerfile fails before any upload.
    let opts = dockerfile::BuildOptions {
        build_args: b.build_args.clone(),
        ..Default::default()
    };
    if let Err(errs) = dockerfile::check(&text, &opts, b.target.as_deref()) {
        bail!("{}: {errs}", file.display());
    }
    let rel = file
        .strip_prefix(dir)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "Dockerfile".into());
    let digest = upload_context(c, dir, &rel).await?;
    Ok((ContextSource::Upload { digest }, rel, Some(text)))
}

/// The finished run: `--iidfile` and the pushed references (or the run as
/// JSON); a failed run exits with its build's exit code.
fn finish(b: &PoolBuild, run: &api::Run) -> Result<()> {
    if b.json {
        println!("{}", serde_json::to_string_pretty(run)?);
    }
    match run.state {
        RunState::Succeeded => {
            if let (Some(path), Some(d)) = (&b.iidfile, &run.image_digest) {
                std::fs::write(path, d).with_context(|| format!("--iidfile {}", path.display()))?;
            }
            if !b.json {
                for t in &run.build.tags {
                    match &run.image_digest {
                        Some(d) => println!("{t}@{d}"),
                        None => println!("{t}"),
                    }
                }
            }
            Ok(())
        }
        state => {
            let why = run.message.clone().unwrap_or_default();
            if let Some(code) = run.exit_code {
                eprintln!("error: run {} {state} (exit code {code}) {why}", run.id);
                std::process::exit(code.clamp(1, 255));
            }
            bail!("run {} {state}: {why}", run.id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::qualify_tag;

    #[test]
    fn tags_without_a_host_go_to_the_server_registry() {
        assert_eq!(
            qualify_tag("app:1", "127.0.0.1:5000"),
            "127.0.0.1:5000/app:1"
        );
        assert_eq!(qualify_tag("team/app", "r:5000"), "r:5000/team/app");
        assert_eq!(qualify_tag("localhost/app", "r:5000"), "localhost/app");
        assert_eq!(
            qualify_tag("reg.example.com/app:2", "r:5000"),
            "reg.example.com/app:2"
        );
        assert_eq!(
            qualify_tag("10.0.0.1:5000/app", "r:5000"),
            "10.0.0.1:5000/app"
        );
    }
}
