//! `.dockerignore` with Docker's semantics: patterns are cleaned like
//! paths (a leading `/` is dropped), `*` and `?` stop at `/`, `**` spans
//! directories, `!` re-includes, and the last matching pattern wins. A
//! pattern that matches a directory excludes everything under it.
//!
//! [`IgnoreMatcher`] decides one path at a time, so a context walker never
//! holds the whole context in memory, and tells it when an excluded
//! directory can be skipped without looking inside ([`Decision::SkipDir`]).

use regex::Regex;

use crate::error::{Error, ErrorKind, Pos};

/// The ignore files to look for, in order, for a Dockerfile at `dockerfile`
/// (a path relative to the context): `<Dockerfile>.dockerignore` next to it
/// wins over `.dockerignore` at the context root.
pub fn ignore_file_candidates(dockerfile: &str) -> Vec<String> {
    vec![
        format!("{dockerfile}.dockerignore"),
        ".dockerignore".to_string(),
    ]
}

#[derive(Debug, Clone)]
enum Kind {
    Exact,
    /// `foo/**`: everything under `foo/`.
    Prefix(String),
    /// `**/foo`: any path ending in `/foo`, or `foo` itself.
    Suffix(String),
    Regex(Regex),
}

/// One cleaned pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The pattern after cleaning, without its `!`.
    pub text: String,
    /// `!pattern`: re-include.
    pub exclusion: bool,
    /// The line it came from (1-based; 0 when built from a list).
    pub line: u32,
    kind: Kind,
}

impl Pattern {
    fn new(text: String, exclusion: bool, line: u32) -> Result<Pattern, String> {
        let kind = compile(&text)?;
        Ok(Pattern {
            text,
            exclusion,
            line,
            kind,
        })
    }

    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix(p) => path.starts_with(p.as_str()),
            Kind::Suffix(s) => {
                path.ends_with(s.as_str()) || (s.starts_with('/') && path == &s[1..])
            }
            Kind::Regex(r) => r.is_match(path),
        }
    }

    /// Could this pattern match `dir` itself, an ancestor, or something
    /// below `dir`? Conservative: `true` when unsure.
    fn may_match_within(&self, dir: &str) -> bool {
        let mut pattern = self.text.split('/');
        for component in dir.split('/') {
            let Some(p) = pattern.next() else {
                // The pattern matched an ancestor of `dir`.
                return true;
            };
            if p.contains("**") {
                return true;
            }
            if !component_may_match(p, component) {
                return false;
            }
        }
        true
    }
}

/// Glob match of one path component; `[` classes are assumed to match.
fn component_may_match(p: &str, s: &str) -> bool {
    let p: Vec<char> = p.chars().collect();
    let s: Vec<char> = s.chars().collect();
    fn go(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => (0..=s.len()).any(|i| go(&p[1..], &s[i..])),
            Some('?') => !s.is_empty() && go(&p[1..], &s[1..]),
            Some('[') => true,
            Some('\\') if p.len() > 1 => s.first() == Some(&p[1]) && go(&p[2..], &s[1..]),
            Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
        }
    }
    // Bound the work on pathological patterns: assume a match.
    if p.iter().filter(|c| **c == '*').count() > 8 {
        return true;
    }
    go(&p, &s)
}

fn compile(pattern: &str) -> Result<Kind, String> {
    let mut re = String::from("^");
    let mut kind_is = 0u8; // 0 exact, 1 prefix, 2 suffix, 3 regex
    let mut chars = pattern.chars().peekable();
    let mut i = 0;
    while let Some(ch) = chars.next() {
        match ch {
            '*' => {
                if chars.peek() == Some(&'*') {
                    chars.next();
                    if chars.peek() == Some(&'/') {
                        chars.next();
                    }
                    if chars.peek().is_none() {
                        if kind_is == 0 {
                            kind_is = 1;
                        } else {
                            re.push_str(".*");
                            kind_is = 3;
                        }
                    } else {
                        re.push_str("(.*/)?");
                        kind_is = 3;
                    }
                    if i == 0 {
                        kind_is = 2;
                    }
                } else {
                    re.push_str("[^/]*");
                    kind_is = 3;
                }
            }
            '?' => {
                re.push_str("[^/]");
                kind_is = 3;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => match chars.next() {
                Some(next) => {
                    re.push('\\');
                    re.push(next);
                    kind_is = 3;
                }
                None => return Err("syntax error in pattern (trailing backslash)".to_string()),
            },
            '[' | ']' => {
                re.push(ch);
                kind_is = 3;
            }
            _ => re.push(ch),
        }
        i += 1;
    }
    // Validate the whole pattern as a regex even when it is matched
    // literally, like Docker's filepath.Match check.
    re.push('$');
    let compiled = Regex::new(&re).map_err(|_| "syntax error in pattern".to_string());
    Ok(match kind_is {
        0 => {
            compiled?;
            Kind::Exact
        }
        1 => Kind::Prefix(pattern[..pattern.len() - 2].to_string()),
        2 => {
            compiled?;
            Kind::Suffix(pattern[2..].to_string())
        }
        _ => Kind::Regex(compiled?),
    })
}

/// Go's `path.Clean`: the shortest equivalent path, `.` for empty.
pub fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            _ => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// What to do with a path of the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Include,
    /// Excluded; for a directory, something inside may still be included.
    Exclude,
    /// An excluded directory nothing inside of which can be re-included.
    SkipDir,
}

/// A compiled `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct IgnoreMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl IgnoreMatcher {
    /// Parses a `.dockerignore` file. Errors carry the pattern's line.
    pub fn parse(src: &str) -> Result<IgnoreMatcher, Error> {
        let src = src.strip_prefix('\u{feff}').unwrap_or(src);
        let mut m = IgnoreMatcher::default();
        for (n, line) in src.lines().enumerate() {
            let line_no = n as u32 + 1;
            if line.starts_with('#') {
                continue;
            }
            let col = line.len() - line.trim_start().len();
            m.push(line, line_no).map_err(|reason| {
                Error::new(
                    Pos::new(line_no, col as u32 + 1),
                    ErrorKind::IgnorePattern {
                        pattern: line.trim().to_string(),
                        reason,
                    },
                )
            })?;
        }
        Ok(m)
    }

    /// Builds a matcher from patterns (as in a `.dockerignore`, without comments).
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<IgnoreMatcher, Error> {
        let mut m = IgnoreMatcher::default();
        for p in patterns {
            m.push(p.as_ref(), 0).map_err(|reason| {
                Error::new(
                    Pos::new(0, 0),
                    ErrorKind::IgnorePattern {
                        pattern: p.as_ref().to_string(),
                        reason,
                    },
                )
            })?;
        }
        Ok(m)
    }

    fn push(&mut self, line: &str, line_no: u32) -> Result<(), String> {
        let mut p = line.trim();
        if p.is_empty() {
            return Ok(());
        }
        let exclusion = p.starts_with('!');
        if exclusion {
            p = p[1..].trim();
            if p.is_empty() {
                return Err("illegal exclusion pattern: \"!\"".to_string());
            }
        }
        let mut cleaned = clean_path(p);
        if cleaned.len() > 1 && cleaned.starts_with('/') {
            cleaned.remove(0);
        }
        self.exclusions |= exclusion;
        self.patterns
            .push(Pattern::new(cleaned, exclusion, line_no)?);
        Ok(())
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Is `path` (relative to the context, `/`-separated) excluded? A path
    /// is excluded when a pattern matches it or one of its parent
    /// directories; later patterns override earlier ones. `is_dir` does not
    /// change the answer (Docker's patterns do not distinguish directories)
    /// and is taken for symmetry with [`IgnoreMatcher::decide`].
    pub fn matches(&self, path: &str, is_dir: bool) -> bool {
        let _ = is_dir;
        let file = clean_path(path);
        let file = file.trim_start_matches('/');
        if file.is_empty() || file == "." {
            return false;
        }
        let mut matched = false;
        for p in &self.patterns {
            if p.exclusion != matched {
                continue;
            }
            let mut hit = p.matches(file);
            if !hit {
                // Any parent directory matching counts.
                hit = file.match_indices('/').any(|(i, _)| p.matches(&file[..i]));
            }
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// [`IgnoreMatcher::matches`], plus whether an excluded directory can be
    /// skipped whole: it can unless some `!` pattern might match inside it.
    pub fn decide(&self, path: &str, is_dir: bool) -> Decision {
        if !self.matches(path, is_dir) {
            return Decision::Include;
        }
        if !is_dir {
            return Decision::Exclude;
        }
        if !self.exclusions {
            return Decision::SkipDir;
        }
        let dir = clean_path(path);
        let dir = dir.trim_start_matches('/');
        if self
            .patterns
            .iter()
            .any(|p| p.exclusion && p.may_match_within(dir))
        {
            Decision::Exclude
        } else {
            Decision::SkipDir
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &[&str]) -> IgnoreMatcher {
        IgnoreMatcher::from_patterns(p).unwrap()
    }

    #[test]
    fn clean() {
        assert_eq!(clean_path("a//b/./c/.."), "a/b");
        assert_eq!(clean_path("/../a"), "/a");
        assert_eq!(clean_path("../a"), "../a");
        assert_eq!(clean_path(""), ".");
    }

    #[test]
    fn semantics() {
        let x = m(&["*.md", "!README.md", "docs/**", "/build", "**/*.tmp"]);
        assert!(x.matches("a.md", false));
        assert!(!x.matches("README.md", false));
        assert!(!x.matches("sub/a.md", false));
        assert!(x.matches("docs/x/y", false));
        assert!(x.matches("build/out/bin", false));
        assert!(x.matches("deep/er/x.tmp", false));
        assert!(x.matches("x.tmp", false));
        assert!(!x.matches("src/main.rs", false));
    }

    #[test]
    fn skip_dirs() {
        let x = m(&["node_modules", "vendor", "!vendor/keep"]);
        assert_eq!(x.decide("node_modules", true), Decision::SkipDir);
        assert_eq!(x.decide("vendor", true), Decision::Exclude);
        assert_eq!(x.decide("vendor/keep", false), Decision::Include);
        assert_eq!(x.decide("vendor/other", true), Decision::SkipDir);
        assert_eq!(x.decide("src", true), Decision::Include);
    }

    #[test]
    fn errors() {
        assert!(IgnoreMatcher::from_patterns(&["!"]).is_err());
        assert!(IgnoreMatcher::from_patterns(&["a["]).is_err());
        let e = IgnoreMatcher::parse("ok\n  [x\n").unwrap_err();
        assert_eq!(e.pos, Pos::new(2, 3));
    }
}
