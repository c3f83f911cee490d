//! Go `text/template` syntax → a small AST (text, actions, if/range/with).

use super::TemplateError;
use super::funcs;
use super::value::Value;

#[derive(Debug)]
pub(crate) enum Node {
    Text(String),
    Action(Pipe),
    If {
        branches: Vec<(Pipe, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    Range {
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    With {
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

#[derive(Debug)]
pub(crate) struct Pipe {
    pub line: u32,
    /// Variables declared (`:=`) or assigned (`=`) by this pipeline.
    pub vars: Vec<String>,
    pub assign: bool,
    pub cmds: Vec<Cmd>,
}

#[derive(Debug)]
pub(crate) struct Cmd {
    pub args: Vec<Operand>,
}

#[derive(Debug)]
pub(crate) enum Operand {
    Dot,
    /// `.A.B`
    Field(Vec<String>),
    /// `$x.A.B` (`$` alone is the root)
    Var(String, Vec<String>),
    /// A function name.
    Func(String),
    Lit(Value),
    /// `(pipeline).A.B`
    Sub(Box<Pipe>, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Field(String),
    Dot,
    Var(String),
    Ident(String),
    Str(String),
    Num(Value),
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Whether whitespace preceded it: `$x.A` chains, `$x .A` are two args.
    spaced: bool,
}

/// One `{{ … }}` with its line (of its `{{`) and tokens.
struct Action {
    line: u32,
    toks: Vec<Token>,
}

enum Item {
    Text(String),
    Action(Action),
}

/// Deepest nesting of `if`/`range`/`with` blocks and of parentheses: the
/// parser and the executor recurse, and a task file must not be able to
/// overflow the agent's stack.
const MAX_NESTING: usize = 100;

pub(crate) fn parse(text: &str) -> Result<Vec<Node>, TemplateError> {
    let items = lex(text)?;
    let mut parser = Parser {
        items,
        pos: 0,
        depth: 0,
    };
    let (nodes, end) = parser.list()?;
    match end {
        None => Ok(nodes),
        Some((kw, line)) => Err(TemplateError::at(line, format!("unexpected {{{{{kw}}}}}"))),
    }
}

fn lex(text: &str) -> Result<Vec<Item>, TemplateError> {
    let mut items = Vec::new();
    let mut rest = text;
    let mut line: u32 = 1;
    let mut trim_next = false;
    while !rest.is_empty() {
        let Some(open) = rest.find("{{") else {
            let t = if trim_next { rest.trim_start() } else { rest };
            items.push(Item::Text(t.to_owned()));
            break;
        };
        let before = &rest[..open];
        let after_open = &rest[open + 2..];
        // `{{- ` trims the whitespace before the action (the space is required,
        // as in Go, so `{{-3}}` is the number -3).
        let trim_left = after_open.starts_with("- ")
            || after_open.starts_with("-\n")
            || after_open.starts_with("-\t");
        let mut t = if trim_next {
            before.trim_start()
        } else {
            before
        };
        if trim_left {
            t = t.trim_end();
        }
        if !t.is_empty() {
            items.push(Item::Text(t.to_owned()));
        }
        line += count_lines(before);
        let action_line = line;
        let body_start = if trim_left { 1 } else { 0 };
        let (toks, consumed, trim_right) = lex_action(&after_open[body_start..], action_line)?;
        let action_text = &after_open[..body_start + consumed];
        line += count_lines(action_text);
        if let Some(toks) = toks {
            items.push(Item::Action(Action {
                line: action_line,
                toks,
            }));
        }
        trim_next = trim_right;
        rest = &after_open[body_start + consumed..];
        rest = rest.strip_prefix("}}").unwrap_or(rest);
    }
    Ok(items)
}

fn count_lines(s: &str) -> u32 {
    u32::try_from(s.bytes().filter(|b| *b == b'\n').count()).unwrap_or(u32::MAX)
}

/// Lexes the inside of an action up to (not including) its `}}`. Returns the
/// tokens (`None` for a comment), the bytes consumed and whether it ended
/// with ` -}}`.
fn lex_action(s: &str, line: u32) -> Result<(Option<Vec<Token>>, usize, bool), TemplateError> {
    let unclosed = || TemplateError::at(line, "unclosed action: a {{ without its }}".to_owned());
    let trimmed = s.trim_start();
    if trimmed.starts_with("/*") {
        let start = s.len() - trimmed.len();
        let end = trimmed
            .find("*/")
            .ok_or_else(|| TemplateError::at(line, "unclosed comment".to_owned()))?;
        let after = &trimmed[end + 2..];
        let after_trim = after.trim_start();
        let (consumed_extra, trim_right) = if let Some(r) = after_trim.strip_prefix('-') {
            if r.starts_with("}}") {
                (after.len() - after_trim.len() + 1, true)
            } else {
                return Err(TemplateError::at(
                    line,
                    "comment ends with */ then }}".to_owned(),
                ));
            }
        } else if after_trim.starts_with("}}") {
            (after.len() - after_trim.len(), false)
        } else {
            return Err(TemplateError::at(
                line,
                "comment ends with */ then }}".to_owned(),
            ));
        };
        return Ok((None, start + end + 2 + consumed_extra, trim_right));
    }

    let b = s.as_bytes();
    let mut i = 0;
    let mut toks = Vec::new();
    let mut spaced = true;
    let mut line_here = line;
    let mut parens = 0usize;
    loop {
        let Some(&c) = b.get(i) else {
            return Err(unclosed());
        };
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                if c == b'\n' {
                    line_here += 1;
                }
                // ` -}}` closes with a right trim.
                if s[i..].starts_with(" -}}")
                    || s[i..].starts_with("\n-}}")
                    || s[i..].starts_with("\t-}}")
                {
                    return Ok((Some(toks), i + 2, true));
                }
                spaced = true;
                i += 1;
                continue;
            }
            b'}' if s[i..].starts_with("}}") => return Ok((Some(toks), i, false)),
            b'|' => {
                toks.push(Token {
                    tok: Tok::Pipe,
                    spaced,
                });
                i += 1;
            }
            b'(' => {
                parens += 1;
                if parens > MAX_NESTING {
                    return Err(TemplateError::at(
                        line_here,
                        format!("parentheses nested more than {MAX_NESTING} deep"),
                    ));
                }
                toks.push(Token {
                    tok: Tok::LParen,
                    spaced,
                });
                i += 1;
            }
            b')' => {
                parens = parens.saturating_sub(1);
                toks.push(Token {
                    tok: Tok::RParen,
                    spaced,
                });
                i += 1;
            }
            b',' => {
                toks.push(Token {
                    tok: Tok::Comma,
                    spaced,
                });
                i += 1;
            }
            b':' if s[i..].starts_with(":=") => {
                toks.push(Token {
                    tok: Tok::Declare,
                    spaced,
                });
                i += 2;
            }
            b'=' => {
                toks.push(Token {
                    tok: Tok::Assign,
                    spaced,
                });
                i += 1;
            }
            b'"' => {
                let (v, n) = lex_quoted(&s[i..], line_here)?;
                toks.push(Token {
                    tok: Tok::Str(v),
                    spaced,
                });
                i += n;
            }
            b'`' => {
                let end = s[i + 1..].find('`').ok_or_else(|| {
                    TemplateError::at(line_here, "unterminated raw string".to_owned())
                })?;
                let v = &s[i + 1..i + 1 + end];
                line_here += count_lines(v);
                toks.push(Token {
                    tok: Tok::Str(v.to_owned()),
                    spaced,
                });
                i += end + 2;
            }
            b'\'' => {
                let rest = &s[i + 1..];
                let mut chars = rest.char_indices();
                let ch = match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => '\n',
                        Some((_, 't')) => '\t',
                        Some((_, c)) => c,
                        None => {
                            return Err(TemplateError::at(
                                line_here,
                                "unterminated character constant".to_owned(),
                            ));
                        }
                    },
                    Some((_, c)) => c,
                    None => {
                        return Err(TemplateError::at(
                            line_here,
                            "unterminated character constant".to_owned(),
                        ));
                    }
                };
                let Some((end, '\'')) = chars.next() else {
                    return Err(TemplateError::at(
                        line_here,
                        "unterminated character constant".to_owned(),
                    ));
                };
                toks.push(Token {
                    tok: Tok::Num(Value::Int(i64::from(u32::from(ch)))),
                    spaced,
                });
                i += end + 2;
            }
            b'.' => {
                let (name, n) = ident_at(&s[i + 1..]);
                if name.is_empty() {
                    if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                        let (v, n) = lex_number(&s[i..], line_here)?;
                        toks.push(Token {
                            tok: Tok::Num(v),
                            spaced,
                        });
                        i += n;
                        spaced = false;
                        continue;
                    }
                    toks.push(Token {
                        tok: Tok::Dot,
                        spaced,
                    });
                    i += 1;
                } else {
                    toks.push(Token {
                        tok: Tok::Field(name.to_owned()),
                        spaced,
                    });
                    i += 1 + n;
                }
            }
            b'$' => {
                let (name, n) = ident_at(&s[i + 1..]);
                toks.push(Token {
                    tok: Tok::Var(format!("${name}")),
                    spaced,
                });
                i += 1 + n;
            }
            b'-' | b'+' | b'0'..=b'9' => {
                let (v, n) = lex_number(&s[i..], line_here)?;
                toks.push(Token {
                    tok: Tok::Num(v),
                    spaced,
                });
                i += n;
            }
            _ => {
                let (name, n) = ident_at(&s[i..]);
                if name.is_empty() {
                    let ch = s[i..].chars().next().unwrap_or('?');
                    return Err(TemplateError::at(
                        line_here,
                        format!("unexpected {ch:?} in action"),
                    ));
                }
                toks.push(Token {
                    tok: Tok::Ident(name.to_owned()),
                    spaced,
                });
                i += n;
            }
        }
        spaced = false;
    }
}

fn ident_at(s: &str) -> (&str, usize) {
    let n = s
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(s.len(), |(i, _)| i);
    (&s[..n], n)
}

fn lex_quoted(s: &str, line: u32) -> Result<(String, usize), TemplateError> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\n' => break,
            '\\' => {
                let Some((_, e)) = chars.next() else { break };
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    '0' => out.push('\0'),
                    'u' => {
                        let hex: String = (0..4)
                            .filter_map(|_| chars.next().map(|(_, c)| c))
                            .collect();
                        let ch = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| {
                                TemplateError::at(line, format!("bad escape \\u{hex}"))
                            })?;
                        out.push(ch);
                    }
                    other => {
                        return Err(TemplateError::at(
                            line,
                            format!("unknown escape \\{other} in string"),
                        ));
                    }
                }
            }
            c => out.push(c),
        }
    }
    Err(TemplateError::at(
        line,
        "unterminated quoted string".to_owned(),
    ))
}

fn lex_number(s: &str, line: u32) -> Result<(Value, usize), TemplateError> {
    let n = s
        .char_indices()
        .skip(1)
        .find(|(i, c)| {
            let prev = s.as_bytes()[i - 1];
            !(c.is_ascii_alphanumeric()
                || *c == '.'
                || *c == '_'
                || ((*c == '-' || *c == '+') && (prev == b'e' || prev == b'E')))
        })
        .map_or(s.len(), |(i, _)| i);
    let text = &s[..n];
    let clean = text.replace('_', "");
    let (neg, digits) = match clean.strip_prefix('-') {
        Some(d) => (true, d.to_owned()),
        None => (false, clean.trim_start_matches('+').to_owned()),
    };
    let radix = if digits.starts_with("0x") || digits.starts_with("0X") {
        Some((16, &digits[2..]))
    } else if digits.starts_with("0o") || digits.starts_with("0O") {
        Some((8, &digits[2..]))
    } else if digits.starts_with("0b") || digits.starts_with("0B") {
        Some((2, &digits[2..]))
    } else {
        None
    };
    let value = if let Some((radix, body)) = radix {
        i64::from_str_radix(body, radix)
            .ok()
            .map(|v| Value::Int(if neg { -v } else { v }))
    } else if let Ok(v) = digits.parse::<i64>() {
        Some(Value::Int(if neg { -v } else { v }))
    } else {
        digits
            .parse::<f64>()
            .ok()
            .map(|v| Value::Float(if neg { -v } else { v }))
    };
    value
        .map(|v| (v, n))
        .ok_or_else(|| TemplateError::at(line, format!("bad number syntax: {text:?}")))
}

struct Parser {
    items: Vec<Item>,
    pos: usize,
    /// Blocks open around the current position.
    depth: usize,
}

/// What ended a list: `end` or `else`, and the line it is on.
type End = (String, u32);

impl Parser {
    /// Parses nodes up to `{{end}}`/`{{else…}}` (returned with its line and,
    /// for `else`, the rest of its tokens) or the end of input.
    fn list(&mut self) -> Result<(Vec<Node>, Option<End>), TemplateError> {
        self.depth += 1;
        let r = if self.depth > MAX_NESTING {
            let line = self.items.get(self.pos).map_or(0, |i| match i {
                Item::Action(a) => a.line,
                Item::Text(_) => 0,
            });
            Err(TemplateError::at(
                line,
                format!("blocks nested more than {MAX_NESTING} deep"),
            ))
        } else {
            self.list_inner()
        };
        self.depth -= 1;
        r
    }

    fn list_inner(&mut self) -> Result<(Vec<Node>, Option<End>), TemplateError> {
        let mut nodes = Vec::new();
        while self.pos < self.items.len() {
            let idx = self.pos;
            self.pos += 1;
            let item = std::mem::replace(&mut self.items[idx], Item::Text(String::new()));
            match item {
                Item::Text(t) => nodes.push(Node::Text(t)),
                Item::Action(a) => {
                    let line = a.line;
                    let first = a.toks.first().map(|t| t.tok.clone());
                    match first {
                        None => {
                            return Err(TemplateError::at(
                                line,
                                "missing value for command".to_owned(),
                            ));
                        }
                        Some(Tok::Ident(kw)) if kw == "end" => {
                            if a.toks.len() > 1 {
                                return Err(TemplateError::at(
                                    line,
                                    "unexpected tokens after end".to_owned(),
                                ));
                            }
                            return Ok((nodes, Some(("end".to_owned(), line))));
                        }
                        Some(Tok::Ident(kw)) if kw == "else" => {
                            // Keep `else if …` tokens for the caller.
                            self.pos -= 1;
                            self.items[idx] = Item::Action(a);
                            return Ok((nodes, Some(("else".to_owned(), line))));
                        }
                        Some(Tok::Ident(kw)) if kw == "if" => nodes.push(self.parse_if(a)?),
                        Some(Tok::Ident(kw)) if kw == "range" || kw == "with" => {
                            let pipe = pipeline(&a.toks[1..], line, &kw)?;
                            let (body, otherwise) = self.body_and_else(line, &kw)?;
                            nodes.push(if kw == "range" {
                                Node::Range {
                                    pipe,
                                    body,
                                    otherwise,
                                }
                            } else {
                                Node::With {
                                    pipe,
                                    body,
                                    otherwise,
                                }
                            });
                        }
                        Some(Tok::Ident(kw))
                            if matches!(
                                kw.as_str(),
                                "define" | "template" | "block" | "break" | "continue"
                            ) =>
                        {
                            return Err(TemplateError::at(
                                line,
                                format!("{{{{{kw}}}}} is not supported in task files"),
                            ));
                        }
                        Some(_) => nodes.push(Node::Action(pipeline(&a.toks, line, "command")?)),
                    }
                }
            }
        }
        Ok((nodes, None))
    }

    /// After `range`/`with`: the body, then an optional plain `else`, then `end`.
    fn body_and_else(
        &mut self,
        line: u32,
        kw: &str,
    ) -> Result<(Vec<Node>, Vec<Node>), TemplateError> {
        let (body, end) = self.list()?;
        match end {
            Some((e, _)) if e == "end" => Ok((body, Vec::new())),
            Some((_, else_line)) => {
                let toks = self.take_else()?;
                if !toks.is_empty() {
                    return Err(TemplateError::at(
                        else_line,
                        format!("unexpected tokens after else in {kw}"),
                    ));
                }
                let (otherwise, end) = self.list()?;
                match end {
                    Some((e, _)) if e == "end" => Ok((body, otherwise)),
                    Some((_, l)) => Err(TemplateError::at(
                        l,
                        format!("expected end; found else in {kw}"),
                    )),
                    None => Err(TemplateError::at(
                        line,
                        format!("unexpected EOF: {{{{{kw}}}}} without {{{{end}}}}"),
                    )),
                }
            }
            None => Err(TemplateError::at(
                line,
                format!("unexpected EOF: {{{{{kw}}}}} without {{{{end}}}}"),
            )),
        }
    }

    /// Consumes the pending `{{else …}}` action and returns the tokens after `else`.
    fn take_else(&mut self) -> Result<Vec<Token>, TemplateError> {
        let idx = self.pos;
        self.pos += 1;
        match std::mem::replace(&mut self.items[idx], Item::Text(String::new())) {
            Item::Action(a) => Ok(a.toks.into_iter().skip(1).collect()),
            Item::Text(_) => Err(TemplateError::at(0, "internal: else expected".to_owned())),
        }
    }

    fn parse_if(&mut self, first: Action) -> Result<Node, TemplateError> {
        let start = first.line;
        let mut branches = Vec::new();
        let mut cond = pipeline(&first.toks[1..], first.line, "if")?;
        loop {
            let (body, end) = self.list()?;
            match end {
                Some((e, _)) if e == "end" => {
                    branches.push((cond, body));
                    return Ok(Node::If {
                        branches,
                        otherwise: Vec::new(),
                    });
                }
                Some((_, else_line)) => {
                    branches.push((cond, body));
                    let toks = self.take_else()?;
                    if toks
                        .first()
                        .is_some_and(|t| t.tok == Tok::Ident("if".to_owned()))
                    {
                        cond = pipeline(&toks[1..], else_line, "if")?;
                        continue;
                    }
                    if !toks.is_empty() {
                        return Err(TemplateError::at(
                            else_line,
                            "unexpected tokens after else".to_owned(),
                        ));
                    }
                    let (otherwise, end) = self.list()?;
                    return match end {
                        Some((e, _)) if e == "end" => Ok(Node::If {
                            branches,
                            otherwise,
                        }),
                        Some((_, l)) => {
                            Err(TemplateError::at(l, "expected end; found else".to_owned()))
                        }
                        None => Err(TemplateError::at(
                            start,
                            "unexpected EOF: {{if}} without {{end}}".to_owned(),
                        )),
                    };
                }
                None => {
                    return Err(TemplateError::at(
                        start,
                        "unexpected EOF: {{if}} without {{end}}".to_owned(),
                    ));
                }
            }
        }
    }
}

/// `[$x[, $y] :=|=] cmd | cmd …`
fn pipeline(toks: &[Token], line: u32, context: &str) -> Result<Pipe, TemplateError> {
    let mut vars = Vec::new();
    let mut assign = false;
    let mut rest = toks;
    // Declarations: `$x :=`, `$i, $e :=`, `$x =`.
    let decl_end = toks
        .iter()
        .position(|t| matches!(t.tok, Tok::Declare | Tok::Assign));
    if let Some(end) = decl_end {
        let head = &toks[..end];
        let is_decl = !head.is_empty()
            && head.iter().enumerate().all(|(i, t)| {
                if i % 2 == 0 {
                    matches!(&t.tok, Tok::Var(v) if v != "$")
                } else {
                    t.tok == Tok::Comma
                }
            });
        if is_decl {
            for t in head.iter().step_by(2) {
                if let Tok::Var(v) = &t.tok {
                    vars.push(v.clone());
                }
            }
            if vars.len() > 2 || (vars.len() == 2 && context != "range") {
                return Err(TemplateError::at(
                    line,
                    format!("too many declarations in {context}"),
                ));
            }
            assign = toks[end].tok == Tok::Assign;
            rest = &toks[end + 1..];
        }
    }
    let mut cmds = Vec::new();
    let mut i = 0;
    loop {
        let (cmd, n) = command(&rest[i..], line)?;
        cmds.push(cmd);
        i += n;
        match rest.get(i).map(|t| &t.tok) {
            None => break,
            Some(Tok::Pipe) => i += 1,
            Some(other) => {
                return Err(TemplateError::at(
                    line,
                    format!("unexpected {other:?} in {context}"),
                ));
            }
        }
    }
    Ok(Pipe {
        line,
        vars,
        assign,
        cmds,
    })
}

/// One command: operands up to `|`, `)` or the end. Returns tokens consumed.
fn command(toks: &[Token], line: u32) -> Result<(Cmd, usize), TemplateError> {
    let mut args = Vec::new();
    let mut i = 0;
    while let Some(t) = toks.get(i) {
        let operand = match &t.tok {
            Tok::Pipe | Tok::RParen => break,
            Tok::Dot => {
                i += 1;
                Operand::Dot
            }
            Tok::Field(_) => {
                let (chain, n) = chain(&toks[i..], true);
                i += n;
                Operand::Field(chain)
            }
            Tok::Var(v) => {
                i += 1;
                let (chain, n) = chain(&toks[i..], false);
                i += n;
                Operand::Var(v.clone(), chain)
            }
            Tok::Ident(name) => {
                i += 1;
                match name.as_str() {
                    "true" => Operand::Lit(Value::Bool(true)),
                    "false" => Operand::Lit(Value::Bool(false)),
                    "nil" => Operand::Lit(Value::Nil),
                    _ => {
                        if let Some(why) = funcs::unavailable(name) {
                            return Err(TemplateError::at(
                                line,
                                format!("function {name:?} is not available: {why}"),
                            ));
                        }
                        if !funcs::exists(name) {
                            return Err(TemplateError::at(
                                line,
                                format!("function {name:?} not defined"),
                            ));
                        }
                        Operand::Func(name.clone())
                    }
                }
            }
            Tok::Str(s) => {
                i += 1;
                Operand::Lit(Value::Str(s.clone()))
            }
            Tok::Num(v) => {
                i += 1;
                Operand::Lit(v.clone())
            }
            Tok::LParen => {
                // Find the matching `)`.
                let mut depth = 0;
                let mut end = None;
                for (j, t) in toks.iter().enumerate().skip(i) {
                    match t.tok {
                        Tok::LParen => depth += 1,
                        Tok::RParen => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let end =
                    end.ok_or_else(|| TemplateError::at(line, "unclosed left paren".to_owned()))?;
                let inner = pipeline(&toks[i + 1..end], line, "parenthesized pipeline")?;
                i = end + 1;
                let (chain, n) = chain(&toks[i..], false);
                i += n;
                Operand::Sub(Box::new(inner), chain)
            }
            other => {
                return Err(TemplateError::at(
                    line,
                    format!("unexpected {other:?} in command"),
                ));
            }
        };
        args.push(operand);
    }
    if args.is_empty() {
        return Err(TemplateError::at(
            line,
            "missing value for command".to_owned(),
        ));
    }
    Ok((Cmd { args }, i))
}

/// Field names directly following (no space) — `.A.B` or `$x.A`.
fn chain(toks: &[Token], first_may_be_spaced: bool) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match &t.tok {
            Tok::Field(f) if (i == 0 && first_may_be_spaced) || !t.spaced => names.push(f.clone()),
            _ => break,
        }
    }
    let n = names.len();
    (names, n)
}
