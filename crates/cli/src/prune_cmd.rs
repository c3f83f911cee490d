//! `slipway prune`: reclaim the builder's disk (layer snapshots, cache
//! steps, cache mounts, leftover scratch), waiting for running builds.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use builder::data_dir::DataDir;
use builder::prune::{BuildLock, PruneOptions, prune};

#[derive(clap::Args)]
pub struct PruneArgs {
    /// The build data directory (`build --local --data`; an agent's
    /// `--build-data`; `slipway up`'s DATA/build).
    /// [default: the same as `build --local`'s]
    #[arg(long, env = "SLIPWAY_DATA")]
    data: Option<PathBuf>,
    /// Keep what a build used within this long, e.g. 24h.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    keep_duration: Duration,
    /// Only report what would be deleted.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(args: PruneArgs) -> Result<()> {
    // As it is: prune neither resolves nor marks the dir it empties.
    let data = DataDir::new(
        args.data
            .clone()
            .unwrap_or_else(crate::build_args::default_build_data),
    );
    tokio::task::spawn_blocking(move || {
        let lock = match BuildLock::exclusive(&data, false)? {
            Some(l) => l,
            None => {
                eprintln!(
                    "waiting for the builds using {} to finish…",
                    data.root().display()
                );
                BuildLock::exclusive(&data, true)?.context("locking the build data")?
            }
        };
        let opts = PruneOptions {
            keep: args.keep_duration,
            dry_run: args.dry_run,
        };
        let r = prune(&data, &opts, &lock)
            .with_context(|| format!("pruning {}", data.root().display()))?;
        println!(
            "{}{} entries, {:.1} MiB{}; {} kept (used within {})",
            if args.dry_run {
                "would delete "
            } else {
                "deleted "
            },
            r.entries,
            r.bytes as f64 / (1 << 20) as f64,
            if args.dry_run { "" } else { " freed" },
            r.kept,
            humantime::format_duration(args.keep_duration)
        );
        anyhow::Ok(())
    })
    .await
    .context("pruning")?
}
