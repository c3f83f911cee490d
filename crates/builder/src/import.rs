//! `docker import` for a directory: one layer made from a root filesystem
//! tree, a minimal config, pushed as an image. This is how a machine without
//! internet access gets its first base image (e.g. from the host's busybox).

use std::path::Path;

use regclient::Client;
use serde_json::json;

use crate::{BuiltImage, LayerOptions, NewImage, write_layer};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("making the layer: {0}")]
    Layer(#[from] crate::DiffError),
    #[error("assembling the image: {0}")]
    Image(#[from] crate::ImageError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pushing {reference}: {source}")]
    Push {
        reference: String,
        #[source]
        source: regclient::RegClientError,
    },
}

/// Import `rootfs` as a one-layer linux/`arch` image with config `cmd`,
/// push it to `reference`, and return it.
pub async fn import_rootfs(
    rootfs: &Path,
    reference: &oci::Reference,
    client: &Client,
    opts: &LayerOptions,
    arch: &str,
    cmd: &[String],
    created: &str,
) -> Result<BuiltImage, ImportError> {
    if !rootfs.is_dir() {
        return Err(ImportError::NotADirectory(rootfs.display().to_string()));
    }
    let tmp = tempfile::NamedTempFile::new().map_err(|source| ImportError::Io {
        context: "creating a temporary layer file".into(),
        source,
    })?;
    let (root, file, o) = (rootfs.to_owned(), tmp.reopen(), *opts);
    let info = tokio::task::spawn_blocking(move || {
        let file = file.map_err(|source| ImportError::Io {
            context: "opening the temporary layer file".into(),
            source,
        })?;
        write_layer(&root, std::io::BufWriter::new(file), &o).map_err(ImportError::from)
    })
    .await
    .map_err(|e| ImportError::Io {
        context: "writing the layer".into(),
        source: std::io::Error::other(e.to_string()),
    })??;
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": if cmd.is_empty() { json!({}) } else { json!({ "Cmd": cmd }) },
        "rootfs": { "type": "layers", "diff_ids": [] },
        "history": [],
    });
    let scratch = json!({
        "schemaVersion": 2,
        "mediaType": oci::media_type::OCI_MANIFEST,
        "config": { "mediaType": oci::media_type::OCI_CONFIG, "digest": oci::Digest::sha256(b"{}").to_string(), "size": 2 },
        "layers": [],
    });
    let manifest = oci::Manifest::parse(
        scratch.to_string().as_bytes(),
        Some(oci::media_type::OCI_MANIFEST),
    )
    .map_err(|e| ImportError::Io {
        context: "building the scratch manifest".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut image = NewImage::from_base(&manifest, config.to_string().as_bytes())?;
    image.add_layer(
        &info,
        &format!("slipway image import {}", rootfs.display()),
        created,
    );
    let built = image.finish(created)?;
    let push = |source| ImportError::Push {
        reference: reference.to_string(),
        source,
    };
    let host = reference.api_host().to_owned();
    let path = tmp.path().to_owned();
    client
        .push_file(&host, &reference.repository, &info.digest, info.size, &path)
        .await
        .map_err(push)?;
    let cfg = bytes::Bytes::from(built.config.clone());
    client
        .push_blob(
            &host,
            &reference.repository,
            &built.config_digest,
            cfg.len() as u64,
            || reqwest::Body::from(cfg.clone()),
        )
        .await
        .map_err(push)?;
    client
        .put_manifest(
            reference,
            oci::media_type::OCI_MANIFEST,
            built.manifest.clone().into(),
        )
        .await
        .map_err(push)?;
    Ok(built)
}
