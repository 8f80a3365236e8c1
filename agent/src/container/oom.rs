//! OOM kills of any process in a container, as they happen: one thread
//! waits on inotify for changes to the containers' `memory.events` (the
//! kernel notifies on every change), and each change re-reads the
//! `oom_kill` count. Exits of tracked processes also check the count (see
//! `Container::check_oom`), so an OOM kill is reported before the exit it
//! caused even if this thread is late.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use log::{debug, warn};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::events::Events;
use super::Container;

pub struct OomWatcher {
    inotify: Inotify,
    watches: Mutex<HashMap<WatchDescriptor, Weak<Container>>>,
}

impl OomWatcher {
    /// Starts the watching thread; None (with a warning) if inotify is
    /// unavailable, in which case OOM kills are still seen at exits.
    pub fn start(events: Arc<Events>) -> Option<Arc<Self>> {
        let inotify = match Inotify::init(InitFlags::IN_CLOEXEC) {
            Ok(i) => i,
            Err(e) => {
                warn!("inotify: {e}; OOM kills are reported only with the exits they cause");
                return None;
            }
        };
        let watcher = Arc::new(Self {
            inotify,
            watches: Mutex::new(HashMap::new()),
        });
        let w = watcher.clone();
        let spawned = std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || w.run(&events));
        if let Err(e) = spawned {
            warn!("starting the OOM watcher: {e}");
            return None;
        }
        Some(watcher)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WatchDescriptor, Weak<Container>>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches the container's memory.events (if it has a cgroup with the
    /// memory controller). The watch goes when the cgroup is removed.
    pub fn watch(&self, container: &Arc<Container>) {
        let Some(cg) = &container.cgroup else { return };
        let file = cg.memory_events_path();
        if !file.exists() {
            return;
        }
        match self.inotify.add_watch(&file, AddWatchFlags::IN_MODIFY) {
            Ok(wd) => {
                self.lock().insert(wd, Arc::downgrade(container));
            }
            Err(e) => warn!(
                "container {}: watching {}: {e}",
                container.id,
                file.display()
            ),
        }
    }

    fn run(&self, events: &Events) {
        loop {
            let batch = match self.inotify.read_events() {
                Ok(b) => b,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("OOM watcher: {e}; stopping");
                    return;
                }
            };
            for ev in batch {
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // The cgroup (and with it the watch) is gone.
                    self.lock().remove(&ev.wd);
                    continue;
                }
                let container = self.lock().get(&ev.wd).and_then(Weak::upgrade);
                match container {
                    Some(c) => c.check_oom(events),
                    None => debug!("OOM watcher: event for a removed container"),
                }
            }
        }
    }
}
