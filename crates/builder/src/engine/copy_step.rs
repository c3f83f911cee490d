//! `COPY` and `ADD`: one sequence, [`transfer`] — plan the sources, key
//! the step by what they hold, reuse a cached step or copy into a new
//! layer. ADD adds its extras on top ([`AddExtras`]): git repositories and
//! URLs fetched into the layer first, local tar archives extracted instead
//! of copied. The copying rules themselves are `crate::copy`'s.

use std::path::{Path, PathBuf};

use dockerfile::instructions::InlineFile;
use tokio::io::AsyncWrite;

use super::cache::{finish_step, hash_sources, new_step_dir, next_key};
use super::stage::{Step, StepIn, from_root};
use super::{BuildError, StageCtx, StageState, say, unsupported};
use crate::chmod::Chmod;
use crate::copy::{
    CopySpec, Owner, absolute_dest, add_archive, add_url, copy_inline, copy_source,
    exclude_matcher, ownership, plan_sources, write_inline,
};
use crate::fault::StepError;
use crate::file_hashes::FileHashes;
use crate::git::GitRef;

/// Which instruction: errors name it (ADD's without a URL's query).
#[derive(Clone, Copy)]
enum Kind {
    Copy,
    Add,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Copy => "COPY",
            Kind::Add => "ADD",
        }
    }

    fn err(
        self,
        file: &str,
        line: u32,
        path: &str,
    ) -> impl FnOnce(StepError) -> BuildError + use<> {
        let file = file.to_owned();
        let path = path.to_owned();
        move |problem| match self {
            Kind::Copy => BuildError::Copy {
                file,
                line,
                path,
                problem,
            },
            Kind::Add => BuildError::Add {
                file,
                line,
                path: regclient::redact_url(&path),
                problem,
            },
        }
    }
}

/// What COPY and ADD both have, by the same names.
#[derive(Clone, Copy)]
struct Common<'a> {
    sources: &'a [String],
    inline: &'a [InlineFile],
    /// The destination as written.
    dest: &'a str,
    excludes: &'a [String],
    chown: Option<&'a str>,
    chmod: Option<&'a str>,
}

/// A COPY or an ADD.
#[derive(Clone, Copy)]
pub(super) enum CopyOrAdd<'a> {
    Copy(&'a dockerfile::instructions::Copy),
    Add(&'a dockerfile::instructions::Add),
}

impl<'a> CopyOrAdd<'a> {
    fn common(self) -> Common<'a> {
        // The two instructions name these fields alike.
        macro_rules! common {
            ($i:expr) => {
                Common {
                    sources: &$i.sources,
                    inline: &$i.inline,
                    dest: &$i.dest,
                    excludes: &$i.excludes,
                    chown: $i.chown.as_deref(),
                    chmod: $i.chmod.as_deref(),
                }
            };
        }
        match self {
            CopyOrAdd::Copy(c) => common!(c),
            CopyOrAdd::Add(a) => common!(a),
        }
    }
}

/// One COPY or ADD, as the shared sequence takes it.
struct Transfer<'a> {
    kind: Kind,
    c: Common<'a>,
    /// The local sources (ADD's without its URLs and git repositories),
    /// read under `root`.
    sources: Vec<String>,
    root: PathBuf,
    /// `.dockerignore`, for sources from the context.
    ignore: Option<&'a dockerfile::IgnoreMatcher>,
    /// The destination made absolute.
    dest: String,
    parents: bool,
    /// The owner of what `--chown` does not own.
    default_owner: Option<Owner>,
    extras: Option<AddExtras<'a>>,
}

/// What only ADD has.
struct AddExtras<'a> {
    /// Git sources: as written, parsed, resolved commit, keep `.git`.
    gits: Vec<(String, GitRef, String, bool)>,
    urls: Vec<&'a String>,
    /// The sources that are neither: from the context.
    locals: Vec<String>,
    checksum: Option<&'a str>,
    /// Local tar archives are extracted (not with `--unpack=false`).
    unpack: bool,
}

impl AddExtras<'_> {
    fn count(&self) -> usize {
        self.urls.len() + self.gits.len()
    }

    /// What the cache key holds beyond the sources' contents: the checksum,
    /// a nonce for a URL nothing pins (it can change under us: never
    /// reused), the commits.
    fn key_parts(&self) -> Vec<String> {
        let nonce = if !self.urls.is_empty() && self.checksum.is_none() {
            format!("{:?}", std::time::SystemTime::now())
        } else {
            String::new()
        };
        let git_key: Vec<String> = self
            .gits
            .iter()
            .map(|(_, g, commit, keep)| format!("{commit} {:?} {keep}", g.subdir))
            .collect();
        vec![
            self.checksum.unwrap_or("").to_owned(),
            nonce,
            git_key.join("\n"),
        ]
    }

    /// Check out the repositories and download the URLs into `upper`.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        cx: &StageCtx<'_>,
        s: &StepIn<'_>,
        how: &CopySpec<'_>,
        dest: &str,
        into_dir: bool,
        upper: &Path,
        lowers: &[PathBuf],
    ) -> Result<(), BuildError> {
        let add_err = |path: &str| Kind::Add.err(cx.file, s.line, path);
        for (i, (source, g, commit, keep)) in self.gits.iter().enumerate() {
            let checkout = cx.req.work_dir.join(format!("git-{}-{i}", s.step_no));
            let root = crate::git::checkout(g, commit, &checkout, *keep)
                .await
                .map_err(add_err(source))?;
            let how = CopySpec {
                root: &root,
                ignore: None,
                ..*how
            };
            // The repository's files go into dest as a directory's do.
            let copied = copy_source(&how, ".", dest, true, upper, lowers);
            let _ = std::fs::remove_dir_all(&checkout);
            copied.map_err(add_err(source))?;
        }
        for source in &self.urls {
            add_url(
                cx.client.http(),
                source,
                self.checksum,
                dest,
                into_dir,
                how.owner.unwrap_or((0, 0)),
                how.mode,
                upper,
                lowers,
            )
            .await
            .map_err(add_err(source))?;
        }
        Ok(())
    }
}

/// `COPY` (from the context, an earlier stage or an image with `--from`)
/// or `ADD` (from the context, URLs and git repositories): the step line,
/// the sources resolved, then [`transfer`].
pub(super) async fn copy_or_add<W: AsyncWrite + Unpin + Send, E: AsyncWrite + Unpin + Send>(
    cx: &StageCtx<'_>,
    st: &mut StageState,
    s: &mut StepIn<'_>,
    ins: CopyOrAdd<'_>,
    out: &mut W,
    err: &mut E,
) -> Result<Step, BuildError> {
    let c = ins.common();
    let (kind, from, parents) = match ins {
        CopyOrAdd::Copy(x) => {
            refuse_link_owner_names(cx, s, x)?;
            (Kind::Copy, x.from.as_deref(), x.parents)
        }
        CopyOrAdd::Add(_) => (Kind::Add, None, false),
    };
    let shown = sources_shown(c.sources, c.inline);
    say(
        out,
        cx.tty,
        &format!("{} {} {shown} {}", s.label, kind.name(), c.dest),
    )
    .await;
    let dest = absolute_dest(&mut st.image, c.dest);
    let root = match from {
        None => cx.req.context.clone(),
        Some(from) => from_root(cx, from, s.si, s.states, s.line).await?,
    };
    let extras = match ins {
        CopyOrAdd::Add(a) => Some(add_extras(cx, s, a).await?),
        CopyOrAdd::Copy(_) => None,
    };
    let t = Transfer {
        kind,
        c,
        sources: match &extras {
            Some(x) => x.locals.clone(),
            None => c.sources.to_vec(),
        },
        root,
        ignore: if from.is_none() {
            cx.ignore.as_ref()
        } else {
            None
        },
        dest,
        parents,
        default_owner: from.is_none().then_some((0, 0)),
        extras,
    };
    transfer(cx, st, s, &t, err).await
}

/// BuildKit copies a --link layer on its own, without the image's
/// passwd/group: names cannot be resolved there.
fn refuse_link_owner_names(
    cx: &StageCtx<'_>,
    s: &StepIn<'_>,
    c: &dockerfile::instructions::Copy,
) -> Result<(), BuildError> {
    if c.link
        && let Some(chown) = &c.chown
        && chown
            .split(':')
            .any(|part| !part.is_empty() && part.parse::<u32>().is_err())
    {
        return Err(
            Kind::Copy.err(cx.file, s.line, &format!("--chown={chown}"))(StepError::user(
                "with --link, --chown takes numeric ids only (as in BuildKit)",
            )),
        );
    }
    Ok(())
}

/// ADD's git repositories (resolved to a commit now: it is part of the
/// key), URLs and local sources, told apart.
async fn add_extras<'a>(
    cx: &StageCtx<'_>,
    s: &StepIn<'_>,
    a: &'a dockerfile::instructions::Add,
) -> Result<AddExtras<'a>, BuildError> {
    let add_err = |path: &str| Kind::Add.err(cx.file, s.line, path);
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
    let is_url = |x: &str| !is_git(x) && (x.starts_with("http://") || x.starts_with("https://"));
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
            cx.file,
            s.line,
            "ADD",
            "--checksum on a local source (Docker allows it only for URLs and git)",
        ));
    }
    Ok(AddExtras {
        gits,
        urls,
        locals,
        checksum: a.checksum.as_deref(),
        unpack: a.unpack != Some(false),
    })
}

/// COPY's and ADD's shared sequence: plan the sources, key the step by
/// what they hold, then reuse a cached step or copy them into a new layer
/// (ADD's extras first).
async fn transfer<E: AsyncWrite + Unpin + Send>(
    cx: &StageCtx<'_>,
    st: &mut StageState,
    s: &mut StepIn<'_>,
    t: &Transfer<'_>,
    err: &mut E,
) -> Result<Step, BuildError> {
    let (req, file, line) = (cx.req, cx.file, s.line);
    let copy_err =
        |(path, problem): (String, StepError)| Kind::Copy.err(file, line, &path)(problem);
    let exclude = exclude_matcher(t.c.excludes).map_err(copy_err)?;
    let inline_dir = req.work_dir.join(format!("inline-{}", s.step_no));
    write_inline(&inline_dir, t.c.inline).map_err(copy_err)?;
    let extra = t.extras.as_ref().map_or(0, AddExtras::count);
    let planned = plan_sources(
        &t.root,
        &t.sources,
        &t.dest,
        t.c.dest.ends_with('/'),
        t.parents,
        t.ignore,
        t.c.inline.len() + extra,
    )
    .map_err(copy_err)?;
    let into_dir = t.c.dest.ends_with('/') || planned.len() + t.c.inline.len() + extra > 1;
    let urls = t
        .extras
        .iter()
        .flat_map(|x| x.urls.iter().map(|u| u.to_string()));
    let planned_sources: Vec<String> = planned
        .iter()
        .map(|p| p.source.clone())
        .chain(urls)
        .collect();
    let inline_names: Vec<String> = t.c.inline.iter().map(|h| h.name.clone()).collect();
    let hashes = FileHashes::for_cache(req.cache_dir.as_deref());
    let mut parts = vec![
        hash_sources(&t.root, &planned_sources, t.ignore, &hashes),
        hash_sources(&inline_dir, &inline_names, None, &hashes),
    ];
    parts.extend(t.extras.iter().flat_map(AddExtras::key_parts));
    s.key = next_key(
        &s.key,
        &parts.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let lowers = &st.lowers;
    if let Some(hit) = cx.find_cached(&s.key, lowers, err).await {
        let _ = std::fs::remove_dir_all(&inline_dir);
        return Ok(Step::Cached(hit));
    }
    let step = new_step_dir(&req.work_dir, s.step_no)?;
    let upper = step.join("upper");
    let ownership_path = match t.kind {
        Kind::Copy => t.c.chown.or(t.c.chmod).unwrap_or_default(),
        Kind::Add => "--chown/--chmod",
    };
    let (owner, mode): (Option<Owner>, Option<Chmod>) = ownership(
        t.c.chown, t.c.chmod, lowers, &step,
    )
    .map_err(t.kind.err(file, line, ownership_path))?;
    let how = CopySpec {
        root: &t.root,
        ignore: t.ignore,
        exclude: exclude.as_ref(),
        owner: owner.or(t.default_owner),
        mode: mode.as_ref(),
    };
    if let Some(x) = &t.extras {
        x.fetch(cx, s, &how, &t.dest, into_dir, &upper, lowers)
            .await?;
    }
    for p in &planned {
        let source_err = || t.kind.err(file, line, &p.source);
        let extracted = match &t.extras {
            Some(x) if x.unpack => add_archive(
                &req.context,
                &p.source,
                &p.dest,
                owner,
                &upper,
                lowers,
                cx.store.limits(),
            )
            .map_err(source_err())?,
            _ => false,
        };
        if !extracted {
            copy_source(&how, &p.source, &p.dest, p.into_dir, &upper, lowers)
                .map_err(source_err())?;
        }
    }
    copy_inline(
        &inline_dir,
        t.c.inline,
        &how,
        &t.dest,
        t.c.dest,
        &planned,
        &upper,
        lowers,
    )
    .map_err(copy_err)?;
    let _ = std::fs::remove_dir_all(&inline_dir);
    Ok(Step::Built(finish_step(&step, req, &s.key)?))
}

/// COPY/ADD sources as the log shows them, heredocs as `<<NAME`.
fn sources_shown(sources: &[String], inline: &[InlineFile]) -> String {
    sources
        .iter()
        .cloned()
        .chain(inline.iter().map(|h| format!("<<{}", h.name)))
        .collect::<Vec<_>>()
        .join(" ")
}
