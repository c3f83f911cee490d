//! The image model shared by every Slipway crate: content digests
//! ([`Digest`], [`Digester`]), descriptors, media types and the parsing and
//! validation of manifests, indexes and image configs.
//!
//! This crate does no I/O: callers hand it bytes (or feed a [`Digester`]) and
//! get typed values or a [`ManifestError`] that says what is wrong.
//!
//! ```ignore
//! let d: oci::Digest = "sha256:…".parse()?;
//! let m = oci::Manifest::parse(&bytes, Some(oci::media_type::OCI_MANIFEST))?;
//! for r in m.required_blobs() { /* check r.digest exists */ }
//! ```

pub mod config;
pub mod digest;
pub mod manifest;
pub mod media_type;
pub mod reference;

pub use digest::{Algorithm, Digest, DigestError, Digester};
pub use manifest::{Descriptor, Manifest, ManifestError, ManifestKind};
pub use reference::{Reference, ReferenceError};
