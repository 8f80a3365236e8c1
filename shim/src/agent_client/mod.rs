//! The shim's client for the guest agent: dials through the VMM's hybrid
//! vsock socket and speaks the agent API (`palisade-protocols`) over ttrpc.
//! Every call has a deadline: the agent runs inside the guest, and nothing
//! the guest does may hang the shim. The container lifecycle calls are in
//! [`containers`]; process stdio streams are opened with
//! [`AgentClient::connect_port`].

pub mod containers;

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use palisade_protocols::agent::{GetGuestDetailsRequest, ShutdownRequest};
use palisade_protocols::agent_ttrpc::AgentClient as AgentServiceClient;
use palisade_protocols::containers_ttrpc::ContainersClient;
use palisade_protocols::health::check_response::ServingStatus;
use palisade_protocols::health::{CheckRequest, VersionRequest};
use palisade_protocols::health_ttrpc::HealthClient;
use palisade_protocols::{AGENT_VSOCK_PORT, API_VERSION};

use crate::hybrid_vsock::{self, HandshakeError};

/// Per-RPC deadline unless told otherwise. The calls here are quick in the
/// guest; the margin is for guests running under nested emulation.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// One handshake attempt's bound. The VMM normally answers at once (OK, or
/// a hang-up while nothing listens); an attempt stuck longer is abandoned
/// and retried rather than allowed to eat the whole dial budget.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts: short, since dialing is on the boot path.
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// Guest-supplied strings are cut to this before anyone prints them.
const MAX_GUEST_STRING: usize = 128;

/// Reason given by a dial's `keep_going` check to stop early.
pub type AbortReason = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "the guest agent did not answer on {} within {} ms ({attempts} attempts; last: {last}); the guest console log {} shows how far the guest got",
        .socket.display(), .timeout.as_millis(), .console_log.display()
    )]
    DialTimeout {
        socket: PathBuf,
        console_log: PathBuf,
        timeout: Duration,
        attempts: u32,
        last: String,
    },

    #[error("cannot reach the guest agent")]
    Handshake(#[source] HandshakeError),

    #[error("stopped dialing the guest agent")]
    Aborted(#[source] AbortReason),

    #[error("cannot start a ttrpc client on the agent connection")]
    Client(#[source] ttrpc::Error),

    #[error("agent call {method} got no reply within {} ms", .timeout.as_millis())]
    RpcTimeout {
        method: &'static str,
        timeout: Duration,
    },

    #[error("agent call {method} failed")]
    Rpc {
        method: &'static str,
        #[source]
        source: ttrpc::Error,
    },

    #[error("the guest agent is not serving requests (health status {status})")]
    NotServing { status: String },

    #[error(
        "the guest agent {agent_version} speaks agent API {theirs}, this shim speaks {API_VERSION}: install a guest initramfs built from the same palisade release as the shim"
    )]
    IncompatibleApi { agent_version: String, theirs: u32 },
}

/// How the agent's ports are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// The VMM's hybrid vsock unix socket: `CONNECT <port>` per stream.
    HybridVsock(PathBuf),
    /// An agent in host test mode (`palisade-agent --listen unix://PATH`):
    /// the API on PATH itself, stdio port P on `PATH_P`.
    Unix(PathBuf),
}

impl Transport {
    /// The socket named in errors.
    pub fn socket(&self) -> &Path {
        match self {
            Transport::HybridVsock(p) | Transport::Unix(p) => p,
        }
    }

    /// Opens a stream to the agent's `port`, within `timeout`.
    pub fn connect(&self, port: u32, timeout: Duration) -> Result<UnixStream, HandshakeError> {
        match self {
            Transport::HybridVsock(socket) => hybrid_vsock::connect(socket, port, timeout),
            Transport::Unix(socket) => {
                let path = if port == AGENT_VSOCK_PORT {
                    socket.clone()
                } else {
                    let mut name = socket.clone().into_os_string();
                    name.push(format!("_{port}"));
                    PathBuf::from(name)
                };
                UnixStream::connect(&path).map_err(|source| HandshakeError::Connect {
                    socket: path,
                    source,
                })
            }
        }
    }
}

impl AgentError {
    /// The ttrpc status code the agent answered with, if it answered.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            AgentError::Rpc {
                source: ttrpc::Error::RpcStatus(status),
                ..
            } => status.code.enum_value().ok(),
            _ => None,
        }
    }

    /// The agent's own words for a refused call (sanitized), else the
    /// whole error chain.
    pub fn message(&self) -> String {
        match self {
            AgentError::Rpc {
                source: ttrpc::Error::RpcStatus(status),
                ..
            } => sanitize_message(&status.message),
            other => crate::error_chain(other),
        }
    }

    /// The agent did not answer in time, or its connection is gone: no
    /// refusal came back, so nothing is known of what the guest did.
    pub fn is_unanswered(&self) -> bool {
        matches!(self, AgentError::RpcTimeout { .. }) || self.is_disconnect()
    }

    /// The agent is gone (connection lost, not a refusal): the VM is dead or
    /// dying.
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            AgentError::Rpc {
                source: ttrpc::Error::Socket(_)
                    | ttrpc::Error::LocalClosed
                    | ttrpc::Error::RemoteClosed,
                ..
            }
        )
    }
}

/// Where and how long to dial.
#[derive(Debug, Clone)]
pub struct DialOptions {
    /// How the agent is reached.
    pub transport: Transport,
    /// The guest console log, named in errors as the place to look.
    pub console_log: PathBuf,
    /// Total time to keep trying; covers the guest's boot.
    pub timeout: Duration,
    pub rpc_timeout: Duration,
}

/// What the agent reports about its guest. Strings are sanitized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDetails {
    pub kernel_release: String,
    pub memory_total_bytes: u64,
    pub online_cpus: u32,
    pub agent_version: String,
    pub timeline: GuestBootTimeline,
}

/// The agent's milestones in guest CLOCK_BOOTTIME nanoseconds (about the
/// time since the guest kernel started); `None` if not reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestBootTimeline {
    pub agent_start_ns: Option<u64>,
    pub init_done_ns: Option<u64>,
    pub ready_ns: Option<u64>,
}

/// `Health.Version`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVersion {
    pub agent_version: String,
    pub api_version: u32,
}

/// A connection to one guest's agent.
pub struct AgentClient {
    health: HealthClient,
    agent: AgentServiceClient,
    containers: ContainersClient,
    transport: Transport,
    rpc_timeout: Duration,
    dial_attempts: u32,
}

/// Dials the agent until it answers or `options.timeout` passes. Between
/// attempts `keep_going` is asked whether to go on; it should fail once the
/// VMM has died, so a dead VM is reported at once rather than at the timeout.
pub fn dial(
    options: &DialOptions,
    mut keep_going: impl FnMut() -> Result<(), AbortReason>,
) -> Result<AgentClient, AgentError> {
    let start = Instant::now();
    let deadline = start + options.timeout;
    let mut attempts = 0u32;
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::from("no attempt made");
    loop {
        keep_going().map_err(AgentError::Aborted)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(AgentError::DialTimeout {
                socket: options.transport.socket().to_owned(),
                console_log: options.console_log.clone(),
                timeout: options.timeout,
                attempts,
                last,
            });
        }
        attempts += 1;
        match options
            .transport
            .connect(AGENT_VSOCK_PORT, remaining.min(ATTEMPT_TIMEOUT))
        {
            Ok(stream) => {
                let client =
                    ttrpc::Client::new(stream.into_raw_fd()).map_err(AgentError::Client)?;
                return Ok(AgentClient {
                    health: HealthClient::new(client.clone()),
                    agent: AgentServiceClient::new(client.clone()),
                    containers: ContainersClient::new(client),
                    transport: options.transport.clone(),
                    rpc_timeout: options.rpc_timeout,
                    dial_attempts: attempts,
                });
            }
            Err(e) if e.is_retryable() => {
                last = crate::error_chain(&e);
                thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(AgentError::Handshake(e)),
        }
    }
}

impl AgentClient {
    /// How this client reaches the agent.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Opens the stream of a stdio `port` the agent handed out (see
    /// `containers.proto`), within the RPC deadline.
    pub fn connect_port(&self, port: u32) -> Result<UnixStream, AgentError> {
        self.transport
            .connect(port, self.rpc_timeout)
            .map_err(AgentError::Handshake)
    }

    /// Handshakes it took to reach the agent, the successful one included.
    pub fn dial_attempts(&self) -> u32 {
        self.dial_attempts
    }

    /// `Health.Check`: succeeds only if the agent says it is serving.
    pub fn check(&self) -> Result<(), AgentError> {
        let reply = self.call("Health.Check", |ctx| {
            self.health.check(ctx, &CheckRequest::new())
        })?;
        match reply.status.enum_value() {
            Ok(ServingStatus::SERVING) => Ok(()),
            Ok(other) => Err(AgentError::NotServing {
                status: format!("{other:?}"),
            }),
            Err(unknown) => Err(AgentError::NotServing {
                status: unknown.to_string(),
            }),
        }
    }

    /// `Health.Version`, refusing an agent of another API revision.
    pub fn version(&self) -> Result<AgentVersion, AgentError> {
        let reply = self.call("Health.Version", |ctx| {
            self.health.version(ctx, &VersionRequest::new())
        })?;
        let version = AgentVersion {
            agent_version: sanitize(&reply.agent_version),
            api_version: reply.api_version,
        };
        if version.api_version != API_VERSION {
            return Err(AgentError::IncompatibleApi {
                agent_version: version.agent_version,
                theirs: version.api_version,
            });
        }
        Ok(version)
    }

    /// `Agent.GetGuestDetails`.
    pub fn guest_details(&self) -> Result<GuestDetails, AgentError> {
        let reply = self.call("Agent.GetGuestDetails", |ctx| {
            self.agent
                .get_guest_details(ctx, &GetGuestDetailsRequest::new())
        })?;
        let nonzero = |ns: u64| (ns != 0).then_some(ns);
        let timeline = reply
            .boot_timeline
            .as_ref()
            .map(|t| GuestBootTimeline {
                agent_start_ns: nonzero(t.agent_start_ns),
                init_done_ns: nonzero(t.init_done_ns),
                ready_ns: nonzero(t.ready_ns),
            })
            .unwrap_or_default();
        Ok(GuestDetails {
            kernel_release: sanitize(&reply.kernel_release),
            memory_total_bytes: reply.memory_total_bytes,
            online_cpus: reply.online_cpus,
            agent_version: sanitize(&reply.agent_version),
            timeline,
        })
    }

    /// `Agent.Shutdown`: the agent replies, then ends the VM (the VMM then
    /// exits with `guest-reset`). A reply lost because the guest went down
    /// first is the caller's to judge from the VMM's exit.
    pub fn shutdown(&self) -> Result<(), AgentError> {
        self.call("Agent.Shutdown", |ctx| {
            self.agent.shutdown(ctx, &ShutdownRequest::new())
        })?;
        Ok(())
    }

    fn call<T>(
        &self,
        method: &'static str,
        rpc: impl FnOnce(ttrpc::context::Context) -> ttrpc::Result<T>,
    ) -> Result<T, AgentError> {
        self.call_within(method, self.rpc_timeout, rpc)
    }

    fn call_within<T>(
        &self,
        method: &'static str,
        timeout: Duration,
        rpc: impl FnOnce(ttrpc::context::Context) -> ttrpc::Result<T>,
    ) -> Result<T, AgentError> {
        let start = Instant::now();
        let result = rpc(ttrpc::context::with_duration(timeout));
        result.map_err(|source| {
            // ttrpc 0.9 reports its own timeout only as a generic error.
            if start.elapsed() >= timeout {
                AgentError::RpcTimeout { method, timeout }
            } else {
                AgentError::Rpc { method, source }
            }
        })
    }
}

impl DialOptions {
    /// Dialing a guest through its VMM's hybrid vsock `socket`.
    pub fn new(socket: &Path, console_log: &Path, timeout: Duration) -> Self {
        Self {
            transport: Transport::HybridVsock(socket.to_owned()),
            console_log: console_log.to_owned(),
            timeout,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
        }
    }

    /// Dialing an agent in host test mode listening on `socket`.
    pub fn unix_agent(socket: &Path, timeout: Duration) -> Self {
        Self {
            transport: Transport::Unix(socket.to_owned()),
            console_log: PathBuf::from("(no console: an agent on the host)"),
            timeout,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
        }
    }
}

/// Guest strings end up on terminals and in logs: no control characters
/// (escape sequences), bounded length.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_GUEST_STRING)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > MAX_GUEST_STRING {
        out.push_str("...");
    }
    out
}

/// Agent error messages are longer than other guest strings (they name
/// spec fields and paths) but get the same treatment.
fn sanitize_message(s: &str) -> String {
    const MAX_MESSAGE: usize = 2048;
    let mut out: String = s
        .chars()
        .take(MAX_MESSAGE)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > MAX_MESSAGE {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hybrid_vsock::tests::{fake_vmm, read_connect};
    use palisade_protocols::agent::{BootTimeline, GetGuestDetailsResponse, ShutdownResponse};
    use palisade_protocols::agent_ttrpc::{create_agent, Agent};
    use palisade_protocols::health::{CheckResponse, VersionResponse};
    use palisade_protocols::health_ttrpc::{create_health, Health};
    use std::io::Write;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct FakeAgent {
        api_version: u32,
        serving: ServingStatus,
    }

    impl Health for FakeAgent {
        fn check(
            &self,
            _ctx: &ttrpc::TtrpcContext,
            _req: CheckRequest,
        ) -> ttrpc::Result<CheckResponse> {
            let mut reply = CheckResponse::new();
            reply.status = self.serving.into();
            Ok(reply)
        }

        fn version(
            &self,
            _ctx: &ttrpc::TtrpcContext,
            _req: VersionRequest,
        ) -> ttrpc::Result<VersionResponse> {
            Ok(VersionResponse {
                agent_version: "0.1.0".into(),
                api_version: self.api_version,
                ..Default::default()
            })
        }
    }

    impl Agent for FakeAgent {
        fn get_guest_details(
            &self,
            _ctx: &ttrpc::TtrpcContext,
            _req: GetGuestDetailsRequest,
        ) -> ttrpc::Result<GetGuestDetailsResponse> {
            let timeline = BootTimeline {
                agent_start_ns: 1_000_000,
                init_done_ns: 0,
                ready_ns: 3_000_000,
                ..Default::default()
            };
            Ok(GetGuestDetailsResponse {
                kernel_release: "6.12.0-palisade\x1b[31m".into(),
                memory_total_bytes: 200 << 20,
                online_cpus: 2,
                agent_version: "0.1.0".into(),
                boot_timeline: Some(timeline).into(),
                ..Default::default()
            })
        }

        fn shutdown(
            &self,
            _ctx: &ttrpc::TtrpcContext,
            _req: ShutdownRequest,
        ) -> ttrpc::Result<ShutdownResponse> {
            Ok(ShutdownResponse::new())
        }
    }

    /// A guest agent (real ttrpc server) behind a fake VMM that refuses
    /// the first `refusals` connections, as a VMM does while the guest
    /// boots, then splices the next one to the agent.
    struct FakeGuest {
        _dir: tempfile::TempDir,
        vsock: PathBuf,
        _server: ttrpc::Server,
        refused: Arc<AtomicU32>,
    }

    fn fake_guest(refusals: u32, agent: FakeAgent) -> FakeGuest {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent_sock = dir.path().join("agent.sock");
        let agent = Arc::new(agent);
        let mut server = ttrpc::Server::new()
            .bind(&format!("unix://{}", agent_sock.display()))
            .expect("bind agent")
            .register_service(create_health(agent.clone()))
            .register_service(create_agent(agent));
        server.start().expect("start agent");

        let vsock = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&vsock).expect("bind vsock");
        let refused = Arc::new(AtomicU32::new(0));
        let counter = refused.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let line = read_connect(&conn);
                assert_eq!(line, format!("CONNECT {AGENT_VSOCK_PORT}\n"));
                if counter.load(Ordering::SeqCst) < refusals {
                    counter.fetch_add(1, Ordering::SeqCst);
                    continue; // hang up: nothing listens yet
                }
                splice(conn, &agent_sock);
            }
        });
        FakeGuest {
            _dir: dir,
            vsock,
            _server: server,
            refused,
        }
    }

    fn splice(mut host: UnixStream, agent_sock: &Path) {
        let guest = UnixStream::connect(agent_sock).expect("connect agent");
        host.write_all(b"OK 1073741824\n").expect("OK");
        let (mut h2, mut g2) = (
            host.try_clone().expect("clone"),
            guest.try_clone().expect("clone"),
        );
        let (mut h, mut g) = (host, guest);
        thread::spawn(move || {
            let _ = std::io::copy(&mut h, &mut g);
        });
        thread::spawn(move || {
            let _ = std::io::copy(&mut g2, &mut h2);
        });
    }

    fn options(socket: &Path, timeout: Duration) -> DialOptions {
        DialOptions::new(socket, Path::new("/run/palisade/x/console.log"), timeout)
    }

    fn serving_agent() -> FakeAgent {
        FakeAgent {
            api_version: API_VERSION,
            serving: ServingStatus::SERVING,
        }
    }

    #[test]
    fn dials_through_refusals_and_calls_every_method() {
        let guest = fake_guest(3, serving_agent());
        let client =
            dial(&options(&guest.vsock, Duration::from_secs(10)), || Ok(())).expect("dial");
        assert_eq!(guest.refused.load(Ordering::SeqCst), 3);
        assert_eq!(client.dial_attempts(), 4);
        client.check().expect("check");
        let version = client.version().expect("version");
        assert_eq!(version.agent_version, "0.1.0");
        let details = client.guest_details().expect("details");
        assert_eq!(details.kernel_release, "6.12.0-palisade?[31m");
        assert_eq!(details.memory_total_bytes, 200 << 20);
        assert_eq!(details.online_cpus, 2);
        assert_eq!(details.timeline.agent_start_ns, Some(1_000_000));
        assert_eq!(details.timeline.init_done_ns, None);
        assert_eq!(details.timeline.ready_ns, Some(3_000_000));
        client.shutdown().expect("shutdown");
    }

    #[test]
    fn refuses_another_api_version_and_a_non_serving_agent() {
        let guest = fake_guest(
            0,
            FakeAgent {
                api_version: API_VERSION + 1,
                serving: ServingStatus::NOT_SERVING,
            },
        );
        let client =
            dial(&options(&guest.vsock, Duration::from_secs(10)), || Ok(())).expect("dial");
        let err = client.version().expect_err("incompatible");
        assert!(matches!(err, AgentError::IncompatibleApi { .. }), "{err}");
        let err = client.check().expect_err("not serving");
        assert!(err.to_string().contains("NOT_SERVING"), "{err}");
    }

    #[test]
    fn dial_timeout_names_socket_timeout_and_console_log() {
        let guest = fake_guest(u32::MAX, serving_agent());
        let begin = Instant::now();
        let err = match dial(
            &options(&guest.vsock, Duration::from_millis(300)),
            || Ok(()),
        ) {
            Ok(_) => panic!("must time out"),
            Err(e) => e,
        };
        assert!(begin.elapsed() < Duration::from_secs(3));
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "did not answer on {} within 300 ms",
                guest.vsock.display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains("nothing listens on guest vsock port 1024"),
            "{msg}"
        );
        assert!(msg.contains("/run/palisade/x/console.log"), "{msg}");
    }

    #[test]
    fn dial_stops_when_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut calls = 0;
        let err = match dial(
            &options(&dir.path().join("none.sock"), Duration::from_secs(10)),
            || {
                calls += 1;
                if calls > 2 {
                    Err("the VMM process exited".into())
                } else {
                    Ok(())
                }
            },
        ) {
            Ok(_) => panic!("must abort"),
            Err(e) => e,
        };
        assert!(matches!(err, AgentError::Aborted(_)), "{err}");
        assert_eq!(
            crate::error_chain(&err),
            "stopped dialing the guest agent: the VMM process exited"
        );
    }

    #[test]
    fn dial_fails_fast_on_a_peer_that_is_not_a_vmm() {
        let (_dir, path, peer) = fake_vmm(|mut s| {
            read_connect(&s);
            let _ = s.write_all(b"SSH-2.0-OpenSSH\n");
        });
        let err = match dial(&options(&path, Duration::from_secs(10)), || Ok(())) {
            Ok(_) => panic!("must fail"),
            Err(e) => e,
        };
        assert!(
            matches!(err, AgentError::Handshake(HandshakeError::BadAnswer { .. })),
            "{err}"
        );
        peer.join().expect("peer");
    }

    #[test]
    fn sanitizes_guest_strings() {
        assert_eq!(sanitize("6.1\n\x07"), "6.1??");
        let long = "x".repeat(500);
        assert_eq!(sanitize(&long).len(), MAX_GUEST_STRING + 3);
    }
}
