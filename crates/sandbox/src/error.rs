//! Typed errors: an invalid spec, a failed privileged call (with the call
//! that failed), and the errors of a run as a whole.

use std::path::PathBuf;

/// A [`crate::RunSpec`] that cannot be run as given.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// No program to run.
    #[error("the process has no argv")]
    EmptyArgv,
    /// An overlay needs at least one lower dir.
    #[error("the rootfs has no lower dir")]
    NoLowerDir,
    /// A host path unusable in overlayfs options.
    #[error("{0}: overlay dirs must be absolute UTF-8 paths without ',', ':' or '\\'")]
    OverlayPath(PathBuf),
    /// A container path that is relative or not normalized.
    #[error("{0:?}: container paths must be absolute, without '.' or '..' components")]
    ContainerPath(String),
    /// A mount on a path the sandbox manages itself.
    #[error("{0}: this mount target is managed by the sandbox")]
    ReservedTarget(String),
    /// A bind or cache source that is not absolute.
    #[error("{0}: mount sources must be absolute host paths")]
    RelativeSource(PathBuf),
    /// A secret name that is not a plain, unique file name.
    #[error("{0:?}: secret names must be unique plain file names")]
    SecretName(String),
    /// An invalid host name.
    #[error("{0:?}: host names are 1-64 characters of [A-Za-z0-9.-]")]
    Hostname(String),
    /// An environment entry without `=`.
    #[error("{0:?}: environment entries are KEY=value")]
    Env(String),
    /// The mode cannot honour the spec.
    #[error("{0}")]
    Unsupported(String),
}

/// A privileged call that failed inside the init.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct SysError {
    /// The operation, rendered for humans.
    pub op: String,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl SysError {
    pub(crate) fn new(op: impl std::fmt::Display, source: impl Into<std::io::Error>) -> Self {
        SysError {
            op: op.to_string(),
            source: source.into(),
        }
    }
}

/// Why a run could not start or could not be followed to its end. A process
/// that starts and fails is not an error: it is an [`crate::Outcome`] with a
/// non-zero status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spec is invalid.
    #[error("invalid run spec: {0}")]
    Spec(#[from] SpecError),
    /// Preparing the run on the host (state dir, cgroups, id maps) failed.
    #[error("{context}: {source}")]
    Host {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Setting up the sandbox failed inside the init (a mount, pivot_root,
    /// exec of the program…); the message names the failing step.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The init process broke its protocol or died unexpectedly.
    #[error("sandbox init: {0}")]
    Init(String),
    /// No isolation mode is available and none was chosen.
    #[error("{0}")]
    NoIsolation(String),
}

impl Error {
    pub(crate) fn host(context: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Error::Host {
            context: context.into(),
            source: source.into(),
        }
    }
}
