//! What a newcomer does on the first try: `cd myapp && slipway up`, `slipway
//! login`, then `slipway build --local` and `slipway build --pool default`
//! of a `COPY . /app` Dockerfile. Neither `up`'s data dir nor the build's
//! own lands in the image, and `slipway login` is all the credentials the
//! local build needs for the server's registry.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::control::{Proc, busybox_rootfs, need_root};
use crate::harness::ok;

const SLIPWAY: &str = env!("CARGO_BIN_EXE_slipway");

#[test]
fn up_in_a_project_then_local_and_pool_builds_copy_only_the_project() {
    if !need_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("myapp");
    std::fs::create_dir_all(proj.join("src")).unwrap();
    std::fs::write(proj.join("main.txt"), "main\n").unwrap();
    std::fs::write(proj.join("src/lib.txt"), "lib\n").unwrap();
    // `slipway up` with its default data dir, ./.slipway, in the project.
    let up = Proc::spawn(
        Command::new(SLIPWAY)
            .args(["up", "--listen", "127.0.0.1:0", "--agents", "1"])
            .current_dir(&proj),
        tmp.path().join("up.log"),
    );
    let url = up
        .wait_for("listening on ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    up.wait_for("to build, paste:");
    let host = url.trim_start_matches("http://").to_owned();
    let token = std::fs::read_to_string(proj.join(".slipway/admin-token")).unwrap();

    // Only `slipway login`: no SLIPWAY_TOKEN, no docker config.json.
    let config = tmp.path().join("slipway-config.json");
    let cli = |dir: &Path| {
        let mut c = Command::new(SLIPWAY);
        c.current_dir(dir)
            .env("SLIPWAY_CONFIG", &config)
            .env("DOCKER_CONFIG", tmp.path().join("no-docker-config"))
            .env_remove("SLIPWAY_TOKEN")
            .env_remove("SLIPWAY_SERVER")
            .env_remove("SLIPWAY_DATA");
        c
    };
    let mut login = cli(&proj)
        .args(["login", &url, "--token-stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    login
        .stdin
        .take()
        .unwrap()
        .write_all(token.trim().as_bytes())
        .unwrap();
    assert!(login.wait().unwrap().success());

    let rootfs = tmp.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let base = format!("{host}/base/busybox:1");
    ok(cli(tmp.path())
        .args(["image", "import", "--cmd", "sh", "-t", &base])
        .arg(&rootfs));
    std::fs::write(
        proj.join("Dockerfile"),
        format!("FROM {base}\nCOPY . /app\n"),
    )
    .unwrap();

    // A local build whose data dir is in the project too.
    let local = format!("{host}/app:local");
    ok(cli(&proj).args([
        "build",
        "--local",
        "--data",
        ".build",
        "--progress",
        "plain",
        "-t",
        &local,
        ".",
    ]));
    assert!(
        proj.join(".build").join(".slipway-data").is_file(),
        "the build's data dir is marked"
    );
    // The same project on the pool.
    let out = cli(&proj)
        .args(["build", "--pool", "default", "-t", "app:pool", "."])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let want = "/app\n/app/Dockerfile\n/app/main.txt\n/app/src\n/app/src/lib.txt\n";
    for image in [local, format!("{host}/app:pool")] {
        let listing = ok(cli(tmp.path())
            .args(["image", "run", "--data"])
            .arg(tmp.path().join("run-data"))
            .arg(&image)
            .args(["busybox", "find", "/app"]));
        let mut lines: Vec<&str> = listing.lines().collect();
        lines.sort();
        assert_eq!(lines.join("\n") + "\n", want, "{image}");
    }
}
