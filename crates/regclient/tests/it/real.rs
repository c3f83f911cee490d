//! Against real registries: Slipway (token flow) and Distribution (anonymous).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci::{Reference, media_type};
use regclient::{Credential, DockerConfig, Pushed, RegClientError};

use crate::{client_for, push_image, slipway, test_image};

#[tokio::test]
async fn push_pull_skip_and_mount_through_the_token_flow() {
    let reg = slipway().await;
    let host = reg.addr.to_string();
    let client = Arc::new(client_for(&host, Some(Credential::basic("ci", &reg.token))));
    let image = test_image(1, "amd64");
    assert_eq!(
        push_image(&client, &host, "team/app", &image).await,
        vec![Pushed::Uploaded; 3]
    );
    let r: Reference = format!("{host}/team/app:v1").parse().unwrap();
    let digest = client
        .put_manifest(&r, media_type::OCI_MANIFEST, image.manifest.clone())
        .await
        .unwrap();
    // A second push uploads nothing.
    assert_eq!(
        push_image(&client, &host, "team/app", &image).await,
        vec![Pushed::Existed; 3]
    );

    let got = client.get_manifest(&r).await.unwrap();
    assert_eq!(got.digest, digest);
    assert_eq!(got.bytes, image.manifest);
    let mut buf = Vec::new();
    let (d, bytes, _) = &image.blobs[1];
    assert_eq!(
        client
            .get_blob(&host, "team/app", d, &mut buf)
            .await
            .unwrap(),
        bytes.len() as u64
    );
    assert_eq!(&buf[..], &bytes[..]);

    // Same registry: blobs are mounted across repositories, not re-uploaded.
    assert!(
        client
            .mount_blob(&host, "team/copy", d, "team/app")
            .await
            .unwrap()
    );
    let dst: Reference = format!("{host}/team/copy:v1").parse().unwrap();
    assert_eq!(client.copy_image(&r, &dst).await.unwrap(), digest);
    for (d, _, _) in &image.blobs {
        assert!(
            client
                .blob_exists(&host, "team/copy", d)
                .await
                .unwrap()
                .is_some()
        );
    }
    // A blob that is nowhere cannot be mounted.
    let missing = oci::Digest::sha256(b"missing");
    assert!(
        !client
            .mount_blob(&host, "team/copy", &missing, "team/app")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn refused_without_or_with_wrong_credentials_and_config_json_works() {
    let reg = slipway().await;
    let host = reg.addr.to_string();
    let r: Reference = format!("{host}/team/app:v1").parse().unwrap();
    let err = client_for(&host, None).get_manifest(&r).await.unwrap_err();
    assert!(matches!(err, RegClientError::Unauthorized { .. }), "{err}");
    assert!(
        err.to_string().contains("no credential is configured"),
        "{err}"
    );
    let err = client_for(&host, Some(Credential::basic("ci", "slw_wrong")))
        .get_manifest(&r)
        .await
        .unwrap_err();
    assert!(matches!(err, RegClientError::Unauthorized { .. }), "{err}");

    // Credentials from a Docker config.json file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let auth = base64_encode(&format!("ci:{}", reg.token));
    std::fs::write(
        &path,
        format!(r#"{{"auths":{{"http://{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let mut config = regclient::ClientConfig::default();
    config
        .credentials
        .merge(&DockerConfig::load(&path).unwrap());
    let client = Arc::new(regclient::Client::new(config).unwrap());
    let image = test_image(2, "amd64");
    push_image(&client, &host, "team/app", &image).await;
    client
        .put_manifest(&r, media_type::OCI_MANIFEST, image.manifest.clone())
        .await
        .unwrap();
    assert_eq!(client.get_manifest(&r).await.unwrap().bytes, image.manifest);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn index_resolves_the_requested_platform() {
    let reg = slipway().await;
    let host = reg.addr.to_string();
    let client = Arc::new(client_for(&host, Some(Credential::basic("ci", &reg.token))));
    let mut entries = Vec::new();
    for (seed, arch) in [(3u8, "amd64"), (4, "arm64")] {
        let image = test_image(seed, arch);
        push_image(&client, &host, "multi", &image).await;
        let at: Reference = format!("{host}/multi:{arch}").parse().unwrap();
        let d = client
            .put_manifest(&at, media_type::OCI_MANIFEST, image.manifest.clone())
            .await
            .unwrap();
        entries.push(serde_json::json!({
            "mediaType": media_type::OCI_MANIFEST, "digest": d.to_string(),
            "size": image.manifest.len(), "platform": {"os": "linux", "architecture": arch}
        }));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": entries});
    let r: Reference = format!("{host}/multi:latest").parse().unwrap();
    client
        .put_manifest(
            &r,
            media_type::OCI_INDEX,
            serde_json::to_vec(&index).unwrap().into(),
        )
        .await
        .unwrap();
    let amd = client.resolve_image(&r, &Default::default()).await.unwrap();
    assert_eq!(amd.digest.to_string(), entries[0]["digest"]);
    let arm = client
        .resolve_image(&r, &"linux/arm64".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(arm.digest.to_string(), entries[1]["digest"]);
    let err = client
        .resolve_image(&r, &"linux/s390x".parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linux/s390x") && err.contains("linux/arm64"),
        "{err}"
    );
}

struct Distribution {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn distribution() -> Distribution {
    let bin = ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("docker-registry is not installed: run ./scripts/test.sh, which installs it");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Distribution {
        child,
        host: format!("127.0.0.1:{port}"),
        _dir: dir,
    }
}

#[tokio::test]
async fn copies_between_registries_anonymous_destination() {
    let reg = slipway().await;
    let dist = distribution();
    let host = reg.addr.to_string();
    let client = Arc::new(client_for(&host, Some(Credential::basic("ci", &reg.token))));
    let image = test_image(5, "amd64");
    push_image(&client, &host, "src/app", &image).await;
    let src: Reference = format!("{host}/src/app:v1").parse().unwrap();
    let digest = client
        .put_manifest(&src, media_type::OCI_MANIFEST, image.manifest.clone())
        .await
        .unwrap();
    let dst: Reference = format!("{}/dst/app:v1", dist.host).parse().unwrap();
    assert_eq!(client.copy_image(&src, &dst).await.unwrap(), digest);
    // Read back from Distribution with a client that has no credentials at all.
    let anon = client_for(&dist.host, None);
    let got = anon.get_manifest(&dst).await.unwrap();
    assert_eq!(got.digest, digest);
    let mut buf = Vec::new();
    anon.get_blob(&dist.host, "dst/app", &image.blobs[2].0, &mut buf)
        .await
        .unwrap();
    assert_eq!(&buf[..], &image.blobs[2].1[..]);
}
