#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests of the registry over loopback HTTP: Basic and bearer
//! authentication with the Docker token flow, blobs and ranged reads,
//! chunked/streamed uploads and cross-repository mounts, manifests (OCI,
//! Docker schema 2, indexes) and their errors, repository-name validation,
//! tag and catalog pagination, the referrers API, and garbage collection.

mod auth;
mod blobs;
mod common;
mod gc;
mod listing;
mod manifests;
mod names;
mod referrers;
mod uploads;
