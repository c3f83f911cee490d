//! Differential tests with BuildKit as the reference: every case directory
//! under `tests/differential/` (a Dockerfile and its context) is built by
//! `buildctl` against a `buildkitd` this test starts (OCI worker, Debian's
//! `runc`) and by `slipway build --local`, both to OCI layout tarballs, from
//! the same base image in the same `slipway server`. Both images are unpacked
//! by umoci and compared: the final filesystem (paths, types, mode bits,
//! uid/gid, contents, symlink targets, hardlinks, deletions) and the config
//! (Env, Cmd, Entrypoint, WorkingDir, User, Labels, ExposedPorts, Volumes,
//! StopSignal, Shell, Healthcheck, OnBuild). Timestamps, history and layer
//! digests legitimately differ and are not compared. Every difference that
//! remains is written down next to its case in `CASES` with the reason; a
//! written-down difference that no longer happens fails too, so the list
//! stays true.
//!
//! `SLIPWAY_DIFFERENTIAL_CASES=a,b` runs only the named cases and
//! `SLIPWAY_DIFFERENTIAL_KEEP=DIR` keeps both images of each (development).

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{ok, run, sha256_hex, tool};
use crate::slice::{Fixture, fixture};

/// A build option, given to each tool in its own syntax.
#[derive(Clone, Copy)]
enum Opt {
    BuildArg(&'static str),
    Target(&'static str),
    /// `id`, and a file of the case directory's `_secrets/` sibling.
    Secret(&'static str, &'static str),
    /// `--platform` (the base `@MULTI@` has linux/amd64 and linux/arm64).
    Platform(&'static str),
    /// `--ssh default=AGENT`, the ssh-agent the test starts.
    Ssh,
}

/// A difference that is understood: `what` is the start of the difference
/// line (`fs /path` or `config Field`), `why` the reason.
struct Known {
    what: &'static str,
    why: &'static str,
}

struct Case {
    name: &'static str,
    opts: &'static [Opt],
    /// Adds to the context what git cannot hold (empty dirs, hardlinks).
    prep: Option<fn(&Path)>,
    known: &'static [Known],
}

const fn case(name: &'static str) -> Case {
    Case {
        name,
        opts: &[],
        prep: None,
        known: &[],
    }
}

const fn with_opts(name: &'static str, opts: &'static [Opt]) -> Case {
    Case {
        name,
        opts,
        prep: None,
        known: &[],
    }
}

fn prep_hardlinks(ctx: &Path) {
    std::fs::write(ctx.join("a.txt"), "linked\n").unwrap();
    std::fs::hard_link(ctx.join("a.txt"), ctx.join("b.txt")).unwrap();
    std::fs::create_dir_all(ctx.join("dir/empty")).unwrap();
}

fn prep_empty_dirs(ctx: &Path) {
    std::fs::create_dir_all(ctx.join("tree/empty/deeper")).unwrap();
    std::fs::create_dir_all(ctx.join("tree/odd")).unwrap();
    std::fs::set_permissions(ctx.join("tree/odd"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(ctx.join("tree/odd/secret"), "x").unwrap();
    // Special bits survive the copy (a chown would clear them).
    std::fs::write(ctx.join("tree/suid"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        ctx.join("tree/suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::write(ctx.join("tree/sgid"), "x").unwrap();
    std::fs::set_permissions(
        ctx.join("tree/sgid"),
        std::fs::Permissions::from_mode(0o2750),
    )
    .unwrap();
    std::fs::set_permissions(
        ctx.join("tree/odd/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// Differences every case with a RUN shows, matched whole. Each must still
/// happen in some case.
const EVERY_RUN: &[Known] = &[
    Known {
        what: "fs /dev: buildkit=dir 755 0:0 slipway=<absent>",
        why: "BuildKit's runc creates the mountpoints /dev, /proc and /sys in the \
              rootfs and they stay in the RUN's layer; Slipway's sandbox mounts them \
              without leaving them behind (deliberate: nothing the RUN wrote)",
    },
    Known {
        what: "fs /proc: buildkit=dir 755 0:0 slipway=<absent>",
        why: "as /dev",
    },
    Known {
        what: "fs /sys: buildkit=dir 755 0:0 slipway=<absent>",
        why: "as /dev",
    },
];

/// Every case; the directory `tests/differential/NAME` holds its Dockerfile
/// and its context. In the Dockerfile `@BASE@` is the base image, `@MULTI@`
/// an index of it (linux/amd64) and a small linux/arm64 image, `@ONBUILD@`
/// the base with ONBUILD triggers (built from `_onbuild_parent` by
/// BuildKit) and `@HTTP@` the loopback file server.
const CASES: &[Case] = &[
    case("from_only"),
    case("run_shell_and_exec"),
    case("run_delete_from_base"),
    case("run_replace_dir_with_file"),
    case("run_opaque_dir"),
    Case {
        known: &[
            Known {
                what: "fs /keep-link",
                why: "deliberate: `RUN ln` of a file of a lower layer; overlay copies it up and both names are one inode, which Slipway's layer keeps (as the RUN left them); BuildKit's overlay differ leaves the unchanged /srv/data/keep.txt out of the layer, so its /keep-link is a separate copy",
            },
            Known {
                what: "fs /srv/data/keep.txt",
                why: "as /keep-link",
            },
        ],
        ..case("run_hardlinks")
    },
    case("run_symlinks"),
    case("run_special_modes"),
    case("run_heredoc"),
    case("run_heredoc_shebang"),
    case("run_mount_bind"),
    case("run_mount_bind_from_stage"),
    case("run_mount_cache"),
    case("run_mount_tmpfs"),
    with_opts("run_mount_secret", &[Opt::Secret("tok", "token.txt")]),
    case("run_network_none"),
    case("copy_file_and_dir"),
    case("copy_dir_rules"),
    case("copy_globs"),
    case("copy_chown"),
    case("copy_chown_primary_group"),
    case("copy_chmod"),
    case("copy_chmod_new_dir"),
    case("copy_exclude"),
    case("copy_parents"),
    case("copy_link"),
    Case {
        known: &[Known {
            what: "both builds failed",
            why: "BuildKit and Slipway both refuse `COPY --link --chown=NAME` (with --link no passwd/group can be read: numeric ids only)",
        }],
        ..case("copy_link_chown_name")
    },
    case("copy_heredoc"),
    case("copy_symlinks"),
    Case {
        prep: Some(prep_hardlinks),
        ..case("copy_hardlinks")
    },
    Case {
        prep: Some(prep_empty_dirs),
        ..case("copy_empty_dirs_and_modes")
    },
    case("copy_from_stage"),
    case("copy_from_image"),
    case("copy_onto_symlinked_dir"),
    case("copy_file_over_symlink"),
    case("dockerignore"),
    case("add_local_archive"),
    case("add_url_checksum"),
    case("add_local_file_not_archive"),
    case("add_git"),
    with_opts(
        "arg_env_expansion",
        &[Opt::BuildArg("VERSION=2.5"), Opt::BuildArg("UNUSED=x")],
    ),
    case("arg_defaults_and_scope"),
    case("env_forms"),
    case("workdir_create"),
    case("workdir_dot_components"),
    case("user_and_chown"),
    case("shell_instruction"),
    case("cmd_entrypoint_forms"),
    case("metadata_instructions"),
    case("healthcheck"),
    case("healthcheck_none"),
    case("volume"),
    case("onbuild_from_stage"),
    case("onbuild_from_image"),
    with_opts("run_mount_ssh", &[Opt::Ssh]),
    with_opts("platform_target", &[Opt::Platform("linux/arm64")]),
    case("platform_from_flag"),
    Case {
        known: &[Known {
            what: "both builds failed",
            why: "a RUN for linux/arm64 on this amd64 machine without an emulator: BuildKit fails to exec, Slipway refuses it naming the platform and FROM --platform=$BUILDPLATFORM",
        }],
        ..case("platform_run_foreign")
    },
    with_opts("multi_stage_target", &[Opt::Target("second")]),
    Case {
        known: &[
            Known {
                what: "fs /fromb/dev",
                why: "BuildKit's runc mountpoints /dev, /proc, /sys are part of stage b's filesystem there (see EVERY_RUN), so COPY --from=b / copies them",
            },
            Known {
                what: "fs /fromb/proc",
                why: "BuildKit's runc mountpoints /dev, /proc, /sys are part of stage b's filesystem there (see EVERY_RUN), so COPY --from=b / copies them",
            },
            Known {
                what: "fs /fromb/sys",
                why: "BuildKit's runc mountpoints /dev, /proc, /sys are part of stage b's filesystem there (see EVERY_RUN), so COPY --from=b / copies them",
            },
        ],
        ..case("multi_stage_chain")
    },
    case("from_scratch"),
];

#[test]
fn differential_builds_match_buildkit() {
    let Some(fx) = fixture() else { return };
    let tmp = fx.tmp.path();
    let host = fx.srv.addr.clone();
    let base = push_base(&fx);
    let http = FileServer::start(&http_root(tmp));
    let bk = Buildkitd::start(tmp, &host);
    let agent = SshAgent::start(tmp);
    let subst = Subst {
        multi: push_multi_platform(&fx),
        onbuild: push_onbuild_base(&fx, &bk, &base),
        base,
        http: http.url.clone(),
        ssh: agent.socket.clone(),
    };

    let only: Option<Vec<String>> = std::env::var("SLIPWAY_DIFFERENTIAL_CASES")
        .ok()
        .map(|s| s.split(',').map(str::to_owned).collect());
    let mut failures = Vec::new();
    let mut ran = 0;
    let mut every_run_seen = vec![false; EVERY_RUN.len()];
    let started = Instant::now();
    for c in CASES {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == c.name))
        {
            continue;
        }
        ran += 1;
        let diffs = match build_both(&fx, &bk, c, &subst) {
            Ok(d) => d,
            // A failed build can be the written-down outcome too (both
            // refuse the same Dockerfile).
            Err(e) if c.known.iter().any(|k| e.starts_with(k.what)) => continue,
            Err(e) => {
                failures.push(format!("{}: {e}", c.name));
                continue;
            }
        };
        for d in &diffs {
            if let Some(i) = EVERY_RUN.iter().position(|k| d == k.what) {
                every_run_seen[i] = true;
                continue;
            }
            if !c.known.iter().any(|k| d.starts_with(k.what)) {
                failures.push(format!("{}: {d}", c.name));
            }
        }
        for k in c.known {
            if !diffs.iter().any(|d| d.starts_with(k.what)) {
                failures.push(format!(
                    "{}: written-down difference {:?} ({}) no longer happens",
                    c.name, k.what, k.why
                ));
            }
        }
    }
    eprintln!("{ran} cases in {:?}", started.elapsed());
    if let Some(keep) = std::env::var_os("SLIPWAY_DIFFERENTIAL_KEEP") {
        ok(Command::new("cp")
            .arg("-a")
            .arg(tmp.join("cases"))
            .arg(keep));
    }
    if only.is_none() {
        for (k, seen) in EVERY_RUN.iter().zip(every_run_seen) {
            if !seen {
                failures.push(format!(
                    "written-down difference {:?} ({}) no longer happens",
                    k.what, k.why
                ));
            }
        }
    }
    assert!(ran > 0, "no case ran");
    assert!(
        failures.is_empty(),
        "{} differences from BuildKit:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// What the loopback HTTP server serves: `tests/differential/_http` and
/// `repo.git`, a git repository (branch `main`, tag `v1`, a subdirectory)
/// served by git's dumb HTTP protocol.
fn http_root(tmp: &Path) -> PathBuf {
    let root = tmp.join("http");
    ok(Command::new("cp")
        .arg("-a")
        .arg(cases_dir().join("_http"))
        .arg(&root));
    let work = tmp.join("git-work");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::write(work.join("README"), "from git\n").unwrap();
    std::fs::write(work.join("sub/inner.txt"), "inner\n").unwrap();
    std::fs::write(work.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(work.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let git = |dir: &Path, args: &[&str]| {
        ok(Command::new("git")
            .current_dir(dir)
            .env("GIT_AUTHOR_DATE", "2020-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2020-01-01T00:00:00Z")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args));
    };
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "one"]);
    git(&work, &["tag", "v1"]);
    git(tmp, &["clone", "-q", "--bare", "git-work", "http/repo.git"]);
    git(&root.join("repo.git"), &["update-server-info"]);
    root
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential")
}

/// What the cases' Dockerfiles and options refer to.
struct Subst {
    base: String,
    multi: String,
    onbuild: String,
    http: String,
    ssh: PathBuf,
}

impl Subst {
    fn apply(&self, dockerfile: &str) -> String {
        dockerfile
            .replace("@BASE@", &self.base)
            .replace("@MULTI@", &self.multi)
            .replace("@ONBUILD@", &self.onbuild)
            .replace("@HTTP@", &self.http)
    }
}

/// Build the case with both tools at once; the differences found, or why a
/// build failed.
fn build_both(
    fx: &Fixture,
    bk: &Buildkitd,
    c: &Case,
    subst: &Subst,
) -> Result<Vec<String>, String> {
    let work = fx.tmp.path().join("cases").join(c.name);
    let ctx = work.join("ctx");
    std::fs::create_dir_all(&work).unwrap();
    ok(Command::new("cp")
        .arg("-a")
        .arg(cases_dir().join(c.name))
        .arg(&ctx));
    let dockerfile = subst.apply(&std::fs::read_to_string(ctx.join("Dockerfile")).unwrap());
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    if let Some(prep) = c.prep {
        prep(&ctx);
    }
    let secrets = cases_dir().join("_secrets");

    let mut buildctl = Command::new(tool("buildctl"));
    buildctl
        .env("DOCKER_CONFIG", &fx.docker)
        .arg("--addr")
        .arg(&bk.addr)
        .args([
            "build",
            "--progress",
            "plain",
            "--frontend",
            "dockerfile.v0",
        ])
        .arg("--local")
        .arg(format!("context={}", ctx.display()))
        .arg("--local")
        .arg(format!("dockerfile={}", ctx.display()))
        .arg("--output")
        .arg(format!("type=oci,dest={}", work.join("bk.tar").display()));
    let mut slipway = Command::new(env!("CARGO_BIN_EXE_slipway"));
    slipway
        .env("DOCKER_CONFIG", &fx.docker)
        .args(["build", "--local", "--progress", "plain", "--data"])
        .arg(fx.tmp.path().join("sl"))
        .arg("--output")
        .arg(format!("type=oci,dest={}", work.join("sl.tar").display()));
    let mut arch = "amd64";
    for o in c.opts {
        match o {
            Opt::Platform(p) => {
                buildctl.args(["--opt", &format!("platform={p}")]);
                slipway.args(["--platform", p]);
                arch = p.split('/').nth(1).unwrap_or(arch);
            }
            Opt::Ssh => {
                let s = format!("default={}", subst.ssh.display());
                buildctl.args(["--ssh", &s]);
                slipway.args(["--ssh", &s]);
            }
            Opt::BuildArg(kv) => {
                buildctl.args(["--opt", &format!("build-arg:{kv}")]);
                slipway.args(["--build-arg", kv]);
            }
            Opt::Target(t) => {
                buildctl.args(["--opt", &format!("target={t}")]);
                slipway.args(["--target", t]);
            }
            Opt::Secret(id, file) => {
                let s = format!("id={id},src={}", secrets.join(file).display());
                buildctl.args(["--secret", &s]);
                slipway.args(["--secret", &s]);
            }
        }
    }
    slipway.arg(&ctx);
    let (bk_out, sl_out) = std::thread::scope(|s| {
        let b = s.spawn(|| run(&mut buildctl));
        let sl = run(&mut slipway);
        (b.join().unwrap(), sl)
    });
    match (bk_out.status.success(), sl_out.status.success()) {
        (true, true) => {}
        (false, false) => {
            return Err(format!(
                "both builds failed\n--- buildkit:\n{}\n--- slipway:\n{}",
                tail(&bk_out.stderr),
                tail(&sl_out.stderr)
            ));
        }
        (b, s) => {
            eprintln!(
                "--- buildkit:\n{}\n--- slipway:\n{}",
                tail(&bk_out.stderr),
                tail(&sl_out.stderr)
            );
            let word = |ok: bool| if ok { "succeeded" } else { "failed" };
            return Ok(vec![format!(
                "build: buildkit {} slipway {}",
                word(b),
                word(s)
            )]);
        }
    }
    let bk_img = Unpacked::new(&work, "bk", arch);
    let sl_img = Unpacked::new(&work, "sl", arch);
    let mut diffs = compare_config(&bk_img.config, &sl_img.config);
    diffs.extend(compare_fs(&bk_img.rootfs, &sl_img.rootfs));
    for d in &diffs {
        eprintln!("{}: {d}", c.name);
    }
    Ok(diffs)
}

fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// An image from an OCI layout tarball: its config and umoci's rootfs.
struct Unpacked {
    config: serde_json::Value,
    rootfs: PathBuf,
}

impl Unpacked {
    fn new(work: &Path, name: &str, arch: &str) -> Unpacked {
        let layout = work.join(format!("{name}-layout"));
        std::fs::create_dir_all(&layout).unwrap();
        ok(Command::new("tar")
            .arg("-xf")
            .arg(work.join(format!("{name}.tar")))
            .arg("-C")
            .arg(&layout));
        let blob = |d: &str| {
            let hex = d.strip_prefix("sha256:").unwrap();
            let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mut desc = index["manifests"][0].clone();
        // Down nested indexes to the manifest of the build's platform.
        while desc["mediaType"].as_str().unwrap_or("").contains("index") {
            let inner = blob(desc["digest"].as_str().unwrap());
            desc = inner["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["platform"]["architecture"] == arch)
                .unwrap_or_else(|| panic!("no {arch} manifest in {inner}"))
                .clone();
        }
        let manifest = blob(desc["digest"].as_str().unwrap());
        let config = blob(manifest["config"]["digest"].as_str().unwrap());
        // umoci unpacks by tag: name the manifest itself in index.json.
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "t"});
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
        std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
        let bundle = work.join(format!("{name}-bundle"));
        ok(Command::new(tool("umoci"))
            .args(["unpack", "--image", &format!("{}:t", layout.display())])
            .arg(&bundle));
        Unpacked {
            config,
            rootfs: bundle.join("rootfs"),
        }
    }
}

const CONFIG_FIELDS: &[&str] = &[
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Shell",
    "Healthcheck",
    "OnBuild",
];

/// `null`, `""`, `[]` and `{}` all mean "not set" to a runtime.
fn normal(v: Option<&serde_json::Value>) -> serde_json::Value {
    match v {
        None | Some(serde_json::Value::Null) => serde_json::Value::Null,
        Some(serde_json::Value::String(s)) if s.is_empty() => serde_json::Value::Null,
        Some(serde_json::Value::Array(a)) if a.is_empty() => serde_json::Value::Null,
        Some(serde_json::Value::Object(o)) if o.is_empty() => serde_json::Value::Null,
        Some(v) => v.clone(),
    }
}

fn compare_config(bk: &serde_json::Value, sl: &serde_json::Value) -> Vec<String> {
    let mut diffs = Vec::new();
    for f in CONFIG_FIELDS {
        let (b, s) = (normal(bk["config"].get(*f)), normal(sl["config"].get(*f)));
        if b != s {
            diffs.push(format!("config {f}: buildkit={b} slipway={s}"));
        }
    }
    for f in ["architecture", "os"] {
        if bk[f] != sl[f] {
            diffs.push(format!("config {f}: buildkit={} slipway={}", bk[f], sl[f]));
        }
    }
    diffs
}

/// One line per path: type, mode bits, owner, content digest or link
/// target, and the other names of a hardlinked file.
fn describe_tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = format!("/{}", path.strip_prefix(root).unwrap().display());
            let md = std::fs::symlink_metadata(&path).unwrap();
            let ft = md.file_type();
            let owner = format!("{:o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid());
            let what = if ft.is_dir() {
                stack.push(path.clone());
                format!("dir {owner}")
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                format!("symlink -> {} {}:{}", target.display(), md.uid(), md.gid())
            } else if ft.is_file() {
                if md.nlink() > 1 {
                    inodes
                        .entry((md.dev(), md.ino()))
                        .or_default()
                        .push(rel.clone());
                }
                let content = std::fs::read(&path).unwrap();
                let shown = if content.len() <= 64 && !content.contains(&0) {
                    format!("{:?}", String::from_utf8_lossy(&content))
                } else {
                    format!("{} bytes sha256:{}", content.len(), sha256_hex(&content))
                };
                format!("file {owner} {shown}")
            } else if ft.is_char_device() || ft.is_block_device() {
                format!("device {owner} rdev={:x}", md.rdev())
            } else if ft.is_fifo() {
                format!("fifo {owner}")
            } else {
                format!("socket {owner}")
            };
            out.insert(rel, what);
        }
    }
    for names in inodes.values() {
        for n in names {
            let others: Vec<&str> = names
                .iter()
                .filter(|o| *o != n)
                .map(String::as_str)
                .collect();
            if let Some(line) = out.get_mut(n) {
                line.push_str(&format!(" hardlinked with {}", others.join(",")));
            }
        }
    }
    out
}

fn compare_fs(bk: &Path, sl: &Path) -> Vec<String> {
    let (b, s) = (describe_tree(bk), describe_tree(sl));
    let mut diffs = Vec::new();
    for path in b.keys().chain(s.keys().filter(|k| !b.contains_key(*k))) {
        let (x, y) = (b.get(path), s.get(path));
        if x != y {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "<absent>".into());
            diffs.push(format!(
                "fs {path}: buildkit={} slipway={}",
                show(x),
                show(y)
            ));
        }
    }
    diffs
}

/// The base every case starts from, pushed to the fixture's server:
/// busybox with its applets as symlinks, users and groups, a few files in
/// two layers for the cases to change and delete. Returns its reference.
fn push_base(fx: &Fixture) -> String {
    let tmp = fx.tmp.path();
    let root = tmp.join("baseroot");
    let mk = |p: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let bin = mk("bin");
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    let list = ok(Command::new("/bin/busybox").arg("--list-full"));
    for applet in list
        .lines()
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
    {
        let p = root.join(applet);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", &p).unwrap();
    }
    let etc = mk("etc");
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n\
         svc:x:1001:1001:svc:/var/svc:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("group"),
        "root:x:0:\nstaff:x:50:app\napp:x:1000:\nsvc:x:1001:\nnogroup:x:65534:\n",
    )
    .unwrap();
    let t = mk("tmp");
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let r = mk("root");
    std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o700)).unwrap();
    let home = mk("home/app");
    std::os::unix::fs::chown(&home, Some(1000), Some(1000)).unwrap();
    let data = mk("srv/data/sub");
    std::fs::write(data.join("deep.txt"), "deep\n").unwrap();
    std::fs::write(root.join("srv/data/keep.txt"), "keep\n").unwrap();
    std::fs::write(root.join("srv/data/gone.txt"), "gone\n").unwrap();
    mk("var/lib/app");
    std::os::unix::fs::symlink("/srv/data", root.join("srv/link-to-data")).unwrap();

    let layout = tmp.join("base-layout");
    let image = format!("{}:v1", layout.display());
    let umoci = tool("umoci");
    ok(Command::new(&umoci).args(["init", "--layout"]).arg(&layout));
    ok(Command::new(&umoci).args(["new", "--image", &image]));
    ok(Command::new(&umoci)
        .args(["insert", "--image", &image])
        .arg(&root)
        .arg("/"));
    let second = tmp.join("base-second");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(second.join("two.txt"), "second layer\n").unwrap();
    ok(Command::new(&umoci)
        .args(["insert", "--image", &image])
        .arg(&second)
        .arg("/srv/data/layer2"));
    ok(Command::new(&umoci).args([
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.cmd",
        "sh",
    ]));
    let reference = format!("{}/base/diff:v1", fx.srv.addr);
    ok(Command::new(tool("skopeo"))
        .env("REGISTRY_AUTH_FILE", tmp.join("none.json"))
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &fx.srv.creds(),
        ])
        .arg(format!("oci:{image}"))
        .arg(format!("docker://{reference}")));
    reference
}

/// `@MULTI@`: an index of the base image (linux/amd64) and a small
/// linux/arm64 image holding `/arch.txt`, pushed with `skopeo copy --all`.
fn push_multi_platform(fx: &Fixture) -> String {
    let tmp = fx.tmp.path();
    let layout = tmp.join("base-layout");
    let umoci = tool("umoci");
    let arm = format!("{}:arm64", layout.display());
    let root = tmp.join("arm-root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("arch.txt"), "arm64\n").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    ok(Command::new(&umoci).args(["new", "--image", &arm]));
    ok(Command::new(&umoci)
        .args(["insert", "--image", &arm])
        .arg(&root)
        .arg("/"));
    ok(Command::new(&umoci).args([
        "config",
        "--image",
        &arm,
        "--architecture",
        "arm64",
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.env",
        "ARCH_OF_BASE=arm64",
    ]));
    // umoci writes no index of several platforms: one by hand, from the
    // two tags' manifest descriptors.
    let index_path = layout.join("index.json");
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let by_tag = |tag: &str| {
        top["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no tag {tag} in {top}"))
            .clone()
    };
    let mut entries = Vec::new();
    for (tag, arch) in [("v1", "amd64"), ("arm64", "arm64")] {
        let mut d = by_tag(tag);
        d.as_object_mut().unwrap().remove("annotations");
        d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        entries.push(d);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string();
    let hex = sha256_hex(index.as_bytes());
    std::fs::write(layout.join("blobs/sha256").join(&hex), &index).unwrap();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(&index_path, top.to_string()).unwrap();
    let reference = format!("{}/base/diff:multi", fx.srv.addr);
    ok(Command::new(tool("skopeo"))
        .env("REGISTRY_AUTH_FILE", tmp.join("none.json"))
        .args([
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--dest-creds",
            &fx.srv.creds(),
        ])
        .arg(format!("oci:{}:multi", layout.display()))
        .arg(format!("docker://{reference}")));
    reference
}

/// `@ONBUILD@`: `_onbuild_parent/Dockerfile` on the base, built and pushed
/// by BuildKit, so its ONBUILD triggers are in an image's config.
fn push_onbuild_base(fx: &Fixture, bk: &Buildkitd, base: &str) -> String {
    let tmp = fx.tmp.path();
    let ctx = tmp.join("onbuild-parent");
    std::fs::create_dir_all(&ctx).unwrap();
    let text = std::fs::read_to_string(cases_dir().join("_onbuild_parent/Dockerfile")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), text.replace("@BASE@", base)).unwrap();
    let reference = format!("{}/base/diff:onbuild", fx.srv.addr);
    ok(Command::new(tool("buildctl"))
        .env("DOCKER_CONFIG", &fx.docker)
        .args(["--addr", &bk.addr, "build", "--progress", "plain"])
        .args(["--frontend", "dockerfile.v0"])
        .arg("--local")
        .arg(format!("context={}", ctx.display()))
        .arg("--local")
        .arg(format!("dockerfile={}", ctx.display()))
        .arg("--output")
        .arg(format!(
            "type=image,name={reference},push=true,registry.insecure=true"
        )));
    reference
}

/// `ssh-agent -D` on a socket in `dir`, holding one fresh key.
struct SshAgent {
    child: Child,
    socket: PathBuf,
}

impl SshAgent {
    fn start(dir: &Path) -> SshAgent {
        let socket = dir.join("ssh-agent.sock");
        let child = Command::new(tool("ssh-agent"))
            .args(["-D", "-a"])
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let agent = SshAgent { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let key = dir.join("ssh-key");
        ok(Command::new(tool("ssh-keygen"))
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "differential", "-f"])
            .arg(&key));
        ok(Command::new(tool("ssh-add"))
            .env("SSH_AUTH_SOCK", &agent.socket)
            .arg(&key));
        agent
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `buildkitd` as root with the OCI worker on Debian's runc, in `dir`,
/// pulling plain HTTP from the fixture's loopback registry.
struct Buildkitd {
    child: Child,
    addr: String,
}

impl Buildkitd {
    fn start(dir: &Path, registry: &str) -> Buildkitd {
        let root = dir.join("buildkitd");
        std::fs::create_dir_all(&root).unwrap();
        let config = dir.join("buildkitd.toml");
        std::fs::write(
            &config,
            format!(
                "[worker.oci]\n  enabled = true\n  gc = false\n[worker.containerd]\n  enabled = false\n\
                 [registry.\"{registry}\"]\n  http = true\n  insecure = true\n"
            ),
        )
        .unwrap();
        let addr = format!("unix://{}", dir.join("buildkitd.sock").display());
        let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .map(PathBuf::from)
            .unwrap_or_else(|| tool("runc"));
        let log = std::fs::File::create(dir.join("buildkitd.log")).unwrap();
        let child = Command::new(tool("buildkitd"))
            .arg("--root")
            .arg(&root)
            .arg("--addr")
            .arg(&addr)
            .arg("--config")
            .arg(&config)
            .arg("--oci-worker-binary")
            .arg(&runc)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let bk = Buildkitd { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(tool("buildctl"))
                .args(["--addr", &bk.addr, "debug", "workers"])
                .output()
                .unwrap();
            if out.status.success() && !out.stdout.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "buildkitd did not start:\n{}",
                std::fs::read_to_string(dir.join("buildkitd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        bk
    }
}

impl Drop for Buildkitd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `python3 -m http.server` on a loopback port, serving `dir`.
struct FileServer {
    child: Child,
    url: String,
}

impl FileServer {
    fn start(dir: &Path) -> FileServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(tool("python3"))
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let srv = FileServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "python3 http.server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        srv
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
