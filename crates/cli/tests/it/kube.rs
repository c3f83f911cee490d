//! Pools as Kubernetes workloads, against a real `kube-apiserver` (built
//! from k8s.io/kubernetes by `scripts/test.sh`) on Debian's etcd, both
//! started here on loopback ports. No controller manager or kubelet runs:
//! the Deployments are API objects whose replicas the server sets, which
//! is what `kubectl scale` changes too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::services::{Service, free_port, wait_port};

use crate::control::{Plane, make_pool, rt};
use crate::harness::{ok, run, tool};

const TOKEN: &str = "slipway-test-admin-token";

struct Cluster {
    _etcd: Service,
    _apiserver: Service,
    url: String,
    ca: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let (client, peer) = (free_port(), free_port());
        let etcd = Service {
            child: Command::new(tool("etcd"))
                .args(["--name", "default", "--data-dir"])
                .arg(dir.join("etcd"))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &format!("default=http://127.0.0.1:{peer}"),
                ])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
                .spawn()
                .unwrap(),
            port: client,
        };
        wait_port(client, "etcd");
        let key = dir.join("sa.key");
        ok(Command::new(tool("openssl"))
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048"));
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{TOKEN},admin,admin,system:masters\n"),
        )
        .unwrap();
        let port = free_port();
        let apiserver = Service {
            child: Command::new(tool("kube-apiserver"))
                .args([
                    &format!("--etcd-servers=http://127.0.0.1:{client}"),
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    // Its own endpoints would be a loopback address, which
                    // the reconciler refuses; nothing here needs them.
                    "--endpoint-reconciler-type=none",
                    &format!("--secure-port={port}"),
                    &format!("--cert-dir={}", dir.join("certs").display()),
                    &format!("--token-auth-file={}", dir.join("tokens.csv").display()),
                    "--authorization-mode=RBAC",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    &format!("--service-account-key-file={}", key.display()),
                    &format!("--service-account-signing-key-file={}", key.display()),
                ])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("apiserver.log")).unwrap())
                .spawn()
                .unwrap(),
            port,
        };
        let mut c = Cluster {
            _etcd: etcd,
            _apiserver: apiserver,
            url: format!("https://127.0.0.1:{port}"),
            ca: dir.join("certs/apiserver.crt"),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = run(&mut c.curl(&["/readyz"]));
            if out.status.success() && out.stdout == b"ok" {
                break;
            }
            let exited = c._apiserver.child.try_wait().ok().flatten().is_some();
            assert!(
                Instant::now() < deadline && !exited,
                "kube-apiserver never ready: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                std::fs::read_to_string(dir.join("apiserver.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        c
    }

    /// curl against the API: `[path, extra args…]`.
    fn curl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(tool("curl"));
        c.args(["-sS", "--cacert"])
            .arg(&self.ca)
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .arg(format!("{}{}", self.url, args[0]))
            .args(&args[1..]);
        c
    }

    fn send(&self, method: &str, path: &str, content_type: &str, body: &serde_json::Value) {
        let out = ok(&mut self.curl(&[
            path,
            "--fail-with-body",
            "-X",
            method,
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data-binary",
            &body.to_string(),
        ]));
        assert!(!out.is_empty(), "{method} {path}: no answer");
    }

    fn replicas(&self, deployment: &str) -> i64 {
        let out = ok(&mut self.curl(&[&format!(
            "/apis/apps/v1/namespaces/pools/deployments/{deployment}"
        )]));
        let d: serde_json::Value = serde_json::from_str(&out).unwrap();
        d["spec"]["replicas"].as_i64().unwrap()
    }

    fn wait_replicas(&self, deployment: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let have = self.replicas(deployment);
            if have == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{deployment} stayed at {have} replicas, not {want}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kubeconfig(&self, path: &Path, token: &str) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
                 users:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n    namespace: pools\n\
                 current-context: test\n",
                self.url,
                self.ca.display()
            ),
        )
        .unwrap();
    }
}

fn deployment(name: &str, pool: &str, replicas: i64) -> serde_json::Value {
    let labels = serde_json::json!({ "slipway.dev/pool": pool, "app": name });
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": { "containers": [{ "name": "agent", "image": "slipway:test" }] }
            }
        }
    })
}

/// A pool's `count` sets its agent Deployment's replicas: at creation, on
/// every update, and back after a `kubectl scale` by hand; a Deployment
/// of a pool the server does not know is left alone. A kubeconfig whose
/// token the API refuses, or whose server is down, stops the server at
/// start with one line naming it.
#[test]
fn pool_counts_scale_their_agent_deployments() {
    if !crate::control::need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path());
    cluster.send(
        "POST",
        "/api/v1/namespaces",
        "application/json",
        &serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "pools"}}),
    );
    for (name, pool, n) in [("agent-private", "private", 1), ("agent-other", "other", 2)] {
        cluster.send(
            "POST",
            "/apis/apps/v1/namespaces/pools/deployments",
            "application/json",
            &deployment(name, pool, n),
        );
    }

    let kubeconfig = tmp.path().join("kubeconfig");
    cluster.kubeconfig(&kubeconfig, TOKEN);
    let kc = kubeconfig.to_str().unwrap();
    let plane_dir = tmp.path().join("plane");
    std::fs::create_dir_all(&plane_dir).unwrap();
    let plane = Plane::start(&plane_dir, &["--kubeconfig", kc, "--kube-resync", "1s"]);
    plane
        .server
        .as_ref()
        .unwrap()
        .wait_for("agent Deployments in namespace pools follow their count");
    let rt = rt();
    let c = plane.client();
    rt.block_on(make_pool(&c, "private", 3));
    cluster.wait_replicas("agent-private", 3);
    rt.block_on(c.update_pool(
        "private",
        &api::PoolUpdate {
            count: Some(0),
            ..Default::default()
        },
    ))
    .unwrap();
    cluster.wait_replicas("agent-private", 0);
    // `kubectl scale deployment agent-private --replicas 5`: undone.
    cluster.send(
        "PATCH",
        "/apis/apps/v1/namespaces/pools/deployments/agent-private/scale",
        "application/merge-patch+json",
        &serde_json::json!({"spec": {"replicas": 5}}),
    );
    assert_eq!(cluster.replicas("agent-private"), 5);
    cluster.wait_replicas("agent-private", 0);
    assert_eq!(
        cluster.replicas("agent-other"),
        2,
        "another pool's Deployment changed"
    );

    // Refused at start: a token the API does not know; a server that is down.
    let bad = tmp.path().join("bad-kubeconfig");
    cluster.kubeconfig(&bad, "not-a-token");
    let refused = |kubeconfig: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(tmp.path().join("refused"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .output()
            .unwrap();
        assert!(!out.status.success(), "the server started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&bad);
    assert!(err.contains("--kubeconfig") && err.contains("401"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let down = tmp.path().join("down-kubeconfig");
    std::fs::write(
        &down,
        std::fs::read_to_string(&kubeconfig)
            .unwrap()
            .replace(&cluster.url, &format!("https://127.0.0.1:{}", free_port())),
    )
    .unwrap();
    let err = refused(&down);
    assert!(err.contains("--kubeconfig"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
