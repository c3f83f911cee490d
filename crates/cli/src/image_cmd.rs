//! `slipway image import`: push a root filesystem directory as a one-layer
//! image (the offline way to a first base image).

use std::path::PathBuf;

use anyhow::{Context, Result};
use builder::{Compression, LayerOptions};
use clap::Subcommand;
use regclient::{Client, ClientConfig, DockerConfig};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Make an image of a directory tree and push it (like `docker import`).
    Import {
        /// Root filesystem directory.
        rootfs: PathBuf,
        /// Reference to push to.
        #[arg(short = 't', long = "tag")]
        tag: String,
        /// Default command of the image; repeat for each argument.
        #[arg(long = "cmd")]
        cmd: Vec<String>,
        /// Architecture recorded in the config.
        #[arg(long, default_value = "amd64")]
        arch: String,
        /// Registry host:port to reach over plain HTTP (loopback always is); repeatable.
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
}

pub async fn run(cmd: ImageCommand) -> Result<()> {
    let ImageCommand::Import {
        rootfs,
        tag,
        cmd,
        arch,
        insecure_registries,
    } = cmd;
    let reference: oci::Reference = tag.parse().with_context(|| format!("-t {tag}"))?;
    let mut config = ClientConfig {
        insecure_registries,
        ..ClientConfig::default()
    };
    if let Some(path) = crate::build_cmd::docker_config_path() {
        config.credentials.merge(
            &DockerConfig::load(&path).with_context(|| format!("reading {}", path.display()))?,
        );
    }
    let client = Client::new(config)?;
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok());
    let opts = LayerOptions {
        compression: Compression::Gzip,
        source_date_epoch: epoch,
    };
    let built = builder::import::import_rootfs(
        &rootfs,
        &reference,
        &client,
        &opts,
        &arch,
        &cmd,
        &crate::build_cmd::created(epoch),
    )
    .await
    .with_context(|| format!("importing {}", rootfs.display()))?;
    println!("{reference}@{}", built.manifest_digest);
    Ok(())
}
