//! End-to-end tests of the `slipway` binary against real peers: skopeo,
//! buildah, crane and the OCI distribution-spec conformance suite talk to a
//! `slipway server` started by the test; crash safety is checked with
//! `kill -9`. Peers are installed by `scripts/test.sh`; a missing peer fails
//! the test rather than skipping it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod build_features;
mod console;
mod control;
mod crash;
mod deploy;
mod differential;
mod dockerfile;
mod harness;
mod kube;
mod netns;
mod newcomer;
mod object_store;
mod packages;
mod peers;
mod private_deps;
mod serving;
mod slice;
mod tasks;
