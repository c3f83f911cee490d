//! The `BlobStore` contract, run against the filesystem back end: verified
//! publication, ranged reads, resumable uploads (also across a restart),
//! concurrent writers of one digest, and nothing visible on failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use oci::{Algorithm, Digest};
use store::{BlobStore, ByteStream, FsStore, StoreError};
use tokio::io::AsyncReadExt;

fn body(chunks: &[&[u8]]) -> ByteStream {
    let v: Vec<Result<Bytes, std::io::Error>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures_util::stream::iter(v))
}

async fn read_all(s: &dyn BlobStore, d: &Digest, range: Option<(u64, Option<u64>)>) -> Vec<u8> {
    let mut r = s.open(d, range).await.unwrap();
    let mut out = Vec::new();
    r.reader.read_to_end(&mut out).await.unwrap();
    assert_eq!(out.len() as u64, r.len);
    out
}

async fn fresh() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStore::open(dir.path()).await.unwrap();
    (dir, s)
}

#[tokio::test]
async fn chunked_upload_publishes_verified_blob_with_ranges() {
    let (_d, s) = fresh().await;
    let data = b"hello, content addressed world";
    let digest = Digest::sha256(data);
    let id = s.upload_create().await.unwrap();
    assert_eq!(
        s.upload_append(&id, 0, body(&[&data[..10]])).await.unwrap(),
        10
    );
    let err = s.upload_append(&id, 5, body(&[b"x"])).await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::OffsetMismatch {
            expected: 10,
            got: 5
        }
    ));
    assert_eq!(s.upload_size(&id).await.unwrap(), 10);
    s.upload_append(&id, 10, body(&[&data[10..20], &data[20..]]))
        .await
        .unwrap();
    assert!(
        s.stat(&digest).await.unwrap().is_none(),
        "visible before commit"
    );
    assert_eq!(
        s.upload_commit(&id, &digest).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(
        s.stat(&digest).await.unwrap().unwrap().size,
        data.len() as u64
    );
    assert_eq!(read_all(&s, &digest, None).await, data);
    assert_eq!(read_all(&s, &digest, Some((7, Some(10)))).await, b"cont");
    assert_eq!(read_all(&s, &digest, Some((25, None))).await, b"world");
    assert!(matches!(
        s.open(&digest, Some((100, None))).await,
        Err(StoreError::RangeNotSatisfiable { .. })
    ));
    assert!(matches!(
        s.upload_size(&id).await,
        Err(StoreError::UploadUnknown(_))
    ));
}

#[tokio::test]
async fn wrong_digest_stores_nothing() {
    let (dir, s) = fresh().await;
    let wrong = Digest::sha256(b"something else");
    let id = s.upload_create().await.unwrap();
    s.upload_append(&id, 0, body(&[b"payload"])).await.unwrap();
    let err = s.upload_commit(&id, &wrong).await.unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert!(s.stat(&wrong).await.unwrap().is_none());
    assert!(s.stat(&Digest::sha256(b"payload")).await.unwrap().is_none());
    assert!(s.list().await.unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn sha512_and_put() {
    let (_d, s) = fresh().await;
    let d = s
        .put(Algorithm::Sha512, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    assert_eq!(d, Digest::of(Algorithm::Sha512, b"abc"));
    assert_eq!(read_all(&s, &d, None).await, b"abc");
    let listed: Vec<Digest> = s
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.digest)
        .collect();
    assert_eq!(listed, vec![d]);
}

#[tokio::test]
async fn upload_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![7u8; 300_000];
    let digest = Digest::sha256(&data);
    let id = {
        let s = FsStore::open(dir.path()).await.unwrap();
        let id = s.upload_create().await.unwrap();
        s.upload_append(&id, 0, body(&[&data[..100_000]]))
            .await
            .unwrap();
        id
    };
    let s = FsStore::open(dir.path()).await.unwrap();
    assert_eq!(s.upload_size(&id).await.unwrap(), 100_000);
    s.upload_append(&id, 100_000, body(&[&data[100_000..]]))
        .await
        .unwrap();
    s.upload_commit(&id, &digest).await.unwrap();
    assert_eq!(read_all(&s, &digest, None).await, data);
}

#[tokio::test]
async fn failed_body_keeps_what_arrived_and_can_resume() {
    let (_d, s) = fresh().await;
    let id = s.upload_create().await.unwrap();
    let broken: ByteStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(std::io::Error::other("client went away")),
    ]));
    assert!(matches!(
        s.upload_append(&id, 0, broken).await,
        Err(StoreError::Body { written: 3, .. })
    ));
    assert_eq!(s.upload_size(&id).await.unwrap(), 3);
    s.upload_append(&id, 3, body(&[b"def"])).await.unwrap();
    s.upload_commit(&id, &Digest::sha256(b"abcdef"))
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_writers_of_one_digest() {
    let (_d, s) = fresh().await;
    let s = std::sync::Arc::new(s);
    let data = Bytes::from(vec![42u8; 1 << 20]);
    let digest = Digest::sha256(&data);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, data) = (s.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            s.put(Algorithm::Sha256, data).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), digest);
    }
    assert_eq!(read_all(&*s, &digest, None).await, data);
    assert_eq!(s.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn hostile_upload_ids_are_refused_and_stale_uploads_purged() {
    let (_d, s) = fresh().await;
    for bad in [
        "../../etc/passwd",
        "",
        "a/b",
        "..",
        "x".repeat(100).as_str(),
    ] {
        assert!(matches!(
            s.upload_size(bad).await,
            Err(StoreError::UploadUnknown(_))
        ));
    }
    let id = s.upload_create().await.unwrap();
    assert_eq!(
        s.purge_uploads(SystemTime::now() - Duration::from_secs(60))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.purge_uploads(SystemTime::now() + Duration::from_secs(1))
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        s.upload_size(&id).await,
        Err(StoreError::UploadUnknown(_))
    ));
}

#[tokio::test]
async fn delete_and_touch() {
    let (_d, s) = fresh().await;
    let d = s
        .put(Algorithm::Sha256, Bytes::from_static(b"x"))
        .await
        .unwrap();
    let before = s.stat(&d).await.unwrap().unwrap().modified;
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.touch(&d).await.unwrap();
    assert!(s.stat(&d).await.unwrap().unwrap().modified > before);
    assert!(s.delete(&d).await.unwrap());
    assert!(!s.delete(&d).await.unwrap());
    assert!(matches!(
        s.open(&d, None).await,
        Err(StoreError::BlobUnknown(_))
    ));
}
