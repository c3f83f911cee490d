//! Build context archives, the unit a client uploads and an agent builds:
//! [`pack`] walks a directory in sorted order, leaves out what
//! `.dockerignore` excludes, and writes a tar compressed with zstd, hashing
//! it as it goes; [`unpack`] extracts one into an empty directory with the
//! `layer` crate's hardened unpacker (nothing lands outside the target).
//!
//! Packing the same unchanged tree twice gives the same bytes, so the
//! digest tells the server whether it has the context already.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use dockerfile::ignore::{Decision, IgnoreMatcher};
use oci::{Algorithm, Digest, Digester};

/// Which directories are Slipway's own data, never part of a context.
pub use layer::data_dir;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {message}")]
    Ignore { path: PathBuf, message: String },
    #[error("context {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("unpacking the context: {0}")]
    Unpack(#[from] layer::UnpackError),
}

type Result<T, E = ContextError> = std::result::Result<T, E>;

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A packed context.
#[derive(Debug, Clone)]
pub struct Packed {
    pub digest: Digest,
    pub size: u64,
    /// Files, directories and links in the archive.
    pub entries: u64,
}

/// Counts and hashes what passes through, for the digest and progress.
struct HashingWriter<W> {
    inner: W,
    digester: Digester,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digester.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The `.dockerignore` that applies to `dockerfile` (a path relative to the
/// context), BuildKit's way: `<Dockerfile>.dockerignore` first.
fn load_ignore(dir: &Path, dockerfile: &str) -> Result<IgnoreMatcher> {
    for name in dockerfile::ignore::ignore_file_candidates(dockerfile) {
        let path = dir.join(&name);
        match std::fs::read_to_string(&path) {
            Ok(src) => {
                return IgnoreMatcher::parse(&src).map_err(|e| ContextError::Ignore {
                    path,
                    message: e.to_string(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&path)(e)),
        }
    }
    Ok(IgnoreMatcher::default())
}

/// Pack `dir` into `out`. `progress` is called with the number of input
/// bytes read so far (file contents), for a progress bar.
pub fn pack(
    dir: &Path,
    dockerfile: &str,
    out: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Packed> {
    if !dir.is_dir() {
        return Err(ContextError::NotADirectory(dir.to_owned()));
    }
    let ignore = load_ignore(dir, dockerfile)?;
    let file = File::create(out).map_err(io_at(out))?;
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        digester: Digester::new(Algorithm::Sha256),
        written: 0,
    };
    let encoder = zstd::Encoder::new(hashing, 3).map_err(io_at(out))?;
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(false);
    let mut state = Walk {
        ignore: &ignore,
        entries: 0,
        read: 0,
        progress,
    };
    state.walk(&mut tar, dir, "")?;
    let encoder = tar.into_inner().map_err(io_at(out))?;
    let mut hashing = encoder.finish().map_err(io_at(out))?;
    hashing.flush().map_err(io_at(out))?;
    hashing
        .inner
        .into_inner()
        .map_err(|e| io_at(out)(e.into_error()))?
        .sync_all()
        .map_err(io_at(out))?;
    Ok(Packed {
        digest: hashing.digester.finish(),
        size: hashing.written,
        entries: state.entries,
    })
}

struct Walk<'a> {
    ignore: &'a IgnoreMatcher,
    entries: u64,
    read: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl Walk<'_> {
    fn walk<W: Write>(&mut self, tar: &mut tar::Builder<W>, dir: &Path, rel: &str) -> Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_at(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_at(dir))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let name = name.to_string_lossy();
            let rel = if rel.is_empty() {
                name.into_owned()
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
            let is_dir = meta.is_dir();
            // Slipway's own data (an `up` data dir in the project, say) is
            // never part of a context, whatever .dockerignore says.
            if is_dir && data_dir::is_data_dir(&path) {
                continue;
            }
            let decision = self.ignore.decide(&rel, is_dir);
            if decision == Decision::SkipDir {
                continue;
            }
            if decision == Decision::Include {
                if meta.is_file() {
                    let mut f = CountingRead {
                        inner: File::open(&path).map_err(io_at(&path))?,
                        count: &mut self.read,
                        progress: &mut *self.progress,
                    };
                    let mut header = tar::Header::new_gnu();
                    header.set_metadata(&meta);
                    tar.append_data(&mut header, &rel, &mut f)
                        .map_err(io_at(&path))?;
                } else {
                    tar.append_path_with_name(&path, &rel)
                        .map_err(io_at(&path))?;
                }
                self.entries += 1;
            }
            if is_dir {
                self.walk(tar, &path, &rel)?;
            }
        }
        Ok(())
    }
}

struct CountingRead<'a, R> {
    inner: R,
    count: &'a mut u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for CountingRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.count += n as u64;
        (self.progress)(*self.count);
        Ok(n)
    }
}

/// Extract a context archive (zstd, gzip or plain tar) whose bytes must
/// hash to `digest` into `target`, which must be empty or absent, within
/// `limits` (a small upload can claim terabytes unpacked).
pub use layer::unpack::Limits as UnpackLimits;

pub fn unpack(
    archive: impl Read,
    digest: &Digest,
    target: &Path,
    limits: layer::unpack::Limits,
) -> Result<u64> {
    std::fs::create_dir_all(target).map_err(io_at(target))?;
    // A context creates no device node, whatever its tar says.
    let applied = layer::unpack::apply_archive(
        archive,
        digest,
        None,
        target,
        layer::WhiteoutMode::Flatten,
        &[],
        layer::unpack::Unpack {
            origin: layer::unpack::Origin::Context,
            limits,
        },
    )?;
    Ok(applied.entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_is_deterministic_honours_dockerignore_and_round_trips() {
        let src = tempfile::tempdir().unwrap();
        let d = src.path();
        std::fs::create_dir_all(d.join("app/sub")).unwrap();
        std::fs::create_dir_all(d.join("node_modules/x")).unwrap();
        std::fs::write(d.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(d.join("app/main.txt"), "hello").unwrap();
        std::fs::write(d.join("app/sub/keep.log"), "kept").unwrap();
        std::fs::write(d.join("app/drop.log"), "dropped").unwrap();
        std::fs::write(d.join("node_modules/x/big"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("main.txt", d.join("app/link")).unwrap();
        std::fs::write(
            d.join(".dockerignore"),
            "node_modules\n**/*.log\n!app/sub/keep.log\n",
        )
        .unwrap();

        let out = tempfile::tempdir().unwrap();
        let a = out.path().join("a.tar.zst");
        let b = out.path().join("b.tar.zst");
        let mut seen = 0;
        let pa = pack(d, "Dockerfile", &a, &mut |n| seen = n).unwrap();
        let pb = pack(d, "Dockerfile", &b, &mut |_| {}).unwrap();
        assert_eq!(pa.digest, pb.digest, "same tree, same digest");
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(
            seen > 0 && seen < 1000,
            "excluded files are not read: {seen}"
        );

        let target = out.path().join("x");
        unpack(
            File::open(&a).unwrap(),
            &pa.digest,
            &target,
            Default::default(),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("app/main.txt")).unwrap(),
            "hello"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("app/sub/keep.log")).unwrap(),
            "kept"
        );
        assert!(!target.join("app/drop.log").exists());
        assert!(!target.join("node_modules").exists());
        assert_eq!(
            std::fs::read_link(target.join("app/link")).unwrap(),
            PathBuf::from("main.txt")
        );

        // A wrong digest is refused.
        let wrong: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        let t2 = out.path().join("y");
        assert!(unpack(File::open(&a).unwrap(), &wrong, &t2, Default::default()).is_err());

        // A changed file changes the digest.
        std::fs::write(d.join("app/main.txt"), "hello!").unwrap();
        let pc = pack(d, "Dockerfile", &b, &mut |_| {}).unwrap();
        assert_ne!(pa.digest, pc.digest);
    }

    /// A context that packs small but unpacks past the agent's limit (a
    /// sparse-looking file of zeros) is refused, naming the limit.
    #[test]
    fn a_context_past_the_unpack_limit_is_refused_naming_it() {
        let src = tempfile::tempdir().unwrap();
        let f = File::create(src.path().join("zeros")).unwrap();
        f.set_len(8 << 20).unwrap();
        drop(f);
        std::fs::write(src.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let out = tempfile::tempdir().unwrap();
        let a = out.path().join("c.tar.zst");
        let packed = pack(src.path(), "Dockerfile", &a, &mut |_| {}).unwrap();
        assert!(std::fs::metadata(&a).unwrap().len() < 1 << 20);
        let limits = UnpackLimits {
            max_bytes: 1 << 20,
            ..Default::default()
        };
        let err = unpack(
            File::open(&a).unwrap(),
            &packed.digest,
            &out.path().join("x"),
            limits,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--max-unpacked-size"), "{err}");
        assert!(
            !out.path().join("x/zeros").exists()
                || std::fs::metadata(out.path().join("x/zeros")).unwrap().len() <= 1 << 20
        );
    }
}
