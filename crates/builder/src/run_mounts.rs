//! `RUN --mount=…` turned into what the sandbox mounts, as BuildKit's
//! Dockerfile frontend does it:
//!
//! - `type=secret`: a `--secret` given to the build, at `target` (default
//!   `/run/secrets/<id>`) or in the environment variable `env`; mode `0400`
//!   and owner `0:0` unless `mode`/`uid`/`gid` say otherwise; a missing
//!   secret is an error only when `required`. Secrets never reach the upper
//!   dir (the sandbox puts them on a tmpfs) and are not part of the cache key.
//! - `type=cache`: a directory under the builder's cache-mount root, keyed
//!   by `id` (default: the target), kept between builds, created with
//!   `mode`/`uid`/`gid` (default `0755`, `0:0`). `sharing` is accepted but
//!   every mode behaves as `shared`.
//! - `type=bind`: `source` (default the root) of the context, or of the
//!   stage or image named by `from`, read-only unless `rw`; writes to an
//!   `rw` bind go to a scratch copy and are discarded, as in BuildKit. A
//!   context bind honours `.dockerignore` (by copying what it lets through).
//! - `type=tmpfs`: a fresh tmpfs of `size` bytes.
//! - `type=ssh`: the agent given with `--ssh ID=SOCKET` (id `default`
//!   unless `id=`), at `target` (default `/run/buildkit/ssh_agent.N`) with
//!   `SSH_AUTH_SOCK` pointing at the first; optional unless `required`. As
//!   in BuildKit the RUN gets a socket of its own that forwards to the
//!   agent, owned `uid`:`gid` with `mode` (default `0600`, `0:0`): the
//!   host's socket is never exposed and a non-root USER can be let in.
//!
//! Relative targets are relative to the working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dockerfile::instructions::{Mount, MountKind};

use crate::fault::StepError;

/// What the mounts need from the build.
pub(crate) struct MountContext<'a> {
    /// The build context (for binds without `from`).
    pub context: &'a Path,
    pub ignore: Option<&'a dockerfile::IgnoreMatcher>,
    /// `--secret` values by id.
    pub secrets: &'a BTreeMap<String, Vec<u8>>,
    /// `--ssh` agent sockets by id (absolute paths).
    pub ssh: &'a BTreeMap<String, PathBuf>,
    /// Where `type=cache` directories live (absolute).
    pub cache_root: &'a Path,
    /// Scratch space for copies of `rw` or filtered binds (absolute, removed
    /// by the caller after the run).
    pub scratch: &'a Path,
    /// The stage's working directory, for relative targets.
    pub workdir: &'a str,
}

/// The sandbox's share of a RUN's mounts.
#[derive(Default)]
pub(crate) struct Prepared {
    pub mounts: Vec<sandbox::Mount>,
    pub secrets: Vec<sandbox::Secret>,
    /// `NAME=value` for secrets given as environment variables.
    pub env: Vec<String>,
    /// The RUN's own agent sockets, each with the agent it forwards to;
    /// served by [`serve_ssh`] while the RUN lasts.
    pub ssh: Vec<(std::os::unix::net::UnixListener, PathBuf)>,
}

/// A mount's target made absolute against `workdir`.
pub(crate) fn target_of(m: &Mount, workdir: &str) -> Result<String, StepError> {
    let t = m.target.as_deref().unwrap_or("");
    let joined = if t.starts_with('/') {
        t.to_owned()
    } else {
        format!("{}/{t}", workdir.trim_end_matches('/'))
    };
    let clean = crate::sources::kept_rel(&joined)
        .ok_or_else(|| StepError::user("the mount target leaves /"))?;
    if clean.as_os_str().is_empty() {
        return Err(StepError::user(format!("invalid mount target {t:?}")));
    }
    Ok(format!("/{}", clean.display()))
}

/// The id a secret mount reads: `id`, else `source`, else the target's
/// last component (BuildKit's order).
fn secret_id(m: &Mount) -> Option<String> {
    m.id.clone().or_else(|| m.source.clone()).or_else(|| {
        m.target
            .as_deref()
            .and_then(|t| Path::new(t).file_name())
            .map(|n| n.to_string_lossy().into_owned())
    })
}

/// Prepare every mount of one RUN. `roots[i]` is the tree a `from=` of
/// mount `i` names (resolved by the engine, which may pull or merge it).
pub(crate) fn prepare(
    mounts: &[Mount],
    roots: &[Option<PathBuf>],
    cx: &MountContext<'_>,
) -> Result<Prepared, StepError> {
    let mut out = Prepared::default();
    let mut ssh_index = 0;
    for (i, m) in mounts.iter().enumerate() {
        match m.kind {
            MountKind::Secret => secret(m, i, cx, &mut out)?,
            MountKind::Cache => {
                if m.from.is_some() {
                    return Err(StepError::user(
                        "type=cache with from= is not supported yet",
                    ));
                }
                let target = target_of(m, cx.workdir)?;
                let id = m.id.clone().unwrap_or_else(|| target.clone());
                let dir = cx
                    .cache_root
                    .join(oci::Digest::of(oci::Algorithm::Sha256, id.as_bytes()).hex());
                if !dir.is_dir() {
                    create_cache_dir(&dir, m)
                        .map_err(|e| StepError::machine(format!("cache mount {id}: {e}")))?;
                }
                let source = match m.source.as_deref() {
                    Some(s) => {
                        let rel = crate::sources::kept_rel(s)
                            .ok_or_else(|| StepError::user("the cache source leaves the cache"))?;
                        cache_subdir(&dir, &rel)
                            .map_err(|e| e.context(format!("cache mount {id}")))?
                    }
                    None => dir,
                };
                out.mounts.push(if m.readonly {
                    sandbox::Mount::Bind {
                        source,
                        target,
                        readonly: true,
                    }
                } else {
                    sandbox::Mount::Cache { source, target }
                });
            }
            MountKind::Tmpfs => out.mounts.push(sandbox::Mount::Tmpfs {
                target: target_of(m, cx.workdir)?,
                size: m.size,
            }),
            MountKind::Bind => {
                let target = target_of(m, cx.workdir)?;
                let from_context = roots.get(i).and_then(|r| r.as_ref()).is_none();
                let root = match roots.get(i).and_then(|r| r.as_ref()) {
                    Some(r) => r.clone(),
                    None => cx.context.to_path_buf(),
                };
                let rel = crate::sources::kept_rel(m.source.as_deref().unwrap_or("/"))
                    .ok_or_else(|| StepError::user("the bind source leaves its root"))?;
                // Followed inside the root, as a COPY source is.
                let real = crate::sources::resolve_in_root(&root, &rel)
                    .map(|r| root.join(r))
                    .ok()
                    .filter(|p| p.exists())
                    .ok_or_else(|| {
                        StepError::user(format!(
                            "bind source {}: no such file or directory",
                            rel.display()
                        ))
                    })?;
                // The sandbox binds absolute host paths.
                let real = real.canonicalize().map_err(StepError::io)?;
                let ignore = if from_context { cx.ignore } else { None };
                let source = if m.readonly && ignore.is_none() {
                    real
                } else {
                    // A private copy: `rw` writes are thrown away with it,
                    // and .dockerignored files are not in it.
                    let copy = cx.scratch.join(format!("bind-{i}"));
                    let _ = std::fs::remove_dir_all(&copy);
                    std::fs::create_dir_all(cx.scratch).map_err(StepError::machine)?;
                    let links = std::cell::RefCell::new(std::collections::HashMap::new());
                    let filter = crate::copy::Filter {
                        ignore,
                        rel: rel.to_string_lossy().into_owned(),
                        exclude: None,
                        xrel: String::new(),
                        owner: None,
                        mode: None,
                        links: Some(&links),
                    };
                    crate::copy::copy_tree(&real, &copy, false, &filter).map_err(|e| {
                        StepError::io(e).context(format!("bind source {}", rel.display()))
                    })?;
                    copy
                };
                out.mounts.push(sandbox::Mount::Bind {
                    source,
                    target,
                    readonly: m.readonly,
                });
            }
            MountKind::Ssh => {
                if m.source.is_some() {
                    return Err(StepError::user("ssh does not support source"));
                }
                let id = m.id.clone().unwrap_or_else(|| "default".into());
                let target = match &m.target {
                    Some(_) => target_of(m, cx.workdir)?,
                    None => format!("/run/buildkit/ssh_agent.{ssh_index}"),
                };
                ssh_index += 1;
                // The first ssh mount is the one ssh(1) finds. BuildKit
                // points SSH_AUTH_SOCK at it even when an optional agent
                // is absent (ssh then says it cannot connect).
                if !out.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    out.env.push(format!("SSH_AUTH_SOCK={target}"));
                }
                let Some(socket) = cx.ssh.get(&id) else {
                    if m.required {
                        return Err(StepError::user(format!(
                            "ssh agent {id} is required but was not given (--ssh {id}=SOCKET)"
                        )));
                    }
                    continue;
                };
                let listen = cx.scratch.join(format!("ssh-{i}.sock"));
                let listener = ssh_socket(&listen, m).map_err(|e| {
                    StepError::machine(format!("ssh agent {id}: {}: {e}", listen.display()))
                })?;
                out.ssh.push((listener, socket.clone()));
                out.mounts.push(sandbox::Mount::Bind {
                    source: listen,
                    target,
                    readonly: false,
                });
            }
        }
    }
    Ok(out)
}

fn secret(m: &Mount, i: usize, cx: &MountContext<'_>, out: &mut Prepared) -> Result<(), StepError> {
    let id = secret_id(m).ok_or_else(|| StepError::user("a secret mount needs an id"))?;
    let Some(data) = cx.secrets.get(&id) else {
        if m.required {
            return Err(StepError::user(format!(
                "secret {id} is required but was not given (--secret id={id},…)"
            )));
        }
        return Ok(());
    };
    if let Some(var) = &m.env {
        let value = std::str::from_utf8(data).map_err(|_| {
            StepError::user(format!(
                "secret {id} is not UTF-8 text, so it cannot be env={var}"
            ))
        })?;
        out.env.push(format!("{var}={value}"));
        if m.target.is_none() {
            return Ok(());
        }
    }
    let target = match &m.target {
        Some(t) if t.starts_with('/') => crate::sources::kept_rel(t)
            .map(|p| format!("/{}", p.display()))
            .ok_or_else(|| StepError::user("the secret target leaves /"))?,
        Some(t) => target_of(m, cx.workdir)
            .map_err(|_| StepError::user(format!("invalid secret target {t:?}")))?,
        None => {
            let base = Path::new(&id)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| id.clone());
            format!("/run/secrets/{base}")
        }
    };
    let mut s = sandbox::Secret::new(format!("secret-{i}"), data.clone());
    s.mode = m.mode.unwrap_or(0o400);
    s.owner = Some((m.uid.unwrap_or(0), m.gid.unwrap_or(0)));
    match target.strip_prefix("/run/secrets/") {
        // The sandbox's own /run/secrets tmpfs, as a plain name.
        Some(name) if !name.contains('/') && !out.secrets.iter().any(|x| x.name == name) => {
            s.name = name.to_owned();
        }
        _ => s.target = Some(target),
    }
    out.secrets.push(s);
    Ok(())
}

/// The RUN's end of an ssh mount: a listening socket at `path` with the
/// mount's `mode`/`uid`/`gid`.
fn ssh_socket(path: &Path, m: &Mount) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(m.mode.unwrap_or(0o600)),
    )?;
    std::os::unix::fs::chown(path, Some(m.uid.unwrap_or(0)), Some(m.gid.unwrap_or(0)))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The ssh forwarders of one RUN; dropping it stops them all (their
/// connections with them).
#[derive(Default)]
pub(crate) struct SshProxies(Vec<tokio::task::JoinHandle<()>>);

impl SshProxies {
    /// Forward every connection to `listener` to the agent at `agent`.
    pub(crate) fn serve(
        &mut self,
        listener: std::os::unix::net::UnixListener,
        agent: PathBuf,
    ) -> std::io::Result<()> {
        self.0.push(serve_ssh(listener, agent)?);
        Ok(())
    }
}

impl Drop for SshProxies {
    fn drop(&mut self) {
        for p in &self.0 {
            p.abort();
        }
    }
}

/// Forward every connection to `listener` to the agent at `agent` until
/// the returned task is aborted (which drops the connections' tasks too).
/// A connection the agent refuses is closed; ssh in the RUN then reports it.
fn serve_ssh(
    listener: std::os::unix::net::UnixListener,
    agent: PathBuf,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut inner, _)) = listener.accept().await {
            let agent = agent.clone();
            conns.spawn(async move {
                match tokio::net::UnixStream::connect(&agent).await {
                    Ok(mut outer) => {
                        let _ = tokio::io::copy_bidirectional(&mut inner, &mut outer).await;
                    }
                    Err(e) => tracing::warn!("ssh agent {}: {e}", agent.display()),
                }
            });
        }
    }))
}

/// `rel` under the cache dir `dir`, created as needed. Earlier RUN steps
/// wrote the cache as root: a symlink in it must not lead the bind mount to
/// a host path, so no component may be a symlink.
/// A symlink or a file on the way is the RUN steps' doing (the user's).
fn cache_subdir(dir: &Path, rel: &Path) -> Result<PathBuf, StepError> {
    let mut at = dir.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(StepError::user(format!("{} is a symlink", at.display())));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StepError::user(format!(
                    "{} is not a directory",
                    at.display()
                )));
            }
            Err(_) => std::fs::create_dir(&at).map_err(StepError::machine)?,
        }
    }
    Ok(at)
}

fn create_cache_dir(dir: &Path, m: &Mount) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Built aside and renamed, so a concurrent build never sees it half made.
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    std::fs::set_permissions(
        &tmp,
        std::fs::Permissions::from_mode(m.mode.unwrap_or(0o755)),
    )?;
    std::os::unix::fs::chown(&tmp, Some(m.uid.unwrap_or(0)), Some(m.gid.unwrap_or(0)))?;
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another build made it first: theirs is as good.
        Err(_) if dir.is_dir() => std::fs::remove_dir_all(&tmp),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(raw: &str) -> Mount {
        let df = dockerfile::parse(&format!("FROM scratch\nRUN --mount={raw} true\n")).unwrap();
        match &df.stages[0].instructions[0].command {
            dockerfile::Command::Run(r) => r.mounts[0].clone(),
            _ => unreachable!(),
        }
    }

    /// The RUN's socket really speaks for the agent: `ssh-add -l` through
    /// it lists the key a real `ssh-agent` holds, and the socket has the
    /// mount's mode and owner.
    #[tokio::test]
    async fn ssh_mount_forwards_to_the_agent() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let agent_sock = d.path().join("agent.sock");
        let mut agent = std::process::Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&agent_sock)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client) is needed; scripts/test.sh installs it");
        for _ in 0..500 {
            if agent_sock.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let key = d.path().join("key");
        let keygen = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "fwd-test", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(keygen.success());
        let add = std::process::Command::new("ssh-add")
            .env("SSH_AUTH_SOCK", &agent_sock)
            .arg(&key)
            .output()
            .unwrap();
        assert!(add.status.success(), "{add:?}");

        let scratch = d.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let secrets = BTreeMap::new();
        let ssh = BTreeMap::from([("default".to_string(), agent_sock.clone())]);
        let cx = MountContext {
            context: d.path(),
            ignore: None,
            secrets: &secrets,
            ssh: &ssh,
            cache_root: d.path(),
            scratch: &scratch,
            workdir: "/",
        };
        let mut p = prepare(&[mount("type=ssh,mode=0640,gid=7")], &[None], &cx).unwrap();
        assert_eq!(p.env, ["SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0"]);
        let Some(sandbox::Mount::Bind { source, target, .. }) = p.mounts.first().cloned() else {
            panic!("no bind mount for the ssh socket");
        };
        assert_eq!(target, "/run/buildkit/ssh_agent.0");
        assert_ne!(source, agent_sock, "the host's socket must not be bound in");
        let meta = std::fs::metadata(&source).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (0, 7));

        let (listener, to) = p.ssh.remove(0);
        let mut proxy = SshProxies::default();
        proxy.serve(listener, to).unwrap();
        let list = tokio::process::Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &source)
            .output()
            .await
            .unwrap();
        drop(proxy);
        // Stopped with the RUN: its socket takes no more connections.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(tokio::net::UnixStream::connect(&source).await.is_err());
        let _ = agent.kill();
        let _ = agent.wait();
        let listed = String::from_utf8_lossy(&list.stdout);
        assert!(
            list.status.success() && listed.contains("fwd-test"),
            "ssh-add -l through the RUN's socket: {list:?}"
        );
    }

    #[test]
    fn secrets_default_to_run_secrets_and_env() {
        let d = tempfile::tempdir().unwrap();
        let secrets = BTreeMap::from([("tok".to_string(), b"v".to_vec())]);
        let ssh = BTreeMap::new();
        let cx = MountContext {
            context: d.path(),
            ignore: None,
            secrets: &secrets,
            ssh: &ssh,
            cache_root: d.path(),
            scratch: d.path(),
            workdir: "/app",
        };
        let p = prepare(&[mount("type=secret,id=tok")], &[None], &cx).unwrap();
        assert_eq!(p.secrets[0].name, "tok");
        assert_eq!(p.secrets[0].target, None);
        assert_eq!(p.secrets[0].owner, Some((0, 0)));
        let p = prepare(
            &[mount(
                "type=secret,id=tok,target=/root/.tok,mode=0440,uid=5",
            )],
            &[None],
            &cx,
        )
        .unwrap();
        assert_eq!(p.secrets[0].target.as_deref(), Some("/root/.tok"));
        assert_eq!(
            (p.secrets[0].mode, p.secrets[0].owner),
            (0o440, Some((5, 0)))
        );
        let p = prepare(&[mount("type=secret,id=tok,env=TOKEN")], &[None], &cx).unwrap();
        assert!(p.secrets.is_empty());
        assert_eq!(p.env, ["TOKEN=v"]);
        // Missing: fine unless required.
        assert!(
            prepare(&[mount("type=secret,id=nope")], &[None], &cx)
                .unwrap()
                .secrets
                .is_empty()
        );
        assert!(prepare(&[mount("type=secret,id=nope,required")], &[None], &cx).is_err());
    }

    #[test]
    fn cache_sources_never_follow_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        std::fs::create_dir_all(cache.join("real")).unwrap();
        std::os::unix::fs::symlink(d.path(), cache.join("link")).unwrap();
        assert_eq!(
            cache_subdir(&cache, Path::new("real/sub")).unwrap(),
            cache.join("real/sub")
        );
        assert!(cache.join("real/sub").is_dir());
        assert!(cache_subdir(&cache, Path::new("link/x")).is_err());
        assert!(!d.path().join("x").exists());
    }

    #[test]
    fn relative_targets_follow_the_workdir() {
        assert_eq!(
            target_of(&mount("type=tmpfs,target=t"), "/app").unwrap(),
            "/app/t"
        );
        assert!(target_of(&mount("type=tmpfs,target=/"), "/").is_err());
    }
}
