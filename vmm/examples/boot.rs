//! Developer tool: boot a VM with the VMM library alone, printing its
//! events. `cargo run --example boot -- KERNEL INITRD [VSOCK_SOCKET]
//! [KERNEL_PARAMS] [SHARED_DIR]` (the serial console goes to stdout; an
//! empty VSOCK_SOCKET means no vsock device; SHARED_DIR is exported over
//! virtio-fs with the tag `palisade`). `BOOT_VCPUS` sets the vCPU count
//! (default 1); the VMM's warnings and errors go to stderr.

use std::path::PathBuf;
use std::sync::Arc;

use palisade_vmm::{
    monotonic_ns, run_vm, SerialLogConfig, SharedFsConfig, VmConfig, VsockConfig,
    DEFAULT_CONSOLE_LOG_MAX_BYTES, DEFAULT_MAX_OPEN_FILES,
};

/// Prints the VMM's log records (warnings and up) on stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("{}: {}", record.level(), record.args());
        }
    }
    fn flush(&self) {}
}

fn main() {
    static LOGGER: StderrLog = StderrLog;
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Warn));
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: boot KERNEL INITRD [VSOCK_SOCKET] [KERNEL_PARAMS] [SHARED_DIR]");
        std::process::exit(2);
    }
    let start = monotonic_ns();
    let config = VmConfig {
        kernel: PathBuf::from(&args[0]),
        initrd: Some(PathBuf::from(&args[1])),
        kernel_params: args.get(3).cloned().unwrap_or_default(),
        vcpus: std::env::var("BOOT_VCPUS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        memory_mib: 128,
        // Not a regular file: written without rotation.
        serial_log: Some(SerialLogConfig {
            path: PathBuf::from("/dev/stdout"),
            max_bytes: DEFAULT_CONSOLE_LOG_MAX_BYTES,
        }),
        vsock: args.get(2).filter(|p| !p.is_empty()).map(|p| VsockConfig {
            guest_cid: 3,
            uds_path: PathBuf::from(p),
        }),
        shared_fs: args.get(4).map(|dir| SharedFsConfig {
            tag: "palisade".into(),
            dir: PathBuf::from(dir),
            max_open_files: DEFAULT_MAX_OPEN_FILES,
        }),
        net: None,
        seccomp: std::env::var("BOOT_SECCOMP")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
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
