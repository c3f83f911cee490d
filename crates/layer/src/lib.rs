//! Image layers, both ways, without the build engine: [`unpack`] applies a
//! layer (or a context or ADD archive) to a directory, hardened against
//! hostile archives and bounded in what it unpacks to; [`diff`] turns an
//! overlay upper dir into a reproducible layer with its digest and diffID.
//! [`data_dir`] names a builder data dir's layout and the marker that keeps
//! every Slipway data dir out of build contexts.
//!
//! The builder re-exports all of it; `context` depends on this crate only,
//! so unpacking an upload does not pull in the engine.

pub mod data_dir;
pub mod diff;
pub mod unpack;

pub use diff::{Compression, DiffError, LayerInfo, LayerOptions, NewLayer, write_layer};
pub use unpack::{Applied, UnpackError, WhiteoutMode, apply_layer};
