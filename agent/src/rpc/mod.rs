//! The ttrpc server and the services it carries.

mod agent;
mod containers;
mod health;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use palisade_protocols::{agent_ttrpc, containers_ttrpc, health_ttrpc};

use crate::clock::Timeline;
use crate::container::Manager;
use crate::power::ShutdownTrigger;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Binds `addr` (`vsock://CID:PORT` or `unix:///path`) and starts serving.
/// Returns the running server; dropping it does not stop it.
pub fn serve(
    addr: &str,
    timeline: Arc<Timeline>,
    shutdown: ShutdownTrigger,
    containers: Arc<Manager>,
) -> ttrpc::Result<ttrpc::Server> {
    let shutting_down = Arc::new(AtomicBool::new(false));
    let health = health::HealthService::new(shutting_down.clone());
    let agent = agent::AgentService::new(timeline, shutting_down, shutdown);
    let mut server = ttrpc::Server::new()
        .bind(addr)?
        .register_service(health_ttrpc::create_health(Arc::new(health)))
        .register_service(agent_ttrpc::create_agent(Arc::new(agent)))
        .register_service(containers_ttrpc::create_containers(Arc::new(
            containers::ContainersService::new(containers),
        )));
    server.start()?;
    Ok(server)
}

fn internal(message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INTERNAL, message))
}
