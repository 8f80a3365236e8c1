//! What `palisade agent` prints: one line of compact JSON per result, so
//! scripts can read it with anything (the e2e tests use sed) and people
//! can still read it.

use palisade_protocols::containers::StatsContainerResponse;
use serde_json::{json, Value};

use crate::agent_client::containers::{AgentEvent, Exit};
use crate::agent_client::AgentError;

pub fn exit(e: &Exit) -> Value {
    json!({
        "pid": e.pid,
        "exit_code": e.code,
        "signal": e.signal,
        "exited_at_unix_ns": e.exited_at_unix_ns,
    })
}

/// cgroup v2 figures, flattened so every key is unique.
pub fn stats(s: &StatsContainerResponse) -> Value {
    let cpu = s.cpu.as_ref();
    let mem = s.memory.as_ref();
    let pids = s.pids.as_ref();
    let io = s.io.as_ref();
    json!({
        "cpu_usage_usec": cpu.map_or(0, |c| c.usage_usec),
        "cpu_user_usec": cpu.map_or(0, |c| c.user_usec),
        "cpu_system_usec": cpu.map_or(0, |c| c.system_usec),
        "cpu_nr_throttled": cpu.map_or(0, |c| c.nr_throttled),
        "memory_current_bytes": mem.map_or(0, |m| m.current),
        "memory_max_bytes": mem.map_or(0, |m| m.max),
        "memory_oom_events": mem.map_or(0, |m| m.oom_events),
        "memory_oom_kill_events": mem.map_or(0, |m| m.oom_kill_events),
        "pids_current": pids.map_or(0, |p| p.current),
        "pids_max": pids.map_or(0, |p| p.max),
        "io_read_bytes": io.map_or(0, |i| i.read_bytes),
        "io_write_bytes": io.map_or(0, |i| i.write_bytes),
        "io_read_ios": io.map_or(0, |i| i.read_ios),
        "io_write_ios": io.map_or(0, |i| i.write_ios),
    })
}

pub fn event(e: &AgentEvent) -> Value {
    match e {
        AgentEvent::Exited {
            container_id,
            exec_id,
            exit,
        } => json!({
            "type": "exit",
            "container_id": container_id,
            "exec_id": exec_id,
            "pid": exit.pid,
            "exit_code": exit.code,
            "signal": exit.signal,
            "exited_at_unix_ns": exit.exited_at_unix_ns,
        }),
        AgentEvent::OomKilled { container_id } => json!({
            "type": "oom",
            "container_id": container_id,
        }),
    }
}

/// An agent call's failure in words: the agent's own message and status
/// when it refused, the transport's story when it could not be asked.
pub fn agent_error(call: &str, e: &AgentError) -> String {
    match e.code() {
        Some(code) => format!("{call}: the agent refused: {} ({code:?})", e.message()),
        None => format!("{call}: {}", e.message()),
    }
}

/// `result.call("create c1")?` turns an agent failure into an error
/// naming the call.
pub trait Call<T> {
    fn call(self, what: &str) -> anyhow::Result<T>;
}

impl<T> Call<T> for Result<T, AgentError> {
    fn call(self, what: &str) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!(agent_error(what, &e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_protocols::containers::{MemoryStats, PidsStats};

    #[test]
    fn stats_are_flat_and_complete() {
        let s = StatsContainerResponse {
            memory: Some(MemoryStats {
                current: 4096,
                max: 1 << 20,
                ..Default::default()
            })
            .into(),
            pids: Some(PidsStats {
                current: 2,
                max: 10,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let v = stats(&s);
        assert_eq!(v["memory_current_bytes"], 4096);
        assert_eq!(v["pids_max"], 10);
        assert_eq!(v["cpu_usage_usec"], 0);
        assert_eq!(v.as_object().unwrap().len(), 14);
    }

    #[test]
    fn events() {
        let oom = AgentEvent::OomKilled {
            container_id: "c1".into(),
        };
        assert_eq!(
            event(&oom).to_string(),
            r#"{"container_id":"c1","type":"oom"}"#
        );
        let exited = AgentEvent::Exited {
            container_id: "c1".into(),
            exec_id: String::new(),
            exit: Exit {
                pid: 5,
                code: 137,
                signal: 9,
                exited_at_unix_ns: 1,
            },
        };
        let v = event(&exited);
        assert_eq!(v["type"], "exit");
        assert_eq!(v["exit_code"], 137);
    }
}
