//! HTTP handlers: one dispatcher parses `/v2/<name>/…` (names contain `/`,
//! so axum's path patterns cannot split them), authorizes the request for the
//! access it needs, then calls the handler for that endpoint.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use oci::{Algorithm, Descriptor, Digest, Manifest};
use store::ByteStream;

use crate::Registry;
use crate::auth::{self, Access, Action};
use crate::error::{Code, RegistryError, Result};
use crate::names::{self, Reference, parse_digest, validate_name};

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

type Reg = Arc<Registry>;

pub fn router(reg: Reg) -> Router {
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .route("/token", any(token))
        .layer(DefaultBodyLimit::disable())
        .with_state(reg)
}

#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Uploads(&'a str),
    Upload(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    let p = path.strip_prefix("/v2")?;
    let p = p.strip_prefix('/').unwrap_or(p);
    if p.is_empty() {
        return Some(Route::Base);
    }
    if p == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = p.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(name) = p.strip_suffix("/blobs/uploads/") {
        return Some(Route::Uploads(name));
    }
    if let Some(name) = p.strip_suffix("/blobs/uploads") {
        return Some(Route::Uploads(name));
    }
    let leaf = |sep: &str| {
        p.rsplit_once(sep)
            .filter(|(n, r)| !n.is_empty() && !r.is_empty() && !r.contains('/'))
    };
    if let Some((name, id)) = leaf("/blobs/uploads/") {
        return Some(Route::Upload(name, id));
    }
    if let Some((name, r)) = leaf("/manifests/") {
        return Some(Route::Manifest(name, r));
    }
    if let Some((name, d)) = leaf("/blobs/") {
        return Some(Route::Blob(name, d));
    }
    if let Some((name, d)) = leaf("/referrers/") {
        return Some(Route::Referrers(name, d));
    }
    None
}

/// Query parameters, decoded; repeated keys kept in order.
fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn query_get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn needed(route: &Route<'_>, method: &Method, q: &[(String, String)]) -> Vec<Access> {
    let name = match route {
        Route::Base => return Vec::new(),
        Route::Catalog => return vec![Access::catalog()],
        Route::Tags(n)
        | Route::Manifest(n, _)
        | Route::Blob(n, _)
        | Route::Uploads(n)
        | Route::Upload(n, _)
        | Route::Referrers(n, _) => *n,
    };
    let action = match *method {
        Method::GET | Method::HEAD => Action::Pull,
        Method::DELETE if matches!(route, Route::Upload(..)) => Action::Push,
        Method::DELETE => Action::Delete,
        _ => Action::Push,
    };
    let mut out = vec![Access::repo(name, &[action])];
    if let (Route::Uploads(_), Some(from)) = (route, query_get(q, "from"))
        && query_get(q, "mount").is_some()
        && from != name
    {
        out.push(Access::repo(from, &[Action::Pull]));
    }
    out
}

async fn dispatch(
    State(reg): State<Reg>,
    method: Method,
    uri: Uri,
    version: axum::http::Version,
    outbox: Option<axum::Extension<crate::zero_copy::Outbox>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Zero-copy blob bodies only on HTTP/1 connections the server wrapped.
    let zero_copy = outbox
        .filter(|_| version <= axum::http::Version::HTTP_11)
        .map(|axum::Extension(o)| o);
    let mut resp = match handle(&reg, &method, &uri, &headers, body, zero_copy.as_ref()).await {
        Ok(r) => r,
        Err(e) => {
            if e.code == Code::Internal {
                tracing::error!(%method, %uri, "{}", e.message);
            } else {
                tracing::debug!(%method, %uri, code = e.code.as_str(), "{}", e.message);
            }
            e.into_response()
        }
    };
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

async fn handle(
    reg: &Reg,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    zero_copy: Option<&crate::zero_copy::Outbox>,
) -> Result<Response> {
    // Clients may percent-encode the `:` of a digest; nothing else in a
    // valid path needs escaping, so that is the only decoding done.
    let path = uri.path().replace("%3A", ":").replace("%3a", ":");
    let route = parse_route(&path).ok_or_else(|| {
        RegistryError::new(Code::Unsupported, "no such endpoint").with_status(StatusCode::NOT_FOUND)
    })?;
    let q = query_pairs(uri);
    for access in needed(&route, method, &q) {
        if access.kind == "repository" {
            validate_name(&access.name)?;
        }
    }
    let principal = reg.auth.authorize(headers, &needed(&route, method, &q))?;
    let m = method.clone();
    match (route, m) {
        (Route::Base, Method::GET | Method::HEAD) => {
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        (Route::Catalog, Method::GET) => catalog(reg, &q).await,
        (Route::Tags(name), Method::GET) => tags_list(reg, name, &q).await,
        (Route::Manifest(name, r), Method::GET | Method::HEAD) => {
            get_manifest(reg, name, r, headers, method == Method::HEAD).await
        }
        (Route::Manifest(name, r), Method::PUT) => {
            put_manifest(reg, name, r, &q, headers, body).await
        }
        (Route::Manifest(name, r), Method::DELETE) => delete_manifest(reg, name, r).await,
        (Route::Blob(name, d), Method::GET | Method::HEAD) => {
            get_blob(reg, name, d, headers, method == Method::HEAD, zero_copy).await
        }
        (Route::Blob(name, d), Method::DELETE) => delete_blob(reg, name, d).await,
        (Route::Uploads(name), Method::POST) => {
            start_upload(reg, name, &q, &principal, headers, body).await
        }
        (Route::Upload(name, id), Method::PATCH) => {
            patch_upload(reg, name, id, headers, body).await
        }
        (Route::Upload(name, id), Method::PUT) => {
            finish_upload(reg, name, id, &q, headers, body).await
        }
        (Route::Upload(name, id), Method::GET) => upload_status(reg, name, id).await,
        (Route::Upload(name, id), Method::DELETE) => cancel_upload(reg, name, id).await,
        (Route::Referrers(name, d), Method::GET) => referrers(reg, name, d, &q).await,
        (_, m) => Err(RegistryError::new(
            Code::Unsupported,
            format!("{m} is not supported on {}", uri.path()),
        )),
    }
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn header_str<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn set(resp: &mut Response, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    set(&mut r, header::CONTENT_LENGTH, "0");
    r
}

fn body_stream(body: Body) -> ByteStream {
    Box::pin(TryStreamExt::map_err(
        body.into_data_stream(),
        std::io::Error::other,
    ))
}

fn blob_location(name: &str, d: &Digest) -> String {
    format!("/v2/{name}/blobs/{d}")
}

// ---------------------------------------------------------------- blobs

/// Parse `Range: bytes=a-b` / `bytes=a-` / `bytes=-n` into an inclusive range.
fn parse_range(h: &HeaderMap, size: u64) -> Result<Option<(u64, Option<u64>)>> {
    let Some(v) = header_str(h, &header::RANGE) else {
        return Ok(None);
    };
    let bad = || {
        RegistryError::new(Code::RangeInvalid, format!("invalid Range {v:?}"))
            .with_header(header::CONTENT_RANGE, &format!("bytes */{size}"))
    };
    let spec = v.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(bad());
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| bad())?;
        if n == 0 || size == 0 {
            return Err(bad());
        }
        return Ok(Some((size.saturating_sub(n), None)));
    }
    let start: u64 = a.parse().map_err(|_| bad())?;
    let end = if b.is_empty() {
        None
    } else {
        let e: u64 = b.parse().map_err(|_| bad())?;
        if e < start {
            return Err(bad());
        }
        Some(e)
    };
    Ok(Some((start, end)))
}

async fn get_blob(
    reg: &Reg,
    name: &str,
    digest: &str,
    h: &HeaderMap,
    head: bool,
    zero_copy: Option<&crate::zero_copy::Outbox>,
) -> Result<Response> {
    let d = parse_digest(digest)?;
    let unknown = || RegistryError::new(Code::BlobUnknown, format!("blob {d} is not in {name}"));
    if !reg.meta.has_blob(name, &d).await? {
        return Err(unknown());
    }
    let Some(info) = reg.store.stat(&d).await? else {
        return Err(unknown());
    };
    let range = parse_range(h, info.size)?;
    let mut resp = if head {
        // Pushers HEAD a blob before skipping its upload; keep it fresh so a
        // concurrent garbage collection does not take it from under them.
        reg.store.touch(&d).await?;
        let mut r = Response::new(Body::empty());
        set(&mut r, header::CONTENT_LENGTH, &info.size.to_string());
        r
    } else {
        let (body, size, len) = match local_blob(reg, &d, range, zero_copy).await? {
            Some(b) => b,
            None => {
                let read = reg.store.open(&d, range).await?;
                let stream =
                    tokio_util::io::ReaderStream::with_capacity(read.reader, store::READ_BUF);
                (Body::from_stream(stream), read.size, read.len)
            }
        };
        let mut r = Response::new(body);
        set(&mut r, header::CONTENT_LENGTH, &len.to_string());
        if let Some((start, _)) = range {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let end = start + len - 1;
            set(
                &mut r,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{end}/{size}"),
            );
        }
        r
    };
    set(&mut resp, header::CONTENT_TYPE, "application/octet-stream");
    set(&mut resp, header::ACCEPT_RANGES, "bytes");
    set(&mut resp, DOCKER_CONTENT_DIGEST, &d.to_string());
    Ok(resp)
}

/// A blob's body sent by `sendfile(2)` (see `zero_copy`), with its size
/// and the length served, when the connection and the store allow it.
async fn local_blob(
    reg: &Reg,
    d: &Digest,
    range: Option<(u64, Option<u64>)>,
    zero_copy: Option<&crate::zero_copy::Outbox>,
) -> Result<Option<(Body, u64, u64)>> {
    let (Some(outbox), Some(path)) = (zero_copy, reg.store.local_file(d)) else {
        return Ok(None);
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f.into_std().await,
        // Deleted meanwhile (gc): the store's own path says so.
        Err(_) => return Ok(None),
    };
    let size = file
        .metadata()
        .map_err(|e| RegistryError::internal("stat of a blob", e))?
        .len();
    let (start, len) = store::resolve_range(range, size)?;
    Ok(Some((
        crate::zero_copy::body(file, start, len, outbox.clone()),
        size,
        len,
    )))
}

async fn delete_blob(reg: &Reg, name: &str, digest: &str) -> Result<Response> {
    let d = parse_digest(digest)?;
    if !reg.meta.unlink_blob(name, &d).await? {
        return Err(RegistryError::new(
            Code::BlobUnknown,
            format!("blob {d} is not in {name}"),
        ));
    }
    Ok(empty(StatusCode::ACCEPTED))
}

// -------------------------------------------------------------- uploads

fn blob_created(name: &str, d: &Digest) -> Response {
    let mut r = empty(StatusCode::CREATED);
    set(&mut r, header::LOCATION, &blob_location(name, d));
    set(&mut r, DOCKER_CONTENT_DIGEST, &d.to_string());
    r
}

fn upload_accepted(status: StatusCode, name: &str, id: &str, size: u64) -> Response {
    let mut r = empty(status);
    set(
        &mut r,
        header::LOCATION,
        &format!("/v2/{name}/blobs/uploads/{id}"),
    );
    set(
        &mut r,
        header::RANGE,
        &format!("0-{}", size.saturating_sub(1)),
    );
    set(&mut r, DOCKER_UPLOAD_UUID, id);
    r
}

async fn start_upload(
    reg: &Reg,
    name: &str,
    q: &[(String, String)],
    principal: &auth::Principal,
    h: &HeaderMap,
    body: Body,
) -> Result<Response> {
    if let Some(mount) = query_get(q, "mount") {
        let d = parse_digest(mount)?;
        let mountable = match query_get(q, "from") {
            Some(from) => reg.meta.has_blob(from, &d).await?,
            // Without a source, mount from any repository the caller may
            // pull, so a mount never reveals a blob the caller could not read.
            None => readable_anywhere(reg, principal, &d).await?,
        };
        if mountable && reg.store.stat(&d).await?.is_some() {
            reg.store.touch(&d).await?;
            reg.meta.link_blob(name, &d).await?;
            return Ok(blob_created(name, &d));
        }
        // Not mountable: the spec says to fall back to an upload session.
    } else if let Some(digest) = query_get(q, "digest") {
        let d = parse_digest(digest)?;
        let id = reg.store.upload_create().await?;
        if let Err(e) = append_limited(reg, &id, 0, h, body).await {
            let _ = reg.store.upload_cancel(&id).await;
            return Err(e);
        }
        reg.store.upload_commit(&id, &d).await?;
        reg.meta.link_blob(name, &d).await?;
        return Ok(blob_created(name, &d));
    }
    let id = reg.store.upload_create().await?;
    reg.meta.add_upload(name, &id).await?;
    Ok(upload_accepted(StatusCode::ACCEPTED, name, &id, 0))
}

async fn readable_anywhere(reg: &Reg, principal: &auth::Principal, d: &Digest) -> Result<bool> {
    for repo in reg.meta.repositories().await? {
        if principal.allows("repository", &repo, Action::Pull.as_str())
            && reg.meta.has_blob(&repo, d).await?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn owned_upload(reg: &Reg, name: &str, id: &str) -> Result<()> {
    if store::layout::upload_path(std::path::Path::new(""), id).is_some()
        && reg.meta.owns_upload(name, id).await?
    {
        Ok(())
    } else {
        Err(RegistryError::new(
            Code::BlobUploadUnknown,
            format!("upload {id:?} is unknown to {name}"),
        ))
    }
}

/// The start offset a chunk claims (`Content-Range: a-b`), checked against
/// its `Content-Length`.
fn chunk_start(h: &HeaderMap) -> Result<Option<u64>> {
    let Some(v) = header_str(h, &header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || RegistryError::new(Code::RangeInvalid, format!("invalid Content-Range {v:?}"));
    let spec = v
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches(['=', ' ']);
    let spec = spec.split('/').next().unwrap_or(spec);
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    if let Some(len) = header_str(h, &header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
        && len != end - start + 1
    {
        return Err(RegistryError::new(
            Code::RangeInvalid,
            format!("Content-Range {v:?} does not match Content-Length {len}"),
        ));
    }
    Ok(Some(start))
}

/// Append `body` at `offset`, within the blob size limit: a declared
/// `Content-Length` past it is refused before anything is read, and a body
/// that runs past it is cut off. Either way: `413`, naming the limit.
async fn append_limited(
    reg: &Reg,
    id: &str,
    offset: u64,
    h: &HeaderMap,
    body: Body,
) -> Result<u64> {
    let max = reg.config.max_blob_bytes;
    let too_large = || {
        RegistryError::new(
            Code::TooLarge,
            format!("blob is larger than this registry's limit of {max} bytes (--max-blob-size)"),
        )
    };
    let declared = header_str(h, &header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok());
    if declared.is_some_and(|len| offset.saturating_add(len) > max) {
        return Err(too_large());
    }
    let (stream, over) = store::limit::limited(body_stream(body), max.saturating_sub(offset));
    match reg.store.upload_append(id, offset, stream).await {
        Ok(size) => Ok(size),
        Err(_) if over.happened() => Err(too_large()),
        Err(e) => Err(e.into()),
    }
}

async fn append_chunk(reg: &Reg, id: &str, h: &HeaderMap, body: Body) -> Result<u64> {
    let offset = match chunk_start(h)? {
        Some(s) => s,
        None => reg.store.upload_size(id).await?,
    };
    append_limited(reg, id, offset, h, body).await
}

async fn patch_upload(
    reg: &Reg,
    name: &str,
    id: &str,
    h: &HeaderMap,
    body: Body,
) -> Result<Response> {
    owned_upload(reg, name, id).await?;
    let size = match append_chunk(reg, id, h, body).await {
        Ok(size) => size,
        Err(e) => {
            // Past the limit, the whole upload goes: nothing stays behind.
            if e.code == Code::TooLarge {
                let _ = reg.store.upload_cancel(id).await;
                reg.meta.remove_upload(name, id).await;
            }
            return Err(e);
        }
    };
    Ok(upload_accepted(StatusCode::ACCEPTED, name, id, size))
}

fn has_body(h: &HeaderMap) -> bool {
    match header_str(h, &header::CONTENT_LENGTH) {
        Some(l) => l.trim() != "0",
        None => h.contains_key(header::TRANSFER_ENCODING),
    }
}

async fn finish_upload(
    reg: &Reg,
    name: &str,
    id: &str,
    q: &[(String, String)],
    h: &HeaderMap,
    body: Body,
) -> Result<Response> {
    owned_upload(reg, name, id).await?;
    let d = parse_digest(query_get(q, "digest").ok_or_else(|| {
        RegistryError::new(
            Code::DigestInvalid,
            "the digest query parameter is required",
        )
    })?)?;
    if has_body(h)
        && let Err(e) = append_chunk(reg, id, h, body).await
    {
        if e.code == Code::TooLarge {
            let _ = reg.store.upload_cancel(id).await;
            reg.meta.remove_upload(name, id).await;
        }
        return Err(e);
    }
    let committed = reg.store.upload_commit(id, &d).await;
    if matches!(committed, Err(store::StoreError::DigestMismatch { .. })) {
        reg.meta.remove_upload(name, id).await;
    }
    committed?;
    reg.meta.remove_upload(name, id).await;
    reg.meta.link_blob(name, &d).await?;
    Ok(blob_created(name, &d))
}

async fn upload_status(reg: &Reg, name: &str, id: &str) -> Result<Response> {
    owned_upload(reg, name, id).await?;
    let size = reg.store.upload_size(id).await?;
    Ok(upload_accepted(StatusCode::NO_CONTENT, name, id, size))
}

async fn cancel_upload(reg: &Reg, name: &str, id: &str) -> Result<Response> {
    owned_upload(reg, name, id).await?;
    reg.store.upload_cancel(id).await?;
    reg.meta.remove_upload(name, id).await;
    Ok(empty(StatusCode::NO_CONTENT))
}

// ------------------------------------------------------------ manifests

fn manifest_unknown(name: &str, r: &str) -> RegistryError {
    RegistryError::new(
        Code::ManifestUnknown,
        format!("manifest {r} is not in {name}"),
    )
}

/// Whether the `Accept` headers admit `media_type`. No `Accept` admits all.
fn accepts(h: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for v in h.get_all(header::ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let t = item.split(';').next().unwrap_or("").trim();
            if t.is_empty() {
                continue;
            }
            any = true;
            let (major, _) = media_type.split_once('/').unwrap_or((media_type, ""));
            if t == media_type
                || t == "*/*"
                || t == "application/json"
                || t.strip_suffix("/*") == Some(major)
            {
                return true;
            }
        }
    }
    !any
}

async fn resolve(reg: &Reg, name: &str, r: &str) -> Result<Digest> {
    match names::parse_reference(r)? {
        Reference::Digest(d) => Ok(d),
        Reference::Tag(t) => reg
            .meta
            .tag(name, &t)
            .await?
            .ok_or_else(|| manifest_unknown(name, r)),
    }
}

async fn read_small(reg: &Reg, d: &Digest) -> Result<Bytes> {
    let read = reg.store.open(d, None).await?;
    let mut buf = Vec::with_capacity(read.len as usize);
    let mut reader = read.reader;
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut buf)
        .await
        .map_err(|e| RegistryError::internal("reading manifest", e))?;
    Ok(Bytes::from(buf))
}

async fn get_manifest(
    reg: &Reg,
    name: &str,
    r: &str,
    h: &HeaderMap,
    head: bool,
) -> Result<Response> {
    let d = resolve(reg, name, r).await?;
    let media_type = reg
        .meta
        .manifest_media_type(name, &d)
        .await?
        .ok_or_else(|| manifest_unknown(name, r))?;
    if !accepts(h, &media_type) {
        return Err(RegistryError::new(
            Code::ManifestUnknown,
            format!("manifest {r} is a {media_type}, which the Accept header does not admit"),
        ));
    }
    let mut resp = if head {
        let info = reg
            .store
            .stat(&d)
            .await?
            .ok_or_else(|| manifest_unknown(name, r))?;
        let mut resp = Response::new(Body::empty());
        set(&mut resp, header::CONTENT_LENGTH, &info.size.to_string());
        resp
    } else {
        let bytes = read_small(reg, &d).await?;
        let len = bytes.len();
        let mut resp = Response::new(Body::from(bytes));
        set(&mut resp, header::CONTENT_LENGTH, &len.to_string());
        resp
    };
    set(&mut resp, header::CONTENT_TYPE, &media_type);
    set(&mut resp, DOCKER_CONTENT_DIGEST, &d.to_string());
    // As Distribution: the digest is the manifest's entity tag, which a
    // conditional PUT names in `If-Match`.
    set(&mut resp, header::ETAG, &format!("\"{d}\""));
    Ok(resp)
}

/// What a conditional manifest PUT expects of its tag. Slipway's cache
/// export uses it so that two exports to one cache merge instead of the
/// last one dropping the other's steps.
enum TagCondition {
    /// `If-None-Match: *`: the tag does not exist yet.
    Absent,
    /// `If-Match: *`: the tag exists.
    Present,
    /// `If-Match: "sha256:…", …`: the tag points at one of these.
    At(Vec<Digest>),
}

fn tag_condition(h: &HeaderMap) -> Result<Option<TagCondition>> {
    let bad = |name: &HeaderName, v: &str, why: &str| {
        RegistryError::new(Code::ManifestInvalid, format!("{name}: {v:?}: {why}"))
    };
    if let Some(v) = header_str(h, &header::IF_NONE_MATCH) {
        return match v.trim() {
            "*" => Ok(Some(TagCondition::Absent)),
            _ => Err(bad(
                &header::IF_NONE_MATCH,
                v,
                "a manifest PUT takes only `*`",
            )),
        };
    }
    let Some(v) = header_str(h, &header::IF_MATCH) else {
        return Ok(None);
    };
    if v.trim() == "*" {
        return Ok(Some(TagCondition::Present));
    }
    v.split(',')
        .map(|t| {
            t.trim()
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<Digest>().ok())
                .ok_or_else(|| bad(&header::IF_MATCH, v, "expected quoted manifest digests"))
        })
        .collect::<Result<Vec<_>>>()
        .map(|ds| Some(TagCondition::At(ds)))
}

async fn put_manifest(
    reg: &Reg,
    name: &str,
    r: &str,
    q: &[(String, String)],
    h: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let reference = names::parse_reference(r)?;
    let condition = tag_condition(h)?;
    if condition.is_some() && !matches!(reference, Reference::Tag(_)) {
        return Err(RegistryError::new(
            Code::ManifestInvalid,
            format!("a conditional manifest PUT names a tag, not {r}"),
        ));
    }
    // `?tag=` parameters tag a manifest pushed by digest (distribution-spec 1.1 dev).
    let mut tags: Vec<String> = Vec::new();
    if let Reference::Tag(t) = &reference {
        tags.push(t.clone());
    }
    for (_, t) in q.iter().filter(|(k, _)| k == "tag") {
        if !names::is_tag(t) {
            return Err(RegistryError::new(
                Code::ManifestInvalid,
                format!("invalid tag {t:?}"),
            ));
        }
        tags.push(t.clone());
    }
    let limit = reg.config.max_manifest_bytes;
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                RegistryError::new(
                    Code::SizeInvalid,
                    format!("manifest is larger than {limit} bytes"),
                )
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            } else {
                RegistryError::new(Code::ManifestInvalid, format!("reading manifest: {e}"))
            }
        })?
        .to_bytes();
    let content_type = header_str(h, &header::CONTENT_TYPE);
    let manifest = Manifest::parse(&bytes, content_type)
        .map_err(|e| RegistryError::new(Code::ManifestInvalid, e.to_string()))?;
    let algorithm = match &reference {
        Reference::Digest(d) => d.algorithm(),
        Reference::Tag(_) => Algorithm::Sha256,
    };
    let digest = Digest::of(algorithm, &bytes);
    if let Reference::Digest(d) = &reference
        && d != &digest
    {
        return Err(RegistryError::new(
            Code::DigestInvalid,
            format!("manifest digest is {digest}, not {d}"),
        ));
    }
    let _guard = match (&condition, &reference) {
        (Some(_), Reference::Tag(t)) => reg.lock.shared_and_tag(name, t).await,
        _ => reg.lock.shared().await,
    }
    .map_err(|e| RegistryError::internal("taking the gc lock", e))?;
    for b in manifest.required_blobs() {
        if !reg.meta.has_blob(name, &b.digest).await? || reg.store.stat(&b.digest).await?.is_none()
        {
            return Err(RegistryError::new(
                Code::ManifestBlobUnknown,
                format!("blob {} ({}) is not in {name}", b.digest, b.media_type),
            ));
        }
    }
    for m in manifest.required_manifests() {
        if reg
            .meta
            .manifest_media_type(name, &m.digest)
            .await?
            .is_none()
        {
            return Err(RegistryError::new(
                Code::ManifestBlobUnknown,
                format!(
                    "manifest {} referenced by the index is not in {name}",
                    m.digest
                ),
            ));
        }
    }
    // Checking the tag and moving it are one step for conditional writers
    // (the guard above holds the tag too).
    if let (Some(c), Reference::Tag(t)) = (&condition, &reference) {
        let now = reg.meta.tag(name, t).await?;
        let holds = match (c, &now) {
            (TagCondition::Absent, None) | (TagCondition::Present, Some(_)) => true,
            (TagCondition::At(ds), Some(d)) => ds.contains(d),
            _ => false,
        };
        if !holds {
            let now = now.map_or_else(|| "nothing".to_owned(), |d| d.to_string());
            return Err(RegistryError::new(
                Code::PreconditionFailed,
                format!("{name}:{t} points at {now}, not what the request expected"),
            ));
        }
    }
    let size = bytes.len() as u64;
    reg.store.put(algorithm, bytes).await?;
    reg.meta
        .link_manifest(name, &digest, &manifest.media_type)
        .await?;
    for t in &tags {
        reg.meta.set_tag(name, t, &digest).await?;
    }
    let mut resp = empty(StatusCode::CREATED);
    if matches!(reference, Reference::Digest(_)) && !tags.is_empty() {
        set(
            &mut resp,
            HeaderName::from_static("oci-tag"),
            &tags.join(", "),
        );
    }
    if let Some(subject) = &manifest.subject {
        let desc = Descriptor {
            media_type: manifest.media_type.clone(),
            digest: digest.clone(),
            size,
            artifact_type: manifest.effective_artifact_type().map(str::to_owned),
            annotations: manifest.annotations.clone(),
            urls: None,
            platform: None,
            data: None,
        };
        reg.meta.add_referrer(name, &subject.digest, &desc).await?;
        set(&mut resp, OCI_SUBJECT, &subject.digest.to_string());
    }
    set(
        &mut resp,
        header::LOCATION,
        &format!("/v2/{name}/manifests/{digest}"),
    );
    set(&mut resp, DOCKER_CONTENT_DIGEST, &digest.to_string());
    Ok(resp)
}

async fn delete_manifest(reg: &Reg, name: &str, r: &str) -> Result<Response> {
    match names::parse_reference(r)? {
        Reference::Tag(t) => {
            if !reg.meta.delete_tag(name, &t).await? {
                return Err(manifest_unknown(name, r));
            }
        }
        Reference::Digest(d) => {
            let media_type = reg
                .meta
                .manifest_media_type(name, &d)
                .await?
                .ok_or_else(|| manifest_unknown(name, r))?;
            if let Ok(bytes) = read_small(reg, &d).await
                && let Ok(Some(subject)) =
                    Manifest::parse(&bytes, Some(&media_type)).map(|m| m.subject)
            {
                reg.meta.remove_referrer(name, &subject.digest, &d).await?;
            }
            for t in reg.meta.tags_pointing_at(name, &d).await? {
                reg.meta.delete_tag(name, &t).await?;
            }
            reg.meta.unlink_manifest(name, &d).await?;
        }
    }
    Ok(empty(StatusCode::ACCEPTED))
}

// -------------------------------------------------------------- listing

/// Apply `n`/`last` pagination; returns the page and the `Link` for the next one.
fn paginate(
    all: Vec<String>,
    q: &[(String, String)],
    base: &str,
) -> Result<(Vec<String>, Option<String>)> {
    let last = query_get(q, "last");
    let n = match query_get(q, "n") {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            RegistryError::new(Code::Unsupported, format!("invalid n={v:?}"))
                .with_status(StatusCode::BAD_REQUEST)
        })?),
    };
    let mut items: Vec<String> = all
        .into_iter()
        .filter(|t| last.is_none_or(|l| t.as_str() > l))
        .collect();
    let mut link = None;
    if let Some(n) = n
        && items.len() > n
    {
        items.truncate(n);
        if let Some(l) = items.last() {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("n", &n.to_string())
                .append_pair("last", l)
                .finish();
            link = Some(format!("<{base}?{query}>; rel=\"next\""));
        }
    }
    Ok((items, link))
}

async fn tags_list(reg: &Reg, name: &str, q: &[(String, String)]) -> Result<Response> {
    let tags = reg.meta.tags(name).await?.ok_or_else(|| {
        RegistryError::new(Code::NameUnknown, format!("repository {name} is not known"))
    })?;
    let (page, link) = paginate(tags, q, &format!("/v2/{name}/tags/list"))?;
    let mut resp = json_response(
        StatusCode::OK,
        &serde_json::json!({"name": name, "tags": page}),
    );
    if let Some(l) = link {
        set(&mut resp, header::LINK, &l);
    }
    Ok(resp)
}

async fn catalog(reg: &Reg, q: &[(String, String)]) -> Result<Response> {
    let repos = reg.meta.repositories().await?;
    let (page, link) = paginate(repos, q, "/v2/_catalog")?;
    let mut resp = json_response(StatusCode::OK, &serde_json::json!({"repositories": page}));
    if let Some(l) = link {
        set(&mut resp, header::LINK, &l);
    }
    Ok(resp)
}

async fn referrers(
    reg: &Reg,
    name: &str,
    digest: &str,
    q: &[(String, String)],
) -> Result<Response> {
    let subject = parse_digest(digest)?;
    let mut list = Vec::new();
    for desc in reg.meta.referrers(name, &subject).await? {
        if reg
            .meta
            .manifest_media_type(name, &desc.digest)
            .await?
            .is_some()
        {
            list.push(desc);
        }
    }
    let filter = query_get(q, "artifactType");
    if let Some(f) = filter {
        list.retain(|d| d.artifact_type.as_deref() == Some(f));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::media_type::OCI_INDEX,
        "manifests": list,
    });
    let mut resp = json_response(StatusCode::OK, &index);
    set(&mut resp, header::CONTENT_TYPE, oci::media_type::OCI_INDEX);
    if filter.is_some() {
        set(&mut resp, OCI_FILTERS_APPLIED, "artifactType");
    }
    Ok(resp)
}

// ---------------------------------------------------------------- token

/// The Docker token endpoint: trade an API token (Basic, or an OAuth2
/// password grant) for a short-lived bearer token holding the granted scopes.
async fn token(
    State(reg): State<Reg>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut params = query_pairs(&uri);
    if method == Method::POST {
        match http_body_util::Limited::new(body, 64 << 10).collect().await {
            Ok(b) => params.extend(form_urlencoded::parse(&b.to_bytes()).into_owned()),
            Err(_) => {
                return RegistryError::new(Code::Unsupported, "token request body too large")
                    .with_status(StatusCode::BAD_REQUEST)
                    .into_response();
            }
        }
    } else if method != Method::GET {
        return RegistryError::new(Code::Unsupported, "use GET or POST").into_response();
    }
    let form_password = (query_get(&params, "grant_type") == Some("password"))
        .then(|| query_get(&params, "password"))
        .flatten();
    let principal = auth::token_request_password(&headers, form_password)
        .and_then(|p| reg.auth.verify_password(&p));
    let Some(principal) = principal else {
        return RegistryError::new(
            Code::Unauthorized,
            "a valid API token is required as the password",
        )
        .with_header(
            header::WWW_AUTHENTICATE,
            &format!("Basic realm=\"{}\"", reg.auth.config().service),
        )
        .into_response();
    };
    let wanted = auth::parse_scopes(
        params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    );
    let granted: Vec<Access> = wanted
        .iter()
        .map(|w| principal.grant(w))
        .filter(|g| !g.actions.is_empty())
        .collect();
    match reg.auth.issue(principal.subject(), granted) {
        Ok((token, ttl)) => json_response(
            StatusCode::OK,
            &serde_json::json!({"token": token, "access_token": token, "expires_in": ttl}),
        ),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(parse_route("/v2/"), Some(Route::Base));
        assert_eq!(parse_route("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(parse_route("/v2/a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(
            parse_route("/v2/a/manifests/x/manifests/v1"),
            Some(Route::Manifest("a/manifests/x", "v1"))
        );
        assert_eq!(
            parse_route("/v2/a/blobs/uploads/"),
            Some(Route::Uploads("a"))
        );
        assert_eq!(
            parse_route("/v2/a/blobs/uploads/123"),
            Some(Route::Upload("a", "123"))
        );
        assert_eq!(
            parse_route(&format!("/v2/a/blobs/{d}")),
            Some(Route::Blob("a", d))
        );
        assert_eq!(
            parse_route(&format!("/v2/a/referrers/{d}")),
            Some(Route::Referrers("a", d))
        );
        assert_eq!(parse_route("/v2/a/nothing"), None);
    }

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        assert!(accepts(&h, oci::media_type::OCI_INDEX));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(oci::media_type::DOCKER_MANIFEST),
        );
        assert!(!accepts(&h, oci::media_type::OCI_INDEX));
        assert!(accepts(&h, oci::media_type::DOCKER_MANIFEST));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json;q=0.5"),
        );
        assert!(accepts(&h, oci::media_type::OCI_INDEX));
    }

    #[test]
    fn pagination() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let q = vec![("n".to_string(), "2".to_string())];
        let (p, link) = paginate(all.clone(), &q, "/v2/x/tags/list").unwrap();
        assert_eq!(p, vec!["a", "b"]);
        assert_eq!(link.unwrap(), "</v2/x/tags/list?n=2&last=b>; rel=\"next\"");
        let q = vec![("n".into(), "2".into()), ("last".into(), "b".into())];
        let (p, link) = paginate(all, &q, "/v2/x/tags/list").unwrap();
        assert_eq!(p, vec!["c", "d"]);
        assert!(link.is_none());
    }
}
