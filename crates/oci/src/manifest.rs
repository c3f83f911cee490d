//! Parsing and validation of image manifests and indexes (OCI and Docker
//! schema 2). Registries store a manifest's bytes untouched; this module only
//! decides whether those bytes are a valid manifest and what they reference.
//!
//! We deserialize into our own lenient view rather than `oci_spec`'s strict
//! types: a registry must accept unknown fields, Docker media types and
//! artifacts whose config is not an image config, and must read `subject` and
//! `artifactType` from all of them alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media_type;

/// A content descriptor: what a manifest says about one blob or manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest schemaVersion must be 2, found {0:?}")]
    SchemaVersion(Option<i64>),
    #[error("manifest mediaType {body:?} does not match the Content-Type {header:?}")]
    MediaTypeMismatch { body: String, header: String },
    #[error("Docker schema 1 manifests are not supported; push schema 2 or OCI")]
    Schema1,
    #[error("manifest media type {0:?} is not supported")]
    UnsupportedMediaType(String),
    #[error("manifest has no mediaType and no Content-Type says what it is")]
    UnknownKind,
    #[error("image manifest has no config descriptor")]
    MissingConfig,
    #[error("image manifest has no layers array")]
    MissingLayers,
    #[error("index has no manifests array")]
    MissingManifests,
    #[error("{0} has a descriptor with an invalid media type {1:?}")]
    BadDescriptorMediaType(&'static str, String),
}

/// What kind of manifest it is, with the descriptors it references.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    Index {
        manifests: Vec<Descriptor>,
    },
}

/// A validated manifest or index.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub kind: ManifestKind,
    pub artifact_type: Option<String>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// `type/subtype` per RFC 6838, loosely: enough to refuse garbage.
fn looks_like_media_type(s: &str) -> bool {
    let valid = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+=;\" ".contains(&b))
    };
    matches!(s.split_once('/'), Some((t, sub)) if valid(t) && valid(sub))
}

impl Manifest {
    /// Parse and validate `bytes`. `content_type` is the media type the
    /// client declared (the `Content-Type` of a push), if any.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim())
            .filter(|c| !c.is_empty());
        if matches!(
            content_type,
            Some(media_type::DOCKER_SCHEMA1 | media_type::DOCKER_SCHEMA1_SIGNED)
        ) {
            return Err(ManifestError::Schema1);
        }
        let raw: RawManifest = serde_json::from_slice(bytes)?;
        if raw.schema_version != Some(2) {
            if raw.schema_version == Some(1) {
                return Err(ManifestError::Schema1);
            }
            return Err(ManifestError::SchemaVersion(raw.schema_version));
        }
        let media_type = match (&raw.media_type, content_type) {
            (Some(body), Some(header)) if body != header => {
                return Err(ManifestError::MediaTypeMismatch {
                    body: body.clone(),
                    header: header.to_owned(),
                });
            }
            (Some(body), _) => body.clone(),
            (None, Some(header))
                if media_type::is_image_manifest(header) || media_type::is_index(header) =>
            {
                header.to_owned()
            }
            (None, _) if raw.manifests.is_some() => media_type::OCI_INDEX.to_owned(),
            (None, _) if raw.config.is_some() => media_type::OCI_MANIFEST.to_owned(),
            (None, _) => return Err(ManifestError::UnknownKind),
        };
        let kind = if media_type::is_image_manifest(&media_type) {
            let config = raw.config.ok_or(ManifestError::MissingConfig)?;
            let layers = raw.layers.ok_or(ManifestError::MissingLayers)?;
            check_descriptor("config", &config)?;
            for l in &layers {
                check_descriptor("layers", l)?;
            }
            ManifestKind::Image { config, layers }
        } else if media_type::is_index(&media_type) {
            let manifests = raw.manifests.ok_or(ManifestError::MissingManifests)?;
            for m in &manifests {
                check_descriptor("manifests", m)?;
            }
            ManifestKind::Index { manifests }
        } else {
            return Err(ManifestError::UnsupportedMediaType(media_type));
        };
        if let Some(s) = &raw.subject {
            check_descriptor("subject", s)?;
        }
        Ok(Manifest {
            media_type,
            kind,
            artifact_type: raw.artifact_type,
            subject: raw.subject,
            annotations: raw.annotations,
        })
    }

    /// The artifact type the referrers API reports: `artifactType`, or for an
    /// image manifest without one, its config's media type.
    pub fn effective_artifact_type(&self) -> Option<&str> {
        if let Some(a) = &self.artifact_type {
            return Some(a);
        }
        match &self.kind {
            ManifestKind::Image { config, .. } => Some(&config.media_type),
            ManifestKind::Index { .. } => None,
        }
    }

    /// Blobs a registry must already hold before accepting this manifest
    /// (config and layers, less non-distributable layers).
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        let (config, layers): (Option<&Descriptor>, &[Descriptor]) = match &self.kind {
            ManifestKind::Image { config, layers } => (Some(config), layers),
            ManifestKind::Index { .. } => (None, &[]),
        };
        config.into_iter().chain(
            layers
                .iter()
                .filter(|l| !media_type::is_non_distributable(&l.media_type)),
        )
    }

    /// Manifests a registry must already hold before accepting this index.
    pub fn required_manifests(&self) -> &[Descriptor] {
        match &self.kind {
            ManifestKind::Index { manifests } => manifests,
            ManifestKind::Image { .. } => &[],
        }
    }
}

fn check_descriptor(field: &'static str, d: &Descriptor) -> Result<(), ManifestError> {
    if !looks_like_media_type(&d.media_type) {
        return Err(ManifestError::BadDescriptorMediaType(
            field,
            d.media_type.clone(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const L1: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{CFG}","size":2}},"layers":[{{"mediaType":"{}","digest":"{L1}","size":0}}]{extra}}}"#,
            media_type::OCI_MANIFEST,
            media_type::OCI_CONFIG,
            media_type::OCI_LAYER_GZIP
        )
    }

    #[test]
    fn parses_image_manifest() {
        let m = Manifest::parse(image("").as_bytes(), Some(media_type::OCI_MANIFEST)).unwrap();
        assert_eq!(m.media_type, media_type::OCI_MANIFEST);
        let blobs: Vec<String> = m.required_blobs().map(|d| d.digest.to_string()).collect();
        assert_eq!(blobs, vec![CFG.to_string(), L1.to_string()]);
        assert_eq!(m.effective_artifact_type(), Some(media_type::OCI_CONFIG));
    }

    #[test]
    fn reads_subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/x-sig","subject":{{"mediaType":"{}","digest":"{L1}","size":0}}"#,
            media_type::OCI_MANIFEST
        );
        let m = Manifest::parse(image(&extra).as_bytes(), None).unwrap();
        assert_eq!(m.effective_artifact_type(), Some("application/x-sig"));
        assert_eq!(m.subject.unwrap().digest.to_string(), L1);
    }

    #[test]
    fn rejects_invalid_manifests() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("{", None, "not valid JSON"),
            (r#"{"schemaVersion":1}"#, None, "schema 1"),
            (r#"{"schemaVersion":3}"#, None, "schemaVersion"),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
                None,
                "no config",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
                None,
                "no manifests",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"text/plain","manifests":[]}"#,
                None,
                "not supported",
            ),
            (r#"{"schemaVersion":2}"#, None, "no mediaType"),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"x","digest":"sha256:00","size":1}]}"#,
                None,
                "not valid JSON",
            ),
        ];
        for (body, ct, want) in cases {
            let err = Manifest::parse(body.as_bytes(), *ct)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}: got {err:?}, want {want:?}");
        }
        let err = Manifest::parse(image("").as_bytes(), Some(media_type::OCI_INDEX))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn skips_non_distributable_layers() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{CFG}","size":2}},"layers":[{{"mediaType":"{}","digest":"{L1}","size":0,"urls":["https://example.invalid/l"]}}]}}"#,
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_CONFIG,
            media_type::DOCKER_FOREIGN_LAYER_GZIP
        );
        let m = Manifest::parse(body.as_bytes(), Some(media_type::DOCKER_MANIFEST)).unwrap();
        assert_eq!(m.required_blobs().count(), 1);
    }
}
