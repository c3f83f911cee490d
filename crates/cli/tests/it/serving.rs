//! Blob GETs through the server's own accept loop: on HTTP/1 a blob on
//! the filesystem store goes out by `sendfile(2)` (`registry::zero_copy`),
//! on HTTP/2 through hyper; both must be byte-exact, whole and by range,
//! several to a keep-alive connection, interleaved with ordinary
//! responses.

use std::path::Path;
use std::process::Command;

use crate::harness::{Server, ok, sha256_hex, tool};

fn curl(srv: &Server) -> Command {
    let mut c = Command::new(tool("curl"));
    c.args(["-sS", "--fail", "-u", &srv.creds()]);
    c
}

/// Push `bytes` as a blob of `repo` (one monolithic upload).
fn push(srv: &Server, repo: &str, bytes: &[u8], dir: &Path) -> String {
    let digest = format!("sha256:{}", sha256_hex(bytes));
    let file = dir.join(format!("{}.blob", &digest[7..19]));
    std::fs::write(&file, bytes).unwrap();
    ok(curl(srv).args([
        "-X",
        "POST",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{}/v2/{repo}/blobs/uploads/?digest={digest}", srv.url()),
    ]));
    digest
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn blob_gets_are_byte_exact_by_sendfile_and_over_http2() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"));
    // Several of the zero-copy body's 8 MiB chunks, and a ragged end.
    let big = random((40 << 20) + 123, 7);
    let small = random(1000, 9);
    let d_big = push(&srv, "serve/big", &big, tmp.path());
    let d_small = push(&srv, "serve/small", &small, tmp.path());
    let url = |repo: &str, d: &str| format!("{}/v2/{repo}/blobs/{d}", srv.url());
    let out = |name: &str| tmp.path().join(name);
    let read = |name: &str| std::fs::read(out(name)).unwrap();

    // HTTP/1.1, one keep-alive connection: whole blobs, a manifest-sized
    // JSON answer in between, a range across a chunk boundary, the last
    // byte, then the big blob again.
    let range = (8 << 20) - 5..=(16 << 20) + 5;
    // (`--next` starts the next URL's options; the connection is kept.)
    let creds = srv.creds();
    ok(curl(&srv).args([
        "--http1.1",
        &url("serve/big", &d_big),
        "-o",
        out("whole").to_str().unwrap(),
        &format!("{}/v2/serve/big/tags/list", srv.url()),
        "-o",
        out("tags").to_str().unwrap(),
        &url("serve/small", &d_small),
        "-o",
        out("small").to_str().unwrap(),
        "--next",
        "-sS",
        "--fail",
        "--http1.1",
        "-u",
        &creds,
        "-r",
        &format!("{}-{}", range.start(), range.end()),
        &url("serve/big", &d_big),
        "-o",
        out("range").to_str().unwrap(),
    ]));
    assert_eq!(sha256_hex(&read("whole")), d_big[7..], "whole big blob");
    assert_eq!(read("small"), small, "small blob");
    assert_eq!(read("range"), big[range.clone()], "range across a chunk");
    ok(curl(&srv).args([
        "--http1.1",
        "-r",
        &format!("{}-", big.len() - 1),
        &url("serve/big", &d_big),
        "-o",
        out("last").to_str().unwrap(),
    ]));
    assert_eq!(read("last"), &big[big.len() - 1..], "the last byte");

    // Eight at once, each on its own connection.
    let children: Vec<_> = (0..8)
        .map(|i| {
            curl(&srv)
                .args(["--http1.1", &url("serve/big", &d_big), "-o"])
                .arg(out(&format!("par-{i}")))
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, mut c) in children.into_iter().enumerate() {
        assert!(c.wait().unwrap().success());
        assert_eq!(
            sha256_hex(&read(&format!("par-{i}"))),
            d_big[7..],
            "parallel {i}"
        );
    }

    // HTTP/2 (no sendfile there): the same bytes.
    ok(curl(&srv).args([
        "--http2-prior-knowledge",
        &url("serve/big", &d_big),
        "-o",
        out("h2").to_str().unwrap(),
    ]));
    assert_eq!(sha256_hex(&read("h2")), d_big[7..], "over HTTP/2");

    // A client that hangs up mid-blob leaves the server serving others.
    let _ = Command::new(tool("curl"))
        .args([
            "-sS",
            "--http1.1",
            "-u",
            &srv.creds(),
            "--max-filesize",
            "1",
        ])
        .args([
            "-r",
            "0-20000000",
            &url("serve/big", &d_big),
            "-o",
            "/dev/null",
        ])
        .output();
    ok(curl(&srv).args([
        "--http1.1",
        &url("serve/small", &d_small),
        "-o",
        out("again").to_str().unwrap(),
    ]));
    assert_eq!(read("again"), small, "a small blob after a hang-up");
    ok(curl(&srv).args([
        "--http1.1",
        &url("serve/big", &d_big),
        "-o",
        out("after").to_str().unwrap(),
    ]));
    assert_eq!(sha256_hex(&read("after")), d_big[7..], "after a hang-up");
}
