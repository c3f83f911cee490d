//! Bytes → loose AST: parser directives, comments, line continuations,
//! heredocs, and one [`Node`] per instruction with its flags and its
//! arguments split the way BuildKit splits them for that instruction.
//!
//! Nothing is validated here beyond what the line syntax needs (a JSON
//! array of non-strings, `ENV` without `=`); typed checks happen in
//! [`crate::instructions`]. Every node and flag carries its [`Pos`].

use serde::Serialize;

use crate::error::{Error, ErrorKind, Pos};
use crate::expand::{Lexer, NoEnv};

/// The parsed file.
#[derive(Debug, Clone, Serialize)]
pub struct Ast {
    pub directives: Vec<Directive>,
    /// The escape character in force (`\` or `` ` ``).
    pub escape: char,
    pub nodes: Vec<Node>,
    pub warnings: Vec<Warning>,
}

/// A parser directive (`# syntax=…`, `# escape=…`, `# check=…`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub value: String,
    pub line: u32,
}

/// Something BuildKit accepts but warns about.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Warning {
    pub pos: Pos,
    pub message: String,
}

/// One instruction as written.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// The instruction name as written (any case).
    pub keyword: String,
    pub pos: Pos,
    pub end_line: u32,
    pub flags: Vec<Flag>,
    pub args: Args,
    /// Where the arguments (after the flags) start.
    pub args_pos: Pos,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<Heredoc>,
    /// The logical line (continuations joined), kept for `ONBUILD`
    /// triggers only (they are re-parsed by the child build).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub original: String,
}

impl Node {
    /// The instruction name in lower case.
    pub fn name(&self) -> String {
        self.keyword.to_ascii_lowercase()
    }
}

/// A `--flag[=value]` before the arguments.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Flag {
    /// The flag as written after quote/escape removal, e.g. `--from=build`.
    pub text: String,
    pub pos: Pos,
}

/// The arguments, split the way the instruction needs them.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "form", content = "value", rename_all = "snake_case")]
pub enum Args {
    /// Nothing after the instruction (and its flags).
    Empty,
    /// Whitespace-separated words (`FROM`, `COPY`, `EXPOSE`, `ARG` …).
    Words(Vec<String>),
    /// A JSON array of strings (exec form).
    Json(Vec<String>),
    /// The rest of the line as one string (shell form, `USER`, `WORKDIR` …).
    Text(String),
    /// `ENV`/`LABEL` pairs.
    KeyValues(Vec<KeyValue>),
    /// `HEALTHCHECK NONE` or `HEALTHCHECK CMD …`.
    Healthcheck { kind: String, cmd: Box<Args> },
    /// `ONBUILD`'s trigger instruction.
    Sub(Box<Node>),
    /// An unknown instruction's arguments, unparsed.
    Unknown(String),
}

/// `key=value`, or `key value` in the legacy one-pair form.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Written as `KEY value` rather than `KEY=value`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub legacy: bool,
}

/// A heredoc attached to an instruction.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    /// `3<<EOF` redirects file descriptor 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<u32>,
    /// Unquoted delimiter: variables in the body are expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped.
    pub chomp: bool,
    /// The body as written, each line with its newline.
    pub content: String,
}

/// A heredoc reference found in a word: `<<EOF`, `<<-"EOF"`, `3<<EOF`.
pub(crate) struct HeredocRef {
    pub name: String,
    pub fd: Option<u32>,
    pub expand: bool,
    pub chomp: bool,
}

/// Parses a heredoc reference (`[n]<<[-]NAME`) in a single word.
pub(crate) fn parse_heredoc_ref(word: &str) -> Option<HeredocRef> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start_matches(['\t', '\n', '\x0c', '\r', ' ']);
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let mut lex = Lexer::new('\\');
    lex.skip_unset = true;
    let words = lex.process_words(rest, &NoEnv).ok()?;
    if words.len() != 1 {
        return None;
    }
    lex.raw_quotes = true;
    let raw = lex.process_words(rest, &NoEnv).ok()?;
    if raw.len() != 1 {
        return None;
    }
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let fd = if digits > 0 {
        word[..digits].parse().ok()
    } else {
        None
    };
    let name = words.into_iter().next()?;
    Some(HeredocRef {
        expand: quotes(&name) == quotes(&raw[0]),
        name,
        fd,
        chomp,
    })
}

/// Removes leading tabs from every line (`<<-`).
pub(crate) fn chomp_tabs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}

/// Maps byte offsets of a logical line back to file positions.
struct PosMap<'a> {
    src: &'a str,
    /// (offset in the logical line, line number, start of that physical line
    /// in `src`, offset in `src` of that segment's first byte)
    segs: Vec<(usize, u32, usize, usize)>,
}

impl PosMap<'_> {
    fn pos(&self, off: usize) -> Pos {
        let i = self.segs.partition_point(|s| s.0 <= off).saturating_sub(1);
        let Some(&(logical, line, line_start, seg_start)) = self.segs.get(i) else {
            return Pos::new(1, 1);
        };
        let at = seg_start + (off - logical.min(off));
        let col = match self.src.get(line_start..at) {
            Some(prefix) => prefix.chars().count(),
            None => at.saturating_sub(line_start),
        };
        Pos::new(line, col as u32 + 1)
    }
}

struct Lines<'a> {
    src: &'a str,
    at: usize,
    line: u32,
}

impl<'a> Lines<'a> {
    /// The next physical line: (line number, offset of its start, text with
    /// its newline).
    fn next_line(&mut self) -> Option<(u32, usize, &'a str)> {
        if self.at >= self.src.len() {
            return None;
        }
        let start = self.at;
        let end = match self.src[start..].find('\n') {
            Some(i) => start + i + 1,
            None => self.src.len(),
        };
        self.at = end;
        self.line += 1;
        Some((self.line, start, &self.src[start..end]))
    }
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(s: &str) -> bool {
    s.trim_start().starts_with('#')
}

/// Strips a trailing continuation (escape char followed only by blanks).
/// Returns the content and whether the line continues.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    let Some(before) = t.strip_suffix(escape) else {
        return (line, false);
    };
    if before.is_empty() || !before.ends_with(escape) {
        (before, true)
    } else {
        (line, false)
    }
}

/// `# name=value` at the top of the file.
fn parse_directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let name_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let name = rest[..name_len].to_ascii_lowercase();
    let value = rest[name_len..].trim_start().strip_prefix('=')?.trim();
    if value.is_empty() || !matches!(name.as_str(), "syntax" | "escape" | "check") {
        return None;
    }
    Some((name, value.to_string()))
}

fn is_split_ws(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

fn split_ws(s: &str) -> Vec<String> {
    s.split(is_split_ws)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses a Dockerfile into nodes. Errors on single instructions are
/// collected and parsing goes on; an unterminated heredoc ends it.
pub fn parse(src: &str) -> (Ast, Vec<Error>) {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let mut lines = Lines {
        src,
        at: 0,
        line: 0,
    };
    let mut ast = Ast {
        directives: Vec::new(),
        escape: '\\',
        nodes: Vec::new(),
        warnings: Vec::new(),
    };
    let mut errors = Vec::new();
    let mut directives_done = false;
    let mut buf = String::new();
    let mut last_line = 0;
    let mut map = PosMap {
        src,
        segs: Vec::new(),
    };

    while let Some((ln, start, raw)) = lines.next_line() {
        last_line = ln;
        let text = trim_newline(raw);
        let lead = text.len() - text.trim_start().len();
        let text = &text[lead..];
        if !directives_done {
            match parse_directive(text) {
                Some((name, value)) => {
                    let pos = Pos::new(ln, lead as u32 + 1);
                    if ast.directives.iter().any(|d| d.name == name) {
                        errors.push(Error::new(pos, ErrorKind::DuplicateDirective(name)));
                        continue;
                    }
                    if name == "escape" {
                        match value.as_str() {
                            "\\" => ast.escape = '\\',
                            "`" => ast.escape = '`',
                            _ => errors
                                .push(Error::new(pos, ErrorKind::InvalidEscape(value.clone()))),
                        }
                    }
                    ast.directives.push(Directive {
                        name,
                        value,
                        line: ln,
                    });
                    continue;
                }
                None => directives_done = true,
            }
        }
        if is_comment(text) {
            continue;
        }
        let (content, mut cont) = trim_continuation(text, ast.escape);
        if !cont && content.is_empty() {
            continue;
        }
        buf.clear();
        buf.push_str(content);
        map.segs.clear();
        map.segs.push((0, ln, start, start + lead));
        let mut end_line = ln;
        let mut empty_continuation = None;
        while cont {
            let Some((ln2, start2, raw2)) = lines.next_line() else {
                break;
            };
            end_line = ln2;
            last_line = ln2;
            let t = trim_newline(raw2);
            if is_comment(t) {
                continue;
            }
            if t.trim_start().is_empty() {
                empty_continuation.get_or_insert(ln2);
                continue;
            }
            let (c, more) = trim_continuation(t, ast.escape);
            map.segs.push((buf.len(), ln2, start2, start2));
            buf.push_str(c);
            cont = more;
        }
        if let Some(l) = empty_continuation {
            ast.warnings.push(Warning {
                pos: Pos::new(l, 1),
                message:
                    "empty continuation line (will become an error in a future BuildKit release)"
                        .to_string(),
            });
        }

        let mut node = match node_from_line(&buf, 0, &map, ast.escape, false) {
            Ok(n) => n,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        node.end_line = end_line;

        if can_contain_heredoc(&node) && buf.contains("<<") {
            let mut lex = Lexer::new('\\');
            lex.raw_quotes = true;
            lex.raw_escapes = true;
            lex.skip_unset = true;
            let words = lex.process_words(&buf, &NoEnv).unwrap_or_default();
            for word in words {
                let Some(h) = parse_heredoc_ref(&word) else {
                    continue;
                };
                let mut body = String::new();
                let mut terminated = false;
                while let Some((ln2, _, raw2)) = lines.next_line() {
                    end_line = ln2;
                    last_line = ln2;
                    let mut candidate = trim_newline(raw2);
                    if h.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == h.name {
                        terminated = true;
                        break;
                    }
                    body.push_str(raw2);
                }
                if !terminated {
                    errors.push(Error::new(node.pos, ErrorKind::UnterminatedHeredoc(h.name)));
                    return (ast, errors);
                }
                node.heredocs.push(Heredoc {
                    name: h.name,
                    fd: h.fd,
                    expand: h.expand,
                    chomp: h.chomp,
                    content: body,
                });
            }
            node.end_line = end_line;
        }
        ast.nodes.push(node);
    }
    if ast.nodes.is_empty() && errors.is_empty() {
        errors.push(Error::new(
            Pos::new(last_line.max(1), 1),
            ErrorKind::NoInstructions,
        ));
    }
    (ast, errors)
}

fn can_contain_heredoc(node: &Node) -> bool {
    let node = match &node.args {
        Args::Sub(sub) if node.keyword.eq_ignore_ascii_case("onbuild") => sub,
        _ => node,
    };
    ["add", "copy", "run"]
        .iter()
        .any(|k| node.keyword.eq_ignore_ascii_case(k))
        && !matches!(node.args, Args::Json(_))
}

/// Splits `--flags` off the front of `line`; returns them with their
/// offsets, and the offset where the arguments start.
fn extract_flags(line: &str, escape: char) -> (Vec<(String, usize)>, usize) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut word_start = 0;
    let mut blank_ok = false;
    let mut it = line.char_indices().peekable();
    while let Some((pos, ch)) = it.next() {
        match phase {
            Phase::Spaces => {
                if ch.is_whitespace() {
                    continue;
                }
                if ch != '-' || it.peek().map(|&(_, c)| c) != Some('-') {
                    return (words, pos);
                }
                phase = Phase::Word;
                word_start = pos;
                word.push(ch);
            }
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (words, pos);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push((std::mem::take(&mut word), word_start));
                    }
                    word.clear();
                    blank_ok = false;
                } else if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                } else if ch == escape {
                    if let Some((_, next)) = it.next() {
                        word.push(next);
                    }
                } else {
                    word.push(ch);
                }
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                } else if ch == escape {
                    match it.next() {
                        Some((_, next)) => word.push(next),
                        None => phase = Phase::Word,
                    }
                } else {
                    word.push(ch);
                }
            }
        }
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        words.push((word, word_start));
    }
    (words, line.len())
}

/// BuildKit's word splitter for `ARG`, `ENV` and `LABEL`: quotes and
/// escapes are kept (they are removed later by expansion).
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut blank_ok = false;
    let mut word = String::new();
    let mut it = rest.chars().peekable();
    while let Some(ch) = it.next() {
        if let Some(q) = quote {
            if ch == q {
                quote = None;
            }
            if ch == escape && q != '\'' {
                match it.next() {
                    Some(next) => {
                        word.push(ch);
                        word.push(next);
                    }
                    None => quote = None,
                }
                continue;
            }
            word.push(ch);
            continue;
        }
        if !in_word {
            if ch.is_whitespace() {
                continue;
            }
            in_word = true;
        }
        if ch.is_whitespace() {
            in_word = false;
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            blank_ok = false;
            continue;
        }
        if ch == '\'' || ch == '"' {
            quote = Some(ch);
            blank_ok = true;
        }
        if ch == escape {
            if let Some(next) = it.next() {
                word.push(ch);
                word.push(next);
            }
            continue;
        }
        word.push(ch);
    }
    if (in_word || quote.is_some()) && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

fn parse_json(rest: &str) -> Option<Result<Vec<String>, ()>> {
    if !rest.starts_with('[') {
        return None;
    }
    if let Ok(strings) = serde_json::from_str::<Vec<String>>(rest) {
        return Some(Ok(strings));
    }
    let values: Vec<serde_json::Value> = serde_json::from_str(rest).ok()?;
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        match v {
            serde_json::Value::String(s) => out.push(s),
            _ => return Some(Err(())),
        }
    }
    Some(Ok(out))
}

fn maybe_json(rest: &str, keyword: &str, pos: Pos) -> Result<Args, Error> {
    if rest.is_empty() {
        return Ok(Args::Empty);
    }
    match parse_json(rest) {
        Some(Ok(v)) => Ok(Args::Json(v)),
        Some(Err(())) => Err(Error::new(
            pos,
            ErrorKind::JsonNotStrings(keyword.to_string()),
        )),
        None => Ok(Args::Text(rest.to_string())),
    }
}

fn maybe_json_list(rest: &str, keyword: &str, pos: Pos) -> Result<Args, Error> {
    if rest.is_empty() {
        return Ok(Args::Empty);
    }
    match parse_json(rest) {
        Some(Ok(v)) => Ok(Args::Json(v)),
        Some(Err(())) => Err(Error::new(
            pos,
            ErrorKind::JsonNotStrings(keyword.to_string()),
        )),
        None => Ok(Args::Words(split_ws(rest))),
    }
}

fn key_values(rest: &str, keyword: &str, escape: char, pos: Pos) -> Result<Args, Error> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Args::Empty);
    };
    if !first.contains('=') {
        let mut parts = rest.splitn(2, is_split_ws);
        let key = parts.next().unwrap_or_default();
        let value = parts.next().map(|v| v.trim_start_matches(is_split_ws));
        return match value {
            Some(value) => Ok(Args::KeyValues(vec![KeyValue {
                key: key.to_string(),
                value: value.to_string(),
                legacy: true,
            }])),
            None => Err(Error::new(
                pos,
                ErrorKind::KeyValueNeedsTwo(keyword.to_string()),
            )),
        };
    }
    let mut kvs = Vec::with_capacity(words.len());
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(Error::new(
                pos,
                ErrorKind::KeyValueMissingEquals {
                    keyword: keyword.to_string(),
                    word: w,
                },
            ));
        };
        kvs.push(KeyValue {
            key: k.to_string(),
            value: v.to_string(),
            legacy: false,
        });
    }
    Ok(Args::KeyValues(kvs))
}

/// Builds a node from a logical line (`base` is its offset in the map).
fn node_from_line(
    line: &str,
    base: usize,
    map: &PosMap<'_>,
    escape: char,
    keep_original: bool,
) -> Result<Node, Error> {
    let lead = line.len() - line.trim_start().len();
    let trimmed = line.trim();
    let kw_end = trimmed.find(is_split_ws).unwrap_or(trimmed.len());
    let keyword = &trimmed[..kw_end];
    let pos = map.pos(base + lead);
    let after_kw = &trimmed[kw_end..];
    let ws = after_kw.len() - after_kw.trim_start_matches(is_split_ws).len();
    let rest_off = lead + kw_end + ws;
    let rest = &trimmed[kw_end + ws..];

    let (flags, args_start) = if rest.is_empty() {
        (Vec::new(), 0)
    } else {
        extract_flags(rest, escape)
    };
    let flags = flags
        .into_iter()
        .map(|(text, off)| Flag {
            text,
            pos: map.pos(base + rest_off + off),
        })
        .collect();
    let raw_args = &rest[args_start..];
    let args_lead = raw_args.len() - raw_args.trim_start().len();
    let args_off = base + rest_off + args_start + args_lead;
    let args_pos = map.pos(args_off);
    let args_str = raw_args.trim();

    let lower = keyword.to_ascii_lowercase();
    let args = match lower.as_str() {
        "add" | "copy" | "volume" => maybe_json_list(args_str, keyword, args_pos)?,
        "run" | "cmd" | "entrypoint" | "shell" => maybe_json(args_str, keyword, args_pos)?,
        "arg" => {
            let w = parse_words(args_str, escape);
            if w.is_empty() {
                Args::Empty
            } else {
                Args::Words(w)
            }
        }
        "env" | "label" => key_values(args_str, &keyword.to_ascii_uppercase(), escape, args_pos)?,
        "expose" | "from" => {
            if args_str.is_empty() {
                Args::Empty
            } else {
                Args::Words(split_ws(args_str))
            }
        }
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if args_str.is_empty() {
                Args::Empty
            } else {
                Args::Text(args_str.to_string())
            }
        }
        "healthcheck" => {
            let sep = args_str.find(char::is_whitespace).unwrap_or(args_str.len());
            if sep == 0 {
                Args::Empty
            } else {
                let kind = args_str[..sep].to_string();
                let cmd = args_str[sep..].trim_start();
                Args::Healthcheck {
                    kind,
                    cmd: Box::new(maybe_json(cmd, keyword, args_pos)?),
                }
            }
        }
        "onbuild" => {
            if args_str.is_empty() {
                Args::Empty
            } else {
                Args::Sub(Box::new(node_from_line(
                    args_str, args_off, map, escape, true,
                )?))
            }
        }
        _ => Args::Unknown(args_str.to_string()),
    };
    Ok(Node {
        keyword: keyword.to_string(),
        pos,
        end_line: pos.line,
        flags,
        args,
        args_pos,
        heredocs: Vec::new(),
        original: if keep_original {
            trimmed.to_string()
        } else {
            String::new()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation() {
        assert_eq!(trim_continuation("a \\", '\\'), ("a ", true));
        assert_eq!(trim_continuation("a \\  \t", '\\'), ("a ", true));
        assert_eq!(trim_continuation("\\", '\\'), ("", true));
        assert_eq!(trim_continuation("a\\\\", '\\'), ("a\\\\", false));
        assert_eq!(trim_continuation("a`", '`'), ("a", true));
    }

    #[test]
    fn flags() {
        let (f, at) = extract_flags("--a=1 --b='x y' rest --c", '\\');
        assert_eq!(
            f,
            vec![("--a=1".to_string(), 0), ("--b=x y".to_string(), 6)]
        );
        assert_eq!(at, 16);
    }

    #[test]
    fn heredoc_ref() {
        let h = parse_heredoc_ref("<<-\"EOF\"").unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("EOF", false, true));
        let h = parse_heredoc_ref("3<<EOF").unwrap();
        assert_eq!((h.fd, h.expand), (Some(3), true));
        assert!(parse_heredoc_ref("a<<EOF").is_none());
        assert!(parse_heredoc_ref("<<").is_none());
    }
}
