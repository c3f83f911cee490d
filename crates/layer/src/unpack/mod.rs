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
//! Every archive is bounded ([`Limits`]): the bytes it decompresses to and
//! its entry count, so a small gzip that claims terabytes (a decompression
//! bomb) stops at the limit with an error naming it, whatever the layer's
//! compressed size.
//!
//! We hand-write this rather than use `tar::Archive::unpack`: that does not
//! know OCI whiteouts and resolves paths through the host filesystem.

mod entry;

use std::cell::Cell;
use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use oci::{Digest, Digester};
use rustix::fs::{AtFlags, Mode, OFlags};

use entry::Ctx;

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
    #[error(
        "layer {layer}: {what} exceed this builder's limit of {limit} ({flag}); \
         raise it if the archive is genuine"
    )]
    Limit {
        layer: String,
        what: &'static str,
        limit: u64,
        flag: &'static str,
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

/// Bounds on what one archive may unpack to (layer, context or ADD archive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed tar bytes (`--max-unpacked-size`).
    pub max_bytes: u64,
    /// Tar entries (`--max-unpacked-entries`).
    pub max_entries: u64,
}

impl Limits {
    /// 64 GiB: above the largest base images in use (CUDA and ML images
    /// reach 10–20 GiB uncompressed) while a bomb still stops long before
    /// the disk fills.
    pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;
    /// Four million entries: node_modules-heavy layers hold a few hundred
    /// thousand.
    pub const DEFAULT_MAX_ENTRIES: u64 = 4_000_000;
    /// The environment variables `slipway build --local` (and every other
    /// command that unpacks) reads them from; an agent sets them for the
    /// builds it starts.
    pub const SIZE_ENV: &str = "SLIPWAY_MAX_UNPACKED_SIZE";
    pub const ENTRIES_ENV: &str = "SLIPWAY_MAX_UNPACKED_ENTRIES";

    /// These limits as the environment of a child process.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            (Self::SIZE_ENV, self.max_bytes.to_string()),
            (Self::ENTRIES_ENV, self.max_entries.to_string()),
        ]
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
        }
    }
}

/// How an archive is applied beyond where to: what it may create and how
/// big it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unpack {
    pub origin: Origin,
    pub limits: Limits,
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

/// Fails reads past `limit` bytes, so a bomb stops inside the
/// decompressor; `seen` stays readable while the archive borrows this.
struct Bounded<R> {
    inner: R,
    seen: Rc<Cell<u64>>,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than the limit may be read, to tell "exactly at"
        // from "over".
        let room = (self.limit + 1).saturating_sub(self.seen.get());
        if room == 0 {
            return Err(io::Error::other("archive over its size limit"));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.seen.set(self.seen.get() + n as u64);
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
    apply_archive(
        blob,
        digest,
        diff_id,
        target,
        mode,
        lowers,
        Unpack::default(),
    )
}

/// [`apply_layer`] for an archive of `how.origin` (a build context passes
/// [`Origin::Context`], so that it creates no device node) within
/// `how.limits`.
pub fn apply_archive(
    blob: impl Read,
    digest: &Digest,
    diff_id: Option<&Digest>,
    target: &Path,
    mode: WhiteoutMode,
    lowers: &[PathBuf],
    how: Unpack,
) -> Result<Applied, UnpackError> {
    let Unpack { origin, limits } = how;
    let layer = digest.to_string();
    let read_err = |source| UnpackError::Read {
        layer: layer.clone(),
        source,
    };
    let too_big = || UnpackError::Limit {
        layer: layer.clone(),
        what: "its unpacked bytes",
        limit: limits.max_bytes,
        flag: "--max-unpacked-size",
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
    let seen = Rc::new(Cell::new(0u64));
    let over = || seen.get() > limits.max_bytes;
    let (entries, actual_diff, skipped) = {
        let mut tar_bytes = Hashing {
            inner: Bounded {
                inner: decompressor(&mut compressed).map_err(read_err)?,
                seen: seen.clone(),
                limit: limits.max_bytes,
            },
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
                        if entries >= limits.max_entries {
                            return Err(UnpackError::Limit {
                                layer: layer.clone(),
                                what: "its entries",
                                limit: limits.max_entries,
                                flag: "--max-unpacked-entries",
                            });
                        }
                        ctx.apply(entry)
                            .map_err(|e| if over() { too_big() } else { e })?;
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
            if over() {
                return Err(too_big());
            }
            if !at_end {
                return Err(read_err(e));
            }
        }
        // Directory times last: creating children would have changed them.
        for (rel, times) in std::mem::take(&mut ctx.dirs) {
            let _ = rustix::fs::utimensat(&ctx.root, &rel, &times, AtFlags::SYMLINK_NOFOLLOW);
        }
        io::copy(&mut tar_bytes, &mut io::sink())
            .map_err(|e| if over() { too_big() } else { read_err(e) })?;
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
