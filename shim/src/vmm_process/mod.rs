//! The VMM runs in a process of its own, never inside the shim: the shim
//! re-executes its own binary with the hidden `__vmm` subcommand
//! ([`child`]), and supervises that process ([`VmmProcess`]) through a line
//! protocol on its stdout ([`protocol`]).

pub mod args;
pub mod child;
mod log_record;
pub mod protocol;
mod supervisor;

pub use args::{GUEST_CID, VMM_SUBCOMMAND};
pub use protocol::VmmMessage;
pub use supervisor::{
    describe_status, BootSignalAt, Progress, StopWatch, VmmProcess, VmmProcessError, VmmTermination,
};
