//! Go's template builtins and the Sprig functions task files use.
//!
//! Sprig's functions that read the clock, the environment, DNS or a random
//! source are refused by name (`unavailable`): rendering is pure, so the same
//! task file, values and run give the same plan on the CLI and on the agent.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use sha2::Digest as _;

use super::value::{Value, go_float};

/// A function's failure: a message, or a missing value it was handed.
pub(crate) enum FnError {
    Message(String),
    Missing(String),
}

impl From<String> for FnError {
    fn from(s: String) -> Self {
        FnError::Message(s)
    }
}

/// Names whose output would not be a function of the inputs.
pub(crate) fn unavailable(name: &str) -> Option<&'static str> {
    Some(match name {
        "env" | "expandenv" => {
            "it reads the agent's environment; pass the value with --set or --set-secret"
        }
        "now" | "date" | "dateInZone" | "date_in_zone" | "unixEpoch" | "ago" | "htmlDate"
        | "dateModify" | "toDate" | "mustToDate" => "it reads the clock; use .Run.Date",
        "uuidv4" | "randAlphaNum" | "randAlpha" | "randNumeric" | "randAscii" | "randInt"
        | "randBytes" | "shuffle" => "it differs on every render; use .Run.ID",
        "getHostByName" => "it queries DNS",
        "genPrivateKey" | "genCA" | "genSelfSignedCert" | "genSignedCert" | "derivePassword"
        | "encryptAES" | "decryptAES" | "bcrypt" | "htpasswd" => {
            "keys and passwords belong in Slipway's secret store (slipway secret set)"
        }
        _ => return None,
    })
}

const NAMES: &[&str] = &[
    // Go builtins (`and`/`or` are evaluated lazily by the executor).
    "and",
    "or",
    "not",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "len",
    "index",
    "print",
    "printf",
    "println",
    "urlquery",
    // Sprig: strings
    "upper",
    "lower",
    "title",
    "untitle",
    "trim",
    "trimAll",
    "trimPrefix",
    "trimSuffix",
    "trunc",
    "substr",
    "replace",
    "contains",
    "hasPrefix",
    "hasSuffix",
    "repeat",
    "nospace",
    "quote",
    "squote",
    "cat",
    "indent",
    "nindent",
    "splitList",
    "split",
    "join",
    "toString",
    "abbrev",
    // Sprig: encodings
    "b64enc",
    "b64dec",
    "sha256sum",
    "toJson",
    // Sprig: defaults and flow
    "default",
    "empty",
    "coalesce",
    "ternary",
    "required",
    "fail",
    // Sprig: lists and dicts
    "list",
    "first",
    "last",
    "has",
    "sortAlpha",
    "uniq",
    "dict",
    "get",
    "hasKey",
    "keys",
    // Sprig: numbers
    "add",
    "add1",
    "sub",
    "mul",
    "div",
    "mod",
    "max",
    "min",
    "int",
    "int64",
    "atoi",
];

pub(crate) fn exists(name: &str) -> bool {
    NAMES.contains(&name)
}

/// Functions that may be handed a missing value: they exist to test for one.
pub(crate) fn tolerates_missing(name: &str) -> bool {
    matches!(
        name,
        "default" | "empty" | "coalesce" | "ternary" | "required" | "not" | "and" | "or"
    )
}

/// Output larger than this is refused: `repeat`/`indent` are otherwise a way
/// to make a small task file exhaust the agent's memory.
pub(crate) const MAX_OUTPUT: usize = 16 << 20;

pub(crate) fn call(name: &str, args: Vec<Value>) -> Result<Value, FnError> {
    let a = Args { name, args };
    Ok(match name {
        "not" => Value::Bool(!a.one()?.truthy()),
        "eq" => {
            a.at_least(2)?;
            let first = &a.args[0];
            Value::Bool(a.args[1..].iter().any(|b| equal(first, b)))
        }
        "ne" => {
            let (x, y) = a.two()?;
            Value::Bool(!equal(&x, &y))
        }
        "lt" | "le" | "gt" | "ge" => {
            let (x, y) = a.two()?;
            let ord = compare(&x, &y).ok_or_else(|| {
                format!(
                    "{name}: cannot compare {} with {}",
                    x.type_name(),
                    y.type_name()
                )
            })?;
            Value::Bool(match name {
                "lt" => ord.is_lt(),
                "le" => ord.is_le(),
                "gt" => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
        "len" => match a.one()? {
            Value::Str(s) => Value::Int(len_i64(s.len())),
            Value::List(l) => Value::Int(len_i64(l.len())),
            Value::Map(m) => Value::Int(len_i64(m.len())),
            other => return Err(format!("len of {}", other.type_name()).into()),
        },
        "index" => {
            a.at_least(1)?;
            let mut it = a.args.into_iter();
            let mut cur = it.next().unwrap_or(Value::Nil);
            for key in it {
                cur = match (&cur, &key) {
                    (Value::List(l), k) => {
                        let i = to_int(k)?;
                        usize::try_from(i)
                            .ok()
                            .and_then(|i| l.get(i).cloned())
                            .ok_or_else(|| format!("index out of range: {i}"))?
                    }
                    (Value::Map(m), k) => {
                        let k = k.to_text();
                        match m.get(&k) {
                            Some(v) => v.clone(),
                            None => return Err(FnError::Missing(format!("index {k:?}"))),
                        }
                    }
                    (other, _) => {
                        return Err(
                            format!("can't index item of type {}", other.type_name()).into()
                        );
                    }
                };
            }
            cur
        }
        "print" => Value::Str(sprint(&a.args)),
        "println" => Value::Str(
            a.args
                .iter()
                .map(Value::to_text)
                .collect::<Vec<_>>()
                .join(" ")
                + "\n",
        ),
        "printf" => {
            a.at_least(1)?;
            let format = a.args[0].to_text();
            Value::Str(printf(&format, &a.args[1..]))
        }
        "urlquery" => Value::Str(query_escape(&sprint(&a.args))),

        "upper" => Value::Str(a.one_str()?.to_uppercase()),
        "lower" => Value::Str(a.one_str()?.to_lowercase()),
        "title" => Value::Str(map_words(&a.one_str()?, true)),
        "untitle" => Value::Str(map_words(&a.one_str()?, false)),
        "trim" => Value::Str(a.one_str()?.trim().to_owned()),
        "trimAll" => {
            let (cut, s) = a.two_str()?;
            Value::Str(s.trim_matches(|c| cut.contains(c)).to_owned())
        }
        "trimPrefix" => {
            let (p, s) = a.two_str()?;
            Value::Str(s.strip_prefix(p.as_str()).unwrap_or(&s).to_owned())
        }
        "trimSuffix" => {
            let (p, s) = a.two_str()?;
            Value::Str(s.strip_suffix(p.as_str()).unwrap_or(&s).to_owned())
        }
        "trunc" => {
            let (n, s) = a.two()?;
            let n = to_int(&n)?;
            let chars: Vec<char> = s.to_text().chars().collect();
            let len = len_i64(chars.len());
            let text: String = if n >= 0 {
                chars
                    .iter()
                    .take(usize::try_from(n.min(len)).unwrap_or(0))
                    .collect()
            } else {
                chars
                    .iter()
                    .skip(usize::try_from((len + n).max(0)).unwrap_or(0))
                    .collect()
            };
            Value::Str(text)
        }
        "substr" => {
            let (start, end, s) = a.three()?;
            let chars: Vec<char> = s.to_text().chars().collect();
            let len = len_i64(chars.len());
            let (start, end) = (to_int(&start)?, to_int(&end)?);
            // Sprig: a negative start means 0, a negative or too large end the end.
            let start = start.clamp(0, len);
            let end = if end < 0 || end > len { len } else { end };
            let text: String = if start >= end {
                String::new()
            } else {
                chars[usize::try_from(start).unwrap_or(0)..usize::try_from(end).unwrap_or(0)]
                    .iter()
                    .collect()
            };
            Value::Str(text)
        }
        "replace" => {
            let (old, new, s) = a.three()?;
            Value::Str(s.to_text().replace(&old.to_text(), &new.to_text()))
        }
        "contains" => {
            let (sub, s) = a.two_str()?;
            Value::Bool(s.contains(&sub))
        }
        "hasPrefix" => {
            let (p, s) = a.two_str()?;
            Value::Bool(s.starts_with(&p))
        }
        "hasSuffix" => {
            let (p, s) = a.two_str()?;
            Value::Bool(s.ends_with(&p))
        }
        "repeat" => {
            let (n, s) = a.two()?;
            let n =
                usize::try_from(to_int(&n)?).map_err(|_| "repeat: negative count".to_owned())?;
            let s = s.to_text();
            if s.len().saturating_mul(n) > MAX_OUTPUT {
                return Err("repeat: result exceeds 16 MiB".to_owned().into());
            }
            Value::Str(s.repeat(n))
        }
        "nospace" => Value::Str(
            a.one_str()?
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect(),
        ),
        "quote" => Value::Str(
            a.args
                .iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| go_quote(&v.to_text()))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "squote" => Value::Str(
            a.args
                .iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| format!("'{}'", v.to_text()))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "cat" => Value::Str(
            a.args
                .iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(Value::to_text)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "indent" | "nindent" => {
            let (n, s) = a.two()?;
            let n = usize::try_from(to_int(&n)?).map_err(|_| format!("{name}: negative width"))?;
            let s = s.to_text();
            if n.saturating_mul(s.lines().count() + 1)
                .saturating_add(s.len())
                > MAX_OUTPUT
            {
                return Err(format!("{name}: result exceeds 16 MiB").into());
            }
            let pad = " ".repeat(n);
            let body = format!("{pad}{}", s.replace('\n', &format!("\n{pad}")));
            Value::Str(if name == "nindent" {
                format!("\n{body}")
            } else {
                body
            })
        }
        "splitList" => {
            let (sep, s) = a.two_str()?;
            Value::List(
                s.split(sep.as_str())
                    .map(|p| Value::Str(p.to_owned()))
                    .collect(),
            )
        }
        "split" => {
            let (sep, s) = a.two_str()?;
            Value::Map(
                s.split(sep.as_str())
                    .enumerate()
                    .map(|(i, p)| (format!("_{i}"), Value::Str(p.to_owned())))
                    .collect(),
            )
        }
        "join" => {
            let (sep, list) = a.two()?;
            let items = match list {
                Value::List(l) => l.iter().map(Value::to_text).collect::<Vec<_>>(),
                other => vec![other.to_text()],
            };
            Value::Str(items.join(&sep.to_text()))
        }
        "toString" => Value::Str(a.one()?.to_text()),
        "abbrev" => {
            let (n, s) = a.two()?;
            let n = usize::try_from(to_int(&n)?).unwrap_or(0);
            let s = s.to_text();
            if n < 4 || s.chars().count() <= n {
                Value::Str(s)
            } else {
                Value::Str(s.chars().take(n - 3).collect::<String>() + "...")
            }
        }

        "b64enc" => Value::Str(base64::engine::general_purpose::STANDARD.encode(a.one_str()?)),
        "b64dec" => {
            let s = a.one_str()?;
            // Sprig returns its error text as the value; a wrong secret would
            // then travel on silently, so it is an error here.
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| format!("b64dec: {e}"))?;
            Value::Str(String::from_utf8(bytes).map_err(|_| "b64dec: not UTF-8 text".to_owned())?)
        }
        "sha256sum" => {
            let digest = sha2::Sha256::digest(a.one_str()?.as_bytes());
            let mut hex = String::with_capacity(64);
            for b in digest {
                let _ = write!(hex, "{b:02x}");
            }
            Value::Str(hex)
        }
        "toJson" => Value::Str(serde_json::to_string(&a.one()?.to_json()).unwrap_or_default()),

        "default" => {
            a.at_least(1)?;
            let mut it = a.args.into_iter();
            let fallback = it.next().unwrap_or(Value::Nil);
            match it.next() {
                Some(given) if given.truthy() => given,
                _ => fallback,
            }
        }
        "empty" => Value::Bool(!a.one()?.truthy()),
        "coalesce" => a.args.into_iter().find(Value::truthy).unwrap_or(Value::Nil),
        "ternary" => {
            let (t, f, cond) = a.three()?;
            if cond.truthy() { t } else { f }
        }
        "required" => {
            let (msg, v) = a.two()?;
            match v {
                Value::Nil | Value::Missing(_) => return Err(msg.to_text().into()),
                Value::Str(ref s) if s.is_empty() => return Err(msg.to_text().into()),
                v => v,
            }
        }
        "fail" => return Err(a.one_str()?.into()),

        "list" => Value::List(a.args),
        "first" => match a.one()? {
            Value::List(l) => l.into_iter().next().unwrap_or(Value::Nil),
            other => return Err(format!("first: not a list: {}", other.type_name()).into()),
        },
        "last" => match a.one()? {
            Value::List(l) => l.into_iter().last().unwrap_or(Value::Nil),
            other => return Err(format!("last: not a list: {}", other.type_name()).into()),
        },
        "has" => {
            let (needle, list) = a.two()?;
            match list {
                Value::List(l) => Value::Bool(l.iter().any(|v| equal(v, &needle))),
                _ => Value::Bool(false),
            }
        }
        "sortAlpha" => match a.one()? {
            Value::List(l) => {
                let mut items: Vec<String> = l.iter().map(Value::to_text).collect();
                items.sort();
                Value::List(items.into_iter().map(Value::Str).collect())
            }
            other => Value::List(vec![Value::Str(other.to_text())]),
        },
        "uniq" => match a.one()? {
            Value::List(l) => {
                let mut out: Vec<Value> = Vec::new();
                for v in l {
                    if !out.iter().any(|o| equal(o, &v)) {
                        out.push(v);
                    }
                }
                Value::List(out)
            }
            other => return Err(format!("uniq: not a list: {}", other.type_name()).into()),
        },
        "dict" => {
            let mut map = BTreeMap::new();
            let mut it = a.args.into_iter();
            while let Some(k) = it.next() {
                map.insert(k.to_text(), it.next().unwrap_or(Value::Str(String::new())));
            }
            Value::Map(map)
        }
        "get" => {
            let (d, k) = a.two()?;
            match d {
                Value::Map(m) => m
                    .get(&k.to_text())
                    .cloned()
                    .unwrap_or(Value::Str(String::new())),
                other => return Err(format!("get: not a dict: {}", other.type_name()).into()),
            }
        }
        "hasKey" => {
            let (d, k) = a.two()?;
            match d {
                Value::Map(m) => Value::Bool(m.contains_key(&k.to_text())),
                other => return Err(format!("hasKey: not a dict: {}", other.type_name()).into()),
            }
        }
        "keys" => {
            let mut keys: Vec<String> = Vec::new();
            for d in &a.args {
                match d {
                    Value::Map(m) => keys.extend(m.keys().cloned()),
                    other => return Err(format!("keys: not a dict: {}", other.type_name()).into()),
                }
            }
            // Sprig's order is Go's random map order; sorted keeps renders stable.
            keys.sort();
            Value::List(keys.into_iter().map(Value::Str).collect())
        }

        "add" => Value::Int(fold_ints(&a, 0, i64::checked_add)?),
        "mul" => Value::Int(fold_ints(&a, 1, i64::checked_mul)?),
        "add1" => Value::Int(
            to_int(&a.one()?)?
                .checked_add(1)
                .ok_or("add1: overflow".to_owned())?,
        ),
        "sub" | "div" | "mod" => {
            let (x, y) = a.two()?;
            let (x, y) = (to_int(&x)?, to_int(&y)?);
            let r = match name {
                "sub" => x.checked_sub(y),
                "div" => x.checked_div(y),
                _ => x.checked_rem(y),
            };
            Value::Int(r.ok_or_else(|| format!("{name}: division by zero or overflow"))?)
        }
        "max" | "min" => {
            a.at_least(1)?;
            let mut best = to_int(&a.args[0])?;
            for v in &a.args[1..] {
                let v = to_int(v)?;
                best = if name == "max" {
                    best.max(v)
                } else {
                    best.min(v)
                };
            }
            Value::Int(best)
        }
        "int" | "int64" | "atoi" => Value::Int(to_int(&a.one()?)?),

        _ => return Err(format!("function {name:?} not defined").into()),
    })
}

struct Args<'a> {
    name: &'a str,
    args: Vec<Value>,
}

impl Args<'_> {
    fn count(&self, n: usize) -> Result<(), FnError> {
        if self.args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "wrong number of args for {}: want {n} got {}",
                self.name,
                self.args.len()
            )
            .into())
        }
    }
    fn at_least(&self, n: usize) -> Result<(), FnError> {
        if self.args.len() >= n {
            Ok(())
        } else {
            Err(format!(
                "wrong number of args for {}: want at least {n} got {}",
                self.name,
                self.args.len()
            )
            .into())
        }
    }
    fn one(self) -> Result<Value, FnError> {
        self.count(1)?;
        Ok(self.args.into_iter().next().unwrap_or(Value::Nil))
    }
    fn one_str(self) -> Result<String, FnError> {
        Ok(self.one()?.to_text())
    }
    fn two(self) -> Result<(Value, Value), FnError> {
        self.count(2)?;
        let mut it = self.args.into_iter();
        Ok((
            it.next().unwrap_or(Value::Nil),
            it.next().unwrap_or(Value::Nil),
        ))
    }
    fn two_str(self) -> Result<(String, String), FnError> {
        let (a, b) = self.two()?;
        Ok((a.to_text(), b.to_text()))
    }
    fn three(self) -> Result<(Value, Value, Value), FnError> {
        self.count(3)?;
        let mut it = self.args.into_iter();
        Ok((
            it.next().unwrap_or(Value::Nil),
            it.next().unwrap_or(Value::Nil),
            it.next().unwrap_or(Value::Nil),
        ))
    }
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn fold_ints(a: &Args<'_>, start: i64, op: fn(i64, i64) -> Option<i64>) -> Result<i64, FnError> {
    let mut acc = start;
    for v in &a.args {
        acc = op(acc, to_int(v)?).ok_or_else(|| format!("{}: overflow", a.name))?;
    }
    Ok(acc)
}

fn to_int(v: &Value) -> Result<i64, FnError> {
    match v {
        Value::Int(i) => Ok(*i),
        #[allow(clippy::cast_possible_truncation)]
        Value::Float(f) if f.is_finite() => Ok(f.trunc() as i64),
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Str(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{s:?} is not an integer").into()),
        Value::Nil => Ok(0),
        other => Err(format!("{} is not an integer", other.type_name()).into()),
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Int(x), Value::Float(y)) | (Value::Float(y), Value::Int(x)) => {
            #[allow(clippy::cast_precision_loss)]
            let x = *x as f64;
            x == *y
        }
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        #[allow(clippy::cast_precision_loss)]
        (Value::Int(x), Value::Float(y)) => (*x as f64).partial_cmp(y),
        #[allow(clippy::cast_precision_loss)]
        (Value::Float(x), Value::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y),
        _ => None,
    }
}

fn map_words(s: &str, upper: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at_start = true;
    for c in s.chars() {
        if at_start && c.is_alphanumeric() {
            if upper {
                out.extend(c.to_uppercase());
            } else {
                out.extend(c.to_lowercase());
            }
        } else {
            out.push(c);
        }
        at_start = c.is_whitespace();
    }
    out
}

/// Go's `fmt.Sprint`: a space between operands when neither is a string.
fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, v) in args.iter().enumerate() {
        if i > 0 && !matches!(v, Value::Str(_)) && !matches!(args[i - 1], Value::Str(_)) {
            out.push(' ');
        }
        out.push_str(&v.to_text());
    }
    out
}

/// Go's `%q` / `strconv.Quote` for the characters task files contain.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Go's `fmt.Sprintf` for the verbs templates use: v s d q t f e g x X o b c %,
/// with flags `-`, `0`, `+`, width and precision.
fn printf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut next = 0;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut minus, mut zero, mut plus) = (false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => minus = true,
                '0' => zero = true,
                '+' => plus = true,
                ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                chars.next();
            }
            precision = Some(p.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next += 1;
        let mut text = match (verb, arg) {
            ('d', Value::Int(i)) => {
                if plus && *i >= 0 {
                    format!("+{i}")
                } else {
                    i.to_string()
                }
            }
            ('x', Value::Int(i)) => format!("{i:x}"),
            ('X', Value::Int(i)) => format!("{i:X}"),
            ('o', Value::Int(i)) => format!("{i:o}"),
            ('b', Value::Int(i)) => format!("{i:b}"),
            ('c', Value::Int(i)) => u32::try_from(*i)
                .ok()
                .and_then(char::from_u32)
                .map(String::from)
                .unwrap_or_default(),
            ('x', v) => v.to_text().bytes().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            }),
            ('f' | 'F', v) | ('e' | 'g', v) => {
                #[allow(clippy::cast_precision_loss)]
                let f = match v {
                    Value::Float(f) => *f,
                    Value::Int(i) => *i as f64,
                    other => {
                        let _ = write!(out, "%!{verb}({}={})", other.type_name(), other.to_text());
                        continue;
                    }
                };
                match verb {
                    'e' => format!("{:.*e}", precision.unwrap_or(6), f),
                    'g' => go_float(f),
                    _ => format!("{:.*}", precision.unwrap_or(6), f),
                }
            }
            ('q', v) => go_quote(&v.to_text()),
            ('t', Value::Bool(b)) => b.to_string(),
            ('s' | 'v', v) => {
                let t = v.to_text();
                match precision {
                    Some(p) if verb == 's' => t.chars().take(p).collect(),
                    _ => t,
                }
            }
            (verb, v) => format!("%!{verb}({}={})", v.type_name(), v.to_text()),
        };
        let w: usize = width.parse().unwrap_or(0);
        let len = text.chars().count();
        if len < w {
            let pad = w - len;
            if minus {
                text.push_str(&" ".repeat(pad));
            } else if zero && matches!(verb, 'd' | 'f' | 'x' | 'X') {
                text = "0".repeat(pad) + &text;
            } else {
                text = " ".repeat(pad) + &text;
            }
        }
        out.push_str(&text);
    }
    if next < args.len() {
        out.push_str("%!(EXTRA ");
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|v| format!("{}={}", v.type_name(), v.to_text()))
            .collect();
        out.push_str(&extra.join(", "));
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::Str(v.to_owned())
    }

    #[test]
    fn printf_verbs() {
        assert_eq!(printf("%s-%d", &[s("a"), Value::Int(3)]), "a-3");
        assert_eq!(
            printf(
                "%05d|%-3s|%.2f",
                &[Value::Int(42), s("x"), Value::Float(1.5)]
            ),
            "00042|x  |1.50"
        );
        assert_eq!(
            printf("%q %v%%", &[s("a\"b"), Value::Bool(true)]),
            "\"a\\\"b\" true%"
        );
        assert_eq!(printf("%s", &[]), "%!s(MISSING)");
    }

    #[test]
    fn sprig_strings() {
        let call1 = |n: &str, args: Vec<Value>| match call(n, args) {
            Ok(v) => v.to_text(),
            Err(FnError::Message(m) | FnError::Missing(m)) => format!("ERR {m}"),
        };
        assert_eq!(
            call1("title", vec![s("hello big world")]),
            "Hello Big World"
        );
        assert_eq!(call1("trunc", vec![Value::Int(-3), s("abcdef")]), "def");
        assert_eq!(
            call1("substr", vec![Value::Int(1), Value::Int(3), s("abcdef")]),
            "bc"
        );
        assert_eq!(call1("b64enc", vec![s("hi")]), "aGk=");
        assert_eq!(call1("b64dec", vec![s("aGk=")]), "hi");
        assert!(call1("b64dec", vec![s("@@")]).starts_with("ERR"));
        assert_eq!(call1("quote", vec![s("a"), Value::Int(1)]), "\"a\" \"1\"");
        assert_eq!(
            call1("nindent", vec![Value::Int(2), s("a\nb")]),
            "\n  a\n  b"
        );
        assert_eq!(
            call1(
                "join",
                vec![s(","), Value::List(vec![s("a"), Value::Int(2)])]
            ),
            "a,2"
        );
        assert_eq!(call1("split", vec![s(":"), s("a:b")]), "map[_0:a _1:b]");
        assert_eq!(
            call1("default", vec![s("x"), Value::Missing(".Values.y".into())]),
            "x"
        );
        assert_eq!(call1("default", vec![s("x"), s("given")]), "given");
        assert_eq!(call1("sha256sum", vec![s("")]).len(), 64);
        assert!(call1("repeat", vec![Value::Int(1 << 40), s("xx")]).starts_with("ERR"));
        assert_eq!(
            call1("max", vec![Value::Int(1), Value::Int(9), Value::Int(3)]),
            "9"
        );
        assert_eq!(call1("urlquery", vec![s("a b&c")]), "a+b%26c");
    }
}
