//! `deploy/kubernetes`: the base and every pool overlay render with
//! kustomize, pass kubernetes-validate (strict: unknown fields fail) against
//! a pinned Kubernetes version, and say what a deployment needs: the agents'
//! `agent check` init container, their egress policy, the pool's name
//! wherever the pool shows. Both tools are installed by scripts/test.sh
//! (kustomize built from its Go module, kubernetes-validate in a venv); a
//! missing tool fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::harness::{ok, run, tool};

/// The Kubernetes release the manifests are checked against (one that the
/// pinned kubernetes-validate ships schemas for).
const KUBERNETES_VERSION: &str = "1.33.0";

/// Every pool overlay under deploy/kubernetes/overlays.
const OVERLAYS: &[&str] = &["private", "default"];

const SERVER_URL: &str = "http://slipway.slipway.svc:5000";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// kubernetes-validate: `SLIPWAY_K8S_VALIDATE` (exported by scripts/test.sh),
/// else the suite's venv in the default cache, else `PATH`.
fn validator() -> PathBuf {
    if let Some(p) = std::env::var_os("SLIPWAY_K8S_VALIDATE") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SLIPWAY_K8S_VALIDATE={} does not exist: run ./scripts/test.sh, which installs it",
            p.display()
        );
        return p;
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cache/slipway-test/venv/bin/kubernetes-validate");
        if p.is_file() {
            return p;
        }
    }
    tool("kubernetes-validate")
}

/// The Python that runs kubernetes-validate (its script's `#!` line): it has
/// PyYAML, which the validator depends on, to turn the render into JSON.
fn python_of(validator: &Path) -> PathBuf {
    let script = std::fs::read_to_string(validator).unwrap();
    let shebang = script.lines().next().unwrap_or_default();
    let interp = shebang
        .strip_prefix("#!")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("{} has no #! line: {shebang:?}", validator.display()));
    PathBuf::from(interp)
}

fn kustomize_build(dir: &Path) -> String {
    ok(Command::new(tool("kustomize")).arg("build").arg(dir))
}

/// Validate a multi-document YAML render; the output, whatever its status.
fn validate(yaml: &str, tmp: &Path) -> Output {
    let file = tmp.join("render.yaml");
    std::fs::write(&file, yaml).unwrap();
    run(Command::new(validator())
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(file))
}

/// The render as JSON values, one per document.
fn documents(yaml: &str, tmp: &Path) -> Vec<Value> {
    let file = tmp.join("render-for-json.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(python_of(&validator()))
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]\n\
             json.dump(docs, sys.stdout)",
        ])
        .stdin(Stdio::from(std::fs::File::open(file).unwrap()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "YAML to JSON failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = docs
                .iter()
                .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name:?} in the render; it has {have:?}")
        })
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("no container list: {list}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name:?} in {list}"))
}

fn env_secret<'a>(c: &'a Value, var: &str) -> &'a Value {
    let e = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == var)
        .unwrap_or_else(|| panic!("{} has no env {var}", c["name"]));
    &e["valueFrom"]["secretKeyRef"]
}

/// Every label of `selector` is on `labels` with the same value.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Copy a directory tree (the manifests are small).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The checks of one pool overlay's render.
fn check_pool(pool: &str, docs: &[Value]) {
    let deploy = find(docs, "Deployment", &format!("agent-{pool}"));
    assert_eq!(deploy["metadata"]["namespace"], "slipway-agents");
    let spec = &deploy["spec"]["template"]["spec"];
    let selector = &deploy["spec"]["selector"]["matchLabels"];
    assert_eq!(selector["slipway.dev/pool"], pool, "{selector}");
    assert!(
        selects(selector, &deploy["spec"]["template"]["metadata"]["labels"]),
        "the Deployment's selector does not match its pods"
    );

    // The init container checks the pool's dependencies before the agent runs.
    let check = container(&spec["initContainers"], "check");
    let check_args = strs(&check["args"]);
    assert_eq!(check_args[..2], ["agent", "check"], "{check_args:?}");
    assert!(
        check_args.contains(&format!("--pool={pool}").as_str()),
        "{check_args:?}"
    );
    assert!(
        check_args.contains(&format!("--server={SERVER_URL}").as_str()),
        "{check_args:?}"
    );
    let reach: Vec<&str> = check_args
        .iter()
        .filter_map(|a| a.strip_prefix("--reach="))
        .collect();
    assert!(
        !reach.is_empty(),
        "{pool}: agent check reaches no dependency: {check_args:?}"
    );

    let agent = container(&spec["containers"], "agent");
    let agent_args = strs(&agent["args"]);
    assert_eq!(agent_args[0], "agent");
    assert!(!agent_args.contains(&"check"), "{agent_args:?}");
    assert!(
        agent_args.contains(&format!("--pool={pool}").as_str()),
        "{agent_args:?}"
    );
    assert!(
        agent_args.contains(&format!("--server={SERVER_URL}").as_str()),
        "{agent_args:?}"
    );
    // The sandbox creates namespaces and mounts overlayfs and /proc.
    for c in [check, agent] {
        assert_eq!(c["securityContext"]["privileged"], true, "{}", c["name"]);
        let token = env_secret(c, "SLIPWAY_TOKEN");
        assert_eq!(
            token["name"],
            format!("slipway-agent-{pool}"),
            "{}",
            c["name"]
        );
        assert_eq!(token["key"], "token");
    }
    // Tier S1: 2 CPUs, 3 GiB for the RUN steps.
    assert_eq!(agent["resources"]["limits"]["cpu"], "2");
    assert_eq!(agent["resources"]["requests"]["memory"], "3Gi");

    // The pool's firewall: selects exactly these agents, opens DNS, the
    // server and the pool's dependencies, each rule to a destination and port.
    let policy = find(docs, "NetworkPolicy", &format!("agent-egress-{pool}"));
    assert_eq!(policy["metadata"]["namespace"], "slipway-agents");
    assert_eq!(&policy["spec"]["podSelector"]["matchLabels"], selector);
    assert!(strs(&policy["spec"]["policyTypes"]).contains(&"Egress"));
    let egress = policy["spec"]["egress"].as_array().unwrap();
    for rule in egress {
        assert!(
            rule["to"].as_array().is_some_and(|t| !t.is_empty())
                && rule["ports"].as_array().is_some_and(|p| !p.is_empty()),
            "{pool}: an egress rule open to every destination or port: {rule}"
        );
    }
    let to = |rule: &Value| rule["to"].as_array().unwrap().clone();
    let ports = |rule: &Value| -> Vec<i64> {
        rule["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_i64().unwrap())
            .collect()
    };
    assert!(
        egress.iter().any(|r| ports(r).contains(&53)
            && to(r)
                .iter()
                .any(|t| t["podSelector"]["matchLabels"]["k8s-app"] == "kube-dns")),
        "{pool}: no DNS rule"
    );
    // Exactly the server's own labels: kustomize must not have added the
    // pool's label to the peer selector.
    assert!(
        egress.iter().any(|r| ports(r) == [5000]
            && to(r).iter().any(|t| t["podSelector"]["matchLabels"]
                == serde_json::json!({"app.kubernetes.io/name": "slipway-server"})
                && t["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    == "slipway")),
        "{pool}: no rule to the server"
    );
    let blocks: Vec<Value> = egress
        .iter()
        .flat_map(to)
        .filter(|t| t.get("ipBlock").is_some())
        .collect();
    assert!(
        !blocks.is_empty(),
        "{pool}: no egress to the pool's dependencies"
    );

    // The CI pod builds on this pool and is one the CI egress policy selects.
    let ci = find(docs, "Pod", &format!("ci-build-{pool}"));
    assert_eq!(ci["metadata"]["namespace"], "ci");
    assert_eq!(
        ci["metadata"]["labels"]["app.kubernetes.io/name"],
        "slipway-ci"
    );
    let build = container(&ci["spec"]["containers"], "build");
    assert_eq!(build["command"], serde_json::json!(["slipway"]));
    let build_args = strs(&build["args"]);
    assert_eq!(build_args[0], "build");
    assert!(
        build_args.contains(&format!("--pool={pool}").as_str()),
        "{build_args:?}"
    );
    let server_env = build["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SLIPWAY_SERVER")
        .unwrap();
    assert_eq!(server_env["value"], SERVER_URL);
    assert_eq!(env_secret(build, "SLIPWAY_TOKEN")["name"], "slipway-ci");

    match pool {
        "private" => {
            // The private network's CA, from a generated ConfigMap.
            for c in [check, agent] {
                assert!(
                    strs(&c["args"]).contains(&"--ca-cert=/etc/slipway/ca/ca.crt"),
                    "{}",
                    c["name"]
                );
                assert!(
                    c["volumeMounts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|m| m["mountPath"] == "/etc/slipway/ca" && m["name"] == "ca"),
                    "{}",
                    c["name"]
                );
            }
            let vol = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "ca")
                .unwrap();
            let cm_name = vol["configMap"]["name"].as_str().unwrap();
            assert!(cm_name.starts_with("slipway-ca-private-"), "{cm_name}");
            let cm = find(docs, "ConfigMap", cm_name);
            assert_eq!(cm["metadata"]["namespace"], "slipway-agents");
            assert!(cm["data"]["ca.crt"].is_string());
            assert!(
                reach.len() >= 3,
                "registry, blob storage and git: {reach:?}"
            );
        }
        "default" => {
            // A public pool: no private CA, and the private ranges stay shut.
            assert!(!agent_args.iter().any(|a| a.starts_with("--ca-cert")));
            for b in &blocks {
                let except = strs(&b["ipBlock"]["except"]);
                assert!(except.contains(&"10.0.0.0/8"), "{b}");
            }
        }
        _ => {}
    }
}

#[test]
fn kustomize_overlays_render_and_validate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = deploy_dir();

    // The shared install: server, namespaces, the CI pods' egress policy.
    let base = kustomize_build(&dir.join("base"));
    let out = validate(&base, tmp.path());
    assert!(
        out.status.success(),
        "deploy/kubernetes/base does not validate"
    );
    let docs = documents(&base, tmp.path());
    let sts = find(&docs, "StatefulSet", "slipway-server");
    let server = container(&sts["spec"]["template"]["spec"]["containers"], "server");
    let server_args = strs(&server["args"]);
    assert_eq!(server_args[0], "server");
    let public_url = format!("--public-url={SERVER_URL}");
    for a in ["--data=/data", "--listen=0.0.0.0:5000", public_url.as_str()] {
        assert!(
            server_args.contains(&a),
            "server lacks {a}: {server_args:?}"
        );
    }
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    let svc = find(&docs, "Service", "slipway");
    assert_eq!(svc["metadata"]["namespace"], "slipway");
    assert_eq!(svc["spec"]["ports"][0]["port"], 5000);
    assert!(selects(
        &svc["spec"]["selector"],
        &sts["spec"]["template"]["metadata"]["labels"]
    ));
    let ci_policy = find(&docs, "NetworkPolicy", "slipway-ci-egress");
    assert_eq!(ci_policy["metadata"]["namespace"], "ci");
    assert!(strs(&ci_policy["spec"]["policyTypes"]).contains(&"Egress"));
    let ci_egress = ci_policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(
        ci_egress.len(),
        2,
        "CI reaches DNS and the server only: {ci_egress:?}"
    );
    assert!(
        !ci_policy["spec"]["egress"].to_string().contains("ipBlock"),
        "CI must reach no address block"
    );

    for pool in OVERLAYS {
        let render = kustomize_build(&dir.join("overlays").join(pool));
        let out = validate(&render, tmp.path());
        assert!(out.status.success(), "overlay {pool} does not validate");
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            report.contains(&format!("passed for resource deployment/agent-{pool}")),
            "the validator did not check the Deployment: {report}"
        );
        assert!(
            !render.contains("POOL"),
            "{pool}: a POOL placeholder is left:\n{render}"
        );
        let docs = documents(&render, tmp.path());
        // The pool's name ConfigMap is local to kustomize.
        assert!(!render.contains("slipway-pool"), "{render}");
        check_pool(pool, &docs);
    }

    // Pools compose: the base and every overlay in one kustomization render
    // without a name clash, and validate.
    let copy = tmp.path().join("kubernetes");
    copy_tree(&dir, &copy);
    let all = copy.join("all");
    std::fs::create_dir(&all).unwrap();
    let mut resources = String::from("resources:\n  - ../base\n");
    for pool in OVERLAYS {
        resources += &format!("  - ../overlays/{pool}\n");
    }
    std::fs::write(all.join("kustomization.yaml"), resources).unwrap();
    let render = kustomize_build(&all);
    assert!(validate(&render, tmp.path()).status.success());
    let docs = documents(&render, tmp.path());
    for pool in OVERLAYS {
        check_pool(pool, &docs);
    }

    broken_manifests_are_rejected(tmp.path());
}

/// The validator really runs: a manifest with a misspelt field or a value of
/// the wrong type renders, and is rejected.
fn broken_manifests_are_rejected(tmp: &Path) {
    let cases = [
        (
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSecond: 30",
            "terminationGracePeriodSecond",
        ),
        ("hostUsers: false", "hostUsers: nope", "nope"),
    ];
    for (i, (good, bad, named)) in cases.into_iter().enumerate() {
        let copy = tmp.join(format!("broken{i}"));
        copy_tree(&deploy_dir(), &copy);
        let agent = copy.join("base/pool/agent.yaml");
        let text = std::fs::read_to_string(&agent).unwrap();
        // The field's own line, not a comment that mentions it.
        let mut found = false;
        let broken: String = text
            .lines()
            .map(|line| {
                let line = if !found && line.trim() == good {
                    found = true;
                    line.replacen(good, bad, 1)
                } else {
                    line.to_owned()
                };
                line + "\n"
            })
            .collect();
        assert!(found, "agent.yaml has no line {good:?}");
        std::fs::write(agent, broken).unwrap();
        let render = kustomize_build(&copy.join("overlays/private"));
        assert!(render.contains(bad), "{render}");
        let out = validate(&render, tmp);
        assert!(
            !out.status.success(),
            "kubernetes-validate accepted {bad:?}"
        );
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            report.contains("deployment/agent-private") && report.contains(named),
            "the rejection does not name the Deployment and {named:?}: {report}"
        );
    }
}

/// The replicas overlay: the server as three replicas on PostgreSQL and
/// Azure Blob Storage, sharing one secret key, renders and validates.
#[test]
fn the_replicas_overlay_points_the_server_at_shared_state() {
    let tmp = tempfile::tempdir().unwrap();
    let render = kustomize_build(&deploy_dir().join("overlays/replicas"));
    let out = validate(&render, tmp.path());
    assert!(out.status.success(), "overlays/replicas does not validate");
    let docs = documents(&render, tmp.path());
    let sts = find(&docs, "StatefulSet", "slipway-server");
    assert_eq!(sts["spec"]["replicas"], 3);
    let spec = &sts["spec"]["template"]["spec"];
    let server = container(&spec["containers"], "server");
    assert_eq!(env_secret(server, "SLIPWAY_DATABASE")["name"], "slipway-db");
    assert_eq!(
        env_secret(server, "AZURE_STORAGE_ACCOUNT_KEY")["name"],
        "slipway-azure"
    );
    let env = server["env"].as_array().unwrap();
    let value = |var: &str| {
        env.iter()
            .find(|e| e["name"] == var)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(value("SLIPWAY_BLOB_STORE").starts_with("azure://"));
    assert_eq!(value("SLIPWAY_SECRET_KEY_FILE"), "/secrets/key");
    assert!(
        server["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/secrets" && m["name"] == "secret-key")
    );
    assert_eq!(
        spec["volumes"][0]["secret"]["secretName"],
        "slipway-secret-key"
    );
}
