//! Cache keys and the local step cache.
//!
//! A step's key is a chain: [`next_key`] over the key before it and what
//! decides the step's result (the instruction as written, args and shell in
//! scope, [`hash_sources`] of the files it reads). `<cache>/<key>/` holds a
//! finished step; [`StageCtx::find_cached`] looks there, then in the
//! `--cache-from` registries; [`finish_step`] writes a step's layer and
//! moves the step in.

use std::path::{Path, PathBuf};

use layer::diff::{LayerInfo, NewLayer, write_layer};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{BuildError, BuildRequest, StageCtx, step_err};
use crate::copy::{Filter, clean_rel};
use crate::file_hashes::FileHashes;

/// A finished step: its upper dir (an overlay lower for later steps) and
/// its layer.
pub(super) struct StepLayer {
    pub upper: PathBuf,
    pub layer: NewLayer,
    /// When the step was first made (RFC 3339): its history time, so a
    /// cached step dates from its first build, as in BuildKit.
    pub created: Option<String>,
}

/// Now, as a history time.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The cache key after one more instruction: a hash of the key so far and
/// everything that decides the instruction's result.
pub(super) fn next_key(prev: &str, parts: &[&str]) -> String {
    let mut d = oci::Digester::new(oci::Algorithm::Sha256);
    d.update(prev.as_bytes());
    for p in parts {
        d.update(b"\0");
        d.update(p.as_bytes());
    }
    d.finish().hex().to_owned()
}

/// A digest of what COPY/ADD would read: every path under the sources
/// (minus `.dockerignore`d ones) with its type, mode, size and content.
pub(super) fn hash_sources(
    root: &Path,
    sources: &[String],
    ignore: Option<&dockerfile::IgnoreMatcher>,
    hashes: &FileHashes,
) -> String {
    let mut d = oci::Digester::new(oci::Algorithm::Sha256);
    for source in sources {
        d.update(source.as_bytes());
        d.update(b"\0");
        if source.starts_with("http://") || source.starts_with("https://") {
            continue;
        }
        if let Some(rel) = clean_rel(source) {
            // What a symlinked source leads to is what gets copied.
            let rel = crate::sources::resolve_in_root(root, &rel).unwrap_or(rel);
            let filter = Filter {
                ignore,
                rel: rel.to_string_lossy().into_owned(),
                exclude: None,
                xrel: String::new(),
                owner: None,
                mode: None,
                links: None,
            };
            hash_tree(&mut d, &root.join(&rel), &filter, hashes);
        }
    }
    d.finish().hex().to_owned()
}

fn hash_tree(d: &mut oci::Digester, path: &Path, filter: &Filter<'_>, hashes: &FileHashes) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        d.update(b"missing\0");
        return;
    };
    let decision = filter.decide(meta.is_dir());
    if decision == dockerfile::Decision::SkipDir
        || (decision == dockerfile::Decision::Exclude && !meta.is_dir())
    {
        return;
    }
    d.update(format!("{}\0{:o}\0{}\0", filter.rel, meta.mode(), meta.len()).as_bytes());
    if meta.file_type().is_symlink() {
        if let Ok(t) = std::fs::read_link(path) {
            d.update(t.as_os_str().as_encoded_bytes());
        }
    } else if meta.is_file() {
        if let Some(digest) = hashes.digest(path, &meta) {
            d.update(&digest);
        }
    } else if meta.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        names.sort();
        for name in names {
            hash_tree(d, &path.join(&name), &filter.child(&name), hashes);
        }
    }
}

impl StageCtx<'_> {
    /// A step in the local cache, or brought into it from a `--cache-from`.
    pub(super) async fn find_cached<E: AsyncWrite + Unpin>(
        &self,
        key: &str,
        lowers: &[PathBuf],
        err: &mut E,
    ) -> Option<StepLayer> {
        let req = self.req;
        if let Some(hit) = cache_lookup(req, key) {
            return Some(hit);
        }
        let dir = req.cache_dir.as_ref()?;
        if self.remote.is_empty() {
            return None;
        }
        match self
            .remote
            .import(
                self.client,
                key,
                dir,
                self.store.whiteout_mode(),
                lowers,
                self.store.limits(),
            )
            .await
        {
            Ok(true) => cache_lookup(req, key),
            Ok(false) => None,
            // A cache that fails is a warning: the step is built instead.
            Err(e) => {
                let _ = err
                    .write_all(format!("warning: cache import: {e}\n").as_bytes())
                    .await;
                None
            }
        }
    }
}

/// `<cache>/<key>/` holds a finished step: `upper/` (an overlay lower for
/// later steps), `layer` (its blob), `created` (when it was made) and
/// `layer.json`, written last, so a step counts as cached only when the
/// layer, its upper dir and `layer.json` are there.
fn cache_lookup(req: &BuildRequest, key: &str) -> Option<StepLayer> {
    let dir = req.cache_dir.as_ref()?.join(key);
    let info: LayerInfo =
        serde_json::from_slice(&std::fs::read(dir.join("layer.json")).ok()?).ok()?;
    let file = dir.join("layer");
    let upper = dir.join("upper");
    let complete = file.is_file() && upper.is_dir();
    if complete {
        // Reused now: `slipway prune --keep-duration` keeps it.
        crate::prune::touch(&dir);
    }
    let created = std::fs::read_to_string(dir.join("created"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| humantime::parse_rfc3339(s).is_ok());
    complete.then_some(StepLayer {
        upper,
        layer: NewLayer { info, file },
        created,
    })
}

/// A fresh scratch dir for step `n`: `upper/` (what the step writes) and
/// `work/` (overlayfs's).
pub(super) fn new_step_dir(work: &Path, n: usize) -> Result<PathBuf, BuildError> {
    let step = work.join(format!("step-{n}"));
    let _ = std::fs::remove_dir_all(&step);
    for d in ["upper", "work"] {
        std::fs::create_dir_all(step.join(d))
            .map_err(step_err(format!("creating {}", step.display())))?;
    }
    Ok(step)
}

/// Write the step's layer and, with a cache, move the step into it.
pub(super) fn finish_step(
    step: &Path,
    req: &BuildRequest,
    key: &str,
) -> Result<StepLayer, BuildError> {
    let layer = write_step_layer(step, req)?;
    let created = now_rfc3339();
    let uncached = |layer| StepLayer {
        upper: step.join("upper"),
        layer,
        created: Some(created.clone()),
    };
    let Some(cache) = &req.cache_dir else {
        return Ok(uncached(layer));
    };
    let dir = cache.join(key);
    std::fs::create_dir_all(cache).map_err(step_err(format!("creating {}", cache.display())))?;
    if dir.exists() {
        // Another build stored this step meanwhile (and may be using it):
        // take theirs when complete, else keep ours uncached. Never replace it.
        return Ok(cache_lookup(req, key).unwrap_or_else(|| uncached(layer)));
    }
    let stored = std::fs::rename(step, &dir).and_then(|()| {
        std::fs::write(dir.join("created"), &created)?;
        let json = serde_json::to_vec(&layer.info).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("layer.json"), json)
    });
    match stored {
        Ok(()) => Ok(StepLayer {
            upper: dir.join("upper"),
            layer: NewLayer {
                info: layer.info,
                file: dir.join("layer"),
            },
            created: Some(created.clone()),
        }),
        // Caching is an optimisation: a step that cannot be stored still counts.
        Err(e) => {
            tracing::warn!("not caching {}: {e}", step.display());
            Ok(uncached(layer))
        }
    }
}

/// The step's upper dir as a layer blob, `<step>/layer`.
fn write_step_layer(step: &Path, req: &BuildRequest) -> Result<NewLayer, BuildError> {
    let file = step.join("layer");
    let f =
        std::fs::File::create(&file).map_err(step_err(format!("creating {}", file.display())))?;
    let info = write_layer(
        &step.join("upper"),
        std::io::BufWriter::with_capacity(1 << 20, f),
        &req.layer_options,
    )
    .map_err(step_err("writing the layer"))?;
    Ok(NewLayer { info, file })
}
