//! `slipway build --local` features beyond the first slice, end to end with
//! the real binary against a real `slipway server`: secrets and the other
//! `RUN --mount` types, heredocs, HEALTHCHECK/VOLUME/ONBUILD, COPY wildcards
//! and `--exclude/--parents/--link`, the `--label`, `--metadata-file`,
//! `--output type=oci` and `--progress` flags, and RUN resource limits.
//! Every image is read back by skopeo and umoci, not by our own code.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{ok, run, sha256_hex, tool};
use crate::slice::{Fixture, fixture};

/// Every Dockerfile here starts from the fixture's busybox with its applets
/// installed, so shell-form RUN finds /bin/sh and friends.
fn base(host: &str) -> String {
    base_as(host, None)
}

fn base_as(host: &str, name: Option<&str>) -> String {
    let as_name = name.map(|n| format!(" AS {n}")).unwrap_or_default();
    format!(
        "FROM {host}/base/busybox:v1{as_name}\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n"
    )
}

fn slipway(fx: &Fixture) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slipway"));
    c.env("DOCKER_CONFIG", &fx.docker)
        .args(["build", "--local", "--progress", "plain", "--data"])
        .arg(fx.tmp.path().join("sl"));
    c
}

fn build(fx: &Fixture, ctx: &Path, dockerfile: &str, extra: &[&str]) -> Output {
    build_env(fx, ctx, dockerfile, extra, &[])
}

fn build_env(
    fx: &Fixture,
    ctx: &Path,
    dockerfile: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    run(slipway(fx).envs(env.iter().copied()).args(extra).arg(ctx))
}

fn must(out: Output) -> String {
    assert!(
        out.status.success(),
        "build failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copy `reference` into an OCI layout with skopeo; returns the layout dir.
fn fetch_layout(fx: &Fixture, reference: &str, name: &str) -> PathBuf {
    let layout = fx.tmp.path().join(format!("layout-{name}"));
    ok(Command::new(tool("skopeo"))
        .env("REGISTRY_AUTH_FILE", fx.docker.join("config.json"))
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:v1", layout.display())));
    layout
}

/// umoci's unpacked rootfs and runtime config of the image in `layout`.
fn unpack(fx: &Fixture, layout: &Path, name: &str) -> (PathBuf, serde_json::Value) {
    let bundle = fx.tmp.path().join(format!("bundle-{name}"));
    ok(Command::new(tool("umoci"))
        .args(["unpack", "--image", &format!("{}:v1", layout.display())])
        .arg(&bundle));
    let config =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    (bundle.join("rootfs"), config)
}

/// The image config as the registry serves it.
fn image_config(fx: &Fixture, reference: &str) -> serde_json::Value {
    serde_json::from_slice(
        ok(Command::new(tool("skopeo"))
            .env("REGISTRY_AUTH_FILE", fx.docker.join("config.json"))
            .args(["inspect", "--config", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}")))
        .as_bytes(),
    )
    .unwrap()
}

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn secrets_are_readable_in_run_and_in_no_layer_config_or_history() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // Random per run, so a match can only come from this build.
    let nonce = sha256_hex(format!("{:?}", std::time::SystemTime::now()).as_bytes());
    let file_secret = format!("file-secret-{}", &nonce[..24]);
    let env_secret = format!("env-secret-{}", &nonce[24..48]);
    let secret_file = fx.tmp.path().join("token.txt");
    std::fs::write(&secret_file, &file_secret).unwrap();
    let dockerfile = format!(
        "{}\
RUN --mount=type=secret,id=tok sha256sum /run/secrets/tok > /proof-default && stat -c '%u:%g %a' /run/secrets/tok >> /proof-default\n\
RUN --mount=type=secret,id=tok,target=/root/.npmrc,uid=1001,gid=7,mode=0440 stat -c '%u:%g %a' /root/.npmrc > /proof-target && sha256sum /root/.npmrc >> /proof-target\n\
RUN --mount=type=secret,id=envtok,env=TOKEN printf %s \"$TOKEN\" | sha256sum > /proof-env\n\
RUN --mount=type=secret,id=absent echo optional secrets may be missing > /proof-optional\n\
RUN --mount=type=secret,id=tok cp /run/secrets/tok /copy && rm /copy && echo done > /proof-cleanup\n",
        base(&host)
    );
    let reference = format!("{host}/app/secrets:v1");
    must(build_env(
        &fx,
        &ctx,
        &dockerfile,
        &[
            "-t",
            &reference,
            "--secret",
            &format!("id=tok,src={}", secret_file.display()),
            "--secret",
            "id=envtok,env=SLIPWAY_TEST_SECRET",
        ],
        &[("SLIPWAY_TEST_SECRET", &env_secret)],
    ));
    let layout = fetch_layout(&fx, &reference, "secrets");
    let (rootfs, _) = unpack(&fx, &layout, "secrets");
    let file_hash = sha256_hex(file_secret.as_bytes());
    let default = read(&rootfs, "proof-default");
    assert!(default.starts_with(&file_hash), "{default}");
    assert!(default.ends_with("0:0 400\n"), "{default}");
    let target = read(&rootfs, "proof-target");
    assert!(
        target.starts_with("1001:7 440\n") && target.contains(&file_hash),
        "{target}"
    );
    assert!(read(&rootfs, "proof-optional").contains("optional"));
    // Mount points and secret files stay out of the image.
    for p in ["run/secrets/tok", "root/.npmrc", "copy"] {
        assert!(!rootfs.join(p).exists(), "{p} leaked into the image");
    }
    let env_proof = read(&rootfs, "proof-env");
    assert!(
        env_proof.starts_with(&sha256_hex(env_secret.as_bytes())),
        "the env secret was not in $TOKEN: {env_proof}"
    );

    // Every blob of the pushed image: layers (compressed and not), config
    // and manifest hold neither secret.
    let mut scanned = 0;
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = e.unwrap().path();
        let raw = std::fs::read(&path).unwrap();
        let plain = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
        for bytes in [&raw, &plain.stdout] {
            for s in [&file_secret, &env_secret] {
                assert!(
                    !contains(bytes, s.as_bytes()),
                    "secret found in blob {}",
                    path.display()
                );
            }
        }
        scanned += 1;
    }
    assert!(scanned >= 8, "only {scanned} blobs scanned");
    let config = image_config(&fx, &reference);
    let text = config.to_string();
    assert!(!text.contains(&file_secret) && !text.contains(&env_secret));
    assert!(
        config["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["created_by"]
                .as_str()
                .is_some_and(|c| c.contains("--mount=type=secret,id=tok"))),
        "{config}"
    );

    // A required secret that was not given fails the build with its line.
    let out = build(
        &fx,
        &ctx,
        &format!(
            "{}RUN --mount=type=secret,id=nope,required true\n",
            base(&host)
        ),
        &["--no-push"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Dockerfile:3: RUN") && err.contains("nope"),
        "{err}"
    );
}

#[test]
fn cache_bind_and_tmpfs_mounts() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    std::fs::create_dir_all(ctx.join("data")).unwrap();
    std::fs::write(ctx.join("data/in.txt"), "from the context\n").unwrap();
    std::fs::write(ctx.join("data/secret.key"), "ignored\n").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "data/secret.key\n").unwrap();
    let dockerfile = format!(
        "{gen}\
    RUN echo generated > /gen.txt\n\
    {b}\
    RUN --mount=type=cache,target=/var/cache/app echo run >> /var/cache/app/count && wc -l < /var/cache/app/count > /cache-count\n\
    RUN --mount=type=bind,source=data,target=/mnt/data cat /mnt/data/in.txt > /from-bind && test ! -e /mnt/data/secret.key && echo ignored-ok > /ignore-proof\n\
    RUN --mount=type=bind,source=data,target=/mnt/rw,rw echo scribble > /mnt/rw/written && ls /mnt/rw > /rw-list\n\
    RUN --mount=type=bind,from=gen,source=/gen.txt,target=/g.txt cat /g.txt > /from-stage\n\
    RUN --mount=type=tmpfs,target=/scratch echo x > /scratch/f && grep -q ' /scratch tmpfs' /proc/mounts && echo tmpfs-ok > /tmpfs-proof\n",
        gen = base_as(&host, Some("gen")),
        b = base(&host)
    );
    let reference = format!("{host}/app/mounts:v1");
    must(build(&fx, &ctx, &dockerfile, &["-t", &reference]));
    let layout = fetch_layout(&fx, &reference, "mounts");
    let (rootfs, _) = unpack(&fx, &layout, "mounts");
    assert_eq!(read(&rootfs, "cache-count").trim(), "1");
    assert_eq!(read(&rootfs, "from-bind"), "from the context\n");
    assert_eq!(read(&rootfs, "ignore-proof"), "ignored-ok\n");
    assert!(read(&rootfs, "rw-list").contains("written"));
    assert!(
        !ctx.join("data/written").exists(),
        "an rw bind wrote into the context"
    );
    assert_eq!(read(&rootfs, "from-stage"), "generated\n");
    assert_eq!(read(&rootfs, "tmpfs-proof"), "tmpfs-ok\n");
    for p in [
        "var/cache/app/count",
        "scratch/f",
        "mnt/rw/written",
        "mnt/data/in.txt",
    ] {
        assert!(!rootfs.join(p).exists(), "{p} leaked into the image");
    }
    // The cache mount outlives the build (and --no-cache), as in BuildKit.
    must(build(
        &fx,
        &ctx,
        &dockerfile,
        &["-t", &reference, "--no-cache"],
    ));
    let layout = fetch_layout(&fx, &reference, "mounts2");
    let (rootfs, _) = unpack(&fx, &layout, "mounts2");
    assert_eq!(read(&rootfs, "cache-count").trim(), "2");
}

#[test]
fn heredocs_in_run_copy_and_add() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let dockerfile = format!(
        "{}\
RUN <<EOF\n\
echo one > /h1\n\
echo two >> /h1\n\
EOF\n\
RUN <<EOF\n\
#!/bin/sh\n\
echo \"script $0\" > /h2\n\
EOF\n\
RUN cat <<EOF > /h3\n\
redirected\n\
EOF\n\
RUN cat <<A > /h4 && cat <<B >> /h4\n\
first\n\
A\n\
second\n\
B\n\
ARG NAME=world\n\
COPY <<EOF /etc/greeting\n\
hello $NAME\n\
EOF\n\
COPY --chmod=755 <<'EOF' /usr/local/bin/raw\n\
echo $NAME stays\n\
EOF\n\
COPY <<-EOT <<EOF2 /dir/\n\
\ttabbed\n\
\tEOT\n\
second file\n\
EOF2\n\
ADD <<EOF /added.txt\n\
added\n\
EOF\n",
        base(&host)
    );
    let reference = format!("{host}/app/heredoc:v1");
    must(build(&fx, &ctx, &dockerfile, &["-t", &reference]));
    let layout = fetch_layout(&fx, &reference, "heredoc");
    let (rootfs, _) = unpack(&fx, &layout, "heredoc");
    assert_eq!(read(&rootfs, "h1"), "one\ntwo\n");
    assert_eq!(read(&rootfs, "h2"), "script /dev/pipes/EOF\n");
    assert_eq!(read(&rootfs, "h3"), "redirected\n");
    assert_eq!(read(&rootfs, "h4"), "first\nsecond\n");
    assert_eq!(read(&rootfs, "etc/greeting"), "hello world\n");
    assert_eq!(read(&rootfs, "usr/local/bin/raw"), "echo $NAME stays\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(rootfs.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/local/bin/raw"), 0o755);
    assert_eq!(mode("etc/greeting"), 0o644);
    assert_eq!(read(&rootfs, "dir/EOT"), "tabbed\n");
    assert_eq!(read(&rootfs, "dir/EOF2"), "second file\n");
    assert_eq!(read(&rootfs, "added.txt"), "added\n");
    assert!(!rootfs.join("dev/pipes").exists());
}

#[test]
fn healthcheck_volume_and_onbuild_are_recorded_and_triggers_run() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("child.txt"), "from the child's context\n").unwrap();
    let parent = format!("{host}/app/parent:v1");
    must(build(
        &fx,
        &ctx,
        &format!(
            "{}\
HEALTHCHECK --interval=30s --timeout=5s --start-period=1s --retries=3 CMD [\"/bin/busybox\", \"true\"]\n\
VOLUME /data /logs\n\
VOLUME [\"/json\"]\n\
ONBUILD RUN echo triggered > /onbuild.txt\n\
ONBUILD COPY child.txt /child.txt\n",
            base(&host)
        ),
        &["-t", &parent],
    ));
    let config = image_config(&fx, &parent);
    let c = &config["config"];
    assert_eq!(
        c["Healthcheck"],
        serde_json::json!({
            "Test": ["CMD", "/bin/busybox", "true"],
            "Interval": 30_000_000_000u64,
            "Timeout": 5_000_000_000u64,
            "StartPeriod": 1_000_000_000u64,
            "Retries": 3,
        }),
        "{config}"
    );
    assert_eq!(
        c["Volumes"],
        serde_json::json!({"/data": {}, "/logs": {}, "/json": {}})
    );
    assert_eq!(
        c["OnBuild"],
        serde_json::json!([
            "RUN echo triggered > /onbuild.txt",
            "COPY child.txt /child.txt"
        ])
    );
    // umoci reads the volumes too (as mounts it would need).
    let layout = fetch_layout(&fx, &parent, "parent");
    let (parent_root, _) = unpack(&fx, &layout, "parent");
    assert!(
        !parent_root.join("onbuild.txt").exists(),
        "a trigger ran in the image that declared it"
    );

    // FROM the parent: the triggers run first, then are gone.
    let child = format!("{host}/app/child:v1");
    let printed = must(build(
        &fx,
        &ctx,
        &format!("FROM {parent}\nRUN cat /onbuild.txt /child.txt > /seen\nHEALTHCHECK NONE\n"),
        &["-t", &child],
    ));
    assert!(printed.contains("RUN"), "{printed}");
    let config = image_config(&fx, &child);
    assert!(config["config"]["OnBuild"].is_null(), "{config}");
    assert_eq!(
        config["config"]["Healthcheck"],
        serde_json::json!({"Test": ["NONE"]})
    );
    assert_eq!(
        config["config"]["Volumes"],
        serde_json::json!({"/data": {}, "/logs": {}, "/json": {}})
    );
    let layout = fetch_layout(&fx, &child, "child");
    let (rootfs, _) = unpack(&fx, &layout, "child");
    assert_eq!(
        read(&rootfs, "seen"),
        "triggered\nfrom the child's context\n"
    );

    // FROM a stage with ONBUILD: its triggers run in the stage built on it.
    let staged = format!("{host}/app/staged:v1");
    must(build(
        &fx,
        &ctx,
        &format!(
            "{}ONBUILD RUN echo stage-trigger > /st.txt\nFROM p\nRUN cat /st.txt > /seen\n",
            base_as(&host, Some("p"))
        ),
        &["-t", &staged],
    ));
    let layout = fetch_layout(&fx, &staged, "staged");
    let (rootfs, _) = unpack(&fx, &layout, "staged");
    assert_eq!(read(&rootfs, "seen"), "stage-trigger\n");
}

#[test]
fn copy_wildcards_exclude_parents_and_link() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    for d in ["src/x", "src/y", "docs/sub"] {
        std::fs::create_dir_all(ctx.join(d)).unwrap();
    }
    for (f, body) in [
        ("a.txt", "a"),
        ("b.txt", "b"),
        ("c.md", "c"),
        ("ignored.txt", "never"),
        ("src/x/one.rs", "one"),
        ("src/y/two.rs", "two"),
        ("src/y/skip.tmp", "tmp"),
        ("docs/keep.md", "keep"),
        ("docs/drop.bak", "drop"),
        ("docs/sub/deep.bak", "deep"),
    ] {
        std::fs::write(ctx.join(f), body).unwrap();
    }
    std::fs::set_permissions(
        ctx.join("a.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o664),
    )
    .unwrap();
    std::fs::write(ctx.join(".dockerignore"), "ignored.txt\n").unwrap();
    // Links resolve inside the context, as BuildKit resolves them.
    std::os::unix::fs::symlink("/src/x/one.rs", ctx.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("ignored.txt", ctx.join("to-ignored")).unwrap();
    let reference = format!("{host}/app/globs:v1");
    must(build(
        &fx,
        &ctx,
        &format!(
            "{}\
COPY *.txt /globbed/\n\
COPY [ab].txt c.* /mixed/\n\
COPY --exclude=*.bak --exclude=sub docs /docs/\n\
COPY --exclude=*/*.tmp src/ /src-no-tmp/\n\
COPY --parents src/*/*.rs /p/\n\
COPY --parents ./src/./y/two.rs /pivot/\n\
COPY --link a.txt /linked.txt\n\
COPY --chmod=u+x,go-w a.txt /symbolic.txt\n\
COPY abs-link /via-abs-link.rs\n\
COPY ../b.txt /up.txt\n\
COPY single*.none /nothing/\n",
            base(&host)
        ),
        &["-t", &reference],
    ));
    let layout = fetch_layout(&fx, &reference, "globs");
    let (rootfs, _) = unpack(&fx, &layout, "globs");
    let names = |d: &str| {
        let mut v: Vec<String> = std::fs::read_dir(rootfs.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names("globbed"),
        ["a.txt", "b.txt"],
        ".dockerignore applies to matches"
    );
    assert_eq!(names("mixed"), ["a.txt", "b.txt", "c.md"]);
    assert_eq!(names("docs"), ["keep.md"]);
    assert_eq!(names("src-no-tmp"), ["x", "y"]);
    assert_eq!(names("src-no-tmp/y"), ["two.rs"]);
    assert_eq!(read(&rootfs, "p/src/x/one.rs"), "one");
    assert_eq!(read(&rootfs, "p/src/y/two.rs"), "two");
    assert!(!rootfs.join("p/src/y/skip.tmp").exists());
    assert_eq!(names("pivot"), ["y"]);
    assert_eq!(read(&rootfs, "pivot/y/two.rs"), "two");
    assert_eq!(read(&rootfs, "linked.txt"), "a");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(rootfs.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    // Symbolic --chmod applies to the file's own mode (0664 → u+x → go-w).
    assert_eq!(mode("symbolic.txt"), 0o744);
    assert_eq!(read(&rootfs, "via-abs-link.rs"), "one");
    assert_eq!(
        read(&rootfs, "up.txt"),
        "b",
        "COPY ../x reads the context's x"
    );

    // A link to an ignored file does not smuggle it in.
    let out = build(
        &fx,
        &ctx,
        &format!("{}COPY to-ignored /x\n", base(&host)),
        &["--no-push"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("excluded by .dockerignore"),
        "{err}"
    );

    // Several sources into a destination without a trailing slash: refused.
    let out = build(
        &fx,
        &ctx,
        &format!("{}COPY *.txt /notadir\n", base(&host)),
        &["--no-push"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("Dockerfile:3: COPY")
            && err.contains("must be a directory"),
        "{err}"
    );
}

#[test]
fn labels_metadata_file_and_oci_archive_output() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("f.txt"), "in the archive\n").unwrap();
    let dockerfile = format!(
        "{}LABEL from.dockerfile=yes\nCOPY f.txt /f.txt\n",
        base(&host)
    );
    let reference = format!("{host}/app/labelled:v1");
    let meta = fx.tmp.path().join("meta.json");
    let printed = must(build(
        &fx,
        &ctx,
        &dockerfile,
        &[
            "-t",
            &reference,
            "--label",
            "org.example.team=builders",
            "--label",
            "from.dockerfile=overridden",
            "--metadata-file",
            meta.to_str().unwrap(),
        ],
    ));
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let digest = metadata["containerimage.digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        printed.contains(&format!("{reference}@{digest}")),
        "{printed}"
    );
    assert_eq!(metadata["image.name"], reference.as_str());
    let inspected: serde_json::Value = serde_json::from_slice(
        ok(Command::new(tool("skopeo"))
            .env("REGISTRY_AUTH_FILE", fx.docker.join("config.json"))
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{reference}")))
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(inspected["Digest"], digest.as_str());
    assert_eq!(inspected["Labels"]["org.example.team"], "builders");
    assert_eq!(inspected["Labels"]["from.dockerfile"], "overridden");

    // Plain progress: a step line, then DONE with its time; tty: in bold.
    assert!(
        printed.contains("#### [4/4] COPY f.txt /f.txt"),
        "{printed}"
    );
    assert!(printed.contains("#### [4/4] DONE "), "{printed}");
    assert!(
        !printed.contains('\x1b'),
        "escapes in plain output: {printed}"
    );
    let tty = must(run(Command::new(env!("CARGO_BIN_EXE_slipway"))
        .env("DOCKER_CONFIG", &fx.docker)
        .args([
            "build",
            "--local",
            "--progress",
            "tty",
            "--no-push",
            "--data",
        ])
        .arg(fx.tmp.path().join("sl"))
        .arg(&ctx)));
    assert!(
        tty.contains("\x1b[1m#### [4/4] COPY f.txt /f.txt\x1b[0m"),
        "{tty}"
    );

    // --output type=oci: an OCI layout tarball, not pushed.
    let archive = fx.tmp.path().join("image.tar");
    let not_pushed = format!("{host}/app/archived:v1");
    let printed = must(build(
        &fx,
        &ctx,
        &dockerfile,
        &[
            "-t",
            &not_pushed,
            "--output",
            &format!("type=oci,dest={}", archive.display()),
            "--metadata-file",
            meta.to_str().unwrap(),
        ],
    ));
    assert!(!printed.contains(&format!("{not_pushed}@")), "{printed}");
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let inspected: serde_json::Value = serde_json::from_slice(
        ok(Command::new(tool("skopeo"))
            .arg("inspect")
            .arg(format!("oci-archive:{}", archive.display())))
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(inspected["Digest"], metadata["containerimage.digest"]);
    assert_eq!(inspected["Labels"]["from.dockerfile"], "yes");
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 5);
    let layout = fx.tmp.path().join("from-archive");
    ok(Command::new(tool("skopeo"))
        .arg("copy")
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("oci:{}:v1", layout.display())));
    let (rootfs, _) = unpack(&fx, &layout, "archive");
    assert_eq!(read(&rootfs, "f.txt"), "in the archive\n");
    assert!(
        rootfs.join("srv/files/f2.txt").is_file(),
        "base layers missing"
    );
    let out = run(Command::new(tool("skopeo"))
        .env("REGISTRY_AUTH_FILE", fx.docker.join("config.json"))
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{not_pushed}")));
    assert!(!out.status.success(), "--output type=oci also pushed");

    // Bad flag values are refused before anything is built.
    for bad in [
        &["--progress", "fancy"][..],
        &["--output", "type=tar"],
        &["--memory", "lots"],
        &["--cpus", "0"],
        &["--secret", "id=x,src=/nonexistent/file"],
    ] {
        let out = build(&fx, &ctx, &dockerfile, &[&["--no-push"][..], bad].concat());
        assert!(!out.status.success(), "{bad:?} was accepted");
    }
}

/// The CPU limit of a running RUN step whose memory limit is `memory`,
/// seen from the host (other builds may run meanwhile: the memory value
/// picks ours). cgroup v2: `cpu.max`; v1: `cpu.cfs_quota_us` of the
/// same-named cgroup in the cpu hierarchy.
fn find_run_cpu_limit(memory: u64) -> Option<String> {
    let root = Path::new("/sys/fs/cgroup");
    let v2 = root.join("cgroup.controllers").exists();
    let (mem_dir, mem_file) = if v2 {
        (root.join("slipway"), "memory.max")
    } else {
        (root.join("memory/slipway"), "memory.limit_in_bytes")
    };
    for e in std::fs::read_dir(mem_dir).ok()?.flatten() {
        let run = e.path();
        let Ok(m) = std::fs::read_to_string(run.join(mem_file)) else {
            continue;
        };
        if m.trim() != memory.to_string() {
            continue;
        }
        let cpu = if v2 {
            run.join("cpu.max")
        } else {
            root.join("cpu/slipway")
                .join(e.file_name())
                .join("cpu.cfs_quota_us")
        };
        return std::fs::read_to_string(cpu).ok();
    }
    None
}

#[test]
fn memory_and_cpu_limits_apply_to_run_steps() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // While the step sleeps, its cgroup is visible on the host.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("{}RUN sleep 3\n", base(&host)),
    )
    .unwrap();
    let mut child = slipway(&fx)
        .args([
            "--no-push",
            "--no-cache",
            "--memory",
            "97m",
            "--cpus",
            "0.5",
        ])
        .arg(&ctx)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = None;
    while std::time::Instant::now() < deadline && seen.is_none() {
        seen = find_run_cpu_limit(97 << 20);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    let cpu = seen.expect("no cgroup with the RUN step's memory limit appeared");
    assert!(
        cpu.trim() == "50000" || cpu.trim() == "50000 100000",
        "cpu limit {cpu:?}"
    );

    // The memory limit is enforced: a step that needs more is killed.
    let hog = "RUN x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}\n";
    let out = build(
        &fx,
        &ctx,
        &format!("{}{hog}", base(&host)),
        &["--no-push", "--no-cache", "--memory", "32m"],
    );
    assert!(!out.status.success(), "a 200 MB step ran in 32 MiB");
    must(build(
        &fx,
        &ctx,
        &format!("{}RUN true\n", base(&host)),
        &["--no-push", "--memory", "1g", "--cpus", "1.5"],
    ));
}

#[test]
fn base_image_env_shell_and_entrypoint_rules_follow_buildkit() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let parent = format!("{host}/app/env-parent:v1");
    must(build(
        &fx,
        &ctx,
        &format!(
            "{}ENV BASEVAR=frombase PATH=/opt/tools:/usr/bin:/bin\nSHELL [\"/bin/busybox\", \"sh\", \"-c\"]\nCMD [\"inherited\"]\n",
            base(&host)
        ),
        &["-t", &parent],
    ));
    let child = format!("{host}/app/env-child:v1");
    must(build(
        &fx,
        &ctx,
        &format!(
            "FROM {parent}\n\
ENV COMBINED=$BASEVAR-child PATH=$PATH:/extra\n\
WORKDIR /w/$BASEVAR\n\
RUN echo \"$COMBINED\" > /combined\n\
ENTRYPOINT echo entry\n"
        ),
        &["-t", &child],
    ));
    let config = image_config(&fx, &child);
    let c = &config["config"];
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(env.contains(&"COMBINED=frombase-child"), "{env:?}");
    assert!(
        env.contains(&"PATH=/opt/tools:/usr/bin:/bin:/extra"),
        "{env:?}"
    );
    assert_eq!(c["WorkingDir"], "/w/frombase");
    // The base's SHELL makes the shell form; an inherited CMD is reset.
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/bin/busybox", "sh", "-c", "echo entry"])
    );
    assert!(c["Cmd"].is_null(), "{c}");
    let layout = fetch_layout(&fx, &child, "env");
    let (rootfs, _) = unpack(&fx, &layout, "env");
    assert_eq!(read(&rootfs, "combined"), "frombase-child\n");

    // A CMD set in the same stage survives a later ENTRYPOINT.
    let second = format!("{host}/app/env-second:v1");
    must(build(
        &fx,
        &ctx,
        &format!("FROM {parent}\nCMD [\"mine\"]\nENTRYPOINT [\"/bin/busybox\"]\n"),
        &["-t", &second],
    ));
    let config = image_config(&fx, &second);
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["mine"]));
}

#[test]
fn registry_cache_is_shared_between_two_work_dirs() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("input.txt"), "first\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "{}\
RUN echo step-one-ran && echo one > /one\n\
COPY input.txt /input.txt\n\
RUN echo step-three-ran && cat /input.txt > /copy\n",
            base(&host)
        ),
    )
    .unwrap();
    let cache = format!("{host}/cache/app:buildcache");
    // Each build in a work dir of its own: only the registry is shared.
    let build_in = |data: &str, tag: &str, extra: &[&str]| {
        let iid = fx.tmp.path().join(format!("{data}.iid"));
        let out = must(run(Command::new(env!("CARGO_BIN_EXE_slipway"))
            .env("DOCKER_CONFIG", &fx.docker)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["build", "--local", "--progress", "plain", "--data"])
            .arg(fx.tmp.path().join(data))
            .args(["-t", &format!("{host}/app/{tag}:v1"), "--iidfile"])
            .arg(&iid)
            .args(extra)
            .arg(&ctx)));
        (out, std::fs::read_to_string(&iid).unwrap())
    };
    let ran = |out: &str, step: &str| out.lines().any(|l| l == step);
    let (first, id1) = build_in(
        "a",
        "first",
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    assert!(
        ran(&first, "step-one-ran") && ran(&first, "step-three-ran"),
        "{first}"
    );
    assert!(
        first.contains(&format!("exported cache to {cache}")),
        "{first}"
    );

    let (second, id2) = build_in("b", "second", &["--cache-from", &cache]);
    assert!(
        !ran(&second, "step-one-ran") && !ran(&second, "step-three-ran"),
        "a step ran although the registry cache had it: {second}"
    );
    assert_eq!(second.matches("CACHED").count(), 4, "{second}");
    assert_eq!(id1, id2, "the same steps from the cache gave another image");
    let layout = fetch_layout(&fx, &format!("{host}/app/second:v1"), "second");
    let (rootfs, _) = unpack(&fx, &layout, "second");
    assert_eq!(read(&rootfs, "copy"), "first\n");
    assert_eq!(read(&rootfs, "one"), "one\n");

    // A changed file: the steps before it still come from the cache.
    std::fs::write(ctx.join("input.txt"), "second\n").unwrap();
    let (third, id3) = build_in("c", "third", &["--cache-from", &cache]);
    assert!(!ran(&third, "step-one-ran"), "{third}");
    assert!(ran(&third, "step-three-ran"), "{third}");
    assert_ne!(id3, id1);

    // An unreadable cache is a warning, not a failure.
    let out = run(Command::new(env!("CARGO_BIN_EXE_slipway"))
        .env("DOCKER_CONFIG", &fx.docker)
        .args(["build", "--local", "--no-push", "--data"])
        .arg(fx.tmp.path().join("d"))
        .args(["--cache-from", &format!("{host}/cache/none:missing")])
        .arg(&ctx));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("warning: --cache-from"),
        "{err}"
    );
}

#[test]
fn from_scratch_is_the_empty_image() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let reference = format!("{host}/app/scratch:v1");
    let printed = must(build(
        &fx,
        &ctx,
        &format!(
            "{}RUN echo static > /app\n\
FROM scratch\n\
COPY --from=0 /app /app\n\
ENV SEEN=$PATH\n\
CMD [\"/app\"]\n",
            base(&host)
        ),
        &["-t", &reference],
    ));
    assert!(printed.contains("FROM scratch"), "{printed}");
    let inspected: serde_json::Value = serde_json::from_slice(
        ok(Command::new(tool("skopeo"))
            .env("REGISTRY_AUTH_FILE", fx.docker.join("config.json"))
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{reference}")))
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        inspected["Layers"].as_array().unwrap().len(),
        1,
        "{inspected}"
    );
    let config = image_config(&fx, &reference);
    let c = &config["config"];
    assert_eq!(c["WorkingDir"], "/");
    let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    assert_eq!(
        c["Env"],
        serde_json::json!([format!("PATH={path}"), format!("SEEN={path}")])
    );
    let layout = fetch_layout(&fx, &reference, "scratch");
    let (rootfs, _) = unpack(&fx, &layout, "scratch");
    assert_eq!(read(&rootfs, "app"), "static\n");
    assert!(!rootfs.join("bin").exists(), "busybox leaked into scratch");
}

#[test]
fn independent_stages_build_at_the_same_time() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // Each stage notes when its RUN started and ended (host uptime: /proc
    // is the host's clock in the sandbox too).
    let stage = |name: &str| {
        format!(
            "FROM {host}/base/busybox:v1 AS {name}\n\
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"busybox cut -d' ' -f1 /proc/uptime > /start; busybox sleep 2; busybox cut -d' ' -f1 /proc/uptime > /end; echo {name}-done\"]\n"
        )
    };
    let reference = format!("{host}/app/parallel:v1");
    let printed = must(build(
        &fx,
        &ctx,
        &format!(
            "{}{}FROM {host}/base/busybox:v1\n\
COPY --from=one /start /one-start\nCOPY --from=one /end /one-end\n\
COPY --from=two /start /two-start\nCOPY --from=two /end /two-end\n",
            stage("one"),
            stage("two")
        ),
        &["-t", &reference],
    ));
    assert!(
        printed.lines().any(|l| l == "one-done") && printed.lines().any(|l| l == "two-done"),
        "{printed}"
    );
    let layout = fetch_layout(&fx, &reference, "parallel");
    let (rootfs, _) = unpack(&fx, &layout, "parallel");
    let t = |p: &str| read(&rootfs, p).trim().parse::<f64>().unwrap();
    let (s1, e1, s2, e2) = (t("one-start"), t("one-end"), t("two-start"), t("two-end"));
    assert!(
        s1 < e2 && s2 < e1,
        "the stages ran one after the other: one {s1}..{e1}, two {s2}..{e2}"
    );
}

#[test]
fn ssh_mounts_reach_the_agent_through_a_socket_of_their_own() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // A stand-in agent: a listening socket (busybox has no unix-socket
    // client, so the RUN checks that its socket is there; that it forwards
    // to a real ssh-agent is run_mounts' unit test).
    let socket = fx.tmp.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let reference = format!("{host}/app/ssh:v1");
    must(build(
        &fx,
        &ctx,
        &format!(
            "{}RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /proof\n\
RUN --mount=type=ssh,id=absent echo optional agents may be missing > /optional\n",
            base(&host)
        ),
        &[
            "-t",
            &reference,
            "--ssh",
            &format!("default={}", socket.display()),
        ],
    ));
    let layout = fetch_layout(&fx, &reference, "ssh");
    let (rootfs, _) = unpack(&fx, &layout, "ssh");
    assert_eq!(read(&rootfs, "proof"), "/run/buildkit/ssh_agent.0\n");
    assert!(read(&rootfs, "optional").contains("optional"));
    assert!(!rootfs.join("run/buildkit/ssh_agent.0").exists());

    // A required agent that was not given fails with the line.
    let out = build(
        &fx,
        &ctx,
        &format!("{}RUN --mount=type=ssh,required true\n", base(&host)),
        &["--no-push"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Dockerfile:3: RUN") && err.contains("ssh"),
        "{err}"
    );
}

#[test]
fn add_clones_git_repositories_and_follows_their_branches() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let tmp = fx.tmp.path();
    // A repository served over git's dumb HTTP protocol by a plain web server.
    let work = tmp.join("gitwork");
    let web = tmp.join("web");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(work.join("README"), "top\n").unwrap();
    std::fs::write(work.join("sub/inner.txt"), "inner v1\n").unwrap();
    let git = |dir: &Path, args: &[&str]| {
        ok(Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
            .args(args));
    };
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "one"]);
    git(&work, &["tag", "v1"]);
    git(tmp, &["clone", "-q", "--bare", "gitwork", "web/repo.git"]);
    git(&web.join("repo.git"), &["update-server-info"]);
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
    let repo = format!("http://127.0.0.1:{port}/repo.git");
    let ctx = tmp.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let dockerfile = format!(
        "{}ADD {repo}#main:sub /from-git/\nADD {repo} /whole/\nADD --keep-git-dir {repo}#v1 /kept/\n",
        base(&host)
    );
    let reference = format!("{host}/app/git:v1");
    must(build(&fx, &ctx, &dockerfile, &["-t", &reference]));
    let layout = fetch_layout(&fx, &reference, "git1");
    let (rootfs, _) = unpack(&fx, &layout, "git1");
    assert_eq!(read(&rootfs, "from-git/inner.txt"), "inner v1\n");
    assert!(
        !rootfs.join("from-git/README").exists(),
        "the subdir was not honoured"
    );
    assert_eq!(read(&rootfs, "whole/README"), "top\n");
    assert!(!rootfs.join("whole/.git").exists());
    assert!(
        rootfs.join("kept/.git").is_dir(),
        "--keep-git-dir lost .git"
    );

    // Unchanged branch: cached. A new commit on it: fetched again.
    let again = must(build(&fx, &ctx, &dockerfile, &["-t", &reference]));
    assert_eq!(again.matches("CACHED").count(), 4, "{again}");
    std::fs::write(work.join("sub/inner.txt"), "inner v2\n").unwrap();
    git(&work, &["commit", "-q", "-am", "two"]);
    git(&work, &["push", "-q", "../web/repo.git", "main"]);
    git(&web.join("repo.git"), &["update-server-info"]);
    let third = must(build(&fx, &ctx, &dockerfile, &["-t", &reference]));
    assert!(third.matches("CACHED").count() < 4, "{third}");
    let layout = fetch_layout(&fx, &reference, "git2");
    let (rootfs, _) = unpack(&fx, &layout, "git2");
    assert_eq!(read(&rootfs, "from-git/inner.txt"), "inner v2\n");
    assert!(rootfs.join("kept/.git").is_dir());

    // A ref that does not exist names the source and line.
    let out = build(
        &fx,
        &ctx,
        &format!("{}ADD {repo}#nope /x/\n", base(&host)),
        &["--no-push"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Dockerfile:3") && err.contains("nope"),
        "{err}"
    );
}

/// Decompression bombs: a layer and an ADD archive that unpack far past
/// `--max-unpacked-size` (or hold more entries than `--max-unpacked-entries`)
/// stop at the limit with one error naming it; within the limits the same
/// build succeeds.
#[test]
fn layers_and_archives_past_the_unpack_limits_stop_with_an_error_naming_them() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("bomb");
    std::fs::create_dir_all(&ctx).unwrap();
    // 64 MiB of zeros: a layer of a few hundred KiB compressed.
    let zeros = format!("{host}/bomb/zeros:v1");
    must(build(
        &fx,
        &ctx,
        &format!(
            "{}RUN dd if=/dev/zero of=/zeros bs=1M count=64\n",
            base(&host)
        ),
        &["-t", &zeros],
    ));
    let fresh = |name: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_slipway"));
        c.env("DOCKER_CONFIG", &fx.docker)
            .args([
                "build",
                "--local",
                "--no-push",
                "--progress",
                "plain",
                "--data",
            ])
            .arg(fx.tmp.path().join(name));
        c
    };
    let failed_naming = |out: &Output, flag: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "built past the limit: {err}");
        assert_eq!(err.matches(flag).count(), 1, "{flag} named once: {err}");
        assert!(err.contains("exceed this builder's limit"), "{err}");
    };
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {zeros}\n")).unwrap();
    let out = run(fresh("small")
        .args(["--max-unpacked-size", "16m"])
        .arg(&ctx));
    failed_naming(&out, "--max-unpacked-size");
    // Nothing half-unpacked is kept as a snapshot.
    let snaps = fx.tmp.path().join("small/layers/snapshots");
    let kept: Vec<_> = std::fs::read_dir(&snaps)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    for k in &kept {
        let big = k.join("zeros");
        assert!(!big.exists(), "a partial layer was published: {kept:?}");
    }
    let out = run(fresh("few")
        .args(["--max-unpacked-entries", "50"])
        .arg(&ctx));
    failed_naming(&out, "--max-unpacked-entries");
    must(run(fresh("roomy").arg(&ctx)));

    // The same through the environment an agent sets, for an ADD archive
    // of the context.
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::best(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(32 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append(&h, std::io::repeat(0).take(32 << 20)).unwrap();
    let gz = tar.into_inner().unwrap().finish().unwrap();
    assert!(gz.len() < 1 << 20, "the bomb is small: {}", gz.len());
    std::fs::write(ctx.join("bomb.tar.gz"), gz).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nADD bomb.tar.gz /x/\n",
    )
    .unwrap();
    let out = run(fresh("add")
        .env("SLIPWAY_MAX_UNPACKED_SIZE", "8m")
        .arg(&ctx));
    failed_naming(&out, "--max-unpacked-size");
    must(run(fresh("add").arg(&ctx)));
}

/// The confinement of a RUN, seen from inside a real build (the sandbox's
/// own tests check each piece in detail): the seccomp filter is on, a user
/// namespace is refused, the rootfs and a bind mount are nodev,nosuid, a
/// block device made with mknod cannot be read, `/dev` holds only Docker's
/// standard devices, and the masked `/proc` files (`kcore`, `keys`, …)
/// read empty.
#[test]
fn a_run_step_is_confined_as_docker_confines_it() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("confined");
    std::fs::create_dir_all(&ctx).unwrap();
    let script = "grep Seccomp: /proc/self/status; \
         unshare -U true 2>/dev/null && echo userns=allowed || echo userns=refused; \
         grep -E '^overlay / ' /proc/mounts | sed 's/^/root-mount /'; \
         grep -E ' /ctx ' /proc/mounts | sed 's/^/bind-mount /'; \
         mknod /blk b 8 0 && (dd if=/blk of=/dev/null bs=512 count=1 2>/dev/null && echo blk=read || echo blk=refused); \
         echo dev=$(ls -A /dev | tr '\\n' ' '); \
         for f in /proc/kcore /proc/keys /proc/timer_list; do \
           [ -e $f ] && echo masked $f $(wc -c < $f); \
         done";
    let out = must(build(
        &fx,
        &ctx,
        &format!(
            "{}RUN --mount=type=bind,target=/ctx {script}\n",
            base(&host)
        ),
        &["--no-push", "--no-cache"],
    ));
    let has = |needle: &str| out.lines().any(|l| l.contains(needle));
    let seccomp = out.lines().find_map(|l| l.strip_prefix("Seccomp:"));
    assert_eq!(seccomp.map(str::trim), Some("2"), "{out}");
    assert!(has("userns=refused"), "{out}");
    for mount in ["root-mount ", "bind-mount "] {
        let line = out
            .lines()
            .find(|l| l.starts_with(mount))
            .unwrap_or_else(|| panic!("no {mount}line: {out}"));
        let opts = line.split_whitespace().nth(4).unwrap_or("");
        assert!(
            opts.split(',').any(|o| o == "nodev") && opts.split(',').any(|o| o == "nosuid"),
            "{line}"
        );
    }
    assert!(has("blk=refused"), "{out}");
    assert!(
        has("dev=fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"),
        "{out}"
    );
    // Masked: each of these the kernel has is there and reads empty
    // (this one has no /proc/kcore; /proc/keys is in every kernel here).
    let masked: Vec<&str> = out.lines().filter(|l| l.starts_with("masked ")).collect();
    assert!(masked.iter().any(|l| l.contains("/proc/keys")), "{out}");
    for l in masked {
        assert!(l.ends_with(" 0"), "not empty: {l}");
    }
}

/// `RUN --security=insecure` is refused unless the build is given the
/// `security.insecure` entitlement; with it, that step runs without the
/// seccomp filter while the others keep it.
#[test]
fn insecure_run_steps_need_the_entitlement() {
    let Some(fx) = fixture() else { return };
    let host = fx.srv.addr.clone();
    let ctx = fx.tmp.path().join("insecure");
    std::fs::create_dir_all(&ctx).unwrap();
    let df = format!(
        "{}RUN --security=insecure grep Seccomp: /proc/self/status | sed 's/^/insecure-/'\n\
         RUN grep Seccomp: /proc/self/status | sed 's/^/default-/'\n",
        base(&host)
    );
    let out = build(&fx, &ctx, &df, &["--no-push"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--allow security.insecure"), "{err}");
    assert!(err.contains("Dockerfile:3"), "names the line: {err}");
    let out = must(build(
        &fx,
        &ctx,
        &df,
        &["--no-push", "--allow", "security.insecure"],
    ));
    let mode = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(mode("insecure-Seccomp:").as_deref(), Some("0"), "{out}");
    assert_eq!(mode("default-Seccomp:").as_deref(), Some("2"), "{out}");
    let bad = build(&fx, &ctx, &df, &["--no-push", "--allow", "network.host"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("the only entitlement is security.insecure")
    );
}
