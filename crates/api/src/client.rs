//! Typed client of `/api/v1`. One method per route; no retries here, so each
//! caller decides what is worth retrying ([`ApiError::is_transient`]).

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::*;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error.
    #[error("{message} (HTTP {status}, {code})")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the server at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("bad server URL {0:?}: use http://host:port or https://host")]
    BadUrl(String),
}

impl ApiError {
    /// Worth retrying: the server is down, restarting or overloaded.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport { .. } => true,
            ApiError::Status { status, .. } => matches!(status, 500 | 502 | 503 | 504),
            ApiError::BadUrl(_) => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A client bound to one server and one token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Result<Client> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ApiError::BadUrl(server.into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .map_err(|source| ApiError::Transport {
                url: base.clone(),
                source,
            })?;
        Ok(Client { base, token, http })
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    /// `host:port` of the server, which is also its registry's host.
    pub fn registry_host(&self) -> &str {
        host_of(&self.base)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.base, crate::PREFIX, path)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send(&self, rb: RequestBuilder, path: &str) -> Result<reqwest::Response> {
        let resp = rb.send().await.map_err(|source| ApiError::Transport {
            url: self.url(path),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => (e.code, e.message),
            Err(_) => (
                status.canonical_reason().unwrap_or("error").to_owned(),
                String::from_utf8_lossy(&body).trim().to_owned(),
            ),
        };
        Err(ApiError::Status {
            status: status.as_u16(),
            code,
            message,
        })
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder, path: &str) -> Result<T> {
        let resp = self.send(rb, path).await?;
        resp.json().await.map_err(|source| ApiError::Transport {
            url: self.url(path),
            source,
        })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let mut rb = self.request(method, path);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        self.json(rb, path).await
    }

    // ---- pools (admin) ----

    pub async fn create_pool(&self, spec: &PoolSpec) -> Result<Pool> {
        self.call(Method::POST, "/pools", Some(spec)).await
    }

    pub async fn list_pools(&self) -> Result<Vec<Pool>> {
        self.call::<(), _>(Method::GET, "/pools", None).await
    }

    pub async fn pool(&self, name: &str) -> Result<PoolStatus> {
        self.call::<(), _>(Method::GET, &format!("/pools/{name}"), None)
            .await
    }

    pub async fn update_pool(&self, name: &str, update: &PoolUpdate) -> Result<Pool> {
        self.call(Method::PATCH, &format!("/pools/{name}"), Some(update))
            .await
    }

    pub async fn delete_pool(&self, name: &str, force: bool) -> Result<()> {
        let path = format!("/pools/{name}?force={force}");
        self.send(self.request(Method::DELETE, &path), &path)
            .await
            .map(drop)
    }

    pub async fn pool_token(&self, name: &str) -> Result<AgentToken> {
        self.call::<(), _>(Method::POST, &format!("/pools/{name}/tokens"), None)
            .await
    }

    // ---- a pool's credentials for other registries and git servers (admin) ----

    /// Store a new credential; `409` if one exists for that kind and host.
    pub async fn add_credential(
        &self,
        pool: &str,
        spec: &CredentialSpec,
    ) -> Result<CredentialInfo> {
        self.call(
            Method::POST,
            &format!("/pools/{pool}/credentials"),
            Some(spec),
        )
        .await
    }

    /// Replace the username and password of a stored credential; `404` if none.
    pub async fn update_credential(
        &self,
        pool: &str,
        spec: &CredentialSpec,
    ) -> Result<CredentialInfo> {
        let path = format!("/pools/{pool}/credentials/{}/{}", spec.kind, spec.host);
        self.call(Method::PUT, &path, Some(spec)).await
    }

    pub async fn delete_credential(
        &self,
        pool: &str,
        kind: CredentialKind,
        host: &str,
    ) -> Result<()> {
        let path = format!("/pools/{pool}/credentials/{kind}/{host}");
        self.send(self.request(Method::DELETE, &path), &path)
            .await
            .map(drop)
    }

    pub async fn list_credentials(&self, pool: &str) -> Result<Vec<CredentialInfo>> {
        self.call::<(), _>(Method::GET, &format!("/pools/{pool}/credentials"), None)
            .await
    }

    // ---- stored secrets (admin) and tasks ----

    pub async fn put_secret(&self, name: &str, value: &str) -> Result<()> {
        let path = format!("/secrets/{name}");
        let body = SecretValue {
            value: value.to_owned(),
        };
        self.send(self.request(Method::PUT, &path).json(&body), &path)
            .await
            .map(drop)
    }

    pub async fn delete_secret(&self, name: &str) -> Result<()> {
        let path = format!("/secrets/{name}");
        self.send(self.request(Method::DELETE, &path), &path)
            .await
            .map(drop)
    }

    pub async fn list_secrets(&self) -> Result<Vec<SecretInfo>> {
        self.call::<(), _>(Method::GET, "/secrets", None).await
    }

    pub async fn create_task(&self, def: &TaskDef) -> Result<TaskDef> {
        self.call(Method::POST, "/tasks", Some(def)).await
    }

    pub async fn update_task(&self, def: &TaskDef) -> Result<TaskDef> {
        self.call(Method::PUT, &format!("/tasks/{}", def.name), Some(def))
            .await
    }

    pub async fn task(&self, name: &str) -> Result<TaskDef> {
        self.call::<(), _>(Method::GET, &format!("/tasks/{name}"), None)
            .await
    }

    pub async fn list_tasks(&self) -> Result<Vec<TaskDef>> {
        self.call::<(), _>(Method::GET, "/tasks", None).await
    }

    pub async fn delete_task(&self, name: &str) -> Result<()> {
        let path = format!("/tasks/{name}");
        self.send(self.request(Method::DELETE, &path), &path)
            .await
            .map(drop)
    }

    pub async fn run_task(&self, name: &str, req: &TaskRunRequest) -> Result<Run> {
        self.call(Method::POST, &format!("/tasks/{name}/runs"), Some(req))
            .await
    }

    pub async fn task_runs(&self, name: &str, limit: u32) -> Result<Vec<Run>> {
        self.call::<(), _>(
            Method::GET,
            &format!("/tasks/{name}/runs?limit={limit}"),
            None,
        )
        .await
    }

    // ---- API tokens (admin) ----

    /// A new API token with `grants` (`pool:NAME:build`,
    /// `repository:NAME:pull,push` …); its secret is in the reply only.
    pub async fn create_token(&self, req: &TokenRequest) -> Result<CreatedToken> {
        self.call(Method::POST, "/tokens", Some(req)).await
    }

    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        self.call::<(), _>(Method::GET, "/tokens", None).await
    }

    pub async fn delete_token(&self, id: &str) -> Result<()> {
        let path = format!("/tokens/{id}");
        self.send(self.request(Method::DELETE, &path), &path)
            .await
            .map(drop)
    }

    // ---- contexts ----

    /// Whether the server already stores a context with this digest.
    pub async fn context_exists(&self, digest: &str) -> Result<bool> {
        let path = format!("/contexts/{digest}");
        match self.send(self.request(Method::HEAD, &path), &path).await {
            Ok(_) => Ok(true),
            Err(ApiError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Upload a context archive; the server verifies `digest`.
    pub async fn upload_context(
        &self,
        digest: &str,
        size: u64,
        body: impl Into<reqwest::Body>,
    ) -> Result<ContextInfo> {
        let path = format!("/contexts/{digest}");
        let rb = self
            .request(Method::PUT, &path)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        self.json(rb, &path).await
    }

    /// The context archive's bytes, streamed.
    pub async fn download_context(&self, digest: &str) -> Result<reqwest::Response> {
        let path = format!("/contexts/{digest}");
        self.send(self.request(Method::GET, &path), &path).await
    }

    // ---- runs ----

    pub async fn submit_run(&self, req: &RunRequest) -> Result<Run> {
        self.call(Method::POST, "/runs", Some(req)).await
    }

    pub async fn list_runs(
        &self,
        pool: Option<&str>,
        state: Option<RunState>,
        limit: u32,
    ) -> Result<Vec<Run>> {
        let mut path = format!("/runs?limit={limit}");
        if let Some(p) = pool {
            path.push_str(&format!("&pool={p}"));
        }
        if let Some(s) = state {
            path.push_str(&format!("&state={s}"));
        }
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn run(&self, id: &str) -> Result<Run> {
        self.call::<(), _>(Method::GET, &format!("/runs/{id}"), None)
            .await
    }

    pub async fn cancel_run(&self, id: &str) -> Result<Run> {
        self.call::<(), _>(Method::POST, &format!("/runs/{id}/cancel"), None)
            .await
    }

    /// Log chunks after `after`; waits up to `wait` for new ones when there
    /// are none yet and the run is not final.
    pub async fn logs(&self, id: &str, after: u64, wait: Duration) -> Result<LogPage> {
        let path = format!("/runs/{id}/logs?after={after}&wait={}", wait.as_secs());
        let rb = self
            .request(Method::GET, &path)
            .timeout(wait + Duration::from_secs(30));
        self.json(rb, &path).await
    }

    // ---- agents ----

    /// A run of the token's pool, or `None` when none came within `wait_secs`.
    pub async fn lease(&self, req: &LeaseRequest) -> Result<Option<Lease>> {
        let path = "/agent/lease";
        let rb = self
            .request(Method::POST, path)
            .json(req)
            .timeout(Duration::from_secs(req.wait_secs + 30));
        let resp = self.send(rb, path).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        resp.json().await.map_err(|source| ApiError::Transport {
            url: self.url(path),
            source,
        })
    }

    /// The pool, tier and registry of this client's agent token.
    pub async fn agent_self(&self) -> Result<AgentSelf> {
        let path = "/agent/self";
        let rb = self
            .request(Method::GET, path)
            .timeout(Duration::from_secs(10));
        self.json(rb, path).await
    }

    pub async fn heartbeat(&self, run: &str, hb: &Heartbeat) -> Result<HeartbeatReply> {
        let path = format!("/agent/runs/{run}/heartbeat");
        let rb = self
            .request(Method::POST, &path)
            .json(hb)
            .timeout(Duration::from_secs(10));
        self.json(rb, &path).await
    }

    pub async fn upload_logs(&self, run: &str, up: &LogUpload) -> Result<()> {
        let path = format!("/agent/runs/{run}/logs");
        let rb = self
            .request(Method::POST, &path)
            .json(up)
            .timeout(Duration::from_secs(30));
        self.send(rb, &path).await.map(drop)
    }

    pub async fn report(&self, run: &str, result: &RunResult) -> Result<Run> {
        let path = format!("/agent/runs/{run}/result");
        let rb = self
            .request(Method::POST, &path)
            .json(result)
            .timeout(Duration::from_secs(30));
        self.json(rb, &path).await
    }

    /// `GET /openapi.json`, the server's description of this API.
    pub async fn openapi(&self) -> Result<serde_json::Value> {
        self.call::<(), _>(Method::GET, "/openapi.json", None).await
    }
}

/// `host:port` of a server URL (`http://h:5000/x` → `h:5000`): the name its
/// registry goes by.
pub fn host_of(url: &str) -> &str {
    let rest = url
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    rest.split('/').next().unwrap_or(rest)
}
