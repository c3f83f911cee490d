//! A private network made of network namespaces, for the tests of issue 12
//! (private dependencies across real network boundaries), and the private
//! services that live in it.
//!
//! ```text
//!   front segment 10.201.0.0/24 (bridge br0 in the hub namespace)
//!     srv .1 (slipway server)   ci .2 (the CI job)
//!     agent .3 (the private pool's agent)   outside .4 (another pool's agent)
//!   vnet segment 10.202.0.0/24 (a veth pair)
//!     agent .1   svc .2 (internal registry, Azurite, git servers)
//! ```
//!
//! No routing between the segments (forwarding is off in every new
//! namespace) and no iptables: `ci` and `outside` have no route to vnet, so
//! a connection to a private service fails at once. Every veth is created
//! directly inside its namespaces, so the host's own namespace never sees
//! one; addresses exist only inside the namespaces. Names carry the test
//! process's pid and a counter, so parallel runs do not collide. Dropping a
//! [`Topology`] kills every process left in its namespaces and deletes them
//! (which deletes their veths and the bridge), also when the test panics.
//!
//! The services are real components: Debian's `docker-registry` over TLS
//! (a CA made here with `openssl`) with htpasswd (bcrypt) auth, Azurite from
//! npm (seeded through the Azure SDK for Python), `git http-backend`
//! behind a small HTTP front that checks Basic auth, and Debian's OpenSSH
//! server (`sshd`, key auth only) serving a bare repository over SSH.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::harness::tool;

/// The server's address (front segment).
pub const SRV_ADDR: &str = "10.201.0.1";
/// The CI job's address (front segment).
pub const CI_ADDR: &str = "10.201.0.2";
/// The private pool's agent on the front segment.
pub const AGENT_ADDR: &str = "10.201.0.3";
/// The agent of another pool, outside vnet.
pub const OUTSIDE_ADDR: &str = "10.201.0.4";
/// The private pool's agent on vnet.
pub const AGENT_VNET_ADDR: &str = "10.202.0.1";
/// The private services, on vnet only.
pub const SVC_ADDR: &str = "10.202.0.2";

pub const REGISTRY_PORT: u16 = 5443;
pub const AZURITE_PORT: u16 = 10000;
pub const GIT_PORT: u16 = 8080;
/// sshd's port: not 22, so the port travels through every layer.
pub const SSH_PORT: u16 = 2222;

/// The namespaces of a [`Topology`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ns {
    /// Holds the front segment's bridge; no addresses.
    Hub,
    Srv,
    Ci,
    Agent,
    Outside,
    Svc,
}

impl Ns {
    pub const ALL: [Ns; 6] = [Ns::Hub, Ns::Srv, Ns::Ci, Ns::Agent, Ns::Outside, Ns::Svc];

    fn role(self) -> &'static str {
        match self {
            Ns::Hub => "hub",
            Ns::Srv => "srv",
            Ns::Ci => "ci",
            Ns::Agent => "agent",
            Ns::Outside => "outside",
            Ns::Svc => "svc",
        }
    }
}

/// Root, and every tool the topology and its services use. Not root:
/// skipped, except under CI, where it fails (as control.rs's `need_root`).
/// A missing tool always fails.
pub fn need_root_and_tools() -> bool {
    if !testkit::root_or_skip("this network-namespace test") {
        return false;
    }
    for t in [
        "ip",
        "openssl",
        "htpasswd",
        "docker-registry",
        "git",
        "python3",
        "curl",
        "skopeo",
        "umoci",
        "busybox",
        "zstd",
        "node",
        "sshd",
        "ssh",
        "ssh-keygen",
        "ssh-keyscan",
    ] {
        tool(t);
    }
    azurite_bin();
    venv_python();
    true
}

pub use testkit::services::{azurite_bin, venv_python};

/// Random bytes as hex (from the kernel).
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    hex::encode(b)
}

/// Run `cmd` with `input` on its stdin; kill it and panic after `limit`.
/// The output is returned whatever the exit status, and echoed to stderr.
pub fn run_for(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Output {
    let out_file = tempfile::tempfile().unwrap();
    let err_file = tempfile::tempfile().unwrap();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(out_file.try_clone().unwrap())
        .stderr(err_file.try_clone().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if let Some(bytes) = input {
        let mut stdin = child.stdin.take().unwrap();
        // Small inputs: the pipe holds them, no writer thread needed.
        stdin.write_all(bytes).unwrap();
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = read_all(&out_file) + &read_all(&err_file);
            panic!("{cmd:?} did not finish within {limit:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Output {
        status,
        stdout: read_all(&out_file).into_bytes(),
        stderr: read_all(&err_file).into_bytes(),
    };
    eprintln!(
        "$ {cmd:?}\n-> {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_all(f: &std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut f = f.try_clone().unwrap();
    f.rewind().unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    String::from_utf8_lossy(&v).into_owned()
}

/// [`run_for`] that must succeed; returns stdout.
pub fn ok_for(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> String {
    let out = run_for(cmd, input, limit);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A long-running process inside a namespace, its stdout and stderr in a
/// file; SIGTERM then SIGKILL on drop.
pub struct NsProc {
    pub child: Child,
    pub log: PathBuf,
    pub what: String,
}

impl NsProc {
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for `needle` in the log; returns what follows it. Panics with
    /// the log if the process exits first or `limit` passes.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let t = self.text();
            if let Some(rest) = t.split(needle).nth(1) {
                return rest.to_owned();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{} exited ({st}) before {needle:?}:\n{t}", self.what);
            }
            assert!(
                Instant::now() < deadline,
                "{}: never saw {needle:?} in:\n{t}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the log if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited ({st}):\n{}", self.what, self.text());
        }
    }

    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NsProc {
    fn drop(&mut self) {
        self.stop();
    }
}

static TOPOLOGIES: AtomicU32 = AtomicU32::new(0);

/// The namespaces, veths and bridge of the private network (see the module
/// doc). Everything is removed on drop.
pub struct Topology {
    prefix: String,
    /// Namespaces created so far (a failed setup still removes them).
    made: Vec<String>,
}

impl Topology {
    pub fn new() -> Topology {
        let n = TOPOLOGIES.fetch_add(1, Ordering::SeqCst);
        let mut t = Topology {
            prefix: format!("slipway-{}-{n}", std::process::id()),
            made: Vec::new(),
        };
        for ns in Ns::ALL {
            let name = t.name(ns);
            // A namespace left by a killed process whose pid we now have.
            if Path::new("/run/netns").join(&name).exists() {
                kill_all_in(&name);
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
            ip(&["netns", "add", &name]);
            t.made.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"]);
        }
        let hub = t.name(Ns::Hub);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for (ns, addr) in [
            (Ns::Srv, SRV_ADDR),
            (Ns::Ci, CI_ADDR),
            (Ns::Agent, AGENT_ADDR),
            (Ns::Outside, OUTSIDE_ADDR),
        ] {
            let port = format!("p-{}", ns.role());
            let member = t.name(ns);
            ip(&[
                "link", "add", &port, "netns", &hub, "type", "veth", "peer", "name", "front",
                "netns", &member,
            ]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &member,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "front",
            ]);
            ip(&["-n", &member, "link", "set", "front", "up"]);
        }
        let (agent, svc) = (t.name(Ns::Agent), t.name(Ns::Svc));
        ip(&[
            "link", "add", "vnet", "netns", &agent, "type", "veth", "peer", "name", "vnet",
            "netns", &svc,
        ]);
        for (ns, addr) in [(&agent, AGENT_VNET_ADDR), (&svc, SVC_ADDR)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "vnet",
            ]);
            ip(&["-n", ns, "link", "set", "vnet", "up"]);
        }
        t
    }

    /// The namespace's name (`ip netns list`).
    pub fn name(&self, ns: Ns) -> String {
        format!("{}-{}", self.prefix, ns.role())
    }

    /// `program` run inside `ns` (`ip netns exec NAME program`); add
    /// arguments, environment and directory as to any Command.
    pub fn command(&self, ns: Ns, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name(ns)]).arg(program);
        c
    }

    /// Start `cmd` inside `ns` as a long-running child (see [`NsProc`]).
    pub fn spawn(&self, ns: Ns, cmd: &Command, log: PathBuf) -> NsProc {
        spawn_in(&self.name(ns), cmd, log, None)
    }

    /// Can a TCP connection be made from `ns` to `host:port` (within 3 s)?
    /// Err holds why not (e.g. "Network is unreachable").
    pub fn connect(&self, ns: Ns, host: &str, port: u16) -> Result<(), String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name(ns),
                "timeout",
                "3",
                "bash",
                "-c",
            ])
            .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Wait until `host:port` accepts connections from `ns`; panics with
    /// `proc`'s log after `limit`.
    pub fn wait_port(&self, ns: Ns, host: &str, port: u16, proc: &mut NsProc, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let why = match self.connect(ns, host, port) {
                Ok(()) => return,
                Err(e) => e,
            };
            proc.assert_alive();
            assert!(
                Instant::now() < deadline,
                "{} never listened on {host}:{port} ({why}):\n{}",
                proc.what,
                proc.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in self.made.iter().rev() {
            kill_all_in(name);
            let st = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
            if !matches!(st, Ok(s) if s.success()) {
                eprintln!("warning: could not delete network namespace {name}");
            }
        }
    }
}

/// SIGKILL every process still in namespace `name` (they can only be ours:
/// the name is this test process's). Waits until none is left (5 s).
fn kill_all_in(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args(["netns", "pids", name])
            .stderr(Stdio::null())
            .output();
        let pids: Vec<i32> = out
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for p in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(p) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cmd` (program, arguments, environment, directory) run inside the
/// namespace `ns_name`.
fn moved_into(ns_name: &str, cmd: &Command) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns_name]).arg(cmd.get_program());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

fn spawn_in(ns_name: &str, cmd: &Command, log: PathBuf, input: Option<&[u8]>) -> NsProc {
    let mut c = moved_into(ns_name, cmd);
    let f = std::fs::File::create(&log).unwrap();
    let mut child = c
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {c:?}: {e}"));
    if let Some(bytes) = input {
        // `ip netns exec` execs the program: the pipe is the program's.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(bytes).unwrap();
    }
    NsProc {
        child,
        log,
        what: format!("{:?} in {ns_name}", cmd.get_program()),
    }
}

/// A certificate authority made with `openssl`, and server certificates
/// it signs.
pub struct Ca {
    dir: PathBuf,
    /// The CA's certificate (PEM): what `--ca-cert` and `curl --cacert` take.
    pub cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Slipway test private CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        Ca {
            dir: dir.to_owned(),
            cert,
            key,
        }
    }

    /// A server certificate and key for `ip` (in the SAN), signed by the CA.
    pub fn issue(&self, name: &str, ip: &str) -> (PathBuf, PathBuf) {
        let (cert, key, csr, ext) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
            self.dir.join(format!("{name}.csr")),
            self.dir.join(format!("{name}.ext")),
        );
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={ip}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
        ]);
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            self.cert.to_str().unwrap(),
            "-CAkey",
            self.key.to_str().unwrap(),
            "-CAcreateserial",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        openssl(&[
            "verify",
            "-CAfile",
            self.cert.to_str().unwrap(),
            cert.to_str().unwrap(),
        ]);
        (cert, key)
    }

    /// A directory holding only the CA certificate, as skopeo's
    /// `--cert-dir` wants it.
    pub fn cert_dir(&self) -> PathBuf {
        let d = self.dir.join("certs.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&self.cert, d.join("ca.crt")).unwrap();
        d
    }
}

fn openssl(args: &[&str]) {
    ok_for(
        Command::new(tool("openssl")).args(args),
        None,
        Duration::from_secs(60),
    );
}

/// Debian's `docker-registry` (distribution 2.x) in `svc`, over TLS with a
/// certificate of the test CA, htpasswd (bcrypt) auth.
pub struct InternalRegistry {
    /// `10.202.0.2:5443`, as image references name it.
    pub host: String,
    pub user: String,
    pub password: String,
    /// For skopeo's `--cert-dir`.
    pub cert_dir: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    ns: String,
    starts: u32,
    pub proc: Option<NsProc>,
}

impl InternalRegistry {
    pub fn start(topo: &Topology, dir: &Path, ca: &Ca) -> InternalRegistry {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = ca.issue("registry", SVC_ADDR);
        let user = "builder".to_owned();
        let password = format!("regpw-{}", random_hex(12));
        let htpasswd = dir.join("htpasswd");
        // -i: the password from stdin, never in argv.
        ok_for(
            Command::new(tool("htpasswd"))
                .args(["-i", "-B", "-c"])
                .arg(&htpasswd)
                .arg(&user),
            Some(format!("{password}\n").as_bytes()),
            Duration::from_secs(30),
        );
        let data = dir.join("storage");
        std::fs::create_dir_all(&data).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {SVC_ADDR}:{REGISTRY_PORT}\n  secret: {secret}\n  \
                 tls:\n    certificate: {cert}\n    key: {key}\n\
                 auth:\n  htpasswd:\n    realm: internal\n    path: {htpasswd}\n",
                data = data.display(),
                secret = random_hex(16),
                cert = cert.display(),
                key = key.display(),
                htpasswd = htpasswd.display(),
            ),
        )
        .unwrap();
        let mut r = InternalRegistry {
            host: format!("{SVC_ADDR}:{REGISTRY_PORT}"),
            user,
            password,
            cert_dir: ca.cert_dir(),
            dir: dir.to_owned(),
            config,
            ns: topo.name(Ns::Svc),
            starts: 0,
            proc: None,
        };
        r.restart(topo);
        r
    }

    /// Start it (again, after [`InternalRegistry::stop`]) on the same
    /// address and storage; returns when it accepts connections.
    pub fn restart(&mut self, topo: &Topology) {
        self.starts += 1;
        let mut cmd = Command::new(tool("docker-registry"));
        cmd.arg("serve").arg(&self.config);
        let mut p = spawn_in(
            &self.ns,
            &cmd,
            self.dir.join(format!("registry-{}.log", self.starts)),
            None,
        );
        topo.wait_port(
            Ns::Svc,
            SVC_ADDR,
            REGISTRY_PORT,
            &mut p,
            Duration::from_secs(30),
        );
        self.proc = Some(p);
    }

    pub fn stop(&mut self) {
        self.proc.take();
    }

    /// `user:password`, as skopeo's `--creds` takes it.
    pub fn creds(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }

    /// Push the OCI layout image `layout:tag` as `<host>/<name>`, from `ns`
    /// (skopeo, verifying TLS with the test CA); returns the reference.
    pub fn push_layout(
        &self,
        topo: &Topology,
        ns: Ns,
        layout: &Path,
        tag: &str,
        name: &str,
    ) -> String {
        let reference = format!("{}/{name}", self.host);
        ok_for(
            topo.command(ns, tool("skopeo"))
                .args(["copy", "--dest-creds", &self.creds(), "--dest-cert-dir"])
                .arg(&self.cert_dir)
                .arg(format!("oci:{}:{tag}", layout.display()))
                .arg(format!("docker://{reference}")),
            None,
            Duration::from_secs(120),
        );
        reference
    }
}

/// An OCI layout at `dir/layout` holding `busybox:1`: a busybox root
/// filesystem (busybox and its applets sh, cat, wget, …) with `sh` as the
/// command, built with umoci.
pub fn busybox_layout(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    crate::control::busybox_rootfs(&rootfs);
    for a in ["wget", "sha256sum", "head"] {
        let l = rootfs.join("bin").join(a);
        if !l.exists() {
            std::os::unix::fs::symlink("busybox", l).unwrap();
        }
    }
    let layout = dir.join("layout");
    let image = format!("{}:busybox", layout.display());
    let umoci = tool("umoci");
    let t = Duration::from_secs(60);
    ok_for(
        Command::new(&umoci).args(["init", "--layout"]).arg(&layout),
        None,
        t,
    );
    ok_for(
        Command::new(&umoci).args(["new", "--image", &image]),
        None,
        t,
    );
    ok_for(
        Command::new(&umoci)
            .args(["insert", "--image", &image])
            .arg(&rootfs)
            .arg("/"),
        None,
        t,
    );
    ok_for(
        Command::new(&umoci).args(["config", "--image", &image, "--config.cmd", "sh"]),
        None,
        t,
    );
    layout
}

/// The seeding client: the Azure SDK for Python, driven by argv; the
/// account key comes in the environment.
const AZURE_PY: &str = r#"
import datetime, os, sys
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

endpoint, account, cmd = sys.argv[1], sys.argv[2], sys.argv[3]
key = os.environ["AZURE_ACCOUNT_KEY"]
if cmd == "put":
    container, blob, path = sys.argv[4], sys.argv[5], sys.argv[6]
    service = BlobServiceClient(account_url=endpoint, credential={"account_name": account, "account_key": key})
    c = service.get_container_client(container)
    if not c.exists():
        c.create_container()
    with open(path, "rb") as f:
        c.upload_blob(blob, f, overwrite=True)
    print(c.get_blob_client(blob).get_blob_properties().size)
elif cmd == "sas":
    container, blob = sys.argv[4], sys.argv[5]
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
    print(generate_blob_sas(account_name=account, container_name=container, blob_name=blob,
                            account_key=key, permission=BlobSasPermissions(read=True), expiry=expiry))
else:
    sys.exit("unknown command " + cmd)
"#;

/// Azurite's blob service in `svc` (plain HTTP, path-style URLs), with a
/// storage account of the test's own (random key).
pub struct Azurite {
    pub account: String,
    /// The account key (base64): only the test's Python client holds it.
    pub key: String,
    dir: PathBuf,
    script: PathBuf,
    ns: String,
    starts: u32,
    pub proc: Option<NsProc>,
}

impl Azurite {
    pub fn start(topo: &Topology, dir: &Path) -> Azurite {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let script = dir.join("blob.py");
        std::fs::write(&script, AZURE_PY).unwrap();
        let key = {
            let out = ok_for(
                Command::new(tool("openssl")).args(["rand", "-base64", "64"]),
                None,
                Duration::from_secs(10),
            );
            out.split_whitespace().collect::<String>()
        };
        let mut a = Azurite {
            account: "privstore".into(),
            key,
            dir: dir.to_owned(),
            script,
            ns: topo.name(Ns::Svc),
            starts: 0,
            proc: None,
        };
        a.restart(topo);
        a
    }

    /// Start it (again) over the same data; returns when it listens.
    pub fn restart(&mut self, topo: &Topology) {
        self.starts += 1;
        let mut cmd = Command::new(tool("node"));
        cmd.arg(azurite_bin())
            .args([
                "--blobHost",
                SVC_ADDR,
                "--blobPort",
                &AZURITE_PORT.to_string(),
            ])
            .arg("--location")
            .arg(self.dir.join("data"))
            // No telemetry (there is no way out of the namespace anyway),
            // the account from the first path segment (an IP host).
            .args([
                "--disableTelemetry",
                "--disableProductStyleUrl",
                "--skipApiVersionCheck",
            ])
            .env("AZURITE_ACCOUNTS", format!("{}:{}", self.account, self.key));
        let mut p = spawn_in(
            &self.ns,
            &cmd,
            self.dir.join(format!("azurite-{}.log", self.starts)),
            None,
        );
        topo.wait_port(
            Ns::Svc,
            SVC_ADDR,
            AZURITE_PORT,
            &mut p,
            Duration::from_secs(60),
        );
        self.proc = Some(p);
    }

    pub fn stop(&mut self) {
        self.proc.take();
    }

    /// `http://10.202.0.2:10000/<account>`.
    pub fn endpoint(&self) -> String {
        format!("http://{SVC_ADDR}:{AZURITE_PORT}/{}", self.account)
    }

    fn python(&self, topo: &Topology, args: &[&str]) -> String {
        ok_for(
            topo.command(Ns::Svc, venv_python())
                .arg(&self.script)
                .arg(self.endpoint())
                .arg(&self.account)
                .args(args)
                .env("AZURE_ACCOUNT_KEY", &self.key),
            None,
            Duration::from_secs(60),
        )
        .trim()
        .to_owned()
    }

    /// Upload `bytes` as `container/blob` (the container made if missing).
    pub fn put(&self, topo: &Topology, container: &str, blob: &str, bytes: &[u8]) {
        let f = self.dir.join(format!("upload-{}", random_hex(4)));
        std::fs::write(&f, bytes).unwrap();
        let size = self.python(topo, &["put", container, blob, f.to_str().unwrap()]);
        assert_eq!(
            size,
            bytes.len().to_string(),
            "Azurite stored {container}/{blob}"
        );
    }

    /// A read-only SAS token for one blob (query string, no `?`), signed
    /// with the account key, valid two hours.
    pub fn sas(&self, topo: &Topology, container: &str, blob: &str) -> String {
        self.python(topo, &["sas", container, blob])
    }

    /// The blob's URL with a read SAS.
    pub fn sas_url(&self, topo: &Topology, container: &str, blob: &str) -> String {
        format!(
            "{}?{}",
            self.blob_url(container, blob),
            self.sas(topo, container, blob)
        )
    }

    pub fn blob_url(&self, container: &str, blob: &str) -> String {
        format!("{}/{container}/{blob}", self.endpoint())
    }
}

/// The git server's HTTP front: Basic auth, then `git http-backend` as CGI.
const GIT_HTTP_PY: &str = r#"
import base64, http.server, os, subprocess, sys

host, port, root, user = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
password = sys.stdin.readline().rstrip("\n")
expected = "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, headers, payload):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    def serve(self):
        body = self.body()
        if self.headers.get("Authorization") != expected:
            self.reply(401, [("WWW-Authenticate", 'Basic realm="git"')], b"authentication required\n")
            return
        path, _, query = self.path.partition("?")
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
        for name, value in self.headers.items():
            env["HTTP_" + name.upper().replace("-", "_")] = value
        env.pop("HTTP_TRANSFER_ENCODING", None)
        env.pop("HTTP_AUTHORIZATION", None)
        env.update({
            "GIT_PROJECT_ROOT": root, "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": user,
            "REMOTE_ADDR": self.client_address[0], "REQUEST_METHOD": self.command,
            "PATH_INFO": path, "QUERY_STRING": query, "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1",
        })
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, payload = out.partition(sep)
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.reply(status, headers, payload)

    do_GET = do_POST = serve

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))
        sys.stderr.flush()


print("git server on %s:%d" % (host, port), flush=True)
http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()
"#;

/// A git server in `svc` with HTTP Basic auth (real `git http-backend`),
/// serving `repo.git`: one commit on `branch`.
pub struct GitServer {
    pub user: String,
    pub password: String,
    /// The commit `branch` points at.
    pub commit: String,
    pub server: NsProc,
}

impl GitServer {
    /// Serve a repository of `files` (path, contents), committed on `branch`.
    pub fn start(topo: &Topology, dir: &Path, branch: &str, files: &[(&str, &[u8])]) -> GitServer {
        let root = dir.join("root");
        let commit = bare_repo(dir, &root.join("repo.git"), branch, files);
        let script = dir.join("git-http.py");
        std::fs::write(&script, GIT_HTTP_PY).unwrap();
        let user = "ci-reader".to_owned();
        let password = format!("gitpw-{}", random_hex(12));
        let mut cmd = Command::new(tool("python3"));
        cmd.arg(&script)
            .args([SVC_ADDR, &GIT_PORT.to_string()])
            .arg(&root)
            .arg(&user);
        let mut proc = spawn_in(
            &topo.name(Ns::Svc),
            &cmd,
            dir.join("git-http.log"),
            Some(format!("{password}\n").as_bytes()),
        );
        topo.wait_port(
            Ns::Svc,
            SVC_ADDR,
            GIT_PORT,
            &mut proc,
            Duration::from_secs(30),
        );
        GitServer {
            user,
            password,
            commit,
            server: proc,
        }
    }

    /// `10.202.0.2:8080`, as `--git-host` names it.
    pub fn host(&self) -> String {
        format!("{SVC_ADDR}:{GIT_PORT}")
    }

    /// `http://10.202.0.2:8080/repo.git` (no credentials in it).
    pub fn url(&self) -> String {
        format!("http://{}/repo.git", self.host())
    }
}

/// A bare repository at `bare` holding one commit of `files` (path,
/// contents) on `branch`, made through a work tree in `dir/work`; returns
/// the commit.
fn bare_repo(dir: &Path, bare: &Path, branch: &str, files: &[(&str, &[u8])]) -> String {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    for (path, bytes) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let t = Duration::from_secs(60);
    let git = |args: &[&str], cwd: &Path| {
        ok_for(
            Command::new(tool("git"))
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .current_dir(cwd),
            None,
            t,
        )
    };
    git(&["init", "-q", "-b", branch], &work);
    git(&["add", "."], &work);
    git(&["commit", "-q", "-m", "private app"], &work);
    let commit = git(&["rev-parse", "HEAD"], &work).trim().to_owned();
    git(
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
        dir,
    );
    commit
}

/// `ssh-keygen` of a new ed25519 key pair without a passphrase at `path`
/// (and `path.pub`).
pub fn ssh_keygen(path: &Path, comment: &str) {
    ok_for(
        Command::new(tool("ssh-keygen"))
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
        None,
        Duration::from_secs(30),
    );
}

/// Debian's OpenSSH server in `svc`, in the foreground with a config of
/// the test's own: a host key made here, port [`SSH_PORT`], public-key
/// auth only, for `root` (sshd runs as root to switch users; UsePAM off, as
/// PAM's session modules fail in containers) with the one client key the
/// test makes, listed in an authorized_keys file of the test's own;
/// serving a bare `repo.git` (git-upload-pack over the SSH session).
pub struct SshServer {
    /// The client's private key: what the git-ssh credential stores.
    pub client_key: PathBuf,
    /// The server's host key as a known_hosts line for
    /// `[10.202.0.2]:2222`, read from its public key file.
    pub known_hosts_line: String,
    /// The user the server lets in.
    pub user: String,
    /// The commit `branch` points at.
    pub commit: String,
    dir: PathBuf,
    pub server: NsProc,
}

impl SshServer {
    /// `ssh://root@10.202.0.2:2222/…/repo.git` of the server started in
    /// `dir`, known before it is (a repository may name itself).
    pub fn url_in(dir: &Path) -> String {
        format!(
            "ssh://root@{SVC_ADDR}:{SSH_PORT}{}",
            dir.join("root/repo.git").display()
        )
    }

    /// Serve a repository of `files` (path, contents), committed on `branch`.
    pub fn start(topo: &Topology, dir: &Path, branch: &str, files: &[(&str, &[u8])]) -> SshServer {
        let dir = dir.to_owned();
        let commit = bare_repo(&dir, &dir.join("root/repo.git"), branch, files);
        let host_key = dir.join("ssh_host_ed25519_key");
        ssh_keygen(&host_key, "slipway-test-sshd");
        let client_key = dir.join("client_key");
        ssh_keygen(&client_key, "slipway-test-agent");
        let public = std::fs::read_to_string(dir.join("client_key.pub")).unwrap();
        let authorized = dir.join("authorized_keys");
        // `restrict`: no pty, forwarding or agent; a command still runs.
        std::fs::write(&authorized, format!("restrict {}", public.trim_end())).unwrap();
        let host_pub = std::fs::read_to_string(dir.join("ssh_host_ed25519_key.pub")).unwrap();
        let mut fields = host_pub.split_whitespace();
        let known_hosts_line = format!(
            "[{SVC_ADDR}]:{SSH_PORT} {} {}\n",
            fields.next().unwrap(),
            fields.next().unwrap()
        );
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {SVC_ADDR}\nPort {SSH_PORT}\nHostKey {host_key}\nPidFile none\n\
                 UsePAM no\nPubkeyAuthentication yes\nAuthenticationMethods publickey\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 AuthorizedKeysFile {authorized}\n\
                 StrictModes no\nPermitRootLogin prohibit-password\nAllowUsers root\n\
                 LogLevel VERBOSE\n",
                host_key = host_key.display(),
                authorized = authorized.display(),
            ),
        )
        .unwrap();
        // sshd's privilege separation directory (Debian's unit makes it
        // at boot; nothing here does).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let sshd = tool("sshd");
        ok_for(
            Command::new(&sshd).arg("-t").arg("-f").arg(&config),
            None,
            Duration::from_secs(30),
        );
        // -D: the foreground; -e: the log on stderr. sshd re-executes
        // itself, so it is started by its absolute path.
        let mut cmd = Command::new(&sshd);
        cmd.args(["-D", "-e", "-f"]).arg(&config);
        let mut server = spawn_in(&topo.name(Ns::Svc), &cmd, dir.join("sshd.log"), None);
        server.wait_for("Server listening on", Duration::from_secs(30));
        topo.wait_port(
            Ns::Svc,
            SVC_ADDR,
            SSH_PORT,
            &mut server,
            Duration::from_secs(30),
        );
        SshServer {
            client_key,
            known_hosts_line,
            user: "root".into(),
            commit,
            dir,
            server,
        }
    }

    /// `10.202.0.2:2222`, as `--git-host` names it.
    pub fn host(&self) -> String {
        format!("{SVC_ADDR}:{SSH_PORT}")
    }

    /// `ssh://root@10.202.0.2:2222/…/repo.git`.
    pub fn url(&self) -> String {
        SshServer::url_in(&self.dir)
    }

    /// The client's private key (OpenSSH text).
    pub fn client_key_text(&self) -> String {
        std::fs::read_to_string(&self.client_key).unwrap()
    }

    /// `ssh-keyscan -p 2222 10.202.0.2` run in `ns`: the known_hosts lines
    /// of the keys the server offers, as an operator would collect them.
    pub fn keyscan(&self, topo: &Topology, ns: Ns) -> String {
        ok_for(
            topo.command(ns, tool("ssh-keyscan")).args([
                "-T",
                "10",
                "-t",
                "ed25519",
                "-p",
                &SSH_PORT.to_string(),
                SVC_ADDR,
            ]),
            None,
            Duration::from_secs(30),
        )
    }
}

/// The private network and its three services, made in `dir`.
pub struct Private {
    pub ca: Ca,
    pub registry: InternalRegistry,
    pub azurite: Azurite,
    /// Started by the test with the files it wants ([`GitServer::start`]).
    pub git: Option<GitServer>,
    /// `<registry>/base/busybox:1`.
    pub base: String,
    /// Dropped last: kills whatever is left in the namespaces, deletes them.
    pub topo: Topology,
}

impl Private {
    /// Topology, CA, registry (with `base/busybox:1` pushed from `agent`),
    /// Azurite.
    pub fn start(dir: &Path) -> Private {
        let topo = Topology::new();
        let ca = Ca::new(&dir.join("ca"));
        let registry = InternalRegistry::start(&topo, &dir.join("registry"), &ca);
        let layout = busybox_layout(&dir.join("busybox"));
        let base = registry.push_layout(&topo, Ns::Agent, &layout, "busybox", "base/busybox:1");
        let azurite = Azurite::start(&topo, &dir.join("azurite"));
        Private {
            ca,
            registry,
            azurite,
            git: None,
            base,
            topo,
        }
    }
}
