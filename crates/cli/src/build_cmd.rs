//! `slipway build`: today the `--local` form, which builds on this machine
//! with the daemonless builder and pushes to the `-t` references.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use builder::{BuildRequest, Compression, LayerOptions, LayerStore};
use regclient::{Client, ClientConfig, DockerConfig};
use sandbox::{InitCommand, Mode, Sandbox, SandboxConfig};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Build on this machine (the only mode until agent pools land).
    #[arg(long)]
    local: bool,
    /// Dockerfile path (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Image reference to push to; repeatable.
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Build-time variable KEY=VALUE; repeatable.
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Stage to build (default: the last).
    #[arg(long)]
    target: Option<String>,
    /// Platform of the base image, os/arch[/variant].
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Registry host:port to reach over plain HTTP (loopback always is); repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Build but push nothing.
    #[arg(long)]
    no_push: bool,
    /// Write the image digest to this file.
    #[arg(long)]
    iidfile: Option<PathBuf>,
    /// Layer compression: gzip or zstd.
    #[arg(long, default_value = "gzip")]
    compression: String,
    /// Build every step, ignoring the local cache.
    #[arg(long)]
    no_cache: bool,
    /// Where layers, sandbox state, the build cache and step scratch live.
    #[arg(long, default_value = ".slipway")]
    data: PathBuf,
    /// Build context directory.
    context: PathBuf,
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// RFC 3339 for `SOURCE_DATE_EPOCH` when set (reproducible builds), else now.
fn created(epoch: Option<u64>) -> String {
    let t = epoch.map_or_else(SystemTime::now, |e| UNIX_EPOCH + Duration::from_secs(e));
    humantime::format_rfc3339_seconds(t).to_string()
}

pub async fn run(args: BuildArgs) -> Result<()> {
    if !args.local {
        bail!(
            "remote builds on an agent pool need the control plane, which has not landed yet; use --local to build on this machine"
        );
    }
    if args.tags.is_empty() && !args.no_push {
        bail!("give at least one -t REFERENCE to push to, or --no-push");
    }
    let tags = args
        .tags
        .iter()
        .map(|t| {
            t.parse::<oci::Reference>()
                .with_context(|| format!("-t {t}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut build_args = BTreeMap::new();
    for kv in &args.build_args {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--build-arg {kv}: expected KEY=VALUE"))?;
        build_args.insert(k.to_owned(), v.to_owned());
    }
    let compression = match args.compression.as_str() {
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        other => bail!("--compression {other}: use gzip or zstd"),
    };
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok());
    let platform: regclient::Platform = args.platform.parse().context("--platform")?;

    let mut config = ClientConfig {
        insecure_registries: args.insecure_registries.clone(),
        ..ClientConfig::default()
    };
    if let Some(path) = docker_config_path() {
        config.credentials.merge(
            &DockerConfig::load(&path).with_context(|| format!("reading {}", path.display()))?,
        );
    }
    let client = Arc::new(Client::new(config)?);
    let mode = Mode::detect().context("detecting how to isolate RUN steps")?;
    let store = LayerStore::open(
        args.data.join("layers"),
        matches!(mode, Mode::UserNamespace { .. }),
    )
    .context("opening the layer store")?;
    let init = InitCommand {
        program: std::env::current_exe().context("locating the slipway binary")?,
        args: vec!["sandbox-init".into()],
    };
    let sandbox = Sandbox::new(SandboxConfig::new(mode, init, args.data.join("sandbox")));
    let work = args
        .data
        .join("work")
        .join(format!("build-{}", std::process::id()));
    let request = BuildRequest {
        dockerfile: args
            .file
            .clone()
            .unwrap_or_else(|| args.context.join("Dockerfile")),
        context: args.context.clone(),
        tags: if args.no_push { Vec::new() } else { tags },
        build_args,
        target: args.target.clone(),
        platform,
        work_dir: work.clone(),
        layer_options: LayerOptions {
            compression,
            source_date_epoch: epoch,
        },
        created: created(epoch),
        cache_dir: (!args.no_cache).then(|| args.data.join("cache")),
    };
    let result = builder::build(
        &request,
        &client,
        &store,
        &sandbox,
        &mut tokio::io::stdout(),
        &mut tokio::io::stderr(),
    )
    .await;
    let _ = std::fs::remove_dir_all(&work);
    let result = result?;
    if let Some(path) = &args.iidfile {
        std::fs::write(path, result.manifest_digest.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for r in &result.pushed {
        println!("{r}@{}", result.manifest_digest);
    }
    Ok(())
}
