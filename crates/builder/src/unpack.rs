//! Apply one image layer to a directory.
//!
//! The layer streams through decompression (gzip, zstd or none, detected by
//! magic bytes) and tar parsing; the compressed bytes are hashed for the
//! layer digest and the tar bytes for the diffID, both checked at the end.
//!
//! Hostile archives cannot escape the target: entry names are cleaned
//! lexically against the root (`../../x` becomes `x`, as containerd does),
//! and every parent directory is opened with `openat2(RESOLVE_IN_ROOT)`, so a
//! symlink planted by the layer (`a -> /etc`, then `a/passwd`) resolves
//! inside the root. Final components are created with `O_NOFOLLOW`/`*at`
//! calls relative to that parent, never through a path string.
//!
//! Whiteouts (`.wh.NAME`, `.wh..wh..opq`) either delete what earlier layers
//! put in the same directory ([`WhiteoutMode::Flatten`]) or become overlayfs
//! whiteouts ([`WhiteoutMode::Overlay`]) so the directory can serve as an
//! overlay lower layer.
//!
//! What an archive may create is limited as containerd limits it, and
//! further: block devices never; character devices only from an image
//! layer and only the standard ones (`null`, `zero`, `full`, `random`,
//! `urandom`, `tty`, `console`, `ptmx`) or `0:0` (an overlay whiteout, which
//! is what such a node means in a lower dir), anything else skipped with a
//! note in [`Applied::skipped`]; from a build context ([`Origin::Context`])
//! no device node at all. Extended attributes: `trusted.*` (overlayfs'
//! own metadata among them: `trusted.overlay.redirect`, `.opaque`…) and
//! `user.overlay.*` (the same, for overlays mounted with `userxattr`) are
//! dropped; of `security.*` only `security.capability` is kept, as
//! containerd and Docker keep it (the kernel checks its format, and the
//! sandbox mounts every rootfs `nosuid`, which ignores it at exec anyway);
//! `user.*` and POSIX ACLs (`system.posix_acl_*`) are kept.
//!
//! We hand-write this rather than use `tar::Archive::unpack`: that does not
//! know OCI whiteouts and resolves paths through the host filesystem.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use oci::{Digest, Digester};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    #[error("layer {layer}: reading the archive: {source}")]
    Read {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: entry {entry:?}: {what}: {source}")]
    Entry {
        layer: String,
        entry: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: content digest is {actual}, expected {expected}")]
    Digest {
        layer: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {layer}: diffID is {actual}, the image config says {expected}")]
    DiffId {
        layer: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("opening target directory {path}: {source}")]
    Target {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How whiteout entries are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Delete the named paths: for applying every layer into one directory.
    Flatten,
    /// Write overlayfs whiteouts (0/0 character devices, `overlay.opaque`
    /// xattrs in the `trusted.` or, with `userxattr`, the `user.` namespace).
    Overlay { userxattr: bool },
}

/// Where an archive comes from: what it may create depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    /// An image layer (pulled, or from the build cache): standard character
    /// devices and `0:0` whiteout nodes are created, nothing else.
    #[default]
    Image,
    /// A build context (or an archive from it): no device node at all.
    /// Setuid bits are kept, as Docker keeps them.
    Context,
}

/// Character devices an image layer may carry (major, minor): Docker's
/// standard set plus `console`, and `0:0`, an overlay whiteout.
const CHAR_DEVICES: &[(u32, u32)] = &[
    (0, 0),
    (1, 3),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (5, 0),
    (5, 1),
    (5, 2),
];

/// Whether an extended attribute from an archive is applied (see the
/// module docs).
pub fn xattr_allowed(key: &str) -> bool {
    if key.starts_with("trusted.") || key.starts_with("user.overlay.") {
        return false;
    }
    if let Some(rest) = key.strip_prefix("security.") {
        return rest == "capability";
    }
    true
}

/// What applying a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub digest: Digest,
    pub diff_id: Digest,
    pub entries: u64,
    /// Entries that could not be reproduced without privileges (device
    /// nodes, foreign owners), each with the reason.
    pub skipped: Vec<String>,
}

struct Hashing<R> {
    inner: R,
    digester: Digester,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digester.update(&buf[..n]);
        Ok(n)
    }
}

/// `Read` that peeks at the first bytes to pick a decompressor.
fn decompressor<'a, R: Read + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        let n = r.read(&mut magic[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let head = io::Cursor::new(magic[..got].to_vec()).chain(r);
    Ok(match &magic[..got] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(head)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::new(head)?),
        _ => Box::new(head),
    })
}

/// Clean an entry name against the root: no leading `/`, no `.`, and `..`
/// never climbs above the root. `None` for the root itself.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Apply the layer read from `blob` (whose digest must be `digest`) to
/// `target`. With `diff_id`, the uncompressed tar must hash to it too.
///
/// `lowers` (top-most first) are the layers below, for
/// [`WhiteoutMode::Overlay`]: a directory the archive implies but does not
/// list takes its mode and owner from them, as it would through an overlay
/// copy-up, instead of shadowing them with defaults.
pub fn apply_layer(
    blob: impl Read,
    digest: &Digest,
    diff_id: Option<&Digest>,
    target: &Path,
    mode: WhiteoutMode,
    lowers: &[PathBuf],
) -> Result<Applied, UnpackError> {
    apply_archive(blob, digest, diff_id, target, mode, lowers, Origin::Image)
}

/// [`apply_layer`] for an archive of `origin`: a build context passes
/// [`Origin::Context`], so that it creates no device node.
pub fn apply_archive(
    blob: impl Read,
    digest: &Digest,
    diff_id: Option<&Digest>,
    target: &Path,
    mode: WhiteoutMode,
    lowers: &[PathBuf],
    origin: Origin,
) -> Result<Applied, UnpackError> {
    let layer = digest.to_string();
    let read_err = |source| UnpackError::Read {
        layer: layer.clone(),
        source,
    };
    let root = rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Target {
        path: target.to_owned(),
        source: e.into(),
    })?;
    let mut lower_fds = Vec::new();
    for l in lowers {
        lower_fds.push(
            rustix::fs::open(
                l,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| UnpackError::Target {
                path: l.clone(),
                source: e.into(),
            })?,
        );
    }
    let mut compressed = Hashing {
        inner: blob,
        digester: Digester::new(digest.algorithm()),
    };
    let (entries, actual_diff, skipped) = {
        let mut tar_bytes = Hashing {
            inner: decompressor(&mut compressed).map_err(read_err)?,
            digester: Digester::new(diff_id.map_or(oci::Algorithm::Sha256, Digest::algorithm)),
        };
        let mut ctx = Ctx {
            root,
            layer: layer.clone(),
            mode,
            created: HashSet::new(),
            dirs: Vec::new(),
            skipped: Vec::new(),
            is_root: rustix::process::geteuid().is_root(),
            lowers: lower_fds,
            origin,
        };
        let mut entries = 0u64;
        let mut broken = None;
        {
            let mut archive = tar::Archive::new(&mut tar_bytes);
            for entry in archive.entries().map_err(read_err)? {
                match entry {
                    Ok(entry) => {
                        ctx.apply(entry)?;
                        entries += 1;
                    }
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(e) = broken {
            // Some writers (umoci 0.4) end the archive right after the last
            // file's data, without padding or end blocks; Go's reader, and so
            // containerd, accept that. Anything else is a broken archive.
            let mut probe = [0u8; 1];
            let at_end = entries > 0 && matches!(tar_bytes.read(&mut probe), Ok(0));
            if !at_end {
                return Err(read_err(e));
            }
        }
        // Directory times last: creating children would have changed them.
        for (rel, times) in std::mem::take(&mut ctx.dirs) {
            let _ = rustix::fs::utimensat(&ctx.root, &rel, &times, AtFlags::SYMLINK_NOFOLLOW);
        }
        io::copy(&mut tar_bytes, &mut io::sink()).map_err(read_err)?;
        (entries, tar_bytes.digester.finish(), ctx.skipped)
    };
    io::copy(&mut compressed, &mut io::sink()).map_err(read_err)?;
    let actual = compressed.digester.finish();
    if &actual != digest {
        return Err(UnpackError::Digest {
            layer,
            expected: digest.clone(),
            actual,
        });
    }
    if let Some(expected) = diff_id
        && expected != &actual_diff
    {
        return Err(UnpackError::DiffId {
            layer,
            expected: expected.clone(),
            actual: actual_diff,
        });
    }
    Ok(Applied {
        digest: actual,
        diff_id: actual_diff,
        entries,
        skipped,
    })
}

struct Ctx {
    root: OwnedFd,
    layer: String,
    mode: WhiteoutMode,
    /// Paths this layer created, which an opaque whiteout must keep.
    created: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, Timestamps)>,
    skipped: Vec<String>,
    is_root: bool,
    lowers: Vec<OwnedFd>,
    origin: Origin,
}

fn ts(secs: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: secs.try_into().unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Ctx {
    fn err(&self, entry: &Path, what: &'static str) -> impl FnOnce(io::Error) -> UnpackError {
        let (layer, entry) = (self.layer.clone(), entry.display().to_string());
        move |source| UnpackError::Entry {
            layer,
            entry,
            what,
            source,
        }
    }

    /// Open directory `rel` inside the root, creating missing components;
    /// symlinks on the way resolve inside the root (as containerd's
    /// `fs.RootPath` does), dangling ones by creating what they point at.
    fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fast = rustix::fs::openat2(
            &self.root,
            if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                rel
            },
            flags,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        );
        match fast {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        // Walk it one component at a time, keeping `cur` free of symlinks.
        let strict =
            ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let open = |p: &Path| {
            rustix::fs::openat2(
                &self.root,
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                },
                flags,
                Mode::empty(),
                strict,
            )
        };
        let mut pending: std::collections::VecDeque<std::ffi::OsString> =
            rel.iter().map(|c| c.to_owned()).collect();
        let mut cur = PathBuf::new();
        let mut links = 0;
        while let Some(c) = pending.pop_front() {
            if c == "." || c.is_empty() || c == "/" {
                continue;
            }
            if c == ".." {
                cur.pop();
                continue;
            }
            let dir = open(&cur)?;
            match rustix::fs::statat(&dir, &c, AtFlags::SYMLINK_NOFOLLOW) {
                Err(rustix::io::Errno::NOENT) => {
                    cur.push(&c);
                    match rustix::fs::mkdirat(&dir, &c, Mode::from_raw_mode(0o755)) {
                        Ok(()) => self.inherit(&cur)?,
                        Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
                Ok(st) => match rustix::fs::FileType::from_raw_mode(st.st_mode) {
                    rustix::fs::FileType::Directory => cur.push(&c),
                    rustix::fs::FileType::Symlink => {
                        links += 1;
                        if links > 40 {
                            return Err(rustix::io::Errno::LOOP.into());
                        }
                        let target = rustix::fs::readlinkat(&dir, &c, Vec::new())?;
                        let target = PathBuf::from(
                            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                                target.as_bytes(),
                            ),
                        );
                        if target.is_absolute() {
                            cur = PathBuf::new();
                        }
                        for (i, part) in target.iter().enumerate() {
                            pending.insert(i, part.to_owned());
                        }
                    }
                    _ => return Err(rustix::io::Errno::NOTDIR.into()),
                },
            }
        }
        Ok(open(&cur)?)
    }

    /// Give the implied directory `rel` the mode and owner it has in the
    /// top-most lower layer that has it.
    fn inherit(&self, rel: &Path) -> io::Result<()> {
        let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        for lower in &self.lowers {
            let Ok(fd) = rustix::fs::openat2(
                lower,
                rel,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                how,
            ) else {
                continue;
            };
            let st = rustix::fs::fstat(&fd)?;
            let new = rustix::fs::openat2(
                &self.root,
                rel,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                how,
            )?;
            if self.is_root {
                rustix::fs::fchown(
                    &new,
                    Some(rustix::fs::Uid::from_raw(st.st_uid)),
                    Some(rustix::fs::Gid::from_raw(st.st_gid)),
                )?;
            }
            rustix::fs::fchmod(&new, Mode::from_raw_mode(st.st_mode & 0o7777))?;
            break;
        }
        Ok(())
    }

    /// Remove `name` in `dir` whatever it is (a directory recursively), without following links.
    fn remove(&self, dir: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<()> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(st)
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Directory =>
            {
                // Through the already-resolved directory fd, so nothing above
                // `name` is looked up again; remove_dir_all does not follow links.
                let path = PathBuf::from(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(dir)
                ))
                .join(name);
                std::fs::remove_dir_all(path)
            }
            Ok(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
        }
    }

    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry
            .path()
            .map_err(|e| UnpackError::Read {
                layer: self.layer.clone(),
                source: e,
            })?
            .into_owned();
        let Some(rel) = clean(&raw) else {
            return Ok(()); // the root itself: nothing to create
        };
        let name = rel.file_name().unwrap_or(rel.as_os_str()).to_owned();
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_owned();
        let parent = self
            .open_dir(&parent_rel)
            .map_err(self.err(&rel, "opening its directory"))?;
        let name_str = name.to_string_lossy();

        if name_str == ".wh..wh..opq" {
            return self
                .opaque(&parent, &parent_rel)
                .map_err(self.err(&rel, "applying an opaque whiteout"));
        }
        if let Some(hidden) = name_str.strip_prefix(".wh.") {
            let hidden = std::ffi::OsString::from(hidden);
            return match self.mode {
                WhiteoutMode::Flatten => self.remove(&parent, &hidden),
                WhiteoutMode::Overlay { .. } => self.remove(&parent, &hidden).and_then(|()| {
                    rustix::fs::mknodat(
                        &parent,
                        &hidden,
                        rustix::fs::FileType::CharacterDevice,
                        Mode::empty(),
                        rustix::fs::makedev(0, 0),
                    )
                    .map_err(io::Error::from)
                }),
            }
            .map_err(self.err(&rel, "applying a whiteout"));
        }

        let header = entry.header().clone();
        let mode = Mode::from_raw_mode(header.mode().unwrap_or(0o644) & 0o7777);
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();
        let xattrs: Vec<(String, Vec<u8>)> = entry
            .pax_extensions()
            .ok()
            .flatten()
            .map(|exts| {
                exts.filter_map(Result::ok)
                    .filter_map(|e| {
                        Some((
                            e.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_owned(),
                            e.value_bytes().to_vec(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (xattrs, dropped): (Vec<_>, Vec<_>) =
            xattrs.into_iter().partition(|(k, _)| xattr_allowed(k));
        for (k, _) in dropped {
            self.skipped
                .push(format!("{}: xattr {k} dropped", rel.display()));
        }

        // A device node this archive may not create leaves what is there.
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            let (major, minor) = (
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
            );
            if let Some(why) = self.refuse_device(kind, major, minor) {
                self.skipped.push(format!(
                    "{}: {why} {major}:{minor} not created",
                    rel.display()
                ));
                return Ok(());
            }
        }

        // Whatever is there goes, except a directory replaced by a directory.
        let existing_dir = matches!(
            rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW),
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
        );
        if !(kind.is_dir() && existing_dir) {
            self.remove(&parent, &name)
                .map_err(self.err(&rel, "replacing what was there"))?;
        }
        self.created.insert(rel.clone());

        match kind {
            t if t.is_dir() => {
                if !existing_dir {
                    rustix::fs::mkdirat(&parent, &name, mode)
                        .map_err(|e| self.err(&rel, "creating the directory")(e.into()))?;
                }
                let fd = rustix::fs::openat(
                    &parent,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.err(&rel, "opening the directory")(e.into()))?;
                self.own(&fd, &rel, uid, gid);
                rustix::fs::fchmod(&fd, mode)
                    .map_err(|e| self.err(&rel, "setting its mode")(e.into()))?;
                self.set_xattrs(&fd, &rel, &xattrs);
                self.dirs.push((rel, ts(mtime)));
            }
            t if t.is_file() || t == tar::EntryType::Continuous => {
                let fd = rustix::fs::openat(
                    &parent,
                    &name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.err(&rel, "creating the file")(e.into()))?;
                let mut file = std::fs::File::from(fd);
                let size = header.size().unwrap_or(0);
                let written =
                    io::copy(&mut entry, &mut file).map_err(self.err(&rel, "writing the file"))?;
                if written != size {
                    return Err(self.err(&rel, "reading its data")(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("archive ends after {written} of {size} bytes"),
                    )));
                }
                self.own(&file, &rel, uid, gid);
                // After chown, which clears setuid bits.
                rustix::fs::fchmod(&file, mode)
                    .map_err(|e| self.err(&rel, "setting its mode")(e.into()))?;
                self.set_xattrs(&file, &rel, &xattrs);
                let _ = rustix::fs::futimens(&file, &ts(mtime));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(self.err(&rel, "reading the link target"))?
                    .ok_or_else(|| {
                        self.err(&rel, "reading the link target")(io::Error::other("missing"))
                    })?
                    .into_owned();
                rustix::fs::symlinkat(&target, &parent, &name)
                    .map_err(|e| self.err(&rel, "creating the symlink")(e.into()))?;
                if self.is_root {
                    let _ = rustix::fs::chownat(
                        &parent,
                        &name,
                        Some(rustix::fs::Uid::from_raw(uid as u32)),
                        Some(rustix::fs::Gid::from_raw(gid as u32)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    );
                }
                let _ =
                    rustix::fs::utimensat(&parent, &name, &ts(mtime), AtFlags::SYMLINK_NOFOLLOW);
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(self.err(&rel, "reading the link target"))?
                    .and_then(|t| clean(&t))
                    .ok_or_else(|| {
                        self.err(&rel, "reading the link target")(io::Error::other(
                            "empty hardlink target",
                        ))
                    })?;
                let tdir = self
                    .open_dir(target.parent().unwrap_or(Path::new("")))
                    .map_err(self.err(&rel, "resolving the hardlink target"))?;
                let tname = target.file_name().unwrap_or(target.as_os_str());
                rustix::fs::linkat(&tdir, tname, &parent, &name, AtFlags::empty())
                    .map_err(|e| self.err(&rel, "creating the hardlink")(e.into()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => rustix::fs::FileType::CharacterDevice,
                    tar::EntryType::Block => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                let dev = rustix::fs::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                match rustix::fs::mknodat(&parent, &name, ft, mode, dev) {
                    Ok(()) => {
                        if self.is_root {
                            let _ = rustix::fs::chownat(
                                &parent,
                                &name,
                                Some(rustix::fs::Uid::from_raw(uid as u32)),
                                Some(rustix::fs::Gid::from_raw(gid as u32)),
                                AtFlags::SYMLINK_NOFOLLOW,
                            );
                        }
                    }
                    Err(rustix::io::Errno::PERM) => self
                        .skipped
                        .push(format!("{}: device node needs privileges", rel.display())),
                    Err(e) => return Err(self.err(&rel, "creating the device node")(e.into())),
                }
            }
            other => self.skipped.push(format!(
                "{}: unsupported entry type {other:?}",
                rel.display()
            )),
        }
        Ok(())
    }

    /// Why a device entry is not created, if it is not.
    fn refuse_device(&self, kind: tar::EntryType, major: u32, minor: u32) -> Option<&'static str> {
        match (kind, self.origin) {
            (tar::EntryType::Block, _) => Some("block device"),
            (tar::EntryType::Char, Origin::Context) => {
                Some("character device from a build context")
            }
            (tar::EntryType::Char, Origin::Image) if !CHAR_DEVICES.contains(&(major, minor)) => {
                Some("non-standard character device")
            }
            _ => None,
        }
    }

    fn own(&mut self, fd: &impl AsFd, rel: &Path, uid: u64, gid: u64) {
        let ids = (u32::try_from(uid), u32::try_from(gid));
        let (Ok(uid), Ok(gid)) = ids else {
            self.skipped
                .push(format!("{}: owner {uid}:{gid} out of range", rel.display()));
            return;
        };
        if let Err(e) = rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        ) {
            // Without privileges (rootless, no id map) foreign owners cannot
            // be reproduced; say so rather than fail the layer.
            self.skipped
                .push(format!("{}: chown {uid}:{gid}: {e}", rel.display()));
        }
    }

    fn set_xattrs(&mut self, fd: &impl AsFd, rel: &Path, xattrs: &[(String, Vec<u8>)]) {
        for (k, v) in xattrs {
            if let Err(e) =
                rustix::fs::fsetxattr(fd, k.as_str(), v, rustix::fs::XattrFlags::empty())
            {
                self.skipped
                    .push(format!("{}: xattr {k}: {e}", rel.display()));
            }
        }
    }

    fn opaque(&self, dir: &OwnedFd, dir_rel: &Path) -> io::Result<()> {
        match self.mode {
            WhiteoutMode::Overlay { userxattr } => {
                let key = if userxattr {
                    "user.overlay.opaque"
                } else {
                    "trusted.overlay.opaque"
                };
                Ok(rustix::fs::fsetxattr(
                    dir,
                    key,
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )?)
            }
            WhiteoutMode::Flatten => {
                let listing = rustix::fs::Dir::read_from(dir)?;
                let mut doomed = Vec::new();
                for e in listing {
                    let e = e?;
                    let n = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                        e.file_name().to_bytes(),
                    );
                    if n == "." || n == ".." || self.created.contains(&dir_rel.join(n)) {
                        continue;
                    }
                    doomed.push(n.to_owned());
                }
                for n in doomed {
                    self.remove(dir, &n)?;
                }
                Ok(())
            }
        }
    }
}
