//! Boot-progress signal to palisade's VMM: one byte written to I/O port
//! 0x3f0 per milestone. A port write is the cheapest thing the VMM can
//! observe (a single VM exit, no device model), so it times the boot
//! precisely. Other VMMs ignore the port; QEMU users watch the console.

/// The port the palisade VMM watches.
const PORT: u16 = 0x3f0;

#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum Milestone {
    /// The agent's main() started.
    Started = 1,
    /// The ttrpc server is listening.
    Ready = 2,
}

/// Port access granted to this thread. I/O permissions are per thread, so
/// every milestone must be signalled from the thread that opened it.
pub struct BootProgress {
    enabled: bool,
}

impl BootProgress {
    /// Asks for access to the port. Failure (not root, not x86, no
    /// CAP_SYS_RAWIO) leaves the signal off: it is an optimisation for our
    /// VMM, never a reason to fail boot.
    pub fn open() -> Self {
        Self {
            enabled: set_port_access(true),
        }
    }

    pub fn signal(&self, milestone: Milestone) {
        if self.enabled {
            out_byte(milestone as u8);
        }
    }

    /// Gives the port back so processes the agent later starts cannot poke
    /// the VMM through inherited permissions.
    pub fn close(self) {
        if self.enabled {
            set_port_access(false);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn set_port_access(on: bool) -> bool {
    // SAFETY: ioperm only changes this thread's I/O permission bitmap.
    unsafe { libc::ioperm(libc::c_ulong::from(PORT), 1, libc::c_int::from(on)) == 0 }
}

#[cfg(target_arch = "x86_64")]
fn out_byte(value: u8) {
    // SAFETY: only reached after ioperm granted this port; writing it has no
    // effect on this process's memory.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") PORT, in("al") value,
            options(nomem, nostack, preserves_flags));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn set_port_access(_on: bool) -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn out_byte(_value: u8) {}
