//! virtio-vsock (device type 19) with the hybrid unix-socket backend.
//!
//! The device parses and bounds-checks every packet the guest puts on its
//! TX queue before the backend sees it, and writes packets for the guest
//! into RX buffers only within their checked size.

pub mod backend;
pub mod connection;
pub mod packet;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::backend::{BackendError, UnixBackend, CONN_ID_BASE, LISTENER_ID};
use self::packet::{Header, HEADER_LEN, MAX_PAYLOAD};
use super::{ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::event_loop::{EpollCtx, EventHandler};

pub const VIRTIO_ID_VSOCK: u32 = 19;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain is not in guest memory: {0}")]
    BadChain(String),
    #[error("packet of {0} bytes is shorter than a header")]
    TooShort(usize),
    #[error("payload length {0} exceeds the {MAX_PAYLOAD}-byte limit")]
    Oversized(u32),
    #[error("header says {claimed} payload bytes, the buffers hold {available}")]
    Truncated { claimed: u32, available: usize },
}

/// Reads one guest packet (header and payload, in one descriptor or
/// several) from a TX descriptor chain.
pub fn read_packet(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
) -> Result<(Header, Vec<u8>), PacketError> {
    let mut reader = chain
        .reader(mem)
        .map_err(|e| PacketError::BadChain(e.to_string()))?;
    let available = reader.available_bytes();
    if available < HEADER_LEN {
        return Err(PacketError::TooShort(available));
    }
    let mut raw = [0u8; HEADER_LEN];
    reader
        .read_exact(&mut raw)
        .map_err(|e| PacketError::BadChain(e.to_string()))?;
    let hdr = Header::parse(&raw);
    if hdr.len > MAX_PAYLOAD {
        return Err(PacketError::Oversized(hdr.len));
    }
    let available = reader.available_bytes();
    if hdr.len as usize > available {
        return Err(PacketError::Truncated {
            claimed: hdr.len,
            available,
        });
    }
    let mut payload = vec![0u8; hdr.len as usize];
    reader
        .read_exact(&mut payload)
        .map_err(|e| PacketError::BadChain(e.to_string()))?;
    Ok((hdr, payload))
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

pub struct Vsock {
    guest_cid: u64,
    queue_evts: Vec<EventFd>,
    backend: UnixBackend,
    active: Option<Active>,
}

impl Vsock {
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, BackendError> {
        let queue_evts = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| BackendError::Listen {
                path: uds_path.display().to_string(),
                source,
            })?;
        Ok(Vsock {
            guest_cid,
            queue_evts,
            backend: UnixBackend::new(guest_cid, uds_path)?,
            active: None,
        })
    }

    /// Takes every packet the guest queued for the host.
    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = a.queues[TX].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            match read_packet(&a.mem, chain) {
                Ok((hdr, payload)) => self.backend.on_guest_packet(&hdr, &payload),
                Err(e) => log::warn!("vsock: dropping a malformed guest packet: {e}"),
            }
            if let Err(e) = a.queues[TX].add_used(&a.mem, head, 0) {
                log::warn!("vsock: cannot return a TX buffer: {e}");
            }
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
    }

    /// Fills the guest's RX buffers with what the backend has for it.
    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while self.backend.has_pending() {
            let Some(chain) = a.queues[RX].pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let written = match chain.writer(&a.mem) {
                Ok(mut writer) if writer.available_bytes() >= HEADER_LEN => {
                    let max_payload = writer.available_bytes() - HEADER_LEN;
                    let mut written = None;
                    let produced = self.backend.produce(max_payload, |hdr, payload| {
                        let ok = writer
                            .write_all(&hdr.encode())
                            .and_then(|()| writer.write_all(payload));
                        written = Some(if ok.is_ok() {
                            HEADER_LEN + payload.len()
                        } else {
                            0
                        });
                    });
                    if !produced {
                        a.queues[RX].go_to_previous_position();
                        break;
                    }
                    written.unwrap_or(0)
                }
                Ok(_) => {
                    log::warn!("vsock: RX buffer smaller than a header, returned empty");
                    0
                }
                Err(e) => {
                    log::warn!("vsock: RX buffer not in guest memory: {e}");
                    0
                }
            };
            if let Err(e) = a.queues[RX].add_used(&a.mem, head, written as u32) {
                log::warn!("vsock: cannot return an RX buffer: {e}");
            }
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
    }

    pub fn connection_count(&self) -> usize {
        self.backend.connection_count()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        super::read_config_window(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        log::debug!("vsock: guest wrote to read-only config space");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        _features: u64,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        super::check_queues(&queues, &mem, 3)?;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        self.backend.set_active(true);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.backend.set_active(false);
    }
}

impl EventHandler for Vsock {
    fn init(&mut self, ctx: &EpollCtx) -> std::io::Result<()> {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            ctx.add(evt.as_raw_fd(), i as u32, EventSet::IN)?;
        }
        self.backend.init(ctx)
    }

    fn handle(&mut self, id: u32, events: EventSet, ctx: &EpollCtx) {
        match id {
            LISTENER_ID => self.backend.accept(),
            id if id >= CONN_ID_BASE => {
                self.backend
                    .conn_event(UnixBackend::conn_id(id), events, ctx)
            }
            id => {
                if let Some(evt) = self.queue_evts.get(id as usize) {
                    let _ = evt.read();
                }
                // RX: the guest added buffers, filled below. The event
                // queue only matters for live migration and is left alone.
                if id as usize == TX {
                    self.process_tx();
                }
            }
        }
        self.process_rx();
        self.backend.sync_interests(ctx);
    }
}

#[cfg(test)]
mod tests;
