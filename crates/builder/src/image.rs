//! Assemble the result image: the base image's config and layers plus the
//! layers and history a build adds, as an OCI config and manifest.
//!
//! The config is edited as JSON rather than through `oci-spec`'s types so
//! that fields of the base config we do not model survive unchanged, as
//! BuildKit keeps them.

use layer::diff::LayerInfo;
use oci::{Descriptor, Digest, media_type};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error("base image config is not a JSON object")]
    Config,
    #[error("base image manifest is not an image manifest")]
    Manifest,
    #[error("serializing the image: {0}")]
    Json(serde_json::Error),
}

/// `map[key]` as an object, replacing anything else found there.
fn object_at<'a>(root: &'a mut Value, key: &str) -> &'a mut serde_json::Map<String, Value> {
    if !root.is_object() {
        *root = json!({});
    }
    let Value::Object(map) = root else {
        unreachable!("made an object above")
    };
    let v = map.entry(key).or_insert_with(|| json!({}));
    if !v.is_object() {
        *v = json!({});
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

/// An image under construction.
#[derive(Debug, Clone)]
pub struct NewImage {
    config: Value,
    layers: Vec<Descriptor>,
}

/// The finished image: bytes to push and their digests.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
}

impl NewImage {
    /// Start from a base image's manifest and config bytes.
    pub fn from_base(manifest: &oci::Manifest, config: &[u8]) -> Result<NewImage, ImageError> {
        let oci::ManifestKind::Image { layers, .. } = &manifest.kind else {
            return Err(ImageError::Manifest);
        };
        let config: Value = serde_json::from_slice(config).map_err(|_| ImageError::Config)?;
        if !config.is_object() {
            return Err(ImageError::Config);
        }
        Ok(NewImage {
            config,
            layers: layers.clone(),
        })
    }

    /// `FROM scratch`: no layers; BuildKit's empty image for
    /// `os`/`architecture` (WorkingDir `/`, the default `PATH`).
    pub fn scratch(os: &str, architecture: &str) -> NewImage {
        NewImage {
            config: json!({
                "architecture": architecture,
                "os": os,
                "config": {
                    "WorkingDir": "/",
                    "Env": [format!("PATH={}", sandbox::spec::DEFAULT_PATH)],
                },
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            }),
            layers: Vec::new(),
        }
    }

    fn history(&mut self, created_by: &str, empty_layer: bool, created: &str) {
        let entry = if empty_layer {
            json!({"created": created, "created_by": created_by, "comment": "slipway", "empty_layer": true})
        } else {
            json!({"created": created, "created_by": created_by, "comment": "slipway"})
        };
        if let Some(obj) = self.config.as_object_mut() {
            let h = obj.entry("history").or_insert_with(|| json!([]));
            if let Some(list) = h.as_array_mut() {
                list.push(entry);
            }
        }
    }

    /// Append a layer the build produced.
    pub fn add_layer(&mut self, layer: &LayerInfo, created_by: &str, created: &str) {
        self.layers.push(Descriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
            artifact_type: None,
            annotations: None,
            urls: None,
            platform: None,
            data: None,
        });
        if let Some(obj) = self.config.as_object_mut() {
            let rootfs = obj
                .entry("rootfs")
                .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
            if let Some(ids) = rootfs.get_mut("diff_ids").and_then(Value::as_array_mut) {
                ids.push(json!(layer.diff_id.to_string()));
            }
        }
        self.history(created_by, false, created);
    }

    /// Record a step that changed only the config (ENV, CMD, LABEL …).
    pub fn add_empty_step(&mut self, created_by: &str, created: &str) {
        self.history(created_by, true, created);
    }

    /// The container config (`config` in the image config), for edits.
    pub fn container_config(&mut self) -> &mut serde_json::Map<String, Value> {
        object_at(&mut self.config, "config")
    }

    pub fn finish(&mut self, created: &str) -> Result<BuiltImage, ImageError> {
        if let Some(obj) = self.config.as_object_mut() {
            obj.insert("created".into(), json!(created));
        }
        let config = serde_json::to_vec(&self.config).map_err(ImageError::Json)?;
        let config_digest = Digest::sha256(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": media_type::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": self.layers,
        });
        let manifest = serde_json::to_vec(&manifest).map_err(ImageError::Json)?;
        Ok(BuiltImage {
            manifest_digest: Digest::sha256(&manifest),
            config,
            config_digest,
            manifest,
        })
    }
}
