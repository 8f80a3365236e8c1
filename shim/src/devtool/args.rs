//! The typed command lines of `palisade sandbox` and `palisade agent`,
//! parsed from argv with [`scan`](super::scan). Everything that can be
//! checked without a sandbox is checked here.

use std::path::PathBuf;
use std::time::Duration;

use super::scan::{self, flag, repeated, value, ArgsError, Opt, Scanned};
use super::values;

pub const SANDBOX_COMMANDS: &str = "run";
pub const AGENT_COMMANDS: &str = "create, start, exec, kill, wait, rm, ps, stats, update, pause, resume, events, resize, run, version";

/// Longest `--timeout-ms`: an hour.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxCommand {
    Help,
    Run(SandboxRun),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRun {
    /// None: `dev-<pid>`.
    pub id: Option<String>,
    pub vcpus: Option<u8>,
    pub memory_mib: Option<u32>,
    /// `--config` given after `run`.
    pub config: Option<PathBuf>,
    /// Overrides `[agent] dial_timeout_ms`.
    pub timeout: Option<Duration>,
    /// Host directories bind-mounted into the share, as volumes are for
    /// containerd's containers: the share itself is read-only to the guest.
    pub volumes: Vec<ShareVolume>,
}

/// `--volume HOST_DIR:NAME`: `HOST_DIR` appears in the guest as
/// `/run/palisade/shared/NAME`, and on the host as `<shared_dir>/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareVolume {
    pub host: PathBuf,
    pub name: String,
}

fn share_volume(text: &str) -> Result<ShareVolume, String> {
    let (host, name) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?}: want HOST_DIR:NAME, e.g. /tmp/rootfs:bb"))?;
    let host = PathBuf::from(host);
    if !host.is_absolute() {
        return Err(format!(
            "{text:?}: the host directory must be an absolute path"
        ));
    }
    if !host.is_dir() {
        return Err(format!("{text:?}: {} is not a directory", host.display()));
    }
    values::parse_sandbox_id(name).map_err(|_| {
        format!(
            "{text:?}: NAME must be 1-64 letters, digits, '.', '_' or '-', not starting with '.'"
        )
    })?;
    Ok(ShareVolume {
        host,
        name: name.to_owned(),
    })
}

/// Which agent `palisade agent` talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A sandbox started by `palisade sandbox run --id ID`.
    Sandbox(String),
    /// A VMM's hybrid vsock socket.
    Vsock(PathBuf),
    /// An agent in host test mode (`palisade-agent --listen unix://PATH`).
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInvocation {
    pub target: Target,
    /// Per-call deadline; None: the client's default.
    pub rpc_timeout: Option<Duration>,
    pub command: AgentCommand,
}

/// What a process runs as and with (`run` and `exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessArgs {
    pub args: Vec<String>,
    pub tty: bool,
    /// `NAME=value`, in order; later ones win.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<(u32, u32)>,
    /// `CAP_*` names added to the default set.
    pub cap_add: Vec<String>,
}

/// cgroup limits (`run`, `update`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.pids.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resources {
    Limits(Limits),
    /// An OCI `linux.resources` JSON file, sent as it is.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub id: String,
    pub rootfs: String,
    pub process: ProcessArgs,
    pub limits: Limits,
    pub hostname: Option<String>,
    pub readonly: bool,
    /// Create and start, print the pid, and leave it running.
    pub detach: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommand {
    Help,
    Version,
    Create {
        id: String,
        bundle: PathBuf,
        rootfs: Option<String>,
    },
    Start {
        id: String,
    },
    Exec {
        id: String,
        exec_id: String,
        process: ProcessArgs,
        detach: bool,
    },
    Kill {
        id: String,
        exec_id: String,
        all: bool,
        signal: i32,
    },
    Wait {
        id: String,
        exec_id: String,
        timeout: Option<Duration>,
    },
    Rm {
        id: String,
        force: bool,
    },
    Ps {
        id: String,
    },
    Stats {
        id: String,
    },
    Update {
        id: String,
        resources: Resources,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Events {
        follow: bool,
    },
    Resize {
        id: String,
        exec_id: String,
        rows: u16,
        cols: u16,
    },
    Run(RunArgs),
}

fn help_requested(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-h" || a == "--help")
}

fn timeout_ms(text: &str) -> Result<Duration, String> {
    values::parse_in_range(text, 1..=MAX_TIMEOUT_MS).map(Duration::from_millis)
}

/// `palisade sandbox ...` (the words after `sandbox`).
pub fn parse_sandbox(args: &[String]) -> Result<SandboxCommand, ArgsError> {
    if help_requested(args) {
        return Ok(SandboxCommand::Help);
    }
    let (word, rest) = match args.split_first() {
        Some((w, rest)) => (w.as_str(), rest),
        None => {
            return Err(ArgsError::NoCommand {
                tool: "sandbox",
                known: SANDBOX_COMMANDS,
            })
        }
    };
    match word {
        "help" => Ok(SandboxCommand::Help),
        "run" => {
            const OPTS: &[Opt] = &[
                value("--id"),
                value("--vcpus"),
                value("--memory-mib"),
                value("--config"),
                value("--timeout-ms"),
                repeated("--volume").short("-v"),
            ];
            let s = scan::scan("sandbox run", rest, OPTS)?;
            s.positionals(&[], 0)?;
            s.no_program()?;
            Ok(SandboxCommand::Run(SandboxRun {
                id: s.parsed("--id", values::parse_sandbox_id)?,
                vcpus: s
                    .parsed("--vcpus", |v| values::parse_in_range(v, 1..=32))?
                    .map(|n| n as u8),
                memory_mib: s
                    .parsed("--memory-mib", |v| values::parse_in_range(v, 64..=65536))?
                    .map(|n| n as u32),
                config: s.value("--config").map(PathBuf::from),
                timeout: s.parsed("--timeout-ms", timeout_ms)?,
                volumes: {
                    let volumes = s.parsed_all("--volume", share_volume)?;
                    let mut names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
                    names.sort_unstable();
                    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                        return Err(ArgsError::Conflict(format!(
                            "--volume: the name {:?} is given twice",
                            w[0]
                        )));
                    }
                    volumes
                },
            }))
        }
        other => Err(ArgsError::UnknownCommand {
            tool: "sandbox",
            word: other.to_owned(),
            known: SANDBOX_COMMANDS,
        }),
    }
}

/// Options every `palisade agent` command takes.
const TARGET_OPTS: [Opt; 4] = [
    value("--sandbox"),
    value("--vsock"),
    value("--unix"),
    value("--timeout-ms"),
];

const PROCESS_OPTS: [Opt; 5] = [
    flag("--tty").short("-t"),
    repeated("--env").short("-e"),
    value("--cwd"),
    value("--user").short("-u"),
    repeated("--cap-add"),
];

/// The options of one command, with the target options added.
fn opts(own: &[Opt]) -> Vec<Opt> {
    TARGET_OPTS.iter().chain(own).copied().collect()
}

/// `palisade agent ...` (the words after `agent`).
pub fn parse_agent(args: &[String]) -> Result<AgentInvocation, ArgsError> {
    // The command is the first word that is neither an option nor the
    // value of a target option.
    let mut i = 0;
    let mut command = None;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            break;
        }
        if TARGET_OPTS.iter().any(|o| o.name == a) {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            command = Some(i);
            break;
        }
        i += 1;
    }
    let (word, rest): (&str, Vec<String>) = match command {
        Some(at) => {
            let mut rest = args[..at].to_vec();
            rest.extend_from_slice(&args[at + 1..]);
            (args[at].as_str(), rest)
        }
        None if help_requested(args) => return Ok(help_invocation()),
        None => {
            // Options alone: report an unknown one rather than "no command".
            scan::scan("agent", args, &TARGET_OPTS)?;
            return Err(ArgsError::NoCommand {
                tool: "agent",
                known: AGENT_COMMANDS,
            });
        }
    };
    if word == "help" || help_requested(&rest) {
        return Ok(help_invocation());
    }
    let command_name = format!("agent {word}");
    let scan = |own: &[Opt]| scan::scan(&command_name, &rest, &opts(own));
    let (s, command) = match word {
        "version" => {
            let s = scan(&[])?;
            s.positionals(&[], 0)?;
            (s, AgentCommand::Version)
        }
        "create" => {
            let s = scan(&[value("--bundle").short("-b"), value("--rootfs")])?;
            let p = s.positionals(&["a container ID"], 0)?;
            let bundle = s
                .value("--bundle")
                .map(PathBuf::from)
                .ok_or(ArgsError::Missing {
                    command: s.command().to_owned(),
                    what: "--bundle DIR (the directory holding config.json)",
                })?;
            let rootfs = s.value("--rootfs").map(str::to_owned);
            let id = p[0].clone();
            (s, AgentCommand::Create { id, bundle, rootfs })
        }
        "start" | "ps" | "stats" | "pause" | "resume" => {
            let s = scan(&[])?;
            let id = s.positionals(&["a container ID"], 0)?.remove(0);
            let c = match word {
                "start" => AgentCommand::Start { id },
                "ps" => AgentCommand::Ps { id },
                "stats" => AgentCommand::Stats { id },
                "pause" => AgentCommand::Pause { id },
                _ => AgentCommand::Resume { id },
            };
            (s, c)
        }
        "exec" => {
            let mut own = PROCESS_OPTS.to_vec();
            own.push(flag("--detach").short("-d"));
            let s = scan(&own)?;
            let mut p = s.positionals(&["a container ID", "an EXEC_ID for the new process"], 0)?;
            let exec_id = p.remove(1);
            let id = p.remove(0);
            let process = process_args(&s)?;
            let detach = s.flag("--detach");
            if detach && process.tty {
                return Err(ArgsError::Conflict(
                    "`agent exec`: --detach and --tty do not go together: a detached process has no terminal to talk to".into(),
                ));
            }
            (
                s,
                AgentCommand::Exec {
                    id,
                    exec_id,
                    process,
                    detach,
                },
            )
        }
        "kill" => {
            let s = scan(&[value("--exec"), flag("--all").short("-a")])?;
            let p = s.positionals(&["a container ID"], 1)?;
            let signal = match p.get(1) {
                Some(sig) => values::parse_signal(sig).map_err(|problem| ArgsError::BadValue {
                    option: "SIGNAL".into(),
                    problem,
                })?,
                None => libc::SIGTERM,
            };
            let exec_id = s.value("--exec").unwrap_or_default().to_owned();
            let all = s.flag("--all");
            if all && !exec_id.is_empty() {
                return Err(ArgsError::Conflict(
                    "`agent kill`: --all signals every process of the container; leave out --exec"
                        .into(),
                ));
            }
            let id = p[0].clone();
            (
                s,
                AgentCommand::Kill {
                    id,
                    exec_id,
                    all,
                    signal,
                },
            )
        }
        "wait" => {
            let s = scan(&[value("--exec"), value("--wait-ms")])?;
            let id = s.positionals(&["a container ID"], 0)?.remove(0);
            let exec_id = s.value("--exec").unwrap_or_default().to_owned();
            let timeout = s.parsed("--wait-ms", timeout_ms)?;
            (
                s,
                AgentCommand::Wait {
                    id,
                    exec_id,
                    timeout,
                },
            )
        }
        "rm" => {
            let s = scan(&[flag("--force").short("-f")])?;
            let id = s.positionals(&["a container ID"], 0)?.remove(0);
            let force = s.flag("--force");
            (s, AgentCommand::Rm { id, force })
        }
        "update" => {
            let s = scan(&[
                value("--memory").short("-m"),
                value("--pids"),
                value("--resources"),
            ])?;
            let id = s.positionals(&["a container ID"], 0)?.remove(0);
            let limits = limits(&s)?;
            let resources = match (s.value("--resources"), limits.is_empty()) {
                (Some(file), true) => Resources::File(PathBuf::from(file)),
                (Some(_), false) => {
                    return Err(ArgsError::Conflict(
                        "`agent update`: give either --resources FILE or --memory/--pids, not both"
                            .into(),
                    ))
                }
                (None, false) => Resources::Limits(limits),
                (None, true) => {
                    return Err(ArgsError::Missing {
                        command: s.command().to_owned(),
                        what: "something to change: --memory BYTES, --pids N or --resources FILE",
                    })
                }
            };
            (s, AgentCommand::Update { id, resources })
        }
        "events" => {
            let s = scan(&[flag("--follow").short("-f")])?;
            s.positionals(&[], 0)?;
            let follow = s.flag("--follow");
            (s, AgentCommand::Events { follow })
        }
        "resize" => {
            let s = scan(&[value("--exec")])?;
            let p = s.positionals(&["a container ID", "ROWS", "COLS"], 0)?;
            let dim = |what: &str, v: &str| {
                values::parse_in_range(v, 1..=u64::from(u16::MAX))
                    .map(|n| n as u16)
                    .map_err(|problem| ArgsError::BadValue {
                        option: what.into(),
                        problem,
                    })
            };
            let rows = dim("ROWS", &p[1])?;
            let cols = dim("COLS", &p[2])?;
            let exec_id = s.value("--exec").unwrap_or_default().to_owned();
            (
                s,
                AgentCommand::Resize {
                    id: p[0].clone(),
                    exec_id,
                    rows,
                    cols,
                },
            )
        }
        "run" => {
            let mut own = PROCESS_OPTS.to_vec();
            own.extend([
                value("--rootfs"),
                value("--memory").short("-m"),
                value("--pids"),
                value("--hostname"),
                flag("--readonly"),
                flag("--detach").short("-d"),
            ]);
            let s = scan(&own)?;
            let id = s.positionals(&["a container ID"], 0)?.remove(0);
            let rootfs = s.value("--rootfs").map(str::to_owned).ok_or(ArgsError::Missing {
                command: s.command().to_owned(),
                what: "--rootfs PATH (the container's root directory, a guest path such as /run/palisade/shared/busybox)",
            })?;
            let process = process_args(&s)?;
            let detach = s.flag("--detach");
            if detach && process.tty {
                return Err(ArgsError::Conflict(
                    "`agent run`: --detach and --tty do not go together: a detached container has no terminal to talk to".into(),
                ));
            }
            let run = RunArgs {
                id,
                rootfs,
                limits: limits(&s)?,
                hostname: s.value("--hostname").map(str::to_owned),
                readonly: s.flag("--readonly"),
                detach,
                process,
            };
            (s, AgentCommand::Run(run))
        }
        other => {
            return Err(ArgsError::UnknownCommand {
                tool: "agent",
                word: other.to_owned(),
                known: AGENT_COMMANDS,
            })
        }
    };
    if !matches!(command, AgentCommand::Exec { .. } | AgentCommand::Run(_)) {
        s.no_program()?;
    }
    Ok(AgentInvocation {
        target: target(&s)?,
        rpc_timeout: s.parsed("--timeout-ms", timeout_ms)?,
        command,
    })
}

/// Help needs no target.
fn help_invocation() -> AgentInvocation {
    AgentInvocation {
        target: Target::Unix(PathBuf::new()),
        rpc_timeout: None,
        command: AgentCommand::Help,
    }
}

fn target(s: &Scanned) -> Result<Target, ArgsError> {
    let given: Vec<Target> = [
        s.parsed("--sandbox", values::parse_sandbox_id)?
            .map(Target::Sandbox),
        s.value("--vsock").map(|p| Target::Vsock(PathBuf::from(p))),
        s.value("--unix").map(|p| Target::Unix(PathBuf::from(p))),
    ]
    .into_iter()
    .flatten()
    .collect();
    match given.len() {
        0 => Err(ArgsError::NoTarget),
        1 => Ok(given.into_iter().next().ok_or(ArgsError::NoTarget)?),
        _ => Err(ArgsError::TwoTargets),
    }
}

fn process_args(s: &Scanned) -> Result<ProcessArgs, ArgsError> {
    let cwd = s.parsed("--cwd", |v| {
        if v.starts_with('/') {
            Ok(v.to_owned())
        } else {
            Err(format!(
                "{v:?} is not an absolute path inside the container"
            ))
        }
    })?;
    Ok(ProcessArgs {
        args: s.program()?,
        tty: s.flag("--tty"),
        env: s.parsed_all("--env", values::parse_env)?,
        cwd,
        user: s.parsed("--user", values::parse_user)?,
        cap_add: s.parsed_all("--cap-add", values::parse_capability)?,
    })
}

fn limits(s: &Scanned) -> Result<Limits, ArgsError> {
    Ok(Limits {
        memory_bytes: s.parsed("--memory", values::parse_bytes)?,
        pids: s.parsed("--pids", values::parse_count)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    fn agent(args: &[&str]) -> Result<AgentInvocation, ArgsError> {
        parse_agent(&strings(args))
    }

    fn command(args: &[&str]) -> AgentCommand {
        match agent(args) {
            Ok(inv) => inv.command,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn error(args: &[&str]) -> String {
        match agent(args) {
            Ok(inv) => panic!("{args:?} parsed: {inv:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn sandbox_run_volumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().display().to_string();
        let parsed = parse_sandbox(&strings(&["run", "-v", &format!("{host}:bb")]));
        let Ok(SandboxCommand::Run(run)) = parsed else {
            panic!("{parsed:?}");
        };
        assert_eq!(
            run.volumes,
            vec![ShareVolume {
                host: dir.path().to_owned(),
                name: "bb".into()
            }]
        );
        for (arg, want) in [
            ("nocolon".to_owned(), "want HOST_DIR:NAME"),
            ("rel:bb".to_owned(), "absolute path"),
            ("/no/such/dir:bb".to_owned(), "is not a directory"),
            (format!("{host}:../x"), "NAME must be"),
        ] {
            let err = parse_sandbox(&strings(&["run", "--volume", &arg])).expect_err(&arg);
            assert!(err.to_string().contains(want), "{arg}: {err}");
        }
        let twice = format!("{host}:bb");
        let err = parse_sandbox(&strings(&["run", "-v", &twice, "-v", &twice])).expect_err("twice");
        assert!(err.to_string().contains("given twice"), "{err}");
    }

    #[test]
    fn sandbox_run() {
        assert_eq!(
            parse_sandbox(&strings(&[
                "run",
                "--id",
                "s1",
                "--vcpus=2",
                "--memory-mib",
                "512"
            ])),
            Ok(SandboxCommand::Run(SandboxRun {
                id: Some("s1".into()),
                vcpus: Some(2),
                memory_mib: Some(512),
                config: None,
                timeout: None,
                volumes: Vec::new(),
            }))
        );
        assert_eq!(
            parse_sandbox(&strings(&["run", "--help"])),
            Ok(SandboxCommand::Help)
        );
        for (args, want) in [
            (&["run", "--id", "../x"][..], "not a usable sandbox id"),
            (
                &["run", "--vcpus", "0"],
                "--vcpus \"0\": expected a whole number from 1 to 32",
            ),
            (&["run", "--memory-mib", "32"], "from 64 to 65536"),
            (&["run", "extra"], "unexpected argument \"extra\""),
            (&["start"], "unknown command \"start\""),
            (&[], "no command given"),
        ] {
            let e = parse_sandbox(&strings(args)).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn targets() {
        let inv = agent(&["--sandbox", "s1", "ps", "c1"]).unwrap();
        assert_eq!(inv.target, Target::Sandbox("s1".into()));
        let inv = agent(&[
            "ps",
            "c1",
            "--vsock=/run/x/vsock.sock",
            "--timeout-ms",
            "500",
        ])
        .unwrap();
        assert_eq!(inv.target, Target::Vsock("/run/x/vsock.sock".into()));
        assert_eq!(inv.rpc_timeout, Some(Duration::from_millis(500)));
        assert_eq!(
            agent(&["--unix", "/tmp/a.sock", "version"]).unwrap().target,
            Target::Unix("/tmp/a.sock".into())
        );
        assert!(error(&["ps", "c1"]).contains("say which agent"));
        assert!(error(&["--sandbox", "a", "--unix", "/b", "ps", "c1"]).contains("only one of"));
        assert!(error(&["--sandbox", "a/b", "ps", "c1"]).contains("not a usable sandbox id"));
        assert!(error(&["--sandbox", "a"]).contains("no command given"));
        assert!(error(&["--sandbox", "a", "--bogus"]).contains("\"--bogus\""));
    }

    #[test]
    fn help_needs_no_target() {
        for args in [
            &["--help"][..],
            &["help"],
            &["run", "-h"],
            &["--sandbox", "x", "kill", "--help"],
        ] {
            assert_eq!(command(args), AgentCommand::Help, "{args:?}");
        }
        // After `--`, -h belongs to the program.
        assert!(matches!(
            command(&["--unix", "/s", "exec", "c", "e", "--", "ls", "-h"]),
            AgentCommand::Exec { .. }
        ));
    }

    #[test]
    fn create_and_simple_commands() {
        assert_eq!(
            command(&["--unix", "/s", "create", "c1", "--bundle", "/b"]),
            AgentCommand::Create {
                id: "c1".into(),
                bundle: "/b".into(),
                rootfs: None
            }
        );
        assert_eq!(
            command(&["--unix", "/s", "create", "-b", "/b", "c1", "--rootfs", "/r"]),
            AgentCommand::Create {
                id: "c1".into(),
                bundle: "/b".into(),
                rootfs: Some("/r".into())
            }
        );
        assert!(error(&["--unix", "/s", "create", "c1"]).contains("--bundle DIR"));
        assert!(error(&["--unix", "/s", "create"]).contains("needs a container ID"));
        assert_eq!(
            command(&["--unix", "/s", "start", "c1"]),
            AgentCommand::Start { id: "c1".into() }
        );
        assert_eq!(
            command(&["--unix", "/s", "rm", "-f", "c1"]),
            AgentCommand::Rm {
                id: "c1".into(),
                force: true
            }
        );
        assert!(
            error(&["--unix", "/s", "stats", "c1", "c2"]).contains("unexpected argument \"c2\"")
        );
        assert!(error(&["--unix", "/s", "ps", "c1", "--", "x"]).contains("takes no program"));
        assert!(error(&["--unix", "/s", "frobnicate"]).contains("unknown command \"frobnicate\""));
    }

    #[test]
    fn exec() {
        assert_eq!(
            command(&[
                "--sandbox",
                "s",
                "exec",
                "c1",
                "e1",
                "-t",
                "--env",
                "A=1",
                "--user",
                "1000:1000",
                "--cwd",
                "/tmp",
                "--",
                "sh",
                "-c",
                "id"
            ]),
            AgentCommand::Exec {
                id: "c1".into(),
                exec_id: "e1".into(),
                process: ProcessArgs {
                    args: strings(&["sh", "-c", "id"]),
                    tty: true,
                    env: strings(&["A=1"]),
                    cwd: Some("/tmp".into()),
                    user: Some((1000, 1000)),
                    cap_add: vec![],
                },
                detach: false,
            }
        );
        assert!(error(&["--sandbox", "s", "exec", "c1", "--", "sh"]).contains("EXEC_ID"));
        assert!(error(&["--sandbox", "s", "exec", "c1", "e1"]).contains("after `--`"));
        assert!(
            error(&["--sandbox", "s", "exec", "c1", "e1", "-d", "-t", "--", "sh"])
                .contains("do not go together")
        );
        assert!(error(&[
            "--sandbox",
            "s",
            "exec",
            "c1",
            "e1",
            "--cwd",
            "tmp",
            "--",
            "sh"
        ])
        .contains("--cwd \"tmp\" is not an absolute path"));
        assert!(error(&[
            "--sandbox",
            "s",
            "exec",
            "c1",
            "e1",
            "--env",
            "X",
            "--",
            "sh"
        ])
        .contains("--env \"X\" is not NAME=value"));
    }

    #[test]
    fn kill() {
        assert_eq!(
            command(&["--sandbox", "s", "kill", "c1"]),
            AgentCommand::Kill {
                id: "c1".into(),
                exec_id: String::new(),
                all: false,
                signal: libc::SIGTERM
            }
        );
        assert_eq!(
            command(&["--sandbox", "s", "kill", "c1", "--exec", "e1", "KILL"]),
            AgentCommand::Kill {
                id: "c1".into(),
                exec_id: "e1".into(),
                all: false,
                signal: libc::SIGKILL
            }
        );
        assert!(matches!(
            command(&["--sandbox", "s", "kill", "--all", "c1", "9"]),
            AgentCommand::Kill {
                all: true,
                signal: 9,
                ..
            }
        ));
        assert!(error(&["--sandbox", "s", "kill", "c1", "BOGUS"])
            .contains("SIGNAL \"BOGUS\" is not a signal name"));
        assert!(
            error(&["--sandbox", "s", "kill", "c1", "--all", "--exec", "e"])
                .contains("leave out --exec")
        );
    }

    #[test]
    fn wait_update_events_resize() {
        assert_eq!(
            command(&[
                "--sandbox",
                "s",
                "wait",
                "c1",
                "--exec",
                "e",
                "--wait-ms",
                "5000"
            ]),
            AgentCommand::Wait {
                id: "c1".into(),
                exec_id: "e".into(),
                timeout: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(
            command(&[
                "--sandbox",
                "s",
                "update",
                "c1",
                "--memory",
                "64M",
                "--pids",
                "20"
            ]),
            AgentCommand::Update {
                id: "c1".into(),
                resources: Resources::Limits(Limits {
                    memory_bytes: Some(64 << 20),
                    pids: Some(20)
                })
            }
        );
        assert_eq!(
            command(&["--sandbox", "s", "update", "c1", "--resources", "/r.json"]),
            AgentCommand::Update {
                id: "c1".into(),
                resources: Resources::File("/r.json".into())
            }
        );
        assert!(error(&["--sandbox", "s", "update", "c1"]).contains("something to change"));
        assert!(error(&[
            "--sandbox",
            "s",
            "update",
            "c1",
            "--resources",
            "/r",
            "--pids",
            "3"
        ])
        .contains("not both"));
        assert!(
            error(&["--sandbox", "s", "update", "c1", "--memory", "lots"])
                .contains("--memory \"lots\" is not a size")
        );
        assert_eq!(
            command(&["--sandbox", "s", "events", "-f"]),
            AgentCommand::Events { follow: true }
        );
        assert_eq!(
            command(&["--sandbox", "s", "resize", "c1", "40", "120"]),
            AgentCommand::Resize {
                id: "c1".into(),
                exec_id: String::new(),
                rows: 40,
                cols: 120
            }
        );
        assert!(error(&["--sandbox", "s", "resize", "c1", "0", "120"]).contains("ROWS \"0\""));
        assert!(error(&["--sandbox", "s", "resize", "c1", "40"]).contains("needs COLS"));
    }

    #[test]
    fn run() {
        let c = command(&[
            "--sandbox",
            "s",
            "run",
            "c1",
            "--rootfs",
            "/run/palisade/shared/bb",
            "--memory",
            "32m",
            "--pids",
            "10",
            "-e",
            "A=1",
            "--cap-add",
            "mknod",
            "--readonly",
            "--",
            "echo",
            "hi",
        ]);
        assert_eq!(
            c,
            AgentCommand::Run(RunArgs {
                id: "c1".into(),
                rootfs: "/run/palisade/shared/bb".into(),
                process: ProcessArgs {
                    args: strings(&["echo", "hi"]),
                    env: strings(&["A=1"]),
                    cap_add: strings(&["CAP_MKNOD"]),
                    ..Default::default()
                },
                limits: Limits {
                    memory_bytes: Some(32 << 20),
                    pids: Some(10)
                },
                hostname: None,
                readonly: true,
                detach: false,
            })
        );
        assert!(error(&["--sandbox", "s", "run", "c1", "--", "sh"]).contains("--rootfs PATH"));
        assert!(error(&["--sandbox", "s", "run", "c1", "--rootfs", "/r"]).contains("after `--`"));
        assert!(error(&[
            "--sandbox",
            "s",
            "run",
            "c1",
            "--rootfs",
            "/r",
            "--pids",
            "0",
            "--",
            "sh"
        ])
        .contains("--pids \"0\""));
        assert!(error(&[
            "--sandbox",
            "s",
            "run",
            "c1",
            "--rootfs",
            "/r",
            "--user",
            "root",
            "--",
            "sh"
        ])
        .contains("names are not looked up"));
    }
}
