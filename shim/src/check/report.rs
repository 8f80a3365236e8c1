//! What `palisade check` found, printed as text lines as it goes, or as one
//! JSON object at the end for benchmarks.

use std::io::Write;

use serde::Serialize;

/// One checked property of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable name for machines: `config`, `kvm_device`, `kvm_open`,
    /// `kvm_api_version`, `kvm_kind`, `kernel`, `initrd`.
    pub id: &'static str,
    pub ok: bool,
    pub message: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// A failure that `--force` told us to ignore.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
}

impl Finding {
    pub fn ok(id: &'static str, message: impl Into<String>) -> Self {
        Self {
            id,
            ok: true,
            message: message.into(),
            fix: None,
            forced: false,
        }
    }

    pub fn fail(id: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            id,
            ok: false,
            message: message.into(),
            fix: Some(fix.into()),
            forced: false,
        }
    }

    /// A failure that stops the check before any boot attempt.
    pub fn blocks(&self) -> bool {
        !self.ok && !self.forced
    }
}

/// Everything measured while booting a sandbox VM. Times are milliseconds;
/// host phases count from the moment the VMM process was spawned, guest
/// ones from the guest kernel's start on the guest's own clock. Fields stay
/// `None` for phases not reached, so a failed boot still shows how far it
/// got.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BootReport {
    pub sandbox_dir: Option<String>,
    pub vmm_pid: Option<u32>,
    pub vcpus: Option<u8>,
    pub memory_mib: Option<u32>,
    pub timeout_ms: Option<u64>,

    pub vmm_started_ms: Option<f64>,
    pub guest_entered_ms: Option<f64>,
    pub agent_started_ms: Option<f64>,
    pub agent_ready_ms: Option<f64>,
    /// The hybrid-vsock handshake with the agent's port succeeded.
    pub agent_connected_ms: Option<f64>,
    pub first_answer_ms: Option<f64>,
    /// Handshakes tried until the agent accepted (each refused one is a
    /// round trip through the guest).
    pub dial_attempts: Option<u32>,

    pub guest_agent_start_ms: Option<f64>,
    pub guest_init_done_ms: Option<f64>,
    pub guest_ready_ms: Option<f64>,

    pub kernel_release: Option<String>,
    pub agent_version: Option<String>,
    pub agent_api_version: Option<u32>,
    pub guest_memory_total_kib: Option<u64>,
    pub guest_cpus: Option<u32>,

    pub vmm_rss_kib: Option<u64>,
    pub guest_memory_touched_kib: Option<u64>,
    pub vmm_rss_excluding_guest_kib: Option<u64>,

    /// From the Shutdown call to the VMM's exit.
    pub shutdown_ms: Option<f64>,
    /// The end of the guest console, when the boot failed.
    pub console_tail: Option<String>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    ok: bool,
    error: Option<&'a str>,
    config: &'a str,
    kvm_kind: Option<&'a str>,
    checks: &'a [Finding],
    #[serde(flatten)]
    boot: &'a BootReport,
}

/// Collects findings; in text mode prints each one as soon as it is known.
pub struct Reporter {
    json: bool,
    findings: Vec<Finding>,
    pub config_path: String,
    pub kvm_kind: Option<&'static str>,
    pub boot: BootReport,
}

impl Reporter {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            findings: Vec::new(),
            config_path: String::new(),
            kvm_kind: None,
            boot: BootReport::default(),
        }
    }

    pub fn add(&mut self, finding: Finding) {
        if !self.json {
            let status = if finding.ok { "ok" } else { "FAIL" };
            let forced = if finding.forced {
                " (ignored: --force)"
            } else {
                ""
            };
            println!("  {status:<5} {}{forced}", finding.message);
        }
        self.findings.push(finding);
    }

    pub fn has_blocking_failure(&self) -> bool {
        self.findings.iter().any(Finding::blocks)
    }

    /// A line of progress or results (text mode only).
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.json {
            println!("{}", line.as_ref());
        }
    }

    /// Ends a run that stopped at the host checks.
    pub fn finish_blocked(&self) {
        let error = "this host cannot run palisade sandboxes; nothing was booted";
        if self.json {
            self.print_json(Some(error));
            return;
        }
        println!();
        println!("palisade check: {error}. To fix:");
        for finding in self.findings.iter().filter(|f| f.blocks()) {
            if let Some(fix) = &finding.fix {
                println!();
                for (i, line) in wrap(fix, 76).iter().enumerate() {
                    let bullet = if i == 0 { "  - " } else { "    " };
                    println!("{bullet}{line}");
                }
            }
        }
    }

    /// Ends a run whose boot failed with `error` (one message, causes
    /// joined).
    pub fn finish_failed(&self, error: &str) {
        if self.json {
            self.print_json(Some(error));
            return;
        }
        self.print_boot_text();
        match &self.boot.console_tail {
            Some(tail) => {
                println!();
                println!("last lines of the guest console:");
                for line in tail.lines() {
                    println!("  | {line}");
                }
            }
            None if self.boot.vmm_pid.is_some() => {
                println!();
                println!("the guest console stayed empty");
            }
            None => {}
        }
        println!();
        println!("palisade check: FAIL: {error}");
    }

    /// Ends a successful run.
    pub fn finish_ok(&self) {
        if self.json {
            self.print_json(None);
            return;
        }
        self.print_boot_text();
        println!();
        println!("palisade check: ok");
    }

    fn print_json(&self, error: Option<&str>) {
        let report = JsonReport {
            ok: error.is_none(),
            error,
            config: &self.config_path,
            kvm_kind: self.kvm_kind,
            checks: &self.findings,
            boot: &self.boot,
        };
        let mut out = std::io::stdout().lock();
        match serde_json::to_string(&report) {
            Ok(json) => {
                let _ = writeln!(out, "{json}");
            }
            // Plain data cannot fail to serialize; say so in JSON if it does.
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{{\"ok\":false,\"error\":\"cannot serialize the report: {e}\"}}"
                );
            }
        }
    }

    fn print_boot_text(&self) {
        let b = &self.boot;
        if b.vmm_pid.is_none() {
            return;
        }
        let phases = [
            ("VMM process started", b.vmm_started_ms),
            ("guest kernel entered", b.guest_entered_ms),
            ("agent started (boot signal 1)", b.agent_started_ms),
            ("agent ready (boot signal 2)", b.agent_ready_ms),
            ("agent connection accepted", b.agent_connected_ms),
            ("first answer (Health.Check)", b.first_answer_ms),
        ];
        println!();
        println!("boot phases (ms after the shim spawned the VMM process):");
        print_times(&phases);
        let guest = [
            ("agent main() began", b.guest_agent_start_ms),
            ("agent init duties done", b.guest_init_done_ms),
            ("agent ttrpc server listening", b.guest_ready_ms),
        ];
        if guest.iter().any(|(_, t)| t.is_some()) {
            println!("guest timeline (guest clock, ms after its kernel started):");
            print_times(&guest);
        }
        if let (Some(release), Some(agent)) = (&b.kernel_release, &b.agent_version) {
            let memory = b
                .guest_memory_total_kib
                .map(|kib| format!("{} MiB", kib / 1024))
                .unwrap_or_else(|| "? MiB".into());
            let cpus = b
                .guest_cpus
                .map(|c| c.to_string())
                .unwrap_or_else(|| "?".into());
            let api = b
                .agent_api_version
                .map(|v| format!(", API {v}"))
                .unwrap_or_default();
            println!("guest: kernel {release}, {memory} memory, {cpus} CPU(s); agent {agent}{api}");
        }
        if let Some(rss) = b.vmm_rss_kib {
            let split = match (b.guest_memory_touched_kib, b.vmm_rss_excluding_guest_kib) {
                (Some(guest), Some(own)) => {
                    format!(" = {guest} KiB guest memory touched + {own} KiB VMM overhead")
                }
                _ => " (guest memory mapping not identified)".to_owned(),
            };
            println!("VMM process memory: RSS {rss} KiB{split}");
        }
        if let Some(ms) = b.shutdown_ms {
            println!(
                "shutdown: the guest reset {ms:.1} ms after Shutdown; VMM exited, sandbox removed"
            );
        }
    }
}

fn print_times(rows: &[(&str, Option<f64>)]) {
    for (name, time) in rows {
        match time {
            Some(ms) => println!("  {name:<32} {ms:>9.1}"),
            None => println!("  {name:<32} {:>9}", "-"),
        }
    }
}

/// Greedy word wrap for the advice paragraphs.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_words() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("", 5), Vec::<String>::new());
        assert_eq!(wrap("toolongword x", 4), vec!["toolongword", "x"]);
    }

    #[test]
    fn json_has_flat_phase_fields() {
        let boot = BootReport {
            vmm_pid: Some(42),
            agent_ready_ms: Some(12.5),
            ..Default::default()
        };
        let findings = [Finding::ok("config", "fine")];
        let report = JsonReport {
            ok: true,
            error: None,
            config: "/c.toml",
            kvm_kind: Some("hardware-svm"),
            checks: &findings,
            boot: &boot,
        };
        let value: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&report).expect("json")).expect("parse");
        assert_eq!(value["ok"], true);
        assert_eq!(value["vmm_pid"], 42);
        assert_eq!(value["agent_ready_ms"], 12.5);
        assert!(value["first_answer_ms"].is_null());
        assert_eq!(value["checks"][0]["id"], "config");
        assert!(value["checks"][0].get("fix").is_none());
    }
}
