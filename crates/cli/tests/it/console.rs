//! The web console in a real browser: headless Debian chromium, driven by
//! playwright-core from npm (`tests/console/console.mjs`), against a real
//! `slipway up` with two agents. The script signs in, watches a build's log
//! live, cancels it from the page, checks a failed run's step, the
//! registry pages, a 100,000-line log, a not-found page, a stored task, a
//! token made in the console and a pool-scoped token; it saves a screenshot of each page under `target/artifacts/console`
//! (or `$SLIPWAY_ARTIFACTS/console`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::control::{Plane, need_root};

fn write(dir: &Path, dockerfile: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
}

/// Where playwright-core is: `$SLIPWAY_NPM` (scripts/test.sh installs it).
fn npm_prefix() -> PathBuf {
    let prefix = std::env::var_os("SLIPWAY_NPM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/slipway-test/npm")
        });
    assert!(
        prefix.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed under {} (SLIPWAY_NPM): run ./scripts/test.sh, which installs it from npm",
        prefix.display()
    );
    prefix
}

#[test]
fn console_in_a_browser_against_slipway_up() {
    if !need_root() {
        return;
    }
    let npm = npm_prefix();
    let chromium = crate::harness::tool("chromium");
    let tmp = tempfile::tempdir().unwrap();
    let (up, plane) = Plane::up(tmp.path(), 2);
    let base = plane.import_busybox();
    let c = plane.client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let scoped = rt.block_on(async {
        crate::control::make_pool(&c, "other", 0).await;
        c.create_task(&api::TaskDef {
            name: "nightly".into(),
            pool: "default".into(),
            task: api::TaskSpec {
                file: "version: v1.1.0\nsteps:\n  - cmd: busybox echo hello\n".into(),
                origin: "acb.yaml".into(),
                ..Default::default()
            },
            context: None,
            timeout_secs: None,
            status: "Enabled".into(),
            created_at: 0,
            updated_at: 0,
        })
        .await
        .unwrap();
        c.create_token(&api::TokenRequest {
            name: "viewer".into(),
            admin: false,
            grants: vec!["pool:other:build".into()],
        })
        .await
        .unwrap()
        .token
    });

    let contexts = tmp.path().join("contexts");
    write(
        &contexts.join("slow"),
        "ARG BASE\nFROM ${BASE}\nRUN for i in $(seq 1 240); do echo tick-$i; sleep 0.5; done\n",
    );
    write(
        &contexts.join("fails"),
        "ARG BASE\nFROM ${BASE}\nRUN echo about-to-fail && exit 3\n",
    );
    write(
        &contexts.join("many"),
        "ARG BASE\nFROM ${BASE}\nRUN seq 1 100000 | sed 's/^/line-/'\n",
    );
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    std::fs::create_dir_all(contexts.join("hello")).unwrap();
    for f in ["Dockerfile", "greeting.txt"] {
        std::fs::copy(hello.join(f), contexts.join("hello").join(f)).unwrap();
    }

    let artifacts = std::env::var_os("SLIPWAY_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts"))
        .join("console");
    let _ = std::fs::remove_dir_all(&artifacts);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.mjs");
    let out = Command::new(crate::harness::tool("node"))
        .arg(&script)
        .env("CONSOLE_URL", &plane.url)
        .env("ADMIN_TOKEN", &plane.token)
        .env("SCOPED_TOKEN", &scoped)
        .env("SLIPWAY_BIN", env!("CARGO_BIN_EXE_slipway"))
        .env("BASE_IMAGE", &base)
        .env("CONTEXTS", &contexts)
        .env("ARTIFACTS", &artifacts)
        .env("SLIPWAY_NPM", &npm)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed (screenshot: {}):\n{stdout}\n{stderr}\nup:\n{}",
        artifacts.join("failure.png").display(),
        up.text()
    );
    for page in [
        "signin-error",
        "pools",
        "run-live",
        "run-failed",
        "runs",
        "repositories",
        "repository",
        "run-100k-lines",
        "not-found",
        "task",
        "tokens",
        "run-narrow-dark",
        "scoped",
    ] {
        let png = artifacts.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(
            bytes.len() > 1000 && bytes.starts_with(b"\x89PNG"),
            "no screenshot {}",
            png.display()
        );
    }
    assert_eq!(stdout.matches("ok - ").count(), 23, "{stdout}");
}
