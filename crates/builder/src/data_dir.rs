//! Slipway's data directories (a builder's `--data`, a server's or `up`'s
//! data, an agent's work dir) carry a marker file, so that no build context
//! ever takes one in: `docker build .` users keep `slipway up`'s data or
//! their build data in the project directory, and a context that copied it
//! would copy itself (or ship a database and every blob to the server).

use std::path::{Path, PathBuf};

/// The marker's name: a directory holding it is a data dir.
pub const MARKER: &str = ".slipway-data";

/// Mark `dir` (which must exist) as a data dir; idempotent.
pub fn mark(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(MARKER);
    if p.exists() {
        return Ok(());
    }
    std::fs::write(
        p,
        "This directory holds Slipway's data; build contexts never include it.\n",
    )
}

pub fn is_data_dir(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// The data dirs a build context must leave out: `own` (this build's data
/// dir) when it lies inside `context`, and every marked directory directly
/// in the context's root. Paths relative to `context`.
pub fn excluded_in(context: &Path, own: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rel) = own.strip_prefix(context)
        && !rel.as_os_str().is_empty()
    {
        out.push(rel.to_path_buf());
    }
    if let Ok(entries) = std::fs::read_dir(context) {
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) && is_data_dir(&p) {
                let rel = PathBuf::from(e.file_name());
                if !out.contains(&rel) {
                    out.push(rel);
                }
            }
        }
    }
    out.sort();
    out
}

/// `.dockerignore` lines that exclude `paths` (relative to the context),
/// with the pattern characters escaped.
pub fn ignore_lines(paths: &[PathBuf]) -> String {
    let mut s = String::new();
    for p in paths {
        s.push('\n');
        for c in p.to_string_lossy().chars() {
            if matches!(c, '*' | '?' | '[' | '\\' | '!') {
                s.push('\\');
            }
            s.push(c);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_and_marked_dirs_inside_the_context() {
        let ctx = tempfile::tempdir().unwrap();
        let root = ctx.path();
        std::fs::create_dir_all(root.join(".slipway")).unwrap();
        mark(&root.join(".slipway")).unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join("build/data")).unwrap();
        let found = excluded_in(root, &root.join("build/data"));
        assert_eq!(
            found,
            vec![PathBuf::from(".slipway"), PathBuf::from("build/data")]
        );
        // A data dir outside the context excludes nothing of it.
        let elsewhere = tempfile::tempdir().unwrap();
        assert_eq!(
            excluded_in(root, elsewhere.path()),
            vec![PathBuf::from(".slipway")]
        );
        assert_eq!(
            ignore_lines(&[PathBuf::from("a*b"), PathBuf::from(".slipway")]),
            "\na\\*b\n.slipway"
        );
    }
}
