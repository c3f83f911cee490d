//! `slipway build --local`: a Dockerfile built on this machine, without a
//! daemon, and pushed.
//!
//! Supported, each as BuildKit does it: the stages the target needs (those
//! of one level of the stage graph at the same time), each `FROM` an image
//! (for the stage's platform), an earlier stage or `scratch`, whose base
//! environment and `SHELL` take part; the ONBUILD triggers of what a stage starts from; `RUN` (shell and
//! exec form, heredocs, `--network=none`, `--mount` of type secret, ssh,
//! cache, bind and tmpfs; see `run_mounts`) in the sandbox on an overlay of the
//! layers so far, under `BuildRequest::run_limits`; `COPY`/`ADD` from the
//! context (honouring `.dockerignore`; symlinks followed inside it), `--from`
//! a stage or an image, heredocs, wildcards, `--chown` (names from the
//! image's passwd/group), octal or symbolic `--chmod`, `--exclude`,
//! `--parents`, `--link` (the copying itself is `copy`'s, the view of the
//! layers below `layered`'s); `ADD` of local tar archives (extracted), URLs
//! (`--checksum`) and git repositories; `WORKDIR` (created when missing); `ENV`, `ARG`, `LABEL`,
//! `CMD`, `ENTRYPOINT`, `USER`, `EXPOSE`, `STOPSIGNAL`, `SHELL`,
//! `HEALTHCHECK`, `VOLUME`, `ONBUILD`, `MAINTAINER`. Anything else
//! (`--security=insecure`) is refused with its line, never silently
//! skipped.
//!
//! A local cache (`<data>/cache`) keys each step by the key before it, the
//! instruction as written, the build args and shell in scope, and a digest
//! of the files it reads (COPY/ADD sources, bind mounts); a hit reuses the
//! step's upper dir and layer blob. `remote_cache` shares steps through a
//! registry. The image goes to every tag, and/or to an OCI layout tarball
//! (`oci_archive`).
//!
//! Where each part lives:
//! - this file: the driver — parse, pull every base, start each stage from
//!   its base, build the stages level by level of the stage graph;
//! - `stage`: a stage's step loop, one function per instruction (WORKDIR,
//!   ARG and the config-only ones here), each returning a `stage::Step`;
//!   `from_root`, the tree a `--from` reads;
//! - `run_step`: RUN — its cache key (bind mounts), then `execute_run` in
//!   the sandbox;
//! - `copy_step`: COPY and ADD through one shared sequence, ADD's URLs, git
//!   repositories and archives on top;
//! - `cache`: cache keys (`next_key`, `hash_sources`), the local cache
//!   (lookup, storing a finished step) and the step's layer;
//! - `export`: the finished image — labels, push to every tag, the OCI
//!   archive, `--cache-to`;
//! - `platform`: which platform a stage builds for and whether this machine
//!   can run it;
//! - `error`: [`BuildError`].

mod cache;
mod copy_step;
mod error;
mod export;
mod platform;
mod run_step;
mod stage;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dockerfile::Command;
use layer::diff::{LayerOptions, NewLayer};
use oci::Reference;
use regclient::{Client, Platform};
use sandbox::Sandbox;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::fault::Fault;
use crate::file_hashes::FileHashes;
use crate::image::NewImage;
use crate::layers::{LayerStore, PulledImage};
use crate::remote_cache::{DoneStep, RemoteCache};
pub use error::BuildError;
use error::{step_err, step_err_as, unsupported};
use platform::{host_platform, stage_platform};

/// What to build and where to put it.
pub struct BuildRequest {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub tags: Vec<Reference>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub platform: Platform,
    /// Scratch space for the steps' upper dirs and layer files.
    pub work_dir: PathBuf,
    pub layer_options: LayerOptions,
    /// Local build cache (`None`: `--no-cache`).
    pub cache_dir: Option<PathBuf>,
    /// The creation time written into the config and history (RFC 3339).
    pub created: String,
    /// `--secret` values by id, for `RUN --mount=type=secret`. Never
    /// written to a layer, the config, the history or the cache key.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// `--label`s, set on the image built.
    pub labels: BTreeMap<String, String>,
    /// Limits of every RUN step (`--memory`, `--cpus`).
    pub run_limits: sandbox::Limits,
    /// `RUN --security=insecure` may run (`--allow security.insecure`):
    /// without the seccomp filter and the device cgroup. Refused otherwise.
    pub allow_insecure: bool,
    /// Where `RUN --mount=type=cache` directories live (kept between builds,
    /// also with `--no-cache`, as BuildKit keeps them).
    pub cache_mounts_dir: PathBuf,
    /// Also write the image as an OCI layout tarball (`--output type=oci`).
    pub oci_archive: Option<OciArchive>,
    /// How step lines look (`--progress`).
    pub progress: Progress,
    /// Registry caches to reuse steps from (`--cache-from`), when the local
    /// cache misses. Ignored with `--no-cache`.
    pub cache_from: Vec<Reference>,
    /// Where to push this build's steps as a cache (`--cache-to`).
    pub cache_to: Option<Reference>,
    /// A failed `--cache-to` export is a warning (`ignore-error=true`).
    pub cache_to_ignore_error: bool,
    /// Paths of the context (relative) that are never part of it, whatever
    /// `.dockerignore` says: Slipway's own data dirs ([`layer::data_dir`]).
    pub context_excludes: Vec<PathBuf>,
    /// SSH agent sockets for `RUN --mount=type=ssh`, by id (`--ssh`).
    pub ssh: BTreeMap<String, PathBuf>,
}

impl BuildRequest {
    /// The one time of every history entry and of the image when the build
    /// has `SOURCE_DATE_EPOCH`; `None`: each step's own (a config-only
    /// step's is filled in as the image is finished).
    pub(crate) fn fixed_time(&self) -> Option<&str> {
        self.layer_options
            .source_date_epoch
            .map(|_| self.created.as_str())
    }
}

/// `--progress`: `Plain` for logs, `Tty` for a terminal. Both print a line
/// per step and a `DONE` line with its time after each RUN/COPY/ADD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    #[default]
    Plain,
    Tty,
}

/// `--output type=oci,dest=FILE`.
#[derive(Debug, Clone)]
pub struct OciArchive {
    pub dest: PathBuf,
    /// Recorded as the image's `org.opencontainers.image.ref.name`.
    pub name: Option<Reference>,
}

/// The built image.
#[derive(Debug, Clone)]
pub struct BuildResult {
    pub manifest_digest: oci::Digest,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub pushed: Vec<Reference>,
}

/// What a stage has built so far; a stage `FROM` another starts from a copy.
#[derive(Clone)]
struct StageState {
    image: NewImage,
    /// Layer directories, bottom to top: the base's snapshots, then ours.
    lowers: Vec<PathBuf>,
    new_layers: Vec<NewLayer>,
    shell: Vec<String>,
    args: BTreeMap<String, String>,
    /// The image the stage chain started from, whose layers the result reuses.
    /// `None` for `FROM scratch`, which has no layers.
    origin: Option<(Reference, regclient::FetchedManifest)>,
    /// Cache key of the state so far: the base image, then every instruction.
    cache_key: String,
    /// `FROM --platform`, else the build's: what its RUNs must run.
    platform: Platform,
}

/// What every stage of a build shares.
struct StageCtx<'a> {
    req: &'a BuildRequest,
    client: &'a Arc<Client>,
    store: &'a LayerStore,
    sandbox: &'a Sandbox,
    df: &'a dockerfile::Dockerfile,
    file: &'a str,
    source_lines: &'a [&'a str],
    ignore: &'a Option<dockerfile::IgnoreMatcher>,
    opts: &'a dockerfile::BuildOptions,
    remote: &'a RemoteCache,
    tty: bool,
    /// Values of the ARGs before the first FROM (build args, else defaults).
    global_args: BTreeMap<String, String>,
    /// `TARGETARCH` … for this build.
    platform_args: BTreeMap<String, String>,
}

/// A base image pulled for a stage: its name, layers and manifest.
type Base = (Reference, PulledImage, regclient::FetchedManifest);

/// The earlier stage `name` refers to (by `AS` name or index), if any.
fn find_stage(df: &dockerfile::Dockerfile, current: usize, name: &str) -> Option<usize> {
    if let Ok(i) = name.parse::<usize>() {
        return (i < current).then_some(i);
    }
    let lower = name.to_ascii_lowercase();
    df.stages[..current]
        .iter()
        .position(|s| s.name.as_deref() == Some(lower.as_str()))
}

/// `FROM scratch`: the empty image, never pulled (as in Docker).
fn is_scratch(base: &str) -> bool {
    base.eq_ignore_ascii_case("scratch")
}

/// Build `req` with `client` (registries), `store` (base layers) and
/// `sandbox` (RUN steps), writing step lines and RUN output to `out` and
/// RUN errors to `err`.
pub async fn build<W: AsyncWrite + Unpin + Send, E: AsyncWrite + Unpin + Send>(
    req: &BuildRequest,
    client: &Arc<Client>,
    store: &LayerStore,
    sandbox: &Sandbox,
    out: &mut W,
    err: &mut E,
) -> Result<BuildResult, BuildError> {
    let result = build_inner(req, client, store, sandbox, out, err).await;
    // What the build learned about its sources' digests, for the next one.
    FileHashes::for_cache(req.cache_dir.as_deref()).save();
    result
}

async fn build_inner<W: AsyncWrite + Unpin + Send, E: AsyncWrite + Unpin + Send>(
    req: &BuildRequest,
    client: &Arc<Client>,
    store: &LayerStore,
    sandbox: &Sandbox,
    out: &mut W,
    err: &mut E,
) -> Result<BuildResult, BuildError> {
    let file = req.dockerfile.display().to_string();
    let tty = req.progress == Progress::Tty;
    // The Dockerfile is the user's: missing or unreadable, theirs to fix.
    let src = std::fs::read(&req.dockerfile)
        .map_err(step_err_as(Fault::User, format!("reading {file}")))?;
    let opts = dockerfile::BuildOptions {
        build_args: req.build_args.clone(),
        build_platform: host_platform(),
        target_platform: dockerfile::Platform {
            os: req.platform.os.clone(),
            arch: req.platform.architecture.clone(),
            variant: req.platform.variant.clone().unwrap_or_default(),
        },
        ..Default::default()
    };
    let text = String::from_utf8_lossy(&src).into_owned();
    let source_lines: Vec<&str> = text.lines().collect();
    let dockerfile_err = |errors| BuildError::Dockerfile {
        file: file.clone(),
        errors,
    };
    let (_, df, graph) =
        dockerfile::check(&text, &opts, req.target.as_deref()).map_err(dockerfile_err)?;
    let ignore = load_ignore(&req.dockerfile, &req.context, &req.context_excludes)?;
    std::fs::create_dir_all(&req.work_dir)
        .map_err(step_err(format!("creating {}", req.work_dir.display())))?;
    // Every base image first: its environment takes part in expansion
    // (`ENV PATH=$PATH:/x` keeps the base's PATH), so the Dockerfile is
    // expanded again with it. Base names only use global ARGs: unchanged.
    let (mut bases, base_env) =
        pull_bases(req, client, store, &df, &graph, &file, out, tty).await?;
    let (df, graph) = if base_env.values().any(|e| !e.is_empty()) {
        let opts = dockerfile::BuildOptions {
            base_env,
            ..opts.clone()
        };
        let (_, df, graph) =
            dockerfile::check(&text, &opts, req.target.as_deref()).map_err(dockerfile_err)?;
        (df, graph)
    } else {
        (df, graph)
    };
    // Registry caches: read once, consulted when the local cache misses.
    let remote = if req.cache_dir.is_some() && !req.cache_from.is_empty() {
        let (remote, warnings) = RemoteCache::load(client, &req.cache_from).await;
        for w in warnings {
            let _ = err.write_all(format!("warning: {w}\n").as_bytes()).await;
        }
        remote
    } else {
        Default::default()
    };
    // Every layer step of every stage, with its cache key, for --cache-to.
    let mut done_steps: Vec<DoneStep> = Vec::new();
    let mut states: HashMap<usize, StageState> = HashMap::new();
    let platform_args = opts.platform_args();
    let cx = StageCtx {
        req,
        client,
        store,
        sandbox,
        df: &df,
        file: &file,
        source_lines: &source_lines,
        ignore: &ignore,
        opts: &opts,
        remote: &remote,
        tty,
        global_args: global_args(&df, req, &platform_args),
        platform_args,
    };
    for level in &graph.levels {
        let mut starts = Vec::with_capacity(level.len());
        for &si in level {
            starts.push((si, start_stage(&cx, si, &states, &mut bases, out).await?));
        }
        build_level(&cx, starts, &mut states, &mut done_steps, out, err).await?;
    }
    let Some(st) = states.remove(&graph.target) else {
        return Err(step_err("building the target stage")(
            std::io::Error::other("the target stage was not built"),
        ));
    };
    export::finish(&cx, st, &done_steps, out).await
}

/// Pull the base image of every stage the target needs (not those `FROM`
/// an earlier stage or `scratch`), with the environment each one starts
/// with, by stage.
#[allow(clippy::too_many_arguments)]
async fn pull_bases<W: AsyncWrite + Unpin + Send>(
    req: &BuildRequest,
    client: &Arc<Client>,
    store: &LayerStore,
    df: &dockerfile::Dockerfile,
    graph: &dockerfile::StageGraph,
    file: &str,
    out: &mut W,
    tty: bool,
) -> Result<
    (
        HashMap<usize, Base>,
        BTreeMap<usize, BTreeMap<String, String>>,
    ),
    BuildError,
> {
    let mut bases = HashMap::new();
    let mut base_env = BTreeMap::new();
    for &si in &graph.needed {
        let stage = &df.stages[si];
        if find_stage(df, si, &stage.base).is_some() {
            continue;
        }
        if is_scratch(&stage.base) {
            // BuildKit's empty image has the default PATH.
            base_env.insert(
                si,
                BTreeMap::from([("PATH".to_owned(), sandbox::spec::DEFAULT_PATH.to_owned())]),
            );
            continue;
        }
        let base: Reference = stage.base.parse().map_err(|e: oci::ReferenceError| {
            unsupported(file, stage.pos.line, "FROM", &e.to_string())
        })?;
        let platform = stage_platform(stage, req)
            .map_err(|e| unsupported(file, stage.pos.line, "FROM", &e.to_string()))?;
        say(out, tty, &format!("pulling {base} ({platform})")).await;
        let pulled = store
            .pull(client, &base, &platform)
            .await
            .map_err(step_err_as(Fault::Network, format!("pulling {base}")))?;
        let manifest = client
            .resolve_image(&base, &platform)
            .await
            .map_err(step_err_as(Fault::Network, format!("pulling {base}")))?;
        base_env.insert(si, config_env(&pulled.config));
        bases.insert(si, (base, pulled, manifest));
    }
    Ok((bases, base_env))
}

/// An image config's `Env`, as a map.
fn config_env(config: &[u8]) -> BTreeMap<String, String> {
    serde_json::from_slice::<serde_json::Value>(config)
        .ok()
        .and_then(|c| c.pointer("/config/Env").cloned())
        .and_then(|e| serde_json::from_value::<Vec<String>>(e).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Values of the ARGs before the first FROM: a build arg, else an automatic
/// platform ARG, else the default.
fn global_args(
    df: &dockerfile::Dockerfile,
    req: &BuildRequest,
    platform_args: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    df.global_args
        .iter()
        .flat_map(|i| match &i.command {
            Command::Arg { args } => args.clone(),
            _ => Vec::new(),
        })
        .filter_map(|a| {
            let v = req
                .build_args
                .get(&a.name)
                .cloned()
                .or_else(|| platform_args.get(&a.name).cloned())
                .or(a.default)?;
            Some((a.name, v))
        })
        .collect()
}

/// The state stage `si` starts from: a copy of the stage it is `FROM`, the
/// empty image, or its pulled base image (taken out of `bases`).
async fn start_stage<W: AsyncWrite + Unpin + Send>(
    cx: &StageCtx<'_>,
    si: usize,
    states: &HashMap<usize, StageState>,
    bases: &mut HashMap<usize, Base>,
    out: &mut W,
) -> Result<StageState, BuildError> {
    let stage = &cx.df.stages[si];
    let refuse = |what: &str| unsupported(cx.file, stage.pos.line, "FROM", what);
    if let Some(dep) = find_stage(cx.df, si, &stage.base) {
        return states
            .get(&dep)
            .cloned()
            .ok_or_else(|| refuse("a stage that is not built before it"));
    }
    let platform = stage_platform(stage, cx.req).map_err(|e| refuse(&e.to_string()))?;
    let steps = stage.instructions.len() + 1;
    if is_scratch(&stage.base) {
        say(out, cx.tty, &format!("[1/{steps}] FROM scratch")).await;
        return Ok(StageState {
            image: NewImage::scratch(&platform.os, &platform.architecture),
            lowers: Vec::new(),
            new_layers: Vec::new(),
            shell: vec!["/bin/sh".into(), "-c".into()],
            args: BTreeMap::new(),
            cache_key: format!("scratch@{platform}"),
            origin: None,
            platform,
        });
    }
    let Some((base, pulled, base_manifest)) = bases.remove(&si) else {
        return Err(refuse("a base image that was not pulled"));
    };
    say(out, cx.tty, &format!("[1/{steps}] FROM {base}")).await;
    let mut image = NewImage::from_base(&base_manifest.manifest, &pulled.config)
        .map_err(step_err(format!("{base}")))?;
    // The base image's SHELL applies to our shell forms too.
    let shell = image
        .container_config()
        .get("Shell")
        .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
    Ok(StageState {
        image,
        lowers: pulled.layers,
        new_layers: Vec::new(),
        shell,
        args: BTreeMap::new(),
        cache_key: format!("{}@{}", base_manifest.digest, platform),
        origin: Some((base, base_manifest)),
        platform,
    })
}

/// Build the stages of one level of the stage graph. They depend only on
/// earlier levels: they build together. Each one's output is kept apart and
/// printed whole when it finishes, so the log stays readable; a lone stage
/// prints live.
async fn build_level<W: AsyncWrite + Unpin + Send, E: AsyncWrite + Unpin + Send>(
    cx: &StageCtx<'_>,
    mut starts: Vec<(usize, StageState)>,
    states: &mut HashMap<usize, StageState>,
    done_steps: &mut Vec<DoneStep>,
    out: &mut W,
    err: &mut E,
) -> Result<(), BuildError> {
    if starts.len() == 1 {
        let Some((si, st)) = starts.pop() else {
            return Ok(());
        };
        let (st, steps) = stage::build_stage(cx, si, st, states, out, err).await?;
        done_steps.extend(steps);
        states.insert(si, st);
        return Ok(());
    }
    let mut running = futures_util::stream::FuturesUnordered::new();
    for (si, st) in starts {
        let states = &*states;
        running.push(async move {
            let (mut o, mut e) = (Vec::new(), Vec::new());
            let result = stage::build_stage(cx, si, st, states, &mut o, &mut e).await;
            (si, result, o, e)
        });
    }
    let mut finished = Vec::new();
    let mut failed = None;
    while let Some((si, result, o, e)) = futures_util::StreamExt::next(&mut running).await {
        let _ = out.write_all(&o).await;
        let _ = out.flush().await;
        let _ = err.write_all(&e).await;
        match result {
            Ok((st, steps)) => {
                done_steps.extend(steps);
                finished.push((si, st));
            }
            Err(x) => {
                failed.get_or_insert(x);
            }
        }
    }
    drop(running);
    if let Some(x) = failed {
        return Err(x);
    }
    states.extend(finished);
    Ok(())
}

/// A step line. On a terminal (`--progress tty`) it stands out in bold from
/// the RUN output around it; plain, it is the same text without escapes.
async fn say<W: AsyncWrite + Unpin>(out: &mut W, tty: bool, line: &str) {
    let text = if tty {
        format!("\x1b[1m#### {line}\x1b[0m\n")
    } else {
        format!("#### {line}\n")
    };
    let _ = out.write_all(text.as_bytes()).await;
    let _ = out.flush().await;
}

/// `<Dockerfile>.dockerignore` if present, else `<context>/.dockerignore`,
/// then `excludes` (last, so no `!pattern` of the file re-includes them).
fn load_ignore(
    dockerfile: &Path,
    context: &Path,
    excludes: &[PathBuf],
) -> Result<Option<dockerfile::IgnoreMatcher>, BuildError> {
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    let mut text = None;
    let mut origin = PathBuf::from("the build's data directory");
    for path in [PathBuf::from(specific), context.join(".dockerignore")] {
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                text = Some(t);
                origin = path;
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(step_err(format!("reading {}", path.display()))(e)),
        }
    }
    if text.is_none() && excludes.is_empty() {
        return Ok(None);
    }
    let mut text = text.unwrap_or_default();
    text.push_str(&layer::data_dir::ignore_lines(excludes));
    dockerfile::IgnoreMatcher::parse(&text)
        .map(Some)
        .map_err(|e| BuildError::Step {
            context: format!("{}", origin.display()),
            fault: Fault::User,
            source: Box::new(std::io::Error::other(e.to_string())),
        })
}
