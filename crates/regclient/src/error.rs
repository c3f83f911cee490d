//! The client's errors. Each names the registry and what was asked of it.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegClientError {
    #[error("{registry}: {what}: HTTP {status}: {body}")]
    Status {
        registry: String,
        what: String,
        status: u16,
        body: String,
    },
    #[error("{registry}: {what}: authentication failed ({detail})")]
    Unauthorized {
        registry: String,
        what: String,
        detail: String,
    },
    #[error("{registry}: {what}: {source}")]
    Http {
        registry: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: the registry sent content with digest {actual}, expected {expected}")]
    DigestMismatch {
        what: String,
        expected: oci::Digest,
        actual: oci::Digest,
    },
    #[error("{what}: invalid manifest: {source}")]
    Manifest {
        what: String,
        #[source]
        source: oci::ManifestError,
    },
    #[error("{what}: no manifest for platform {platform} in the index (it has: {available})")]
    NoPlatform {
        what: String,
        platform: String,
        available: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("reading {path}: {source}")]
    Config {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl RegClientError {
    /// Worth trying again: server errors, throttling, dropped connections.
    pub fn is_transient(&self) -> bool {
        match self {
            RegClientError::Status { status, .. } => *status >= 500 || *status == 429,
            RegClientError::Http { source, .. } => {
                source.is_connect()
                    || source.is_timeout()
                    || source.is_request()
                    || source.is_body()
            }
            _ => false,
        }
    }
}

pub type Result<T, E = RegClientError> = std::result::Result<T, E>;
