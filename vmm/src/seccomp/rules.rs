//! Small builders for allowlists: a syscall with any arguments, or with one
//! of several argument patterns.

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::{Rules, SeccompError};

/// One argument test of a rule.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// Argument `index` (a 32-bit int, as the kernel reads it) equals `value`.
    Eq(u8, u64),
    /// Argument `index` (64 bits) has exactly `value` in the bits of `mask`.
    Masked(u8, u64, u64),
}

fn condition(arg: Arg) -> Result<SeccompCondition, SeccompError> {
    let (index, len, op, value) = match arg {
        Arg::Eq(index, value) => (index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value),
        Arg::Masked(index, mask, value) => (
            index,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            value,
        ),
    };
    SeccompCondition::new(index, len, op, value).map_err(|e| SeccompError::Rule(e.to_string()))
}

/// A rule matching when every test in `args` holds.
pub fn when(args: &[Arg]) -> Result<SeccompRule, SeccompError> {
    let conditions = args
        .iter()
        .map(|&a| condition(a))
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conditions).map_err(|e| SeccompError::Rule(e.to_string()))
}

/// Collects an allowlist.
#[derive(Default)]
pub struct Allow(Rules);

impl Allow {
    /// `syscalls` with any arguments.
    pub fn any(mut self, syscalls: &[libc::c_long]) -> Self {
        for &nr in syscalls {
            // An unconditional entry wins over any argument rules.
            self.0.insert(nr, Vec::new());
        }
        self
    }

    /// `syscall` when one of `rules` matches.
    pub fn with(mut self, syscall: libc::c_long, rules: Vec<SeccompRule>) -> Self {
        match self.0.get_mut(&syscall) {
            Some(existing) if existing.is_empty() => {}
            Some(existing) => existing.extend(rules),
            None => {
                self.0.insert(syscall, rules);
            }
        }
        self
    }

    /// `syscall` when argument `index` is one of `values`.
    pub fn with_arg_in(
        self,
        syscall: libc::c_long,
        index: u8,
        values: &[u64],
    ) -> Result<Self, SeccompError> {
        let rules = values
            .iter()
            .map(|&v| when(&[Arg::Eq(index, v)]))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.with(syscall, rules))
    }

    pub fn build(self) -> Rules {
        self.0
    }
}

/// Adds `more` to `into`; a syscall allowed unconditionally in either
/// stays so, otherwise the argument rules of both apply (either matches).
pub fn merge(into: &mut Rules, more: Rules) {
    for (nr, rules) in more {
        match into.get_mut(&nr) {
            Some(existing) if existing.is_empty() => {}
            Some(existing) if rules.is_empty() => existing.clear(),
            Some(existing) => existing.extend(rules),
            None => {
                into.insert(nr, rules);
            }
        }
    }
}
