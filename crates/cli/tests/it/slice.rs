//! The builder's pieces composed, end to end, without a daemon: pull a base
//! image from `slipway server` into the layer store, run a RUN step in the
//! sandbox (through `slipway sandbox-init`) on an overlay of its layers,
//! export the upper dir as a layer, assemble and push the new image, and let
//! real consumers (skopeo, umoci, crane) read it back.

use std::process::Command;
use std::sync::Arc;

use builder::{LayerOptions, LayerStore, NewImage, write_layer};
use oci::{Reference, media_type};
use regclient::{Client, ClientConfig, Credential};
use sandbox::{InitCommand, Mode, RootFs, RunSpec, Sandbox, SandboxConfig};

use crate::harness::{Server, make_image, ok, tool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_step_on_pulled_base_is_pushed_and_consumed() {
    let Some(fx) = fixture() else { return };
    let (tmp, srv, host) = (&fx.tmp, &fx.srv, fx.srv.addr.clone());

    let mut config = ClientConfig::default();
    config
        .credentials
        .insert(&host, Credential::basic("ci", &srv.token));
    let client = Arc::new(Client::new(config).unwrap());
    let base: Reference = format!("{host}/base/busybox:v1").parse().unwrap();
    let store = LayerStore::open(tmp.path().join("layers"), false).unwrap();
    let pulled = store
        .pull(&client, &base, &Default::default())
        .await
        .unwrap();

    // RUN, in the sandbox, on an overlay of the pulled layers.
    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let rootfs = RootFs {
        lower: pulled.layers.iter().rev().cloned().collect(),
        upper: upper.clone(),
        work,
    };
    let script = "echo built-by-slipway > /hello && rm /srv/files/f1.txt && hostname > /host";
    let spec = RunSpec::new(
        rootfs,
        vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            script.into(),
        ],
    );
    let init = InitCommand {
        program: env!("CARGO_BIN_EXE_slipway").into(),
        args: vec!["sandbox-init".into()],
    };
    let sb = Sandbox::new(SandboxConfig::new(
        Mode::detect().unwrap(),
        init,
        tmp.path().join("state"),
    ));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = sb
        .run(&spec, &mut out, &mut err, &Default::default())
        .await
        .unwrap();
    assert!(
        outcome.status.success(),
        "RUN failed: {}",
        String::from_utf8_lossy(&err)
    );

    // The upper dir becomes a layer on top of the base.
    let layer_file = tmp.path().join("layer.tar.gz");
    let layer = write_layer(
        &upper,
        std::fs::File::create(&layer_file).unwrap(),
        &LayerOptions::default(),
    )
    .unwrap();
    let base_manifest = client.get_manifest(&base).await.unwrap();
    let mut image = NewImage::from_base(&base_manifest.manifest, &pulled.config).unwrap();
    let created = "2026-11-24T00:00:00Z";
    image.add_layer(&layer, &format!("RUN /bin/sh -c {script}"), created);
    image.container_config().insert(
        "Cmd".into(),
        serde_json::json!(["/bin/busybox", "cat", "/hello"]),
    );
    let built = image.finish(created).unwrap();

    // Push: base layers mount across repositories, the new ones upload.
    let repo = "app/hello";
    if let oci::ManifestKind::Image { layers, .. } = &base_manifest.manifest.kind {
        for l in layers {
            assert!(
                client
                    .mount_blob(&host, repo, &l.digest, &base.repository)
                    .await
                    .unwrap()
            );
        }
    }
    let bytes = bytes::Bytes::from(std::fs::read(&layer_file).unwrap());
    client
        .push_blob(&host, repo, &layer.digest, layer.size, || {
            reqwest::Body::from(bytes.clone())
        })
        .await
        .unwrap();
    let cfg = bytes::Bytes::from(built.config.clone());
    client
        .push_blob(&host, repo, &built.config_digest, cfg.len() as u64, || {
            reqwest::Body::from(cfg.clone())
        })
        .await
        .unwrap();
    let target: Reference = format!("{host}/{repo}:v1").parse().unwrap();
    let pushed = client
        .put_manifest(
            &target,
            media_type::OCI_MANIFEST,
            built.manifest.clone().into(),
        )
        .await
        .unwrap();
    assert_eq!(pushed, built.manifest_digest);

    // Real consumers read it.
    let docker_config = tmp.path().join("docker");
    ok(Command::new(tool("crane"))
        .env("DOCKER_CONFIG", &docker_config)
        .args(["auth", "login", &host, "-u", "ci", "-p", &srv.token]));
    ok(Command::new(tool("crane"))
        .env("DOCKER_CONFIG", &docker_config)
        .args([
            "validate",
            "--insecure",
            "--remote",
            &format!("{host}/{repo}:v1"),
        ]));
    let out_layout = tmp.path().join("out");
    ok(Command::new(tool("skopeo"))
        .env("REGISTRY_AUTH_FILE", tmp.path().join("none.json"))
        .args([
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            &srv.creds(),
        ])
        .arg(format!("docker://{host}/{repo}:v1"))
        .arg(format!("oci:{}:v1", out_layout.display())));
    let bundle = tmp.path().join("bundle");
    ok(Command::new(tool("umoci"))
        .args(["unpack", "--image", &format!("{}:v1", out_layout.display())])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("hello")).unwrap(),
        "built-by-slipway\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("host")).unwrap(),
        "sandbox\n"
    );
    assert!(
        !rootfs.join("srv/files/f1.txt").exists(),
        "the RUN's deletion was lost"
    );
    assert!(rootfs.join("srv/files/f2.txt").is_file() && rootfs.join("bin/busybox").is_file());
    for scaffolding in ["etc/hosts", "etc/resolv.conf", "run/secrets", "proc/1"] {
        assert!(
            !rootfs.join(scaffolding).exists(),
            "{scaffolding} leaked into the layer"
        );
    }
    let config: serde_json::Value = serde_json::from_slice(&built.config).unwrap();
    assert_eq!(config["config"]["Cmd"][2], "/hello");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 4);
}

/// What every test here starts from: a `slipway server` holding
/// `base/busybox:v1` (made with umoci), and a Docker config with its
/// credentials. `None` when not root outside CI (in CI that fails instead).
pub(crate) struct Fixture {
    pub tmp: tempfile::TempDir,
    pub srv: Server,
    pub docker: std::path::PathBuf,
}

pub(crate) fn fixture() -> Option<Fixture> {
    if !testkit::root_or_skip("this build test") {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = make_image(tmp.path());
    let srv = Server::start(&tmp.path().join("data"));
    let host = &srv.addr;
    ok(Command::new(tool("skopeo"))
        .env("REGISTRY_AUTH_FILE", tmp.path().join("none.json"))
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &srv.creds(),
        ])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{host}/base/busybox:v1")));
    let docker = tmp.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            base64(&format!("ci:{}", srv.token))
        ),
    )
    .unwrap();
    Some(Fixture { tmp, srv, docker })
}

fn base64(s: &str) -> String {
    // Small enough to not need a crate in the tests: RFC 4648 with padding.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn slipway_build_local_builds_pushes_and_reports_failures() {
    let Some(fx) = fixture() else { return };
    let (tmp, host, docker) = (&fx.tmp, fx.srv.addr.clone(), fx.docker.clone());
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(ctx.join("sub")).unwrap();
    std::fs::write(ctx.join("greet.txt"), "world").unwrap();
    std::fs::write(ctx.join("sub/x.txt"), "x\n").unwrap();
    std::fs::write(ctx.join("sub/secret.txt"), "do not ship").unwrap();
    std::fs::write(ctx.join("sub/secret-keep"), "ship").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "sub/secret*\n!sub/secret-keep\n").unwrap();
    std::os::unix::fs::symlink("/etc", ctx.join("escape")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            r#"FROM {host}/base/busybox:v1
SHELL ["/bin/busybox", "sh", "-c"]
ARG WHO=nobody
ENV GREETING=hello
WORKDIR /app
COPY greet.txt ./
COPY sub/ ./sub/
RUN echo "$GREETING $WHO from $(busybox cat greet.txt)" > out.txt && busybox rm /srv/files/f1.txt
LABEL org.example.built-by=slipway
EXPOSE 8080
CMD ["/bin/busybox", "cat", "/app/out.txt"]
RUN echo 'app:x:1001:1002::/home/app:/bin/sh' > /etc/passwd && echo 'app:x:1002:' > /etc/group
COPY --chown=app --chmod=640 greet.txt /owned-by-name.txt
COPY --chown=1234:app sub/x.txt /owned-by-ids.txt
"#
        ),
    )
    .unwrap();
    let slipway = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_slipway"));
        c.env("DOCKER_CONFIG", &docker)
            .args(["build", "--local", "--data"])
            .arg(tmp.path().join("sl"));
        c
    };
    let reference = format!("{host}/app/built:v1");
    let printed = ok(slipway()
        .args(["-t", &reference, "--build-arg", "WHO=tests", "--iidfile"])
        .arg(tmp.path().join("iid"))
        .arg(&ctx));
    let iid = std::fs::read_to_string(tmp.path().join("iid")).unwrap();
    assert!(printed.contains(&format!("{reference}@{iid}")), "{printed}");
    assert!(printed.contains("#### [8/14] RUN"), "{printed}");

    ok(Command::new(tool("crane"))
        .env("DOCKER_CONFIG", &docker)
        .args(["validate", "--insecure", "--remote", &reference]));
    let out_layout = tmp.path().join("out");
    ok(Command::new(tool("skopeo"))
        .env("REGISTRY_AUTH_FILE", docker.join("config.json"))
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:v1", out_layout.display())));
    let bundle = tmp.path().join("bundle");
    ok(Command::new(tool("umoci"))
        .args(["unpack", "--image", &format!("{}:v1", out_layout.display())])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("app/out.txt")).unwrap(),
        "hello tests from world\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("app/sub/x.txt")).unwrap(),
        "x\n"
    );
    assert!(!rootfs.join("srv/files/f1.txt").exists() && rootfs.join("srv/files/f2.txt").exists());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["cwd"], "/app");
    assert!(
        config["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "GREETING=hello"),
        "{config}"
    );
    assert_eq!(config["process"]["args"][2], "/app/out.txt");
    assert_eq!(config["annotations"]["org.example.built-by"], "slipway");
    let image_config: serde_json::Value = serde_json::from_slice(
        &ok(Command::new(tool("skopeo"))
            .env("REGISTRY_AUTH_FILE", docker.join("config.json"))
            .args(["inspect", "--config", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}")))
        .into_bytes(),
    )
    .unwrap();
    let history: Vec<&str> = image_config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(
        history.contains(&"WORKDIR /app") && history.contains(&"EXPOSE 8080"),
        "{history:?}"
    );

    // A failing RUN: non-zero exit, the line and the exit code.
    std::fs::write(ctx.join("Dockerfile.fail"), format!("FROM {host}/base/busybox:v1\nENV A=1\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo about to fail >&2; exit 3\"]\n")).unwrap();
    let out = crate::harness::run(
        slipway()
            .args(["--no-push", "-f"])
            .arg(ctx.join("Dockerfile.fail"))
            .arg(&ctx),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Dockerfile.fail:3: RUN") && err.contains("exit code 3"),
        "{err}"
    );
    assert!(
        err.contains("about to fail"),
        "the RUN's own output is missing: {err}"
    );

    // A symlink in the context cannot reach a host file.
    std::fs::write(
        ctx.join("Dockerfile.escape"),
        format!("FROM {host}/base/busybox:v1\nCOPY escape/hostname /stolen\n"),
    )
    .unwrap();
    let out = crate::harness::run(
        slipway()
            .args(["--no-push", "-f"])
            .arg(ctx.join("Dockerfile.escape"))
            .arg(&ctx),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Dockerfile.escape:2: COPY escape/hostname"),
        "{err}"
    );

    // What is not supported yet is refused with its line, never skipped.
    std::fs::write(
        ctx.join("Dockerfile.vol"),
        format!("FROM {host}/base/busybox:v1\nRUN --security=insecure true\n"),
    )
    .unwrap();
    let out = crate::harness::run(
        slipway()
            .args(["--no-push", "-f"])
            .arg(ctx.join("Dockerfile.vol"))
            .arg(&ctx),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Dockerfile.vol:2: RUN is not supported"),
        "{err}"
    );
}

#[test]
fn multi_stage_build_copies_from_a_stage_and_skips_unneeded_ones() {
    let Some(fx) = fixture() else { return };
    let (tmp, host, docker) = (&fx.tmp, fx.srv.addr.clone(), fx.docker.clone());
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            r#"FROM {host}/base/busybox:v1 AS build
SHELL ["/bin/busybox", "sh", "-c"]
RUN busybox mkdir -p /out && echo compiled > /out/app && busybox chmod 750 /out/app && busybox rm /srv/files/f2.txt

FROM {host}/base/busybox:v1 AS unused
RUN ["/bin/busybox", "false"]

FROM build AS tested
RUN ["/bin/busybox", "test", "-x", "/out/app"]

FROM {host}/base/busybox:v1
COPY --from=tested /out/app /usr/bin/app
COPY --from=0 /out /copied/
COPY --from={host}/base/busybox:v1 /srv/files/f2.txt /from-image.txt
"#
        ),
    )
    .unwrap();
    let reference = format!("{host}/app/multi:v1");
    let printed = ok(Command::new(env!("CARGO_BIN_EXE_slipway"))
        .env("DOCKER_CONFIG", &docker)
        .args(["build", "--local", "--data"])
        .arg(tmp.path().join("sl"))
        .args(["-t", &reference])
        .arg(&ctx));
    assert!(
        !printed.contains("false"),
        "the unneeded stage was built: {printed}"
    );
    let out_layout = tmp.path().join("out");
    ok(Command::new(tool("skopeo"))
        .env("REGISTRY_AUTH_FILE", docker.join("config.json"))
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:v1", out_layout.display())));
    let bundle = tmp.path().join("bundle");
    ok(Command::new(tool("umoci"))
        .args(["unpack", "--image", &format!("{}:v1", out_layout.display())])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let app = std::fs::metadata(rootfs.join("usr/bin/app")).unwrap();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("usr/bin/app")).unwrap(),
        "compiled\n"
    );
    assert_eq!(app.permissions().mode() & 0o777, 0o750);
    assert_eq!((app.uid(), app.gid()), (0, 0));
    assert!(rootfs.join("copied/app").is_file());
    // From the image: the build stage's deletion does not leak into it.
    assert_eq!(
        std::fs::read_to_string(rootfs.join("from-image.txt")).unwrap(),
        "file 2\n".repeat(100)
    );
    // The final stage is the base plus three COPY layers, nothing of `build`.
    assert!(rootfs.join("srv/files/f2.txt").is_file() && !rootfs.join("out").exists());
}

#[test]
fn add_extracts_local_archives_and_fetches_urls_with_checksums() {
    let Some(fx) = fixture() else { return };
    let (tmp, host, docker) = (&fx.tmp, fx.srv.addr.clone(), fx.docker.clone());
    // A web server on loopback for the URL source.
    let web = tmp.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("remote.txt"), "from the web\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _http = KillOnDrop(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(&web)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "http.server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let good = format!("sha256:{}", crate::harness::sha256_hex(b"from the web\n"));

    let ctx = tmp.path().join("ctx");
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("inner")).unwrap();
    std::fs::write(tree.join("inner/a.txt"), "archived\n").unwrap();
    std::fs::create_dir_all(&ctx).unwrap();
    ok(Command::new("tar")
        .arg("-czf")
        .arg(ctx.join("bundle.tar.gz"))
        .args(["--owner=77", "--group=88", "-C"])
        .arg(&tree)
        .arg("."));
    std::fs::write(ctx.join("plain.txt"), "plain\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {host}/base/busybox:v1\n\
             ADD bundle.tar.gz /unpacked/\n\
             ADD plain.txt /plain-copy.txt\n\
             ADD --checksum={good} http://127.0.0.1:{port}/remote.txt /web/\n"
        ),
    )
    .unwrap();
    let reference = format!("{host}/app/add:v1");
    let build = |dockerfile: &str, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_slipway"));
        c.env("DOCKER_CONFIG", &docker)
            .args(["build", "--local", "--data"])
            .arg(tmp.path().join("sl"))
            .args(extra)
            .arg("-f")
            .arg(ctx.join(dockerfile))
            .arg(&ctx);
        crate::harness::run(&mut c)
    };
    let out = build("Dockerfile", &["-t", &reference]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out_layout = tmp.path().join("out");
    ok(Command::new(tool("skopeo"))
        .env("REGISTRY_AUTH_FILE", docker.join("config.json"))
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:v1", out_layout.display())));
    let bundle = tmp.path().join("bundle");
    ok(Command::new(tool("umoci"))
        .args(["unpack", "--image", &format!("{}:v1", out_layout.display())])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        std::fs::read_to_string(rootfs.join("unpacked/inner/a.txt")).unwrap(),
        "archived\n"
    );
    let m = std::fs::metadata(rootfs.join("unpacked/inner/a.txt")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (77, 88),
        "the archive's owners were not kept"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("plain-copy.txt")).unwrap(),
        "plain\n"
    );
    let web_file = rootfs.join("web/remote.txt");
    assert_eq!(
        std::fs::read_to_string(&web_file).unwrap(),
        "from the web\n"
    );
    assert_eq!(
        std::fs::metadata(&web_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A wrong checksum fails the build and names the line.
    let bad = format!("sha256:{}", "0".repeat(64));
    std::fs::write(
        ctx.join("Dockerfile.bad"),
        format!("FROM {host}/base/busybox:v1\nADD --checksum={bad} http://127.0.0.1:{port}/remote.txt /web/\n"),
    )
    .unwrap();
    let out = build("Dockerfile.bad", &["--no-push"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("Dockerfile.bad:2")
            && err.contains("checksum is sha256:"),
        "{err}"
    );

    // --checksum on a local file is refused with its line, as in Docker.
    std::fs::write(
        ctx.join("Dockerfile.local"),
        format!("FROM {host}/base/busybox:v1\nADD --checksum={good} plain.txt /p\n"),
    )
    .unwrap();
    let out = build("Dockerfile.local", &["--no-push"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("Dockerfile.local:2")
            && err.contains("--checksum on a local source"),
        "{err}"
    );
}

#[test]
fn rebuilds_use_the_cache_until_a_copied_file_changes() {
    let Some(fx) = fixture() else { return };
    let (tmp, host, docker) = (&fx.tmp, fx.srv.addr.clone(), fx.docker.clone());
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("input.txt"), "first\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {host}/base/busybox:v1\n\
             SHELL [\"/bin/busybox\", \"sh\", \"-c\"]\n\
             RUN echo step-one-ran && echo one > /one\n\
             COPY input.txt /input.txt\n\
             RUN echo step-three-ran && busybox cat /input.txt > /copy\n"
        ),
    )
    .unwrap();
    let reference = format!("{host}/app/cached:v1");
    let iid = tmp.path().join("iid");
    let build = |extra: &[&str]| {
        let out = ok(Command::new(env!("CARGO_BIN_EXE_slipway"))
            .env("DOCKER_CONFIG", &docker)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["build", "--local", "--data"])
            .arg(tmp.path().join("sl"))
            .args(["-t", &reference, "--iidfile"])
            .arg(&iid)
            .args(extra)
            .arg(&ctx));
        (out, std::fs::read_to_string(&iid).unwrap())
    };
    // A RUN's own output is a line of its own; the step headers start with ####.
    let ran = |out: &str, step: &str| out.lines().any(|l| l == step);
    let (first, id1) = build(&[]);
    assert!(
        ran(&first, "step-one-ran") && ran(&first, "step-three-ran"),
        "{first}"
    );
    let (second, id2) = build(&[]);
    assert!(
        !ran(&second, "step-one-ran") && !ran(&second, "step-three-ran"),
        "{second}"
    );
    assert_eq!(second.matches("CACHED").count(), 3, "{second}");
    assert_eq!(id1, id2, "an unchanged rebuild gave a different image");

    std::fs::write(ctx.join("input.txt"), "second\n").unwrap();
    let (third, id3) = build(&[]);
    assert!(
        !ran(&third, "step-one-ran"),
        "the step before the change re-ran: {third}"
    );
    assert!(
        ran(&third, "step-three-ran"),
        "the step after the change was reused: {third}"
    );
    assert_ne!(id3, id2);
    let (fourth, _) = build(&["--no-cache"]);
    assert!(
        ran(&fourth, "step-one-ran") && !fourth.contains("CACHED"),
        "{fourth}"
    );
}
