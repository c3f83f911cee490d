//! Garbage collection: delete blobs that no manifest of any repository
//! references.
//!
//! Safety against concurrent pushes rests on two rules:
//! - the collection holds the gc lock exclusively while it marks and sweeps,
//!   and manifest pushes hold it shared while they check and link what they
//!   reference, so no manifest can come to reference a blob mid-sweep;
//! - a blob modified (uploaded, mounted, or HEAD-checked by a pusher) within
//!   the grace period is kept even if unreferenced: its manifest may be on
//!   its way.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use oci::{Digest, Manifest};

use crate::Registry;
use crate::error::{RegistryError, Result};

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced blobs younger than this are kept.
    pub grace: Duration,
    /// Uploads untouched for this long are abandoned and removed.
    pub upload_max_age: Duration,
    /// Report what would be deleted without deleting it.
    pub dry_run: bool,
    /// Repositories under these prefixes lose the manifests no tag points
    /// at (older than `grace`) before marking: the pools' layer caches
    /// (`slipway-cache/`), where every export replaces the tagged one.
    pub prune_untagged_under: Vec<String>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            upload_max_age: Duration::from_secs(24 * 3600),
            dry_run: false,
            prune_untagged_under: vec![CACHE_REPOSITORIES.to_owned()],
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub repositories: usize,
    pub manifests: usize,
    pub blobs_kept: usize,
    pub blobs_deleted: usize,
    pub bytes_freed: u64,
    pub links_removed: usize,
    pub uploads_purged: usize,
    /// Untagged manifests removed from caches (`prune_untagged_under`).
    pub manifests_pruned: usize,
}

/// Where the pools' layer caches live (`slipway-cache/POOL`).
pub const CACHE_REPOSITORIES: &str = "slipway-cache/";

/// Mark every blob reachable from a linked manifest, then sweep the rest.
pub async fn collect(reg: &Registry, opts: &GcOptions) -> Result<GcReport> {
    let started = SystemTime::now();
    let _guard = reg
        .lock
        .exclusive()
        .await
        .map_err(|e| RegistryError::internal("taking the gc lock", e))?;
    let mut report = GcReport::default();
    let mut marked: HashSet<Digest> = HashSet::new();
    let repos = reg.meta.repositories().await?;
    report.repositories = repos.len();
    let cutoff = started
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for repo in repos.iter().filter(|r| {
        opts.prune_untagged_under
            .iter()
            .any(|p| r.starts_with(p.as_str()))
    }) {
        report.manifests_pruned += prune_untagged(reg, repo, cutoff, opts.dry_run).await?;
    }
    for repo in &repos {
        for d in reg.meta.manifests(repo).await? {
            report.manifests += 1;
            marked.insert(d.clone());
            let Some(media_type) = reg.meta.manifest_media_type(repo, &d).await? else {
                continue;
            };
            let bytes = match read_all(reg, &d).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(%repo, manifest = %d, "unreadable manifest kept out of marking: {}", e.message);
                    continue;
                }
            };
            match Manifest::parse(&bytes, Some(&media_type)) {
                Ok(m) => {
                    if let oci::ManifestKind::Image { config, layers } = &m.kind {
                        marked.insert(config.digest.clone());
                        marked.extend(layers.iter().map(|l| l.digest.clone()));
                    }
                }
                Err(e) => tracing::warn!(%repo, manifest = %d, "invalid stored manifest: {e}"),
            }
        }
    }
    let mut deleted: HashSet<Digest> = HashSet::new();
    for blob in reg.store.list().await? {
        if marked.contains(&blob.digest) || blob.modified >= cutoff {
            report.blobs_kept += 1;
            continue;
        }
        if !opts.dry_run {
            reg.store.delete(&blob.digest).await?;
        }
        report.blobs_deleted += 1;
        report.bytes_freed += blob.size;
        deleted.insert(blob.digest);
    }
    for repo in &repos {
        for d in reg.meta.blob_links(repo).await? {
            if deleted.contains(&d) {
                if !opts.dry_run {
                    reg.meta.unlink_blob(repo, &d).await?;
                }
                report.links_removed += 1;
            }
        }
    }
    if !opts.dry_run {
        let before = started
            .checked_sub(opts.upload_max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        report.uploads_purged = reg.store.purge_uploads(before).await?;
    }
    Ok(report)
}

/// Unlink the manifests of `repo` that no tag points at and that were
/// stored before `cutoff` (a younger one may be about to be tagged).
async fn prune_untagged(
    reg: &Registry,
    repo: &str,
    cutoff: SystemTime,
    dry_run: bool,
) -> Result<usize> {
    let mut tagged = HashSet::new();
    for t in reg.meta.tags(repo).await?.unwrap_or_default() {
        if let Some(d) = reg.meta.tag(repo, &t).await? {
            tagged.insert(d);
        }
    }
    let mut pruned = 0;
    for d in reg.meta.manifests(repo).await? {
        if tagged.contains(&d) {
            continue;
        }
        let old = match reg.store.stat(&d).await? {
            Some(info) => info.modified < cutoff,
            None => true,
        };
        if old {
            if !dry_run {
                reg.meta.unlink_manifest(repo, &d).await?;
            }
            pruned += 1;
        }
    }
    Ok(pruned)
}

async fn read_all(reg: &Registry, d: &Digest) -> Result<Vec<u8>> {
    let read = reg.store.open(d, None).await?;
    let mut reader = read.reader;
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut buf)
        .await
        .map_err(|e| RegistryError::internal("reading manifest", e))?;
    Ok(buf)
}

/// Whether `data` looks like a registry data directory.
pub fn is_data_dir(data: &Path) -> bool {
    data.join("store").is_dir()
}
