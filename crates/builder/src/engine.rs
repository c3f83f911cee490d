//! `slipway build --local`: a Dockerfile built on this machine, without a
//! daemon, and pushed.
//!
//! What is supported today, each as Docker does it: the stages the target
//! needs, in order, each `FROM` an image or an earlier stage (stages the
//! target does not need are not built); `RUN` (shell and exec form, through
//! the stage's `SHELL`) in the sandbox on an overlay of the layers so far;
//! `COPY` of files and directories from the context (honouring
//! `.dockerignore`, never following a symlink out of it), or `--from` an
//! earlier stage or an image, with `--chown` (names from the image's
//! passwd/group; a user alone gives gid = uid, as Docker does) and octal
//! `--chmod`; `WORKDIR` (created when missing); `ENV`, `ARG`,
//! `LABEL`, `CMD`, `ENTRYPOINT`, `USER`, `EXPOSE`, `STOPSIGNAL`, `SHELL`,
//! `MAINTAINER`; `ADD` of local files, local tar archives (extracted) and
//! URLs (with `--checksum`). Anything else — `VOLUME`, `HEALTHCHECK`, `ONBUILD`,
//! `RUN --mount`, `COPY --link/--parents/--exclude`, globs
//! in `COPY` — is refused with its line, never silently skipped. Stages run
//! one after another (no parallelism yet). A local cache (`<data>/cache`)
//! keys each step by the key before it, the instruction as written, the
//! build args and shell in scope, and for COPY/ADD a digest of the files
//! read; a hit reuses the step's upper dir and layer blob. There is no
//! registry-shared cache yet.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use dockerfile::Command;
use oci::Reference;
use regclient::{Client, Platform};
use sandbox::{ImageRun, RootFs, RunSpec, Sandbox};
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::diff::{LayerInfo, LayerOptions, write_layer};
use crate::image::NewImage;
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
struct NewLayer {
    info: LayerInfo,
    file: PathBuf,
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
    origin: Reference,
    origin_manifest: regclient::FetchedManifest,
    /// Cache key of the state so far: the base image, then every instruction.
    cache_key: String,
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

/// The filesystem that overlay-form layer dirs (bottom to top) stand for,
/// written out as a plain tree at `dest`: what `COPY --from` reads.
fn merge_layers(layers: &[PathBuf], dest: &Path) -> std::io::Result<()> {
    let partial = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    for layer in layers {
        merge_dir(layer, &partial, Path::new(""))?;
    }
    std::fs::rename(&partial, dest)
}

fn merge_dir(layer: &Path, dest: &Path, rel: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut entries: Vec<_> = std::fs::read_dir(layer.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let meta = std::fs::symlink_metadata(e.path())?;
        let at = dest.join(&r);
        let ft = meta.file_type();
        let existing = std::fs::symlink_metadata(&at).ok();
        let remove = |m: &std::fs::Metadata| {
            if m.is_dir() {
                std::fs::remove_dir_all(&at)
            } else {
                std::fs::remove_file(&at)
            }
        };
        if ft.is_char_device() && meta.rdev() == 0 {
            if let Some(m) = existing {
                remove(&m)?;
            }
            continue;
        }
        if ft.is_dir() {
            let opaque = crate::diff::is_opaque(&e.path());
            match existing {
                Some(m) if m.is_dir() && !opaque => {}
                Some(m) => {
                    remove(&m)?;
                    std::fs::create_dir(&at)?;
                }
                None => std::fs::create_dir(&at)?,
            }
            std::fs::set_permissions(&at, meta.permissions())?;
            merge_dir(layer, dest, &r)?;
            continue;
        }
        if let Some(m) = existing {
            remove(&m)?;
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &at)?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &at)?;
        }
        // Devices, fifos and sockets are not files COPY can take.
    }
    Ok(())
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
    let file = req.dockerfile.display().to_string();
    let src = std::fs::read(&req.dockerfile).map_err(step_err(format!("reading {file}")))?;
    let opts = dockerfile::BuildOptions {
        build_args: req.build_args.clone(),
        ..Default::default()
    };
    let text = String::from_utf8_lossy(&src).into_owned();
    let source_lines: Vec<&str> = text.lines().collect();
    let (_, df, graph) =
        dockerfile::check(&text, &opts, req.target.as_deref()).map_err(|errors| {
            BuildError::Dockerfile {
                file: file.clone(),
                errors,
            }
        })?;
    let ignore = load_ignore(&req.dockerfile, &req.context)?;
    let unsupported = |line: u32, instruction: &str, what: &str| BuildError::Unsupported {
        file: file.clone(),
        line,
        instruction: instruction.into(),
        what: what.into(),
    };
    std::fs::create_dir_all(&req.work_dir)
        .map_err(step_err(format!("creating {}", req.work_dir.display())))?;
    let mut states: HashMap<usize, StageState> = HashMap::new();
    for &si in &graph.needed {
        let stage = &df.stages[si];
        let mut st = match find_stage(&df, si, &stage.base) {
            Some(dep) => states.get(&dep).cloned().ok_or_else(|| {
                unsupported(
                    stage.pos.line,
                    "FROM",
                    "a stage that is not built before it",
                )
            })?,
            None => {
                let base: Reference = stage.base.parse().map_err(|e: oci::ReferenceError| {
                    unsupported(stage.pos.line, "FROM", &e.to_string())
                })?;
                say(
                    out,
                    &format!("[1/{}] FROM {base}", stage.instructions.len() + 1),
                )
                .await;
                let pulled = store
                    .pull(client, &base, &req.platform)
                    .await
                    .map_err(step_err(format!("pulling {base}")))?;
                let base_manifest = client
                    .resolve_image(&base, &req.platform)
                    .await
                    .map_err(step_err(format!("pulling {base}")))?;
                let image = NewImage::from_base(&base_manifest.manifest, &pulled.config)
                    .map_err(step_err(format!("{base}")))?;
                StageState {
                    image,
                    lowers: pulled.layers.clone(),
                    new_layers: Vec::new(),
                    shell: vec!["/bin/sh".into(), "-c".into()],
                    args: BTreeMap::new(),
                    cache_key: format!("{}@{}", base_manifest.digest, req.platform),
                    origin: base,
                    origin_manifest: base_manifest,
                }
            }
        };
        let StageState {
            image,
            lowers,
            new_layers,
            shell,
            args,
            cache_key,
            ..
        } = &mut st;
        for (n, ins) in stage.instructions.iter().enumerate() {
            let line = ins.line;
            let label = format!("[{}/{}]", n + 2, stage.instructions.len() + 1);
            // History shows the instruction as written, as `docker history` does.
            let first = (ins.line as usize).saturating_sub(1);
            let last = (ins.end_line as usize)
                .max(first + 1)
                .min(source_lines.len());
            let created_by = source_lines
                .get(first..last)
                .map(|l| l.join("\n"))
                .unwrap_or_default()
                .chars()
                .take(1000)
                .collect::<String>();
            let env_args: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut key = next_key(
                cache_key,
                &[&created_by, &env_args.join("\n"), &shell.join(" ")],
            );
            match &ins.command {
                Command::Run(run) => {
                    if !run.mounts.is_empty() || run.network.is_some() || run.security.is_some() {
                        return Err(unsupported(
                            line,
                            "RUN",
                            "--mount, --network and --security",
                        ));
                    }
                    if !run.command.heredocs.is_empty() {
                        return Err(unsupported(line, "RUN", "heredocs"));
                    }
                    let argv: Vec<String> = if run.command.shell_form {
                        shell
                            .iter()
                            .cloned()
                            .chain([run.command.args.join(" ")])
                            .collect()
                    } else {
                        run.command.args.clone()
                    };
                    say(out, &format!("{label} RUN {}", argv.join(" "))).await;
                    if let Some(hit) = cache_lookup(req, &key) {
                        say(out, &format!("{label} CACHED")).await;
                        stack_layer(
                            image,
                            lowers,
                            new_layers,
                            hit.upper,
                            hit.layer,
                            &created_by,
                            &req.created,
                        );
                        *cache_key = key;
                        continue;
                    }
                    let step = new_step_dir(&req.work_dir, si * 10_000 + n)?;
                    let rootfs = RootFs {
                        lower: lowers.iter().rev().cloned().collect(),
                        upper: step.join("upper"),
                        work: step.join("work"),
                    };
                    let config: Option<oci_spec::image::Config> =
                        serde_json::from_value(json!(image.container_config().clone())).ok();
                    let process = sandbox::image_process(
                        config.as_ref(),
                        &rootfs,
                        &ImageRun {
                            entrypoint: Some(argv.clone()),
                            args: Some(Vec::new()),
                            env: args.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                            ..Default::default()
                        },
                    )
                    .map_err(step_err(format!("{file}:{line}: RUN")))?;
                    let mut spec = RunSpec::new(rootfs, argv.clone());
                    spec.process = process;
                    let outcome = sandbox
                        .run(&spec, out, err, &Default::default())
                        .await
                        .map_err(step_err(format!("{file}:{line}: RUN")))?;
                    if !outcome.status.success() {
                        return Err(BuildError::RunFailed {
                            file: file.clone(),
                            line,
                            command: argv.join(" "),
                            code: outcome.status.code,
                        });
                    }
                    let (upper_dir, layer) = finish_step(&step, req, &key)?;
                    stack_layer(
                        image,
                        lowers,
                        new_layers,
                        upper_dir,
                        layer,
                        &created_by,
                        &req.created,
                    );
                }
                Command::Copy(c) => {
                    if c.link || c.parents || !c.excludes.is_empty() {
                        return Err(unsupported(line, "COPY", "--link, --parents and --exclude"));
                    }
                    if !c.inline.is_empty() {
                        return Err(unsupported(line, "COPY", "heredocs"));
                    }
                    say(
                        out,
                        &format!("{label} COPY {} {}", c.sources.join(" "), c.dest),
                    )
                    .await;
                    let step = new_step_dir(&req.work_dir, si * 10_000 + n)?;
                    let upper = step.join("upper");
                    let dest = absolute_dest(image, &c.dest);
                    let into_dir = c.dest.ends_with('/') || c.sources.len() > 1;
                    let source_root = match &c.from {
                        None => req.context.clone(),
                        Some(from) => {
                            let (key, layers) = match find_stage(&df, si, from) {
                                Some(dep) => match states.get(&dep) {
                                    Some(d) => (format!("stage-{dep}"), d.lowers.clone()),
                                    None => {
                                        return Err(unsupported(
                                            line,
                                            "COPY",
                                            "--from a stage that is not built before it",
                                        ));
                                    }
                                },
                                None => {
                                    let r: Reference =
                                        from.parse().map_err(|e: oci::ReferenceError| {
                                            unsupported(
                                                line,
                                                "COPY",
                                                &format!("--from={from}: {e}"),
                                            )
                                        })?;
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
                                merge_layers(&layers, &root).map_err(step_err(format!(
                                    "{file}:{line}: COPY --from={from}"
                                )))?;
                            }
                            root
                        }
                    };
                    key = next_key(
                        &key,
                        &[&hash_sources(
                            &source_root,
                            &c.sources,
                            if c.from.is_none() {
                                ignore.as_ref()
                            } else {
                                None
                            },
                        )],
                    );
                    if let Some(hit) = cache_lookup(req, &key) {
                        say(out, &format!("{label} CACHED")).await;
                        stack_layer(
                            image,
                            lowers,
                            new_layers,
                            hit.upper,
                            hit.layer,
                            &created_by,
                            &req.created,
                        );
                        *cache_key = key;
                        continue;
                    }
                    let (owner, mode) =
                        ownership(c.chown.as_deref(), c.chmod.as_deref(), lowers, &step).map_err(
                            |problem| BuildError::Copy {
                                file: file.clone(),
                                line,
                                path: c.chown.clone().or(c.chmod.clone()).unwrap_or_default(),
                                problem,
                            },
                        )?;
                    let ignore = if c.from.is_none() {
                        ignore.as_ref()
                    } else {
                        None
                    };
                    for source in &c.sources {
                        copy_source(
                            &source_root,
                            ignore,
                            owner,
                            mode,
                            source,
                            &dest,
                            into_dir,
                            &upper,
                            lowers,
                        )
                        .map_err(|problem| BuildError::Copy {
                            file: file.clone(),
                            line,
                            path: source.clone(),
                            problem,
                        })?;
                    }
                    let (upper_dir, layer) = finish_step(&step, req, &key)?;
                    stack_layer(
                        image,
                        lowers,
                        new_layers,
                        upper_dir,
                        layer,
                        &created_by,
                        &req.created,
                    );
                }
                Command::Add(a) => {
                    if a.link || a.keep_git_dir || !a.excludes.is_empty() || !a.inline.is_empty() {
                        return Err(unsupported(
                            line,
                            "ADD",
                            "--link, --keep-git-dir, --exclude and heredocs",
                        ));
                    }
                    say(
                        out,
                        &format!("{label} ADD {} {}", a.sources.join(" "), a.dest),
                    )
                    .await;
                    let step = new_step_dir(&req.work_dir, si * 10_000 + n)?;
                    let upper = step.join("upper");
                    let dest = absolute_dest(image, &a.dest);
                    let into_dir = a.dest.ends_with('/') || a.sources.len() > 1;
                    let add_err = |path: &str| {
                        let (file, path) = (file.clone(), path.to_owned());
                        move |problem: String| BuildError::Copy {
                            file,
                            line,
                            path,
                            problem,
                        }
                    };
                    let remote_unpinned = a
                        .sources
                        .iter()
                        .any(|x| x.starts_with("http://") || x.starts_with("https://"))
                        && a.checksum.is_none();
                    // A URL without --checksum can change under us: never reuse it.
                    let nonce = if remote_unpinned {
                        format!("{:?}", std::time::SystemTime::now())
                    } else {
                        String::new()
                    };
                    key = next_key(
                        &key,
                        &[
                            &hash_sources(&req.context, &a.sources, ignore.as_ref()),
                            a.checksum.as_deref().unwrap_or(""),
                            &nonce,
                        ],
                    );
                    if let Some(hit) = cache_lookup(req, &key) {
                        say(out, &format!("{label} CACHED")).await;
                        stack_layer(
                            image,
                            lowers,
                            new_layers,
                            hit.upper,
                            hit.layer,
                            &created_by,
                            &req.created,
                        );
                        *cache_key = key;
                        continue;
                    }
                    let (owner, mode) =
                        ownership(a.chown.as_deref(), a.chmod.as_deref(), lowers, &step)
                            .map_err(add_err("--chown/--chmod"))?;
                    for source in &a.sources {
                        if source.starts_with("http://") || source.starts_with("https://") {
                            if source.ends_with(".git") || source.contains(".git#") {
                                return Err(unsupported(line, "ADD", "git sources"));
                            }
                            add_url(
                                source,
                                a.checksum.as_deref(),
                                &dest,
                                into_dir,
                                owner,
                                mode,
                                &upper,
                                lowers,
                            )
                            .await
                            .map_err(add_err(source))?;
                            continue;
                        }
                        if a.checksum.is_some() {
                            return Err(unsupported(
                                line,
                                "ADD",
                                "--checksum on a local source (Docker allows it only for URLs)",
                            ));
                        }
                        let extracted = if a.unpack == Some(false) {
                            false
                        } else {
                            add_archive(&req.context, source, &dest, &upper, lowers)
                                .map_err(add_err(source))?
                        };
                        if !extracted {
                            copy_source(
                                &req.context,
                                ignore.as_ref(),
                                owner,
                                mode,
                                source,
                                &dest,
                                into_dir,
                                &upper,
                                lowers,
                            )
                            .map_err(add_err(source))?;
                        }
                    }
                    let (upper_dir, layer) = finish_step(&step, req, &key)?;
                    stack_layer(
                        image,
                        lowers,
                        new_layers,
                        upper_dir,
                        layer,
                        &created_by,
                        &req.created,
                    );
                }
                Command::Workdir { path } => {
                    say(out, &format!("{label} WORKDIR {path}")).await;
                    let current = image
                        .container_config()
                        .get("WorkingDir")
                        .and_then(|v| v.as_str())
                        .unwrap_or("/")
                        .to_owned();
                    let abs = if path.starts_with('/') {
                        path.clone()
                    } else {
                        format!("{}/{path}", current.trim_end_matches('/'))
                    };
                    image
                        .container_config()
                        .insert("WorkingDir".into(), json!(abs));
                    let rel = clean_rel(&abs)
                        .ok_or_else(|| unsupported(line, "WORKDIR", "a path that leaves /"))?;
                    if !rel.as_os_str().is_empty() && !exists_in(lowers, &rel) {
                        if let Some(hit) = cache_lookup(req, &key) {
                            say(out, &format!("{label} CACHED")).await;
                            stack_layer(
                                image,
                                lowers,
                                new_layers,
                                hit.upper,
                                hit.layer,
                                &created_by,
                                &req.created,
                            );
                            *cache_key = key;
                            continue;
                        }
                        let step = new_step_dir(&req.work_dir, si * 10_000 + n)?;
                        make_dirs(&step.join("upper"), &rel, lowers)
                            .map_err(step_err(format!("{file}:{line}: WORKDIR")))?;
                        let (upper_dir, layer) = finish_step(&step, req, &key)?;
                        stack_layer(
                            image,
                            lowers,
                            new_layers,
                            upper_dir,
                            layer,
                            &created_by,
                            &req.created,
                        );
                    } else {
                        image.add_empty_step(&created_by, &req.created);
                    }
                }
                Command::Env { vars } => {
                    say(out, &format!("{label} ENV")).await;
                    let cfg = image.container_config();
                    let mut env: Vec<String> = cfg
                        .get("Env")
                        .and_then(|v| serde_json::from_value(v.clone()).ok())
                        .unwrap_or_default();
                    for kv in vars {
                        env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(kv.key.as_str()));
                        env.push(format!("{}={}", kv.key, kv.value));
                    }
                    cfg.insert("Env".into(), json!(env));
                    image.add_empty_step(&created_by, &req.created);
                }
                Command::Arg { args: defs } => {
                    for a in defs {
                        if let Some(v) = req
                            .build_args
                            .get(&a.name)
                            .cloned()
                            .or_else(|| a.default.clone())
                        {
                            args.insert(a.name.clone(), v);
                        }
                    }
                }
                Command::Label { labels } => {
                    let cfg = image.container_config();
                    let entry = cfg.entry("Labels").or_insert_with(|| json!({}));
                    if !entry.is_object() {
                        *entry = json!({});
                    }
                    if let Some(map) = entry.as_object_mut() {
                        for kv in labels {
                            map.insert(kv.key.clone(), json!(kv.value));
                        }
                    }
                    image.add_empty_step(&created_by, &req.created);
                }
                Command::Cmd(cl) | Command::Entrypoint(cl) => {
                    let key = if matches!(ins.command, Command::Cmd(_)) {
                        "Cmd"
                    } else {
                        "Entrypoint"
                    };
                    let value: Vec<String> = if cl.shell_form {
                        shell.iter().cloned().chain([cl.args.join(" ")]).collect()
                    } else {
                        cl.args.clone()
                    };
                    image.container_config().insert(key.into(), json!(value));
                    if key == "Entrypoint" {
                        // Docker: a new ENTRYPOINT resets an inherited CMD.
                        image.container_config().remove("Cmd");
                    }
                    image.add_empty_step(&created_by, &req.created);
                }
                Command::User { user } => {
                    image.container_config().insert("User".into(), json!(user));
                    image.add_empty_step(&created_by, &req.created);
                }
                Command::Expose { ports } => {
                    let cfg = image.container_config();
                    let entry = cfg.entry("ExposedPorts").or_insert_with(|| json!({}));
                    if let Some(map) = entry.as_object_mut() {
                        for p in ports {
                            let key = if p.contains('/') {
                                p.clone()
                            } else {
                                format!("{p}/tcp")
                            };
                            map.insert(key, json!({}));
                        }
                    }
                    image.add_empty_step(&created_by, &req.created);
                }
                Command::Stopsignal { signal } => {
                    image
                        .container_config()
                        .insert("StopSignal".into(), json!(signal));
                    image.add_empty_step(&created_by, &req.created);
                }
                Command::Shell { shell: s } => {
                    *shell = s.clone();
                    image.container_config().insert("Shell".into(), json!(s));
                    image.add_empty_step(&created_by, &req.created);
                }
                Command::Maintainer { name } => {
                    image.add_empty_step(&format!("MAINTAINER {name}"), &req.created);
                }
                other => {
                    let name = format!("{other:?}");
                    let name = name
                        .split(['(', ' ', '{'])
                        .next()
                        .unwrap_or("instruction")
                        .to_uppercase();
                    return Err(unsupported(line, &name, "this instruction"));
                }
            }
            *cache_key = key;
        }
        states.insert(si, st);
    }
    let Some(mut st) = states.remove(&graph.target) else {
        return Err(step_err("building the target stage")(
            std::io::Error::other("the target stage was not built"),
        ));
    };
    let built = st
        .image
        .finish(&req.created)
        .map_err(step_err("assembling the image"))?;
    let mut pushed = Vec::new();
    for tag in &req.tags {
        say(out, &format!("pushing {tag}")).await;
        push(
            client,
            &st.origin,
            &st.origin_manifest,
            &st.new_layers,
            &built,
            tag,
        )
        .await?;
        pushed.push(tag.clone());
    }
    say(out, &format!("built {}", built.manifest_digest)).await;
    Ok(BuildResult {
        manifest_digest: built.manifest_digest,
        config: built.config,
        manifest: built.manifest,
        pushed,
    })
}

async fn say<W: AsyncWrite + Unpin>(out: &mut W, line: &str) {
    let _ = out.write_all(format!("#### {line}\n").as_bytes()).await;
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
fn stack_layer(
    image: &mut NewImage,
    lowers: &mut Vec<PathBuf>,
    new_layers: &mut Vec<NewLayer>,
    upper: PathBuf,
    layer: NewLayer,
    created_by: &str,
    created: &str,
) {
    image.add_layer(&layer.info, created_by, created);
    lowers.push(upper);
    new_layers.push(layer);
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
) -> String {
    fn walk(d: &mut oci::Digester, path: &Path, filter: &Filter<'_>) {
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
            if let Ok(mut f) = std::fs::File::open(path) {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = std::io::Read::read(&mut f, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    d.update(&buf[..n]);
                }
            }
        } else if meta.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(path)
                .map(|r| r.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            names.sort();
            for name in names {
                walk(d, &path.join(&name), &filter.child(&name));
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
            let filter = Filter {
                ignore,
                rel: rel.to_string_lossy().into_owned(),
                owner: (0, 0),
                mode: None,
            };
            walk(&mut d, &root.join(&rel), &filter);
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

/// A COPY/ADD destination made absolute against the current WORKDIR.
fn absolute_dest(image: &mut NewImage, dest: &str) -> String {
    if dest.starts_with('/') {
        return dest.to_owned();
    }
    let workdir = image
        .container_config()
        .get("WorkingDir")
        .and_then(|v| v.as_str())
        .unwrap_or("/")
        .to_owned();
    format!("{}/{dest}", workdir.trim_end_matches('/'))
}

/// `--chown` and `--chmod` of COPY/ADD. Names come from the image's
/// passwd/group; a user alone gives gid = uid, as Docker does.
fn ownership(
    chown: Option<&str>,
    chmod: Option<&str>,
    lowers: &[PathBuf],
    step: &Path,
) -> Result<((u32, u32), Option<u32>), String> {
    let owner = match chown {
        None => (0, 0),
        Some(spec) => {
            let view = RootFs {
                lower: lowers.iter().rev().cloned().collect(),
                upper: step.join("upper"),
                work: step.join("work"),
            };
            let (user, group) = spec
                .split_once(':')
                .map_or((spec, None), |(u, g)| (u, Some(g)));
            let (uid, _, _) = sandbox::resolve_user(&view, user).map_err(|e| e.to_string())?;
            let gid = match group {
                None => uid,
                Some(g) => {
                    sandbox::resolve_user(&view, &format!("{uid}:{g}"))
                        .map_err(|e| e.to_string())?
                        .1
                }
            };
            (uid, gid)
        }
    };
    let mode = match chmod {
        None => None,
        Some(m) => Some(
            u32::from_str_radix(m, 8)
                .ok()
                .filter(|v| *v <= 0o7777)
                .ok_or_else(|| format!("--chmod={m}: only octal modes are supported"))?,
        ),
    };
    Ok((owner, mode))
}

/// ADD of a local tar archive (plain, gzip or zstd): extracted into `dest`,
/// keeping the archive's owners and modes. Returns `false` for anything
/// that is not an archive, which ADD then copies like COPY.
fn add_archive(
    context: &Path,
    source: &str,
    dest: &str,
    upper: &Path,
    lowers: &[PathBuf],
) -> Result<bool, String> {
    use std::io::{Read, Seek};
    let Some(rel) = clean_rel(source) else {
        return Ok(false);
    };
    let from = context.join(&rel);
    let (Ok(root), Ok(real)) = (context.canonicalize(), from.canonicalize()) else {
        return Ok(false);
    };
    if !real.starts_with(&root) || !real.is_file() {
        return Ok(false);
    }
    let mut f = std::fs::File::open(&real).map_err(|e| e.to_string())?;
    let mut head = [0u8; 512];
    let n = f.read(&mut head).map_err(|e| e.to_string())?;
    let compressed =
        head[..n].starts_with(&[0x1f, 0x8b]) || head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    let plain_tar = n >= 262 && &head[257..262] == b"ustar";
    if !compressed && !plain_tar {
        return Ok(false);
    }
    f.rewind().map_err(|e| e.to_string())?;
    let digest = {
        let mut d = oci::Digester::new(oci::Algorithm::Sha256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = f.read(&mut buf).map_err(|e| e.to_string())?;
            if k == 0 {
                break;
            }
            d.update(&buf[..k]);
        }
        d.finish()
    };
    f.rewind().map_err(|e| e.to_string())?;
    let dest_rel = clean_rel(dest).ok_or("the destination leaves /")?;
    make_dirs(upper, &dest_rel, lowers).map_err(|e| e.to_string())?;
    crate::unpack::apply_layer(
        f,
        &digest,
        None,
        &upper.join(&dest_rel),
        crate::unpack::WhiteoutMode::Flatten,
        &[],
    )
    .map_err(|e| format!("extracting: {e}"))?;
    Ok(true)
}

/// ADD of a URL: downloaded (verified against `--checksum` when given) to
/// `dest`, or into it under the URL's last path segment; mode 0600 as in Docker.
#[allow(clippy::too_many_arguments)]
async fn add_url(
    url: &str,
    checksum: Option<&str>,
    dest: &str,
    into_dir: bool,
    owner: (u32, u32),
    mode: Option<u32>,
    upper: &Path,
    lowers: &[PathBuf],
) -> Result<(), String> {
    let expected: Option<oci::Digest> = checksum
        .map(|c| c.parse().map_err(|e| format!("--checksum: {e}")))
        .transpose()?;
    let resp = reqwest::get(url)
        .await
        .map_err(|e| format!("downloading: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("downloading: HTTP {}", resp.status()));
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("downloading: {e}"))?;
    if let Some(e) = &expected {
        let actual = oci::Digest::of(e.algorithm(), &bytes);
        if &actual != e {
            return Err(format!("checksum is {actual}, not the {e} given"));
        }
    }
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .unwrap_or("download");
    let dest_rel = clean_rel(dest).ok_or("the destination leaves /")?;
    let target = if into_dir {
        dest_rel.join(name)
    } else {
        dest_rel
    };
    make_dirs(upper, target.parent().unwrap_or(Path::new("")), lowers)
        .map_err(|e| e.to_string())?;
    let at = upper.join(&target);
    std::fs::write(&at, &bytes).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode.unwrap_or(0o600)))
        .map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&at, Some(owner.0), Some(owner.1)).map_err(|e| e.to_string())?;
    Ok(())
}

/// `<Dockerfile>.dockerignore` if present, else `<context>/.dockerignore`.
fn load_ignore(
    dockerfile: &Path,
    context: &Path,
) -> Result<Option<dockerfile::IgnoreMatcher>, BuildError> {
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    for path in [PathBuf::from(specific), context.join(".dockerignore")] {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return dockerfile::IgnoreMatcher::parse(&text)
                    .map(Some)
                    .map_err(|e| BuildError::Step {
                        context: format!("{}", path.display()),
                        source: Box::new(std::io::Error::other(e.to_string())),
                    });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(step_err(format!("reading {}", path.display()))(e)),
        }
    }
    Ok(None)
}

/// `/a/./b/../c` → `a/c`; `None` if it climbs above `/`.
fn clean_rel(p: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir if !out.pop() => return None,
            _ => {}
        }
    }
    Some(out)
}

fn exists_in(lowers: &[PathBuf], rel: &Path) -> bool {
    lowers
        .iter()
        .any(|l| std::fs::symlink_metadata(l.join(rel)).is_ok())
}

/// Create `rel` under `upper`; directories that exist below keep their
/// metadata (as an overlay copy-up would), new ones are 0755 root.
fn make_dirs(upper: &Path, rel: &Path, lowers: &[PathBuf]) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut cur = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        let at = upper.join(&cur);
        if at.is_dir() {
            continue;
        }
        std::fs::create_dir(&at)?;
        let below = lowers
            .iter()
            .rev()
            .find_map(|l| std::fs::metadata(l.join(&cur)).ok().filter(|m| m.is_dir()));
        if let Some(m) = below {
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            std::os::unix::fs::chown(&at, Some(m.uid()), Some(m.gid()))?;
        } else {
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

/// Docker's COPY for one plain source: a file goes to `dest` (or into it
/// when it is a directory); a directory's contents are copied into `dest`.
/// Files are owned by root; modes and times are kept.
#[allow(clippy::too_many_arguments)]
fn copy_source(
    context: &Path,
    ignore: Option<&dockerfile::IgnoreMatcher>,
    owner: (u32, u32),
    mode: Option<u32>,
    source: &str,
    dest: &str,
    into_dir: bool,
    upper: &Path,
    lowers: &[PathBuf],
) -> Result<(), String> {
    if source.contains(['*', '?', '[']) {
        return Err("wildcards are not supported yet".into());
    }
    let rel = clean_rel(source).ok_or("the source is outside the build context")?;
    let from = context.join(&rel);
    // A symlink on the way must not lead out of the context (or stage).
    let (Ok(root), Ok(real)) = (context.canonicalize(), from.canonicalize()) else {
        return Err("no such file or directory in the copy source".into());
    };
    if !real.starts_with(&root) {
        return Err("the source leads outside the copy source through a symlink".into());
    }
    let meta = std::fs::symlink_metadata(&real)
        .map_err(|_| "no such file or directory in the copy source".to_string())?;
    let rel_str = rel.to_string_lossy().into_owned();
    if ignore.is_some_and(|i| !rel_str.is_empty() && i.matches(&rel_str, meta.is_dir()))
        && !meta.is_dir()
    {
        return Err("excluded by .dockerignore".into());
    }
    let from = real;
    let dest_rel = clean_rel(dest).ok_or("the destination leaves /")?;
    let exists_as_dir = |r: &Path| {
        lowers
            .iter()
            .rev()
            .any(|l| std::fs::metadata(l.join(r)).is_ok_and(|m| m.is_dir()))
    };
    let target_rel = if meta.is_dir() {
        dest_rel.clone()
    } else if into_dir || exists_as_dir(&dest_rel) {
        dest_rel.join(rel.file_name().unwrap_or(rel.as_os_str()))
    } else {
        dest_rel.clone()
    };
    let parent = if meta.is_dir() {
        target_rel.as_path()
    } else {
        target_rel.parent().unwrap_or(Path::new(""))
    };
    make_dirs(upper, parent, lowers).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let filter = Filter {
        ignore,
        rel: rel_str,
        owner,
        mode,
    };
    copy_tree(&from, &upper.join(&target_rel), meta.is_dir(), &filter).map_err(|e| e.to_string())
}

/// Which context paths COPY may take: `.dockerignore`, with paths relative
/// to the context (`rel` is where the walk is).
struct Filter<'a> {
    ignore: Option<&'a dockerfile::IgnoreMatcher>,
    rel: String,
    /// Owner of everything copied (`--chown`; root by default).
    owner: (u32, u32),
    /// `--chmod`: the mode of everything copied.
    mode: Option<u32>,
}

impl Filter<'_> {
    fn child(&self, name: &std::ffi::OsStr) -> Filter<'_> {
        let name = name.to_string_lossy();
        Filter {
            ignore: self.ignore,
            rel: if self.rel.is_empty() {
                name.into_owned()
            } else {
                format!("{}/{name}", self.rel)
            },
            owner: self.owner,
            mode: self.mode,
        }
    }

    fn decide(&self, is_dir: bool) -> dockerfile::Decision {
        match self.ignore {
            Some(i) if !self.rel.is_empty() => i.decide(&self.rel, is_dir),
            _ => dockerfile::Decision::Include,
        }
    }
}

fn copy_tree(
    from: &Path,
    to: &Path,
    contents_only: bool,
    filter: &Filter<'_>,
) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    let decision = filter.decide(ft.is_dir());
    if decision == dockerfile::Decision::SkipDir
        || (decision == dockerfile::Decision::Exclude && !ft.is_dir())
    {
        return Ok(());
    }
    if ft.is_dir() {
        if !contents_only {
            std::fs::create_dir_all(to)?;
        }
        let mut names: Vec<_> = std::fs::read_dir(from)?.collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            copy_tree(
                &e.path(),
                &to.join(e.file_name()),
                false,
                &filter.child(&e.file_name()),
            )?;
        }
        // An excluded directory exists only for what it re-includes.
        if decision == dockerfile::Decision::Exclude
            && !contents_only
            && std::fs::read_dir(to)?.next().is_none()
        {
            return std::fs::remove_dir(to);
        }
        std::fs::set_permissions(to, meta.permissions())?;
    } else if ft.is_symlink() {
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
        std::os::unix::fs::lchown(to, Some(filter.owner.0), Some(filter.owner.1))?;
        return Ok(());
    } else if ft.is_file() {
        std::fs::copy(from, to)?;
    } else {
        return Err(std::io::Error::other(format!(
            "{}: only files, directories and symlinks can be copied",
            from.display()
        )));
    }
    std::os::unix::fs::chown(to, Some(filter.owner.0), Some(filter.owner.1))?;
    if let Some(mode) = filter.mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    }
    let mtime = std::fs::FileTimes::new().set_modified(meta.modified()?);
    std::fs::File::options()
        .write(!ft.is_dir())
        .read(ft.is_dir())
        .open(to)?
        .set_times(mtime)?;
    Ok(())
}

async fn push(
    client: &Arc<Client>,
    base: &Reference,
    base_manifest: &regclient::FetchedManifest,
    new_layers: &[NewLayer],
    built: &crate::image::BuiltImage,
    tag: &Reference,
) -> Result<(), BuildError> {
    let host = tag.api_host().to_owned();
    let ctx = || format!("pushing {tag}");
    if let oci::ManifestKind::Image { layers, .. } = &base_manifest.manifest.kind {
        for l in layers {
            client
                .copy_blob(base, tag, l.clone())
                .await
                .map_err(step_err(ctx()))?;
        }
    }
    for l in new_layers {
        let path = l.file.clone();
        client
            .push_blob(&host, &tag.repository, &l.info.digest, l.info.size, || {
                match std::fs::File::open(&path) {
                    Ok(f) => reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(
                        tokio::fs::File::from_std(f),
                    )),
                    Err(e) => reqwest::Body::wrap_stream(futures_util::stream::once(async move {
                        Err::<bytes::Bytes, _>(e)
                    })),
                }
            })
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
