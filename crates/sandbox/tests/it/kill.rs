//! Timeouts, cancellation, limits: the whole tree dies, checked from the host.

use super::*;

#[tokio::test]
async fn timeout_kills_sleep_and_leaves_nothing() {
    if !root_or_skip("timeout_kills_sleep_and_leaves_nothing") {
        return;
    }
    let fs = busybox_rootfs();
    let mut spec = RunSpec::new(fs.rootfs.clone(), vec!["sleep".into(), "1000".into()]);
    spec.limits.timeout = Some(Duration::from_millis(500));
    let t = Instant::now();
    let r = run(&spec).await;
    assert!(r.outcome.timed_out);
    assert_eq!(r.outcome.status.code, 137);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(host_processes_with("sleep\u{0}1000").is_empty());
}

#[tokio::test]
async fn timeout_kills_a_fork_loop() {
    if !root_or_skip("timeout_kills_a_fork_loop") {
        return;
    }
    let fs = busybox_rootfs();
    // Forks forever (sleepers in the background, detached into their own
    // sessions); the pids cgroup bounds it, the timeout ends it.
    let mut spec = sh(&fs, "while true; do setsid sleep 1001 & done");
    spec.limits.timeout = Some(Duration::from_secs(1));
    // Room for every pid the limit allows (each process costs the memory
    // cgroup tens of KiB of kernel memory): a memory-cgroup OOM kill would
    // end the run before the timeout does, which is not what this tests.
    spec.limits.pids = Some(5000);
    spec.limits.memory = Some(1 << 30);
    let t = Instant::now();
    let r = run(&spec).await;
    assert!(r.outcome.timed_out, "{:?} {}", r.outcome, r.stderr);
    assert!(
        !r.outcome.limits_not_enforced,
        "v1/v2 pids and memory controllers should be writable here"
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(
        host_processes_with("sleep\u{0}1001").is_empty(),
        "processes survived the run"
    );
}

#[tokio::test]
async fn pids_limit_is_enforced() {
    if !root_or_skip("pids_limit_is_enforced") {
        return;
    }
    let fs = busybox_rootfs();
    let mut spec = sh(
        &fs,
        "i=0; while [ $i -lt 50 ]; do sleep 1002 & i=$((i+1)); done; echo all-started",
    );
    spec.limits.pids = Some(20);
    spec.limits.timeout = Some(Duration::from_secs(5));
    let r = run(&spec).await;
    assert!(
        !r.stdout.contains("all-started"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("fork"), "{:?}", r.stderr);
    assert!(host_processes_with("sleep\u{0}1002").is_empty());
}

#[tokio::test]
async fn cancel_within_a_second() {
    if !root_or_skip("cancel_within_a_second") {
        return;
    }
    let fs = busybox_rootfs();
    let state = TempDir::new().unwrap();
    let sb = sandbox(Mode::Root, state.path());
    let spec = sh(&fs, "sleep 1003 & sleep 1003; echo never");
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let canceled_at = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.cancel();
        Instant::now()
    });
    let r = run_with(&sb, &spec, &cancel).await;
    let ended = Instant::now();
    let canceled_at = canceled_at.await.unwrap();
    assert!(r.outcome.canceled);
    assert_eq!(r.outcome.status.code, 137);
    assert!(
        ended - canceled_at < Duration::from_secs(1),
        "{:?}",
        ended - canceled_at
    );
    assert!(host_processes_with("sleep\u{0}1003").is_empty());
    assert!(!r.stdout.contains("never"));
}

#[tokio::test]
async fn dropping_the_run_kills_the_tree() {
    if !root_or_skip("dropping_the_run_kills_the_tree") {
        return;
    }
    let fs = busybox_rootfs();
    let state = TempDir::new().unwrap();
    let sb = sandbox(Mode::Root, state.path());
    let spec = sh(&fs, "sleep 1004");
    let fut = async {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        sb.run(&spec, &mut o, &mut e, &CancellationToken::new())
            .await
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), fut).await;
    let t = Instant::now();
    while !host_processes_with("sleep\u{0}1004").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the tree outlived the dropped run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn memory_limit_is_enforced() {
    if !root_or_skip("memory_limit_is_enforced") {
        return;
    }
    let fs = busybox_rootfs();
    // 200 MB in a shell variable against a 32 MiB limit: the OOM killer.
    let mut spec = sh(
        &fs,
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
    );
    spec.limits.memory = Some(32 << 20);
    spec.limits.timeout = Some(Duration::from_secs(20));
    let r = run(&spec).await;
    assert!(!r.outcome.limits_not_enforced);
    assert!(!r.stdout.contains("survived"), "{} {}", r.stdout, r.stderr);
    assert!(!r.outcome.timed_out);
}

/// The clearly-warned fallback: no isolation, but timeout and group kill.
#[tokio::test]
async fn unisolated_mode_still_times_out_and_kills_the_group() {
    let state = TempDir::new().unwrap();
    let sb = sandbox(Mode::Unisolated, state.path());
    let rootfs = RootFs {
        lower: vec!["/".into()],
        upper: state.path().join("u"),
        work: state.path().join("w"),
    };
    let spec = RunSpec::new(
        rootfs.clone(),
        vec!["/bin/sh".into(), "-c".into(), "echo hi; exit 4".into()],
    );
    let r = run_with(&sb, &spec, &CancellationToken::new()).await;
    assert_eq!((r.stdout.as_str(), r.outcome.status.code), ("hi\n", 4));
    let mut spec = RunSpec::new(
        rootfs.clone(),
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "sleep 1006 & sleep 1006".into(),
        ],
    );
    spec.limits.timeout = Some(Duration::from_millis(300));
    let r = run_with(&sb, &spec, &CancellationToken::new()).await;
    assert!(r.outcome.timed_out);
    assert!(host_processes_with("sleep\u{0}1006").is_empty());
    // What it cannot honour is refused, not silently dropped.
    let mut spec = RunSpec::new(rootfs, vec!["true".into()]);
    spec.network = Network::None;
    let err = sb
        .run(
            &spec,
            &mut Vec::new(),
            &mut Vec::new(),
            &CancellationToken::new(),
        )
        .await;
    assert!(matches!(err, Err(Error::Spec(SpecError::Unsupported(_)))));
}
