//! Slipway's data directories (a builder's `--data`, a server's or `up`'s
//! data, an agent's work dir) carry a marker file, so that no build context
//! ever takes one in: `docker build .` users keep `slipway up`'s data or
//! their build data in the project directory, and a context that copied it
//! would copy itself (or ship a database and every blob to the server).
//!
//! [`DataDir`] owns a builder data dir's layout (`build --local --data`,
//! `image run --data`, `prune --data`): every subdirectory is named here
//! once, so the CLI, the builder and prune agree on where things live. It
//! names paths only (no builder type), so it lives beside the unpacker,
//! where `context` reads the marker without depending on the builder.

use std::path::{Path, PathBuf};

/// A builder data dir: where layers, cache steps, cache mounts and a
/// build's scratch live. Names paths only; [`DataDir::open`] creates it.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Creating or marking a data dir failed; says which step and path.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}", path.display())]
pub struct DataDirError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl DataDir {
    /// The layout under `root`, without touching the disk (prune reads a
    /// data dir as it is; it must not mark or resolve one).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// Create `path` if missing, resolve it to an absolute path (the
    /// sandbox mounts host paths below it, which must be absolute) and
    /// mark it, so no build context takes it in.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let fail = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| DataDirError {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(path).map_err(fail("creating", path))?;
        let root = path.canonicalize().map_err(fail("resolving", path))?;
        mark(&root).map_err(fail("marking", &root))?;
        Ok(DataDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The builder's `LayerStore` root: pulled layers under
    /// `layers/snapshots`, pulls in progress under `layers/tmp`.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// Finished build steps, one dir per cache key (`BuildRequest::cache_dir`).
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// `RUN --mount=type=cache` contents, kept across builds.
    pub fn cache_mounts(&self) -> PathBuf {
        self.root.join("cache-mounts")
    }

    /// Scratch of running builds and runs, one subdir each (see [`work_for`](Self::work_for)).
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// This process's scratch dir under [`work`](Self::work): `build-PID`,
    /// `run-PID`. A pid is unique among the processes sharing the dir now,
    /// and a stale one is removed by prune.
    pub fn work_for(&self, what: &str) -> PathBuf {
        self.work().join(format!("{what}-{}", std::process::id()))
    }

    /// The sandbox's own state (its init's scratch).
    pub fn sandbox(&self) -> PathBuf {
        self.root.join("sandbox")
    }

    /// Held shared by builds and exclusive by prune (the builder's `prune::BuildLock`).
    pub fn prune_lock(&self) -> PathBuf {
        self.root.join("prune.lock")
    }

    /// Where prune moves entries before deleting them.
    pub fn trash(&self) -> PathBuf {
        self.root.join(".trash")
    }

    /// The directories whose entries prune may delete, each with a name
    /// for its entries in the trash.
    pub fn reclaimable(&self) -> [(&'static str, PathBuf); 5] {
        let layers = self.layers();
        [
            ("layers-snapshots", layers.join("snapshots")),
            ("layers-tmp", layers.join("tmp")),
            ("cache", self.cache()),
            ("cache-mounts", self.cache_mounts()),
            ("work", self.work()),
        ]
    }
}

/// The marker's name: a directory holding it is a data dir.
pub const MARKER: &str = ".slipway-data";

/// Mark `dir` (which must exist) as a data dir; idempotent.
pub fn mark(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(MARKER);
    if p.exists() {
        return Ok(());
    }
    std::fs::write(
        p,
        "This directory holds Slipway's data; build contexts never include it.\n",
    )
}

/// Whether `dir` carries the [`MARKER`].
pub fn is_data_dir(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// The data dirs a build context must leave out: `own` (this build's data
/// dir) when it lies inside `context`, and every marked directory directly
/// in the context's root. Paths relative to `context`.
pub fn excluded_in(context: &Path, own: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rel) = own.strip_prefix(context)
        && !rel.as_os_str().is_empty()
    {
        out.push(rel.to_path_buf());
    }
    if let Ok(entries) = std::fs::read_dir(context) {
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) && is_data_dir(&p) {
                let rel = PathBuf::from(e.file_name());
                if !out.contains(&rel) {
                    out.push(rel);
                }
            }
        }
    }
    out.sort();
    out
}

/// `.dockerignore` lines that exclude `paths` (relative to the context),
/// with the pattern characters escaped.
pub fn ignore_lines(paths: &[PathBuf]) -> String {
    let mut s = String::new();
    for p in paths {
        s.push('\n');
        for c in p.to_string_lossy().chars() {
            if matches!(c, '*' | '?' | '[' | '\\' | '!') {
                s.push('\\');
            }
            s.push(c);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_and_marked_dirs_inside_the_context() {
        let ctx = tempfile::tempdir().unwrap();
        let root = ctx.path();
        std::fs::create_dir_all(root.join(".slipway")).unwrap();
        mark(&root.join(".slipway")).unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join("build/data")).unwrap();
        let found = excluded_in(root, &root.join("build/data"));
        assert_eq!(
            found,
            vec![PathBuf::from(".slipway"), PathBuf::from("build/data")]
        );
        // A data dir outside the context excludes nothing of it.
        let elsewhere = tempfile::tempdir().unwrap();
        assert_eq!(
            excluded_in(root, elsewhere.path()),
            vec![PathBuf::from(".slipway")]
        );
        assert_eq!(
            ignore_lines(&[PathBuf::from("a*b"), PathBuf::from(".slipway")]),
            "\na\\*b\n.slipway"
        );
    }

    #[test]
    fn open_creates_resolves_and_marks() {
        let d = tempfile::tempdir().unwrap();
        let data = DataDir::open(&d.path().join("a/../b")).unwrap();
        assert!(data.root().is_absolute());
        assert!(is_data_dir(data.root()));
        assert_eq!(data.layers(), data.root().join("layers"));
        // Every area prune empties lies inside the data dir.
        for (_, area) in data.reclaimable() {
            assert!(area.starts_with(data.root()), "{}", area.display());
        }
        // Opening again changes nothing.
        assert_eq!(DataDir::open(data.root()).unwrap().root(), data.root());
    }
}
