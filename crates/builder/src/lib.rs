//! The daemonless build engine: a Dockerfile → an OCI image, pushed.
//!
//! [`engine::build`] drives it: base images come through [`layers`] (pulled
//! layers unpacked once per diffID by [`unpack`], shared by every build),
//! each step runs in the sandbox or copies (`copy`, over the layer view of
//! `layered`; `RUN --mount` in `run_mounts`, COPY wildcards and `--parents`
//! in `sources`), [`diff`] turns a step's upper dir into a layer, [`image`]
//! assembles config and manifest, and the result is pushed or written by
//! [`oci_archive`]. Steps are cached locally (with source digests remembered
//! in [`file_hashes`]) and in registries ([`remote_cache`]); [`prune`]
//! reclaims the disk and [`import`] turns a directory into a base image.

mod chmod;
mod config_step;
mod copy;
pub mod engine;
pub mod fault;
pub mod file_hashes;
mod git;
pub mod image;
pub mod import;
mod layered;
pub mod layers;
pub mod oci_archive;
pub mod prune;
pub mod remote_cache;
mod run_mounts;
mod sources;

/// The layer unpacker, differ and data-dir layout live in the `layer` crate
/// (so `context` unpacks without the engine); re-exported under their old
/// paths.
pub use layer::{data_dir, diff, unpack};

pub use diff::{Compression, DiffError, LayerInfo, LayerOptions, write_layer};
pub use engine::{BuildError, BuildRequest, BuildResult, OciArchive, Progress, build};
pub use fault::{Fault, StepError};
pub use image::{BuiltImage, ImageError, NewImage};
pub use layers::{LayerStore, LayerStoreError, PulledImage, chain_ids};
pub use unpack::{Applied, UnpackError, WhiteoutMode, apply_layer};
