//! The Containers service: the wire side of `container::Manager`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use palisade_protocols::containers::{
    event, CloseStdinRequest, CloseStdinResponse, CpuStats, CreateContainerRequest,
    CreateContainerResponse, Event, ExecProcessRequest, ExecProcessResponse, GetEventsRequest,
    GetEventsResponse, IoStats, ListProcessesRequest, ListProcessesResponse, MemoryStats,
    OomKilled, PauseContainerRequest, PauseContainerResponse, PidsStats, ProcessExit,
    ProcessExited, RemoveContainerRequest, RemoveContainerResponse, ResizeTerminalRequest,
    ResizeTerminalResponse, ResumeContainerRequest, ResumeContainerResponse, SignalProcessRequest,
    SignalProcessResponse, StartContainerRequest, StartContainerResponse, StatsContainerRequest,
    StatsContainerResponse, StdioPorts, StdioRequest, UpdateContainerRequest,
    UpdateContainerResponse, WaitProcessRequest, WaitProcessResponse,
};
use palisade_protocols::containers_ttrpc::Containers;
use palisade_protocols::protobuf::MessageField;
use ttrpc::{Code, TtrpcContext};

use crate::container::events::EventKind;
use crate::container::process::ExitInfo;
use crate::container::stdio::{Ports, Wanted};
use crate::container::{ContainerError, Manager};
use crate::reaper::ExitStatus;

/// The longest GetEvents may hold a worker thread.
const MAX_EVENT_WAIT: Duration = Duration::from_secs(60);

pub struct ContainersService {
    manager: Arc<Manager>,
}

impl ContainersService {
    pub fn new(manager: Arc<Manager>) -> Self {
        Self { manager }
    }
}

fn status(e: ContainerError) -> ttrpc::Error {
    let code = match &e {
        ContainerError::NotFound(_)
        | ContainerError::ExecNotFound { .. }
        | ContainerError::Exited(_) => Code::NOT_FOUND,
        ContainerError::Exists(_) | ContainerError::ExecExists { .. } => Code::ALREADY_EXISTS,
        ContainerError::BadId { .. }
        | ContainerError::BadSignal(_)
        | ContainerError::Spec(_)
        | ContainerError::Resources(_) => Code::INVALID_ARGUMENT,
        ContainerError::State { .. } | ContainerError::NoCgroups(_) => Code::FAILED_PRECONDITION,
        ContainerError::System { .. } | ContainerError::Setup(_) => Code::INTERNAL,
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

fn wanted(req: &MessageField<StdioRequest>) -> Wanted {
    req.as_ref().map_or(Wanted::default(), |s| Wanted {
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
    })
}

fn ports(p: Ports) -> MessageField<StdioPorts> {
    MessageField::some(StdioPorts {
        stdin_port: p.stdin,
        stdout_port: p.stdout,
        stderr_port: p.stderr,
        ..Default::default()
    })
}

fn exit(info: &ExitInfo) -> ProcessExit {
    let (signal, core_dumped) = match info.status {
        ExitStatus::Exited(_) => (0, false),
        ExitStatus::Signaled {
            signal,
            core_dumped,
        } => (signal as u32, core_dumped),
    };
    ProcessExit {
        pid: info.pid as u32,
        exit_code: info.status.code() as u32,
        signal,
        core_dumped,
        exited_at_unix_ns: info.exited_at_unix_ns,
        ..Default::default()
    }
}

impl Containers for ContainersService {
    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let (pid, p) = self
            .manager
            .create(
                &req.container_id,
                &req.spec_json,
                Path::new(&req.rootfs),
                wanted(&req.stdio),
            )
            .map_err(status)?;
        Ok(CreateContainerResponse {
            pid,
            stdio: ports(p),
            ..Default::default()
        })
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        self.manager.start(&req.container_id).map_err(status)?;
        Ok(StartContainerResponse::default())
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let (pid, p) = self
            .manager
            .exec(
                &req.container_id,
                &req.exec_id,
                &req.process_json,
                wanted(&req.stdio),
            )
            .map_err(status)?;
        Ok(ExecProcessResponse {
            pid,
            stdio: ports(p),
            ..Default::default()
        })
    }

    fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<SignalProcessResponse> {
        self.manager
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)
            .map_err(status)?;
        Ok(SignalProcessResponse::default())
    }

    fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let process = self
            .manager
            .process(&req.container_id, &req.exec_id)
            .map_err(status)?;
        // No deadline: the shim waits as long as the process runs.
        let info = process.wait(None).ok_or_else(|| {
            ttrpc::Error::RpcStatus(ttrpc::get_status(
                Code::INTERNAL,
                "wait ended without an exit",
            ))
        })?;
        Ok(WaitProcessResponse {
            exit: MessageField::some(exit(&info)),
            ..Default::default()
        })
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<RemoveContainerResponse> {
        self.manager
            .remove(&req.container_id, req.force)
            .map_err(status)?;
        Ok(RemoveContainerResponse::default())
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let pids = self.manager.pids(&req.container_id).map_err(status)?;
        Ok(ListProcessesResponse {
            pids: pids.into_iter().map(|p| p as u32).collect(),
            ..Default::default()
        })
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let s = self.manager.stats(&req.container_id).map_err(status)?;
        Ok(StatsContainerResponse {
            cpu: MessageField::some(CpuStats {
                usage_usec: s.cpu_usage_usec,
                user_usec: s.cpu_user_usec,
                system_usec: s.cpu_system_usec,
                nr_periods: s.cpu_nr_periods,
                nr_throttled: s.cpu_nr_throttled,
                throttled_usec: s.cpu_throttled_usec,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStats {
                current: s.memory_current,
                max: s.memory_max,
                oom_events: s.memory_oom,
                oom_kill_events: s.memory_oom_kill,
                ..Default::default()
            }),
            pids: MessageField::some(PidsStats {
                current: s.pids_current,
                max: s.pids_max,
                ..Default::default()
            }),
            io: MessageField::some(IoStats {
                read_bytes: s.io.read_bytes,
                write_bytes: s.io.write_bytes,
                read_ios: s.io.read_ios,
                write_ios: s.io.write_ios,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<UpdateContainerResponse> {
        self.manager
            .update(&req.container_id, &req.resources_json)
            .map_err(status)?;
        Ok(UpdateContainerResponse::default())
    }

    fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<PauseContainerResponse> {
        self.manager.pause(&req.container_id).map_err(status)?;
        Ok(PauseContainerResponse::default())
    }

    fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<ResumeContainerResponse> {
        self.manager.resume(&req.container_id).map_err(status)?;
        Ok(ResumeContainerResponse::default())
    }

    fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: CloseStdinRequest,
    ) -> ttrpc::Result<CloseStdinResponse> {
        self.manager
            .close_stdin(&req.container_id, &req.exec_id)
            .map_err(status)?;
        Ok(CloseStdinResponse::default())
    }

    fn resize_terminal(
        &self,
        _ctx: &TtrpcContext,
        req: ResizeTerminalRequest,
    ) -> ttrpc::Result<ResizeTerminalResponse> {
        self.manager
            .resize(&req.container_id, &req.exec_id, req.rows, req.cols)
            .map_err(status)?;
        Ok(ResizeTerminalResponse::default())
    }

    fn get_events(
        &self,
        _ctx: &TtrpcContext,
        req: GetEventsRequest,
    ) -> ttrpc::Result<GetEventsResponse> {
        let timeout = Duration::from_millis(u64::from(req.timeout_ms)).min(MAX_EVENT_WAIT);
        let events = self
            .manager
            .events(req.after_sequence, req.max_events as usize, timeout)
            .into_iter()
            .map(|e| Event {
                sequence: e.sequence,
                container_id: e.container_id,
                kind: Some(match e.kind {
                    EventKind::Exited {
                        exec_id,
                        exit: info,
                    } => event::Kind::ProcessExited(ProcessExited {
                        exec_id,
                        exit: MessageField::some(exit(&info)),
                        ..Default::default()
                    }),
                    EventKind::OomKilled => event::Kind::OomKilled(OomKilled::default()),
                }),
                ..Default::default()
            })
            .collect();
        Ok(GetEventsResponse {
            events,
            ..Default::default()
        })
    }
}
