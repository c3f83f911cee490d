//! Repository names outside the spec's grammar are refused with
//! `NAME_INVALID` before they can reach the filesystem. Requests go over a
//! raw socket so that no client normalises `..` out of the path.

use base64::Engine;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Cred, Server};

/// Send `method path` verbatim; return the status code and the JSON body.
async fn raw(srv: &Server, method: &str, path: &str) -> (u16, Value) {
    let Cred::Basic(token) = &srv.admin else {
        unreachable!("the admin uses Basic auth")
    };
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{token}"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {basic}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
        srv.addr
    );
    let mut stream = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn invalid_names_are_refused() {
    let srv = Server::start().await;
    let digest = oci::Digest::sha256(b"x");
    let cases = [
        ("GET", "/v2/../x/tags/list".to_owned()),
        ("GET", "/v2/a/../b/tags/list".to_owned()),
        ("GET", "/v2/a/../../b/manifests/latest".to_owned()),
        ("GET", "/v2/a%2F..%2Fb/tags/list".to_owned()),
        ("GET", "/v2/a..b/tags/list".to_owned()),
        ("GET", "/v2/A/tags/list".to_owned()),
        ("PUT", "/v2/Upper/manifests/v1".to_owned()),
        ("POST", "/v2/a//b/blobs/uploads/".to_owned()),
        ("GET", format!("/v2/_x/blobs/{digest}")),
    ];
    for (method, path) in cases {
        let (status, body) = raw(&srv, method, &path).await;
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(body["errors"][0]["code"], "NAME_INVALID", "{method} {path}");
    }
    // Nothing escaped the repository tree.
    assert!(!srv.reg.data_dir().join("x").exists());
    assert!(!srv.reg.data_dir().join("b").exists());

    // The same request with a valid name is fine.
    let (status, body) = raw(&srv, "GET", "/v2/a/b/tags/list").await;
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN");
}
