//! Data-driven tests of the Dockerfile frontend. Every folder under
//! `tests/cases/` holds a `Dockerfile` that must parse; its raw model, its
//! expanded model (with `build-args` and `target` from the folder when
//! present) and its stage graph are snapshotted. Every folder under
//! `tests/errors/` holds one that must fail; its error messages are
//! snapshotted. `tests/ignore/` holds `.dockerignore` cases with the paths
//! to decide. Snapshots live in `tests/it/snapshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use dockerfile::{BuildOptions, IgnoreMatcher, StageGraph};
use serde::Serialize;

fn folders(kind: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(kind);
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

fn options(dir: &Path) -> BuildOptions {
    let mut opts = BuildOptions::default();
    if let Ok(args) = fs::read_to_string(dir.join("build-args")) {
        for line in args.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            opts.build_args.insert(k.to_string(), v.to_string());
        }
    }
    if let Ok(p) = fs::read_to_string(dir.join("platform")) {
        opts.target_platform = dockerfile::Platform::parse(p.trim()).unwrap();
    }
    opts
}

fn target(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join("target"))
        .ok()
        .map(|t| t.trim().to_string())
}

#[derive(Serialize)]
struct CaseSnapshot {
    build_args: BTreeMap<String, String>,
    target: Option<String>,
    parsed: dockerfile::Dockerfile,
    expanded: dockerfile::Dockerfile,
    graph: StageGraph,
}

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_prepend_module_to_snapshot(false);
    s.set_omit_expression(true);
    s.set_snapshot_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/snapshots"));
    s
}

#[test]
fn cases() {
    let dirs = folders("cases");
    assert!(!dirs.is_empty());
    let mut wrong = Vec::new();
    for dir in dirs {
        let src = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let opts = options(&dir);
        let target = target(&dir);
        let (parsed, expanded, graph) = match dockerfile::check(&src, &opts, target.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                wrong.push(format!("{}: expected to parse, got:\n{e}", name(&dir)));
                continue;
            }
        };
        let snap = CaseSnapshot {
            build_args: opts.build_args.clone(),
            target,
            parsed,
            expanded,
            graph,
        };
        settings().bind(|| insta::assert_yaml_snapshot!(format!("case_{}", name(&dir)), snap));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn errors() {
    let dirs = folders("errors");
    assert!(!dirs.is_empty());
    let mut wrong = Vec::new();
    for dir in dirs {
        let src = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let opts = options(&dir);
        let target = target(&dir);
        let errors = match dockerfile::check(&src, &opts, target.as_deref()) {
            Ok(_) => {
                wrong.push(format!("{}: expected errors, parsed fine", name(&dir)));
                continue;
            }
            Err(e) => e,
        };
        let lines: Vec<String> = errors.0.iter().map(|e| format!("Dockerfile:{e}")).collect();
        for e in &errors.0 {
            assert!(e.pos.line >= 1 && e.pos.col >= 1, "{}: {e}", dir.display());
        }
        settings().bind(|| insta::assert_yaml_snapshot!(format!("error_{}", name(&dir)), lines));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn ignore_files() {
    for dir in folders("ignore") {
        let src = fs::read_to_string(dir.join(".dockerignore")).unwrap();
        let paths = fs::read_to_string(dir.join("paths")).unwrap();
        let out: Vec<String> = match IgnoreMatcher::parse(&src) {
            Err(e) => vec![format!("error: .dockerignore:{e}")],
            Ok(m) => paths
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (path, is_dir) = match l.strip_suffix('/') {
                        Some(p) => (p, true),
                        None => (l, false),
                    };
                    format!("{l} -> {:?}", m.decide(path, is_dir))
                })
                .collect(),
        };
        settings().bind(|| insta::assert_yaml_snapshot!(format!("ignore_{}", name(&dir)), out));
    }
}

/// Every prefix of every corpus file (cut at each line and inside the
/// first lines) parses or fails cleanly, with positions inside the file.
#[test]
fn truncations_never_panic() {
    for kind in ["cases", "errors"] {
        for dir in folders(kind) {
            let src = fs::read_to_string(dir.join("Dockerfile")).unwrap();
            let cuts = src
                .char_indices()
                .map(|(i, _)| i)
                .filter(|&i| i < 200 || src[..i].ends_with('\n'));
            for cut in cuts {
                let part = &src[..cut];
                if let Err(errs) = dockerfile::check(part, &BuildOptions::default(), None) {
                    let lines = part.lines().count().max(1) as u32;
                    for e in errs.0 {
                        assert!(
                            e.pos.line >= 1 && e.pos.line <= lines + 1,
                            "{}: {e}",
                            dir.display()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn corpus_is_large_enough() {
    assert!(folders("cases").len() + folders("errors").len() >= 120);
}
