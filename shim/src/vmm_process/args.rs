//! The command line of the VMM process (`<binary> __vmm ...`): built by the
//! supervisor, parsed by the VMM process. Both sides live here so they
//! cannot drift apart.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use palisade_vmm::{
    NetConfig, SeccompMode, SerialLogConfig, SharedFsConfig, VmConfig, VsockConfig,
    DEFAULT_CONSOLE_LOG_MAX_BYTES, DEFAULT_MAX_OPEN_FILES,
};

/// The hidden subcommand that turns either binary into a VMM process.
pub const VMM_SUBCOMMAND: &str = "__vmm";

/// The guest's vsock context id. Each VM has its own vsock device and
/// hybrid socket, so every guest can use the first non-reserved CID.
pub const GUEST_CID: u64 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown argument {0:?}")]
    Unknown(OsString),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{0} given twice")]
    Duplicate(&'static str),
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: OsString,
        reason: &'static str,
    },
    #[error("{0} is required")]
    Required(&'static str),
}

/// The arguments after the subcommand that describe `config`.
pub fn to_args(config: &VmConfig) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |flag: &str, value: OsString| {
        args.push(flag.into());
        args.push(value);
    };
    push("--kernel", config.kernel.clone().into());
    if let Some(initrd) = &config.initrd {
        push("--initrd", initrd.clone().into());
    }
    push("--kernel-params", config.kernel_params.clone().into());
    push("--vcpus", config.vcpus.to_string().into());
    push("--memory-mib", config.memory_mib.to_string().into());
    if let Some(serial_log) = &config.serial_log {
        push("--serial-log", serial_log.path.clone().into());
        push(
            "--serial-log-max-bytes",
            serial_log.max_bytes.to_string().into(),
        );
    }
    if let Some(vsock) = &config.vsock {
        push("--vsock-uds", vsock.uds_path.clone().into());
        push("--guest-cid", vsock.guest_cid.to_string().into());
    }
    if let Some(fs) = &config.shared_fs {
        push("--shared-dir", fs.dir.clone().into());
        push("--shared-tag", fs.tag.clone().into());
        push(
            "--shared-max-open-files",
            fs.max_open_files.to_string().into(),
        );
    }
    if let Some(net) = &config.net {
        push("--net-tap-fd", net.tap_fd.to_string().into());
        push("--net-mac", format_mac(&net.mac).into());
        push("--net-mtu", net.mtu.to_string().into());
    }
    push("--seccomp", config.seccomp.as_str().into());
    args
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(flag: &'static str, value: &OsStr) -> Result<[u8; 6], ArgsError> {
    let invalid = || ArgsError::Invalid {
        flag,
        value: value.to_os_string(),
        reason: "not a MAC address (six hex bytes separated by colons)",
    };
    let text = value.to_str().ok_or_else(invalid)?;
    let bytes = text
        .split(':')
        .map(|part| {
            (part.len() == 2)
                .then(|| u8::from_str_radix(part, 16).ok())
                .flatten()
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    bytes.try_into().map_err(|_| invalid())
}

/// Parses the arguments after the subcommand. The limits
/// (`--serial-log-max-bytes`, `--shared-max-open-files`) and `--seccomp`
/// (`enforce`) default to the VMM's own defaults, so a VMM started by hand
/// needs only the rest.
pub fn parse(args: &[OsString]) -> Result<VmConfig, ArgsError> {
    let mut kernel = None;
    let mut initrd = None;
    let mut kernel_params = None;
    let mut vcpus = None;
    let mut memory_mib = None;
    let mut serial_log = None;
    let mut serial_log_max_bytes = None;
    let mut vsock_uds = None;
    let mut guest_cid = None;
    let mut shared_dir = None;
    let mut shared_tag = None;
    let mut shared_max_open_files = None;
    let mut net_tap_fd = None;
    let mut net_mac = None;
    let mut net_mtu = None;
    let mut seccomp = None;

    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let flag: &'static str = match arg.to_str() {
            Some("--kernel") => "--kernel",
            Some("--initrd") => "--initrd",
            Some("--kernel-params") => "--kernel-params",
            Some("--vcpus") => "--vcpus",
            Some("--memory-mib") => "--memory-mib",
            Some("--serial-log") => "--serial-log",
            Some("--serial-log-max-bytes") => "--serial-log-max-bytes",
            Some("--vsock-uds") => "--vsock-uds",
            Some("--guest-cid") => "--guest-cid",
            Some("--shared-dir") => "--shared-dir",
            Some("--shared-tag") => "--shared-tag",
            Some("--shared-max-open-files") => "--shared-max-open-files",
            Some("--net-tap-fd") => "--net-tap-fd",
            Some("--net-mac") => "--net-mac",
            Some("--net-mtu") => "--net-mtu",
            Some("--seccomp") => "--seccomp",
            _ => return Err(ArgsError::Unknown(arg.clone())),
        };
        let value = iter.next().ok_or(ArgsError::MissingValue(flag))?;
        match flag {
            "--kernel" => set(&mut kernel, flag, PathBuf::from(value))?,
            "--initrd" => set(&mut initrd, flag, PathBuf::from(value))?,
            "--kernel-params" => set(&mut kernel_params, flag, utf8(flag, value)?)?,
            "--vcpus" => set(&mut vcpus, flag, number::<u8>(flag, value)?)?,
            "--memory-mib" => set(&mut memory_mib, flag, number::<u32>(flag, value)?)?,
            "--serial-log" => set(&mut serial_log, flag, PathBuf::from(value))?,
            "--serial-log-max-bytes" => {
                set(&mut serial_log_max_bytes, flag, number::<u64>(flag, value)?)?
            }
            "--vsock-uds" => set(&mut vsock_uds, flag, PathBuf::from(value))?,
            "--shared-dir" => set(&mut shared_dir, flag, PathBuf::from(value))?,
            "--shared-tag" => set(&mut shared_tag, flag, utf8(flag, value)?)?,
            "--shared-max-open-files" => set(
                &mut shared_max_open_files,
                flag,
                number::<usize>(flag, value)?,
            )?,
            "--net-tap-fd" => set(&mut net_tap_fd, flag, number::<i32>(flag, value)?)?,
            "--net-mac" => set(&mut net_mac, flag, parse_mac(flag, value)?)?,
            "--net-mtu" => set(&mut net_mtu, flag, number::<u16>(flag, value)?)?,
            "--seccomp" => set(&mut seccomp, flag, seccomp_mode(flag, value)?)?,
            _ => set(&mut guest_cid, flag, number::<u64>(flag, value)?)?,
        }
    }

    let vcpus = vcpus.ok_or(ArgsError::Required("--vcpus"))?;
    if vcpus == 0 {
        return Err(ArgsError::Invalid {
            flag: "--vcpus",
            value: "0".into(),
            reason: "a VM needs at least one vCPU",
        });
    }
    // The two go together: a tag without a directory, or the reverse, is a
    // supervisor bug, not something to default.
    let shared_fs = match (shared_dir, shared_tag) {
        (Some(dir), Some(tag)) => Some(SharedFsConfig {
            tag,
            dir,
            max_open_files: positive(
                "--shared-max-open-files",
                shared_max_open_files.unwrap_or(DEFAULT_MAX_OPEN_FILES),
            )?,
        }),
        (None, None) if shared_max_open_files.is_some() => {
            return Err(ArgsError::Required("--shared-dir"))
        }
        (None, None) => None,
        (Some(_), None) => return Err(ArgsError::Required("--shared-tag")),
        (None, Some(_)) => return Err(ArgsError::Required("--shared-dir")),
    };
    // All three or none: a tap without its MAC or MTU is a supervisor bug.
    let net = match (net_tap_fd, net_mac, net_mtu) {
        (Some(tap_fd), Some(mac), Some(mtu)) => {
            if mtu < MIN_MTU {
                return Err(ArgsError::Invalid {
                    flag: "--net-mtu",
                    value: mtu.to_string().into(),
                    reason: "below IPv4's minimum MTU of 68",
                });
            }
            Some(NetConfig { tap_fd, mac, mtu })
        }
        (None, None, None) => None,
        (None, _, _) => return Err(ArgsError::Required("--net-tap-fd")),
        (_, None, _) => return Err(ArgsError::Required("--net-mac")),
        (_, _, None) => return Err(ArgsError::Required("--net-mtu")),
    };
    Ok(VmConfig {
        kernel: kernel.ok_or(ArgsError::Required("--kernel"))?,
        initrd,
        kernel_params: kernel_params.unwrap_or_default(),
        vcpus,
        memory_mib: memory_mib.ok_or(ArgsError::Required("--memory-mib"))?,
        serial_log: match (serial_log, serial_log_max_bytes) {
            (Some(path), max_bytes) => Some(SerialLogConfig {
                path,
                max_bytes: positive(
                    "--serial-log-max-bytes",
                    max_bytes.unwrap_or(DEFAULT_CONSOLE_LOG_MAX_BYTES),
                )?,
            }),
            (None, Some(_)) => return Err(ArgsError::Required("--serial-log")),
            (None, None) => None,
        },
        vsock: vsock_uds.map(|uds_path| VsockConfig {
            guest_cid: guest_cid.unwrap_or(GUEST_CID),
            uds_path,
        }),
        shared_fs,
        net,
        seccomp: seccomp.unwrap_or_default(),
    })
}

/// IPv4's minimum MTU (RFC 791); the guest kernel refuses less.
const MIN_MTU: u16 = 68;

fn seccomp_mode(flag: &'static str, value: &OsStr) -> Result<SeccompMode, ArgsError> {
    value
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ArgsError::Invalid {
            flag,
            value: value.to_owned(),
            reason: "not enforce, log or off",
        })
}

fn set<T>(slot: &mut Option<T>, flag: &'static str, value: T) -> Result<(), ArgsError> {
    if slot.is_some() {
        return Err(ArgsError::Duplicate(flag));
    }
    *slot = Some(value);
    Ok(())
}

/// A limit of zero would refuse everything: a supervisor bug.
fn positive<T: Default + PartialEq + ToString>(flag: &'static str, n: T) -> Result<T, ArgsError> {
    if n == T::default() {
        return Err(ArgsError::Invalid {
            flag,
            value: n.to_string().into(),
            reason: "must be at least 1",
        });
    }
    Ok(n)
}

fn utf8(flag: &'static str, value: &OsStr) -> Result<String, ArgsError> {
    value
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| ArgsError::Invalid {
            flag,
            value: value.to_owned(),
            reason: "not valid UTF-8",
        })
}

fn number<T: std::str::FromStr>(flag: &'static str, value: &OsStr) -> Result<T, ArgsError> {
    value
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ArgsError::Invalid {
            flag,
            value: value.to_owned(),
            reason: "not a number in range",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn sample() -> VmConfig {
        VmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            kernel_params: "quiet a=b".into(),
            vcpus: 2,
            memory_mib: 512,
            serial_log: Some(SerialLogConfig {
                path: "/run/palisade/x/console.log".into(),
                max_bytes: 65536,
            }),
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/run/palisade/x/vsock.sock".into(),
            }),
            shared_fs: Some(SharedFsConfig {
                tag: "palisade".into(),
                dir: "/run/palisade/x/shared".into(),
                max_open_files: 512,
            }),
            net: Some(NetConfig {
                tap_fd: 7,
                mac: [0x02, 0x42, 0xac, 0x11, 0x00, 0x0a],
                mtu: 1450,
            }),
            seccomp: SeccompMode::Log,
        }
    }

    #[test]
    fn round_trips() {
        let config = sample();
        assert_eq!(parse(&to_args(&config)), Ok(config));
        let minimal = VmConfig {
            initrd: None,
            kernel_params: String::new(),
            serial_log: None,
            vsock: None,
            shared_fs: None,
            net: None,
            ..sample()
        };
        assert_eq!(parse(&to_args(&minimal)), Ok(minimal));
    }

    #[test]
    fn shared_dir_and_tag_come_together() {
        let base = ["--kernel", "/k", "--vcpus", "1", "--memory-mib", "64"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&os(&v))
        };
        let config = with(&["--shared-tag", "t", "--shared-dir", "/s"]).expect("both");
        assert_eq!(
            config.shared_fs,
            Some(SharedFsConfig {
                tag: "t".into(),
                dir: "/s".into(),
                max_open_files: DEFAULT_MAX_OPEN_FILES,
            })
        );
        assert_eq!(
            with(&["--shared-dir", "/s"]),
            Err(ArgsError::Required("--shared-tag"))
        );
        assert_eq!(
            with(&["--shared-tag", "t"]),
            Err(ArgsError::Required("--shared-dir"))
        );
        assert_eq!(
            with(&["--shared-tag", "t", "--shared-tag", "u"]),
            Err(ArgsError::Duplicate("--shared-tag"))
        );
    }

    #[test]
    fn limits_default_to_the_vmms_and_need_what_they_limit() {
        let base = ["--kernel", "/k", "--vcpus", "1", "--memory-mib", "64"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&os(&v))
        };
        let config = with(&["--serial-log", "/c.log"]).expect("defaults");
        assert_eq!(
            config.serial_log,
            Some(SerialLogConfig {
                path: "/c.log".into(),
                max_bytes: DEFAULT_CONSOLE_LOG_MAX_BYTES,
            })
        );
        let config =
            with(&["--serial-log", "/c.log", "--serial-log-max-bytes", "4096"]).expect("given");
        assert_eq!(config.serial_log.map(|s| s.max_bytes), Some(4096));
        let config = with(&[
            "--shared-dir",
            "/s",
            "--shared-tag",
            "t",
            "--shared-max-open-files",
            "300",
        ])
        .expect("given");
        assert_eq!(config.shared_fs.map(|f| f.max_open_files), Some(300));
        assert_eq!(
            with(&["--serial-log-max-bytes", "4096"]),
            Err(ArgsError::Required("--serial-log"))
        );
        assert_eq!(
            with(&["--shared-max-open-files", "300"]),
            Err(ArgsError::Required("--shared-dir"))
        );
        for zero in [
            ["--serial-log", "/c.log", "--serial-log-max-bytes", "0"].as_slice(),
            &[
                "--shared-dir",
                "/s",
                "--shared-tag",
                "t",
                "--shared-max-open-files",
                "0",
            ],
        ] {
            assert!(
                matches!(with(zero), Err(ArgsError::Invalid { reason, .. }) if reason == "must be at least 1"),
                "{zero:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_command_lines() {
        let base = ["--kernel", "/k", "--vcpus", "1", "--memory-mib", "64"];
        assert!(parse(&os(&base)).is_ok());
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&os(&v))
        };
        assert_eq!(
            with(&["--bogus", "1"]),
            Err(ArgsError::Unknown("--bogus".into()))
        );
        assert_eq!(
            with(&["--initrd"]),
            Err(ArgsError::MissingValue("--initrd"))
        );
        assert_eq!(
            with(&["--vcpus", "2"]),
            Err(ArgsError::Duplicate("--vcpus"))
        );
        assert!(matches!(
            with(&["--guest-cid", "x"]),
            Err(ArgsError::Invalid { .. })
        ));
        assert!(matches!(
            with(&["--seccomp", "strict"]),
            Err(ArgsError::Invalid {
                flag: "--seccomp",
                ..
            })
        ));
        assert_eq!(
            with(&[]).map(|c| c.seccomp),
            Ok(SeccompMode::Enforce),
            "enforce unless told otherwise"
        );
        assert_eq!(
            parse(&os(&["--kernel", "/k", "--vcpus", "1"])),
            Err(ArgsError::Required("--memory-mib"))
        );
        assert!(matches!(
            parse(&os(&[
                "--kernel",
                "/k",
                "--vcpus",
                "0",
                "--memory-mib",
                "64"
            ])),
            Err(ArgsError::Invalid {
                flag: "--vcpus",
                ..
            })
        ));
        assert!(matches!(
            parse(&os(&[
                "--kernel",
                "/k",
                "--vcpus",
                "256",
                "--memory-mib",
                "64"
            ])),
            Err(ArgsError::Invalid {
                flag: "--vcpus",
                ..
            })
        ));
    }

    #[test]
    fn the_net_flags_come_together_and_are_checked() {
        let base = ["--kernel", "/k", "--vcpus", "1", "--memory-mib", "64"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&os(&v))
        };
        let net = [
            "--net-tap-fd",
            "5",
            "--net-mac",
            "02:00:0A:ff:00:01",
            "--net-mtu",
            "1500",
        ];
        assert_eq!(
            with(&net).expect("all three").net,
            Some(NetConfig {
                tap_fd: 5,
                mac: [0x02, 0x00, 0x0a, 0xff, 0x00, 0x01],
                mtu: 1500
            })
        );
        assert_eq!(with(&net[..4]), Err(ArgsError::Required("--net-mtu")));
        assert_eq!(with(&net[2..]), Err(ArgsError::Required("--net-tap-fd")));
        for bad in [
            "02:00:0a:ff:00",
            "02:00:0a:ff:00:01:02",
            "2:00:0a:ff:00:01",
            "zz:00:0a:ff:00:01",
        ] {
            let args = ["--net-tap-fd", "5", "--net-mac", bad, "--net-mtu", "1500"];
            assert!(
                matches!(
                    with(&args),
                    Err(ArgsError::Invalid {
                        flag: "--net-mac",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        let tiny = [
            "--net-tap-fd",
            "5",
            "--net-mac",
            "02:00:0a:ff:00:01",
            "--net-mtu",
            "67",
        ];
        assert!(matches!(
            with(&tiny),
            Err(ArgsError::Invalid {
                flag: "--net-mtu",
                ..
            })
        ));
    }
}
