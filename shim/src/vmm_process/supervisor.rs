//! The parent side: starts the VMM process, follows its progress lines on a
//! thread, and stops it.

use std::ffi::OsString;
use std::io::{self, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use palisade_vmm::seccomp::SigsysReport;
use palisade_vmm::VmExit;
use palisade_vmm::{SerialLogConfig, SharedFsConfig, VmConfig, VsockConfig};

use super::args::{self, GUEST_CID, VMM_SUBCOMMAND};
use super::protocol::{read_line_bounded, Line, VmmMessage, MAX_LINE_LEN};
use crate::config::HypervisorConfig;
use crate::sandbox_dir;

/// Re-executing through /proc/self/exe starts exactly the binary that is
/// running, even if the file on disk was replaced by an upgrade meanwhile.
const SELF_EXE: &str = "/proc/self/exe";
/// argv[0] of VMM processes, for `ps`.
const VMM_ARGV0: &str = "palisade-vmm";
/// A guest can hit the boot-signal port in a loop; keep only the first ones.
const MAX_BOOT_SIGNALS: usize = 64;
/// How much of the VMM's stderr to keep for error messages.
const STDERR_TAIL_BYTES: usize = 4096;
/// Longest stderr line put into an error message.
const STDERR_LINE_MAX: usize = 1024;
/// How long to wait for the rest of stderr once stdout has closed, so an
/// exit is reported with the error line that explains it.
const STDERR_SETTLE: Duration = Duration::from_millis(500);
/// Polling step while waiting for the process to be reapable.
const REAP_POLL: Duration = Duration::from_millis(2);
/// The tag the agent mounts the shared directory by.
const SHARED_FS_TAG: &str = "palisade";

/// What the VMM process has reported so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// CLOCK_MONOTONIC when the VMM process's main began.
    pub started_ns: Option<u64>,
    /// First entry into the guest.
    pub guest_entered_ns: Option<u64>,
    /// Boot-signal writes in arrival order, up to [`MAX_BOOT_SIGNALS`].
    pub boot_signals: Vec<BootSignalAt>,
    /// How the VM ended, if the VMM said so.
    pub exit: Option<VmExit>,
    /// The VMM's stdout closed: it has exited or is about to.
    pub stdout_closed: bool,
    /// The first line that broke the protocol, if any.
    pub protocol_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSignalAt {
    pub value: u8,
    pub mono_ns: u64,
}

impl Progress {
    /// When `value` was first signalled.
    pub fn boot_signal(&self, value: u8) -> Option<u64> {
        self.boot_signals
            .iter()
            .find(|s| s.value == value)
            .map(|s| s.mono_ns)
    }

    fn apply(&mut self, message: VmmMessage) {
        match message {
            VmmMessage::Started { mono_ns } => {
                self.started_ns.get_or_insert(mono_ns);
            }
            VmmMessage::GuestEntered { mono_ns } => {
                self.guest_entered_ns.get_or_insert(mono_ns);
            }
            VmmMessage::BootSignal { value, mono_ns } => {
                if self.boot_signals.len() < MAX_BOOT_SIGNALS {
                    self.boot_signals.push(BootSignalAt { value, mono_ns });
                }
            }
            VmmMessage::Exited(exit) => self.exit = Some(exit),
        }
    }
}

/// How a VMM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmTermination {
    pub status: ExitStatus,
    /// What the VMM reported before exiting; `None` if it died or failed.
    pub exit: Option<VmExit>,
}

impl VmmTermination {
    /// "exit code 1", "killed by SIGKILL", or, for a VMM that exited
    /// because its guest reset the machine, that: exit code 0 alone reads
    /// like success, and a guest that resets itself crashed or shut down.
    pub fn describe(&self) -> String {
        match self.exit {
            Some(VmExit::GuestReset) => "the guest reset the machine".to_owned(),
            _ => describe_status(self.status),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmProcessError {
    #[error("cannot start the VMM process ({} {VMM_SUBCOMMAND})", .program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("the VMM process (pid {pid}) ended while waiting for {what}: {status}{}", stderr_suffix(.stderr))]
    Exited {
        pid: u32,
        what: String,
        status: String,
        stderr: String,
    },

    #[error(
        "the VMM process (pid {pid}) did not report {what} within {waited_ms} ms; the guest console log is {}",
        .console_log.display()
    )]
    Timeout {
        pid: u32,
        what: String,
        waited_ms: u128,
        console_log: PathBuf,
    },

    #[error("the VMM process (pid {pid}) broke its output protocol: {detail}")]
    Protocol { pid: u32, detail: String },

    #[error("cannot wait for the VMM process (pid {pid})")]
    Wait {
        pid: u32,
        #[source]
        source: io::Error,
    },

    #[error("cannot send {signal} to the VMM process (pid {pid})")]
    Signal {
        pid: u32,
        signal: Signal,
        #[source]
        source: nix::Error,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// State shared with the reader threads.
#[derive(Default)]
struct Shared {
    state: Mutex<SharedState>,
    changed: Condvar,
}

#[derive(Default)]
struct SharedState {
    progress: Progress,
    stderr: Vec<u8>,
    stderr_closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SharedState> {
        // A panicking reader thread leaves consistent plain data behind.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `done` holds or `deadline` passes; returns whether it held.
    fn wait_until(&self, deadline: Instant, done: impl Fn(&SharedState) -> bool) -> bool {
        let mut state = self.lock();
        loop {
            if done(&state) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Waits for a VMM process to stop; see [`VmmProcess::stop_watch`].
#[derive(Clone)]
pub struct StopWatch(Arc<Shared>);

impl StopWatch {
    /// Blocks until the VMM's stdout has closed (it has exited or is about
    /// to) or `timeout` passes; returns whether it stopped.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.0
            .wait_until(Instant::now() + timeout, |s| s.progress.stdout_closed)
    }
}

/// A running VMM process. Dropping it without [`VmmProcess::kill`] or a
/// reaped exit SIGKILLs the process: an abandoned VM must not live on.
pub struct VmmProcess {
    child: Child,
    pid: u32,
    spawned_at_ns: u64,
    shared: Arc<Shared>,
    termination: Option<VmmTermination>,
    console_log: PathBuf,
    vsock_socket: PathBuf,
}

impl VmmProcess {
    /// Starts a VMM process for `hypervisor` whose sockets and console log
    /// live in `sandbox`, exporting `shared_dir` (which must exist) to the
    /// guest over virtio-fs.
    ///
    /// The VMM gets SIGKILL when the *thread* that calls this exits
    /// (PR_SET_PDEATHSIG follows the creating thread), so call it from a
    /// thread that lives as long as the sandbox, not from a short-lived
    /// worker.
    pub fn spawn(
        hypervisor: &HypervisorConfig,
        sandbox: &Path,
        shared_dir: &Path,
    ) -> Result<Self, VmmProcessError> {
        let console_log = sandbox_dir::console_log(sandbox);
        let vsock_socket = sandbox_dir::vsock_socket(sandbox);
        let config = VmConfig {
            kernel: hypervisor.kernel.clone(),
            initrd: Some(hypervisor.initrd.clone()),
            kernel_params: hypervisor.kernel_params.clone(),
            vcpus: hypervisor.vcpus,
            memory_mib: hypervisor.memory_mib,
            serial_log: Some(SerialLogConfig {
                path: console_log.clone(),
                max_bytes: hypervisor.console_log_max_bytes(),
            }),
            vsock: Some(VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: vsock_socket.clone(),
            }),
            shared_fs: Some(SharedFsConfig {
                tag: SHARED_FS_TAG.to_owned(),
                dir: shared_dir.to_owned(),
                max_open_files: hypervisor.virtio_fs_max_open_files as usize,
            }),
            // Pod networking (the tap from the pod's namespace) comes with
            // CRI support; until then a pod has loopback only.
            net: None,
            seccomp: hypervisor.seccomp,
        };
        let mut command_args = vec![OsString::from(VMM_SUBCOMMAND)];
        command_args.extend(args::to_args(&config));
        Self::spawn_program(
            Path::new(SELF_EXE),
            command_args,
            sandbox,
            console_log,
            vsock_socket,
        )
    }

    /// Starts `program` as a VMM process; split from [`Self::spawn`] so the
    /// supervision logic can be tested with a stand-in program.
    pub(crate) fn spawn_program(
        program: &Path,
        args: Vec<OsString>,
        cwd: &Path,
        console_log: PathBuf,
        vsock_socket: PathBuf,
    ) -> Result<Self, VmmProcessError> {
        let mut command = Command::new(program);
        command
            .arg0(VMM_ARGV0)
            .args(args)
            // The VMM needs nothing from the environment.
            .env_clear()
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal goes to the
            // supervisor, which decides how the VM stops.
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe calls, without allocating.
        unsafe {
            command.pre_exec(move || die_with_parent(parent));
        }

        let spawned_at_ns = palisade_vmm::monotonic_ns();
        let mut child = command.spawn().map_err(|source| VmmProcessError::Spawn {
            program: program.to_owned(),
            source,
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // From here on, dropping `vmm` (on any error) kills the process.
        let vmm = Self {
            pid: child.id(),
            child,
            spawned_at_ns,
            shared: Arc::new(Shared::default()),
            termination: None,
            console_log,
            vsock_socket,
        };
        let reader_error = |source| VmmProcessError::Spawn {
            program: program.to_owned(),
            source,
        };
        // Both pipes were requested above, so both are present.
        if let Some(stdout) = stdout {
            let shared = Arc::clone(&vmm.shared);
            spawn_reader("vmm-stdout", move || read_messages(stdout, &shared))
                .map_err(reader_error)?;
        }
        if let Some(stderr) = stderr {
            let shared = Arc::clone(&vmm.shared);
            spawn_reader("vmm-stderr", move || read_stderr(stderr, &shared))
                .map_err(reader_error)?;
        }
        Ok(vmm)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CLOCK_MONOTONIC just before the process was forked: the zero point
    /// of every boot phase.
    pub fn spawned_at_ns(&self) -> u64 {
        self.spawned_at_ns
    }

    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    pub fn vsock_socket(&self) -> &Path {
        &self.vsock_socket
    }

    /// A snapshot of what the VMM has reported.
    pub fn progress(&self) -> Progress {
        self.shared.lock().progress.clone()
    }

    /// The VMM's stdout has closed: it has exited or is exiting.
    pub fn has_stopped(&self) -> bool {
        self.shared.lock().progress.stdout_closed
    }

    /// A handle that waits for this VMM to stop, for a monitor thread that
    /// must not hold the process itself.
    pub fn stop_watch(&self) -> StopWatch {
        StopWatch(Arc::clone(&self.shared))
    }

    /// Waits until `done` holds for the reported progress. Fails if the VMM
    /// ends first, breaks the protocol, or `deadline` passes; `what` names
    /// the awaited milestone in those errors.
    pub fn wait_for(
        &mut self,
        what: &str,
        deadline: Instant,
        done: impl Fn(&Progress) -> bool,
    ) -> Result<Progress, VmmProcessError> {
        let start = Instant::now();
        self.shared.wait_until(deadline, |s| {
            done(&s.progress) || s.progress.stdout_closed || s.progress.protocol_error.is_some()
        });
        let progress = self.progress();
        if done(&progress) {
            return Ok(progress);
        }
        if let Some(detail) = progress.protocol_error {
            return Err(VmmProcessError::Protocol {
                pid: self.pid,
                detail,
            });
        }
        if progress.stdout_closed {
            return Err(self.ended_error(what));
        }
        Err(VmmProcessError::Timeout {
            pid: self.pid,
            what: what.to_owned(),
            waited_ms: start.elapsed().as_millis(),
            console_log: self.console_log.clone(),
        })
    }

    /// How the VMM ended, as [`VmmTermination::describe`] but naming the
    /// syscall when its seccomp filter killed it (from the line its SIGSYS
    /// handler wrote to stderr).
    pub fn describe_end(&self, termination: &VmmTermination) -> String {
        sigsys_cause(termination.status, &self.stderr_tail())
            .unwrap_or_else(|| termination.describe())
    }

    /// The error for "the VMM ended while we waited for `what`", with its
    /// exit status and last stderr line when they can be had quickly.
    pub fn ended_error(&mut self, what: &str) -> VmmProcessError {
        let status = match self.wait_exit(STDERR_SETTLE) {
            Ok(Some(termination)) => self.describe_end(&termination),
            Ok(None) => "closed its output but is still running".to_owned(),
            Err(e) => format!("status unknown ({e})"),
        };
        VmmProcessError::Exited {
            pid: self.pid,
            what: what.to_owned(),
            status,
            stderr: self.stderr_last_line(),
        }
    }

    /// Waits up to `timeout` for the process to exit and reaps it.
    pub fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<VmmTermination>, VmmProcessError> {
        if let Some(done) = self.termination {
            return Ok(Some(done));
        }
        let deadline = Instant::now() + timeout;
        // Closed stdout is the prompt sign of an exit; then poll the reap.
        self.shared
            .wait_until(deadline, |s| s.progress.stdout_closed);
        loop {
            let reaped = self
                .child
                .try_wait()
                .map_err(|source| VmmProcessError::Wait {
                    pid: self.pid,
                    source,
                })?;
            if let Some(status) = reaped {
                // Let stderr drain so error messages are complete.
                self.shared
                    .wait_until(Instant::now() + STDERR_SETTLE, |s| s.stderr_closed);
                let termination = VmmTermination {
                    status,
                    exit: self.shared.lock().progress.exit,
                };
                self.termination = Some(termination);
                return Ok(Some(termination));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(REAP_POLL);
        }
    }

    /// Stops the VMM: SIGTERM (the VMM tears the VM down and removes its
    /// sockets), then SIGKILL if it has not exited after `grace`.
    pub fn kill(&mut self, grace: Duration) -> Result<VmmTermination, VmmProcessError> {
        if let Some(done) = self.termination {
            return Ok(done);
        }
        self.signal(Signal::SIGTERM)?;
        if let Some(done) = self.wait_exit(grace)? {
            return Ok(done);
        }
        self.signal(Signal::SIGKILL)?;
        let status = self.child.wait().map_err(|source| VmmProcessError::Wait {
            pid: self.pid,
            source,
        })?;
        let termination = VmmTermination {
            status,
            exit: self.shared.lock().progress.exit,
        };
        self.termination = Some(termination);
        Ok(termination)
    }

    fn signal(&self, signal: Signal) -> Result<(), VmmProcessError> {
        // Not reaped yet, so the pid still names our child (or its zombie).
        match kill(Pid::from_raw(self.pid as i32), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(source) => Err(VmmProcessError::Signal {
                pid: self.pid,
                signal,
                source,
            }),
        }
    }

    /// Everything the VMM wrote on stderr (its last few KiB).
    pub fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().stderr).into_owned()
    }

    /// The line that explains a failed VMM: its `palisade-vmm:` error line,
    /// else a panic message, else whatever it wrote last. Control characters
    /// are replaced: a VMM is only as trustworthy as the guest it runs.
    pub fn stderr_last_line(&self) -> String {
        summarize_stderr(&self.stderr_tail())
            .chars()
            .take(STDERR_LINE_MAX)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    }
}

fn summarize_stderr(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(line) = lines.iter().rev().find(|l| l.starts_with("palisade-vmm: ")) {
        return (*line).to_owned();
    }
    // Rust panics print "thread '..' panicked at FILE:LINE:COL:" and the
    // message on the next line, then a RUST_BACKTRACE note.
    if let Some(i) = lines.iter().rposition(|l| l.contains(" panicked at ")) {
        let message = lines.get(i + 1).copied().unwrap_or_default();
        return format!("{} {message}", lines[i]);
    }
    lines.last().copied().unwrap_or_default().to_owned()
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if self.termination.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Makes `<sandbox>/shared`, which the VMM exports (it must exist when the
/// VMM starts). 0755 because the guest sees these permissions on its mount
/// point; host users are kept out by the sandbox directory's 0700. An
/// existing directory is reused: a restarted VMM serves the same share.
/// Runs in the child between fork and exec.
fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no
    // memory; getppid cannot fail.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        // If the parent died before the prctl, no signal will ever come.
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

fn spawn_reader(name: &str, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map(drop)
}

fn read_messages(stdout: ChildStdout, shared: &Shared) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::with_capacity(MAX_LINE_LEN);
    loop {
        let outcome = read_line_bounded(&mut reader, &mut line, MAX_LINE_LEN);
        let mut state = shared.lock();
        match outcome {
            Ok(Line::Complete) => {
                let parsed = std::str::from_utf8(&line)
                    .map_err(|_| format!("non-UTF-8 line {:?}", String::from_utf8_lossy(&line)))
                    .and_then(|text| text.parse::<VmmMessage>().map_err(|e| e.to_string()));
                match parsed {
                    Ok(message) => state.progress.apply(message),
                    Err(detail) => {
                        state.progress.protocol_error.get_or_insert(detail);
                    }
                }
            }
            Ok(Line::TooLong) => {
                state
                    .progress
                    .protocol_error
                    .get_or_insert(format!("a line longer than {MAX_LINE_LEN} bytes"));
            }
            Ok(Line::Eof) | Err(_) => {
                state.progress.stdout_closed = true;
                shared.changed.notify_all();
                return;
            }
        }
        drop(state);
        shared.changed.notify_all();
    }
}

fn read_stderr(mut stderr: ChildStderr, shared: &Shared) {
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stderr.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut state = shared.lock();
        state.stderr.extend_from_slice(&chunk[..n]);
        let excess = state.stderr.len().saturating_sub(STDERR_TAIL_BYTES);
        state.stderr.drain(..excess);
    }
    shared.lock().stderr_closed = true;
    shared.changed.notify_all();
}

/// For a VMM killed by SIGSYS: what killed it. Control characters in
/// what the VMM wrote are replaced, as for any line of its stderr.
fn sigsys_cause(status: ExitStatus, stderr: &str) -> Option<String> {
    if status.signal() != Some(libc::SIGSYS) {
        return None;
    }
    let clean = |s: &str| -> String {
        s.chars()
            .take(64)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    Some(match SigsysReport::find(stderr) {
        Some(SigsysReport::Violation { nr, name, thread }) => format!(
            "the VMM was killed by its seccomp filter: syscall {nr} ({}), made by its {} thread",
            clean(&name),
            clean(&thread)
        ),
        Some(SigsysReport::Sent { pid }) => {
            format!("killed by SIGSYS, sent by pid {pid} (not by its seccomp filter)")
        }
        None => "killed by SIGSYS, with no report of a seccomp violation on its stderr (the kernel's audit log, type=1326, names any syscall its filter killed)".to_owned(),
    })
}

/// "exit code 1", "killed by SIGKILL".
pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(signal) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a shell script as a stand-in VMM process.
    fn fake_vmm(script: &str) -> (tempfile::TempDir, VmmProcess) {
        let dir = tempfile::tempdir().expect("tempdir");
        let vmm = VmmProcess::spawn_program(
            Path::new("/bin/sh"),
            vec!["-c".into(), script.into()],
            dir.path(),
            dir.path().join("console.log"),
            dir.path().join("vsock.sock"),
        )
        .expect("spawn /bin/sh");
        (dir, vmm)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn follows_a_boot_and_a_guest_reset() {
        let (_dir, mut vmm) = fake_vmm(
            "echo started 10; echo event guest-entered 20; echo event boot-signal 1 30; \
             echo event boot-signal 2 40; sleep 0.1; echo exit guest-reset",
        );
        assert!(vmm.spawned_at_ns() > 0);
        let progress = vmm
            .wait_for("agent ready", soon(), |p| p.boot_signal(2).is_some())
            .expect("agent ready");
        assert_eq!(progress.started_ns, Some(10));
        assert_eq!(progress.guest_entered_ns, Some(20));
        assert_eq!(progress.boot_signal(1), Some(30));
        assert_eq!(progress.boot_signal(2), Some(40));
        let done = vmm
            .wait_exit(Duration::from_secs(10))
            .expect("wait")
            .expect("exited");
        assert!(done.status.success());
        assert_eq!(done.exit, Some(VmExit::GuestReset));
        assert!(vmm.has_stopped());
    }

    #[test]
    fn reports_an_early_exit_with_its_error_line() {
        let (_dir, mut vmm) =
            fake_vmm("echo started 1; echo 'palisade-vmm: kernel /x: not an ELF file' >&2; exit 1");
        let err = vmm
            .wait_for("guest entry", soon(), |p| p.guest_entered_ns.is_some())
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("ended while waiting for guest entry: exit code 1: palisade-vmm: kernel /x: not an ELF file"), "{msg}");
    }

    #[test]
    fn times_out_naming_the_console_log() {
        let (dir, mut vmm) = fake_vmm("echo started 1; exec sleep 30");
        let err = vmm
            .wait_for(
                "guest entry",
                Instant::now() + Duration::from_millis(100),
                |p| p.guest_entered_ns.is_some(),
            )
            .expect_err("must time out");
        let msg = err.to_string();
        assert!(msg.contains("did not report guest entry within"), "{msg}");
        assert!(
            msg.contains(&dir.path().join("console.log").display().to_string()),
            "{msg}"
        );
        let done = vmm.kill(Duration::from_secs(5)).expect("kill");
        assert_eq!(describe_status(done.status), "killed by SIGTERM");
        assert_eq!(done.exit, None);
    }

    #[test]
    fn kill_escalates_to_sigkill() {
        let (_dir, mut vmm) =
            fake_vmm("trap '' TERM; echo started 1; while :; do sleep 0.05; done");
        vmm.wait_for("start", soon(), |p| p.started_ns.is_some())
            .expect("started");
        let begin = Instant::now();
        let done = vmm.kill(Duration::from_millis(200)).expect("kill");
        assert_eq!(describe_status(done.status), "killed by SIGKILL");
        assert!(begin.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn flags_protocol_violations() {
        let (_dir, mut vmm) = fake_vmm("echo started 1; echo hello; exec sleep 30");
        let err = vmm
            .wait_for("guest entry", soon(), |p| p.guest_entered_ns.is_some())
            .expect_err("must fail");
        assert!(
            err.to_string()
                .contains("broke its output protocol: malformed VMM process message \"hello\""),
            "{err}"
        );
    }

    #[test]
    fn drop_kills_the_process() {
        let (_dir, vmm) = fake_vmm("exec sleep 30");
        let pid = Pid::from_raw(vmm.pid() as i32);
        drop(vmm);
        // Reaped by drop, so the pid is gone (barring immediate reuse).
        assert!(kill(pid, None).is_err());
    }

    #[test]
    fn the_child_dies_with_its_parent_thread() {
        // PR_SET_PDEATHSIG fires when the spawning thread exits.
        let handle = thread::spawn(|| {
            let (dir, vmm) = fake_vmm("echo started 1; exec sleep 30");
            let pid = vmm.pid();
            // Leak the supervisor so its Drop does not do the killing.
            std::mem::forget(vmm);
            (dir, pid)
        });
        let (_dir, pid) = handle.join().expect("thread");
        let pid = Pid::from_raw(pid as i32);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // The leaked Child is never reaped, so wait for it here.
            match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::Signaled(_, Signal::SIGKILL, _)) => break,
                Ok(nix::sys::wait::WaitStatus::StillAlive) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10))
                }
                other => panic!("expected SIGKILL from PR_SET_PDEATHSIG, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_guest_reset_is_described_as_such_not_as_exit_code_0() {
        use std::os::unix::process::ExitStatusExt;
        let reset = VmmTermination {
            status: ExitStatus::from_raw(0),
            exit: Some(VmExit::GuestReset),
        };
        assert_eq!(reset.describe(), "the guest reset the machine");
        let failed = VmmTermination {
            status: ExitStatus::from_raw(1 << 8),
            exit: None,
        };
        assert_eq!(failed.describe(), "exit code 1");
        let killed = VmmTermination {
            status: ExitStatus::from_raw(libc::SIGKILL),
            exit: None,
        };
        assert_eq!(killed.describe(), "killed by SIGKILL");
    }

    #[test]
    fn names_the_syscall_of_a_seccomp_kill() {
        // The VMM's SIGSYS handler writes this line, then dies of SIGSYS.
        let (_dir, mut vmm) = fake_vmm(
            "echo started 1; echo 'palisade-vmm: seccomp violation: syscall 41 (socket) by the vcpu thread' >&2; kill -SYS $$",
        );
        let err = vmm
            .wait_for("guest entry", soon(), |p| p.guest_entered_ns.is_some())
            .expect_err("must fail");
        assert!(
            err.to_string().contains(
                "the VMM was killed by its seccomp filter: syscall 41 (socket), made by its vcpu thread"
            ),
            "{err}"
        );
        let sigsys = ExitStatus::from_raw(libc::SIGSYS);
        assert_eq!(
            sigsys_cause(sigsys, "palisade-vmm: SIGSYS sent by pid 7\n").as_deref(),
            Some("killed by SIGSYS, sent by pid 7 (not by its seccomp filter)")
        );
        assert!(sigsys_cause(sigsys, "")
            .expect("a SIGSYS cause")
            .starts_with("killed by SIGSYS, with no report"));
        assert_eq!(sigsys_cause(ExitStatus::from_raw(libc::SIGKILL), "x"), None);
    }

    #[test]
    fn summarizes_stderr() {
        assert_eq!(summarize_stderr(""), "");
        assert_eq!(summarize_stderr("a\nb\n\n"), "b");
        assert_eq!(
            summarize_stderr("noise\npalisade-vmm: no KVM\nmore noise\n"),
            "palisade-vmm: no KVM"
        );
        assert_eq!(
            summarize_stderr(
                "thread 'vcpu0' panicked at vmm/src/x.rs:1:2:\nindex out of bounds\nnote: run with `RUST_BACKTRACE=1`\n"
            ),
            "thread 'vcpu0' panicked at vmm/src/x.rs:1:2: index out of bounds"
        );
    }

    #[test]
    fn describes_statuses() {
        assert_eq!(describe_status(ExitStatus::from_raw(1 << 8)), "exit code 1");
        assert_eq!(
            describe_status(ExitStatus::from_raw(9)),
            "killed by SIGKILL"
        );
    }
}
