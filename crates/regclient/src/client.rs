//! Registry operations over HTTP, with authentication negotiated on the
//! first `401` and remembered per registry and scope.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use oci::{Descriptor, Digest, Digester, Manifest, ManifestKind, Reference};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::auth::{Challenge, Credentials, TokenResponse, parse_challenge};
use crate::error::{RegClientError, Result};

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// What the client needs to know, given by the caller.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub credentials: Credentials,
    /// Hosts (`host:port`) to reach over plain HTTP. Loopback always is.
    pub insecure_registries: Vec<String>,
    /// PEM certificates trusted beside the system's roots (`--ca-cert`):
    /// registries behind a private CA.
    pub ca_certs: Vec<Vec<u8>>,
    /// Attempts after the first for transient failures.
    pub retries: usize,
    /// Blobs moved at once by [`Client::copy_image`].
    pub parallelism: usize,
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            credentials: Credentials::default(),
            insecure_registries: Vec::new(),
            ca_certs: Vec::new(),
            retries: 4,
            parallelism: 4,
            user_agent: format!("slipway/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// An OS/architecture pair that selects a manifest from an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = RegClientError;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: (*os).into(),
                    architecture: (*arch).into(),
                    variant: Some((*variant).into()),
                })
            }
            _ => Err(RegClientError::Invalid(format!(
                "platform {s:?} is not os/arch[/variant]"
            ))),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    fn matches(&self, p: &serde_json::Value) -> bool {
        let field = |k: &str| p.get(k).and_then(|v| v.as_str());
        field("os") == Some(self.os.as_str())
            && field("architecture") == Some(self.architecture.as_str())
            && (self.variant.is_none() || field("variant") == self.variant.as_deref())
    }
}

/// What a tag must be for [`Client::put_manifest_if`] to move it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagExpect {
    /// The tag does not exist yet.
    Absent,
    /// The tag points at this manifest.
    At(Digest),
}

/// A manifest as fetched: its bytes (verified against `digest`) and parsed form.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    pub manifest: Manifest,
}

/// What [`Client::push_blob`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The registry already had it.
    Existed,
    /// Mounted from another repository of the same registry.
    Mounted,
    Uploaded,
}

pub struct Client {
    http: reqwest::Client,
    config: ClientConfig,
    /// `Authorization` values by (host, scope).
    auth: Mutex<HashMap<(String, String), String>>,
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// The largest manifest read (the registry side accepts up to 4 MiB too).
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The largest token response read.
const MAX_TOKEN_BYTES: usize = 1 << 20;

/// A response body of at most `limit` bytes: a registry that sends more is
/// refused rather than read into memory whole.
async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    host: &str,
    what: &str,
) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(RegClientError::Invalid(format!(
            "{host}: {what}: larger than {limit} bytes"
        )));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|error| RegClientError::Http {
        registry: host.to_owned(),
        what: what.to_owned(),
        error,
    })? {
        if out.len() + chunk.len() > limit {
            return Err(RegClientError::Invalid(format!(
                "{host}: {what}: larger than {limit} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// An HTTP client trusting the system's roots and `ca_certs` (PEM, each
/// file may hold several): what the registry client uses, and what other
/// downloads of a build (`ADD URL`) should use so one `--ca-cert` serves all.
pub fn http_client(user_agent: &str, ca_certs: &[Vec<u8>]) -> Result<reqwest::Client> {
    let mut roots = Vec::new();
    for pem in ca_certs {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| RegClientError::Invalid(format!("a --ca-cert file: {e}")))?;
        if certs.is_empty() {
            return Err(RegClientError::Invalid(
                "a --ca-cert file holds no PEM certificate".into(),
            ));
        }
        roots.extend(certs);
    }
    reqwest::Client::builder()
        .user_agent(user_agent)
        .connect_timeout(Duration::from_secs(15))
        .tls_certs_merge(roots)
        .build()
        .map_err(|e| RegClientError::Invalid(format!("building the HTTP client: {e}")))
}

/// Why a registry said no, and what to check: the credential it refused
/// (by user name, never the password), or that none was configured.
fn refused(host: &str, credential: Option<&crate::auth::Credential>, status: u16) -> String {
    match credential {
        Some(c) => format!(
            "the registry refused the credential of user {} (HTTP {status}); check the pool's \
             stored credential (slipway credential update POOL --login-server {host}) or the \
             docker config.json entry for {host}",
            c.username()
        ),
        None => format!(
            "no credential is configured for it (HTTP {status}); store one with slipway \
             credential add POOL --login-server {host}, or docker login {host}"
        ),
    }
}

/// Whether the registry at `host` is spoken to over plain HTTP: loopback,
/// or one of `insecure` (`--insecure-registry`); HTTPS otherwise.
pub fn plain_http(host: &str, insecure: &[String]) -> bool {
    is_loopback(host) || insecure.iter().any(|h| h == host)
}

/// Hosts that differ only in their first label under a domain of at least
/// two labels (`registry-1.docker.io`, `auth.docker.io`).
fn same_site(a: &str, b: &str) -> bool {
    let parent = |h: &str| {
        h.split_once('.')
            .map(|(_, rest)| rest.to_owned())
            .filter(|rest| {
                rest.contains('.') && !rest.chars().all(|c| c.is_ascii_digit() || c == '.')
            })
    };
    matches!((parent(a), parent(b)), (Some(x), Some(y)) if x == y)
}

fn is_loopback(host: &str) -> bool {
    let h = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

impl Client {
    /// Why `host`'s credential must not go to the token `realm`, if it must
    /// not: a realm on another site (a registry's challenge could name any
    /// URL, and would collect the password), or plain HTTP to a host that is
    /// neither loopback nor a registry configured insecure. A realm on a
    /// sibling host of the same domain (Docker Hub: registry-1.docker.io →
    /// auth.docker.io) is the same site.
    fn withhold_from(&self, host: &str, realm: &str) -> Option<String> {
        let Ok(url) = reqwest::Url::parse(realm) else {
            return Some(format!("its token realm {realm:?} is not a URL"));
        };
        let realm_host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Some(format!("its token realm {realm:?} names no host")),
        };
        let bare = |h: &str| {
            h.rsplit_once(':')
                .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                .map_or(h, |(h, _)| h)
                .to_ascii_lowercase()
        };
        let (a, b) = (bare(host), bare(&realm_host));
        if a != b && !same_site(&a, &b) {
            return Some(format!(
                "its token realm {realm} is on another host than {host}"
            ));
        }
        if url.scheme() == "http"
            && !is_loopback(&realm_host)
            && !self.config.insecure_registries.iter().any(|h| h == host)
        {
            return Some(format!(
                "its token realm {realm} is plain HTTP; add --insecure-registry {host} if that is intended"
            ));
        }
        None
    }

    /// The HTTP client, with the configured roots, for a build's other
    /// downloads.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// How many blobs move at once (`ClientConfig::parallelism`, at least 1).
    pub fn parallelism(&self) -> usize {
        self.config.parallelism.max(1)
    }

    pub fn new(config: ClientConfig) -> Result<Client> {
        let http = http_client(&config.user_agent, &config.ca_certs)?;
        Ok(Client {
            http,
            config,
            auth: Mutex::new(HashMap::new()),
        })
    }

    fn base(&self, host: &str) -> String {
        let insecure = plain_http(host, &self.config.insecure_registries);
        format!("{}://{host}", if insecure { "http" } else { "https" })
    }

    fn cached_auth(&self, host: &str, scope: &str) -> Option<String> {
        let map = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(host.to_owned(), scope.to_owned())).cloned()
    }

    fn remember_auth(&self, host: &str, scope: &str, value: String) {
        let mut map = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((host.to_owned(), scope.to_owned()), value);
    }

    fn http_err(host: &str, what: &str) -> impl FnOnce(reqwest::Error) -> RegClientError {
        let (registry, what) = (host.to_owned(), what.to_owned());
        move |error| RegClientError::Http {
            registry,
            what,
            error,
        }
    }

    /// Send a request built by `build`, answering one authentication
    /// challenge if the registry asks. `scope` is what the request needs.
    async fn send(
        &self,
        host: &str,
        scope: &str,
        what: &str,
        build: &(dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Sync),
    ) -> Result<reqwest::Response> {
        let mut req = build(&self.http);
        if let Some(a) = self.cached_auth(host, scope) {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = req.send().await.map_err(Self::http_err(host, what))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let credential = self.config.credentials.get(host);
        let value = match challenge {
            Some(Challenge::Basic) => match credential {
                Some(ref c) => c.header(),
                None => {
                    return Err(RegClientError::Unauthorized {
                        registry: host.into(),
                        what: what.into(),
                        detail: "the registry wants Basic credentials and none are configured"
                            .into(),
                    });
                }
            },
            Some(Challenge::Bearer { realm, service, .. }) => {
                let token = self
                    .fetch_token(host, what, &realm, service.as_deref(), scope)
                    .await?;
                format!("Bearer {token}")
            }
            None => {
                return Err(RegClientError::Unauthorized {
                    registry: host.into(),
                    what: what.into(),
                    detail: "401 without a usable WWW-Authenticate challenge".into(),
                });
            }
        };
        self.remember_auth(host, scope, value.clone());
        let resp = build(&self.http)
            .header(AUTHORIZATION, value)
            .send()
            .await
            .map_err(Self::http_err(host, what))?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(RegClientError::Unauthorized {
                registry: host.into(),
                what: what.into(),
                detail: refused(host, credential.as_ref(), resp.status().as_u16()),
            });
        }
        Ok(resp)
    }

    async fn fetch_token(
        &self,
        host: &str,
        what: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scope.split(' ') {
            query.push(("scope", s));
        }
        let mut req = self.http.get(realm).query(&query);
        let mut credential = self.config.credentials.get(host);
        let withheld = credential
            .is_some()
            .then(|| self.withhold_from(host, realm))
            .flatten();
        if let Some(why) = &withheld {
            tracing::warn!(registry = host, "not sending its credential: {why}");
            credential = None;
        }
        if let Some(c) = &credential {
            req = req.header(AUTHORIZATION, c.header());
        }
        let resp = req
            .send()
            .await
            .map_err(Self::http_err(host, "token request"))?;
        if !resp.status().is_success() {
            return Err(RegClientError::Unauthorized {
                registry: host.into(),
                what: what.into(),
                detail: match (resp.status().as_u16(), withheld) {
                    (s @ (401 | 403), Some(why)) => {
                        format!(
                            "its token endpoint answered HTTP {s}; its credential was not sent: {why}"
                        )
                    }
                    (s @ (401 | 403), None) => refused(host, credential.as_ref(), s),
                    (s, _) => format!("its token endpoint {realm} answered HTTP {s}"),
                },
            });
        }
        let raw = read_limited(resp, MAX_TOKEN_BYTES, host, "token response").await?;
        let body: TokenResponse = serde_json::from_slice(&raw).map_err(|e| {
            RegClientError::Invalid(format!("{host}: token response: not JSON: {e}"))
        })?;
        body.into_token()
            .ok_or_else(|| RegClientError::Unauthorized {
                registry: host.into(),
                what: what.into(),
                detail: format!("token endpoint {realm} returned no token"),
            })
    }

    async fn retry<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        op.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(self.config.retries),
        )
        .when(RegClientError::is_transient)
        // Quiet: the final error says it all, once.
        .notify(|e, after| tracing::debug!("retrying in {after:?}: {e}"))
        .await
    }

    async fn fail(host: &str, what: &str, resp: reqwest::Response) -> RegClientError {
        let status = resp.status().as_u16();
        let mut body = resp.text().await.unwrap_or_default();
        body.truncate(500);
        RegClientError::Status {
            registry: host.into(),
            what: what.into(),
            status,
            body,
        }
    }

    /// Fetch the manifest or index `r` names, verified against its digest.
    pub async fn get_manifest(&self, r: &Reference) -> Result<FetchedManifest> {
        let host = r.api_host();
        let what = format!("manifest {r}");
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base(host),
            r.repository,
            r.manifest_reference()
        );
        let scope = pull_scope(&r.repository);
        self.retry(|| async {
            let resp = self
                .send(host, &scope, &what, &|h| {
                    h.get(&url).header(ACCEPT, MANIFEST_ACCEPT)
                })
                .await?;
            if !resp.status().is_success() {
                return Err(Self::fail(host, &what, resp).await);
            }
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let header_digest = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Digest>().ok());
            let bytes = read_limited(resp, MAX_MANIFEST_BYTES, host, &what).await?;
            let expected = r.digest.clone().or(header_digest);
            let algorithm = expected
                .as_ref()
                .map_or(oci::Algorithm::Sha256, Digest::algorithm);
            let digest = Digest::of(algorithm, &bytes);
            if let Some(e) = expected
                && e != digest
            {
                return Err(RegClientError::DigestMismatch {
                    what: what.clone(),
                    expected: e,
                    actual: digest,
                });
            }
            let manifest = Manifest::parse(&bytes, content_type.as_deref()).map_err(|source| {
                RegClientError::Manifest {
                    what: what.clone(),
                    source,
                }
            })?;
            Ok(FetchedManifest {
                digest,
                media_type: manifest.media_type.clone(),
                bytes: bytes.into(),
                manifest,
            })
        })
        .await
    }

    /// The image manifest for `platform`: `r` itself, or the entry of the index it names.
    pub async fn resolve_image(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<FetchedManifest> {
        let top = self.get_manifest(r).await?;
        let ManifestKind::Index { manifests } = &top.manifest.kind else {
            return Ok(top);
        };
        let chosen = manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
            .ok_or_else(|| RegClientError::NoPlatform {
                what: format!("image {r}"),
                platform: platform.to_string(),
                available: manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| {
                        format!(
                            "{}/{}",
                            p.get("os").and_then(|v| v.as_str()).unwrap_or("?"),
                            p.get("architecture")
                                .and_then(|v| v.as_str())
                                .unwrap_or("?")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let child = self
            .get_manifest(&r.with_digest(chosen.digest.clone()))
            .await?;
        if !matches!(child.manifest.kind, ManifestKind::Image { .. }) {
            return Err(RegClientError::Invalid(format!(
                "image {r}: the {platform} entry of the index is not an image manifest"
            )));
        }
        Ok(child)
    }

    /// The size of blob `digest` in `host/repo`, or `None` if absent.
    pub async fn blob_exists(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let what = format!("blob {digest} in {repo}");
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base(host));
        self.retry(|| async {
            let resp = self
                .send(host, &push_or_pull(self, host, repo), &what, &|h| {
                    h.head(&url)
                })
                .await?;
            match resp.status() {
                s if s.is_success() => Ok(Some(
                    resp.headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                )),
                StatusCode::NOT_FOUND => Ok(None),
                _ => Err(Self::fail(host, &what, resp).await),
            }
        })
        .await
    }

    /// Download blob `digest` into `out`, verifying its digest; returns its size.
    /// On a digest mismatch the error says so and `out` holds the bad bytes.
    pub async fn get_blob<W: AsyncWrite + Unpin>(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
        out: &mut W,
    ) -> Result<u64> {
        let what = format!("blob {digest} from {repo}");
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base(host));
        let scope = pull_scope(repo);
        let resp = self
            .retry(|| async {
                let resp = self.send(host, &scope, &what, &|h| h.get(&url)).await?;
                if resp.status().is_success() {
                    Ok(resp)
                } else {
                    Err(Self::fail(host, &what, resp).await)
                }
            })
            .await?;
        let mut digester = Digester::new(digest.algorithm());
        let mut size = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Self::http_err(host, &what))?;
            digester.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(|e| {
                RegClientError::Invalid(format!("{what}: writing the download: {e}"))
            })?;
        }
        out.flush()
            .await
            .map_err(|e| RegClientError::Invalid(format!("{what}: writing the download: {e}")))?;
        let actual = digester.finish();
        if &actual != digest {
            return Err(RegClientError::DigestMismatch {
                what,
                expected: digest.clone(),
                actual,
            });
        }
        Ok(size)
    }

    /// Try to mount `digest` from `from` into `repo` on the same registry.
    pub async fn mount_blob(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<bool> {
        let what = format!("mount of {digest} from {from} into {repo}");
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base(host));
        let scope = format!("{} {}", push_scope(repo), pull_scope(from));
        let query = [("mount", digest.to_string()), ("from", from.to_owned())];
        let resp = self
            .retry(|| async {
                self.send(host, &scope, &what, &|h| h.post(&url).query(&query))
                    .await
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // Not mountable: the registry opened an upload; close it.
                if let Some(loc) = location(&resp) {
                    let url = self.absolute(host, &loc);
                    let _ = self.send(host, &scope, &what, &|h| h.delete(&url)).await;
                }
                Ok(false)
            }
            _ => Err(Self::fail(host, &what, resp).await),
        }
    }

    fn absolute(&self, host: &str, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base(host))
        }
    }

    /// Upload blob `digest` (`size` bytes) unless the registry has it.
    /// `body` is called for each attempt, so a retry can restart the stream.
    pub async fn push_blob<F>(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
        size: u64,
        body: F,
    ) -> Result<Pushed>
    where
        F: Fn() -> reqwest::Body + Sync,
    {
        if self.blob_exists(host, repo, digest).await?.is_some() {
            return Ok(Pushed::Existed);
        }
        self.retry(|| self.upload_once(host, repo, digest, size, body()))
            .await?;
        Ok(Pushed::Uploaded)
    }

    /// [`Client::push_blob`] of the file at `path`, read afresh for every
    /// attempt in 1 MiB chunks (a small chunk costs a blocking-pool round
    /// trip each: 4 KiB chunks made a 1 GiB push CPU-bound).
    pub async fn push_file(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
        size: u64,
        path: &std::path::Path,
    ) -> Result<Pushed> {
        self.push_blob(host, repo, digest, size, || {
            match std::fs::File::open(path) {
                Ok(f) => reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                    tokio::fs::File::from_std(f),
                    1 << 20,
                )),
                Err(e) => reqwest::Body::wrap_stream(futures_util::stream::once(async move {
                    Err::<Bytes, _>(e)
                })),
            }
        })
        .await
    }

    async fn upload_once(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<()> {
        let what = format!("upload of {digest} to {repo}");
        let scope = push_scope(repo);
        let start = format!("{}/v2/{repo}/blobs/uploads/", self.base(host));
        let resp = self.send(host, &scope, &what, &|h| h.post(&start)).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(Self::fail(host, &what, resp).await);
        }
        let loc = location(&resp).ok_or_else(|| {
            RegClientError::Invalid(format!("{what}: the registry gave no upload Location"))
        })?;
        let url = self.absolute(host, &loc);
        // The body can be sent only once, so authenticate it with what the
        // POST negotiated rather than through `send`.
        let mut req = self
            .http
            .put(&url)
            .query(&[("digest", digest.to_string())])
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        if let Some(a) = self.cached_auth(host, &scope) {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = req.send().await.map_err(Self::http_err(host, &what))?;
        if resp.status() != StatusCode::CREATED {
            return Err(Self::fail(host, &what, resp).await);
        }
        Ok(())
    }

    /// Push manifest `bytes` to `r` (its tag, or its digest); returns the digest.
    pub async fn put_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest> {
        self.put_manifest_if(r, media_type, bytes, None).await
    }

    /// [`Client::put_manifest`] to a tag only if the tag is still as
    /// `expect` says (`If-Match`/`If-None-Match`); otherwise a
    /// [`RegClientError::is_precondition_failed`] error. A registry that
    /// ignores those headers (they are not in the distribution spec; Slipway's
    /// honours them) writes unconditionally.
    pub async fn put_manifest_if(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: Bytes,
        expect: Option<&TagExpect>,
    ) -> Result<Digest> {
        let host = r.api_host();
        let digest = Digest::of(
            r.digest
                .as_ref()
                .map_or(oci::Algorithm::Sha256, Digest::algorithm),
            &bytes,
        );
        let reference = r.tag.clone().unwrap_or_else(|| digest.to_string());
        let what = format!("manifest push to {r}");
        let url = format!(
            "{}/v2/{}/manifests/{reference}",
            self.base(host),
            r.repository
        );
        let scope = push_scope(&r.repository);
        self.retry(|| async {
            let resp = self
                .send(host, &scope, &what, &|h| {
                    let req = h
                        .request(Method::PUT, &url)
                        .header(CONTENT_TYPE, media_type)
                        .body(bytes.clone());
                    match expect {
                        None => req,
                        Some(TagExpect::Absent) => req.header(reqwest::header::IF_NONE_MATCH, "*"),
                        Some(TagExpect::At(d)) => {
                            req.header(reqwest::header::IF_MATCH, format!("\"{d}\""))
                        }
                    }
                })
                .await?;
            if resp.status() != StatusCode::CREATED {
                return Err(Self::fail(host, &what, resp).await);
            }
            Ok(())
        })
        .await?;
        Ok(digest)
    }

    /// Copy the image (or whole index) `src` to `dst`, blobs in parallel:
    /// skipped when present, mounted within one registry, streamed otherwise.
    pub async fn copy_image(&self, src: &Reference, dst: &Reference) -> Result<Digest> {
        let top = self.get_manifest(src).await?;
        let mut children = Vec::new();
        if let ManifestKind::Index { manifests } = &top.manifest.kind {
            for d in manifests {
                children.push(
                    self.get_manifest(&src.with_digest(d.digest.clone()))
                        .await?,
                );
            }
        }
        for m in children.iter().chain(std::iter::once(&top)) {
            let blobs: Vec<Descriptor> = m.manifest.required_blobs().cloned().collect();
            futures_util::stream::iter(blobs.into_iter().map(|d| self.copy_blob(src, dst, d)))
                .buffer_unordered(self.config.parallelism.max(1))
                .try_collect::<Vec<Pushed>>()
                .await?;
        }
        for child in &children {
            let at = Reference {
                tag: None,
                ..dst.with_digest(child.digest.clone())
            };
            self.put_manifest(&at, &child.media_type, child.bytes.clone())
                .await?;
        }
        self.put_manifest(dst, &top.media_type, top.bytes.clone())
            .await
    }

    /// Make blob `d` of `src` present in `dst`: skipped if there, mounted
    /// within one registry, streamed across registries otherwise.
    pub async fn copy_blob(
        &self,
        src: &Reference,
        dst: &Reference,
        d: Descriptor,
    ) -> Result<Pushed> {
        let (sh, dh) = (src.api_host(), dst.api_host());
        if self
            .blob_exists(dh, &dst.repository, &d.digest)
            .await?
            .is_some()
        {
            return Ok(Pushed::Existed);
        }
        if sh == dh
            && self
                .mount_blob(dh, &dst.repository, &d.digest, &src.repository)
                .await?
        {
            return Ok(Pushed::Mounted);
        }
        let what = format!("blob {} from {}", d.digest, src.repository);
        let url = format!("{}/v2/{}/blobs/{}", self.base(sh), src.repository, d.digest);
        let scope = pull_scope(&src.repository);
        self.retry(|| async {
            let resp = self.send(sh, &scope, &what, &|h| h.get(&url)).await?;
            if !resp.status().is_success() {
                return Err(Self::fail(sh, &what, resp).await);
            }
            // Streamed straight through; the destination verifies the digest.
            let body = reqwest::Body::wrap_stream(resp.bytes_stream());
            self.upload_once(dh, &dst.repository, &d.digest, d.size, body)
                .await
        })
        .await?;
        Ok(Pushed::Uploaded)
    }
}

/// HEADs during a push need the push token the upload will use, so that a
/// registry is not asked for a second token; plain reads need only pull.
fn push_or_pull(client: &Client, host: &str, repo: &str) -> String {
    if client.cached_auth(host, &push_scope(repo)).is_some() {
        push_scope(repo)
    } else {
        pull_scope(repo)
    }
}

fn location(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_to_a_realm_of_the_same_site_and_not_in_clear() {
        let mut config = ClientConfig::default();
        config.insecure_registries.push("plain.corp:5000".into());
        let c = Client::new(config).unwrap();
        let w = |host, realm| c.withhold_from(host, realm);
        assert_eq!(
            w("reg.corp.example", "https://reg.corp.example/token"),
            None
        );
        assert_eq!(
            w("registry-1.docker.io", "https://auth.docker.io/token"),
            None
        );
        assert_eq!(w("127.0.0.1:5000", "http://127.0.0.1:5000/token"), None);
        assert_eq!(w("plain.corp:5000", "http://plain.corp:5000/token"), None);
        let other = w("reg.corp.example", "https://collector.example/token").unwrap();
        assert!(other.contains("another host"), "{other}");
        let clear = w("reg.corp.example", "http://reg.corp.example/token").unwrap();
        assert!(
            clear.contains("--insecure-registry reg.corp.example"),
            "{clear}"
        );
        assert!(w("reg.corp.example", "not a url").is_some());
    }

    #[test]
    fn platforms_and_schemes() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!(
            same_site("registry-1.docker.io", "auth.docker.io")
                && !same_site("reg.corp.example", "evil.example")
                && !same_site("10.0.0.1", "10.0.0.2")
                && !same_site("a.io", "b.io")
                && is_loopback("127.0.0.1:5000")
                && is_loopback("localhost")
                && !is_loopback("registry.example:443")
        );
        assert!(
            p.matches(&serde_json::json!({"os":"linux","architecture":"arm64","variant":"v8"}))
        );
        assert!(
            !Platform::default().matches(&serde_json::json!({"os":"linux","architecture":"arm64"}))
        );
    }
}
