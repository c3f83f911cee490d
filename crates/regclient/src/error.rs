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
    #[error("authentication failed for {registry} ({what}): {detail}")]
    Unauthorized {
        registry: String,
        what: String,
        detail: String,
    },
    /// The transport failed (connection, TLS, timeout). Retried when it may
    /// pass (refused, timed out), not when it cannot (unreachable network,
    /// unknown host, untrusted certificate). Shown as one line: what failed, where, the
    /// root cause in words, and what to check. The chain is not exposed as
    /// a `source`, so reporters that print chains do not repeat it.
    #[error("{registry}: {what}: {}", explain(registry, error))]
    Http {
        registry: String,
        what: String,
        error: reqwest::Error,
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
    /// A conditional write found its tag moved ([`crate::Client::put_manifest_if`]).
    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, RegClientError::Status { status: 412, .. })
    }

    /// Worth trying again: server errors, throttling, dropped connections.
    pub fn is_transient(&self) -> bool {
        match self {
            RegClientError::Status { status, .. } => *status >= 500 || *status == 429,
            RegClientError::Http { error, .. } => {
                // A certificate nobody trusts will not become trusted.
                !matches!(
                    classify(error),
                    Cause::UntrustedCertificate(_) | Cause::NotTls
                ) && (error.is_connect()
                    || error.is_timeout()
                    || error.is_request()
                    || error.is_body())
            }
            _ => false,
        }
    }
}

pub type Result<T, E = RegClientError> = std::result::Result<T, E>;

/// What a transport error comes down to.
enum Cause {
    UntrustedCertificate(String),
    /// TLS spoken to a plain-HTTP server.
    NotTls,
    Refused,
    Unreachable(String),
    Resolve(String),
    Timeout,
    Other(String),
}

/// An error and its causes in one line, each cause once: for reporting a
/// transport error (reqwest's, say) whose layers repeat each other.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    chain(error).join(": ")
}

/// The messages of an error's chain, outermost first, each once: hyper and
/// rustls errors repeat their inner error in their own text.
fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = Some(error);
    while let Some(e) = cur {
        let msg = e.to_string();
        if !out.iter().any(|m| m.contains(&msg)) {
            out.push(msg);
        }
        cur = e.source();
    }
    out
}

fn classify(error: &reqwest::Error) -> Cause {
    let msgs = chain(error);
    let all = msgs.join(": ");
    let root = msgs.last().cloned().unwrap_or_default();
    if all.contains("UnknownIssuer")
        || all.contains("invalid peer certificate")
        || all.contains("certificate verify failed")
    {
        Cause::UntrustedCertificate(root)
    } else if all.contains("InvalidContentType") || all.contains("corrupt message") {
        Cause::NotTls
    } else if all.contains("Connection refused") {
        Cause::Refused
    } else if all.contains("unreachable") || all.contains("No route to host") {
        Cause::Unreachable(root)
    } else if all.contains("dns error") || all.contains("failed to lookup address") {
        Cause::Resolve(root)
    } else if error.is_timeout() || all.contains("timed out") {
        Cause::Timeout
    } else {
        Cause::Other(root)
    }
}

/// What a transport error to `registry` (any HTTP host) comes down to, and
/// what to check, in one clause.
pub fn explain(registry: &str, error: &reqwest::Error) -> String {
    match classify(error) {
        Cause::UntrustedCertificate(why) => format!(
            "its TLS certificate is not trusted ({why}); give the agent the registry's CA \
             with --ca-cert FILE, or add it to the system's store"
        ),
        Cause::NotTls => format!(
            "it does not speak TLS; if {registry} serves plain HTTP, allow it with \
             --insecure-registry {registry}"
        ),
        Cause::Refused => format!("connection refused; check that {registry} is up and listening"),
        Cause::Unreachable(why) => {
            format!("{why}; this machine's network does not reach {registry}")
        }
        Cause::Resolve(why) => format!(
            "cannot resolve the host ({why}); check this machine's DNS and network reach {registry}"
        ),
        Cause::Timeout => format!(
            "timed out; check that this machine's network reaches {registry} (a firewall or \
             network policy may drop it)"
        ),
        Cause::Other(why) => why,
    }
}
