//! virtio-net (device type 1): one RX/TX queue pair on a tap.
//!
//! The guest's frames pass through with their `virtio_net_hdr_v1`, so
//! checksum offload and TSO go to the host kernel both ways (the tap has
//! `IFF_VNET_HDR`): the guest sends 64 KiB segments and the host kernel
//! (or the NIC) cuts them. Merged RX buffers let the guest post small
//! buffers and still receive 64 KiB frames.
//!
//! Served by the device event loop like vsock: the queue kicks and the
//! tap's readiness are events on it. A frame from the tap that finds no
//! RX buffer waits in the device, and the tap is not polled again until
//! the guest adds buffers, so a guest that stops reading only stops its
//! own traffic. Interrupts are raised once per batch, and a batch is
//! bounded so one busy queue cannot starve the other devices.

pub mod frame;
pub mod tap;

use std::os::fd::AsRawFd;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::frame::{read_tx_frame, write_rx_frame, RxOutcome, MAX_FRAME_LEN};
use self::tap::{NetBackend, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use super::{ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::event_loop::{EpollCtx, EventHandler};

pub const VIRTIO_ID_NET: u32 = 1;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Event ids on the event loop: the two queue kicks, then the tap.
const TAP_ID: u32 = 2;
/// Frames handled per event before the loop serves others.
const BATCH: usize = 256;

/// The device's fixed configuration, from the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetParams {
    pub mac: [u8; 6],
    /// The pod interface's MTU, told to the guest (VIRTIO_NET_F_MTU).
    pub mtu: u16,
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Interrupt,
    mergeable: bool,
}

/// Counters for what the device refused or dropped; logged, and kept for
/// tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    pub tx_frames: u64,
    pub rx_frames: u64,
    pub tx_malformed: u64,
    pub tx_dropped: u64,
    pub rx_dropped: u64,
}

pub struct Net<B: NetBackend> {
    params: NetParams,
    backend: B,
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
    /// The length of a frame in `rx_buf`, read from the tap, that found no
    /// RX buffer yet.
    pending: Option<usize>,
    /// Whether the tap is polled for input: not while a frame waits.
    tap_polled: bool,
    stats: NetStats,
    /// Offloads to set on the tap, from the features the driver accepted.
    /// Activation runs on a vCPU thread (an MMIO write), whose seccomp
    /// filter allows no tap ioctl: the event loop sets them on its next
    /// event, before it moves a frame.
    offloads_wanted: Option<u32>,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
}

impl<B: NetBackend> Net<B> {
    pub fn new(params: NetParams, backend: B) -> std::io::Result<Self> {
        let queue_evts = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Net {
            params,
            backend,
            queue_evts,
            active: None,
            pending: None,
            tap_polled: true,
            stats: NetStats::default(),
            offloads_wanted: None,
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN),
            rx_buf: vec![0; MAX_FRAME_LEN],
        })
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn config_bytes(&self) -> [u8; 12] {
        // struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu.
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.params.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.params.mtu.to_le_bytes());
        c
    }

    /// Sends every frame the guest queued, up to a batch.
    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        for _ in 0..BATCH {
            let Some(chain) = a.queues[TX].pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            match read_tx_frame(&a.mem, chain, &mut self.tx_buf) {
                Ok(()) => match self.backend.write_frame(&self.tx_buf) {
                    Ok(_) => self.stats.tx_frames += 1,
                    // The tap's queue is full or the interface is down: a
                    // real NIC drops too, and TCP resends.
                    Err(e) => {
                        self.stats.tx_dropped += 1;
                        log::debug!("virtio-net: tap refused a frame: {e}");
                    }
                },
                Err(e) => {
                    self.stats.tx_malformed += 1;
                    log::warn!("virtio-net: dropping a malformed guest frame: {e}");
                }
            }
            if let Err(e) = a.queues[TX].add_used(&a.mem, head, 0) {
                log::warn!("virtio-net: cannot return a TX buffer: {e}");
            }
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
    }

    /// Moves frames from the tap into the guest's RX buffers, up to a
    /// batch; stops polling the tap when the guest has no room.
    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut delivered = false;
        for _ in 0..BATCH {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(n) if n >= frame::VNET_HDR_LEN => n,
                    Ok(0) => break,
                    Ok(n) => {
                        log::warn!("virtio-net: a {n}-byte read from the tap, dropped");
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::warn!("virtio-net: reading the tap: {e}");
                        break;
                    }
                },
            };
            let frame = &self.rx_buf[..len];
            match write_rx_frame(&a.mem, &mut a.queues[RX], frame, a.mergeable) {
                RxOutcome::Delivered(_) => {
                    self.stats.rx_frames += 1;
                    delivered = true;
                }
                RxOutcome::NoBuffers => {
                    self.pending = Some(len);
                    break;
                }
                RxOutcome::Dropped(reason) => {
                    self.stats.rx_dropped += 1;
                    delivered = true;
                    log::warn!("virtio-net: dropped a frame for the guest: {reason}");
                }
            }
        }
        if delivered {
            a.interrupt.signal_used_queue();
        }
    }

    fn sync_tap_polling(&mut self, ctx: &EpollCtx) {
        let want = self.pending.is_none();
        if want != self.tap_polled {
            let events = if want {
                EventSet::IN
            } else {
                EventSet::empty()
            };
            match ctx.modify(self.backend.as_raw_fd(), TAP_ID, events) {
                Ok(()) => self.tap_polled = want,
                Err(e) => log::warn!("virtio-net: cannot change polling of the tap: {e}"),
            }
        }
    }
}

/// The TUN_F_* offloads matching the RX features the guest accepted.
fn tun_offloads(features: u64) -> u32 {
    let has = |bit: u32| features & (1u64 << bit) != 0;
    let mut flags = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= TUN_F_CSUM;
        // TSO without checksum offload is meaningless to the kernel.
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= TUN_F_TSO6;
        }
    }
    flags
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_STATUS,
        ]
        .iter()
        .fold(0u64, |acc, bit| acc | (1u64 << bit))
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        super::read_config_window(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is the pod's (the CNI interface's): not the guest's to change.
        log::debug!("virtio-net: guest wrote to read-only config space");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        features: u64,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        super::check_queues(&queues, &mem, 2)?;
        self.offloads_wanted = Some(tun_offloads(features));
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
            mergeable: features & (1u64 << VIRTIO_NET_F_MRG_RXBUF) != 0,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
        self.offloads_wanted = None;
    }
}

impl<B: NetBackend> EventHandler for Net<B> {
    fn init(&mut self, ctx: &EpollCtx) -> std::io::Result<()> {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            ctx.add(evt.as_raw_fd(), i as u32, EventSet::IN)?;
        }
        ctx.add(self.backend.as_raw_fd(), TAP_ID, EventSet::IN)?;
        self.tap_polled = true;
        Ok(())
    }

    fn handle(&mut self, id: u32, _events: EventSet, ctx: &EpollCtx) {
        if let Some(flags) = self.offloads_wanted.take() {
            if let Err(e) = self.backend.set_offloads(flags) {
                // Without them the kernel hands over only plain frames,
                // which every driver takes: slower, still correct.
                log::warn!("virtio-net: cannot set the tap's offloads: {e}");
            }
        }
        if let Some(evt) = self.queue_evts.get(id as usize) {
            let _ = evt.read();
        }
        if id as usize == TX {
            self.process_tx();
        }
        // Any event may have made room (RX kick) or brought frames (tap):
        // and before activation frames are left in the tap.
        if self.active.is_some() {
            self.process_rx();
        } else if id == TAP_ID {
            // Not yet activated: drain what arrived so the tap does not
            // keep waking the loop; a NIC without a driver drops too.
            while self
                .backend
                .read_frame(&mut self.rx_buf)
                .is_ok_and(|n| n > 0)
            {}
        }
        self.sync_tap_polling(ctx);
    }
}

#[cfg(test)]
mod tests;
