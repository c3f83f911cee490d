//! `ADD <git repository> <dest>`: BuildKit's git sources, fetched with the
//! host's `git` (the user's own credentials and config apply, as they do
//! for buildx).
//!
//! A source is a git repository when it is `git@host:path`, `ssh://…`,
//! `git://…`, or `http(s)://…` whose path ends in `.git`; `#REF[:SUBDIR]`
//! picks what to check out, as do the query keys `ref`, `tag`, `branch`,
//! `subdir`, `checksum`/`commit` and `keep-git-dir`. The ref is resolved to
//! a commit first (`git ls-remote`), so the cache key follows the branch. The
//! checkout's files (without `.git` unless `--keep-git-dir`) are copied into
//! the destination as a directory's contents.

use std::path::{Path, PathBuf};

use crate::fault::StepError;

/// A parsed git source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GitRef {
    pub remote: String,
    pub reference: Option<String>,
    pub subdir: Option<String>,
    /// The commit the ref must resolve to (`?checksum=` / `ADD --checksum`).
    pub checksum: Option<String>,
    pub keep_git_dir: Option<bool>,
}

/// `Some` when `src` names a git repository (then `Err` if malformed).
pub(crate) fn parse(src: &str) -> Option<Result<GitRef, StepError>> {
    let (base, fragment) = match src.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (src, None),
    };
    let (remote, query) = match base.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (base, None),
    };
    let scp_like = !remote.contains("://")
        && remote
            .split_once(':')
            .is_some_and(|(h, _)| h.contains('@') && !h.contains('/'));
    let is_git = scp_like
        || remote.starts_with("git://")
        || remote.starts_with("ssh://")
        || ((remote.starts_with("https://") || remote.starts_with("http://"))
            && remote.trim_end_matches('/').ends_with(".git"));
    if !is_git {
        return None;
    }
    let mut r = GitRef {
        remote: remote.to_owned(),
        reference: None,
        subdir: None,
        checksum: None,
        keep_git_dir: None,
    };
    if let Some(f) = fragment {
        let (reference, subdir) = match f.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (f, None),
        };
        r.reference = Some(reference).filter(|s| !s.is_empty()).map(str::to_owned);
        r.subdir = subdir.filter(|s| !s.is_empty()).map(str::to_owned);
    }
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let set = |slot: &mut Option<String>, v: String| -> Result<(), StepError> {
            match slot {
                Some(old) if *old != v => {
                    Err(StepError::user(format!("{k} conflicts: {old:?} vs {v:?}")))
                }
                _ => {
                    *slot = Some(v);
                    Ok(())
                }
            }
        };
        let result = match k {
            "ref" => set(&mut r.reference, v.to_owned()),
            "tag" => set(
                &mut r.reference,
                format!("refs/tags/{}", v.trim_start_matches("refs/tags/")),
            ),
            "branch" => set(
                &mut r.reference,
                format!("refs/heads/{}", v.trim_start_matches("refs/heads/")),
            ),
            "subdir" => set(&mut r.subdir, v.to_owned()),
            "checksum" | "commit" => set(&mut r.checksum, v.to_owned()),
            "keep-git-dir" => {
                r.keep_git_dir = Some(matches!(v, "" | "1" | "true"));
                Ok(())
            }
            other => Err(StepError::user(format!("unexpected query {other:?}"))),
        };
        if let Err(e) = result {
            return Some(Err(e.context(src)));
        }
    }
    Some(Ok(r))
}

fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Run `git ARGS`. A failing `ls-remote` or `fetch` is the remote's (the
/// network's) fault; any other failing command, or no git, this machine's.
async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, StepError> {
    let mut c = tokio::process::Command::new("git");
    if let Some(d) = dir {
        c.current_dir(d);
    }
    // Never wait for a password prompt in a build.
    c.env("GIT_TERMINAL_PROMPT", "0").args(args);
    let out = c
        .output()
        .await
        .map_err(|e| StepError::machine(format!("running git: {e} (is git installed?)")))?;
    if !out.status.success() {
        let command = args.first().copied().unwrap_or("");
        let message = format!(
            "git {command}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Err(match command {
            "ls-remote" | "fetch" => StepError::network(message),
            _ => StepError::machine(message),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The commit `r` names now: its ref (default `HEAD`) through `git
/// ls-remote`, or the ref itself when it is a full commit id.
pub(crate) async fn resolve(r: &GitRef) -> Result<String, StepError> {
    let want = r.reference.as_deref().unwrap_or("HEAD");
    let commit = if is_commit(want) {
        want.to_owned()
    } else {
        let listed = git(None, &["ls-remote", "--", &r.remote, want]).await?;
        // An exact ref first, then a branch or tag of that name; an
        // annotated tag's peeled commit (`^{}`) wins over the tag object.
        let lines: Vec<(&str, &str)> = listed.lines().filter_map(|l| l.split_once('\t')).collect();
        let pick = |name: &str| {
            lines
                .iter()
                .find(|(_, n)| *n == format!("{name}^{{}}"))
                .or_else(|| lines.iter().find(|(_, n)| *n == name))
                .map(|(c, _)| c.to_string())
        };
        pick(want)
            .or_else(|| pick(&format!("refs/heads/{want}")))
            .or_else(|| pick(&format!("refs/tags/{want}")))
            .ok_or_else(|| StepError::user(format!("{}: no ref {want:?}", r.remote)))?
    };
    if let Some(c) = &r.checksum
        && !commit.starts_with(c.as_str())
    {
        return Err(StepError::user(format!(
            "{}: {want} is commit {commit}, not {c}",
            r.remote
        )));
    }
    Ok(commit)
}

/// Check out `commit` of `r` into `dir` (created). Returns the directory
/// to copy: the checkout or its subdir, which must stay inside it.
pub(crate) async fn checkout(
    r: &GitRef,
    commit: &str,
    dir: &Path,
    keep_git_dir: bool,
) -> Result<PathBuf, StepError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)
        .map_err(|e| StepError::machine(format!("creating {}: {e}", dir.display())))?;
    git(Some(dir), &["init", "-q"]).await?;
    git(Some(dir), &["remote", "add", "origin", &r.remote]).await?;
    let want = r.reference.as_deref().unwrap_or("HEAD");
    // Shallow when the server allows it (the dumb HTTP protocol does not);
    // by commit id when the ref is one.
    let target = if is_commit(want) { commit } else { want };
    if git(
        Some(dir),
        &["fetch", "-q", "--depth", "1", "origin", target],
    )
    .await
    .is_err()
    {
        git(Some(dir), &["fetch", "-q", "--tags", "origin", target]).await?;
    }
    git(Some(dir), &["checkout", "-q", commit]).await?;
    if !keep_git_dir {
        std::fs::remove_dir_all(dir.join(".git"))
            .map_err(|e| StepError::machine(format!("removing .git: {e}")))?;
    }
    let root = match &r.subdir {
        None => dir.to_path_buf(),
        Some(s) => {
            let rel = crate::sources::resolve_in_root(dir, &crate::sources::clean(s))
                .map_err(|e| StepError::io(e).context(format!("subdir {s}")))?;
            dir.join(rel)
        }
    };
    if !root.is_dir() {
        return Err(StepError::user(format!(
            "{}: no directory {:?} at {commit}",
            r.remote, r.subdir
        )));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_sources_are_told_apart() {
        assert!(parse("https://example.com/file.tar.gz").is_none());
        assert!(parse("src/app").is_none());
        let r = parse("https://github.com/moby/buildkit.git#v0.13.0:frontend")
            .unwrap()
            .unwrap();
        assert_eq!(r.remote, "https://github.com/moby/buildkit.git");
        assert_eq!(r.reference.as_deref(), Some("v0.13.0"));
        assert_eq!(r.subdir.as_deref(), Some("frontend"));
        let r = parse("git@github.com:moby/buildkit.git").unwrap().unwrap();
        assert_eq!((r.reference, r.subdir), (None, None));
        let r = parse("https://h/r.git?branch=main&subdir=docs&keep-git-dir=true")
            .unwrap()
            .unwrap();
        assert_eq!(r.reference.as_deref(), Some("refs/heads/main"));
        assert_eq!(r.subdir.as_deref(), Some("docs"));
        assert_eq!(r.keep_git_dir, Some(true));
        assert!(parse("https://h/r.git?ref=a#b").unwrap().is_err());
        assert!(parse("https://h/r.git?nope=1").unwrap().is_err());
    }
}
