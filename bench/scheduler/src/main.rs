//! Scheduler benchmark. Starts `slipway server` on loopback, once on SQLite
//! and once as two replicas on one PostgreSQL (and one Azurite for blobs
//! and contexts, both from `testkit::services`), and on each:
//!
//! 1. 20 simulated agents (API clients in this process that lease, then
//!    report success at once) take 1,000 no-op runs that 4 submitters queue
//!    as fast as the server accepts them; prints enqueue→start latency
//!    p50/p99 (from just before the submit to the lease arriving) and runs/s
//!    (first submit to last result).
//! 2. With one real `slipway agent`, a build is run once to fill the cache,
//!    then submitted again: prints submit → first log line of the build and
//!    submit → success.
//!
//! With two replicas, submitters and agents alternate between them: half
//! the runs are submitted to the replica the leasing agent does not talk
//! to, and the cached build's agent is on A while it is submitted to B.
//!
//! No peer runs here: there is no other self-hosted build scheduler on this
//! machine to compare with, so it prints the issue's goals beside the
//! figures, and SQLite's beside PostgreSQL's.
//!
//! Usage (as root, for part 2's sandbox and PostgreSQL's `runuser`):
//! `cargo build --release -p cli -p bench-scheduler
//! && target/release/bench-scheduler --slipway target/release/slipway [--backend sqlite|postgres|both]`

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::{BuildSpec, ContextSource, RunRequest, RunState};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(log: &Path, needle: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = t.split(needle).nth(1) {
            return Ok(rest.to_owned());
        }
        if Instant::now() > deadline {
            bail!("never saw {needle:?} in {}:\n{t}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn spec(digest: &str, dockerfile: &str, tag: &str) -> BuildSpec {
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
        no_cache: false,
        no_push: false,
        task: None,
        registry: None,
    }
}

async fn upload(c: &api::Client, dir: &Path) -> Result<String> {
    let out = dir.with_extension("tar.zst");
    let packed = context::pack(dir, "Dockerfile", &out, &mut |_| {})?;
    let bytes = std::fs::read(&out)?;
    c.upload_context(&packed.digest.to_string(), bytes.len() as u64, bytes)
        .await?;
    Ok(packed.digest.to_string())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut slipway = PathBuf::from("target/release/slipway");
    let (mut runs, mut agents) = (1000usize, 20usize);
    let mut backend = "both".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--slipway" => slipway = args.next().context("--slipway PATH")?.into(),
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--agents" => agents = args.next().context("--agents N")?.parse()?,
            "--backend" => backend = args.next().context("--backend sqlite|postgres|both")?,
            other => bail!("unknown argument {other}"),
        }
    }
    if matches!(backend.as_str(), "sqlite" | "both") {
        let tmp = tempfile::tempdir()?;
        let a = Replica::start(&slipway, &tmp.path().join("a"), &[])?;
        bench(&slipway, tmp.path(), &[a], runs, agents, "SQLite").await?;
    }
    if matches!(backend.as_str(), "postgres" | "both") {
        for replicas in [1, 2] {
            let tmp = tempfile::tempdir()?;
            let services = tmp.path().join("services");
            std::fs::create_dir_all(&services)?;
            let shared =
                testkit::services::Running::start(testkit::services::Backend::PgAzurite, &services);
            let key = tmp.path().join("secret.key");
            std::fs::write(&key, (0..48u8).collect::<Vec<u8>>())?;
            let mut flags: Vec<String> = shared.database_args.clone();
            flags.extend(shared.blob_store_args.iter().cloned());
            flags.push("--secret-key-file".into());
            flags.push(key.to_string_lossy().into_owned());
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let mut servers = Vec::new();
            for name in ["a", "b"].iter().take(replicas) {
                let mut r = Replica::start(&slipway, &tmp.path().join(name), &flags)?;
                // One operator: every replica knows A's admin token from the database.
                if let Some(a) = servers.first() {
                    let a: &Replica = a;
                    r.token = a.token.clone();
                }
                servers.push(r);
            }
            let label = if replicas == 1 {
                "PostgreSQL, one replica".to_owned()
            } else {
                format!("PostgreSQL, {replicas} replicas")
            };
            bench(&slipway, tmp.path(), &servers, runs, agents, &label).await?;
            drop(servers);
            drop(shared);
        }
    }
    Ok(())
}

/// One `slipway server`.
struct Replica {
    _proc: Killed,
    url: String,
    token: String,
}

impl Replica {
    fn start(slipway: &Path, dir: &Path, flags: &[&str]) -> Result<Replica> {
        std::fs::create_dir_all(dir)?;
        let data = dir.join("data");
        let log = dir.join("server.log");
        let proc = Killed(
            Command::new(slipway)
                .args(["server", "--listen", "127.0.0.1:0", "--data"])
                .arg(&data)
                .args(flags)
                .env("SLIPWAY_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("starting {}", slipway.display()))?,
        );
        let url = wait_for(&log, "listening on ")?
            .split_whitespace()
            .next()
            .context("no URL")?
            .to_owned();
        let token = std::fs::read_to_string(data.join("admin-token"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(Replica {
            _proc: proc,
            url,
            token,
        })
    }
}

/// Parts 1 and 2 against `replicas` (clients alternate between them).
async fn bench(
    slipway: &Path,
    dir: &Path,
    replicas: &[Replica],
    runs: usize,
    agents: usize,
    label: &str,
) -> Result<()> {
    let token = replicas[0].token.clone();
    let clients: Vec<api::Client> = replicas
        .iter()
        .map(|r| api::Client::new(&r.url, Some(token.clone())))
        .collect::<Result<_, _>>()?;
    let c = clients[0].clone();
    let pick = |i: usize| &replicas[i % replicas.len()].url;

    // ---- part 1: queue latency and throughput ----
    c.create_pool(&api::PoolSpec {
        name: "bench".into(),
        tier: api::Tier::S1,
        count: agents as u32,
        network: None,
        local: false,
        allow_insecure: false,
    })
    .await?;
    let agent_token = c.pool_token("bench").await?.token;
    let ctx = dir.join("noop");
    std::fs::create_dir_all(&ctx)?;
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n")?;
    let digest = upload(&c, &ctx).await?;
    let submitted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let done = Arc::new(tokio::sync::Semaphore::new(0));
    let mut workers = Vec::new();
    for i in 0..agents {
        let a = api::Client::new(pick(i), Some(agent_token.clone()))?;
        let started = started.clone();
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let lease = match a
                    .lease(&api::LeaseRequest {
                        agent: format!("sim-{i}"),
                        wait_secs: 2,
                    })
                    .await
                {
                    Ok(Some(l)) => l,
                    Ok(None) => continue,
                    Err(e) => {
                        eprintln!("lease: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let got = Instant::now();
                started
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((lease.run.id.clone(), got));
                let r = api::RunResult {
                    token: lease.token,
                    outcome: api::Outcome::Succeeded,
                    exit_code: Some(0),
                    image_digest: None,
                    message: None,
                    revision: None,
                    steps: Vec::new(),
                };
                if let Err(e) = a.report(&lease.run.id, &r).await {
                    eprintln!("report: {e}");
                }
                done.add_permits(1);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let per = runs.div_ceil(4);
    let submitters: Vec<_> = (0..4)
        .map(|s| {
            // Submitters 0 and 2 on A, 1 and 3 on B (with two replicas).
            let c = clients[s % clients.len()].clone();
            let submitted = submitted.clone();
            let d = digest.clone();
            let tag = format!("{}/noop:1", c.registry_host());
            tokio::spawn(async move {
                for _ in 0..per {
                    let at = Instant::now();
                    let run = c
                        .submit_run(&RunRequest {
                            pool: "bench".into(),
                            build: spec(&d, "FROM scratch\n", &tag),
                            secrets: BTreeMap::new(),
                            timeout_secs: None,
                        })
                        .await?;
                    submitted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(run.id, at);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for s in submitters {
        s.await??;
    }
    let total = per * 4;
    let _all = done.acquire_many(total as u32).await?;
    let elapsed = t0.elapsed();
    for w in &workers {
        w.abort();
    }
    let sub = submitted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut lat: Vec<Duration> = started
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|(id, at)| sub.get(id).map(|s| at.saturating_duration_since(*s)))
        .collect();
    lat.sort();
    let rate = total as f64 / elapsed.as_secs_f64();
    println!("scheduler: {total} no-op runs, {agents} agents, {label}");
    println!(
        "  enqueue→start latency  p50 {:.1} ms  p99 {:.1} ms   (goal p99 < 50 ms)",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  throughput             {rate:.0} runs/s over {:.2} s   (goal ≥ 200 runs/s)",
        elapsed.as_secs_f64()
    );
    cached_build(slipway, dir, replicas, &clients).await
}

/// Part 2: submit → first log line of a fully cached build, on a real
/// agent of the first replica, submitted through the last.
async fn cached_build(
    slipway: &Path,
    dir: &Path,
    replicas: &[Replica],
    clients: &[api::Client],
) -> Result<()> {
    let c = clients[clients.len() - 1].clone();
    let token = replicas[0].token.clone();
    let url = replicas[0].url.clone();
    let host = clients[0].registry_host().to_owned();
    // ---- part 2: submit → first log line of a fully cached build ----
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        println!("cached build: skipped (no /bin/busybox; apt install busybox-static)");
        return Ok(());
    }
    let rootfs = dir.join("rootfs/bin");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::copy(busybox, rootfs.join("busybox"))?;
    for a in ["sh", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join(a))?;
    }
    let docker = dir.join("docker");
    std::fs::create_dir_all(&docker)?;
    let auth = {
        use std::io::Write;
        let mut p = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        p.stdin
            .take()
            .context("stdin")?
            .write_all(format!("admin:{token}").as_bytes())?;
        String::from_utf8(p.wait_with_output()?.stdout)?
    };
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )?;
    let base = format!("{host}/base/busybox:1");
    let st = Command::new(slipway)
        .args(["image", "import", "-t", &base])
        .arg(dir.join("rootfs"))
        .env("DOCKER_CONFIG", &docker)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("importing busybox failed");
    }
    clients[0]
        .create_pool(&api::PoolSpec {
            name: "cached".into(),
            tier: api::Tier::S1,
            count: 1,
            network: None,
            local: false,
            allow_insecure: false,
        })
        .await?;
    let t = c.pool_token("cached").await?.token;
    let alog = dir.join("agent.log");
    let _agent = Killed(
        Command::new(slipway)
            .args([
                "agent",
                "--server",
                &url,
                "--pool",
                "cached",
                "--agent-id",
                "real",
                "--work-dir",
            ])
            .arg(dir.join("agent"))
            .env("SLIPWAY_TOKEN", &t)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&alog)?)
            .spawn()?,
    );
    let df = format!("FROM {base}\nRUN echo warm > /warm.txt\nCMD [\"cat\", \"/warm.txt\"]\n");
    let cdir = dir.join("cached");
    std::fs::create_dir_all(&cdir)?;
    std::fs::write(cdir.join("Dockerfile"), &df)?;
    let d = upload(&c, &cdir).await?;
    let mut samples = Vec::new();
    for round in 0..6 {
        let at = Instant::now();
        let run = c
            .submit_run(&RunRequest {
                pool: "cached".into(),
                build: spec(&d, &df, &format!("{}/cached:1", c.registry_host())),
                secrets: BTreeMap::new(),
                timeout_secs: None,
            })
            .await?;
        let mut first_line = None;
        let mut after = 0;
        let state = loop {
            let page = c.logs(&run.id, after, Duration::from_secs(10)).await?;
            if first_line.is_none() && page.chunks.iter().any(|ch| ch.data.contains("####")) {
                first_line = Some(at.elapsed());
            }
            after = page.next;
            if page.done {
                break page.state;
            }
        };
        let total = at.elapsed();
        if state != RunState::Succeeded {
            bail!(
                "cached build run {} ended {state}; agent log: {}",
                run.id,
                alog.display()
            );
        }
        // Round 0 fills the cache; the rest are fully cached.
        if round > 0 {
            samples.push((first_line.unwrap_or(total), total));
        }
    }
    samples.sort();
    let (first, total) = samples[samples.len() / 2];
    println!(
        "cached build (median of {} runs after a warm-up, real agent):",
        samples.len()
    );
    println!(
        "  submit → first build log line  {:.0} ms   (goal < 300 ms)",
        first.as_secs_f64() * 1e3
    );
    println!(
        "  submit → succeeded             {:.0} ms",
        total.as_secs_f64() * 1e3
    );
    Ok(())
}
