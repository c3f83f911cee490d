//! A client for OCI / Docker v2 registries: what the builder uses to pull
//! base images and push results, inside the private network.
//!
//! - [`Client`]: manifests (resolving indexes to a [`Platform`]), blobs
//!   (existence, verified streaming download, upload that skips blobs the
//!   registry has, cross-repository mount), manifest push, and
//!   [`Client::copy_image`] which moves an image with its layers in parallel.
//! - Authentication ([`auth`]): anonymous, HTTP Basic, and the Docker token
//!   flow (`WWW-Authenticate: Bearer realm,service,scope`), with credentials
//!   given explicitly or read from a Docker `config.json` (`auths`).
//! - Plain HTTP only for loopback hosts and hosts listed as insecure.
//! - Retries with exponential backoff on 5xx answers and dropped connections.
//!
//! ```ignore
//! let client = Client::new(ClientConfig::default())?;
//! let image = client.resolve_image(&"127.0.0.1:5000/app:1".parse()?, &Platform::default()).await?;
//! ```

pub mod auth;
mod client;
mod error;
mod redact;

pub use auth::{Credential, Credentials, DockerConfig};
pub use client::{
    Client, ClientConfig, FetchedManifest, Platform, Pushed, TagExpect, http_client, plain_http,
};
pub use error::{RegClientError, explain, one_line};
pub use redact::redact_url;
