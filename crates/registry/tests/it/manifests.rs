//! Manifest pushes and pulls (OCI image, OCI index, Docker schema 2), content
//! negotiation, validation errors and deletion.

use oci::media_type::{DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{Image, Server, assert_error, desc, header};

/// GET or HEAD `repo/manifests/reference` and check it serves `img`.
async fn assert_serves(srv: &Server, method: Method, repo: &str, reference: &str, img: &Image) {
    let resp = srv
        .admin(method.clone(), &format!("/v2/{repo}/manifests/{reference}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{method} {repo}:{reference}");
    assert_eq!(header(&resp, "content-type"), img.media_type);
    assert_eq!(
        header(&resp, "docker-content-digest"),
        img.digest.to_string()
    );
    assert_eq!(header(&resp, "content-length"), img.bytes.len().to_string());
    assert_eq!(header(&resp, "etag"), format!("\"{}\"", img.digest));
    if method == Method::GET {
        assert_eq!(resp.bytes().await.unwrap().as_ref(), img.bytes.as_slice());
    }
}

/// A PUT of `img` to `repo:reference` with one conditional header.
async fn put_if(
    srv: &Server,
    reference: &str,
    img: &Image,
    condition: (&str, String),
) -> reqwest::Response {
    srv.req(
        &srv.admin,
        Method::PUT,
        &format!("/v2/c/manifests/{reference}"),
    )
    .header("content-type", img.media_type)
    .header(condition.0, condition.1)
    .body(img.bytes.clone())
    .send()
    .await
    .unwrap()
}

/// Conditional tag writes (what cache exports use so that concurrent
/// exports merge): `If-None-Match: *` creates only, `If-Match` moves a
/// tag only from the digest it names; a refused write leaves the tag as
/// it was; of many writers expecting the same digest at once, exactly one
/// moves the tag (on replicas too: the lock is the database's).
#[tokio::test]
async fn conditional_tag_writes_move_a_tag_only_from_what_they_expect() {
    let srv = Server::start().await;
    let one = srv.image("c", "one", OCI_MANIFEST).await;
    let two = srv.image("c", "two", OCI_MANIFEST).await;
    let quoted = |i: &Image| format!("\"{}\"", i.digest);
    let none = ("if-none-match", "*".to_owned());

    let resp = put_if(&srv, "t", &one, none.clone()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_error(
        put_if(&srv, "t", &two, none.clone()).await,
        StatusCode::PRECONDITION_FAILED,
        "PRECONDITION_FAILED",
    )
    .await;
    assert_error(
        put_if(&srv, "t", &two, ("if-match", quoted(&two))).await,
        StatusCode::PRECONDITION_FAILED,
        "PRECONDITION_FAILED",
    )
    .await;
    assert_serves(&srv, Method::GET, "c", "t", &one).await;
    let resp = put_if(&srv, "t", &two, ("if-match", quoted(&one))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_serves(&srv, Method::HEAD, "c", "t", &two).await;
    // A list of entity tags, one of them current.
    let list = format!("{}, {}", quoted(&one), quoted(&two));
    let resp = put_if(&srv, "t", &one, ("if-match", list)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_serves(&srv, Method::GET, "c", "t", &one).await;
    // `If-Match: *` needs the tag to exist.
    assert_error(
        put_if(&srv, "missing", &one, ("if-match", "*".to_owned())).await,
        StatusCode::PRECONDITION_FAILED,
        "PRECONDITION_FAILED",
    )
    .await;
    let resp = put_if(&srv, "t", &two, ("if-match", "*".to_owned())).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // What cannot be a condition on a tag is refused, naming the header.
    for (reference, condition) in [
        (one.digest.to_string(), none.clone()),
        ("t".to_owned(), ("if-match", "sha256:unquoted".to_owned())),
        ("t".to_owned(), ("if-none-match", quoted(&one))),
    ] {
        let resp = put_if(&srv, &reference, &one, condition.clone()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{condition:?}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "MANIFEST_INVALID", "{body}");
    }
    assert_serves(&srv, Method::GET, "c", "t", &two).await;

    // Eight writers that all read `two`: one wins, seven are refused.
    let mut imgs = Vec::new();
    for i in 0..8 {
        imgs.push(srv.image("c", &format!("racer {i}"), OCI_MANIFEST).await);
    }
    let answers = futures_util::future::join_all(
        imgs.iter()
            .map(|img| put_if(&srv, "t", img, ("if-match", quoted(&two)))),
    )
    .await;
    let won: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status() == StatusCode::CREATED)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|r| [StatusCode::CREATED, StatusCode::PRECONDITION_FAILED].contains(&r.status())),
        "{answers:?}"
    );
    assert_serves(&srv, Method::GET, "c", "t", &imgs[won[0]]).await;
}

#[tokio::test]
async fn oci_image_by_tag_and_digest() {
    let srv = Server::start().await;
    let img = srv.push_image("r", "v1", "oci").await;
    let digest = img.digest.to_string();
    for reference in ["v1", digest.as_str()] {
        assert_serves(&srv, Method::GET, "r", reference, &img).await;
        assert_serves(&srv, Method::HEAD, "r", reference, &img).await;
    }
    // Pushing the same bytes by digest is idempotent.
    srv.push("r", &digest, &img).await;
    // By a sha512 digest, the manifest is stored and addressed under sha512.
    let sha512 = oci::Digest::of(oci::Algorithm::Sha512, &img.bytes).to_string();
    let resp = srv
        .put_manifest(&srv.admin, "r", &sha512, OCI_MANIFEST, &img.bytes)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), sha512);
    let get = srv
        .admin(Method::GET, &format!("/v2/r/manifests/{sha512}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(header(&get, "docker-content-digest"), sha512);
    assert_eq!(get.bytes().await.unwrap().as_ref(), img.bytes.as_slice());

    // Content negotiation: an Accept that admits the type, and one that does not.
    let ok = srv
        .admin(Method::GET, "/v2/r/manifests/v1")
        .header("accept", format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let refused = srv
        .admin(Method::GET, "/v2/r/manifests/v1")
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_error(refused, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    let unknown = srv
        .admin(Method::GET, "/v2/r/manifests/v2")
        .send()
        .await
        .unwrap();
    assert_error(unknown, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn docker_schema2_image() {
    let srv = Server::start().await;
    let img = srv.image("r", "docker", DOCKER_MANIFEST).await;
    srv.push("r", "latest", &img).await;
    assert_serves(&srv, Method::GET, "r", "latest", &img).await;
    assert_serves(&srv, Method::HEAD, "r", &img.digest.to_string(), &img).await;
}

#[tokio::test]
async fn oci_index() {
    let srv = Server::start().await;
    let amd = srv.push_image("r", "amd64", "amd64").await;
    let arm = srv.image("r", "arm64", OCI_MANIFEST).await;
    srv.push("r", &arm.digest.to_string(), &arm).await;
    let platform = |arch: &str| json!({"architecture": arch, "os": "linux"});
    let mut entries = [amd.desc(), arm.desc()];
    entries[0]["platform"] = platform("amd64");
    entries[1]["platform"] = platform("arm64");
    let index = Image::from_json(
        OCI_INDEX,
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
    );
    srv.push("r", "multi", &index).await;
    assert_serves(&srv, Method::GET, "r", "multi", &index).await;
    assert_serves(&srv, Method::GET, "r", &index.digest.to_string(), &index).await;

    // An index of a manifest the repository does not hold.
    let elsewhere = srv.image("other", "elsewhere", OCI_MANIFEST).await;
    srv.push("other", "x", &elsewhere).await;
    let dangling = Image::from_json(
        OCI_INDEX,
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [elsewhere.desc()]}),
    );
    let resp = srv
        .put_manifest(&srv.admin, "r", "dangling", OCI_INDEX, &dangling.bytes)
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn invalid_manifests_are_refused() {
    let srv = Server::start().await;
    let config = srv.push_blob("r", b"{}").await;
    let config_desc = desc(OCI_CONFIG, b"{}");
    assert_eq!(config_desc["digest"], config.to_string());

    // A layer that was never pushed.
    let missing_layer = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": [desc(oci::media_type::OCI_LAYER_GZIP, b"never pushed")],
    });
    let body = serde_json::to_vec(&missing_layer).unwrap();
    let resp = srv
        .put_manifest(&srv.admin, "r", "v1", OCI_MANIFEST, &body)
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;

    let resp = srv
        .put_manifest(
            &srv.admin,
            "r",
            "v1",
            OCI_MANIFEST,
            b"{\"schemaVersion\": 2,",
        )
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;

    // Pushed by a digest that is not the body's.
    let img = srv.image("r", "img", OCI_MANIFEST).await;
    let wrong = oci::Digest::sha256(b"another manifest");
    let resp = srv
        .put_manifest(
            &srv.admin,
            "r",
            &wrong.to_string(),
            OCI_MANIFEST,
            &img.bytes,
        )
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;

    // Larger than the 4 MiB limit.
    let huge = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, b"{}"),
        "layers": [],
        "annotations": {"padding": "x".repeat(5 << 20)},
    });
    let body = serde_json::to_vec(&huge).unwrap();
    let resp = srv
        .put_manifest(&srv.admin, "r", "huge", OCI_MANIFEST, &body)
        .await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;

    // None of these left a tag behind.
    let tags: serde_json::Value = srv
        .admin(Method::GET, "/v2/r/tags/list")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!([]));
}

#[tokio::test]
async fn delete_by_tag_and_by_digest() {
    let srv = Server::start().await;
    let img = srv.push_image("r", "v1", "del").await;
    srv.push("r", "v2", &img).await;
    let by_digest = format!("/v2/r/manifests/{}", img.digest);

    let del = srv
        .admin(Method::DELETE, "/v2/r/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::ACCEPTED);
    let tag = srv
        .admin(Method::GET, "/v2/r/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_error(tag, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_serves(&srv, Method::GET, "r", &img.digest.to_string(), &img).await;
    assert_serves(&srv, Method::GET, "r", "v2", &img).await;

    let del = srv.admin(Method::DELETE, &by_digest).send().await.unwrap();
    assert_eq!(del.status(), StatusCode::ACCEPTED);
    let gone = srv.admin(Method::GET, &by_digest).send().await.unwrap();
    assert_error(gone, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    // Tags pointing at it went with it.
    let tag = srv
        .admin(Method::HEAD, "/v2/r/manifests/v2")
        .send()
        .await
        .unwrap();
    assert_eq!(tag.status(), StatusCode::NOT_FOUND);
    let again = srv.admin(Method::DELETE, &by_digest).send().await.unwrap();
    assert_error(again, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}
