//! The `palisade agent` commands, one agent call (or a few) each. A
//! command that creates a container removes it again if a later step
//! fails: a refused command leaves nothing behind in the guest.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::json;

use super::args::{AgentCommand, ProcessArgs, Resources, RunArgs};
use super::report::{self, Call};
use super::session::{self, Session};
use super::target::Connection;
use super::{bundle, spec};
use crate::agent_client::containers::StdioWanted;
use crate::agent_client::AgentClient;

/// How long `events` waits per long poll before asking again.
const EVENTS_POLL: Duration = Duration::from_secs(30);

fn print(v: serde_json::Value) {
    println!("{v}");
}

/// Removes a container when dropped, unless disarmed: the error paths of
/// `run` must not leave it in the guest.
struct RemoveOnDrop<'a> {
    agent: &'a AgentClient,
    id: &'a str,
    armed: bool,
}

impl<'a> RemoveOnDrop<'a> {
    fn new(agent: &'a AgentClient, id: &'a str) -> Self {
        Self {
            agent,
            id,
            armed: true,
        }
    }

    /// Removes it now, reporting failure.
    fn remove(mut self) -> anyhow::Result<()> {
        self.armed = false;
        self.agent
            .remove_container(self.id, true)
            .call(&format!("removing container {}", self.id))
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.agent.remove_container(self.id, true) {
                eprintln!(
                    "palisade: {}",
                    report::agent_error(&format!("removing container {} again", self.id), &e)
                );
            }
        }
    }
}

pub fn run(conn: &Connection, command: &AgentCommand) -> anyhow::Result<ExitCode> {
    let agent = &conn.agent;
    match command {
        AgentCommand::Help => return unreachable_help(),
        AgentCommand::Version => {
            let v = agent.version().call("version")?;
            let d = agent.guest_details().call("guest details")?;
            print(json!({
                "agent_version": v.agent_version,
                "api_version": v.api_version,
                "kernel_release": d.kernel_release,
                "online_cpus": d.online_cpus,
                "memory_total_bytes": d.memory_total_bytes,
            }));
        }
        AgentCommand::Create { id, bundle, rootfs } => {
            let b = bundle::load(bundle, rootfs.as_deref(), &conn.paths)?;
            // Detached: the process's stdio is /dev/null in the guest (its
            // output needs a reader that outlives this command).
            let started = agent
                .create_container(id, b.spec_json, &b.rootfs, StdioWanted::default())
                .call(&format!("create {id}"))?;
            print(json!({"id": id, "pid": started.pid, "rootfs": b.rootfs}));
        }
        AgentCommand::Start { id } => agent.start_container(id).call(&format!("start {id}"))?,
        AgentCommand::Exec {
            id,
            exec_id,
            process,
            detach,
        } => return exec(agent, id, exec_id, process, *detach),
        AgentCommand::Kill {
            id,
            exec_id,
            all,
            signal,
        } => agent
            .signal_process(id, exec_id, *signal as u32, *all)
            .call(&format!(
                "kill {id} with {}",
                super::values::signal_name(*signal)
            ))?,
        AgentCommand::Wait {
            id,
            exec_id,
            timeout,
        } => {
            let exit =
                session::wait_exit(agent, id, exec_id, *timeout).call(&format!("wait {id}"))?;
            print(report::exit(&exit));
        }
        AgentCommand::Rm { id, force } => agent
            .remove_container(id, *force)
            .call(&format!("rm {id}"))?,
        AgentCommand::Ps { id } => {
            let pids = agent.list_processes(id).call(&format!("ps {id}"))?;
            let mut out = std::io::stdout().lock();
            for pid in pids {
                writeln!(out, "{pid}").context("writing to stdout")?;
            }
        }
        AgentCommand::Stats { id } => {
            let s = agent.stats_container(id).call(&format!("stats {id}"))?;
            print(report::stats(&s));
        }
        AgentCommand::Update { id, resources } => {
            let json = match resources {
                Resources::Limits(l) => serde_json::to_vec(&spec::resources(l))?,
                Resources::File(path) => {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let v: serde_json::Value = serde_json::from_slice(&bytes)
                        .with_context(|| format!("{} is not valid JSON", path.display()))?;
                    if !v.is_object() {
                        return Err(anyhow!(
                            "{} must hold an OCI linux.resources object",
                            path.display()
                        ));
                    }
                    bytes
                }
            };
            agent
                .update_container(id, json)
                .call(&format!("update {id}"))?;
        }
        AgentCommand::Pause { id } => agent.pause_container(id).call(&format!("pause {id}"))?,
        AgentCommand::Resume { id } => agent.resume_container(id).call(&format!("resume {id}"))?,
        AgentCommand::Events { follow } => events(agent, *follow)?,
        AgentCommand::Resize {
            id,
            exec_id,
            rows,
            cols,
        } => agent
            .resize_terminal(id, exec_id, u32::from(*rows), u32::from(*cols))
            .call(&format!("resize {id}"))?,
        AgentCommand::Run(r) => return run_container(conn, r),
    }
    Ok(ExitCode::SUCCESS)
}

fn unreachable_help() -> anyhow::Result<ExitCode> {
    // Help is printed before any connection is made.
    Err(anyhow!("internal: help reached the agent commands"))
}

fn events(agent: &AgentClient, follow: bool) -> anyhow::Result<()> {
    let mut after = 0;
    loop {
        let wait = if follow { EVENTS_POLL } else { Duration::ZERO };
        let batch = agent.get_events(after, wait).call("events")?;
        for e in &batch.events {
            print(report::event(e));
        }
        if !follow {
            return Ok(());
        }
        // Acknowledges what was printed: the agent forgets it on the
        // next call.
        after = batch.last_sequence;
    }
}

fn exec(
    agent: &AgentClient,
    id: &str,
    exec_id: &str,
    process: &ProcessArgs,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let json = serde_json::to_vec(&spec::process(process))?;
    let what = format!("exec {exec_id} in {id}");
    if detach {
        let started = agent
            .exec_process(id, exec_id, json, StdioWanted::default())
            .call(&what)?;
        print(json!({"id": id, "exec_id": exec_id, "pid": started.pid}));
        return Ok(ExitCode::SUCCESS);
    }
    let started = agent
        .exec_process(id, exec_id, json, attached(process.tty))
        .call(&what)?;
    let session = Session {
        agent,
        id,
        exec_id,
        tty: process.tty,
    };
    let exit = session.attach(&started, || Ok(()))?;
    Ok(ExitCode::from(session::exit_status(&exit)))
}

/// Every stream, on this tool's own stdin/stdout/stderr.
fn attached(tty: bool) -> StdioWanted {
    StdioWanted {
        stdin: true,
        stdout: true,
        stderr: !tty,
    }
}

fn run_container(conn: &Connection, r: &RunArgs) -> anyhow::Result<ExitCode> {
    let agent = &conn.agent;
    let id = r.id.as_str();
    let spec = serde_json::to_vec(&spec::run_spec(r))?;
    let rootfs = conn.paths.to_guest(&r.rootfs);
    let wanted = if r.detach {
        StdioWanted::default()
    } else {
        attached(r.process.tty)
    };
    let started = agent
        .create_container(id, spec, &rootfs, wanted)
        .call(&format!("create {id}"))?;
    let created = RemoveOnDrop::new(agent, id);
    let start = || agent.start_container(id).call(&format!("start {id}"));
    if r.detach {
        start()?;
        created.disarm();
        print(json!({"id": id, "pid": started.pid}));
        return Ok(ExitCode::SUCCESS);
    }
    let session = Session {
        agent,
        id,
        exec_id: "",
        tty: r.process.tty,
    };
    let exit = session.attach(&started, start)?;
    created.remove()?;
    Ok(ExitCode::from(session::exit_status(&exit)))
}
