//! Developer tool: boot a VM with the VMM library alone, printing its
//! events. `cargo run --example boot -- KERNEL INITRD [VSOCK_SOCKET]`
//! (the serial console goes to stdout).

use std::path::PathBuf;
use std::sync::Arc;

use palisade_vmm::{monotonic_ns, run_vm, VmConfig, VsockConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: boot KERNEL INITRD [VSOCK_SOCKET] [KERNEL_PARAMS]");
        std::process::exit(2);
    }
    let start = monotonic_ns();
    let config = VmConfig {
        kernel: PathBuf::from(&args[0]),
        initrd: Some(PathBuf::from(&args[1])),
        kernel_params: args.get(3).cloned().unwrap_or_default(),
        vcpus: 1,
        memory_mib: 128,
        serial_log: Some(PathBuf::from("/dev/stdout")),
        vsock: args.get(2).map(|p| VsockConfig {
            guest_cid: 3,
            uds_path: PathBuf::from(p),
        }),
    };
    let events =
        Arc::new(move |e| eprintln!("+{:.1} ms: {e:?}", (monotonic_ns() - start) as f64 / 1e6));
    match run_vm(config, events) {
        Ok(exit) => eprintln!(
            "+{:.1} ms: exit {exit:?}",
            (monotonic_ns() - start) as f64 / 1e6
        ),
        Err(e) => {
            eprintln!("boot: {e}");
            std::process::exit(1);
        }
    }
}
