//! The control plane end to end, with real processes: `slipway up` or
//! `slipway server` plus `slipway agent`s, builds submitted by the real CLI
//! or the typed API client, and faults made with SIGKILL.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::{BuildSpec, ContextSource, RunRequest, RunState};

use crate::harness::{ok, tool};

const SLIPWAY: &str = env!("CARGO_BIN_EXE_slipway");

pub(crate) fn need_root() -> bool {
    testkit::root_or_skip("this control-plane test")
}

/// A child process killed on drop, with its stderr in a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(f).spawn().unwrap();
        Proc { child, log }
    }

    pub(crate) fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for `needle` in the log; returns what follows it.
    pub(crate) fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.text();
            if let Some(rest) = t.split(needle).nth(1) {
                return rest.to_owned();
            }
            assert!(Instant::now() < deadline, "never saw {needle:?} in:\n{t}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.sigkill();
    }
}

/// A `slipway server` on a loopback port (fixed on restarts, so agents
/// find it again), on the suite's back end (`SLIPWAY_TEST_BACKEND`:
/// PostgreSQL and object storage, or SQLite and files), unless the test
/// names its own `--database` or `--blob-store` (then it sets up both).
pub struct Plane {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub server: Option<Proc>,
    pub url: String,
    pub token: String,
    pub agents: Vec<Proc>,
    starts: u32,
    /// `--database`/`--blob-store` of the back end, on every start.
    backend_args: Vec<String>,
    pub backend: Option<testkit::services::Running>,
}

impl Plane {
    pub fn start(dir: &Path, extra: &[&str]) -> Plane {
        let mut p = Plane {
            dir: dir.to_owned(),
            data: dir.join("data"),
            server: None,
            url: String::new(),
            token: String::new(),
            agents: Vec::new(),
            starts: 0,
            backend_args: Vec::new(),
            backend: None,
        };
        let backend = testkit::services::Backend::from_env();
        let own = extra.contains(&"--database") || extra.contains(&"--blob-store");
        if backend != testkit::services::Backend::Local && !own {
            let services = dir.join("backend");
            std::fs::create_dir_all(&services).unwrap();
            let running = testkit::services::Running::start(backend, &services);
            p.backend_args.extend(running.database_args.iter().cloned());
            p.backend_args
                .extend(running.blob_store_args.iter().cloned());
            p.backend = Some(running);
        }
        p.boot("127.0.0.1:0", extra);
        p
    }

    fn boot(&mut self, listen: &str, extra: &[&str]) {
        self.starts += 1;
        let proc = Proc::spawn(
            Command::new(SLIPWAY)
                .args(["server", "--listen", listen, "--data"])
                .arg(&self.data)
                .args(extra)
                .args(&self.backend_args)
                .env("SLIPWAY_LOG", "info"),
            self.dir.join(format!("server-{}.log", self.starts)),
        );
        let rest = proc.wait_for("listening on ");
        self.url = rest.split_whitespace().next().unwrap().to_owned();
        self.token = std::fs::read_to_string(self.data.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        self.server = Some(proc);
    }

    /// SIGKILL the server, then start it again on the same port and data.
    pub fn kill_and_restart(&mut self, extra: &[&str], pause: Duration) {
        if let Some(mut s) = self.server.take() {
            s.sigkill();
        }
        std::thread::sleep(pause);
        let listen = self.host();
        self.boot(&listen, extra);
    }

    pub fn host(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    pub fn client(&self) -> api::Client {
        api::Client::new(&self.url, Some(self.token.clone())).unwrap()
    }

    pub fn cli(&self) -> Command {
        let mut c = Command::new(SLIPWAY);
        c.env("SLIPWAY_SERVER", &self.url)
            .env("SLIPWAY_TOKEN", &self.token)
            .env("DOCKER_CONFIG", self.docker_config())
            .env("SLIPWAY_CONFIG", self.dir.join("none.json"));
        c
    }

    /// A docker config.json with the admin token for our registry.
    pub fn docker_config(&self) -> PathBuf {
        let d = self.dir.join("docker");
        std::fs::create_dir_all(&d).unwrap();
        let auth = base64(&format!("admin:{}", self.token));
        std::fs::write(
            d.join("config.json"),
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.host()),
        )
        .unwrap();
        d
    }

    pub fn start_agent(&mut self, pool: &str, token: &str, name: &str) {
        let work = self.dir.join(format!("agent-{name}"));
        let proc = Proc::spawn(
            Command::new(SLIPWAY)
                .args([
                    "agent",
                    "--server",
                    &self.url,
                    "--pool",
                    pool,
                    "--agent-id",
                    name,
                    "--work-dir",
                ])
                .arg(&work)
                .env("SLIPWAY_TOKEN", token)
                .env("SLIPWAY_LOG", "info"),
            self.dir.join(format!("agent-{name}.log")),
        );
        self.agents.push(proc);
    }

    /// `slipway up` with `agents` local agents, in `dir`: the process (its
    /// server and pool) and a plane to talk to it.
    pub fn up(dir: &Path, agents: u32) -> (Proc, Plane) {
        let data = dir.join("data");
        let up = Proc::spawn(
            Command::new(SLIPWAY)
                .args(["up", "--listen", "127.0.0.1:0", "--agents"])
                .arg(agents.to_string())
                .arg("--data")
                .arg(&data),
            dir.join("up.log"),
        );
        let url = up
            .wait_for("listening on ")
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        up.wait_for("to build, paste:");
        let plane = Plane {
            dir: dir.to_owned(),
            data: data.clone(),
            server: None,
            url,
            token: std::fs::read_to_string(data.join("admin-token"))
                .unwrap()
                .trim()
                .to_owned(),
            agents: Vec::new(),
            starts: 0,
            backend_args: Vec::new(),
            backend: None,
        };
        (up, plane)
    }

    /// Import the host's busybox as `<host>/base/busybox:1`.
    pub fn import_busybox(&self) -> String {
        let rootfs = self.dir.join("rootfs");
        busybox_rootfs(&rootfs);
        let r = format!("{}/base/busybox:1", self.host());
        ok(self
            .cli()
            .args(["image", "import", "--cmd", "sh", "-t", &r])
            .arg(&rootfs));
        r
    }
}

pub fn busybox_rootfs(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let busybox = tool("busybox");
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    for a in [
        "sh", "cat", "echo", "sleep", "seq", "ls", "uname", "true", "false", "wc", "grep", "env",
        "mkdir", "touch",
    ] {
        let l = bin.join(a);
        if !l.exists() {
            std::os::unix::fs::symlink("busybox", l).unwrap();
        }
    }
}

fn base64(s: &str) -> String {
    use std::io::Write;
    let mut out = Vec::new();
    {
        let mut enc = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        enc.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        out.extend(enc.wait_with_output().unwrap().stdout);
    }
    String::from_utf8(out).unwrap()
}

/// A context dir with a Dockerfile.
pub(crate) fn context(dir: &Path, dockerfile: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    dir.to_owned()
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Pack and upload a context through the library the CLI uses.
pub(crate) async fn upload(c: &api::Client, dir: &Path) -> String {
    let out = dir.with_extension("tar.zst");
    let packed = context::pack(dir, "Dockerfile", &out, &mut |_| {}).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    c.upload_context(&packed.digest.to_string(), bytes.len() as u64, bytes)
        .await
        .unwrap();
    packed.digest.to_string()
}

pub(crate) fn spec(digest: &str, dockerfile: &str, tag: &str) -> BuildSpec {
    BuildSpec {
        context: ContextSource::Upload {
            digest: digest.into(),
        },
        dockerfile: "Dockerfile".into(),
        dockerfile_inline: Some(dockerfile.into()),
        tags: vec![tag.into()],
        build_args: BTreeMap::new(),
        labels: BTreeMap::new(),
        target: None,
        platform: None,
        no_cache: true,
        no_push: false,
        task: None,
        registry: None,
    }
}

/// A pool of `count` agents (external: the test starts them) and its token.
pub(crate) async fn make_pool(c: &api::Client, name: &str, count: u32) -> String {
    c.create_pool(&api::PoolSpec {
        name: name.into(),
        tier: api::Tier::S1,
        count,
        network: None,
        local: false,
        allow_insecure: false,
    })
    .await
    .unwrap();
    c.pool_token(name).await.unwrap().token
}

/// Queue `build` on `pool` with no secrets and the default timeout.
pub(crate) async fn submit(c: &api::Client, pool: &str, build: BuildSpec) -> api::Run {
    c.submit_run(&RunRequest {
        pool: pool.into(),
        build,
        secrets: BTreeMap::new(),
        timeout_secs: None,
    })
    .await
    .unwrap()
}

pub(crate) async fn wait_state(
    c: &api::Client,
    id: &str,
    want: impl Fn(RunState) -> bool,
    secs: u64,
) -> api::Run {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = c.run(id).await.unwrap();
        if want(r.state) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} stuck in {}: {r:?}",
            r.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn full_log(c: &api::Client, id: &str) -> Vec<api::LogChunk> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = c.logs(id, after, Duration::ZERO).await.unwrap();
        if page.chunks.is_empty() {
            return all;
        }
        after = page.next;
        all.extend(page.chunks);
    }
}

/// Waits for a whole log line: the step's header (`RUN echo slow-step-start
/// && …`) holds the words of its output too, and arrives first.
async fn wait_log(c: &api::Client, id: &str, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text: String = full_log(c, id).await.into_iter().map(|c| c.data).collect();
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "log of {id} never showed the line {line:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `slipway up` + `slipway build` of examples/hello: exit 0, the image is
/// pullable by skopeo; a failing Dockerfile exits non-zero with its error in
/// the streamed log; an unchanged context is not uploaded twice.
#[test]
fn up_builds_examples_hello_and_reports_failures() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (up, plane) = Plane::up(tmp.path(), 2);
    let data = plane.data.clone();
    let base = plane.import_busybox();
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let out = plane
        .cli()
        .args(["build", "-t", "hello:1", "--build-arg"])
        .arg(format!("BASE={base}"))
        .arg(&hello)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "build failed:\n{stdout}\n{stderr}\nup:\n{}",
        up.text()
    );
    assert!(
        stdout.contains("Hello from a Slipway agent pool!"),
        "{stdout}"
    );
    assert!(stderr.contains("(uploaded)"), "{stderr}");
    let reference = format!("{}/hello:1", plane.host());
    let pushed = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with(&reference))
        .expect("the pushed reference is printed");
    let digest = pushed.split('@').nth(1).unwrap();
    let inspect = ok(Command::new(tool("skopeo"))
        .args(["inspect", "--tls-verify=false", "--creds"])
        .arg(format!("admin:{}", plane.token))
        .arg(format!("docker://{reference}")));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Digest"], digest);
    assert_eq!(v["Labels"]["org.opencontainers.image.title"], "hello");

    // The same context again: not uploaded a second time.
    let again = plane
        .cli()
        .args(["build", "--no-wait", "-t", "hello:2", "--build-arg"])
        .arg(format!("BASE={base}"))
        .arg(&hello)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("(already on the server)"));

    // `-o json --no-logs`: only the finished run, as JSON, on stdout.
    // `--iidfile` gets the pushed digest.
    let iid = tmp.path().join("iid");
    let out = plane
        .cli()
        .args([
            "build",
            "-o",
            "json",
            "--no-logs",
            "-t",
            "hello:3",
            "--iidfile",
        ])
        .arg(&iid)
        .arg("--build-arg")
        .arg(format!("BASE={base}"))
        .arg(&hello)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["state"], "succeeded");
    assert!(run["image_digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        std::fs::read_to_string(&iid).unwrap(),
        run["image_digest"].as_str().unwrap()
    );

    // A flag a pool build cannot honour is refused, not dropped.
    let out = plane
        .cli()
        .args(["build", "-t", "hello:4", "--ssh", "default"])
        .arg(&hello)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--ssh") && err.contains("--local"),
        "{err}"
    );

    // A failing RUN: non-zero exit, the error in the streamed log.
    let bad = context(
        &tmp.path().join("bad"),
        &format!("FROM {base}\nRUN echo about to fail && exit 3\n"),
    );
    let out = plane
        .cli()
        .args(["build", "-t", "bad:1"])
        .arg(&bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stdout.contains("about to fail"), "{stdout}");
    assert!(
        stdout.contains("exit code 3") || stderr.contains("exit code 3"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(":2"),
        "the log names the Dockerfile line: {stdout}"
    );

    // A crashed local agent is started again.
    let agent0 = data.join("agents").join("default-0").display().to_string();
    let pid_of = |needle: &str| {
        ok(Command::new("ps").args(["-eo", "pid,args"]))
            .lines()
            .find(|l| l.contains(" agent ") && l.contains(needle))
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
    };
    let first = pid_of(&agent0).expect("local agent 0 runs");
    ok(Command::new("kill").args(["-9", &first]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = pid_of(&agent0)
            && p != first
        {
            break;
        }
        assert!(Instant::now() < deadline, "local agent 0 was not restarted");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Scale the local pool: the server starts a third agent.
    ok(plane
        .cli()
        .args(["pool", "update", "default", "--count", "3"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let show = ok(plane.cli().args(["pool", "show", "default", "-o", "json"]));
        let v: serde_json::Value = serde_json::from_str(&show).unwrap();
        let live = v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["status"] != "offline")
            .count();
        if live == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no third agent: {show}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A broken Dockerfile is refused before anything is queued.
    let broken = context(&tmp.path().join("broken"), "FROM\n");
    let out = plane
        .cli()
        .args(["build", "-t", "x:1"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Dockerfile"));

    // SIGTERM stops all of it: the server and every agent it started.
    let mut up = up;
    let pid = rustix::process::Pid::from_raw(up.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while up.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "slipway up did not stop:\n{}",
            up.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let agents_dir = data.join("agents").display().to_string();
    let ps = ok(Command::new("ps").args(["-eo", "args"]));
    assert!(
        !ps.lines().any(|l| l.contains(&agents_dir)),
        "agents outlived slipway up:\n{ps}"
    );
}

/// SIGKILL of an agent in the middle of a RUN: the lease expires, the run
/// is re-queued and succeeds on the other agent; the log shows both attempts.
#[test]
fn killed_agent_run_is_requeued_and_finishes_elsewhere() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut plane = Plane::start(tmp.path(), &["--lease-ttl", "2s"]);
    let rt = rt();
    let c = plane.client();
    let token = rt.block_on(make_pool(&c, "p", 2));
    let base = plane.import_busybox();
    plane.start_agent("p", &token, "a1");
    let df = format!("FROM {base}\nRUN echo slow-step-start && sleep 4 && echo slow-step-done\n");
    let dir = context(&tmp.path().join("ctx"), &df);
    let tag = format!("{}/requeue:1", plane.host());
    let run = rt.block_on(async {
        let d = upload(&c, &dir).await;
        submit(&c, "p", spec(&d, &df, &tag)).await
    });
    rt.block_on(wait_log(&c, &run.id, "slow-step-start"));
    // The second agent joins; the first dies mid-RUN.
    plane.start_agent("p", &token, "a2");
    plane.agents[0].sigkill();
    let done = rt.block_on(wait_state(&c, &run.id, RunState::is_final, 90));
    assert_eq!(
        done.state,
        RunState::Succeeded,
        "{done:?}\n{}",
        plane.agents[1].text()
    );
    assert_eq!(done.attempts.len(), 2, "{done:?}");
    assert_eq!(done.attempts[0].agent, "a1");
    assert_eq!(done.attempts[0].outcome.as_deref(), Some("lost"));
    assert_eq!(done.attempts[1].agent, "a2");
    assert!(done.attempts[1].fence > done.attempts[0].fence);
    let log: String = rt
        .block_on(full_log(&c, &run.id))
        .into_iter()
        .map(|c| c.data)
        .collect();
    assert!(log.contains("attempt 1 started on agent a1"), "{log}");
    assert!(log.contains("stopped responding"), "{log}");
    assert!(log.contains("attempt 2 started on agent a2"), "{log}");
    assert!(log.contains("slow-step-done"), "{log}");
    // The killed agent's build went with it: nothing of attempt 1 still runs.
    let ps = ok(Command::new("ps").args(["-eo", "args"]));
    assert!(
        !ps.lines().any(|l| l.contains("agent-a1/runs")),
        "a build of the killed agent survived:\n{ps}"
    );
}

/// SIGKILL of the server mid-run, then a restart: the agent keeps building,
/// its log reaches the new server, and the log is contiguous (no line lost,
/// none doubled).
#[test]
fn killed_server_restarts_and_the_run_completes_with_a_whole_log() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut plane = Plane::start(tmp.path(), &["--lease-ttl", "3s"]);
    let rt = rt();
    let c = plane.client();
    let token = rt.block_on(make_pool(&c, "p", 1));
    let base = plane.import_busybox();
    plane.start_agent("p", &token, "solo");
    let df = format!("FROM {base}\nRUN for i in $(seq 1 40); do echo line-$i; sleep 0.1; done\n");
    let dir = context(&tmp.path().join("ctx"), &df);
    let tag = format!("{}/restart:1", plane.host());
    let run = rt.block_on(async {
        let d = upload(&c, &dir).await;
        submit(&c, "p", spec(&d, &df, &tag)).await
    });
    rt.block_on(wait_log(&c, &run.id, "line-5"));
    // A `slipway logs -f` follows across the restart.
    let follower = plane
        .cli()
        .args(["logs", "-f", &run.id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    plane.kill_and_restart(&["--lease-ttl", "3s"], Duration::from_millis(1500));
    let c = plane.client();
    let done = rt.block_on(wait_state(&c, &run.id, RunState::is_final, 90));
    assert_eq!(
        done.state,
        RunState::Succeeded,
        "{done:?}\n{}",
        plane.agents[0].text()
    );
    assert_eq!(done.attempts.len(), 1, "the run was not redone: {done:?}");
    let chunks = rt.block_on(full_log(&c, &run.id));
    let positions: Vec<u64> = chunks.iter().map(|c| c.pos).collect();
    let expected: Vec<u64> = (1..=chunks.len() as u64).collect();
    assert_eq!(positions, expected, "log positions have gaps");
    let text: String = chunks.iter().map(|c| c.data.as_str()).collect();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("line-")).collect();
    let want: Vec<String> = (1..=40).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines, want, "log lines lost or doubled:\n{text}");
    let followed = follower.wait_with_output().unwrap();
    assert!(followed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&followed.stdout),
        text,
        "slipway logs -f printed the log once, whole, through the restart"
    );
}

/// 50 builds at once on a pool of 4 agents: all succeed, each ran once, no
/// agent ran two at a time, and every lease had its own fencing number.
#[test]
fn fifty_concurrent_builds_on_four_agents() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let c = plane.client();
    let token = rt.block_on(make_pool(&c, "ci", 4));
    let base = plane.import_busybox();
    for i in 0..4 {
        plane.start_agent("ci", &token, &format!("ag{i}"));
    }
    let df = format!("FROM {base}\nARG N\nRUN echo build-$N > /n.txt && cat /n.txt\n");
    let dir = context(&tmp.path().join("ctx"), &df);
    let host = plane.host();
    let runs = rt.block_on(async {
        let d = upload(&c, &dir).await;
        let submits = (0..50).map(|n| {
            let c = c.clone();
            let mut s = spec(&d, &df, &format!("{host}/many:{n}"));
            s.build_args.insert("N".into(), n.to_string());
            async move { submit(&c, "ci", s).await }
        });
        futures_util::future::join_all(submits).await
    });
    let mut done = Vec::new();
    for r in &runs {
        done.push(rt.block_on(wait_state(&c, &r.id, RunState::is_final, 600)));
    }
    let mut fences = HashSet::new();
    let mut by_agent: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (n, r) in done.iter().enumerate() {
        assert_eq!(r.state, RunState::Succeeded, "{r:?}");
        assert_eq!(r.attempts.len(), 1, "{r:?}");
        let a = &r.attempts[0];
        assert!(fences.insert(a.fence), "fence {} granted twice", a.fence);
        by_agent
            .entry(a.agent.clone())
            .or_default()
            .push((a.started_at, a.ended_at.unwrap()));
        let log: String = rt
            .block_on(full_log(&c, &r.id))
            .into_iter()
            .map(|c| c.data)
            .collect();
        assert!(log.contains(&format!("build-{n}")), "{log}");
    }
    assert!(by_agent.len() >= 2, "work spread over agents: {by_agent:?}");
    for (agent, mut spans) in by_agent {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{agent} held two runs at once: {w:?}");
        }
    }
}

/// Cancel stops a running build; a timeout ends a run as timed-out.
#[test]
fn cancel_and_timeout_stop_running_builds() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let c = plane.client();
    let token = rt.block_on(make_pool(&c, "p", 1));
    let base = plane.import_busybox();
    plane.start_agent("p", &token, "x");
    let df = format!("FROM {base}\nRUN echo sleeping-now && sleep 60\n");
    let dir = context(&tmp.path().join("ctx"), &df);
    let tag = format!("{}/sleepy:1", plane.host());
    let (a, b) = rt.block_on(async {
        let d = upload(&c, &dir).await;
        let a = submit(&c, "p", spec(&d, &df, &tag)).await;
        let b = c
            .submit_run(&RunRequest {
                pool: "p".into(),
                build: spec(&d, &df, &tag),
                secrets: BTreeMap::new(),
                timeout_secs: Some(3),
            })
            .await
            .unwrap();
        (a, b)
    });
    rt.block_on(wait_log(&c, &a.id, "sleeping-now"));
    // The pool's tier (S1: 2 CPUs, 3 GiB) reaches the build as limits, and
    // the RUN's cgroup carries them.
    let ps = ok(Command::new("ps").args(["-eo", "pid,args"]));
    let ours = tmp.path().join("agent-x").display().to_string();
    let build = ps
        .lines()
        .find(|l| l.contains("build --local") && l.contains(&ours))
        .unwrap_or_else(|| panic!("no build child of agent x:\n{ps}"));
    assert!(
        build.contains("--memory 3221225472") && build.contains("--cpus 2"),
        "the build child lacks the tier's limits: {build}"
    );
    let build_pid = build.split_whitespace().next().unwrap().to_owned();
    // The RUN's `sleep`: the one descending from our build (other tests
    // may be sleeping too).
    let parent = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("PPid:").map(|p| p.trim().to_owned()))
    };
    // `echo sleeping-now` is logged a moment before `sleep` starts: look
    // again until it is there.
    let find_sleeper = || {
        let ps = ok(Command::new("ps").args(["-eo", "pid,args"]));
        ps.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("sleep"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .find(|pid| {
                let mut p = pid.clone();
                for _ in 0..16 {
                    match parent(&p) {
                        Some(pp) if pp == build_pid => return true,
                        Some(pp) if pp != "0" && pp != "1" => p = pp,
                        _ => return false,
                    }
                }
                false
            })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let sleeper = loop {
        if let Some(p) = find_sleeper() {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the RUN's sleep never ran under our build"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let cg = std::fs::read_to_string(format!("/proc/{sleeper}/cgroup")).unwrap();
    let limit = cg.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = match ctrl {
            "memory" => format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"),
            "" => format!("/sys/fs/cgroup{path}/memory.max"),
            _ => return None,
        };
        std::fs::read_to_string(file).ok()
    });
    assert_eq!(
        limit.as_deref().map(str::trim),
        Some("3221225472"),
        "memory limit of the RUN's cgroup ({cg})"
    );
    let t0 = Instant::now();
    let out = plane
        .cli()
        .args(["runs", "cancel", &a.id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = rt.block_on(wait_state(&c, &a.id, RunState::is_final, 30));
    eprintln!("cancel took {:?}", t0.elapsed());
    assert_eq!(r.state, RunState::Canceled, "{r:?}");
    // The next run starts on the freed agent and runs into its timeout.
    let r = rt.block_on(wait_state(&c, &b.id, RunState::is_final, 60));
    assert_eq!(r.state, RunState::TimedOut, "{r:?}");
    // Nothing of either stopped build is left: not the build child, not
    // the RUN's process.
    let ps = ok(Command::new("ps").args(["-eo", "args"]));
    assert!(
        !ps.lines().any(|l| l.contains(&format!("{ours}/runs"))),
        "a stopped build survived:\n{ps}"
    );
    assert!(
        !Path::new(&format!("/proc/{sleeper}")).exists(),
        "the canceled RUN's process survived"
    );
    // A queued run cancels at once; a finished one cannot be canceled.
    let out = plane
        .cli()
        .args(["runs", "cancel", &a.id])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already ended"));
}

/// Tokens: pool A's agent token cannot lease or touch pool B's runs;
/// no token → 401; tokens and secrets are not stored in clear; the per-run
/// registry credential is not an API token and dies with the run.
#[test]
fn tokens_and_secrets_are_scoped_and_never_stored_in_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let c = plane.client();
    rt.block_on(async {
        for name in ["a", "b"] {
            c.create_pool(&api::PoolSpec {
                name: name.into(),
                tier: api::Tier::S2,
                count: 0,
                network: None,
                local: false,
                allow_insecure: false,
            })
            .await
            .unwrap();
        }
        let ta = c.pool_token("a").await.unwrap().token;
        let tb = c.pool_token("b").await.unwrap().token;
        let dir = context(&tmp.path().join("ctx"), "FROM scratch\n");
        let d = upload(&c, &dir).await;
        let secret = "s3cr3t-VALUE-never-in-clear";
        let mut secrets = BTreeMap::new();
        secrets.insert("npm".to_owned(), secret.to_owned());
        let tag = format!("{}/app:1", plane.host());
        let run = c
            .submit_run(&RunRequest {
                pool: "b".into(),
                build: spec(&d, "FROM scratch\n", &tag),
                secrets,
                timeout_secs: None,
            })
            .await
            .unwrap();
        assert_eq!(run.secret_ids, vec!["npm".to_owned()]);

        // Pool A's agent sees nothing; it cannot touch B's run either.
        let agent_a = api::Client::new(&plane.url, Some(ta.clone())).unwrap();
        let none = agent_a
            .lease(&api::LeaseRequest {
                agent: "spy".into(),
                wait_secs: 1,
            })
            .await
            .unwrap();
        assert!(none.is_none(), "pool A leased pool B's run");
        let hb = agent_a
            .heartbeat(
                &run.id,
                &api::Heartbeat {
                    token: "guess".into(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(hb.status(), Some(403), "{hb}");

        // Without a token: 401 everywhere; an agent token is no user token.
        let anon = api::Client::new(&plane.url, None).unwrap();
        assert_eq!(
            anon.list_runs(None, None, 1).await.unwrap_err().status(),
            Some(401)
        );
        assert_eq!(anon.list_pools().await.unwrap_err().status(), Some(401));
        let e = anon
            .lease(&api::LeaseRequest {
                agent: "x".into(),
                wait_secs: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(401));
        assert_eq!(
            agent_a.list_runs(None, None, 1).await.unwrap_err().status(),
            Some(401)
        );

        // Pool B's agent gets the run with the secret in clear, a fence
        // number and a registry credential for this run only.
        let agent_b = api::Client::new(&plane.url, Some(tb.clone())).unwrap();
        let lease = agent_b
            .lease(&api::LeaseRequest {
                agent: "b1".into(),
                wait_secs: 5,
            })
            .await
            .unwrap()
            .expect("pool B's agent leases the run");
        assert_eq!(lease.run.id, run.id);
        assert_eq!(lease.secrets.get("npm").map(String::as_str), Some(secret));
        assert_eq!(lease.limits.cpus, 4);
        assert_eq!(lease.limits.memory_bytes, 8 << 30);
        let reg = lease.registry.clone().unwrap();
        let run_token = api::Client::new(&plane.url, Some(reg.password.clone())).unwrap();
        assert_eq!(
            run_token
                .list_runs(None, None, 1)
                .await
                .unwrap_err()
                .status(),
            Some(401)
        );
        let http = reqwest::Client::new();
        let v2 = format!("{}/v2/app/tags/list", plane.url);
        let before = http
            .get(&v2)
            .basic_auth("x", Some(&reg.password))
            .send()
            .await
            .unwrap();
        assert_ne!(
            before.status(),
            401,
            "the run credential works while the run lives"
        );

        // A wrong lease token is fenced off; the right one finishes the run.
        let wrong = agent_b
            .report(
                &run.id,
                &api::RunResult {
                    token: "lease_forged".into(),
                    outcome: api::Outcome::Succeeded,
                    exit_code: Some(0),
                    image_digest: None,
                    message: None,
                    revision: None,
                    steps: Vec::new(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(wrong.status(), Some(409));
        agent_b
            .upload_logs(
                &run.id,
                &api::LogUpload {
                    token: lease.token.clone(),
                    chunks: vec![api::AgentChunk {
                        seq: 1,
                        data: "one\n".into(),
                    }],
                },
            )
            .await
            .unwrap();
        // The same chunk again (a retry) is stored once.
        agent_b
            .upload_logs(
                &run.id,
                &api::LogUpload {
                    token: lease.token.clone(),
                    chunks: vec![
                        api::AgentChunk {
                            seq: 1,
                            data: "one\n".into(),
                        },
                        api::AgentChunk {
                            seq: 2,
                            data: "two\n".into(),
                        },
                    ],
                },
            )
            .await
            .unwrap();
        let done = agent_b
            .report(
                &run.id,
                &api::RunResult {
                    token: lease.token.clone(),
                    outcome: api::Outcome::Failed,
                    exit_code: Some(1),
                    image_digest: None,
                    message: Some("test".into()),
                    revision: None,
                    steps: Vec::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(done.state, RunState::Failed);
        let text: String = full_log(&c, &run.id)
            .await
            .into_iter()
            .map(|c| c.data)
            .collect();
        assert_eq!(text.matches("one\n").count(), 1, "{text}");
        assert!(text.contains("two\n"));
        let late = agent_b
            .heartbeat(
                &run.id,
                &api::Heartbeat {
                    token: lease.token.clone(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            late.status(),
            Some(409),
            "a finished lease cannot be extended"
        );
        let after = http
            .get(&v2)
            .basic_auth("x", Some(&reg.password))
            .send()
            .await
            .unwrap();
        assert_eq!(
            after.status(),
            401,
            "the run credential is revoked with the run"
        );

        // Nothing secret sits in clear on disk: not the secret, not a token.
        let mut found = Vec::new();
        let mut stack = vec![plane.data.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().is_some_and(|n| n != "admin-token") {
                    let bytes = std::fs::read(&p).unwrap();
                    for needle in [
                        secret,
                        ta.as_str(),
                        tb.as_str(),
                        lease.token.as_str(),
                        reg.password.as_str(),
                        plane.token.as_str(),
                    ] {
                        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                            found.push((p.clone(), needle.to_owned()));
                        }
                    }
                }
            }
        }
        assert!(found.is_empty(), "stored in clear: {found:?}");

        // Pools: a busy pool is not deleted without force.
        let run2 = submit(&c, "a", spec(&d, "FROM scratch\n", &tag)).await;
        assert_eq!(
            c.delete_pool("a", false).await.unwrap_err().status(),
            Some(409)
        );
        c.delete_pool("a", true).await.unwrap();
        assert_eq!(c.run(&run2.id).await.unwrap().state, RunState::Canceled);
        // The OpenAPI document is served.
        let doc = c.openapi().await.unwrap();
        assert!(doc["paths"]["/agent/lease"]["post"].is_object());
    });
}

pub(crate) use testkit::services::Postgres;

/// The lease protocol under contention, driven through the API by 8
/// simulated agents racing for 120 runs: every run is leased exactly once,
/// every lease has its own fencing number, and logs land once each.
async fn queue_under_contention(url: &str, token: &str) {
    let c = api::Client::new(url, Some(token.into())).unwrap();
    let agent_token = make_pool(&c, "q", 8).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(&dir.path().join("ctx"), "FROM scratch\n");
    let d = upload(&c, &ctx).await;
    let mut ids = Vec::new();
    for n in 0..120 {
        let mut s = spec(&d, "FROM scratch\n", "example.com/x:1");
        s.build_args.insert("N".into(), n.to_string());
        ids.push(submit(&c, "q", s).await.id);
    }
    let agents = (0..8).map(|i| {
        let a = api::Client::new(url, Some(agent_token.clone())).unwrap();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let lease = a
                    .lease(&api::LeaseRequest {
                        agent: format!("sim{i}"),
                        wait_secs: 1,
                    })
                    .await
                    .unwrap();
                let Some(lease) = lease else { return mine };
                a.upload_logs(
                    &lease.run.id,
                    &api::LogUpload {
                        token: lease.token.clone(),
                        chunks: vec![api::AgentChunk {
                            seq: 1,
                            data: format!("by sim{i}\n"),
                        }],
                    },
                )
                .await
                .unwrap();
                a.report(
                    &lease.run.id,
                    &api::RunResult {
                        token: lease.token.clone(),
                        outcome: api::Outcome::Succeeded,
                        exit_code: Some(0),
                        image_digest: None,
                        message: None,
                        revision: None,
                        steps: Vec::new(),
                    },
                )
                .await
                .unwrap();
                mine.push((lease.run.id, lease.fence));
            }
        })
    });
    let mut leased = Vec::new();
    for h in futures_util::future::join_all(agents).await {
        leased.extend(h.unwrap());
    }
    let runs: HashSet<&String> = leased.iter().map(|(r, _)| r).collect();
    let fences: HashSet<i64> = leased.iter().map(|(_, f)| *f).collect();
    assert_eq!(leased.len(), 120, "every run leased exactly once");
    assert_eq!(runs.len(), 120);
    assert_eq!(fences.len(), 120, "fences are unique");
    for id in &ids {
        let r = c.run(id).await.unwrap();
        assert_eq!(r.state, RunState::Succeeded);
        assert_eq!(r.attempts.len(), 1);
        let log = full_log(&c, id).await;
        assert_eq!(
            log.iter()
                .filter(|ch| ch.data.starts_with("by sim"))
                .count(),
            1
        );
    }
}

#[test]
fn lease_queue_holds_under_contention_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(tmp.path(), &[]);
    rt().block_on(queue_under_contention(&plane.url, &plane.token));
}

#[test]
fn lease_queue_holds_under_contention_on_postgresql() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pg = Postgres::start(tmp.path());
    let plane = Plane::start(tmp.path(), &["--database", &pg.url()]);
    rt().block_on(queue_under_contention(&plane.url, &plane.token));
    // The state is in PostgreSQL, not in a SQLite file.
    assert!(!plane.data.join("slipway.db").exists());
}

/// Contexts the agent fetches itself: a git repository (`URL#ref:subdir`,
/// served over git's dumb HTTP by a loopback web server) and a tarball URL.
#[test]
fn git_and_tarball_contexts_are_fetched_by_the_agent() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let c = plane.client();
    let token = rt.block_on(make_pool(&c, "p", 1));
    let base = plane.import_busybox();
    plane.start_agent("p", &token, "g");

    // A repository whose `app/` holds the build, on branch `release`.
    let srv_root = tmp.path().join("www");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("app")).unwrap();
    std::fs::write(
        work.join("app/Dockerfile"),
        format!("FROM {base}\nCOPY msg.txt /msg.txt\nRUN cat /msg.txt\n"),
    )
    .unwrap();
    std::fs::write(work.join("app/msg.txt"), "from-git-release\n").unwrap();
    let git = |args: &[&str], dir: &Path| {
        ok(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir))
    };
    git(&["init", "-q", "-b", "release"], &work);
    git(&["add", "."], &work);
    git(&["commit", "-q", "-m", "one"], &work);
    std::fs::create_dir_all(&srv_root).unwrap();
    ok(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(srv_root.join("repo.git")));
    ok(Command::new("git")
        .args(["update-server-info"])
        .current_dir(srv_root.join("repo.git")));
    // The tarball: the same app as a .tar.gz.
    ok(Command::new("tar")
        .arg("-czf")
        .arg(srv_root.join("app.tar.gz"))
        .arg("-C")
        .arg(work.join("app"))
        .arg("."));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _web = Proc::spawn(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(&srv_root),
        tmp.path().join("web.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "python http.server did not start: {}",
            _web.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (n, url) in [
        format!("http://127.0.0.1:{port}/repo.git#release:app"),
        format!("http://127.0.0.1:{port}/app.tar.gz"),
    ]
    .iter()
    .enumerate()
    {
        let out = plane
            .cli()
            .args([
                "build",
                "--no-cache",
                "--pool",
                "p",
                "-t",
                &format!("fromurl:{n}"),
                url,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{url}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("from-git-release"), "{stdout}");
    }
    // A ref that does not exist: an error that names it.
    let out = plane
        .cli()
        .args([
            "build",
            "--pool",
            "p",
            "-t",
            "fromurl:x",
            &format!("http://127.0.0.1:{port}/repo.git#nope:app"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nope"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `--secret` on a pool build: the RUN reads it, the log shows `***` in its
/// place, and no layer, config or history entry of the image holds it.
#[test]
fn secrets_reach_the_run_masked_in_logs_and_absent_from_the_image() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let c = plane.client();
    let token = rt.block_on(make_pool(&c, "p", 1));
    let base = plane.import_busybox();
    plane.start_agent("p", &token, "s");
    let secret = "tok-8c1f-Qz93-very-secret";
    let dir = context(
        &tmp.path().join("ctx"),
        &format!(
            "FROM {base}\nRUN --mount=type=secret,id=npm cat /run/secrets/npm && echo && wc -c < /run/secrets/npm\nRUN echo after > /after.txt\n"
        ),
    );
    let out = plane
        .cli()
        .args([
            "build",
            "--pool",
            "p",
            "--secret",
            "id=npm,env=NPM_TOKEN",
            "-t",
            "sec:1",
        ])
        .arg(&dir)
        .env("NPM_TOKEN", secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains(secret),
        "the secret leaked into the log:\n{stdout}"
    );
    assert!(
        stdout.contains("***"),
        "the RUN printed the (masked) secret: {stdout}"
    );
    assert!(stdout.contains(&secret.len().to_string()), "{stdout}");
    // Every blob of the image: layers (decompressed), config, manifest.
    let layout = tmp.path().join("layout");
    ok(Command::new(tool("skopeo"))
        .args(["copy", "--src-tls-verify=false", "--src-creds"])
        .arg(format!("admin:{}", plane.token))
        .arg(format!("docker://{}/sec:1", plane.host()))
        .arg(format!("oci:{}:x", layout.display())));
    let mut scanned = 0;
    for e in std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let raw = std::fs::read(e.path()).unwrap();
        let mut plain = Vec::new();
        let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
            use std::io::Read;
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut plain)
                .unwrap();
            &plain
        } else {
            &raw
        };
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is in blob {}",
            e.path().display()
        );
        scanned += 1;
    }
    assert!(
        scanned >= 4,
        "manifest, config and layers scanned: {scanned}"
    );
}

/// Retention: finished runs (and their logs) and contexts no live run needs
/// are deleted; a queued run and its context stay.
#[test]
fn retention_deletes_old_runs_and_unused_contexts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let (finished, queued, done_ctx, kept_ctx) = rt.block_on(async {
        let c = plane.client();
        for name in ["p", "idle"] {
            make_pool(&c, name, 0).await;
        }
        let done_ctx = upload(&c, &context(&tmp.path().join("a"), "FROM scratch\n")).await;
        let kept_ctx = upload(
            &c,
            &context(&tmp.path().join("b"), "FROM scratch\nLABEL b=1\n"),
        )
        .await;
        let finished = submit(&c, "p", spec(&done_ctx, "FROM scratch\n", "x.example/a:1")).await;
        c.cancel_run(&finished.id).await.unwrap();
        let queued = submit(
            &c,
            "idle",
            spec(&kept_ctx, "FROM scratch\n", "x.example/b:1"),
        )
        .await;
        (finished.id, queued.id, done_ctx, kept_ctx)
    });
    std::thread::sleep(Duration::from_millis(2100));
    plane.kill_and_restart(&["--retention", "1s"], Duration::ZERO);
    rt.block_on(async {
        let c = plane.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.run(&finished).await.is_ok() {
            assert!(Instant::now() < deadline, "the old run was not deleted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(c.run(&finished).await.unwrap_err().status(), Some(404));
        assert_eq!(c.run(&queued).await.unwrap().state, RunState::Queued);
        // Runs go first, then contexts (a listing of the store, slower on
        // object storage): wait for that too.
        while c.context_exists(&done_ctx).await.unwrap() {
            assert!(
                Instant::now() < deadline,
                "unused context kept; the server said:\n{}",
                plane.server.as_ref().map(|s| s.text()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The pass is over (it had deleted something): the queued run's
        // context has been looked at and kept.
        if let Some(s) = plane.server.as_ref() {
            s.wait_for("deleted what is past the retention period");
        }
        assert!(
            c.context_exists(&kept_ctx).await.unwrap(),
            "a queued run's context was deleted"
        );
    });
}

/// `slipway prune`: keeps what was used recently, dry-runs, deletes
/// snapshots and cache steps, and a build afterwards pulls and builds again.
#[test]
fn prune_reclaims_layers_and_cache() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(tmp.path(), &[]);
    let base = plane.import_busybox();
    let dir = context(
        &tmp.path().join("ctx"),
        &format!("FROM {base}\nRUN echo cached > /c.txt\n"),
    );
    let data = tmp.path().join("build");
    let build = || {
        let out = plane
            .cli()
            .args(["build", "--local", "--progress", "plain", "--data"])
            .arg(&data)
            .args(["-t", &format!("{}/pruned:1", plane.host())])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    build();
    let count = |area: &str| {
        std::fs::read_dir(data.join(area))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(count("layers/snapshots") > 0 && count("cache") > 0);
    let prune = |args: &[&str]| ok(plane.cli().arg("prune").arg("--data").arg(&data).args(args));
    let kept = prune(&["--keep-duration", "1h"]);
    assert!(kept.starts_with("deleted 0 entries"), "{kept}");
    let dry = prune(&["--dry-run"]);
    assert!(
        dry.starts_with("would delete") && !dry.contains(" 0 entries"),
        "{dry}"
    );
    assert!(count("cache") > 0, "a dry run deletes nothing");
    let done = prune(&[]);
    assert!(
        done.starts_with("deleted") && !done.contains(" 0 entries"),
        "{done}"
    );
    assert_eq!(count("layers/snapshots"), 0);
    assert_eq!(count("cache"), 0);
    // Nothing cached any more: the RUN runs again.
    let again = build();
    assert!(!again.contains("CACHED"), "{again}");
}

/// `slipway agent check` from this machine: the server, the token's pool,
/// the registry, each `--reach` endpoint (an HTTP server, an open and a
/// closed port), isolation and the work dir; exit 1 when one fails, and
/// nothing changes on the server (no agent appears in the pool).
#[test]
fn agent_check_reports_what_the_agent_can_reach() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let c = plane.client();
    let token = rt.block_on(make_pool(&c, "private", 0));
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_addr = open.local_addr().unwrap().to_string();
    let closed_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let check = |pool: &str, token: &str, reach: &[&str]| {
        let mut cmd = Command::new(SLIPWAY);
        cmd.args(["agent", "check", "--server", &plane.url, "--pool", pool])
            .arg("--work-dir")
            .arg(tmp.path().join("agent-work"))
            .args(["-o", "json", "--timeout", "3s"])
            .env("SLIPWAY_TOKEN", token);
        for r in reach {
            cmd.args(["--reach", r]);
        }
        let out = cmd.output().unwrap();
        let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), checks)
    };
    let level = |checks: &[serde_json::Value], name: &str, target: &str| -> String {
        checks
            .iter()
            .find(|c| c["name"] == name && c["target"].as_str().unwrap_or("").contains(target))
            .unwrap_or_else(|| panic!("no check {name} {target} in {checks:?}"))["level"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Everything reachable: exit 0, and each check says so.
    let api_url = format!("{}/api/v1/openapi.json", plane.url);
    let (ok_all, checks) = check("private", &token, &[&open_addr, &api_url]);
    assert!(ok_all, "{checks:#?}");
    assert_eq!(level(&checks, "server", &plane.url), "ok");
    assert_eq!(level(&checks, "token", "private"), "ok");
    assert_eq!(level(&checks, "registry", &plane.host()), "ok");
    assert_eq!(level(&checks, "reach", &open_addr), "ok");
    assert_eq!(level(&checks, "reach", &api_url), "ok");
    assert_eq!(level(&checks, "isolation", ""), "ok");
    assert_eq!(level(&checks, "work dir", "agent-work"), "ok");

    // A closed port fails the check, named, and the exit code says so.
    let (ok_closed, checks) = check("private", &token, &[&closed_addr]);
    assert!(!ok_closed);
    assert_eq!(level(&checks, "reach", &closed_addr), "fail");
    assert_eq!(level(&checks, "server", &plane.url), "ok");

    // A token of no pool, and the right token named for another pool.
    let (ok_bad, checks) = check("private", "not-a-token", &[]);
    assert!(!ok_bad);
    assert_eq!(level(&checks, "token", "private"), "fail");
    let (ok_other, checks) = check("public", &token, &[]);
    assert!(!ok_other);
    let token_check = checks.iter().find(|c| c["name"] == "token").unwrap();
    assert!(
        token_check["detail"]
            .as_str()
            .unwrap()
            .contains("pool private's, not public's"),
        "{token_check}"
    );

    // A server that is not there.
    let (ok_gone, checks) = {
        let mut cmd = Command::new(SLIPWAY);
        cmd.args(["agent", "check", "--server"])
            .arg(format!("http://{closed_addr}"))
            .args(["--pool", "private", "-o", "json", "--timeout", "3s"])
            .arg("--work-dir")
            .arg(tmp.path().join("agent-work"))
            .env("SLIPWAY_TOKEN", &token);
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap(),
        )
    };
    assert!(!ok_gone);
    assert_eq!(level(&checks, "server", &closed_addr), "fail");

    // Checking changed nothing: no agent of the pool was recorded.
    let status = rt.block_on(c.pool("private")).unwrap();
    assert!(status.agents.is_empty(), "{:?}", status.agents);
    drop(open);
}

/// `slipway token`: a CI token with `pool:a:build` and a registry grant
/// builds on pool a only, and sees, cancels and reads the logs of pool a's
/// runs only; listing never shows a secret; a deleted token stops working;
/// the last admin token cannot be deleted.
#[test]
fn scoped_tokens_build_only_on_their_pools() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let admin = plane.client();
    rt.block_on(async {
        for name in ["a", "b"] {
            make_pool(&admin, name, 0).await;
        }
    });
    let created = plane
        .cli()
        .args(["token", "create", "ci", "--grant", "pool:a:build"])
        .args(["--grant", "repository:team/*:pull,push"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let secret = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("slw_"), "{secret}");
    let bad_grant = plane
        .cli()
        .args(["token", "create", "x", "--grant", "pool:a:fly"])
        .output()
        .unwrap();
    assert!(!bad_grant.status.success());
    assert!(String::from_utf8_lossy(&bad_grant.stderr).contains("pool:a:fly"));

    let ci = api::Client::new(&plane.url, Some(secret.clone())).unwrap();
    let host = plane.host();
    let status = |e: api::ApiError| match e {
        api::ApiError::Status {
            status, message, ..
        } => (status, message),
        other => panic!("{other}"),
    };
    rt.block_on(async {
        let dir = context(&tmp.path().join("ctx"), "FROM scratch\n");
        let d = upload(&ci, &dir).await;
        let request = |pool: &str, tag: &str| RunRequest {
            pool: pool.into(),
            build: spec(&d, "FROM scratch\n", tag),
            secrets: BTreeMap::new(),
            timeout_secs: None,
        };
        let mine = ci
            .submit_run(&request("a", &format!("{host}/team/app:1")))
            .await
            .unwrap();
        let (code, msg) = status(
            ci.submit_run(&request("b", &format!("{host}/team/app:1")))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 403);
        assert!(msg.contains("pool:b:build"), "{msg}");
        let (code, _) = status(
            ci.submit_run(&request("a", &format!("{host}/other/app:1")))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 403, "pushing outside team/* must be refused");

        let theirs = admin
            .submit_run(&request("b", &format!("{host}/x/y:1")))
            .await
            .unwrap();
        let seen: Vec<String> = ci
            .list_runs(None, None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(seen, vec![mine.id.clone()]);
        assert_eq!(
            status(ci.list_runs(Some("b"), None, 10).await.unwrap_err()).0,
            403
        );
        assert_eq!(status(ci.run(&theirs.id).await.unwrap_err()).0, 403);
        assert_eq!(status(ci.cancel_run(&theirs.id).await.unwrap_err()).0, 403);
        assert_eq!(
            status(ci.logs(&theirs.id, 0, Duration::ZERO).await.unwrap_err()).0,
            403
        );
        assert_eq!(ci.run(&mine.id).await.unwrap().pool, "a");
        ci.cancel_run(&mine.id).await.unwrap();
        // Only its pools are listed; another's is refused.
        let pools: Vec<String> = ci
            .list_pools()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(pools, vec!["a".to_owned()]);
        assert_eq!(status(ci.pool("b").await.unwrap_err()).0, 403);
        assert_eq!(ci.pool("a").await.unwrap().pool.name, "a");
        // Managing pools and tokens stays with admin tokens.
        assert_eq!(status(ci.list_tokens().await.unwrap_err()).0, 403);
        assert_eq!(status(ci.delete_pool("b", true).await.unwrap_err()).0, 403);
    });

    // Listing: names and grants, never a secret.
    let listed = ok(plane.cli().args(["token", "list", "-o", "json"]));
    assert!(!listed.contains(&secret) && !listed.contains(&plane.token));
    let tokens: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let ci_token = tokens.iter().find(|t| t["name"] == "ci").unwrap();
    assert_eq!(
        ci_token["grants"],
        serde_json::json!(["pool:a:build", "repository:team/*:pull,push"])
    );
    let admin_id = tokens.iter().find(|t| t["admin"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Deleted: the token stops working at once.
    let id = ci_token["id"].as_str().unwrap();
    ok(plane.cli().args(["token", "delete", id]));
    let gone = rt.block_on(ci.list_runs(None, None, 10)).unwrap_err();
    assert_eq!(status(gone).0, 401);
    let last = plane
        .cli()
        .args(["token", "delete", &admin_id])
        .output()
        .unwrap();
    assert!(!last.status.success());
    assert!(String::from_utf8_lossy(&last.stderr).contains("last admin token"));
    assert!(rt.block_on(admin.list_tokens()).is_ok());
}

/// Rights follow a token's unique id, never its name: a scoped token that
/// takes the deleted admin token's name gives its runs no admin rights.
/// A context is read back only by the token that uploaded it (another must
/// send the bytes itself) or by an agent holding a lease on a run of it.
#[test]
fn contexts_and_run_rights_follow_the_token_not_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let first_admin = plane.client();
    let host = plane.host();
    let http = reqwest::Client::new();
    let url = plane.url.clone();
    rt.block_on(async {
        let ta = make_pool(&first_admin, "a", 0).await;
        let tb = make_pool(&first_admin, "b", 0).await;
        let token = |c: &api::Client, name: &str, admin: bool, grants: &[&str]| {
            let req = api::TokenRequest {
                name: name.into(),
                admin,
                grants: grants.iter().map(|g| g.to_string()).collect(),
            };
            let (c, url) = (c.clone(), url.clone());
            async move {
                let t = c.create_token(&req).await.unwrap();
                let client = api::Client::new(&url, Some(t.token.clone())).unwrap();
                (client, t.token)
            }
        };
        // Replace the first admin token by "ops", then give its old name to
        // a scoped token.
        let (ops, _) = token(&first_admin, "ops", true, &[]).await;
        let old = ops
            .list_tokens()
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.name == "admin")
            .unwrap();
        ops.delete_token(&old.id).await.unwrap();
        let (fake, _) = token(
            &ops,
            "admin",
            false,
            &["pool:a:build", "repository:mine/*:pull,push"],
        )
        .await;
        let (other, other_secret) = token(
            &ops,
            "other",
            false,
            &["pool:b:build", "repository:x/*:pull,push"],
        )
        .await;

        let dir = context(&tmp.path().join("ctx"), "FROM scratch\n");
        let d = upload(&fake, &dir).await;
        let run = fake
            .submit_run(&RunRequest {
                pool: "a".into(),
                build: spec(&d, "FROM scratch\n", &format!("{host}/mine/app:1")),
                secrets: BTreeMap::new(),
                timeout_secs: None,
            })
            .await
            .unwrap();

        // Another token can neither read nor build the context by digest.
        let ctx_url = format!("{}/api/v1/contexts/{d}", plane.url);
        let get = |t: &str| http.get(&ctx_url).bearer_auth(t.to_owned()).send();
        assert_eq!(get(&other_secret).await.unwrap().status(), 403);
        let head = http
            .head(&ctx_url)
            .bearer_auth(&other_secret)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 404, "HEAD reveals another's context");
        let steal = RunRequest {
            pool: "b".into(),
            build: spec(&d, "FROM scratch\n", &format!("{host}/x/app:1")),
            secrets: BTreeMap::new(),
            timeout_secs: None,
        };
        let e = other.submit_run(&steal).await.unwrap_err();
        assert_eq!(e.status(), Some(400), "{e}");
        // Pool B's agent holds no run of it.
        assert_eq!(get(&tb).await.unwrap().status(), 403);
        // Sending the bytes proves having them: then it is theirs too.
        assert_eq!(upload(&other, &dir).await, d);
        assert_eq!(get(&other_secret).await.unwrap().status(), 200);
        other.submit_run(&steal).await.unwrap();

        // Pool A's agent leases the run and may read its context; the run's
        // registry credential has the scoped token's rights, not admin's.
        let agent_a = api::Client::new(&plane.url, Some(ta.clone())).unwrap();
        let lease = agent_a
            .lease(&api::LeaseRequest {
                agent: "a1".into(),
                wait_secs: 5,
            })
            .await
            .unwrap()
            .expect("pool A's agent leases the run");
        assert_eq!(lease.run.id, run.id);
        assert_eq!(get(&ta).await.unwrap().status(), 200);
        let pw = lease.registry.unwrap().password;
        let tags = |repo: &str| {
            http.get(format!("{}/v2/{repo}/tags/list", plane.url))
                .basic_auth("slipway-run", Some(pw.clone()))
                .send()
        };
        let own = tags("mine/app").await.unwrap().status();
        assert!(own == 200 || own == 404, "own repository: {own}");
        let foreign = tags("someone/else").await.unwrap().status();
        assert!(
            foreign == 401 || foreign == 403,
            "a token named admin gave its run admin's pull rights: {foreign}"
        );

        // A run queued by a token that is then deleted, its name given to a
        // new admin token before the lease: the run gets no admin rights.
        let (ci, _) = token(
            &ops,
            "ci",
            false,
            &["pool:a:build", "repository:ci/*:push,pull"],
        )
        .await;
        let d2 = upload(&ci, &dir).await;
        let queued = ci
            .submit_run(&RunRequest {
                pool: "a".into(),
                build: spec(&d2, "FROM scratch\n", &format!("{host}/ci/app:1")),
                secrets: BTreeMap::new(),
                timeout_secs: None,
            })
            .await
            .unwrap();
        let ci_id = ops
            .list_tokens()
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.name == "ci")
            .unwrap()
            .id;
        ops.delete_token(&ci_id).await.unwrap();
        token(&ops, "ci", true, &[]).await;
        let lease = agent_a
            .lease(&api::LeaseRequest {
                agent: "a2".into(),
                wait_secs: 5,
            })
            .await
            .unwrap()
            .expect("the queued run is leased");
        assert_eq!(lease.run.id, queued.id);
        let pw = lease.registry.unwrap().password;
        let foreign = http
            .get(format!("{}/v2/someone/else/tags/list", plane.url))
            .basic_auth("slipway-run", Some(pw))
            .send()
            .await
            .unwrap()
            .status();
        assert!(
            foreign == 401 || foreign == 403,
            "a run got the rights of the admin token that took its submitter's name: {foreign}"
        );
    });
}

/// A client that trickles its headers, or stalls inside a body, is cut off
/// at `--header-timeout` / `--body-timeout`; nothing of the stalled upload
/// is stored and the server keeps serving others.
#[test]
fn slow_clients_are_cut_off_at_the_header_and_body_timeouts() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(
        tmp.path(),
        &["--header-timeout", "1s", "--body-timeout", "1s"],
    );
    let addr = plane.host();
    // Waits for the server to answer or hang up; returns what it sent.
    let outcome = |mut tcp: std::net::TcpStream| {
        tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the server held a stalled request open: {e}"),
            }
        }
        assert!(start.elapsed() < Duration::from_secs(12));
        String::from_utf8_lossy(&got).into_owned()
    };

    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
    let said = outcome(slow);
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 408"),
        "{said}"
    );

    let digest = format!("sha256:{}", "a".repeat(64));
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "PUT /api/v1/contexts/{digest} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 100000\r\n\r\n0123456789",
        plane.token
    )
    .unwrap();
    let said = outcome(stalled);
    assert!(
        said.is_empty() || !said.starts_with("HTTP/1.1 2"),
        "a stalled upload was accepted: {said}"
    );

    let rt = rt();
    let c = plane.client();
    rt.block_on(async {
        assert!(!c.context_exists(&digest).await.unwrap());
        c.list_pools().await.unwrap();
    });
    let leftovers: Vec<_> = walk(&plane.data.join("contexts"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(leftovers.is_empty(), "half an upload kept: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// A RUN that prints one 100 MB line: the line reaches the log cut at the
/// agent's bound, the lines after it arrive whole, and the agent's memory
/// stays far below the line's size.
#[test]
fn a_huge_log_line_is_cut_and_does_not_grow_the_agent() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let c = plane.client();
    let token = rt.block_on(make_pool(&c, "p", 1));
    let base = plane.import_busybox();
    plane.start_agent("p", &token, "a1");
    let df = format!(
        "FROM {base}\nRUN head -c 100000000 /dev/zero | tr '\\0' a && echo && echo after-the-long-line\n"
    );
    let dir = context(&tmp.path().join("ctx"), &df);
    let tag = format!("{}/longline:1", plane.host());
    let run = rt.block_on(async {
        let d = upload(&c, &dir).await;
        submit(&c, "p", spec(&d, &df, &tag)).await
    });
    let done = rt.block_on(wait_state(&c, &run.id, RunState::is_final, 180));
    assert_eq!(done.state, RunState::Succeeded, "{done:?}");
    let log: String = rt
        .block_on(full_log(&c, &run.id))
        .into_iter()
        .map(|c| c.data)
        .collect();
    assert!(log.contains("[line cut at 64 KiB]"), "the line was not cut");
    assert!(log.contains("after-the-long-line"));
    assert!(log.len() < 1 << 20, "log of {} bytes", log.len());
    let pid = plane.agents[0].child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!("agent peak memory: {peak_kib} KiB");
    assert!(
        peak_kib < 64 * 1024,
        "the agent's peak memory was {peak_kib} KiB for a 100 MB line"
    );
}

/// A pool's policy decides whether `RUN --security=insecure` runs: refused
/// (with the line and how to allow it) until an admin allows it on the pool,
/// then run without the seccomp filter.
#[test]
fn a_pool_policy_allows_insecure_run_steps() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let c = plane.client();
    let token = rt.block_on(make_pool(&c, "p", 1));
    let base = plane.import_busybox();
    plane.start_agent("p", &token, "a1");
    let df = format!("FROM {base}\nRUN --security=insecure grep Seccomp: /proc/self/status\n");
    let dir = context(&tmp.path().join("ctx"), &df);
    let tag = format!("{}/insecure:1", plane.host());
    let attempt = |want: RunState| {
        let run = rt.block_on(async {
            let d = upload(&c, &dir).await;
            submit(&c, "p", spec(&d, &df, &tag)).await
        });
        let done = rt.block_on(wait_state(&c, &run.id, RunState::is_final, 120));
        assert_eq!(done.state, want, "{done:?}");
        rt.block_on(full_log(&c, &run.id))
            .into_iter()
            .map(|c| c.data)
            .collect::<String>()
    };
    let refused = attempt(RunState::Failed);
    assert!(refused.contains("--allow-insecure true"), "{refused}");
    let shown = ok(plane
        .cli()
        .args(["pool", "update", "p", "--allow-insecure", "true"]));
    assert!(shown.contains("insecure RUN steps allowed"), "{shown}");
    let log = attempt(RunState::Succeeded);
    assert!(
        log.lines()
            .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('0')),
        "{log}"
    );
}

/// Two server replicas on one PostgreSQL, given the same secret key file:
/// API tokens live in the database (one made on A works on B as soon as
/// B hears of it, one deleted on B stops on A); a run submitted through A with a secret is
/// leased through B at once (LISTEN/NOTIFY, not the long poll's deadline)
/// and B opens the secret A sealed; the log an agent sends to B reaches a
/// follower on A; the run's registry credential, granted by B, works on A
/// while the lease lives and stops when the run ends.
#[test]
fn two_replicas_share_runs_logs_and_leases_through_postgresql() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pg = Postgres::start(tmp.path());
    let url = pg.url();
    let key = tmp.path().join("secret.key");
    std::fs::write(&key, (0..48u8).collect::<Vec<u8>>()).unwrap();
    let key = key.to_str().unwrap().to_owned();
    let flags = [
        "--database",
        url.as_str(),
        "--secret-key-file",
        key.as_str(),
    ];
    std::fs::create_dir_all(tmp.path().join("a")).unwrap();
    let a = Plane::start(&tmp.path().join("a"), &flags);
    // B finds the admin token in the database and makes none of its own:
    // its operator uses A's.
    let b_data = tmp.path().join("b/data");
    std::fs::create_dir_all(&b_data).unwrap();
    std::fs::copy(a.data.join("admin-token"), b_data.join("admin-token")).unwrap();
    let b = Plane::start(&tmp.path().join("b"), &flags);
    assert_eq!(b.token, a.token);
    let rt = rt();
    let ca = a.client();
    let cb = api::Client::new(&b.url, Some(a.token.clone())).unwrap();
    rt.block_on(async {
        let agent_token = make_pool(&ca, "p", 0).await;
        // The pool made through A is B's too.
        assert!(cb.list_pools().await.unwrap().iter().any(|p| p.name == "p"));
        // A token made on A works on B at once; its name is taken on B
        // too; deleted on B, it stops on A.
        let ci = api::TokenRequest {
            name: "ci".into(),
            admin: false,
            grants: vec!["pool:p:build".into()],
        };
        let made = ca.create_token(&ci).await.unwrap();
        let on_b = api::Client::new(&b.url, Some(made.token.clone())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let pools = loop {
            match on_b.list_pools().await {
                Ok(p) => break p,
                Err(e) => assert!(Instant::now() < deadline, "B never knew A's token: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(pools.len(), 1);
        let taken = cb.create_token(&ci).await.unwrap_err();
        assert_eq!(taken.status(), Some(409), "{taken}");
        cb.delete_token(&made.info.id).await.unwrap();
        let on_a = api::Client::new(&a.url, Some(made.token.clone())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while on_a.list_pools().await.is_ok() {
            assert!(Instant::now() < deadline, "A kept a token deleted on B");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let agent_b = api::Client::new(&b.url, Some(agent_token)).unwrap();

        // B's agent waits first; A gets the run.
        let waiting = tokio::spawn(async move {
            let started = Instant::now();
            let lease = agent_b
                .lease(&api::LeaseRequest {
                    agent: "b1".into(),
                    wait_secs: 60,
                })
                .await
                .unwrap();
            (agent_b, lease, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let dir = context(&tmp.path().join("ctx"), "FROM scratch\n");
        let d = upload(&ca, &dir).await;
        let run = ca
            .submit_run(&RunRequest {
                pool: "p".into(),
                build: spec(&d, "FROM scratch\n", &format!("{}/app:1", a.host())),
                secrets: BTreeMap::from([("npm".to_owned(), "sealed-on-a-opened-on-b".to_owned())]),
                timeout_secs: None,
            })
            .await
            .unwrap();
        let (agent_b, lease, waited) = waiting.await.unwrap();
        let lease = lease.expect("B's agent leases the run submitted through A");
        assert_eq!(lease.run.id, run.id);
        assert_eq!(
            lease.secrets.get("npm").map(String::as_str),
            Some("sealed-on-a-opened-on-b")
        );
        assert!(
            waited < Duration::from_secs(30),
            "B's long poll was not woken by A's submit (it ran to its deadline: {waited:?})"
        );

        // A follower on A, past the lines already there, sees what the
        // agent sends to B.
        let after = ca.logs(&run.id, 0, Duration::ZERO).await.unwrap().next;
        let follow = {
            let ca = ca.clone();
            let id = run.id.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let page = ca.logs(&id, after, Duration::from_secs(60)).await.unwrap();
                (page, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        agent_b
            .upload_logs(
                &run.id,
                &api::LogUpload {
                    token: lease.token.clone(),
                    chunks: vec![api::AgentChunk {
                        seq: 1,
                        data: "hello from b\n".into(),
                    }],
                },
            )
            .await
            .unwrap();
        let (page, waited) = follow.await.unwrap();
        let text: String = page.chunks.iter().map(|c| c.data.as_str()).collect();
        assert!(text.contains("hello from b"), "{text}");
        assert!(
            waited < Duration::from_secs(30),
            "A's follower waited {waited:?}"
        );

        // The run credential B granted opens A's registry, until the run ends.
        let pw = lease.registry.clone().unwrap().password;
        let http = reqwest::Client::new();
        let tags = format!("{}/v2/app/tags/list", a.url);
        let status = || {
            http.get(&tags)
                .basic_auth("slipway-run", Some(pw.clone()))
                .send()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while status().await.unwrap().status() == 401 {
            assert!(
                Instant::now() < deadline,
                "A never accepted B's run credential"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        agent_b
            .report(
                &run.id,
                &api::RunResult {
                    token: lease.token.clone(),
                    outcome: api::Outcome::Succeeded,
                    exit_code: Some(0),
                    image_digest: None,
                    message: None,
                    revision: None,
                    steps: Vec::new(),
                },
            )
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while status().await.unwrap().status() != 401 {
            assert!(
                Instant::now() < deadline,
                "A kept accepting a finished run's credential"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(ca.run(&run.id).await.unwrap().state, RunState::Succeeded);
    });
}

/// `kill -9` of one of two replicas mid-run: the run its agent held is
/// re-queued by the other replica's reaper and finishes on an agent of
/// that replica; the lines sent before the kill are kept, and the run ends
/// with a whole second attempt.
#[test]
fn killing_a_replica_mid_run_loses_no_run() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pg = Postgres::start(tmp.path());
    let key = tmp.path().join("secret.key");
    std::fs::write(&key, [3u8; 32]).unwrap();
    let url = pg.url();
    let key = key.to_str().unwrap().to_owned();
    // Blobs, contexts and repository metadata on a filesystem both reach
    // (as an NFS volume would be).
    let shared = format!("file://{}", tmp.path().join("shared").display());
    let flags = [
        "--database",
        url.as_str(),
        "--secret-key-file",
        key.as_str(),
        "--lease-ttl",
        "2s",
        "--blob-store",
        shared.as_str(),
    ];
    std::fs::create_dir_all(tmp.path().join("a")).unwrap();
    let mut a = Plane::start(&tmp.path().join("a"), &flags);
    std::fs::create_dir_all(tmp.path().join("b/data")).unwrap();
    std::fs::copy(
        a.data.join("admin-token"),
        tmp.path().join("b/data/admin-token"),
    )
    .unwrap();
    let mut b = Plane::start(&tmp.path().join("b"), &flags);
    let rt = rt();
    let cb = b.client();
    let token = rt.block_on(make_pool(&a.client(), "p", 2));
    // The base lives on B, the replica that stays.
    let base = b.import_busybox();
    a.start_agent("p", &token, "a0");
    let df = format!("FROM {base}\nRUN echo slow-step-start && sleep 4 && echo slow-step-done\n");
    let dir = context(&tmp.path().join("ctx"), &df);
    // Submitted through B: the registry it names is B, which A's agent
    // reaches with the run's credential too.
    let tag = format!("{}/survivor:1", b.host());
    let run = rt.block_on(async {
        let d = upload(&cb, &dir).await;
        submit(&cb, "p", spec(&d, &df, &tag)).await
    });
    rt.block_on(wait_log(&cb, &run.id, "slow-step-start"));
    b.start_agent("p", &token, "b0");
    if let Some(mut s) = a.server.take() {
        s.sigkill();
    }
    let done = rt.block_on(wait_state(&cb, &run.id, RunState::is_final, 120));
    assert_eq!(done.state, RunState::Succeeded, "{done:?}");
    assert_eq!(done.attempts.len(), 2, "{done:?}");
    assert_eq!(done.attempts[0].agent, "a0");
    assert_eq!(done.attempts[1].agent, "b0");
    let log: String = rt
        .block_on(full_log(&cb, &run.id))
        .into_iter()
        .map(|c| c.data)
        .collect();
    assert!(log.contains("attempt 1 started on agent a0"), "{log}");
    assert!(log.contains("attempt 2 started on agent b0"), "{log}");
    let said = |l: &str| log.lines().filter(|x| *x == l).count();
    assert_eq!(said("slow-step-start"), 2, "{log}");
    assert_eq!(said("slow-step-done"), 1, "{log}");
}

/// One layer cache per pool, whatever machine an agent runs on: a build on
/// agent a1, then the same build on a2, whose build data is empty
/// (another machine of the pool), reuses every step from the pool's cache
/// in the server's registry (no step runs) and pushes the same image
/// digest, without SOURCE_DATE_EPOCH (a cached step keeps its first
/// build's time, as in BuildKit); it does not wait on an export (the
/// cache is up to date). A changed build extends the cache; the
/// registry's gc then prunes the replaced cache manifest and keeps every
/// layer the cache still names: a third agent, empty too, reuses all of
/// the changed build's steps.
#[test]
fn a_second_agent_reuses_every_step_from_the_pool_cache() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut plane = Plane::start(tmp.path(), &[]);
    let rt = rt();
    let c = plane.client();
    let token = rt.block_on(make_pool(&c, "cached", 1));
    let base = plane.import_busybox();
    let df = format!(
        "FROM {base}\nCOPY hello.txt /hello.txt\n\
         RUN echo \"built $(cat /proc/sys/kernel/random/uuid)\" > /stamp\n\
         ENV GREETING=hi\nRUN cat /stamp /hello.txt > /both\nWORKDIR /app\nCMD [\"cat\", \"/both\"]\n"
    );
    let dir = context(&tmp.path().join("ctx"), &df);
    std::fs::write(dir.join("hello.txt"), "hello\n").unwrap();
    let tag = format!("{}/cached/app:1", plane.host());
    let build = |df: &str| {
        rt.block_on(async {
            let d = upload(&c, &dir).await;
            let mut s = spec(&d, df, &tag);
            s.no_cache = false;
            let run = submit(&c, "cached", s).await;
            let done = wait_state(&c, &run.id, RunState::is_final, 120).await;
            let log: String = full_log(&c, &run.id)
                .await
                .into_iter()
                .map(|c| c.data)
                .collect();
            assert_eq!(done.state, RunState::Succeeded, "{done:?}\n{log}");
            (done.image_digest.clone().unwrap(), log)
        })
    };
    let layer_steps = 4; // COPY, RUN, RUN, WORKDIR
    plane.start_agent("cached", &token, "a1");
    let (first, log1) = build(&df);
    assert_eq!(log1.matches(" DONE ").count(), 3, "{log1}");
    assert!(log1.contains("exported cache to"), "{log1}");
    plane.agents[0].sigkill();

    let a2 = tmp.path().join("agent-a2");
    assert!(!a2.exists(), "a2 starts with no build data");
    plane.start_agent("cached", &token, "a2");
    let (second, log2) = build(&df);
    assert_eq!(log2.matches(" CACHED").count(), layer_steps, "{log2}");
    assert!(!log2.contains(" DONE "), "a step ran again:\n{log2}");
    assert!(log2.contains("is up to date"), "{log2}");
    assert_eq!(second, first, "the same image from the pool cache");

    // A changed build: its new step joins the cache, beside the others.
    let df2 = format!("{df}RUN echo more > /more\n");
    let (_, log3) = build(&df2);
    assert_eq!(log3.matches(" CACHED").count(), layer_steps, "{log3}");
    assert!(log3.contains("exported cache to"), "{log3}");
    plane.agents[1].sigkill();

    // The first export's manifest is now replaced: gc prunes it.
    let mut gc = Command::new(SLIPWAY);
    gc.args(["registry", "gc", "--grace", "0s", "--data"])
        .arg(&plane.data)
        .args(&plane.backend_args);
    let report = ok(&mut gc);
    assert!(
        report.contains(", 1 replaced cache manifests pruned"),
        "{report}"
    );

    plane.start_agent("cached", &token, "a3");
    let (_, log4) = build(&df2);
    assert_eq!(log4.matches(" CACHED").count(), layer_steps + 1, "{log4}");
    assert!(!log4.contains(" DONE "), "a step ran again:\n{log4}");
}
