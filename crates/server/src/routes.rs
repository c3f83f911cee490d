//! `/api/v1` handlers: authentication, request checks, and the mapping of
//! database answers to HTTP. The queue's rules live in [`crate::db`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::{
    AgentToken, ContextInfo, ContextSource, ErrorBody, Heartbeat, HeartbeatReply, Lease,
    LeaseRequest, LogPage, LogUpload, PoolSpec, PoolStatus, PoolUpdate, RegistryCredential,
    RunLimits, RunRequest, RunResult, RunState,
};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use registry::auth::{Access, Action, Principal};
use serde::Deserialize;

use crate::db::Cancel;
use crate::{Server, hash_secret, random_token};

pub(crate) type S = State<Arc<Server>>;

/// An error response: status, a stable code, and a message for humans.
pub struct ApiErr(StatusCode, &'static str, String);

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let mut resp = (
            self.0,
            Json(ErrorBody {
                code: self.1.into(),
                message: self.2,
            }),
        )
            .into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"slipway\""),
            );
        }
        resp
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiErr {
    tracing::error!("internal error: {e}");
    ApiErr(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string())
}

impl From<crate::DbError> for ApiErr {
    fn from(e: crate::DbError) -> Self {
        internal(e)
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> ApiErr {
    ApiErr(StatusCode::BAD_REQUEST, "INVALID", msg.into())
}

pub(crate) fn not_found(what: impl Into<String>) -> ApiErr {
    ApiErr(StatusCode::NOT_FOUND, "NOT_FOUND", what.into())
}

pub(crate) fn conflict(msg: impl Into<String>) -> ApiErr {
    ApiErr(StatusCode::CONFLICT, "CONFLICT", msg.into())
}

pub(crate) fn forbidden(msg: impl Into<String>) -> ApiErr {
    ApiErr(StatusCode::FORBIDDEN, "DENIED", msg.into())
}

pub(crate) type R<T> = Result<T, ApiErr>;

pub fn router(server: Arc<Server>) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/pools", post(create_pool).get(list_pools))
        .route(
            "/pools/{name}",
            get(show_pool).patch(update_pool).delete(delete_pool),
        )
        .route("/pools/{name}/tokens", post(pool_token))
        .route(
            "/pools/{name}/credentials",
            post(add_credential).get(list_credentials),
        )
        .route(
            "/pools/{name}/credentials/{kind}/{host}",
            axum::routing::put(update_credential).delete(delete_credential),
        )
        .route(
            "/contexts/{digest}",
            get(get_context).head(head_context).put(put_context),
        )
        .route("/runs", post(submit_run).get(list_runs))
        .route("/runs/{id}", get(show_run))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/logs", get(run_logs))
        .route("/secrets", get(crate::task_routes::list_secrets))
        .route(
            "/secrets/{name}",
            axum::routing::put(crate::task_routes::put_secret)
                .delete(crate::task_routes::delete_secret),
        )
        .route(
            "/tasks",
            post(crate::task_routes::create_task).get(crate::task_routes::list_tasks),
        )
        .route(
            "/tasks/{name}",
            get(crate::task_routes::show_task)
                .put(crate::task_routes::update_task)
                .delete(crate::task_routes::delete_task),
        )
        .route(
            "/tasks/{name}/runs",
            post(crate::task_routes::run_task).get(crate::task_routes::task_runs),
        )
        .route("/repositories", get(list_repositories))
        .route("/repositories/{*name}", get(repository_tags))
        .route("/tokens", post(create_token).get(list_tokens))
        .route("/tokens/{id}", axum::routing::delete(delete_token))
        .route("/agent/self", get(agent_self))
        .route("/agent/lease", post(lease))
        .route("/agent/runs/{id}/heartbeat", post(heartbeat))
        .route("/agent/runs/{id}/logs", post(agent_logs))
        .route("/agent/runs/{id}/result", post(agent_result))
        .fallback(|| async { not_found("no such API route") });
    Router::new().nest(api::PREFIX, api).with_state(server)
}

/// The OpenAPI document, kept next to this file and checked against the
/// router by a test.
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// ---- authentication ----

fn bearer(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        return s.split_once(':').map(|(_, p)| p.to_owned());
    }
    None
}

/// A user and the unique id of its API token: what runs and context
/// uploads are recorded under (a name can be taken again after a delete).
pub(crate) struct Caller {
    pub who: Principal,
    pub token_id: String,
}

/// A user: an API token of the registry's token store (the admin token, or
/// a scoped one). Per-run registry credentials are not users.
pub(crate) fn user(s: &Server, headers: &HeaderMap) -> R<Principal> {
    caller(s, headers).map(|c| c.who)
}

/// [`user`], with its token's id.
pub(crate) fn caller(s: &Server, headers: &HeaderMap) -> R<Caller> {
    let Some(token) = bearer(headers) else {
        return Err(ApiErr(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required: pass an API token as a Bearer token".into(),
        ));
    };
    match s.registry.auth().verify_api_token_id(&token) {
        Some((token_id, who)) if !who.subject().starts_with("run:") => Ok(Caller { who, token_id }),
        _ => Err(ApiErr(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "the token is not valid here".into(),
        )),
    }
}

pub(crate) fn admin(s: &Server, headers: &HeaderMap) -> R<Principal> {
    let p = user(s, headers)?;
    match p {
        Principal::Admin { .. } => Ok(p),
        Principal::Scoped { .. } => Err(forbidden(format!(
            "{} is not an admin token; managing pools needs one",
            p.subject()
        ))),
    }
}

/// Whether `who` may build on `pool` (submit, see and cancel its runs):
/// an admin token, or a grant `pool:NAME:build`.
pub(crate) fn may_build(who: &Principal, pool: &str) -> R<()> {
    if who.allows("pool", pool, "build") {
        return Ok(());
    }
    Err(forbidden(format!(
        "{} may not build on pool {pool} (it needs the grant pool:{pool}:build)",
        who.subject()
    )))
}

/// An agent: a pool-bound agent token. Returns the pool.
async fn agent(s: &Server, headers: &HeaderMap) -> R<String> {
    let Some(token) = bearer(headers) else {
        return Err(ApiErr(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "agent calls need the pool's agent token (slipway pool token NAME)".into(),
        ));
    };
    match s.db.agent_token_pool(&hash_secret(&token)).await? {
        Some(pool) => Ok(pool),
        None => Err(ApiErr(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "not an agent token of any pool".into(),
        )),
    }
}

// ---- credentials for other registries and git servers ----

/// What a run's sealed secrets are bound to: they open only for this run.
fn run_secrets_owner(run: &str) -> Vec<u8> {
    format!("run-secrets\0{run}").into_bytes()
}

/// What a sealed credential is bound to: it opens only for this row.
fn credential_owner(pool: &str, kind: api::CredentialKind, host: &str) -> Vec<u8> {
    format!("credential\0{pool}\0{kind}\0{host}").into_bytes()
}

/// `host[:port]`, no scheme, path or credentials: the key a registry or
/// git URL is matched by.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

/// The password, and for `git-ssh` the private key, its known_hosts, a
/// user and port an ssh config can name.
fn check_secret_parts(spec: &api::CredentialSpec) -> Result<(), ApiErr> {
    if spec.kind != api::CredentialKind::GitSsh {
        if spec.password.is_empty() || spec.password.len() > 16 * 1024 {
            return Err(bad("password: 1 byte to 16 KiB"));
        }
        if spec.known_hosts.is_some() {
            return Err(bad(format!(
                "known_hosts is for git-ssh credentials, not {}",
                spec.kind
            )));
        }
        return Ok(());
    }
    // The agent writes user and port into an ssh config.
    if !spec
        .username
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(bad(
            "git-ssh: the username may hold letters, digits, '.', '_' and '-' only",
        ));
    }
    let port = match spec.host.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").map(|(_, p)| p),
        None => spec
            .host
            .rsplit_once(':')
            .filter(|(h, _)| !h.contains(':'))
            .map(|(_, p)| p),
    };
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad(format!(
            "git-ssh: host {:?}: the port must be a number from 1 to 65535",
            spec.host
        )));
    }
    let key = spec.password.trim();
    if key.is_empty() || spec.password.len() > 16 * 1024 {
        return Err(bad("git-ssh: the private key must be 1 byte to 16 KiB"));
    }
    if !(key.starts_with("-----BEGIN ") && key.contains("PRIVATE KEY-----")) {
        return Err(bad(
            "git-ssh: the password must be a private key (PEM or OpenSSH text, -----BEGIN … PRIVATE KEY-----)",
        ));
    }
    let Some(known) = spec.known_hosts.as_deref() else {
        return Err(bad(format!(
            "git-ssh: known_hosts is required (agents never trust an unknown host key): give the host key lines of {} (ssh-keyscan)",
            spec.host
        )));
    };
    if known.len() > 64 * 1024 {
        return Err(bad("git-ssh: known_hosts must be at most 64 KiB"));
    }
    let mut entries = 0;
    for (i, line) in known.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // `[@marker] hosts keytype key [comment]`
        let fields = line.split_whitespace().count() - usize::from(line.starts_with('@'));
        if fields < 3 {
            return Err(bad(format!(
                "git-ssh: known_hosts line {}: expected `HOSTS KEYTYPE KEY`",
                i + 1
            )));
        }
        entries += 1;
    }
    if entries == 0 {
        return Err(bad(format!(
            "git-ssh: known_hosts has no host key (agents never trust an unknown host key): give the host key lines of {} (ssh-keyscan)",
            spec.host
        )));
    }
    Ok(())
}

async fn store_credential(
    s: &Server,
    headers: &HeaderMap,
    pool: &str,
    spec: &api::CredentialSpec,
    replace: bool,
) -> R<Response> {
    admin(s, headers)?;
    if !valid_host(&spec.host) {
        return Err(bad(format!(
            "host {:?}: give host or host:port, without a scheme or path",
            spec.host
        )));
    }
    if spec.username.is_empty() || spec.username.len() > 256 || spec.username.contains(':') {
        return Err(bad("username: 1-256 characters, no ':'"));
    }
    check_secret_parts(spec)?;
    if s.db.pool(pool).await?.is_none() {
        return Err(not_found(format!("pool {pool} does not exist")));
    }
    // The known_hosts is sealed with the key: whoever could change it
    // could make agents trust another host.
    let mut m = BTreeMap::new();
    m.insert("password".to_owned(), spec.password.clone());
    if let Some(k) = &spec.known_hosts {
        m.insert("known_hosts".to_owned(), k.clone());
    }
    let sealed = s
        .sealer
        .seal_for(&m, &credential_owner(pool, spec.kind, &spec.host))
        .map_err(internal)?;
    let done =
        s.db.put_credential(
            pool,
            spec.kind,
            &spec.host,
            &spec.username,
            &sealed,
            replace,
        )
        .await?;
    match (done, replace) {
        (true, _) => {}
        (false, false) => {
            return Err(conflict(format!(
                "pool {pool} already has a {} credential for {} (use update)",
                spec.kind, spec.host
            )));
        }
        (false, true) => {
            return Err(not_found(format!(
                "pool {pool} has no {} credential for {} (use add)",
                spec.kind, spec.host
            )));
        }
    }
    let info =
        s.db.credentials(pool)
            .await?
            .into_iter()
            .map(|(i, _)| i)
            .find(|i| i.kind == spec.kind && i.host == spec.host)
            .ok_or_else(|| internal("credential vanished"))?;
    tracing::info!(pool, kind = %spec.kind, host = spec.host, "credential stored");
    let status = if replace {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(info)).into_response())
}

async fn add_credential(
    State(s): S,
    headers: HeaderMap,
    Path(pool): Path<String>,
    Json(spec): Json<api::CredentialSpec>,
) -> R<Response> {
    store_credential(&s, &headers, &pool, &spec, false).await
}

async fn update_credential(
    State(s): S,
    headers: HeaderMap,
    Path((pool, kind, host)): Path<(String, String, String)>,
    Json(spec): Json<api::CredentialSpec>,
) -> R<Response> {
    let kind: api::CredentialKind = kind.parse().map_err(bad)?;
    if kind != spec.kind || host != spec.host {
        return Err(bad("the body's kind and host must match the path"));
    }
    store_credential(&s, &headers, &pool, &spec, true).await
}

async fn delete_credential(
    State(s): S,
    headers: HeaderMap,
    Path((pool, kind, host)): Path<(String, String, String)>,
) -> R<Response> {
    admin(&s, &headers)?;
    let kind: api::CredentialKind = kind.parse().map_err(bad)?;
    if !s.db.delete_credential(&pool, kind, &host).await? {
        return Err(not_found(format!(
            "pool {pool} has no {kind} credential for {host}"
        )));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_credentials(
    State(s): S,
    headers: HeaderMap,
    Path(pool): Path<String>,
) -> R<Response> {
    admin(&s, &headers)?;
    if s.db.pool(&pool).await?.is_none() {
        return Err(not_found(format!("pool {pool} does not exist")));
    }
    let list: Vec<api::CredentialInfo> =
        s.db.credentials(&pool)
            .await?
            .into_iter()
            .map(|(i, _)| i)
            .collect();
    Ok(Json(list).into_response())
}

/// The pool's credentials in clear, for a lease. One that no longer opens
/// (the server's key changed) is skipped with a log line rather than
/// failing every run of the pool.
async fn lease_credentials(s: &Server, pool: &str) -> R<Vec<api::CredentialSpec>> {
    let mut out = Vec::new();
    for (info, sealed) in s.db.credentials(pool).await? {
        match s
            .sealer
            .open_for(&sealed, &credential_owner(pool, info.kind, &info.host))
        {
            Ok(mut m) => out.push(api::CredentialSpec {
                kind: info.kind,
                host: info.host,
                username: info.username,
                password: m.remove("password").unwrap_or_default(),
                known_hosts: m.remove("known_hosts"),
            }),
            Err(e) => tracing::error!(pool, host = info.host, "credential: {e}"),
        }
    }
    Ok(out)
}

/// `git@host:path/repo.git`: git's scp-like SSH syntax (no scheme, a user,
/// and a `:` before any `/`).
fn scp_like_git(url: &str) -> bool {
    !url.contains("://")
        && url
            .split_once(':')
            .is_some_and(|(h, p)| !p.is_empty() && h.contains('@') && !h.contains('/'))
}

// ---- pools ----

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 50
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

async fn create_pool(State(s): S, headers: HeaderMap, Json(spec): Json<PoolSpec>) -> R<Response> {
    admin(&s, &headers)?;
    if !valid_name(&spec.name) {
        return Err(bad(format!(
            "pool name {:?}: use 1-50 lowercase letters, digits and dashes",
            spec.name
        )));
    }
    if spec.count > 100 {
        return Err(bad("count: at most 100 agents per pool"));
    }
    if !s.db.create_pool(&spec).await? {
        return Err(conflict(format!("pool {} exists", spec.name)));
    }
    let pool =
        s.db.pool(&spec.name)
            .await?
            .ok_or_else(|| internal("pool vanished"))?;
    s.pools_changed.notify_one();
    Ok((StatusCode::CREATED, Json(pool)).into_response())
}

/// A scoped token sees only the pools it may build on.
async fn list_pools(State(s): S, headers: HeaderMap) -> R<Response> {
    let who = user(&s, &headers)?;
    let mut pools = s.db.list_pools().await?;
    pools.retain(|p| may_build(&who, &p.name).is_ok());
    Ok(Json(pools).into_response())
}

async fn show_pool(State(s): S, headers: HeaderMap, Path(name): Path<String>) -> R<Response> {
    let who = user(&s, &headers)?;
    may_build(&who, &name)?;
    let pool =
        s.db.pool(&name)
            .await?
            .ok_or_else(|| not_found(format!("pool {name} does not exist")))?;
    let agents = s.db.agents(&name, s.config.lease_ttl * 3).await?;
    Ok(Json(PoolStatus { pool, agents }).into_response())
}

async fn update_pool(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(up): Json<PoolUpdate>,
) -> R<Response> {
    admin(&s, &headers)?;
    if up.count.is_some_and(|c| c > 100) {
        return Err(bad("count: at most 100 agents per pool"));
    }
    if !s.db.update_pool(&name, &up).await? {
        return Err(not_found(format!("pool {name} does not exist")));
    }
    let pool =
        s.db.pool(&name)
            .await?
            .ok_or_else(|| internal("pool vanished"))?;
    s.pools_changed.notify_one();
    Ok(Json(pool).into_response())
}

#[derive(Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

async fn delete_pool(
    State(s): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<ForceQuery>,
) -> R<Response> {
    admin(&s, &headers)?;
    if s.db.pool(&name).await?.is_none() {
        return Err(not_found(format!("pool {name} does not exist")));
    }
    match s.db.delete_pool(&name, q.force).await? {
        Ok(canceled) => {
            for run in &canceled {
                s.revoke_run_credentials(run);
                s.runs.wake_and_forget(run);
            }
            s.pools_changed.notify_one();
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(n) => Err(conflict(format!(
            "pool {name} has {n} queued or running runs; wait, cancel them, or delete with force"
        ))),
    }
}

async fn pool_token(State(s): S, headers: HeaderMap, Path(name): Path<String>) -> R<Response> {
    admin(&s, &headers)?;
    if s.db.pool(&name).await?.is_none() {
        return Err(not_found(format!("pool {name} does not exist")));
    }
    let token = random_token("slwa_").map_err(internal)?;
    s.db.add_agent_token(&name, &hash_secret(&token), "agent")
        .await?;
    Ok((StatusCode::CREATED, Json(AgentToken { pool: name, token })).into_response())
}

// ---- the registry, as the console browses it ----

/// Repositories this token may pull from, each with its tag count.
async fn list_repositories(State(s): S, headers: HeaderMap) -> R<Response> {
    let who = user(&s, &headers)?;
    let mut out = Vec::new();
    for name in s
        .registry
        .repositories()
        .await
        .map_err(|e| internal(e.message))?
    {
        if !who.allows("repository", &name, "pull") {
            continue;
        }
        let tags = s
            .registry
            .describe_tags(&name)
            .await
            .map_err(|e| internal(e.message))?;
        out.push(api::RepositoryInfo {
            tags: tags.map_or(0, |t| t.len()),
            name,
        });
    }
    Ok(Json(out).into_response())
}

/// A repository's tags: digest, size, creation time, platforms.
async fn repository_tags(State(s): S, headers: HeaderMap, Path(name): Path<String>) -> R<Response> {
    let who = user(&s, &headers)?;
    if !who.allows("repository", &name, "pull") {
        return Err(forbidden(format!(
            "{} may not pull from {name}",
            who.subject()
        )));
    }
    match s
        .registry
        .describe_tags(&name)
        .await
        .map_err(|e| internal(e.message))?
    {
        Some(tags) => Ok(Json(tags).into_response()),
        None => Err(not_found(format!("repository {name} does not exist"))),
    }
}

// ---- contexts ----

fn parse_digest(d: &str) -> R<oci::Digest> {
    d.parse()
        .map_err(|e| bad(format!("context digest {d:?}: {e}")))
}

/// Whether `c` may read context `digest`: an admin, or the token that
/// uploaded it (another token must send the bytes itself to prove it has
/// them).
async fn may_read_context(s: &Server, c: &Caller, digest: &str) -> R<bool> {
    Ok(matches!(c.who, Principal::Admin { .. })
        || s.db.context_uploaded_by(digest, &c.token_id).await?)
}

/// HEAD: a context this token may not read is "not stored" for it (the CLI
/// then uploads it, which proves it has the bytes).
async fn head_context(State(s): S, headers: HeaderMap, Path(d): Path<String>) -> R<Response> {
    let c = caller(&s, &headers)?;
    let digest = parse_digest(&d)?;
    let stat = s.contexts.stat(&digest).await.map_err(internal)?;
    match stat {
        Some(info) if may_read_context(&s, &c, &d).await? => Ok((
            StatusCode::OK,
            [(header::CONTENT_LENGTH, info.size.to_string())],
        )
            .into_response()),
        _ => Err(not_found(format!("context {d} is not stored"))),
    }
}

async fn put_context(
    State(s): S,
    headers: HeaderMap,
    Path(d): Path<String>,
    body: Body,
) -> R<Response> {
    let c = caller(&s, &headers)?;
    let digest = parse_digest(&d)?;
    if let Some(info) = s.contexts.stat(&digest).await.map_err(internal)?
        && may_read_context(&s, &c, &d).await?
    {
        return Ok(Json(ContextInfo {
            digest: d,
            size: info.size,
        })
        .into_response());
    }
    let max = s.config.max_context_bytes;
    let too_large = || {
        ApiErr(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TOO_LARGE",
            format!(
                "the context is larger than this server's limit of {max} bytes (--max-context-size); \
                 leave build outputs and dependencies out with .dockerignore"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(too_large());
    }
    let id = s.contexts.upload_create().await.map_err(internal)?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let (stream, over) = store::limit::limited(stream, max);
    let appended = s.contexts.upload_append(&id, 0, stream).await;
    if let Err(e) = appended {
        let _ = s.contexts.upload_cancel(&id).await;
        if over.happened() {
            return Err(too_large());
        }
        return Err(bad(format!("receiving the context: {e}")));
    }
    match s.contexts.upload_commit(&id, &digest).await {
        Ok(size) => {
            s.db.record_context_upload(&d, &c.token_id).await?;
            Ok((StatusCode::CREATED, Json(ContextInfo { digest: d, size })).into_response())
        }
        Err(e @ store::StoreError::DigestMismatch { .. }) => {
            let _ = s.contexts.upload_cancel(&id).await;
            Err(ApiErr(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                e.to_string(),
            ))
        }
        Err(e) => {
            let _ = s.contexts.upload_cancel(&id).await;
            Err(internal(e))
        }
    }
}

async fn get_context(State(s): S, headers: HeaderMap, Path(d): Path<String>) -> R<Response> {
    // Agents fetch contexts of the runs they hold; users may re-read theirs.
    let digest = parse_digest(&d)?;
    if let Ok(pool) = agent(&s, &headers).await {
        if !s.db.context_leased(&pool, &d).await? {
            return Err(forbidden(format!(
                "no run of context {d} is leased to an agent of pool {pool}"
            )));
        }
    } else {
        let c = caller(&s, &headers)?;
        if !may_read_context(&s, &c, &d).await? {
            return Err(forbidden(format!(
                "{} did not upload context {d}; only its uploader (or an admin) may read it",
                c.who.subject()
            )));
        }
    }
    let read = match s.contexts.open(&digest, None).await {
        Ok(r) => r,
        Err(store::StoreError::BlobUnknown(_)) => {
            return Err(not_found(format!("context {d} is not stored")));
        }
        Err(e) => return Err(internal(e)),
    };
    let stream = tokio_util::io::ReaderStream::with_capacity(read.reader, store::READ_BUF);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, read.len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

// ---- runs ----

const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The host under which this request names the server's own registry: the
/// `Host` it was sent to, so a server behind a cluster Service or bound to
/// `0.0.0.0` knows the name its clients use without `--public-url`.
pub(crate) fn own_registry(s: &Server, headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| valid_host(h))
        .map_or_else(|| s.config.registry_host.clone(), str::to_owned)
}

async fn submit_run(State(s): S, headers: HeaderMap, Json(req): Json<RunRequest>) -> R<Response> {
    let c = caller(&s, &headers)?;
    let own = own_registry(&s, &headers);
    let run = queue_run(&s, &c, &own, req).await?;
    Ok((StatusCode::CREATED, Json(run)).into_response())
}

/// Check and queue a run for `who`; `own` is the name the caller reaches
/// this server's registry by.
pub(crate) async fn queue_run(
    s: &Server,
    c: &Caller,
    own: &str,
    mut req: RunRequest,
) -> R<api::Run> {
    let who = &c.who;
    may_build(who, &req.pool)?;
    let Some(pool) = s.db.pool_settings(&req.pool).await? else {
        return Err(not_found(format!("pool {} does not exist", req.pool)));
    };
    let own = own.to_owned();
    if let Some(task) = &mut req.build.task {
        crate::task_routes::check_task(s, who, task, &req.secrets, &pool).await?;
        req.build.no_push = true;
    }
    let b = &mut req.build;
    if b.tags.is_empty() && !b.no_push {
        return Err(bad("give at least one tag to push to, or no_push"));
    }
    // Tags naming the server by its configured name are its own too.
    for t in &mut b.tags {
        if let Some(rest) = t.strip_prefix(&format!("{}/", s.config.registry_host))
            && own != s.config.registry_host
        {
            *t = format!("{own}/{rest}");
        }
    }
    b.registry = Some(own.clone());
    let b = &req.build;
    for t in &b.tags {
        let r: oci::Reference = t.parse().map_err(|e| bad(format!("tag {t:?}: {e}")))?;
        if r.registry == own && !who.allows("repository", &r.repository, "push") {
            return Err(forbidden(format!(
                "{} may not push to {}",
                who.subject(),
                r.repository
            )));
        }
    }
    if b.dockerfile.is_empty() || b.dockerfile.contains('\0') {
        return Err(bad("dockerfile: give a path inside the context"));
    }
    match &b.context {
        ContextSource::Upload { digest } => {
            let d = parse_digest(digest)?;
            if s.contexts.stat(&d).await.map_err(internal)?.is_none()
                || !may_read_context(s, c, digest).await?
            {
                return Err(bad(format!(
                    "context {digest} is not stored: upload it with PUT /contexts/{digest} first"
                )));
            }
        }
        ContextSource::Url { url } => {
            if !(url.starts_with("https://")
                || url.starts_with("http://")
                || url.starts_with("git://")
                || url.starts_with("ssh://")
                || scp_like_git(url))
            {
                return Err(bad(format!(
                    "context URL {url:?}: use http(s)://, git://, ssh:// or USER@HOST:PATH"
                )));
            }
        }
    }
    for id in req.secrets.keys() {
        if id.is_empty() || id.contains(['/', ',', '=']) {
            return Err(bad(format!("secret id {id:?}: no '/', ',' or '='")));
        }
    }
    let timeout = req
        .timeout_secs
        .map(Duration::from_secs)
        .unwrap_or(s.config.default_timeout)
        .min(MAX_TIMEOUT);
    let ids: Vec<String> = req.secrets.keys().cloned().collect();
    let new = crate::db::NewRun {
        pool: &req.pool,
        spec: b,
        secret_ids: &ids,
        submitter: &c.token_id,
        submitter_name: c.who.subject(),
        timeout,
        max_attempts: s.config.max_attempts,
    };
    let id =
        s.db.insert_run(new, |id| {
            if req.secrets.is_empty() {
                return Ok(None);
            }
            s.sealer
                .seal_for(&req.secrets, &run_secrets_owner(id))
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .await?;
    s.pools.wake(&req.pool);
    let run =
        s.db.run(&id)
            .await?
            .ok_or_else(|| internal("run vanished"))?;
    tracing::info!(run = id, pool = req.pool, "run queued");
    Ok(run)
}

#[derive(Deserialize)]
struct ListQuery {
    pool: Option<String>,
    state: Option<String>,
    /// Text the run's id, tags, Dockerfile, message or submitter contain.
    q: Option<String>,
    limit: Option<u32>,
}

async fn list_runs(State(s): S, headers: HeaderMap, Query(q): Query<ListQuery>) -> R<Response> {
    let who = user(&s, &headers)?;
    if let Some(pool) = &q.pool {
        may_build(&who, pool)?;
    }
    let state = q
        .state
        .as_deref()
        .map(str::parse::<RunState>)
        .transpose()
        .map_err(bad)?;
    let limit = q.limit.unwrap_or(50).min(1000);
    let text = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if text.is_some_and(|t| t.len() > 200) {
        return Err(bad("q: at most 200 characters"));
    }
    let runs = match (&who, q.pool.as_deref()) {
        (Principal::Scoped { .. }, None) => {
            // Only the pools this token may build on, each asked for the
            // newest `limit`, so other pools' runs neither show nor crowd
            // these out of the page.
            let mut runs = Vec::new();
            for p in s.db.list_pools().await? {
                if may_build(&who, &p.name).is_ok() {
                    runs.extend(s.db.list_runs(Some(&p.name), state, text, limit).await?);
                }
            }
            runs.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            runs.truncate(limit as usize);
            runs
        }
        (_, pool) => s.db.list_runs(pool, state, text, limit).await?,
    };
    Ok(Json(runs).into_response())
}

async fn show_run(State(s): S, headers: HeaderMap, Path(id): Path<String>) -> R<Response> {
    let who = user(&s, &headers)?;
    let run = run_for(&s, &who, &id).await?;
    Ok(Json(run).into_response())
}

/// Run `id`, if `who` may build on its pool.
async fn run_for(s: &Server, who: &Principal, id: &str) -> R<api::Run> {
    let run =
        s.db.run(id)
            .await?
            .ok_or_else(|| not_found(format!("run {id} does not exist")))?;
    may_build(who, &run.pool)?;
    Ok(run)
}

async fn cancel_run(State(s): S, headers: HeaderMap, Path(id): Path<String>) -> R<Response> {
    let who = user(&s, &headers)?;
    run_for(&s, &who, &id).await?;
    match s.db.cancel(&id).await? {
        Cancel::NotFound => return Err(not_found(format!("run {id} does not exist"))),
        Cancel::AlreadyFinal(state) => {
            return Err(conflict(format!("run {id} already ended: {state}")));
        }
        Cancel::Canceled => {
            s.revoke_run_credentials(&id);
            s.runs.wake_and_forget(&id);
        }
        Cancel::Requested => tracing::info!(run = id, "cancel requested"),
    }
    let run =
        s.db.run(&id)
            .await?
            .ok_or_else(|| internal("run vanished"))?;
    Ok(Json(run).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    wait: u64,
}

const LOG_PAGE: u32 = 2000;

async fn run_logs(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> R<Response> {
    let who = user(&s, &headers)?;
    run_for(&s, &who, &id).await?;
    let wait = Duration::from_secs(q.wait.min(60));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notify = s.runs.get(&id);
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // State first: once it reads final, no chunk can follow, so an
        // empty read after it really is the end.
        let Some(state) = s.db.run_state(&id).await? else {
            return Err(not_found(format!("run {id} does not exist")));
        };
        let chunks = s.db.logs(&id, q.after, LOG_PAGE).await?;
        if !chunks.is_empty() || state.is_final() || tokio::time::Instant::now() >= deadline {
            let next = chunks.last().map_or(q.after, |c| c.pos);
            let done = state.is_final() && chunks.len() < LOG_PAGE as usize;
            if done {
                // Nothing more will be written: drop the wake-up this read made.
                s.runs.wake_and_forget(&id);
            }
            return Ok(Json(LogPage {
                chunks,
                next,
                state,
                done,
            })
            .into_response());
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

// ---- agents ----

fn lease_err() -> ApiErr {
    conflict("this lease is no longer yours: the run was re-queued, canceled or finished")
}

// ---- API tokens ----

/// Kinds and actions a token may be granted.
fn valid_grant(a: &Access) -> bool {
    let actions: &[&str] = match a.kind.as_str() {
        "pool" => &["build", "*"],
        "repository" => &["pull", "push", "delete", "*"],
        "registry" => &["*"],
        _ => return false,
    };
    !a.actions.is_empty() && a.actions.iter().all(|x| actions.contains(&x.as_str()))
}

fn token_json(t: registry::TokenInfo) -> api::ApiToken {
    api::ApiToken {
        id: t.id,
        name: t.name,
        admin: t.admin,
        grants: t.grants,
        created: t.created,
    }
}

async fn create_token(
    State(s): S,
    headers: HeaderMap,
    Json(req): Json<api::TokenRequest>,
) -> R<Response> {
    admin(&s, &headers)?;
    if req.name.is_empty() || req.name.len() > 100 || req.name.starts_with("run:") {
        return Err(bad("name: 1-100 characters, not starting with run:"));
    }
    let mut grants = Vec::new();
    for g in &req.grants {
        match Access::parse_scope(g).filter(valid_grant) {
            Some(a) => grants.push(a),
            None => {
                return Err(bad(format!(
                    "grant {g:?}: give pool:NAME:build, repository:NAME:pull,push,delete or registry:catalog:*"
                )));
            }
        }
    }
    if grants.is_empty() && !req.admin {
        return Err(bad("give at least one grant, or admin"));
    }
    let (info, token) = s
        .registry
        .auth()
        .create_token_info(&req.name, req.admin, grants)
        .map_err(|e| match e {
            registry::auth::AuthError::NameTaken(_) => conflict(e.to_string()),
            e => internal(e),
        })?;
    // Shared with the other replicas before it is handed out; a name
    // another replica took meanwhile is refused here too.
    if s.db.postgres_url().is_some()
        && let Some(rec) = s.registry.auth().record(&info.id)
        && !s.db.insert_token(&rec).await?
    {
        let _ = s.registry.auth().delete_token(&info.id);
        return Err(conflict(format!("a token named {} exists", req.name)));
    }
    if s.db.postgres_url().is_some() {
        s.db.notify("tokens:").await?;
    }
    tracing::info!(token = info.id, name = info.name, "API token created");
    let created = api::CreatedToken {
        info: token_json(info),
        token,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_tokens(State(s): S, headers: HeaderMap) -> R<Json<Vec<api::ApiToken>>> {
    admin(&s, &headers)?;
    let list = s.registry.auth().list_tokens();
    Ok(Json(list.into_iter().map(token_json).collect()))
}

async fn delete_token(State(s): S, headers: HeaderMap, Path(id): Path<String>) -> R<StatusCode> {
    admin(&s, &headers)?;
    match s.registry.auth().delete_token(&id) {
        Ok(true) => {
            if s.db.postgres_url().is_some() {
                s.db.delete_token(&id).await?;
                s.db.notify("tokens:").await?;
            }
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(false) => Err(not_found(format!("token {id} does not exist"))),
        Err(registry::auth::AuthError::LastAdmin) => Err(conflict(
            "the last admin token cannot be deleted: nobody could manage the server",
        )),
        Err(e) => Err(internal(e)),
    }
}

async fn agent_self(State(s): S, headers: HeaderMap) -> R<Json<api::AgentSelf>> {
    let pool_name = agent(&s, &headers).await?;
    let Some(pool) = s.db.pool(&pool_name).await? else {
        return Err(not_found(format!("pool {pool_name} no longer exists")));
    };
    Ok(Json(api::AgentSelf {
        pool: pool_name,
        tier: pool.tier,
        registry: own_registry(&s, &headers),
    }))
}

async fn lease(State(s): S, headers: HeaderMap, Json(req): Json<LeaseRequest>) -> R<Response> {
    let pool_name = agent(&s, &headers).await?;
    if req.agent.is_empty() || req.agent.len() > 200 {
        return Err(bad("agent: give an id of 1-200 characters"));
    }
    let Some(pool) = s.db.pool_settings(&pool_name).await? else {
        return Err(not_found(format!("pool {pool_name} no longer exists")));
    };
    // An agent back from a run was just written as idle by its report.
    if !s.seen_recently(&req.agent) {
        s.db.agent_seen(&req.agent, &pool_name).await?;
    }
    let wait = Duration::from_secs(req.wait_secs.min(60));
    let deadline = tokio::time::Instant::now() + wait;
    let mut waited = false;
    loop {
        let notify = s.pools.get(&pool_name);
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let token = random_token("lease_").map_err(internal)?;
        if let Some(c) =
            s.db.claim(
                &pool_name,
                &req.agent,
                &hash_secret(&token),
                s.config.lease_ttl,
            )
            .await?
        {
            s.runs.wake(&c.run.id);
            tracing::info!(
                run = c.run.id,
                agent = req.agent,
                attempt = c.attempt,
                "leased"
            );
            // The pool as it is now: an admin may have changed its tier or
            // policy while the long poll waited.
            let now = if waited {
                s.db.pool_settings(&pool_name).await?.unwrap_or(pool)
            } else {
                pool
            };
            s.mark_seen(&req.agent);
            let lease = complete_lease(&s, c, token, &now).await?;
            return Ok(Json(lease).into_response());
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        waited = true;
    }
}

/// Add what only the lease holder gets: the secrets in clear and a registry
/// credential valid for this attempt (revoked when the run ends or moves).
async fn complete_lease(
    s: &Server,
    c: crate::db::Claimed,
    token: String,
    pool: &api::Pool,
) -> R<Lease> {
    let tier = pool.tier;
    let (submitter, sealed) =
        s.db.run_private(&c.run.id)
            .await?
            .ok_or_else(|| internal("run vanished"))?;
    let mut secrets = match sealed {
        // Sealed before runs were bound to their id: open as then.
        Some(x) => s
            .sealer
            .open_for(&x, &run_secrets_owner(&c.run.id))
            .or_else(|_| s.sealer.open_sealed(&x))
            .map_err(internal)?,
        None => BTreeMap::new(),
    };
    if let Some(task) = &c.run.build.task {
        crate::task_routes::add_stored_secrets(s, task, &mut secrets).await?;
    }
    // By the token's unique id: a token that took a deleted one's name
    // gets nothing of its rights.
    let submitter = s.registry.auth().principal_by_id(&submitter);
    let submitter_is_admin = matches!(submitter, Some(Principal::Admin { .. }));
    let own = c
        .run
        .build
        .registry
        .clone()
        .unwrap_or_else(|| s.config.registry_host.clone());
    let mut grants = Vec::new();
    for t in &c.run.build.tags {
        if let Ok(r) = t.parse::<oci::Reference>()
            && r.registry == own
        {
            grants.push(Access::repo(&r.repository, &[Action::Pull, Action::Push]));
        }
    }
    if c.run.build.task.is_some() {
        // A task's images live under a repository of the run's own until a
        // push step copies them where the file says.
        grants.push(Access::repo(
            &crate::task_routes::task_repository(&c.run.id, "*"),
            &[Action::Pull, Action::Push],
        ));
    }
    let cache = pool_cache_repository(&c.run.pool);
    if let Some(repo) = &cache {
        grants.push(Access::repo(repo, &[Action::Pull, Action::Push]));
    }
    if submitter_is_admin && c.run.build.task.is_some() {
        grants.push(Access::repo("*", &[Action::Pull, Action::Push]));
    } else if submitter_is_admin {
        grants.push(Access::repo("*", &[Action::Pull]));
    } else if let Some(Principal::Scoped { grants: g, .. }) = submitter {
        grants.extend(g.into_iter().filter(|a| a.kind == "repository"));
    }
    // A signed token, not a stored one: no disk write per lease. It lives
    // as long as the run may, and only while this attempt holds the lease.
    let subject = s.grant_run_credentials(&c.run.id, c.attempt);
    let password = s
        .registry
        .auth()
        .issue_for(&subject, grants, c.run.timeout_secs + 600)
        .map_err(|e| internal(e.message))?;
    Ok(Lease {
        attempt: c.attempt,
        fence: c.fence,
        token,
        ttl_ms: s.config.lease_ttl.as_millis() as u64,
        secrets,
        registry: Some(RegistryCredential {
            host: own,
            username: "slipway-run".into(),
            password,
        }),
        limits: RunLimits {
            cpus: tier.cpus(),
            memory_bytes: tier.memory_bytes(),
        },
        credentials: lease_credentials(s, &c.run.pool).await?,
        allow_insecure: pool.allow_insecure,
        cache,
        run: c.run,
    })
}

/// The repository holding pool `pool`'s layer cache, or `None` for a name
/// no repository can carry (one ending in a dash). Every run of the pool
/// may read and write it: a pool is one trust domain, as a BuildKit
/// instance shared by its users is.
pub fn pool_cache_repository(pool: &str) -> Option<String> {
    let repo = format!("{}{pool}", registry::gc::CACHE_REPOSITORIES);
    oci::reference::is_valid_repository(&repo).then_some(repo)
}

async fn check_run_pool(s: &Server, pool: &str, run: &str) -> R<()> {
    match s.db.run_pool(run).await? {
        Some(p) if p == pool => Ok(()),
        Some(_) => Err(forbidden(format!("run {run} belongs to another pool"))),
        None => Err(not_found(format!("run {run} does not exist"))),
    }
}

async fn heartbeat(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(hb): Json<Heartbeat>,
) -> R<Response> {
    let pool = agent(&s, &headers).await?;
    check_run_pool(&s, &pool, &id).await?;
    match s
        .db
        .heartbeat(&id, &hash_secret(&hb.token), s.config.lease_ttl)
        .await?
    {
        Some(cancel) => Ok(Json(HeartbeatReply {
            cancel,
            ttl_ms: s.config.lease_ttl.as_millis() as u64,
        })
        .into_response()),
        None => Err(lease_err()),
    }
}

async fn agent_logs(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(up): Json<LogUpload>,
) -> R<Response> {
    let pool = agent(&s, &headers).await?;
    check_run_pool(&s, &pool, &id).await?;
    if up.chunks.iter().any(|c| c.seq == 0) {
        return Err(bad("log chunk seq starts at 1"));
    }
    if !s
        .db
        .append_logs(&id, &hash_secret(&up.token), &up.chunks)
        .await?
    {
        return Err(lease_err());
    }
    s.runs.wake(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn agent_result(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(result): Json<RunResult>,
) -> R<Response> {
    let pool = agent(&s, &headers).await?;
    check_run_pool(&s, &pool, &id).await?;
    let Some(state) =
        s.db.finish(&id, &hash_secret(&result.token), &result)
            .await?
    else {
        return Err(lease_err());
    };
    tracing::info!(run = id, %state, "run ended");
    s.revoke_run_credentials(&id);
    s.runs.wake_and_forget(&id);
    s.pools.wake(&pool);
    let run =
        s.db.run(&id)
            .await?
            .ok_or_else(|| internal("run vanished"))?;
    Ok(Json(run).into_response())
}

#[cfg(test)]
mod tests {
    /// A pool's cache repository is a valid repository name, or none.
    #[test]
    fn pool_cache_repositories() {
        assert_eq!(
            super::pool_cache_repository("private-1").as_deref(),
            Some("slipway-cache/private-1")
        );
        assert_eq!(super::pool_cache_repository("trailing-"), None);
    }

    fn ssh_spec(key: &str, known_hosts: Option<&str>) -> api::CredentialSpec {
        api::CredentialSpec {
            kind: api::CredentialKind::GitSsh,
            host: "git.internal:2222".into(),
            username: "git".into(),
            password: key.into(),
            known_hosts: known_hosts.map(str::to_owned),
        }
    }

    const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn git_ssh_credentials_need_a_key_and_known_hosts() {
        let line = "[git.internal]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA\n";
        assert!(super::check_secret_parts(&ssh_spec(KEY, Some(line))).is_ok());
        let msg = |s: &api::CredentialSpec| super::check_secret_parts(s).unwrap_err().2;
        let m = msg(&ssh_spec(KEY, None));
        assert!(m.contains("known_hosts is required"), "{m}");
        assert!(m.contains("never trust an unknown host key"), "{m}");
        let m = msg(&ssh_spec(KEY, Some("# nothing\n\n")));
        assert!(m.contains("no host key"), "{m}");
        let m = msg(&ssh_spec(KEY, Some("git.internal ssh-ed25519\n")));
        assert!(m.contains("line 1"), "{m}");
        let m = msg(&ssh_spec("hunter2", Some(line)));
        assert!(m.contains("private key"), "{m}");
        assert!(!m.contains("hunter2"), "{m}");
        let big = format!("{line}{}", "#".repeat(64 * 1024));
        assert!(msg(&ssh_spec(KEY, Some(&big))).contains("64 KiB"));
        let huge_key = format!("{KEY}{}", "A".repeat(16 * 1024));
        assert!(msg(&ssh_spec(&huge_key, Some(line))).contains("16 KiB"));
        // known_hosts belongs to git-ssh only.
        let mut basic = ssh_spec("pw", Some(line));
        basic.kind = api::CredentialKind::Git;
        assert!(msg(&basic).contains("known_hosts is for git-ssh"));
        basic.known_hosts = None;
        assert!(super::check_secret_parts(&basic).is_ok());
        let mut odd = ssh_spec(KEY, Some(line));
        odd.username = "git\n\tProxyCommand x".into();
        assert!(msg(&odd).contains("username"));
        let mut odd = ssh_spec(KEY, Some(line));
        odd.host = "git.internal:ssh".into();
        assert!(msg(&odd).contains("port"));
        odd.host = "[fd00::1]:2222".into();
        assert!(super::check_secret_parts(&odd).is_ok());
        odd.host = "fd00::1".into();
        assert!(super::check_secret_parts(&odd).is_ok());
    }

    #[test]
    fn scp_like_git_urls() {
        assert!(super::scp_like_git("git@host:org/repo.git"));
        assert!(super::scp_like_git("git@10.0.0.1:repo.git#main"));
        assert!(!super::scp_like_git("ssh://git@host/repo.git"));
        assert!(!super::scp_like_git("host:repo.git"));
        assert!(!super::scp_like_git("./dir/a@b:c"));
        assert!(!super::scp_like_git("git@host:"));
    }

    /// Every route the router serves is described in the OpenAPI document,
    /// with the same methods, and the document names no route we lack.
    #[test]
    fn openapi_matches_router() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let src = include_str!("routes.rs");
        let start = src.find("let api = Router::new()").unwrap();
        let end = src[start..].find(".fallback(").unwrap() + start;
        let mut routed = std::collections::BTreeMap::new();
        for piece in src[start..end].split(".route(").skip(1) {
            // axum's catch-all `{*name}` is OpenAPI's `{name}`.
            let path = piece.split('"').nth(1).unwrap().replace("{*", "{");
            let methods: Vec<String> = ["get", "post", "put", "patch", "delete", "head"]
                .iter()
                .filter(|m| piece.contains(&format!("{m}(")))
                .map(|m| m.to_string())
                .collect();
            routed.insert(path, methods);
        }
        assert_eq!(routed.len(), paths.len(), "routes {routed:?}");
        for (path, methods) in &routed {
            let item = paths
                .get(path)
                .unwrap_or_else(|| panic!("{path} missing from openapi.json"));
            for m in methods {
                assert!(
                    item.get(m).is_some(),
                    "{m} {path} missing from openapi.json"
                );
            }
            let documented = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .count();
            assert_eq!(documented, methods.len(), "{path}: {methods:?}");
        }
    }
}
