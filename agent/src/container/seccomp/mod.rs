//! Compiles an OCI seccomp profile (`linux.seccomp`) to BPF programs with
//! seccompiler, in pure Rust: libseccomp would need libseccomp.a in every
//! build of the static agent.
//!
//! seccompiler gives each filter one action for all its rules, while an OCI
//! profile has one per rule. So the profile becomes a stack of filters, one
//! per distinct action plus one for the default action, and the kernel runs
//! them all and takes the most severe answer (KILL > TRAP > ERRNO > TRACE >
//! LOG > ALLOW):
//!
//! - the default filter answers ALLOW for every syscall any rule matches and
//!   the default action for everything else;
//! - the filter for action A answers A for the rules with action A and ALLOW
//!   otherwise.
//!
//! A syscall no rule matches gets the default action; one a rule matches
//! gets that rule's action (or, if rules with different actions match, the
//! most severe of them, which is what libseccomp does with such conflicts
//! too). Filters with the same precedence never both answer for one call
//! unless a profile lists one syscall under two ERRNO values, where the
//! kernel returns the errno of the filter installed last.
//!
//! Deliberate differences from runc + libseccomp:
//! - syscalls of other architectures (32-bit x86 on x86_64) are killed:
//!   seccompiler's filters check the architecture and know only the native
//!   one;
//! - like runc, syscall names this kernel does not know are skipped, so
//!   profiles written for newer kernels still load.

mod syscalls;

use std::collections::BTreeMap;

use super::oci::{Seccomp, SeccompAction as OciAction, SeccompArg, SeccompOp, Syscall};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The default errno of SCMP_ACT_ERRNO and SCMP_ACT_TRACE without `errnoRet`.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("linux.seccomp: action {0} is not supported (no seccomp notify listener in the guest); use ERRNO, KILL, TRAP, TRACE, LOG or ALLOW")]
    UnsupportedAction(String),
    #[error("linux.seccomp: listenerPath is not supported (no seccomp notify in the guest)")]
    Listener,
    #[error("linux.seccomp: flag {0} is not supported")]
    UnsupportedFlag(String),
    #[error("linux.seccomp.architectures {listed:?} does not include this guest's architecture ({native})")]
    Architecture {
        listed: Vec<String>,
        native: &'static str,
    },
    #[error("linux.seccomp.syscalls[{rule}]: argument index {index} is out of range (a syscall has 6 arguments, 0-5)")]
    ArgIndex { rule: usize, index: usize },
    #[error("linux.seccomp.syscalls[{rule}]: has no syscall names")]
    NoNames { rule: usize },
    #[error("linux.seccomp: compiling the filter: {0}")]
    Compile(String),
    #[error("linux.seccomp: this agent was built for an architecture seccompiler does not support ({0})")]
    NativeArch(&'static str),
}

/// One BPF instruction, in a form that crosses to the container's init
/// process (as JSON) and back to `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Insn(pub u16, pub u8, pub u8, pub u32);

/// The compiled profile: filters to install in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    pub filters: Vec<Vec<Insn>>,
}

/// Looks up a syscall number by name for the architecture the agent runs on.
pub fn syscall_number(name: &str) -> Option<i64> {
    syscalls::SYSCALLS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| syscalls::SYSCALLS[i].1)
}

/// seccompiler's target and libseccomp's name for the agent's architecture.
fn native_arch() -> Result<(TargetArch, &'static str), SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok((TargetArch::x86_64, "SCMP_ARCH_X86_64")),
        "aarch64" => Ok((TargetArch::aarch64, "SCMP_ARCH_AARCH64")),
        other => Err(SeccompError::NativeArch(other)),
    }
}

fn action(action: OciAction, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match action {
        OciAction::Allow => SeccompAction::Allow,
        OciAction::Errno => SeccompAction::Errno(errno.unwrap_or(DEFAULT_ERRNO)),
        // libseccomp's SCMP_ACT_KILL is KILL_THREAD.
        OciAction::Kill | OciAction::KillThread => SeccompAction::KillThread,
        OciAction::KillProcess => SeccompAction::KillProcess,
        OciAction::Trap => SeccompAction::Trap,
        OciAction::Trace => SeccompAction::Trace(errno.unwrap_or(DEFAULT_ERRNO)),
        OciAction::Log => SeccompAction::Log,
        OciAction::Notify => return Err(SeccompError::UnsupportedAction("SCMP_ACT_NOTIFY".into())),
    })
}

/// A seccompiler action is not Ord/Hash; this key groups rules by action.
fn action_key(a: &SeccompAction) -> u32 {
    u32::from(a.clone())
}

fn condition(rule: usize, arg: &SeccompArg) -> Result<SeccompCondition, SeccompError> {
    let index = arg.index;
    let index_u8 = u8::try_from(index)
        .ok()
        .filter(|i| *i <= 5)
        .ok_or(SeccompError::ArgIndex { rule, index })?;
    let (op, value) = match arg.op {
        SeccompOp::Ne => (SeccompCmpOp::Ne, arg.value),
        SeccompOp::Lt => (SeccompCmpOp::Lt, arg.value),
        SeccompOp::Le => (SeccompCmpOp::Le, arg.value),
        SeccompOp::Eq => (SeccompCmpOp::Eq, arg.value),
        SeccompOp::Ge => (SeccompCmpOp::Ge, arg.value),
        SeccompOp::Gt => (SeccompCmpOp::Gt, arg.value),
        // libseccomp: (arg & value) == valueTwo. The runtime spec's Go
        // type drops a zero valueTwo (`omitempty`), so containerd's default
        // profile says `(clone flags & CLONE_NEW*) == 0` with no valueTwo:
        // missing is 0, as it is for runc.
        SeccompOp::MaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value),
            arg.value_two.unwrap_or(0),
        ),
    };
    // libseccomp compares all 64 bits.
    SeccompCondition::new(index_u8, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| SeccompError::Compile(e.to_string()))
}

/// The rules of one OCI syscall entry (empty: match unconditionally).
///
/// Conditions are ANDed, except that several on the same argument become
/// separate rules (ORed): that is how runc feeds libseccomp, which cannot
/// AND two comparisons of one argument, and so what profiles mean.
fn rules(index: usize, entry: &Syscall) -> Result<Vec<SeccompRule>, SeccompError> {
    let args = &entry.args;
    if args.is_empty() {
        return Ok(Vec::new());
    }
    let conditions = args
        .iter()
        .map(|a| condition(index, a))
        .collect::<Result<Vec<_>, _>>()?;
    // Indexes are 0-5 here: condition() checked them.
    let mut seen = [false; 6];
    let repeated = args
        .iter()
        .any(|a| std::mem::replace(&mut seen[a.index], true));
    let groups = if repeated {
        conditions.into_iter().map(|c| vec![c]).collect()
    } else {
        vec![conditions]
    };
    groups
        .into_iter()
        .map(|g| SeccompRule::new(g).map_err(|e| SeccompError::Compile(e.to_string())))
        .collect()
}

type RuleMap = BTreeMap<i64, Vec<SeccompRule>>;

/// Adds `rules` for `nr` to `map`. An unconditional entry matches every
/// call, so it absorbs any conditional rules for the same syscall (and an
/// empty rule list means "unconditional" to seccompiler).
fn add_rules(map: &mut RuleMap, nr: i64, rules: &[SeccompRule]) {
    match map.get_mut(&nr) {
        Some(existing) if existing.is_empty() => {}
        Some(_) if rules.is_empty() => {
            map.insert(nr, Vec::new());
        }
        Some(existing) => existing.extend_from_slice(rules),
        None => {
            map.insert(nr, rules.to_vec());
        }
    }
}

/// Checks the parts of a profile that do not depend on the syscall table.
fn check_profile(profile: &Seccomp, native: &str) -> Result<(), SeccompError> {
    if profile.listener_path.is_some() {
        return Err(SeccompError::Listener);
    }
    for flag in &profile.flags {
        // One thread at filter time: TSYNC changes nothing.
        if flag != "SECCOMP_FILTER_FLAG_TSYNC" {
            return Err(SeccompError::UnsupportedFlag(flag.clone()));
        }
    }
    let archs = &profile.architectures;
    if !archs.is_empty() && !archs.iter().any(|a| a == native || a == "SCMP_ARCH_NATIVE") {
        return Err(SeccompError::Architecture {
            listed: archs.clone(),
            native: std::env::consts::ARCH,
        });
    }
    Ok(())
}

/// Compiles `profile` for the architecture the agent runs on.
pub fn compile(profile: &Seccomp) -> Result<Program, SeccompError> {
    let (target, native) = native_arch()?;
    check_profile(profile, native)?;
    let default = action(profile.default_action, profile.default_errno_ret)?;

    // Everything any rule matches (for the default filter), and the rules
    // per action (for the action filters).
    let mut matched = RuleMap::new();
    let mut by_action: BTreeMap<u32, (SeccompAction, RuleMap)> = BTreeMap::new();
    for (i, entry) in profile.syscalls.iter().enumerate() {
        if entry.names.is_empty() {
            return Err(SeccompError::NoNames { rule: i });
        }
        let act = action(entry.action, entry.errno_ret)?;
        let rules = rules(i, entry)?;
        for name in &entry.names {
            let Some(nr) = syscall_number(name) else {
                log::debug!("seccomp: skipping syscall {name:?}, unknown on this architecture");
                continue;
            };
            add_rules(&mut matched, nr, &rules);
            if act != default {
                let slot = by_action
                    .entry(action_key(&act))
                    .or_insert_with(|| (act.clone(), RuleMap::new()));
                add_rules(&mut slot.1, nr, &rules);
            }
        }
    }

    let mut filters = Vec::new();
    if default != SeccompAction::Allow {
        filters.push(build(matched, default, SeccompAction::Allow, target)?);
    }
    for (_, (act, map)) in by_action {
        if act != SeccompAction::Allow && !map.is_empty() {
            filters.push(build(map, SeccompAction::Allow, act, target)?);
        }
    }
    Ok(Program { filters })
}

fn build(
    rules: RuleMap,
    mismatch: SeccompAction,
    on_match: SeccompAction,
    arch: TargetArch,
) -> Result<Vec<Insn>, SeccompError> {
    let filter = SeccompFilter::new(rules, mismatch, on_match, arch)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    let bpf: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
    Ok(bpf
        .into_iter()
        .map(|f| Insn(f.code, f.jt, f.jf, f.k))
        .collect())
}

/// Installs the filters on the calling thread. Unlike seccompiler's
/// `apply_filter` this does not set no_new_privs: the spec decides that,
/// and without it the caller needs CAP_SYS_ADMIN.
pub fn install(program: &Program) -> std::io::Result<()> {
    for filter in &program.filters {
        let insns: Vec<libc::sock_filter> = filter
            .iter()
            .map(|i| libc::sock_filter {
                code: i.0,
                jt: i.1,
                jf: i.2,
                k: i.3,
            })
            .collect();
        let len = u16::try_from(insns.len())
            .map_err(|_| std::io::Error::other("seccomp filter longer than 65535 instructions"))?;
        let prog = libc::sock_fprog {
            len,
            filter: insns.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `insns`, which outlives the call; the
        // kernel copies the program.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> Seccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn syscall_table_is_sorted_and_knows_common_calls() {
        assert!(syscalls::SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscall_number("read"), Some(libc::SYS_read));
        assert_eq!(syscall_number("clone3"), Some(libc::SYS_clone3));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn default_errno_profile_has_a_default_filter_only() {
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","write","bogus_call"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap();
        assert_eq!(p.filters.len(), 1);
        assert!(!p.filters[0].is_empty());
    }

    #[test]
    fn allow_by_default_with_errno_rules_has_one_action_filter() {
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                {"names":["personality"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .unwrap();
        assert_eq!(p.filters.len(), 1);
    }

    #[test]
    fn distinct_actions_get_their_own_filters() {
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"syscalls":[
                {"names":["read"],"action":"SCMP_ACT_ALLOW"},
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                {"names":["reboot"],"action":"SCMP_ACT_KILL_PROCESS"},
                {"names":["getpid"],"action":"SCMP_ACT_LOG"}]}"#,
        ))
        .unwrap();
        // Default, ERRNO(1), KILL_PROCESS, LOG.
        assert_eq!(p.filters.len(), 4);
    }

    #[test]
    fn rejects_what_cannot_be_enforced() {
        let err = |json: &str| compile(&profile(json)).unwrap_err();
        assert_eq!(
            err(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#),
            SeccompError::UnsupportedAction("SCMP_ACT_NOTIFY".into())
        );
        assert_eq!(
            err(r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock"}"#),
            SeccompError::Listener
        );
        assert!(matches!(
            err(r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"]}"#),
            SeccompError::UnsupportedFlag(_)
        ));
        assert!(matches!(
            err(r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_S390X"]}"#),
            SeccompError::Architecture { .. }
        ));
        assert_eq!(
            err(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#
            ),
            SeccompError::ArgIndex { rule: 0, index: 6 }
        );
        assert_eq!(
            err(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":[],"action":"SCMP_ACT_ERRNO"}]}"#
            ),
            SeccompError::NoNames { rule: 0 }
        );
    }

    /// The profile `ctr run --seccomp` (containerd 1.6.20) puts in the
    /// spec, as it reached runc: it must compile as it is.
    #[test]
    fn containerds_default_profile_compiles() {
        let profile: Seccomp =
            serde_json::from_str(include_str!("testdata/containerd-1.6-default.json"))
                .expect("parse");
        let masked = profile
            .syscalls
            .iter()
            .flat_map(|s| &s.args)
            .find(|a| matches!(a.op, SeccompOp::MaskedEq))
            .expect("the clone rule");
        assert_eq!(masked.value_two, None, "the fixture has no valueTwo");
        compile(&profile).expect("compile");
    }

    #[test]
    fn unknown_actions_and_operators_fail_to_parse() {
        assert!(serde_json::from_str::<Seccomp>(r#"{"defaultAction":"SCMP_ACT_MAYBE"}"#).is_err());
        assert!(serde_json::from_str::<Seccomp>(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":0,"op":"SCMP_CMP_ALMOST"}]}]}"#
        )
        .is_err());
    }

    #[test]
    fn repeated_argument_conditions_are_ored() {
        let entry: Syscall = serde_json::from_str(
            r#"{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[
                {"index":0,"value":0,"op":"SCMP_CMP_EQ"},{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}"#,
        )
        .unwrap();
        assert_eq!(rules(0, &entry).unwrap().len(), 2);
        let entry: Syscall = serde_json::from_str(
            r#"{"names":["socket"],"action":"SCMP_ACT_ALLOW","args":[
                {"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":1,"value":8,"op":"SCMP_CMP_NE"}]}"#,
        )
        .unwrap();
        assert_eq!(rules(0, &entry).unwrap().len(), 1);
    }

    #[test]
    fn unconditional_entry_absorbs_conditional_rules() {
        let cond = SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::Eq,
            1,
        )
        .unwrap()])
        .unwrap();
        let mut map = RuleMap::new();
        add_rules(&mut map, 1, std::slice::from_ref(&cond));
        add_rules(&mut map, 1, &[]);
        add_rules(&mut map, 1, std::slice::from_ref(&cond));
        assert_eq!(map[&1], Vec::<SeccompRule>::new());
    }

    // Installs a compiled filter for real, on a thread of its own: filters
    // and no_new_privs are per thread, so the rest of the test binary is
    // untouched. ERRNO(1) on mkdir, everything else allowed.
    #[test]
    fn installed_filter_enforces_the_profile() {
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdirat","mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        ))
        .unwrap();
        let dir = std::env::temp_dir().join(format!("palisade-seccomp-{}", std::process::id()));
        let probe = dir.clone();
        let result = std::thread::spawn(move || {
            // SAFETY: prctl with constant arguments.
            assert_eq!(
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
                0
            );
            install(&p).unwrap();
            std::fs::create_dir(&probe).map_err(|e| e.raw_os_error())
        })
        .join()
        .unwrap();
        assert_eq!(result, Err(Some(libc::EPERM)));
        assert!(!dir.exists());
        // The filter stayed on its thread.
        std::fs::create_dir(&dir).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }
}
