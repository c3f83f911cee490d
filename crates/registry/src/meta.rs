//! Repository metadata: which blobs and manifests belong to a repository,
//! its tags, referrers and open uploads. Blob bytes live in the content
//! store; this is only the links to them, as keys of a [`store::kv::Kv`]
//! (files under `<data>/repos/` by default, objects beside the blobs with
//! `--blob-store`, so replicas share them):
//!
//! ```text
//! <name>/_layers/<alg>/<hex>                 blob link (empty)
//! <name>/_manifests/revisions/<alg>/<hex>    manifest link (holds its media type)
//! <name>/_manifests/tags/<tag>               tag (holds the digest)
//! <name>/_referrers/<alg>-<hex>/<alg>-<hex>  referrer descriptor (JSON), by subject
//! <name>/_uploads/<id>                       upload owned by this repository
//! ```
//!
//! Repository names and tags are validated by [`crate::names`] before they
//! reach this module, and `_`-prefixed directories cannot be name
//! components, so a repository's metadata can never collide with another's.
//! A value is replaced whole (temp file + rename, or one object put).

use std::path::Path;
use std::sync::Arc;

use oci::{Descriptor, Digest};
use store::kv::{FsKv, Kv};

use crate::error::{RegistryError, Result};

#[derive(Clone)]
pub struct Meta {
    kv: Arc<dyn Kv>,
}

fn io_err(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RegistryError {
    move |e| RegistryError::internal(&context.to_string(), e)
}

fn digest_file(d: &Digest) -> String {
    format!("{}-{}", d.algorithm(), d.hex())
}

impl Meta {
    /// Metadata as files under `<data>/repos`.
    pub fn new(data: &Path) -> Meta {
        Meta::with_kv(Arc::new(FsKv::new(data.join("repos"))))
    }

    /// Metadata in `kv` (shared object storage, say).
    pub fn with_kv(kv: Arc<dyn Kv>) -> Meta {
        Meta { kv }
    }

    fn blob_link(name: &str, d: &Digest) -> String {
        format!("{name}/_layers/{}/{}", d.algorithm().as_str(), d.hex())
    }

    fn manifest_link(name: &str, d: &Digest) -> String {
        format!(
            "{name}/_manifests/revisions/{}/{}",
            d.algorithm().as_str(),
            d.hex()
        )
    }

    fn tag_key(name: &str, tag: &str) -> String {
        format!("{name}/_manifests/tags/{tag}")
    }

    fn referrers_dir(name: &str, subject: &Digest) -> String {
        format!("{name}/_referrers/{}", digest_file(subject))
    }

    fn upload_key(name: &str, id: &str) -> String {
        format!("{name}/_uploads/{id}")
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.kv
            .get(key)
            .await
            .map_err(io_err(format!("reading {key}")))
    }

    async fn write(&self, key: &str, value: &[u8], durable: bool) -> Result<()> {
        self.kv
            .put(key, value, durable)
            .await
            .map_err(io_err(format!("writing {key}")))
    }

    async fn remove(&self, key: &str) -> Result<bool> {
        self.kv
            .delete(key)
            .await
            .map_err(io_err(format!("removing {key}")))
    }

    async fn list(&self, dir: &str) -> Result<Vec<String>> {
        self.kv
            .list(dir)
            .await
            .map_err(io_err(format!("listing {dir}")))
    }

    /// An unreachable store is an error (a `5xx`), never "absent" (a
    /// `404` that would send a client on a wrong path).
    async fn exists(&self, key: &str) -> Result<bool> {
        self.kv
            .exists(key)
            .await
            .map_err(io_err(format!("reading {key}")))
    }

    pub async fn repo_exists(&self, name: &str) -> bool {
        for dir in ["_manifests", "_layers"] {
            if !self
                .kv
                .list(&format!("{name}/{dir}"))
                .await
                .unwrap_or_default()
                .is_empty()
            {
                return true;
            }
        }
        false
    }

    pub async fn link_blob(&self, name: &str, d: &Digest) -> Result<()> {
        let k = Self::blob_link(name, d);
        if self.exists(&k).await? {
            return Ok(());
        }
        self.write(&k, b"", false).await
    }

    pub async fn has_blob(&self, name: &str, d: &Digest) -> Result<bool> {
        self.exists(&Self::blob_link(name, d)).await
    }

    pub async fn unlink_blob(&self, name: &str, d: &Digest) -> Result<bool> {
        self.remove(&Self::blob_link(name, d)).await
    }

    pub async fn link_manifest(&self, name: &str, d: &Digest, media_type: &str) -> Result<()> {
        self.write(&Self::manifest_link(name, d), media_type.as_bytes(), true)
            .await
    }

    /// The media type of a manifest linked in `name`, or `None`.
    pub async fn manifest_media_type(&self, name: &str, d: &Digest) -> Result<Option<String>> {
        Ok(self
            .read(&Self::manifest_link(name, d))
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    pub async fn unlink_manifest(&self, name: &str, d: &Digest) -> Result<bool> {
        self.remove(&Self::manifest_link(name, d)).await
    }

    pub async fn set_tag(&self, name: &str, tag: &str, d: &Digest) -> Result<()> {
        self.write(&Self::tag_key(name, tag), d.to_string().as_bytes(), true)
            .await
    }

    pub async fn tag(&self, name: &str, tag: &str) -> Result<Option<Digest>> {
        let k = Self::tag_key(name, tag);
        let Some(b) = self.read(&k).await? else {
            return Ok(None);
        };
        String::from_utf8_lossy(&b)
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| RegistryError::internal(&format!("corrupt tag {k}"), e))
    }

    pub async fn delete_tag(&self, name: &str, tag: &str) -> Result<bool> {
        self.remove(&Self::tag_key(name, tag)).await
    }

    /// Tags of `name` in lexical order, or `None` if the repository is unknown.
    pub async fn tags(&self, name: &str) -> Result<Option<Vec<String>>> {
        if !self.repo_exists(name).await {
            return Ok(None);
        }
        let mut tags = self.list(&format!("{name}/_manifests/tags")).await?;
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
        let k = format!(
            "{}/{}",
            Self::referrers_dir(name, subject),
            digest_file(&desc.digest)
        );
        let json = serde_json::to_vec(desc).map_err(|e| RegistryError::internal("referrer", e))?;
        self.write(&k, &json, true).await
    }

    pub async fn remove_referrer(&self, name: &str, subject: &Digest, d: &Digest) -> Result<()> {
        let k = format!("{}/{}", Self::referrers_dir(name, subject), digest_file(d));
        self.remove(&k).await.map(drop)
    }

    pub async fn referrers(&self, name: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        let dir = Self::referrers_dir(name, subject);
        let mut out = Vec::new();
        for f in self.list(&dir).await? {
            let k = format!("{dir}/{f}");
            let Some(bytes) = self.read(&k).await? else {
                continue;
            };
            let desc: Descriptor = serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::internal(&format!("corrupt {k}"), e))?;
            out.push(desc);
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    pub async fn add_upload(&self, name: &str, id: &str) -> Result<()> {
        self.write(&Self::upload_key(name, id), b"", false).await
    }

    pub async fn owns_upload(&self, name: &str, id: &str) -> Result<bool> {
        self.exists(&Self::upload_key(name, id)).await
    }

    pub async fn remove_upload(&self, name: &str, id: &str) {
        let _ = self.kv.delete(&Self::upload_key(name, id)).await;
    }

    /// Every repository, sorted: the names above a `_manifests` or
    /// `_layers` component of any key.
    pub async fn repositories(&self) -> Result<Vec<String>> {
        let keys = self
            .kv
            .walk("")
            .await
            .map_err(io_err("listing repositories"))?;
        let mut out: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                let parts: Vec<&str> = k.split('/').collect();
                let at = parts
                    .iter()
                    .position(|p| *p == "_manifests" || *p == "_layers")?;
                (at > 0).then(|| parts[..at].join("/"))
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every manifest digest linked in `name`.
    pub async fn manifests(&self, name: &str) -> Result<Vec<Digest>> {
        self.list_digests(&format!("{name}/_manifests/revisions"))
            .await
    }

    /// Every blob digest linked in `name`.
    pub async fn blob_links(&self, name: &str) -> Result<Vec<Digest>> {
        self.list_digests(&format!("{name}/_layers")).await
    }

    /// Digests stored as `<dir>/<alg>/<hex>`.
    async fn list_digests(&self, dir: &str) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in self.list(dir).await? {
            for hex in self.list(&format!("{dir}/{alg}")).await? {
                if let Ok(d) = format!("{alg}:{hex}").parse() {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}
