//! The hybrid unix-socket backend (the Firecracker / Cloud Hypervisor
//! convention): host clients connect to one listening socket and ask for a
//! guest port with `CONNECT <port>\n`, answered `OK <host port>\n`; guest
//! connections to host port P go to the unix socket `<path>_P`.
//!
//! Only the guest's packets arrive here (parsed by the device); this module
//! never touches guest memory.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::EventSet;

use super::connection::{ConnectLine, Connection, State};
use super::packet::*;
use crate::event_loop::EpollCtx;

/// Epoll id of the listening socket; connection ids start at [`CONN_ID_BASE`].
pub const LISTENER_ID: u32 = 3;
pub const CONN_ID_BASE: u32 = 16;

/// Most simultaneous connections per VM: a bound on what one pod can make
/// the VMM hold.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most control packets queued for a guest that does not drain its RX
/// queue; beyond this new ones are dropped.
const MAX_CONTROL_PACKETS: usize = 4096;
/// Host ports for host-initiated connections start here, far from the
/// ports services listen on.
const FIRST_EPHEMERAL_PORT: u32 = 1 << 30;
/// Connection ids stay below this so `CONN_ID_BASE + id` fits an epoll id.
const MAX_CONN_ID: u32 = u32::MAX - CONN_ID_BASE;

struct HostConn {
    conn: Connection<UnixStream>,
    registered: Option<EventSet>,
    /// The host peer hung up: no longer polled, drained to end of file.
    hung_up: bool,
}

pub struct UnixBackend {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<u32, HostConn>,
    by_ports: HashMap<(u32, u32), u32>,
    next_id: u32,
    next_host_port: u32,
    control: VecDeque<Header>,
    ready: VecDeque<u32>,
    dirty: Vec<u32>,
    active: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot listen on vsock socket {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket: refusing to replace it")]
    NotASocket { path: String },
}

impl UnixBackend {
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, BackendError> {
        let shown = uds_path.display().to_string();
        // A socket left by a VMM that died can be replaced; anything else
        // at that path is someone else's file.
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(BackendError::NotASocket { path: shown });
            }
            let _ = std::fs::remove_file(uds_path);
        }
        let listener = UnixListener::bind(uds_path).map_err(|source| BackendError::Listen {
            path: shown.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| BackendError::Listen {
                path: shown,
                source,
            })?;
        Ok(UnixBackend {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            by_ports: HashMap::new(),
            next_id: 0,
            next_host_port: FIRST_EPHEMERAL_PORT,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            active: false,
        })
    }

    pub fn init(&self, ctx: &EpollCtx) -> std::io::Result<()> {
        ctx.add(self.listener.as_raw_fd(), LISTENER_ID, EventSet::IN)
    }

    /// The guest driver is (or is no longer) ready for connections.
    pub fn set_active(&mut self, active: bool) {
        self.active = active;
        if !active {
            self.conns.clear();
            self.by_ports.clear();
            self.control.clear();
            self.ready.clear();
            self.dirty.clear();
        }
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Accepts host clients. Before the guest driver is up there is nobody
    /// to connect to, so clients are closed at once and retry.
    pub fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("vsock: accept failed: {e}");
                    return;
                }
            };
            if !self.active
                || self.conns.len() >= MAX_CONNECTIONS
                || stream.set_nonblocking(true).is_err()
            {
                continue;
            }
            let conn = Connection::new(
                stream,
                State::AwaitingConnectLine(Vec::new()),
                0,
                0,
                self.guest_cid,
            );
            self.insert(conn);
        }
    }

    fn insert(&mut self, conn: Connection<UnixStream>) -> u32 {
        let mut id = self.next_id;
        while self.conns.contains_key(&id) {
            id = (id + 1) % MAX_CONN_ID;
        }
        self.next_id = (id + 1) % MAX_CONN_ID;
        if conn.state != State::AwaitingConnectLine(Vec::new()) {
            self.by_ports.insert((conn.host_port, conn.guest_port), id);
        }
        self.conns.insert(
            id,
            HostConn {
                conn,
                registered: None,
                hung_up: false,
            },
        );
        self.dirty.push(id);
        id
    }

    fn remove(&mut self, id: u32) {
        if let Some(hc) = self.conns.remove(&id) {
            self.by_ports
                .remove(&(hc.conn.host_port, hc.conn.guest_port));
        }
    }

    fn push_control(&mut self, hdr: Header) {
        if self.control.len() >= MAX_CONTROL_PACKETS {
            log::warn!("vsock: guest is not draining its RX queue; dropping a control packet");
            return;
        }
        self.control.push_back(hdr);
    }

    /// Tells the guest the connection is gone and forgets it.
    fn reset(&mut self, id: u32) {
        if let Some(hc) = self.conns.get_mut(&id) {
            if !matches!(hc.conn.state, State::AwaitingConnectLine(_)) {
                let hdr = hc.conn.header(OP_RST, 0, 0);
                self.push_control(hdr);
            }
        }
        self.remove(id);
    }

    fn alloc_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_EPHEMERAL_PORT);
            if !self.by_ports.contains_key(&(port, guest_port)) {
                return port;
            }
        }
    }

    /// Readiness of a host connection's socket.
    pub fn conn_event(&mut self, id: u32, events: EventSet, ctx: &EpollCtx) {
        let Some(hc) = self.conns.get_mut(&id) else {
            return;
        };
        self.dirty.push(id);
        match hc.conn.state {
            State::AwaitingConnectLine(_) => match hc.conn.read_connect_line() {
                Ok(ConnectLine::Partial) => {}
                Ok(ConnectLine::Port(guest_port)) => {
                    let host_port = self.alloc_host_port(guest_port);
                    let Some(hc) = self.conns.get_mut(&id) else {
                        return;
                    };
                    hc.conn.host_port = host_port;
                    hc.conn.guest_port = guest_port;
                    hc.conn.state = State::Connecting;
                    let hdr = hc.conn.header(OP_REQUEST, 0, 0);
                    self.by_ports.insert((host_port, guest_port), id);
                    self.push_control(hdr);
                }
                Err(e) => {
                    log::debug!("vsock: host client dropped: {e}");
                    self.remove(id);
                }
            },
            State::Connecting => {
                if events.intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP) {
                    self.reset(id);
                }
            }
            State::Established => {
                if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    if hc.conn.guest_closed {
                        // Both sides are done; the rest cannot be delivered.
                        self.reset(id);
                        return;
                    }
                    // Whatever it sent is still readable; drain it without
                    // polling a socket that will report hang-up for ever.
                    let _ = ctx.remove(hc.conn.stream.as_raw_fd());
                    hc.hung_up = true;
                    hc.registered = None;
                }
                if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
                    && !hc.conn.in_ready
                {
                    hc.conn.in_ready = true;
                    self.ready.push_back(id);
                }
                if events.contains(EventSet::OUT) && !hc.hung_up {
                    self.flush(id);
                }
            }
            State::Closing => {}
        }
    }

    fn flush(&mut self, id: u32) {
        let Some(hc) = self.conns.get_mut(&id) else {
            return;
        };
        if hc.conn.flush_to_host().is_err() {
            self.reset(id);
            return;
        }
        if hc.conn.guest_finished_sending() {
            let _ = hc.conn.stream.shutdown(Shutdown::Write);
            if hc.conn.guest_closed {
                self.reset(id);
                return;
            }
        }
        if hc.conn.needs_credit_update() && !hc.conn.guest_closed {
            let hdr = hc.conn.header(OP_CREDIT_UPDATE, 0, 0);
            self.push_control(hdr);
        }
    }

    /// A packet the guest sent on its TX queue.
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            log::debug!(
                "vsock: dropping packet with addresses {}->{}",
                hdr.src_cid,
                hdr.dst_cid
            );
            return;
        }
        let id = self.by_ports.get(&(hdr.dst_port, hdr.src_port)).copied();
        if hdr.type_ != TYPE_STREAM || (id.is_none() && hdr.op != OP_REQUEST) {
            if hdr.op != OP_RST {
                self.push_control(self.reply_rst(hdr));
            }
            return;
        }
        let Some(id) = id else {
            self.connect_to_host(hdr);
            return;
        };
        let Some(hc) = self.conns.get_mut(&id) else {
            return;
        };
        hc.conn.update_peer_credit(hdr);
        // A hung-up host socket is not polled: its remaining bytes are read
        // when the guest has credit for them, which may be now.
        if hc.hung_up && hc.conn.wants_host_read() && !hc.conn.in_ready {
            hc.conn.in_ready = true;
            self.ready.push_back(id);
        }
        self.dirty.push(id);
        match (hdr.op, &hc.conn.state) {
            (OP_RESPONSE, State::Connecting) => {
                hc.conn.state = State::Established;
                let line = format!("OK {}\n", hc.conn.host_port);
                // The client is waiting for exactly this line with an empty
                // socket buffer: a short write means it is broken.
                if !matches!(hc.conn.stream.write(line.as_bytes()), Ok(n) if n == line.len()) {
                    self.reset(id);
                }
            }
            (OP_RW, State::Established) => {
                if hc.hung_up {
                    return; // nobody left to deliver to
                }
                if let Err(e) = hc.conn.recv_from_guest(payload) {
                    log::debug!("vsock: resetting connection: {e}");
                    self.reset(id);
                    return;
                }
                if hc.conn.needs_credit_update() {
                    let hdr = hc.conn.header(OP_CREDIT_UPDATE, 0, 0);
                    self.push_control(hdr);
                }
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => {
                let hdr = hc.conn.header(OP_CREDIT_UPDATE, 0, 0);
                self.push_control(hdr);
            }
            (OP_SHUTDOWN, _)
                if hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND =>
            {
                // The guest closed its socket and waits for our RST. What it
                // sent before is ours to deliver: a host client reading
                // slower than the guest wrote still gets every byte (the
                // agent closes a process's output streams as soon as it has
                // written them), so the RST waits for the last one.
                if hc.conn.guest_shutdown_send().is_err() {
                    self.reset(id);
                } else if hc.conn.guest_finished_sending() {
                    let _ = hc.conn.stream.shutdown(Shutdown::Write);
                    self.reset(id);
                } else if hc.hung_up {
                    // Nobody left to deliver to.
                    self.reset(id);
                } else {
                    hc.conn.guest_closed = true;
                }
            }
            (OP_SHUTDOWN, _) => {
                if hdr.flags & SHUTDOWN_SEND != 0
                    && hc.conn.guest_shutdown_send().is_ok()
                    && hc.conn.guest_finished_sending()
                {
                    let _ = hc.conn.stream.shutdown(Shutdown::Write);
                }
            }
            (OP_RST, _) => self.remove(id),
            _ => self.reset(id),
        }
    }

    fn reply_rst(&self, hdr: &Header) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        }
    }

    /// The guest connects to host port P: connect to `<path>_P`.
    fn connect_to_host(&mut self, hdr: &Header) {
        let path = format!("{}_{}", self.uds_path.display(), hdr.dst_port);
        let stream = match (self.conns.len() < MAX_CONNECTIONS).then(|| connect_nonblocking(&path))
        {
            Some(Ok(s)) => s,
            _ => {
                self.push_control(self.reply_rst(hdr));
                return;
            }
        };
        let mut conn = Connection::new(
            stream,
            State::Established,
            hdr.dst_port,
            hdr.src_port,
            self.guest_cid,
        );
        conn.update_peer_credit(hdr);
        let response = conn.header(OP_RESPONSE, 0, 0);
        self.insert(conn);
        self.push_control(response);
    }

    pub fn has_pending(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Produces the next packet for the guest, with at most `max_payload`
    /// payload bytes, by calling `emit` once; false if there is none.
    pub fn produce(&mut self, max_payload: usize, emit: impl FnOnce(&Header, &[u8])) -> bool {
        if let Some(hdr) = self.control.pop_front() {
            emit(&hdr, &[]);
            return true;
        }
        while let Some(id) = self.ready.pop_front() {
            let Some(hc) = self.conns.get_mut(&id) else {
                continue;
            };
            hc.conn.in_ready = false;
            self.dirty.push(id);
            if hc.conn.state != State::Established {
                continue;
            }
            match hc.conn.fill_staging() {
                Err(e) => {
                    log::debug!("vsock: host stream failed: {e}");
                    self.reset(id);
                    if let Some(hdr) = self.control.pop_front() {
                        emit(&hdr, &[]);
                        return true;
                    }
                }
                Ok(false) if hc.conn.host_eof => {
                    let hdr = hc.conn.header(OP_SHUTDOWN, 0, SHUTDOWN_RCV | SHUTDOWN_SEND);
                    hc.conn.state = State::Closing;
                    emit(&hdr, &[]);
                    return true;
                }
                Ok(false) => {}
                Ok(true) => {
                    let n = hc.conn.staged(max_payload.min(MAX_PAYLOAD as usize)).len();
                    let hdr = hc.conn.header(OP_RW, n as u32, 0);
                    emit(&hdr, hc.conn.staged(n));
                    hc.conn.consume_staged(n);
                    // More may be waiting; come back to it after the others.
                    hc.conn.in_ready = true;
                    self.ready.push_back(id);
                    return true;
                }
            }
        }
        false
    }

    /// Brings each touched connection's epoll interest up to date.
    pub fn sync_interests(&mut self, ctx: &EpollCtx) {
        for id in std::mem::take(&mut self.dirty) {
            let Some(hc) = self.conns.get_mut(&id) else {
                continue;
            };
            if hc.hung_up {
                continue;
            }
            let fd = hc.conn.stream.as_raw_fd();
            let wanted = match hc.conn.state {
                State::AwaitingConnectLine(_) => EventSet::IN,
                State::Connecting => EventSet::empty(),
                State::Established => {
                    let mut e = EventSet::empty();
                    if hc.conn.wants_host_read() && !hc.conn.in_ready {
                        e |= EventSet::IN;
                    }
                    if hc.conn.has_bytes_for_host() {
                        e |= EventSet::OUT;
                    }
                    e
                }
                State::Closing => {
                    if hc.registered.take().is_some() {
                        let _ = ctx.remove(fd);
                    }
                    continue;
                }
            };
            let result = match hc.registered {
                None => ctx.add(fd, CONN_ID_BASE + id, wanted),
                Some(current) if current != wanted => ctx.modify(fd, CONN_ID_BASE + id, wanted),
                Some(_) => Ok(()),
            };
            match result {
                Ok(()) => hc.registered = Some(wanted),
                Err(e) => {
                    log::warn!("vsock: cannot poll connection: {e}");
                    self.reset(id);
                }
            }
        }
    }

    /// Epoll id → connection id.
    pub fn conn_id(epoll_id: u32) -> u32 {
        epoll_id - CONN_ID_BASE
    }
}

impl Drop for UnixBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Connects to a unix socket without blocking: a listener with a full
/// backlog must not stall the VMM's event loop.
fn connect_nonblocking(path: &str) -> std::io::Result<UnixStream> {
    let addr = std::os::unix::net::SocketAddr::from_pathname(path)?;
    // SAFETY: plain socket(2); the fd is owned by the UnixStream below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = addr
        .as_pathname()
        .map(|p| p.as_os_str().as_encoded_bytes())
        .unwrap_or_default();
    if bytes.len() >= sun.sun_path.len() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: sun is a valid sockaddr_un of the given length.
    let rc = unsafe {
        libc::connect(
            fd,
            &sun as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}
