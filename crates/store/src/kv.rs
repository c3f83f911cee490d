//! Small named values beside the blobs: the registry's repository metadata
//! (links, tags, referrers, upload ownership) as keys like
//! `team/app/_manifests/tags/v1`. On the filesystem a key is a file under
//! a root (written to a temp file and renamed); in object storage it is an
//! object under a prefix, so replicas sharing the bucket share the
//! metadata. Values are small; listing is by one level (`list`) or whole
//! (`walk`).

use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

#[async_trait]
pub trait Kv: Send + Sync + 'static {
    async fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Replace the value whole (readers see the old or the new one);
    /// `durable`: on disk before returning, where that means anything.
    async fn put(&self, key: &str, value: &[u8], durable: bool) -> io::Result<()>;
    async fn exists(&self, key: &str) -> io::Result<bool>;
    /// Whether there was a value.
    async fn delete(&self, key: &str) -> io::Result<bool>;
    /// Names one level below `dir` (values and sub-directories alike).
    async fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Every key below `dir` (`""`: all), relative to the root.
    async fn walk(&self, dir: &str) -> io::Result<Vec<String>>;
}

/// Keys as files under `root`.
pub struct FsKv {
    root: PathBuf,
}

impl FsKv {
    pub fn new(root: impl Into<PathBuf>) -> FsKv {
        FsKv { root: root.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

fn optional<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn temp_name() -> String {
    format!(".tmp-{}", uuid::Uuid::new_v4().simple())
}

fn walk_dir(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name.to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        if p.is_dir() {
            walk_dir(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

#[async_trait]
impl Kv for FsKv {
    async fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        optional(tokio::fs::read(self.path(key)).await)
    }

    async fn put(&self, key: &str, value: &[u8], durable: bool) -> io::Result<()> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        tokio::fs::create_dir_all(&dir).await?;
        let tmp = dir.join(temp_name());
        let (tmp2, value) = (tmp.clone(), value.to_vec());
        let written = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut f = std::fs::File::create(&tmp2)?;
            io::Write::write_all(&mut f, &value)?;
            if durable {
                f.sync_data()?;
            }
            std::fs::rename(&tmp2, &path)
        })
        .await
        .map_err(io::Error::other)?;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        written
    }

    async fn exists(&self, key: &str) -> io::Result<bool> {
        tokio::fs::try_exists(self.path(key)).await
    }

    async fn delete(&self, key: &str) -> io::Result<bool> {
        Ok(optional(tokio::fs::remove_file(self.path(key)).await)?.is_some())
    }

    async fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let Some(mut rd) = optional(tokio::fs::read_dir(self.path(dir)).await)? else {
            return Ok(out);
        };
        while let Some(e) = rd.next_entry().await? {
            if let Some(n) = e.file_name().to_str()
                && !n.starts_with(".tmp-")
            {
                out.push(n.to_owned());
            }
        }
        Ok(out)
    }

    async fn walk(&self, dir: &str) -> io::Result<Vec<String>> {
        let (root, start) = (self.root.clone(), self.path(dir));
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk_dir(&root, &start, &mut out);
            out
        })
        .await
        .map_err(io::Error::other)
    }
}

/// Keys as objects under `prefix`.
pub struct ObjectKv {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl ObjectKv {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> ObjectKv {
        ObjectKv {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
        }
    }

    fn path(&self, key: &str) -> ObjPath {
        let key = key.trim_matches('/');
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => ObjPath::from(key),
            (false, true) => ObjPath::from(self.prefix.as_str()),
            (false, false) => ObjPath::from(format!("{}/{key}", self.prefix)),
        }
    }

    /// `key` relative to the prefix.
    fn relative<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.prefix)
                .map_or(full, |r| r.trim_start_matches('/'))
        }
    }
}

fn obj_err(e: object_store::Error) -> io::Error {
    io::Error::other(crate::object::brief(&e))
}

#[async_trait]
impl Kv for ObjectKv {
    async fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(obj_err)?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(obj_err(e)),
        }
    }

    async fn put(&self, key: &str, value: &[u8], _durable: bool) -> io::Result<()> {
        self.store
            .put(&self.path(key), PutPayload::from(value.to_vec()))
            .await
            .map(drop)
            .map_err(obj_err)
    }

    async fn exists(&self, key: &str) -> io::Result<bool> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(obj_err(e)),
        }
    }

    async fn delete(&self, key: &str) -> io::Result<bool> {
        if !self.exists(key).await? {
            return Ok(false);
        }
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(obj_err(e)),
        }
    }

    async fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.path(dir)))
            .await
            .map_err(obj_err)?;
        let mut out: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .chain(
                listed
                    .objects
                    .iter()
                    .filter_map(|o| o.location.filename().map(str::to_owned)),
            )
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn walk(&self, dir: &str) -> io::Result<Vec<String>> {
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.path(dir)))
            .try_collect()
            .await
            .map_err(obj_err)?;
        Ok(metas
            .iter()
            .map(|m| self.relative(m.location.as_ref()).to_owned())
            .collect())
    }
}
