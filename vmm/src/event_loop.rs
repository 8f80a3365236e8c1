//! The VMM's event thread: one epoll set shared by the devices that own
//! host file descriptors (queue ioeventfds, sockets).

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::devices::bus::lock;

/// Lets a handler add, change and remove its own file descriptors. `id` is
/// the handler's own name for the descriptor, handed back on events.
pub struct EpollCtx<'a> {
    epoll: &'a Epoll,
    handler: u32,
}

impl EpollCtx<'_> {
    fn data(&self, id: u32) -> u64 {
        (u64::from(self.handler) << 32) | u64::from(id)
    }

    pub fn add(&self, fd: RawFd, id: u32, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, self.data(id)),
        )
    }

    pub fn modify(&self, fd: RawFd, id: u32, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, self.data(id)),
        )
    }

    pub fn remove(&self, fd: RawFd) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

pub trait EventHandler: Send {
    /// Registers the handler's initial descriptors.
    fn init(&mut self, ctx: &EpollCtx) -> std::io::Result<()>;
    /// Handles readiness of descriptor `id`.
    fn handle(&mut self, id: u32, events: EventSet, ctx: &EpollCtx);
}

/// What a [`EventLoop::run_once`] round saw that concerns the loop's owner.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// One of the owner's descriptors (registered with [`EventLoop::watch`]) fired.
    Owner(u32),
}

const OWNER: u32 = u32::MAX;

pub struct EventLoop {
    epoll: Epoll,
    handlers: Vec<Arc<Mutex<dyn EventHandler>>>,
    events: Vec<EpollEvent>,
}

impl EventLoop {
    pub fn new() -> std::io::Result<Self> {
        Ok(EventLoop {
            epoll: Epoll::new()?,
            handlers: Vec::new(),
            events: vec![EpollEvent::default(); 64],
        })
    }

    pub fn add_handler(&mut self, handler: Arc<Mutex<dyn EventHandler>>) -> std::io::Result<()> {
        let ctx = EpollCtx {
            epoll: &self.epoll,
            handler: self.handlers.len() as u32,
        };
        lock(&handler).init(&ctx)?;
        self.handlers.push(handler);
        Ok(())
    }

    /// Watches one of the owner's own descriptors (exit event, signals).
    pub fn watch(&self, fd: RawFd, id: u32) -> std::io::Result<()> {
        EpollCtx {
            epoll: &self.epoll,
            handler: OWNER,
        }
        .add(fd, id, EventSet::IN)
    }

    /// Waits for events (up to `timeout_ms`, -1 for ever) and dispatches them.
    pub fn run_once(&mut self, timeout_ms: i32) -> std::io::Result<Control> {
        let n = match self.epoll.wait(timeout_ms, &mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(Control::Continue),
            Err(e) => return Err(e),
        };
        let mut control = Control::Continue;
        for event in &self.events[..n] {
            let handler = (event.data() >> 32) as u32;
            let id = event.data() as u32;
            if handler == OWNER {
                control = Control::Owner(id);
                continue;
            }
            if let Some(h) = self.handlers.get(handler as usize) {
                let ctx = EpollCtx {
                    epoll: &self.epoll,
                    handler,
                };
                lock(h).handle(id, event.event_set(), &ctx);
            }
        }
        Ok(control)
    }
}
