//! containerd-shim-palisade-v2: the containerd runtime v2 shim that runs
//! each pod in a KVM microVM, and the `palisade` diagnostic tool. Both
//! binaries are thin entry points over this library.

pub mod agent_client;
pub mod check;
pub mod cli;
pub mod config;
pub mod devtool;
pub mod host_cgroup;
pub mod hybrid_vsock;
pub mod mount;
pub mod sandbox;
pub mod sandbox_dir;
pub mod service;
pub mod share;
pub mod smaps;
pub mod vmm_process;

/// `error: cause: cause`, the way anyhow prints `{:#}`, for errors that are
/// not wrapped in anyhow. A cause whose text the message already contains
/// is skipped: some errors print their source themselves as well as
/// returning it from `source()`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner: {0}")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn chains_causes_without_repeating_them() {
        let io = std::io::Error::other("disk on fire");
        assert_eq!(error_chain(&Outer(Inner(io))), "outer: inner: disk on fire");
    }
}
