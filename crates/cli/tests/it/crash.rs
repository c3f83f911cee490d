//! `kill -9` of the server in the middle of uploads: after a restart no
//! partial blob is ever served, and the client can push again.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::harness::{Server, sha256_hex};

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

/// A request body that sends `first` and then stalls forever.
fn stalled_body(first: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> = first
        .chunks(256 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    reqwest::Body::wrap_stream(
        futures_util::stream::iter(chunks).chain(futures_util::stream::pending()),
    )
}

fn uploads_bytes(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("store/uploads"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_serves_no_partial_blob_and_allows_pushing_again() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut srv = Server::start(&data);
    let http = reqwest::Client::new();
    let content = blob(8 << 20);
    let digest = format!("sha256:{}", sha256_hex(&content));
    let base = srv.url();
    let repo = "crash/app";

    // A session upload and a monolithic upload, both cut off half-way.
    let resp = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .basic_auth("ci", Some(&srv.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let half = content[..4 << 20].to_vec();
    let patch = http
        .patch(format!("{base}{location}"))
        .basic_auth("ci", Some(&srv.token))
        .body(stalled_body(half.clone()))
        .send();
    let mono = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .basic_auth("ci", Some(&srv.token))
        .body(stalled_body(half.clone()))
        .send();
    let in_flight = tokio::spawn(async move { tokio::join!(patch, mono) });
    let deadline = Instant::now() + Duration::from_secs(30);
    while uploads_bytes(&data) < 2 * (1 << 20) {
        assert!(Instant::now() < deadline, "uploads never reached the disk");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.kill(); // SIGKILL
    let (patch, mono) = in_flight.await.unwrap();
    assert!(
        patch.is_err() && mono.is_err(),
        "requests survived a killed server"
    );

    let srv = Server::start(&data);
    let base = srv.url();
    for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
        let r = http
            .request(method.clone(), format!("{base}/v2/{repo}/blobs/{digest}"))
            .basic_auth("ci", Some(&srv.token))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            404,
            "{method} served a blob that was never completed"
        );
    }
    let hex = &digest["sha256:".len()..];
    assert!(
        !data
            .join("store/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .exists(),
        "a partial blob was published"
    );

    // The session survived the crash: resume it from the offset the server reports.
    let status = http
        .get(format!("{base}{location}"))
        .basic_auth("ci", Some(&srv.token))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 204);
    let range = status.headers()["range"].to_str().unwrap().to_owned();
    let end: usize = range.split('-').nth(1).unwrap().parse().unwrap();
    let offset = end + 1;
    assert!(offset > 0 && offset <= half.len(), "range {range}");
    let rest = content[offset..].to_vec();
    let r = http
        .patch(format!("{base}{location}"))
        .basic_auth("ci", Some(&srv.token))
        .header("content-range", format!("{offset}-{}", content.len() - 1))
        .header("content-length", rest.len())
        .body(rest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = http
        .put(format!("{base}{location}?digest={digest}"))
        .basic_auth("ci", Some(&srv.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = http
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .basic_auth("ci", Some(&srv.token))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == content[..], "resumed blob differs");

    // And a fresh monolithic push of the same content works too.
    let r = http
        .post(format!(
            "{base}/v2/crash/other/blobs/uploads/?digest={digest}"
        ))
        .basic_auth("ci", Some(&srv.token))
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
