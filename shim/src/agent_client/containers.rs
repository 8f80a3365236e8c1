//! The Containers service of the agent API (`containers.proto`): one typed
//! method per RPC, each with the client's deadline. Specs travel as JSON
//! bytes, exactly as the shim rewrote them.

use std::time::Duration;

use palisade_protocols::containers::{
    CloseStdinRequest, CreateContainerRequest, Event, ExecProcessRequest, GetEventsRequest,
    ListProcessesRequest, PauseContainerRequest, ProcessExit, RemoveContainerRequest,
    ResizeTerminalRequest, ResumeContainerRequest, SignalProcessRequest, StartContainerRequest,
    StatsContainerRequest, StatsContainerResponse, StdioPorts, StdioRequest,
    UpdateContainerRequest, WaitProcessRequest,
};

use super::{AgentClient, AgentError};

/// Added to a long poll's own timeout for the reply's trip back.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(10);

/// Which stdio streams a process gets; the rest are /dev/null in the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioWanted {
    pub stdin: bool,
    pub stdout: bool,
    /// Ignored for a terminal, whose output is all on stdout.
    pub stderr: bool,
}

/// The ports to connect for each stream asked for (`None`: not asked for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    pub stdin: Option<u32>,
    pub stdout: Option<u32>,
    pub stderr: Option<u32>,
}

/// A process the agent started (or is holding before exec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// As the guest's root pid namespace sees it.
    pub pid: u32,
    pub ports: Ports,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    /// The exit code, or 128 + the signal that killed it.
    pub code: u32,
    pub signal: u32,
    /// Guest CLOCK_REALTIME in nanoseconds since the epoch.
    pub exited_at_unix_ns: u64,
}

/// What happened in the guest, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// A process ended and its output was drained.
    Exited {
        container_id: String,
        /// Empty: the container's init process.
        exec_id: String,
        exit: Exit,
    },
    /// The OOM killer killed a process of the container.
    OomKilled { container_id: String },
}

/// One batch of [`AgentClient::get_events`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventBatch {
    /// The sequence number to pass as `after` next time.
    pub last_sequence: u64,
    pub events: Vec<AgentEvent>,
}

impl From<StdioWanted> for StdioRequest {
    fn from(w: StdioWanted) -> Self {
        StdioRequest {
            stdin: w.stdin,
            stdout: w.stdout,
            stderr: w.stderr,
            ..Default::default()
        }
    }
}

fn ports(p: Option<&StdioPorts>) -> Ports {
    let nonzero = |port: u32| (port != 0).then_some(port);
    p.map(|p| Ports {
        stdin: nonzero(p.stdin_port),
        stdout: nonzero(p.stdout_port),
        stderr: nonzero(p.stderr_port),
    })
    .unwrap_or_default()
}

fn exit(e: Option<&ProcessExit>) -> Exit {
    e.map(|e| Exit {
        pid: e.pid,
        code: e.exit_code,
        signal: e.signal,
        exited_at_unix_ns: e.exited_at_unix_ns,
    })
    .unwrap_or_default()
}

/// Events the shim takes from one GetEvents reply. A guest agent is
/// hostile like the rest of the guest: whatever it sends, one reply costs
/// a bounded amount of work, and what is left over comes in the next one
/// (the agent keeps events until they are acknowledged by sequence).
pub const MAX_EVENTS_PER_BATCH: usize = 256;

/// The events of a reply that are new (sequence above `after`), at most
/// [`MAX_EVENTS_PER_BATCH`], and the sequence to acknowledge next time.
/// Sequence numbers only go up: a guest that sends them backwards cannot
/// make the shim handle an event twice.
fn accept_events(after: u64, events: &[Event]) -> EventBatch {
    let taken: Vec<&Event> = events
        .iter()
        .filter(|e| e.sequence > after)
        .take(MAX_EVENTS_PER_BATCH)
        .collect();
    EventBatch {
        last_sequence: taken.iter().map(|e| e.sequence).fold(after, u64::max),
        events: taken.into_iter().filter_map(event).collect(),
    }
}

/// Events of a kind this shim does not know (a newer agent) are skipped.
fn event(e: &Event) -> Option<AgentEvent> {
    use palisade_protocols::containers::event::Kind;
    match e.kind.as_ref()? {
        Kind::ProcessExited(p) => Some(AgentEvent::Exited {
            container_id: super::sanitize(&e.container_id),
            exec_id: super::sanitize(&p.exec_id),
            exit: exit(p.exit.as_ref()),
        }),
        Kind::OomKilled(_) => Some(AgentEvent::OomKilled {
            container_id: super::sanitize(&e.container_id),
        }),
        // The generated enum is non-exhaustive.
        _ => None,
    }
}

impl AgentClient {
    /// Builds the container and holds its init process before exec.
    pub fn create_container(
        &self,
        id: &str,
        spec_json: Vec<u8>,
        rootfs: &str,
        stdio: StdioWanted,
    ) -> Result<Started, AgentError> {
        let req = CreateContainerRequest {
            container_id: id.to_owned(),
            spec_json,
            rootfs: rootfs.to_owned(),
            stdio: Some(stdio.into()).into(),
            ..Default::default()
        };
        let reply = self.call("Containers.CreateContainer", |ctx| {
            self.containers.create_container(ctx, &req)
        })?;
        Ok(Started {
            pid: reply.pid,
            ports: ports(reply.stdio.as_ref()),
        })
    }

    /// Execs the init process's program.
    pub fn start_container(&self, id: &str) -> Result<(), AgentError> {
        let req = StartContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.call("Containers.StartContainer", |ctx| {
            self.containers.start_container(ctx, &req)
        })?;
        Ok(())
    }

    /// Starts another process, described by an OCI `process` object.
    pub fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdio: StdioWanted,
    ) -> Result<Started, AgentError> {
        let req = ExecProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            process_json,
            stdio: Some(stdio.into()).into(),
            ..Default::default()
        };
        let reply = self.call("Containers.ExecProcess", |ctx| {
            self.containers.exec_process(ctx, &req)
        })?;
        Ok(Started {
            pid: reply.pid,
            ports: ports(reply.stdio.as_ref()),
        })
    }

    /// Signals one process (`exec_id` empty: init), or with `all` every
    /// process of the container.
    pub fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError> {
        let req = SignalProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            signal,
            all,
            ..Default::default()
        };
        self.call("Containers.SignalProcess", |ctx| {
            self.containers.signal_process(ctx, &req)
        })?;
        Ok(())
    }

    /// Waits up to `timeout` for a process to end (and its output to be
    /// drained).
    pub fn wait_process(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<Exit, AgentError> {
        let req = WaitProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let reply = self.call_within("Containers.WaitProcess", timeout, |ctx| {
            self.containers.wait_process(ctx, &req)
        })?;
        Ok(exit(reply.exit.as_ref()))
    }

    /// Removes the container (`force`: kills it first if it runs).
    pub fn remove_container(&self, id: &str, force: bool) -> Result<(), AgentError> {
        let req = RemoveContainerRequest {
            container_id: id.to_owned(),
            force,
            ..Default::default()
        };
        self.call("Containers.RemoveContainer", |ctx| {
            self.containers.remove_container(ctx, &req)
        })?;
        Ok(())
    }

    /// Guest pids of every process in the container.
    pub fn list_processes(&self, id: &str) -> Result<Vec<u32>, AgentError> {
        let req = ListProcessesRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        let reply = self.call("Containers.ListProcesses", |ctx| {
            self.containers.list_processes(ctx, &req)
        })?;
        Ok(reply.pids)
    }

    /// The container's cgroup v2 statistics.
    pub fn stats_container(&self, id: &str) -> Result<StatsContainerResponse, AgentError> {
        let req = StatsContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.call("Containers.StatsContainer", |ctx| {
            self.containers.stats_container(ctx, &req)
        })
    }

    /// Applies new limits, an OCI `linux.resources` object.
    pub fn update_container(&self, id: &str, resources_json: Vec<u8>) -> Result<(), AgentError> {
        let req = UpdateContainerRequest {
            container_id: id.to_owned(),
            resources_json,
            ..Default::default()
        };
        self.call("Containers.UpdateContainer", |ctx| {
            self.containers.update_container(ctx, &req)
        })?;
        Ok(())
    }

    pub fn pause_container(&self, id: &str) -> Result<(), AgentError> {
        let req = PauseContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.call("Containers.PauseContainer", |ctx| {
            self.containers.pause_container(ctx, &req)
        })?;
        Ok(())
    }

    pub fn resume_container(&self, id: &str) -> Result<(), AgentError> {
        let req = ResumeContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.call("Containers.ResumeContainer", |ctx| {
            self.containers.resume_container(ctx, &req)
        })?;
        Ok(())
    }

    /// Closes a process's stdin once what the stdin stream holds is in.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        let req = CloseStdinRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.call("Containers.CloseStdin", |ctx| {
            self.containers.close_stdin(ctx, &req)
        })?;
        Ok(())
    }

    pub fn resize_terminal(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentError> {
        let req = ResizeTerminalRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            rows,
            cols,
            ..Default::default()
        };
        self.call("Containers.ResizeTerminal", |ctx| {
            self.containers.resize_terminal(ctx, &req)
        })?;
        Ok(())
    }

    /// Long-polls for events after sequence `after`: returns as soon as
    /// one is queued, or an empty batch after `wait`.
    pub fn get_events(&self, after: u64, wait: Duration) -> Result<EventBatch, AgentError> {
        let req = GetEventsRequest {
            after_sequence: after,
            timeout_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            max_events: MAX_EVENTS_PER_BATCH as u32,
            ..Default::default()
        };
        let reply = self.call_within("Containers.GetEvents", wait + LONG_POLL_MARGIN, |ctx| {
            self.containers.get_events(ctx, &req)
        })?;
        Ok(accept_events(after, &reply.events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_protocols::containers::{event::Kind, OomKilled, ProcessExited};

    #[test]
    fn zero_ports_are_streams_not_asked_for() {
        let p = StdioPorts {
            stdin_port: 0,
            stdout_port: 2050,
            stderr_port: 2051,
            ..Default::default()
        };
        assert_eq!(
            ports(Some(&p)),
            Ports {
                stdin: None,
                stdout: Some(2050),
                stderr: Some(2051)
            }
        );
        assert_eq!(ports(None), Ports::default());
    }

    #[test]
    fn converts_events_and_sanitizes_ids() {
        let exited = Event {
            sequence: 4,
            container_id: "c1\x1b".into(),
            kind: Some(Kind::ProcessExited(ProcessExited {
                exec_id: "e1".into(),
                exit: Some(ProcessExit {
                    pid: 7,
                    exit_code: 137,
                    signal: 9,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            event(&exited),
            Some(AgentEvent::Exited {
                container_id: "c1?".into(),
                exec_id: "e1".into(),
                exit: Exit {
                    pid: 7,
                    code: 137,
                    signal: 9,
                    exited_at_unix_ns: 0
                },
            })
        );
        let oom = Event {
            sequence: 5,
            container_id: "c1".into(),
            kind: Some(Kind::OomKilled(OomKilled::new())),
            ..Default::default()
        };
        assert_eq!(
            event(&oom),
            Some(AgentEvent::OomKilled {
                container_id: "c1".into()
            })
        );
        assert_eq!(event(&Event::new()), None);
    }

    #[test]
    fn a_flood_of_events_is_taken_a_bounded_batch_at_a_time() {
        let oom = |sequence| Event {
            sequence,
            container_id: "c1".into(),
            kind: Some(Kind::OomKilled(OomKilled::default())),
            ..Default::default()
        };
        let flood: Vec<Event> = (1..=10_000).map(oom).collect();
        let batch = accept_events(0, &flood);
        assert_eq!(batch.events.len(), MAX_EVENTS_PER_BATCH);
        assert_eq!(batch.last_sequence, MAX_EVENTS_PER_BATCH as u64);
        let next = accept_events(batch.last_sequence, &flood);
        assert_eq!(next.last_sequence, 2 * MAX_EVENTS_PER_BATCH as u64);
        // Old and repeated sequences are not handled again.
        let replay = accept_events(9_999, &[oom(5), oom(9_999), oom(10_000)]);
        assert_eq!(replay.events.len(), 1);
        assert_eq!(replay.last_sequence, 10_000);
    }
}
