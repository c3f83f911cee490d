//! ACR task files (`acb.yaml`, as acr-builder defines them) for Slipway:
//! render, parse, validate and plan. Pure: the caller passes text in (task
//! file, values files, alias sources, secret values); nothing here reads a
//! file, the network, the clock or the environment, or starts a process.
//!
//! The flow, in acr-builder's order:
//!
//! 1. [`render`]`(text, origin, &RenderContext)` → YAML text. Lines starting
//!    with `#` are dropped (blanked, so lines keep their numbers); for
//!    `version: v1.1.0` the `alias:` block is rendered, merged with the
//!    built-in aliases (`$ID`, `$Registry`, …), the caller's image aliases
//!    (`acr`, `az`, `bash`, `curl`, `purge`, `docker` → the server's images)
//!    and `src` texts, and `$name` is substituted (`$$` is a `$`); then the
//!    whole text is a Go template over `.Run`, `.Values` and `.Secrets`
//!    with the Sprig functions task files use. A template naming a missing
//!    value fails with its name and line.
//! 2. [`parse`]`(text, origin)` → [`TaskFile`]: every key known (an unknown
//!    one is an error naming it and its line), exactly one of `build:`,
//!    `push:`, `cmd:` per step.
//! 3. [`plan()`]`(&TaskFile, &Policy)` → [`Plan`]: defaults applied
//!    (`stepTimeout` 600, `retryDelay` 5, ids `acb_step_N`), the `when`
//!    graph resolved into dependencies (`["-"]` = at once, none = after the
//!    previous step) and checked (unknown or later ids, cycles, duplicate
//!    ids), `build:` lines parsed into [`BuildArgs`], `cmd:` split into an
//!    image (aliases resolved) and arguments, Key Vault secrets, Windows
//!    isolation and (unless the policy allows it) `privileged` refused.
//! 4. [`Plan::display`] for a dry run and `Serialize` for the run record,
//!    both with secret values shown as `***` (see [`Plan::mask_secrets`]).
//!
//! [`load`] does all of it. Every error is an [`Error`] whose `Display`
//! starts with `FILE:LINE` (or `FILE:LINE:COL`) when a line is known.
//!
//! ```ignore
//! let mut ctx = tasks::RenderContext::new(tasks::RunInfo { id: "r1".into(), ..Default::default() });
//! ctx.set("tag=v1")?;
//! let plan = tasks::load(&text, "acb.yaml", &ctx, &tasks::Policy::default())?;
//! print!("{}", plan.display());
//! ```

mod alias;
mod build;
mod display;
mod docker;
mod error;
mod file;
mod plan;
mod render;
mod template;

pub use build::{BuildArg, BuildArgs, BuildSecret};
pub use docker::{DockerRun, DockerVerb, docker_verb};
pub use error::{Error, ErrorKind, Location, Result};
pub use file::{
    Alias, Network, Secret, Step, StepKind, TaskFile, Version, Volume, VolumeMount, parse,
};
pub use plan::{
    Action, Cache, DEFAULT_NETWORK, DEFAULT_RETRY_DELAY, DEFAULT_STEP_TIMEOUT, Plan, PlanSecret,
    PlanStep, PlanVolume, Policy, WORKSPACE, plan,
};
pub use render::{RenderContext, RunInfo, render};

/// Renders, parses and plans a task file; the plan hides the context's
/// secret values.
pub fn load(text: &str, origin: &str, ctx: &RenderContext, policy: &Policy) -> Result<Plan> {
    let rendered = render(text, origin, ctx)?;
    let file = parse(&rendered, origin)?;
    let mut plan = plan(&file, policy)?;
    plan.mask_secrets(ctx.secrets.values());
    Ok(plan)
}
