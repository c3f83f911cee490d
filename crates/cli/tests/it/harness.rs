//! Starting `slipway server` on a free loopback port, finding peer tools,
//! and building a multi-layer test image with umoci.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data: PathBuf,
    pub token: String,
}

impl Server {
    /// Start a server on a port the kernel picks, over `data` (created if
    /// needed); its address is read from the line the server logs.
    pub fn start(data: &Path) -> Server {
        Self::start_with(data, &[], &[])
    }

    /// [`Server::start`] with more flags and environment variables.
    pub fn start_with(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let log_path = data.with_extension(format!("{}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // Owned by a Server from here on, so a failed start still kills it.
        let mut srv = Server {
            child,
            addr: String::new(),
            data: data.to_owned(),
            token: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        srv.addr = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "slipway server did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        srv.token = std::fs::read_to_string(data.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        srv
    }

    pub fn creds(&self) -> String {
        format!("ci:{}", self.token)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A peer tool: from `SLIPWAY_PEERS_BIN` (Go peers built by scripts/test.sh)
/// or `PATH`. Missing tools fail loudly.
pub fn tool(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SLIPWAY_PEERS_BIN") {
        let p = Path::new(&dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    let home_cache =
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/slipway-test/bin").join(name));
    if let Some(p) = home_cache.filter(|p| p.is_file()) {
        return p;
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("peer tool {name:?} is not installed: run ./scripts/test.sh, which installs it");
}

/// Run a command; return its output, whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?}\n-> {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a command that must succeed; return its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// An OCI layout at `dir` holding `image:v1`, three layers (busybox, a
/// directory of files, a file that the last layer deletes), built with umoci.
pub fn make_image(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let image = format!("{}:v1", layout.display());
    let umoci = tool("umoci");
    ok(Command::new(&umoci).args(["init", "--layout"]).arg(&layout));
    ok(Command::new(&umoci).args(["new", "--image", &image]));
    ok(Command::new(&umoci).args(["insert", "--image", &image, "/bin/busybox", "/bin/busybox"]));
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    for i in 0..5 {
        std::fs::write(
            files.join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(100),
        )
        .unwrap();
    }
    ok(Command::new(&umoci)
        .args(["insert", "--image", &image])
        .arg(&files)
        .arg("/srv/files"));
    ok(Command::new(&umoci).args([
        "insert",
        "--image",
        &image,
        "--whiteout",
        "/srv/files/f0.txt",
    ]));
    ok(Command::new(&umoci).args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/busybox",
        "--config.cmd",
        "sh",
    ]));
    layout
}
