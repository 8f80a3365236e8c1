//! palisade-agent: PID 1 of a palisade guest VM. It does the init duties,
//! then serves the agent API (palisade-protocols) over vsock to the shim.
//!
//! Run as anything other than PID 1 it only serves, on the address given
//! with `--listen`, so it can be tested on a host.

mod boot_progress;
mod clock;
mod container;
mod guest_info;
mod init;
mod logger;
mod options;
mod power;
mod reaper;
mod rpc;
mod signals;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use log::{info, LevelFilter};

use boot_progress::{BootProgress, Milestone};
use clock::{micros_between, Timeline};
use container::cgroups::Cgroups;
use power::Mode;
use reaper::Reaper;

/// Time for the Shutdown reply to leave before the VM (or process) goes.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(50);

/// Where the guest's cgroup v2 hierarchy is mounted (by init).
const GUEST_CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn main() {
    // A container's init process is this binary re-executed; it is PID 1
    // of its own pid namespace, so this comes before the PID 1 check.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(container::INIT_ARG)) {
        container::init::main()
    }
    let timeline = Arc::new(Timeline::new(clock::boottime_ns()));
    if nix::unistd::getpid().as_raw() == 1 {
        power::set_mode(Mode::Guest);
        run_guest(timeline)
    } else {
        power::set_mode(Mode::Host);
        run_host(timeline)
    }
}

fn run_guest(timeline: Arc<Timeline>) -> ! {
    let progress = BootProgress::open();
    progress.signal(Milestone::Started);
    logger::init(LevelFilter::Info);
    power::install_panic_hook();
    // Both need a single-threaded process; nothing has spawned yet.
    init::set_path();
    if let Err(e) = signals::block() {
        power::fatal(format_args!("blocking signals: {e}"));
    }

    let opts = init::run().unwrap_or_else(|e| power::fatal(e));
    timeline.mark_init_done();

    let addr = opts
        .agent_addr
        .unwrap_or_else(|| options::DEFAULT_GUEST_ADDR.to_string());
    let cgroups = if Path::new(GUEST_CGROUP_ROOT)
        .join("cgroup.controllers")
        .exists()
    {
        Cgroups::V2(PathBuf::from(GUEST_CGROUP_ROOT))
    } else {
        log::warn!("no cgroup2 at {GUEST_CGROUP_ROOT}: containers run without limits or stats");
        Cgroups::Disabled
    };
    serve_until_shutdown(&addr, timeline, Some(progress), cgroups)
}

fn run_host(timeline: Arc<Timeline>) -> ! {
    let args = match options::parse_host_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("palisade-agent: {e}");
            std::process::exit(2)
        }
    };
    logger::init(args.log_level);
    power::install_panic_hook();
    if let Err(e) = signals::block() {
        power::fatal(format_args!("blocking signals: {e}"));
    }
    // No init duties on a host.
    timeline.mark_init_done();
    let cgroups = args.cgroup_root.map_or(Cgroups::Disabled, Cgroups::V2);
    serve_until_shutdown(&args.listen, timeline, None, cgroups)
}

fn serve_until_shutdown(
    addr: &str,
    timeline: Arc<Timeline>,
    progress: Option<BootProgress>,
    cgroups: Cgroups,
) -> ! {
    let guest = progress.is_some();
    // Before any container exists and before threads: the copy container
    // init processes run from (sealed_exe.rs).
    if let Err(e) = container::sealed_exe::init() {
        power::fatal(format_args!("sealing a copy of the agent binary: {e}"));
    }
    let (shutdown, shutdown_requested) = power::shutdown_channel();
    let on_signal = shutdown.clone();
    let reaper = Arc::new(Reaper::new());
    if let Err(e) = signals::spawn(reaper.clone(), move || on_signal.trigger()) {
        power::fatal(format_args!("starting the signal thread: {e}"));
    }
    let containers = Arc::new(container::Manager::new(
        reaper,
        cgroups,
        container::stdio::PortAllocator::for_listen_addr(addr),
    ));

    // Kept alive until the process ends.
    let _server = rpc::serve(addr, timeline.clone(), shutdown, containers.clone())
        .unwrap_or_else(|e| power::fatal(format_args!("serving on {addr}: {e}")));
    if let Some(path) = unix_socket_path(addr) {
        // Registered only once bound, so a failed bind never removes a
        // socket another agent owns.
        power::remove_on_exit(path);
    }
    timeline.mark_ready();
    if let Some(progress) = progress {
        progress.signal(Milestone::Ready);
        progress.close();
    }
    logger::announce_ready();
    log_timeline(&timeline, addr);

    shutdown_requested.wait();
    std::thread::sleep(SHUTDOWN_GRACE);
    info!("shutting down");
    if !guest {
        // On a host, containers would outlive the agent; in a guest the VM
        // ends with it, so there is nothing to wait for.
        containers.shutdown();
    }
    power::end(0)
}

/// The filesystem path of a `unix://` address (not abstract ones).
fn unix_socket_path(addr: &str) -> Option<PathBuf> {
    addr.strip_prefix("unix://")
        .filter(|p| !p.starts_with('@'))
        .map(PathBuf::from)
}

fn log_timeline(timeline: &Timeline, addr: &str) {
    let t = timeline.snapshot();
    info!(
        "listening on {addr}; started {} ms after kernel start, init done in {} us, ready in {} us",
        t.agent_start_ns / 1_000_000,
        micros_between(t.agent_start_ns, t.init_done_ns),
        micros_between(t.agent_start_ns, t.ready_ns),
    );
}
