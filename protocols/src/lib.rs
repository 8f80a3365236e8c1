//! The palisade agent API, shared by the shim (client) and palisade-agent
//! (server): protobuf messages and ttrpc services generated from `protos/`.
//!
//! Each proto file yields two modules: `<name>` with its messages and
//! `<name>_ttrpc` with its client and server glue, e.g.
//! [`health_ttrpc::HealthClient`] and [`health_ttrpc::create_health`].

include!(concat!(env!("OUT_DIR"), "/modules.rs"));

/// API revision this crate describes; `Health.Version` reports it so the shim
/// can refuse an agent it cannot drive. Bump on changes that need the peer to
/// adapt, not on additive ones.
pub const API_VERSION: u32 = 1;

/// vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

// Re-exported so users name exactly the versions the generated code uses.
pub use protobuf;
pub use ttrpc;
