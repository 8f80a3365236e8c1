//! Where the agent's settings come from: the kernel command line when it is
//! PID 1 of a guest, argv when it runs on a host for testing.

use std::path::PathBuf;

use log::LevelFilter;
use thiserror::Error;

/// Where the agent listens unless told otherwise: any CID, the agent port.
pub const DEFAULT_GUEST_ADDR: &str = "vsock://-1:1024";

const LOG_KEY: &str = "palisade.log";
const ADDR_KEY: &str = "palisade.agent_addr";

/// Settings read from /proc/cmdline. Bad values are kept as warnings rather
/// than errors: refusing to boot over a typo would leave no way to debug it.
#[derive(Debug, Default, PartialEq)]
pub struct CmdlineOptions {
    pub log_level: Option<LevelFilter>,
    pub agent_addr: Option<String>,
    pub warnings: Vec<String>,
}

/// Parses a kernel command line. Only `palisade.*` keys are looked at;
/// anything after a bare `--` belongs to init's argv, not to us.
pub fn parse_cmdline(cmdline: &str) -> CmdlineOptions {
    let mut opts = CmdlineOptions::default();
    for param in split_kernel_params(cmdline) {
        if param == "--" {
            break;
        }
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param.as_str(), None),
        };
        match (key, value) {
            (LOG_KEY, Some(v)) => match parse_level(v) {
                Some(level) => opts.log_level = Some(level),
                None => opts.warnings.push(format!(
                    "{LOG_KEY}={v}: unknown level, want debug|info|warn"
                )),
            },
            (ADDR_KEY, Some(v)) if !v.is_empty() => opts.agent_addr = Some(v.to_string()),
            (LOG_KEY | ADDR_KEY, _) => opts.warnings.push(format!("{key}: missing value")),
            _ => {}
        }
    }
    opts
}

/// Splits like the kernel's `next_arg`: whitespace separates parameters,
/// double quotes group and are removed.
fn split_kernel_params(cmdline: &str) -> Vec<String> {
    let mut params = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_token = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_token = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_token {
                    params.push(std::mem::take(&mut current));
                    has_token = false;
                }
            }
            c => {
                current.push(c);
                has_token = true;
            }
        }
    }
    if has_token {
        params.push(current);
    }
    params
}

pub fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Some(LevelFilter::Trace),
        "debug" => Some(LevelFilter::Debug),
        "info" => Some(LevelFilter::Info),
        "warn" | "warning" => Some(LevelFilter::Warn),
        "error" => Some(LevelFilter::Error),
        _ => None,
    }
}

/// Settings for host mode (not PID 1), from argv.
#[derive(Debug, PartialEq)]
pub struct HostArgs {
    pub listen: String,
    pub log_level: LevelFilter,
    /// A cgroup v2 hierarchy for container cgroups; None (the default, and
    /// `--cgroup-root none`) runs containers without cgroups, as hosts
    /// with cgroup v1 need.
    pub cgroup_root: Option<PathBuf>,
}

#[derive(Debug, Error, PartialEq)]
pub enum ArgsError {
    #[error("not running as PID 1: pass --listen ADDR (e.g. unix:///tmp/agent.sock) to run only the server")]
    MissingListen,
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("unknown log level {0:?}: want debug|info|warn")]
    BadLevel(String),
    #[error("--cgroup-root {0:?}: want an absolute path to a cgroup v2 hierarchy, or none")]
    BadCgroupRoot(String),
    #[error("unknown argument {0:?}; usage: palisade-agent --listen ADDR [--log LEVEL] [--cgroup-root PATH|none]")]
    Unknown(String),
}

/// Parses host-mode argv (without the program name).
pub fn parse_host_args(args: impl IntoIterator<Item = String>) -> Result<HostArgs, ArgsError> {
    let mut listen = None;
    let mut log_level = LevelFilter::Info;
    let mut cgroup_root = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| ArgsError::MissingValue(flag.clone()))
        };
        match flag.as_str() {
            "--listen" => listen = Some(value()?),
            "--log" => {
                let v = value()?;
                log_level = parse_level(&v).ok_or(ArgsError::BadLevel(v))?;
            }
            "--cgroup-root" => {
                let v = value()?;
                cgroup_root = match v.as_str() {
                    "none" => None,
                    p if p.starts_with('/') => Some(PathBuf::from(p)),
                    _ => return Err(ArgsError::BadCgroupRoot(v)),
                };
            }
            _ => return Err(ArgsError::Unknown(arg)),
        }
    }
    Ok(HostArgs {
        listen: listen.ok_or(ArgsError::MissingListen)?,
        log_level,
        cgroup_root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cmdline_defaults_when_absent() {
        let o = parse_cmdline("console=ttyS0 reboot=k panic=-1 quiet\n");
        assert_eq!(o, CmdlineOptions::default());
    }

    #[test]
    fn cmdline_reads_palisade_keys() {
        let o = parse_cmdline(
            "console=ttyS0 palisade.log=debug palisade.agent_addr=unix:///run/a.sock panic=-1\n",
        );
        assert_eq!(o.log_level, Some(LevelFilter::Debug));
        assert_eq!(o.agent_addr.as_deref(), Some("unix:///run/a.sock"));
        assert!(o.warnings.is_empty());
    }

    #[test]
    fn cmdline_last_value_wins_and_case_is_ignored() {
        let o = parse_cmdline("palisade.log=debug palisade.log=WARN");
        assert_eq!(o.log_level, Some(LevelFilter::Warn));
    }

    #[test]
    fn cmdline_bad_values_become_warnings() {
        let o = parse_cmdline("palisade.log=loud palisade.agent_addr= palisade.log");
        assert_eq!(o.log_level, None);
        assert_eq!(o.agent_addr, None);
        assert_eq!(o.warnings.len(), 3, "{:?}", o.warnings);
    }

    #[test]
    fn cmdline_handles_quotes_and_stops_at_double_dash() {
        let o = parse_cmdline(
            r#"foo="a b c" palisade.agent_addr="vsock://-1:2048" -- palisade.log=debug"#,
        );
        assert_eq!(o.agent_addr.as_deref(), Some("vsock://-1:2048"));
        assert_eq!(o.log_level, None);
    }

    #[test]
    fn cmdline_ignores_lookalike_keys() {
        let o = parse_cmdline("xpalisade.log=debug palisade.logx=debug");
        assert_eq!(o, CmdlineOptions::default());
    }

    #[test]
    fn default_addr_uses_the_agent_port() {
        let port = palisade_protocols::AGENT_VSOCK_PORT;
        assert_eq!(DEFAULT_GUEST_ADDR, format!("vsock://-1:{port}"));
    }

    #[test]
    fn split_matches_kernel_rules() {
        assert_eq!(
            split_kernel_params("  a  b=\"x y\"\t\"c\" \"\" d\n"),
            vec!["a", "b=x y", "c", "", "d"]
        );
    }

    #[test]
    fn host_args_listen_and_log() {
        let a = parse_host_args(args(&["--listen", "unix:///tmp/x.sock", "--log=debug"]));
        assert_eq!(
            a,
            Ok(HostArgs {
                listen: "unix:///tmp/x.sock".into(),
                log_level: LevelFilter::Debug,
                cgroup_root: None,
            })
        );
    }

    #[test]
    fn host_args_cgroup_root() {
        let a = parse_host_args(args(&[
            "--listen",
            "x",
            "--cgroup-root",
            "/sys/fs/cgroup/unified",
        ]));
        assert_eq!(
            a.unwrap().cgroup_root,
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let a = parse_host_args(args(&["--listen", "x", "--cgroup-root=none"]));
        assert_eq!(a.unwrap().cgroup_root, None);
        assert_eq!(
            parse_host_args(args(&["--listen", "x", "--cgroup-root", "rel"])),
            Err(ArgsError::BadCgroupRoot("rel".into()))
        );
    }

    #[test]
    fn host_args_errors() {
        assert_eq!(parse_host_args(args(&[])), Err(ArgsError::MissingListen));
        assert_eq!(
            parse_host_args(args(&["--listen"])),
            Err(ArgsError::MissingValue("--listen".into()))
        );
        assert_eq!(
            parse_host_args(args(&["--listen", "x", "--log", "loud"])),
            Err(ArgsError::BadLevel("loud".into()))
        );
        assert_eq!(
            parse_host_args(args(&["--bogus"])),
            Err(ArgsError::Unknown("--bogus".into()))
        );
    }
}
