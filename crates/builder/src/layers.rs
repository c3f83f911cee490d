//! The machine's layer store: base-image layers unpacked once and shared by
//! every build, as overlay lower directories.
//!
//! ```text
//! <root>/snapshots/<chain-id hex>/   one layer, applied in overlay form
//! <root>/tmp/<random>/               a layer being applied
//! ```
//!
//! Snapshots are keyed by OCI chain ID rather than diffID: a layer applied
//! in overlay form depends on the layers below it (directories it implies
//! take their metadata from them), so the same diff on another stack is a
//! different snapshot. A snapshot appears by one `rename` of a complete
//! directory, so concurrent pulls of the same image are safe: the loser of
//! the race discards its copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use layer::unpack::{Limits, Unpack, UnpackError, WhiteoutMode, apply_archive};
use oci::{Digest, Reference};
use regclient::{Client, Platform};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerStoreError {
    #[error(transparent)]
    Registry(#[from] regclient::RegClientError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image {image}: {problem}")]
    Image { image: String, problem: String },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LayerStoreError {
    move |source| LayerStoreError::Io {
        context: context.into(),
        source,
    }
}

/// A pulled image: its manifest and config, and its layers bottom to top.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub manifest_digest: Digest,
    pub config: Vec<u8>,
    pub layers: Vec<PathBuf>,
    /// How many layers had to be downloaded and applied (0: all shared).
    pub fetched: usize,
}

/// `chain(L1) = diff(L1)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::sha256(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

pub struct LayerStore {
    root: PathBuf,
    mode: WhiteoutMode,
    limits: Limits,
}

impl LayerStore {
    /// `userxattr`: write overlay whiteouts for an overlay mounted with
    /// `userxattr` (inside a user namespace), as the sandbox does rootless.
    pub fn open(root: impl Into<PathBuf>, userxattr: bool) -> Result<LayerStore, LayerStoreError> {
        let root = root.into();
        for d in ["snapshots", "tmp"] {
            std::fs::create_dir_all(root.join(d))
                .map_err(io(format!("creating {}", root.join(d).display())))?;
        }
        Ok(LayerStore {
            root,
            mode: WhiteoutMode::Overlay { userxattr },
            limits: Limits::default(),
        })
    }

    /// Bound every archive this store's builds unpack (layers, cached
    /// steps, ADD archives) by `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> LayerStore {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How this store writes whiteouts: what any other overlay lower dir
    /// of the same builds (an imported cache step) must use too.
    pub fn whiteout_mode(&self) -> WhiteoutMode {
        self.mode
    }

    pub fn snapshot_path(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("snapshots").join(chain_id.hex())
    }

    /// Pull `image` for `platform` into the store; layers already present
    /// are not downloaded again. Missing blobs download in parallel.
    pub async fn pull(
        &self,
        client: &Arc<Client>,
        image: &Reference,
        platform: &Platform,
    ) -> Result<PulledImage, LayerStoreError> {
        let bad = |problem: String| LayerStoreError::Image {
            image: image.to_string(),
            problem,
        };
        let manifest = client.resolve_image(image, platform).await?;
        let oci::ManifestKind::Image { config, layers } = &manifest.manifest.kind else {
            return Err(bad("not an image manifest".into()));
        };
        let host = image.api_host().to_owned();
        let repo = image.repository.clone();
        let mut config_bytes = Vec::new();
        client
            .get_blob(&host, &repo, &config.digest, &mut config_bytes)
            .await?;
        let parsed = oci::config::parse_config(&config_bytes).map_err(|e| bad(e.to_string()))?;
        let diff_ids: Vec<Digest> = parsed
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| {
                d.parse()
                    .map_err(|e: oci::DigestError| bad(format!("diff_id: {e}")))
            })
            .collect::<Result<_, _>>()?;
        if diff_ids.len() != layers.len() {
            return Err(bad(format!(
                "{} layers but {} diff_ids in its config",
                layers.len(),
                diff_ids.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        let missing: Vec<usize> = (0..layers.len())
            .filter(|&i| !self.snapshot_path(&chains[i]).is_dir())
            .collect();
        // The snapshots already here are in use again (see `prune`).
        for c in &chains {
            crate::prune::touch(&self.snapshot_path(c));
        }

        // Download what is missing, in parallel, into verified temp files.
        let downloads: Vec<(usize, tempfile::NamedTempFile)> =
            futures_util::stream::iter(missing.iter().copied())
                .map(|i| {
                    let (client, host, repo, digest) = (
                        client.clone(),
                        host.clone(),
                        repo.clone(),
                        layers[i].digest.clone(),
                    );
                    let tmp_dir = self.root.join("tmp");
                    async move {
                        let file = tempfile::NamedTempFile::new_in(&tmp_dir)
                            .map_err(io("creating a download file"))?;
                        let mut out = tokio::fs::File::from_std(
                            file.reopen().map_err(io("opening the download file"))?,
                        );
                        client.get_blob(&host, &repo, &digest, &mut out).await?;
                        Ok::<_, LayerStoreError>((i, file))
                    }
                })
                .buffer_unordered(4)
                .try_collect()
                .await?;
        let mut downloads: std::collections::HashMap<usize, tempfile::NamedTempFile> =
            downloads.into_iter().collect();

        // Apply bottom to top: a layer needs the ones below it.
        let mut paths = Vec::with_capacity(layers.len());
        for i in 0..layers.len() {
            let target = self.snapshot_path(&chains[i]);
            if let Some(file) = downloads.remove(&i) {
                let below: Vec<PathBuf> = paths.iter().rev().cloned().collect();
                let (digest, diff_id, how) = (
                    layers[i].digest.clone(),
                    diff_ids[i].clone(),
                    Applying {
                        tmp_root: self.root.join("tmp"),
                        mode: self.mode,
                        limits: self.limits,
                    },
                );
                let target2 = target.clone();
                tokio::task::spawn_blocking(move || {
                    apply_into(file.path(), &digest, &diff_id, &target2, &below, &how)
                })
                .await
                .map_err(|e| io("applying a layer")(std::io::Error::other(e)))??;
            }
            paths.push(target);
        }
        Ok(PulledImage {
            manifest_digest: manifest.digest,
            config: config_bytes,
            layers: paths,
            fetched: missing.len(),
        })
    }
}

/// How this store applies a layer: staged under `tmp_root`, with its
/// whiteout mode and limits.
struct Applying {
    tmp_root: PathBuf,
    mode: WhiteoutMode,
    limits: Limits,
}

fn apply_into(
    blob: &Path,
    digest: &Digest,
    diff_id: &Digest,
    target: &Path,
    below: &[PathBuf],
    how: &Applying,
) -> Result<(), LayerStoreError> {
    let work = tempfile::Builder::new()
        .prefix("apply-")
        .tempdir_in(&how.tmp_root)
        .map_err(io("creating a snapshot work dir"))?;
    let file = std::fs::File::open(blob).map_err(io(format!("opening {}", blob.display())))?;
    let applied = apply_archive(
        std::io::BufReader::with_capacity(1 << 20, file),
        digest,
        Some(diff_id),
        work.path(),
        how.mode,
        below,
        Unpack {
            limits: how.limits,
            ..Unpack::default()
        },
    )?;
    for s in &applied.skipped {
        tracing::warn!(layer = %digest, "{s}");
    }
    let staged = work.keep();
    match std::fs::rename(&staged, target) {
        Ok(()) => Ok(()),
        // Another pull published the same snapshot first: keep theirs.
        Err(_) if target.is_dir() => {
            let _ = std::fs::remove_dir_all(&staged);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staged);
            Err(io(format!("publishing {}", target.display()))(e))
        }
    }
}
