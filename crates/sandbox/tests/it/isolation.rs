//! What a process inside can see and where its writes go.

use super::*;

#[tokio::test]
async fn output_and_exit_codes_propagate() {
    if !root_or_skip("output_and_exit_codes_propagate") {
        return;
    }
    let fs = busybox_rootfs();
    let r = run(&sh(&fs, "echo out; echo err >&2; exit 3")).await;
    assert_eq!(r.outcome.status, ExitStatus::exited(3));
    assert_eq!(r.stdout, "out\n");
    assert_eq!(r.stderr, "err\n");
    assert!(!r.outcome.timed_out && !r.outcome.canceled);
    // A signal kills the program like anywhere else: 128 + n.
    let r = run(&sh(&fs, "kill -TERM $$; sleep 5")).await;
    assert_eq!(r.outcome.status, ExitStatus::signaled(15));
    assert_eq!(r.outcome.status.code, 143);
    let r = run(&sh(&fs, "kill -KILL $$")).await;
    assert_eq!(r.outcome.status.code, 137);
}

#[tokio::test]
async fn cannot_see_host_files_processes_or_name() {
    if !root_or_skip("cannot_see_host_files_processes_or_name") {
        return;
    }
    let fs = busybox_rootfs();
    let marker = fs.dir.path().display().to_string();
    let script = r#"
        echo "host:$(hostname)"
        echo "pids:$(ls /proc | grep -E '^[0-9]+$' | tr '\n' ' ')"
        echo "self:$$"
        ls / | tr '\n' ' '; echo
        cat /proc/self/mountinfo
        test -e /bin/busybox && echo has-busybox
        cat /etc/image-file
        cat /etc/hostname
        grep -c . /etc/hosts
        ls /dev | tr '\n' ' '; echo
        id
        grep Cap /proc/self/status
        grep NoNewPrivs /proc/self/status
    "#;
    let r = run(&sh(&fs, script)).await;
    assert!(
        r.outcome.status.success(),
        "{r:?}",
        r = (&r.stdout, &r.stderr)
    );
    let host_name = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(r.stdout.contains("host:sandbox\n"), "{}", r.stdout);
    assert_ne!(host_name, "sandbox");
    // Only pid 1 (the init) and the script's own processes.
    let pids = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("pids:"))
        .unwrap();
    let pids: Vec<u32> = pids
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.iter().all(|p| *p < 10), "{pids:?}");
    assert!(
        r.stdout.contains("self:2\n"),
        "the program is pid 2: {}",
        r.stdout
    );
    // No host path anywhere in the mount table.
    assert!(
        !r.stdout.contains(&marker),
        "host path visible:\n{}",
        r.stdout
    );
    assert!(!r.stdout.contains("/work/"), "{}", r.stdout);
    assert!(r.stdout.contains("has-busybox"));
    assert!(r.stdout.contains("from the image"));
    assert!(r.stdout.contains("sandbox\n3\n"), "{}", r.stdout);
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx",
    ] {
        assert!(r.stdout.contains(dev), "/dev/{dev} missing: {}", r.stdout);
    }
    // Docker's default capability set, no_new_privs.
    assert!(
        r.stdout.contains("CapBnd:\t00000000a80425fb"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("CapEff:\t00000000a80425fb"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("NoNewPrivs:\t1"), "{}", r.stdout);
}

#[tokio::test]
async fn writes_land_only_in_the_upper_dir_and_secrets_nowhere() {
    if !root_or_skip("writes_land_only_in_the_upper_dir_and_secrets_nowhere") {
        return;
    }
    let fs = busybox_rootfs();
    let lower_before = tree(&fs.rootfs.lower[0]);
    let mut spec = sh(
        &fs,
        "echo new > /new-file && mkdir -p /a/b && echo x > /a/b/c && rm /etc/image-file \
         && cat /run/secrets/token && echo 10.1.1.1 extra >> /etc/hosts && ls -l /run/secrets/token",
    );
    spec.secrets.push(Secret::new("token", "s3cr3t-value\n"));
    spec.process.uid = 1000;
    spec.process.gid = 1000;
    // A user cannot write to /, so run as root for the writes but keep the
    // secret test for user 1000 below.
    spec.process.uid = 0;
    spec.process.gid = 0;
    let r = run(&spec).await;
    assert!(r.outcome.status.success(), "{} {}", r.stdout, r.stderr);
    assert!(r.stdout.contains("s3cr3t-value"));
    assert_eq!(
        tree(&fs.rootfs.lower[0]),
        lower_before,
        "the lower dir changed"
    );
    let upper = tree(fs.upper());
    assert!(upper.contains(&"new-file".to_string()), "{upper:?}");
    assert!(upper.contains(&"a/b/c".to_string()), "{upper:?}");
    // The deletion is a whiteout in the upper dir.
    assert!(upper.contains(&"etc/image-file".to_string()), "{upper:?}");
    // None of the run's scaffolding.
    for absent in [
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "run",
        "run/secrets",
        "proc",
        "sys",
        "dev",
    ] {
        assert!(
            !upper.contains(&absent.to_string()),
            "{absent} left in the upper dir: {upper:?}"
        );
    }
    for f in upper {
        let p = fs.upper().join(&f);
        if p.is_file() {
            assert!(
                !std::fs::read_to_string(&p)
                    .unwrap_or_default()
                    .contains("s3cr3t"),
                "secret in {f}"
            );
        }
    }

    // A non-root user reads its secret; it cannot write it.
    let mut spec = sh(
        &fs,
        "id -u; cat /run/secrets/token; echo x > /run/secrets/token || echo read-only",
    );
    spec.secrets.push(Secret::new("token", "for-user\n"));
    spec.process.uid = 1000;
    spec.process.gid = 1000;
    let r = run(&spec).await;
    assert!(r.outcome.status.success(), "{} {}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "1000\nfor-user\nread-only\n", "{}", r.stderr);
    // Unprivileged inside: no capabilities.
    let mut spec = sh(&fs, "grep CapEff /proc/self/status");
    spec.process.uid = 1000;
    let r = run(&spec).await;
    assert!(
        r.stdout.contains("CapEff:\t0000000000000000"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn mounts_binds_caches_tmpfs() {
    if !root_or_skip("mounts_binds_caches_tmpfs") {
        return;
    }
    let fs = busybox_rootfs();
    let host = TempDir::new().unwrap();
    std::fs::write(host.path().join("in.txt"), "bound\n").unwrap();
    let cache = TempDir::new().unwrap();
    let mut spec = sh(
        &fs,
        "cat /src/in.txt; echo no > /src/x 2>/dev/null || echo ro; echo c >> /cache/c; \
         echo t > /scratch/t; cat /cache/c | wc -l",
    );
    spec.mounts = vec![
        Mount::Bind {
            source: host.path().into(),
            target: "/src".into(),
            readonly: true,
        },
        Mount::Cache {
            source: cache.path().into(),
            target: "/cache".into(),
        },
        Mount::Tmpfs {
            target: "/scratch".into(),
            size: Some(1 << 20),
        },
    ];
    let r = run(&spec).await;
    assert_eq!(r.stdout, "bound\nro\n1\n", "{}", r.stderr);
    let r = run(&spec).await;
    assert!(
        r.stdout.ends_with("2\n"),
        "the cache persists: {}",
        r.stdout
    );
    let upper = tree(fs.upper());
    assert!(
        upper
            .iter()
            .all(|p| !p.starts_with("cache") && !p.starts_with("scratch") && !p.starts_with("src")),
        "{upper:?}"
    );
}

#[tokio::test]
async fn setup_errors_are_errors_not_exit_codes() {
    if !root_or_skip("setup_errors_are_errors_not_exit_codes") {
        return;
    }
    let fs = busybox_rootfs();
    let state = TempDir::new().unwrap();
    let sb = sandbox(Mode::Root, state.path());
    let spec = RunSpec::new(fs.rootfs.clone(), vec!["/no/such/program".into()]);
    let err = sb
        .run(
            &spec,
            &mut Vec::new(),
            &mut Vec::new(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/no/such/program"), "{err}");
    let mut spec = sh(&fs, "true");
    spec.process.cwd = "/missing".into();
    let err = sb
        .run(
            &spec,
            &mut Vec::new(),
            &mut Vec::new(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/missing"), "{err}");
    // The run dirs are gone.
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn image_config_runs() {
    if !root_or_skip("image_config_runs") {
        return;
    }
    let fs = busybox_rootfs();
    let cfg = oci_spec::image::ConfigBuilder::default()
        .entrypoint(vec!["/bin/sh".to_string(), "-c".to_string()])
        .cmd(vec!["echo $GREETING from $(id -u) in $(pwd)".to_string()])
        .env(vec!["GREETING=hello".to_string()])
        .user("user".to_string())
        .working_dir("/tmp".to_string())
        .build()
        .unwrap();
    let process = image_process(Some(&cfg), &fs.rootfs, &ImageRun::default()).unwrap();
    let mut spec = RunSpec::new(fs.rootfs.clone(), vec![]);
    spec.process = process;
    let r = run(&spec).await;
    assert_eq!(r.stdout, "hello from 1000 in /tmp\n", "{}", r.stderr);
}
