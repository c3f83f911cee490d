//! The real back ends the suite runs the server on, each started by the
//! test that needs it in its own temp dir on a loopback port, and stopped
//! when dropped: PostgreSQL (Debian's `postgresql`), Azurite (npm) and
//! moto's S3 server (PyPI), as `scripts/test.sh` installs them.
//!
//! [`Backend::from_env`] is the suite's matrix: `SLIPWAY_TEST_BACKEND`
//! (`pg-azurite`, `pg-s3`, or unset for SQLite + files) decides what the
//! registry's and the control plane's tests run on.

// Test support only: a service that cannot start fails the test that
// asked for it, with what went wrong.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::run as ok;

/// Azurite's well-known development account and key.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().map(|a| a.port()).unwrap_or(0)
}

pub fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `scripts/test.sh`'s cache directory.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLIPWAY_CACHE") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    base.join("slipway-test")
}

/// Azurite's blob service: `SLIPWAY_AZURITE` (the script, or the bin
/// directory holding it) as scripts/test.sh exports it, else where
/// test.sh installs it.
pub fn azurite_bin() -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os("SLIPWAY_AZURITE") {
        Some(p) => {
            let p = PathBuf::from(p);
            vec![p.join("azurite-blob"), p]
        }
        None => vec![cache_dir().join("npm/node_modules/.bin/azurite-blob")],
    };
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "Azurite is not installed (SLIPWAY_AZURITE={:?}): run ./scripts/test.sh, which installs it from npm",
                std::env::var_os("SLIPWAY_AZURITE")
            )
        })
}

/// The suite's venv Python, with azure-storage-blob (and moto's server).
pub fn venv_python() -> PathBuf {
    let py = cache_dir().join("venv/bin/python3");
    let ok = py.is_file()
        && Command::new(&py)
            .args(["-c", "import azure.storage.blob"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} with azure-storage-blob is missing: run ./scripts/test.sh, which installs it",
        py.display()
    );
    py
}

/// A child process killed on drop.
pub struct Service {
    pub child: Child,
    pub port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Azurite's blob service on `port`, keeping its data under `dir`.
pub fn azurite_on(dir: &Path, port: u16) -> Service {
    let child = Command::new(azurite_bin())
        .args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--location",
        ])
        .arg(dir)
        .args([
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableTelemetry",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting azurite");
    let s = Service { child, port };
    wait_port(port, "azurite");
    s
}

pub fn azurite(dir: &Path) -> Service {
    azurite_on(dir, free_port())
}

/// Create blob container `name` in the Azurite on `port`.
pub fn create_container(port: u16, name: &str) {
    let endpoint = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}");
    ok(Command::new(venv_python()).args([
        "-c",
        "import sys; from azure.storage.blob import BlobServiceClient as S; \
         S(account_url=sys.argv[1], credential={'account_name': sys.argv[2], 'account_key': sys.argv[3]}).create_container(sys.argv[4])",
        &endpoint,
        AZURITE_ACCOUNT,
        AZURITE_KEY,
        name,
    ]));
}

/// moto's S3 server on a free port.
pub fn moto() -> Service {
    let port = free_port();
    let server = venv_python().with_file_name("moto_server");
    assert!(
        server.is_file(),
        "{} is missing: run ./scripts/test.sh, which installs moto[server] from PyPI",
        server.display()
    );
    let child = Command::new(server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let s = Service { child, port };
    wait_port(port, "moto");
    s
}

/// `PUT /BUCKET`: moto takes unsigned requests.
pub fn create_bucket(port: u16, bucket: &str) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connecting to moto");
    write!(
        c,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("writing to moto");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "creating bucket {bucket}: {out}"
    );
}

/// `--blob-store` and its options for container `container` of the
/// Azurite on `port` (the endpoint given as an option, not through the
/// environment, so a test may open it in its own process too).
pub fn azure_args(port: u16, container: &str) -> Vec<String> {
    let mut a = vec![
        "--blob-store".to_owned(),
        format!("azure://{AZURITE_ACCOUNT}/{container}/slipway"),
    ];
    for o in [
        format!("endpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
        "allow_http=true".to_owned(),
        format!("account_key={AZURITE_KEY}"),
    ] {
        a.push("--blob-store-option".into());
        a.push(o);
    }
    a
}

/// `--blob-store` and its options for bucket `bucket` of the moto on `port`.
pub fn s3_args(port: u16, bucket: &str) -> Vec<String> {
    let mut a = vec!["--blob-store".to_owned(), format!("s3://{bucket}/slipway")];
    for o in [
        format!("endpoint=http://127.0.0.1:{port}"),
        "allow_http=true".into(),
        "region=us-east-1".into(),
        "access_key_id=test".into(),
        "secret_access_key=test".into(),
    ] {
        a.push("--blob-store-option".into());
        a.push(o);
    }
    a
}

/// A PostgreSQL cluster of Debian's `postgresql` package in a temp dir,
/// owned by the `postgres` user, on a loopback port; stopped on drop.
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl Postgres {
    pub fn start(dir: &Path) -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian's postgresql is not installed: run ./scripts/test.sh")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").is_file())
            .expect("no /usr/lib/postgresql/*/bin/initdb");
        let pg = dir.join("pg");
        std::fs::create_dir_all(&pg).expect("creating the cluster's dir");
        ok(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&pg)
            .arg(dir));
        let as_pg = |prog: &str| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(prog));
            c
        };
        // fsync off: a test's cluster dies with the test.
        ok(as_pg("initdb")
            .args(["--auth=trust", "--no-sync", "-U", "postgres", "-D"])
            .arg(pg.join("data")));
        let port = free_port();
        ok(as_pg("pg_ctl")
            .arg("-D")
            .arg(pg.join("data"))
            .arg("-l")
            .arg(pg.join("log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {port} -h 127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off",
                pg.display()
            ))
            .arg("start"));
        ok(Command::new(bin.join("psql")).args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &port.to_string(),
            "-c",
            "CREATE DATABASE slipway",
        ]));
        Postgres { bin, dir: pg, port }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/slipway", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// What the registry's and the control plane's tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite and the filesystem: `slipway up`'s default.
    Local,
    /// PostgreSQL and Azure Blob Storage (Azurite).
    PgAzurite,
    /// PostgreSQL and S3 (moto).
    PgS3,
}

impl Backend {
    /// `SLIPWAY_TEST_BACKEND`; an unknown value fails loudly rather than
    /// running the local back end under another name.
    pub fn from_env() -> Backend {
        match std::env::var("SLIPWAY_TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("local") => Backend::Local,
            Ok("pg-azurite") => Backend::PgAzurite,
            Ok("pg-s3") => Backend::PgS3,
            Ok(other) => {
                panic!("SLIPWAY_TEST_BACKEND={other}: expected local, pg-azurite or pg-s3")
            }
        }
    }
}

/// The services of a back end, running under `dir` until dropped, and the
/// `slipway server` arguments that put a server on them.
pub struct Running {
    pub postgres: Option<Postgres>,
    pub store: Option<Service>,
    /// `--database …` (when PostgreSQL).
    pub database_args: Vec<String>,
    /// `--blob-store … --blob-store-option …` (when object storage).
    pub blob_store_args: Vec<String>,
}

impl Running {
    /// PostgreSQL and the blob store of `backend`.
    pub fn start(backend: Backend, dir: &Path) -> Running {
        Self::start_parts(backend, dir, true)
    }

    /// Only the blob store of `backend` (the registry alone needs no database).
    pub fn start_store(backend: Backend, dir: &Path) -> Running {
        Self::start_parts(backend, dir, false)
    }

    fn start_parts(backend: Backend, dir: &Path, database: bool) -> Running {
        let mut r = Running {
            postgres: None,
            store: None,
            database_args: Vec::new(),
            blob_store_args: Vec::new(),
        };
        if backend == Backend::Local {
            return r;
        }
        if database {
            let pg = Postgres::start(dir);
            r.database_args = vec!["--database".into(), pg.url()];
            r.postgres = Some(pg);
        }
        match backend {
            Backend::PgAzurite => {
                let az_dir = dir.join("azurite");
                std::fs::create_dir_all(&az_dir).expect("creating azurite's dir");
                let az = azurite(&az_dir);
                create_container(az.port, "slipway");
                r.blob_store_args = azure_args(az.port, "slipway");
                r.store = Some(az);
            }
            Backend::PgS3 => {
                let s3 = moto();
                create_bucket(s3.port, "slipway");
                r.blob_store_args = s3_args(s3.port, "slipway");
                r.store = Some(s3);
            }
            Backend::Local => {}
        }
        r
    }

    /// The `--blob-store` URL and its options, split as
    /// `store::Location::parse` takes them.
    pub fn blob_store(&self) -> Option<(String, Vec<String>)> {
        let mut it = self.blob_store_args.iter();
        let mut url = None;
        let mut opts = Vec::new();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--blob-store" => url = it.next().cloned(),
                "--blob-store-option" => opts.extend(it.next().cloned()),
                _ => {}
            }
        }
        url.map(|u| (u, opts))
    }
}
