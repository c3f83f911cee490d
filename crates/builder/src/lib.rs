//! The daemonless build engine (issue 6, in progress).
//!
//! Landed so far: [`unpack`], which applies an image layer (tar, gzip or
//! zstd) to a directory the way containerd does, verifying the layer's
//! digest and diffID as it streams, honouring OCI whiteouts, and never
//! writing outside the target however hostile the archive.

pub mod unpack;

pub use unpack::{Applied, UnpackError, WhiteoutMode, apply_layer};
