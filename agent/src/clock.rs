//! The boot timeline, in CLOCK_BOOTTIME nanoseconds. In a guest that clock
//! starts with the kernel, so a reading is also "time since kernel start".

use std::sync::atomic::{AtomicU64, Ordering};

/// Reads CLOCK_BOOTTIME in nanoseconds (0 if the clock is unavailable, which
/// the timeline reports as "not reached" rather than failing boot over it).
pub fn boottime_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        Err(_) => 0,
    }
}

/// Milestones of agent start-up, shared with the RPC service that reports
/// them; written once each by main.
#[derive(Debug, Default)]
pub struct Timeline {
    agent_start_ns: AtomicU64,
    init_done_ns: AtomicU64,
    ready_ns: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSnapshot {
    pub agent_start_ns: u64,
    pub init_done_ns: u64,
    pub ready_ns: u64,
}

impl Timeline {
    pub fn new(agent_start_ns: u64) -> Self {
        Self {
            agent_start_ns: AtomicU64::new(agent_start_ns),
            ..Self::default()
        }
    }

    pub fn mark_init_done(&self) -> u64 {
        Self::mark(&self.init_done_ns)
    }

    pub fn mark_ready(&self) -> u64 {
        Self::mark(&self.ready_ns)
    }

    fn mark(slot: &AtomicU64) -> u64 {
        let now = boottime_ns();
        slot.store(now, Ordering::Relaxed);
        now
    }

    pub fn snapshot(&self) -> TimelineSnapshot {
        TimelineSnapshot {
            agent_start_ns: self.agent_start_ns.load(Ordering::Relaxed),
            init_done_ns: self.init_done_ns.load(Ordering::Relaxed),
            ready_ns: self.ready_ns.load(Ordering::Relaxed),
        }
    }
}

/// Microseconds from `from` to `to`, for log lines.
pub fn micros_between(from: u64, to: u64) -> u64 {
    to.saturating_sub(from) / 1_000
}
