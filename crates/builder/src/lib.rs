//! The daemonless build engine (issue 6, in progress).
//!
//! Landed so far: [`unpack`], which applies an image layer (tar, gzip or
//! zstd) to a directory the way containerd does, verifying the layer's
//! digest and diffID as it streams, honouring OCI whiteouts, and never
//! writing outside the target however hostile the archive; and [`layers`],
//! the machine's store of pulled base-image layers as overlay lower dirs,
//! shared by every build and safe under concurrent pulls; and [`diff`],
//! which turns a RUN step's overlay upper dir into a layer; [`engine`],
//! which builds a Dockerfile (with `RUN --mount` in `run_mounts`, COPY
//! wildcards and `--parents` in `sources`); and [`oci_archive`], the
//! `--output type=oci` exporter.

mod chmod;
pub mod diff;
pub mod engine;
pub mod file_hashes;
mod git;
pub mod image;
pub mod import;
pub mod layers;
pub mod oci_archive;
pub mod prune;
pub mod remote_cache;
mod run_mounts;
mod sources;
pub mod unpack;

pub use diff::{Compression, DiffError, LayerInfo, LayerOptions, write_layer};
pub use engine::{BuildError, BuildRequest, BuildResult, OciArchive, Progress, build};
pub use image::{BuiltImage, ImageError, NewImage};
pub use layers::{LayerStore, LayerStoreError, PulledImage, chain_ids};
pub use unpack::{Applied, UnpackError, WhiteoutMode, apply_layer};
