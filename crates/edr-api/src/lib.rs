//! The agent's local API: HTTP/1.1 with JSON on a Unix socket, so that an
//! unprivileged front end (the menu-bar app, `edr-agent status`, `curl
//! --unix-socket`) can read and steer a root agent.
//!
//! - [`server`]: binds the socket safely and serves the versioned paths
//!   (`/v1/...`) over an [`edr_engine::EngineHandle`]; the engine knows
//!   nothing of HTTP.
//! - [`peer`]: authorization by the kernel's peer credentials: root and
//!   members of the group `edr-agent`, decided once per connection.
//! - [`client`]: the typed client, with the protocol check.
//! - [`wire`]: the JSON bodies, shared by both sides.

pub mod client;
pub mod peer;
pub mod server;
pub mod wire;

/// The API's protocol version, in `GET /v1/hello`. Raised when a path or
/// a body changes incompatibly; a client refuses a server speaking
/// another version instead of misreading it.
pub const PROTOCOL_VERSION: u32 = 1;

pub use client::{Client, ClientError};
pub use server::{serve, BoundSocket, ServeError};
