//! `slipway dockerfile check` on a good and a bad Dockerfile: output
//! format and exit codes.

use std::process::Command;

fn slipway(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn dockerfile_check_ok_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Dockerfile");
    std::fs::write(
        &file,
        "ARG BASE=alpine\nFROM $BASE AS build\nRUN --mount=type=cache,target=/c make\n\
         FROM scratch\nCOPY --from=build /out /out\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, out) = slipway(&["dockerfile", "check", path]);
    assert_eq!((code, out.as_str()), (0, "ok\n"));

    let (code, out) = slipway(&[
        "dockerfile",
        "check",
        "--json",
        "--build-arg",
        "BASE=debian",
        path,
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dockerfile"]["stages"][0]["base"], "debian");
    assert_eq!(
        v["dockerfile"]["stages"][0]["instructions"][0]["mounts"][0]["type"],
        "cache"
    );
    assert_eq!(v["graph"]["levels"], serde_json::json!([[0], [1]]));
}

#[test]
fn dockerfile_check_reports_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Dockerfile");
    std::fs::write(&file, "FROM alpine\nRUNN echo\nCOPY --chmodd=1 a b\n").unwrap();
    let path = file.to_str().unwrap();
    let (code, out) = slipway(&["dockerfile", "check", path]);
    assert_eq!(code, 1);
    let expected = format!(
        "{path}:2:1: unknown instruction: RUNN (did you mean RUN?)\n\
         {path}:3:6: COPY: unknown flag: --chmodd (did you mean --chmod?)\n"
    );
    assert_eq!(out, expected);
}
