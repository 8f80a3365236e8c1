//! Runs the agent binary in host mode (not PID 1) on a unix socket and
//! drives it through the generated ttrpc clients, as the shim will.

mod common;

use palisade_protocols::agent::{GetGuestDetailsRequest, ShutdownRequest};
use palisade_protocols::agent_ttrpc::AgentClient;
use palisade_protocols::health::{check_response::ServingStatus, CheckRequest, VersionRequest};
use palisade_protocols::health_ttrpc::HealthClient;

use common::{ctx, unix_addr, Agent, TempDir, READY_LINE};

#[test]
fn serves_health_and_agent_then_shuts_down() {
    let dir = TempDir::new("serve");
    let sock = dir.0.join("agent.sock");
    let addr = unix_addr(&sock);
    let mut agent = Agent::start(&["--listen", &addr]);
    agent.wait_for_line(READY_LINE);
    assert!(sock.exists(), "socket not created");

    let client = ttrpc::Client::connect(&addr).expect("connecting to agent");
    let health = HealthClient::new(client.clone());
    let api = AgentClient::new(client);

    let check = health.check(ctx(), &CheckRequest::new()).expect("Check");
    assert_eq!(check.status.enum_value(), Ok(ServingStatus::SERVING));

    let version = health
        .version(ctx(), &VersionRequest::new())
        .expect("Version");
    assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.api_version, palisade_protocols::API_VERSION);

    let details = api
        .get_guest_details(ctx(), &GetGuestDetailsRequest::new())
        .expect("GetGuestDetails");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(details.kernel_release, release.trim());
    assert!(details.memory_total_bytes > 0);
    assert!(details.online_cpus > 0);
    assert_eq!(details.agent_version, env!("CARGO_PKG_VERSION"));
    let t = details.boot_timeline.as_ref().expect("boot timeline");
    assert!(t.agent_start_ns > 0, "{t:?}");
    assert!(t.agent_start_ns <= t.init_done_ns, "{t:?}");
    assert!(t.init_done_ns <= t.ready_ns, "{t:?}");

    api.shutdown(ctx(), &ShutdownRequest::new())
        .expect("Shutdown replies before the agent goes");
    let status = agent.wait_exit();
    assert!(
        status.success(),
        "exit {status:?}; agent said: {:#?}",
        agent.lines
    );
    assert!(!sock.exists(), "socket left behind");

    let ready = agent.lines.iter().filter(|l| *l == READY_LINE).count();
    assert_eq!(ready, 1, "{:#?}", agent.lines);
    assert!(
        agent.lines.iter().any(|l| l.contains("ready in")),
        "no timeline line: {:#?}",
        agent.lines
    );
}

#[test]
fn sigterm_exits_cleanly_and_removes_the_socket() {
    let dir = TempDir::new("sigterm");
    let sock = dir.0.join("agent.sock");
    let mut agent = Agent::start(&["--listen", &unix_addr(&sock)]);
    agent.wait_for_line(READY_LINE);

    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(agent.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = agent.wait_exit();
    assert!(
        status.success(),
        "exit {status:?}; agent said: {:#?}",
        agent.lines
    );
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn bind_failure_is_fatal_and_named() {
    let dir = TempDir::new("bindfail");
    let addr = unix_addr(&dir.0.join("missing-dir/agent.sock"));
    let mut agent = Agent::start(&["--listen", &addr]);
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(1), "agent said: {:#?}", agent.lines);
    assert!(
        agent
            .lines
            .iter()
            .any(|l| l.starts_with("palisade-agent: error: fatal: serving on unix://")),
        "{:#?}",
        agent.lines
    );
}

#[test]
fn refuses_to_run_without_listen_when_not_pid1() {
    let mut agent = Agent::start(&[]);
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(2));
    assert!(
        agent.lines.iter().any(|l| l.contains("--listen")),
        "{:#?}",
        agent.lines
    );
}
