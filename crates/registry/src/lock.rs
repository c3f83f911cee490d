//! The lock that makes garbage collection safe against concurrent pushes:
//! manifest pushes hold it shared while they check and link what they
//! reference; a collection holds it exclusively while it marks and sweeps.
//! It is an `flock` on a file, so it also works between `slipway server` and
//! a `slipway registry gc` run from another process.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

#[derive(Debug, Clone)]
pub struct GcLock {
    path: PathBuf,
}

/// Held until dropped (closing the file releases the lock).
pub struct LockGuard {
    _file: File,
}

impl GcLock {
    pub fn new(data: &Path) -> GcLock {
        GcLock {
            path: data.join("gc.lock"),
        }
    }

    async fn take(&self, op: FlockOperation) -> std::io::Result<LockGuard> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            flock(&file, op)?;
            Ok(LockGuard { _file: file })
        })
        .await
        .map_err(std::io::Error::other)?
    }

    pub async fn shared(&self) -> std::io::Result<LockGuard> {
        self.take(FlockOperation::LockShared).await
    }

    pub async fn exclusive(&self) -> std::io::Result<LockGuard> {
        self.take(FlockOperation::LockExclusive).await
    }
}
