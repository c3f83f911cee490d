//! What the console shows of the registry: repositories and their tags with
//! digest, size and creation time, read from the same metadata and blobs
//! the `/v2/` API serves (nothing is cached or stored for it).

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::{Registry, RegistryError};
use oci::manifest::{Manifest, ManifestKind};

/// Manifests and configs larger than this are not read for a listing.
const MAX_READ: u64 = 4 << 20;

/// One tag of a repository, as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagInfo {
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    /// Manifest, config and layers (compressed); for an index, its own
    /// manifests' totals summed.
    pub size: u64,
    /// The image config's `created`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// `os/arch` of each image (one for an image, several for an index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
}

impl Registry {
    /// Every repository, sorted.
    pub async fn repositories(&self) -> Result<Vec<String>> {
        self.meta.repositories().await
    }

    /// The tags of `name` with what they point at, sorted by tag; `None`
    /// when the repository does not exist.
    pub async fn describe_tags(&self, name: &str) -> Result<Option<Vec<TagInfo>>> {
        let Some(tags) = self.meta.tags(name).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for tag in tags {
            let Some(digest) = self.meta.tag(name, &tag).await? else {
                continue;
            };
            let (media_type, size, created, platforms) = self.describe(&digest, 1).await?;
            out.push(TagInfo {
                tag,
                digest: digest.to_string(),
                media_type,
                size,
                created,
                platforms,
            });
        }
        Ok(Some(out))
    }

    /// Media type, total size, creation time and platforms of the manifest
    /// `d`; an index is described through its manifests (`depth` bounds it).
    async fn describe(
        &self,
        d: &oci::Digest,
        depth: u8,
    ) -> Result<(String, u64, Option<String>, Vec<String>)> {
        let bytes = self.read_small(d).await?;
        let m = Manifest::parse(&bytes, None)
            .map_err(|e| RegistryError::internal("reading a stored manifest", e))?;
        let own = bytes.len() as u64;
        match m.kind {
            ManifestKind::Image { config, layers } => {
                let size = own + config.size + layers.iter().map(|l| l.size).sum::<u64>();
                let cfg = self.read_small(&config.digest).await.ok();
                let parsed: Option<ImageConfig> = cfg.and_then(|c| serde_json::from_slice(&c).ok());
                let created = parsed.as_ref().and_then(|c| c.created.clone());
                let platforms = parsed
                    .and_then(|c| Some(format!("{}/{}", c.os?, c.architecture?)))
                    .into_iter()
                    .collect();
                Ok((m.media_type, size, created, platforms))
            }
            ManifestKind::Index { manifests } => {
                let mut size = own;
                let mut created = None;
                let mut platforms = Vec::new();
                for child in manifests.iter().filter(|_| depth > 0) {
                    if let Ok((_, s, c, p)) =
                        Box::pin(self.describe(&child.digest, depth - 1)).await
                    {
                        size += s;
                        created = created.max(c);
                        platforms.extend(p);
                    }
                }
                Ok((m.media_type, size, created, platforms))
            }
        }
    }

    async fn read_small(&self, d: &oci::Digest) -> Result<Vec<u8>> {
        let read = self.store.open(d, None).await?;
        if read.len > MAX_READ {
            return Err(RegistryError::internal(
                "reading a stored manifest",
                format!("{d} is {} bytes", read.len),
            ));
        }
        let mut buf = Vec::new();
        let mut reader = read.reader;
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut buf)
            .await
            .map_err(|e| RegistryError::internal("reading a stored blob", e))?;
        Ok(buf)
    }
}

#[derive(Deserialize)]
struct ImageConfig {
    created: Option<String>,
    os: Option<String>,
    architecture: Option<String>,
}
