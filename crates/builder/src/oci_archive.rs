//! `--output type=oci,dest=FILE`: the built image as an OCI image layout in
//! a tar file (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`), what
//! `skopeo copy oci-archive:FILE` and `docker load`-style tools read, and
//! what BuildKit's `oci` exporter writes.
//!
//! The base image's layers are downloaded from its registry (the layer store
//! keeps them unpacked, not as blobs) into the work dir, then every blob is
//! streamed into the tar, never held in memory whole. The tar is written
//! beside `dest` and renamed over it, so `dest` is complete or absent.

use std::path::Path;
use std::sync::Arc;

use layer::diff::NewLayer;
use oci::Reference;
use regclient::Client;
use serde_json::json;

use crate::image::BuiltImage;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    #[error("downloading base layer {digest}: {source}")]
    Download {
        digest: String,
        #[source]
        source: regclient::RegClientError,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("encoding index.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Write the image (`built`, whose layers are the base's, if any, plus
/// `new_layers`) to `dest` as an OCI layout tarball.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write(
    client: &Arc<Client>,
    origin: Option<&(Reference, regclient::FetchedManifest)>,
    new_layers: &[NewLayer],
    built: &BuiltImage,
    name: Option<&Reference>,
    work_dir: &Path,
    dest: &Path,
) -> Result<(), ArchiveError> {
    let downloads = work_dir.join("oci-archive-blobs");
    std::fs::create_dir_all(&downloads)?;
    let mut blobs: Vec<(oci::Digest, std::path::PathBuf)> = Vec::new();
    if let Some((base, base_manifest)) = origin
        && let oci::ManifestKind::Image { layers, .. } = &base_manifest.manifest.kind
    {
        for l in layers {
            let path = downloads.join(l.digest.hex());
            if !path.is_file() {
                let partial = path.with_extension("partial");
                let mut f = tokio::fs::File::create(&partial).await?;
                client
                    .get_blob(base.api_host(), &base.repository, &l.digest, &mut f)
                    .await
                    .map_err(|source| ArchiveError::Download {
                        digest: l.digest.to_string(),
                        source,
                    })?;
                drop(f);
                std::fs::rename(&partial, &path)?;
            }
            blobs.push((l.digest.clone(), path));
        }
    }
    for l in new_layers {
        blobs.push((l.info.digest.clone(), l.file.clone()));
    }
    let mut annotations = serde_json::Map::new();
    if let Some(n) = name {
        // BuildKit's `oci` exporter: the tag as the ref name, the full
        // reference for containerd.
        annotations.insert("io.containerd.image.name".into(), json!(n.to_string()));
        if let Some(tag) = &n.tag {
            annotations.insert("org.opencontainers.image.ref.name".into(), json!(tag));
        }
    }
    let mut descriptor = json!({
        "mediaType": oci::media_type::OCI_MANIFEST,
        "digest": built.manifest_digest.to_string(),
        "size": built.manifest.len(),
    });
    if !annotations.is_empty() {
        descriptor["annotations"] = serde_json::Value::Object(annotations);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::media_type::OCI_INDEX,
        "manifests": [descriptor],
    }))?;
    let config_digest = built.config_digest.clone();
    let manifest_digest = built.manifest_digest.clone();
    let config = built.config.clone();
    let manifest = built.manifest.clone();
    let dest = dest.to_path_buf();
    let result = tokio::task::spawn_blocking(move || -> Result<(), ArchiveError> {
        let partial = dest.with_extension("partial");
        let f = std::fs::File::create(&partial)?;
        let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
        let mut add = |path: &str, data: &[u8]| -> std::io::Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, data)
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        add("index.json", &index)?;
        let blob_path = |d: &oci::Digest| format!("blobs/{}/{}", d.algorithm(), d.hex());
        add(&blob_path(&config_digest), &config)?;
        add(&blob_path(&manifest_digest), &manifest)?;
        let mut seen = std::collections::BTreeSet::new();
        for (d, path) in &blobs {
            if !seen.insert(d.to_string()) {
                continue;
            }
            let mut file = std::fs::File::open(path)?;
            let mut h = tar::Header::new_ustar();
            h.set_size(file.metadata()?.len());
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, blob_path(d), &mut file)?;
        }
        let inner = tar.into_inner()?;
        let f = inner.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&partial, &dest)?;
        Ok(())
    })
    .await
    .map_err(|e| ArchiveError::Io(std::io::Error::other(e)))?;
    let _ = std::fs::remove_dir_all(&downloads);
    result
}
