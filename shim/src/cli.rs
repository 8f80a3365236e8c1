//! The `palisade` command line. `check` is parsed here; `sandbox` and
//! `agent`, the developer tool, have their own parsers in
//! [`crate::devtool::args`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::devtool::{self, AgentInvocation, ArgsError, SandboxCommand};

pub const USAGE: &str = "\
palisade: diagnostics and developer tools for the palisade container runtime

Usage: palisade [--config PATH] <command> [options]

Commands:
  check    check that this host can run palisade sandboxes, then boot one
           sandbox VM, talk to its agent, shut it down, and time each phase
  sandbox  `sandbox run`: boot a sandbox VM and keep it up until Ctrl-C
           (`palisade sandbox --help`)
  agent    drive a sandbox's guest agent by hand: create, start, exec, kill,
           wait, rm, ps, stats, update, pause, resume, events, resize, run
           (`palisade agent --help`)
  help     show this help

Options:
  --config PATH   configuration file (default: $PALISADE_CONFIG, else
                  /etc/palisade/configuration.toml; built-in defaults if
                  that does not exist)
  -h, --help      show this help
  -V, --version   show the version

Options of `check`:
  --json          print one JSON object with every result and timing
                  (for benchmarks) instead of text
  --force         boot even where /dev/kvm cannot boot palisade's guest
                  kernel (PVM); expect it to time out
  --timeout-ms N  how long the guest may take to boot and answer, in ms
                  (default: [agent] dial_timeout_ms of the configuration)

Exit status: 0 all good, 1 a check or the boot failed, 2 bad usage,
130 interrupted.
";

/// A parsed `palisade` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    pub config: Option<PathBuf>,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    Check {
        json: bool,
        force: bool,
        timeout: Option<Duration>,
    },
    Sandbox(SandboxCommand),
    Agent(AgentInvocation),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("no command given (try `palisade check`)")]
    NoCommand,
    #[error("unknown command {0:?} (commands: check, sandbox, agent)")]
    UnknownCommand(String),
    #[error("unknown option {0:?}")]
    UnknownOption(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{0} given twice")]
    Duplicate(&'static str),
    #[error("--timeout-ms {0:?}: expected milliseconds, 1 to 3600000")]
    BadTimeout(String),
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(OsString),
    #[error(transparent)]
    Devtool(#[from] ArgsError),
}

const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Where the first command word is, skipping global options and the
/// value of `--config`.
fn command_position(args: &[OsString]) -> Option<usize> {
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--config" {
            i += 2;
            continue;
        }
        if !args[i].to_string_lossy().starts_with('-') {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// `palisade [GLOBAL OPTIONS] sandbox|agent ...`: only `--config` may come
/// before the command; the rest is the developer tool's.
fn parse_devtool(args: &[OsString], at: usize) -> Result<Cli, UsageError> {
    let mut config: Option<PathBuf> = None;
    let mut iter = args[..at].iter();
    while let Some(arg) = iter.next() {
        let text = arg
            .to_str()
            .ok_or_else(|| UsageError::NotUtf8(arg.clone()))?;
        let command = match text {
            "-h" | "--help" => Some(Command::Help),
            "-V" | "--version" => Some(Command::Version),
            _ => None,
        };
        if let Some(command) = command {
            return Ok(Cli { config, command });
        }
        if text == "--config" {
            let value = iter.next().ok_or(UsageError::MissingValue("--config"))?;
            set_once(&mut config, "--config", PathBuf::from(value))?;
        } else if let Some(value) = text.strip_prefix("--config=") {
            set_once(&mut config, "--config", PathBuf::from(value))?;
        } else {
            return Err(UsageError::UnknownOption(text.to_owned()));
        }
    }
    let rest = devtool::scan::to_strings(&args[at + 1..])?;
    let command = if args[at] == "sandbox" {
        Command::Sandbox(devtool::args::parse_sandbox(&rest)?)
    } else {
        Command::Agent(devtool::args::parse_agent(&rest)?)
    };
    Ok(Cli { config, command })
}

/// Parses the arguments after the program name. Options may come before
/// or after the command; `--opt=value` and `--opt value` both work.
pub fn parse(args: &[OsString]) -> Result<Cli, UsageError> {
    if let Some(at) = command_position(args) {
        if args[at] == "sandbox" || args[at] == "agent" {
            return parse_devtool(args, at);
        }
    }
    let mut config: Option<PathBuf> = None;
    let mut command: Option<String> = None;
    let mut json = false;
    let mut force = false;
    let mut timeout: Option<Duration> = None;
    let mut help = false;
    let mut version = false;

    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        // --config takes any path, UTF-8 or not.
        if arg == "--config" {
            let value = iter.next().ok_or(UsageError::MissingValue("--config"))?;
            set_once(&mut config, "--config", PathBuf::from(value))?;
            continue;
        }
        let text = arg
            .to_str()
            .ok_or_else(|| UsageError::NotUtf8(arg.clone()))?;
        let (name, inline) = match text.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
            _ => (text, None),
        };
        let mut value = |flag: &'static str| -> Result<String, UsageError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => iter
                    .next()
                    .ok_or(UsageError::MissingValue(flag))?
                    .to_str()
                    .map(str::to_owned)
                    .ok_or(UsageError::MissingValue(flag)),
            }
        };
        match name {
            "-h" | "--help" => help = true,
            "-V" | "--version" => version = true,
            "--config" => set_once(&mut config, "--config", PathBuf::from(value("--config")?))?,
            "--json" => json = true,
            "--force" => force = true,
            "--timeout-ms" => {
                let raw = value("--timeout-ms")?;
                let ms: u64 = raw
                    .parse()
                    .ok()
                    .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
                    .ok_or_else(|| UsageError::BadTimeout(raw.clone()))?;
                set_once(&mut timeout, "--timeout-ms", Duration::from_millis(ms))?;
            }
            flag if flag.starts_with('-') => {
                return Err(UsageError::UnknownOption(flag.to_owned()))
            }
            word if command.is_none() => command = Some(word.to_owned()),
            word => return Err(UsageError::UnknownCommand(word.to_owned())),
        }
    }

    let command = if help {
        Command::Help
    } else if version {
        Command::Version
    } else {
        match command.as_deref() {
            Some("check") => Command::Check {
                json,
                force,
                timeout,
            },
            Some("help") => Command::Help,
            Some(other) => return Err(UsageError::UnknownCommand(other.to_owned())),
            None => return Err(UsageError::NoCommand),
        }
    };
    Ok(Cli { config, command })
}

fn set_once<T>(slot: &mut Option<T>, flag: &'static str, value: T) -> Result<(), UsageError> {
    if slot.is_some() {
        return Err(UsageError::Duplicate(flag));
    }
    *slot = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Cli, UsageError> {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn parses_check() {
        assert_eq!(
            p(&[
                "--config",
                "/c.toml",
                "check",
                "--json",
                "--timeout-ms=30000"
            ]),
            Ok(Cli {
                config: Some("/c.toml".into()),
                command: Command::Check {
                    json: true,
                    force: false,
                    timeout: Some(Duration::from_secs(30)),
                },
            })
        );
        assert_eq!(
            p(&["check", "--force", "--config=/x", "--timeout-ms", "5"]).map(|c| c.config),
            Ok(Some("/x".into()))
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(p(&["--help"]).map(|c| c.command), Ok(Command::Help));
        assert_eq!(p(&["check", "-h"]).map(|c| c.command), Ok(Command::Help));
        assert_eq!(p(&["help"]).map(|c| c.command), Ok(Command::Help));
        assert_eq!(p(&["-V"]).map(|c| c.command), Ok(Command::Version));
    }

    #[test]
    fn rejects_bad_usage() {
        assert_eq!(p(&[]), Err(UsageError::NoCommand));
        assert_eq!(p(&["chek"]), Err(UsageError::UnknownCommand("chek".into())));
        assert_eq!(
            p(&["check", "extra"]),
            Err(UsageError::UnknownCommand("extra".into()))
        );
        assert_eq!(
            p(&["check", "--jsn"]),
            Err(UsageError::UnknownOption("--jsn".into()))
        );
        assert_eq!(
            p(&["check", "--config"]),
            Err(UsageError::MissingValue("--config"))
        );
        assert_eq!(
            p(&["check", "--timeout-ms", "0"]),
            Err(UsageError::BadTimeout("0".into()))
        );
        assert_eq!(
            p(&["check", "--timeout-ms=abc"]),
            Err(UsageError::BadTimeout("abc".into()))
        );
        assert_eq!(
            p(&["--config", "/a", "check", "--config", "/b"]),
            Err(UsageError::Duplicate("--config"))
        );
    }

    #[test]
    fn hands_sandbox_and_agent_to_the_devtool() {
        let cli = p(&["--config=/c.toml", "sandbox", "run", "--id", "s1"]).unwrap();
        assert_eq!(cli.config, Some("/c.toml".into()));
        assert!(matches!(
            cli.command,
            Command::Sandbox(SandboxCommand::Run(ref r)) if r.id.as_deref() == Some("s1")
        ));
        let cli = p(&["agent", "--sandbox", "s1", "ps", "c1"]).unwrap();
        assert!(matches!(cli.command, Command::Agent(_)));
        // `--json` belongs to check, not before the devtool's commands.
        assert_eq!(
            p(&["--json", "agent", "--sandbox", "s1", "ps", "c1"]),
            Err(UsageError::UnknownOption("--json".into()))
        );
        assert!(matches!(
            p(&["agent", "ps", "c1"]),
            Err(UsageError::Devtool(ArgsError::NoTarget))
        ));
        assert_eq!(
            p(&["--help", "sandbox"]).map(|c| c.command),
            Ok(Command::Help)
        );
    }
}
