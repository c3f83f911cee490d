//! The OCI Distribution Spec v1.1 registry that `slipway server` embeds.
//!
//! [`Registry::open`] binds the content store ([`store::FsStore`]), the
//! repository metadata ([`meta`]) and authentication ([`auth`]) under one
//! data directory; [`Registry::router`] is the axum router serving `/v2/` and
//! the Docker token endpoint `/token`. [`gc::collect`] removes blobs no
//! manifest references, safely alongside a running server.
//!
//! ```ignore
//! let reg = Registry::open(RegistryConfig::new(data_dir)).await?;
//! axum::serve(listener, reg.router()).await?;
//! ```

pub mod auth;
pub mod browse;
pub mod error;
pub mod gc;
mod handlers;
pub mod lock;
pub mod meta;
pub mod names;
pub mod zero_copy;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use store::{BlobStore, FsStore};

pub use auth::{Auth, AuthConfig, TokenInfo};
pub use error::{Code, RegistryError};

/// Largest manifest accepted on push (the spec asks registries to accept at least 4 MiB).
pub const DEFAULT_MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Largest blob accepted on push (`slipway server --max-blob-size`): far
/// above any sane layer, below what fills a disk by accident.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 8 << 30;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub data: PathBuf,
    pub auth: AuthConfig,
    pub max_manifest_bytes: usize,
    /// Uploads past this are refused with `413` and deleted.
    pub max_blob_bytes: u64,
}

impl RegistryConfig {
    pub fn new(data: impl Into<PathBuf>) -> Self {
        RegistryConfig {
            data: data.into(),
            auth: AuthConfig::default(),
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("opening the blob store: {0}")]
    Store(#[from] store::StoreError),
    #[error("opening the token database: {0}")]
    Auth(#[from] auth::AuthError),
}

/// A registry over one data directory.
pub struct Registry {
    pub(crate) store: Arc<dyn BlobStore>,
    pub(crate) meta: meta::Meta,
    pub(crate) auth: Auth,
    pub(crate) config: RegistryConfig,
    pub(crate) lock: lock::GcLock,
}

impl Registry {
    /// A registry with its blobs in `<data>/store` on the filesystem.
    pub async fn open(config: RegistryConfig) -> Result<Arc<Registry>, OpenError> {
        let store = FsStore::open(config.data.join("store")).await?;
        let meta = meta::Meta::new(&config.data);
        Self::open_with(config, Arc::new(store), meta)
    }

    /// A registry with its blobs in `store` and its repository metadata in
    /// `meta` (object storage shared by replicas, say); tokens and keys
    /// stay under `config.data` (or in the control plane's database).
    pub fn open_with(
        config: RegistryConfig,
        store: Arc<dyn BlobStore>,
        meta: meta::Meta,
    ) -> Result<Arc<Registry>, OpenError> {
        Ok(Arc::new(Registry {
            store,
            meta,
            auth: Auth::open(&config.data, config.auth.clone())?,
            lock: lock::GcLock::new(&config.data),
            config,
        }))
    }

    /// Take the gc lock from `lock` (a database's, shared by replicas)
    /// rather than a file under the data dir.
    pub fn set_gc_lock(&self, lock: Arc<dyn lock::SharedLock>) {
        self.lock.set_external(lock);
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// The `/v2/` and `/token` routes.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        handlers::router(self.clone())
    }
}
