//! Executes a parsed template against a value, as Go's `text/template` does.

use super::TemplateError;
use super::funcs::{self, FnError, MAX_OUTPUT};
use super::parse::{Cmd, Node, Operand, Pipe};
use super::value::Value;

/// `range` over an integer is bounded: a task file is not a way to spin an agent.
const MAX_RANGE: i64 = 100_000;

pub(crate) struct Exec {
    out: String,
    vars: Vec<(String, Value)>,
}

impl Exec {
    pub(crate) fn new(root: Value) -> Self {
        Exec {
            out: String::new(),
            vars: vec![("$".to_owned(), root)],
        }
    }

    pub(crate) fn run(mut self, nodes: &[Node]) -> Result<String, TemplateError> {
        let dot = self.vars[0].1.clone();
        self.walk(nodes, &dot)?;
        Ok(self.out)
    }

    fn walk(&mut self, nodes: &[Node], dot: &Value) -> Result<(), TemplateError> {
        for node in nodes {
            match node {
                Node::Text(t) => self.out.push_str(t),
                Node::Action(pipe) => {
                    let v = self.pipe(pipe, dot)?;
                    if pipe.vars.is_empty() {
                        if let Value::Missing(name) = v {
                            return Err(TemplateError::missing(pipe.line, name));
                        }
                        self.out.push_str(&v.to_text());
                    }
                }
                Node::If {
                    branches,
                    otherwise,
                } => {
                    let mark = self.vars.len();
                    let mut taken = false;
                    for (cond, body) in branches {
                        if self.pipe(cond, dot)?.truthy() {
                            self.walk(body, dot)?;
                            taken = true;
                            break;
                        }
                    }
                    if !taken {
                        self.walk(otherwise, dot)?;
                    }
                    self.vars.truncate(mark);
                }
                Node::With {
                    pipe,
                    body,
                    otherwise,
                } => {
                    let mark = self.vars.len();
                    let v = self.pipe(pipe, dot)?;
                    if v.truthy() {
                        self.walk(body, &v)?;
                    } else {
                        self.walk(otherwise, dot)?;
                    }
                    self.vars.truncate(mark);
                }
                Node::Range {
                    pipe,
                    body,
                    otherwise,
                } => self.range(pipe, body, otherwise, dot)?,
            }
            if self.out.len() > MAX_OUTPUT {
                return Err(TemplateError::at(
                    0,
                    "rendered text exceeds 16 MiB".to_owned(),
                ));
            }
        }
        Ok(())
    }

    fn range(
        &mut self,
        pipe: &Pipe,
        body: &[Node],
        otherwise: &[Node],
        dot: &Value,
    ) -> Result<(), TemplateError> {
        let mark = self.vars.len();
        // The range's own variables are bound per element, not by `pipe`.
        let v = self.eval_pipe(pipe, dot)?;
        let items: Vec<(Value, Value)> = match v {
            Value::List(l) => l
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Value::Int(i64::try_from(i).unwrap_or(i64::MAX)), v))
                .collect(),
            Value::Map(m) => m.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
            Value::Int(n) => {
                if n > MAX_RANGE {
                    return Err(TemplateError::at(
                        pipe.line,
                        format!("range over {n}: more than {MAX_RANGE} iterations"),
                    ));
                }
                (0..n.max(0))
                    .map(|i| (Value::Int(i), Value::Int(i)))
                    .collect()
            }
            Value::Nil | Value::Missing(_) => Vec::new(),
            other => {
                return Err(TemplateError::at(
                    pipe.line,
                    format!("range can't iterate over {}", other.type_name()),
                ));
            }
        };
        if items.is_empty() {
            self.walk(otherwise, dot)?;
        }
        for (key, elem) in items {
            match pipe.vars.as_slice() {
                [] => {}
                [e] => self.vars.push((e.clone(), elem.clone())),
                [k, e, ..] => {
                    self.vars.push((k.clone(), key));
                    self.vars.push((e.clone(), elem.clone()));
                }
            }
            self.walk(body, &elem)?;
            self.vars.truncate(mark);
        }
        Ok(())
    }

    /// Evaluates a pipeline and binds its variables.
    fn pipe(&mut self, pipe: &Pipe, dot: &Value) -> Result<Value, TemplateError> {
        let v = self.eval_pipe(pipe, dot)?;
        for name in &pipe.vars {
            if pipe.assign {
                match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = v.clone(),
                    None => {
                        return Err(TemplateError::at(
                            pipe.line,
                            format!("undefined variable: {name}"),
                        ));
                    }
                }
            } else {
                self.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    fn eval_pipe(&mut self, pipe: &Pipe, dot: &Value) -> Result<Value, TemplateError> {
        let mut last: Option<Value> = None;
        for cmd in &pipe.cmds {
            last = Some(self.cmd(cmd, dot, last, pipe.line)?);
        }
        Ok(last.unwrap_or(Value::Nil))
    }

    fn cmd(
        &mut self,
        cmd: &Cmd,
        dot: &Value,
        piped: Option<Value>,
        line: u32,
    ) -> Result<Value, TemplateError> {
        let Some(first) = cmd.args.first() else {
            return Err(TemplateError::at(line, "empty command".to_owned()));
        };
        if let Operand::Func(name) = first {
            let rest = &cmd.args[1..];
            // `and`/`or` stop at the first deciding operand, as Go's do.
            if name == "and" || name == "or" {
                let want = name == "or";
                let mut last = Value::Bool(!want);
                let count = rest.len() + usize::from(piped.is_some());
                if count == 0 {
                    return Err(TemplateError::at(
                        line,
                        format!("wrong number of args for {name}: want at least 1 got 0"),
                    ));
                }
                for op in rest {
                    last = self.operand(op, dot, line)?;
                    if last.truthy() == want {
                        return Ok(last);
                    }
                }
                if let Some(p) = piped {
                    last = p;
                }
                return Ok(last);
            }
            let mut args = Vec::with_capacity(rest.len() + 1);
            for op in rest {
                args.push(self.operand(op, dot, line)?);
            }
            args.extend(piped);
            if !funcs::tolerates_missing(name)
                && let Some(Value::Missing(m)) =
                    args.iter().find(|a| matches!(a, Value::Missing(_)))
            {
                return Err(TemplateError::missing(line, m.clone()));
            }
            return funcs::call(name, args).map_err(|e| match e {
                FnError::Message(m) => TemplateError::at(line, format!("{name}: {m}")),
                FnError::Missing(m) => TemplateError::missing(line, m),
            });
        }
        if cmd.args.len() > 1 || piped.is_some() {
            return Err(TemplateError::at(
                line,
                "can't give an argument to a non-function".to_owned(),
            ));
        }
        self.operand(first, dot, line)
    }

    fn operand(&mut self, op: &Operand, dot: &Value, line: u32) -> Result<Value, TemplateError> {
        match op {
            Operand::Dot => Ok(dot.clone()),
            Operand::Lit(v) => Ok(v.clone()),
            Operand::Field(chain) => fields(dot.clone(), "", chain, line),
            Operand::Var(name, chain) => {
                let v = self
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        TemplateError::at(line, format!("undefined variable: {name}"))
                    })?;
                let base = if name == "$" { "" } else { name.as_str() };
                fields(v, base, chain, line)
            }
            Operand::Func(name) => {
                let cmd = Cmd {
                    args: vec![Operand::Func(name.clone())],
                };
                self.cmd(&cmd, dot, None, line)
            }
            Operand::Sub(pipe, chain) => {
                let v = self.eval_pipe(pipe, dot)?;
                fields(v, "(…)", chain, line)
            }
        }
    }
}

/// Follows `.A.B…` from `v`; `base` starts the path a missing value is named by.
fn fields(mut v: Value, base: &str, chain: &[String], line: u32) -> Result<Value, TemplateError> {
    let mut path = base.to_owned();
    for name in chain {
        path.push('.');
        path.push_str(name);
        v = match v {
            Value::Map(mut m) => m
                .remove(name)
                .unwrap_or_else(|| Value::Missing(path.clone())),
            Value::Missing(_) | Value::Nil => Value::Missing(path.clone()),
            other => {
                return Err(TemplateError::at(
                    line,
                    format!(
                        "can't evaluate field {name} in type {} ({path})",
                        other.type_name()
                    ),
                ));
            }
        };
    }
    Ok(v)
}
