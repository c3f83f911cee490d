//! The layer store pulls an image from a real registry (Slipway's, in
//! process) once, shares it, survives concurrent pulls, and its layers
//! mount to exactly what umoci unpacks.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use builder::LayerStore;
use oci::{Digest, Reference, media_type};
use regclient::{Client, ClientConfig, Credential};

use crate::reference::{blob_path, umoci_image};
use crate::{require_root, run, tree};

async fn registry_with(
    image: &crate::reference::Image,
) -> (tempfile::TempDir, Arc<Client>, Reference) {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry::Registry::open(registry::RegistryConfig::new(dir.path()))
        .await
        .unwrap();
    let token = reg.auth().create_token("t", true, vec![]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let router = reg.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let mut config = ClientConfig::default();
    config
        .credentials
        .insert(&host, Credential::basic("ci", token));
    let client = Arc::new(Client::new(config).unwrap());

    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest: Digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let manifest = std::fs::read(blob_path(&image.layout, &manifest_digest)).unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let mut blobs: Vec<Digest> = vec![
        parsed["config"]["digest"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
    ];
    blobs.extend(image.layers.iter().map(|(d, _)| d.clone()));
    for d in &blobs {
        let bytes = bytes::Bytes::from(std::fs::read(blob_path(&image.layout, d)).unwrap());
        client
            .push_blob(&host, "base/img", d, bytes.len() as u64, || {
                reqwest::Body::from(bytes.clone())
            })
            .await
            .unwrap();
    }
    let r: Reference = format!("{host}/base/img:v1").parse().unwrap();
    client
        .put_manifest(&r, media_type::OCI_MANIFEST, manifest.into())
        .await
        .unwrap();
    (dir, client, r)
}

fn mount_tree(
    layers: &[PathBuf],
    at: &std::path::Path,
) -> std::collections::BTreeMap<String, String> {
    let lowerdir: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    std::fs::create_dir_all(at).unwrap();
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lowerdir.join(":")))
        .arg(at));
    let t = tree(at);
    run(Command::new("umount").arg(at));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_once_shares_and_survives_concurrent_pulls() {
    if !require_root() {
        return;
    }
    let image = umoci_image();
    let (_reg, client, r) = registry_with(&image).await;
    let work = tempfile::tempdir().unwrap();
    let store = LayerStore::open(work.path().join("store"), false).unwrap();
    let first = store.pull(&client, &r, &Default::default()).await.unwrap();
    assert_eq!(first.fetched, image.layers.len());
    assert_eq!(
        mount_tree(&first.layers, &work.path().join("mnt")),
        tree(&image.rootfs)
    );
    let again = store.pull(&client, &r, &Default::default()).await.unwrap();
    assert_eq!(again.fetched, 0, "a second pull downloaded layers again");
    assert_eq!(again.layers, first.layers);

    // Two pulls racing into a fresh store both succeed with one result.
    let fresh = Arc::new(LayerStore::open(work.path().join("fresh"), false).unwrap());
    let platform = regclient::Platform::default();
    let (a, b) = tokio::join!(
        fresh.pull(&client, &r, &platform),
        fresh.pull(&client, &r, &platform)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.layers, b.layers);
    assert_eq!(
        mount_tree(&a.layers, &work.path().join("mnt2")),
        tree(&image.rootfs)
    );
    let leftovers: Vec<_> = std::fs::read_dir(work.path().join("fresh/tmp"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "work dirs left behind: {leftovers:?}");
}

#[test]
fn chain_ids_follow_the_image_spec() {
    let a: Digest = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
        .parse()
        .unwrap();
    let b: Digest = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
        .parse()
        .unwrap();
    let chain = builder::chain_ids(&[a.clone(), b.clone()]);
    assert_eq!(chain[0], a);
    assert_eq!(chain[1], Digest::sha256(format!("{a} {b}").as_bytes()));
}
