//! Errors of the task service as containerd sees them: a ttrpc status code
//! (containerd turns NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, ... into
//! its own error kinds) and one message that names the problem and the fix.

use containerd_shim::protos::ttrpc::{self, Code};

use crate::agent_client::AgentError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub code: Code,
    pub message: String,
}

impl TaskError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        TaskError {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(Code::NOT_FOUND, format!("{what}: not found"))
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FAILED_PRECONDITION, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::INVALID_ARGUMENT, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::INTERNAL, message)
    }

    /// Any error, with its whole cause chain, as an internal error.
    pub fn from_error(context: &str, error: &dyn std::error::Error) -> Self {
        Self::internal(format!("{context}: {}", crate::error_chain(error)))
    }

    /// An agent call that failed: the agent's own status code and words
    /// pass through; a lost connection means the pod's VM is gone.
    pub fn from_agent(context: &str, error: &AgentError) -> Self {
        if error.is_disconnect() {
            return Self::new(
                Code::UNAVAILABLE,
                format!(
                    "{context}: the pod's VM is not answering (it stopped or crashed): {}",
                    error.message()
                ),
            );
        }
        match error.code() {
            Some(code) => Self::new(code, format!("{context}: {}", error.message())),
            None => Self::internal(format!("{context}: {}", error.message())),
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code, e.message))
    }
}

pub type TaskResult<T> = Result<T, TaskError>;
