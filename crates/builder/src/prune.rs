//! Reclaiming the builder's disk (`slipway prune`): layer snapshots, build
//! cache steps, cache mounts and leftover scratch under a data directory.
//!
//! Builds hold `<data>/prune.lock` shared for their whole run; prune holds
//! it exclusive, so nothing a running build mounts or reads disappears
//! under it. An entry is first renamed into `<data>/.trash/` and only then
//! deleted, so an interrupted prune never leaves a half-deleted snapshot
//! or cache step where a later build would take it for a whole one.
//! "Last used" is an entry's mtime, which builds refresh ([`touch`]) when
//! they reuse a snapshot or a cache step.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use layer::data_dir::DataDir;

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PruneError {
    move |source| PruneError::Io {
        context: context.into(),
        source,
    }
}

/// A held `prune.lock` (shared for builds, exclusive for prune); released
/// on drop.
pub struct BuildLock {
    _file: File,
}

fn lock_file(data: &DataDir) -> Result<File, PruneError> {
    let root = data.root();
    std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    let path = data.prune_lock();
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))
}

impl BuildLock {
    /// Taken by every build: many at once, never during a prune.
    pub fn shared(data: &DataDir) -> Result<BuildLock, PruneError> {
        let f = lock_file(data)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| io("locking prune.lock")(e.into()))?;
        Ok(BuildLock { _file: f })
    }

    /// Taken by prune. `Ok(None)` when builds are running and `wait` is off.
    pub fn exclusive(data: &DataDir, wait: bool) -> Result<Option<BuildLock>, PruneError> {
        let f = lock_file(data)?;
        let op = if wait {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        };
        match rustix::fs::flock(&f, op) {
            Ok(()) => Ok(Some(BuildLock { _file: f })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(io("locking prune.lock")(e.into())),
        }
    }
}

/// Mark an entry as used now (best effort: an old mtime only makes the
/// entry an earlier candidate for pruning).
pub fn touch(path: &Path) {
    if let Ok(f) = File::open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Keep entries used within this long.
    pub keep: Duration,
    /// Only report what would go.
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub entries: u64,
    pub bytes: u64,
    pub kept: u64,
}

/// Disk use of a tree, not following links.
fn usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(rd) = std::fs::read_dir(path)
    {
        for e in rd.flatten() {
            total += usage(&e.path());
        }
    }
    total
}

/// Prune `data` (the caller holds [`BuildLock::exclusive`]).
pub fn prune(
    data: &DataDir,
    opts: &PruneOptions,
    _lock: &BuildLock,
) -> Result<PruneReport, PruneError> {
    let trash = data.trash();
    let mut report = PruneReport::default();
    // What an interrupted prune left.
    if trash.exists() && !opts.dry_run {
        std::fs::remove_dir_all(&trash).map_err(io(format!("emptying {}", trash.display())))?;
    }
    let cutoff = SystemTime::now()
        .checked_sub(opts.keep)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for (area, dir) in data.reclaimable() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
        };
        for e in entries {
            let e = e.map_err(io(format!("reading {}", dir.display())))?;
            let path = e.path();
            let modified = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            if modified > cutoff {
                report.kept += 1;
                continue;
            }
            report.bytes += usage(&path);
            report.entries += 1;
            if opts.dry_run {
                continue;
            }
            std::fs::create_dir_all(&trash).map_err(io(format!("creating {}", trash.display())))?;
            let to: PathBuf = trash.join(format!("{area}-{}", e.file_name().to_string_lossy()));
            std::fs::rename(&path, &to).map_err(io(format!("moving {} aside", path.display())))?;
        }
    }
    if trash.exists() && !opts.dry_run {
        std::fs::remove_dir_all(&trash).map_err(io(format!("deleting {}", trash.display())))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_honours_the_lock_age_and_dry_run() {
        let d = tempfile::tempdir().unwrap();
        let dir = DataDir::new(d.path());
        let data = d.path();
        for (area, name) in [
            ("layers/snapshots", "aaa"),
            ("cache", "k1"),
            ("work", "build-1"),
        ] {
            let p = data.join(area).join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("f"), vec![1u8; 10_000]).unwrap();
        }
        // A build holds the lock: prune cannot start without waiting.
        let build = BuildLock::shared(&dir).unwrap();
        assert!(BuildLock::exclusive(&dir, false).unwrap().is_none());
        drop(build);
        let lock = BuildLock::exclusive(&dir, false).unwrap().unwrap();
        assert!(BuildLock::shared_would_block(&dir));

        // Everything is recent: a keep period keeps it all.
        let keep = PruneOptions {
            keep: Duration::from_secs(3600),
            dry_run: false,
        };
        let r = prune(&dir, &keep, &lock).unwrap();
        assert_eq!((r.entries, r.kept), (0, 3));
        // Dry run: counted, not deleted.
        let dry = PruneOptions {
            keep: Duration::ZERO,
            dry_run: true,
        };
        let r = prune(&dir, &dry, &lock).unwrap();
        assert_eq!(r.entries, 3);
        assert!(r.bytes >= 30_000, "{r:?}");
        assert!(data.join("cache/k1/f").exists());
        // For real.
        let all = PruneOptions {
            keep: Duration::ZERO,
            dry_run: false,
        };
        let r = prune(&dir, &all, &lock).unwrap();
        assert_eq!(r.entries, 3);
        assert!(!data.join("cache/k1").exists());
        assert!(!data.join("layers/snapshots/aaa").exists());
        assert!(!data.join(".trash").exists());
        assert!(
            data.join("layers/snapshots").is_dir(),
            "areas themselves stay"
        );
    }

    impl BuildLock {
        fn shared_would_block(data: &DataDir) -> bool {
            let f = lock_file(data).unwrap();
            matches!(
                rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared),
                Err(rustix::io::Errno::WOULDBLOCK)
            )
        }
    }
}
