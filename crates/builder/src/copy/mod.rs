//! COPY and ADD onto an image being built, with Docker's rules: which
//! sources a COPY takes (`plan_sources`: wildcards, `--parents`,
//! `.dockerignore`), where each one lands (`copy_source`: the directory
//! rules, destinations through the image's symlinks), what is written
//! (`copy_tree`: `--chown`, `--chmod`, `--exclude`, hardlinks kept, times
//! kept), heredoc sources; ADD's archives and URLs are `add`'s, owners
//! (`--chown`) and the modes of new directories `owner`'s. Everything is
//! written into a step's upper dir; the image below is read through
//! [`crate::layered`].

mod add;
mod owner;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::chmod::Chmod;
use crate::fault::StepError;
use crate::image::NewImage;
use crate::layered::{is_dir_in_layers, lookup_layers, resolve_in_layers};

pub(crate) use add::{add_archive, add_url};
pub(crate) use owner::{Owner, chown_ids, new_dir_mode, ownership};

/// `--exclude` patterns as one matcher (the `.dockerignore` syntax,
/// `!` exceptions included, as BuildKit's patternmatcher reads them).
/// Errors, here and in the other steps of a COPY, come with the path (or
/// flag) they are about.
pub(crate) fn exclude_matcher(
    excludes: &[String],
) -> Result<Option<dockerfile::IgnoreMatcher>, (String, StepError)> {
    if excludes.is_empty() {
        return Ok(None);
    }
    dockerfile::IgnoreMatcher::parse(&excludes.join("\n"))
        .map(Some)
        .map_err(|e| {
            (
                format!("--exclude={}", excludes.join(",")),
                StepError::user(e),
            )
        })
}

/// COPY/ADD heredocs written out as files named after their delimiter
/// (mode 0644, as BuildKit makes them), outside any layer.
pub(crate) fn write_inline(
    dir: &Path,
    inline: &[dockerfile::instructions::InlineFile],
) -> Result<(), (String, StepError)> {
    let _ = std::fs::remove_dir_all(dir);
    if inline.is_empty() {
        return Ok(());
    }
    let fail = |name: &str, e: std::io::Error| (format!("<<{name}"), StepError::machine(e));
    std::fs::create_dir_all(dir).map_err(|e| fail("", e))?;
    for h in inline {
        if h.name.contains('/') || h.name == "." || h.name == ".." {
            return Err((format!("<<{}", h.name), StepError::user("not a file name")));
        }
        let at = dir.join(&h.name);
        std::fs::write(&at, &h.content).map_err(|e| fail(&h.name, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| fail(&h.name, e))?;
    }
    Ok(())
}

/// Copy the heredoc files of a COPY/ADD to `dest` (into it when it is a
/// directory by Docker's rules).
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_inline(
    dir: &Path,
    inline: &[dockerfile::instructions::InlineFile],
    how: &CopySpec<'_>,
    dest: &str,
    dest_as_written: &str,
    planned: &[Planned],
    upper: &Path,
    lowers: &[PathBuf],
) -> Result<(), (String, StepError)> {
    let into_dir = dest_as_written.ends_with('/') || planned.len() + inline.len() > 1;
    let spec = CopySpec {
        root: dir,
        ignore: None,
        exclude: None,
        owner: how.owner,
        mode: how.mode,
    };
    for h in inline {
        copy_source(&spec, &h.name, dest, into_dir, upper, lowers)
            .map_err(|e| (format!("<<{}", h.name), e))?;
    }
    Ok(())
}

/// One source of a COPY/ADD after wildcard expansion, with where it goes.
pub(crate) struct Planned {
    pub source: String,
    pub dest: String,
    pub into_dir: bool,
}

/// Expand the sources of a COPY/ADD (wildcards; `--parents`) into what to
/// copy where. Docker's rule: several sources need a directory destination
/// written with a trailing `/` (`extra` counts heredocs and URLs).
pub(crate) fn plan_sources(
    root: &Path,
    sources: &[String],
    dest: &str,
    dest_is_dir: bool,
    parents: bool,
    ignore: Option<&dockerfile::IgnoreMatcher>,
    extra: usize,
) -> Result<Vec<Planned>, (String, StepError)> {
    use crate::sources::{expand, has_wildcards, kept_rel, split_parents};
    let ignored = |m: &str| {
        let is_dir = root.join(m).is_dir();
        let rel = clean_rel(m).map(|p| p.to_string_lossy().into_owned());
        !is_dir
            && ignore
                .zip(rel)
                .is_some_and(|(i, r)| !r.is_empty() && i.matches(&r, false))
    };
    let mut found: Vec<(String, Option<PathBuf>)> = Vec::new();
    for s in sources {
        let leaves = || (s.clone(), StepError::user("the source leaves the context"));
        if parents {
            let (pivot, kept) = split_parents(s);
            let pivot_rel = kept_rel(&pivot).ok_or_else(leaves)?;
            let joined = if pivot.is_empty() {
                kept.clone()
            } else {
                format!("{pivot}/{kept}")
            };
            for m in expand(root, &joined) {
                if has_wildcards(&joined) && ignored(&m) {
                    continue;
                }
                let below = clean_rel(&m)
                    .and_then(|p| p.strip_prefix(&pivot_rel).ok().map(Path::to_path_buf))
                    .ok_or_else(leaves)?;
                found.push((m, Some(below)));
            }
        } else {
            for m in expand(root, s) {
                if has_wildcards(s) && ignored(&m) {
                    continue;
                }
                found.push((m, None));
            }
        }
    }
    let total = found.len() + extra;
    if total > 1 && !dest_is_dir && !parents {
        return Err((
            sources.join(" "),
            StepError::user(
                "with more than one source, the destination must be a directory and end with a /",
            ),
        ));
    }
    let into_dir = dest_is_dir || total > 1;
    let base = dest.trim_end_matches('/');
    Ok(found
        .into_iter()
        .map(|(source, kept)| match kept {
            None => Planned {
                source,
                dest: dest.to_owned(),
                into_dir,
            },
            Some(k) => {
                // --parents: the path below the pivot is kept under dest.
                let is_dir = root.join(&source).is_dir();
                let under = if is_dir {
                    k
                } else {
                    k.parent().map(Path::to_path_buf).unwrap_or_default()
                };
                let dest = if under.as_os_str().is_empty() {
                    format!("{base}/")
                } else {
                    format!("{base}/{}/", under.display())
                };
                Planned {
                    source,
                    dest,
                    into_dir: true,
                }
            }
        })
        .collect())
}

/// A COPY/ADD destination made absolute against the current WORKDIR.
pub(crate) fn absolute_dest(image: &mut NewImage, dest: &str) -> String {
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

/// `/a/./b/../c` → `a/c`; `..` at the top stays there, as in BuildKit
/// (`COPY ../x` reads the context's `x`). Always `Some`.
pub(crate) fn clean_rel(p: &str) -> Option<PathBuf> {
    Some(crate::sources::clean(p))
}

/// Create `rel` (already resolved) under `upper`; directories that exist
/// below keep their metadata (as an overlay copy-up would), new ones are
/// 0755 and belong to `owner`.
pub(crate) fn make_dirs(
    upper: &Path,
    rel: &Path,
    lowers: &[PathBuf],
    owner: (u32, u32),
) -> std::io::Result<()> {
    make_dirs_mode(upper, rel, lowers, owner, 0o755)
}

/// [`make_dirs`] with the mode of the new directories.
pub(crate) fn make_dirs_mode(
    upper: &Path,
    rel: &Path,
    lowers: &[PathBuf],
    owner: (u32, u32),
    mode: u32,
) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut cur = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        let at = upper.join(&cur);
        if at.is_dir() {
            continue;
        }
        std::fs::create_dir(&at)?;
        // What the image has there (a copy-up keeps its metadata); looked
        // up without following links on the host.
        let below = lookup_layers(None, lowers, &cur)
            .and_then(|p| std::fs::symlink_metadata(p).ok())
            .filter(|m| m.is_dir());
        if let Some(m) = below {
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            std::os::unix::fs::chown(&at, Some(m.uid()), Some(m.gid()))?;
        } else {
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))?;
            std::os::unix::fs::chown(&at, Some(owner.0), Some(owner.1))?;
        }
    }
    Ok(())
}

/// How one COPY/ADD copies: where sources are read, what is left out,
/// and the owner and mode of what it writes.
pub(crate) struct CopySpec<'a> {
    pub root: &'a Path,
    pub ignore: Option<&'a dockerfile::IgnoreMatcher>,
    pub exclude: Option<&'a dockerfile::IgnoreMatcher>,
    /// `None`: keep the source's owners (COPY --from without --chown, as
    /// BuildKit does); the context's files are given `Some((0, 0))`.
    pub owner: Option<(u32, u32)>,
    pub mode: Option<&'a Chmod>,
}

/// Docker's COPY for one plain source (wildcards already expanded): a file
/// goes to `dest` (or into it when it is a directory); a directory's
/// contents are copied into `dest`. Files are owned by root unless
/// `--chown`; modes and times are kept.
pub(crate) fn copy_source(
    how: &CopySpec<'_>,
    source: &str,
    dest: &str,
    into_dir: bool,
    upper: &Path,
    lowers: &[PathBuf],
) -> Result<(), StepError> {
    let (context, ignore) = (how.root, how.ignore);
    let rel = clean_rel(source)
        .ok_or_else(|| StepError::user("the source is outside the build context"))?;
    // Symlinks on the way are followed inside the context (or stage), as
    // BuildKit does: an absolute target or `..` never leaves it.
    let real_rel = crate::sources::resolve_in_root(context, &rel).map_err(StepError::io)?;
    let real = context.join(&real_rel);
    let meta = std::fs::symlink_metadata(&real)
        .map_err(|_| StepError::user("no such file or directory in the copy source"))?;
    // Neither the path named nor the one a link leads to may be ignored
    // (BuildKit never sends an ignored file, so a link to one dangles).
    let rel_str = rel.to_string_lossy().into_owned();
    let real_str = real_rel.to_string_lossy().into_owned();
    let ignored = |p: &str| ignore.is_some_and(|i| !p.is_empty() && i.matches(p, meta.is_dir()));
    if (ignored(&rel_str) || ignored(&real_str)) && !meta.is_dir() {
        return Err(StepError::user("excluded by .dockerignore"));
    }
    let rel_str = real_str;
    let from = real;
    // The destination follows symlinks of the image inside its root, as
    // BuildKit's copy does (`COPY f /link-to-dir/` writes into the dir).
    let dest_rel = resolve_in_layers(Some(upper), lowers, &crate::sources::clean(dest))
        .map_err(|e| StepError::io(e).context("resolving the destination"))?;
    let target_rel = if meta.is_dir() {
        dest_rel.clone()
    } else if into_dir || is_dir_in_layers(Some(upper), lowers, &dest_rel) {
        dest_rel.join(rel.file_name().unwrap_or(rel.as_os_str()))
    } else {
        dest_rel.clone()
    };
    let parent = if meta.is_dir() {
        target_rel.as_path()
    } else {
        target_rel.parent().unwrap_or(Path::new(""))
    };
    // Directories made on the way belong to the --chown user (BuildKit's
    // MkdirAll), root otherwise, with an octal --chmod's mode (the one a
    // directory source's contents go into too).
    make_dirs_mode(
        upper,
        parent,
        lowers,
        how.owner.unwrap_or((0, 0)),
        new_dir_mode(how.mode),
    )
    .map_err(|e| StepError::io(e).context(format!("creating {}", parent.display())))?;
    let links = std::cell::RefCell::new(HashMap::new());
    let filter = Filter {
        ignore,
        rel: rel_str,
        exclude: how.exclude,
        xrel: String::new(),
        owner: how.owner,
        links: Some(&links),
        mode: how.mode,
    };
    copy_tree(&from, &upper.join(&target_rel), meta.is_dir(), &filter).map_err(StepError::io)
}

/// Which paths COPY may take: `.dockerignore` (paths relative to the
/// context, `rel`) and `--exclude` (paths relative to the source being
/// copied, `xrel`; the source itself is never excluded, as in BuildKit).
pub(crate) struct Filter<'a> {
    pub ignore: Option<&'a dockerfile::IgnoreMatcher>,
    pub rel: String,
    pub exclude: Option<&'a dockerfile::IgnoreMatcher>,
    pub xrel: String,
    /// Owner of everything copied (`--chown`; root for COPY); `None` keeps
    /// the source's owners (a bind mount's copy).
    pub owner: Option<(u32, u32)>,
    /// `--chmod`: the mode of everything copied, or how to change it.
    pub mode: Option<&'a Chmod>,
    /// Files copied so far by (device, inode): a hardlink within one copy
    /// stays a hardlink, as BuildKit keeps it.
    pub links: Option<&'a std::cell::RefCell<HashMap<(u64, u64), PathBuf>>>,
}

impl Filter<'_> {
    pub(crate) fn child(&self, name: &std::ffi::OsStr) -> Filter<'_> {
        let name = name.to_string_lossy();
        let join = |base: &str| {
            if base.is_empty() {
                name.clone().into_owned()
            } else {
                format!("{base}/{name}")
            }
        };
        Filter {
            ignore: self.ignore,
            rel: join(&self.rel),
            exclude: self.exclude,
            xrel: join(&self.xrel),
            owner: self.owner,
            mode: self.mode,
            links: self.links,
        }
    }

    pub(crate) fn decide(&self, is_dir: bool) -> dockerfile::Decision {
        use dockerfile::Decision;
        let ignored = match self.ignore {
            Some(i) if !self.rel.is_empty() => i.decide(&self.rel, is_dir),
            _ => Decision::Include,
        };
        let excluded = match self.exclude {
            Some(x) if !self.xrel.is_empty() => x.decide(&self.xrel, is_dir),
            _ => Decision::Include,
        };
        // The stricter of the two.
        match (ignored, excluded) {
            (Decision::SkipDir, _) | (_, Decision::SkipDir) => Decision::SkipDir,
            (Decision::Exclude, _) | (_, Decision::Exclude) => Decision::Exclude,
            _ => Decision::Include,
        }
    }
}

pub(crate) fn owner_of(filter: &Filter<'_>, meta: &std::fs::Metadata) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    filter.owner.unwrap_or((meta.uid(), meta.gid()))
}

pub(crate) fn copy_tree(
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
        // The directory a source's contents go into keeps its own
        // metadata (new: 0755), as in BuildKit.
        if contents_only {
            return Ok(());
        }
        std::fs::set_permissions(to, meta.permissions())?;
    } else if ft.is_symlink() {
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
        let (uid, gid) = owner_of(filter, &meta);
        std::os::unix::fs::lchown(to, Some(uid), Some(gid))?;
        return Ok(());
    } else if ft.is_file() {
        use std::os::unix::fs::MetadataExt;
        if meta.nlink() > 1
            && let Some(links) = filter.links
        {
            let id = (meta.dev(), meta.ino());
            let first = links.borrow().get(&id).cloned();
            match first {
                Some(first) => {
                    let _ = std::fs::remove_file(to);
                    return std::fs::hard_link(first, to);
                }
                None => {
                    links.borrow_mut().insert(id, to.to_path_buf());
                }
            }
        }
        return copy_file(from, to, &meta, filter);
    } else {
        return Err(std::io::Error::other(format!(
            "{}: only files, directories and symlinks can be copied",
            from.display()
        )));
    }
    let (uid, gid) = owner_of(filter, &meta);
    std::os::unix::fs::chown(to, Some(uid), Some(gid))?;
    if let Some(chmod) = filter.mode {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = chmod.apply(meta.mode(), ft.is_dir());
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

/// One regular file: contents, owner, then mode (a chown clears setuid and
/// setgid, so the mode comes after it), then times, all through the one
/// descriptor; a 10,000-file COPY is made of these calls. A symlink already
/// at `to` (an earlier source of the same COPY) is replaced, never followed.
fn copy_file(
    from: &Path,
    to: &Path,
    meta: &std::fs::Metadata,
    filter: &Filter<'_>,
) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    let mut src = std::fs::File::options()
        .read(true)
        .custom_flags(nofollow)
        .open(from)?;
    let create = || {
        std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nofollow)
            .open(to)
    };
    let mut dst = match create() {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            std::fs::remove_file(to)?;
            create()?
        }
        other => other?,
    };
    std::io::copy(&mut src, &mut dst)?;
    let (uid, gid) = owner_of(filter, meta);
    std::os::unix::fs::fchown(&dst, Some(uid), Some(gid))?;
    let mode = match filter.mode {
        Some(chmod) => chmod.apply(meta.mode(), false),
        None => meta.mode() & 0o7777,
    };
    dst.set_permissions(std::fs::Permissions::from_mode(mode))?;
    dst.set_times(std::fs::FileTimes::new().set_modified(meta.modified()?))
}
