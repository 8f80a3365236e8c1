//! x86_64 specifics: memory layout, boot protocol, CPU state, MP table.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
