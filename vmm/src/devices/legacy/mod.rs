//! Legacy PC devices on port I/O: the serial console, the i8042 reset line,
//! and palisade's boot-signal port.

mod boot_signal;
pub mod console_log;
pub mod i8042;
pub mod serial;

pub use boot_signal::BootSignalPort;
pub use console_log::ConsoleLog;
pub use i8042::ResetController;
pub use serial::SerialConsole;

/// An `EventFd` as a vm-superio interrupt/reset trigger.
pub struct EventFdTrigger(pub vmm_sys_util::eventfd::EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
