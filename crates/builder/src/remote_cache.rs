//! The build cache shared through a registry (`--cache-to REF`,
//! `--cache-from REF`), so every agent of a pool, or two work dirs of one
//! machine, reuse each other's steps.
//!
//! What is stored at `REF` is an OCI image manifest whose layers are the
//! layers of every step the build produced (all stages: BuildKit's
//! `mode=max`), and whose config (media type [`CONFIG_MEDIA_TYPE`]) maps
//! each step's cache key (the same chained key as the local cache: base
//! digest, instruction, build args, content of the files read) to its layer
//! and diffID. Importing a step downloads its layer and unpacks it, in
//! overlay form, as the step's upper dir in the local cache, which then
//! serves it like a step built here. Cache keys never hold secrets.
//!
//! A cache that cannot be read is a warning, never a failed build, as in
//! BuildKit; a cache that cannot be written fails the build (the caller
//! asked for it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layer::diff::{LayerInfo, NewLayer};
use layer::unpack::WhiteoutMode;
use oci::{Digest, Reference};
use regclient::Client;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Media type of the cache's config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.slipway.buildcache.config.v1+json";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteCacheError {
    #[error("{what}: {source}")]
    Registry {
        what: String,
        #[source]
        source: regclient::RegClientError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{to} changed under {tries} exports in a row (other builds exporting to it)")]
    Contended { to: String, tries: usize },
}

/// A layer step a build made or reused: what `--cache-to` exports.
#[derive(Debug, Clone)]
pub(crate) struct DoneStep {
    pub key: String,
    pub layer: NewLayer,
    /// When the step was first made (RFC 3339), kept through the cache.
    pub created: Option<String>,
}

/// The config blob: one entry per cached step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheConfig {
    steps: Vec<CacheStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheStep {
    key: String,
    digest: String,
    diff_id: String,
    size: u64,
    media_type: String,
    /// When the step was first made: its history time wherever reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<String>,
}

/// The steps every `--cache-from` offers, by cache key.
#[derive(Default)]
pub(crate) struct RemoteCache {
    steps: HashMap<String, (Reference, CacheStep)>,
}

/// At most this many steps stay in one cache: an export keeps its own
/// build's steps and then the cache's newest others, so a pool's cache,
/// shared by every project built on it, stays bounded; what falls out is
/// pruned by the registry's gc.
pub const MAX_CACHE_STEPS: usize = 2000;

impl RemoteCache {
    /// Read the caches at `refs`; the first one offering a key wins.
    /// Unreadable caches come back as warnings.
    pub async fn load(client: &Arc<Client>, refs: &[Reference]) -> (RemoteCache, Vec<String>) {
        let mut cache = RemoteCache::default();
        let mut warnings = Vec::new();
        for r in refs {
            match read_config(client, r).await {
                Ok(config) => {
                    for s in config.steps {
                        cache
                            .steps
                            .entry(s.key.clone())
                            .or_insert_with(|| (r.clone(), s));
                    }
                }
                Err(e) => warnings.push(format!("--cache-from {r}: {e}")),
            }
        }
        (cache, warnings)
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Bring the step `key` into the local cache at `cache_dir/key` (upper
    /// dir, layer blob, `layer.json` last). `Ok(false)` when no cache has it.
    pub async fn import(
        &self,
        client: &Arc<Client>,
        key: &str,
        cache_dir: &Path,
        mode: WhiteoutMode,
        lowers: &[PathBuf],
        limits: layer::unpack::Limits,
    ) -> Result<bool, RemoteCacheError> {
        let Some((from, step)) = self.steps.get(key) else {
            return Ok(false);
        };
        let digest: Digest = step
            .digest
            .parse()
            .map_err(|e| RemoteCacheError::Invalid(format!("{from}: layer digest: {e}")))?;
        let diff_id: Digest = step
            .diff_id
            .parse()
            .map_err(|e| RemoteCacheError::Invalid(format!("{from}: diff_id: {e}")))?;
        let io = |what: String| move |source| RemoteCacheError::Io { what, source };
        std::fs::create_dir_all(cache_dir)
            .map_err(io(format!("creating {}", cache_dir.display())))?;
        // Assembled aside and renamed in, as a local step is: complete or absent.
        let tmp = cache_dir.join(format!("{key}.import-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("upper"))
            .map_err(io(format!("creating {}", tmp.display())))?;
        let layer = tmp.join("layer");
        let mut f = tokio::fs::File::create(&layer)
            .await
            .map_err(io(format!("creating {}", layer.display())))?;
        client
            .get_blob(from.api_host(), &from.repository, &digest, &mut f)
            .await
            .map_err(|source| RemoteCacheError::Registry {
                what: format!("downloading cached layer {digest} from {from}"),
                source,
            })?;
        drop(f);
        let (layer_path, upper, lowers_owned) = (layer.clone(), tmp.join("upper"), lowers.to_vec());
        let (d, di) = (digest.clone(), diff_id.clone());
        tokio::task::spawn_blocking(move || -> Result<(), RemoteCacheError> {
            let f = std::fs::File::open(&layer_path)
                .map_err(io(format!("opening {}", layer_path.display())))?;
            layer::unpack::apply_archive(
                std::io::BufReader::with_capacity(1 << 20, f),
                &d,
                Some(&di),
                &upper,
                mode,
                &lowers_owned,
                layer::unpack::Unpack {
                    limits,
                    ..Default::default()
                },
            )
            .map_err(|e| RemoteCacheError::Invalid(format!("unpacking cached layer {d}: {e}")))?;
            Ok(())
        })
        .await
        .map_err(|e| RemoteCacheError::Invalid(e.to_string()))??;
        let info = LayerInfo {
            digest,
            diff_id,
            size: step.size,
            media_type: step.media_type.clone(),
            entries: 0,
        };
        let json =
            serde_json::to_vec(&info).map_err(|e| RemoteCacheError::Invalid(e.to_string()))?;
        if let Some(c) = step
            .created
            .as_deref()
            .filter(|c| humantime::parse_rfc3339(c).is_ok())
        {
            std::fs::write(tmp.join("created"), c).map_err(io("writing created".into()))?;
        }
        std::fs::write(tmp.join("layer.json"), json).map_err(io("writing layer.json".into()))?;
        let dest = cache_dir.join(key);
        if std::fs::rename(&tmp, &dest).is_err() {
            // Another build stored it meanwhile: theirs serves as well.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Ok(true)
    }
}

async fn read_config(client: &Arc<Client>, r: &Reference) -> Result<CacheConfig, RemoteCacheError> {
    read_cache(client, r).await?.1
}

/// The manifest digest at `r` and, if it is a cache, its config (else why
/// not). The outer error is the manifest's: a 404 means no cache yet.
async fn read_cache(
    client: &Arc<Client>,
    r: &Reference,
) -> Result<(Digest, Result<CacheConfig, RemoteCacheError>), RemoteCacheError> {
    let reg = |what: String| move |source| RemoteCacheError::Registry { what, source };
    let m = client
        .get_manifest(r)
        .await
        .map_err(reg("reading the cache manifest".into()))?;
    let oci::ManifestKind::Image { config, .. } = &m.manifest.kind else {
        let not = RemoteCacheError::Invalid("not a build cache (an index)".into());
        return Ok((m.digest, Err(not)));
    };
    if config.media_type != CONFIG_MEDIA_TYPE {
        let not = RemoteCacheError::Invalid(format!(
            "not a build cache (config is {})",
            config.media_type
        ));
        return Ok((m.digest, Err(not)));
    }
    let mut bytes = Vec::new();
    let config = match client
        .get_blob(r.api_host(), &r.repository, &config.digest, &mut bytes)
        .await
    {
        Ok(_) => serde_json::from_slice(&bytes)
            .map_err(|e| RemoteCacheError::Invalid(format!("the cache config: {e}"))),
        Err(e) => Err(reg("reading the cache config".into())(e)),
    };
    Ok((m.digest, config))
}

/// How many times an export merges again when other exports moved the
/// cache between its read and its write. Each loss means another export
/// won, so this many exports can meet at one cache and all land.
const EXPORT_TRIES: usize = 16;

/// Push every step of `steps` (cache key and layer) to `to` as a cache,
/// followed by the entries `to` already holds, up to [`MAX_CACHE_STEPS`]:
/// the new layers (mounted from `mount_from`, a repository of the same
/// registry the image was pushed to, or uploaded, skipped where the
/// registry has them), the config, the manifest. The manifest is written
/// only if `to` still is what was read (`If-Match`), else read and merged
/// again, so concurrent exports to one cache (a pool's agents) all keep
/// their steps. (A registry that ignores `If-Match` keeps the last one.)
/// Returns the manifest digest, or `None` when `to` already held every
/// step (nothing to wait for).
pub(crate) async fn export(
    client: &Arc<Client>,
    to: &Reference,
    steps: &[DoneStep],
    mount_from: Option<&Reference>,
) -> Result<Option<Digest>, RemoteCacheError> {
    let mount_from = mount_from
        .filter(|m| m.api_host() == to.api_host() && m.repository != to.repository)
        .map(|m| m.repository.clone());
    // Layers known to be in `to`, across tries.
    let mut sent = std::collections::HashSet::new();
    for _ in 0..EXPORT_TRIES {
        match export_once(client, to, steps, mount_from.as_deref(), &mut sent).await {
            Err(RemoteCacheError::Registry { source, .. }) if source.is_precondition_failed() => {
                tracing::debug!("{to} moved while exporting to it: merging again");
            }
            done => return done,
        }
    }
    Err(RemoteCacheError::Contended {
        to: to.to_string(),
        tries: EXPORT_TRIES,
    })
}

/// One try of [`export`]: read, merge, write if `to` did not move.
async fn export_once(
    client: &Arc<Client>,
    to: &Reference,
    steps: &[DoneStep],
    mount_from: Option<&str>,
    sent: &mut std::collections::HashSet<Digest>,
) -> Result<Option<Digest>, RemoteCacheError> {
    let host = to.api_host().to_owned();
    let reg = |what: String| move |source| RemoteCacheError::Registry { what, source };
    let (expect, held) = match read_cache(client, to).await {
        Ok((at, Ok(c))) => (regclient::TagExpect::At(at), c.steps),
        // Not a cache: replaced, as before.
        Ok((at, Err(RemoteCacheError::Invalid(_)))) => (regclient::TagExpect::At(at), Vec::new()),
        // Nothing there yet.
        Err(RemoteCacheError::Registry {
            source: regclient::RegClientError::Status { status: 404, .. },
            ..
        }) => (regclient::TagExpect::Absent, Vec::new()),
        // A cache that cannot be read now is not overwritten with fewer steps.
        Ok((_, Err(e))) | Err(e) => return Err(e),
    };
    let have: std::collections::HashSet<(&str, &str)> = held
        .iter()
        .map(|s| (s.key.as_str(), s.digest.as_str()))
        .collect();
    if !held.is_empty()
        && steps.iter().all(|s| {
            let digest = s.layer.info.digest.to_string();
            have.contains(&(s.key.as_str(), digest.as_str()))
        })
    {
        return Ok(None);
    }
    let mut seen = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    let mut layers = Vec::new();
    let mut entries = Vec::new();
    for s in steps {
        if !keys.insert(s.key.clone()) {
            continue;
        }
        let l = &s.layer;
        entries.push(CacheStep {
            key: s.key.clone(),
            digest: l.info.digest.to_string(),
            diff_id: l.info.diff_id.to_string(),
            size: l.info.size,
            media_type: l.info.media_type.clone(),
            created: s.created.clone(),
        });
        if !seen.insert(l.info.digest.to_string()) {
            continue;
        }
        layers.push(json!({
            "mediaType": l.info.media_type,
            "digest": l.info.digest.to_string(),
            "size": l.info.size,
        }));
        if sent.contains(&l.info.digest) {
            continue;
        }
        let what = || format!("pushing cached layer {}", l.info.digest);
        let present = client
            .blob_exists(&host, &to.repository, &l.info.digest)
            .await
            .map_err(reg(what()))?
            .is_some();
        let mounted = !present
            && match mount_from {
                Some(from) => client
                    .mount_blob(&host, &to.repository, &l.info.digest, from)
                    .await
                    .unwrap_or(false),
                None => false,
            };
        if !present && !mounted {
            client
                .push_file(&host, &to.repository, &l.info.digest, l.info.size, &l.file)
                .await
                .map_err(reg(what()))?;
        }
        sent.insert(l.info.digest.clone());
    }
    // The cache's earlier entries: their layers are in `to` already.
    for s in &held {
        if entries.len() >= MAX_CACHE_STEPS {
            break;
        }
        if !keys.insert(s.key.clone()) {
            continue;
        }
        if seen.insert(s.digest.clone()) {
            layers.push(json!({
                "mediaType": s.media_type,
                "digest": s.digest,
                "size": s.size,
            }));
        }
        entries.push(s.clone());
    }
    let config = serde_json::to_vec(&CacheConfig { steps: entries })
        .map_err(|e| RemoteCacheError::Invalid(e.to_string()))?;
    let config_digest = Digest::sha256(&config);
    let cfg = bytes::Bytes::from(config);
    client
        .push_blob(
            &host,
            &to.repository,
            &config_digest,
            cfg.len() as u64,
            || reqwest::Body::from(cfg.clone()),
        )
        .await
        .map_err(reg("pushing the cache config".into()))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": oci::media_type::OCI_MANIFEST,
        "artifactType": CONFIG_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config_digest.to_string(),
            "size": cfg.len(),
        },
        "layers": layers,
    });
    let bytes =
        serde_json::to_vec(&manifest).map_err(|e| RemoteCacheError::Invalid(e.to_string()))?;
    client
        .put_manifest_if(
            to,
            oci::media_type::OCI_MANIFEST,
            bytes.into(),
            Some(&expect),
        )
        .await
        .map(Some)
        .map_err(reg("pushing the cache manifest".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step whose "layer" is `bytes` in a file under `dir`.
    fn step(dir: &Path, key: &str, bytes: &[u8]) -> DoneStep {
        let file = dir.join(key);
        std::fs::write(&file, bytes).unwrap();
        DoneStep {
            key: key.into(),
            layer: NewLayer {
                info: LayerInfo {
                    digest: Digest::sha256(bytes),
                    diff_id: Digest::sha256(key.as_bytes()),
                    size: bytes.len() as u64,
                    media_type: oci::media_type::OCI_LAYER_GZIP.into(),
                    entries: 1,
                },
                file,
            },
            created: None,
        }
    }

    /// Six builds export to one cache at the same instant (a pool's agents
    /// finishing together): every one's step is in the cache afterwards.
    /// Without the conditional write, each read the empty cache and the
    /// last to write dropped the others' steps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_exports_to_one_cache_keep_every_step() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry::Registry::open(registry::RegistryConfig::new(dir.path().join("reg")))
            .await
            .unwrap();
        let token = reg.auth().create_token("t", true, vec![]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let router = reg.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let mut config = regclient::ClientConfig::default();
        config
            .credentials
            .insert(&host, regclient::Credential::basic("ci", token));
        let client = Arc::new(Client::new(config).unwrap());
        let to: Reference = format!("{host}/slipway-cache/pool:steps").parse().unwrap();

        let steps: Vec<DoneStep> = (0..6)
            .map(|i| {
                step(
                    dir.path(),
                    &format!("key-{i}"),
                    format!("layer {i}").as_bytes(),
                )
            })
            .collect();
        let exports = steps.iter().map(|s| {
            let (client, to) = (client.clone(), to.clone());
            async move { export(&client, &to, std::slice::from_ref(s), None).await }
        });
        for done in futures_util::future::join_all(exports).await {
            assert!(done.unwrap().is_some(), "each export had a step to add");
        }
        let held = read_config(&client, &to).await.unwrap();
        let mut keys: Vec<&str> = held.steps.iter().map(|s| s.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["key-0", "key-1", "key-2", "key-3", "key-4", "key-5"]);
        // Exported again, nothing is missing: nothing is written.
        assert!(export(&client, &to, &steps, None).await.unwrap().is_none());
    }
}
