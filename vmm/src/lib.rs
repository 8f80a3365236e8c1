//! palisade's built-in virtual machine monitor.
//!
//! One [`Vmm`] runs one microVM: guest memory, vCPU threads, an 8250 serial
//! console, an i8042 reset line, and virtio-mmio devices (virtio-vsock with
//! the hybrid unix-socket backend; virtio-fs exporting one host directory).
//! It is meant to run in a process of its own (the shim re-executes
//! itself), never inside the process that talks to containerd: everything
//! here treats the guest as hostile.

pub mod arch;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod seccomp;
mod vmm;
pub mod vstate;

pub use config::{NetConfig, SerialLogConfig, SharedFsConfig, VmConfig, VsockConfig};
pub use devices::legacy::console_log::{
    rotated_path as rotated_console_log, DEFAULT_MAX_BYTES as DEFAULT_CONSOLE_LOG_MAX_BYTES,
};
pub use devices::virtio::fs::passthrough::{DEFAULT_MAX_OPEN_FILES, OPEN_FILE_RESERVE};
pub use seccomp::SeccompMode;

/// What the VMM reports while the VM boots and runs. Timestamps are
/// CLOCK_MONOTONIC nanoseconds, comparable across processes on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    /// The boot vCPU entered the guest for the first time (guest kernel entry).
    GuestEntered { mono_ns: u64 },
    /// The guest wrote `value` to the boot-signal I/O port
    /// ([`BOOT_SIGNAL_PORT`]): the agent's progress markers.
    BootSignal { value: u8, mono_ns: u64 },
}

/// The I/O port the guest agent writes to mark boot progress; the VMM
/// timestamps each write on the host clock.
pub const BOOT_SIGNAL_PORT: u16 = 0x3f0;
/// Value the agent writes when it has started (init duties begin).
pub const BOOT_SIGNAL_AGENT_STARTED: u8 = 1;
/// Value the agent writes when its ttrpc server is listening.
pub const BOOT_SIGNAL_AGENT_READY: u8 = 2;

/// Why the VM stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (i8042 reset, `reboot=k`): its way of
    /// shutting down, on request or after a fatal error.
    GuestReset,
    /// The VMM was asked to stop (SIGTERM/SIGINT).
    Stopped,
}

/// Current CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Receives [`VmEvent`]s; called from vCPU threads, so it must be quick.
pub type EventSink = std::sync::Arc<dyn Fn(VmEvent) + Send + Sync>;

pub use vmm::{run_vm, Error};
