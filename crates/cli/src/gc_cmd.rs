//! `slipway registry gc`: the registry's garbage collection run by hand,
//! on the data dir of one server, or on the shared state of replicas
//! (`--blob-store` and `--database`, as the servers were given).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// Data directory of the server.
    #[arg(long, env = "SLIPWAY_DATA")]
    data: PathBuf,
    /// Keep unreferenced blobs younger than this (their manifest may be on its way).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Only report what would be deleted.
    #[arg(long)]
    dry_run: bool,
    /// The servers' blob store (object storage shared by replicas), as
    /// `slipway server --blob-store` takes it.
    #[arg(long, env = "SLIPWAY_BLOB_STORE", value_name = "URL")]
    blob_store: Option<String>,
    /// A setting of the object store, KEY=VALUE; repeatable.
    #[arg(long = "blob-store-option", value_name = "KEY=VALUE")]
    blob_store_options: Vec<String>,
    /// The servers' PostgreSQL database: the collection takes the lock
    /// every replica's manifest pushes take, so none links a blob mid-sweep.
    #[arg(long, env = "SLIPWAY_DATABASE")]
    database: Option<String>,
}

pub async fn run(a: GcArgs) -> Result<()> {
    let blobs = match &a.blob_store {
        Some(url) => {
            let l = store::Location::parse(url, &a.blob_store_options)?;
            Some(crate::serve::registry_blobs(&l).await?)
        }
        None => {
            anyhow::ensure!(
                registry::gc::is_data_dir(&a.data),
                "{} is not a slipway data directory (no store/ in it)",
                a.data.display()
            );
            None
        }
    };
    let reg =
        crate::serve::open_registry(&a.data, None, registry::DEFAULT_MAX_BLOB_BYTES, blobs, None)
            .await?;
    if let Some(url) = a.database.as_deref().filter(|u| u.starts_with("postgres")) {
        let db = server::db::Db::open(Some(url), &a.data)
            .await
            .context("opening the database")?;
        reg.set_gc_lock(db.gc_lock());
    }
    let opts = registry::gc::GcOptions {
        grace: a.grace,
        dry_run: a.dry_run,
        ..Default::default()
    };
    let r = registry::gc::collect(&reg, &opts)
        .await
        .map_err(|e| anyhow::anyhow!("garbage collection failed: {}", e.message))?;
    println!(
        "{}{} repositories, {} manifests; {} blobs kept, {} deleted ({} bytes freed), {} links removed, {} stale uploads removed, {} replaced cache manifests pruned",
        if a.dry_run { "dry run: " } else { "" },
        r.repositories,
        r.manifests,
        r.blobs_kept,
        r.blobs_deleted,
        r.bytes_freed,
        r.links_removed,
        r.uploads_purged,
        r.manifests_pruned,
    );
    Ok(())
}
