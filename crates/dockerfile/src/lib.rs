//! The Dockerfile frontend: whatever BuildKit accepts, read the same way;
//! whatever it rejects, rejected with a `LINE:COL` and a message.
//!
//! The pipeline is pure (no I/O: `&str` in, typed values out):
//!
//! - [`parser`]: text → [`parser::Ast`] (directives, continuations, heredocs);
//! - [`instructions`]: AST → [`Dockerfile`] of [`Stage`]s with typed,
//!   validated instructions and flags; [`Dockerfile::expand`] applies build
//!   arguments with Docker's ARG scoping;
//! - [`expand`]: the shell-word lexer behind variable expansion;
//! - [`graph`]: the stage graph, target pruning and parallel levels;
//! - [`ignore`]: `.dockerignore` matching, one path at a time.
//!
//! ```ignore
//! let df = dockerfile::parse(text)?;                       // raw model
//! let df = df.expand(&dockerfile::BuildOptions::default()).map_err(dockerfile::Errors)?;
//! let graph = dockerfile::StageGraph::new(&df, Some("release"))?;
//! for level in &graph.levels { /* build these stages in parallel */ }
//! ```

pub mod error;
pub mod expand;
pub mod graph;
pub mod ignore;
pub mod instructions;
pub mod parser;

pub use error::{Error, ErrorKind, Errors, Pos};
pub use graph::StageGraph;
pub use ignore::{Decision, IgnoreMatcher};
pub use instructions::{BuildOptions, Command, Dockerfile, Instruction, Platform, Stage};

/// Parses and lowers a Dockerfile. Every error found is returned, in file
/// order.
pub fn parse(src: &str) -> Result<Dockerfile, Errors> {
    let (ast, mut errors) = parser::parse(src);
    match instructions::lower(ast) {
        Ok(df) if errors.is_empty() => Ok(df),
        Ok(_) => Err(sorted(errors)),
        Err(mut more) => {
            errors.append(&mut more);
            Err(sorted(errors))
        }
    }
}

/// [`parse`] for raw bytes (invalid UTF-8 is replaced, as Go does).
pub fn parse_bytes(src: &[u8]) -> Result<Dockerfile, Errors> {
    parse(&String::from_utf8_lossy(src))
}

/// Everything `slipway dockerfile check` does: parse, lower, expand with
/// `opts`, and build the stage graph for `target`. Returns the raw and the
/// expanded model.
pub fn check(
    src: &str,
    opts: &BuildOptions,
    target: Option<&str>,
) -> Result<(Dockerfile, Dockerfile, StageGraph), Errors> {
    let df = parse(src)?;
    let expanded = df.expand(opts).map_err(sorted)?;
    let graph = StageGraph::new(&expanded, target)?;
    Ok((df, expanded, graph))
}

fn sorted(mut errors: Vec<Error>) -> Errors {
    errors.sort_by_key(|e| e.pos);
    Errors(errors)
}
