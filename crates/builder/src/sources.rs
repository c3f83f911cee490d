//! COPY/ADD sources as BuildKit resolves them before copying: wildcards
//! (`*`, `?`, `[…]`, `\` escapes, with Go's `filepath.Match` rules, one
//! path component at a time, so `*` never crosses a `/`), and the
//! `--parents` pivot (`a/./b`: what follows `/./` keeps its path under
//! the destination).
//!
//! Listing a directory to match a wildcard never leaves the source root:
//! each directory listed is resolved first and must stay inside it.

use std::path::{Component, Path, PathBuf};

/// Whether `s` has a wildcard character that Docker expands.
pub(crate) fn has_wildcards(s: &str) -> bool {
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Go's `filepath.Match` for one path component (no `/` in either).
/// A malformed pattern (unclosed `[`) matches nothing, as Go reports
/// `ErrBadPattern` for it.
pub(crate) fn component_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    matches_at(&p, &n)
}

fn matches_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => {
            // `*` takes any run of characters, the shortest that lets the rest match.
            let rest = &p[1..];
            (0..=n.len()).any(|k| matches_at(rest, &n[k..]))
        }
        Some('?') => !n.is_empty() && matches_at(&p[1..], &n[1..]),
        Some('[') => {
            let Some(c) = n.first() else { return false };
            match class(&p[1..], *c) {
                Some((true, used)) => matches_at(&p[1 + used..], &n[1..]),
                _ => false,
            }
        }
        Some('\\') => match (p.get(1), n.first()) {
            (Some(e), Some(c)) if e == c => matches_at(&p[2..], &n[1..]),
            _ => false,
        },
        Some(lit) => n.first() == Some(lit) && matches_at(&p[1..], &n[1..]),
    }
}

/// A `[...]` class (after the `[`) against `c`: whether it matches, and how
/// many pattern characters it used (up to and including `]`). `None` when
/// the class is malformed.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 0;
    let negated = p.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = match p.get(i)? {
            ']' if !first => return Some((matched != negated, i + 1)),
            '\\' => {
                i += 1;
                *p.get(i)?
            }
            ch => *ch,
        };
        i += 1;
        first = false;
        let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
            i += 1;
            let h = match p.get(i)? {
                '\\' => {
                    i += 1;
                    *p.get(i)?
                }
                ch => *ch,
            };
            i += 1;
            h
        } else {
            lo
        };
        if lo <= c && c <= hi {
            matched = true;
        }
    }
}

/// `/a/./b/../c` → `a/c`. `..` at the top stays at the top, as BuildKit's
/// `path.Join("/", p)` does (`COPY ../x` reads the context's `x`).
pub(crate) fn clean(p: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// `rel` resolved under `root` as BuildKit follows symlinks in a copy
/// source (and as `openat2(RESOLVE_IN_ROOT)` would): every symlink on the
/// way, the last one included, is followed, with absolute targets and `..`
/// taken relative to `root`, so the result never leaves it. Returns the
/// path relative to `root`; its last component may not exist.
pub(crate) fn resolve_in_root(root: &Path, rel: &Path) -> std::io::Result<PathBuf> {
    resolve_links(rel, |candidate| {
        let at = root.join(candidate);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => std::fs::read_link(&at).map(Some),
            _ => Ok(None),
        }
    })
}

/// The walk behind [`resolve_in_root`] for any tree: `link_at(p)` says
/// where the symlink at `p` (relative to the root) points, or `None` when
/// `p` is not a symlink. More than 40 links is an error, as in the kernel.
pub(crate) fn resolve_links(
    rel: &Path,
    mut link_at: impl FnMut(&Path) -> std::io::Result<Option<PathBuf>>,
) -> std::io::Result<PathBuf> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    fn parts(p: &Path) -> Vec<Option<OsString>> {
        // None stands for `..`.
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(Some(n.to_os_string())),
                Component::ParentDir => Some(None),
                _ => None,
            })
            .collect()
    }
    let mut done = PathBuf::new();
    let mut todo: VecDeque<Option<OsString>> = parts(rel).into();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        let Some(name) = part else {
            done.pop();
            continue;
        };
        let candidate = done.join(&name);
        match link_at(&candidate)? {
            Some(target) => {
                links += 1;
                if links > 40 {
                    return Err(std::io::Error::other("too many levels of symbolic links"));
                }
                if target.is_absolute() {
                    done = PathBuf::new();
                }
                for p in parts(&target).into_iter().rev() {
                    todo.push_front(p);
                }
            }
            None => done.push(name),
        }
    }
    Ok(done)
}

/// The paths (relative to `root`) that `source` names: itself when it has
/// no wildcard, else every match, sorted. Matching nothing is not an error
/// (BuildKit allows an empty wildcard), and neither is a directory it
/// cannot read: that one matches nothing.
pub(crate) fn expand(root: &Path, source: &str) -> Vec<String> {
    if !has_wildcards(source) {
        return vec![source.to_owned()];
    }
    // Components are kept as written: cleaning would drop the escapes.
    let mut parts: Vec<&str> = Vec::new();
    for c in source.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut found: Vec<PathBuf> = vec![PathBuf::new()];
    for part in parts {
        let mut next = Vec::new();
        for dir in &found {
            if !has_wildcards(part) {
                next.push(dir.join(unescape(part)));
                continue;
            }
            // Directories are listed where they resolve inside the root.
            let Ok(real) = resolve_in_root(root, dir) else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(root.join(&real)) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| component_matches(part, n))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        found = next;
    }
    found
        .into_iter()
        .filter(|p| {
            resolve_in_root(root, p).is_ok_and(|r| std::fs::symlink_metadata(root.join(r)).is_ok())
        })
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A source of `COPY --parents`: where to read (`pivot`, relative to the
/// root) and the part kept under the destination (`kept`). Without `/./`
/// the whole path is kept.
pub(crate) fn split_parents(source: &str) -> (String, String) {
    match source.split_once("/./") {
        Some((pivot, kept)) => (pivot.to_owned(), kept.to_owned()),
        None => (String::new(), source.to_owned()),
    }
}

/// `kept` (a path below the pivot) made relative and clean.
pub(crate) fn kept_rel(kept: &str) -> Option<PathBuf> {
    Some(clean(kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_match_rules() {
        assert!(component_matches("*.txt", "a.txt"));
        assert!(component_matches("*.txt", ".hidden.txt"));
        assert!(!component_matches("*.txt", "a.txt.bak"));
        assert!(component_matches("?.md", "a.md"));
        assert!(!component_matches("?.md", "ab.md"));
        assert!(component_matches("[a-c]x", "bx"));
        assert!(!component_matches("[^a-c]x", "bx"));
        assert!(component_matches("[^a-c]x", "dx"));
        assert!(component_matches("\\*", "*"));
        assert!(!component_matches("\\*", "a"));
        assert!(
            !component_matches("[a", "a"),
            "a malformed class matches nothing"
        );
        assert!(component_matches("a*b*c", "aXbYc"));
    }

    #[test]
    fn expands_per_component_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ctx");
        std::fs::create_dir_all(root.join("dir1/sub")).unwrap();
        std::fs::create_dir_all(root.join("dir2")).unwrap();
        for f in ["a.txt", "b.txt", "c.md", "dir1/x.txt", "dir2/y.txt"] {
            std::fs::write(root.join(f), f).unwrap();
        }
        std::fs::write(d.path().join("outside.txt"), "no").unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        assert_eq!(expand(&root, "*.txt"), ["a.txt", "b.txt"]);
        assert_eq!(expand(&root, "dir*/*.txt"), ["dir1/x.txt", "dir2/y.txt"]);
        assert_eq!(expand(&root, "dir?"), ["dir1", "dir2"]);
        assert!(expand(&root, "*.nope").is_empty());
        // A symlink out of the root lands on the root itself, as in BuildKit.
        assert_eq!(expand(&root, "up/*.txt"), ["up/a.txt", "up/b.txt"]);
        assert_eq!(expand(&root, "plain.txt"), ["plain.txt"]);
        assert_eq!(expand(&root, "../*.txt"), ["a.txt", "b.txt"]);
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ctx");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/f"), "in").unwrap();
        std::fs::write(d.path().join("f"), "out").unwrap();
        std::os::unix::fs::symlink("/data", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("data/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let r = |p: &str| resolve_in_root(&root, Path::new(p)).unwrap();
        assert_eq!(r("abs/f"), Path::new("data/f"));
        assert_eq!(r("data/up/f"), Path::new("f"), "`..` stops at the root");
        assert_eq!(r("data/up/data/f"), Path::new("data/f"));
        assert!(resolve_in_root(&root, Path::new("loop")).is_err());
        assert_eq!(clean("../../x/./y/.."), Path::new("x"));
    }

    #[test]
    fn parents_pivot() {
        assert_eq!(
            split_parents("src/./app/main.rs"),
            ("src".into(), "app/main.rs".into())
        );
        assert_eq!(split_parents("a/b"), (String::new(), "a/b".into()));
    }
}
