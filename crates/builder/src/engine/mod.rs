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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dockerfile::Command;
use oci::Reference;
use regclient::{Client, Platform};
use sandbox::{ImageRun, RootFs, RunSpec, Sandbox};
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::copy::{
    CopySpec, Filter, absolute_dest, add_archive, add_url, clean_rel, copy_inline, copy_source,
    exclude_matcher, make_dirs, ownership, plan_sources, write_inline,
};
use crate::diff::{LayerInfo, LayerOptions, write_layer};
use crate::file_hashes::FileHashes;
use crate::image::NewImage;
use crate::layered::{is_dir_in_layers, merge_layers, resolve_in_layers};
use crate::layers::LayerStore;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("{file}: {errors}")]
    Dockerfile {
        file: String,
        errors: dockerfile::Errors,
    },
    #[error("{file}:{line}: {instruction} is not supported by slipway build --local yet: {what}")]
    Unsupported {
        file: String,
        line: u32,
        instruction: String,
        what: String,
    },
    #[error("{file}:{line}: RUN {command} failed with exit code {code}")]
    RunFailed {
        file: String,
        line: u32,
        command: String,
        code: i32,
    },
    #[error("{file}:{line}: COPY {path}: {problem}")]
    Copy {
        file: String,
        line: u32,
        path: String,
        problem: String,
    },
    /// ADD's own sources (URLs, git, archives); `path` is shown without a
    /// URL's query, which may be a credential (a SAS token).
    #[error("{file}:{line}: ADD {path}: {problem}")]
    Add {
        file: String,
        line: u32,
        path: String,
        problem: String,
    },
    #[error("{file}:{line}: RUN: {problem}")]
    Run {
        file: String,
        line: u32,
        problem: String,
    },
    #[error("{context}: {source}")]
    Step {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn step_err<E: std::error::Error + Send + Sync + 'static>(
    context: impl Into<String>,
) -> impl FnOnce(E) -> BuildError {
    move |e| BuildError::Step {
        context: context.into(),
        source: Box::new(e),
    }
}

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
    /// Paths of the context (relative) that are never part of it, whatever
    /// `.dockerignore` says: Slipway's own data dirs ([`crate::data_dir`]).
    pub context_excludes: Vec<PathBuf>,
    /// SSH agent sockets for `RUN --mount=type=ssh`, by id (`--ssh`).
    pub ssh: BTreeMap<String, PathBuf>,
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

#[derive(Clone)]
pub(crate) struct NewLayer {
    pub info: LayerInfo,
    pub file: PathBuf,
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

/// The platform this machine runs, as BuildKit's `BUILDPLATFORM` names it.
fn host_platform() -> dockerfile::Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    dockerfile::Platform {
        os: "linux".into(),
        arch: arch.into(),
        variant: String::new(),
    }
}

/// Whether this machine can run `p`'s programs: its own platform, or one
/// with an emulator registered in `binfmt` (`/proc/sys/fs/binfmt_misc`,
/// where qemu-user-static puts `qemu-aarch64` …), as BuildKit checks.
fn can_run(p: &Platform, binfmt: &Path) -> Result<(), String> {
    let host = host_platform();
    if p.os == host.os && p.architecture == host.arch {
        return Ok(());
    }
    let qemu = match p.architecture.as_str() {
        "arm64" => "aarch64",
        "amd64" => "x86_64",
        "386" => "i386",
        "ppc64le" => "ppc64le",
        "loong64" => "loongarch64",
        other => other,
    };
    if binfmt.join(format!("qemu-{qemu}")).exists() {
        return Ok(());
    }
    Err(format!(
        "this {host} machine cannot run {p} programs (no qemu-{qemu} in {}); \
         run build steps on this machine with FROM --platform=$BUILDPLATFORM",
        binfmt.display()
    ))
}

/// A stage's platform: `FROM --platform=…` (already expanded) or the
/// build's `--platform`.
fn stage_platform(stage: &dockerfile::Stage, req: &BuildRequest) -> Result<Platform, String> {
    match stage.platform.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => p
            .parse()
            .map_err(|e: regclient::RegClientError| e.to_string()),
        None => Ok(req.platform.clone()),
    }
}

/// `FROM scratch`: the empty image, never pulled (as in Docker).
fn is_scratch(base: &str) -> bool {
    base.eq_ignore_ascii_case("scratch")
}

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

/// The tree `COPY --from` and `RUN --mount=…,from=` read: an earlier
/// stage's layers or an image's, merged into a plain directory once per build.
#[allow(clippy::too_many_arguments)]
async fn from_root(
    from: &str,
    df: &dockerfile::Dockerfile,
    si: usize,
    states: &HashMap<usize, StageState>,
    store: &LayerStore,
    client: &Arc<Client>,
    req: &BuildRequest,
    file: &str,
    line: u32,
) -> Result<PathBuf, BuildError> {
    let unsupported = |what: String| BuildError::Unsupported {
        file: file.to_owned(),
        line,
        instruction: "--from".into(),
        what,
    };
    let (key, layers) = match find_stage(df, si, from) {
        Some(dep) => match states.get(&dep) {
            Some(d) => (format!("stage-{dep}"), d.lowers.clone()),
            None => return Err(unsupported("a stage that is not built before it".into())),
        },
        None => {
            let r: Reference = from
                .parse()
                .map_err(|e: oci::ReferenceError| unsupported(format!("--from={from}: {e}")))?;
            let pulled = store
                .pull(client, &r, &req.platform)
                .await
                .map_err(step_err(format!("pulling {r}")))?;
            (
                format!("image-{}", pulled.manifest_digest.hex()),
                pulled.layers,
            )
        }
    };
    let root = req.work_dir.join("merged").join(key);
    if !root.is_dir() {
        merge_layers(&layers, &root).map_err(step_err(format!("{file}:{line}: --from={from}")))?;
    }
    Ok(root)
}

/// The argv of a RUN, and the heredoc to run as a file when it has a
/// shebang (`(name, body)`, run from `/dev/pipes/<name>`). Heredocs follow
/// BuildKit: a command that is only `<<EOF` runs the body through the shell
/// (or as a file with a shebang); otherwise the heredocs are put back after
/// the command line for the shell to read.
#[allow(clippy::type_complexity)]
fn run_argv(
    cl: &dockerfile::instructions::CommandLine,
    shell: &[String],
) -> Result<(Vec<String>, Option<(String, String)>), String> {
    let with_shell = |cmd: String| shell.iter().cloned().chain([cmd]).collect::<Vec<_>>();
    if cl.heredocs.is_empty() {
        return Ok((
            if cl.shell_form {
                with_shell(cl.args.join(" "))
            } else {
                cl.args.clone()
            },
            None,
        ));
    }
    if !cl.shell_form || cl.args.len() != 1 {
        return Err("heredocs in the exec form".into());
    }
    let cmd = cl.args[0].trim();
    let first = &cl.heredocs[0];
    let only_heredoc = cmd
        .strip_prefix("<<")
        .map(|r| r.trim_start_matches('-').trim_matches(['\'', '"']))
        .is_some_and(|name| name == first.name);
    if only_heredoc && cl.heredocs.len() == 1 {
        if first.content.starts_with("#!") {
            let path = format!("/dev/pipes/{}", first.name);
            return Ok((
                with_shell(path),
                Some((first.name.clone(), first.content.clone())),
            ));
        }
        return Ok((with_shell(first.content.clone()), None));
    }
    let mut script = cl.args[0].clone();
    for h in &cl.heredocs {
        script.push('\n');
        script.push_str(&h.content);
        script.push_str(&h.name);
    }
    Ok((with_shell(script), None))
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
    let src = std::fs::read(&req.dockerfile).map_err(step_err(format!("reading {file}")))?;
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
    let unsupported = |line: u32, instruction: &str, what: &str| BuildError::Unsupported {
        file: file.clone(),
        line,
        instruction: instruction.into(),
        what: what.into(),
    };
    std::fs::create_dir_all(&req.work_dir)
        .map_err(step_err(format!("creating {}", req.work_dir.display())))?;
    // Every base image first: its environment takes part in expansion
    // (`ENV PATH=$PATH:/x` keeps the base's PATH), so the Dockerfile is
    // expanded again with it. Base names only use global ARGs: unchanged.
    let mut bases: HashMap<
        usize,
        (
            Reference,
            crate::layers::PulledImage,
            regclient::FetchedManifest,
        ),
    > = HashMap::new();
    let mut base_env = BTreeMap::new();
    for &si in &graph.needed {
        let stage = &df.stages[si];
        if find_stage(&df, si, &stage.base).is_some() {
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
            unsupported(stage.pos.line, "FROM", &e.to_string())
        })?;
        let platform =
            stage_platform(stage, req).map_err(|e| unsupported(stage.pos.line, "FROM", &e))?;
        say(out, tty, &format!("pulling {base} ({platform})")).await;
        let pulled = store
            .pull(client, &base, &platform)
            .await
            .map_err(step_err(format!("pulling {base}")))?;
        let manifest = client
            .resolve_image(&base, &platform)
            .await
            .map_err(step_err(format!("pulling {base}")))?;
        let env: BTreeMap<String, String> =
            serde_json::from_slice::<serde_json::Value>(&pulled.config)
                .ok()
                .and_then(|c| c.pointer("/config/Env").cloned())
                .and_then(|e| serde_json::from_value::<Vec<String>>(e).ok())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect();
        base_env.insert(si, env);
        bases.insert(si, (base, pulled, manifest));
    }
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
        let (remote, warnings) =
            crate::remote_cache::RemoteCache::load(client, &req.cache_from).await;
        for w in warnings {
            let _ = err.write_all(format!("warning: {w}\n").as_bytes()).await;
        }
        remote
    } else {
        Default::default()
    };
    // Every layer step of every stage, with its cache key, for --cache-to.
    let mut done_steps: Vec<(String, NewLayer)> = Vec::new();
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
        global_args: df
            .global_args
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
            .collect(),
        platform_args,
    };
    // Stages of one level depend only on earlier levels: they build
    // together. Each one's output is kept apart and printed whole when it
    // finishes, so the log stays readable; a lone stage prints live.
    for level in &graph.levels {
        let mut starts = Vec::with_capacity(level.len());
        for &si in level {
            let stage = &df.stages[si];
            let st = match find_stage(&df, si, &stage.base) {
                Some(dep) => states.get(&dep).cloned().ok_or_else(|| {
                    unsupported(
                        stage.pos.line,
                        "FROM",
                        "a stage that is not built before it",
                    )
                })?,
                None if is_scratch(&stage.base) => {
                    let platform = stage_platform(stage, req)
                        .map_err(|e| unsupported(stage.pos.line, "FROM", &e))?;
                    say(
                        out,
                        tty,
                        &format!("[1/{}] FROM scratch", stage.instructions.len() + 1),
                    )
                    .await;
                    StageState {
                        image: NewImage::scratch(&platform.os, &platform.architecture),
                        lowers: Vec::new(),
                        new_layers: Vec::new(),
                        shell: vec!["/bin/sh".into(), "-c".into()],
                        args: BTreeMap::new(),
                        cache_key: format!("scratch@{platform}"),
                        origin: None,
                        platform,
                    }
                }
                None => {
                    let platform = stage_platform(stage, req)
                        .map_err(|e| unsupported(stage.pos.line, "FROM", &e))?;
                    let Some((base, pulled, base_manifest)) = bases.remove(&si) else {
                        return Err(unsupported(
                            stage.pos.line,
                            "FROM",
                            "a base image that was not pulled",
                        ));
                    };
                    say(
                        out,
                        tty,
                        &format!("[1/{}] FROM {base}", stage.instructions.len() + 1),
                    )
                    .await;
                    let mut image = NewImage::from_base(&base_manifest.manifest, &pulled.config)
                        .map_err(step_err(format!("{base}")))?;
                    // The base image's SHELL applies to our shell forms too.
                    let shell = image
                        .container_config()
                        .get("Shell")
                        .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
                    StageState {
                        image,
                        lowers: pulled.layers.clone(),
                        new_layers: Vec::new(),
                        shell,
                        args: BTreeMap::new(),
                        cache_key: format!("{}@{}", base_manifest.digest, platform),
                        origin: Some((base, base_manifest)),
                        platform,
                    }
                }
            };
            starts.push((si, st));
        }
        if starts.len() == 1 {
            let Some((si, st)) = starts.pop() else {
                continue;
            };
            let (st, steps) = build_stage(&cx, si, st, &states, out, err).await?;
            done_steps.extend(steps);
            states.insert(si, st);
            continue;
        }
        let mut running = futures_util::stream::FuturesUnordered::new();
        for (si, st) in starts {
            let (cx, states) = (&cx, &states);
            running.push(async move {
                let (mut o, mut e) = (Vec::new(), Vec::new());
                let result = build_stage(cx, si, st, states, &mut o, &mut e).await;
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
    }
    let Some(mut st) = states.remove(&graph.target) else {
        return Err(step_err("building the target stage")(
            std::io::Error::other("the target stage was not built"),
        ));
    };
    if !req.labels.is_empty() {
        // `--label`: on the image built, as buildx does.
        let cfg = st.image.container_config();
        let entry = cfg.entry("Labels").or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        if let Some(map) = entry.as_object_mut() {
            for (k, v) in &req.labels {
                map.insert(k.clone(), json!(v));
            }
        }
    }
    let built = st
        .image
        .finish(&req.created)
        .map_err(step_err("assembling the image"))?;
    let mut pushed = Vec::new();
    for tag in &req.tags {
        say(out, tty, &format!("pushing {tag}")).await;
        push(client, st.origin.as_ref(), &st.new_layers, &built, tag).await?;
        pushed.push(tag.clone());
    }
    if let Some(archive) = &req.oci_archive {
        let dest = &archive.dest;
        say(out, tty, &format!("writing {}", dest.display())).await;
        crate::oci_archive::write(
            client,
            st.origin.as_ref(),
            &st.new_layers,
            &built,
            archive.name.as_ref(),
            &req.work_dir,
            dest,
        )
        .await
        .map_err(step_err(format!("writing {}", dest.display())))?;
    }
    if let Some(to) = &req.cache_to {
        say(out, tty, &format!("exporting cache to {to}")).await;
        crate::remote_cache::export(client, to, &done_steps)
            .await
            .map_err(step_err(format!("--cache-to {to}")))?;
    }
    say(out, tty, &format!("built {}", built.manifest_digest)).await;
    Ok(BuildResult {
        manifest_digest: built.manifest_digest,
        config: built.config,
        manifest: built.manifest,
        pushed,
    })
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
    remote: &'a crate::remote_cache::RemoteCache,
    tty: bool,
    /// Values of the ARGs before the first FROM (build args, else defaults).
    global_args: BTreeMap<String, String>,
    /// `TARGETARCH` … for this build.
    platform_args: BTreeMap<String, String>,
}

/// Build stage `si` from `st` (its base image's or base stage's state):
/// the ONBUILD triggers it inherits, then its instructions. Returns the
/// stage's state and the layer steps it made, with their cache keys.
async fn build_stage<W: AsyncWrite + Unpin + Send, E: AsyncWrite + Unpin + Send>(
    cx: &StageCtx<'_>,
    si: usize,
    mut st: StageState,
    states: &HashMap<usize, StageState>,
    out: &mut W,
    err: &mut E,
) -> Result<(StageState, Vec<(String, NewLayer)>), BuildError> {
    let (req, client, store, df) = (cx.req, cx.client, cx.store, cx.df);
    let (source_lines, ignore, opts, remote, tty) =
        (cx.source_lines, cx.ignore, cx.opts, cx.remote, cx.tty);
    let file = cx.file.to_owned();
    let unsupported = |line: u32, instruction: &str, what: &str| BuildError::Unsupported {
        file: file.clone(),
        line,
        instruction: instruction.into(),
        what: what.into(),
    };
    let stage = &df.stages[si];
    let mut done_steps: Vec<(String, NewLayer)> = Vec::new();
    // ONBUILD triggers of what the stage starts from run first, as in
    // BuildKit: the base image's, or the ONBUILDs of the stage it is
    // FROM (kept in that stage's config). They do not carry over.
    let triggers: Vec<String> = st
        .image
        .container_config()
        .remove("OnBuild")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut steps: Vec<(dockerfile::Instruction, Option<String>)> = Vec::new();
    for t in &triggers {
        let (_, tdf, _) =
            dockerfile::check(&format!("FROM scratch\n{t}\n"), opts, None).map_err(|errors| {
                BuildError::Dockerfile {
                    file: format!(
                        "{file}:{}: ONBUILD trigger {t:?} of {}",
                        stage.pos.line, stage.base
                    ),
                    errors,
                }
            })?;
        for mut i in tdf.stages.into_iter().flat_map(|s| s.instructions) {
            // Errors and history point at the FROM that ran them.
            i.line = stage.pos.line;
            i.end_line = stage.pos.line;
            steps.push((i, Some(t.clone())));
        }
    }
    steps.extend(stage.instructions.iter().cloned().map(|i| (i, None)));
    let StageState {
        image,
        lowers,
        new_layers,
        shell,
        args,
        cache_key,
        platform,
        ..
    } = &mut st;
    // Whether this stage set CMD (an ENTRYPOINT after it keeps it).
    let mut cmd_set = false;
    for (n, (ins, trigger)) in steps.iter().enumerate() {
        let started = std::time::Instant::now();
        let line = ins.line;
        let label = format!("[{}/{}]", n + 2, steps.len() + 1);
        // Names this step's scratch dirs, unique across the stages.
        let step_no = si * 10_000 + n;
        // History shows the instruction as written, as `docker history` does.
        let first = (ins.line as usize).saturating_sub(1);
        let last = (ins.end_line as usize)
            .max(first + 1)
            .min(source_lines.len());
        let created_by = match trigger {
            Some(t) => t.clone(),
            None => source_lines
                .get(first..last)
                .map(|l| l.join("\n"))
                .unwrap_or_default(),
        }
        .chars()
        .take(1000)
        .collect::<String>();
        let env_args: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut key = next_key(
            cache_key,
            &[&created_by, &env_args.join("\n"), &shell.join(" ")],
        );
        // A layer step already cached (here or in a --cache-from) is
        // stacked as it is, and the loop moves on. A macro, not a function:
        // it borrows half the stage's state and ends the iteration.
        // The step's layer goes on the image, on top of the stage's layer
        // dirs, and into what --cache-to exports.
        macro_rules! stack {
            ($upper:expr, $layer:expr) => {
                stack_layer(
                    image,
                    lowers,
                    new_layers,
                    $upper,
                    $layer,
                    &created_by,
                    &req.created,
                    (&mut done_steps, &key),
                )
            };
        }
        macro_rules! reuse_cached {
            ($key:expr $(, $before:expr)?) => {
                if let Some(hit) = find_cached(req, &$key, remote, client, store, lowers, err).await {
                    $(let _ = $before;)?
                    say(out, tty, &format!("{label} CACHED")).await;
                    stack!(hit.upper, hit.layer);
                    *cache_key = $key;
                    continue;
                }
            };
        }
        match &ins.command {
            Command::Run(run) => {
                if run.security.as_deref() == Some("insecure") {
                    return Err(unsupported(line, "RUN", "--security=insecure"));
                }
                let (argv, script) = run_argv(&run.command, shell)
                    .map_err(|what| unsupported(line, "RUN", &what))?;
                let shown = argv.join(" ");
                let shown = match shown.split_once('\n') {
                    Some((first, _)) => format!("{first} …"),
                    None => shown,
                };
                say(out, tty, &format!("{label} RUN {shown}")).await;
                // Bind mounts read files: their content is part of the key.
                let mut roots = Vec::with_capacity(run.mounts.len());
                let mut mount_hashes = Vec::new();
                for m in &run.mounts {
                    if m.kind != "bind" {
                        roots.push(None);
                        continue;
                    }
                    let root = match &m.from {
                        Some(from) => Some(
                            from_root(from, df, si, states, store, client, req, &file, line)
                                .await?,
                        ),
                        None => None,
                    };
                    let (hash_root, hash_ignore) = match &root {
                        Some(r) => (r.clone(), None),
                        None => (req.context.clone(), ignore.as_ref()),
                    };
                    mount_hashes.push(hash_sources(
                        &hash_root,
                        &[m.source.clone().unwrap_or_else(|| "/".into())],
                        hash_ignore,
                        &FileHashes::for_cache(req.cache_dir.as_deref()),
                    ));
                    roots.push(root);
                }
                let parts: Vec<&str> = mount_hashes.iter().map(String::as_str).collect();
                key = next_key(&key, &parts);
                reuse_cached!(key);
                let (upper_dir, layer) = execute_run(
                    cx,
                    &RunStep {
                        run,
                        argv: &argv,
                        script: script.as_ref(),
                        shown: &shown,
                        roots: &roots,
                        step_no,
                        line,
                        key: &key,
                        config: image.container_config().clone(),
                        args,
                        lowers,
                        platform,
                    },
                    out,
                    err,
                )
                .await?;
                stack!(upper_dir, layer);
            }
            Command::Copy(c) => {
                // BuildKit copies a --link layer on its own, without the
                // image's passwd/group: names cannot be resolved there.
                if c.link
                    && let Some(chown) = &c.chown
                    && chown
                        .split(':')
                        .any(|part| !part.is_empty() && part.parse::<u32>().is_err())
                {
                    return Err(BuildError::Copy {
                        file: file.clone(),
                        line,
                        path: format!("--chown={chown}"),
                        problem: "with --link, --chown takes numeric ids only (as in BuildKit)"
                            .into(),
                    });
                }
                let shown = sources_shown(&c.sources, &c.inline);
                say(out, tty, &format!("{label} COPY {shown} {}", c.dest)).await;
                let copy_err = |(path, problem): (String, String)| BuildError::Copy {
                    file: file.clone(),
                    line,
                    path,
                    problem,
                };
                let dest = absolute_dest(image, &c.dest);
                let source_root = match &c.from {
                    None => req.context.clone(),
                    Some(from) => {
                        from_root(from, df, si, states, store, client, req, &file, line).await?
                    }
                };
                let ignore_here = if c.from.is_none() {
                    ignore.as_ref()
                } else {
                    None
                };
                let exclude = exclude_matcher(&c.excludes).map_err(copy_err)?;
                let inline_dir = req.work_dir.join(format!("inline-{step_no}"));
                write_inline(&inline_dir, &c.inline).map_err(copy_err)?;
                let planned = plan_sources(
                    &source_root,
                    &c.sources,
                    &dest,
                    c.dest.ends_with('/'),
                    c.parents,
                    ignore_here,
                    c.inline.len(),
                )
                .map_err(copy_err)?;
                let planned_sources: Vec<String> =
                    planned.iter().map(|p| p.source.clone()).collect();
                let inline_names: Vec<String> = c.inline.iter().map(|h| h.name.clone()).collect();
                let hashes = FileHashes::for_cache(req.cache_dir.as_deref());
                key = next_key(
                    &key,
                    &[
                        &hash_sources(&source_root, &planned_sources, ignore_here, &hashes),
                        &hash_sources(&inline_dir, &inline_names, None, &hashes),
                    ],
                );
                reuse_cached!(key, std::fs::remove_dir_all(&inline_dir));
                let step = new_step_dir(&req.work_dir, step_no)?;
                let upper = step.join("upper");
                let (owner, mode) =
                    ownership(c.chown.as_deref(), c.chmod.as_deref(), lowers, &step).map_err(
                        |problem| BuildError::Copy {
                            file: file.clone(),
                            line,
                            path: c.chown.clone().or(c.chmod.clone()).unwrap_or_default(),
                            problem,
                        },
                    )?;
                let how = CopySpec {
                    root: &source_root,
                    ignore: ignore_here,
                    exclude: exclude.as_ref(),
                    owner: owner.or(if c.from.is_none() { Some((0, 0)) } else { None }),
                    mode: mode.as_ref(),
                };
                for p in &planned {
                    copy_source(&how, &p.source, &p.dest, p.into_dir, &upper, lowers).map_err(
                        |problem| BuildError::Copy {
                            file: file.clone(),
                            line,
                            path: p.source.clone(),
                            problem,
                        },
                    )?;
                }
                copy_inline(
                    &inline_dir,
                    &c.inline,
                    &how,
                    &dest,
                    &c.dest,
                    &planned,
                    &upper,
                    lowers,
                )
                .map_err(copy_err)?;
                let _ = std::fs::remove_dir_all(&inline_dir);
                let (upper_dir, layer) = finish_step(&step, req, &key)?;
                stack!(upper_dir, layer);
            }
            Command::Add(a) => {
                let shown = sources_shown(&a.sources, &a.inline);
                say(out, tty, &format!("{label} ADD {shown} {}", a.dest)).await;
                let dest = absolute_dest(image, &a.dest);
                let add_err = |path: &str| {
                    let (file, path) = (file.clone(), crate::copy::redact_url(path));
                    move |problem: String| BuildError::Add {
                        file,
                        line,
                        path,
                        problem,
                    }
                };
                let copy_err = |(path, problem): (String, String)| BuildError::Copy {
                    file: file.clone(),
                    line,
                    path,
                    problem,
                };
                // Git repositories first: an https URL ending in .git is one.
                let mut gits = Vec::new();
                for x in &a.sources {
                    if let Some(g) = crate::git::parse(x) {
                        let mut g = g.map_err(add_err(x))?;
                        if g.checksum.is_none() {
                            g.checksum = a.checksum.clone();
                        }
                        let keep = g.keep_git_dir.unwrap_or(a.keep_git_dir);
                        // Resolved now: the commit is part of the cache key.
                        let commit = crate::git::resolve(&g).await.map_err(add_err(x))?;
                        gits.push((x.clone(), g, commit, keep));
                    }
                }
                let is_git = |x: &str| gits.iter().any(|(s, ..)| s == x);
                let is_url =
                    |x: &str| !is_git(x) && (x.starts_with("http://") || x.starts_with("https://"));
                let urls: Vec<&String> = a.sources.iter().filter(|x| is_url(x)).collect();
                let locals: Vec<String> = a
                    .sources
                    .iter()
                    .filter(|x| !is_url(x) && !is_git(x))
                    .cloned()
                    .collect();
                // Refused before anything is fetched or cached.
                if a.checksum.is_some() && urls.is_empty() && gits.is_empty() {
                    return Err(unsupported(
                        line,
                        "ADD",
                        "--checksum on a local source (Docker allows it only for URLs and git)",
                    ));
                }
                let exclude = exclude_matcher(&a.excludes).map_err(copy_err)?;
                let inline_dir = req.work_dir.join(format!("inline-{step_no}"));
                write_inline(&inline_dir, &a.inline).map_err(copy_err)?;
                let planned = plan_sources(
                    &req.context,
                    &locals,
                    &dest,
                    a.dest.ends_with('/'),
                    false,
                    ignore.as_ref(),
                    a.inline.len() + urls.len() + gits.len(),
                )
                .map_err(copy_err)?;
                let into_dir = a.dest.ends_with('/')
                    || planned.len() + a.inline.len() + urls.len() + gits.len() > 1;
                let git_key: Vec<String> = gits
                    .iter()
                    .map(|(_, g, commit, keep)| format!("{commit} {:?} {keep}", g.subdir))
                    .collect();
                let remote_unpinned = !urls.is_empty() && a.checksum.is_none();
                // A URL without --checksum can change under us: never reuse it.
                let nonce = if remote_unpinned {
                    format!("{:?}", std::time::SystemTime::now())
                } else {
                    String::new()
                };
                let planned_sources: Vec<String> = planned
                    .iter()
                    .map(|p| p.source.clone())
                    .chain(urls.iter().map(|u| u.to_string()))
                    .collect();
                let inline_names: Vec<String> = a.inline.iter().map(|h| h.name.clone()).collect();
                let hashes = FileHashes::for_cache(req.cache_dir.as_deref());
                key = next_key(
                    &key,
                    &[
                        &hash_sources(&req.context, &planned_sources, ignore.as_ref(), &hashes),
                        &hash_sources(&inline_dir, &inline_names, None, &hashes),
                        a.checksum.as_deref().unwrap_or(""),
                        &nonce,
                        &git_key.join("\n"),
                    ],
                );
                reuse_cached!(key, std::fs::remove_dir_all(&inline_dir));
                let step = new_step_dir(&req.work_dir, step_no)?;
                let upper = step.join("upper");
                let (owner, mode) =
                    ownership(a.chown.as_deref(), a.chmod.as_deref(), lowers, &step)
                        .map_err(add_err("--chown/--chmod"))?;
                for (i, (source, g, commit, keep)) in gits.iter().enumerate() {
                    let checkout = req.work_dir.join(format!("git-{step_no}-{i}"));
                    let root = crate::git::checkout(g, commit, &checkout, *keep)
                        .await
                        .map_err(add_err(source))?;
                    let how = CopySpec {
                        root: &root,
                        ignore: None,
                        exclude: exclude.as_ref(),
                        owner: owner.or(Some((0, 0))),
                        mode: mode.as_ref(),
                    };
                    // The repository's files go into dest as a directory's do.
                    let copied = copy_source(&how, ".", &dest, true, &upper, lowers);
                    let _ = std::fs::remove_dir_all(&checkout);
                    copied.map_err(add_err(source))?;
                }
                for source in &urls {
                    add_url(
                        client.http(),
                        source,
                        a.checksum.as_deref(),
                        &dest,
                        into_dir,
                        owner.unwrap_or((0, 0)),
                        mode.as_ref(),
                        &upper,
                        lowers,
                    )
                    .await
                    .map_err(add_err(source))?;
                }
                let how = CopySpec {
                    root: &req.context,
                    ignore: ignore.as_ref(),
                    exclude: exclude.as_ref(),
                    owner: owner.or(Some((0, 0))),
                    mode: mode.as_ref(),
                };
                for p in &planned {
                    let extracted = if a.unpack == Some(false) {
                        false
                    } else {
                        add_archive(&req.context, &p.source, &p.dest, owner, &upper, lowers)
                            .map_err(add_err(&p.source))?
                    };
                    if !extracted {
                        copy_source(&how, &p.source, &p.dest, p.into_dir, &upper, lowers)
                            .map_err(add_err(&p.source))?;
                    }
                }
                copy_inline(
                    &inline_dir,
                    &a.inline,
                    &how,
                    &dest,
                    &a.dest,
                    &planned,
                    &upper,
                    lowers,
                )
                .map_err(copy_err)?;
                let _ = std::fs::remove_dir_all(&inline_dir);
                let (upper_dir, layer) = finish_step(&step, req, &key)?;
                stack!(upper_dir, layer);
            }
            Command::Workdir { path } => {
                say(out, tty, &format!("{label} WORKDIR {path}")).await;
                let current = image
                    .container_config()
                    .get("WorkingDir")
                    .and_then(|v| v.as_str())
                    .unwrap_or("/")
                    .to_owned();
                // Kept in the config as BuildKit writes it; made and used
                // cleaned (`lib/./a/../b` → `lib/b`).
                let abs = crate::config_step::workdir(&current, path);
                image
                    .container_config()
                    .insert("WorkingDir".into(), json!(abs));
                let rel = clean_rel(&abs)
                    .ok_or_else(|| unsupported(line, "WORKDIR", "a path that leaves /"))?;
                let exists = resolve_in_layers(None, lowers, &rel)
                    .is_ok_and(|r| is_dir_in_layers(None, lowers, &r));
                if !rel.as_os_str().is_empty() && !exists {
                    reuse_cached!(key);
                    let step = new_step_dir(&req.work_dir, step_no)?;
                    let upper = step.join("upper");
                    // BuildKit makes the directories as the stage's USER
                    // and through the image's symlinks.
                    let user = image
                        .container_config()
                        .get("User")
                        .and_then(|v| v.as_str())
                        .filter(|u| !u.is_empty())
                        .map(str::to_owned);
                    let owner = match user {
                        None => (0, 0),
                        Some(u) => {
                            let view = RootFs {
                                lower: lowers.iter().rev().cloned().collect(),
                                upper: upper.clone(),
                                work: step.join("work"),
                            };
                            crate::copy::chown_ids(&view, &u)
                                .map_err(std::io::Error::other)
                                .map_err(step_err(format!("{file}:{line}: WORKDIR")))?
                        }
                    };
                    let rel = resolve_in_layers(Some(&upper), lowers, &rel)
                        .map_err(step_err(format!("{file}:{line}: WORKDIR")))?;
                    make_dirs(&upper, &rel, lowers, owner)
                        .map_err(step_err(format!("{file}:{line}: WORKDIR")))?;
                    let (upper_dir, layer) = finish_step(&step, req, &key)?;
                    stack!(upper_dir, layer);
                } else {
                    image.add_empty_step(&created_by, &req.created);
                }
            }
            Command::Arg { args: defs } => {
                for a in defs {
                    // As in BuildKit: a --build-arg or an automatic platform
                    // ARG (`TARGETARCH` …) beats the default; `ARG NAME`
                    // without either takes the global ARG's value.
                    if let Some(v) = req
                        .build_args
                        .get(&a.name)
                        .cloned()
                        .or_else(|| cx.platform_args.get(&a.name).cloned())
                        .or_else(|| a.default.clone())
                        .or_else(|| cx.global_args.get(&a.name).cloned())
                    {
                        args.insert(a.name.clone(), v);
                    }
                }
            }
            other => {
                if matches!(other, Command::Env { .. }) {
                    say(out, tty, &format!("{label} ENV")).await;
                }
                let step = crate::config_step::Step {
                    created_by: &created_by,
                    created: &req.created,
                };
                crate::config_step::apply(image, other, shell, &mut cmd_set, &step);
            }
        }
        if matches!(
            ins.command,
            Command::Run(_) | Command::Copy(_) | Command::Add(_)
        ) {
            let secs = started.elapsed().as_secs_f64();
            say(out, tty, &format!("{label} DONE {secs:.1}s")).await;
        }
        *cache_key = key;
    }
    Ok((st, done_steps))
}

/// A RUN that missed the cache, with what the stage knows at that point.
struct RunStep<'a> {
    run: &'a dockerfile::instructions::Run,
    argv: &'a [String],
    /// A heredoc with a shebang: its file name and body.
    script: Option<&'a (String, String)>,
    /// The command as the log shows it.
    shown: &'a str,
    /// The tree each `--mount` with `from=` reads (by mount).
    roots: &'a [Option<PathBuf>],
    step_no: usize,
    line: u32,
    key: &'a str,
    /// The image config so far (WorkingDir, User, Env …).
    config: serde_json::Map<String, serde_json::Value>,
    args: &'a BTreeMap<String, String>,
    lowers: &'a [PathBuf],
    platform: &'a Platform,
}

/// Run `r` in the sandbox on an overlay of the layers so far (its mounts,
/// ssh proxies and a shebang heredoc set up around it) and turn the upper
/// dir into the step's layer: the cache entry's upper dir and the layer.
async fn execute_run<W: AsyncWrite + Unpin + Send, E: AsyncWrite + Unpin + Send>(
    cx: &StageCtx<'_>,
    r: &RunStep<'_>,
    out: &mut W,
    err: &mut E,
) -> Result<(PathBuf, NewLayer), BuildError> {
    let req = cx.req;
    let scratch = req.work_dir.join(format!("scratch-{}", r.step_no));
    let run_err = |problem: String| BuildError::Run {
        file: cx.file.to_owned(),
        line: r.line,
        problem,
    };
    can_run(r.platform, Path::new("/proc/sys/fs/binfmt_misc")).map_err(run_err)?;
    let step = new_step_dir(&req.work_dir, r.step_no)?;
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .map_err(step_err(format!("creating {}", scratch.display())))?;
    let scratch = scratch
        .canonicalize()
        .map_err(step_err(format!("creating {}", scratch.display())))?;
    std::fs::create_dir_all(&req.cache_mounts_dir).map_err(step_err(format!(
        "creating {}",
        req.cache_mounts_dir.display()
    )))?;
    // The config keeps a WORKDIR as written (`/w/./p/../q/`); the RUN's
    // cwd is the clean path, as the sandbox takes it.
    let workdir = crate::config_step::clean_path(
        r.config
            .get("WorkingDir")
            .and_then(|v| v.as_str())
            .unwrap_or("/"),
    );
    let mut prepared = crate::run_mounts::prepare(
        &r.run.mounts,
        r.roots,
        &crate::run_mounts::MountContext {
            context: &req.context,
            ignore: cx.ignore.as_ref(),
            secrets: &req.secrets,
            ssh: &req.ssh,
            cache_root: &req.cache_mounts_dir,
            scratch: &scratch,
            workdir: &workdir,
        },
    )
    .map_err(run_err)?;
    if let Some((name, body)) = r.script {
        // A heredoc with a shebang runs as a file, from
        // /dev/pipes as in BuildKit, outside the layer.
        let pipes = scratch.join("pipes");
        std::fs::create_dir_all(&pipes).map_err(|e| run_err(e.to_string()))?;
        let at = pipes.join(name);
        std::fs::write(&at, body).map_err(|e| run_err(e.to_string()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| run_err(e.to_string()))?;
        prepared.mounts.push(sandbox::Mount::Bind {
            source: pipes,
            target: "/dev/pipes".into(),
            readonly: true,
        });
    }
    let mut lower: Vec<PathBuf> = r.lowers.iter().rev().cloned().collect();
    if lower.is_empty() {
        // FROM scratch: overlayfs needs a lower dir; an empty one.
        let empty = scratch.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| run_err(e.to_string()))?;
        lower.push(empty);
    }
    let rootfs = RootFs {
        lower,
        upper: step.join("upper"),
        work: step.join("work"),
    };
    let mut config = r.config.clone();
    if config.contains_key("WorkingDir") {
        config.insert("WorkingDir".into(), json!(workdir));
    }
    let config: Option<oci_spec::image::Config> = serde_json::from_value(json!(config)).ok();
    let process = sandbox::image_process(
        config.as_ref(),
        &rootfs,
        &ImageRun {
            entrypoint: Some(r.argv.to_vec()),
            args: Some(Vec::new()),
            env: r
                .args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain(prepared.env.iter().cloned())
                .collect(),
            ..Default::default()
        },
    )
    .map_err(step_err(format!("{}:{}: RUN", cx.file, r.line)))?;
    crate::layered::make_cwd(
        &step.join("upper"),
        r.lowers,
        r.config
            .get("WorkingDir")
            .and_then(|v| v.as_str())
            .unwrap_or("/"),
        (process.uid, process.gid),
    )
    .map_err(step_err(format!(
        "{}:{}: RUN: working directory",
        cx.file, r.line
    )))?;
    let mut spec = RunSpec::new(rootfs, r.argv.to_vec());
    spec.process = process;
    spec.mounts = prepared.mounts;
    spec.secrets = prepared.secrets;
    spec.limits = req.run_limits.clone();
    if r.run.network.as_deref() == Some("none") {
        spec.network = sandbox::Network::None;
    }
    // Served while the RUN lasts: stopped when this goes, whatever happens.
    let mut proxies = crate::run_mounts::SshProxies::default();
    for (listener, agent) in prepared.ssh {
        proxies
            .serve(listener, agent)
            .map_err(|e| run_err(format!("ssh agent: {e}")))?;
    }
    let outcome = cx
        .sandbox
        .run(&spec, out, err, &Default::default())
        .await
        .map_err(step_err(format!("{}:{}: RUN", cx.file, r.line)));
    drop(proxies);
    let _ = std::fs::remove_dir_all(&scratch);
    let outcome = outcome?;
    if outcome.limits_not_enforced {
        let _ = err
            .write_all(
                b"warning: no writable cgroup controller here: --memory/--cpus are not enforced\n",
            )
            .await;
    }
    if !outcome.status.success() {
        return Err(BuildError::RunFailed {
            file: cx.file.to_owned(),
            line: r.line,
            command: r.shown.to_owned(),
            code: outcome.status.code,
        });
    }
    finish_step(&step, req, r.key)
}

/// COPY/ADD sources as the log shows them, heredocs as `<<NAME`.
fn sources_shown(sources: &[String], inline: &[dockerfile::instructions::InlineFile]) -> String {
    sources
        .iter()
        .cloned()
        .chain(inline.iter().map(|h| format!("<<{}", h.name)))
        .collect::<Vec<_>>()
        .join(" ")
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

fn new_step_dir(work: &Path, n: usize) -> Result<PathBuf, BuildError> {
    let step = work.join(format!("step-{n}"));
    let _ = std::fs::remove_dir_all(&step);
    for d in ["upper", "work"] {
        std::fs::create_dir_all(step.join(d))
            .map_err(step_err(format!("creating {}", step.display())))?;
    }
    Ok(step)
}

/// The cache key after one more instruction: a hash of the key so far and
/// everything that decides the instruction's result.
fn next_key(prev: &str, parts: &[&str]) -> String {
    let mut d = oci::Digester::new(oci::Algorithm::Sha256);
    d.update(prev.as_bytes());
    for p in parts {
        d.update(b"\0");
        d.update(p.as_bytes());
    }
    d.finish().hex().to_owned()
}

/// Put a step's layer (fresh or from the cache) on top of the stage: into
/// the image, the overlay lowers of later steps, and the layers to push.
#[allow(clippy::too_many_arguments)]
fn stack_layer(
    image: &mut NewImage,
    lowers: &mut Vec<PathBuf>,
    new_layers: &mut Vec<NewLayer>,
    upper: PathBuf,
    layer: NewLayer,
    created_by: &str,
    created: &str,
    (done, key): (&mut Vec<(String, NewLayer)>, &str),
) {
    image.add_layer(&layer.info, created_by, created);
    lowers.push(upper);
    done.push((key.to_owned(), layer.clone()));
    new_layers.push(layer);
}

/// A step in the local cache, or brought into it from a `--cache-from`.
#[allow(clippy::too_many_arguments)]
async fn find_cached<E: AsyncWrite + Unpin>(
    req: &BuildRequest,
    key: &str,
    remote: &crate::remote_cache::RemoteCache,
    client: &Arc<Client>,
    store: &LayerStore,
    lowers: &[PathBuf],
    err: &mut E,
) -> Option<CacheHit> {
    if let Some(hit) = cache_lookup(req, key) {
        return Some(hit);
    }
    let dir = req.cache_dir.as_ref()?;
    if remote.is_empty() {
        return None;
    }
    match remote
        .import(client, key, dir, store.whiteout_mode(), lowers)
        .await
    {
        Ok(true) => cache_lookup(req, key),
        Ok(false) => None,
        // A cache that fails is a warning: the step is built instead.
        Err(e) => {
            let _ = err
                .write_all(format!("warning: cache import: {e}\n").as_bytes())
                .await;
            None
        }
    }
}

/// A step found in the local cache.
struct CacheHit {
    upper: PathBuf,
    layer: NewLayer,
}

/// `<cache>/<key>/` holds a finished step: `upper/` (an overlay lower for
/// later steps), `layer` (its blob) and `layer.json`, written last, so a
/// step counts as cached only when all three are there.
fn cache_lookup(req: &BuildRequest, key: &str) -> Option<CacheHit> {
    let dir = req.cache_dir.as_ref()?.join(key);
    let info: LayerInfo =
        serde_json::from_slice(&std::fs::read(dir.join("layer.json")).ok()?).ok()?;
    let file = dir.join("layer");
    let upper = dir.join("upper");
    let complete = file.is_file() && upper.is_dir();
    if complete {
        // Reused now: `slipway prune --keep-duration` keeps it.
        crate::prune::touch(&dir);
    }
    complete.then_some(CacheHit {
        upper,
        layer: NewLayer { info, file },
    })
}

/// Export the step's layer and, with a cache, move the step into it.
/// Returns the step's upper dir (a lower for what follows) and its layer.
fn finish_step(
    step: &Path,
    req: &BuildRequest,
    key: &str,
) -> Result<(PathBuf, NewLayer), BuildError> {
    let layer = export(step, req)?;
    let Some(cache) = &req.cache_dir else {
        return Ok((step.join("upper"), layer));
    };
    let dir = cache.join(key);
    std::fs::create_dir_all(cache).map_err(step_err(format!("creating {}", cache.display())))?;
    if dir.exists() {
        // Another build stored this step meanwhile (and may be using it):
        // take theirs when complete, else keep ours uncached. Never replace it.
        return Ok(match cache_lookup(req, key) {
            Some(hit) => (hit.upper, hit.layer),
            None => (step.join("upper"), layer),
        });
    }
    let stored = std::fs::rename(step, &dir).and_then(|()| {
        let json = serde_json::to_vec(&layer.info).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("layer.json"), json)
    });
    match stored {
        Ok(()) => Ok((
            dir.join("upper"),
            NewLayer {
                info: layer.info,
                file: dir.join("layer"),
            },
        )),
        // Caching is an optimisation: a step that cannot be stored still counts.
        Err(e) => {
            tracing::warn!("not caching {}: {e}", step.display());
            Ok((step.join("upper"), layer))
        }
    }
}

/// A digest of what COPY/ADD would read: every path under the sources
/// (minus `.dockerignore`d ones) with its type, mode, size and content.
fn hash_sources(
    root: &Path,
    sources: &[String],
    ignore: Option<&dockerfile::IgnoreMatcher>,
    hashes: &FileHashes,
) -> String {
    fn walk(d: &mut oci::Digester, path: &Path, filter: &Filter<'_>, hashes: &FileHashes) {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            d.update(b"missing\0");
            return;
        };
        let decision = filter.decide(meta.is_dir());
        if decision == dockerfile::Decision::SkipDir
            || (decision == dockerfile::Decision::Exclude && !meta.is_dir())
        {
            return;
        }
        d.update(format!("{}\0{:o}\0{}\0", filter.rel, meta.mode(), meta.len()).as_bytes());
        if meta.file_type().is_symlink() {
            if let Ok(t) = std::fs::read_link(path) {
                d.update(t.as_os_str().as_encoded_bytes());
            }
        } else if meta.is_file() {
            if let Some(digest) = hashes.digest(path, &meta) {
                d.update(&digest);
            }
        } else if meta.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(path)
                .map(|r| r.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            names.sort();
            for name in names {
                walk(d, &path.join(&name), &filter.child(&name), hashes);
            }
        }
    }
    let mut d = oci::Digester::new(oci::Algorithm::Sha256);
    for source in sources {
        d.update(source.as_bytes());
        d.update(b"\0");
        if source.starts_with("http://") || source.starts_with("https://") {
            continue;
        }
        if let Some(rel) = clean_rel(source) {
            // What a symlinked source leads to is what gets copied.
            let rel = crate::sources::resolve_in_root(root, &rel).unwrap_or(rel);
            let filter = Filter {
                ignore,
                rel: rel.to_string_lossy().into_owned(),
                exclude: None,
                xrel: String::new(),
                owner: None,
                mode: None,
                links: None,
            };
            walk(&mut d, &root.join(&rel), &filter, hashes);
        }
    }
    d.finish().hex().to_owned()
}

fn export(step: &Path, req: &BuildRequest) -> Result<NewLayer, BuildError> {
    let file = step.join("layer");
    let f =
        std::fs::File::create(&file).map_err(step_err(format!("creating {}", file.display())))?;
    let info = write_layer(
        &step.join("upper"),
        std::io::BufWriter::with_capacity(1 << 20, f),
        &req.layer_options,
    )
    .map_err(step_err("writing the layer"))?;
    Ok(NewLayer { info, file })
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
    text.push_str(&crate::data_dir::ignore_lines(excludes));
    dockerfile::IgnoreMatcher::parse(&text)
        .map(Some)
        .map_err(|e| BuildError::Step {
            context: format!("{}", origin.display()),
            source: Box::new(std::io::Error::other(e.to_string())),
        })
}

async fn push(
    client: &Arc<Client>,
    origin: Option<&(Reference, regclient::FetchedManifest)>,
    new_layers: &[NewLayer],
    built: &crate::image::BuiltImage,
    tag: &Reference,
) -> Result<(), BuildError> {
    let host = tag.api_host().to_owned();
    let ctx = || format!("pushing {tag}");
    // Base blobs (mounted or copied) and new layers all at once, a few at
    // a time, as `docker push` does.
    let mut blobs: Vec<
        futures_util::future::BoxFuture<'_, Result<regclient::Pushed, regclient::RegClientError>>,
    > = Vec::new();
    if let Some((base, base_manifest)) = origin
        && let oci::ManifestKind::Image { layers, .. } = &base_manifest.manifest.kind
    {
        for l in layers {
            blobs.push(Box::pin(client.copy_blob(base, tag, l.clone())));
        }
    }
    for l in new_layers {
        blobs.push(Box::pin(client.push_file(
            &host,
            &tag.repository,
            &l.info.digest,
            l.info.size,
            &l.file,
        )));
    }
    {
        use futures_util::{StreamExt, TryStreamExt};
        futures_util::stream::iter(blobs)
            .buffer_unordered(client.parallelism())
            .try_collect::<Vec<_>>()
            .await
            .map_err(step_err(ctx()))?;
    }
    let cfg = bytes::Bytes::from(built.config.clone());
    client
        .push_blob(
            &host,
            &tag.repository,
            &built.config_digest,
            cfg.len() as u64,
            || reqwest::Body::from(cfg.clone()),
        )
        .await
        .map_err(step_err(ctx()))?;
    client
        .put_manifest(
            tag,
            oci::media_type::OCI_MANIFEST,
            built.manifest.clone().into(),
        )
        .await
        .map_err(step_err(ctx()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_only_what_this_machine_or_an_emulator_can() {
        let binfmt = tempfile::tempdir().unwrap();
        let host = host_platform();
        let here = Platform {
            os: host.os.clone(),
            architecture: host.arch.clone(),
            variant: None,
        };
        assert_eq!(can_run(&here, binfmt.path()), Ok(()));
        let foreign = Platform {
            architecture: if host.arch == "s390x" {
                "arm64"
            } else {
                "s390x"
            }
            .into(),
            ..here
        };
        let err = can_run(&foreign, binfmt.path()).unwrap_err();
        assert!(
            err.contains(&foreign.to_string()) && err.contains("--platform=$BUILDPLATFORM"),
            "{err}"
        );
        std::fs::write(
            binfmt.path().join(format!("qemu-{}", foreign.architecture)),
            "enabled\n",
        )
        .unwrap();
        assert_eq!(can_run(&foreign, binfmt.path()), Ok(()));
    }
}
