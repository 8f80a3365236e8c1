//! The net device against mock guest memory and a seqpacket socket pair
//! standing in for the tap (one frame per message, like a tap's reads and
//! writes): a fake guest driver puts buffers on the queues, the real event
//! loop does the rest.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::frame::{MAX_FRAME_LEN, VNET_HDR_LEN};
use super::tap::NetBackend;
use super::*;
use crate::devices::bus::lock;
use crate::devices::virtio::Interrupt;
use crate::event_loop::EventLoop;

const QSIZE: u16 = 64;
const MAC: [u8; 6] = [0x02, 0x50, 0x41, 0x4c, 0x49, 0x01];

/// The host end of a seqpacket pair; the test holds the other end.
struct FakeTap {
    end: OwnedFd,
    offloads: Arc<Mutex<Option<u32>>>,
}

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.end.as_raw_fd()
    }
}

impl NetBackend for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        rustix::io::read(&self.end, buf).map_err(io::Error::from)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        rustix::io::write(&self.end, frame).map_err(io::Error::from)
    }
    fn set_offloads(&mut self, tun_flags: u32) -> io::Result<()> {
        *self.offloads.lock().expect("offloads") = Some(tun_flags);
        Ok(())
    }
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    // Room for a few maximal frames each way.
    for fd in [&a, &b] {
        rustix::net::sockopt::set_socket_send_buffer_size(fd, 4 * MAX_FRAME_LEN).expect("sndbuf");
    }
    (a, b)
}

/// A fake guest driver: RX and TX queues in 4 MiB of guest memory.
struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    rx_next_desc: u16,
    rx_seen: u16,
    tx_next_desc: u16,
    buf_next: u64,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        Guest {
            mem,
            rx: MockSplitQueue::create(mem, GuestAddress(0), QSIZE),
            tx: MockSplitQueue::create(mem, GuestAddress(0x1_0000), QSIZE),
            rx_next_desc: 0,
            rx_seen: 0,
            tx_next_desc: 0,
            buf_next: 0x4_0000,
        }
    }

    fn queues(&self) -> Vec<Queue> {
        vec![
            self.rx.create_queue().expect("rx"),
            self.tx.create_queue().expect("tx"),
        ]
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.buf_next;
        self.buf_next += u64::from(len).max(64);
        assert!(self.buf_next < 0x40_0000, "test guest memory exhausted");
        addr
    }

    fn chain(q: &mut MockSplitQueue<GuestMemoryMmap>, next: &mut u16, descs: &[SplitDescriptor]) {
        let base = *next % QSIZE;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let flags = if i + 1 == descs.len() {
                    d.flags()
                } else {
                    d.flags() | VRING_DESC_F_NEXT as u16
                };
                RawDescriptor::from(SplitDescriptor::new(
                    d.addr().0,
                    d.len(),
                    flags,
                    base + i as u16 + 1,
                ))
            })
            .collect();
        q.add_desc_chains(&raw, base).expect("desc chain");
        *next += descs.len() as u16;
    }

    /// `n` RX buffers of `len` bytes, one descriptor each.
    fn give_rx(&mut self, n: u16, len: u32) {
        for _ in 0..n {
            let addr = self.alloc(len);
            let d = SplitDescriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0);
            Self::chain(&mut self.rx, &mut self.rx_next_desc, &[d]);
        }
    }

    /// Sends `bytes` as one TX chain, split into descriptors of `piece`.
    fn send(&mut self, bytes: &[u8], piece: usize) {
        let addr = self.alloc(bytes.len() as u32);
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("write frame");
        let descs: Vec<SplitDescriptor> = (0..bytes.len())
            .step_by(piece)
            .map(|off| {
                let len = piece.min(bytes.len() - off) as u32;
                SplitDescriptor::new(addr + off as u64, len, 0, 0)
            })
            .collect();
        Self::chain(&mut self.tx, &mut self.tx_next_desc, &descs);
    }

    fn send_descs(&mut self, descs: &[SplitDescriptor]) {
        Self::chain(&mut self.tx, &mut self.tx_next_desc, descs);
    }

    /// The used RX elements since the last call: (buffer bytes, used len).
    fn take_rx(&mut self) -> Vec<(Vec<u8>, u32)> {
        let mut out = Vec::new();
        let used_idx = self.rx.used().idx().load();
        while self.rx_seen != used_idx {
            let elem = self
                .rx
                .used()
                .ring()
                .ref_at((self.rx_seen % QSIZE) as usize)
                .expect("used")
                .load();
            let desc =
                SplitDescriptor::from(self.rx.desc_table().load(elem.id() as u16).expect("desc"));
            let mut data = vec![0u8; elem.len() as usize];
            self.mem
                .read_slice(&mut data, desc.addr())
                .expect("read rx");
            out.push((data, elem.len()));
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        out
    }

    fn tx_used(&self) -> u16 {
        self.tx.used().idx().load()
    }
}

struct Rig {
    net: Arc<Mutex<Net<FakeTap>>>,
    peer: OwnedFd,
    offloads: Arc<Mutex<Option<u32>>>,
    event_loop: EventLoop,
    irq: Interrupt,
}

impl Rig {
    fn new(mem: &GuestMemoryMmap, guest: &Guest, features: u64) -> Rig {
        let (host, peer) = seqpacket_pair();
        let offloads = Arc::new(Mutex::new(None));
        let tap = FakeTap {
            end: host,
            offloads: offloads.clone(),
        };
        let net = Arc::new(Mutex::new(
            Net::new(
                NetParams {
                    mac: MAC,
                    mtu: 1500,
                },
                tap,
            )
            .expect("net"),
        ));
        let mut event_loop = EventLoop::new().expect("loop");
        event_loop.add_handler(net.clone()).expect("handler");
        let irq = Interrupt::new(EventFd::new(0).expect("irq"));
        lock(&net)
            .activate(mem.clone(), guest.queues(), features, irq.clone())
            .expect("activate");
        Rig {
            net,
            peer,
            offloads,
            event_loop,
            irq,
        }
    }

    fn notify(&self, queue: usize) {
        lock(&self.net).queue_evts[queue].write(1).expect("notify");
    }

    fn pump(&mut self) {
        for _ in 0..5 {
            self.event_loop.run_once(10).expect("run");
        }
    }

    /// A frame from "the host network", as the tap would deliver it.
    fn host_sends(&self, frame: &[u8]) {
        rustix::io::write(&self.peer, frame).expect("host send");
    }

    fn host_receives(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
        match rustix::io::read(&self.peer, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(_) => None,
        }
    }

    fn stats(&self) -> NetStats {
        lock(&self.net).stats()
    }
}

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("guest memory")
}

const ALL: u64 = u64::MAX;

/// A frame with a vnet header (flags and gso as given, num_buffers 0) and
/// `len` bytes of patterned payload.
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM: passed through untouched
    f.extend((0..len).map(|i| (i * 7 % 251) as u8));
    f
}

#[test]
fn the_config_space_has_the_mac_link_up_and_the_mtu() {
    let (host, _peer) = seqpacket_pair();
    let net = Net::new(
        NetParams {
            mac: MAC,
            mtu: 1450,
        },
        FakeTap {
            end: host,
            offloads: Default::default(),
        },
    )
    .expect("net");
    let mut c = [0u8; 12];
    net.read_config(0, &mut c);
    assert_eq!(&c[..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1450);
    // Out of range reads are zero, not a panic.
    let mut far = [0xffu8; 4];
    net.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
    let f = net.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_HOST_TSO4,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
    }
}

#[test]
fn guest_offloads_map_to_tun_flags() {
    let bit = |b: u32| 1u64 << b;
    assert_eq!(tun_offloads(0), 0);
    // TSO without checksum offload means nothing to the kernel.
    assert_eq!(tun_offloads(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
    assert_eq!(
        tun_offloads(
            bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_GUEST_TSO4)
                | bit(VIRTIO_NET_F_GUEST_TSO6)
        ),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    );
}

#[test]
fn the_event_loop_sets_the_offloads_the_guest_accepted() {
    let mem = guest_memory();
    let guest = Guest::new(&mem);
    let features = (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_GUEST_CSUM);
    let mut rig = Rig::new(&mem, &guest, features);
    // Set by the event loop (activation runs on a vCPU thread).
    assert_eq!(*rig.offloads.lock().expect("offloads"), None);
    rig.notify(RX);
    rig.pump();
    assert_eq!(*rig.offloads.lock().expect("offloads"), Some(TUN_F_CSUM));
}

#[test]
fn tx_frames_reach_the_tap_whole_in_one_or_many_descriptors() {
    let mem = guest_memory();
    let mut guest = Guest::new(&mem);
    let mut rig = Rig::new(&mem, &guest, ALL);
    let small = frame(60);
    let gso = frame(65535);
    guest.send(&small, small.len());
    guest.send(&gso, 4096);
    rig.notify(TX);
    rig.pump();
    assert_eq!(rig.host_receives().as_deref(), Some(&small[..]));
    assert_eq!(rig.host_receives().as_deref(), Some(&gso[..]));
    assert_eq!(guest.tx_used(), 2);
    assert_ne!(rig.irq.status() & crate::devices::virtio::INT_USED_RING, 0);
    assert_eq!(rig.stats().tx_frames, 2);
}

#[test]
fn malformed_tx_chains_are_dropped_and_returned() {
    let mem = guest_memory();
    let mut guest = Guest::new(&mem);
    let mut rig = Rig::new(&mem, &guest, ALL);
    // Shorter than a header.
    guest.send(&[0u8; VNET_HDR_LEN - 1], 64);
    // Longer than any frame (the buffer's bytes are whatever is there).
    let addr = guest.alloc(MAX_FRAME_LEN as u32 + 1);
    guest.send_descs(&[SplitDescriptor::new(addr, MAX_FRAME_LEN as u32 + 1, 0, 0)]);
    // A device-writable buffer in a TX chain.
    let addr = guest.alloc(64);
    guest.send_descs(&[
        SplitDescriptor::new(addr, 32, 0, 0),
        SplitDescriptor::new(addr + 32, 32, VRING_DESC_F_WRITE as u16, 0),
    ]);
    // A buffer outside guest memory.
    guest.send_descs(&[SplitDescriptor::new(1 << 40, 128, 0, 0)]);
    rig.notify(TX);
    rig.pump();
    assert_eq!(
        rig.host_receives(),
        None,
        "nothing malformed reaches the tap"
    );
    assert_eq!(guest.tx_used(), 4, "every chain is given back");
    assert_eq!(rig.stats().tx_malformed, 4);
    // The device still works.
    let ok = frame(100);
    guest.send(&ok, 50);
    rig.notify(TX);
    rig.pump();
    assert_eq!(rig.host_receives().as_deref(), Some(&ok[..]));
}

#[test]
fn a_large_rx_frame_spans_merged_buffers_with_num_buffers_set() {
    let mem = guest_memory();
    let mut guest = Guest::new(&mem);
    let mut rig = Rig::new(&mem, &guest, ALL);
    guest.give_rx(8, 1526);
    rig.notify(RX);
    let f = frame(4000);
    rig.host_sends(&f);
    rig.pump();
    let used = guest.take_rx();
    assert_eq!(used.len(), 3, "4012 bytes in 1526-byte buffers");
    let mut joined: Vec<u8> = used.iter().flat_map(|(d, _)| d.clone()).collect();
    assert_eq!(
        u16::from_le_bytes([joined[10], joined[11]]),
        3,
        "num_buffers"
    );
    joined[10..12].copy_from_slice(&[0, 0]);
    assert_eq!(joined, f);
    assert_eq!(rig.stats().rx_frames, 1);
}

#[test]
fn without_merged_buffers_a_frame_too_big_for_its_buffer_is_dropped() {
    let mem = guest_memory();
    let mut guest = Guest::new(&mem);
    let features = ALL & !(1u64 << VIRTIO_NET_F_MRG_RXBUF);
    let mut rig = Rig::new(&mem, &guest, features);
    guest.give_rx(2, 1526);
    rig.notify(RX);
    rig.host_sends(&frame(4000));
    let fits = frame(1000);
    rig.host_sends(&fits);
    rig.pump();
    let used = guest.take_rx();
    assert_eq!(used.len(), 2);
    assert_eq!(used[0].1, 0, "the dropped frame's buffer comes back empty");
    let mut got = used[1].0.clone();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    got[10..12].copy_from_slice(&[0, 0]);
    assert_eq!(got, fits);
    assert_eq!(rig.stats().rx_dropped, 1);
}

#[test]
fn a_frame_waits_for_rx_buffers_and_the_tap_is_not_polled_meanwhile() {
    let mem = guest_memory();
    let mut guest = Guest::new(&mem);
    let mut rig = Rig::new(&mem, &guest, ALL);
    // 3000 bytes, one 1526-byte buffer: not enough, nothing is consumed.
    guest.give_rx(1, 1526);
    let first = frame(3000);
    let second = frame(200);
    rig.host_sends(&first);
    rig.host_sends(&second);
    rig.pump();
    assert!(guest.take_rx().is_empty(), "no partial frame is published");
    assert!(
        !lock(&rig.net).tap_polled,
        "the tap is not polled while a frame waits"
    );
    // The guest adds buffers and kicks: both frames arrive, in order.
    guest.give_rx(4, 1526);
    rig.notify(RX);
    rig.pump();
    let used = guest.take_rx();
    assert_eq!(
        used.len(),
        3,
        "2 buffers for the first frame, 1 for the second"
    );
    let mut joined: Vec<u8> = used[..2].iter().flat_map(|(d, _)| d.clone()).collect();
    joined[10..12].copy_from_slice(&[0, 0]);
    assert_eq!(joined, first);
    assert!(
        lock(&rig.net).tap_polled,
        "polled again once the frame went"
    );
}

#[test]
fn rx_chains_with_readable_or_tiny_buffers_drop_the_frame_not_the_device() {
    let mem = guest_memory();
    let mut guest = Guest::new(&mem);
    let mut rig = Rig::new(&mem, &guest, ALL);
    // A driver-to-device buffer on the RX queue.
    let addr = guest.alloc(2048);
    Guest::chain(
        &mut guest.rx,
        &mut guest.rx_next_desc,
        &[SplitDescriptor::new(addr, 2048, 0, 0)],
    );
    // A first buffer smaller than the header.
    let addr = guest.alloc(64);
    Guest::chain(
        &mut guest.rx,
        &mut guest.rx_next_desc,
        &[SplitDescriptor::new(addr, 8, VRING_DESC_F_WRITE as u16, 0)],
    );
    guest.give_rx(1, 2048);
    rig.notify(RX);
    for _ in 0..3 {
        rig.host_sends(&frame(100));
    }
    rig.pump();
    let used = guest.take_rx();
    assert_eq!(
        used.iter().map(|u| u.1).collect::<Vec<_>>(),
        vec![0, 0, 112]
    );
    assert_eq!(rig.stats().rx_dropped, 2);
}

#[test]
fn before_activation_and_after_reset_nothing_is_touched() {
    let (host, peer) = seqpacket_pair();
    let net = Arc::new(Mutex::new(
        Net::new(
            NetParams {
                mac: MAC,
                mtu: 1500,
            },
            FakeTap {
                end: host,
                offloads: Default::default(),
            },
        )
        .expect("net"),
    ));
    let mut event_loop = EventLoop::new().expect("loop");
    event_loop.add_handler(net.clone()).expect("handler");
    rustix::io::write(&peer, &frame(10)).expect("send");
    for _ in 0..3 {
        event_loop.run_once(10).expect("run");
    }
    // The frame was drained (a NIC with no driver drops), no panic.
    let mut buf = [0u8; 64];
    assert!(rustix::io::read(&peer, &mut buf).is_err());
    lock(&net).reset();
    assert!(lock(&net).pending.is_none());
}

#[test]
fn a_flood_is_served_in_bounded_batches() {
    let mem = guest_memory();
    let mut guest = Guest::new(&mem);
    let mut rig = Rig::new(&mem, &guest, ALL);
    for _ in 0..40 {
        guest.send(&frame(64), 128);
    }
    rig.notify(TX);
    rig.event_loop.run_once(10).expect("run");
    assert_eq!(guest.tx_used(), 40);
    let mut n = 0;
    while rig.host_receives().is_some() {
        n += 1;
    }
    assert_eq!(n, 40);
}
