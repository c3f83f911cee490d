//! [`BlobStore`] on object storage (Azure Blob Storage, S3, or anything
//! else `object_store` speaks), so several server replicas share one set of
//! blobs.
//!
//! Layout under the store's prefix:
//! - `blobs/<algorithm>/<first two hex>/<hex>`: a blob, written only by a
//!   completed multipart upload of bytes already verified against the
//!   digest, so it is visible whole or not at all;
//! - `touched/<algorithm>/<hex>`: an empty marker whose time says the blob
//!   was used (object stores cannot set a modification time);
//! - `uploads/<id>/started`, `uploads/<id>/part-<offset, 20 digits>`: an
//!   upload in progress, one object per appended chunk, so any replica can
//!   continue or commit it. A commit reads the parts in order, hashes them
//!   and streams them into the blob's multipart upload, which is aborted if
//!   the digest is not the one the client declared.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use oci::{Algorithm, Digest, Digester};

use crate::{BlobInfo, BlobRead, BlobStore, ByteStream, Result, StoreError};

/// Parts of a multipart upload (S3's minimum is 5 MiB).
const PART: usize = 8 << 20;
/// Parts in flight at once, per upload: bounds memory to about 2 × PART.
const IN_FLIGHT: usize = 2;

/// Blobs in an object store, under `prefix`.
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// What to call it in errors (`azure://account/container/prefix`).
    name: String,
}

fn err(what: impl Into<String>) -> impl FnOnce(object_store::Error) -> StoreError {
    let what = what.into();
    move |e| StoreError::Io {
        context: what,
        source: std::io::Error::other(brief(&e)),
    }
}

/// One line of an object store error: its first line, with the service's
/// error code when the body names one (Azure and S3 answer with an XML
/// document, which would otherwise fill the screen).
pub(crate) fn brief(e: &object_store::Error) -> String {
    let text = e.to_string();
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.trim().to_owned());
    let first = text.lines().next().unwrap_or_default();
    let first = first.split("<?xml").next().unwrap_or(first).trim_end();
    let mut line: String = first.chars().take(300).collect();
    if let Some(code) = code
        && !line.contains(&code)
    {
        line.push_str(&format!(" ({code})"));
    }
    line
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl ObjectBlobStore {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, name: impl Into<String>) -> Self {
        ObjectBlobStore {
            store,
            prefix: Path::from(prefix.trim_matches('/')),
            name: name.into(),
        }
    }

    fn key(&self, rest: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }

    fn blob_key(&self, d: &Digest) -> Path {
        let hex = d.hex();
        self.key(&format!(
            "blobs/{}/{}/{hex}",
            d.algorithm(),
            &hex[..2.min(hex.len())]
        ))
    }

    fn touched_key(&self, d: &Digest) -> Path {
        self.key(&format!("touched/{}/{}", d.algorithm(), d.hex()))
    }

    fn upload_dir(&self, id: &str) -> Result<Path> {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if !valid {
            return Err(StoreError::UploadUnknown(id.into()));
        }
        Ok(self.key(&format!("uploads/{id}")))
    }

    /// Check the store answers (a wrong key or a missing container is an
    /// error at start, not at the first push).
    pub async fn check(&self) -> Result<()> {
        let probe = self.key("uploads");
        self.store
            .list_with_delimiter(Some(&probe))
            .await
            .map(drop)
            .map_err(err(format!("reaching the blob store {}", self.name)))
    }

    /// The parts of upload `id`, by offset, checked to be contiguous.
    async fn parts(&self, id: &str) -> Result<Option<Vec<(u64, Path, u64)>>> {
        let dir = self.upload_dir(id)?;
        let mut started = false;
        let mut parts = Vec::new();
        let mut list = self.store.list(Some(&dir));
        while let Some(meta) = list
            .try_next()
            .await
            .map_err(err(format!("listing upload {id}")))?
        {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if name == "started" {
                started = true;
            } else if let Some(off) = name.strip_prefix("part-").and_then(|o| o.parse().ok()) {
                parts.push((off, meta.location.clone(), meta.size));
            }
        }
        if !started {
            return Ok(None);
        }
        parts.sort_by_key(|p| p.0);
        let mut at = 0;
        for (off, _, size) in &parts {
            if *off != at {
                return Err(StoreError::Io {
                    context: format!("upload {id}"),
                    source: std::io::Error::other(format!("a part starts at byte {off}, not {at}")),
                });
            }
            at += size;
        }
        Ok(Some(parts))
    }

    async fn open_range(&self, key: &Path, range: Option<GetRange>) -> Result<ByteStream> {
        let got = self
            .store
            .get_opts(
                key,
                GetOptions {
                    range,
                    ..Default::default()
                },
            )
            .await
            .map_err(err(format!("reading {key}")))?;
        Ok(Box::pin(got.into_stream().map_err(std::io::Error::other)))
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        let meta = match self.store.head(&self.blob_key(digest)).await {
            Ok(m) => m,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(err(format!("stat {digest}"))(e)),
        };
        let mut modified: SystemTime = meta.last_modified.into();
        if let Ok(t) = self.store.head(&self.touched_key(digest)).await {
            modified = modified.max(t.last_modified.into());
        }
        Ok(Some(BlobInfo {
            digest: digest.clone(),
            size: meta.size,
            modified,
        }))
    }

    async fn open(&self, digest: &Digest, range: Option<(u64, Option<u64>)>) -> Result<BlobRead> {
        // Only the size: not `stat`, whose extra request for the use
        // marker every GET would pay.
        let size = match self.store.head(&self.blob_key(digest)).await {
            Ok(m) => m.size,
            Err(e) if not_found(&e) => return Err(StoreError::BlobUnknown(digest.clone())),
            Err(e) => return Err(err(format!("stat {digest}"))(e)),
        };
        let (start, len) = crate::resolve_range(range, size)?;
        let stream = if len == 0 {
            Box::pin(futures_util::stream::empty()) as ByteStream
        } else {
            let r = (start != 0 || len != size).then_some(GetRange::Bounded(start..start + len));
            self.open_range(&self.blob_key(digest), r).await?
        };
        Ok(BlobRead {
            size,
            len,
            reader: Box::pin(tokio_util::io::StreamReader::new(stream)),
        })
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        match self.store.head(&self.blob_key(digest)).await {
            Ok(_) => {}
            Err(e) if not_found(&e) => return Ok(false),
            Err(e) => return Err(err(format!("stat {digest}"))(e)),
        }
        self.store
            .delete(&self.blob_key(digest))
            .await
            .map_err(err(format!("deleting {digest}")))?;
        let _ = self.store.delete(&self.touched_key(digest)).await;
        Ok(true)
    }

    async fn touch(&self, digest: &Digest) -> Result<()> {
        self.store
            .put(&self.touched_key(digest), PutPayload::new())
            .await
            .map(drop)
            .map_err(err(format!("marking {digest} used")))
    }

    /// Every blob, as old as its last use: its `touched/` marker counts as
    /// `stat` counts it, so gc keeps a blob a pusher has just checked.
    async fn list(&self) -> Result<Vec<BlobInfo>> {
        let mut touched = std::collections::HashMap::new();
        let mut markers = self.store.list(Some(&self.key("touched")));
        while let Some(meta) = markers
            .try_next()
            .await
            .map_err(err(format!("listing {}", self.name)))?
        {
            let parts: Vec<&str> = meta.location.as_ref().rsplit('/').take(2).collect();
            if let [hex, alg] = parts[..] {
                touched.insert(format!("{alg}:{hex}"), SystemTime::from(meta.last_modified));
            }
        }
        let mut out = Vec::new();
        let mut list = self.store.list(Some(&self.key("blobs")));
        while let Some(meta) = list
            .try_next()
            .await
            .map_err(err(format!("listing {}", self.name)))?
        {
            let parts: Vec<&str> = meta.location.as_ref().rsplit('/').take(3).collect();
            let [hex, _, alg] = parts[..] else { continue };
            let Ok(digest) = format!("{alg}:{hex}").parse::<Digest>() else {
                continue;
            };
            let stored = SystemTime::from(meta.last_modified);
            let used = touched.get(&digest.to_string()).copied();
            out.push(BlobInfo {
                digest,
                size: meta.size,
                modified: used.map_or(stored, |u| u.max(stored)),
            });
        }
        Ok(out)
    }

    async fn upload_create(&self) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.upload_dir(&id)?;
        self.store
            .put(&Path::from(format!("{dir}/started")), PutPayload::new())
            .await
            .map_err(err(format!("starting an upload in {}", self.name)))?;
        Ok(id)
    }

    async fn upload_size(&self, id: &str) -> Result<u64> {
        match self.parts(id).await? {
            Some(parts) => Ok(parts.iter().map(|p| p.2).sum()),
            None => Err(StoreError::UploadUnknown(id.into())),
        }
    }

    async fn upload_append(&self, id: &str, offset: u64, mut body: ByteStream) -> Result<u64> {
        let size = self.upload_size(id).await?;
        if offset != size {
            return Err(StoreError::OffsetMismatch {
                expected: size,
                got: offset,
            });
        }
        let key = Path::from(format!("{}/part-{offset:020}", self.upload_dir(id)?));
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(err(format!("writing upload {id}")))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut written = 0u64;
        let mut body_error = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    written += bytes.len() as u64;
                    if let Err(e) = w.wait_for_capacity(IN_FLIGHT).await {
                        return Err(err(format!("writing upload {id}"))(e));
                    }
                    w.put(bytes);
                }
                Err(e) => {
                    body_error = Some(e);
                    break;
                }
            }
        }
        if written == 0 {
            // Nothing arrived: no empty part.
            let _ = w.abort().await;
        } else {
            w.finish()
                .await
                .map_err(err(format!("writing upload {id}")))?;
        }
        match body_error {
            // What arrived is stored; the client can resume from there.
            Some(source) => Err(StoreError::Body {
                written: size + written,
                source,
            }),
            None => Ok(size + written),
        }
    }

    async fn upload_commit(&self, id: &str, expected: &Digest) -> Result<u64> {
        let Some(parts) = self.parts(id).await? else {
            return Err(StoreError::UploadUnknown(id.into()));
        };
        let target = self.blob_key(expected);
        let exists = self.store.head(&target).await.is_ok();
        // Stream the parts through the hash (and, unless the blob is
        // already there, into its multipart upload).
        let mut writer = if exists {
            None
        } else {
            let upload = self
                .store
                .put_multipart(&target)
                .await
                .map_err(err(format!("writing {expected}")))?;
            Some(WriteMultipart::new_with_chunk_size(upload, PART))
        };
        let mut digester = Digester::new(expected.algorithm());
        let mut size = 0u64;
        let mut failure = None;
        'parts: for (_, key, _) in &parts {
            let mut stream = match self.open_range(key, None).await {
                Ok(s) => s,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            while let Some(chunk) = stream.next().await {
                let bytes: Bytes = match chunk {
                    Ok(b) => b,
                    Err(source) => {
                        failure = Some(StoreError::Io {
                            context: format!("reading upload {id}"),
                            source,
                        });
                        break 'parts;
                    }
                };
                digester.update(&bytes);
                size += bytes.len() as u64;
                if let Some(w) = writer.as_mut() {
                    if let Err(e) = w.wait_for_capacity(IN_FLIGHT).await {
                        failure = Some(err(format!("writing {expected}"))(e));
                        break 'parts;
                    }
                    w.put(bytes);
                }
            }
        }
        let actual = digester.finish();
        if failure.is_none() && &actual != expected {
            failure = Some(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        match (failure, writer) {
            (Some(e), Some(w)) => {
                let _ = w.abort().await;
                return Err(e);
            }
            (Some(e), None) => return Err(e),
            (None, Some(w)) if size == 0 => {
                // Multipart uploads cannot be empty: an empty blob is a put.
                let _ = w.abort().await;
                self.store
                    .put(&target, PutPayload::new())
                    .await
                    .map_err(err(format!("writing {expected}")))?;
            }
            (None, Some(w)) => {
                w.finish()
                    .await
                    .map_err(err(format!("writing {expected}")))?;
            }
            (None, None) => {}
        }
        self.upload_cancel(id).await?;
        Ok(size)
    }

    async fn upload_cancel(&self, id: &str) -> Result<()> {
        let dir = self.upload_dir(id)?;
        let keys: Vec<Path> = self
            .store
            .list(Some(&dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(err(format!("listing upload {id}")))?;
        for k in keys {
            match self.store.delete(&k).await {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(err(format!("deleting upload {id}"))(e)),
            }
        }
        Ok(())
    }

    async fn purge_uploads(&self, before: SystemTime) -> Result<usize> {
        let mut stale = Vec::new();
        let mut list = self.store.list(Some(&self.key("uploads")));
        while let Some(meta) = list
            .try_next()
            .await
            .map_err(err(format!("listing uploads in {}", self.name)))?
        {
            let path = meta.location.as_ref();
            if let Some(dir) = path.strip_suffix("/started")
                && SystemTime::from(meta.last_modified) < before
                && let Some(id) = dir.rsplit('/').next()
            {
                stale.push(id.to_owned());
            }
        }
        for id in &stale {
            self.upload_cancel(id).await?;
        }
        Ok(stale.len())
    }

    async fn put(&self, algorithm: Algorithm, bytes: Bytes) -> Result<Digest> {
        // Small blobs (manifests, configs) in one verified put.
        let digest = Digest::of(algorithm, &bytes);
        self.store
            .put(&self.blob_key(&digest), PutPayload::from(bytes))
            .await
            .map_err(err(format!("writing {digest}")))?;
        Ok(digest)
    }
}
