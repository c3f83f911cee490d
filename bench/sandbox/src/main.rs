//! Start-to-exit time of `/bin/true` in a busybox rootfs: Slipway's sandbox
//! against `crun run` and `runc run` on the same rootfs, interleaved in the
//! same run. Prints the median, mean and minimum of each and the ratios
//! (peer time / Slipway time: above 1 means Slipway is faster). Slipway is
//! measured twice: as a build step runs it (no cgroup without limits), and
//! with a pids limit, i.e. with a cgroup created, joined and removed, as
//! crun and runc do for every container.
//!
//! Every runtime gets fresh mount, PID, UTS, IPC and network namespaces
//! (runc's default spec; Slipway with `Network::None`). Slipway also mounts
//! an overlay (fresh upper dir per run), the others bind the rootfs.
//!
//! Slipway runs confined as every build step is: Docker's default seccomp
//! profile (compiled once per process, in the uncounted warm-up round, and
//! installed by its pid 1), `nodev,nosuid` mounts, and where the host has a
//! cgroup v1 `devices` controller, the shared device cgroup joined. crun
//! and runc run `runc spec`'s defaults: a device cgroup, no seccomp filter,
//! so they do less than Slipway does here. The `insecure` row is Slipway
//! without the filter and device cgroup (`RUN --security=insecure`), to
//! show what they cost.
//!
//! Run as root: `cargo run --release -p bench-sandbox -- [--runs N]`.
//! crun 1.8 refuses hybrid cgroup hosts unless `/sys/fs/cgroup/unified` is
//! hidden, so the benchmark first moves itself into a private mount
//! namespace where it is unmounted; all three runtimes run there.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sandbox::{
    CancellationToken, InitCommand, Mode, Network, RootFs, RunSpec, Sandbox, SandboxConfig,
    Security,
};

fn main() -> ExitCode {
    // The sandbox's init entry point: this binary is its own init.
    if std::env::args().nth(1).as_deref() == Some("sandbox-init") {
        return sandbox::init::main();
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<()> {
    let mut runs = 30usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().context("--runs needs a value")?.parse()?,
            "-h" | "--help" => {
                println!("usage: bench-sandbox [--runs N]   (as root)");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: crun/runc need it, and Slipway's root mode is what is compared");
    }
    private_mount_namespace()?;
    for tool in ["crun", "runc"] {
        which(tool).with_context(|| format!("{tool} is not installed (apt-get install {tool})"))?;
    }

    let work = tempfile::Builder::new()
        .prefix("bench-sandbox-")
        .tempdir()?;
    let rootfs = busybox_rootfs(work.path())?;
    let bundle = work.path().join("bundle");
    std::fs::create_dir_all(&bundle)?;
    write_oci_config(&bundle, &rootfs)?;
    let state = work.path().join("state");

    let init = InitCommand {
        program: std::env::current_exe()?,
        args: vec!["sandbox-init".into()],
    };
    let sb = Sandbox::new(SandboxConfig::new(
        Mode::Root,
        init,
        work.path().join("sandbox"),
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // The runs below are confined as build steps are: check the filter is on.
    {
        let dir = work.path().join("snap/check");
        std::fs::create_dir_all(dir.join("upper"))?;
        std::fs::create_dir_all(dir.join("work"))?;
        let spec = RunSpec::new(
            RootFs {
                lower: vec![rootfs.clone()],
                upper: dir.join("upper"),
                work: dir.join("work"),
            },
            vec![
                "/bin/grep".into(),
                "Seccomp:".into(),
                "/proc/self/status".into(),
            ],
        );
        let mut out = Vec::new();
        rt.block_on(sb.run(
            &spec,
            &mut out,
            &mut tokio::io::sink(),
            &CancellationToken::new(),
        ))?;
        let out = String::from_utf8_lossy(&out);
        if !out.contains("Seccomp:\t2") {
            bail!("slipway runs without its seccomp filter: {out:?}");
        }
    }

    let mut times: [Vec<Duration>; 5] = Default::default();
    // One warm-up round of each, not counted.
    for i in 0..=runs {
        let upper = work.path().join(format!("snap/{i}/upper"));
        let wdir = work.path().join(format!("snap/{i}/work"));
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&wdir)?;
        let mut spec = RunSpec::new(
            RootFs {
                lower: vec![rootfs.clone()],
                upper,
                work: wdir,
            },
            vec!["/bin/true".into()],
        );
        spec.network = Network::None;
        let t = Instant::now();
        let out = rt.block_on(sb.run(
            &spec,
            &mut tokio::io::sink(),
            &mut tokio::io::sink(),
            &CancellationToken::new(),
        ))?;
        let slipway = t.elapsed();
        if !out.status.success() {
            bail!("slipway: /bin/true exited {:?}", out.status);
        }
        // The same with a cgroup (pids limit), as crun and runc always create one.
        let cg = work.path().join(format!("snap/{i}/cg"));
        std::fs::create_dir_all(cg.join("upper"))?;
        std::fs::create_dir_all(cg.join("work"))?;
        spec.rootfs.upper = cg.join("upper");
        spec.rootfs.work = cg.join("work");
        spec.limits.pids = Some(1024);
        let t = Instant::now();
        let out = rt.block_on(sb.run(
            &spec,
            &mut tokio::io::sink(),
            &mut tokio::io::sink(),
            &CancellationToken::new(),
        ))?;
        let slipway_cg = t.elapsed();
        if !out.status.success() || out.limits_not_enforced {
            bail!("slipway with a cgroup: {out:?}");
        }
        // Without the seccomp filter and device cgroup (`--security=insecure`):
        // what the confinement costs.
        let bare = work.path().join(format!("snap/{i}/bare"));
        std::fs::create_dir_all(bare.join("upper"))?;
        std::fs::create_dir_all(bare.join("work"))?;
        spec.rootfs.upper = bare.join("upper");
        spec.rootfs.work = bare.join("work");
        spec.limits.pids = None;
        spec.security = Security::Insecure;
        let t = Instant::now();
        let out = rt.block_on(sb.run(
            &spec,
            &mut tokio::io::sink(),
            &mut tokio::io::sink(),
            &CancellationToken::new(),
        ))?;
        let slipway_bare = t.elapsed();
        if !out.status.success() {
            bail!("slipway without confinement: {out:?}");
        }
        let crun = time_oci("crun", &state.join("crun"), &bundle, i)?;
        let runc = time_oci("runc", &state.join("runc"), &bundle, i)?;
        if i > 0 {
            times[0].push(slipway);
            times[1].push(crun);
            times[2].push(runc);
            times[3].push(slipway_cg);
            times[4].push(slipway_bare);
        }
    }

    println!("start-to-exit of /bin/true in a busybox rootfs, {runs} runs each, interleaved");
    println!(
        "{:<10} {:>10} {:>10} {:>10}",
        "runtime", "median", "mean", "min"
    );
    let mut medians = Vec::new();
    for (name, t) in ["slipway", "crun", "runc", "slipway+cg", "insecure"]
        .iter()
        .zip(times.iter_mut())
    {
        t.sort();
        let median = t[t.len() / 2];
        let mean = t.iter().sum::<Duration>() / u32::try_from(t.len())?;
        println!(
            "{name:<10} {:>8.2}ms {:>8.2}ms {:>8.2}ms",
            ms(median),
            ms(mean),
            ms(t[0])
        );
        medians.push(median);
    }
    println!(
        "ratio (median): crun/slipway = {:.2}x, runc/slipway = {:.2}x  (> 1: slipway is faster)",
        ms(medians[1]) / ms(medians[0]),
        ms(medians[2]) / ms(medians[0])
    );
    println!(
        "with a pids cgroup like crun/runc: crun/slipway = {:.2}x, runc/slipway = {:.2}x",
        ms(medians[1]) / ms(medians[3]),
        ms(medians[2]) / ms(medians[3])
    );
    println!(
        "seccomp filter and device cgroup cost (median): {:+.2}ms",
        ms(medians[0]) - ms(medians[4])
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn which(tool: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .context("not found in PATH")
}

/// A private mount namespace without `/sys/fs/cgroup/unified` (crun 1.8
/// refuses hybrid hosts otherwise). Must run before any thread exists.
fn private_mount_namespace() -> Result<()> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private")?;
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.exists() && Path::new("/sys/fs/cgroup/memory").exists() {
        umount2(unified, MntFlags::MNT_DETACH).context("hiding /sys/fs/cgroup/unified")?;
    }
    Ok(())
}

fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin"))?;
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (apt-get install busybox-static)")?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    Ok(root)
}

/// `runc spec`'s defaults, running /bin/true without a terminal.
fn write_oci_config(bundle: &Path, rootfs: &Path) -> Result<()> {
    let st = Command::new("runc")
        .arg("spec")
        .current_dir(bundle)
        .status()?;
    if !st.success() {
        bail!("runc spec failed");
    }
    let path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
    cfg["root"]["path"] = rootfs.display().to_string().into();
    cfg["root"]["readonly"] = true.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(())
}

fn time_oci(tool: &str, root: &Path, bundle: &Path, i: usize) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(tool)
        .arg("--root")
        .arg(root)
        .args(["run", "-b"])
        .arg(bundle)
        .arg(format!("bench-{}-{i}", std::process::id()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        bail!(
            "{tool} run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}
