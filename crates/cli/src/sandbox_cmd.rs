//! `slipway sandbox-init` (hidden): the sandbox's init entry point. The
//! sandbox library re-executes this binary with it to set up a run's
//! namespaces and mounts; it reads its plan from the control socket on
//! stdin and is never meant to be typed by hand. It runs before the async
//! runtime starts: `unshare` of a user namespace needs a single thread.

use std::process::ExitCode;

/// Runs the init (called from `main` before any thread exists).
pub fn main() -> ExitCode {
    sandbox::init::main()
}

/// The subcommand reached the async dispatcher: a wiring bug.
pub fn not_here() -> anyhow::Result<()> {
    anyhow::bail!("sandbox-init must be dispatched before the async runtime starts")
}
