//! Rootless: a user namespace. As root, the same code path with a map to
//! unprivileged host ids; as an unprivileged user, the caller mapped to root.

use super::*;

/// Runs the user-namespace mode with a map of 0..65536 inside to
/// 200000.. outside (what subordinate ranges give an unprivileged user).
#[tokio::test]
async fn user_namespace_mode_isolates_too() {
    if !root_or_skip("user_namespace_mode_isolates_too") {
        return;
    }
    let fs = busybox_rootfs();
    // The ids inside map to 200000+ outside: let them use the rootfs dirs.
    let chown = |p: &Path| {
        std::process::Command::new("chown")
            .args(["-R", "200000:200000"])
            .arg(p)
            .status()
            .unwrap()
    };
    assert!(chown(fs.dir.path()).success());
    let state = TempDir::new().unwrap();
    assert!(
        std::process::Command::new("chmod")
            .args(["755"])
            .arg(state.path())
            .status()
            .unwrap()
            .success()
    );
    let map = vec![IdMap {
        inside: 0,
        outside: 200000,
        count: 65536,
    }];
    let sb = sandbox(
        Mode::UserNamespace {
            uid_map: map.clone(),
            gid_map: map,
        },
        state.path(),
    );
    let mut spec = sh(
        &fs,
        "id -u; hostname; cat /proc/self/uid_map; echo hi > /f; rm /etc/image-file; cat /run/secrets/s; ls /proc | grep -cE '^[0-9]+$'",
    );
    spec.secrets.push(Secret::new("s", "shh\n"));
    spec.network = Network::None;
    let r = run_with(&sb, &spec, &CancellationToken::new()).await;
    assert!(r.outcome.status.success(), "{} {}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("0\nsandbox\n"), "{}", r.stdout);
    assert!(r.stdout.contains("200000"), "{}", r.stdout);
    assert!(r.stdout.contains("shh"));
    let upper = tree(fs.upper());
    assert!(upper.contains(&"f".to_string()), "{upper:?}");
    // The deletion is recorded (userxattr whiteout) and nothing else leaks.
    assert!(
        upper.contains(&"etc/image-file".to_string()) || upper.contains(&"etc".to_string()),
        "{upper:?}"
    );
    assert!(
        !upper
            .iter()
            .any(|p| p.starts_with("run") || p == "etc/hosts"),
        "{upper:?}"
    );
    // Files created inside belong to the mapped id outside.
    let meta = std::fs::metadata(fs.upper().join("f")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 200000);
}

/// The real unprivileged case, run as `nobody` through `setpriv` when
/// this test runs as root: `slipway`'s rootless mode end to end.
#[tokio::test]
async fn unprivileged_user_runs_rootless() {
    if !root_or_skip("unprivileged_user_runs_rootless (drops to nobody via setpriv)") {
        return;
    }
    if !sandbox::namespaces::user_namespaces_allowed() {
        panic!("unprivileged user namespaces are disabled on this kernel");
    }
    let fs = busybox_rootfs();
    let state = tempfile::Builder::new()
        .prefix("sbx-state-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    for p in [fs.dir.path(), state.path()] {
        let st = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
    // The test binary re-runs itself as nobody with one ignored test that
    // does the actual work.
    let me = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&me)
        .args(["--ignored", "--exact", "rootless::as_nobody", "--nocapture"])
        .env("SBX_ROOTFS", fs.dir.path())
        .env("SBX_STATE", state.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}

#[tokio::test]
#[ignore = "run by unprivileged_user_runs_rootless as an unprivileged user"]
async fn as_nobody() {
    assert!(!rustix::process::geteuid().is_root());
    let dir = PathBuf::from(std::env::var("SBX_ROOTFS").unwrap());
    let rootfs = RootFs {
        lower: vec![dir.join("lower")],
        upper: dir.join("upper"),
        work: dir.join("work"),
    };
    let mode = Mode::detect().unwrap();
    assert!(matches!(mode, Mode::UserNamespace { .. }), "{mode:?}");
    let sb = sandbox(mode, Path::new(&std::env::var("SBX_STATE").unwrap()));
    let script = "id -u; hostname; echo w > /w; rm /etc/image-file; cat /run/secrets/s; \
                  ls /proc | grep -cE '^[0-9]+$'; ls /";
    let mut spec = RunSpec::new(
        rootfs.clone(),
        vec!["/bin/sh".into(), "-c".into(), script.into()],
    );
    spec.secrets.push(Secret::new("s", "shh\n"));
    let r = run_with(&sb, &spec, &CancellationToken::new()).await;
    assert!(r.outcome.status.success(), "{} {}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("0\nsandbox\n"), "{}", r.stdout);
    assert!(r.stdout.contains("shh"));
    let upper = tree(&rootfs.upper);
    assert!(upper.contains(&"w".to_string()), "{upper:?}");
    assert!(!upper.iter().any(|p| p.starts_with("run")), "{upper:?}");
    // Timeout works rootless too.
    let mut spec = RunSpec::new(rootfs.clone(), vec!["sleep".into(), "1005".into()]);
    spec.limits.timeout = Some(Duration::from_millis(300));
    spec.network = Network::None;
    let r = run_with(&sb, &spec, &CancellationToken::new()).await;
    assert!(r.outcome.timed_out);
    assert!(host_processes_with("sleep\u{0}1005").is_empty());
}
