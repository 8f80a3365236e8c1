//! Builds a VM from a [`VmConfig`], runs it, and tears it down.

use std::io::{LineWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::arch::{boot, cpuid, layout, mptable, regs};
use crate::devices::bus::{lock, Bus, BusDevice, OverlapError};
use crate::devices::legacy::{
    BootSignalPort, ConsoleLog, EventFdTrigger, ResetController, SerialConsole,
};
use crate::devices::virtio::fs::{self as virtio_fs, VirtioFs};
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{tap::Tap, Net, NetParams};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::event_loop::{Control, EventLoop};
use crate::seccomp::{self, Filters, SeccompMode, ThreadKind};
use crate::vstate::vcpu::{self, VcpuShared, VcpuStop};
use crate::vstate::{memory, vm};
use crate::{
    EventSink, NetConfig, SerialLogConfig, SharedFsConfig, VmConfig, VmExit, BOOT_SIGNAL_PORT,
};

/// The command line every palisade guest gets before the user's: console
/// on the 8250, reset through the i8042 (the VMM's exit), reboot at once
/// on panic, no devices probed that do not exist.
const BASE_CMDLINE: &str =
    "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off nomodule no_timer_check rdinit=/init";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error(transparent)]
    Vsock(#[from] crate::devices::virtio::vsock::backend::BackendError),
    #[error(transparent)]
    SharedFs(#[from] virtio_fs::FsError),
    #[error(transparent)]
    Tap(#[from] crate::devices::virtio::net::tap::TapError),
    #[error("device layout: {0}")]
    Bus(#[from] OverlapError),
    #[error("cannot open the serial log {path}: {source}")]
    SerialLog {
        path: String,
        source: std::io::Error,
    },
    #[error("KVM could not {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the guest stopped the VM with an error: {0}")]
    Guest(String),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("seccomp: {0}")]
    SeccompThreads(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

fn validate(config: &VmConfig) -> Result<(), Error> {
    if config.vcpus == 0 || config.vcpus > mptable::MAX_VCPUS {
        return Err(Error::Config(format!(
            "vcpus = {}: must be 1 to {}",
            config.vcpus,
            mptable::MAX_VCPUS
        )));
    }
    if config.memory_mib < 64 {
        return Err(Error::Config(format!(
            "memory_mib = {}: must be at least 64",
            config.memory_mib
        )));
    }
    if let Some(v) = &config.vsock {
        if v.guest_cid < 3 || v.guest_cid > u64::from(u32::MAX) {
            return Err(Error::Config(format!(
                "guest CID {}: must be 3 to {}",
                v.guest_cid,
                u32::MAX
            )));
        }
    }
    if let Some(fs) = &config.shared_fs {
        virtio_fs::validate(fs)?;
    }
    Ok(())
}

/// SIGTERM and SIGINT, blocked in every VMM thread and read from a
/// signalfd by the event loop, so a stop request is just another event.
fn stop_signals_fd() -> Result<OwnedFd, Error> {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask and
    // signalfd with valid arguments; the fd is owned right after.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io("blocking SIGTERM")(std::io::Error::last_os_error()));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io("creating a signalfd")(std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn serial_output(log: Option<&SerialLogConfig>) -> Result<Box<dyn Write + Send>, Error> {
    match log {
        None => Ok(Box::new(std::io::sink())),
        Some(log) => {
            let file =
                ConsoleLog::open(&log.path, log.max_bytes).map_err(|source| Error::SerialLog {
                    path: log.path.display().to_string(),
                    source,
                })?;
            Ok(Box::new(LineWriter::new(file)))
        }
    }
}

/// Legacy devices on the port bus; returns the bus.
fn legacy_devices(
    vm: &VmFd,
    config: &VmConfig,
    exit_evt: &EventFd,
    events: &EventSink,
) -> Result<Bus, Error> {
    let mut pio = Bus::default();
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(io("creating the serial interrupt"))?;
    vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ)
        .map_err(|source| Error::Kvm {
            what: "route the serial interrupt",
            source,
        })?;
    let serial = SerialConsole::new(
        EventFdTrigger(serial_irq),
        serial_output(config.serial_log.as_ref())?,
    );
    use crate::devices::legacy::{i8042, serial as com};
    pio.insert(
        Arc::new(Mutex::new(serial)),
        com::COM1_PORT,
        com::COM_PORT_LEN,
    )?;
    let reset = exit_evt.try_clone().map_err(io("cloning the exit event"))?;
    pio.insert(
        Arc::new(Mutex::new(ResetController::new(EventFdTrigger(reset)))),
        i8042::I8042_PORT,
        i8042::I8042_PORT_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(BootSignalPort::new(events.clone()))),
        u64::from(BOOT_SIGNAL_PORT),
        1,
    )?;
    Ok(pio)
}

/// Sets RLIMIT_NOFILE for the share's cap (see
/// [`virtio_fs::passthrough::limit_open_files`]) and returns the share's
/// configuration with the cap lowered to what the limit allows, so the
/// guest gets ENFILE from the cap before any open hits the limit.
fn with_open_file_limit(config: &SharedFsConfig) -> SharedFsConfig {
    use virtio_fs::passthrough::{cap_within_limit, limit_open_files};
    let wanted = config.max_open_files;
    let cap = match limit_open_files(wanted) {
        Ok(limit) => cap_within_limit(wanted, limit),
        Err(e) => {
            log::warn!("virtio-fs: cannot set the open file limit: {e}");
            wanted
        }
    };
    if cap < wanted {
        log::warn!(
            "virtio-fs: RLIMIT_NOFILE leaves room for {cap} open files, not the {wanted} configured; the guest gets ENFILE beyond {cap}"
        );
    }
    SharedFsConfig {
        max_open_files: cap.max(1),
        ..config.clone()
    }
}

/// Puts a virtio device on the MMIO bus with its interrupt and queue
/// notifications wired through KVM; returns its (address, irq).
/// Takes ownership of the tap fd the VMM inherited, once: it must be open
/// (a number that names nothing, or fd 0-2, is a supervisor bug).
fn take_tap(n: &NetConfig) -> Result<Tap, Error> {
    if n.tap_fd <= 2 {
        return Err(Error::Config(format!(
            "tap fd {} is one of the standard streams",
            n.tap_fd
        )));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(n.tap_fd, libc::F_GETFD) } < 0 {
        return Err(Error::Config(format!(
            "tap fd {} is not open in the VMM: {}",
            n.tap_fd,
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: the fd is open, was handed to this process for the tap, and
    // nothing else in the VMM owns it; run_vm is called once per process.
    let fd = unsafe { OwnedFd::from_raw_fd(n.tap_fd) };
    Ok(Tap::from_fd(fd)?)
}

fn attach_virtio(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    device: Arc<Mutex<dyn VirtioDevice>>,
    index: u32,
) -> Result<(u64, u32), Error> {
    let addr = layout::VIRTIO_MMIO_START + u64::from(index) * layout::MMIO_DEVICE_SIZE;
    let irq = layout::FIRST_VIRTIO_IRQ + index;
    if irq >= layout::IOAPIC_PINS {
        return Err(Error::Config(
            "too many virtio devices for the IOAPIC".into(),
        ));
    }
    let irqfd = EventFd::new(EFD_NONBLOCK).map_err(io("creating a virtio interrupt"))?;
    vm.register_irqfd(&irqfd, irq)
        .map_err(|source| Error::Kvm {
            what: "route a virtio interrupt",
            source,
        })?;
    for (queue, evt) in lock(&device).queue_events().iter().enumerate() {
        vm.register_ioevent(
            evt,
            &IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET),
            queue as u32,
        )
        .map_err(|source| Error::Kvm {
            what: "attach a queue notification",
            source,
        })?;
    }
    let transport = MmioTransport::new(device, mem.clone(), Interrupt::new(irqfd));
    mmio.insert(
        Arc::new(Mutex::new(transport)) as Arc<Mutex<dyn BusDevice>>,
        addr,
        layout::MMIO_DEVICE_SIZE,
    )?;
    Ok((addr, irq))
}

/// Build the VM described by `config`, run it until the guest resets or the
/// process gets SIGTERM/SIGINT, and tear it down (vCPU threads stopped,
/// sockets removed). Blocks the calling thread.
pub fn run_vm(config: VmConfig, events: EventSink) -> Result<VmExit, Error> {
    validate(&config)?;
    // Built before any thread starts, so each thread's install is one
    // syscall; the SIGSYS handler is process-wide.
    let filters = Arc::new(Filters::build(config.seccomp)?);
    if config.seccomp != SeccompMode::Off {
        seccomp::install_sigsys_handler()?;
    }
    let signals = stop_signals_fd()?;
    vcpu::install_kick_handler().map_err(io("installing the vCPU kick handler"))?;

    let kvm = vm::open_kvm()?;
    let vm = vm::create_vm(&kvm)?;
    let mem = memory::create_guest_memory(config.memory_mib)?;
    memory::register_with_kvm(&vm, &mem)?;

    let exit_evt = EventFd::new(EFD_NONBLOCK).map_err(io("creating the exit event"))?;
    let pio = legacy_devices(&vm, &config, &exit_evt, &events)?;

    let mut event_loop = EventLoop::new().map_err(io("creating the event loop"))?;
    let mut mmio = Bus::default();
    let mut virtio_slots = Vec::new();
    if let Some(v) = &config.vsock {
        let vsock = Arc::new(Mutex::new(Vsock::new(v.guest_cid, &v.uds_path)?));
        virtio_slots.push(attach_virtio(&vm, &mem, &mut mmio, vsock.clone(), 0)?);
        event_loop
            .add_handler(vsock)
            .map_err(io("polling the vsock device"))?;
    }
    if let Some(f) = &config.shared_fs {
        // After the vsock device: exporting a directory sets the process
        // umask to 0 (see `passthrough::new_passthrough`), and the vsock
        // socket is made with the VMM's own umask.
        let f = with_open_file_limit(f);
        let fs = Arc::new(Mutex::new(VirtioFs::new(&f)?));
        // This thread serves virtio-fs and starts the vCPU threads: from
        // here on no VMM thread can create device nodes in the share.
        virtio_fs::passthrough::restrict_thread_capabilities()
            .map_err(io("dropping capabilities for virtio-fs"))?;
        virtio_slots.push(attach_virtio(&vm, &mem, &mut mmio, fs.clone(), 1)?);
        event_loop
            .add_handler(fs)
            .map_err(io("polling the virtio-fs device"))?;
    }

    if let Some(n) = &config.net {
        let net = Arc::new(Mutex::new(
            Net::new(
                NetParams {
                    mac: n.mac,
                    mtu: n.mtu,
                },
                take_tap(n)?,
            )
            .map_err(io("creating the virtio-net device"))?,
        ));
        virtio_slots.push(attach_virtio(&vm, &mem, &mut mmio, net.clone(), 2)?);
        event_loop
            .add_handler(net)
            .map_err(io("polling the virtio-net device"))?;
    }

    let guest = boot::load_kernel(&mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(&mem, path, &guest)?),
        None => None,
    };
    let cmdline = boot::build_cmdline(BASE_CMDLINE, &config.kernel_params, &virtio_slots)?;
    boot::write_boot_info(&mem, &cmdline, initrd)?;
    mptable::setup_mptable(&mem, layout::MPTABLE_START, config.vcpus)?;
    regs::write_gdt(&mem)?;

    let mut base_cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| Error::Kvm {
            what: "report its CPUID",
            source,
        })?;
    if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        cpuid::enable_tsc_deadline(&mut base_cpuid);
    }
    let mut vcpu_fds = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let entry = (id == 0).then_some(guest.entry.0);
        vcpu_fds.push(vcpu::create_vcpu(
            &vm,
            &base_cpuid,
            id,
            config.vcpus,
            entry,
        )?);
    }

    let shared = Arc::new(VcpuShared {
        pio,
        mmio,
        events,
        exit_evt,
        stop_reason: Mutex::new(None),
        stopping: Default::default(),
        start_gate: Default::default(),
    });
    const EXIT_ID: u32 = 0;
    const SIGNAL_ID: u32 = 1;
    event_loop
        .watch(shared.exit_evt.as_raw_fd(), EXIT_ID)
        .map_err(io("polling the exit event"))?;
    event_loop
        .watch(signals.as_raw_fd(), SIGNAL_ID)
        .map_err(io("polling signals"))?;

    let mut threads = Vec::new();
    for (id, fd) in vcpu_fds.into_iter().enumerate() {
        match vcpu::spawn_vcpu(id as u8, fd, shared.clone(), filters.clone()) {
            Ok(t) => threads.push(t),
            Err(e) => {
                shared.start_gate.decide(false);
                stop_vcpus(&shared, threads);
                return Err(e.into());
            }
        }
    }
    // Every vCPU thread has its filter; this thread takes its own, the
    // event loop's, before the vCPUs run and before it reads a queue.
    let failures = shared.start_gate.wait_reports(threads.len());
    let filtered = if failures.is_empty() {
        filters.install(ThreadKind::EventLoop).map_err(Error::from)
    } else {
        Err(Error::SeccompThreads(failures.join("; ")))
    };
    if let Err(e) = filtered {
        shared.start_gate.decide(false);
        stop_vcpus(&shared, threads);
        return Err(e);
    }
    shared.start_gate.decide(true);

    let outcome = loop {
        match event_loop.run_once(-1) {
            Ok(Control::Continue) => {}
            Ok(Control::Owner(EXIT_ID)) => {
                break match lock(&shared.stop_reason).clone() {
                    None | Some(VcpuStop::GuestReset) => Ok(VmExit::GuestReset),
                    Some(VcpuStop::Failed(why)) => Err(Error::Guest(why)),
                };
            }
            Ok(Control::Owner(_)) => break Ok(VmExit::Stopped),
            Err(e) => break Err(io("waiting for events")(e)),
        }
    };
    stop_vcpus(&shared, threads);
    drop(event_loop); // closes the devices: vsock sockets are removed
    outcome
}

/// Stops every vCPU thread: set the flag, then kick each thread out of
/// KVM_RUN until it notices. A thread that never returns is left to die
/// with the process.
fn stop_vcpus(shared: &VcpuShared, threads: Vec<JoinHandle<()>>) {
    shared.stopping.store(true, Ordering::Release);
    for thread in threads {
        for _ in 0..200 {
            if thread.is_finished() {
                break;
            }
            let _ = thread.kill(vcpu::kick_signal());
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            log::warn!("a vCPU thread did not stop; it ends with the process");
        }
    }
}
