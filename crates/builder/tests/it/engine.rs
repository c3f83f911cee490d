//! `builder::build` in process, without a registry or a sandbox: two
//! `FROM scratch` stages (ARG, ENV, WORKDIR, COPY with `--chmod`,
//! `.dockerignore`, heredocs, `COPY --from` the first stage, LABEL, CMD)
//! written as an OCI archive, whose index, manifest, config and layers are
//! read back; then the same build again, every layer step from the cache
//! and the same image.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use builder::{BuildRequest, LayerOptions, LayerStore, OciArchive, Progress};
use regclient::{Client, ClientConfig, Platform};
use sandbox::{InitCommand, Mode, Sandbox, SandboxConfig};
use serde_json::Value;
use sha2::Digest as _;

use crate::require_root;

const DOCKERFILE: &str = r#"FROM scratch AS assets
COPY greeting.txt /assets/
COPY --chmod=0600 secret.conf /assets/

FROM scratch
ARG NAME=world
ENV GREETING=hello-$NAME
WORKDIR /app
COPY . /app/
COPY <<EOF /app/notes.txt
made by $NAME
EOF
COPY --from=assets /assets/ /app/assets/
LABEL org.example.stage=final
CMD ["/app/run"]
"#;

/// A tar archive's entries: path → (mode, uid, gid, content); other than
/// regular files with a placeholder content.
fn tar_files(bytes: &[u8]) -> BTreeMap<String, (u32, u64, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in tar::Archive::new(bytes).entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let h = e.header().clone();
        if h.entry_type() != tar::EntryType::Regular {
            let what = format!("<{:?}>", h.entry_type()).into_bytes();
            out.insert(path, (h.mode().unwrap() & 0o7777, 0, 0, what));
            continue;
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        // The archive's own entries carry no owner: u64::MAX, never 0.
        let owner = (h.uid().unwrap_or(u64::MAX), h.gid().unwrap_or(u64::MAX));
        out.insert(path, (h.mode().unwrap() & 0o7777, owner.0, owner.1, data));
    }
    out
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn write(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

async fn build(dir: &Path, archive: &Path) -> (builder::BuildResult, String) {
    let request = BuildRequest {
        allow_insecure: false,
        context: dir.join("ctx"),
        dockerfile: dir.join("ctx/Dockerfile"),
        tags: Vec::new(),
        build_args: BTreeMap::from([("NAME".to_owned(), "slipway".to_owned())]),
        target: None,
        platform: Platform::default(),
        work_dir: dir.join("work"),
        // SOURCE_DATE_EPOCH of `created`: every time in the image is it.
        layer_options: LayerOptions {
            source_date_epoch: Some(1_714_521_600),
            ..LayerOptions::default()
        },
        cache_dir: Some(dir.join("cache")),
        created: "2024-05-01T00:00:00Z".into(),
        secrets: BTreeMap::new(),
        labels: BTreeMap::from([("org.example.by".to_owned(), "test".to_owned())]),
        run_limits: Default::default(),
        cache_mounts_dir: dir.join("cache-mounts"),
        oci_archive: Some(OciArchive {
            dest: archive.to_path_buf(),
            name: Some("example.test/app:1".parse().unwrap()),
        }),
        progress: Progress::Plain,
        cache_from: Vec::new(),
        cache_to: None,
        cache_to_ignore_error: false,
        context_excludes: Vec::new(),
        ssh: BTreeMap::new(),
    };
    let client = Arc::new(Client::new(ClientConfig::default()).unwrap());
    let store = LayerStore::open(dir.join("layers"), false).unwrap();
    // No RUN: the sandbox is never started.
    let init = InitCommand {
        program: "/nonexistent/slipway".into(),
        args: vec!["sandbox-init".into()],
    };
    let sandbox = Sandbox::new(SandboxConfig::new(Mode::Root, init, dir.join("sandbox")));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = builder::build(&request, &client, &store, &sandbox, &mut out, &mut err).await;
    let log = String::from_utf8_lossy(&out).into_owned();
    let result = result
        .unwrap_or_else(|e| panic!("build failed: {e}\n{log}{}", String::from_utf8_lossy(&err)));
    (result, log)
}

#[tokio::test]
async fn scratch_stages_copy_workdir_env_into_an_oci_archive() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    write(&ctx.join("Dockerfile"), DOCKERFILE, 0o644);
    write(
        &ctx.join(".dockerignore"),
        "ignored.txt\nDockerfile\n.dockerignore\n",
        0o644,
    );
    write(&ctx.join("greeting.txt"), "hi from assets\n", 0o644);
    write(&ctx.join("secret.conf"), "key=value\n", 0o644);
    write(&ctx.join("ignored.txt"), "never copied\n", 0o644);
    write(&ctx.join("src/main.sh"), "#!/bin/sh\necho hi\n", 0o755);
    let archive = dir.path().join("image.tar");

    let (result, log) = build(dir.path(), &archive).await;
    for line in [
        "#### [1/3] FROM scratch",
        "#### [2/3] COPY greeting.txt /assets/",
        "#### [1/9] FROM scratch",
        "#### [4/9] WORKDIR /app",
        "#### [6/9] COPY <<EOF /app/notes.txt",
        "#### [7/9] COPY /assets/ /app/assets/",
    ] {
        assert!(log.lines().any(|l| l == line), "no {line:?} in\n{log}");
    }

    // The archive: an OCI layout whose index names the image built.
    let files = tar_files(&std::fs::read(&archive).unwrap());
    let blob = |d: &str| {
        let (alg, hex) = d.split_once(':').unwrap();
        files[&format!("blobs/{alg}/{hex}")].3.clone()
    };
    assert_eq!(
        json(&files["oci-layout"].3),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );
    let index = json(&files["index.json"].3);
    let descriptor = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(descriptor["digest"], result.manifest_digest.to_string());
    assert_eq!(
        descriptor["annotations"]["org.opencontainers.image.ref.name"],
        "1"
    );
    let manifest_bytes = blob(descriptor["digest"].as_str().unwrap());
    assert_eq!(manifest_bytes, result.manifest);
    assert_eq!(sha256(&manifest_bytes), result.manifest_digest.to_string());
    let manifest = json(&manifest_bytes);
    let config_bytes = blob(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config_bytes, result.config);
    assert_eq!(sha256(&config_bytes), manifest["config"]["digest"]);

    // The config: ENV expanded with the build arg, WORKDIR, CMD, labels
    // (the Dockerfile's and --label), the default PATH of scratch.
    let config = json(&config_bytes);
    let c = &config["config"];
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"GREETING=hello-slipway"), "{env:?}");
    assert!(
        env.iter().any(|e| e.starts_with("PATH=/usr/local/sbin:")),
        "{env:?}"
    );
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["Cmd"], serde_json::json!(["/app/run"]));
    assert_eq!(c["Labels"]["org.example.stage"], "final");
    assert_eq!(c["Labels"]["org.example.by"], "test");
    assert_eq!(config["created"], "2024-05-01T00:00:00Z");
    let history: Vec<(&str, bool)> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["created_by"].as_str().unwrap(),
                h["empty_layer"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("ENV GREETING=hello-$NAME", true),
            ("WORKDIR /app", false),
            ("COPY . /app/", false),
            ("COPY <<EOF /app/notes.txt\nmade by $NAME\nEOF", false),
            ("COPY --from=assets /assets/ /app/assets/", false),
            ("LABEL org.example.stage=final", true),
            ("CMD [\"/app/run\"]", true),
        ]
    );

    // The layers: one per WORKDIR/COPY, each diffID the digest of the tar.
    let layers = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    assert_eq!(diff_ids.len(), 4);
    let mut contents = Vec::new();
    for (l, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(l["mediaType"], oci::media_type::OCI_LAYER_GZIP);
        let gz = blob(l["digest"].as_str().unwrap());
        assert_eq!(gz.len() as u64, l["size"].as_u64().unwrap());
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(&sha256(&tar), diff_id);
        contents.push(tar_files(&tar));
    }
    let names = |i: usize| contents[i].keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(0), ["app"]);
    assert_eq!(contents[0]["app"], (0o755, 0, 0, b"<Directory>".to_vec()));
    // The context minus .dockerignore, owned by root, modes kept.
    assert_eq!(
        names(1),
        [
            "app",
            "app/greeting.txt",
            "app/secret.conf",
            "app/src",
            "app/src/main.sh"
        ]
    );
    assert_eq!(
        contents[1]["app/src/main.sh"],
        (0o755, 0, 0, b"#!/bin/sh\necho hi\n".to_vec())
    );
    assert_eq!(
        contents[1]["app/greeting.txt"],
        (0o644, 0, 0, b"hi from assets\n".to_vec())
    );
    assert_eq!(contents[2]["app/notes.txt"].3, b"made by slipway\n");
    // From the first stage: its --chmod kept.
    assert_eq!(
        contents[3]["app/assets/greeting.txt"],
        (0o644, 0, 0, b"hi from assets\n".to_vec())
    );
    assert_eq!(
        contents[3]["app/assets/secret.conf"],
        (0o600, 0, 0, b"key=value\n".to_vec())
    );

    // Again: every layer step from the cache, the same image.
    std::fs::remove_file(&archive).unwrap();
    let (again, log) = build(dir.path(), &archive).await;
    assert_eq!(again.manifest_digest, result.manifest_digest, "{log}");
    assert_eq!(log.matches(" CACHED").count(), 6, "{log}");
    assert!(!log.contains(" DONE "), "{log}");
    assert!(archive.is_file());
}
