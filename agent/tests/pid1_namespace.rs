//! Runs the agent as PID 1 of fresh PID, mount, UTS and cgroup namespaces,
//! so its init and shutdown paths run for real without a VM: mounts go into
//! a private mount namespace, and reboot(2) from a namespace's init only
//! ends that namespace (its init dies of SIGHUP).
//!
//! Needs root and util-linux (unshare, setpriv), so it is ignored by
//! default: `cargo test -p palisade-agent -- --ignored`. CAP_SYS_RAWIO is
//! dropped so the boot-progress port write cannot reach real hardware.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use palisade_protocols::agent::{GetGuestDetailsRequest, ShutdownRequest};
use palisade_protocols::agent_ttrpc::AgentClient;
use palisade_protocols::health::{check_response::ServingStatus, CheckRequest};
use palisade_protocols::health_ttrpc::HealthClient;

use common::{ctx, unix_addr, Agent, TempDir, AGENT_BIN, READY_LINE};

#[test]
#[ignore = "needs root and util-linux; run with --ignored"]
fn runs_as_pid1_and_reboots_its_namespace() {
    let dir = TempDir::new("pid1");
    let sock = dir.0.join("agent.sock");
    let addr = unix_addr(&sock);
    // The agent reads its options from /proc/cmdline; give it ours.
    let cmdline = dir.0.join("cmdline");
    std::fs::write(
        &cmdline,
        format!("console=ttyS0 palisade.log=debug palisade.agent_addr={addr}\n"),
    )
    .expect("writing fake cmdline");

    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--uts",
        "--cgroup",
        "--propagation",
        "private",
        "--mount-proc",
        "sh",
        "-c",
        // sh is PID 1 here and execs into the agent, which keeps PID 1.
        r#"mount --bind "$0" /proc/cmdline && exec setpriv --bounding-set -sys_rawio "$1""#,
    ]);
    cmd.arg(&cmdline).arg(AGENT_BIN);
    let mut agent = Agent::spawn(cmd);
    agent.wait_for_line(READY_LINE);

    let client = ttrpc::Client::connect(&addr).expect("connecting to agent");
    let health = HealthClient::new(client.clone());
    let api = AgentClient::new(client);
    let check = health.check(ctx(), &CheckRequest::new()).expect("Check");
    assert_eq!(check.status.enum_value(), Ok(ServingStatus::SERVING));
    let details = api
        .get_guest_details(ctx(), &GetGuestDetailsRequest::new())
        .expect("GetGuestDetails");
    let t = details.boot_timeline.as_ref().expect("boot timeline");
    assert!(t.agent_start_ns <= t.init_done_ns && t.init_done_ns <= t.ready_ns);

    api.shutdown(ctx(), &ShutdownRequest::new())
        .expect("Shutdown replies before the agent goes");
    let status = agent.wait_exit();
    // unshare re-raises the signal its child died of.
    assert_eq!(
        status.signal(),
        Some(libc::SIGHUP),
        "want the namespace rebooted; got {status:?}; agent said: {:#?}",
        agent.lines
    );
    let said = |needle: &str| agent.lines.iter().any(|l| l.contains(needle));
    assert!(said("palisade-agent: debug: "), "{:#?}", agent.lines);
    assert!(said("init done in"), "{:#?}", agent.lines);
    assert!(!said("palisade-agent: error:"), "{:#?}", agent.lines);
}
