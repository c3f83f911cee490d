//! Integration tests of the real sandbox: namespaces, mounts, kill, network.
//! They need root (or, for `rootless`, unprivileged user namespaces); under
//! CI (`CI` set; `testkit::root_or_skip`) a missing privilege fails the test instead of skipping it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandbox::*;
use tempfile::TempDir;

mod harness;
use harness::*;

mod confinement;
mod isolation;
mod kill;
mod network;
mod rootless;
