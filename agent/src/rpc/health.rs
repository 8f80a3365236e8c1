//! The Health service: liveness and version for the shim's first contact.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use palisade_protocols::health::{
    check_response::ServingStatus, CheckRequest, CheckResponse, VersionRequest, VersionResponse,
};
use palisade_protocols::health_ttrpc::Health;
use ttrpc::TtrpcContext;

pub struct HealthService {
    /// Set once shutdown starts, so the shim stops sending work.
    shutting_down: Arc<AtomicBool>,
}

impl HealthService {
    pub fn new(shutting_down: Arc<AtomicBool>) -> Self {
        Self { shutting_down }
    }
}

impl Health for HealthService {
    fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        let status = if self.shutting_down.load(Ordering::SeqCst) {
            ServingStatus::NOT_SERVING
        } else {
            ServingStatus::SERVING
        };
        Ok(CheckResponse {
            status: status.into(),
            ..Default::default()
        })
    }

    fn version(&self, _ctx: &TtrpcContext, _req: VersionRequest) -> ttrpc::Result<VersionResponse> {
        Ok(VersionResponse {
            agent_version: super::AGENT_VERSION.to_string(),
            api_version: palisade_protocols::API_VERSION,
            ..Default::default()
        })
    }
}
