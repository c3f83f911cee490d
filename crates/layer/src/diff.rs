//! Turn an overlay upper directory into an OCI layer.
//!
//! The upper dir is walked depth-first in bytewise name order, so the same
//! tree always gives the same tar. Overlay whiteouts (0/0 character devices)
//! become `.wh.NAME` entries and opaque directories (`overlay.opaque` xattr,
//! trusted or user namespace) get a `.wh..wh..opq` entry first among their
//! children. Hard links inside the layer become tar links to the first path
//! seen. Other xattrs travel as PAX `SCHILY.xattr.*` records. With
//! `source_date_epoch`, later modification times are clamped to it.
//!
//! The tar streams through the compressor into `out`; the diffID (tar bytes)
//! and the digest (compressed bytes) are computed in the same pass, so a
//! layer is never held in memory.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci::{Digest, Digester, media_type};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => media_type::OCI_LAYER_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_ZSTD,
            Compression::None => media_type::OCI_LAYER_TAR,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LayerOptions {
    pub compression: Compression,
    /// Clamp modification times to this (seconds since the epoch).
    pub source_date_epoch: Option<u64>,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            compression: Compression::Gzip,
            source_date_epoch: None,
        }
    }
}

/// The layer written: what a manifest and config need.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerInfo {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
    pub entries: u64,
}

/// A layer a build made: what [`write_layer`] wrote and the file holding it.
#[derive(Debug, Clone)]
pub struct NewLayer {
    pub info: LayerInfo,
    pub file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

struct HashWriter<W> {
    inner: W,
    digester: Digester,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digester.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

const OPAQUE_KEYS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// Whether overlayfs marked directory `path` opaque (either xattr namespace).
pub fn is_opaque(path: &Path) -> bool {
    OPAQUE_KEYS.iter().any(|k| {
        let mut v = [0u8; 4];
        matches!(rustix::fs::lgetxattr(path, *k, &mut v), Ok(1) if v[0] == b'y')
    })
}

fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
}

/// Write the layer for `upper` into `out`. Gzip runs on every core (pigz's
/// scheme through `gzp`: blocks compressed in parallel, each primed with the
/// previous block's tail, so the bytes do not depend on the thread count or
/// timing and the digest stays reproducible).
pub fn write_layer(
    upper: &Path,
    out: impl Write + Send,
    opts: &LayerOptions,
) -> Result<LayerInfo, DiffError> {
    let err = |path: &Path, what: &'static str| {
        let path = path.to_owned();
        move |source| DiffError::Io { path, what, source }
    };
    let mut compressed = HashWriter {
        inner: out,
        digester: Digester::new(oci::Algorithm::Sha256),
        count: 0,
    };
    let epoch = opts.source_date_epoch;
    let (diff_id, entries) = match opts.compression {
        Compression::Gzip => std::thread::scope(|scope| {
            let threads = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, 8);
            let par = gzp::par::compress::ParCompressBuilder::<gzp::deflate::Gzip>::new()
                .num_threads(threads)
                .map_err(|e| err(upper, "starting gzip")(io::Error::other(e.to_string())))?
                .compression_level(flate2::Compression::new(6))
                .from_borrowed_writer(&mut compressed, scope);
            tar_into(upper, par, epoch, |mut p| {
                gzp::ZWriter::finish(&mut p)
                    .map(drop)
                    .map_err(|e| io::Error::other(e.to_string()))
            })
        })?,
        Compression::Zstd => {
            let enc = zstd::stream::write::Encoder::new(&mut compressed, 3)
                .map_err(err(upper, "starting zstd"))?;
            tar_into(upper, enc, epoch, |e| e.finish().map(drop))?
        }
        Compression::None => tar_into(upper, &mut compressed, epoch, |_| Ok(()))?,
    };
    compressed
        .inner
        .flush()
        .map_err(err(upper, "flushing the layer"))?;
    Ok(LayerInfo {
        digest: compressed.digester.finish(),
        diff_id,
        size: compressed.count,
        media_type: opts.compression.media_type().to_owned(),
        entries,
    })
}

/// The tar stream of `upper` into `sink` (a compressor), hashed on the way
/// for the diffID; `finish` ends the compressed stream.
fn tar_into<C: Write>(
    upper: &Path,
    sink: C,
    epoch: Option<u64>,
    finish: impl FnOnce(C) -> io::Result<()>,
) -> Result<(Digest, u64), DiffError> {
    let tar_side = HashWriter {
        inner: sink,
        digester: Digester::new(oci::Algorithm::Sha256),
        count: 0,
    };
    let mut walker = Walker {
        builder: tar::Builder::new(tar_side),
        upper: upper.to_owned(),
        epoch,
        links: HashMap::new(),
        entries: 0,
    };
    walker.dir(Path::new(""))?;
    let entries = walker.entries;
    let tar_side = walker
        .builder
        .into_inner()
        .map_err(|source| DiffError::Io {
            path: upper.to_owned(),
            what: "finishing the tar",
            source,
        })?;
    let diff_id = tar_side.digester.finish();
    finish(tar_side.inner).map_err(|source| DiffError::Io {
        path: upper.to_owned(),
        what: "finishing compression",
        source,
    })?;
    Ok((diff_id, entries))
}

struct Walker<W: Write> {
    builder: tar::Builder<W>,
    upper: PathBuf,
    epoch: Option<u64>,
    /// (dev, inode) → first path, for hard links.
    links: HashMap<(u64, u64), PathBuf>,
    entries: u64,
}

impl<W: Write> Walker<W> {
    fn io(&self, rel: &Path, what: &'static str) -> impl FnOnce(io::Error) -> DiffError {
        let path = self.upper.join(rel);
        move |source| DiffError::Io { path, what, source }
    }

    fn header(&self, meta: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid().into());
        h.set_gid(meta.gid().into());
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        h.set_mtime(self.epoch.map_or(mtime, |e| mtime.min(e)));
        h.set_size(0);
        h
    }

    fn xattrs(&self, rel: &Path) -> Vec<(String, Vec<u8>)> {
        let path = self.upper.join(rel);
        let mut names = vec![0u8; 4096];
        let Ok(n) = rustix::fs::llistxattr(&path, &mut names) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            if is_overlay_xattr(name) {
                continue;
            }
            let mut value = vec![0u8; 65536];
            if let Ok(len) = rustix::fs::lgetxattr(&path, name, &mut value) {
                value.truncate(len);
                out.push((name.to_owned(), value));
            }
        }
        out.sort();
        out
    }

    fn append(
        &mut self,
        rel: &Path,
        mut h: tar::Header,
        data: impl io::Read,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), DiffError> {
        if !xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(self.io(rel, "writing xattrs"))?;
        }
        self.builder
            .append_data(&mut h, rel, data)
            .map_err(self.io(rel, "writing the entry"))?;
        self.entries += 1;
        Ok(())
    }

    fn dir(&mut self, rel: &Path) -> Result<(), DiffError> {
        let full = self.upper.join(rel);
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&full)
            .map_err(self.io(rel, "listing"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(self.io(rel, "listing"))?;
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        let opaque = !rel.as_os_str().is_empty() && is_opaque(&full);
        if opaque {
            let meta = std::fs::symlink_metadata(&full).map_err(self.io(rel, "stat"))?;
            let mut h = self.header(&meta, tar::EntryType::Regular);
            h.set_mode(0o644);
            self.append(&rel.join(".wh..wh..opq"), h, io::empty(), &[])?;
        }
        for name in names {
            self.entry(&rel.join(name))?;
        }
        Ok(())
    }

    fn entry(&mut self, rel: &Path) -> Result<(), DiffError> {
        let full = self.upper.join(rel);
        let meta = std::fs::symlink_metadata(&full).map_err(self.io(rel, "stat"))?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            let mut h = self.header(&meta, tar::EntryType::Regular);
            h.set_mode(0o644);
            let name = rel
                .file_name()
                .map(|n| format!(".wh.{}", n.to_string_lossy()))
                .unwrap_or_default();
            return self.append(&rel.with_file_name(name), h, io::empty(), &[]);
        }
        let xattrs = self.xattrs(rel);
        if ft.is_dir() {
            let h = self.header(&meta, tar::EntryType::Directory);
            self.append(rel, h, io::empty(), &xattrs)?;
            return self.dir(rel);
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(&full).map_err(self.io(rel, "reading the link"))?;
            let mut h = self.header(&meta, tar::EntryType::Symlink);
            self.builder
                .append_link(&mut h, rel, &target)
                .map_err(self.io(rel, "writing the link"))?;
            self.entries += 1;
            return Ok(());
        }
        if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key).cloned() {
                    let mut h = self.header(&meta, tar::EntryType::Link);
                    self.builder
                        .append_link(&mut h, rel, &first)
                        .map_err(self.io(rel, "writing the hard link"))?;
                    self.entries += 1;
                    return Ok(());
                }
                self.links.insert(key, rel.to_owned());
            }
            let mut h = self.header(&meta, tar::EntryType::Regular);
            h.set_size(meta.len());
            let file = std::fs::File::open(&full).map_err(self.io(rel, "opening"))?;
            return self.append(rel, h, io::BufReader::with_capacity(1 << 20, file), &xattrs);
        }
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else if ft.is_fifo() {
            tar::EntryType::Fifo
        } else {
            // Sockets cannot be carried in a layer (Docker skips them too).
            return Ok(());
        };
        let mut h = self.header(&meta, kind);
        let rdev = meta.rdev();
        h.set_device_major(rustix::fs::major(rdev))
            .map_err(self.io(rel, "device number"))?;
        h.set_device_minor(rustix::fs::minor(rdev))
            .map_err(self.io(rel, "device number"))?;
        self.append(rel, h, io::empty(), &xattrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parallel gzip is still reproducible: the same tree gives the same
    /// bytes every time, across many blocks, and the stream is one valid
    /// gzip whose tar holds every file.
    #[test]
    fn parallel_gzip_layers_are_reproducible_and_readable() {
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("upper");
        std::fs::create_dir_all(upper.join("dir")).unwrap();
        // 3 MiB of poorly compressible bytes: many gzp blocks.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..3 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(upper.join("dir/noise.bin"), &noise).unwrap();
        std::fs::write(upper.join("small.txt"), "hello\n".repeat(1000)).unwrap();
        let opts = LayerOptions {
            compression: Compression::Gzip,
            source_date_epoch: Some(1_700_000_000),
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        let la = write_layer(&upper, &mut a, &opts).unwrap();
        let lb = write_layer(&upper, &mut b, &opts).unwrap();
        assert_eq!(a, b);
        assert_eq!(la.digest, lb.digest);
        assert_eq!(la.digest, Digest::sha256(&a));
        assert_eq!(la.size, a.len() as u64);
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&a[..]));
        let mut sizes = std::collections::BTreeMap::new();
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut body = Vec::new();
            io::Read::read_to_end(&mut e, &mut body).unwrap();
            sizes.insert(path, body.len());
        }
        assert_eq!(sizes.get("dir/noise.bin"), Some(&noise.len()));
        assert_eq!(sizes.get("small.txt"), Some(&6000));
        // The diffID is the digest of the uncompressed tar.
        let mut raw = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&a[..]), &mut raw).unwrap();
        assert_eq!(la.diff_id, Digest::sha256(&raw));
    }
}
