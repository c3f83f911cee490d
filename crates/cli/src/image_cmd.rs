//! `slipway image import`: push a root filesystem directory as a one-layer
//! image (the offline way to a first base image); `image run` and `image
//! copy` live in `image_run`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use builder::{Compression, LayerOptions};
use clap::Subcommand;

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
    /// Run an image without a daemon, like `docker run --rm` (pulled into the
    /// builder's layer store, run in the sandbox); exits with its exit code.
    Run(Box<crate::image_run::RunArgs>),
    /// Copy an image between repositories or registries (like `crane copy`).
    Copy(crate::image_run::CopyArgs),
}

pub async fn run(cmd: ImageCommand) -> Result<()> {
    let (rootfs, tag, cmd, arch, insecure_registries) = match cmd {
        ImageCommand::Import {
            rootfs,
            tag,
            cmd,
            arch,
            insecure_registries,
        } => (rootfs, tag, cmd, arch, insecure_registries),
        ImageCommand::Run(args) => {
            let code = crate::image_run::run(*args).await?;
            if code != 0 {
                std::process::exit(code);
            }
            return Ok(());
        }
        ImageCommand::Copy(args) => return crate::image_run::copy(args).await,
    };
    let reference: oci::Reference = tag.parse().with_context(|| format!("-t {tag}"))?;
    let client = crate::image_run::RegistryArgs {
        insecure_registries,
        ca_certs: Vec::new(),
    }
    .client()?;
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
        &crate::build_args::created(epoch),
    )
    .await
    .with_context(|| format!("importing {}", rootfs.display()))?;
    println!("{reference}@{}", built.manifest_digest);
    Ok(())
}
