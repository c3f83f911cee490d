//! The server with its blobs in object storage: Azurite (Azure Blob
//! Storage, from npm) and moto (S3, from PyPI), each on a loopback port the
//! test picks. The OCI conformance suite passes on each; a wrong key or a
//! missing container is one clear error at start.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::services::{
    AZURITE_ACCOUNT, azurite, azurite_on, create_bucket, create_container, moto, s3_args,
};

use crate::harness::Server;

/// Azurite as a user points at it: `use_emulator` and the emulator's URL
/// in the environment (testkit's `azure_args` gives an endpoint instead).
fn azure_args(port: u16, container: &str) -> (Vec<String>, Vec<(String, String)>) {
    (
        vec![
            "--blob-store".into(),
            format!("azure://{AZURITE_ACCOUNT}/{container}/slipway"),
            "--blob-store-option".into(),
            "use_emulator=true".into(),
        ],
        vec![(
            "AZURITE_BLOB_STORAGE_URL".into(),
            format!("http://127.0.0.1:{port}"),
        )],
    )
}

fn start(data: &Path, args: &[String], env: &[(String, String)]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_with(data, &args, &env)
}

/// A server start that must fail: its one-line error.
fn refused(data: &Path, args: &[String], env: &[(String, String)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn conformance_suite_passes_with_blobs_in_azurite() {
    let tmp = tempfile::tempdir().unwrap();
    let az = azurite(&tmp.path().join("azurite"));
    create_container(az.port, "registry");
    let (args, env) = azure_args(az.port, "registry");
    let srv = start(&tmp.path().join("data"), &args, &env);
    crate::peers::conformance(&srv, tmp.path());
    // The blobs are in the container, not under the data dir.
    assert!(!tmp.path().join("data/store/blobs").exists());

    // A container that does not exist, and a wrong key: one clear error.
    let (args, env) = azure_args(az.port, "missing");
    let err = refused(&tmp.path().join("d2"), &args, &env);
    assert!(err.contains("azure://devstoreaccount1/missing"), "{err}");
    assert!(err.contains("ContainerNotFound"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let (mut args, env) = azure_args(az.port, "registry");
    args.extend([
        "--blob-store-option".into(),
        format!("access_key={}", "A".repeat(88)),
    ]);
    let err = refused(&tmp.path().join("d3"), &args, &env);
    assert!(err.contains("reaching the blob store"), "{err}");
}

#[test]
fn conformance_suite_passes_with_blobs_in_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = moto();
    create_bucket(s3.port, "registry");
    let srv = start(&tmp.path().join("data"), &s3_args(s3.port, "registry"), &[]);
    crate::peers::conformance(&srv, tmp.path());
    assert!(!tmp.path().join("data/store/blobs").exists());
    let err = refused(&tmp.path().join("d2"), &s3_args(s3.port, "missing"), &[]);
    assert!(err.contains("s3://missing"), "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// The store itself on S3, as two replicas see it: an upload begun through
/// one store is continued and committed through another; a 20 MiB blob
/// crosses several multipart parts and reads back whole and by range; a
/// wrong digest leaves nothing visible; a cancel leaves no part behind.
#[test]
fn uploads_move_between_replicas_and_only_verified_blobs_appear() {
    use tokio::io::AsyncReadExt;
    let s3 = moto();
    create_bucket(s3.port, "blobs");
    let args = s3_args(s3.port, "blobs");
    let options: Vec<String> = args
        .chunks(2)
        .filter(|p| p[0] == "--blob-store-option")
        .map(|p| p[1].clone())
        .collect();
    let location = store::Location::parse("s3://blobs/test", &options).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = location.open("store").await.unwrap();
        let b = location.open("store").await.unwrap();
        let data: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
        let digest = oci::Digest::sha256(&data);
        let body = |range: std::ops::Range<usize>| -> store::ByteStream {
            let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data[range]
                .chunks(1 << 20)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect();
            Box::pin(futures_util::stream::iter(chunks))
        };
        let id = a.upload_create().await.unwrap();
        assert_eq!(
            a.upload_append(&id, 0, body(0..9 << 20)).await.unwrap(),
            9 << 20
        );
        // Replica B picks the upload up where A left it.
        assert_eq!(b.upload_size(&id).await.unwrap(), 9 << 20);
        let wrong = b.upload_append(&id, 1, body(9 << 20..10 << 20)).await;
        assert!(matches!(
            wrong,
            Err(store::StoreError::OffsetMismatch { .. })
        ));
        b.upload_append(&id, 9 << 20, body(9 << 20..20 << 20))
            .await
            .unwrap();
        // A wrong digest: refused, nothing visible, the upload kept.
        let other = oci::Digest::sha256(b"something else");
        let e = b.upload_commit(&id, &other).await.unwrap_err();
        assert!(matches!(e, store::StoreError::DigestMismatch { .. }), "{e}");
        assert!(a.stat(&other).await.unwrap().is_none());
        assert_eq!(b.upload_commit(&id, &digest).await.unwrap(), 20 << 20);
        let info = a.stat(&digest).await.unwrap().unwrap();
        assert_eq!(info.size, 20 << 20);
        let mut whole = Vec::new();
        a.open(&digest, None)
            .await
            .unwrap()
            .reader
            .read_to_end(&mut whole)
            .await
            .unwrap();
        assert!(whole == data, "the blob reads back whole");
        let mut part = Vec::new();
        let r = a
            .open(&digest, Some((10 << 20, Some((12 << 20) - 1))))
            .await
            .unwrap();
        assert_eq!(r.len, 2 << 20);
        r.reader
            .take(u64::MAX)
            .read_to_end(&mut part)
            .await
            .unwrap();
        assert!(part[..] == data[10 << 20..12 << 20], "a range reads back");
        let listed = |l: Vec<store::BlobInfo>| {
            l.into_iter()
                .find(|i| i.digest == digest)
                .map(|i| i.modified)
                .unwrap()
        };
        let first = listed(a.list().await.unwrap());
        // A use (a pusher's HEAD) dates the blob for gc in `list` as in `stat`.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        b.touch(&digest).await.unwrap();
        let used = listed(a.list().await.unwrap());
        assert!(used > first, "the use does not show in list");
        assert_eq!(used, a.stat(&digest).await.unwrap().unwrap().modified);
        // The committed upload is gone; a cancelled one leaves nothing.
        assert!(a.upload_size(&id).await.is_err());
        let id2 = a.upload_create().await.unwrap();
        a.upload_append(&id2, 0, body(0..1 << 20)).await.unwrap();
        a.upload_cancel(&id2).await.unwrap();
        assert!(b.upload_size(&id2).await.is_err());
        assert!(a.delete(&digest).await.unwrap());
        assert!(b.stat(&digest).await.unwrap().is_none());
    });
}

/// Two replicas on one PostgreSQL and one Azurite container, no load
/// balancer: an image pushed through A pulls through B with the same
/// digest (blobs and repository metadata are in the container), with a
/// token made on A.
#[test]
fn an_image_pushed_through_one_replica_pulls_through_another() {
    if !crate::control::need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pg = crate::control::Postgres::start(tmp.path());
    let az = azurite(&tmp.path().join("azurite"));
    create_container(az.port, "shared");
    let key = tmp.path().join("secret.key");
    std::fs::write(&key, [7u8; 40]).unwrap();
    let (mut args, env) = azure_args(az.port, "shared");
    args.extend([
        "--database".into(),
        pg.url(),
        "--secret-key-file".into(),
        key.display().to_string(),
    ]);
    let a = start(&tmp.path().join("a"), &args, &env);
    let b_data = tmp.path().join("b");
    std::fs::create_dir_all(&b_data).unwrap();
    std::fs::copy(a.data.join("admin-token"), b_data.join("admin-token")).unwrap();
    let b = start(&b_data, &args, &env);
    let layout = crate::harness::make_image(tmp.path());
    let skopeo = || {
        let mut c = Command::new(crate::harness::tool("skopeo"));
        c.env("REGISTRY_AUTH_FILE", tmp.path().join("auth.json"));
        c
    };
    std::fs::write(tmp.path().join("auth.json"), r#"{"auths":{}}"#).unwrap();
    let digestfile = tmp.path().join("pushed");
    crate::harness::ok(
        skopeo()
            .args([
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                &a.creds(),
            ])
            .arg("--digestfile")
            .arg(&digestfile)
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{}/shared/app:1", a.addr)),
    );
    let pushed = std::fs::read_to_string(&digestfile).unwrap();
    let inspect = crate::harness::ok(
        skopeo()
            .args(["inspect", "--tls-verify=false", "--creds", &b.creds()])
            .arg(format!("docker://{}/shared/app:1", b.addr)),
    );
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Digest"], pushed.trim(), "B serves A's push");
    let dest = tmp.path().join("pulled");
    crate::harness::ok(
        skopeo()
            .args(["copy", "--src-tls-verify=false", "--src-creds", &b.creds()])
            .arg(format!("docker://{}/shared/app:1", b.addr))
            .arg(format!("oci:{}:v1", dest.display())),
    );
    // Nothing of it is under either data dir.
    for d in [&a.data, &b.data] {
        assert!(!d.join("repos").exists() && !d.join("store/blobs").exists());
    }
    conditional_writes_through_both_replicas_move_the_tag_once(&a, &b, pushed.trim());
}

/// Forty conditional PUTs (what a cache export sends), half through each
/// replica, all expecting the tag at `at`: the database's tag lock lets
/// exactly one move it. (Twenty at once on a replica are more than its 16
/// database connections: writers waiting for the tag must not hold them
/// all.)
fn conditional_writes_through_both_replicas_move_the_tag_once(a: &Server, b: &Server, at: &str) {
    let http = reqwest::Client::new();
    let manifest_url = |s: &Server| format!("{}/v2/shared/app/manifests/1", s.url());
    crate::control::rt().block_on(async {
        let got = http
            .get(manifest_url(a))
            .basic_auth("ci", Some(&a.token))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(got.headers()["etag"], format!("\"{at}\"").as_str());
        let media_type = got.headers()["content-type"].to_str().unwrap().to_owned();
        let manifest: serde_json::Value = got.json().await.unwrap();
        let puts = (0..40).map(|i| {
            let mut m = manifest.clone();
            m["annotations"] = serde_json::json!({ "racer": i.to_string() });
            let s = if i % 2 == 0 { a } else { b };
            http.put(manifest_url(s))
                .basic_auth("ci", Some(&s.token))
                .header("content-type", &media_type)
                .header("if-match", format!("\"{at}\""))
                .body(serde_json::to_vec(&m).unwrap())
                .send()
        });
        let answers: Vec<u16> = futures_util::future::join_all(puts)
            .await
            .into_iter()
            .map(|r| r.unwrap().status().as_u16())
            .collect();
        let won = answers.iter().filter(|s| **s == 201).count();
        let refused = answers.iter().filter(|s| **s == 412).count();
        assert_eq!((won, refused), (1, 39), "{answers:?}");
    });
}

/// Two replicas on one PostgreSQL and one Azurite container, two agents on each:
/// 50 builds submitted half through each all succeed, each run once (no
/// fence granted twice, no agent holding two runs at once), their images
/// pushed through the replica their agent talks to and all listed by both.
#[test]
fn fifty_builds_through_two_replicas_on_four_agents() {
    use crate::control::{
        Plane, context, full_log, make_pool, need_root, rt, spec, submit, wait_state,
    };
    use api::RunState;
    use std::collections::{BTreeMap, HashSet};
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pg = crate::control::Postgres::start(tmp.path());
    let az_dir = tmp.path().join("azurite");
    std::fs::create_dir_all(&az_dir).unwrap();
    let az = azurite(&az_dir);
    create_container(az.port, "cluster");
    let key = tmp.path().join("secret.key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    let mut args = testkit::services::azure_args(az.port, "cluster");
    args.extend([
        "--database".into(),
        pg.url(),
        "--secret-key-file".into(),
        key.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    let mut a = Plane::start(&dir_a, &args);
    std::fs::create_dir_all(dir_b.join("data")).unwrap();
    std::fs::copy(a.data.join("admin-token"), dir_b.join("data/admin-token")).unwrap();
    let mut b = Plane::start(&dir_b, &args);
    let rt = rt();
    let (ca, cb) = (a.client(), b.client());
    let token = rt.block_on(make_pool(&ca, "ci", 4));
    a.import_busybox();
    for i in 0..2 {
        a.start_agent("ci", &token, &format!("a{i}"));
        b.start_agent("ci", &token, &format!("b{i}"));
    }
    // Each run names the registry (its base and its tag) by the replica it
    // is submitted through: without a load balancer, that is the name its
    // submitter knows.
    let df = |host: &str| {
        format!("FROM {host}/base/busybox:1\nARG N\nRUN echo build-$N > /n.txt && cat /n.txt\n")
    };
    let dir = context(&tmp.path().join("ctx"), &df(&a.host()));
    let hosts = [a.host(), b.host()];
    let runs = rt.block_on(async {
        let d = crate::control::upload(&ca, &dir).await;
        // B must know the context too: its own token uploads the bytes.
        crate::control::upload(&cb, &dir).await;
        let submits = (0..50).map(|n| {
            let c = if n % 2 == 0 { ca.clone() } else { cb.clone() };
            let host = &hosts[n % 2];
            let mut s = spec(&d, &df(host), &format!("{host}/many:{n}"));
            s.build_args.insert("N".into(), n.to_string());
            async move { submit(&c, "ci", s).await }
        });
        futures_util::future::join_all(submits).await
    });
    let mut fences = HashSet::new();
    let mut by_agent: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (n, r) in runs.iter().enumerate() {
        let r = rt.block_on(wait_state(&ca, &r.id, RunState::is_final, 600));
        if r.state != RunState::Succeeded {
            let log: String = rt
                .block_on(full_log(&ca, &r.id))
                .into_iter()
                .map(|c| c.data)
                .collect();
            panic!("{} {:?} on {:?}:\n{log}", r.id, r.state, r.attempts);
        }
        assert_eq!(r.attempts.len(), 1, "{r:?}");
        let at = &r.attempts[0];
        assert!(fences.insert(at.fence), "fence {} granted twice", at.fence);
        by_agent
            .entry(at.agent.clone())
            .or_default()
            .push((at.started_at, at.ended_at.unwrap()));
        let log: String = rt
            .block_on(full_log(&cb, &r.id))
            .into_iter()
            .map(|c| c.data)
            .collect();
        assert!(log.contains(&format!("build-{n}")), "{log}");
    }
    assert!(
        by_agent.keys().any(|k| k.starts_with('a')) && by_agent.keys().any(|k| k.starts_with('b')),
        "agents of both replicas built: {by_agent:?}"
    );
    for (agent, mut spans) in by_agent {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{agent} held two runs at once: {w:?}");
        }
    }
    // Every image is in the shared registry, whichever replica took it.
    let tags: Vec<serde_json::Value> = rt.block_on(async {
        let http = reqwest::Client::new();
        let mut out = Vec::new();
        for p in [&a, &b] {
            let v: serde_json::Value = http
                .get(format!("{}/v2/many/tags/list", p.url))
                .basic_auth("admin", Some(&p.token))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            out.push(v);
        }
        out
    });
    for t in &tags {
        assert_eq!(t["tags"].as_array().map(Vec::len), Some(50), "{t}");
    }
}

/// Azurite stopped mid-upload: the chunk or the commit fails with a `5xx`
/// (which clients retry) within seconds, nothing half-written becomes a
/// blob, and once Azurite is back the same upload completes.
#[test]
fn a_store_that_stops_mid_upload_fails_with_5xx_and_shows_nothing_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("azurite");
    let mut az = azurite(&dir);
    let port = az.port;
    create_container(port, "flaky");
    let (args, env) = azure_args(port, "flaky");
    let srv = start(&tmp.path().join("data"), &args, &env);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_rt = rt.enter();
    // A new connection per request: the server answers the failed chunk
    // before reading its body and then closes that connection, which a
    // pooled client would try to reuse.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let base = format!("{}/v2/flaky/app", srv.url());
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 249) as u8).collect();
    let digest = oci::Digest::sha256(&data);
    let auth = |r: reqwest::RequestBuilder| r.basic_auth("ci", Some(&srv.token));
    let at = |loc: &str| {
        if loc.starts_with("http") {
            loc.to_owned()
        } else {
            format!("{}{loc}", srv.url())
        }
    };
    let send = |r: reqwest::RequestBuilder| rt.block_on(r.send()).unwrap();
    let started = send(auth(http.post(format!("{base}/blobs/uploads/"))));
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let patched = send(
        auth(http.patch(at(&location)))
            .header("content-type", "application/octet-stream")
            .body(data[..1 << 20].to_vec()),
    );
    assert_eq!(patched.status(), 202);
    let location = patched.headers()["location"].to_str().unwrap().to_owned();

    // Azurite stops (SIGTERM: it saves its own state, so it comes back
    // with what it stored): the next chunk fails with a 5xx, in seconds.
    let _ = Command::new("kill")
        .args(["-TERM", &az.child.id().to_string()])
        .status();
    let _ = az.child.wait();
    let t = Instant::now();
    let failed = send(
        auth(http.patch(at(&location)))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{}-{}", 1 << 20, (2 << 20) - 1))
            .body(data[1 << 20..2 << 20].to_vec()),
    );
    assert!(failed.status().is_server_error(), "{}", failed.status());
    assert!(t.elapsed() < Duration::from_secs(50), "{:?}", t.elapsed());

    // Back on the same port and data: no blob of the digest exists, and
    // the upload goes on from what was stored.
    az = azurite_on(&dir, port);
    let head = send(auth(http.head(format!("{base}/blobs/{digest}"))));
    assert_eq!(head.status(), 404, "a half-written blob is visible");
    let status = send(auth(http.get(at(&location))));
    assert_eq!(status.status(), 204);
    let range = status.headers()["range"].to_str().unwrap().to_owned();
    let have: usize = range.trim_start_matches("0-").parse::<usize>().unwrap() + 1;
    let sep = if at(&location).contains('?') {
        '&'
    } else {
        '?'
    };
    let done = send(
        auth(http.put(format!("{}{sep}digest={digest}", at(&location))))
            .header("content-type", "application/octet-stream")
            .body(data[have..].to_vec()),
    );
    assert_eq!(done.status(), 201);
    let head = send(auth(http.head(format!("{base}/blobs/{digest}"))));
    assert_eq!(head.status(), 200);
    drop(az);
}

/// A wrong database URL stops the server at once with one line naming the
/// database (without its password) and what is wrong: nothing listening,
/// or no such database on a real PostgreSQL.
#[test]
fn a_wrong_database_is_one_error_at_start() {
    if !crate::control::need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = testkit::services::free_port();
    let err = refused(
        &tmp.path().join("d1"),
        &[
            "--database".into(),
            format!("postgres://app:hunter22@127.0.0.1:{port}/slipway"),
        ],
        &[],
    );
    assert!(
        err.contains(&format!(
            "database postgres://app:***@127.0.0.1:{port}/slipway"
        )) && err.contains("refused")
            && !err.contains("hunter22"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let pg = crate::control::Postgres::start(tmp.path());
    let wrong = pg.url().replace("/slipway", "/nosuch");
    let err = refused(&tmp.path().join("d2"), &["--database".into(), wrong], &[]);
    assert!(err.contains("\"nosuch\" does not exist"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
