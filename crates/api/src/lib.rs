//! The control plane's REST API (`/api/v1`): the wire types and a typed
//! client. The server, the agents and the CLI all speak through this crate,
//! so a field renamed here is renamed everywhere at once.

pub mod client;
pub mod types;

pub use client::{ApiError, Client, host_of};
pub use types::*;

/// Path prefix of every API route.
pub const PREFIX: &str = "/api/v1";
