//! Shell-word lexer: the variable expansion and quote removal that Docker
//! applies to instruction arguments.
//!
//! [`Lexer::process_word`] turns one word into one string (`ENV`, `COPY`
//! paths, `WORKDIR` …); [`Lexer::process_words`] also splits on unquoted
//! whitespace (`EXPOSE`, heredoc detection). Supported forms: `$V`, `${V}`,
//! `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`, `${V:?msg}`, `${V?msg}`,
//! `${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}`, `${V/p/r}`, `${V//p/r}`, single
//! and double quotes, and escaping with the Dockerfile's escape character.
//!
//! The lexer knows nothing about instructions: callers hand it an [`Env`]
//! (a closure or a map) and get a string or an [`ExpandError`] back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use regex::Regex;

/// Where variable values come from.
pub trait Env {
    /// The value of `name`, or `None` when it is unset.
    fn get(&self, name: &str) -> Option<&str>;
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(String::as_str)
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

/// An environment in which nothing is set.
pub struct NoEnv;

impl Env for NoEnv {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
}

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExpandError {
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(char),
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern { pattern: String, reason: String },
}

/// The result of expanding one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expanded {
    /// The word after expansion and quote removal.
    pub value: String,
    /// The same, split into words on unquoted whitespace.
    pub words: Vec<String>,
    /// Variables that were looked up and set.
    pub matched: BTreeSet<String>,
    /// Variables that were looked up and unset.
    pub unmatched: BTreeSet<String>,
}

/// A shell-word lexer for one escape character.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    escape: char,
    /// Keep quote characters in the result.
    pub raw_quotes: bool,
    /// Keep escape characters in the result.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters (heredoc bodies).
    pub skip_quotes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset: bool,
}

impl Lexer {
    /// A lexer with Docker's defaults for the given escape character.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_quotes: false,
            skip_unset: false,
        }
    }

    /// Expands `word` into one string.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<String, ExpandError> {
        Ok(self.process(word, env)?.value)
    }

    /// Expands `word` and splits it on unquoted whitespace.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ExpandError> {
        Ok(self.process(word, env)?.words)
    }

    /// Expands `word`, reporting the words and which variables were used.
    pub fn process(&self, word: &str, env: &dyn Env) -> Result<Expanded, ExpandError> {
        let mut sw = ShellWord {
            lex: *self,
            src: word,
            pos: 0,
            env,
            raw_escapes: self.raw_escapes,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let (value, words) = sw.process_stop_on(None, self.raw_escapes)?;
        Ok(Expanded {
            value,
            words,
            matched: sw.matched,
            unmatched: sw.unmatched,
        })
    }
}

struct ShellWord<'a> {
    lex: Lexer,
    src: &'a str,
    pos: usize,
    env: &'a dyn Env,
    raw_escapes: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }
    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }
    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(self.buf);
        }
        self.words
    }
}

impl ShellWord<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek()?;
        self.pos += ch.len_utf8();
        Some(ch)
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ExpandError> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn process_stop_on_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), ExpandError> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let tmp = self.process_dollar()?;
                    result.push_str(&tmp);
                    words.add_string(&tmp);
                }
                '<' => {
                    let tmp = self.process_possible_heredoc();
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                '\'' if !self.lex.skip_quotes => {
                    let tmp = self.process_single_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                '"' if !self.lex.skip_quotes => {
                    let tmp = self.process_double_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                _ => {
                    self.next();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(ExpandError::Unterminated(stop));
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Result<String, ExpandError> {
        let mut result = String::new();
        self.next();
        if self.lex.raw_quotes {
            result.push('\'');
        }
        loop {
            match self.next() {
                None => return Err(ExpandError::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ExpandError> {
        let mut result = String::new();
        self.next();
        if self.lex.raw_quotes {
            result.push('"');
        }
        loop {
            match self.peek() {
                None => return Err(ExpandError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    result.push_str(&v);
                }
                Some(mut ch) => {
                    self.next();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                self.next();
                                ch = c;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        match self.env.get(name) {
            Some(v) => {
                self.matched.insert(name.to_string());
                Some(v.to_string())
            }
            None => {
                self.unmatched.insert(name.to_string());
                None
            }
        }
    }

    fn process_dollar(&mut self) -> Result<String, ExpandError> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => return Err(ExpandError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ExpandError::BadSubstitution),
            _ => {}
        }
        let name = self.process_name();
        let Some(mut ch) = self.next() else {
            return Err(ExpandError::MissingBrace);
        };
        let mut modifier = ch.to_string();
        match ch {
            '}' => Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            '/' => self.process_replace(&name),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let null_is_unset = ch == ':';
                if null_is_unset {
                    let Some(c) = self.next() else {
                        return Err(ExpandError::MissingBrace);
                    };
                    ch = c;
                    modifier.push(c);
                }
                let raw = ch == '#' || ch == '%';
                if null_is_unset && raw {
                    return Err(ExpandError::UnsupportedModifier(modifier));
                }
                let word = match self.process_stop_on(Some('}'), raw) {
                    Ok((w, _)) => w,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err(ExpandError::MissingBrace);
                        }
                        return Err(e);
                    }
                };
                let value = self.lookup(&name);
                let Some(set_value) = value else {
                    if self.lex.skip_unset {
                        return Ok(format!("${{{name}{modifier}{word}}}"));
                    }
                    return match ch {
                        '-' => Ok(word),
                        '+' => Ok(String::new()),
                        '?' => Err(ExpandError::Required {
                            name,
                            message: if word.is_empty() {
                                "is not allowed to be unset".to_string()
                            } else {
                                word
                            },
                        }),
                        '#' | '%' => Ok(String::new()),
                        _ => Err(ExpandError::UnsupportedModifier(modifier)),
                    };
                };
                let empty = null_is_unset && set_value.is_empty();
                match ch {
                    '-' => Ok(if empty { word } else { set_value }),
                    '+' => Ok(if empty { String::new() } else { word }),
                    '?' => {
                        if empty {
                            Err(ExpandError::Required {
                                name,
                                message: if word.is_empty() {
                                    "is not allowed to be empty".to_string()
                                } else {
                                    word
                                },
                            })
                        } else {
                            Ok(set_value)
                        }
                    }
                    '#' | '%' => {
                        let (greedy, pattern) = match word.strip_prefix(ch) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        if ch == '%' {
                            trim_suffix(&pattern, &set_value, greedy)
                        } else {
                            trim_prefix(&pattern, &set_value, greedy)
                        }
                    }
                    _ => Err(ExpandError::UnsupportedModifier(modifier)),
                }
            }
            _ => Err(ExpandError::UnsupportedModifier(modifier)),
        }
    }

    fn process_replace(&mut self, name: &str) -> Result<String, ExpandError> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let pattern = match self.process_stop_on(Some('/'), true) {
            Ok((p, _)) => p,
            Err(e) => {
                if self.peek().is_none() {
                    return Err(ExpandError::MissingSlash);
                }
                return Err(e);
            }
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((r, _)) => r,
            Err(e) => {
                if self.peek().is_none() {
                    return Err(ExpandError::MissingBrace);
                }
                return Err(e);
            }
        };
        let value = self.lookup(name);
        let value = match value {
            Some(v) => v,
            None if self.lex.skip_unset => {
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            None => String::new(),
        };
        let re = shell_pattern_regex(&pattern, true, false)?;
        if all {
            Ok(re.replace_all(&value, replacement.as_str()).into_owned())
        } else if let Some(m) = re.find(&value) {
            Ok(format!(
                "{}{}{}",
                &value[..m.start()],
                replacement,
                &value[m.end()..]
            ))
        } else {
            Ok(value)
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".to_string();
        }
        self.next();
        let mut result = "<<".to_string();
        while let Some(ch) = self.peek().filter(|c| matches!(c, '\t' | '\r' | ' ')) {
            self.next();
            result.push(ch);
        }
        result
    }
}

/// Translates a shell pattern (`*`, `?`, `\` escapes) into a regex.
fn shell_pattern_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, ExpandError> {
    let invalid = |reason: String| ExpandError::InvalidPattern {
        pattern: pattern.to_string(),
        reason,
    };
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let mut chars = pattern.chars().peekable();
    while let Some(tok) = chars.next() {
        match tok {
            '*' => out.push_str(if greedy { ".*" } else { ".*?" }),
            '?' => out.push('.'),
            '\\' => match chars.peek() {
                Some('}' | '/') => {}
                Some(&c @ ('*' | '?' | '\\')) => {
                    chars.next();
                    out.push('\\');
                    out.push(c);
                }
                Some(&c) => return Err(invalid(format!("invalid escape '\\{c}'"))),
                None => return Err(invalid("trailing backslash".to_string())),
            },
            _ => {
                let mut buf = [0u8; 4];
                out.push_str(&regex::escape(tok.encode_utf8(&mut buf)));
            }
        }
    }
    Regex::new(&out).map_err(|e| invalid(e.to_string()))
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ExpandError> {
    let re = shell_pattern_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// Reverses a pattern, keeping `\x` escape pairs in order.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = vec![' '; chars.len()];
    let last = chars.len().wrapping_sub(1);
    let mut i = 0;
    while i < chars.len() {
        let tok = chars[i];
        let o = last - i;
        if tok == '\\' && i != last {
            out[o - 1] = tok;
            out[o] = chars[i + 1];
            i += 2;
        } else {
            out[o] = tok;
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ExpandError> {
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [
            ("A", "alpha"),
            ("E", ""),
            ("P", "/usr/local/bin/tool.tar.gz"),
            ("S", "a b  c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn w(s: &str) -> String {
        Lexer::new('\\')
            .process_word(s, &env())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn forms() {
        assert_eq!(w("$A"), "alpha");
        assert_eq!(w("${A}x"), "alphax");
        assert_eq!(w("$Ax"), "");
        assert_eq!(w("${U:-d}"), "d");
        assert_eq!(w("${E:-d}"), "d");
        assert_eq!(w("${E-d}"), "");
        assert_eq!(w("${A:+set}"), "set");
        assert_eq!(w("${E+set}"), "set");
        assert_eq!(w("${E:+set}"), "");
        assert_eq!(w("${P#*/}"), "usr/local/bin/tool.tar.gz");
        assert_eq!(w("${P##*/}"), "tool.tar.gz");
        assert_eq!(w("${P%.*}"), "/usr/local/bin/tool.tar");
        assert_eq!(w("${P%%.*}"), "/usr/local/bin/tool");
        assert_eq!(w("${A/l/L}"), "aLpha");
        assert_eq!(w("${P//\\//_}"), "_usr_local_bin_tool.tar.gz");
        assert_eq!(w("${U?}"), "ERR U: is not allowed to be unset");
        assert_eq!(w("${E:?must set}"), "ERR E: must set");
        assert_eq!(w("'$A'\"$A\"\\$A"), "$Aalpha$A");
        assert_eq!(w("${A"), "ERR syntax error: missing '}'");
        assert_eq!(w("${:}"), "ERR syntax error: bad substitution");
        assert_eq!(
            w("${A:#x}"),
            "ERR unsupported modifier (:#) in substitution"
        );
        assert_eq!(
            w("'abc"),
            "ERR unexpected end of statement while looking for matching single-quote"
        );
        assert_eq!(w("a\\"), "a");
        assert_eq!(w("$"), "$");
        assert_eq!(w("\"a\\b\""), "a\\b");
    }

    #[test]
    fn words() {
        let l = Lexer::new('\\');
        assert_eq!(
            l.process_words("x $S 'y z'", &env()).unwrap(),
            vec!["x", "a", "b", "c", "y z"]
        );
        assert_eq!(l.process_words("  ", &env()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn reverse() {
        assert_eq!(reverse_pattern("ab\\*c"), "c\\*ba");
    }
}
