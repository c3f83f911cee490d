//! Docker's default confinement, seen from inside a run: the seccomp
//! profile, `nodev,nosuid` mounts, the standard `/dev`, masked and
//! read-only `/proc` paths, the device cgroup.

use super::*;

/// Runs `script` with `security`, returning stdout (asserting exit 0).
async fn script(fs: &Fs, script: &str, security: Security) -> String {
    let mut spec = sh(fs, script);
    spec.security = security;
    let r = run(&spec).await;
    assert!(
        r.outcome.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        r.outcome.status,
        r.stdout,
        r.stderr
    );
    r.stdout
}

#[tokio::test]
async fn seccomp_filter_is_on_and_denies_user_namespaces() {
    if !root_or_skip("seccomp_filter_is_on_and_denies_user_namespaces") {
        return;
    }
    let fs = busybox_rootfs();
    let probe = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; \
                 unshare -U true 2>&1 && echo unshare=ok || echo unshare=failed; \
                 unshare -m true 2>&1 || echo unshare-m=failed; \
                 mkdir -p /mnt && mount -t tmpfs none /mnt 2>&1 || echo mount=failed";
    let out = script(&fs, probe, Security::Default).await;
    assert!(out.contains("Seccomp:\t2\n"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1\n"), "{out}");
    assert!(out.contains("unshare=failed"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.contains("unshare-m=failed"), "{out}");
    assert!(out.contains("mount=failed"), "{out}");
    // Insecure (a pool's policy allowed it): no filter, and then the very
    // same unshare works: the filter is what stopped it above.
    let out = script(&fs, probe, Security::Insecure).await;
    assert!(out.contains("Seccomp:\t0\n"), "{out}");
    assert!(out.contains("unshare=ok"), "{out}");
    // Still Docker's capabilities: mount is refused by the kernel.
    assert!(out.contains("mount=failed"), "{out}");
}

/// The host's `/usr` (perl, its libc) bound read-only into the busybox
/// rootfs, so that perl's `syscall` can issue raw system calls inside.
fn with_host_perl(fs: &Fs, spec: &mut RunSpec) {
    let lower = &fs.rootfs.lower[0];
    for d in ["lib", "lib64"] {
        let host = Path::new("/").join(d);
        match std::fs::read_link(&host) {
            Ok(to) => {
                let _ = std::os::unix::fs::symlink(to, lower.join(d));
            }
            Err(_) if host.is_dir() => spec.mounts.push(Mount::Bind {
                source: host,
                target: format!("/{d}"),
                readonly: true,
            }),
            Err(_) => {}
        }
    }
    spec.mounts.push(Mount::Bind {
        source: "/usr".into(),
        target: "/usr".into(),
        readonly: true,
    });
}

#[tokio::test]
async fn denied_system_calls_fail_with_eperm() {
    if !root_or_skip("denied_system_calls_fail_with_eperm") {
        return;
    }
    assert!(
        Path::new("/usr/bin/perl").exists(),
        "perl (Debian's essential perl-base) is needed to issue raw system calls"
    );
    use nix::libc;
    // (name, number, arguments): arguments that would succeed (or fail
    // with something other than EPERM) without the filter.
    let calls: Vec<(&str, i64, &str)> = vec![
        // KEYCTL_GET_KEYRING_ID of the session keyring, creating it.
        ("keyctl", libc::SYS_keyctl, "0, -3, 1"),
        ("add_key", libc::SYS_add_key, "0, 0, 0, 0, 0"),
        ("request_key", libc::SYS_request_key, "0, 0, 0, 0"),
        ("userfaultfd", libc::SYS_userfaultfd, "0"),
        ("bpf", libc::SYS_bpf, "0, 0, 0"),
        (
            "perf_event_open",
            libc::SYS_perf_event_open,
            "0, 0, -1, -1, 0",
        ),
        ("kexec_load", libc::SYS_kexec_load, "0, 0, 0, 0"),
        ("open_by_handle_at", libc::SYS_open_by_handle_at, "0, 0, 0"),
        // CLONE_NEWUSER, and clone with it.
        ("unshare", libc::SYS_unshare, "0x10000000"),
        ("setns", libc::SYS_setns, "0, 0"),
        ("mount", libc::SYS_mount, "0, 0, 0, 0, 0"),
        ("umount2", libc::SYS_umount2, "0, 0"),
        ("init_module", libc::SYS_init_module, "0, 0, 0"),
        ("reboot", libc::SYS_reboot, "0, 0, 0, 0"),
        ("swapon", libc::SYS_swapon, "0, 0"),
        ("syslog", libc::SYS_syslog, "3, 0, 0"),
        ("fsopen", libc::SYS_fsopen, "0, 0"),
        // socket(AF_VSOCK, SOCK_STREAM, 0).
        ("socket(AF_VSOCK)", libc::SYS_socket, "40, 1, 0"),
        // personality(ADDR_NO_RANDOMIZE).
        ("personality", libc::SYS_personality, "0x0040000"),
    ];
    let mut perl = String::new();
    for (name, nr, args) in &calls {
        perl.push_str(&format!(
            "$! = 0; $r = syscall({nr}, {args}); print \"{name} $r \", $!+0, \"\\n\"; "
        ));
    }
    // clone3 answers ENOSYS so that libc falls back to clone.
    perl.push_str(&format!(
        "$! = 0; $r = syscall({}, 0, 0); print \"clone3 $r \", $!+0, \"\\n\";",
        libc::SYS_clone3
    ));
    let fs = busybox_rootfs();
    let mut spec = RunSpec::new(
        fs.rootfs.clone(),
        vec!["/usr/bin/perl".into(), "-e".into(), perl],
    );
    with_host_perl(&fs, &mut spec);
    let r = run(&spec).await;
    assert!(r.outcome.status.success(), "{} {}", r.stdout, r.stderr);
    for (name, _, _) in &calls {
        assert!(
            r.stdout.contains(&format!("{name} -1 {}\n", libc::EPERM)),
            "{name} did not fail with EPERM:\n{}",
            r.stdout
        );
    }
    assert!(
        r.stdout.contains(&format!("clone3 -1 {}\n", libc::ENOSYS)),
        "{}",
        r.stdout
    );
    // Without the filter keyctl works: the EPERM above is the filter's.
    spec.security = Security::Insecure;
    let r = run(&spec).await;
    let line = r.stdout.lines().find(|l| l.starts_with("keyctl ")).unwrap();
    assert!(
        !line.ends_with(&format!(" {}", libc::EPERM)),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn mounts_are_nodev_nosuid_and_device_nodes_are_inert() {
    if !root_or_skip("mounts_are_nodev_nosuid_and_device_nodes_are_inert") {
        return;
    }
    let fs = busybox_rootfs();
    let host = TempDir::new().unwrap();
    let cache = TempDir::new().unwrap();
    let mut spec = sh(
        &fs,
        "cat /proc/mounts; \
         mknod /x b 8 0 && echo mknod=ok; \
         dd if=/x of=/dev/null bs=512 count=1 2>&1 || echo dd-root=failed; \
         mknod /dev/sdz b 8 0 && (dd if=/dev/sdz of=/dev/null bs=512 count=1 2>&1 || echo dd-dev=failed); \
         mknod /src/mem c 1 1 && (dd if=/src/mem of=/dev/null bs=1 count=1 2>&1 || echo dd-bind=failed); \
         mknod /dev/shm/sdz b 8 0 && (dd if=/dev/shm/sdz of=/dev/null bs=512 count=1 2>&1 || echo dd-shm=failed); \
         echo x > /dev/null && head -c 4 /dev/zero | wc -c",
    );
    spec.mounts = vec![
        Mount::Bind {
            source: host.path().into(),
            target: "/src".into(),
            readonly: false,
        },
        Mount::Cache {
            source: cache.path().into(),
            target: "/cache".into(),
        },
    ];
    let r = run(&spec).await;
    assert!(r.outcome.status.success(), "{} {}", r.stdout, r.stderr);
    let mounts: Vec<(&str, Vec<&str>)> = r
        .stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[1], f[3].split(',').collect()))
        })
        .collect();
    let opts = |target: &str| {
        mounts
            .iter()
            .rev()
            .find(|(t, _)| *t == target)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("no mount on {target}: {}", r.stdout))
    };
    for target in [
        "/",
        "/src",
        "/cache",
        "/dev",
        "/dev/shm",
        "/dev/mqueue",
        "/proc",
        "/sys",
    ] {
        let o = opts(target);
        assert!(
            o.contains(&"nodev") && o.contains(&"nosuid"),
            "{target}: {o:?}"
        );
    }
    // The rootfs is the overlay.
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("overlay / overlay ")),
        "{}",
        r.stdout
    );
    // A block device made inside cannot be opened anywhere.
    assert!(r.stdout.contains("mknod=ok"), "{}", r.stdout);
    for what in ["dd-root", "dd-dev", "dd-bind", "dd-shm"] {
        assert!(
            r.stdout.contains(&format!("{what}=failed")),
            "{what}: {}",
            r.stdout
        );
    }
    // The standard devices still work.
    assert!(r.stdout.ends_with("4\n"), "{}", r.stdout);
    // Nothing of it lands in the bind source as a usable device: it is
    // a node on the host too, but the run could not open it.
    assert!(host.path().join("mem").exists());
    std::fs::remove_file(host.path().join("mem")).unwrap();
}

#[tokio::test]
async fn dev_holds_only_the_standard_devices() {
    if !root_or_skip("dev_holds_only_the_standard_devices") {
        return;
    }
    let fs = busybox_rootfs();
    let out = script(
        &fs,
        "ls -A /dev | tr '\\n' ' '; echo; ls -A /dev/pts | tr '\\n' ' '; echo; \
         for l in ptmx fd stdin stdout stderr; do readlink /dev/$l; done",
        Security::Default,
    )
    .await;
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap().trim(),
        "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"
    );
    // A devpts of its own: only its ptmx.
    assert_eq!(lines.next().unwrap().trim(), "ptmx");
    assert_eq!(
        lines.collect::<Vec<_>>(),
        [
            "pts/ptmx",
            "/proc/self/fd",
            "/proc/self/fd/0",
            "/proc/self/fd/1",
            "/proc/self/fd/2"
        ]
    );
}

#[tokio::test]
async fn masked_paths_read_empty_and_read_only_paths_are_read_only() {
    if !root_or_skip("masked_paths_read_empty_and_read_only_paths_are_read_only") {
        return;
    }
    let fs = busybox_rootfs();
    let out = script(
        &fs,
        "for f in /proc/kcore /proc/keys /proc/interrupts /proc/timer_list /proc/sched_debug \
                  /proc/latency_stats /proc/timer_stats; do \
           [ -e $f ] && echo \"$f $(wc -c < $f)\"; \
         done; \
         for d in /proc/acpi /proc/asound /proc/scsi /sys/firmware /sys/devices/virtual/powercap; do \
           [ -e $d ] && echo \"$d $(ls -A $d | wc -l)\"; \
         done; \
         echo 1 > /proc/sys/kernel/sysrq 2>/dev/null && echo sysctl=written || echo sysctl=refused; \
         echo h > /proc/sysrq-trigger 2>/dev/null && echo sysrq=written || echo sysrq=refused; \
         touch /sys/kernel/x 2>/dev/null && echo sys=written || echo sys=refused; \
         grep -E ' /proc/(sys|bus|fs|irq|sysrq-trigger) ' /proc/mounts",
        Security::Default,
    )
    .await;
    // Each masked path this kernel has is there, and empty.
    for p in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/interrupts",
        "/proc/timer_list",
        "/proc/acpi",
        "/sys/firmware",
    ] {
        if Path::new(p).exists() {
            assert!(out.contains(&format!("{p} 0\n")), "{p}: {out}");
        }
    }
    for l in out
        .lines()
        .filter(|l| l.starts_with("/proc/") || l.starts_with("/sys/"))
    {
        if let Some((_, n)) = l.rsplit_once(' ')
            && n.chars().all(|c| c.is_ascii_digit())
        {
            assert_eq!(n, "0", "{l} is not empty:\n{out}");
        }
    }
    assert!(out.contains("sysctl=refused"), "{out}");
    assert!(out.contains("sysrq=refused"), "{out}");
    assert!(out.contains("sys=refused"), "{out}");
    let ro: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("proc /proc/"))
        .collect();
    assert!(
        ro.iter().any(|l| l.contains(" /proc/sys ")),
        "/proc/sys is not a mount of its own:\n{out}"
    );
    for l in ro {
        assert!(l.contains(" ro,"), "not read-only: {l}");
    }
}

#[tokio::test]
async fn root_runs_join_dockers_device_cgroup() {
    if !root_or_skip("root_runs_join_dockers_device_cgroup") {
        return;
    }
    let devices = Path::new(sandbox::cgroups::DEFAULT_ROOT).join("devices");
    if !devices.join("devices.list").exists() {
        // cgroup v2 only: no v1 device controller to join (see the crate
        // docs); nodev mounts are what keeps nodes inert there.
        eprintln!("no cgroup v1 devices controller on this host");
        return;
    }
    let fs = busybox_rootfs();
    let state = TempDir::new().unwrap();
    let sb = sandbox(Mode::Root, state.path());
    let spec = RunSpec::new(fs.rootfs.clone(), vec!["sleep".into(), "1005".into()]);
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let run = tokio::spawn(async move {
        let _ = sb
            .run(&spec, &mut Vec::new(), &mut Vec::new(), &c2)
            .await
            .unwrap();
    });
    let t = Instant::now();
    let pid = loop {
        if let Some(p) = host_processes_with("sleep\u{0}1005").first() {
            break *p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the run never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    cancel.cancel();
    run.await.unwrap();
    let line = cg
        .lines()
        .find(|l| l.split(':').nth(1) == Some("devices"))
        .unwrap_or_else(|| panic!("{cg}"));
    let path = line.splitn(3, ':').nth(2).unwrap();
    assert_eq!(path, "/slipway/sandbox-devices", "{cg}");
    let list =
        std::fs::read_to_string(devices.join("slipway/sandbox-devices/devices.list")).unwrap();
    let mut have: Vec<&str> = list.lines().collect();
    let mut want = sandbox::cgroups::DEVICE_RULES.to_vec();
    have.sort_unstable();
    want.sort_unstable();
    assert_eq!(have, want);
}

/// What Docker allows is enough for real programs: the host's dpkg, apt and
/// perl (fork, pipes, sockets, threads through glibc's clone3 → clone
/// fallback) run under the filter, on binds of the host's package state.
#[tokio::test]
async fn package_tools_run_under_the_filter() {
    if !root_or_skip("package_tools_run_under_the_filter") {
        return;
    }
    for tool in ["/usr/bin/dpkg", "/usr/bin/apt-get", "/usr/bin/perl"] {
        assert!(Path::new(tool).exists(), "{tool} is needed (Debian host)");
    }
    let fs = busybox_rootfs();
    let mut spec = sh(
        &fs,
        "grep Seccomp: /proc/self/status && \
         /usr/bin/dpkg -s dpkg | grep -q '^Status: install ok installed' && echo dpkg=ok && \
         /usr/bin/apt-get -o Debug::NoLocking=1 check >/dev/null && echo apt-check=ok && \
         /usr/bin/apt-config dump | grep -q '^APT::Architecture' && echo apt-config=ok && \
         /usr/bin/perl -e 'pipe(R, W); my $p = fork(); if (!$p) { print W \"child\"; exit 0 } \
                  close W; my $l = <R>; waitpid($p, 0); \
                  use Socket; socket(S, AF_INET, SOCK_STREAM, 0) or die \"socket: $!\"; \
                  socketpair(A, B, AF_UNIX, SOCK_STREAM, 0) or die \"socketpair: $!\"; \
                  print \"perl=$l\\n\"' && \
         sh -c 'sleep 0 & wait' && echo done",
    );
    with_host_perl(&fs, &mut spec);
    for d in [
        "/etc/apt",
        "/etc/dpkg",
        "/var/lib/dpkg",
        "/var/lib/apt",
        "/var/cache/apt",
    ] {
        if Path::new(d).is_dir() {
            spec.mounts.push(Mount::Bind {
                source: d.into(),
                target: d.into(),
                readonly: true,
            });
        }
    }
    let r = run(&spec).await;
    assert!(
        r.outcome.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    for want in [
        "Seccomp:\t2",
        "dpkg=ok",
        "apt-check=ok",
        "apt-config=ok",
        "perl=child",
        "done",
    ] {
        assert!(
            r.stdout.contains(want),
            "{want}: {}\n{}",
            r.stdout,
            r.stderr
        );
    }
}
