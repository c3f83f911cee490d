//! A stage's step loop: the ONBUILD triggers it inherits, then its
//! instructions, one function each. A function gets the stage so far and
//! the step (its key so far included) and returns a [`Step`]: config only,
//! a layer from the cache, or a layer built now. The loop stacks layers and
//! prints the step's `CACHED`/`DONE` lines.

use std::collections::HashMap;
use std::path::PathBuf;

use dockerfile::Command;
use oci::Reference;
use sandbox::RootFs;
use serde_json::json;
use tokio::io::AsyncWrite;

use super::cache::{StepLayer, finish_step, new_step_dir, next_key};
use super::copy_step::{CopyOrAdd, copy_or_add};
use super::error::step_err_as;
use super::{
    BuildError, BuildRequest, StageCtx, StageState, find_stage, say, step_err, unsupported,
};
use crate::copy::{clean_rel, make_dirs};
use crate::fault::Fault;
use crate::layered::{is_dir_in_layers, merge_layers, resolve_in_layers};
use crate::remote_cache::DoneStep;

/// What an instruction did.
pub(super) enum Step {
    /// Changed the config (or the args in scope) only.
    Config,
    /// Its layer was found in a cache.
    Cached(StepLayer),
    /// Its layer was made now.
    Built(StepLayer),
}

/// One step of a stage, as its instruction's function sees it.
pub(super) struct StepIn<'a> {
    /// `[n/total]`, as the log shows it.
    pub label: String,
    /// Names this step's scratch dirs, unique across the stages.
    pub step_no: usize,
    pub line: u32,
    /// The stage and the stages built before it (for `--from`).
    pub si: usize,
    pub states: &'a HashMap<usize, StageState>,
    /// The instruction as written, for the history.
    pub created_by: String,
    /// The cache key so far; an instruction adds what it reads.
    pub key: String,
}

impl StageState {
    /// Put a step's layer (fresh or from the cache) on top of the stage:
    /// into the image, the overlay lowers of later steps, the layers to
    /// push, and `done` (what --cache-to exports).
    fn stack(
        &mut self,
        step: StepLayer,
        created_by: &str,
        req: &BuildRequest,
        (done, key): (&mut Vec<DoneStep>, &str),
    ) {
        // With SOURCE_DATE_EPOCH every time is the epoch; else the step's own.
        let created = req
            .fixed_time()
            .or(step.created.as_deref())
            .unwrap_or(&req.created);
        self.image
            .add_layer_at(&step.layer.info, created_by, Some(created));
        self.lowers.push(step.upper);
        done.push(DoneStep {
            key: key.to_owned(),
            layer: step.layer.clone(),
            created: step.created.clone(),
        });
        self.new_layers.push(step.layer);
    }
}

/// Build stage `si` from `st` (its base image's or base stage's state):
/// the ONBUILD triggers it inherits, then its instructions. Returns the
/// stage's state and the layer steps it made, with their cache keys.
pub(super) async fn build_stage<W: AsyncWrite + Unpin + Send, E: AsyncWrite + Unpin + Send>(
    cx: &StageCtx<'_>,
    si: usize,
    mut st: StageState,
    states: &HashMap<usize, StageState>,
    out: &mut W,
    err: &mut E,
) -> Result<(StageState, Vec<DoneStep>), BuildError> {
    let (req, tty) = (cx.req, cx.tty);
    let steps = stage_steps(cx, si, &mut st)?;
    let mut done_steps: Vec<DoneStep> = Vec::new();
    // Whether this stage set CMD (an ENTRYPOINT after it keeps it).
    let mut cmd_set = false;
    for (n, (ins, trigger)) in steps.iter().enumerate() {
        let started = std::time::Instant::now();
        let created_by = created_by(cx.source_lines, ins, trigger.as_deref());
        let env_args: Vec<String> = st.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let key = next_key(
            &st.cache_key,
            &[&created_by, &env_args.join("\n"), &st.shell.join(" ")],
        );
        let mut s = StepIn {
            label: format!("[{}/{}]", n + 2, steps.len() + 1),
            step_no: si * 10_000 + n,
            line: ins.line,
            si,
            states,
            created_by,
            key,
        };
        let done = match &ins.command {
            Command::Run(run) => super::run_step::run(cx, &mut st, &mut s, run, out, err).await?,
            Command::Copy(c) => {
                copy_or_add(cx, &mut st, &mut s, CopyOrAdd::Copy(c), out, err).await?
            }
            Command::Add(a) => {
                copy_or_add(cx, &mut st, &mut s, CopyOrAdd::Add(a), out, err).await?
            }
            Command::Workdir { path } => workdir(cx, &mut st, &s, path, out, err).await?,
            Command::Arg { args } => arg(cx, &mut st, args),
            other => {
                if matches!(other, Command::Env { .. }) {
                    say(out, tty, &format!("{} ENV", s.label)).await;
                }
                let step = crate::config_step::Step {
                    created_by: &s.created_by,
                    created: req.fixed_time(),
                };
                crate::config_step::apply(&mut st.image, other, &mut st.shell, &mut cmd_set, &step);
                Step::Config
            }
        };
        let done_steps = (&mut done_steps, s.key.as_str());
        match done {
            Step::Config => {}
            Step::Cached(hit) => {
                say(out, tty, &format!("{} CACHED", s.label)).await;
                st.stack(hit, &s.created_by, req, done_steps);
            }
            Step::Built(layer) => {
                st.stack(layer, &s.created_by, req, done_steps);
                if matches!(
                    ins.command,
                    Command::Run(_) | Command::Copy(_) | Command::Add(_)
                ) {
                    let secs = started.elapsed().as_secs_f64();
                    say(out, tty, &format!("{} DONE {secs:.1}s", s.label)).await;
                }
            }
        }
        st.cache_key = s.key;
    }
    Ok((st, done_steps))
}

/// The instructions stage `si` runs, each with the ONBUILD trigger it comes
/// from: the triggers of what the stage starts from run first, as in
/// BuildKit (the base image's, or the ONBUILDs of the stage it is FROM,
/// kept in that stage's config). They do not carry over.
#[allow(clippy::type_complexity)]
fn stage_steps(
    cx: &StageCtx<'_>,
    si: usize,
    st: &mut StageState,
) -> Result<Vec<(dockerfile::Instruction, Option<String>)>, BuildError> {
    let stage = &cx.df.stages[si];
    let triggers: Vec<String> = st
        .image
        .container_config()
        .remove("OnBuild")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut steps = Vec::new();
    for t in &triggers {
        let (_, tdf, _) = dockerfile::check(&format!("FROM scratch\n{t}\n"), cx.opts, None)
            .map_err(|errors| BuildError::Dockerfile {
                file: format!(
                    "{}:{}: ONBUILD trigger {t:?} of {}",
                    cx.file, stage.pos.line, stage.base
                ),
                errors,
            })?;
        for mut i in tdf.stages.into_iter().flat_map(|s| s.instructions) {
            // Errors and history point at the FROM that ran them.
            i.line = stage.pos.line;
            i.end_line = stage.pos.line;
            steps.push((i, Some(t.clone())));
        }
    }
    steps.extend(stage.instructions.iter().cloned().map(|i| (i, None)));
    Ok(steps)
}

/// The instruction as written, as `docker history` shows it (an ONBUILD
/// trigger as its text), at most 1000 characters.
fn created_by(
    source_lines: &[&str],
    ins: &dockerfile::Instruction,
    trigger: Option<&str>,
) -> String {
    let first = (ins.line as usize).saturating_sub(1);
    let last = (ins.end_line as usize)
        .max(first + 1)
        .min(source_lines.len());
    match trigger {
        Some(t) => t.to_owned(),
        None => source_lines
            .get(first..last)
            .map(|l| l.join("\n"))
            .unwrap_or_default(),
    }
    .chars()
    .take(1000)
    .collect()
}

/// `WORKDIR`: set in the config, and made (a layer) when missing.
async fn workdir<W: AsyncWrite + Unpin + Send, E: AsyncWrite + Unpin + Send>(
    cx: &StageCtx<'_>,
    st: &mut StageState,
    s: &StepIn<'_>,
    path: &str,
    out: &mut W,
    err: &mut E,
) -> Result<Step, BuildError> {
    let (req, file, line) = (cx.req, cx.file, s.line);
    say(out, cx.tty, &format!("{} WORKDIR {path}", s.label)).await;
    let image = &mut st.image;
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
        .ok_or_else(|| unsupported(file, line, "WORKDIR", "a path that leaves /"))?;
    let lowers = &st.lowers;
    let exists =
        resolve_in_layers(None, lowers, &rel).is_ok_and(|r| is_dir_in_layers(None, lowers, &r));
    if rel.as_os_str().is_empty() || exists {
        image.add_empty_step(&s.created_by, req.fixed_time());
        return Ok(Step::Config);
    }
    if let Some(hit) = cx.find_cached(&s.key, lowers, err).await {
        return Ok(Step::Cached(hit));
    }
    let step = new_step_dir(&req.work_dir, s.step_no)?;
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
                .map_err(|e| step_err_as(e.fault(), format!("{file}:{line}: WORKDIR"))(e))?
        }
    };
    let rel = resolve_in_layers(Some(&upper), lowers, &rel)
        .map_err(step_err(format!("{file}:{line}: WORKDIR")))?;
    make_dirs(&upper, &rel, lowers, owner).map_err(step_err(format!("{file}:{line}: WORKDIR")))?;
    Ok(Step::Built(finish_step(&step, req, &s.key)?))
}

/// `ARG`: as in BuildKit, a --build-arg or an automatic platform ARG
/// (`TARGETARCH` …) beats the default; `ARG NAME` without either takes the
/// global ARG's value.
fn arg(cx: &StageCtx<'_>, st: &mut StageState, defs: &[dockerfile::instructions::ArgDef]) -> Step {
    for a in defs {
        if let Some(v) = cx
            .req
            .build_args
            .get(&a.name)
            .cloned()
            .or_else(|| cx.platform_args.get(&a.name).cloned())
            .or_else(|| a.default.clone())
            .or_else(|| cx.global_args.get(&a.name).cloned())
        {
            st.args.insert(a.name.clone(), v);
        }
    }
    Step::Config
}

/// The tree `COPY --from` and `RUN --mount=…,from=` read: an earlier
/// stage's layers or an image's, merged into a plain directory once per build.
pub(super) async fn from_root(
    cx: &StageCtx<'_>,
    from: &str,
    si: usize,
    states: &HashMap<usize, StageState>,
    line: u32,
) -> Result<PathBuf, BuildError> {
    let (req, file) = (cx.req, cx.file);
    let refuse = |what: String| unsupported(file, line, "--from", &what);
    let (key, layers) = match find_stage(cx.df, si, from) {
        Some(dep) => match states.get(&dep) {
            Some(d) => (format!("stage-{dep}"), d.lowers.clone()),
            None => return Err(refuse("a stage that is not built before it".into())),
        },
        None => {
            let r: Reference = from
                .parse()
                .map_err(|e: oci::ReferenceError| refuse(format!("--from={from}: {e}")))?;
            let pulled = cx
                .store
                .pull(cx.client, &r, &req.platform)
                .await
                .map_err(step_err_as(Fault::Network, format!("pulling {r}")))?;
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
