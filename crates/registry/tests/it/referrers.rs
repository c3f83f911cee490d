//! The referrers API: artifacts with a `subject`, listing and filtering.

use oci::media_type::{OCI_EMPTY, OCI_INDEX, OCI_MANIFEST};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Image, Server, desc, header};

const SIG: &str = "application/vnd.example.sig";
const SBOM: &str = "application/vnd.example.sbom";

/// Push an artifact of `artifact_type` about `subject` and return it.
async fn push_artifact(srv: &Server, repo: &str, subject: &Image, artifact_type: &str) -> Image {
    let payload = format!("{artifact_type} of {}", subject.digest);
    srv.push_blob(repo, b"{}").await;
    srv.push_blob(repo, payload.as_bytes()).await;
    let artifact = Image::from_json(
        OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": desc(OCI_EMPTY, b"{}"),
            "layers": [desc("application/octet-stream", payload.as_bytes())],
            "subject": subject.desc(),
        }),
    );
    let resp = srv
        .put_manifest(
            &srv.admin,
            repo,
            &artifact.digest.to_string(),
            OCI_MANIFEST,
            &artifact.bytes,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "oci-subject"), subject.digest.to_string());
    artifact
}

/// GET the referrers of `subject` (with `query`); return the filter header and the index.
async fn referrers(srv: &Server, subject: &Image, query: &str) -> (String, Value) {
    let path = format!("/v2/r/referrers/{}{query}", subject.digest);
    let resp = srv.admin(Method::GET, &path).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), OCI_INDEX);
    let filters = header(&resp, "oci-filters-applied").to_owned();
    let index: Value = resp.json().await.unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    (filters, index)
}

/// The `(digest, artifactType)` pairs of a referrers index, sorted.
fn listed(index: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["mediaType"], OCI_MANIFEST);
            let (d, t) = (&m["digest"], &m["artifactType"]);
            (
                d.as_str().unwrap().to_owned(),
                t.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn entry(artifact: &Image, artifact_type: &str) -> (String, String) {
    (artifact.digest.to_string(), artifact_type.to_owned())
}

#[tokio::test]
async fn referrers_list_filter_and_delete() {
    let srv = Server::start().await;
    let image = srv.push_image("r", "v1", "subject").await;
    let (_, index) = referrers(&srv, &image, "").await;
    assert_eq!(index["manifests"], json!([]));

    let sig = push_artifact(&srv, "r", &image, SIG).await;
    let sbom = push_artifact(&srv, "r", &image, SBOM).await;

    let (filters, index) = referrers(&srv, &image, "").await;
    assert_eq!(filters, "");
    let mut both = vec![entry(&sig, SIG), entry(&sbom, SBOM)];
    both.sort();
    assert_eq!(listed(&index), both);
    let sizes: Vec<u64> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["size"].as_u64().unwrap())
        .collect();
    assert!(sizes.contains(&(sig.bytes.len() as u64)));

    let (filters, index) = referrers(&srv, &image, &format!("?artifactType={SIG}")).await;
    assert_eq!(filters, "artifactType");
    assert_eq!(listed(&index), vec![entry(&sig, SIG)]);

    let del = srv
        .admin(Method::DELETE, &format!("/v2/r/manifests/{}", sig.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::ACCEPTED);
    let (_, index) = referrers(&srv, &image, "").await;
    assert_eq!(listed(&index), vec![entry(&sbom, SBOM)]);
}
