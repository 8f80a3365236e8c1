//! The Agent service: guest details and shutdown. Container lifecycle
//! methods join it in later milestones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::info;
use palisade_protocols::agent::{
    BootTimeline, GetGuestDetailsRequest, GetGuestDetailsResponse, ShutdownRequest,
    ShutdownResponse,
};
use palisade_protocols::agent_ttrpc::Agent;
use ttrpc::TtrpcContext;

use crate::clock::Timeline;
use crate::guest_info;
use crate::power::ShutdownTrigger;

pub struct AgentService {
    timeline: Arc<Timeline>,
    shutting_down: Arc<AtomicBool>,
    shutdown: ShutdownTrigger,
}

impl AgentService {
    pub fn new(
        timeline: Arc<Timeline>,
        shutting_down: Arc<AtomicBool>,
        shutdown: ShutdownTrigger,
    ) -> Self {
        Self {
            timeline,
            shutting_down,
            shutdown,
        }
    }
}

impl Agent for AgentService {
    fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: GetGuestDetailsRequest,
    ) -> ttrpc::Result<GetGuestDetailsResponse> {
        let t = self.timeline.snapshot();
        Ok(GetGuestDetailsResponse {
            kernel_release: guest_info::kernel_release()
                .map_err(|e| super::internal(format!("reading kernel release: {e}")))?,
            memory_total_bytes: guest_info::memory_total_bytes()
                .map_err(|e| super::internal(format!("reading total memory: {e}")))?,
            online_cpus: guest_info::online_cpus()
                .map_err(|e| super::internal(format!("counting online CPUs: {e}")))?,
            agent_version: super::AGENT_VERSION.to_string(),
            boot_timeline: Some(BootTimeline {
                agent_start_ns: t.agent_start_ns,
                init_done_ns: t.init_done_ns,
                ready_ns: t.ready_ns,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        info!("shutdown requested");
        self.shutting_down.store(true, Ordering::SeqCst);
        // main acts on it after a grace period, once this reply is out.
        self.shutdown.trigger();
        Ok(ShutdownResponse::default())
    }
}
