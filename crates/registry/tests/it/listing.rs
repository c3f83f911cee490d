//! Tags list and catalog, with `n`/`last` pagination and `Link` headers.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Server, assert_error, header};

/// GET `path`; return the JSON body and the `Link` header.
async fn page(srv: &Server, path: &str) -> (Value, String) {
    let resp = srv.admin(Method::GET, path).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    let link = header(&resp, "link").to_owned();
    (resp.json().await.unwrap(), link)
}

/// The path in a `Link: <path>; rel="next"` header.
fn next(link: &str) -> &str {
    link.strip_prefix('<')
        .and_then(|l| l.strip_suffix(">; rel=\"next\""))
        .unwrap_or_else(|| panic!("not a next link: {link:?}"))
}

#[tokio::test]
async fn tags_list_pagination() {
    let srv = Server::start().await;
    let img = srv.push_image("team/app", "d", "tags").await;
    for tag in ["b", "a", "c"] {
        srv.push("team/app", tag, &img).await;
    }

    let (all, link) = page(&srv, "/v2/team/app/tags/list").await;
    assert_eq!(
        all,
        json!({"name": "team/app", "tags": ["a", "b", "c", "d"]})
    );
    assert_eq!(link, "");

    let (first, link) = page(&srv, "/v2/team/app/tags/list?n=2").await;
    assert_eq!(first["tags"], json!(["a", "b"]));
    assert_eq!(link, r#"</v2/team/app/tags/list?n=2&last=b>; rel="next""#);
    let (second, link) = page(&srv, next(&link)).await;
    assert_eq!(second["tags"], json!(["c", "d"]));
    assert_eq!(link, "");

    let (rest, _) = page(&srv, "/v2/team/app/tags/list?last=c").await;
    assert_eq!(rest["tags"], json!(["d"]));
    let (none, _) = page(&srv, "/v2/team/app/tags/list?n=0").await;
    assert_eq!(none["tags"], json!([]));

    let unknown = srv
        .admin(Method::GET, "/v2/nope/tags/list")
        .send()
        .await
        .unwrap();
    assert_error(unknown, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn catalog_pagination() {
    let srv = Server::start().await;
    for repo in ["cat/c", "cat/a", "cat/b", "dog"] {
        srv.push_blob(repo, repo.as_bytes()).await;
    }
    let (all, link) = page(&srv, "/v2/_catalog").await;
    assert_eq!(
        all["repositories"],
        json!(["cat/a", "cat/b", "cat/c", "dog"])
    );
    assert_eq!(link, "");

    let (first, link) = page(&srv, "/v2/_catalog?n=2").await;
    assert_eq!(first["repositories"], json!(["cat/a", "cat/b"]));
    assert_eq!(link, r#"</v2/_catalog?n=2&last=cat%2Fb>; rel="next""#);
    let (second, link) = page(&srv, next(&link)).await;
    assert_eq!(second["repositories"], json!(["cat/c", "dog"]));
    assert_eq!(link, "");
}
