//! Registry throughput benchmark: the same push/pull workload against
//! `slipway server` with its blobs on the filesystem, in Azure Blob
//! Storage (Azurite) and in S3 (moto), and Debian's `docker-registry`
//! (CNCF Distribution), all started here on loopback, in the same run.
//! Prints MB/s for each, the ratio to Distribution, and each server's peak
//! RSS. Azurite (Node.js) and moto (Python) are emulators: their figures
//! say what Slipway costs on top of a store, not what Azure or S3 give.
//!
//! Run: `cargo run --release -p bench-registry -- --slipway target/release/slipway
//! [--backends files,azurite,s3]` (Azurite and moto as `scripts/test.sh`
//! installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::StreamExt;

struct Args {
    slipway: PathBuf,
    distribution: PathBuf,
    clients: usize,
    backends: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        slipway: PathBuf::from("target/release/slipway"),
        distribution: PathBuf::from("/usr/bin/docker-registry"),
        clients: 8,
        backends: vec!["files".into(), "azurite".into(), "s3".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--slipway" => args.slipway = val()?.into(),
            "--distribution" => args.distribution = val()?.into(),
            "--clients" => args.clients = val()?.parse()?,
            "--backends" => {
                args.backends = val()?.split(',').map(str::to_owned).collect();
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench-registry [--slipway PATH] [--distribution PATH] [--clients N] [--backends files,azurite,s3]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// A registry under test: its process, base URL and credentials.
struct Target {
    name: String,
    child: Child,
    base: String,
    auth: Option<(String, String)>,
    /// The blob store's emulator, stopped with the server.
    _store: Option<testkit::services::Service>,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Target {
    /// CPU time the server process has used so far, in seconds (all threads).
    fn cpu_seconds(&self) -> f64 {
        let mut total = 0u64;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) {
            for t in tasks.flatten() {
                let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
                total += stat
                    .split_whitespace()
                    .next()
                    .and_then(|ns| ns.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total as f64 / 1e9
    }

    /// Peak resident set size of the server process so far, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

fn wait_for_line(log: &Path, needle: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split(needle).nth(1) {
            return Ok(rest.split_whitespace().next().unwrap_or("").to_owned());
        }
        if Instant::now() > deadline {
            bail!("server did not start; log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `slipway server` with its blobs in `backend`: `files`, `azurite` or `s3`.
fn start_slipway(bin: &Path, dir: &Path, backend: &str) -> Result<Target> {
    let data = dir.join(format!("slipway-{backend}"));
    let log = dir.join(format!("slipway-{backend}.log"));
    let (store, args) = match backend {
        "files" => (None, Vec::new()),
        "azurite" => {
            let az_dir = dir.join("azurite");
            std::fs::create_dir_all(&az_dir)?;
            let az = testkit::services::azurite(&az_dir);
            testkit::services::create_container(az.port, "bench");
            let args = testkit::services::azure_args(az.port, "bench");
            (Some(az), args)
        }
        "s3" => {
            let s3 = testkit::services::moto();
            testkit::services::create_bucket(s3.port, "bench");
            let args = testkit::services::s3_args(s3.port, "bench");
            (Some(s3), args)
        }
        other => bail!("--backends: {other} is not files, azurite or s3"),
    };
    let child = Command::new(bin)
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .args(&args)
        .env("SLIPWAY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let addr = wait_for_line(&log, "listening on http://")?;
    let token = std::fs::read_to_string(data.join("admin-token"))?
        .trim()
        .to_owned();
    Ok(Target {
        name: format!("slipway/{backend}"),
        child,
        base: format!("http://{addr}"),
        auth: Some(("bench".into(), token)),
        _store: store,
    })
}

fn start_distribution(bin: &Path, dir: &Path) -> Result<Target> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("distribution.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("distribution").display()
        ),
    )?;
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("distribution.log"))?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("docker-registry did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Target {
        name: "distribution".into(),
        child,
        base: format!("http://127.0.0.1:{port}"),
        auth: None,
        _store: None,
    })
}

struct Blob {
    digest: String,
    bytes: Bytes,
}

/// `count` distinct blobs of `size` bytes (pseudo-random, so compression or
/// dedup cannot flatter anyone).
fn make_blobs(count: usize, size: usize, seed: u64) -> Vec<Blob> {
    let mut x = seed | 1;
    let base: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    (0..count)
        .map(|i| {
            let mut b = base.clone();
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let digest = oci::Digest::sha256(&b).to_string();
            Blob {
                digest,
                bytes: Bytes::from(b),
            }
        })
        .collect()
}

fn req(t: &Target, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match &t.auth {
        Some((u, p)) => rb.basic_auth(u, Some(p)),
        None => rb,
    }
}

async fn push_one(http: &reqwest::Client, t: &Target, repo: &str, blob: &Blob) -> Result<()> {
    let r = req(t, http.post(format!("{}/v2/{repo}/blobs/uploads/", t.base)))
        .send()
        .await?;
    if r.status() != 202 {
        bail!("{}: POST upload: {}", t.name, r.status());
    }
    let loc = r
        .headers()
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_owned();
    let url = if loc.starts_with('/') {
        format!("{}{loc}", t.base)
    } else {
        loc
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = req(t, http.put(format!("{url}{sep}digest={}", blob.digest)))
        .header("content-type", "application/octet-stream")
        .body(blob.bytes.clone())
        .send()
        .await?;
    if r.status() != 201 {
        bail!("{}: PUT upload: {}", t.name, r.status());
    }
    Ok(())
}

async fn pull_one(http: &reqwest::Client, t: &Target, repo: &str, blob: &Blob) -> Result<()> {
    let r = req(
        t,
        http.get(format!("{}/v2/{repo}/blobs/{}", t.base, blob.digest)),
    )
    .send()
    .await?;
    if r.status() != 200 {
        bail!("{}: GET blob: {}", t.name, r.status());
    }
    let mut n = 0usize;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        n += chunk?.len();
    }
    if n != blob.bytes.len() {
        bail!("{}: short read {n} of {}", t.name, blob.bytes.len());
    }
    Ok(())
}

/// Run `op` over every blob with `clients` concurrent workers; returns MB/s
/// and the server's CPU seconds per GB moved.
async fn phase(
    t: &Arc<Target>,
    blobs: &Arc<Vec<Blob>>,
    clients: usize,
    repo: &str,
    push: bool,
) -> Result<(f64, f64)> {
    let cpu0 = t.cpu_seconds();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (t, blobs, next, repo) = (t.clone(), blobs.clone(), next.clone(), repo.to_owned());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().build()?;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(b) = blobs.get(i) else { break };
                if push {
                    push_one(&http, &t, &repo, b).await?;
                } else {
                    pull_one(&http, &t, &repo, b).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes: usize = blobs.iter().map(|b| b.bytes.len()).sum();
    let cpu_per_gb = (t.cpu_seconds() - cpu0) / (bytes as f64 / 1e9);
    Ok((bytes as f64 / 1e6 / secs, cpu_per_gb))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = std::env::temp_dir().join(format!("slipway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let workloads = [
        ("16 x 64 MiB", Arc::new(make_blobs(16, 64 << 20, 0x5eed))),
        (
            "2000 x 16 KiB",
            Arc::new(make_blobs(2000, 16 << 10, 0xbeef)),
        ),
    ];
    let mut targets = Vec::new();
    for b in &args.backends {
        targets.push(Arc::new(start_slipway(&args.slipway, &dir, b)?));
    }
    targets.push(Arc::new(start_distribution(&args.distribution, &dir)?));
    println!(
        "{:<15} {:<17} {:>10} {:>10} {:>14} {:>14}",
        "workload", "server", "push MB/s", "pull MB/s", "push cpu s/GB", "pull cpu s/GB"
    );
    let mut results = Vec::new();
    for (wi, (label, blobs)) in workloads.iter().enumerate() {
        for t in &targets {
            let repo = format!("bench/w{wi}");
            let (push, push_cpu) = phase(t, blobs, args.clients, &repo, true).await?;
            let (pull, pull_cpu) = phase(t, blobs, args.clients, &repo, false).await?;
            println!(
                "{label:<15} {:<17} {push:>10.1} {pull:>10.1} {push_cpu:>14.2} {pull_cpu:>14.2}",
                t.name
            );
            results.push((label, t.name.clone(), push, pull));
        }
    }
    println!();
    // Each workload's rows end with Distribution's: every other row over it.
    for rows in results.chunks(targets.len()) {
        let Some((_, _, dp, dl)) = rows.last() else {
            continue;
        };
        for (label, name, sp, sl) in &rows[..rows.len() - 1] {
            println!(
                "{label:<15} {name}/distribution: push {:.2}x, pull {:.2}x",
                sp / dp,
                sl / dl
            );
        }
    }
    for t in &targets {
        println!("{} peak RSS: {:.1} MiB", t.name, t.peak_rss_mib());
    }
    drop(targets);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
