//! The lock that makes garbage collection safe against concurrent pushes:
//! manifest pushes hold it shared while they check and link what they
//! reference; a collection holds it exclusively while it marks and sweeps.
//! By default it is an `flock` on a file, so it also works between
//! `slipway server` and a `slipway registry gc` run from another process.
//! Replicas on one database share one instead ([`Registry::set_gc_lock`]:
//! the control plane gives a PostgreSQL advisory lock), since a file lock
//! reaches only one machine.
//!
//! A conditional tag write (a manifest PUT with `If-Match`) holds it
//! shared together with a lock on its tag, so that checking the tag and
//! moving it are one step: in process by default (one server writes its
//! tags), or the replicas' shared lock. Both are taken at once, on one
//! database connection, so that writers waiting for a tag never hold
//! every connection of the pool.
//!
//! [`Registry::set_gc_lock`]: crate::Registry::set_gc_lock

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use rustix::fs::{FlockOperation, flock};

/// A shared/exclusive lock held elsewhere (a database), for replicas.
pub trait SharedLock: Send + Sync {
    fn shared(&self) -> BoxFuture<'_, std::io::Result<LockGuard>>;
    fn exclusive(&self) -> BoxFuture<'_, std::io::Result<LockGuard>>;
    /// [`SharedLock::shared`], and exclusive for conditional writes of the
    /// tag `key` (`repo:tag`), taken in that order in one guard.
    fn shared_and_tag(&self, key: &str) -> BoxFuture<'_, std::io::Result<LockGuard>>;
}

pub struct GcLock {
    path: PathBuf,
    external: OnceLock<Arc<dyn SharedLock>>,
    /// Conditional tag writes without an external lock: they are rare
    /// (cache exports), so one lock for every tag costs nothing.
    tags: Arc<tokio::sync::Mutex<()>>,
}

/// Held until dropped (whatever it holds releases the lock when dropped).
pub struct LockGuard {
    _held: Box<dyn Send>,
}

impl LockGuard {
    /// A guard that releases the lock when `held` is dropped.
    pub fn new(held: impl Send + 'static) -> LockGuard {
        LockGuard {
            _held: Box::new(held),
        }
    }
}

impl GcLock {
    pub fn new(data: &Path) -> GcLock {
        GcLock {
            path: data.join("gc.lock"),
            external: OnceLock::new(),
            tags: Arc::default(),
        }
    }

    /// Use `lock` from now on instead of the file (once; later calls are
    /// ignored).
    pub fn set_external(&self, lock: Arc<dyn SharedLock>) {
        let _ = self.external.set(lock);
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
            Ok(LockGuard::new(file))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    pub async fn shared(&self) -> std::io::Result<LockGuard> {
        match self.external.get() {
            Some(l) => l.shared().await,
            None => self.take(FlockOperation::LockShared).await,
        }
    }

    pub async fn exclusive(&self) -> std::io::Result<LockGuard> {
        match self.external.get() {
            Some(l) => l.exclusive().await,
            None => self.take(FlockOperation::LockExclusive).await,
        }
    }

    /// [`GcLock::shared`], and the tag `name:tag` for a conditional PUT
    /// that checks the tag and moves it.
    pub async fn shared_and_tag(&self, name: &str, tag: &str) -> std::io::Result<LockGuard> {
        match self.external.get() {
            Some(l) => l.shared_and_tag(&format!("{name}:{tag}")).await,
            None => {
                let shared = self.take(FlockOperation::LockShared).await?;
                let tag = self.tags.clone().lock_owned().await;
                Ok(LockGuard::new((shared, tag)))
            }
        }
    }
}
