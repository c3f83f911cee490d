//! Task runs end to end with real processes: `slipway task create/run` and
//! `slipway run` against a `slipway server` with a real agent; the image a
//! task pushed is run back with `slipway image run`; the run record's step
//! timings show parallel branches overlapping.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use crate::control::{Plane, need_root};
use crate::harness::ok;

/// Serve `body` for any GET on a loopback port, until the test ends.
fn serve_file(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(50) {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A plane with pool `tasks` and one agent, and busybox as a base image.
fn plane(dir: &Path) -> (Plane, String) {
    let mut plane = Plane::start(dir, &[]);
    ok(plane.cli().args(["pool", "create", "tasks"]));
    let token = ok(plane.cli().args(["pool", "token", "tasks"]))
        .trim()
        .to_owned();
    plane.start_agent("tasks", &token, "t1");
    let base = plane.import_busybox();
    (plane, base)
}

fn run_json(plane: &Plane, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(plane.cli().args(["runs", "show", id, "-o", "json"]))).unwrap()
}

/// The run id the CLI printed as `run ID queued`.
fn run_id(out: &str) -> String {
    out.lines()
        .find_map(|l| {
            l.strip_prefix("run ")
                .filter(|r| r.contains(" queued on pool "))
                .and_then(|r| r.split_whitespace().next())
        })
        .unwrap()
        .to_owned()
}

#[test]
fn task_fetches_builds_and_pushes_two_tags() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (plane, base) = plane(tmp.path());
    let port = serve_file("artifact-from-the-private-network\n");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nCOPY artifact.txt /data/artifact.txt\n"),
    )
    .unwrap();
    let file = tmp.path().join("acb.yaml");
    std::fs::write(
        &file,
        format!(
            "version: v1.1.0\nsteps:\n  - id: fetch\n    cmd: {base} busybox wget -O artifact.txt http://127.0.0.1:{port}/a\n  \
             - id: build\n    build: -t $Registry/demo:{{{{.Run.ID}}}} -t $Registry/demo:{{{{.Values.channel}}}} .\n  \
             - id: push\n    push:\n      - $Registry/demo:{{{{.Run.ID}}}}\n      - $Registry/demo:{{{{.Values.channel}}}}\n"
        ),
    )
    .unwrap();
    // The file is checked at create: a missing value is refused with its line.
    let bad = plane
        .cli()
        .args(["task", "create", "demo", "--pool", "tasks", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success(), "{}", text(&bad));
    assert!(
        text(&bad).contains("acb.yaml:") && text(&bad).contains("channel"),
        "{}",
        text(&bad)
    );
    ok(plane
        .cli()
        .args([
            "task",
            "create",
            "demo",
            "--pool",
            "tasks",
            "--set",
            "channel=stable",
            "-f",
        ])
        .arg(&file));
    let out = plane
        .cli()
        .args(["task", "run", "demo", "-c"])
        .arg(&ctx)
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for line in [
        "[fetch] ",
        "step fetch succeeded",
        "step build succeeded",
        "pushed ",
    ] {
        assert!(log.contains(line), "no {line:?} in:\n{log}");
    }
    let id = run_id(&log);
    let run = run_json(&plane, &id);
    let steps = run["steps"].as_array().unwrap();
    let states: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("fetch", "succeeded"),
            ("build", "succeeded"),
            ("push", "succeeded")
        ]
    );
    let pushed = steps[2]["images"].as_array().unwrap();
    assert_eq!(pushed.len(), 2, "{run}");
    // Both tags hold the image, with the fetched file in it.
    for tag in [
        format!("{}/demo:{id}", plane.host()),
        format!("{}/demo:stable", plane.host()),
    ] {
        let got = ok(plane
            .cli()
            .args(["image", "run", "--data"])
            .arg(tmp.path().join("run-data"))
            .arg(&tag)
            .args(["cat", "/data/artifact.txt"]));
        assert_eq!(got, "artifact-from-the-private-network\n", "{tag}");
    }
    let listed = ok(plane.cli().args(["task", "list-runs", "demo"]));
    assert!(
        listed.contains(&id) && listed.contains("succeeded"),
        "{listed}"
    );
}

#[test]
fn task_graph_runs_parallel_branches_detached_steps_and_step_rules() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (plane, base) = plane(tmp.path());
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello-from-web\n").unwrap();
    let port = free_port();
    let file = tmp.path().join("graph.yaml");
    std::fs::write(
        &file,
        format!(
            r#"version: v1.1.0
stepTimeout: 60
volumes:
  - name: cfg
    secret:
      app.conf: dm9sdW1lLWZpbGUtY29udGVudA==
steps:
  - id: a
    cmd: {base} sh -c 'sleep 2; echo a-done'
    when: ["-"]
  - id: b
    cmd: {base} sh -c 'sleep 2; echo b-done'
    when: ["-"]
  - id: web
    cmd: {base} busybox httpd -f -p 127.0.0.1:{port} -h /workspace
    detach: true
    when: ["-"]
  - id: flaky
    cmd: {base} sh -c 'if [ -e flag ]; then echo second-try-ok; else touch flag; exit 3; fi'
    retries: 1
    retryDelay: 1
    when: [a, b]
  - id: slow
    cmd: {base} sleep 30
    timeout: 2
    ignoreErrors: true
    when: [flaky]
  - id: count
    cmd: {base} sh -c 'echo x >> count.txt'
    repeat: 2
    when: [slow]
  - id: probe
    cmd: {base} sh -c 'echo lines=$(cat count.txt | wc -l); busybox wget -qO- http://127.0.0.1:{port}/hello.txt; grep -q "web" /etc/hosts && echo web-known; echo secret={{{{.Secrets.token}}}}'
    when: [count, web]
  - id: vol
    cmd: {base} cat /etc/cfg/app.conf
    volumeMounts:
      - name: cfg
        mountPath: /etc/cfg
    when: ["-"]
  - id: identity
    cmd: >-
      {base} sh -c '[ "$(cat /run/secrets/slipway-token)" = "$SLIPWAY_RUN_TOKEN" ] && busybox wget -qO- --header "Authorization: Basic $(printf slipway-run:%s "$SLIPWAY_RUN_TOKEN" | busybox base64 -w0)" http://$SLIPWAY_REGISTRY/v2/ && echo " identity-ok $SLIPWAY_RUN_TOKEN"'
    when: [probe]
"#
        ),
    )
    .unwrap();
    let secret = "task-secret-value-7Q";
    let out = plane
        .cli()
        .args(["run", "--pool", "tasks", "--set-secret"])
        .arg(format!("token={secret}"))
        .arg("-f")
        .arg(&file)
        .arg(&ctx)
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for want in [
        "second-try-ok",
        "retry 1 of 1",
        "step slow failed; ignoreErrors",
        "lines=3",
        "hello-from-web",
        "web-known",
        "secret=***",
        "identity-ok ***",
        "[vol] volume-file-content",
        "step web: detached, stopped at the end of the task",
    ] {
        assert!(log.contains(want), "no {want:?} in:\n{log}");
    }
    assert!(
        !log.contains(secret),
        "the secret leaked into the log:\n{log}"
    );
    let id = run_id(&log);
    let run = run_json(&plane, &id);
    assert!(
        !run.to_string().contains(secret),
        "secret in the run record"
    );
    let step = |name: &str| {
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == name)
            .cloned()
            .unwrap()
    };
    let span = |name: &str| {
        let s = step(name);
        (
            s["started_at"].as_i64().unwrap(),
            s["finished_at"].as_i64().unwrap(),
        )
    };
    let (a, b) = (span("a"), span("b"));
    assert!(a.0 < b.1 && b.0 < a.1, "a {a:?} and b {b:?} should overlap");
    assert_eq!(step("slow")["state"], "ignored");
    assert_eq!(step("web")["state"], "stopped");
    assert_eq!(step("flaky")["state"], "succeeded");
    // The detached server is gone once the run ended.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the detached step still serves"
    );
}

#[test]
fn a_failing_step_stops_the_steps_after_it_and_names_itself() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (plane, base) = plane(tmp.path());
    let file = tmp.path().join("fail.yaml");
    std::fs::write(
        &file,
        format!(
            "steps:\n  - id: first\n    cmd: {base} sh -c 'echo before; exit 4'\n  - id: second\n    cmd: {base} echo never-printed\n"
        ),
    )
    .unwrap();
    let out = plane
        .cli()
        .args(["run", "--pool", "tasks", "-f"])
        .arg(&file)
        .arg("/dev/null")
        .output()
        .unwrap();
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("step first failed (exit code 4)"), "{log}");
    assert!(!log.contains("never-printed"), "{log}");
    let run = run_json(&plane, &run_id(&log));
    assert_eq!(run["state"], "failed");
    assert_eq!(run["message"], "step first failed");
    assert_eq!(run["steps"][1]["state"], "skipped");

    // A managed identity is refused, saying what a task gets instead.
    let out = plane
        .cli()
        .args([
            "run",
            "--pool",
            "tasks",
            "--cmd",
            "az login --identity",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("az login --identity: Slipway tasks have no managed identity"),
        "{}",
        text(&out)
    );

    // --dry-run needs no server and names the line of an error.
    let broken = tmp.path().join("broken.yaml");
    std::fs::write(&broken, "steps:\n  - id: x\n    cmd: a\n    build: .\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["run", "--dry-run", "-f"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("broken.yaml:2"), "{}", text(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["run", "--dry-run", "--set-secret", "k=hidden-v", "--cmd"])
        .arg("busybox echo {{.Secrets.k}}")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("***") && !text(&out).contains("hidden-v"),
        "{}",
        text(&out)
    );
}

#[test]
fn docker_cli_steps_run_without_a_daemon() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (plane, base) = plane(tmp.path());
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello-from-docker-build\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nCOPY hello.txt /hello.txt\n"),
    )
    .unwrap();
    let file = tmp.path().join("docker.yaml");
    std::fs::write(
        &file,
        "version: v1.1.0\nsteps:\n  - cmd: docker build -t app:dk .\n  \
         - cmd: docker tag app:dk $Registry/dk:final\n  \
         - cmd: docker run --rm -e X=1 --entrypoint sh app:dk -c 'echo run-$X; cat /hello.txt'\n  \
         - cmd: docker images\n  \
         - cmd: docker push $Registry/dk:final\n",
    )
    .unwrap();
    let out = plane
        .cli()
        .args(["run", "--pool", "tasks", "-f"])
        .arg(&file)
        .arg(&ctx)
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for want in ["run-1", "hello-from-docker-build", "pushed "] {
        assert!(log.contains(want), "no {want:?} in:\n{log}");
    }
    let got = ok(plane
        .cli()
        .args(["image", "run", "--data"])
        .arg(tmp.path().join("run-data"))
        .arg(format!("{}/dk:final", plane.host()))
        .args(["cat", "/hello.txt"]));
    assert_eq!(got, "hello-from-docker-build\n");
    // A verb that needs a daemon is refused by name.
    let out = plane
        .cli()
        .args([
            "run",
            "--pool",
            "tasks",
            "--cmd",
            "docker compose up",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("docker compose: not supported in a Slipway task"),
        "{}",
        text(&out)
    );
}
