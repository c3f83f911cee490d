//! `bench-build`: wall time and peak RSS of an image build, push included,
//! with Slipway (`slipway build --local`), BuildKit (`buildctl` against a
//! `buildkitd` started here, OCI worker on runc) and buildah (`buildah bud`
//! then `buildah push`), in one run, all three pushing to one `slipway
//! server` on loopback:
//!
//! - (a) a busybox base + COPY of 10,000 small files + 3 RUNs, cold;
//! - (b) 1 GiB of files in 5 COPY layers, cold;
//! - (c) (a) again with one file changed (each tool's own cache), in
//!   `--rounds` rounds (6 by default: every order of the three tools), each
//!   changing the file again; the median of each tool is reported.
//!
//! Before every tool the kernel's caches are dropped (`--keep-caches` to
//! skip that) and the context is read back: each tool starts with the
//! context in memory, as a fresh CI checkout has it, and its own state on
//! disk. Without that, whichever tool runs right after buildah found the
//! inode cache cold and paid several seconds for it.
//!
//! Peak RSS is that of the build command and its children (getrusage of a
//! helper process that runs only that command); for BuildKit the daemon's
//! own peak (`VmHWM` of a buildkitd started for that workload) is added to
//! buildctl's. Run as root:
//!
//! ```sh
//! cargo build --release -p cli -p bench-build
//! target/release/bench-build --slipway target/release/slipway [--scale 0.1] [--rounds 6] [--keep-caches]
//! ```
//!
//! Needs `buildkitd`/`buildctl` (built by scripts/test.sh into
//! ~/.cache/slipway-test/bin, or on PATH), Debian's `buildah` and `runc`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("measure") {
        return measure(&args[2..]);
    }
    let mut slipway = PathBuf::from("target/release/slipway");
    let mut scale = 1.0f64;
    let mut rounds = 6usize;
    let mut drop_caches = true;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--slipway" => slipway = it.next().context("--slipway PATH")?.into(),
            "--scale" => scale = it.next().context("--scale F")?.parse()?,
            "--rounds" => rounds = it.next().context("--rounds N")?.parse()?,
            "--keep-caches" => drop_caches = false,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let slipway = std::fs::canonicalize(&slipway).context("the slipway binary")?;
    let tmp = tempfile::tempdir()?;
    let tmp = tmp.path();
    let server = Server::start(&slipway, tmp)?;
    let host = server.addr.clone();
    let docker = tmp.join("docker");
    std::fs::create_dir_all(&docker)?;
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            b64(&format!("ci:{}", server.token))
        ),
    )?;
    let base = import_base(&slipway, tmp, &host, &docker)?;

    let small = ((10_000.0 * scale) as usize).max(10);
    let big_bytes = ((1u64 << 30) as f64 * scale) as u64;
    let a = tmp.join("ctx-a");
    make_small(&a, small)?;
    std::fs::write(
        a.join("Dockerfile"),
        format!(
            "FROM {base}\nCOPY files /files\nRUN find /files -type f | wc -l > /count\n\
             RUN echo second > /second\nRUN cat /count /second > /third\n"
        ),
    )?;
    let b = tmp.join("ctx-b");
    make_big(&b, big_bytes)?;
    let mut df = format!("FROM {base}\n");
    for i in 0..5 {
        df.push_str(&format!("COPY part{i} /part{i}\n"));
    }
    std::fs::write(b.join("Dockerfile"), df)?;

    let tools = Tools::new(&slipway, tmp, &host, &docker, drop_caches)?;
    println!(
        "bench-build: (a) {small} files + 3 RUNs, (b) {} MiB in 5 layers, (c) (a) with one file changed",
        big_bytes >> 20
    );
    let mut rows = Vec::new();
    // (a) then (c) on the same state of each tool; BuildKit's daemon is
    // started once for both, and again for (b).
    let mut bk = Buildkitd::start(tmp, "bk1", &host)?;
    let ra = tools.all(&bk, &a, "a", ORDERS[0])?;
    // A single (c) is too short to trust: several rounds in every order,
    // and the median of each tool.
    let mut rc_rounds = Vec::new();
    for r in 0..rounds.max(1) {
        std::fs::write(a.join("files/d0/f0"), format!("changed {r}\n"))?;
        let s = tools.all(&bk, &a, "c", ORDERS[r % ORDERS.len()])?;
        eprintln!(
            "(c) round {r}: slipway {:.2}s buildkit {:.2}s buildah {:.2}s",
            s[0].secs, s[1].secs, s[2].secs
        );
        rc_rounds.push(s);
    }
    let rc = median(&rc_rounds);
    bk.stop();
    let mut bk = Buildkitd::start(tmp, "bk2", &host)?;
    let rb = tools.all(&bk, &b, "b", ORDERS[4])?;
    bk.stop();
    rows.push(("(a) small files + 3 RUNs", ra));
    rows.push(("(b) big files in 5 layers", rb));
    rows.push(("(c) (a) with one file changed", rc));

    println!(
        "\n| workload | slipway s / MiB | buildkit s / MiB | buildah s / MiB | time slipway÷buildkit | time slipway÷buildah |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, r) in rows {
        println!(
            "| {name} | {:.1} / {} | {:.1} / {} | {:.1} / {} | {:.2}× | {:.2}× |",
            r[0].secs,
            r[0].rss_kib >> 10,
            r[1].secs,
            r[1].rss_kib >> 10,
            r[2].secs,
            r[2].rss_kib >> 10,
            r[0].secs / r[1].secs,
            r[0].secs / r[2].secs
        );
    }
    Ok(())
}

/// Every order of [slipway, buildkit, buildah] (indexes into a result).
const ORDERS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [1, 2, 0],
    [2, 0, 1],
    [0, 2, 1],
    [2, 1, 0],
    [1, 0, 2],
];

/// Per tool: the median time of the rounds and the highest peak RSS.
fn median(rounds: &[[Sample; 3]]) -> [Sample; 3] {
    std::array::from_fn(|i| {
        let mut secs: Vec<f64> = rounds.iter().map(|r| r[i].secs).collect();
        secs.sort_by(f64::total_cmp);
        Sample {
            secs: secs.get(secs.len() / 2).copied().unwrap_or(f64::NAN),
            rss_kib: rounds.iter().map(|r| r[i].rss_kib).max().unwrap_or(0),
        }
    })
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    rss_kib: u64,
}

/// `bench-build measure CMD...`: run CMD, then print its wall time and the
/// peak RSS of it and its descendants (this process has no other child).
fn measure(cmd: &[String]) -> Result<()> {
    let start = Instant::now();
    // The tool's own output (step timings) goes to stderr with BuildKit's.
    let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned()?;
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdout(Stdio::from(stderr))
        .status()?;
    let secs = start.elapsed().as_secs_f64();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    if !status.success() {
        bail!("{cmd:?}: {status}");
    }
    println!("{secs} {}", usage.max_rss());
    Ok(())
}

/// Read the whole context so that every tool starts with it in the page
/// cache, as a fresh CI checkout is: otherwise the first tool to read it
/// after the others' builds may find it evicted and the next ones profit.
fn warm(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => warm(&p),
            Ok(t) if t.is_file() => {
                let _ = std::fs::read(&p);
            }
            _ => {}
        }
    }
}

/// Run `cmd` through `bench-build measure`.
fn measured(cmd: &mut Command) -> Result<Sample> {
    // Start every tool with no dirty pages in flight: otherwise whoever runs
    // right after a 1 GiB build pays for the previous tool's writeback.
    Command::new("sync").status().context("running sync")?;
    let mut full = Command::new(std::env::current_exe()?);
    full.arg("measure")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => full.env(k, v),
            None => full.env_remove(k),
        };
    }
    let out = full.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed");
    }
    let text = String::from_utf8(out.stdout)?;
    let mut f = text.split_whitespace();
    Ok(Sample {
        secs: f.next().context("time")?.parse()?,
        rss_kib: f.next().context("rss")?.parse()?,
    })
}

struct Tools {
    slipway: PathBuf,
    dir: PathBuf,
    host: String,
    docker: PathBuf,
    token: String,
    drop_caches: bool,
}

impl Tools {
    fn new(
        slipway: &Path,
        dir: &Path,
        host: &str,
        docker: &Path,
        drop_caches: bool,
    ) -> Result<Tools> {
        let token = std::fs::read_to_string(dir.join("data/admin-token"))?
            .trim()
            .to_owned();
        Ok(Tools {
            slipway: slipway.to_owned(),
            dir: dir.to_owned(),
            host: host.to_owned(),
            docker: docker.to_owned(),
            token,
            drop_caches,
        })
    }

    /// The three tools on one context in `order`, [slipway, buildkit,
    /// buildah] in the result.
    fn all(
        &self,
        bk: &Buildkitd,
        ctx: &Path,
        name: &str,
        order: [usize; 3],
    ) -> Result<[Sample; 3]> {
        let mut out = [None, None, None];
        for i in order {
            self.settle(ctx)?;
            out[i] = Some(match i {
                0 => self.slipway(ctx, name)?,
                1 => self.buildkit(bk, ctx, name)?,
                _ => self.buildah(ctx, name)?,
            });
        }
        let [Some(a), Some(b), Some(c)] = out else {
            bail!("a tool was not run");
        };
        Ok([a, b, c])
    }

    /// The same start for every tool: nothing dirty, caches dropped, the
    /// context read back in.
    fn settle(&self, ctx: &Path) -> Result<()> {
        Command::new("sync").status().context("running sync")?;
        if self.drop_caches {
            std::fs::write("/proc/sys/vm/drop_caches", "3")
                .context("dropping caches (root only; --keep-caches to skip)")?;
        }
        warm(ctx);
        Ok(())
    }

    fn slipway(&self, ctx: &Path, name: &str) -> Result<Sample> {
        let repo = format!("{}/bench/{name}", self.host);
        eprintln!("==> ({name}) slipway");
        let sl = measured(
            Command::new(&self.slipway)
                .env("DOCKER_CONFIG", &self.docker)
                .args(["build", "--local", "--progress", "plain", "--data"])
                .arg(self.dir.join("slipway-data"))
                .args(["-t", &format!("{repo}:slipway-{name}")])
                .arg(ctx),
        )?;
        eprintln!("    {sl:?}");
        Ok(sl)
    }

    fn buildkit(&self, bk: &Buildkitd, ctx: &Path, name: &str) -> Result<Sample> {
        let repo = format!("{}/bench/{name}", self.host);
        eprintln!("==> ({name}) buildkit");
        let hwm_before = bk.hwm_kib();
        let ctl = measured(
            Command::new(tool("buildctl")?)
                .env("DOCKER_CONFIG", &self.docker)
                .args(["--addr", &bk.addr, "build", "--progress", "plain"])
                .args(["--frontend", "dockerfile.v0"])
                .arg("--local")
                .arg(format!("context={}", ctx.display()))
                .arg("--local")
                .arg(format!("dockerfile={}", ctx.display()))
                .arg("--output")
                .arg(format!(
                    "type=image,name={repo}:buildkit-{name},push=true,registry.insecure=true"
                )),
        )?;
        let kit = Sample {
            secs: ctl.secs,
            rss_kib: ctl.rss_kib + bk.hwm_kib().max(hwm_before),
        };
        eprintln!("    {kit:?}");
        Ok(kit)
    }

    fn buildah(&self, ctx: &Path, name: &str) -> Result<Sample> {
        let repo = format!("{}/bench/{name}", self.host);
        eprintln!("==> ({name}) buildah");
        let storage = |c: &mut Command| {
            c.arg("--root")
                .arg(self.dir.join("buildah/root"))
                .arg("--runroot")
                .arg(self.dir.join("buildah/run"))
                .args(["--storage-driver", "overlay"]);
        };
        let creds = format!("ci:{}", self.token);
        let reference = format!("{repo}:buildah-{name}");
        let script = self.dir.join(format!("buildah-{name}.sh"));
        let mut bud = Command::new("buildah");
        storage(&mut bud);
        bud.args(["bud", "--layers", "--runtime", "/usr/sbin/runc"])
            .args(["--tls-verify=false", "--creds", &creds])
            .args(["-t", &reference])
            .arg(ctx);
        let mut push = Command::new("buildah");
        storage(&mut push);
        push.args(["push", "--tls-verify=false", "--creds", &creds, &reference]);
        // One measured command: bud, then push.
        let mut f = std::fs::File::create(&script)?;
        writeln!(f, "set -e\n{}\n{}", shell(&bud), shell(&push))?;
        let bah = measured(Command::new("sh").arg(&script))?;
        eprintln!("    {bah:?}");
        Ok(bah)
    }
}

fn shell(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tool(name: &str) -> Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("SLIPWAY_PEERS_BIN") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(Path::new(&h).join(".cache/slipway-test/bin"));
    }
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed (./scripts/test.sh builds it)"))
}

/// 10,000 files of 100 bytes in 100 directories.
fn make_small(ctx: &Path, n: usize) -> Result<()> {
    for i in 0..n {
        let d = ctx.join(format!("files/d{}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&d)?;
        }
        std::fs::write(d.join(format!("f{i}")), format!("{i:0>99}\n"))?;
    }
    Ok(())
}

/// `total` bytes of incompressible data in 5 directories of 16 MiB files.
fn make_big(ctx: &Path, total: u64) -> Result<()> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let file_size = (16u64 << 20).min(total / 5).max(1);
    let per_part = total / 5;
    let mut buf = vec![0u8; file_size as usize];
    for p in 0..5 {
        let dir = ctx.join(format!("part{p}"));
        std::fs::create_dir_all(&dir)?;
        let mut written = 0;
        let mut i = 0;
        while written < per_part {
            for chunk in buf.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            std::fs::write(dir.join(format!("blob{i}")), &buf)?;
            written += file_size;
            i += 1;
        }
    }
    Ok(())
}

fn import_base(slipway: &Path, dir: &Path, host: &str, docker: &Path) -> Result<String> {
    let root = dir.join("base-root");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    let out = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8(out.stdout)?.lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    std::fs::create_dir_all(root.join("tmp"))?;
    let reference = format!("{host}/base/busybox:bench");
    let status = Command::new(slipway)
        .env("DOCKER_CONFIG", docker)
        .args(["image", "import", "-t", &reference, "--cmd", "sh"])
        .arg(&root)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("slipway image import failed");
    }
    Ok(reference)
}

struct Server {
    child: Child,
    addr: String,
    token: String,
}

impl Server {
    fn start(slipway: &Path, dir: &Path) -> Result<Server> {
        let log = dir.join("server.log");
        let child = Command::new(slipway)
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut srv = Server {
            child,
            addr: String::new(),
            token: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        srv.addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            if Instant::now() > deadline {
                bail!("slipway server did not start:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        srv.token = std::fs::read_to_string(dir.join("data/admin-token"))?
            .trim()
            .to_owned();
        Ok(srv)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Buildkitd {
    child: Child,
    addr: String,
}

impl Buildkitd {
    fn start(dir: &Path, name: &str, registry: &str) -> Result<Buildkitd> {
        let root = dir.join(name);
        std::fs::create_dir_all(&root)?;
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[worker.oci]\n  enabled = true\n  gc = false\n[worker.containerd]\n  enabled = false\n\
                 [registry.\"{registry}\"]\n  http = true\n  insecure = true\n"
            ),
        )?;
        let addr = format!("unix://{}", dir.join(format!("{name}.sock")).display());
        let child = Command::new(tool("buildkitd")?)
            .arg("--root")
            .arg(&root)
            .args(["--addr", &addr, "--oci-worker-binary", "/usr/sbin/runc"])
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
            .spawn()?;
        let bk = Buildkitd { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(tool("buildctl")?)
                .args(["--addr", &bk.addr, "debug", "workers"])
                .output()?;
            if out.status.success() && !out.stdout.is_empty() {
                return Ok(bk);
            }
            if Instant::now() > deadline {
                bail!("buildkitd did not start");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The daemon's peak RSS so far (VmHWM), in KiB.
    fn hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Buildkitd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// RFC 4648 base64 with padding (for config.json's `auth`).
fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
