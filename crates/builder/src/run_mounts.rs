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
//! - `type=ssh`: the agent socket given with `--ssh ID=SOCKET` (id
//!   `default` unless `id=`), bound at `target` (default
//!   `/run/buildkit/ssh_agent.N`) with `SSH_AUTH_SOCK` pointing at the
//!   first; optional unless `required`. The socket is the host's own, so
//!   `mode`/`uid`/`gid` do not apply (BuildKit proxies it instead).
//!
//! Relative targets are relative to the working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dockerfile::instructions::Mount;

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
}

/// A mount's target made absolute against `workdir`.
pub(crate) fn target_of(m: &Mount, workdir: &str) -> Result<String, String> {
    let t = m.target.as_deref().unwrap_or("");
    let joined = if t.starts_with('/') {
        t.to_owned()
    } else {
        format!("{}/{t}", workdir.trim_end_matches('/'))
    };
    let clean = crate::sources::kept_rel(&joined).ok_or("the mount target leaves /")?;
    if clean.as_os_str().is_empty() {
        return Err(format!("invalid mount target {t:?}"));
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
) -> Result<Prepared, String> {
    let mut out = Prepared::default();
    let mut ssh_index = 0;
    for (i, m) in mounts.iter().enumerate() {
        match m.kind.as_str() {
            "secret" => secret(m, i, cx, &mut out)?,
            "cache" => {
                if m.from.is_some() {
                    return Err("type=cache with from= is not supported yet".into());
                }
                let target = target_of(m, cx.workdir)?;
                let id = m.id.clone().unwrap_or_else(|| target.clone());
                let dir = cx
                    .cache_root
                    .join(oci::Digest::of(oci::Algorithm::Sha256, id.as_bytes()).hex());
                if !dir.is_dir() {
                    create_cache_dir(&dir, m).map_err(|e| format!("cache mount {id}: {e}"))?;
                }
                let source = match m.source.as_deref() {
                    Some(s) => {
                        let rel = crate::sources::kept_rel(s)
                            .ok_or("the cache source leaves the cache")?;
                        cache_subdir(&dir, &rel).map_err(|e| format!("cache mount {id}: {e}"))?
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
            "tmpfs" => out.mounts.push(sandbox::Mount::Tmpfs {
                target: target_of(m, cx.workdir)?,
                size: m.size,
            }),
            "bind" => {
                let target = target_of(m, cx.workdir)?;
                let from_context = roots.get(i).and_then(|r| r.as_ref()).is_none();
                let root = match roots.get(i).and_then(|r| r.as_ref()) {
                    Some(r) => r.clone(),
                    None => cx.context.to_path_buf(),
                };
                let rel = crate::sources::kept_rel(m.source.as_deref().unwrap_or("/"))
                    .ok_or("the bind source leaves its root")?;
                // Followed inside the root, as a COPY source is.
                let real = crate::sources::resolve_in_root(&root, &rel)
                    .map(|r| root.join(r))
                    .ok()
                    .filter(|p| p.exists())
                    .ok_or_else(|| {
                        format!("bind source {}: no such file or directory", rel.display())
                    })?;
                // The sandbox binds absolute host paths.
                let real = real.canonicalize().map_err(|e| e.to_string())?;
                let ignore = if from_context { cx.ignore } else { None };
                let source = if m.readonly && ignore.is_none() {
                    real
                } else {
                    // A private copy: `rw` writes are thrown away with it,
                    // and .dockerignored files are not in it.
                    let copy = cx.scratch.join(format!("bind-{i}"));
                    let _ = std::fs::remove_dir_all(&copy);
                    std::fs::create_dir_all(cx.scratch).map_err(|e| e.to_string())?;
                    let links = std::cell::RefCell::new(std::collections::HashMap::new());
                    let filter = crate::engine::Filter {
                        ignore,
                        rel: rel.to_string_lossy().into_owned(),
                        exclude: None,
                        xrel: String::new(),
                        owner: None,
                        mode: None,
                        links: Some(&links),
                    };
                    crate::engine::copy_tree(&real, &copy, false, &filter)
                        .map_err(|e| format!("bind source {}: {e}", rel.display()))?;
                    copy
                };
                out.mounts.push(sandbox::Mount::Bind {
                    source,
                    target,
                    readonly: m.readonly,
                });
            }
            "ssh" => {
                if m.source.is_some() {
                    return Err("ssh does not support source".into());
                }
                let id = m.id.clone().unwrap_or_else(|| "default".into());
                let Some(socket) = cx.ssh.get(&id) else {
                    if m.required {
                        return Err(format!(
                            "ssh agent {id} is required but was not given (--ssh {id}=SOCKET)"
                        ));
                    }
                    continue;
                };
                let target = match &m.target {
                    Some(_) => target_of(m, cx.workdir)?,
                    None => format!("/run/buildkit/ssh_agent.{ssh_index}"),
                };
                ssh_index += 1;
                // The first agent is the one ssh(1) finds, as in BuildKit.
                if !out.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    out.env.push(format!("SSH_AUTH_SOCK={target}"));
                }
                // The agent's own socket, bound in: ssh talks to it directly.
                out.mounts.push(sandbox::Mount::Bind {
                    source: socket.clone(),
                    target,
                    readonly: false,
                });
            }
            other => return Err(format!("unsupported mount type {other:?}")),
        }
    }
    Ok(out)
}

fn secret(m: &Mount, i: usize, cx: &MountContext<'_>, out: &mut Prepared) -> Result<(), String> {
    let id = secret_id(m).ok_or("a secret mount needs an id")?;
    let Some(data) = cx.secrets.get(&id) else {
        if m.required {
            return Err(format!(
                "secret {id} is required but was not given (--secret id={id},…)"
            ));
        }
        return Ok(());
    };
    if let Some(var) = &m.env {
        let value = std::str::from_utf8(data)
            .map_err(|_| format!("secret {id} is not UTF-8 text, so it cannot be env={var}"))?;
        out.env.push(format!("{var}={value}"));
        if m.target.is_none() {
            return Ok(());
        }
    }
    let target = match &m.target {
        Some(t) if t.starts_with('/') => crate::sources::kept_rel(t)
            .map(|p| format!("/{}", p.display()))
            .ok_or("the secret target leaves /")?,
        Some(t) => target_of(m, cx.workdir).map_err(|_| format!("invalid secret target {t:?}"))?,
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

/// `rel` under the cache dir `dir`, created as needed. Earlier RUN steps
/// wrote the cache as root: a symlink in it must not lead the bind mount to
/// a host path, so no component may be a symlink.
fn cache_subdir(dir: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut at = dir.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{} is a symlink", at.display()));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", at.display())),
            Err(_) => std::fs::create_dir(&at).map_err(|e| e.to_string())?,
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
