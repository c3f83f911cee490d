//! What a build can fail with: each error names its Dockerfile line where
//! it has one, and [`BuildError::fault`] says who can fix it.

use crate::fault::{Fault, StepError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("{file}: {errors}")]
    Dockerfile {
        file: String,
        errors: dockerfile::Errors,
    },
    #[error("{file}:{line}: {instruction} is not supported by slipway build --local yet: {what}")]
    Unsupported {
        file: String,
        line: u32,
        instruction: String,
        what: String,
    },
    #[error("{file}:{line}: RUN {command} failed with exit code {code}")]
    RunFailed {
        file: String,
        line: u32,
        command: String,
        code: i32,
    },
    #[error("{file}:{line}: COPY {path}: {problem}")]
    Copy {
        file: String,
        line: u32,
        path: String,
        problem: StepError,
    },
    /// ADD's own sources (URLs, git, archives); `path` is shown without a
    /// URL's query, which may be a credential (a SAS token).
    #[error("{file}:{line}: ADD {path}: {problem}")]
    Add {
        file: String,
        line: u32,
        path: String,
        problem: StepError,
    },
    #[error("{file}:{line}: RUN: {problem}")]
    Run {
        file: String,
        line: u32,
        problem: StepError,
    },
    /// A failure around the steps (pulling, pushing, the data dir), with
    /// what was being done.
    #[error("{context}: {source}")]
    Step {
        context: String,
        fault: Fault,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl BuildError {
    /// Who can fix it: a user's Dockerfile, context or flags; the network
    /// (a registry, git server or URL); or this machine. A failed RUN
    /// command is the user's: it ran as written.
    pub fn fault(&self) -> Fault {
        match self {
            BuildError::Dockerfile { .. }
            | BuildError::Unsupported { .. }
            | BuildError::RunFailed { .. } => Fault::User,
            BuildError::Copy { problem, .. }
            | BuildError::Add { problem, .. }
            | BuildError::Run { problem, .. } => problem.fault(),
            BuildError::Step { fault, .. } => *fault,
        }
    }
}

/// `context: error`, the machine's fault (creating, writing, reading our
/// own files); see [`step_err_as`] for the others.
pub(super) fn step_err<E: std::error::Error + Send + Sync + 'static>(
    context: impl Into<String>,
) -> impl FnOnce(E) -> BuildError {
    step_err_as(Fault::Machine, context)
}

/// `context: error`, blamed on `fault`.
pub(super) fn step_err_as<E: std::error::Error + Send + Sync + 'static>(
    fault: Fault,
    context: impl Into<String>,
) -> impl FnOnce(E) -> BuildError {
    move |e| BuildError::Step {
        context: context.into(),
        fault,
        source: Box::new(e),
    }
}

pub(super) fn unsupported(file: &str, line: u32, instruction: &str, what: &str) -> BuildError {
    BuildError::Unsupported {
        file: file.to_owned(),
        line,
        instruction: instruction.into(),
        what: what.into(),
    }
}
