//! containerd-shim-palisade-v2: containerd starts it as the runtime
//! `io.containerd.palisade.v2`; it also re-executes itself as the VMM
//! process of each sandbox (`__vmm`).

use std::process::ExitCode;

use palisade_shim::vmm_process::child;

fn main() -> ExitCode {
    // First thing: the VMM process's start time is a boot phase.
    let started_ns = palisade_vmm::monotonic_ns();
    if let Some(code) = child::run_if_requested(started_ns) {
        return code;
    }
    eprintln!(
        "containerd-shim-palisade-v2: the containerd task service is not implemented yet; \
         use `palisade check` to boot a sandbox VM"
    );
    ExitCode::FAILURE
}
