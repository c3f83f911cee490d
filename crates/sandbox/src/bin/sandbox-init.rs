//! The sandbox init as a standalone binary, for the crate's integration
//! tests. Production binaries dispatch to [`sandbox::init::main`] themselves
//! (`slipway sandbox-init`), before starting any thread.

fn main() -> std::process::ExitCode {
    sandbox::init::main()
}
