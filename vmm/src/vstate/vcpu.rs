//! vCPU threads: each runs KVM_RUN and routes port and MMIO exits to the
//! buses. The guest controls every exit; none of them may panic the VMM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{cpuid, regs};
use crate::devices::bus::{lock, Bus};
use crate::seccomp::{Filters, ThreadKind};
use crate::{monotonic_ns, EventSink, VmEvent};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {id}: {source}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("cannot set CPUID on vCPU {id}: {source}")]
    Cpuid { id: u8, source: kvm_ioctls::Error },
    #[error("vCPU {id}: {source}")]
    Regs { id: u8, source: regs::RegsError },
    #[error("cannot start the vCPU {id} thread: {source}")]
    Spawn { id: u8, source: std::io::Error },
}

/// Why the VM must stop, as seen from a vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest reset or shut down the machine.
    GuestReset,
    /// KVM reported something the VMM cannot continue from.
    Failed(String),
}

/// What all vCPU threads share.
pub struct VcpuShared {
    pub pio: Bus,
    pub mmio: Bus,
    pub events: EventSink,
    /// Written when a vCPU wants the VM to stop; the event loop watches it.
    pub exit_evt: EventFd,
    /// The first stop reason reported, if a vCPU reported one.
    pub stop_reason: Mutex<Option<VcpuStop>>,
    /// Set by the event loop when the VM is going down.
    pub stopping: AtomicBool,
    /// Holds every vCPU thread after it installed its seccomp filter until
    /// the main thread has installed its own: no guest code runs before
    /// every thread is filtered.
    pub start_gate: StartGate,
}

/// The vCPU threads' start line: each reports its filter installed (or
/// why not), then waits for the main thread to open the gate (run) or
/// close it (give up).
#[derive(Default)]
pub struct StartGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    reported: usize,
    failures: Vec<String>,
    open: Option<bool>,
}

impl StartGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn report(&self, result: Result<(), String>) {
        let mut state = self.lock();
        state.reported += 1;
        if let Err(why) = result {
            state.failures.push(why);
        }
        self.changed.notify_all();
    }

    /// Whether the thread may run the guest; blocks until decided.
    fn wait_open(&self) -> bool {
        let mut state = self.lock();
        loop {
            if let Some(open) = state.open {
                return open;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits for `threads` reports; returns the failures.
    pub fn wait_reports(&self, threads: usize) -> Vec<String> {
        let mut state = self.lock();
        while state.reported < threads {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        std::mem::take(&mut state.failures)
    }

    /// Lets the vCPU threads run the guest (`true`) or end (`false`).
    pub fn decide(&self, run: bool) {
        self.lock().open = Some(run);
        self.changed.notify_all();
    }
}

impl VcpuShared {
    fn request_stop(&self, reason: VcpuStop) {
        lock(&self.stop_reason).get_or_insert(reason);
        let _ = self.exit_evt.write(1);
    }
}

/// Creates vCPU `id` with CPUID, MSRs, FPU and LAPIC set; the boot vCPU
/// also gets the PVH entry state.
pub fn create_vcpu(
    vm: &VmFd,
    base_cpuid: &CpuId,
    id: u8,
    count: u8,
    entry: Option<u64>,
) -> Result<VcpuFd, VcpuError> {
    let fd = vm
        .create_vcpu(u64::from(id))
        .map_err(|source| VcpuError::Create { id, source })?;
    let mut cpuid = base_cpuid.clone();
    cpuid::filter_cpuid(&mut cpuid, id, count).map_err(|_| VcpuError::Cpuid {
        id,
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    fd.set_cpuid2(&cpuid)
        .map_err(|source| VcpuError::Cpuid { id, source })?;
    let regs_err = |source| VcpuError::Regs { id, source };
    regs::setup_msrs(&fd).map_err(regs_err)?;
    regs::setup_fpu(&fd).map_err(regs_err)?;
    regs::setup_lapic(&fd).map_err(regs_err)?;
    if let Some(entry) = entry {
        regs::setup_boot_regs(&fd, entry).map_err(regs_err)?;
    }
    Ok(fd)
}

/// Signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the (empty) kick handler: its only job is to make KVM_RUN
/// return EINTR.
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Starts vCPU `id`'s thread: it installs the vCPU seccomp filter, reports
/// to [`VcpuShared::start_gate`], and enters the guest once the gate opens.
pub fn spawn_vcpu(
    id: u8,
    fd: VcpuFd,
    shared: Arc<VcpuShared>,
    filters: Arc<Filters>,
) -> Result<JoinHandle<()>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            let installed = filters
                .install(ThreadKind::Vcpu)
                .map_err(|e| format!("vcpu{id}: {e}"));
            shared.start_gate.report(installed);
            if shared.start_gate.wait_open() {
                run_vcpu(id, fd, &shared);
            }
        })
        .map_err(|source| VcpuError::Spawn { id, source })
}

fn run_vcpu(id: u8, mut fd: VcpuFd, shared: &VcpuShared) {
    if id == 0 {
        (shared.events)(VmEvent::GuestEntered {
            mono_ns: monotonic_ns(),
        });
    }
    while !shared.stopping.load(Ordering::Acquire) {
        match fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                shared.pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                // Nothing at that port: the bus floats high, as on a PC.
                if !shared.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !shared.mmio.read(addr, data) {
                    data.fill(0);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                shared.mmio.write(addr, data);
            }
            Ok(VcpuExit::Shutdown) => {
                // A triple fault: on a PC this resets the machine. A Linux
                // guest never does it on purpose (it panics and reboots
                // through the i8042), so say where it was: the only clue.
                // (On AMD, KVM has reset the vCPU before this exit, so the
                // state there is the reset vector, rip 0xfff0.)
                let detail = cpu_state_detail(&fd);
                log::warn!("vcpu{id}: guest triple-faulted ({detail}); treating it as a reset");
                shared.request_stop(VcpuStop::GuestReset);
                return;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                log::info!("vcpu{id}: guest system event {kind}");
                shared.request_stop(VcpuStop::GuestReset);
                return;
            }
            Ok(VcpuExit::Hlt) => {
                shared.request_stop(VcpuStop::Failed(format!(
                    "vcpu{id} halted with interrupts off"
                )));
                return;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                shared.request_stop(VcpuStop::Failed(format!(
                    "vcpu{id}: KVM could not enter the guest (hardware reason {reason:#x} on host CPU {cpu})"
                )));
                return;
            }
            Ok(VcpuExit::InternalError) => {
                let detail = internal_error_detail(&mut fd);
                shared.request_stop(VcpuStop::Failed(format!(
                    "vcpu{id}: KVM internal error ({detail})"
                )));
                return;
            }
            Ok(other) => {
                shared.request_stop(VcpuStop::Failed(format!(
                    "vcpu{id}: unexpected exit {other:?}"
                )));
                return;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
            }
            Err(e) => {
                shared.request_stop(VcpuStop::Failed(format!("vcpu{id}: KVM_RUN failed: {e}")));
                return;
            }
        }
    }
}

/// Where the vCPU was and in which mode: rip, rsp, the control registers
/// and the pending exception, for a guest that crashed without a word.
fn cpu_state_detail(fd: &VcpuFd) -> String {
    let regs = match fd.get_regs() {
        Ok(r) => format!("rip {:#x} rsp {:#x} rflags {:#x}", r.rip, r.rsp, r.rflags),
        Err(e) => format!("registers unknown ({e})"),
    };
    let sregs = match fd.get_sregs() {
        Ok(s) => format!(
            "cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        ),
        Err(e) => format!("control registers unknown ({e})"),
    };
    let exception = match fd.get_vcpu_events() {
        Ok(ev) if ev.exception.injected != 0 || ev.exception.pending != 0 => format!(
            "exception {} error code {:#x}",
            ev.exception.nr, ev.exception.error_code
        ),
        Ok(_) => "no exception pending".to_owned(),
        Err(e) => format!("events unknown ({e})"),
    };
    format!("{regs}; {sregs}; {exception}")
}

/// What KVM says about an internal error, and where the guest was: the
/// only clues to an instruction KVM could not emulate or an exception it
/// could not deliver.
fn internal_error_detail(fd: &mut VcpuFd) -> String {
    // SAFETY: after an exit with reason KVM_EXIT_INTERNAL_ERROR, the kvm_run
    // union holds the `internal` member; ndata is clamped to its array.
    let (suberror, data) = unsafe {
        let internal = fd.get_kvm_run().__bindgen_anon_1.internal;
        let n = (internal.ndata as usize).min(internal.data.len());
        (internal.suberror, internal.data[..n].to_vec())
    };
    let kind = match suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception during exception delivery",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
        kvm_bindings::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown suberror",
    };
    let rip = fd
        .get_regs()
        .map(|r| format!("{:#x}", r.rip))
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let data: Vec<String> = data.iter().map(|d| format!("{d:#x}")).collect();
    format!(
        "suberror {suberror}: {kind}; guest rip {rip}; data [{}]",
        data.join(", ")
    )
}
