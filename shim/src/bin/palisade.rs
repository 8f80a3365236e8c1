//! `palisade`: the user-facing diagnostic tool (`palisade check`) and the
//! developer tool (`palisade sandbox run`, `palisade agent ...`). Also
//! serves as a VMM process (`__vmm`) when it boots a VM.

use std::process::ExitCode;

use palisade_shim::check::{self, CheckOptions};
use palisade_shim::cli::{self, Command, USAGE};
use palisade_shim::config::ConfigLocation;
use palisade_shim::devtool;
use palisade_shim::vmm_process::child;

/// Status for a command line we do not understand.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // First thing: the VMM process's start time is a boot phase.
    let started_ns = palisade_vmm::monotonic_ns();
    if let Some(code) = child::run_if_requested(started_ns) {
        return code;
    }

    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let cli = match cli::parse(&args) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("palisade: {e}\nTry `palisade --help`.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("palisade {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check {
            json,
            force,
            timeout,
        } => check::run(&CheckOptions {
            config: ConfigLocation::from_cli_or_env(cli.config),
            json,
            force,
            timeout,
        }),
        Command::Sandbox(command) => devtool::run_sandbox(&command, cli.config),
        Command::Agent(invocation) => devtool::run_agent(&invocation),
    }
}
