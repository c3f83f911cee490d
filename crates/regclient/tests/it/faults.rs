//! What real registries do only sometimes: transient 5xx, a wrong digest,
//! Basic-only authentication. Small axum servers play those registries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use oci::{Digest, Reference, media_type};
use regclient::{Credential, RegClientError};

use crate::{client_for, serve, test_image};

fn manifest_response(bytes: bytes::Bytes) -> axum::response::Response {
    ([(header::CONTENT_TYPE, media_type::OCI_MANIFEST)], bytes).into_response()
}

#[tokio::test]
async fn transient_failures_are_retried_and_persistent_ones_reported() {
    let calls = Arc::new(AtomicUsize::new(0));
    let image = test_image(6, "amd64");
    let (c, m) = (calls.clone(), image.manifest.clone());
    let app = axum::Router::new()
        .route(
            "/v2/flaky/app/manifests/v1",
            get(move || {
                let (c, m) = (c.clone(), m.clone());
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) < 2 {
                        StatusCode::SERVICE_UNAVAILABLE.into_response()
                    } else {
                        manifest_response(m)
                    }
                }
            }),
        )
        .route(
            "/v2/broken/app/manifests/v1",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        );
    let addr = serve(app).await;
    let client = client_for(&addr.to_string(), None);
    let r: Reference = format!("{addr}/flaky/app:v1").parse().unwrap();
    let got = client.get_manifest(&r).await.unwrap();
    assert_eq!(got.bytes, image.manifest);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two 503s, then success");
    let r: Reference = format!("{addr}/broken/app:v1").parse().unwrap();
    let err = client.get_manifest(&r).await.unwrap_err();
    assert!(
        matches!(err, RegClientError::Status { status: 500, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_registry_lying_about_content_is_caught() {
    let app = axum::Router::new()
        .route(
            "/v2/lie/app/blobs/{digest}",
            get(|| async { "not what you asked for" }),
        )
        .route(
            "/v2/lie/app/manifests/{reference}",
            get(|| async { manifest_response(test_image(7, "amd64").manifest) }),
        );
    let addr = serve(app).await;
    let client = client_for(&addr.to_string(), None);
    let wanted = Digest::sha256(b"the real content");
    let err = client
        .get_blob(&addr.to_string(), "lie/app", &wanted, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegClientError::DigestMismatch { .. }),
        "{err}"
    );
    let pinned: Reference = format!("{addr}/lie/app@{wanted}").parse().unwrap();
    let err = client.get_manifest(&pinned).await.unwrap_err();
    assert!(
        matches!(err, RegClientError::DigestMismatch { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn basic_auth_challenge_is_answered_with_configured_credentials() {
    let image = test_image(8, "amd64");
    let m = image.manifest.clone();
    let app = axum::Router::new().route(
        "/v2/basic/app/manifests/v1",
        get(move |headers: HeaderMap| {
            let m = m.clone();
            async move {
                // "u:p" in base64.
                if headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    == Some("Basic dTpw")
                {
                    manifest_response(m)
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Basic realm=\"test\"")],
                    )
                        .into_response()
                }
            }
        }),
    );
    let addr = serve(app).await;
    let host = addr.to_string();
    let r: Reference = format!("{addr}/basic/app:v1").parse().unwrap();
    let got = client_for(&host, Some(Credential::basic("u", "p")))
        .get_manifest(&r)
        .await
        .unwrap();
    assert_eq!(got.bytes, image.manifest);
    let err = client_for(&host, None).get_manifest(&r).await.unwrap_err();
    assert!(err.to_string().contains("Basic credentials"), "{err}");
    let err = client_for(&host, Some(Credential::basic("u", "wrong")))
        .get_manifest(&r)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("authentication failed for {host}"))
            && err.to_string().contains("refused the credential of user u"),
        "{err}"
    );
}

#[tokio::test]
async fn an_oversized_manifest_is_refused_not_read_whole() {
    // 5 MiB declared, and 5 MiB streamed without a length: both refused.
    let big = bytes::Bytes::from(vec![b' '; 5 << 20]);
    let b2 = big.clone();
    let app = axum::Router::new()
        .route(
            "/v2/big/app/manifests/v1",
            get(move || {
                let b = big.clone();
                async move { manifest_response(b) }
            }),
        )
        .route(
            "/v2/stream/app/manifests/v1",
            get(move || {
                let b = b2.clone();
                async move {
                    let chunks = futures_util::stream::iter(
                        b.chunks(64 * 1024)
                            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                            .collect::<Vec<_>>(),
                    );
                    (
                        [(header::CONTENT_TYPE, media_type::OCI_MANIFEST)],
                        axum::body::Body::from_stream(chunks),
                    )
                        .into_response()
                }
            }),
        );
    let addr = serve(app).await;
    let client = client_for(&addr.to_string(), None);
    for repo in ["big", "stream"] {
        let r: Reference = format!("{addr}/{repo}/app:v1").parse().unwrap();
        let err = client.get_manifest(&r).await.unwrap_err();
        assert!(
            err.to_string().contains("larger than 4194304 bytes"),
            "{repo}: {err}"
        );
    }
}
