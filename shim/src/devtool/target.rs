//! Reaching the agent `palisade agent` was pointed at: a sandbox by id,
//! a VMM's hybrid vsock socket, or an agent in host test mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use super::args::Target;
use super::paths::PathMap;
use crate::agent_client::{self, AgentClient, DialOptions};
use crate::sandbox_dir::{self, SANDBOX_ROOT};

/// How long to keep dialing: the agent is up already (this is not a
/// boot), so this only rides out a busy VMM.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls take longer than the shim's default allows in a nested,
/// emulated test host (container set-up there takes seconds).
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Connection {
    pub agent: AgentClient,
    pub paths: PathMap,
}

/// The state directory of sandbox `id`.
pub fn sandbox_dir(id: &str) -> PathBuf {
    Path::new(SANDBOX_ROOT).join(id)
}

fn socket_must_exist(socket: &Path, what: &str) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(socket) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{what}: {} does not exist", socket.display())
        }
        Err(e) => Err(e).with_context(|| format!("{what}: cannot stat {}", socket.display())),
    }
}

/// Dials the agent and checks it speaks our API revision.
pub fn connect(target: &Target, rpc_timeout: Option<Duration>) -> anyhow::Result<Connection> {
    let (mut options, paths) = match target {
        Target::Sandbox(id) => {
            let dir = sandbox_dir(id);
            let socket = sandbox_dir::vsock_socket(&dir);
            socket_must_exist(
                &socket,
                &format!("no sandbox {id:?} is running (start one with `palisade sandbox run --id {id}`)"),
            )?;
            let console = sandbox_dir::console_log(&dir);
            (
                DialOptions::new(&socket, &console, DIAL_TIMEOUT),
                PathMap::Shared {
                    host: sandbox_dir::shared_dir(&dir),
                },
            )
        }
        Target::Vsock(socket) => {
            socket_must_exist(socket, "no VMM socket")?;
            // A sandbox's socket sits in its state directory, next to
            // the shared directory; any other socket's share is unknown.
            let dir = socket.parent().unwrap_or(Path::new("/"));
            let shared = sandbox_dir::shared_dir(dir);
            let paths = if shared.is_dir() {
                PathMap::Shared { host: shared }
            } else {
                PathMap::GuestOnly
            };
            (
                DialOptions::new(socket, &sandbox_dir::console_log(dir), DIAL_TIMEOUT),
                paths,
            )
        }
        Target::Unix(socket) => {
            socket_must_exist(
                socket,
                "no agent listening (start one with `palisade-agent --listen unix://PATH`)",
            )?;
            (
                DialOptions::unix_agent(socket, DIAL_TIMEOUT),
                PathMap::Identity,
            )
        }
    };
    options.rpc_timeout = rpc_timeout.unwrap_or(DEFAULT_RPC_TIMEOUT);
    let agent = agent_client::dial(&options, || Ok(()))
        .map_err(|e| anyhow::anyhow!(crate::error_chain(&e)))?;
    agent
        .version()
        .map_err(|e| anyhow::anyhow!(crate::error_chain(&e)))?;
    Ok(Connection { agent, paths })
}
