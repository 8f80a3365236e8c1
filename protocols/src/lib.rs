//! The palisade agent API, shared by the shim (client) and palisade-agent
//! (server): protobuf messages and ttrpc services generated from `protos/`.
//!
//! Each proto file yields two modules: `<name>` with its messages and
//! `<name>_ttrpc` with its client and server glue, e.g.
//! [`health_ttrpc::HealthClient`] and [`health_ttrpc::create_health`]. The
//! container lifecycle is its own service, [`containers_ttrpc`].

include!(concat!(env!("OUT_DIR"), "/modules.rs"));

/// API revision this crate describes; `Health.Version` reports it so the shim
/// can refuse an agent it cannot drive. Bump on changes that need the peer to
/// adapt, not on additive ones.
pub const API_VERSION: u32 = 1;

/// vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// First vsock port the agent hands out for process stdio streams (see
/// `containers.proto`); ports at and above it are the agent's to allocate,
/// so nothing else in the guest should listen there.
pub const STDIO_PORT_FIRST: u32 = 2048;

// Re-exported so users name exactly the versions the generated code uses.
pub use protobuf;
pub use ttrpc;
