//! Positions and the typed errors every module returns.

use std::fmt;

use serde::Serialize;

/// A place in the Dockerfile: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub fn new(line: u32, col: u32) -> Self {
        Pos { line, col }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// An error at a position; displays as `LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {kind}")]
pub struct Error {
    pub pos: Pos,
    pub kind: ErrorKind,
}

impl Error {
    pub fn new(pos: Pos, kind: ErrorKind) -> Self {
        Error { pos, kind }
    }
}

/// Every error of a Dockerfile, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Errors(pub Vec<Error>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<Error> for Errors {
    fn from(e: Error) -> Self {
        Errors(vec![e])
    }
}

/// What went wrong. Messages follow BuildKit's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("file with no instructions")]
    NoInstructions,
    #[error("only one {0} parser directive can be used")]
    DuplicateDirective(String),
    #[error("invalid escape token '{0}' does not match ` or \\")]
    InvalidEscape(String),
    #[error("invalid check directive: {0}")]
    InvalidCheck(String),
    #[error("unterminated heredoc: no line `{0}` closes it")]
    UnterminatedHeredoc(String),
    #[error("{0}: when using JSON array syntax, arrays must be comprised of strings only")]
    JsonNotStrings(String),
    #[error("{0} must have two arguments")]
    KeyValueNeedsTwo(String),
    #[error(
        "{keyword}: syntax error - can't find = in \"{word}\". Must be of the form: name=value"
    )]
    KeyValueMissingEquals { keyword: String, word: String },
    #[error("unknown instruction: {name}{}", suggestion_text(.suggestion))]
    UnknownInstruction {
        name: String,
        suggestion: Option<String>,
    },
    #[error("{0} is not allowed before the first FROM: no build stage in current context")]
    NoBuildStage(String),
    #[error("{0} requires at least one argument")]
    AtLeastOneArgument(String),
    #[error("{0} requires exactly one argument")]
    ExactlyOneArgument(String),
    #[error(
        "{0} requires at least two arguments, but only one was provided. Destination could not be determined"
    )]
    NoDestination(String),
    #[error("{0} names can not be blank")]
    BlankName(String),
    #[error("FROM requires either one or three arguments (FROM image [AS name])")]
    FromArguments,
    #[error(
        "invalid name for build stage: \"{0}\", name can't start with a number or contain symbols"
    )]
    InvalidStageName(String),
    #[error("duplicate stage name \"{0}\"")]
    DuplicateStageName(String),
    #[error("{instruction}: unknown flag: --{flag}{}", suggestion_text(.suggestion))]
    UnknownFlag {
        instruction: String,
        flag: String,
        suggestion: Option<String>,
    },
    #[error("missing a value on flag: --{0}")]
    FlagMissingValue(String),
    #[error("duplicate flag specified: --{0}")]
    DuplicateFlag(String),
    #[error("expecting boolean value for flag --{flag}, not: {value}")]
    FlagNotBool { flag: String, value: String },
    #[error("--mount: {0}")]
    Mount(String),
    #[error("invalid network mode \"{0}\" (expected default, none or host)")]
    InvalidNetwork(String),
    #[error("security \"{0}\" is not valid (expected sandbox or insecure)")]
    InvalidSecurity(String),
    #[error("HEALTHCHECK NONE takes no arguments")]
    HealthcheckNoneArgs,
    #[error("Missing command after HEALTHCHECK CMD")]
    HealthcheckMissingCmd,
    #[error("Unknown type \"{0}\" in HEALTHCHECK (try CMD)")]
    HealthcheckType(String),
    #[error("--{flag}: invalid duration \"{value}\"")]
    InvalidDuration { flag: String, value: String },
    #[error("--{0}: interval cannot be less than 1ms")]
    DurationTooShort(String),
    #[error("--{0}: interval cannot be negative")]
    DurationNegative(String),
    #[error("--retries: invalid number \"{0}\"")]
    InvalidRetries(String),
    #[error("--retries cannot be negative ({0})")]
    NegativeRetries(i64),
    #[error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChain,
    #[error("{0} isn't allowed as an ONBUILD trigger")]
    OnbuildTrigger(String),
    #[error("{0} requires the arguments to be in JSON form")]
    NotJson(String),
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    #[error("{instruction} cannot accept a heredoc as {what}")]
    BadHeredoc { instruction: String, what: String },
    #[error("failed to process \"{word}\": {reason}")]
    Expand {
        word: String,
        reason: crate::expand::ExpandError,
    },
    #[error("base name ({0}) should not be blank")]
    BlankBaseName(String),
    #[error("'from' doesn't support variable expansion, define alias stage instead")]
    FromVariable,
    #[error("invalid from flag value {0}: refers to current or future build stage")]
    StageIndex(String),
    #[error("circular dependency detected on stage: {0}")]
    CircularDependency(String),
    #[error("no FROM instruction: the Dockerfile has no stage to build")]
    NoStages,
    #[error("target stage \"{0}\" could not be found")]
    TargetNotFound(String),
    #[error("invalid platform \"{0}\": expected os/arch[/variant]")]
    InvalidPlatform(String),
    #[error("invalid build argument \"{0}\": expected NAME=VALUE or NAME")]
    InvalidBuildArg(String),
    #[error("invalid .dockerignore pattern \"{pattern}\": {reason}")]
    IgnorePattern { pattern: String, reason: String },
}

fn suggestion_text(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean {s}?)"),
        None => String::new(),
    }
}

/// The closest candidate to `word` (case-insensitive), if it is close enough
/// to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = levenshtein(&w, &c.to_ascii_lowercase());
        if d <= (w.len() / 3).max(1) && d < w.len() && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}
