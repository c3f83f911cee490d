//! Who has to act when a build step fails. A step's own failures are
//! [`StepError`]s, each blamed on the user (a bad Dockerfile, context,
//! flag or source), the network (a registry, git server or URL that failed
//! or refused) or this machine (disk, sandbox, kernel); the engine puts
//! the Dockerfile line around them ([`crate::BuildError`]), whose
//! [`fault`](crate::BuildError::fault) tells a caller which it was: only a
//! network or machine fault may go away on a retry or on another machine.

use std::fmt::Display;

/// Who can fix a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The Dockerfile, the build context, a flag or a source named in them.
    User,
    /// A registry, a git server or a URL: unreachable, refusing, failing.
    Network,
    /// This machine: its disk, the sandbox, the kernel, a missing tool.
    Machine,
}

/// A step's failure: the message users see, and whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    fault: Fault,
    message: String,
}

impl StepError {
    pub(crate) fn new(fault: Fault, message: impl Display) -> StepError {
        StepError {
            fault,
            message: message.to_string(),
        }
    }

    pub(crate) fn user(message: impl Display) -> StepError {
        StepError::new(Fault::User, message)
    }

    pub(crate) fn network(message: impl Display) -> StepError {
        StepError::new(Fault::Network, message)
    }

    pub(crate) fn machine(message: impl Display) -> StepError {
        StepError::new(Fault::Machine, message)
    }

    /// An I/O error on a path the user named (a source, a destination in
    /// the image): what is missing or of the wrong type is the user's to
    /// fix; anything else (no space, a failing disk) the machine's.
    pub(crate) fn io(e: std::io::Error) -> StepError {
        use std::io::ErrorKind as K;
        let fault = match e.kind() {
            K::NotFound | K::NotADirectory | K::IsADirectory | K::InvalidInput => Fault::User,
            _ => Fault::Machine,
        };
        StepError::new(fault, e)
    }

    pub fn fault(&self) -> Fault {
        self.fault
    }

    /// `context: message`, of the same fault.
    pub(crate) fn context(self, context: impl Display) -> StepError {
        StepError {
            fault: self.fault,
            message: format!("{context}: {}", self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_blame_the_user_for_missing_paths_and_context_keeps_the_fault() {
        let missing = StepError::io(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(missing.fault(), Fault::User);
        let full = StepError::io(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert_eq!(full.fault(), Fault::Machine);
        let e = StepError::network("timed out").context("downloading");
        assert_eq!(e.fault(), Fault::Network);
        assert_eq!(e.to_string(), "downloading: timed out");
        let built = crate::BuildError::Add {
            file: "Dockerfile".into(),
            line: 3,
            path: "https://h/f".into(),
            problem: e,
        };
        assert_eq!(built.fault(), Fault::Network);
        assert_eq!(
            built.to_string(),
            "Dockerfile:3: ADD https://h/f: downloading: timed out"
        );
    }
}
