//! The README's test command must work on a fresh Debian 12 machine: every
//! package a script installs has to exist there. A machine that already has
//! every package never runs the install line, so CI would stay green while a
//! newcomer's first command fails; this test asks `apt-cache` instead.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The names in `scripts/apt-packages` (comments and blank lines skipped).
fn listed() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("scripts/apt-packages")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Package names written literally after `apt-get install` in any script:
/// each must be in the list, so no script installs what the check skips.
fn literal_installs(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in script.lines() {
        let Some((_, rest)) = line.split_once("apt-get install") else {
            continue;
        };
        for word in rest.split_whitespace() {
            // The command ends at a comment or the next command.
            if word.starts_with('#') || matches!(word, "&&" | "||" | ";" | "|") {
                break;
            }
            // Options, expansions ("${missing[@]}") and redirections.
            if word.starts_with(['-', '"', '$', '>']) || word.starts_with("2>") {
                continue;
            }
            out.push(word.trim_end_matches(['"', '\'', ';']).to_owned());
        }
    }
    out
}

#[test]
fn literal_installs_are_found() {
    let s = "  apt-get install -y -qq --no-install-recommends busybox-static >/dev/null\n\
             x && apt-get install -y \"${missing[@]}\" containers-common 2>&1 && echo\n\
             echo 'sudo apt-get install foo' # hint\n";
    assert_eq!(
        literal_installs(s),
        ["busybox-static", "containers-common", "foo"]
    );
}

#[test]
fn apt_packages_exist_in_this_debian_release() {
    let packages = listed();
    assert!(packages.len() >= 10, "scripts/apt-packages lost its list");
    let mut scripts = Vec::new();
    for dir in ["scripts", ".ci"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                scripts.push(p);
            }
        }
    }
    for p in &scripts {
        let text = std::fs::read_to_string(p).unwrap();
        for name in literal_installs(&text) {
            assert!(
                packages.contains(&name),
                "{} installs {name}, which scripts/apt-packages does not list \
                 (so its existence is never checked)",
                p.display()
            );
        }
    }
    let codename = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    assert!(
        codename.contains("VERSION_CODENAME=bookworm"),
        "this check speaks for Debian 12 (bookworm); this machine is not it:\n{codename}"
    );
    let out = Command::new("apt-cache")
        .arg("show")
        .arg("--no-all-versions")
        .args(&packages)
        .output()
        .expect("apt-cache (Debian's apt) is needed for this check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&String> = packages
        .iter()
        .filter(|p| !stdout.lines().any(|l| l == format!("Package: {p}")))
        .collect();
    assert!(
        missing.is_empty(),
        "packages this Debian release does not have (apt-cache show): {missing:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
