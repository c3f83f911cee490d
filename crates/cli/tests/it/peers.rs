//! Real registry clients against `slipway server`: skopeo (OCI and Docker
//! media types), buildah, crane, and the distribution-spec conformance suite.

use std::path::Path;
use std::process::Command;

use crate::harness::{Server, make_image, ok, run, sha256_hex, tool};

struct Env {
    tmp: tempfile::TempDir,
    layout: std::path::PathBuf,
    srv: Server,
}

fn setup() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let layout = make_image(tmp.path());
    let srv = Server::start(&tmp.path().join("data"));
    std::fs::write(tmp.path().join("auth.json"), r#"{"auths":{}}"#).unwrap();
    Env { tmp, layout, srv }
}

impl Env {
    /// skopeo with an empty auth file, so only the flags given authenticate.
    fn skopeo(&self) -> Command {
        let mut c = Command::new(tool("skopeo"));
        c.env("REGISTRY_AUTH_FILE", self.tmp.path().join("auth.json"));
        c
    }

    fn docker_ref(&self, repo: &str) -> String {
        format!("docker://{}/{repo}", self.srv.addr)
    }

    fn push(&self, repo: &str, extra: &[&str]) -> String {
        let digestfile = self
            .tmp
            .path()
            .join(format!("{}.push", repo.replace('/', "_")));
        ok(self
            .skopeo()
            .args([
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                &self.srv.creds(),
            ])
            .args(extra)
            .arg("--digestfile")
            .arg(&digestfile)
            .arg(format!("oci:{}:v1", self.layout.display()))
            .arg(self.docker_ref(repo)));
        std::fs::read_to_string(digestfile).unwrap()
    }

    /// Pull `repo` into the skopeo destination `dest`; returns the manifest digest skopeo saw.
    fn pull(&self, repo: &str, dest: &str) -> String {
        let digestfile = self
            .tmp
            .path()
            .join(format!("{}.pull", repo.replace(['/', ':'], "_")));
        ok(self
            .skopeo()
            .args([
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                &self.srv.creds(),
            ])
            .arg("--digestfile")
            .arg(&digestfile)
            .arg(self.docker_ref(repo))
            .arg(dest));
        std::fs::read_to_string(digestfile).unwrap()
    }

    fn inspect_raw(&self, repo: &str, config: bool) -> Vec<u8> {
        let mut c = self.skopeo();
        c.args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &self.srv.creds(),
        ]);
        if config {
            c.arg("--config");
        }
        ok(c.arg(self.docker_ref(repo))).into_bytes()
    }
}

fn source_manifest_digest(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

fn diff_ids(config: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(config).unwrap();
    v["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect()
}

fn refused(out: &std::process::Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    !out.status.success()
        && (err.contains("unauthorized") || err.contains("authentication required"))
}

#[test]
fn skopeo_round_trips_oci_and_docker_images_with_identical_digests() {
    let env = setup();
    let source = source_manifest_digest(&env.layout);

    // OCI media types: push, then pull back into a new layout.
    let pushed = env.push("peers/oci:v1", &[]);
    assert_eq!(pushed, source, "push changed the manifest");
    let raw = env.inspect_raw("peers/oci:v1", false);
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), source);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["config"]["mediaType"], oci::media_type::OCI_CONFIG);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
    let out_layout = env.tmp.path().join("pulled-oci");
    let pulled = env.pull("peers/oci:v1", &format!("oci:{}:v1", out_layout.display()));
    assert_eq!(pulled, source);
    assert_eq!(source_manifest_digest(&out_layout), source);

    // Docker schema 2 media types.
    let docker = env.push("peers/docker:v1", &["--format", "v2s2"]);
    assert_ne!(docker, source, "v2s2 conversion should give a new manifest");
    let raw = env.inspect_raw("peers/docker:v1", false);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], oci::media_type::DOCKER_MANIFEST);
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), docker);
    let dir = env.tmp.path().join("pulled-docker");
    assert_eq!(
        env.pull("peers/docker:v1", &format!("dir:{}", dir.display())),
        docker
    );
    let on_disk = std::fs::read(dir.join("manifest.json")).unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&on_disk)), docker);

    // Registry to registry (blobs are mounted or skipped, digest kept).
    let copy_file = env.tmp.path().join("copy.digest");
    ok(env
        .skopeo()
        .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .args([
            "--src-creds",
            &env.srv.creds(),
            "--dest-creds",
            &env.srv.creds(),
        ])
        .arg("--digestfile")
        .arg(&copy_file)
        .arg(env.docker_ref("peers/docker:v1"))
        .arg(env.docker_ref("peers/copy:v1")));
    assert_eq!(std::fs::read_to_string(&copy_file).unwrap(), docker);
}

#[test]
fn skopeo_and_buildah_are_refused_without_credentials() {
    let env = setup();
    env.push("peers/private:v1", &[]);
    let anon_push = run(env
        .skopeo()
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", env.layout.display()))
        .arg(env.docker_ref("peers/anon:v1")));
    assert!(refused(&anon_push), "anonymous push was not refused");
    let anon_pull = run(env
        .skopeo()
        .args(["inspect", "--tls-verify=false"])
        .arg(env.docker_ref("peers/private:v1")));
    assert!(refused(&anon_pull), "anonymous pull was not refused");
    let wrong = run(env
        .skopeo()
        .args([
            "inspect",
            "--tls-verify=false",
            "--creds",
            "ci:slw_not-a-token",
        ])
        .arg(env.docker_ref("peers/private:v1")));
    assert!(refused(&wrong), "a wrong token was accepted");

    let root = env.tmp.path().join("buildah");
    let anon_buildah = run(buildah(&env, &root)
        .args(["pull", "--tls-verify=false"])
        .arg(env.docker_ref("peers/private:v1")));
    assert!(
        refused(&anon_buildah),
        "anonymous buildah pull was not refused"
    );
}

fn buildah(env: &Env, root: &Path) -> Command {
    let mut c = Command::new(tool("buildah"));
    c.arg("--root")
        .arg(root.join("root"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", "vfs"])
        .env("REGISTRY_AUTH_FILE", env.tmp.path().join("auth.json"));
    c
}

#[test]
fn buildah_pushes_and_pulls() {
    let env = setup();
    env.push("peers/src:v1", &[]);
    let root = env.tmp.path().join("buildah");
    let creds = env.srv.creds();
    ok(buildah(&env, &root)
        .args(["pull", "--tls-verify=false", "--creds", &creds])
        .arg(env.docker_ref("peers/src:v1")));
    ok(buildah(&env, &root)
        .args(["push", "--tls-verify=false", "--creds", &creds])
        .arg(format!("{}/peers/src:v1", env.srv.addr))
        .arg(env.docker_ref("peers/buildah:v1")));
    ok(buildah(&env, &root).args(["rmi", "--all", "--force"]));
    let pulled = ok(buildah(&env, &root)
        .args(["pull", "--tls-verify=false", "--creds", &creds])
        .arg(env.docker_ref("peers/buildah:v1")));
    assert!(
        !pulled.trim().is_empty(),
        "buildah pull printed no image id"
    );
    // buildah recompresses layers, so compare the uncompressed content.
    assert_eq!(
        diff_ids(&env.inspect_raw("peers/buildah:v1", true)),
        diff_ids(&env.inspect_raw("peers/src:v1", true))
    );
}

#[test]
fn crane_copies_and_validates() {
    let env = setup();
    env.push("peers/src:v1", &[]);
    let docker_config = env.tmp.path().join("docker");
    let crane = |cfg: &Path| {
        let mut c = Command::new(tool("crane"));
        c.env("DOCKER_CONFIG", cfg).env("HOME", env.tmp.path());
        c
    };
    let reg = env.srv.addr.as_str();
    ok(crane(&docker_config).args(["auth", "login", reg, "-u", "ci", "-p", &env.srv.token]));
    let src = format!("{reg}/peers/src:v1");
    let dst = format!("{reg}/peers/crane:v1");
    ok(crane(&docker_config).args(["copy", "--insecure", &src, &dst]));
    let d1 = ok(crane(&docker_config).args(["digest", "--insecure", &src]));
    let d2 = ok(crane(&docker_config).args(["digest", "--insecure", &dst]));
    assert_eq!(d1, d2);
    ok(crane(&docker_config).args(["validate", "--insecure", "--remote", &dst]));
    let tags = ok(crane(&docker_config).args(["ls", "--insecure", &format!("{reg}/peers/crane")]));
    assert_eq!(tags.trim(), "v1");
    let catalog = ok(crane(&docker_config).args(["catalog", "--insecure", reg]));
    assert!(catalog.lines().any(|l| l == "peers/crane"), "{catalog}");
    let anon = run(crane(&env.tmp.path().join("no-config")).args(["manifest", "--insecure", &src]));
    assert!(!anon.status.success());
    assert!(String::from_utf8_lossy(&anon.stderr).contains("UNAUTHORIZED"));
}

#[test]
fn distribution_spec_conformance_suite_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"));
    conformance(&srv, tmp.path());
}

/// Run the OCI distribution-spec conformance suite against `srv` (its
/// results under `dir`) and require every test to pass.
pub(crate) fn conformance(srv: &Server, dir: &Path) {
    let out = run(Command::new(tool("conformance"))
        .current_dir(dir)
        .env("OCI_REGISTRY", &srv.addr)
        .env("OCI_TLS", "disabled")
        .env("OCI_USERNAME", "ci")
        .env("OCI_PASSWORD", &srv.token)
        .env("OCI_API_PULL", "true")
        .env("OCI_API_PUSH", "true")
        .env("OCI_API_REFERRER", "true")
        .env("OCI_API_BLOBS_DELETE", "true")
        .env("OCI_API_MANIFESTS_DELETE", "true")
        .env("OCI_API_TAGS_DELETE", "true")
        .env("OCI_API_BLOBS_UPLOAD_CANCEL", "true")
        .env("OCI_API_MANIFESTS_TAG_PARAM", "true")
        .env("OCI_RESULTS_DIR", dir.join("results")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the conformance suite failed");
    assert!(stdout.contains("OCI Conformance Test: Pass"));
    for bad in [": Fail", ": Skip", ": Error"] {
        assert!(!stdout.contains(bad), "conformance output has {bad:?}");
    }
    assert!(dir.join("results/junit.xml").is_file());
}

#[test]
fn gc_command_removes_unreferenced_blobs_while_serving() {
    let env = setup();
    let keep = env.push("peers/keep:v1", &[]);
    let drop = env.push("peers/drop:v1", &["--format", "v2s2"]);
    let blob_file = |d: &str| {
        let hex = d.trim_start_matches("sha256:");
        env.srv
            .data
            .join("store/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
    };
    assert!(blob_file(&drop).is_file() && blob_file(&keep).is_file());
    ok(env
        .skopeo()
        .args(["delete", "--tls-verify=false", "--creds", &env.srv.creds()])
        .arg(env.docker_ref("peers/drop:v1")));
    // With the default grace period nothing this young is touched.
    let report = ok(Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["registry", "gc", "--data"])
        .arg(&env.srv.data));
    assert!(report.contains(" 0 deleted"), "{report}");
    assert!(blob_file(&drop).is_file());
    let report = ok(Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["registry", "gc", "--grace", "0s", "--data"])
        .arg(&env.srv.data));
    assert!(!report.contains(" 0 deleted"), "{report}");
    assert!(
        !blob_file(&drop).exists(),
        "the deleted manifest survived gc"
    );
    assert!(blob_file(&keep).is_file(), "gc removed a live manifest");
    // The live image still pulls whole, from the server that kept running.
    ok(env
        .skopeo()
        .args([
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            &env.srv.creds(),
        ])
        .arg(env.docker_ref("peers/keep:v1"))
        .arg(format!(
            "oci:{}:v1",
            env.tmp.path().join("after-gc").display()
        )));
}
