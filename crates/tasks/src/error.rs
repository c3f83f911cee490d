//! The crate's one error type: what went wrong and where (FILE:LINE[:COL]).

use std::fmt;

/// Where an error is: the task file (or values text) by the name the caller
/// gave it, and a line (and column) when one is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub origin: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
}

impl Location {
    pub(crate) fn file(origin: &str) -> Self {
        Location {
            origin: origin.to_owned(),
            line: None,
            column: None,
        }
    }

    pub(crate) fn line(origin: &str, line: u32) -> Self {
        Location {
            origin: origin.to_owned(),
            line: (line > 0).then_some(line),
            column: None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        Ok(())
    }
}

/// A task file that cannot be run, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {kind}")]
pub struct Error {
    pub location: Location,
    pub kind: ErrorKind,
}

impl Error {
    pub(crate) fn new(location: Location, kind: ErrorKind) -> Self {
        Error { location, kind }
    }
}

/// What is wrong. Step names are ids, or the `acb_step_N` default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Not YAML, an unknown key (named), a wrong type or a duplicate key.
    #[error("{0}")]
    Yaml(String),
    #[error(
        "unsupported version {found:?}: a task file says version v1.1.0, v1.0.0 or 1.0-preview-1"
    )]
    Version { found: String },
    #[error("step {step} has {}; a step has exactly one of build:, push:, cmd:", describe_kinds(.found))]
    StepType {
        step: String,
        found: Vec<&'static str>,
    },
    #[error("step {step}: when names {dependency:?}, which is not the id of any step")]
    UnknownDependency { step: String, dependency: String },
    #[error(
        "step {step}: when names {dependency:?}, a later step (line {line}); a step can only wait for steps above it"
    )]
    LaterDependency {
        step: String,
        dependency: String,
        line: u32,
    },
    #[error("steps wait for each other in a cycle: {} (each waits for the next)", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("duplicate step id {id:?} (first used at line {first_line})")]
    DuplicateId { id: String, first_line: u32 },
    /// Any other step property out of range or malformed.
    #[error("step {step}: {message}")]
    Step { step: String, message: String },
    #[error("step {step}: build: {message}")]
    BuildArgs { step: String, message: String },
    #[error(
        "step {step}: privileged: true is not allowed on this pool (an administrator allows it in the pool's policy)"
    )]
    Privileged { step: String },
    #[error(
        "step {step}: isolation {value:?} is a Windows container option; Slipway runs steps in its Linux sandbox: remove isolation:"
    )]
    Isolation { step: String, value: String },
    #[error(
        "secret {id}: keyvault {url:?} is an Azure Key Vault, which Slipway does not read; store the value in Slipway with `slipway secret set {id} --value-stdin` and reference it as `secrets: - id: {id}` (no keyvault:)"
    )]
    KeyVault { id: String, url: String },
    /// A template that does not parse or fails to execute.
    #[error("template: {0}")]
    Template(String),
    /// A template named a value the run does not have.
    #[error("template names {name}, which has no value{hint}")]
    MissingValue { name: String, hint: String },
    /// Anything else about the file's content (aliases, secrets, volumes, env).
    #[error("{0}")]
    Invalid(String),
    /// `--set K=V` pairs or a values text that cannot be read.
    #[error("{0}")]
    Values(String),
}

fn describe_kinds(found: &[&str]) -> String {
    match found {
        [] => "none of build:, push:, cmd:".to_owned(),
        kinds => kinds
            .iter()
            .map(|k| format!("{k}:"))
            .collect::<Vec<_>>()
            .join(" and "),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
