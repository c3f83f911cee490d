//! `RUN`: its argv (shell form, heredocs), its cache key (bind mounts read
//! files: their content takes part), then, on a miss, [`execute_run`]: the
//! command in the sandbox on an overlay of the stage's layers, whose upper
//! dir becomes the step's layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dockerfile::instructions::{MountKind, NetworkMode, SecurityMode};
use regclient::Platform;
use sandbox::{ImageRun, RootFs, RunSpec};
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::cache::{StepLayer, finish_step, hash_sources, new_step_dir, next_key};
use super::platform::can_run;
use super::stage::{Step, StepIn, from_root};
use super::{BuildError, StageCtx, StageState, say, step_err, unsupported};
use crate::fault::StepError;
use crate::file_hashes::FileHashes;

/// `RUN`: from the cache when its key is there, else executed.
pub(super) async fn run<W: AsyncWrite + Unpin + Send, E: AsyncWrite + Unpin + Send>(
    cx: &StageCtx<'_>,
    st: &mut StageState,
    s: &mut StepIn<'_>,
    run: &dockerfile::instructions::Run,
    out: &mut W,
    err: &mut E,
) -> Result<Step, BuildError> {
    let (req, line) = (cx.req, s.line);
    if run.security == Some(SecurityMode::Insecure) && !req.allow_insecure {
        return Err(unsupported(
            cx.file,
            line,
            "RUN",
            "--security=insecure without --allow security.insecure (on a pool: slipway pool update POOL --allow-insecure true)",
        ));
    }
    let (argv, script) = run_argv(&run.command, &st.shell)
        .map_err(|what| unsupported(cx.file, line, "RUN", &what.to_string()))?;
    let shown = argv.join(" ");
    let shown = match shown.split_once('\n') {
        Some((first, _)) => format!("{first} …"),
        None => shown,
    };
    say(out, cx.tty, &format!("{} RUN {shown}", s.label)).await;
    // Bind mounts read files: their content is part of the key.
    let mut roots = Vec::with_capacity(run.mounts.len());
    let mut mount_hashes = Vec::new();
    for m in &run.mounts {
        if m.kind != MountKind::Bind {
            roots.push(None);
            continue;
        }
        let root = match &m.from {
            Some(from) => Some(from_root(cx, from, s.si, s.states, line).await?),
            None => None,
        };
        let (hash_root, hash_ignore) = match &root {
            Some(r) => (r.clone(), None),
            None => (req.context.clone(), cx.ignore.as_ref()),
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
    s.key = next_key(&s.key, &parts);
    if let Some(hit) = cx.find_cached(&s.key, &st.lowers, err).await {
        return Ok(Step::Cached(hit));
    }
    let step = RunStep {
        run,
        argv: &argv,
        script: script.as_ref(),
        shown: &shown,
        roots: &roots,
        step_no: s.step_no,
        line,
        key: &s.key,
        config: st.image.container_config().clone(),
        args: &st.args,
        lowers: &st.lowers,
        platform: &st.platform,
    };
    Ok(Step::Built(execute_run(cx, &step, out, err).await?))
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
) -> Result<(Vec<String>, Option<(String, String)>), StepError> {
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
        return Err(StepError::user("heredocs in the exec form"));
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

impl RunStep<'_> {
    /// The working directory as the config keeps it (as written).
    fn workdir_as_written(&self) -> &str {
        self.config
            .get("WorkingDir")
            .and_then(|v| v.as_str())
            .unwrap_or("/")
    }
}

/// Run `r` in the sandbox on an overlay of the layers so far (its mounts,
/// ssh proxies and a shebang heredoc set up around it) and turn the upper
/// dir into the step's layer: the cache entry's upper dir and the layer.
async fn execute_run<W: AsyncWrite + Unpin + Send, E: AsyncWrite + Unpin + Send>(
    cx: &StageCtx<'_>,
    r: &RunStep<'_>,
    out: &mut W,
    err: &mut E,
) -> Result<StepLayer, BuildError> {
    let req = cx.req;
    let run_err = |problem: StepError| BuildError::Run {
        file: cx.file.to_owned(),
        line: r.line,
        problem,
    };
    can_run(r.platform, Path::new("/proc/sys/fs/binfmt_misc")).map_err(run_err)?;
    let step = new_step_dir(&req.work_dir, r.step_no)?;
    let scratch = scratch_dir(cx, r.step_no)?;
    // The config keeps a WORKDIR as written (`/w/./p/../q/`); the RUN's
    // cwd is the clean path, as the sandbox takes it.
    let workdir = crate::config_step::clean_path(r.workdir_as_written());
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
        prepared
            .mounts
            .push(script_mount(&scratch, name, body).map_err(|e| run_err(StepError::machine(e)))?);
    }
    let mut lower: Vec<PathBuf> = r.lowers.iter().rev().cloned().collect();
    if lower.is_empty() {
        // FROM scratch: overlayfs needs a lower dir; an empty one.
        let empty = scratch.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| run_err(StepError::machine(e)))?;
        lower.push(empty);
    }
    let rootfs = RootFs {
        lower,
        upper: step.join("upper"),
        work: step.join("work"),
    };
    let process = run_process(cx, r, &rootfs, &workdir, &prepared.env)?;
    let mut spec = RunSpec::new(rootfs, r.argv.to_vec());
    spec.process = process;
    spec.mounts = prepared.mounts;
    spec.secrets = prepared.secrets;
    spec.limits = req.run_limits.clone();
    if r.run.security == Some(SecurityMode::Insecure) {
        spec.security = sandbox::Security::Insecure;
    }
    if r.run.network == Some(NetworkMode::None) {
        spec.network = sandbox::Network::None;
    }
    // Served while the RUN lasts: stopped when this goes, whatever happens.
    let mut proxies = crate::run_mounts::SshProxies::default();
    for (listener, agent) in prepared.ssh {
        proxies
            .serve(listener, agent)
            .map_err(|e| run_err(StepError::machine(format!("ssh agent: {e}"))))?;
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

/// A fresh, canonical `scratch-<n>` dir for what a RUN needs outside its
/// layer (mount copies, heredoc scripts), and the cache mounts' root.
fn scratch_dir(cx: &StageCtx<'_>, step_no: usize) -> Result<PathBuf, BuildError> {
    let req = cx.req;
    let scratch = req.work_dir.join(format!("scratch-{step_no}"));
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
    Ok(scratch)
}

/// A heredoc with a shebang runs as a file, from /dev/pipes as in BuildKit,
/// outside the layer: written under `scratch` and bound read-only there.
fn script_mount(scratch: &Path, name: &str, body: &str) -> std::io::Result<sandbox::Mount> {
    use std::os::unix::fs::PermissionsExt;
    let pipes = scratch.join("pipes");
    std::fs::create_dir_all(&pipes)?;
    let at = pipes.join(name);
    std::fs::write(&at, body)?;
    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755))?;
    Ok(sandbox::Mount::Bind {
        source: pipes,
        target: "/dev/pipes".into(),
        readonly: true,
    })
}

/// The RUN's process (user, env, cwd from the image config, the args in
/// scope and the mounts' env), its working directory made as runc makes it.
fn run_process(
    cx: &StageCtx<'_>,
    r: &RunStep<'_>,
    rootfs: &RootFs,
    workdir: &str,
    mount_env: &[String],
) -> Result<sandbox::Process, BuildError> {
    let mut config = r.config.clone();
    if config.contains_key("WorkingDir") {
        config.insert("WorkingDir".into(), json!(workdir));
    }
    let config: Option<oci_spec::image::Config> = serde_json::from_value(json!(config)).ok();
    let process = sandbox::image_process(
        config.as_ref(),
        rootfs,
        &ImageRun {
            entrypoint: Some(r.argv.to_vec()),
            args: Some(Vec::new()),
            env: r
                .args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain(mount_env.iter().cloned())
                .collect(),
            ..Default::default()
        },
    )
    .map_err(step_err(format!("{}:{}: RUN", cx.file, r.line)))?;
    crate::layered::make_cwd(
        &rootfs.upper,
        r.lowers,
        r.workdir_as_written(),
        (process.uid, process.gid),
    )
    .map_err(step_err(format!(
        "{}:{}: RUN: working directory",
        cx.file, r.line
    )))?;
    Ok(process)
}
