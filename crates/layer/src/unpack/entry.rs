//! Writing one archive entry inside the target: parents opened with
//! `openat2(RESOLVE_IN_ROOT)`, the final component created with `*at` calls
//! and `O_NOFOLLOW` relative to it; whiteouts applied as the mode says.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

use super::{CHAR_DEVICES, Origin, UnpackError, WhiteoutMode, clean, xattr_allowed};

/// An entry's metadata, as it is applied.
struct Meta {
    mode: Mode,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// A device entry's major and minor numbers (0 when absent).
fn device(header: &tar::Header) -> (u32, u32) {
    (
        header.device_major().ok().flatten().unwrap_or(0),
        header.device_minor().ok().flatten().unwrap_or(0),
    )
}

/// What applying one layer knows: the target, the lower layers below it,
/// what it made so far and what it skipped.
pub(super) struct Ctx {
    pub root: OwnedFd,
    pub layer: String,
    pub mode: WhiteoutMode,
    /// Paths this layer created, which an opaque whiteout must keep.
    pub created: HashSet<PathBuf>,
    pub dirs: Vec<(PathBuf, Timestamps)>,
    pub skipped: Vec<String>,
    pub is_root: bool,
    pub lowers: Vec<OwnedFd>,
    pub origin: Origin,
}

pub(super) fn ts(secs: u64) -> Timestamps {
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

    /// Write one entry of the archive: a whiteout applied, or what it
    /// describes created in place of what was there.
    pub(super) fn apply<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
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
        if let Some(done) = self.whiteout(&parent, &parent_rel, &rel, &name.to_string_lossy()) {
            return done;
        }

        let header = entry.header().clone();
        let meta = Meta {
            mode: Mode::from_raw_mode(header.mode().unwrap_or(0o644) & 0o7777),
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
            mtime: header.mtime().unwrap_or(0),
            xattrs: self.xattrs(&mut entry, &rel),
        };
        let kind = header.entry_type();

        // A device node this archive may not create leaves what is there.
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            let (major, minor) = device(&header);
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

        let at = (&parent, name.as_os_str());
        match kind {
            t if t.is_dir() => self.create_dir(at, rel, existing_dir, &meta),
            t if t.is_file() || t == tar::EntryType::Continuous => {
                self.create_file(at, &rel, &mut entry, header.size().unwrap_or(0), &meta)
            }
            tar::EntryType::Symlink => self.create_symlink(at, &rel, &entry, &meta),
            tar::EntryType::Link => self.create_hardlink(at, &rel, &entry),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                self.create_node(at, &rel, kind, device(&header), &meta)
            }
            other => {
                self.skipped.push(format!(
                    "{}: unsupported entry type {other:?}",
                    rel.display()
                ));
                Ok(())
            }
        }
    }

    /// `.wh..wh..opq` and `.wh.NAME`, applied as the mode says; `None` for
    /// any other name.
    fn whiteout(
        &self,
        parent: &OwnedFd,
        parent_rel: &Path,
        rel: &Path,
        name: &str,
    ) -> Option<Result<(), UnpackError>> {
        if name == ".wh..wh..opq" {
            return Some(
                self.opaque(parent, parent_rel)
                    .map_err(self.err(rel, "applying an opaque whiteout")),
            );
        }
        let hidden = std::ffi::OsString::from(name.strip_prefix(".wh.")?);
        let done = match self.mode {
            WhiteoutMode::Flatten => self.remove(parent, &hidden),
            WhiteoutMode::Overlay { .. } => self.remove(parent, &hidden).and_then(|()| {
                rustix::fs::mknodat(
                    parent,
                    &hidden,
                    rustix::fs::FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(io::Error::from)
            }),
        };
        Some(done.map_err(self.err(rel, "applying a whiteout")))
    }

    /// The entry's extended attributes that may be set; the others are
    /// noted as dropped.
    fn xattrs<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
    ) -> Vec<(String, Vec<u8>)> {
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
        xattrs
    }

    fn create_dir(
        &mut self,
        (parent, name): (&OwnedFd, &OsStr),
        rel: PathBuf,
        existing_dir: bool,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        if !existing_dir {
            rustix::fs::mkdirat(parent, name, meta.mode)
                .map_err(|e| self.err(&rel, "creating the directory")(e.into()))?;
        }
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err(&rel, "opening the directory")(e.into()))?;
        self.own(&fd, &rel, meta.uid, meta.gid);
        rustix::fs::fchmod(&fd, meta.mode)
            .map_err(|e| self.err(&rel, "setting its mode")(e.into()))?;
        self.set_xattrs(&fd, &rel, &meta.xattrs);
        self.dirs.push((rel, ts(meta.mtime)));
        Ok(())
    }

    fn create_file<R: Read>(
        &mut self,
        (parent, name): (&OwnedFd, &OsStr),
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
        size: u64,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.err(rel, "creating the file")(e.into()))?;
        let mut file = std::fs::File::from(fd);
        let written = io::copy(entry, &mut file).map_err(self.err(rel, "writing the file"))?;
        if written != size {
            return Err(self.err(rel, "reading its data")(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("archive ends after {written} of {size} bytes"),
            )));
        }
        self.own(&file, rel, meta.uid, meta.gid);
        // After chown, which clears setuid bits.
        rustix::fs::fchmod(&file, meta.mode)
            .map_err(|e| self.err(rel, "setting its mode")(e.into()))?;
        self.set_xattrs(&file, rel, &meta.xattrs);
        let _ = rustix::fs::futimens(&file, &ts(meta.mtime));
        Ok(())
    }

    fn create_symlink<R: Read>(
        &mut self,
        (parent, name): (&OwnedFd, &OsStr),
        rel: &Path,
        entry: &tar::Entry<'_, R>,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let target = entry
            .link_name()
            .map_err(self.err(rel, "reading the link target"))?
            .ok_or_else(|| self.err(rel, "reading the link target")(io::Error::other("missing")))?
            .into_owned();
        rustix::fs::symlinkat(&target, parent, name)
            .map_err(|e| self.err(rel, "creating the symlink")(e.into()))?;
        self.own_link(parent, name, meta);
        let _ = rustix::fs::utimensat(parent, name, &ts(meta.mtime), AtFlags::SYMLINK_NOFOLLOW);
        Ok(())
    }

    fn create_hardlink<R: Read>(
        &mut self,
        (parent, name): (&OwnedFd, &OsStr),
        rel: &Path,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let target = entry
            .link_name()
            .map_err(self.err(rel, "reading the link target"))?
            .and_then(|t| clean(&t))
            .ok_or_else(|| {
                self.err(rel, "reading the link target")(io::Error::other("empty hardlink target"))
            })?;
        let tdir = self
            .open_dir(target.parent().unwrap_or(Path::new("")))
            .map_err(self.err(rel, "resolving the hardlink target"))?;
        let tname = target.file_name().unwrap_or(target.as_os_str());
        rustix::fs::linkat(&tdir, tname, parent, name, AtFlags::empty())
            .map_err(|e| self.err(rel, "creating the hardlink")(e.into()))?;
        Ok(())
    }

    /// A character or block device (already allowed) or a FIFO.
    fn create_node(
        &mut self,
        (parent, name): (&OwnedFd, &OsStr),
        rel: &Path,
        kind: tar::EntryType,
        (major, minor): (u32, u32),
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let ft = match kind {
            tar::EntryType::Char => rustix::fs::FileType::CharacterDevice,
            tar::EntryType::Block => rustix::fs::FileType::BlockDevice,
            _ => rustix::fs::FileType::Fifo,
        };
        let dev = rustix::fs::makedev(major, minor);
        match rustix::fs::mknodat(parent, name, ft, meta.mode, dev) {
            Ok(()) => self.own_link(parent, name, meta),
            Err(rustix::io::Errno::PERM) => self
                .skipped
                .push(format!("{}: device node needs privileges", rel.display())),
            Err(e) => return Err(self.err(rel, "creating the device node")(e.into())),
        }
        Ok(())
    }

    /// The owner of `name` itself (a symlink or a node), as root only.
    fn own_link(&self, parent: &OwnedFd, name: &OsStr, meta: &Meta) {
        if self.is_root {
            let _ = rustix::fs::chownat(
                parent,
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid as u32)),
                Some(rustix::fs::Gid::from_raw(meta.gid as u32)),
                AtFlags::SYMLINK_NOFOLLOW,
            );
        }
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
