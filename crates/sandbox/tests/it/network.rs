//! Network modes: `none` has only loopback, `host` reaches the host's loopback.

use super::*;

#[tokio::test]
async fn network_none_has_only_lo() {
    if !root_or_skip("network_none_has_only_lo") {
        return;
    }
    let fs = busybox_rootfs();
    let mut spec = sh(
        &fs,
        "ls /sys/class/net; ip -o link | grep -c . ; ip -o link show lo; ping -c1 -W1 127.0.0.1 >/dev/null && echo lo-up",
    );
    spec.network = Network::None;
    let r = run(&spec).await;
    assert!(r.outcome.status.success(), "{} {}", r.stdout, r.stderr);
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("lo"), "{}", r.stdout);
    assert_eq!(lines.next(), Some("1"), "{}", r.stdout);
    assert!(r.stdout.contains("UP"), "{}", r.stdout);
    assert!(r.stdout.contains("lo-up"), "{}", r.stdout);
}

#[tokio::test]
async fn network_host_reaches_the_hosts_loopback() {
    if !root_or_skip("network_host_reaches_the_hosts_loopback") {
        return;
    }
    let fs = busybox_rootfs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nhello-sandbox")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let spec = sh(&fs, &format!("wget -q -O - http://127.0.0.1:{port}/"));
    let r = run(&spec).await;
    assert_eq!(r.stdout, "hello-sandbox", "{}", r.stderr);
    server.await.unwrap();

    // And `none` cannot.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut spec = sh(
        &fs,
        &format!("wget -q -T 1 -O - http://127.0.0.1:{port}/ || echo unreachable"),
    );
    spec.network = Network::None;
    let r = run(&spec).await;
    assert_eq!(r.stdout, "unreachable\n");
    drop(listener);
}
