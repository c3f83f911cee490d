//! Garbage collection after manifest deletion, and its grace period.

use std::time::Duration;

use oci::Digest;
use registry::gc::{GcOptions, GcReport, collect};
use reqwest::{Method, StatusCode};

use crate::common::Server;

async fn stored(srv: &Server, d: &Digest) -> bool {
    srv.reg.store().stat(d).await.unwrap().is_some()
}

/// A collection with no grace period: whatever nothing references goes.
async fn collect_now(srv: &Server) -> GcReport {
    let now = GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    collect(&srv.reg, &now).await.unwrap()
}

#[tokio::test]
async fn collect_removes_only_unreferenced_blobs() {
    let srv = Server::start().await;
    let dead = srv.push_image("r", "dead", "dead").await;
    let live = srv.push_image("r", "live", "live").await;
    let del = srv
        .admin(Method::DELETE, &format!("/v2/r/manifests/{}", dead.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::ACCEPTED);

    // With the default grace period everything is too young to go.
    let report = collect(&srv.reg, &GcOptions::default()).await.unwrap();
    assert_eq!(report.blobs_deleted, 0);
    for d in dead.blobs.iter().chain([&dead.digest]) {
        assert!(stored(&srv, d).await, "{d} deleted within the grace period");
    }

    let report = collect_now(&srv).await;
    // The dead image's config, layer and manifest.
    assert_eq!(report.blobs_deleted, 3, "{report:?}");
    assert_eq!(report.links_removed, 2, "{report:?}");
    for d in dead.blobs.iter().chain([&dead.digest]) {
        assert!(!stored(&srv, d).await, "{d} survived");
    }
    for d in live.blobs.iter().chain([&live.digest]) {
        assert!(stored(&srv, d).await, "{d} of a live manifest deleted");
    }
    let gone = srv
        .admin(Method::HEAD, &format!("/v2/r/blobs/{}", dead.blobs[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let pull = srv
        .admin(Method::GET, "/v2/r/manifests/live")
        .send()
        .await
        .unwrap();
    assert_eq!(pull.status(), StatusCode::OK);
    for d in &live.blobs {
        let blob = srv
            .admin(Method::GET, &format!("/v2/r/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(blob.status(), StatusCode::OK);
    }
}

/// A pool's layer cache (`slipway-cache/…`) keeps only what its tag names:
/// a manifest the tag moved off is pruned with the blobs only it used;
/// elsewhere an untagged manifest stays (it is pulled by digest).
#[tokio::test]
async fn caches_lose_replaced_manifests_other_repositories_keep_them() {
    let srv = Server::start().await;
    let old = srv.push_image("slipway-cache/p", "steps", "old").await;
    let new = srv.push_image("slipway-cache/p", "steps", "new").await;
    let kept = srv.push_image("app", "v1", "kept").await;
    srv.push_image("app", "v1", "current").await;
    let report = collect_now(&srv).await;
    assert_eq!(report.manifests_pruned, 1, "{report:?}");
    for d in old.blobs.iter().chain([&old.digest]) {
        assert!(!stored(&srv, d).await, "{d} of the replaced cache survived");
    }
    for d in new.blobs.iter().chain([&new.digest]) {
        assert!(stored(&srv, d).await, "{d} of the current cache deleted");
    }
    for d in kept.blobs.iter().chain([&kept.digest]) {
        assert!(
            stored(&srv, d).await,
            "{d} of an untagged app manifest deleted"
        );
    }
}
