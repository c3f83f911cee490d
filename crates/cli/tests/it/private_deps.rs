//! Issue 12 across real network boundaries (the topology of `netns.rs`):
//! a CI job that reaches only the server builds on a pool whose agent sits
//! in the private network with an internal registry (TLS from a private CA,
//! htpasswd), Azurite and git servers with auth (HTTP Basic; SSH with a key
//! and known_hosts); an agent outside that network cannot; no credential or
//! key lands anywhere it could be read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::tool;
use crate::netns::{
    AGENT_ADDR, AZURITE_PORT, CI_ADDR, GIT_PORT, GitServer, Ns, OUTSIDE_ADDR, Private,
    REGISTRY_PORT, SRV_ADDR, SSH_PORT, SVC_ADDR, SshServer, Topology, need_root_and_tools, ok_for,
    run_for,
};

const SLIPWAY: &str = env!("CARGO_BIN_EXE_slipway");
const SERVER_PORT: u16 = 5000;
const BUILD_LIMIT: Duration = Duration::from_secs(300);
const SHORT: Duration = Duration::from_secs(60);

/// `slipway server` in `srv` on a non-loopback, plain-HTTP address, and the
/// agents the test starts.
struct Slipway {
    dir: PathBuf,
    data: PathBuf,
    url: String,
    token: String,
    server: crate::netns::NsProc,
    agents: Vec<crate::netns::NsProc>,
}

impl Slipway {
    fn start(topo: &Topology, dir: &Path) -> Slipway {
        let data = dir.join("data");
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = Command::new(SLIPWAY);
        cmd.args([
            "server",
            "--listen",
            &format!("{SRV_ADDR}:{SERVER_PORT}"),
            "--data",
        ])
        .arg(&data)
        .env("SLIPWAY_LOG", "info");
        let mut server = topo.spawn(Ns::Srv, &cmd, dir.join("server.log"));
        server.wait_for("listening on ", SHORT);
        let token = std::fs::read_to_string(data.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        Slipway {
            dir: dir.to_owned(),
            data,
            url: format!("http://{SRV_ADDR}:{SERVER_PORT}"),
            token,
            server,
            agents: Vec::new(),
        }
    }

    fn host(&self) -> String {
        format!("{SRV_ADDR}:{SERVER_PORT}")
    }

    /// The CLI inside `ns`, with the admin token (as CI would hold a token).
    fn cli(&self, topo: &Topology, ns: Ns) -> Command {
        let mut c = topo.command(ns, SLIPWAY);
        self.cli_env(&mut c);
        c
    }

    /// The CLI's environment: this server, the admin token, no saved login,
    /// an empty docker config.
    fn cli_env(&self, c: &mut Command) {
        let empty = self.dir.join("cli-docker");
        std::fs::create_dir_all(&empty).unwrap();
        c.env("SLIPWAY_SERVER", &self.url)
            .env("SLIPWAY_TOKEN", &self.token)
            .env("SLIPWAY_CONFIG", self.dir.join("none.json"))
            .env("DOCKER_CONFIG", &empty);
    }

    fn ok(&self, topo: &Topology, args: &[&str]) -> String {
        ok_for(self.cli(topo, Ns::Ci).args(args), None, SHORT)
    }

    /// Pool `name` (one external agent) and its agent token.
    fn pool(&self, topo: &Topology, name: &str) -> String {
        self.ok(topo, &["pool", "create", name]);
        self.ok(topo, &["pool", "token", name]).trim().to_owned()
    }

    /// `slipway agent` of `pool` inside `ns`, trusting the test CA; its
    /// own docker config and HOME are empty directories.
    fn start_agent(&mut self, topo: &Topology, ns: Ns, pool: &str, token: &str, ca: &Path) {
        let name = format!("{pool}-agent");
        let home = self.dir.join(format!("{name}-home"));
        std::fs::create_dir_all(home.join(".docker")).unwrap();
        let mut cmd = Command::new(SLIPWAY);
        cmd.args([
            "agent",
            "--server",
            &self.url,
            "--pool",
            pool,
            "--token",
            token,
            "--agent-id",
            &name,
            "--ca-cert",
        ])
        .arg(ca)
        .arg("--work-dir")
        .arg(self.dir.join(&name))
        .env("HOME", &home)
        .env("DOCKER_CONFIG", home.join(".docker"))
        .env("SLIPWAY_LOG", "info");
        let agent = topo.spawn(ns, &cmd, self.dir.join(format!("{name}.log")));
        self.agents.push(agent);
        self.wait_agent(topo, pool);
    }

    /// Until `pool` shows a live agent (30 s).
    fn wait_agent(&mut self, topo: &Topology, pool: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for a in &mut self.agents {
                a.assert_alive();
            }
            let show = self.ok(topo, &["pool", "show", pool, "-o", "json"]);
            let v: serde_json::Value = serde_json::from_str(&show).unwrap();
            if v["agents"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["status"] != "offline"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no live agent in pool {pool}: {show}\n{}",
                self.agents.last().unwrap().text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn agent_logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("--- {}\n{}", a.what, a.text()))
            .collect()
    }

    /// `slipway credential add|update POOL --login-server|--git-host HOST
    /// --username U --password-stdin`, from `ci`.
    /// `target` is `[flag, host]`, `login` is `[username, password]`.
    fn credential(
        &self,
        topo: &Topology,
        verb: &str,
        pool: &str,
        target: [&str; 2],
        login: [&str; 2],
    ) {
        let ([flag, host], [user, password]) = (target, login);
        ok_for(
            self.cli(topo, Ns::Ci).args([
                "credential",
                verb,
                pool,
                flag,
                host,
                "--username",
                user,
                "--password-stdin",
            ]),
            Some(format!("{password}\n").as_bytes()),
            SHORT,
        );
    }

    /// `slipway credential add|update POOL --git-host HOST --ssh-key-file
    /// KEY --known-hosts-file FILE -u USER` of `ssh`'s client key, from `ci`.
    fn ssh_credential(
        &self,
        topo: &Topology,
        verb: &str,
        pool: &str,
        ssh: &SshServer,
        known_hosts: &Path,
    ) -> String {
        ok_for(
            self.cli(topo, Ns::Ci)
                .args(["credential", verb, pool, "--git-host", &ssh.host()])
                .arg("--ssh-key-file")
                .arg(&ssh.client_key)
                .arg("--known-hosts-file")
                .arg(known_hosts)
                .args(["-u", &ssh.user]),
            None,
            SHORT,
        )
    }
}

/// A finished `slipway build --pool`, run from `ci`.
struct Build {
    out: Output,
    stdout: String,
    stderr: String,
    run: String,
}

impl Build {
    fn ok(&self) -> bool {
        self.out.status.success()
    }
}

/// The private network, its services seeded for the build, the server,
/// pools `private` (agent in vnet) and `elsewhere` (agent outside), and
/// the stored credentials.
struct World {
    slipway: Slipway,
    private: Private,
    /// Blob `one.txt`: what `ADD <SAS URL>` fetches.
    blob_one: Vec<u8>,
    /// Blob `two.txt`: what the RUN fetches with the secret SAS.
    blob_two: Vec<u8>,
    /// The SAS token handed as the build secret `sas`.
    secret_sas: String,
    dockerfile: String,
    context: PathBuf,
    runs: Vec<String>,
    /// Output of every CLI call whose output is to be scanned.
    transcripts: Vec<String>,
    /// What else must appear nowhere (a test's own keys), with its name.
    extra_secrets: Vec<(String, String)>,
    dir: PathBuf,
}

const CONTAINER: &str = "artifacts";
const BRANCH: &str = "feature-private";

impl World {
    fn start(dir: &Path) -> World {
        let mut private = Private::start(&dir.join("private"));
        let topo = &private.topo;
        let blob_one = format!("artifact one {}\n", crate::netns::random_hex(8)).into_bytes();
        let blob_two = format!("artifact two {}\n", crate::netns::random_hex(8)).into_bytes();
        private.azurite.put(topo, CONTAINER, "one.txt", &blob_one);
        private.azurite.put(topo, CONTAINER, "two.txt", &blob_two);
        let add_url = private.azurite.sas_url(topo, CONTAINER, "one.txt");
        let secret_sas = private.azurite.sas(topo, CONTAINER, "two.txt");
        let dockerfile = format!(
            "FROM {base}\n\
             ADD {add_url} /data/blob.txt\n\
             RUN --mount=type=secret,id=sas wget -qO /data/fetched.txt \"{two}?$(cat /run/secrets/sas)\"\n",
            base = private.base,
            two = private.azurite.blob_url(CONTAINER, "two.txt"),
        );
        let context = dir.join("context");
        std::fs::create_dir_all(&context).unwrap();
        std::fs::write(context.join("Dockerfile"), &dockerfile).unwrap();
        let git_dockerfile = format!("{dockerfile}COPY msg.txt /data/msg.txt\n");
        let git = GitServer::start(
            topo,
            &dir.join("git"),
            BRANCH,
            &[
                ("Dockerfile", git_dockerfile.as_bytes()),
                ("msg.txt", b"from the private git server\n"),
            ],
        );
        private.git = Some(git);

        let mut slipway = Slipway::start(topo, &dir.join("slipway"));
        let private_token = slipway.pool(topo, "private");
        let elsewhere_token = slipway.pool(topo, "elsewhere");
        let ca = private.ca.cert.clone();
        slipway.start_agent(topo, Ns::Agent, "private", &private_token, &ca);
        slipway.start_agent(topo, Ns::Outside, "elsewhere", &elsewhere_token, &ca);
        let reg = &private.registry;
        let git = private.git.as_ref().unwrap();
        for pool in ["private", "elsewhere"] {
            slipway.credential(
                topo,
                "add",
                pool,
                ["--login-server", &reg.host],
                [&reg.user, &reg.password],
            );
            slipway.credential(
                topo,
                "add",
                pool,
                ["--git-host", &git.host()],
                [&git.user, &git.password],
            );
        }
        World {
            slipway,
            private,
            blob_one,
            blob_two,
            secret_sas,
            dockerfile,
            context,
            runs: Vec::new(),
            transcripts: Vec::new(),
            extra_secrets: Vec::new(),
            dir: dir.to_owned(),
        }
    }

    fn topo(&self) -> &Topology {
        &self.private.topo
    }

    /// `slipway build --pool POOL --no-cache -t TAG --secret id=sas,env=SAS_TOKEN CONTEXT` from `ci`.
    fn build(&mut self, pool: &str, tag: &str, context: &str) -> Build {
        let out = run_for(
            self.slipway
                .cli(self.topo(), Ns::Ci)
                .args([
                    "build",
                    "--pool",
                    pool,
                    "--no-cache",
                    "-t",
                    tag,
                    "--secret",
                    "id=sas,env=SAS_TOKEN",
                    context,
                ])
                .env("SAS_TOKEN", &self.secret_sas),
            None,
            BUILD_LIMIT,
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let run = stderr
            .split("run ")
            .filter_map(|s| s.split_once(" queued on pool "))
            .map(|(id, _)| id.trim().to_owned())
            .next()
            .unwrap_or_else(|| panic!("no run id in the CLI's output:\n{stdout}\n{stderr}"));
        self.runs.push(run.clone());
        self.transcripts.push(format!("{stdout}\n{stderr}"));
        Build {
            out,
            stdout,
            stderr,
            run,
        }
    }

    fn context_dir(&self) -> String {
        self.context.to_str().unwrap().to_owned()
    }

    /// The run's whole log (`slipway logs RUN`, from `ci`).
    fn logs(&mut self, run: &str) -> String {
        let log = self.slipway.ok(self.topo(), &["logs", run]);
        self.transcripts.push(log.clone());
        log
    }

    /// `slipway runs show RUN -o json`, from `ci`.
    fn show(&mut self, run: &str) -> serde_json::Value {
        let text = self
            .slipway
            .ok(self.topo(), &["runs", "show", run, "-o", "json"]);
        self.transcripts.push(text.clone());
        serde_json::from_str(&text).unwrap()
    }

    fn explain(&self, b: &Build) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}\nagents:\n{}",
            b.out.status,
            b.stdout,
            b.stderr,
            self.slipway.agent_logs()
        )
    }

    /// The image reference the CLI printed for `tag` (`HOST/NAME:TAG@sha256:…`).
    fn printed_reference(b: &Build, tag: &str) -> String {
        b.stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.contains(&format!("/{tag}@sha256:")))
            .unwrap_or_else(|| panic!("no reference for {tag} printed:\n{}", b.stdout))
            .to_owned()
    }

    /// Pull `reference` from `ci` with skopeo (plain HTTP, the admin token)
    /// into an OCI layout, and unpack its layers in order into a directory.
    fn pull_into_rootfs(&self, reference: &str, name: &str) -> PathBuf {
        // skopeo takes a digest or a tag, not both.
        let (repo_tag, digest) = reference.split_once('@').unwrap();
        let repo = match repo_tag.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => r,
            _ => repo_tag,
        };
        let layout = self.dir.join(format!("pulled-{name}"));
        ok_for(
            self.topo()
                .command(Ns::Ci, tool("skopeo"))
                .args(["copy", "--src-tls-verify=false", "--src-creds"])
                .arg(format!("admin:{}", self.slipway.token))
                .arg(format!("docker://{repo}@{digest}"))
                .arg(format!("oci:{}:x", layout.display())),
            None,
            Duration::from_secs(120),
        );
        let blob = |d: &str| {
            layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"))
        };
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        let root = self.dir.join(format!("rootfs-{name}"));
        std::fs::create_dir_all(&root).unwrap();
        for layer in manifest["layers"].as_array().unwrap() {
            ok_for(
                Command::new("tar")
                    .arg("-xf")
                    .arg(blob(layer["digest"].as_str().unwrap()))
                    .arg("-C")
                    .arg(&root),
                None,
                SHORT,
            );
        }
        root
    }

    /// What must appear nowhere: the registry and git passwords, the
    /// secret SAS token (and its signature alone, encoded or not), the
    /// storage account key.
    fn secrets(&self) -> Vec<(String, String)> {
        let reg = &self.private.registry;
        let git = self.private.git.as_ref().unwrap();
        let mut s = vec![
            ("registry password".to_owned(), reg.password.clone()),
            ("git password".to_owned(), git.password.clone()),
            ("SAS token".to_owned(), self.secret_sas.clone()),
            (
                "storage account key".to_owned(),
                self.private.azurite.key.clone(),
            ),
        ];
        if let Some(sig) = self
            .secret_sas
            .split('&')
            .find_map(|kv| kv.strip_prefix("sig="))
        {
            s.push(("SAS signature".into(), sig.to_owned()));
            s.push(("SAS signature (decoded)".into(), percent_decode(sig)));
        }
        s.extend(self.extra_secrets.iter().cloned());
        s
    }

    /// Scan every run's log and `runs show`, every CLI transcript, the
    /// server's data directory (its registry's blobs decompressed) and the
    /// agents' work directories for [`World::secrets`].
    fn assert_no_secret_anywhere(&mut self) {
        for run in self.runs.clone() {
            self.logs(&run);
            self.show(&run);
        }
        let secrets = self.secrets();
        for (i, t) in self.transcripts.iter().enumerate() {
            for (what, s) in &secrets {
                assert!(
                    !t.contains(s.as_str()),
                    "the {what} is in CLI output #{i}:\n{t}"
                );
            }
        }
        let mut scanned = 0;
        scan_dir(&self.slipway.data, &secrets, &mut scanned);
        // The database, keys and tokens at least: proof the scan ran.
        assert!(
            scanned >= 5,
            "the server's data dir was scanned: {scanned} files"
        );
        for a in ["private-agent", "elsewhere-agent"] {
            scan_dir(&self.slipway.dir.join(a), &secrets, &mut scanned);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let git = self.private.git.as_ref().map(|g| g.server.text());
            eprintln!(
                "server log:\n{}\n{}\ngit server log:\n{}",
                self.slipway.server.text(),
                self.slipway.agent_logs(),
                git.unwrap_or_default()
            );
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The log's lines that name `host`, but for the builder's progress lines
/// (`#### …`: the step being run, the image being pulled), which echo the
/// Dockerfile: what reports the failure.
fn diagnostics<'a>(log: &'a str, host: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains(host) && !l.trim_start().starts_with("####"))
        .collect()
}

/// A part of the message between `: ` separators (of some length) that
/// comes back later in the same line: the failure said twice.
fn repeated_cause(line: &str) -> Option<&str> {
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    parts
        .iter()
        .enumerate()
        .find(|(i, p)| p.len() >= 16 && parts[i + 1..].contains(p))
        .map(|(_, p)| *p)
}

fn assert_says_it_once(line: &str) {
    if let Some(p) = repeated_cause(line) {
        panic!("the same cause is said twice ({p:?}) in: {line}");
    }
}

/// The log reports the failure on exactly one line (see [`diagnostics`])
/// that names `host`, says its cause once and contains `also`.
fn one_line_naming(log: &str, host: &str, also: &str) -> Result<(), String> {
    let lines = diagnostics(log, host);
    if lines.len() != 1 {
        return Err(format!(
            "{} lines (besides #### progress) name {host}, not one:\n{log}",
            lines.len()
        ));
    }
    let line = lines[0];
    if !line.contains(also) {
        return Err(format!(
            "the line naming {host} does not say {also:?}: {line}"
        ));
    }
    match repeated_cause(line) {
        Some(p) => Err(format!("the line naming {host} says {p:?} twice: {line}")),
        None => Ok(()),
    }
}

/// Every file under `dir`, raw and, when gzip or zstd, decompressed.
fn scan_dir(dir: &Path, secrets: &[(String, String)], scanned: &mut usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            scan_dir(&p, secrets, scanned);
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let Ok(raw) = std::fs::read(&p) else {
            continue;
        };
        let mut views = vec![raw.clone()];
        if raw.starts_with(&[0x1f, 0x8b]) {
            use std::io::Read;
            let mut plain = Vec::new();
            if flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_end(&mut plain)
                .is_ok()
            {
                views.push(plain);
            }
        } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let out = Command::new(tool("zstd"))
                .args(["-dcq"])
                .arg(&p)
                .output()
                .unwrap();
            if out.status.success() {
                views.push(out.stdout);
            }
        }
        for v in &views {
            for (what, s) in secrets {
                assert!(
                    !v.windows(s.len()).any(|w| w == s.as_bytes()),
                    "the {what} is in {}",
                    p.display()
                );
            }
        }
        *scanned += 1;
    }
}

/// The topology and its services, before any Slipway feature: each private
/// service answers from `agent` (and rejects missing credentials), none is
/// reachable from `ci` or `outside`, and the server is reachable from all
/// three.
#[test]
fn private_network_topology_isolates_ci() {
    if !need_root_and_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let private = Private::start(&tmp.path().join("private"));
    let topo = &private.topo;
    let git = GitServer::start(
        topo,
        &tmp.path().join("git"),
        BRANCH,
        &[("Dockerfile", b"FROM scratch\n")],
    );
    let slipway = Slipway::start(topo, &tmp.path().join("slipway"));
    let reg = &private.registry;
    let ca = private.ca.cert.to_str().unwrap();
    let curl = |ns: Ns, args: &[&str]| -> Output {
        run_for(
            topo.command(ns, tool("curl"))
                .args([
                    "-sS",
                    "--max-time",
                    "10",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .args(args),
            None,
            SHORT,
        )
    };
    let code = |o: &Output| String::from_utf8_lossy(&o.stdout).trim().to_owned();

    // The internal registry from `agent`: TLS verified by the test CA,
    // 401 without credentials, 200 with them; an unknown CA is refused.
    let v2 = format!("https://{}/v2/", reg.host);
    let o = curl(Ns::Agent, &["--cacert", ca, &v2]);
    assert_eq!(code(&o), "401", "{o:?}");
    let o = curl(Ns::Agent, &["--cacert", ca, "-u", &reg.creds(), &v2]);
    assert!(o.status.success() && code(&o) == "200", "{o:?}");
    let o = curl(Ns::Agent, &["-u", &reg.creds(), &v2]);
    assert_eq!(
        o.status.code(),
        Some(60),
        "an unknown CA fails verification: {o:?}"
    );
    let o = curl(
        Ns::Agent,
        &["--cacert", ca, "-u", &format!("{}:wrong", reg.user), &v2],
    );
    assert_eq!(code(&o), "401", "{o:?}");

    // The base image: pullable from `agent` with the credentials only.
    let inspect = |ns: Ns, creds: Option<&str>| -> Output {
        let mut c = topo.command(ns, tool("skopeo"));
        c.arg("inspect").arg("--cert-dir").arg(&reg.cert_dir);
        if let Some(creds) = creds {
            c.args(["--creds", creds]);
        }
        c.arg(format!("docker://{}", private.base));
        run_for(&mut c, None, SHORT)
    };
    let o = inspect(Ns::Agent, Some(&reg.creds()));
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Name"], format!("{}/base/busybox", reg.host));
    let o = inspect(Ns::Agent, None);
    assert!(!o.status.success(), "pulled without credentials: {o:?}");

    // Git from `agent`: with credentials it lists the branch's commit;
    // without them, or with a wrong password, it fails.
    let ls_remote = |url: &str| {
        run_for(
            topo.command(Ns::Agent, tool("git"))
                .args(["ls-remote", url])
                .env("GIT_TERMINAL_PROMPT", "0")
                .env("HOME", tmp.path()),
            None,
            SHORT,
        )
    };
    let with = format!(
        "http://{}:{}@{}/repo.git",
        git.user,
        git.password,
        git.host()
    );
    let o = ls_remote(&with);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains(&format!("{}\trefs/heads/{BRANCH}", git.commit)),
        "{o:?}"
    );
    assert!(!ls_remote(&git.url()).status.success());
    assert!(
        !ls_remote(&format!(
            "http://{}:wrong@{}/repo.git",
            git.user,
            git.host()
        ))
        .status
        .success()
    );

    // Azurite from `agent`: the SAS URL downloads the blob; without the
    // SAS the blob is refused.
    let content = b"private blob contents\n";
    private.azurite.put(topo, CONTAINER, "probe.txt", content);
    let sas_url = private.azurite.sas_url(topo, CONTAINER, "probe.txt");
    let got = ok_for(
        topo.command(Ns::Agent, tool("curl"))
            .args(["-sS", "--fail", "--max-time", "10", &sas_url]),
        None,
        SHORT,
    );
    assert_eq!(got.as_bytes(), content);
    let o = curl(
        Ns::Agent,
        &[&private.azurite.blob_url(CONTAINER, "probe.txt")],
    );
    assert_eq!(code(&o), "403", "{o:?}");
    // …and the agent's busybox wget (what a RUN uses) gets it too.
    let got = ok_for(
        topo.command(Ns::Agent, tool("busybox"))
            .args(["wget", "-qO-", &sas_url]),
        None,
        SHORT,
    );
    assert_eq!(got.as_bytes(), content);

    // From `ci` and `outside`: no private service can even be connected to,
    // and the base image cannot be pulled.
    for ns in [Ns::Ci, Ns::Outside] {
        for port in [REGISTRY_PORT, AZURITE_PORT, GIT_PORT] {
            let r = topo.connect(ns, SVC_ADDR, port);
            assert!(r.is_err(), "{ns:?} reached {SVC_ADDR}:{port}");
            eprintln!("{ns:?} -> {SVC_ADDR}:{port}: {}", r.unwrap_err());
        }
        let o = curl(ns, &["--cacert", ca, "-u", &reg.creds(), &v2]);
        assert!(!o.status.success() && code(&o) == "000", "{ns:?}: {o:?}");
        let o = inspect(ns, Some(&reg.creds()));
        assert!(!o.status.success(), "{ns:?} pulled the base image: {o:?}");
        let o = run_for(
            topo.command(ns, tool("git"))
                .args(["ls-remote", &with])
                .env("GIT_TERMINAL_PROMPT", "0")
                .env("HOME", tmp.path()),
            None,
            SHORT,
        );
        assert!(!o.status.success(), "{ns:?} reached the git server: {o:?}");
    }

    // The server in `srv` answers on its non-loopback address from every
    // other front namespace (its registry's /v2/ asks for a token).
    for (ns, addr) in [
        (Ns::Ci, CI_ADDR),
        (Ns::Agent, AGENT_ADDR),
        (Ns::Outside, OUTSIDE_ADDR),
    ] {
        topo.connect(ns, SRV_ADDR, SERVER_PORT)
            .unwrap_or_else(|e| panic!("{ns:?} ({addr}) cannot reach the server: {e}"));
        let o = curl(ns, &[&format!("{}/v2/", slipway.url)]);
        assert_eq!(code(&o), "401", "{ns:?}: {o:?}");
    }
    // `srv` itself is on the front segment only.
    assert!(topo.connect(Ns::Srv, SVC_ADDR, REGISTRY_PORT).is_err());
    assert_eq!(slipway.host(), format!("{SRV_ADDR}:{SERVER_PORT}"));

    // Nothing of it is left once dropped.
    let names: Vec<String> = Ns::ALL.iter().map(|n| topo.name(*n)).collect();
    drop(git);
    drop(slipway);
    drop(private);
    let list = ok_for(Command::new("ip").args(["netns", "list"]), None, SHORT);
    for n in names {
        assert!(!list.contains(&n), "namespace {n} left behind:\n{list}");
    }
}

/// The seed scenario: from `ci`, a build on pool `private` of
/// `FROM <internal registry>/base`, `ADD <SAS URL>` and a RUN that fetches a
/// blob with a SAS handed as a secret, first from an uploaded context, then
/// from the private git URL; the printed references pull from `ci` over
/// plain HTTP and hold the blobs; the run records the commit and branch;
/// no credential or key appears in any log, `runs show`, data file or blob.
#[test]
fn private_pool_builds_from_private_dependencies() {
    if !need_root_and_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut w = World::start(tmp.path());

    let ctx = w.context_dir();
    let b = w.build("private", "app:1", &ctx);
    assert!(b.ok(), "build on pool private failed: {}", w.explain(&b));
    let reference = World::printed_reference(&b, "app:1");
    assert!(
        reference.starts_with(&format!("{}/app:1@sha256:", w.slipway.host())),
        "the printed reference names the server's registry as ci reaches it: {reference}"
    );
    let root = w.pull_into_rootfs(&reference, "upload");
    assert_eq!(
        std::fs::read(root.join("data/blob.txt")).unwrap(),
        w.blob_one
    );
    assert_eq!(
        std::fs::read(root.join("data/fetched.txt")).unwrap(),
        w.blob_two
    );

    // The context from the private git server, by branch.
    let git = w.private.git.as_ref().unwrap();
    let (url, commit) = (format!("{}#{BRANCH}", git.url()), git.commit.clone());
    let b = w.build("private", "app:2", &url);
    assert!(b.ok(), "git-context build failed: {}", w.explain(&b));
    let reference = World::printed_reference(&b, "app:2");
    let root = w.pull_into_rootfs(&reference, "git");
    assert_eq!(
        std::fs::read(root.join("data/blob.txt")).unwrap(),
        w.blob_one
    );
    assert_eq!(
        std::fs::read(root.join("data/fetched.txt")).unwrap(),
        w.blob_two
    );
    assert_eq!(
        std::fs::read_to_string(root.join("data/msg.txt")).unwrap(),
        "from the private git server\n"
    );
    let show = w.show(&b.run);
    assert_eq!(show["revision"]["commit"], commit.as_str(), "{show:#}");
    assert_eq!(show["revision"]["branch"], BRANCH, "{show:#}");

    assert!(w.dockerfile.contains(&w.private.base));
    w.assert_no_secret_anywhere();
}

/// The same build on pool `elsewhere`, whose agent is outside vnet: it fails,
/// and its log names the unreachable internal registry on exactly one line.
#[test]
fn pool_outside_the_private_network_fails_naming_the_registry() {
    if !need_root_and_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut w = World::start(tmp.path());
    let ctx = w.context_dir();
    let b = w.build("elsewhere", "app:3", &ctx);
    assert!(!b.ok(), "a build outside vnet succeeded: {}", w.explain(&b));
    let log = w.logs(&b.run);
    let host = w.private.registry.host.clone();
    let naming = diagnostics(&log, &host);
    assert_eq!(
        naming.len(),
        1,
        "exactly one log line (besides the builder's #### progress lines) names {host}:\n{log}\n(CLI stderr: {})",
        b.stderr
    );
    assert_says_it_once(naming[0]);
    let show = w.show(&b.run);
    assert_ne!(show["state"], "succeeded", "{show:#}");
    w.assert_no_secret_anywhere();
}

/// A wrong stored password for the internal registry: the build fails with
/// `authentication failed for HOST`.
#[test]
fn wrong_stored_registry_password_fails_naming_the_host() {
    if !need_root_and_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut w = World::start(tmp.path());
    let reg_host = w.private.registry.host.clone();
    let user = w.private.registry.user.clone();
    let wrong = format!("wrong-{}", crate::netns::random_hex(6));
    w.slipway.credential(
        w.topo(),
        "update",
        "private",
        ["--login-server", &reg_host],
        [&user, &wrong],
    );
    let ctx = w.context_dir();
    let b = w.build("private", "app:4", &ctx);
    assert!(
        !b.ok(),
        "a build with a wrong password succeeded: {}",
        w.explain(&b)
    );
    let log = w.logs(&b.run);
    let needle = format!("authentication failed for {reg_host}");
    let all = format!("{log}\n{}\n{}", b.stdout, b.stderr);
    let line = all
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no line says {needle:?}:\n{all}"));
    assert!(
        line.to_lowercase().contains("credential"),
        "the line names the stored credential: {line}"
    );
    assert_says_it_once(line);
    w.assert_no_secret_anywhere();
}

/// Faults: with the internal registry down the run fails naming it; Azurite
/// killed in the middle of a run (after a RUN that waits, before the `ADD`
/// of its SAS URL) fails that run naming it; once each is back, the next
/// run succeeds.
#[test]
fn killed_private_services_fail_the_run_naming_them() {
    if !need_root_and_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut w = World::start(tmp.path());
    let reg_host = w.private.registry.host.clone();
    let azurite_host = format!("{SVC_ADDR}:{AZURITE_PORT}");

    // The registry stopped: the pull of the base image fails, naming it.
    w.private.registry.stop();
    let ctx = w.context_dir();
    let b = w.build("private", "fault:1", &ctx);
    assert!(!b.ok(), "built without the registry: {}", w.explain(&b));
    let log = w.logs(&b.run);
    // Both faults are tried before the messages are judged.
    let mut problems = Vec::new();
    if let Err(e) = one_line_naming(&log, &reg_host, "") {
        problems.push(e);
    }
    w.private.registry.restart(&w.private.topo);
    let b = w.build("private", "fault:2", &ctx);
    assert!(b.ok(), "the registry is back, yet: {}", w.explain(&b));

    // Azurite killed while a RUN waits; the ADD after it cannot fetch.
    let add_url = w
        .private
        .azurite
        .sas_url(&w.private.topo, CONTAINER, "one.txt");
    let fault_ctx = tmp.path().join("fault-context");
    std::fs::create_dir_all(&fault_ctx).unwrap();
    std::fs::write(
        fault_ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo fault-marker-ready && sleep 10\nADD {add_url} /data/blob.txt\n",
            w.private.base
        ),
    )
    .unwrap();
    let mut cmd = Command::new(SLIPWAY);
    w.slipway.cli_env(&mut cmd);
    cmd.args(["build", "--pool", "private", "--no-cache", "-t", "fault:3"])
        .arg(&fault_ctx);
    let mut build = w
        .private
        .topo
        .spawn(Ns::Ci, &cmd, tmp.path().join("fault-build.log"));
    build.wait_for("fault-marker-ready", BUILD_LIMIT);
    w.private.azurite.stop();
    let deadline = Instant::now() + BUILD_LIMIT;
    let status = loop {
        if let Some(st) = build.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the build never ended:\n{}",
            build.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = build.text();
    w.transcripts.push(out.clone());
    assert!(!status.success(), "built without Azurite:\n{out}");
    let run = out
        .split("run ")
        .find_map(|s| s.split_once(" queued on pool "))
        .map(|(id, _)| id.trim().to_owned())
        .unwrap_or_else(|| panic!("no run id in:\n{out}"));
    w.runs.push(run.clone());
    let log = w.logs(&run);
    // The failing instruction is the ADD on line 3.
    if let Err(e) = one_line_naming(&log, &azurite_host, "ADD") {
        problems.push(e);
    }
    w.private.azurite.restart(&w.private.topo);
    let b = w.build("private", "fault:4", fault_ctx.to_str().unwrap());
    assert!(b.ok(), "Azurite is back, yet: {}", w.explain(&b));
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    w.assert_no_secret_anywhere();
}

/// The seed's task (`az acr run` on a dedicated pool): started from `ci`, a
/// `cmd` step fetches a blob from the private storage account with a task
/// secret, `build` starts from the internal registry's base image, `push`
/// puts the result in Slipway's registry, where `ci` pulls it.
#[test]
fn seed_task_runs_from_ci_on_the_private_pool() {
    if !need_root_and_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut w = World::start(tmp.path());
    let ctx = tmp.path().join("task-context");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY fetched.txt /data/fetched.txt\n",
            w.private.base
        ),
    )
    .unwrap();
    let two = w.private.azurite.blob_url(CONTAINER, "two.txt");
    let file = tmp.path().join("acb.yaml");
    std::fs::write(
        &file,
        format!(
            "version: v1.1.0\nsteps:\n  - id: fetch\n    cmd: {base} wget -qO fetched.txt \"{two}?{{{{.Secrets.sas}}}}\"\n  \
             - id: build\n    build: -t $Registry/seed:{{{{.Run.ID}}}} .\n  \
             - id: push\n    push: [\"$Registry/seed:{{{{.Run.ID}}}}\"]\n",
            base = w.private.base
        ),
    )
    .unwrap();
    let out = run_for(
        w.slipway
            .cli(w.topo(), Ns::Ci)
            .args(["run", "--pool", "private", "--set-secret"])
            .arg(format!("sas={}", w.secret_sas))
            .arg("-f")
            .arg(&file)
            .arg(&ctx),
        None,
        BUILD_LIMIT,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    w.transcripts.push(text.clone());
    assert!(out.status.success(), "the seed task failed:\n{text}");
    let run = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("run ")
                .and_then(|r| r.split_once(" queued on pool "))
                .map(|(id, _)| id.to_owned())
        })
        .unwrap();
    w.runs.push(run.clone());
    let show = w.show(&run);
    let pushed = show["steps"][2]["images"][0].as_str().unwrap().to_owned();
    assert!(
        pushed.starts_with(&format!("{}/seed:{run}@sha256:", w.slipway.host())),
        "{show:#}"
    );
    let root = w.pull_into_rootfs(&pushed, "seed");
    assert_eq!(
        std::fs::read(root.join("data/fetched.txt")).unwrap(),
        w.blob_two
    );
    w.assert_no_secret_anywhere();
}

/// The secret parts of an OpenSSH private key as [`World::secrets`] lists
/// them: the whole text, and each base64 line but the first (which is the
/// same for every ed25519 key without a passphrase) and the last.
fn private_key_secrets(key: &str) -> Vec<(String, String)> {
    let body: Vec<&str> = key
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    assert!(
        body.len() >= 3,
        "an OpenSSH private key: {} lines",
        body.len()
    );
    let mut s = vec![("SSH private key".to_owned(), key.trim().to_owned())];
    for (i, line) in body[1..body.len() - 1].iter().enumerate() {
        s.push((
            format!("SSH private key line {}", i + 2),
            (*line).to_owned(),
        ));
    }
    s
}

const SSH_BRANCH: &str = "feature-ssh";

/// Git over SSH with a key and known_hosts, end to end: sshd in `svc`
/// (Debian's OpenSSH, port 2222, key auth only) serves a repository whose
/// Dockerfile also `ADD`s the same repository; from `ci`, a git-ssh
/// credential of pool `private` is stored (the key, and the host key as
/// `ssh-keyscan` saw it from `agent`), `credential list` shows it, and a
/// build with the context `ssh://root@10.202.0.2:2222/…/repo.git#branch`
/// succeeds, the commit and branch recorded. With a wrong known_hosts the
/// next run fails, its log naming the host-key problem on one line. The
/// private key appears in no log, `runs show`, data file or work dir.
#[test]
fn private_pool_builds_from_a_git_context_over_ssh() {
    if !need_root_and_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut w = World::start(tmp.path());
    let ssh_dir = tmp.path().join("ssh");
    let url = SshServer::url_in(&ssh_dir);
    let dockerfile = format!(
        "FROM {base}\nCOPY msg.txt /data/msg.txt\nADD {url}#{SSH_BRANCH} /src\n",
        base = w.private.base
    );
    let ssh = SshServer::start(
        w.topo(),
        &ssh_dir,
        SSH_BRANCH,
        &[
            ("Dockerfile", dockerfile.as_bytes()),
            ("msg.txt", b"from the private git server over ssh\n"),
        ],
    );
    let key_text = ssh.client_key_text();
    w.extra_secrets.extend(private_key_secrets(&key_text));
    let host = ssh.host();
    let explain = |w: &World, b: &Build| format!("{}\nsshd:\n{}", w.explain(b), ssh.server.text());

    // The host key as the agent's network sees it: the server's own key.
    let scanned = ssh.keyscan(w.topo(), Ns::Agent);
    let expected = ssh.known_hosts_line.trim();
    assert!(
        scanned.lines().any(|l| l.trim() == expected),
        "ssh-keyscan from agent saw {scanned:?}, the server's key is {expected:?}"
    );
    // `ci` cannot reach it: only the agent's git can.
    assert!(w.topo().connect(Ns::Ci, SVC_ADDR, SSH_PORT).is_err());
    let known_hosts = tmp.path().join("known_hosts");
    std::fs::write(&known_hosts, &scanned).unwrap();
    let out = w
        .slipway
        .ssh_credential(w.topo(), "add", "private", &ssh, &known_hosts);
    w.transcripts.push(out.clone());
    assert!(
        out.contains(&format!("git-ssh credential for {host} stored")),
        "{out}"
    );
    let list = w.slipway.ok(w.topo(), &["credential", "list", "private"]);
    w.transcripts.push(list.clone());
    let row = list
        .lines()
        .find(|l| l.starts_with("git-ssh"))
        .unwrap_or_else(|| panic!("no git-ssh credential listed:\n{list}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[..3], ["git-ssh", host.as_str(), "root"], "{list}");
    let json = w
        .slipway
        .ok(w.topo(), &["credential", "list", "private", "-o", "json"]);
    w.transcripts.push(json.clone());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "git-ssh" && c["host"] == host.as_str()),
        "{json}"
    );

    // The context over SSH (the agent's fetch) and the ADD of the same
    // repository (the build child's git), both through the stored key.
    let context = format!("{}#{SSH_BRANCH}", ssh.url());
    let b = w.build("private", "ssh:1", &context);
    assert!(b.ok(), "git-over-ssh build failed: {}", explain(&w, &b));
    let reference = World::printed_reference(&b, "ssh:1");
    let root = w.pull_into_rootfs(&reference, "ssh");
    assert_eq!(
        std::fs::read_to_string(root.join("data/msg.txt")).unwrap(),
        "from the private git server over ssh\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("src/msg.txt")).unwrap(),
        "from the private git server over ssh\n",
        "ADD {url}#{SSH_BRANCH}"
    );
    let show = w.show(&b.run);
    assert_eq!(show["revision"]["commit"], ssh.commit.as_str(), "{show:#}");
    assert_eq!(show["revision"]["branch"], SSH_BRANCH, "{show:#}");
    let log = w.logs(&b.run);
    assert!(
        log.contains(&format!("context at commit {}", ssh.commit)),
        "{log}"
    );
    // sshd let the stored key in (the log names the key's type).
    assert!(
        ssh.server.text().contains("Accepted publickey for root"),
        "{}",
        ssh.server.text()
    );

    // A wrong known_hosts (another key for the same host and port): the
    // agent refuses the server, the run fails naming the host-key problem.
    let other = tmp.path().join("impostor_key");
    crate::netns::ssh_keygen(&other, "impostor");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut f = other_pub.split_whitespace();
    let wrong = tmp.path().join("known_hosts.wrong");
    std::fs::write(
        &wrong,
        format!(
            "[{SVC_ADDR}]:{SSH_PORT} {} {}\n",
            f.next().unwrap(),
            f.next().unwrap()
        ),
    )
    .unwrap();
    let out = w
        .slipway
        .ssh_credential(w.topo(), "update", "private", &ssh, &wrong);
    w.transcripts.push(out);
    let b = w.build("private", "ssh:2", &context);
    assert!(
        !b.ok(),
        "a build trusted an unknown host key: {}",
        explain(&w, &b)
    );
    let log = w.logs(&b.run);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("host key verification failed"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one log line says the host key failed:\n{log}\n{}",
        explain(&w, &b)
    );
    assert!(lines[0].contains(&host), "names {host}: {}", lines[0]);
    assert!(
        lines[0].contains("git-ssh credential"),
        "names the credential: {}",
        lines[0]
    );
    assert_says_it_once(lines[0]);
    assert!(
        !log.contains("@@@@"),
        "ssh's banner is not in the log:\n{log}"
    );
    let show = w.show(&b.run);
    assert_ne!(show["state"], "succeeded", "{show:#}");
    assert!(
        show["message"]
            .as_str()
            .is_some_and(|m| m.contains("host key verification failed")),
        "{show:#}"
    );
    w.assert_no_secret_anywhere();
}
