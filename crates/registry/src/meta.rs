//! Repository metadata on the filesystem: which blobs and manifests belong
//! to a repository, its tags, referrers and open uploads. Blob bytes live in
//! the content store; this is only the links to them.
//!
//! ```text
//! <data>/repos/<name>/_layers/<alg>/<hex>                 blob link (empty)
//! <data>/repos/<name>/_manifests/revisions/<alg>/<hex>    manifest link (holds its media type)
//! <data>/repos/<name>/_manifests/tags/<tag>               tag (holds the digest)
//! <data>/repos/<name>/_referrers/<alg>-<hex>/<alg>-<hex>  referrer descriptor (JSON), by subject
//! <data>/repos/<name>/_uploads/<id>                       upload owned by this repository
//! ```
//!
//! Repository names and tags are validated by [`crate::names`] before they
//! reach this module, and `_`-prefixed directories cannot be name
//! components, so a repository's metadata can never collide with another's.
//! Files that hold a value are replaced atomically (temp file + rename).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use oci::{Descriptor, Digest};

use crate::error::{RegistryError, Result};

#[derive(Debug, Clone)]
pub struct Meta {
    root: PathBuf,
}

fn io_err(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RegistryError {
    move |e| RegistryError::internal(&context.to_string(), e)
}

/// Treat "not found" as `None`.
fn optional<T>(r: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

async fn write_atomic(path: &Path, content: &[u8], durable: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_err(format!("creating {}", dir.display())))?;
    let tmp = dir.join(format!(".tmp-{}", uuid_like()));
    let path2 = path.to_owned();
    let content = content.to_vec();
    let tmp2 = tmp.clone();
    let res = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp2)?;
        std::io::Write::write_all(&mut f, &content)?;
        if durable {
            f.sync_data()?;
        }
        std::fs::rename(&tmp2, &path2)
    })
    .await
    .map_err(|e| RegistryError::internal("metadata write", e))?;
    if let Err(e) = res {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io_err(format!("writing {}", path.display()))(e));
    }
    Ok(())
}

fn uuid_like() -> String {
    let mut b = [0u8; 8];
    // Uniqueness of temp names only; a failure to get randomness falls back
    // to the clock, which is still unique enough per directory.
    if getrandom::fill(&mut b).is_err() {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        return format!("{n:x}");
    }
    hex::encode(b)
}

fn digest_file(d: &Digest) -> String {
    format!("{}-{}", d.algorithm(), d.hex())
}

impl Meta {
    pub fn new(data: &Path) -> Meta {
        Meta {
            root: data.join("repos"),
        }
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn blob_link(&self, name: &str, d: &Digest) -> PathBuf {
        self.repo(name)
            .join("_layers")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn manifest_link(&self, name: &str, d: &Digest) -> PathBuf {
        self.repo(name)
            .join("_manifests/revisions")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn tag_path(&self, name: &str, tag: &str) -> PathBuf {
        self.repo(name).join("_manifests/tags").join(tag)
    }

    fn referrers_dir(&self, name: &str, subject: &Digest) -> PathBuf {
        self.repo(name)
            .join("_referrers")
            .join(digest_file(subject))
    }

    fn upload_path(&self, name: &str, id: &str) -> PathBuf {
        self.repo(name).join("_uploads").join(id)
    }

    pub async fn repo_exists(&self, name: &str) -> bool {
        tokio::fs::try_exists(self.repo(name).join("_manifests"))
            .await
            .unwrap_or(false)
            || tokio::fs::try_exists(self.repo(name).join("_layers"))
                .await
                .unwrap_or(false)
    }

    pub async fn link_blob(&self, name: &str, d: &Digest) -> Result<()> {
        let p = self.blob_link(name, d);
        if tokio::fs::try_exists(&p).await.unwrap_or(false) {
            return Ok(());
        }
        write_atomic(&p, b"", false).await
    }

    pub async fn has_blob(&self, name: &str, d: &Digest) -> bool {
        tokio::fs::try_exists(self.blob_link(name, d))
            .await
            .unwrap_or(false)
    }

    pub async fn unlink_blob(&self, name: &str, d: &Digest) -> Result<bool> {
        let p = self.blob_link(name, d);
        Ok(optional(tokio::fs::remove_file(&p).await)
            .map_err(io_err(format!("removing {}", p.display())))?
            .is_some())
    }

    pub async fn link_manifest(&self, name: &str, d: &Digest, media_type: &str) -> Result<()> {
        write_atomic(&self.manifest_link(name, d), media_type.as_bytes(), true).await
    }

    /// The media type of a manifest linked in `name`, or `None`.
    pub async fn manifest_media_type(&self, name: &str, d: &Digest) -> Result<Option<String>> {
        let p = self.manifest_link(name, d);
        optional(tokio::fs::read_to_string(&p).await)
            .map_err(io_err(format!("reading {}", p.display())))
    }

    pub async fn unlink_manifest(&self, name: &str, d: &Digest) -> Result<bool> {
        let p = self.manifest_link(name, d);
        Ok(optional(tokio::fs::remove_file(&p).await)
            .map_err(io_err(format!("removing {}", p.display())))?
            .is_some())
    }

    pub async fn set_tag(&self, name: &str, tag: &str, d: &Digest) -> Result<()> {
        write_atomic(&self.tag_path(name, tag), d.to_string().as_bytes(), true).await
    }

    pub async fn tag(&self, name: &str, tag: &str) -> Result<Option<Digest>> {
        let p = self.tag_path(name, tag);
        let Some(s) = optional(tokio::fs::read_to_string(&p).await)
            .map_err(io_err(format!("reading {}", p.display())))?
        else {
            return Ok(None);
        };
        s.trim()
            .parse()
            .map(Some)
            .map_err(|e| RegistryError::internal(&format!("corrupt tag {}", p.display()), e))
    }

    pub async fn delete_tag(&self, name: &str, tag: &str) -> Result<bool> {
        let p = self.tag_path(name, tag);
        Ok(optional(tokio::fs::remove_file(&p).await)
            .map_err(io_err(format!("removing {}", p.display())))?
            .is_some())
    }

    /// Tags of `name` in lexical order, or `None` if the repository is unknown.
    pub async fn tags(&self, name: &str) -> Result<Option<Vec<String>>> {
        if !self.repo_exists(name).await {
            return Ok(None);
        }
        let dir = self.repo(name).join("_manifests/tags");
        let mut tags = list_names(&dir).await?;
        tags.retain(|t| !t.starts_with(".tmp-"));
        tags.sort();
        Ok(Some(tags))
    }

    /// Every tag of `name` that points at `d`.
    pub async fn tags_pointing_at(&self, name: &str, d: &Digest) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for t in self.tags(name).await?.unwrap_or_default() {
            if self.tag(name, &t).await?.as_ref() == Some(d) {
                out.push(t);
            }
        }
        Ok(out)
    }

    pub async fn add_referrer(
        &self,
        name: &str,
        subject: &Digest,
        desc: &Descriptor,
    ) -> Result<()> {
        let p = self
            .referrers_dir(name, subject)
            .join(digest_file(&desc.digest));
        let json = serde_json::to_vec(desc).map_err(|e| RegistryError::internal("referrer", e))?;
        write_atomic(&p, &json, true).await
    }

    pub async fn remove_referrer(&self, name: &str, subject: &Digest, d: &Digest) -> Result<()> {
        let p = self.referrers_dir(name, subject).join(digest_file(d));
        optional(tokio::fs::remove_file(&p).await)
            .map_err(io_err(format!("removing {}", p.display())))?;
        Ok(())
    }

    pub async fn referrers(&self, name: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        let dir = self.referrers_dir(name, subject);
        let mut out = Vec::new();
        for f in list_names(&dir).await? {
            if f.starts_with(".tmp-") {
                continue;
            }
            let p = dir.join(&f);
            let Some(bytes) = optional(tokio::fs::read(&p).await)
                .map_err(io_err(format!("reading {}", p.display())))?
            else {
                continue;
            };
            let desc: Descriptor = serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::internal(&format!("corrupt {}", p.display()), e))?;
            out.push(desc);
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    pub async fn add_upload(&self, name: &str, id: &str) -> Result<()> {
        write_atomic(&self.upload_path(name, id), b"", false).await
    }

    pub async fn owns_upload(&self, name: &str, id: &str) -> bool {
        tokio::fs::try_exists(self.upload_path(name, id))
            .await
            .unwrap_or(false)
    }

    pub async fn remove_upload(&self, name: &str, id: &str) {
        let _ = tokio::fs::remove_file(self.upload_path(name, id)).await;
    }

    /// Every repository, sorted.
    pub async fn repositories(&self) -> Result<Vec<String>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk_repos(&root, "", &mut out);
            out.sort();
            out
        })
        .await
        .map_err(|e| RegistryError::internal("listing repositories", e))
    }

    /// Every manifest digest linked in `name`.
    pub async fn manifests(&self, name: &str) -> Result<Vec<Digest>> {
        list_digests(&self.repo(name).join("_manifests/revisions")).await
    }

    /// Every blob digest linked in `name`.
    pub async fn blob_links(&self, name: &str) -> Result<Vec<Digest>> {
        list_digests(&self.repo(name).join("_layers")).await
    }
}

async fn list_names(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let Some(mut rd) = optional(tokio::fs::read_dir(dir).await)
        .map_err(io_err(format!("listing {}", dir.display())))?
    else {
        return Ok(out);
    };
    while let Some(e) = rd
        .next_entry()
        .await
        .map_err(io_err(format!("listing {}", dir.display())))?
    {
        if let Some(n) = e.file_name().to_str() {
            out.push(n.to_owned());
        }
    }
    Ok(out)
}

/// Digests stored as `<dir>/<alg>/<hex>`.
async fn list_digests(dir: &Path) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    for alg in list_names(dir).await? {
        for hex in list_names(&dir.join(&alg)).await? {
            if let Ok(d) = format!("{alg}:{hex}").parse() {
                out.push(d);
            }
        }
    }
    Ok(out)
}

fn walk_repos(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut is_repo = false;
    for e in rd.flatten() {
        let Some(n) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if n == "_manifests" || n == "_layers" {
            is_repo = true;
        } else if !n.starts_with('_') && !n.starts_with('.') && e.path().is_dir() {
            let child = if prefix.is_empty() {
                n.clone()
            } else {
                format!("{prefix}/{n}")
            };
            walk_repos(&e.path(), &child, out);
        }
    }
    if is_repo && !prefix.is_empty() {
        out.push(prefix.to_owned());
    }
}
