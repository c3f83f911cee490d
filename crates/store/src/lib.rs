//! Content-addressed blob storage.
//!
//! [`BlobStore`] is the small interface every back end implements: stat, a
//! streaming (ranged) read, delete, list, and resumable uploads that are
//! hashed as they stream in and become visible under their digest only once
//! verified ([`BlobStore::upload_commit`]). [`FsStore`] is the filesystem
//! back end; its on-disk layout is documented in [`layout`].
//!
//! Invariant: a blob is readable under digest `d` only if its bytes hash to
//! `d`. A crash at any point leaves at worst an orphaned upload, never a
//! partial blob.

mod fs;
pub mod kv;
pub mod layout;
pub mod limit;
mod location;
mod object;

use std::io;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use oci::{Algorithm, Digest};

pub use fs::{FsStore, READ_BUF};
pub use location::Location;
pub use object::ObjectBlobStore;

/// A body streaming into an upload.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// A blob opened for reading: `reader` yields exactly `len` bytes starting at
/// the requested offset; `size` is the whole blob's size.
pub struct BlobRead {
    pub size: u64,
    pub len: u64,
    pub reader: Pin<Box<dyn tokio::io::AsyncRead + Send>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("blob {0} is not in the store")]
    BlobUnknown(Digest),
    #[error("upload {0:?} is unknown")]
    UploadUnknown(String),
    #[error("upload chunk starts at byte {got} but the upload holds {expected} bytes")]
    OffsetMismatch { expected: u64, got: u64 },
    #[error("range {start}-{end} is outside the blob's {size} bytes")]
    RangeNotSatisfiable { start: u64, end: u64, size: u64 },
    #[error("content digest is {actual}, not the {expected} the client declared")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("reading the request body failed after {written} bytes: {source}")]
    Body { written: u64, source: io::Error },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
        move |source| StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// `(start, len)` of `range` (an inclusive end, or to the end) in a blob of
/// `size` bytes, as every back end serves it.
pub fn resolve_range(range: Option<(u64, Option<u64>)>, size: u64) -> Result<(u64, u64)> {
    match range {
        None => Ok((0, size)),
        Some((start, end)) => {
            let end = end
                .unwrap_or(size.saturating_sub(1))
                .min(size.saturating_sub(1));
            if start >= size || end < start {
                return Err(StoreError::RangeNotSatisfiable { start, end, size });
            }
            Ok((start, end - start + 1))
        }
    }
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size and age of a blob, or `None` if absent.
    async fn stat(&self, digest: &Digest) -> Result<Option<BlobInfo>>;
    /// Stream `digest`, optionally only the inclusive byte range `range`.
    async fn open(&self, digest: &Digest, range: Option<(u64, Option<u64>)>) -> Result<BlobRead>;
    /// Remove a blob; `false` if it was not there.
    async fn delete(&self, digest: &Digest) -> Result<bool>;
    /// Mark a blob as recently used, so a garbage collection that started
    /// before a push referenced it leaves it alone.
    async fn touch(&self, digest: &Digest) -> Result<()>;
    /// Every blob, for garbage collection.
    async fn list(&self) -> Result<Vec<BlobInfo>>;
    /// The file holding a committed blob, when blobs are local files (for
    /// `sendfile(2)`); a committed blob's file is never written again.
    fn local_file(&self, _digest: &Digest) -> Option<std::path::PathBuf> {
        None
    }

    /// Start a resumable upload and return its id.
    async fn upload_create(&self) -> Result<String>;
    /// Bytes received so far.
    async fn upload_size(&self, id: &str) -> Result<u64>;
    /// Append `body` at `offset` (which must equal the current size); returns the new size.
    async fn upload_append(&self, id: &str, offset: u64, body: ByteStream) -> Result<u64>;
    /// Verify the upload against `expected` and publish it under that digest.
    /// On a mismatch the upload is discarded and nothing is stored.
    async fn upload_commit(&self, id: &str, expected: &Digest) -> Result<u64>;
    /// Discard an upload.
    async fn upload_cancel(&self, id: &str) -> Result<()>;
    /// Remove uploads untouched since `before` (crashed or abandoned clients).
    async fn purge_uploads(&self, before: SystemTime) -> Result<usize>;

    /// Store small content held in memory (manifests) under its digest.
    async fn put(&self, algorithm: Algorithm, bytes: Bytes) -> Result<Digest> {
        let digest = Digest::of(algorithm, &bytes);
        let id = self.upload_create().await?;
        let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(bytes)]));
        self.upload_append(&id, 0, body).await?;
        self.upload_commit(&id, &digest).await?;
        Ok(digest)
    }
}
