//! Helpers every crate's tests share (a dev-dependency only).
//!
//! One guard for tests that need root (namespaces, mounts, chown): outside
//! CI a test skips with a line saying so; under CI (`CI` set, as `.ci/run`
//! sets it) it fails, so a CI machine without root cannot pass by skipping.
//! [`services`] starts the real back ends (PostgreSQL, Azurite, moto) and
//! names the suite's back-end matrix.

pub mod services;

/// Whether CI runs these tests: `CI` is set to anything but empty, `0` or
/// `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// True when `test` may go on as root; otherwise skips it (printing why) or,
/// under CI, panics.
pub fn root_or_skip(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        !in_ci(),
        "{test} needs root; CI is set, so it fails instead of skipping"
    );
    eprintln!("skipping {test}: needs root");
    false
}

/// Run `cmd`, fail the test with its output unless it succeeds, and
/// return its stdout.
#[allow(clippy::panic)]
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
