//! Runs real containers with the agent in host mode (`--listen unix://`,
//! cgroups off, as this host may have cgroup v1), from a busybox rootfs
//! made in a scratch directory, through the Containers service and the
//! per-process stdio ports, as the shim will.
//!
//! Needs root (namespaces, mounts, pivot_root) and /bin/busybox (static);
//! without them each test says so and passes vacuously.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use palisade_protocols::containers::{
    event, CloseStdinRequest, CreateContainerRequest, CreateContainerResponse, ExecProcessRequest,
    GetEventsRequest, ListProcessesRequest, PauseContainerRequest, ProcessExit,
    RemoveContainerRequest, ResizeTerminalRequest, ResumeContainerRequest, SignalProcessRequest,
    StartContainerRequest, StatsContainerRequest, StdioRequest, UpdateContainerRequest,
    WaitProcessRequest,
};
use palisade_protocols::containers_ttrpc::ContainersClient;
use palisade_protocols::protobuf::MessageField;
use serde_json::{json, Value};
use ttrpc::Code;

use common::{ctx, unix_addr, Agent, TempDir, READY_LINE};

const BUSYBOX: &str = "/bin/busybox";

fn require_root_and_busybox() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // Loud, not a silent pass: these tests are the agent's container
    // runtime on the host, and `make test` always runs them as root.
    assert!(
        root && Path::new(BUSYBOX).exists(),
        "these tests need root and {BUSYBOX}: run them as root (sudo make test) \
         after `apt-get install busybox-static`"
    );
}

/// An agent with a busybox rootfs next to it.
struct Harness {
    agent: Agent,
    dir: TempDir,
    sock: PathBuf,
    rootfs: PathBuf,
    api: ContainersClient,
}

impl Harness {
    fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    fn start_with(name: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new(name);
        let sock = dir.0.join("agent.sock");
        let addr = unix_addr(&sock);
        let mut args = vec!["--listen", &addr, "--log", "debug"];
        args.extend_from_slice(extra);
        let mut agent = Agent::start(&args);
        agent.wait_for_line(READY_LINE);
        let rootfs = dir.0.join("rootfs");
        make_busybox_rootfs(&rootfs);
        let client = ttrpc::Client::connect(&unix_addr(&sock)).expect("connecting to agent");
        Harness {
            agent,
            dir,
            sock,
            rootfs,
            api: ContainersClient::new(client),
        }
    }

    fn create(
        &self,
        id: &str,
        spec: &Value,
        stdio: (bool, bool, bool),
    ) -> ttrpc::Result<CreateContainerResponse> {
        self.api.create_container(
            ctx(),
            &CreateContainerRequest {
                container_id: id.into(),
                spec_json: spec.to_string().into_bytes(),
                rootfs: self.rootfs.display().to_string(),
                stdio: stdio_request(stdio),
                ..Default::default()
            },
        )
    }

    fn start_container(&self, id: &str) {
        self.api
            .start_container(
                ctx(),
                &StartContainerRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .expect("StartContainer");
    }

    fn wait(&self, id: &str, exec_id: &str) -> ProcessExit {
        // Longer than other calls: under emulation (in-guest.sh) a process
        // can take a while to get where the test wants it.
        let r = self
            .api
            .wait_process(
                ttrpc::context::with_duration(std::time::Duration::from_secs(120)),
                &WaitProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    ..Default::default()
                },
            )
            .expect("WaitProcess");
        r.exit.into_option().expect("exit in WaitProcess reply")
    }

    fn signal(&self, id: &str, exec_id: &str, signal: i32) -> ttrpc::Result<()> {
        self.api
            .signal_process(
                ctx(),
                &SignalProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    signal: signal as u32,
                    ..Default::default()
                },
            )
            .map(drop)
    }

    fn remove(&self, id: &str, force: bool) -> ttrpc::Result<()> {
        self.api
            .remove_container(
                ctx(),
                &RemoveContainerRequest {
                    container_id: id.into(),
                    force,
                    ..Default::default()
                },
            )
            .map(drop)
    }

    fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &Value,
        stdio: (bool, bool, bool),
    ) -> ttrpc::Result<(u32, [u32; 3])> {
        self.api
            .exec_process(
                ctx(),
                &ExecProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    process_json: process.to_string().into_bytes(),
                    stdio: stdio_request(stdio),
                    ..Default::default()
                },
            )
            .map(|r| {
                let p = r.stdio.into_option().unwrap_or_default();
                (r.pid, [p.stdin_port, p.stdout_port, p.stderr_port])
            })
    }

    fn resize(&self, id: &str, exec_id: &str, rows: u32, cols: u32) {
        self.api
            .resize_terminal(
                ctx(),
                &ResizeTerminalRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    rows,
                    cols,
                    ..Default::default()
                },
            )
            .expect("ResizeTerminal");
    }

    /// Connects to a stdio port the way the shim does through hybrid vsock.
    fn connect(&self, port: u32) -> UnixStream {
        assert_ne!(port, 0, "port not allocated");
        let mut path = self.sock.clone().into_os_string();
        path.push(format!("_{port}"));
        UnixStream::connect(PathBuf::from(path)).expect("connecting to a stdio port")
    }

    /// Reads a stdio port to its end on a thread.
    fn collect(&self, port: u32) -> JoinHandle<String> {
        let mut s = self.connect(port);
        std::thread::spawn(move || {
            let mut out = String::new();
            s.read_to_string(&mut out).expect("reading stdio");
            out
        })
    }

    /// Processes whose parent is the agent.
    fn agent_children(&self) -> Vec<i32> {
        let agent = self.agent.child.id() as i32;
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let after = s.rsplit_once(')')?.1.to_string();
                        after.split_whitespace().nth(1)?.parse::<i32>().ok()
                    })
                    == Some(agent)
            })
            .collect()
    }

    /// Stdio sockets still listening (`agent.sock_<port>`).
    fn stdio_sockets(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir.0)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("agent.sock_"))
            .collect()
    }

    fn mountinfo(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.agent.child.id())).unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // SIGTERM: the host-mode agent kills its containers on the way out.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.agent.child.id() as i32, libc::SIGTERM) };
        let _ = self.agent.child.wait();
    }
}

fn stdio_request((stdin, stdout, stderr): (bool, bool, bool)) -> MessageField<StdioRequest> {
    MessageField::some(StdioRequest {
        stdin,
        stdout,
        stderr,
        ..Default::default()
    })
}

fn make_busybox_rootfs(root: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(out.stdout).unwrap().lines() {
        if applet != "busybox" && !applet.contains('/') {
            let _ = symlink("busybox", root.join("bin").join(applet));
        }
    }
    // For maskedPaths: a file and a directory every kernel has (unlike
    // /proc/kcore or /proc/keys).
    std::fs::write(root.join("etc/secret"), "secret\n").unwrap();
    std::fs::create_dir_all(root.join("etc/secrets")).unwrap();
    std::fs::write(root.join("etc/secrets/key"), "key\n").unwrap();
}

fn process(args: &[&str]) -> Value {
    json!({
        "args": args,
        "env": ["PATH=/bin", "HOME=/root"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "capabilities": {
            "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"],
            "effective": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"],
            "permitted": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"],
            "inheritable": [],
            "ambient": []
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}],
        "noNewPrivileges": true
    })
}

/// What containerd's default spec looks like, trimmed to what busybox needs.
fn spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.1.0",
        "root": {"path": "rootfs", "readonly": true},
        "process": process(args),
        "hostname": "palisade-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/etc/secret", "/etc/secrets"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// `spec` with a terminal.
fn terminal_spec(args: &[&str]) -> Value {
    let mut s = spec(args);
    s["process"]["terminal"] = true.into();
    s
}

/// `spec` without the devpts at /dev/pts (the /dev tmpfs stays, with its
/// /dev/ptmx -> pts/ptmx link, now dangling).
fn spec_without_devpts(args: &[&str]) -> Value {
    let mut s = spec(args);
    let mounts = s["mounts"].as_array_mut().unwrap();
    mounts.retain(|m| m["type"] != "devpts");
    s
}

fn code(e: &ttrpc::Error) -> (Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a status: {other:?}"),
    }
}

#[test]
fn runs_a_container_captures_its_output_and_exit_code() {
    require_root_and_busybox();
    let h = Harness::start("ctr-run");
    let script = "echo hello from $$ on $(hostname); echo oops >&2; \
                  touch /rootfs-is-writable 2>/dev/null && echo writable; \
                  cat /etc/secret | wc -c; ls /etc/secrets | wc -l; ls /dev/null; \
                  (echo x > /proc/sys/kernel/domainname) 2>&1 | grep -o 'Read-only file system' >&2; exit 3";
    let created = h
        .create("c1", &spec(&["sh", "-c", script]), (false, true, true))
        .expect("CreateContainer");
    assert!(created.pid > 0);
    let ports = created.stdio.into_option().expect("stdio ports");
    assert_eq!(ports.stdin_port, 0, "stdin was not asked for");
    let out = h.collect(ports.stdout_port);
    let err = h.collect(ports.stderr_port);
    h.start_container("c1");

    let exit = h.wait("c1", "");
    assert_eq!(exit.exit_code, 3, "{exit:?}");
    assert_eq!(exit.signal, 0);
    assert_eq!(exit.pid, created.pid);
    assert!(exit.exited_at_unix_ns > 0);
    // The exit is reported only after the output was drained.
    assert_eq!(
        out.join().unwrap(),
        "hello from 1 on palisade-test\n0\n0\n/dev/null\n"
    );
    // readonlyPaths: /proc/sys cannot be written.
    assert_eq!(err.join().unwrap(), "oops\nRead-only file system\n");

    let events = h
        .api
        .get_events(
            ctx(),
            &GetEventsRequest {
                timeout_ms: 5000,
                ..Default::default()
            },
        )
        .expect("GetEvents");
    let e = &events.events[0];
    assert_eq!((e.sequence, e.container_id.as_str()), (1, "c1"));
    match &e.kind {
        Some(event::Kind::ProcessExited(p)) => {
            assert_eq!(p.exec_id, "");
            assert_eq!(p.exit.exit_code, 3);
        }
        other => panic!("want an exit event, got {other:?}"),
    }

    // Stopped: removable without force, then gone.
    h.remove("c1", false).expect("RemoveContainer");
    let (c, _) = code(&h.remove("c1", false).unwrap_err());
    assert_eq!(c, Code::NOT_FOUND);
    assert!(h.agent_children().is_empty(), "{:?}", h.agent_children());
    assert!(h.stdio_sockets().is_empty(), "{:?}", h.stdio_sockets());
}

#[test]
fn execs_into_a_running_container_and_signals_processes() {
    require_root_and_busybox();
    let h = Harness::start("ctr-exec");
    h.create("c2", &spec(&["sleep", "1000"]), (false, false, false))
        .expect("CreateContainer");
    h.start_container("c2");

    // An exec as another user, with stdin: it sees the init's pid namespace.
    let mut p = process(&[
        "sh",
        "-c",
        "read line; echo got $line as $(id -u):$(id -g); ps -o pid,comm | grep -c sleep",
    ]);
    p["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [2000]});
    let (pid, [stdin, stdout, stderr]) = h
        .exec("c2", "e1", &p, (true, true, true))
        .expect("ExecProcess");
    assert!(pid > 0);
    let out = h.collect(stdout);
    let err = h.collect(stderr);
    let mut input = h.connect(stdin);
    input.write_all(b"a line\n").unwrap();
    input.shutdown(std::net::Shutdown::Write).unwrap();
    let exit = h.wait("c2", "e1");
    assert_eq!(exit.exit_code, 0, "stderr: {}", err.join().unwrap());
    assert_eq!(out.join().unwrap(), "got a line as 1000:1000\n1\n");

    // An exec id is used once.
    let (c, _) = code(
        &h.exec("c2", "e1", &process(&["true"]), (false, false, false))
            .unwrap_err(),
    );
    assert_eq!(c, Code::ALREADY_EXISTS);
    // A program that is not there: refused, nothing left running.
    let (c, msg) = code(
        &h.exec(
            "c2",
            "e-missing",
            &process(&["no-such-program"]),
            (false, true, false),
        )
        .unwrap_err(),
    );
    assert_eq!(c, Code::INTERNAL);
    assert!(
        msg.contains("no-such-program: not found in the container's PATH"),
        "{msg}"
    );

    // SIGTERM to an exec'd sleep (not PID 1, so the default action kills).
    let (sleeper, _) = h
        .exec(
            "c2",
            "e2",
            &process(&["sleep", "1000"]),
            (false, false, false),
        )
        .expect("exec sleep");
    let pids = h
        .api
        .list_processes(
            ctx(),
            &ListProcessesRequest {
                container_id: "c2".into(),
                ..Default::default()
            },
        )
        .expect("ListProcesses")
        .pids;
    assert!(pids.contains(&sleeper), "{pids:?} lacks {sleeper}");
    h.signal("c2", "e2", libc::SIGTERM).expect("SignalProcess");
    let exit = h.wait("c2", "e2");
    assert_eq!((exit.exit_code, exit.signal), (128 + 15, 15));
    let (c, _) = code(&h.signal("c2", "e2", libc::SIGTERM).unwrap_err());
    assert_eq!(c, Code::NOT_FOUND, "signalling an exited process");

    let (c, _) = code(&h.signal("c2", "", 0).unwrap_err());
    assert_eq!(c, Code::INVALID_ARGUMENT, "signal 0");

    // A running container is removed only with force.
    let (c, msg) = code(&h.remove("c2", false).unwrap_err());
    assert_eq!(c, Code::FAILED_PRECONDITION, "{msg}");
    // Cgroups are off in host mode: stats say so.
    let (c, msg) = code(
        &h.api
            .stats_container(
                ctx(),
                &StatsContainerRequest {
                    container_id: "c2".into(),
                    ..Default::default()
                },
            )
            .unwrap_err(),
    );
    assert_eq!(c, Code::FAILED_PRECONDITION);
    assert!(msg.contains("needs cgroups"), "{msg}");

    // SIGKILL the init; its pid namespace goes with it.
    h.signal("c2", "", libc::SIGKILL).expect("SignalProcess");
    let exit = h.wait("c2", "");
    assert_eq!((exit.exit_code, exit.signal), (137, 9));
    h.remove("c2", false).expect("RemoveContainer");
    assert!(h.agent_children().is_empty(), "{:?}", h.agent_children());
    assert!(h.stdio_sockets().is_empty(), "{:?}", h.stdio_sockets());
}

#[test]
fn stdin_reaches_the_init_process_and_close_stdin_ends_it() {
    require_root_and_busybox();
    let h = Harness::start("ctr-stdin");
    let created = h
        .create("c3", &spec(&["cat"]), (true, true, false))
        .expect("CreateContainer");
    let ports = created.stdio.into_option().unwrap();
    let out = h.collect(ports.stdout_port);
    let mut input = h.connect(ports.stdin_port);
    h.start_container("c3");
    input.write_all(b"one\ntwo\n").unwrap();
    // Give the bytes time to be in the agent before closing by RPC.
    std::thread::sleep(std::time::Duration::from_millis(200));
    h.api
        .close_stdin(
            ctx(),
            &CloseStdinRequest {
                container_id: "c3".into(),
                ..Default::default()
            },
        )
        .expect("CloseStdin");
    let exit = h.wait("c3", "");
    assert_eq!(exit.exit_code, 0);
    assert_eq!(out.join().unwrap(), "one\ntwo\n");
    h.remove("c3", false).expect("RemoveContainer");
}

#[test]
fn seccomp_profile_is_enforced() {
    require_root_and_busybox();
    let h = Harness::start("ctr-seccomp");
    let mut s = spec(&[
        "sh",
        "-c",
        "mkdir /tmp/x || echo denied; echo still running",
    ]);
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let created = h
        .create("c4", &s, (false, true, true))
        .expect("CreateContainer");
    let ports = created.stdio.into_option().unwrap();
    let out = h.collect(ports.stdout_port);
    let err = h.collect(ports.stderr_port);
    h.start_container("c4");
    assert_eq!(h.wait("c4", "").exit_code, 0);
    assert_eq!(out.join().unwrap(), "denied\nstill running\n");
    assert!(err.join().unwrap().contains("Operation not permitted"));
    h.remove("c4", false).expect("RemoveContainer");
}

#[test]
fn bad_specs_are_refused_and_leave_nothing_behind() {
    require_root_and_busybox();
    let h = Harness::start("ctr-bad");
    let mountinfo = h.mountinfo();
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();

    let mut s = spec(&["true"]);
    s.as_object_mut().unwrap().remove("root");
    cases.push(("missing root", s, "no `root`"));
    let mut s = spec(&["true"]);
    s["mounts"][0]["destination"] = "proc".into();
    cases.push(("relative mount destination", s, "not absolute"));
    let mut s = spec(&["true"]);
    s["mounts"][5]["destination"] = "/tmp/../../../etc".into();
    cases.push(("escaping mount destination", s, "\"..\""));
    let mut s = spec(&["true"]);
    s["linux"]["namespaces"][1]["type"] = "bogus".into();
    cases.push(("unknown namespace", s, "linux.namespaces[1].type"));
    let mut s = spec(&["true"]);
    s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 7, "value": 0, "op": "SCMP_CMP_EQ"}]}]});
    cases.push(("invalid seccomp", s, "argument index 7"));
    let mut s = spec(&["true"]);
    s["process"]["user"]["uid"] = 4294967295u32.into();
    cases.push(("bad uid", s, "(uid_t)-1"));
    let mut s = spec(&["true"]);
    s["process"]["user"]["uid"] = "nobody".into();
    cases.push(("uid not a number", s, "process.user.uid"));

    for (what, s, want) in &cases {
        let e = h.create("bad", s, (true, true, true)).expect_err(what);
        let (c, msg) = code(&e);
        assert_eq!(c, Code::INVALID_ARGUMENT, "{what}: {msg}");
        assert!(msg.contains(want), "{what}: {msg:?} lacks {want:?}");
    }

    // Failures after the init process started: it is killed and reaped.
    let mut s = spec(&["no-such-program"]);
    s["process"]["env"] = json!(["PATH=/bin:/usr/bin"]);
    let (c, msg) = code(&h.create("bad", &s, (true, true, true)).unwrap_err());
    assert_eq!(c, Code::INTERNAL);
    assert!(
        msg.contains("finding the program") && msg.contains("no-such-program"),
        "{msg}"
    );
    let mut s = spec(&["true"]);
    s["mounts"][1]["type"] = "no-such-fs".into();
    let (c, msg) = code(&h.create("bad", &s, (true, true, true)).unwrap_err());
    assert_eq!(c, Code::INTERNAL);
    assert!(msg.contains("mounting no-such-fs on /dev"), "{msg}");
    let mut s = spec(&["true"]);
    s["process"]["cwd"] = "/no/such/dir".into();
    let (c, msg) = code(&h.create("bad", &s, (true, true, true)).unwrap_err());
    assert!(msg.contains("/no/such/dir"), "{c:?} {msg}");
    // A terminal with no devpts to allocate it from.
    let mut s = spec_without_devpts(&["true"]);
    s["process"]["terminal"] = true.into();
    let (c, msg) = code(&h.create("bad", &s, (true, true, true)).unwrap_err());
    assert_eq!(c, Code::INTERNAL);
    assert!(
        msg.contains("allocating the terminal: opening the container's /dev/ptmx: ENOENT")
            && msg.contains("devpts mounted at the container's /dev/pts"),
        "{msg}"
    );
    // A devpts whose ptmx is something else.
    let mut s = terminal_spec(&["true"]);
    s["mounts"].as_array_mut().unwrap().push(json!(
        {"destination": "/dev/pts/ptmx", "type": "bind", "source": "/dev/null", "options": ["bind"]}
    ));
    let (c, msg) = code(&h.create("bad", &s, (true, true, true)).unwrap_err());
    assert_eq!(c, Code::INTERNAL);
    assert!(
        msg.contains("allocating the terminal: unlocking a pty from /dev/ptmx: ENOTTY")
            && msg.contains("not the pty multiplexer"),
        "{msg}"
    );

    assert!(
        h.agent_children().is_empty(),
        "processes left: {:?}",
        h.agent_children()
    );
    assert!(
        h.stdio_sockets().is_empty(),
        "ports left: {:?}",
        h.stdio_sockets()
    );
    assert_eq!(h.mountinfo(), mountinfo, "the agent's mounts changed");
    // The id is free again.
    h.create("bad", &spec(&["true"]), (false, false, false))
        .expect("a good spec after bad ones");
    h.remove("bad", false)
        .expect("removing a created container");
    assert!(h.agent_children().is_empty(), "{:?}", h.agent_children());
}

/// The cgroup v2 hierarchy this host has (empty of most controllers, but
/// with the core files: cgroup.procs, cgroup.freeze, cgroup.kill, cpu.stat).
const HOST_CGROUP2: &str = "/sys/fs/cgroup/unified";

/// A cgroup2 hierarchy to test with: `PALISADE_TEST_CGROUP_ROOT` (e.g. a
/// guest's /sys/fs/cgroup, with controllers), else this host's unified one.
fn host_cgroup2() -> Option<String> {
    let root = std::env::var("PALISADE_TEST_CGROUP_ROOT").unwrap_or_else(|_| HOST_CGROUP2.into());
    let ok = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(&format!(" {root} ")) && l.contains(" - cgroup2 "));
    ok.then_some(root)
}

/// Whether `root` delegates `controller` to its children.
fn has_controller(root: &str, controller: &str) -> bool {
    std::fs::read_to_string(Path::new(root).join("cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == controller)
}

#[test]
fn cgroup_v2_pause_resume_stats_and_cleanup() {
    require_root_and_busybox();
    let root = host_cgroup2().unwrap_or_else(|| {
        panic!("no cgroup2 at {HOST_CGROUP2}: mount one there or name one in PALISADE_TEST_CGROUP_ROOT")
    });
    let root = root.as_str();
    let h = Harness::start_with("ctr-cgroup", &["--cgroup-root", root]);
    let id = format!("cg-{}", std::process::id());
    let dir = Path::new(root).join("palisade").join(&id);
    h.create(&id, &spec(&["sleep", "1000"]), (false, false, false))
        .expect("CreateContainer");
    assert!(dir.is_dir(), "no cgroup at {}", dir.display());
    h.start_container(&id);
    let in_cgroup = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    let pids = h
        .api
        .list_processes(
            ctx(),
            &ListProcessesRequest {
                container_id: id.clone(),
                ..Default::default()
            },
        )
        .unwrap()
        .pids;
    assert_eq!(pids.len(), 1);
    assert_eq!(in_cgroup.trim(), pids[0].to_string());

    // An exec lands in the cgroup, and its cgroup namespace is rooted there.
    let (_, [_, out, _]) = h
        .exec(
            &id,
            "e1",
            &process(&["sh", "-c", "grep ^0:: /proc/self/cgroup"]),
            (false, true, false),
        )
        .expect("ExecProcess");
    let out = h.collect(out);
    assert_eq!(h.wait(&id, "e1").exit_code, 0);
    assert_eq!(out.join().unwrap(), "0::/\n");

    let req = |id: &str| PauseContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    h.api
        .pause_container(ctx(), &req(&id))
        .expect("PauseContainer");
    let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    let (c, _) = code(
        &h.exec(&id, "e2", &process(&["true"]), (false, false, false))
            .unwrap_err(),
    );
    assert_eq!(c, Code::FAILED_PRECONDITION, "exec into a paused container");
    let (c, _) = code(&h.api.pause_container(ctx(), &req(&id)).unwrap_err());
    assert_eq!(c, Code::FAILED_PRECONDITION, "pausing twice");
    h.api
        .resume_container(
            ctx(),
            &ResumeContainerRequest {
                container_id: id.clone(),
                ..Default::default()
            },
        )
        .expect("ResumeContainer");
    assert!(std::fs::read_to_string(dir.join("cgroup.events"))
        .unwrap()
        .contains("frozen 0"));

    let stats = h
        .api
        .stats_container(
            ctx(),
            &StatsContainerRequest {
                container_id: id.clone(),
                ..Default::default()
            },
        )
        .expect("StatsContainer");
    assert!(stats.cpu.usage_usec > 0, "{stats:?}");
    h.api
        .update_container(
            ctx(),
            &UpdateContainerRequest {
                container_id: id.clone(),
                resources_json: b"{}".to_vec(),
                ..Default::default()
            },
        )
        .expect("UpdateContainer with nothing to change");
    let (c, msg) = code(
        &h.api
            .update_container(
                ctx(),
                &UpdateContainerRequest {
                    container_id: id.clone(),
                    resources_json: br#"{"memory":{"swap":1}}"#.to_vec(),
                    ..Default::default()
                },
            )
            .unwrap_err(),
    );
    assert_eq!(c, Code::INVALID_ARGUMENT, "{msg}");

    // Signal all, through cgroup.procs.
    h.api
        .signal_process(
            ctx(),
            &SignalProcessRequest {
                container_id: id.clone(),
                signal: libc::SIGKILL as u32,
                all: true,
                ..Default::default()
            },
        )
        .expect("SignalProcess all");
    assert_eq!(h.wait(&id, "").signal, 9);
    h.remove(&id, false).expect("RemoveContainer");
    assert!(!dir.exists(), "cgroup left behind");
    // The agent's parent directory stays for the next container; tidy the
    // host's hierarchy anyway.
    let _ = std::fs::remove_dir(Path::new(root).join("palisade"));
}

#[test]
fn output_written_before_the_shim_connects_is_not_lost() {
    require_root_and_busybox();
    let h = Harness::start("ctr-nolost");
    let created = h
        .create(
            "c5",
            &spec(&["sh", "-c", "yes 0123456789 | head -c 2000000; exit 7"]),
            (false, true, false),
        )
        .expect("CreateContainer");
    let port = created.stdio.into_option().unwrap().stdout_port;
    h.start_container("c5");
    // The process fills the pipe and blocks; its exit must wait for us.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pending = h
        .api
        .get_events(
            ctx(),
            &GetEventsRequest {
                timeout_ms: 0,
                ..Default::default()
            },
        )
        .expect("GetEvents");
    assert!(
        pending.events.is_empty(),
        "exit reported before output drained: {pending:?}"
    );
    let out = h.collect(port);
    let exit = h.wait("c5", "");
    assert_eq!(exit.exit_code, 7);
    let out = out.join().unwrap();
    assert_eq!(out.len(), 2_000_000);
    assert!(out.starts_with("0123456789\n0123456789\n"));
    h.remove("c5", false).expect("RemoveContainer");
}

/// The tty a process sees: its name (from ttyname(), which fails for a
/// pty of another devpts instance, as the agent's was), the name of fd 1,
/// and its use as the controlling terminal.
const TTY_PROBE: &str = "tty; readlink /proc/self/fd/1; echo via /dev/tty >/dev/tty";

#[test]
fn the_init_process_gets_a_terminal_from_the_containers_devpts() {
    require_root_and_busybox();
    let h = Harness::start("ctr-tty-init");
    // 100 kB without a newline (so the terminal passes it as is): more
    // than a pty holds, so the process blocks until the shim reads.
    let script = format!(
        "{TTY_PROBE}; echo $(ls /proc/self/fd); stty size; \
         head -c 100000 /dev/zero | tr '\\0' x; echo; exit 5"
    );
    let created = h
        .create(
            "t1",
            &terminal_spec(&["sh", "-c", &script]),
            (false, true, true),
        )
        .expect("CreateContainer");
    let ports = created.stdio.into_option().unwrap();
    assert_eq!(ports.stderr_port, 0, "a terminal has no separate stderr");
    // The process has made its terminal by the time Create returns.
    h.resize("t1", "", 40, 100);
    h.start_container("t1");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pending = h
        .api
        .get_events(
            ctx(),
            &GetEventsRequest {
                timeout_ms: 0,
                ..Default::default()
            },
        )
        .expect("GetEvents");
    assert!(
        pending.events.is_empty(),
        "exit reported before the terminal was drained: {pending:?}"
    );
    let out = h.collect(ports.stdout_port);
    assert_eq!(h.wait("t1", "").exit_code, 5);
    let out = out.join().unwrap();
    let lines: Vec<&str> = out.split("\r\n").collect();
    let start = &out[..out.len().min(200)];
    // The container's devpts is its own instance: its first pty is 0.
    // ls has the terminal on 0-2 and its directory on 3, nothing else:
    // the master, the channel and the slave's first fd did not leak.
    assert_eq!(
        lines[..lines.len().min(5)],
        [
            "/dev/pts/0",
            "/dev/pts/0",
            "via /dev/tty",
            "0 1 2 3",
            "40 100"
        ],
        "{start:?}"
    );
    assert!(lines[5] == "x".repeat(100_000), "{} bytes", lines[5].len());
    assert_eq!(lines[6..], [""]);
    h.remove("t1", false).expect("RemoveContainer");
    assert!(h.agent_children().is_empty(), "{:?}", h.agent_children());
    assert!(h.stdio_sockets().is_empty(), "{:?}", h.stdio_sockets());
}

#[test]
fn exec_with_a_terminal() {
    require_root_and_busybox();
    let h = Harness::start("ctr-tty");
    h.create("c6", &spec(&["sleep", "1000"]), (false, false, false))
        .expect("CreateContainer");
    h.start_container("c6");
    let mut p = process(&[
        "sh",
        "-c",
        &format!("read x; {TTY_PROBE}; stty size; echo done"),
    ]);
    p["terminal"] = true.into();
    let (_, [stdin, stdout, stderr]) = h
        .exec("c6", "t1", &p, (true, true, true))
        .expect("ExecProcess");
    assert_eq!(stderr, 0, "a terminal has no separate stderr");
    let out = h.collect(stdout);
    h.resize("c6", "t1", 40, 100);
    let mut input = h.connect(stdin);
    input.write_all(b"go\n").unwrap();
    assert_eq!(h.wait("c6", "t1").exit_code, 0);
    let out = out.join().unwrap();
    // The terminal echoes input and turns \n into \r\n.
    assert_eq!(
        out, "go\r\n/dev/pts/0\r\n/dev/pts/0\r\nvia /dev/tty\r\n40 100\r\ndone\r\n",
        "{out:?}"
    );

    // Another user owns its terminal: it can reopen it by name without
    // any capability. A terminal nobody reads is still drained.
    let mut p = process(&[
        "sh",
        "-c",
        "stat -c %u $(tty) >/tmp/owner; echo reopened >$(tty) && echo ok >>/tmp/owner",
    ]);
    p["terminal"] = true.into();
    p["user"] = json!({"uid": 1000, "gid": 1000});
    p["capabilities"] =
        json!({"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []});
    h.exec("c6", "t2", &p, (false, false, false))
        .expect("ExecProcess as uid 1000");
    assert_eq!(h.wait("c6", "t2").exit_code, 0);
    let (_, [_, out, _]) = h
        .exec(
            "c6",
            "t3",
            &process(&["cat", "/tmp/owner"]),
            (false, true, false),
        )
        .expect("ExecProcess");
    let out = h.collect(out);
    assert_eq!(h.wait("c6", "t3").exit_code, 0);
    assert_eq!(out.join().unwrap(), "1000\nok\n");
    h.remove("c6", true).expect("RemoveContainer with force");

    // No devpts in the container: the exec fails at its terminal, and
    // leaves no process or port.
    h.create(
        "c7",
        &spec_without_devpts(&["sleep", "1000"]),
        (false, false, false),
    )
    .expect("CreateContainer");
    h.start_container("c7");
    let mut p = process(&["tty"]);
    p["terminal"] = true.into();
    let (c, msg) = code(&h.exec("c7", "t1", &p, (true, true, false)).unwrap_err());
    assert_eq!(c, Code::INTERNAL);
    assert!(
        msg.contains("allocating the terminal: opening the container's /dev/ptmx: ENOENT"),
        "{msg}"
    );
    assert_eq!(h.agent_children().len(), 1, "only the init left");
    assert!(h.stdio_sockets().is_empty(), "{:?}", h.stdio_sockets());
    h.remove("c7", true).expect("RemoveContainer with force");
    assert!(h.agent_children().is_empty(), "{:?}", h.agent_children());
}

/// Device, inode and device numbers (hex) of fd 0 and of /dev/console,
/// then how many mounts are at /dev/console.
const CONSOLE_PROBE: &str = "stat -L -c '%d %i %t:%T' /proc/self/fd/0 /dev/console; \
                             grep -c ' /dev/console ' /proc/self/mountinfo";

/// OCI: with process.terminal, the container's /dev/console is a bind of
/// the init process's pty (as runc does); an exec's terminal leaves it
/// alone; without a terminal there is none.
#[test]
fn the_init_processs_terminal_is_its_dev_console() {
    require_root_and_busybox();
    let h = Harness::start("ctr-console");
    let script = format!("{CONSOLE_PROBE}; read x");
    let created = h
        .create(
            "k1",
            &terminal_spec(&["sh", "-c", &script]),
            (true, true, false),
        )
        .expect("CreateContainer");
    let ports = created.stdio.into_option().unwrap();
    let out = h.collect(ports.stdout_port);
    h.start_container("k1");

    // While the init waits: an exec's terminal is its own pty, and
    // /dev/console stays the init's.
    let mut p = process(&["sh", "-c", CONSOLE_PROBE]);
    p["terminal"] = true.into();
    let (_, [_, exec_out, _]) = h
        .exec("k1", "e1", &p, (false, true, false))
        .expect("ExecProcess");
    let exec_out = h.collect(exec_out);
    assert_eq!(h.wait("k1", "e1").exit_code, 0);
    let exec_out = exec_out.join().unwrap();
    let mut input = h.connect(ports.stdin_port);
    input.write_all(b"go\n").unwrap();
    assert_eq!(h.wait("k1", "").exit_code, 0);
    let out = out.join().unwrap();

    // The terminal echoes the "go" typed above, and the init may not have
    // printed everything by then: the echo can come before the probe's
    // lines or between them (it is a line of its own either way).
    let lines: Vec<&str> = out.split("\r\n").filter(|l| *l != "go").collect();
    assert!(lines.len() >= 3, "{out:?}");
    // The same file: one devpts, one inode; pty 0 (major 136 = 0x88).
    assert_eq!(lines[0], lines[1], "fd 0 and /dev/console differ: {out:?}");
    assert!(lines[0].ends_with(" 88:0"), "{out:?}");
    assert_eq!(lines[2], "1", "one mount at /dev/console: {out:?}");
    let exec_lines: Vec<&str> = exec_out.split("\r\n").collect();
    assert!(exec_lines.len() >= 3, "{exec_out:?}");
    assert!(exec_lines[0].ends_with(" 88:1"), "{exec_out:?}");
    assert_eq!(exec_lines[1], lines[1], "the exec rebound /dev/console");
    assert_eq!(exec_lines[2], "1", "{exec_out:?}");
    h.remove("k1", false).expect("RemoveContainer");

    // No terminal: no /dev/console, no mount there.
    let created = h
        .create(
            "k2",
            &spec(&[
                "sh",
                "-c",
                "test -e /dev/console && echo present || echo absent; \
                 grep -c ' /dev/console ' /proc/self/mountinfo",
            ]),
            (false, true, false),
        )
        .expect("CreateContainer");
    let out = h.collect(created.stdio.into_option().unwrap().stdout_port);
    h.start_container("k2");
    h.wait("k2", "");
    assert_eq!(out.join().unwrap(), "absent\n0\n");
    h.remove("k2", false).expect("RemoveContainer");
    assert!(h.agent_children().is_empty(), "{:?}", h.agent_children());
}

/// A /dev the image brings (no tmpfs mounted there): a link at
/// /dev/console is replaced by the console, not followed; the file it
/// pointed to is untouched.
#[test]
fn a_link_at_dev_console_is_replaced_not_followed() {
    require_root_and_busybox();
    let h = Harness::start("ctr-console-link");
    std::fs::write(h.rootfs.join("etc/target"), "target\n").unwrap();
    symlink("../etc/target", h.rootfs.join("dev/console")).unwrap();
    symlink("pts/ptmx", h.rootfs.join("dev/ptmx")).unwrap();
    let mut s = terminal_spec(&[
        "sh",
        "-c",
        "stat -c %F /dev/console; cat /etc/target; \
         grep -c ' /etc/target ' /proc/self/mountinfo",
    ]);
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["destination"] != "/dev");
    // Masked paths are bound over with /dev/null, which no tmpfs /dev
    // brings now.
    s["linux"]["devices"] = json!([{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}]);
    let created = h
        .create("k3", &s, (false, true, false))
        .expect("CreateContainer");
    let out = h.collect(created.stdio.into_option().unwrap().stdout_port);
    h.start_container("k3");
    h.wait("k3", "");
    assert_eq!(
        out.join().unwrap(),
        "character special file\r\ntarget\r\n0\r\n"
    );
    assert_eq!(
        std::fs::read_to_string(h.rootfs.join("etc/target")).unwrap(),
        "target\n"
    );
    h.remove("k3", false).expect("RemoveContainer");
}

/// linux.devices entries at paths that hold links: /dev/ptmx (the default
/// link to pts/ptmx, which privileged specs list as a device) and
/// /dev/stdin (a link out of /dev, to /proc/self/fd/0) become nodes at
/// exactly those paths; the terminal still comes from the container's own
/// devpts. A path through a link, or onto a directory, is refused.
#[test]
fn devices_replace_links_at_their_path_and_never_follow_them() {
    require_root_and_busybox();
    let h = Harness::start("ctr-devlinks");
    let mut s = terminal_spec(&[
        "sh",
        "-c",
        "tty; stat -c '%F %t:%T %a' /dev/ptmx /dev/stdin; echo $(ls /dev/pts)",
    ]);
    s["linux"]["devices"] = json!([
        {"path": "/dev/ptmx", "type": "c", "major": 5, "minor": 2, "fileMode": 438, "uid": 0, "gid": 0},
        {"path": "/dev/stdin", "type": "c", "major": 1, "minor": 5, "fileMode": 438}
    ]);
    let created = h
        .create("d1", &s, (false, true, false))
        .expect("CreateContainer");
    let out = h.collect(created.stdio.into_option().unwrap().stdout_port);
    h.start_container("d1");
    assert_eq!(h.wait("d1", "").exit_code, 0);
    assert_eq!(
        out.join().unwrap(),
        "/dev/pts/0\r\ncharacter special file 5:2 666\r\n\
         character special file 1:5 666\r\n0 ptmx\r\n"
    );
    h.remove("d1", false).expect("RemoveContainer");

    let refused = |devices: Value, image_dev: bool| {
        let mut s = spec(&["true"]);
        s["linux"]["devices"] = devices;
        if image_dev {
            s["mounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["destination"] != "/dev");
        }
        let (c, msg) = code(&h.create("d2", &s, (false, false, false)).unwrap_err());
        assert_eq!(c, Code::INTERNAL, "{msg}");
        msg
    };
    // Through the default /dev/fd -> /proc/self/fd link.
    let msg = refused(
        json!([{"path": "/dev/fd/9", "type": "c", "major": 1, "minor": 3}]),
        false,
    );
    assert!(
        msg.contains("opening /dev/fd") && msg.contains("not resolved through links"),
        "{msg}"
    );
    // Through a link the image's own /dev holds, pointing out of /dev.
    symlink("../etc", h.rootfs.join("dev/sub")).unwrap();
    let msg = refused(
        json!([{"path": "/dev/sub/null", "type": "c", "major": 1, "minor": 3}]),
        true,
    );
    assert!(msg.contains("opening /dev/sub"), "{msg}");
    assert!(!h.rootfs.join("etc/null").exists(), "made a node in /etc");
    // Onto a directory (the devpts mount point).
    let msg = refused(
        json!([{"path": "/dev/pts", "type": "c", "major": 1, "minor": 3}]),
        false,
    );
    assert!(
        msg.contains("/dev/pts: it exists and is a directory"),
        "{msg}"
    );
    assert!(h.agent_children().is_empty(), "{:?}", h.agent_children());
}

/// Needs a cgroup2 root with the memory controller (a guest; not this
/// host's unified hierarchy): agent/tests/in-guest.sh runs it in the guest
/// kernel, and tests/e2e/containers-in-vm.sh covers the same in a sandbox.
#[test]
#[ignore = "needs a cgroup2 root with the memory controller: agent/tests/in-guest.sh"]
fn oom_kill_is_reported_before_the_exit() {
    require_root_and_busybox();
    let root = host_cgroup2()
        .filter(|r| has_controller(r, "memory"))
        .unwrap_or_else(|| {
            panic!("no cgroup2 root with the memory controller: set PALISADE_TEST_CGROUP_ROOT")
        });
    let h = Harness::start_with("ctr-oom", &["--cgroup-root", &root]);
    // tail keeps the last line, and /dev/zero has no newline: it grows
    // until the limit.
    let mut s = spec(&["tail", "/dev/zero"]);
    s["linux"]["resources"] =
        json!({"memory": {"limit": 33554432, "swap": 33554432}, "pids": {"limit": 64}});
    h.create("oom", &s, (false, false, false))
        .expect("CreateContainer");
    let dir = Path::new(&root).join("palisade/oom");
    assert_eq!(
        std::fs::read_to_string(dir.join("memory.max"))
            .unwrap()
            .trim(),
        "33554432"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("pids.max"))
            .unwrap()
            .trim(),
        "64"
    );
    h.start_container("oom");
    let exit = h.wait("oom", "");
    assert_eq!(exit.signal, 9, "{exit:?}");
    let events = h
        .api
        .get_events(
            ctx(),
            &GetEventsRequest {
                timeout_ms: 5000,
                ..Default::default()
            },
        )
        .expect("GetEvents")
        .events;
    let kinds: Vec<_> = events
        .iter()
        .map(|e| match &e.kind {
            Some(event::Kind::OomKilled(_)) => "oom",
            Some(event::Kind::ProcessExited(_)) => "exit",
            _ => "?",
        })
        .collect();
    assert_eq!(kinds, ["oom", "exit"], "{events:?}");
    let stats = h
        .api
        .stats_container(
            ctx(),
            &StatsContainerRequest {
                container_id: "oom".into(),
                ..Default::default()
            },
        )
        .expect("StatsContainer");
    assert!(stats.memory.oom_kill_events >= 1, "{stats:?}");
    assert_eq!(stats.memory.max, 33554432);
    assert_eq!(stats.pids.max, 64);
    h.remove("oom", false).expect("RemoveContainer");
    assert!(!dir.exists());

    // An OOM kill of a process the agent does not track (a child of the
    // init) is reported while the container keeps running: the init waits
    // on stdin until the test has seen the event.
    let after = events.last().map_or(0, |e| e.sequence);
    let mut s = spec(&["sh", "-c", "tail /dev/zero; echo survived; read x"]);
    s["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
    let created = h
        .create("oom2", &s, (true, true, false))
        .expect("CreateContainer");
    let ports = created.stdio.into_option().unwrap();
    let out = h.collect(ports.stdout_port);
    let mut input = h.connect(ports.stdin_port);
    h.start_container("oom2");
    let events = h
        .api
        .get_events(
            ttrpc::context::with_duration(std::time::Duration::from_secs(120)),
            &GetEventsRequest {
                after_sequence: after,
                timeout_ms: 60_000,
                ..Default::default()
            },
        )
        .expect("GetEvents")
        .events;
    assert_eq!(events.len(), 1, "want only the OOM kill so far: {events:?}");
    assert!(
        matches!(&events[0].kind, Some(event::Kind::OomKilled(_)))
            && events[0].container_id == "oom2",
        "{events:?}"
    );
    input.write_all(b"done\n").unwrap();
    assert_eq!(h.wait("oom2", "").exit_code, 0);
    assert_eq!(out.join().unwrap(), "survived\n");
    h.remove("oom2", false).expect("RemoveContainer");
}

/// runc CVE-2021-30465: a sibling container that shares a volume swaps a
/// directory of it for a symlink, so a mount nested in the volume lands
/// elsewhere in (or out of) the container. A link on a volume is never
/// followed for a mount's destination; one in the image's own tree is,
/// inside the root; a real directory in the volume takes the mount.
#[test]
fn mount_destinations_never_follow_links_a_volume_holds() {
    require_root_and_busybox();
    let h = Harness::start("ctr-mountlinks");
    let vol = h.dir.0.join("vol");
    std::fs::create_dir_all(vol.join("real")).unwrap();
    symlink("/etc", vol.join("sub")).unwrap();
    let with_mounts = |args: &[&str], nested: &str| {
        let mut s = spec(args);
        let mounts = s["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/data", "type": "bind",
            "source": vol.display().to_string(), "options": ["rbind", "rw"]}));
        mounts.push(json!({"destination": nested, "type": "tmpfs", "source": "nested"}));
        s
    };
    let s = with_mounts(&["true"], "/data/sub/x");
    let (c, msg) = code(&h.create("m1", &s, (false, false, false)).unwrap_err());
    assert_eq!(c, Code::INTERNAL, "{msg}");
    assert!(
        msg.contains("sub is a symlink") && msg.contains("not followed"),
        "{msg}"
    );
    assert!(!h.rootfs.join("etc/x").exists(), "made a directory in /etc");

    let s = with_mounts(
        &["sh", "-c", "awk '$2 ~ /data/ {print $1, $2}' /proc/mounts"],
        "/data/real/x",
    );
    let created = h
        .create("m2", &s, (false, true, false))
        .expect("CreateContainer");
    let out = h.collect(created.stdio.into_option().unwrap().stdout_port);
    h.start_container("m2");
    assert_eq!(h.wait("m2", "").exit_code, 0);
    let out = out.join().unwrap();
    assert!(out.contains("nested /data/real/x"), "{out}");
    h.remove("m2", false).expect("RemoveContainer");
    assert!(h.agent_children().is_empty(), "{:?}", h.agent_children());
}

/// CVE-2025-31133: masked files are covered with the null device only: a
/// /dev/null that is something else (a link to a file the container may
/// write, a regular file) is refused, never bound over the masked path.
/// Masked directories get an empty read-only tmpfs.
#[test]
fn masked_paths_use_only_the_real_null_device() {
    require_root_and_busybox();
    let h = Harness::start("ctr-mask");
    std::fs::create_dir_all(h.rootfs.join("etc/secrets")).unwrap();
    std::fs::write(h.rootfs.join("etc/secrets/key"), "key").unwrap();
    std::fs::write(h.rootfs.join("etc/secret"), "secret").unwrap();
    let s = spec(&[
        "sh",
        "-c",
        "cat /etc/secret; ls -A /etc/secrets; touch /etc/secrets/x 2>/dev/null || echo ro; \
         stat -c '%t:%T' /etc/secret",
    ]);
    let created = h
        .create("k1", &s, (false, true, false))
        .expect("CreateContainer");
    let out = h.collect(created.stdio.into_option().unwrap().stdout_port);
    h.start_container("k1");
    assert_eq!(h.wait("k1", "").exit_code, 0);
    assert_eq!(out.join().unwrap(), "ro\n1:3\n");
    h.remove("k1", false).expect("RemoveContainer");

    // The image's own /dev (no tmpfs there) with a fake null device.
    let image_dev = |null: &dyn Fn(&Path)| {
        let dev = h.rootfs.join("dev");
        let _ = std::fs::remove_dir_all(&dev);
        std::fs::create_dir_all(&dev).unwrap();
        null(&dev.join("null"));
        let mut s = spec(&["true"]);
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| !m["destination"].as_str().unwrap().starts_with("/dev"));
        let (c, msg) = code(&h.create("k2", &s, (false, false, false)).unwrap_err());
        assert_eq!(c, Code::INTERNAL, "{msg}");
        msg
    };
    let msg = image_dev(&|p| symlink("/etc/shadow-like", p).unwrap());
    assert!(msg.contains("/dev/null does not exist"), "{msg}");
    std::fs::write(h.rootfs.join("etc/shadow-like"), "writable").unwrap();
    let msg = image_dev(&|p| symlink("/etc/shadow-like", p).unwrap());
    assert!(msg.contains("not the null device"), "{msg}");
    let msg = image_dev(&|p| std::fs::write(p, "").unwrap());
    assert!(
        msg.contains("RegularFile 0:0, not the null device"),
        "{msg}"
    );
    assert!(h.agent_children().is_empty(), "{:?}", h.agent_children());
}

/// CVE-2025-52881: sysctls and oomScoreAdj are written through a private
/// procfs, so a mount the container's spec (or a sibling's volume) puts
/// over /proc/sys cannot take the write: here a tmpfs there would have
/// swallowed `kernel.hostname` into a plain file.
#[test]
fn proc_writes_go_to_the_real_procfs_whatever_covers_proc() {
    require_root_and_busybox();
    let h = Harness::start("ctr-procfs");
    let mut s = spec(&[
        "sh",
        "-c",
        "hostname; cat /proc/self/oom_score_adj; ls /proc/sys",
    ]);
    s["process"]["oomScoreAdj"] = 123.into();
    s["linux"]["sysctl"] = json!({"kernel.hostname": "via-sysctl"});
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/proc/sys", "type": "tmpfs", "source": "decoy"}));
    let created = h
        .create("p1", &s, (false, true, false))
        .expect("CreateContainer");
    let out = h.collect(created.stdio.into_option().unwrap().stdout_port);
    h.start_container("p1");
    assert_eq!(h.wait("p1", "").exit_code, 0);
    // The decoy tmpfs stays empty; the write reached the UTS namespace.
    assert_eq!(out.join().unwrap(), "via-sysctl\n123\n");
    h.remove("p1", false).expect("RemoveContainer");
}

/// CVE-2019-5736 class: a container's init runs agent code in the
/// container until it execs the workload; its /proc/<pid>/exe is a sealed
/// memfd copy of the agent, which no write through that link can change,
/// never the agent's own file.
#[test]
fn container_init_runs_from_a_sealed_copy_of_the_agent() {
    require_root_and_busybox();
    let h = Harness::start("ctr-sealed");
    h.create("e1", &spec(&["true"]), (false, false, false))
        .expect("CreateContainer");
    // Created, not started: the init waits for Start, still agent code.
    let children = h.agent_children();
    assert_eq!(children.len(), 1, "{children:?}");
    let exe = format!("/proc/{}/exe", children[0]);
    let link = std::fs::read_link(&exe).unwrap();
    assert!(
        link.to_string_lossy().starts_with("/memfd:palisade-agent"),
        "{}",
        link.display()
    );
    let before = std::fs::read(&exe).unwrap();
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&exe) {
        assert!(f.write_all(b"overwritten").is_err(), "wrote into {exe}");
    }
    assert!(std::fs::read(&exe).unwrap() == before, "{exe} changed");
    h.start_container("e1");
    assert_eq!(h.wait("e1", "").exit_code, 0);
    h.remove("e1", false).expect("RemoveContainer");
}
