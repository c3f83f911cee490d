//! Shared helpers: privilege checks, a busybox rootfs, a run helper.

use super::*;

/// True when the test may proceed as root; skips (or fails under CI) otherwise.
pub fn root_or_skip(test: &str) -> bool {
    testkit::root_or_skip(test)
}

/// A busybox rootfs (lower), with an empty upper and work dir.
pub struct Fs {
    pub dir: TempDir,
    pub rootfs: RootFs,
}

impl Fs {
    pub fn upper(&self) -> &Path {
        &self.rootfs.upper
    }
}

pub fn busybox_rootfs() -> Fs {
    // Not under /tmp's default when it might be an overlay itself: the
    // crate's own target dir is on the same disk as the workspace.
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::Builder::new()
        .prefix("sbx-")
        .tempdir_in(&base)
        .unwrap();
    let lower = dir.path().join("lower");
    std::fs::create_dir_all(lower.join("bin")).unwrap();
    std::fs::create_dir_all(lower.join("etc")).unwrap();
    std::fs::create_dir_all(lower.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", lower.join("bin/busybox"))
        .expect("busybox-static must be installed");
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", lower.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        lower.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(lower.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    std::fs::write(lower.join("etc/image-file"), "from the image\n").unwrap();
    for d in ["upper", "work"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let rootfs = RootFs {
        lower: vec![lower],
        upper: dir.path().join("upper"),
        work: dir.path().join("work"),
    };
    // Let an unprivileged user reach it for the rootless tests.
    let mut p = dir.path().to_path_buf();
    loop {
        let _ = std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        if p == base || !p.pop() {
            break;
        }
    }
    Fs { dir, rootfs }
}

pub fn sandbox(mode: Mode, state: &Path) -> Sandbox {
    let init = InitCommand {
        program: env!("CARGO_BIN_EXE_sandbox-init").into(),
        args: vec![],
    };
    Sandbox::new(SandboxConfig::new(mode, init, state))
}

pub fn sh(fs: &Fs, script: &str) -> RunSpec {
    RunSpec::new(
        fs.rootfs.clone(),
        vec!["/bin/sh".into(), "-c".into(), script.into()],
    )
}

pub struct Ran {
    pub outcome: Outcome,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run_with(sb: &Sandbox, spec: &RunSpec, cancel: &CancellationToken) -> Ran {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = sb
        .run(spec, &mut out, &mut err, cancel)
        .await
        .unwrap_or_else(|e| panic!("run failed: {e}"));
    Ran {
        outcome,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    }
}

pub async fn run(spec: &RunSpec) -> Ran {
    let state = TempDir::new().unwrap();
    run_with(
        &sandbox(Mode::Root, state.path()),
        spec,
        &CancellationToken::new(),
    )
    .await
}

/// Every entry of a directory tree, relative paths.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    fn walk(base: &Path, p: &Path, v: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                v.push(path.strip_prefix(base).unwrap().display().to_string());
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(base, &path, v);
                }
            }
        }
    }
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// Host pids whose command line contains `marker`.
pub fn host_processes_with(marker: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(marker)
        {
            v.push(pid);
        }
    }
    v
}
