//! Resumable uploads: sessions, chunks, status, completion, cancellation,
//! streamed bodies and cross-repository mounts.

use bytes::Bytes;
use oci::Digest;
use reqwest::{Method, Response, StatusCode};

use crate::common::{Server, assert_error, header};

/// Open an upload session in `repo` and return its `Location`.
async fn start(srv: &Server, repo: &str) -> String {
    let resp = srv
        .admin(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location").to_owned();
    let uuid = header(&resp, "docker-upload-uuid");
    assert!(!uuid.is_empty());
    assert_eq!(location, format!("/v2/{repo}/blobs/uploads/{uuid}"));
    location
}

/// PATCH `bytes` to an upload, declaring `Content-Range: range`.
async fn patch(srv: &Server, location: &str, range: &str, bytes: &[u8]) -> Response {
    srv.admin(Method::PATCH, location)
        .header("content-type", "application/octet-stream")
        .header("content-range", range)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

/// PUT `?digest=d` to close an upload, with an optional last chunk.
async fn finish(srv: &Server, location: &str, d: &Digest, last: &[u8]) -> Response {
    srv.admin(Method::PUT, &format!("{location}?digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(last.to_vec())
        .send()
        .await
        .unwrap()
}

fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn chunked_upload() {
    let srv = Server::start().await;
    let data = content(200);
    let d = Digest::sha256(&data);
    let location = start(&srv, "r").await;

    let first = patch(&srv, &location, "0-99", &data[..100]).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&first, "range"), "0-99");
    assert_eq!(header(&first, "location"), location);
    let second = patch(&srv, &location, "100-199", &data[100..]).await;
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&second, "range"), "0-199");

    // A chunk that does not continue where the upload stands.
    let gap = patch(&srv, &location, "300-399", &data[100..]).await;
    assert_eq!(header(&gap, "range"), "0-199");
    assert_error(
        gap,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "BLOB_UPLOAD_INVALID",
    )
    .await;

    let status = srv.admin(Method::GET, &location).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range"), "0-199");
    assert_eq!(header(&status, "location"), location);

    let done = finish(&srv, &location, &d, b"").await;
    assert_eq!(done.status(), StatusCode::CREATED);
    assert_eq!(header(&done, "location"), format!("/v2/r/blobs/{d}"));
    assert_eq!(header(&done, "docker-content-digest"), d.to_string());
    let get = srv
        .admin(Method::GET, &format!("/v2/r/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.bytes().await.unwrap().as_ref(), data.as_slice());

    // The session is closed.
    let status = srv.admin(Method::GET, &location).send().await.unwrap();
    assert_error(status, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn wrong_digest_on_close_stores_nothing() {
    let srv = Server::start().await;
    let data = content(100);
    let location = start(&srv, "r").await;
    assert_eq!(
        patch(&srv, &location, "0-99", &data).await.status(),
        StatusCode::ACCEPTED
    );
    let claimed = Digest::sha256(b"something else");
    let resp = finish(&srv, &location, &claimed, b"").await;
    assert_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    for d in [claimed, Digest::sha256(&data)] {
        let head = srv
            .admin(Method::HEAD, &format!("/v2/r/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::NOT_FOUND);
        assert!(srv.reg.store().stat(&d).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn cancelled_upload_is_gone() {
    let srv = Server::start().await;
    let location = start(&srv, "r").await;
    assert_eq!(
        patch(&srv, &location, "0-9", b"0123456789").await.status(),
        StatusCode::ACCEPTED
    );
    let del = srv.admin(Method::DELETE, &location).send().await.unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let status = srv.admin(Method::GET, &location).send().await.unwrap();
    assert_error(status, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let again = patch(&srv, &location, "10-19", b"0123456789").await;
    assert_error(again, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;

    // Another repository cannot use a session it does not own.
    let theirs = start(&srv, "r").await;
    let id = theirs.rsplit('/').next().unwrap();
    let status = srv
        .admin(Method::GET, &format!("/v2/other/blobs/uploads/{id}"))
        .send()
        .await
        .unwrap();
    assert_error(status, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn streamed_patch_without_content_range() {
    let srv = Server::start().await;
    let data = content(300_000);
    let d = Digest::sha256(&data);
    let location = start(&srv, "r").await;

    // Chunked transfer encoding, no Content-Length nor Content-Range.
    let chunks: Vec<Result<Bytes, std::io::Error>> = data[..250_000]
        .chunks(64 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let resp = srv
        .admin(Method::PATCH, &location)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), "0-249999");

    // The PUT that closes the upload carries the last bytes.
    let done = finish(&srv, &location, &d, &data[250_000..]).await;
    assert_eq!(done.status(), StatusCode::CREATED);
    let head = srv
        .admin(Method::HEAD, &format!("/v2/r/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), "300000");
}

#[tokio::test]
async fn cross_repository_mount() {
    let srv = Server::start().await;
    let d = srv.push_blob("src", b"shared layer").await;

    let resp = srv
        .admin(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), format!("/v2/dst/blobs/{d}"));
    assert_eq!(header(&resp, "docker-content-digest"), d.to_string());
    let get = srv
        .admin(Method::GET, &format!("/v2/dst/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.bytes().await.unwrap().as_ref(), b"shared layer");

    // A blob the source does not hold: fall back to an upload session.
    let missing = Digest::sha256(b"never pushed");
    let resp = srv
        .admin(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={missing}&from=src"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location").to_owned();
    assert!(location.starts_with("/v2/dst/blobs/uploads/"), "{location}");
    assert!(!header(&resp, "docker-upload-uuid").is_empty());
    let status = srv.admin(Method::GET, &location).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    let head = srv
        .admin(Method::HEAD, &format!("/v2/dst/blobs/{missing}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
}

/// Files under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn blobs_past_the_size_limit_get_413_and_leave_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = Server::start_with(|c| c.max_blob_bytes = 1 << 20).await;
    let before = files_under(srv.data()).len();
    // On object storage the data dir holds no blobs: ask the store too.
    let blobs_before = srv.reg.store().list().await.unwrap().len();

    // A 10 GiB blob declared up front is refused before any byte is read.
    let crate::common::Cred::Basic(token) = &srv.admin else {
        panic!("the admin credential is a token");
    };
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let auth = base64_basic(token);
    let d = Digest::sha256(b"never sent");
    s.write_all(
        format!(
            "POST /v2/big/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: 10737418240\r\n\r\nxxxx",
            srv.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.contains("SIZE_INVALID") && head.contains("1048576"),
        "{head}"
    );

    // A streamed body (no length) is cut off at the limit; the upload is gone.
    let location = start(&srv, "big").await;
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..40)
        .map(|_| Ok(Bytes::from(vec![7u8; 64 * 1024])))
        .collect();
    let resp = srv
        .admin(Method::PATCH, &location)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    // The server may answer before the client finished sending.
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    let status = srv.admin(Method::GET, &location).send().await.unwrap();
    assert_eq!(
        status.status(),
        StatusCode::NOT_FOUND,
        "the upload must be gone"
    );
    assert_eq!(
        files_under(srv.data()).len(),
        before,
        "nothing of the refused blobs stays: {:?}",
        files_under(srv.data())
    );
    assert_eq!(
        srv.reg.store().list().await.unwrap().len(),
        blobs_before,
        "no refused blob is in the store"
    );

    // Within the limit, uploads work as before.
    let small = content(512 * 1024);
    let d = Digest::sha256(&small);
    let resp = srv.post_blob(&srv.admin, "big", &small, &d).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

fn base64_basic(token: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("someone:{token}"))
}
