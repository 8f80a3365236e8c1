//! The two binaries as users and the shim see them: `palisade`'s command
//! line and failure paths, and the `__vmm` entry point's protocol. None of
//! these boot a guest, so they run anywhere.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PALISADE: &str = env!("CARGO_BIN_EXE_palisade");
const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-palisade-v2");

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_remove("PALISADE_CONFIG")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_and_usage_errors() {
    let out = run(PALISADE, &["--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("Usage: palisade"));

    let out = run(PALISADE, &["chek"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown command \"chek\""));
}

#[test]
fn a_bad_configuration_fails_the_check_without_booting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[hypervisor]\nvcpu = 2\n").expect("write");
    let begin = Instant::now();
    let out = run(
        PALISADE,
        &["--config", config.to_str().expect("utf-8"), "check"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(begin.elapsed() < Duration::from_secs(10));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FAIL  configuration"), "{stdout}");
    assert!(
        stdout.contains("line 2: unknown key `hypervisor.vcpu`"),
        "{stdout}"
    );
    assert!(!stdout.contains("booting"), "{stdout}");
}

#[test]
fn json_output_is_one_object() {
    let out = run(
        PALISADE,
        &["--config", "/nonexistent/c.toml", "check", "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(value["ok"], false);
    assert_eq!(value["checks"][0]["id"], "config");
    assert_eq!(value["checks"][0]["ok"], false);
}

#[test]
fn the_vmm_entry_point_reports_start_then_one_error_line() {
    let out = run(
        SHIM,
        &[
            "__vmm",
            "--kernel",
            "/nonexistent/vmlinux",
            "--vcpus",
            "1",
            "--memory-mib",
            "64",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    let words: Vec<&str> = first.split(' ').collect();
    assert_eq!(words.len(), 2, "{stdout}");
    assert_eq!(words[0], "started");
    assert!(words[1].parse::<u64>().is_ok(), "{stdout}");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("palisade-vmm: "), "{stderr}");
}

#[test]
fn the_vmm_entry_point_rejects_bad_arguments() {
    let out = run(SHIM, &["__vmm", "--vcpus", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "palisade-vmm: bad __vmm arguments: --kernel is required"
    );
}

/// A forced boot of something that is not a bootable kernel fails, quickly,
/// and leaves no sandbox directory behind, whatever KVM this host has.
#[test]
fn a_failed_boot_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, pvh_elf()).expect("write kernel");
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, b"\x1f\x8b\x08\x00\x00\x00\x00\x00").expect("write initrd");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[hypervisor]\nkernel = {:?}\ninitrd = {:?}\n",
            kernel.display().to_string(),
            initrd.display().to_string()
        ),
    )
    .expect("write config");

    let begin = Instant::now();
    let child = Command::new(PALISADE)
        .args([
            "--config",
            config.to_str().expect("utf-8"),
            "check",
            "--force",
            "--json",
            "--timeout-ms",
            "3000",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn palisade");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(begin.elapsed() < Duration::from_secs(30));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(value["ok"], false);
    assert!(!Path::new(&format!("/run/palisade/check-{pid}")).exists());
    let tmp = std::env::temp_dir().join(format!("palisade-check-{pid}"));
    assert!(!tmp.exists());
}

/// An x86-64 ELF header, no loadable segments, and a PVH note.
fn pvh_elf() -> Vec<u8> {
    let mut notes = Vec::new();
    notes.extend_from_slice(&4u32.to_le_bytes());
    notes.extend_from_slice(&4u32.to_le_bytes());
    notes.extend_from_slice(&18u32.to_le_bytes());
    notes.extend_from_slice(b"Xen\0");
    notes.extend_from_slice(&0x0100_0000u32.to_le_bytes());
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes());
    f[18..20].copy_from_slice(&62u16.to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&1u16.to_le_bytes());
    let mut phdr = vec![0u8; 56];
    phdr[..4].copy_from_slice(&4u32.to_le_bytes());
    phdr[8..16].copy_from_slice(&120u64.to_le_bytes());
    phdr[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
    f.extend_from_slice(&phdr);
    f.extend_from_slice(&notes);
    f
}

/// containerd runs `delete` after a shim died, in the bundle directory, and
/// reads a protobuf DeleteResponse from its stdout (nothing else).
#[test]
fn shim_delete_prints_only_a_delete_response() {
    use containerd_shim_protos::protobuf::Message;
    let bundle = tempfile::tempdir().expect("tempdir");
    let id = format!("palisade-test-delete-{}", std::process::id());
    let out = Command::new(SHIM)
        .args([
            "-namespace",
            "default",
            "-id",
            &id,
            "-address",
            "/run/containerd/containerd.sock",
            "delete",
        ])
        .current_dir(bundle.path())
        .env("TTRPC_ADDRESS", "/run/containerd/containerd.sock.ttrpc")
        .output()
        .expect("run the shim");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let response = containerd_shim_protos::api::DeleteResponse::parse_from_bytes(&out.stdout)
        .expect("stdout is a DeleteResponse");
    assert_eq!(response.exit_status, 137);
    assert!(response.exited_at.seconds > 0);
}

/// containerd refuses a shim that serves without a namespace; the message
/// must say so (and the process must not hang).
#[test]
fn shim_without_namespace_fails_clearly() {
    let out = Command::new(SHIM)
        .args(["-id", "x", "start"])
        .env("TTRPC_ADDRESS", "/nonexistent")
        .output()
        .expect("run the shim");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("namespace"),
        "stderr: {}",
        text(&out.stderr)
    );
}
