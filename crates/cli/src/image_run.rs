//! `slipway image run` and `slipway image copy`: `docker run --rm` and
//! `crane copy` without a daemon. A task's `cmd` steps run their image
//! with `image run` (pulled into the builder's layer store, run in the
//! sandbox over an overlay of its layers, the working directory bound in);
//! its `push` steps copy what a `build` step made with `image copy`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use builder::LayerStore;
use builder::data_dir::DataDir;
use regclient::{Client, ClientConfig, DockerConfig};
use sandbox::{ImageRun, InitCommand, Mode, RootFs, RunSpec, Sandbox, SandboxConfig};

/// How registries are reached: the flags `build --local` takes too.
#[derive(clap::Args, Clone, Default)]
pub struct RegistryArgs {
    /// Registry host:port to reach over plain HTTP (loopback always is); repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// A CA certificate (PEM) to trust beside the system's; repeatable.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_certs: Vec<PathBuf>,
}

impl RegistryArgs {
    /// A registry client with docker's `config.json` credentials and
    /// `slipway login`'s for the server's own registry (a config.json entry
    /// for that host still wins): what `build --local`, `image import|run|copy`
    /// all use.
    pub fn client(&self) -> Result<Client> {
        let mut config = ClientConfig {
            insecure_registries: self.insecure_registries.clone(),
            ca_certs: self
                .ca_certs
                .iter()
                .map(|p| std::fs::read(p).with_context(|| format!("--ca-cert {}", p.display())))
                .collect::<Result<_>>()?,
            ..ClientConfig::default()
        };
        if let Some(path) = docker_config_path() {
            config.credentials.merge(
                &DockerConfig::load(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            );
        }
        if let Some((host, token)) = crate::ctl::login_credential()
            && config.credentials.get(&host).is_none()
        {
            config
                .credentials
                .insert(&host, regclient::Credential::basic("slipway", token));
        }
        Ok(Client::new(config)?)
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Image to run.
    image: String,
    /// Arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
    /// Bind a host directory: HOST:CONTAINER[:ro]; repeatable.
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    volumes: Vec<String>,
    /// Working directory inside.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// KEY=VALUE added to the image's environment; repeatable.
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// NAME: copy this variable from slipway's own environment into the
    /// image's (a value that must not show on a command line); repeatable.
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<String>,
    /// A file at /run/secrets/ID (docker build's syntax: id=ID,src=FILE or
    /// id=ID,env=VAR), on a tmpfs, never in the image; repeatable.
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    secrets: Vec<String>,
    /// Replace the image's entrypoint (a command line, split into words).
    #[arg(long)]
    entrypoint: Option<String>,
    /// User (name or uid[:gid]) inside.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// host (the caller's network) or none (loopback only).
    #[arg(long, default_value = "host")]
    network: String,
    /// NAME:IP added to /etc/hosts; repeatable.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_hosts: Vec<String>,
    /// Host name inside.
    #[arg(long)]
    hostname: Option<String>,
    /// Platform of the image, os/arch[/variant].
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Kill the run after this long (30s, 10m…).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// The builder's data dir (layer store), as `build --local --data`.
    #[arg(long, env = "SLIPWAY_DATA")]
    data: Option<PathBuf>,
    /// Run without the seccomp filter and the device cgroup (`docker run
    /// --privileged`'s looser confinement; a task's `privileged: true`
    /// step, where the pool allows it).
    #[arg(long)]
    privileged: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    unpack: crate::unpack_limits::UnpackLimitArgs,
}

/// Docker's `config.json`: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Run an image; returns its exit code.
pub async fn run(args: RunArgs) -> Result<i32> {
    let reference: oci::Reference = args
        .image
        .parse()
        .with_context(|| format!("image {}", args.image))?;
    let platform: regclient::Platform = args.platform.parse().context("--platform")?;
    let data = DataDir::open(
        &args
            .data
            .clone()
            .unwrap_or_else(crate::build_args::default_build_data),
    )?;
    let _in_use = builder::prune::BuildLock::shared(&data).context("locking the build data")?;
    let client = Arc::new(args.registry.client()?);
    let mode = Mode::detect().context("detecting how to isolate the run")?;
    let store = LayerStore::open(data.layers(), matches!(mode, Mode::UserNamespace { .. }))
        .context("opening the layer store")?
        .with_limits(args.unpack.limits());
    let pulled = store
        .pull(&client, &reference, &platform)
        .await
        .with_context(|| format!("pulling {reference}"))?;
    let scratch = data.work_for("run");
    let _ = std::fs::remove_dir_all(&scratch);
    let result = run_pulled(&args, &data, &scratch, mode, &pulled).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn run_pulled(
    args: &RunArgs,
    data: &DataDir,
    scratch: &std::path::Path,
    mode: Mode,
    pulled: &builder::PulledImage,
) -> Result<i32> {
    let mut lower: Vec<PathBuf> = pulled.layers.iter().rev().cloned().collect();
    std::fs::create_dir_all(scratch.join("upper"))
        .and_then(|()| std::fs::create_dir_all(scratch.join("work")))
        .with_context(|| format!("creating {}", scratch.display()))?;
    if lower.is_empty() {
        let empty = scratch.join("empty");
        std::fs::create_dir_all(&empty).with_context(|| format!("creating {}", empty.display()))?;
        lower.push(empty);
    }
    let rootfs = RootFs {
        lower,
        upper: scratch.join("upper"),
        work: scratch.join("work"),
    };
    let config: Option<oci_spec::image::ImageConfiguration> =
        serde_json::from_slice(&pulled.config).ok();
    let entrypoint = args
        .entrypoint
        .as_deref()
        .map(|e| shell_words::split(e).with_context(|| format!("--entrypoint {e}")))
        .transpose()?;
    let mut env = args.env.clone();
    for name in &args.pass_env {
        let value = std::env::var(name)
            .with_context(|| format!("--pass-env {name}: not set in this environment"))?;
        env.push(format!("{name}={value}"));
    }
    let process = sandbox::image_process(
        config.as_ref().and_then(|c| c.config().as_ref()),
        &rootfs,
        &ImageRun {
            args: (!args.args.is_empty() || entrypoint.is_some()).then(|| args.args.clone()),
            entrypoint,
            env,
            user: args.user.clone(),
            workdir: args.workdir.clone(),
            hostname: args.hostname.clone(),
        },
    )
    .with_context(|| format!("running {}", args.image))?;
    let mut spec = RunSpec::new(rootfs, process.argv.clone());
    spec.process = process;
    spec.network = match args.network.as_str() {
        "host" | "bridge" | "default" => sandbox::Network::Host,
        "none" => sandbox::Network::None,
        other => bail!("--network {other}: use host or none"),
    };
    spec.limits.timeout = args.timeout;
    if args.privileged {
        spec.security = sandbox::Security::Insecure;
    }
    for s in &args.secrets {
        let (id, data) = crate::build_args::read_secret(s)?;
        spec.secrets.push(sandbox::Secret::new(id, data));
    }
    for v in &args.volumes {
        let mut parts = v.splitn(3, ':');
        let (Some(src), Some(dst)) = (parts.next(), parts.next()) else {
            bail!("-v {v}: expected HOST:CONTAINER[:ro]");
        };
        let readonly = match parts.next() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(o) => bail!("-v {v}: unknown option {o:?} (ro or rw)"),
        };
        let source = PathBuf::from(src)
            .canonicalize()
            .with_context(|| format!("-v {v}: {src}"))?;
        spec.mounts.push(sandbox::Mount::Bind {
            source,
            target: dst.to_owned(),
            readonly,
        });
    }
    if !args.add_hosts.is_empty() {
        let hostname = spec.process.hostname.clone();
        let mut hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        );
        for h in &args.add_hosts {
            let (name, ip) = h
                .split_once(':')
                .with_context(|| format!("--add-host {h}: expected NAME:IP"))?;
            let ip: std::net::IpAddr = ip
                .parse()
                .with_context(|| format!("--add-host {h}: {ip} is not an IP address"))?;
            hosts.push_str(&format!("{ip}\t{name}\n"));
        }
        let file = scratch.join("hosts");
        std::fs::write(&file, hosts).with_context(|| format!("writing {}", file.display()))?;
        spec.mounts.push(sandbox::Mount::Bind {
            source: file,
            target: "/etc/hosts".into(),
            readonly: true,
        });
    }
    let init = InitCommand {
        program: std::env::current_exe().context("locating the slipway binary")?,
        args: vec!["sandbox-init".into()],
    };
    let sandbox = Sandbox::new(SandboxConfig::new(mode, init, data.sandbox()));
    let cancel = sandbox::CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        crate::serve::shutdown().await;
        stop.cancel();
    });
    let outcome = sandbox
        .run(
            &spec,
            &mut tokio::io::stdout(),
            &mut tokio::io::stderr(),
            &cancel,
        )
        .await
        .with_context(|| format!("running {}", args.image))?;
    if outcome.timed_out {
        eprintln!("{}: timed out, killed", args.image);
    }
    Ok(outcome.status.code)
}

#[derive(clap::Args)]
pub struct CopyArgs {
    /// Source image reference.
    src: String,
    /// Destination reference.
    dst: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Copy an image (or index) between repositories or registries, blobs
/// mounted where they can be; prints `DST@DIGEST`.
pub async fn copy(args: CopyArgs) -> Result<()> {
    let src: oci::Reference = args
        .src
        .parse()
        .with_context(|| format!("source {}", args.src))?;
    let dst: oci::Reference = args
        .dst
        .parse()
        .with_context(|| format!("destination {}", args.dst))?;
    let client = args.registry.client()?;
    let digest = client
        .copy_image(&src, &dst)
        .await
        .with_context(|| format!("copying {src} to {dst}"))?;
    println!("{dst}@{digest}");
    Ok(())
}
