//! The queue GetEvents long-polls: process exits and OOM kills, numbered so
//! the shim acknowledges by sequence and a lost reply loses no event.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::process::ExitInfo;

/// Events kept for a shim that is not reading; older ones are dropped
/// (with a warning) so a guest without a shim cannot grow without bound.
const CAPACITY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Exited { exec_id: String, exit: ExitInfo },
    OomKilled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub sequence: u64,
    pub container_id: String,
    pub kind: EventKind,
}

#[derive(Default)]
struct Inner {
    last: u64,
    queue: VecDeque<Event>,
}

#[derive(Default)]
pub struct Events {
    inner: Mutex<Inner>,
    added: Condvar,
}

impl Events {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, container_id: &str, kind: EventKind) {
        let mut inner = self.lock();
        inner.last += 1;
        let sequence = inner.last;
        if inner.queue.len() == CAPACITY {
            if let Some(old) = inner.queue.pop_front() {
                log::warn!("event queue full; dropped event {}", old.sequence);
            }
        }
        inner.queue.push_back(Event {
            sequence,
            container_id: container_id.to_string(),
            kind,
        });
        self.added.notify_all();
    }

    /// Drops events up to `after`, then returns those after it (at most
    /// `max`, 0 = all), waiting up to `timeout` for the first.
    pub fn fetch(&self, after: u64, max: usize, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        while inner.queue.front().is_some_and(|e| e.sequence <= after) {
            inner.queue.pop_front();
        }
        while inner.queue.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return Vec::new();
            }
            inner = self
                .added
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let n = if max == 0 {
            inner.queue.len()
        } else {
            max.min(inner.queue.len())
        };
        inner.queue.iter().take(n).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn events_stay_until_acknowledged() {
        let ev = Events::new();
        ev.push("a", EventKind::OomKilled);
        ev.push("b", EventKind::OomKilled);
        let got = ev.fetch(0, 0, Duration::ZERO);
        assert_eq!(got.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2]);
        // Not acknowledged: returned again.
        assert_eq!(ev.fetch(0, 1, Duration::ZERO).len(), 1);
        let got = ev.fetch(1, 0, Duration::ZERO);
        assert_eq!(got[0].container_id, "b");
        assert!(ev.fetch(2, 0, Duration::ZERO).is_empty());
    }

    #[test]
    fn fetch_waits_for_the_next_event() {
        let ev = Arc::new(Events::new());
        let pusher = ev.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            pusher.push("a", EventKind::OomKilled);
        });
        let got = ev.fetch(0, 0, Duration::from_secs(10));
        assert_eq!(got.len(), 1);
        t.join().unwrap();
        let start = Instant::now();
        assert!(ev.fetch(1, 0, Duration::from_millis(20)).is_empty());
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let ev = Events::new();
        for _ in 0..CAPACITY + 2 {
            ev.push("a", EventKind::OomKilled);
        }
        let got = ev.fetch(0, 0, Duration::ZERO);
        assert_eq!(got.len(), CAPACITY);
        assert_eq!(got[0].sequence, 3);
    }
}
