//! The vsock device against mock guest memory: a fake guest driver puts
//! buffers on the queues, the real event loop and unix sockets do the rest.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::packet::*;
use super::*;
use crate::devices::bus::lock;
use crate::devices::virtio::Interrupt;
use crate::event_loop::EventLoop;

const QSIZE: u16 = 16;
const GUEST_CID: u64 = 3;
const BUF_SIZE: u32 = 4096;

fn scratch_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("palisade-vsock-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A fake guest driver: three queues in 1 MiB of guest memory.
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

    fn queues(&self, mem: &GuestMemoryMmap) -> Vec<Queue> {
        let ev = MockSplitQueue::create(mem, GuestAddress(0x2_0000), QSIZE);
        vec![
            self.rx.create_queue().expect("rx"),
            self.tx.create_queue().expect("tx"),
            ev.create_queue().expect("ev"),
        ]
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.buf_next;
        self.buf_next += u64::from(len.max(64));
        if self.buf_next > 0xf_0000 {
            self.buf_next = 0x4_0000;
        }
        addr
    }

    fn give_rx_buffers(&mut self, n: u16) {
        for _ in 0..n {
            let addr = self.alloc(BUF_SIZE);
            let d = SplitDescriptor::new(addr, BUF_SIZE, VRING_DESC_F_WRITE as u16, 0);
            self.rx
                .add_desc_chains(&[RawDescriptor::from(d)], self.rx_next_desc % QSIZE)
                .expect("rx desc");
            self.rx_next_desc += 1;
        }
    }

    /// Packets the device wrote to RX buffers since the last call.
    fn take_rx(&mut self) -> Vec<(Header, Vec<u8>)> {
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
            let desc = self.rx.desc_table().load(elem.id() as u16).expect("desc");
            let desc = SplitDescriptor::from(desc);
            let mut raw = [0u8; HEADER_LEN];
            self.mem
                .read_slice(&mut raw, desc.addr())
                .expect("read hdr");
            let hdr = Header::parse(&raw);
            let mut payload = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(
                    &mut payload,
                    GuestAddress(desc.addr().0 + HEADER_LEN as u64),
                )
                .expect("read payload");
            assert_eq!(elem.len() as usize, HEADER_LEN + payload.len());
            out.push((hdr, payload));
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        out
    }

    /// Puts raw descriptors (already written) on the TX queue.
    fn send_descs(&mut self, descs: &[SplitDescriptor]) {
        let base = self.tx_next_desc % QSIZE;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let last = i + 1 == descs.len();
                let flags = if last {
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
        self.tx.add_desc_chains(&raw, base).expect("tx desc");
        self.tx_next_desc += descs.len() as u16;
    }

    /// Sends one packet, header and payload in one descriptor or two.
    fn send(&mut self, hdr: Header, payload: &[u8], split: bool) {
        let bytes = [&hdr.encode()[..], payload].concat();
        let addr = self.alloc(bytes.len() as u32);
        self.mem
            .write_slice(&bytes, GuestAddress(addr))
            .expect("write pkt");
        if split && !payload.is_empty() {
            self.send_descs(&[
                SplitDescriptor::new(addr, HEADER_LEN as u32, 0, 0),
                SplitDescriptor::new(addr + HEADER_LEN as u64, payload.len() as u32, 0, 0),
            ]);
        } else {
            self.send_descs(&[SplitDescriptor::new(addr, bytes.len() as u32, 0, 0)]);
        }
    }

    fn tx_used(&self) -> u16 {
        self.tx.used().idx().load()
    }
}

fn guest_hdr(op: u16, guest_port: u32, host_port: u32, len: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        len,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Default::default()
    }
}

struct Rig {
    dir: PathBuf,
    uds: PathBuf,
    vsock: Arc<Mutex<Vsock>>,
    event_loop: EventLoop,
}

impl Rig {
    fn new(mem: &GuestMemoryMmap, guest: &Guest) -> Rig {
        let dir = scratch_dir();
        let uds = dir.join("v.sock");
        let vsock = Arc::new(Mutex::new(Vsock::new(GUEST_CID, &uds).expect("vsock")));
        let mut event_loop = EventLoop::new().expect("loop");
        event_loop.add_handler(vsock.clone()).expect("handler");
        let irq = Interrupt::new(EventFd::new(0).expect("irq"));
        lock(&vsock)
            .activate(mem.clone(), guest.queues(mem), 1 << 32, irq)
            .expect("activate");
        Rig {
            dir,
            uds,
            vsock,
            event_loop,
        }
    }

    fn notify(&self, queue: usize) {
        lock(&self.vsock).queue_evts[queue]
            .write(1)
            .expect("notify");
    }

    /// Runs the event loop until `done` or a second passes.
    fn pump_until(&mut self, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the device"
            );
            self.event_loop.run_once(20).expect("run");
        }
    }

    fn pump(&mut self) {
        for _ in 0..5 {
            self.event_loop.run_once(10).expect("run");
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem")
}

/// Host client connects; the guest accepts. Returns (client, host_port).
fn establish(rig: &mut Rig, guest: &mut Guest, guest_port: u32, split: bool) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(&rig.uds).expect("connect");
    client
        .write_all(format!("CONNECT {guest_port}\n").as_bytes())
        .expect("write");
    let mut got = Vec::new();
    rig.pump_until(|| {
        got.extend(guest.take_rx());
        !got.is_empty()
    });
    let (req, _) = got[0];
    assert_eq!(
        (req.op, req.src_cid, req.dst_cid, req.dst_port),
        (OP_REQUEST, HOST_CID, GUEST_CID, guest_port)
    );
    guest.send(
        guest_hdr(OP_RESPONSE, guest_port, req.src_port, 0),
        &[],
        split,
    );
    rig.notify(1);
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    rig.pump();
    let mut line = [0u8; 64];
    let n = client.read(&mut line).expect("OK line");
    assert_eq!(
        String::from_utf8_lossy(&line[..n]),
        format!("OK {}\n", req.src_port)
    );
    (client, req.src_port)
}

#[test]
fn host_initiated_connection_carries_data_both_ways() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    guest.give_rx_buffers(8);
    let mut rig = Rig::new(&mem, &guest);
    let (mut client, host_port) = establish(&mut rig, &mut guest, 1024, false);

    client.write_all(b"ping").expect("ping");
    let mut got = Vec::new();
    rig.pump_until(|| {
        got.extend(guest.take_rx());
        !got.is_empty()
    });
    assert_eq!(got[0].0.op, OP_RW);
    assert_eq!(got[0].1, b"ping");

    for split in [false, true] {
        guest.send(guest_hdr(OP_RW, 1024, host_port, 4), b"pong", split);
        rig.notify(1);
        rig.pump();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).expect("pong");
        assert_eq!(&buf, b"pong");
    }

    // The guest closes: the host client sees end of file, the guest an RST.
    guest.send(
        guest_hdr(OP_SHUTDOWN, 1024, host_port, 0).with_flags(SHUTDOWN_RCV | SHUTDOWN_SEND),
        &[],
        false,
    );
    rig.notify(1);
    rig.pump();
    assert!(guest.take_rx().iter().any(|(h, _)| h.op == OP_RST));
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).expect("eof"), 0);
    assert_eq!(lock(&rig.vsock).connection_count(), 0);
}

#[test]
fn bytes_buffered_for_a_slow_host_survive_the_guests_close() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    guest.give_rx_buffers(8);
    let mut rig = Rig::new(&mem, &guest);
    let (mut client, host_port) = establish(&mut rig, &mut guest, 1024, false);
    // Within the 256 KiB credit, but more than the host socket takes while
    // the client is not reading: the VMM holds the rest.
    let chunk = vec![5u8; 63 * 1024];
    for _ in 0..4 {
        guest.send(
            guest_hdr(OP_RW, 1024, host_port, chunk.len() as u32),
            &chunk,
            false,
        );
        rig.notify(1);
        rig.pump();
    }
    // The guest closes its socket (as the agent does once a process's
    // output is written): both directions shut, waiting for our RST.
    guest.send(
        guest_hdr(OP_SHUTDOWN, 1024, host_port, 0).with_flags(SHUTDOWN_RCV | SHUTDOWN_SEND),
        &[],
        false,
    );
    rig.notify(1);
    rig.pump();
    // Only now does the client read: every byte, then end of file.
    client.set_nonblocking(true).expect("nonblocking");
    let mut got = 0usize;
    let mut eof = false;
    let mut rst = false;
    let mut buf = vec![0u8; 64 * 1024];
    rig.pump_until(|| {
        loop {
            match client.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => got += n,
                Err(_) => break,
            }
        }
        rst |= guest.take_rx().iter().any(|(h, _)| h.op == OP_RST);
        eof && rst
    });
    assert_eq!(got, 4 * chunk.len(), "bytes lost at the guest's close");
    assert_eq!(lock(&rig.vsock).connection_count(), 0);
}

#[test]
fn host_hangup_is_a_shutdown_to_the_guest() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    guest.give_rx_buffers(8);
    let mut rig = Rig::new(&mem, &guest);
    let (mut client, host_port) = establish(&mut rig, &mut guest, 1024, false);
    client.write_all(b"last words").expect("write");
    drop(client);
    let mut got = Vec::new();
    rig.pump_until(|| {
        got.extend(guest.take_rx());
        got.iter().any(|(h, _)| h.op == OP_SHUTDOWN)
    });
    assert_eq!(
        got[0].1, b"last words",
        "data before the hang-up is delivered first"
    );
    // The guest answers with RST; the connection is gone.
    guest.send(guest_hdr(OP_RST, 1024, host_port, 0), &[], false);
    rig.notify(1);
    rig.pump();
    assert_eq!(lock(&rig.vsock).connection_count(), 0);
}

#[test]
fn guest_initiated_connection_reaches_the_port_socket() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    guest.give_rx_buffers(8);
    let mut rig = Rig::new(&mem, &guest);
    let listener = std::os::unix::net::UnixListener::bind(format!("{}_5000", rig.uds.display()))
        .expect("bind");
    guest.send(guest_hdr(OP_REQUEST, 777, 5000, 0), &[], false);
    rig.notify(1);
    rig.pump();
    let (mut server, _) = listener.accept().expect("accept");
    let rx = guest.take_rx();
    assert_eq!(rx[0].0.op, OP_RESPONSE);
    assert_eq!((rx[0].0.src_port, rx[0].0.dst_port), (5000, 777));
    guest.send(guest_hdr(OP_RW, 777, 5000, 5), b"hello", true);
    rig.notify(1);
    rig.pump();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).expect("hello");
    assert_eq!(&buf, b"hello");

    // Nobody listens on port 5001: RST.
    guest.send(guest_hdr(OP_REQUEST, 778, 5001, 0), &[], false);
    rig.notify(1);
    rig.pump();
    assert_eq!(guest.take_rx()[0].0.op, OP_RST);
}

#[test]
fn hostile_packets_are_dropped_without_harm() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    guest.give_rx_buffers(8);
    let mut rig = Rig::new(&mem, &guest);

    // Data for a connection that does not exist: RST.
    guest.send(guest_hdr(OP_RW, 1, 2, 3), b"abc", false);
    // Oversized length, and a length larger than the buffer.
    guest.send(guest_hdr(OP_RW, 1, 2, MAX_PAYLOAD + 1), b"", false);
    guest.send(guest_hdr(OP_RW, 1, 2, 1000), b"short", false);
    // A spoofed source CID.
    guest.send(
        Header {
            src_cid: 99,
            ..guest_hdr(OP_REQUEST, 1, 2, 0)
        },
        &[],
        false,
    );
    // A buffer outside guest memory, and one too short for a header.
    guest.send_descs(&[SplitDescriptor::new(0x1_0000_0000, 64, 0, 0)]);
    guest.send_descs(&[SplitDescriptor::new(0x8_0000, 10, 0, 0)]);
    // A huge descriptor length that runs off the end of memory.
    guest.send_descs(&[SplitDescriptor::new(0xf_0000, u32::MAX, 0, 0)]);
    rig.notify(1);
    rig.pump();
    assert_eq!(guest.tx_used(), 7, "every TX buffer is returned");
    let rx = guest.take_rx();
    assert_eq!(
        rx.len(),
        1,
        "only the unknown connection gets an answer: {rx:?}"
    );
    assert_eq!(rx[0].0.op, OP_RST);
    assert_eq!(lock(&rig.vsock).connection_count(), 0);
}

#[test]
fn a_descriptor_loop_ends() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let mut rig = Rig::new(&mem, &guest);
    let addr = guest.alloc(128);
    mem.write_slice(&guest_hdr(OP_RW, 1, 2, 0).encode(), GuestAddress(addr))
        .expect("hdr");
    // Two descriptors pointing at each other.
    let a = SplitDescriptor::new(addr, HEADER_LEN as u32, VRING_DESC_F_NEXT as u16, 1);
    let b = SplitDescriptor::new(addr, 8, VRING_DESC_F_NEXT as u16, 0);
    guest
        .tx
        .add_desc_chains(&[RawDescriptor::from(a), RawDescriptor::from(b)], 0)
        .expect("loop");
    rig.notify(1);
    rig.pump();
    assert_eq!(guest.tx_used(), 1);
}

#[test]
fn guest_exceeding_its_credit_is_reset() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    guest.give_rx_buffers(8);
    let mut rig = Rig::new(&mem, &guest);
    let (_client, host_port) = establish(&mut rig, &mut guest, 1024, false);
    // The client never reads; the guest keeps sending past 256 KiB.
    let chunk = vec![7u8; 60 * 1024];
    for _ in 0..12 {
        if guest.take_rx().iter().any(|(h, _)| h.op == OP_RST) {
            return;
        }
        guest.send(
            guest_hdr(OP_RW, 1024, host_port, chunk.len() as u32),
            &chunk,
            false,
        );
        rig.notify(1);
        rig.pump();
    }
    // 12 × 60 KiB = 720 KiB; the socket buffer takes some, the rest must
    // have overflowed the credit.
    assert!(
        guest.take_rx().iter().any(|(h, _)| h.op == OP_RST)
            || lock(&rig.vsock).connection_count() == 0,
        "connection survived a credit violation"
    );
}

#[test]
fn connect_before_the_driver_is_ready_is_closed() {
    let dir = scratch_dir();
    let uds = dir.join("v.sock");
    let vsock = Arc::new(Mutex::new(Vsock::new(GUEST_CID, &uds).expect("vsock")));
    let mut event_loop = EventLoop::new().expect("loop");
    event_loop.add_handler(vsock.clone()).expect("handler");
    let mut client = UnixStream::connect(&uds).expect("connect");
    client.write_all(b"CONNECT 1024\n").expect("write");
    event_loop.run_once(100).expect("run");
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    // Closed with our CONNECT line unread: end of file or a reset.
    match client.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
    drop(event_loop);
    drop(vsock);
    assert!(!uds.exists(), "the socket is removed with the device");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn host_data_after_a_hangup_waits_for_guest_credit() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    guest.give_rx_buffers(8);
    let mut rig = Rig::new(&mem, &guest);
    let (mut client, host_port) = establish(&mut rig, &mut guest, 1024, false);
    // The guest shrinks its buffer to 8 KiB; the host sends more and hangs up.
    let credit = |fwd_cnt| Header {
        buf_alloc: 8192,
        fwd_cnt,
        ..guest_hdr(OP_CREDIT_UPDATE, 1024, host_port, 0)
    };
    guest.send(credit(0), &[], false);
    rig.notify(1);
    rig.pump();
    let sent = vec![5u8; 10_000];
    client.write_all(&sent).expect("write");
    drop(client);
    let mut got = Vec::new();
    let rw_bytes = |got: &Vec<(Header, Vec<u8>)>| -> usize {
        got.iter()
            .filter(|(h, _)| h.op == OP_RW)
            .map(|(_, p)| p.len())
            .sum()
    };
    rig.pump_until(|| {
        got.extend(guest.take_rx());
        rw_bytes(&got) == 8192
    });
    rig.pump();
    got.extend(guest.take_rx());
    assert!(
        !got.iter().any(|(h, _)| h.op == OP_SHUTDOWN),
        "no shutdown while bytes are pending"
    );
    // The guest consumed everything: credit returns, the rest follows.
    guest.send(credit(8192), &[], false);
    rig.notify(1);
    rig.pump_until(|| {
        got.extend(guest.take_rx());
        got.iter().any(|(h, _)| h.op == OP_SHUTDOWN)
    });
    assert_eq!(rw_bytes(&got), sent.len());
}
