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

    /// A history entry; `created: None` is filled in by [`NewImage::finish`].
    fn history(&mut self, created_by: &str, empty_layer: bool, created: Option<&str>) {
        let mut entry = serde_json::Map::new();
        if let Some(c) = created {
            entry.insert("created".into(), json!(c));
        }
        entry.insert("created_by".into(), json!(created_by));
        entry.insert("comment".into(), json!("slipway"));
        if empty_layer {
            entry.insert("empty_layer".into(), json!(true));
        }
        let entry = Value::Object(entry);
        if let Some(obj) = self.config.as_object_mut() {
            let h = obj.entry("history").or_insert_with(|| json!([]));
            if let Some(list) = h.as_array_mut() {
                list.push(entry);
            }
        }
    }

    /// Append a layer the build produced.
    pub fn add_layer(&mut self, layer: &LayerInfo, created_by: &str, created: &str) {
        self.add_layer_at(layer, created_by, Some(created));
    }

    /// [`NewImage::add_layer`] with the time the layer was first made (a
    /// cached step keeps its own), or `None` to fill in at the end.
    pub fn add_layer_at(&mut self, layer: &LayerInfo, created_by: &str, created: Option<&str>) {
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

    /// Record a step that changed only the config (ENV, CMD, LABEL …);
    /// `created: None` takes a layer's time at the end, as BuildKit does.
    pub fn add_empty_step(&mut self, created_by: &str, created: Option<&str>) {
        self.history(created_by, true, created);
    }

    /// The container config (`config` in the image config), for edits.
    pub fn container_config(&mut self) -> &mut serde_json::Map<String, Value> {
        object_at(&mut self.config, "config")
    }

    /// The image as of `created` (every history entry has its time).
    pub fn finish(&mut self, created: &str) -> Result<BuiltImage, ImageError> {
        self.finish_with(created, true)
    }

    /// The config and manifest. With `fixed` (`SOURCE_DATE_EPOCH`), the
    /// image's `created` is `created`. Otherwise it is BuildKit's: history
    /// entries without a time take the first new layer's (or the layer's
    /// before them), and the image is as old as its last history entry,
    /// so a fully cached rebuild (whose layers keep the time they were
    /// first made) gives the same digest. `created` when there is none.
    pub fn finish_with(&mut self, created: &str, fixed: bool) -> Result<BuiltImage, ImageError> {
        let last = if fixed {
            None
        } else {
            fill_history_times(&mut self.config)
        };
        if let Some(obj) = self.config.as_object_mut() {
            obj.insert("created".into(), json!(last.as_deref().unwrap_or(created)));
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

/// BuildKit's rule for history times (its exporter's layer and history
/// normalisation): an entry without a time takes the first time that
/// follows a gap, or the time of the entry before it. Returns the last
/// entry's time.
fn fill_history_times(config: &mut Value) -> Option<String> {
    let list = config.get_mut("history")?.as_array_mut()?;
    let time = |h: &Value| h.get("created").and_then(Value::as_str).map(str::to_owned);
    let mut created = None;
    let mut gap = false;
    for h in list.iter() {
        match time(h) {
            Some(t) => {
                created = Some(t);
                if gap {
                    break;
                }
            }
            None => gap = true,
        }
    }
    gap = false;
    for h in list.iter_mut() {
        match time(h) {
            Some(t) if gap => created = Some(t),
            Some(_) => {}
            None => {
                gap = true;
                if let (Some(c), Some(obj)) = (&created, h.as_object_mut()) {
                    obj.insert("created".into(), json!(c));
                }
            }
        }
    }
    list.last().and_then(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(config: &Value) -> Vec<&str> {
        config["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["created"].as_str().unwrap_or("-"))
            .collect()
    }

    /// BuildKit's rule: config-only steps before the first new layer take
    /// its time, later ones the layer's before them; the image is as old
    /// as its last entry.
    #[test]
    fn history_times_are_filled_as_buildkit_fills_them() {
        let mut config = json!({"history": [
            {"created": "2020-01-01T00:00:00Z", "created_by": "base"},
            {"created_by": "ENV a=1", "empty_layer": true},
            {"created": "2024-01-01T00:00:00Z", "created_by": "RUN x"},
            {"created_by": "LABEL l=1", "empty_layer": true},
            {"created": "2024-02-01T00:00:00Z", "created_by": "RUN y"},
            {"created_by": "CMD z", "empty_layer": true},
        ]});
        let last = fill_history_times(&mut config);
        assert_eq!(
            times(&config),
            [
                "2020-01-01T00:00:00Z",
                "2024-01-01T00:00:00Z",
                "2024-01-01T00:00:00Z",
                "2024-01-01T00:00:00Z",
                "2024-02-01T00:00:00Z",
                "2024-02-01T00:00:00Z",
            ]
        );
        assert_eq!(last.as_deref(), Some("2024-02-01T00:00:00Z"));
    }

    #[test]
    fn without_an_epoch_the_image_is_as_old_as_its_last_step() {
        let base = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "history": []});
        let manifest = oci::Manifest::parse(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
            Some(media_type::OCI_MANIFEST),
        )
        .unwrap();
        let image = |step_time: &str| {
            let mut i = NewImage::from_base(&manifest, base.to_string().as_bytes()).unwrap();
            let layer = LayerInfo {
                digest: Digest::sha256(b"layer"),
                diff_id: Digest::sha256(b"diff"),
                size: 5,
                media_type: media_type::OCI_LAYER_GZIP.into(),
                entries: 1,
            };
            i.add_empty_step("ENV a=1", None);
            i.add_layer_at(&layer, "RUN x", Some(step_time));
            i.finish_with("2030-01-01T00:00:00Z", false).unwrap()
        };
        let a = image("2024-01-01T00:00:00Z");
        let config: Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(config["created"], "2024-01-01T00:00:00Z");
        // A rebuild at another time, every step cached: the same image.
        assert_eq!(
            image("2024-01-01T00:00:00Z").manifest_digest,
            a.manifest_digest
        );
        assert_ne!(
            image("2024-01-02T00:00:00Z").manifest_digest,
            a.manifest_digest
        );
    }
}
