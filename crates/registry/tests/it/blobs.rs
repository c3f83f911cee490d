//! Monolithic blob pushes, HEAD/GET, ranged reads and deletion.

use oci::{Algorithm, Digest};
use reqwest::{Method, StatusCode};

use crate::common::{Server, assert_error, header};

#[tokio::test]
async fn monolithic_push_head_get_range_delete() {
    let srv = Server::start().await;
    let bytes = b"0123456789";
    let d = Digest::sha256(bytes);
    let resp = srv.post_blob(&srv.admin, "r", bytes, &d).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), format!("/v2/r/blobs/{d}"));
    assert_eq!(header(&resp, "docker-content-digest"), d.to_string());
    let path = format!("/v2/r/blobs/{d}");

    let head = srv.admin(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), "10");
    assert_eq!(header(&head, "docker-content-digest"), d.to_string());

    let get = srv.admin(Method::GET, &path).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(header(&get, "docker-content-digest"), d.to_string());
    assert_eq!(get.bytes().await.unwrap().as_ref(), bytes);

    let part = srv
        .admin(Method::GET, &path)
        .header("range", "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&part, "content-range"), "bytes 2-5/10");
    assert_eq!(header(&part, "content-length"), "4");
    assert_eq!(part.bytes().await.unwrap().as_ref(), b"2345");

    let beyond = srv
        .admin(Method::GET, &path)
        .header("range", "bytes=20-30")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&beyond, "content-range"), "bytes */10");

    // The blob is in r only.
    let other = srv
        .admin(Method::GET, &format!("/v2/s/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_error(other, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;

    let del = srv.admin(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(del.status(), StatusCode::ACCEPTED);
    let gone = srv.admin(Method::GET, &path).send().await.unwrap();
    assert_error(gone, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let again = srv.admin(Method::DELETE, &path).send().await.unwrap();
    assert_error(again, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn sha512_blob() {
    let srv = Server::start().await;
    let bytes = b"hashed with sha512";
    let d = Digest::of(Algorithm::Sha512, bytes);
    let resp = srv.post_blob(&srv.admin, "r", bytes, &d).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), d.to_string());

    let get = srv
        .admin(Method::GET, &format!("/v2/r/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(header(&get, "docker-content-digest"), d.to_string());
    assert_eq!(get.bytes().await.unwrap().as_ref(), bytes);
    assert!(srv.reg.store().stat(&d).await.unwrap().is_some());
}

#[tokio::test]
async fn monolithic_push_with_wrong_digest_stores_nothing() {
    let srv = Server::start().await;
    let claimed = Digest::sha256(b"what the client claims");
    let resp = srv
        .post_blob(&srv.admin, "r", b"what it sends", &claimed)
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    for d in [claimed, Digest::sha256(b"what it sends")] {
        let head = srv
            .admin(Method::HEAD, &format!("/v2/r/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::NOT_FOUND);
        assert!(srv.reg.store().stat(&d).await.unwrap().is_none());
    }
}
