//! `slipway build`'s flags and their checks, in one place: [`BuildArgs`]
//! (docker build's flags), read and checked here (tags, build args,
//! labels, secrets, `--ssh`, the cache refs, `--output`, and the flags a
//! pool build refuses), then handed as a [`Build`] to one of two paths that
//! never import each other or this module: `build_cmd` builds on this
//! machine (`--local`), `remote` on an agent pool. `main.rs` dispatches.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use builder::{Compression, OciArchive, Progress};

use crate::build_cmd::LocalBuild;
use crate::remote::PoolBuild;

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Build on this machine instead of an agent pool.
    #[arg(long)]
    pub(crate) local: bool,
    /// Agent pool to build on (remote builds).
    #[arg(long, default_value = "default", conflicts_with = "local")]
    pub(crate) pool: String,
    /// Queue the run, print its id and exit (remote builds).
    #[arg(long, conflicts_with = "local")]
    pub(crate) no_wait: bool,
    /// Wait for the run without printing its log (remote builds).
    #[arg(long, conflicts_with = "local")]
    pub(crate) no_logs: bool,
    /// Print the finished run as JSON on stdout (remote builds): --format json.
    #[arg(long, value_parser = ["text", "json"], default_value = "text", conflicts_with = "local")]
    pub(crate) format: String,
    /// Run time limit on the agent, e.g. 30m (remote builds; default: the server's).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "local")]
    pub(crate) timeout: Option<Duration>,
    /// Server URL (remote builds; default: $SLIPWAY_SERVER or `slipway login`;
    /// ignored with --local).
    #[arg(long, env = "SLIPWAY_SERVER")]
    pub(crate) server: Option<String>,
    /// Dockerfile path (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub(crate) file: Option<PathBuf>,
    /// Image reference to push to; repeatable.
    #[arg(short = 't', long = "tag")]
    pub(crate) tags: Vec<String>,
    /// Build-time variable KEY=VALUE; repeatable.
    #[arg(long = "build-arg")]
    pub(crate) build_args: Vec<String>,
    /// Stage to build (default: the last).
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Platform of the base image, os/arch[/variant].
    #[arg(long, default_value = "linux/amd64")]
    pub(crate) platform: String,
    /// Registry host:port to reach over plain HTTP (loopback always is); repeatable.
    #[arg(long = "insecure-registry")]
    pub(crate) insecure_registries: Vec<String>,
    /// A CA certificate (PEM) to trust beside the system's, for registries
    /// and ADD downloads behind a private CA; repeatable.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub(crate) ca_certs: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) unpack: crate::unpack_limits::UnpackLimitArgs,
    /// Build but push nothing.
    #[arg(long)]
    pub(crate) no_push: bool,
    /// Write the image digest to this file.
    #[arg(long)]
    pub(crate) iidfile: Option<PathBuf>,
    /// Layer compression: gzip or zstd.
    #[arg(long, default_value = "gzip")]
    pub(crate) compression: String,
    /// Build every step, ignoring the local cache.
    #[arg(long)]
    pub(crate) no_cache: bool,
    /// Where layers, sandbox state, the build cache and step scratch live
    /// [default: $XDG_DATA_HOME/slipway (~/.local/share/slipway), or
    /// /var/lib/slipway as root]. Never part of a build context.
    #[arg(long, env = "SLIPWAY_DATA")]
    pub(crate) data: Option<PathBuf>,
    /// A secret for `RUN --mount=type=secret`: id=ID,src=FILE or id=ID,env=VAR
    /// (docker build's syntax); repeatable. Never stored in the image.
    #[arg(long = "secret")]
    pub(crate) secrets: Vec<String>,
    /// Label KEY=VALUE set on the image; repeatable.
    #[arg(long = "label")]
    pub(crate) labels: Vec<String>,
    /// Write the build's result as JSON (containerimage.digest, image.name …), as buildx does.
    #[arg(long)]
    pub(crate) metadata_file: Option<PathBuf>,
    /// type=oci,dest=FILE.tar: write an OCI layout tarball instead of pushing;
    /// type=registry: push to the -t references (the default). On a pool,
    /// `-o json` prints the finished run as JSON (as --format json).
    #[arg(short = 'o', long)]
    pub(crate) output: Option<String>,
    /// Progress output: plain (step lines for logs), tty (bold step lines),
    /// auto (tty on a terminal).
    #[arg(long, default_value = "auto")]
    pub(crate) progress: String,
    /// Memory limit of each RUN step: bytes, or with a unit (512m, 3g).
    #[arg(long)]
    pub(crate) memory: Option<String>,
    /// CPU limit of each RUN step, in CPUs (1.5 = one and a half).
    #[arg(long)]
    pub(crate) cpus: Option<f64>,
    /// SSH agent for RUN --mount=type=ssh: default (the agent of $SSH_AUTH_SOCK)
    /// or ID=SOCKET; repeatable.
    #[arg(long = "ssh")]
    pub(crate) ssh: Vec<String>,
    /// A registry cache to reuse steps from: REF or type=registry,ref=REF; repeatable.
    #[arg(long = "cache-from")]
    pub(crate) cache_from: Vec<String>,
    /// Push this build's steps as a registry cache: REF or
    /// type=registry,ref=REF[,mode=max][,ignore-error=true] (a failed
    /// export is then a warning, not a failed build).
    #[arg(long = "cache-to")]
    pub(crate) cache_to: Option<String>,
    /// An entitlement, as buildx names it: `security.insecure` lets
    /// `RUN --security=insecure` run without the seccomp filter and the
    /// device cgroup (--local; a pool's agents pass it when the pool
    /// allows it).
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub(crate) allow: Vec<String>,
    /// Build context directory.
    pub(crate) context: PathBuf,
}

/// A checked build: what one of the two paths runs.
pub(crate) enum Build {
    Local(Box<LocalBuild>),
    Pool(Box<PoolBuild>),
}

impl BuildArgs {
    /// Check every flag for the path `--local` picks.
    pub(crate) fn check(self) -> Result<Build> {
        Ok(if self.local {
            Build::Local(Box::new(self.local_build()?))
        } else {
            Build::Pool(Box::new(self.pool_build()?))
        })
    }

    fn local_build(self) -> Result<LocalBuild> {
        let tags = self
            .tags
            .iter()
            .map(|t| {
                t.parse::<oci::Reference>()
                    .with_context(|| format!("-t {t}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let build_args = key_values("--build-arg", &self.build_args)?;
        let compression = match self.compression.as_str() {
            "gzip" => Compression::Gzip,
            "zstd" => Compression::Zstd,
            other => bail!("--compression {other}: use gzip or zstd"),
        };
        let epoch = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.parse().ok());
        let platform: regclient::Platform = self.platform.parse().context("--platform")?;
        // Read now, so a bad --ca-cert or config.json fails before any work.
        let client = crate::image_run::RegistryArgs {
            insecure_registries: self.insecure_registries.clone(),
            ca_certs: self.ca_certs.clone(),
        }
        .client()?;
        let mut secrets = BTreeMap::new();
        for spec in &self.secrets {
            let (id, data) = read_secret(spec)?;
            secrets.insert(id, data);
        }
        let labels = key_values("--label", &self.labels)?;
        let progress = progress(&self.progress)?;
        let run_limits = self.run_limits()?;
        let (oci_dest, push) = self.output_local()?;
        if tags.is_empty() && push {
            bail!("give at least one -t REFERENCE to push to, or --no-push");
        }
        let ssh = self
            .ssh
            .iter()
            .map(|spec| ssh_socket(spec))
            .collect::<Result<_>>()?;
        let (cache_from, cache_to) = self.cache_refs()?;
        let allow_insecure = self.entitlements()?;
        Ok(LocalBuild {
            allow_insecure,
            oci_archive: oci_dest.map(|dest| OciArchive {
                dest,
                name: tags.first().cloned(),
            }),
            push,
            tags,
            build_args,
            labels,
            secrets,
            ssh,
            cache_from,
            cache_to,
            compression,
            epoch,
            created: created(epoch),
            platform,
            client: Arc::new(client),
            progress,
            run_limits,
            unpack: self.unpack.limits(),
            data: self.data.unwrap_or_else(default_build_data),
            context: self.context,
            file: self.file,
            target: self.target,
            no_cache: self.no_cache,
            iidfile: self.iidfile,
            metadata_file: self.metadata_file,
        })
    }

    /// `--allow`: whether `security.insecure` is granted.
    fn entitlements(&self) -> Result<bool> {
        let mut insecure = false;
        for e in &self.allow {
            match e.as_str() {
                "security.insecure" => insecure = true,
                other => bail!("--allow {other}: the only entitlement is security.insecure"),
            }
        }
        Ok(insecure)
    }

    /// `--cache-from` and `--cache-to`.
    fn cache_refs(&self) -> Result<(Vec<oci::Reference>, Option<CacheTo>)> {
        let from = self
            .cache_from
            .iter()
            .map(|c| cache_ref("--cache-from", c).map(|(r, _)| r))
            .collect::<Result<_>>()?;
        let to = self
            .cache_to
            .as_deref()
            .map(|c| cache_ref("--cache-to", c))
            .transpose()?;
        Ok((from, to))
    }

    /// `--memory` and `--cpus`: the limits of every RUN.
    fn run_limits(&self) -> Result<sandbox::Limits> {
        let memory = self
            .memory
            .as_deref()
            .map(|m| {
                parse_bytes(m)
                    .with_context(|| format!("--memory {m}: expected bytes or 512m, 3g …"))
            })
            .transpose()?;
        if let Some(c) = self.cpus
            && !(c.is_finite() && c > 0.0)
        {
            bail!("--cpus {c}: expected a positive number of CPUs");
        }
        Ok(sandbox::Limits {
            memory,
            cpus: self.cpus,
            ..Default::default()
        })
    }

    /// `--output` of a local build: the OCI tarball to write, if any, and
    /// whether to push to the `-t` references.
    fn output_local(&self) -> Result<(Option<PathBuf>, bool)> {
        let mut oci_dest = None;
        let mut push = !self.no_push;
        if let Some(o) = &self.output {
            let mut typ = None;
            let mut dest = None;
            for field in o.split(',') {
                match field.split_once('=') {
                    Some(("type", v)) => typ = Some(v.to_owned()),
                    Some(("dest", v)) => dest = Some(PathBuf::from(v)),
                    // buildx's tar=true is what we write anyway; names come from -t.
                    Some(("tar", "true")) | Some(("name", _)) => {}
                    _ => bail!("--output {o}: expected type=oci,dest=FILE or type=registry"),
                }
            }
            match typ.as_deref() {
                Some("oci") => {
                    oci_dest =
                        Some(dest.with_context(|| format!("--output {o}: needs dest=FILE"))?);
                    // As buildx: an exported image is not pushed too.
                    push = false;
                }
                Some("registry") if !self.no_push => push = true,
                Some("registry") => bail!("--output type=registry contradicts --no-push"),
                _ => bail!("--output {o}: expected type=oci,dest=FILE or type=registry"),
            }
        }
        Ok((oci_dest, push))
    }

    fn pool_build(self) -> Result<PoolBuild> {
        let json = self.format == "json" || self.output.as_deref() == Some("json");
        let output = self.output.as_deref().filter(|o| *o != "json");
        if output.is_some() || self.metadata_file.is_some() {
            bail!(
                "--output and --metadata-file apply to --local builds; a pool build pushes to its -t references"
            );
        }
        self.refuse_local_only()?;
        if self.tags.is_empty() && !self.no_push {
            bail!("give at least one -t REFERENCE to push to, or --no-push");
        }
        let build_args = key_values("--build-arg", &self.build_args)?;
        let labels = key_values("--label", &self.labels)?;
        let mut secrets = BTreeMap::new();
        for spec in &self.secrets {
            let (id, data) = read_secret(spec)?;
            let text = String::from_utf8(data).with_context(|| {
                format!("--secret id={id}: pool builds carry text secrets only")
            })?;
            secrets.insert(id, text);
        }
        Ok(PoolBuild {
            pool: self.pool,
            server: self.server,
            no_wait: self.no_wait,
            no_logs: self.no_logs,
            json,
            timeout: self.timeout,
            file: self.file,
            tags: self.tags,
            build_args,
            labels,
            secrets,
            target: self.target,
            platform: self.platform,
            no_cache: self.no_cache,
            no_push: self.no_push,
            iidfile: self.iidfile,
            context: self.context,
        })
    }

    /// What the agent decides (its tier, its cache, its registries) or
    /// cannot reach (this machine's ssh agent) is refused, not dropped.
    fn refuse_local_only(&self) -> Result<()> {
        let local_only = [
            (
                !self.ssh.is_empty(),
                "--ssh (the pool's agents cannot reach this machine's ssh agent; pass a deploy key with --secret)",
            ),
            (
                !self.cache_from.is_empty() || self.cache_to.is_some(),
                "--cache-from/--cache-to (a pool's agents share their cache)",
            ),
            (
                self.memory.is_some() || self.cpus.is_some(),
                "--memory/--cpus (a pool build gets its pool's tier)",
            ),
            (self.compression != "gzip", "--compression"),
            (
                !self.insecure_registries.is_empty(),
                "--insecure-registry (set on the agent)",
            ),
            (!self.ca_certs.is_empty(), "--ca-cert (set on the agent)"),
            (
                !self.allow.is_empty(),
                "--allow (a pool's policy decides: slipway pool update POOL --allow-insecure true)",
            ),
        ];
        if let Some((_, flag)) = local_only.iter().find(|(given, _)| *given) {
            bail!("{flag} applies to --local builds only");
        }
        Ok(())
    }
}

/// `--build-arg`/`--label` KEY=VALUE pairs.
fn key_values(flag: &str, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for kv in pairs {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("{flag} {kv}: expected KEY=VALUE"))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// `--progress`: bold step lines only where a person is watching (auto).
fn progress(flag: &str) -> Result<Progress> {
    Ok(match flag {
        "tty" => Progress::Tty,
        "plain" => Progress::Plain,
        "auto" if std::io::IsTerminal::is_terminal(&std::io::stdout()) => Progress::Tty,
        "auto" => Progress::Plain,
        other => bail!("--progress {other}: use auto, plain or tty"),
    })
}

/// The builder's data dir when `--data` is not given: outside any project,
/// so a context never holds it (`/var/lib/slipway` for root, as docker's
/// `/var/lib/docker`; else the XDG data home).
pub(crate) fn default_build_data() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/slipway");
    }
    std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map_or_else(|| PathBuf::from(".slipway"), |d| d.join("slipway"))
}

/// `512m`, `3g`, `1.5GiB`, `1048576` → bytes, binary multiples as docker's
/// `--memory` reads them.
pub(crate) fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let num: f64 = s[..num_len].parse().ok()?;
    let unit = s[num_len..].trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        _ => return None,
    };
    let v = num * mult;
    (v.is_finite() && v >= 1.0 && v < u64::MAX as f64).then_some(v as u64)
}

/// `--secret id=ID,src=FILE | id=ID,env=VAR` (also `source=`, `type=file|env`;
/// an id alone reads the environment variable of that name, as buildx does).
pub(crate) fn read_secret(spec: &str) -> Result<(String, Vec<u8>)> {
    let (mut id, mut src, mut env, mut typ) = (None, None, None, None);
    for field in spec.split(',') {
        let (k, v) = field
            .split_once('=')
            .with_context(|| format!("--secret {spec}: {field:?} is not key=value"))?;
        match k.trim() {
            "id" => id = Some(v.to_owned()),
            "src" | "source" => src = Some(v.to_owned()),
            "env" => env = Some(v.to_owned()),
            "type" => typ = Some(v.to_owned()),
            other => bail!("--secret {spec}: unknown key {other:?} (id, src, env, type)"),
        }
    }
    if typ.as_deref() == Some("env") && env.is_none() {
        env = src.take();
    }
    let id = id
        .or_else(|| {
            src.as_deref()
                .and_then(|p| std::path::Path::new(p).file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .with_context(|| format!("--secret {spec}: needs id=ID"))?;
    let data = match (src, env) {
        (Some(path), None) => {
            std::fs::read(&path).with_context(|| format!("--secret id={id}: reading {path}"))?
        }
        (None, Some(var)) => std::env::var_os(&var)
            .with_context(|| format!("--secret id={id}: environment variable {var} is not set"))?
            .into_encoded_bytes(),
        (None, None) => std::env::var_os(&id)
            .with_context(|| {
                format!("--secret id={id}: give src=FILE or env=VAR (no variable {id} is set)")
            })?
            .into_encoded_bytes(),
        (Some(_), Some(_)) => bail!("--secret {spec}: give src or env, not both"),
    };
    Ok((id, data))
}

/// `--ssh default | ID | ID=SOCKET`: an id alone means the agent of
/// `$SSH_AUTH_SOCK`, as buildx reads it. Key files are not supported.
fn ssh_socket(spec: &str) -> Result<(String, PathBuf)> {
    let (id, path) = match spec.split_once('=') {
        Some((id, path)) => (id, PathBuf::from(path)),
        None => (
            spec,
            std::env::var_os("SSH_AUTH_SOCK")
                .map(PathBuf::from)
                .with_context(|| format!("--ssh {spec}: SSH_AUTH_SOCK is not set"))?,
        ),
    };
    use std::os::unix::fs::FileTypeExt;
    let meta =
        std::fs::metadata(&path).with_context(|| format!("--ssh {spec}: {}", path.display()))?;
    if !meta.file_type().is_socket() {
        bail!(
            "--ssh {spec}: {} is not an agent socket (key files are not supported)",
            path.display()
        );
    }
    let path = path
        .canonicalize()
        .with_context(|| format!("--ssh {spec}: {}", path.display()))?;
    Ok((id.to_owned(), path))
}

/// `--cache-to`'s reference, and whether a failed export is only a warning.
pub(crate) type CacheTo = (oci::Reference, bool);

/// `--cache-from`/`--cache-to`: a bare reference, or buildx's
/// `type=registry,ref=REF[,mode=min|max][,ignore-error=true|false]` (every
/// step is exported: `max`). Returns the reference and `ignore-error`.
fn cache_ref(flag: &str, spec: &str) -> Result<(oci::Reference, bool)> {
    let mut ignore_error = false;
    let reference = if spec.contains('=') {
        let mut r = None;
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("ref", v)) => r = Some(v),
                Some(("ignore-error", v)) => {
                    ignore_error = v
                        .parse()
                        .with_context(|| format!("{flag} {spec}: ignore-error is true or false"))?
                }
                Some(("type", "registry")) | Some(("mode", "max" | "min")) => {}
                _ => bail!("{flag} {spec}: expected REF or type=registry,ref=REF"),
            }
        }
        r.with_context(|| format!("{flag} {spec}: needs ref=REF"))?
    } else {
        spec
    };
    let r = reference
        .parse()
        .with_context(|| format!("{flag} {spec}"))?;
    Ok((r, ignore_error))
}

/// RFC 3339 for `SOURCE_DATE_EPOCH` when set (reproducible builds), else now.
pub(crate) fn created(epoch: Option<u64>) -> String {
    let t = epoch.map_or_else(SystemTime::now, |e| UNIX_EPOCH + Duration::from_secs(e));
    humantime::format_rfc3339_seconds(t).to_string()
}
