//! `slipway dockerfile …`: check a Dockerfile the way a build would read it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dockerfile::{BuildOptions, Platform};

#[derive(Subcommand)]
pub enum DockerfileCommand {
    /// Parse FILE, expand its variables and build its stage graph. Prints
    /// `ok`, or every error as FILE:LINE:COL: message (exit code 1).
    Check {
        /// The Dockerfile to check.
        file: PathBuf,
        /// Print the parsed model as JSON (stages, instructions, flags and
        /// the stage graph); expanded values when --build-arg is given.
        #[arg(long)]
        json: bool,
        /// NAME=VALUE, or NAME to take the value from the environment.
        #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
        build_args: Vec<String>,
        /// The stage to build (default: the last one).
        #[arg(long)]
        target: Option<String>,
        /// Target platform, e.g. linux/arm64 (default: linux/amd64).
        #[arg(long)]
        platform: Option<String>,
    },
}

/// Runs the command; `Ok(false)` means the Dockerfile has errors.
pub fn run(command: DockerfileCommand) -> Result<bool> {
    let DockerfileCommand::Check {
        file,
        json,
        build_args,
        target,
        platform,
    } = command;
    let src = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let src = String::from_utf8_lossy(&src);
    let mut opts = BuildOptions::default();
    if let Some(p) = &platform {
        let Some(p) = Platform::parse(p) else {
            bail!("invalid --platform {p:?}: expected os/arch[/variant]");
        };
        opts.target_platform = p;
    }
    let mut args = BTreeMap::new();
    for a in &build_args {
        match a.split_once('=') {
            Some((k, v)) => {
                args.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Ok(v) = std::env::var(a) {
                    args.insert(a.clone(), v);
                }
            }
        }
    }
    opts.build_args = args;

    let mut out = std::io::stdout().lock();
    match dockerfile::check(&src, &opts, target.as_deref()) {
        Ok((parsed, expanded, graph)) => {
            if json {
                let model = if build_args.is_empty() {
                    parsed
                } else {
                    expanded
                };
                let doc = serde_json::json!({
                    "file": file.display().to_string(),
                    "dockerfile": model,
                    "graph": graph,
                });
                serde_json::to_writer_pretty(&mut out, &doc)?;
                writeln!(out)?;
            } else {
                writeln!(out, "ok")?;
            }
            Ok(true)
        }
        Err(errors) => {
            for e in &errors.0 {
                writeln!(out, "{}:{e}", file.display())?;
            }
            Ok(false)
        }
    }
}
