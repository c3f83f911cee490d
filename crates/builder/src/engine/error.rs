//! What a build can fail with.

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
        problem: String,
    },
    /// ADD's own sources (URLs, git, archives); `path` is shown without a
    /// URL's query, which may be a credential (a SAS token).
    #[error("{file}:{line}: ADD {path}: {problem}")]
    Add {
        file: String,
        line: u32,
        path: String,
        problem: String,
    },
    #[error("{file}:{line}: RUN: {problem}")]
    Run {
        file: String,
        line: u32,
        problem: String,
    },
    #[error("{context}: {source}")]
    Step {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub(super) fn step_err<E: std::error::Error + Send + Sync + 'static>(
    context: impl Into<String>,
) -> impl FnOnce(E) -> BuildError {
    move |e| BuildError::Step {
        context: context.into(),
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
