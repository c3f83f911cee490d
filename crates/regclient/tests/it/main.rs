//! The registry client against real registries started here on loopback:
//! Slipway's own (Docker token flow) and Debian's docker-registry (CNCF
//! Distribution, anonymous), plus small axum servers for what a real
//! registry will not do on demand: fail transiently, lie about a digest,
//! or demand Basic auth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults;
mod real;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use oci::{Digest, media_type};
use regclient::{Client, ClientConfig, Credential};

/// Slipway's registry in-process on a loopback port, with an admin token.
pub struct Slipway {
    pub addr: SocketAddr,
    pub token: String,
    _dir: tempfile::TempDir,
}

pub async fn slipway() -> Slipway {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry::Registry::open(registry::RegistryConfig::new(dir.path()))
        .await
        .unwrap();
    let token = reg.auth().create_token("test", true, vec![]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = reg.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Slipway {
        addr,
        token,
        _dir: dir,
    }
}

pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

pub fn client_for(host: &str, credential: Option<Credential>) -> Client {
    let mut config = ClientConfig {
        retries: 2,
        ..ClientConfig::default()
    };
    if let Some(c) = credential {
        config.credentials.insert(host, c);
    }
    Client::new(config).unwrap()
}

/// A small image: a config and two layers (contents are opaque to registries).
pub struct TestImage {
    pub blobs: Vec<(Digest, Bytes, &'static str)>,
    pub manifest: Bytes,
}

pub fn test_image(seed: u8, arch: &str) -> TestImage {
    let config = Bytes::from(format!(
        r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"config":{{}}}}"#
    ));
    let l1 = Bytes::from(vec![seed; 300_000]);
    let l2 = Bytes::from(
        (0..70_000u32)
            .map(|i| (i as u8) ^ seed)
            .collect::<Vec<u8>>(),
    );
    let blobs = vec![
        (Digest::sha256(&config), config, media_type::OCI_CONFIG),
        (Digest::sha256(&l1), l1, media_type::OCI_LAYER_GZIP),
        (Digest::sha256(&l2), l2, media_type::OCI_LAYER_GZIP),
    ];
    let desc = |(d, b, m): &(Digest, Bytes, &str)| serde_json::json!({"mediaType": m, "digest": d.to_string(), "size": b.len()});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": desc(&blobs[0]),
        "layers": [desc(&blobs[1]), desc(&blobs[2])],
    });
    TestImage {
        blobs,
        manifest: Bytes::from(serde_json::to_vec(&manifest).unwrap()),
    }
}

pub async fn push_image(
    client: &Arc<Client>,
    host: &str,
    repo: &str,
    image: &TestImage,
) -> Vec<regclient::Pushed> {
    let mut out = Vec::new();
    for (d, b, _) in &image.blobs {
        let b = b.clone();
        out.push(
            client
                .push_blob(host, repo, d, b.len() as u64, || {
                    reqwest::Body::from(b.clone())
                })
                .await
                .unwrap(),
        );
    }
    out
}
