//! Basic auth with API tokens, the Docker token flow and scoped tokens.

use registry::auth::{Access, Action};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::{Cred, Server, assert_error, header};

#[tokio::test]
async fn base_endpoint_requires_credentials() {
    let srv = Server::start().await;

    let ok = srv.admin(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        header(&ok, "docker-distribution-api-version"),
        "registry/2.0"
    );

    let anon = srv
        .req(&Cred::Anonymous, Method::GET, "/v2/")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&anon, "www-authenticate"),
        format!(
            r#"Bearer realm="http://{}/token",service="slipway""#,
            srv.addr
        )
    );
    assert_error(anon, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;

    let wrong = Cred::Basic("slw_not-a-token".into());
    let resp = srv.req(&wrong, Method::GET, "/v2/").send().await.unwrap();
    assert!(header(&resp, "www-authenticate").starts_with("Bearer realm="));
    assert_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;

    // A challenge for a repository request names the scope it needs.
    let resp = srv
        .req(&Cred::Anonymous, Method::GET, "/v2/foo/tags/list")
        .send()
        .await
        .unwrap();
    assert!(
        header(&resp, "www-authenticate").ends_with(r#"scope="repository:foo:pull""#),
        "{:?}",
        resp.headers()
    );
}

/// `GET /token` for `scope` with `cred` as Basic credentials.
async fn fetch_token(srv: &Server, cred: &Cred, scope: &str) -> String {
    let path = format!("/token?service=slipway&scope={scope}");
    let resp = srv.req(cred, Method::GET, &path).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn token_flow_grants_only_the_requested_repository() {
    let srv = Server::start().await;
    let token = fetch_token(&srv, &srv.admin, "repository:foo:pull,push").await;
    let bearer = Cred::Bearer(token);

    // Push and pull in foo with the bearer token.
    let bytes = b"pushed with a bearer token";
    let d = oci::Digest::sha256(bytes);
    let resp = srv.post_blob(&bearer, "foo", bytes, &d).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let get = srv
        .req(&bearer, Method::GET, &format!("/v2/foo/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.bytes().await.unwrap().as_ref(), bytes);

    // The same token on another repository: challenged for the missing scope.
    let resp = srv
        .req(&bearer, Method::GET, &format!("/v2/bar/blobs/{d}"))
        .send()
        .await
        .unwrap();
    let challenge = header(&resp, "www-authenticate");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    assert!(
        challenge.contains(r#"scope="repository:bar:pull""#),
        "{challenge}"
    );
    assert_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;

    // No token without valid credentials.
    let resp = srv
        .req(
            &Cred::Anonymous,
            Method::GET,
            "/token?service=slipway&scope=repository:foo:pull",
        )
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let forged = Cred::Bearer("eyJhbGciOiJIUzI1NiJ9.e30.AAAA".into());
    let resp = srv.req(&forged, Method::GET, "/v2/").send().await.unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn scoped_api_token_may_pull_but_not_push() {
    let srv = Server::start().await;
    let ci = srv
        .reg
        .auth()
        .create_token("ci", false, vec![Access::repo("team/*", &[Action::Pull])])
        .unwrap();
    let ci = Cred::Basic(ci);
    let d = srv.push_blob("team/x", b"team layer").await;

    let get = srv
        .req(&ci, Method::GET, &format!("/v2/team/x/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);

    let resp = srv
        .post_blob(&ci, "team/x", b"nope", &oci::Digest::sha256(b"nope"))
        .await;
    assert_error(resp, StatusCode::FORBIDDEN, "DENIED").await;
    let resp = srv
        .req(&ci, Method::GET, "/v2/other/tags/list")
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::FORBIDDEN, "DENIED").await;

    // Through the token flow it gets only what it holds: pull, not push.
    let bearer = Cred::Bearer(fetch_token(&srv, &ci, "repository:team/x:pull,push").await);
    let get = srv
        .req(&bearer, Method::HEAD, &format!("/v2/team/x/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    let resp = srv
        .req(&bearer, Method::POST, "/v2/team/x/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert!(header(&resp, "www-authenticate").contains("insufficient_scope"));
    assert_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn a_damaged_signing_key_is_an_error_not_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry::Registry::open(registry::RegistryConfig::new(dir.path()))
        .await
        .unwrap();
    drop(reg);
    let key = dir.path().join("auth/jwt-key");
    std::fs::write(&key, b"short").unwrap();
    let err = match registry::Registry::open(registry::RegistryConfig::new(dir.path())).await {
        Ok(_) => panic!("a 5-byte key was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("jwt-key") && err.contains("32 bytes"), "{err}");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        b"short",
        "the key was replaced"
    );
}

#[tokio::test]
async fn token_names_are_unique() {
    let srv = Server::start().await;
    let auth = srv.reg.auth();
    auth.create_token("ci", false, vec![]).unwrap();
    let err = auth.create_token("ci", false, vec![]).unwrap_err();
    assert!(err.to_string().contains("token names are unique"), "{err}");
    // Not even an admin-looking name of a scoped token gets in twice.
    let err = auth.create_token("admin", false, vec![]).unwrap_err();
    assert!(err.to_string().contains("\"admin\""), "{err}");
}
