//! containerd's task service (`containerd.task.v2.Task`) over one [`Pod`]:
//! decoding requests, encoding answers. The behaviour is in `pod.rs`.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    Status as StatusMessage, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{Task, TtrpcContext};
use palisade_protocols::containers::StatsContainerResponse;

use super::error::TaskError;
use super::options;
use super::pod::{CreateRequest, Pod, Status};
use super::stdio::StdioPaths;
use crate::mount::MountSource;

/// What `ctr task exec` and CRI send as an exec's spec.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// What `ctr task update` and CRI send as new resources.
const RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

pub struct TaskService {
    pod: Arc<Pod>,
}

impl TaskService {
    pub fn new(pod: Arc<Pod>) -> Self {
        TaskService { pod }
    }
}

type Reply<T> = ttrpc::Result<T>;

fn json_payload(any: &MessageField<Any>, want: &str, what: &str) -> Result<Vec<u8>, TaskError> {
    let Some(any) = any.as_ref() else {
        return Err(TaskError::invalid(format!("no {what} given")));
    };
    // The value is the JSON document itself; type URLs come with and
    // without the "types.containerd.io/" host across containerd versions.
    let name = |url: &str| url.rsplit('/').take(3).collect::<Vec<_>>().join("/");
    if name(&any.type_url) != name(want) {
        return Err(TaskError::invalid(format!(
            "{what} has type {:?}, expected {want:?}",
            any.type_url
        )));
    }
    Ok(any.value.clone())
}

/// Runs one lifecycle RPC, logging it (debug) and its failure (warn): with
/// `enable_debug`, containerd's log then shows what it asked the shim and
/// what it got back, which is how a pod that does not go away is explained.
fn traced<T>(
    method: &str,
    id: &str,
    exec_id: &str,
    call: impl FnOnce() -> Result<T, TaskError>,
) -> Reply<T> {
    let exec = if exec_id.is_empty() {
        String::new()
    } else {
        format!(" exec {exec_id}")
    };
    log::debug!("{method} {id}{exec}");
    call().map_err(|e| {
        log::warn!("{method} {id}{exec} failed: {e}");
        e.into()
    })
}

fn timestamp(
    at: &containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp,
) -> MessageField<containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp> {
    MessageField::some(at.clone())
}

impl Task for TaskService {
    fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> Reply<CreateTaskResponse> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(
                TaskError::new(Code::UNIMPLEMENTED, "palisade cannot restore checkpoints").into(),
            );
        }
        let config_path = options::config_path(req.options.as_ref())?;
        let request = CreateRequest {
            id: req.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            rootfs: req
                .rootfs
                .iter()
                .map(|m| MountSource {
                    typ: m.type_.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                })
                .collect(),
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            config_path,
            rootfs_messages: req.rootfs.clone(),
        };
        let pid = traced("create", &req.id, "", || self.pod.create(request))?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> Reply<StartResponse> {
        let pid = traced("start", &req.id, &req.exec_id, || {
            self.pod.start(&req.id, &req.exec_id)
        })?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> Reply<Empty> {
        let spec = json_payload(&req.spec, PROCESS_TYPE_URL, "the exec's process spec")?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        traced("exec", &req.id, &req.exec_id, || {
            self.pod.exec(&req.id, &req.exec_id, spec, stdio)
        })?;
        Ok(Empty::new())
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> Reply<StateResponse> {
        let s = self.pod.state(&req.id, &req.exec_id)?;
        let status = match s.status {
            Status::Created => StatusMessage::CREATED,
            Status::Running => StatusMessage::RUNNING,
            Status::Paused => StatusMessage::PAUSED,
            Status::Stopped => StatusMessage::STOPPED,
        };
        let mut reply = StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: s.bundle.display().to_string(),
            pid: s.pid,
            status: status.into(),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            terminal: s.stdio.terminal,
            ..Default::default()
        };
        if let Some(exit) = s.exit {
            reply.exit_status = exit.code;
            reply.exited_at = timestamp(&exit.at);
        }
        Ok(reply)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> Reply<WaitResponse> {
        let exit = self.pod.wait(&req.id, &req.exec_id)?;
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: timestamp(&exit.at),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> Reply<Empty> {
        traced("kill", &req.id, &req.exec_id, || {
            self.pod.kill(&req.id, &req.exec_id, req.signal, req.all)
        })?;
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> Reply<DeleteResponse> {
        let exit = traced("delete", &req.id, &req.exec_id, || {
            self.pod.delete(&req.id, &req.exec_id)
        })?;
        Ok(DeleteResponse {
            pid: exit.pid,
            exit_status: exit.code,
            exited_at: timestamp(&exit.at),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> Reply<PidsResponse> {
        let processes = self
            .pod
            .pids(&req.id)?
            .into_iter()
            .map(|(pid, exec_id)| ProcessInfo {
                pid,
                info: exec_id.map_or_else(MessageField::none, |e| {
                    MessageField::some(process_details(&e))
                }),
                ..Default::default()
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> Reply<Empty> {
        self.pod.pause(&req.id)?;
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> Reply<Empty> {
        self.pod.resume(&req.id)?;
        Ok(Empty::new())
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> Reply<Empty> {
        Err(TaskError::new(
            Code::UNIMPLEMENTED,
            "palisade does not checkpoint containers: their state lives in the pod's VM",
        )
        .into())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> Reply<Empty> {
        self.pod
            .resize(&req.id, &req.exec_id, req.width, req.height)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> Reply<Empty> {
        if req.stdin {
            self.pod.close_stdin(&req.id, &req.exec_id)?;
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> Reply<Empty> {
        let resources = json_payload(&req.resources, RESOURCES_TYPE_URL, "the new resources")?;
        self.pod.update(&req.id, resources)?;
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> Reply<StatsResponse> {
        let stats = self.pod.stats(&req.id)?;
        let metrics = metrics(&stats);
        let any = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| TaskError::internal(format!("encoding the statistics: {e}")))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> Reply<ConnectResponse> {
        let task_pid = self.pod.init_pid(&req.id).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> Reply<Empty> {
        log::debug!("shutdown");
        self.pod.shutdown();
        Ok(Empty::new())
    }
}

/// `containerd.runc.v1.ProcessDetails { exec_id }`, which `ctr task ps`
/// prints for exec processes; encoded by hand (one string field).
fn process_details(exec_id: &str) -> Any {
    let mut value = Vec::with_capacity(exec_id.len() + 4);
    value.push(0x0a); // field 1, length-delimited
    let mut len = exec_id.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            value.push(byte);
            break;
        }
        value.push(byte | 0x80);
    }
    value.extend_from_slice(exec_id.as_bytes());
    Any {
        type_url: "containerd.runc.v1.ProcessDetails".into(),
        value,
        ..Default::default()
    }
}

/// The agent's cgroup v2 figures as containerd's `io.containerd.cgroups.v2.Metrics`.
pub fn metrics(s: &StatsContainerResponse) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    if let Some(cpu) = s.cpu.as_ref() {
        m.cpu = MessageField::some(v2::CPUStat {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(mem) = s.memory.as_ref() {
        m.memory = MessageField::some(v2::MemoryStat {
            usage: mem.current,
            // 0 means "max" in the agent's message; containerd shows the
            // largest value for no limit, as runc's shim does.
            usage_limit: if mem.max == 0 { u64::MAX } else { mem.max },
            ..Default::default()
        });
        m.memory_events = MessageField::some(v2::MemoryEvents {
            oom: mem.oom_events,
            oom_kill: mem.oom_kill_events,
            ..Default::default()
        });
    }
    if let Some(pids) = s.pids.as_ref() {
        m.pids = MessageField::some(v2::PidsStat {
            current: pids.current,
            limit: pids.max,
            ..Default::default()
        });
    }
    if let Some(io) = s.io.as_ref() {
        m.io = MessageField::some(v2::IOStat {
            usage: vec![v2::IOEntry {
                rbytes: io.read_bytes,
                wbytes: io.write_bytes,
                rios: io.read_ios,
                wios: io.write_ios,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::{Message, MessageDyn};
    use palisade_protocols::containers::{CpuStats, MemoryStats, PidsStats};

    #[test]
    fn maps_agent_statistics_to_cgroup_v2_metrics() {
        let s = StatsContainerResponse {
            cpu: MessageField::some(CpuStats {
                usage_usec: 10,
                user_usec: 6,
                system_usec: 4,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStats {
                current: 4096,
                max: 0,
                oom_kill_events: 1,
                ..Default::default()
            }),
            pids: MessageField::some(PidsStats {
                current: 2,
                max: 10,
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = metrics(&s);
        assert_eq!(m.cpu.usage_usec, 10);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.pids.limit, 10);
        assert_eq!(
            m.descriptor_dyn().full_name(),
            "io.containerd.cgroups.v2.Metrics"
        );
    }

    #[test]
    fn encodes_process_details() {
        let any = process_details("exec1");
        assert_eq!(any.value, b"\x0a\x05exec1");
        let long = "e".repeat(200);
        let any = process_details(&long);
        assert_eq!(&any.value[..3], &[0x0a, 0xc8, 0x01]);
        let _ = Any::parse_from_bytes(&any.write_to_bytes().expect("encode")).expect("decode");
    }

    #[test]
    fn checks_json_payload_types() {
        let any = Any {
            type_url: PROCESS_TYPE_URL.into(),
            value: b"{}".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            json_payload(&MessageField::some(any), PROCESS_TYPE_URL, "p").expect("ok"),
            b"{}"
        );
        let wrong = Any {
            type_url: RESOURCES_TYPE_URL.into(),
            ..Default::default()
        };
        let err = json_payload(&MessageField::some(wrong), PROCESS_TYPE_URL, "the spec")
            .expect_err("wrong type");
        assert!(err.message.contains("the spec has type"), "{err}");
        assert!(json_payload(&MessageField::none(), PROCESS_TYPE_URL, "x").is_err());
    }
}
