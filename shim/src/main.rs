//! containerd-shim-palisade-v2: containerd starts it as the runtime
//! `io.containerd.palisade.v2`; it also re-executes itself as the VMM
//! process of each sandbox (`__vmm`).

use std::process::ExitCode;

use palisade_shim::service::{self, Service, RUNTIME_ID};
use palisade_shim::vmm_process::child;

fn main() -> ExitCode {
    // First thing: the VMM process's start time is a boot phase.
    let started_ns = palisade_vmm::monotonic_ns();
    if let Some(code) = child::run_if_requested(started_ns) {
        return code;
    }
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("containerd-shim-palisade-v2 {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // Parses containerd's flags, then runs `start`, `delete` or the task
    // server; exits the process with an error message on failure.
    containerd_shim::run::<Service>(RUNTIME_ID, Some(service::shim_config()));
    ExitCode::SUCCESS
}
