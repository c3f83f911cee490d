//! The filesystem back end. Uploads are hashed while they stream in, so a
//! commit costs one `fsync` and one `rename`, not a second read; the running
//! hash state lives in memory and is rebuilt from the file if the process
//! restarted in between.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use oci::{Algorithm, Digest, Digester};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::layout;
use crate::{BlobInfo, BlobRead, BlobStore, ByteStream, Result, StoreError};

const IO_BUF: usize = 1 << 20;
/// Read size for streaming blobs out; also the registry's response chunk size.
pub const READ_BUF: usize = 1 << 20;

struct UploadState {
    size: u64,
    /// sha256 of the first `size` bytes; `None` when it must be recomputed
    /// from the file (after a restart or a failed write).
    hasher: Option<Digester>,
}

type UploadSlot = Arc<tokio::sync::Mutex<Option<UploadState>>>;

/// The open upload file and the running hash, moved to the blocking pool
/// for each batch of writes.
struct Sink {
    file: std::fs::File,
    hasher: Option<Digester>,
}

async fn write_batch(mut sink: Sink, batch: Vec<Bytes>) -> std::io::Result<Sink> {
    tokio::task::spawn_blocking(move || {
        for b in &batch {
            std::io::Write::write_all(&mut sink.file, b)?;
            if let Some(h) = &mut sink.hasher {
                h.update(b);
            }
        }
        Ok(sink)
    })
    .await
    .map_err(std::io::Error::other)?
}

pub struct FsStore {
    root: PathBuf,
    uploads: Mutex<HashMap<String, UploadSlot>>,
}

impl FsStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<FsStore> {
        let root = root.into();
        for dir in [layout::blobs_dir(&root), layout::uploads_dir(&root)] {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(StoreError::io(format!("creating {}", dir.display())))?;
        }
        Ok(FsStore {
            root,
            uploads: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn upload_path(&self, id: &str) -> Result<PathBuf> {
        layout::upload_path(&self.root, id).ok_or_else(|| StoreError::UploadUnknown(id.into()))
    }

    fn slot(&self, id: &str) -> UploadSlot {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_owned()).or_default().clone()
    }

    fn forget(&self, id: &str) {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }

    /// Take the upload's state out of its slot (loading it from disk if this
    /// process has none); an unknown upload is forgotten.
    async fn take_state(
        &self,
        slot: &mut Option<UploadState>,
        path: &Path,
        id: &str,
    ) -> Result<UploadState> {
        match slot.take() {
            Some(s) => Ok(s),
            None => self
                .load_state(path, id)
                .await
                .inspect_err(|_| self.forget(id)),
        }
    }

    /// The upload's state, loaded from disk when this process has none.
    async fn load_state(&self, path: &Path, id: &str) -> Result<UploadState> {
        match tokio::fs::metadata(path).await {
            Ok(m) => Ok(UploadState {
                size: m.len(),
                hasher: None,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::UploadUnknown(id.into()))
            }
            Err(e) => Err(StoreError::io(format!("reading upload {id}"))(e)),
        }
    }
}

async fn hash_file(path: &Path, algorithm: Algorithm) -> Result<Digest> {
    let ctx = || format!("hashing {}", path.display());
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(StoreError::io(ctx()))?;
    let mut digester = Digester::new(algorithm);
    let mut buf = vec![0u8; IO_BUF];
    loop {
        let n = file.read(&mut buf).await.map_err(StoreError::io(ctx()))?;
        if n == 0 {
            break;
        }
        digester.update(&buf[..n]);
    }
    Ok(digester.finish())
}

fn modified(meta: &std::fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

#[async_trait]
impl BlobStore for FsStore {
    fn local_file(&self, digest: &Digest) -> Option<PathBuf> {
        Some(layout::blob_path(&self.root, digest))
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        let path = layout::blob_path(&self.root, digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(BlobInfo {
                digest: digest.clone(),
                size: m.len(),
                modified: modified(&m),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("stat {}", path.display()))(e)),
        }
    }

    async fn open(&self, digest: &Digest, range: Option<(u64, Option<u64>)>) -> Result<BlobRead> {
        let path = layout::blob_path(&self.root, digest);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::BlobUnknown(digest.clone()));
            }
            Err(e) => return Err(StoreError::io(format!("opening {}", path.display()))(e)),
        };
        let size = file
            .metadata()
            .await
            .map_err(StoreError::io(format!("stat {}", path.display())))?
            .len();
        let (start, len) = crate::resolve_range(range, size)?;
        if start > 0 {
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(StoreError::io(format!("seeking {}", path.display())))?;
        }
        // Fewer, larger blocking reads: each tokio file read is a round trip
        // to the blocking pool.
        file.set_max_buf_size(READ_BUF);
        Ok(BlobRead {
            size,
            len,
            reader: Box::pin(file.take(len)),
        })
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let path = layout::blob_path(&self.root, digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(format!("removing {}", path.display()))(e)),
        }
    }

    async fn touch(&self, digest: &Digest) -> Result<()> {
        let path = layout::blob_path(&self.root, digest);
        tokio::task::spawn_blocking(move || {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()))
        })
        .await
        .map_err(|e| StoreError::io("touching blob")(e.into()))?
        .map_err(StoreError::io(format!("touching {digest}")))
    }

    async fn list(&self) -> Result<Vec<BlobInfo>> {
        let root = layout::blobs_dir(&self.root);
        tokio::task::spawn_blocking(move || list_blobs(&root))
            .await
            .map_err(|e| StoreError::io("listing blobs")(e.into()))?
    }

    async fn upload_create(&self) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let path = self.upload_path(&id)?;
        tokio::fs::File::create(&path)
            .await
            .map_err(StoreError::io(format!("creating {}", path.display())))?;
        *self.slot(&id).lock().await = Some(UploadState {
            size: 0,
            hasher: Some(Digester::new(Algorithm::Sha256)),
        });
        Ok(id)
    }

    async fn upload_size(&self, id: &str) -> Result<u64> {
        let path = self.upload_path(id)?;
        let slot = self.slot(id);
        let guard = slot.lock().await;
        match &*guard {
            Some(s) => Ok(s.size),
            None => {
                drop(guard);
                let res = self.load_state(&path, id).await.map(|s| s.size);
                if res.is_err() {
                    self.forget(id);
                }
                res
            }
        }
    }

    async fn upload_append(&self, id: &str, offset: u64, mut body: ByteStream) -> Result<u64> {
        let path = self.upload_path(id)?;
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        let mut state = self.take_state(&mut guard, &path, id).await?;
        if offset != state.size {
            let expected = state.size;
            *guard = Some(state);
            return Err(StoreError::OffsetMismatch {
                expected,
                got: offset,
            });
        }
        let file = match tokio::fs::OpenOptions::new().append(true).open(&path).await {
            Ok(f) => f.into_std().await,
            Err(e) => {
                *guard = Some(state);
                return Err(StoreError::io(format!("opening {}", path.display()))(e));
            }
        };
        // Chunks are batched (by reference, not copied) and written and
        // hashed on the blocking pool, keeping both off the async workers.
        let mut sink = Some(Sink {
            file,
            hasher: state.hasher.take(),
        });
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_len = 0usize;
        let mut failure = None;
        let mut body_error = None;
        loop {
            let next = body.next().await;
            let done = match next {
                Some(Ok(bytes)) => {
                    batch_len += bytes.len();
                    batch.push(bytes);
                    false
                }
                Some(Err(source)) => {
                    body_error = Some(source);
                    true
                }
                None => true,
            };
            if (done || batch_len >= IO_BUF) && !batch.is_empty() {
                let Some(current) = sink.take() else { break };
                match write_batch(current, std::mem::take(&mut batch)).await {
                    Ok(s) => {
                        sink = Some(s);
                        state.size += batch_len as u64;
                        batch_len = 0;
                    }
                    Err(e) => {
                        failure = Some(StoreError::io(format!("writing {}", path.display()))(e));
                        break;
                    }
                }
            }
            if done {
                break;
            }
        }
        match (failure, sink) {
            (None, Some(s)) => {
                state.hasher = s.hasher;
                let size = state.size;
                *guard = Some(state);
                match body_error {
                    None => Ok(size),
                    // What arrived is on disk and hashed; the client can resume.
                    Some(source) => Err(StoreError::Body {
                        written: size - offset,
                        source,
                    }),
                }
            }
            (failure, _) => {
                // What reached the file is unknown after a failed write, so
                // resynchronise from disk; the client can ask and resume.
                *guard = None;
                Err(failure.unwrap_or_else(|| {
                    StoreError::io(format!("writing {}", path.display()))(std::io::Error::other(
                        "writer lost",
                    ))
                }))
            }
        }
    }

    async fn upload_commit(&self, id: &str, expected: &Digest) -> Result<u64> {
        let path = self.upload_path(id)?;
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        let state = self.take_state(&mut guard, &path, id).await?;
        let actual = match state.hasher {
            Some(h) if h.algorithm() == expected.algorithm() => h.finish(),
            _ => hash_file(&path, expected.algorithm()).await?,
        };
        let cleanup = || async {
            let _ = tokio::fs::remove_file(&path).await;
        };
        if &actual != expected {
            cleanup().await;
            drop(guard);
            self.forget(id);
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let target = layout::blob_path(&self.root, expected);
        let (from, root) = (path.clone(), self.root.clone());
        // One trip to the blocking pool for the whole publication.
        let result = tokio::task::spawn_blocking(move || publish(&from, &target, &root))
            .await
            .map_err(|e| StoreError::io("publishing blob")(std::io::Error::other(e)))
            .and_then(|r| r);
        drop(guard);
        self.forget(id);
        result.map(|()| state.size)
    }

    async fn upload_cancel(&self, id: &str) -> Result<()> {
        let path = self.upload_path(id)?;
        let slot = self.slot(id);
        let guard = slot.lock().await;
        let res = match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::UploadUnknown(id.into()))
            }
            Err(e) => Err(StoreError::io(format!("removing {}", path.display()))(e)),
        };
        drop(guard);
        self.forget(id);
        res
    }

    async fn purge_uploads(&self, before: SystemTime) -> Result<usize> {
        let dir = layout::uploads_dir(&self.root);
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(StoreError::io(format!("listing {}", dir.display())))?;
        let mut purged = 0;
        while let Some(e) = entries
            .next_entry()
            .await
            .map_err(StoreError::io(format!("listing {}", dir.display())))?
        {
            let Ok(meta) = e.metadata().await else {
                continue;
            };
            if modified(&meta) < before && tokio::fs::remove_file(e.path()).await.is_ok() {
                if let Some(name) = e.file_name().to_str() {
                    self.forget(name);
                }
                purged += 1;
            }
        }
        Ok(purged)
    }
}

/// Make the verified upload at `from` the blob at `target`: fsync, rename,
/// fsync the directory. If the blob is already there, keep it (same digest,
/// same bytes), refresh its age for gc, and drop the upload.
fn publish(from: &Path, target: &Path, root: &Path) -> Result<()> {
    let ctx = |what: &str, p: &Path| format!("{what} {}", p.display());
    if target.exists() {
        let _ = std::fs::remove_file(from);
        return std::fs::File::options()
            .write(true)
            .open(target)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .map_err(StoreError::io(ctx("touching", target)));
    }
    std::fs::File::open(from)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io(ctx("syncing", from)))?;
    let dir = target.parent().unwrap_or(root);
    std::fs::create_dir_all(dir).map_err(StoreError::io(ctx("creating", dir)))?;
    // A concurrent commit of the same digest may win the race; rename
    // replaces identical bytes atomically, so either outcome is right.
    std::fs::rename(from, target).map_err(StoreError::io(ctx("publishing", target)))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(ctx("syncing", dir)))
}

fn list_blobs(root: &Path) -> Result<Vec<BlobInfo>> {
    let mut out = Vec::new();
    let read =
        |p: &Path| std::fs::read_dir(p).map_err(StoreError::io(format!("listing {}", p.display())));
    for alg in read(root)? {
        let alg = alg.map_err(StoreError::io("listing blobs"))?;
        let Some(alg_name) = alg.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        for fan in read(&alg.path())? {
            let fan = fan.map_err(StoreError::io("listing blobs"))?;
            for blob in read(&fan.path())? {
                let blob = blob.map_err(StoreError::io("listing blobs"))?;
                let name = blob.file_name();
                let Some(hex) = name.to_str() else { continue };
                // Ignore anything that is not a well-formed blob name.
                let Ok(digest) = format!("{alg_name}:{hex}").parse::<Digest>() else {
                    continue;
                };
                let meta = blob
                    .metadata()
                    .map_err(StoreError::io(format!("stat {}", blob.path().display())))?;
                out.push(BlobInfo {
                    digest,
                    size: meta.len(),
                    modified: modified(&meta),
                });
            }
        }
    }
    Ok(out)
}
