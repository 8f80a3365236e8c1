//! The virtio-fs device against mock guest memory: a fake guest driver
//! writes FUSE requests into descriptor chains, the real event loop and
//! FUSE server answer them from a temporary host directory.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, BatchForgetIn, CreateIn, Dirent, EntryOut, ForgetIn, ForgetOne, GetattrIn, InHeader,
    InitIn, InitOut, LinkIn, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut, OutHeader, ReadIn,
    ReleaseIn, WriteIn, WriteOut,
};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::passthrough::DEFAULT_MAX_OPEN_FILES;
use super::*;
use crate::devices::bus::lock;
use crate::devices::virtio::Interrupt;
use crate::event_loop::EventLoop;

const QSIZE: u16 = 64;
const ROOT: u64 = 1;
const REPLY_LEN: u32 = 8192;
const MEM_SIZE: u64 = 0x20_0000;
const BUF_START: u64 = 0x4_0000;

/// A scratch directory: `outside/` holds a file the guest must never
/// reach, `shared/` is exported.
struct Scratch {
    top: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let top = std::env::temp_dir().join(format!("palisade-fs-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(top.join("shared")).expect("shared dir");
        std::fs::write(top.join("secret"), b"host secret").expect("secret");
        Scratch { top }
    }

    fn shared(&self) -> PathBuf {
        self.top.join("shared")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.top);
    }
}

/// What the device put in the used ring for one request.
struct Reply {
    /// Used length: bytes the device wrote.
    len: u32,
    bytes: Vec<u8>,
}

impl Reply {
    fn header(&self) -> OutHeader {
        assert!(
            self.bytes.len() >= 16,
            "no reply header ({} bytes)",
            self.len
        );
        let mut h = OutHeader::default();
        h.as_mut_slice().copy_from_slice(&self.bytes[..16]);
        assert_eq!(h.len, self.len, "header length = used length");
        h
    }

    /// The FUSE error (0 or a negative errno).
    fn error(&self) -> i32 {
        self.header().error
    }

    fn body<T: ByteValued + Default>(&self) -> T {
        assert_eq!(self.error(), 0, "request failed");
        let mut v = T::default();
        let size = std::mem::size_of::<T>();
        assert!(
            self.bytes.len() >= 16 + size,
            "reply too short for the body"
        );
        v.as_mut_slice().copy_from_slice(&self.bytes[16..16 + size]);
        v
    }

    fn data(&self) -> &[u8] {
        assert_eq!(self.error(), 0, "request failed");
        &self.bytes[16..]
    }
}

/// A fake guest driver and the device it drives.
struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    queues: [MockSplitQueue<'a, GuestMemoryMmap>; 2],
    next_desc: [u16; 2],
    seen: [u16; 2],
    buf_next: u64,
    unique: u64,
    fs: Arc<Mutex<VirtioFs>>,
    event_loop: EventLoop,
    /// Guest credentials put in each request header.
    uid: u32,
    gid: u32,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap, dir: &Path) -> Rig<'a> {
        Rig::with_cap(mem, dir, DEFAULT_MAX_OPEN_FILES)
    }

    /// A device that holds at most `max_open_files` host fds for the guest.
    fn with_cap(mem: &'a GuestMemoryMmap, dir: &Path, max_open_files: usize) -> Rig<'a> {
        let fs = Arc::new(Mutex::new(
            VirtioFs::new(&SharedFsConfig {
                tag: "palisade".into(),
                dir: dir.to_owned(),
                max_open_files,
            })
            .expect("device"),
        ));
        let mut event_loop = EventLoop::new().expect("loop");
        event_loop.add_handler(fs.clone()).expect("handler");
        let mut rig = Rig {
            mem,
            queues: [
                MockSplitQueue::create(mem, GuestAddress(0), QSIZE),
                MockSplitQueue::create(mem, GuestAddress(0x1_0000), QSIZE),
            ],
            next_desc: [0, 0],
            seen: [0, 0],
            buf_next: BUF_START,
            unique: 0,
            fs,
            event_loop,
            uid: 0,
            gid: 0,
        };
        rig.activate();
        rig
    }

    fn activate(&mut self) {
        let queues = self
            .queues
            .iter()
            .map(|q| q.create_queue().expect("queue"))
            .collect();
        let irq = Interrupt::new(EventFd::new(0).expect("irq"));
        lock(&self.fs)
            .activate(self.mem.clone(), queues, 1 << VIRTIO_F_VERSION_1, irq)
            .expect("activate");
        self.next_desc = [0, 0];
        self.seen = [0, 0];
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len.max(64)).next_multiple_of(64);
        if self.buf_next + len > MEM_SIZE {
            self.buf_next = BUF_START;
        }
        let addr = self.buf_next;
        self.buf_next += len;
        addr
    }

    /// Puts one chain of (already written) descriptors on `queue`, lets the
    /// device run, and returns what it put in the used ring.
    fn submit(&mut self, queue: usize, descs: &[SplitDescriptor]) -> Option<Reply> {
        let n = descs.len() as u16;
        if self.next_desc[queue] + n > QSIZE {
            self.next_desc[queue] = 0;
        }
        let base = self.next_desc[queue];
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
        self.queues[queue]
            .add_desc_chains(&raw, base)
            .expect("add chain");
        self.next_desc[queue] += n;
        lock(&self.fs).queue_evts[queue].write(1).expect("notify");
        for _ in 0..3 {
            self.event_loop.run_once(10).expect("run");
        }
        self.take_used(queue)
    }

    /// The next used element of `queue`, with the bytes written to the
    /// chain's writable descriptor (found from the head's `next`).
    fn take_used(&mut self, queue: usize) -> Option<Reply> {
        let q = &self.queues[queue];
        if q.used().idx().load() == self.seen[queue] {
            return None;
        }
        let elem = q
            .used()
            .ring()
            .ref_at((self.seen[queue] % QSIZE) as usize)
            .expect("used")
            .load();
        self.seen[queue] = self.seen[queue].wrapping_add(1);
        let mut bytes = Vec::new();
        let mut index = elem.id() as u16;
        // Follow the chain to its writable descriptor.
        for _ in 0..QSIZE {
            let desc = SplitDescriptor::from(q.desc_table().load(index).expect("desc"));
            if desc.flags() & VRING_DESC_F_WRITE as u16 != 0 {
                let len = (elem.len() as usize).min(desc.len() as usize);
                bytes = vec![0u8; len];
                if len > 0 {
                    self.mem.read_slice(&mut bytes, desc.addr()).expect("reply");
                }
                break;
            }
            if desc.flags() & VRING_DESC_F_NEXT as u16 == 0 {
                break;
            }
            index = desc.next();
        }
        Some(Reply {
            len: elem.len(),
            bytes,
        })
    }

    /// Sends raw request bytes with a reply buffer of `reply_len`.
    fn raw_request(&mut self, queue: usize, request: &[u8], reply_len: u32) -> Reply {
        let req_addr = self.alloc(request.len() as u32);
        self.mem
            .write_slice(request, GuestAddress(req_addr))
            .expect("write request");
        let reply_addr = self.alloc(reply_len);
        let mut descs = vec![SplitDescriptor::new(req_addr, request.len() as u32, 0, 0)];
        if reply_len > 0 {
            descs.push(SplitDescriptor::new(
                reply_addr,
                reply_len,
                VRING_DESC_F_WRITE as u16,
                0,
            ));
        }
        self.submit(queue, &descs).expect("buffer returned")
    }

    /// Sends one FUSE request (header made here) on the request queue.
    fn request(&mut self, opcode: Opcode, nodeid: u64, body: &[&[u8]]) -> Reply {
        let bytes = self.encode(opcode, nodeid, body);
        self.raw_request(REQUEST, &bytes, REPLY_LEN)
    }

    fn encode(&mut self, opcode: Opcode, nodeid: u64, body: &[&[u8]]) -> Vec<u8> {
        self.unique += 1;
        let body: Vec<u8> = body.concat();
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode: opcode as u32,
            unique: self.unique,
            nodeid,
            uid: self.uid,
            gid: self.gid,
            pid: 1,
            padding: 0,
        };
        [header.as_slice(), &body].concat()
    }

    fn init(&mut self) -> InitOut {
        self.init_offering(0)
    }

    fn init_offering(&mut self, flags: u32) -> InitOut {
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 128 * 1024,
            flags,
        };
        self.request(Opcode::Init, 0, &[init.as_slice()]).body()
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Reply {
        self.request(Opcode::Lookup, parent, &[&cstr(name)])
    }

    fn lookup_ok(&mut self, parent: u64, name: &str) -> EntryOut {
        self.lookup(parent, name).body()
    }

    fn open(&mut self, nodeid: u64, flags: i32) -> Reply {
        let open = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.request(Opcode::Open, nodeid, &[open.as_slice()])
    }

    fn read(&mut self, nodeid: u64, fh: u64, size: u32) -> Reply {
        let read = ReadIn {
            fh,
            offset: 0,
            size,
            ..Default::default()
        };
        self.request(Opcode::Read, nodeid, &[read.as_slice()])
    }

    fn create(&mut self, parent: u64, name: &str) -> Reply {
        let create = CreateIn {
            flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        self.request(Opcode::Create, parent, &[create.as_slice(), &cstr(name)])
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Reply {
        let mkdir = MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        self.request(Opcode::Mkdir, parent, &[mkdir.as_slice(), &cstr(name)])
    }

    fn release(&mut self, opcode: Opcode, nodeid: u64, fh: u64) -> Reply {
        let release = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.request(opcode, nodeid, &[release.as_slice()])
    }

    fn forget(&mut self, nodeid: u64, nlookup: u64) {
        let forget = ForgetIn { nlookup };
        let req = self.encode(Opcode::Forget, nodeid, &[forget.as_slice()]);
        assert_eq!(self.raw_request(HIPRIO, &req, 0).len, 0);
    }

    /// Host fds the device holds for the guest now.
    fn open_files(&self) -> usize {
        lock(&self.fs).open_files().0
    }

    fn mknod(&mut self, parent: u64, name: &str, mode: u32, rdev: u32) -> Reply {
        let mknod = MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        self.request(Opcode::Mknod, parent, &[mknod.as_slice(), &cstr(name)])
    }
}

fn cstr(s: &str) -> Vec<u8> {
    CString::new(s).expect("name").into_bytes_with_nul()
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("mem")
}

fn errno(e: i32) -> i32 {
    -e
}

fn ino_of(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).expect("lstat").ino()
}

#[test]
fn config_space_holds_the_tag_and_one_request_queue() {
    let scratch = Scratch::new();
    let dev = VirtioFs::new(&SharedFsConfig {
        tag: "palisade".into(),
        dir: scratch.shared(),
        max_open_files: DEFAULT_MAX_OPEN_FILES,
    })
    .expect("device");
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    let mut cfg = [0xffu8; 40];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..8], b"palisade");
    assert!(cfg[8..36].iter().all(|&b| b == 0), "tag is NUL-padded");
    assert_eq!(&cfg[36..40], &1u32.to_le_bytes());
    // Partial and out-of-range reads.
    let mut b = [0xffu8; 4];
    dev.read_config(36, &mut b);
    assert_eq!(b, 1u32.to_le_bytes());
    dev.read_config(38, &mut b);
    assert_eq!(b, [0, 0, 0, 0]);
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0, 0, 0, 0]);
}

#[test]
fn bad_configurations_are_refused_precisely() {
    let scratch = Scratch::new();
    let cfg = |tag: &str, dir: PathBuf| SharedFsConfig {
        tag: tag.into(),
        dir,
        max_open_files: DEFAULT_MAX_OPEN_FILES,
    };
    assert!(matches!(
        validate(&cfg("", scratch.shared())),
        Err(FsError::EmptyTag)
    ));
    let long = "x".repeat(37);
    let err = validate(&cfg(&long, scratch.shared())).expect_err("too long");
    assert!(matches!(err, FsError::TagTooLong { len: 37, .. }), "{err}");
    assert!(validate(&cfg(&"x".repeat(36), scratch.shared())).is_ok());
    assert!(matches!(
        validate(&cfg("a\0b", scratch.shared())),
        Err(FsError::TagHasNul { .. })
    ));
    let missing = scratch.top.join("missing");
    let err = validate(&cfg("t", missing.clone())).expect_err("missing");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(matches!(err, FsError::Dir { .. }));
    let file = scratch.top.join("secret");
    assert!(matches!(
        VirtioFs::new(&cfg("t", file)),
        Err(FsError::NotADirectory { .. })
    ));
    // The directory is canonicalized: relative paths and symlinks resolved.
    let canonical = std::fs::canonicalize(scratch.shared()).expect("canonical");
    let dev = VirtioFs::new(&cfg("t", scratch.top.join("shared/../shared"))).expect("ok");
    assert_eq!(dev.dir(), canonical);
}

#[test]
fn activation_needs_both_queues() {
    let scratch = Scratch::new();
    let mem = memory();
    let mut dev = VirtioFs::new(&SharedFsConfig {
        tag: "t".into(),
        dir: scratch.shared(),
        max_open_files: DEFAULT_MAX_OPEN_FILES,
    })
    .expect("device");
    let q = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
    let irq = Interrupt::new(EventFd::new(0).expect("irq"));
    let err = dev
        .activate(mem.clone(), vec![q.create_queue().expect("q")], 0, irq)
        .expect_err("one queue");
    assert!(matches!(err, ActivateError::QueueCount { got: 1, want: 2 }));
}

#[test]
fn init_handshake() {
    let scratch = Scratch::new();
    let mem = memory();
    let mut rig = Rig::new(&mem, &scratch.shared());
    let out = rig.init();
    assert_eq!(out.major, 7);
    assert!(out.minor >= 31, "minor {}", out.minor);
    assert!(out.max_write > 0);
}

#[test]
fn the_open_file_limit_is_the_cap_plus_the_reserve() {
    let get = || {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit to a valid pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        lim
    };
    // Lowering the limits is always allowed, so this holds as any user.
    // It is far above what the other tests of this process hold open.
    let cap = 4096;
    let now = passthrough::limit_open_files(cap).expect("limit");
    let want = (cap + passthrough::OPEN_FILE_RESERVE) as u64;
    assert_eq!(now, want);
    let after = get();
    assert_eq!((after.rlim_cur, after.rlim_max), (want, want));
    assert_eq!(passthrough::cap_within_limit(cap, now), cap);
    // A hard limit that cannot be raised lowers the cap to fit.
    assert_eq!(passthrough::cap_within_limit(cap, want - 100), cap - 100);
    assert_eq!(passthrough::cap_within_limit(cap, 10), 0);
}

#[test]
fn init_negotiates_large_requests_but_not_writeback() {
    use fuse_backend_rs::abi::fuse_abi::FsOptions;
    let scratch = Scratch::new();
    let mem = memory();
    let mut rig = Rig::new(&mem, &scratch.shared());
    // What Linux's virtiofs offers (the low 32 bits).
    let offered = (FsOptions::ASYNC_READ
        | FsOptions::BIG_WRITES
        | FsOptions::MAX_PAGES
        | FsOptions::PARALLEL_DIROPS
        | FsOptions::AUTO_INVAL_DATA
        | FsOptions::WRITEBACK_CACHE
        | FsOptions::DO_READDIRPLUS
        | FsOptions::READDIRPLUS_AUTO)
        .bits() as u32;
    let out = rig.init_offering(offered);
    let got = FsOptions::from_bits_truncate(u64::from(out.flags));
    assert!(got.contains(FsOptions::BIG_WRITES | FsOptions::MAX_PAGES | FsOptions::ASYNC_READ));
    assert!(!got.contains(FsOptions::WRITEBACK_CACHE), "{got:?}");
    assert_eq!(out.max_write, 1 << 20);
    assert_eq!(out.max_pages, 256);
    // Nothing is asked of a driver that does not offer it.
    let out = rig.init_offering(0);
    assert_eq!(out.flags, 0);
}

#[test]
fn lookup_getattr_and_read_a_file() {
    let scratch = Scratch::new();
    std::fs::write(scratch.shared().join("hello.txt"), b"hello from the host\n").expect("file");
    let mem = memory();
    let mut rig = Rig::new(&mem, &scratch.shared());
    rig.init();

    let entry = rig.lookup_ok(ROOT, "hello.txt");
    assert_ne!(entry.nodeid, 0);
    assert_ne!(entry.nodeid, ROOT);
    assert_eq!(entry.attr.size, 20);
    assert_eq!(entry.attr.ino, ino_of(&scratch.shared().join("hello.txt")));

    let getattr = GetattrIn::default();
    let attr: AttrOut = rig
        .request(Opcode::Getattr, entry.nodeid, &[getattr.as_slice()])
        .body();
    assert_eq!(attr.attr.size, 20);
    assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFREG);

    let open: OpenOut = rig.open(entry.nodeid, libc::O_RDONLY).body();
    let read = rig.read(entry.nodeid, open.fh, 4096);
    assert_eq!(read.data(), b"hello from the host\n");

    // A name that does not exist, and a node the guest never looked up.
    assert_eq!(rig.lookup(ROOT, "nope").error(), errno(libc::ENOENT));
    assert_ne!(
        rig.request(Opcode::Getattr, 9999, &[getattr.as_slice()])
            .error(),
        0
    );
}

#[test]
fn truncated_requests_are_returned_without_a_reply() {
    let scratch = Scratch::new();
    let mem = memory();
    let mut rig = Rig::new(&mem, &scratch.shared());
    rig.init();
    // Ten bytes: not even a FUSE header.
    let reply = rig.raw_request(REQUEST, &[0u8; 10], REPLY_LEN);
    assert_eq!(reply.len, 0);
    // A header whose body is cut short, and one claiming a huge length.
    let mut lookup = rig.encode(Opcode::Lookup, ROOT, &[&cstr("hello")]);
    lookup.truncate(std::mem::size_of::<InHeader>() + 2);
    assert_eq!(rig.raw_request(REQUEST, &lookup, REPLY_LEN).len, 0);
    let mut huge = rig.encode(Opcode::Lookup, ROOT, &[&cstr("x")]);
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let reply = rig.raw_request(REQUEST, &huge, REPLY_LEN);
    assert_eq!(reply.error(), errno(libc::ENOMEM));
    // No room for the reply.
    let getattr = GetattrIn::default();
    let req = rig.encode(Opcode::Getattr, ROOT, &[getattr.as_slice()]);
    assert_eq!(rig.raw_request(REQUEST, &req, 8).len, 0);
    assert_eq!(rig.raw_request(REQUEST, &req, 0).len, 0);
    // The device still works.
    std::fs::write(scratch.shared().join("f"), b"x").expect("file");
    assert_ne!(rig.lookup_ok(ROOT, "f").nodeid, 0);
}

#[test]
fn descriptors_outside_guest_memory_are_returned_untouched() {
    let scratch = Scratch::new();
    let mem = memory();
    let mut rig = Rig::new(&mem, &scratch.shared());
    rig.init();
    let request = rig.encode(Opcode::Lookup, ROOT, &[&cstr("x")]);
    let req_addr = rig.alloc(request.len() as u32);
    mem.write_slice(&request, GuestAddress(req_addr))
        .expect("write");
    let reply_addr = rig.alloc(REPLY_LEN);
    let w = VRING_DESC_F_WRITE as u16;
    let cases: [Vec<SplitDescriptor>; 4] = [
        // Request beyond the end of memory.
        vec![
            SplitDescriptor::new(0x1_0000_0000, 64, 0, 0),
            SplitDescriptor::new(reply_addr, REPLY_LEN, w, 0),
        ],
        // Reply buffer beyond the end of memory.
        vec![
            SplitDescriptor::new(req_addr, request.len() as u32, 0, 0),
            SplitDescriptor::new(0x1_0000_0000, REPLY_LEN, w, 0),
        ],
        // A length that runs off the end of memory.
        vec![
            SplitDescriptor::new(MEM_SIZE - 0x100, u32::MAX, 0, 0),
            SplitDescriptor::new(reply_addr, REPLY_LEN, w, 0),
        ],
        vec![
            SplitDescriptor::new(req_addr, request.len() as u32, 0, 0),
            SplitDescriptor::new(MEM_SIZE - 16, REPLY_LEN, w, 0),
        ],
    ];
    for descs in cases {
        let before = rig
            .mem
            .read_obj::<u64>(GuestAddress(reply_addr))
            .expect("r");
        let reply = rig.submit(REQUEST, &descs).expect("returned");
        assert_eq!(reply.len, 0);
        let after = rig
            .mem
            .read_obj::<u64>(GuestAddress(reply_addr))
            .expect("r");
        assert_eq!(before, after, "nothing written");
    }
    // Reply space far beyond any real request (the same guest pages named
    // twice): refused before the server sizes buffers by it.
    let big = (MEM_SIZE - BUF_START) as u32 - 0x1000;
    let huge_reply = [
        SplitDescriptor::new(req_addr, request.len() as u32, 0, 0),
        SplitDescriptor::new(BUF_START, big, w, 0),
        SplitDescriptor::new(BUF_START, big, w, 0),
    ];
    assert_eq!(rig.submit(REQUEST, &huge_reply).expect("returned").len, 0);
    // A descriptor chain that loops on itself ends too.
    let a = SplitDescriptor::new(req_addr, request.len() as u32, VRING_DESC_F_NEXT as u16, 1);
    let b = SplitDescriptor::new(req_addr, 8, VRING_DESC_F_NEXT as u16, 0);
    rig.next_desc[REQUEST] = 0;
    rig.queues[REQUEST]
        .add_desc_chains(&[RawDescriptor::from(a), RawDescriptor::from(b)], 0)
        .expect("loop");
    rig.next_desc[REQUEST] = 2;
    lock(&rig.fs).queue_evts[REQUEST].write(1).expect("notify");
    rig.event_loop.run_once(10).expect("run");
    assert_eq!(rig.take_used(REQUEST).expect("returned").len, 0);
    // Still serving.
    assert_eq!(rig.lookup(ROOT, "nope").error(), errno(libc::ENOENT));
}

#[test]
fn dotdot_never_leaves_the_shared_directory() {
    let scratch = Scratch::new();
    std::fs::create_dir(scratch.shared().join("sub")).expect("sub");
    let mem = memory();
    let mut rig = Rig::new(&mem, &scratch.shared());
    rig.init();
    let shared_ino = ino_of(&scratch.shared());
    let parent_ino = ino_of(&scratch.top);

    // ".." at the root is the root itself.
    let up = rig.lookup_ok(ROOT, "..");
    assert_eq!(up.nodeid, ROOT);
    assert_eq!(up.attr.ino, shared_ino);
    assert_ne!(up.attr.ino, parent_ino);
    // ... and from there, the host's neighbour is still out of reach.
    assert_eq!(rig.lookup(up.nodeid, "secret").error(), errno(libc::ENOENT));
    // From a subdirectory, ".." is the root again, not a new node.
    let sub = rig.lookup_ok(ROOT, "sub");
    let up = rig.lookup_ok(sub.nodeid, "..");
    assert_eq!((up.nodeid, up.attr.ino), (ROOT, shared_ino));
    let upup = rig.lookup_ok(up.nodeid, "..");
    assert_eq!(upup.nodeid, ROOT);
    // Multi-component names are refused before they reach the host.
    for name in ["../secret", "sub/../../secret", "/etc/passwd"] {
        assert_eq!(
            rig.lookup(ROOT, name).error(),
            errno(libc::EINVAL),
            "{name}"
        );
    }
}

#[test]
fn symlinks_are_never_followed_on_the_host() {
    let scratch = Scratch::new();
    let shared = scratch.shared();
    std::os::unix::fs::symlink("/etc/passwd", shared.join("passwd")).expect("symlink");
    std::os::unix::fs::symlink("/etc", shared.join("etc")).expect("symlink");
    std::os::unix::fs::symlink("../secret", shared.join("up")).expect("symlink");
    let mem = memory();
    let mut rig = Rig::new(&mem, &shared);
    rig.init();

    // LOOKUP yields the link itself, not what it points to.
    let link = rig.lookup_ok(ROOT, "passwd");
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(link.attr.ino, ino_of(&shared.join("passwd")));
    assert_ne!(link.attr.ino, ino_of(Path::new("/etc/passwd")));
    // OPEN of a symlink is refused (EBADF: only regular files and
    // directories are ever opened), so /etc/passwd is never read.
    let open = rig.open(link.nodeid, libc::O_RDONLY);
    assert_eq!(open.error(), errno(libc::EBADF));
    // READLINK hands the text to the guest, which resolves it in its own
    // file system.
    let target = rig.request(Opcode::Readlink, link.nodeid, &[]);
    assert_eq!(target.data(), b"/etc/passwd");

    // A link to a directory outside cannot be walked through.
    let etc = rig.lookup_ok(ROOT, "etc");
    assert_eq!(etc.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        rig.lookup(etc.nodeid, "passwd").error(),
        errno(libc::ENOTDIR)
    );
    // Nor can a relative one pointing up.
    let up = rig.lookup_ok(ROOT, "up");
    assert_eq!(
        rig.open(up.nodeid, libc::O_RDONLY).error(),
        errno(libc::EBADF)
    );

    // CREATE over a symlink name does not write through it: the name
    // exists, so the server opens the existing inode, which is a symlink.
    let create = CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let reply = rig.request(Opcode::Create, ROOT, &[create.as_slice(), &cstr("up")]);
    assert_eq!(
        reply.error(),
        errno(libc::EBADF),
        "CREATE through a symlink"
    );
    assert_eq!(
        std::fs::read(scratch.top.join("secret")).expect("secret"),
        b"host secret"
    );
}

#[test]
fn device_nodes_cannot_be_created_or_opened() {
    // What run_vm does on the thread that serves virtio-fs.
    passthrough::restrict_thread_capabilities().expect("drop caps");
    let scratch = Scratch::new();
    let mem = memory();
    let mut rig = Rig::new(&mem, &scratch.shared());
    rig.init();
    // Block device 8:0 (a host disk) and character device 1:3.
    let disk = rig.mknod(ROOT, "disk", libc::S_IFBLK | 0o666, 0x800);
    assert_eq!(disk.error(), errno(libc::EPERM));
    let null = rig.mknod(ROOT, "null", libc::S_IFCHR | 0o666, 0x103);
    assert_eq!(null.error(), errno(libc::EPERM));
    assert!(!scratch.shared().join("disk").exists());
    // An overlayfs whiteout (character device 0:0) needs no capability: a
    // guest running overlayfs on the share keeps working.
    let whiteout: EntryOut = rig.mknod(ROOT, "wh", libc::S_IFCHR, 0).body();
    assert_eq!(whiteout.attr.rdev, 0);
    assert_eq!(
        rig.open(whiteout.nodeid, libc::O_RDONLY).error(),
        errno(libc::EBADF)
    );
    // A FIFO can be made (the guest's own special files live on its side),
    // but the server never opens it: opening would block the VMM.
    let fifo = rig.mknod(ROOT, "fifo", libc::S_IFIFO | 0o600, 0);
    let fifo: EntryOut = fifo.body();
    assert_eq!(
        rig.open(fifo.nodeid, libc::O_RDONLY).error(),
        errno(libc::EBADF)
    );
}

#[test]
fn links_only_name_files_inside() {
    let scratch = Scratch::new();
    std::fs::write(scratch.shared().join("a"), b"a").expect("a");
    std::fs::create_dir(scratch.shared().join("d")).expect("d");
    let mem = memory();
    let mut rig = Rig::new(&mem, &scratch.shared());
    rig.init();
    let a = rig.lookup_ok(ROOT, "a");
    let d = rig.lookup_ok(ROOT, "d");
    let link = LinkIn {
        oldnodeid: a.nodeid,
    };
    let made = rig.request(Opcode::Link, d.nodeid, &[link.as_slice(), &cstr("b")]);
    let made: EntryOut = made.body();
    assert_eq!(made.attr.ino, ino_of(&scratch.shared().join("a")));
    assert_eq!(
        std::fs::read(scratch.shared().join("d/b")).expect("link"),
        b"a"
    );
    // An inode the guest never got from a lookup cannot be linked.
    let bogus = LinkIn { oldnodeid: 4242 };
    let reply = rig.request(Opcode::Link, ROOT, &[bogus.as_slice(), &cstr("c")]);
    assert!(reply.error() < 0);
    assert!(!scratch.shared().join("c").exists());
}

#[test]
fn writes_reach_the_host_at_once_owned_by_the_callers_ids() {
    let scratch = Scratch::new();
    let mem = memory();
    let mut rig = Rig::new(&mem, &scratch.shared());
    rig.init();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // The guest's uid/gid become the host file's owner (no id mapping).
        rig.uid = 1234;
        rig.gid = 5678;
    }
    let create = CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32,
        mode: libc::S_IFREG | 0o640,
        umask: 0o022,
        fuse_flags: 0,
    };
    let reply = rig.request(Opcode::Create, ROOT, &[create.as_slice(), &cstr("new")]);
    assert_eq!(reply.error(), 0);
    let entry = EntryOut::from_slice(&reply.bytes[16..16 + std::mem::size_of::<EntryOut>()])
        .copied()
        .expect("entry");
    let open = OpenOut::from_slice(
        &reply.bytes[16 + std::mem::size_of::<EntryOut>()
            ..16 + std::mem::size_of::<EntryOut>() + std::mem::size_of::<OpenOut>()],
    )
    .copied()
    .expect("open");
    let data = b"written by the guest";
    let write = WriteIn {
        fh: open.fh,
        offset: 0,
        size: data.len() as u32,
        ..Default::default()
    };
    let out: WriteOut = rig
        .request(Opcode::Write, entry.nodeid, &[write.as_slice(), data])
        .body();
    assert_eq!(out.size as usize, data.len());
    // Write-through: the host sees the data before the file is closed.
    let path = scratch.shared().join("new");
    assert_eq!(std::fs::read(&path).expect("read"), data);
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(meta.mode() & 0o7777, 0o640);
    if root {
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    }
}

#[test]
fn forget_on_the_hiprio_queue_needs_no_reply() {
    let scratch = Scratch::new();
    std::fs::write(scratch.shared().join("f"), b"f").expect("f");
    let mem = memory();
    let mut rig = Rig::new(&mem, &scratch.shared());
    rig.init();
    let f = rig.lookup_ok(ROOT, "f");
    let forget = ForgetIn { nlookup: 1 };
    let req = rig.encode(Opcode::Forget, f.nodeid, &[forget.as_slice()]);
    // FORGET has no reply buffer at all.
    let reply = rig.raw_request(HIPRIO, &req, 0);
    assert_eq!(reply.len, 0);
    // Forgotten: the node is gone; a fresh lookup works.
    let getattr = GetattrIn::default();
    assert!(
        rig.request(Opcode::Getattr, f.nodeid, &[getattr.as_slice()])
            .error()
            < 0
    );
    assert_ne!(rig.lookup_ok(ROOT, "f").nodeid, 0);
    // Forgetting the root or an unknown node is harmless.
    for node in [ROOT, 777] {
        let req = rig.encode(
            Opcode::Forget,
            node,
            &[ForgetIn { nlookup: u64::MAX }.as_slice()],
        );
        assert_eq!(rig.raw_request(HIPRIO, &req, 0).len, 0);
    }
    assert_eq!(rig.lookup_ok(ROOT, "..").nodeid, ROOT);
}

#[test]
fn reset_forgets_the_old_drivers_nodes() {
    let scratch = Scratch::new();
    std::fs::write(scratch.shared().join("f"), b"f").expect("f");
    let mem = memory();
    let mut rig = Rig::new(&mem, &scratch.shared());
    rig.init();
    let f = rig.lookup_ok(ROOT, "f");
    lock(&rig.fs).reset();
    // Nothing is served while reset.
    lock(&rig.fs).queue_evts[REQUEST].write(1).expect("notify");
    rig.event_loop.run_once(10).expect("run");
    // A new driver (the mock rings are rebuilt from scratch).
    rig.queues = [
        MockSplitQueue::create(&mem, GuestAddress(0), QSIZE),
        MockSplitQueue::create(&mem, GuestAddress(0x1_0000), QSIZE),
    ];
    rig.activate();
    rig.init();
    let getattr = GetattrIn::default();
    assert!(
        rig.request(Opcode::Getattr, f.nodeid, &[getattr.as_slice()])
            .error()
            < 0,
        "a node from before the reset is still valid"
    );
    assert_ne!(rig.lookup_ok(ROOT, "f").nodeid, 0);
    assert_eq!(rig.open_files(), 1, "only the new driver's lookup counts");
}

#[test]
fn config_names_the_directory_as_exported() {
    let scratch = Scratch::new();
    let link = scratch.top.join("link");
    std::os::unix::fs::symlink(scratch.shared(), &link).expect("symlink");
    let dev = VirtioFs::new(&SharedFsConfig {
        tag: "t".into(),
        dir: link,
        max_open_files: DEFAULT_MAX_OPEN_FILES,
    })
    .expect("device");
    assert_eq!(
        dev.dir().as_os_str().as_bytes(),
        std::fs::canonicalize(scratch.shared())
            .expect("canonical")
            .as_os_str()
            .as_bytes()
    );
}

/// A scratch share holding `names` as empty files.
fn share_with_files(names: &[&str]) -> Scratch {
    let scratch = Scratch::new();
    for name in names {
        std::fs::write(scratch.shared().join(name), b"").expect("file");
    }
    scratch
}

#[test]
fn lookups_of_new_inodes_beyond_the_cap_get_enfile() {
    let scratch = share_with_files(&["a", "b", "c", "d"]);
    std::fs::hard_link(scratch.shared().join("a"), scratch.shared().join("a2")).expect("hard link");
    let mem = memory();
    let mut rig = Rig::with_cap(&mem, &scratch.shared(), 3);
    rig.init();
    let a = rig.lookup_ok(ROOT, "a");
    let b = rig.lookup_ok(ROOT, "b");
    rig.lookup_ok(ROOT, "c");
    assert_eq!(rig.open_files(), 3);
    assert_eq!(rig.lookup(ROOT, "d").error(), errno(libc::ENFILE));
    assert_eq!(rig.open_files(), 3);
    // What the guest holds already costs nothing: the same name again,
    // another name of the same inode, the root, a missing name.
    assert_eq!(rig.lookup_ok(ROOT, "a").nodeid, a.nodeid);
    assert_eq!(rig.lookup_ok(ROOT, "a2").nodeid, a.nodeid);
    assert_eq!(rig.lookup_ok(ROOT, "..").nodeid, ROOT);
    assert_eq!(rig.lookup(ROOT, "missing").error(), errno(libc::ENOENT));
    assert_eq!(rig.open_files(), 3);
    // "a" was named three times: forgetting it twice still holds it.
    rig.forget(a.nodeid, 2);
    assert_eq!(rig.lookup(ROOT, "d").error(), errno(libc::ENFILE));
    // A FORGET of a node the guest was never given frees nothing.
    rig.forget(4242, u64::MAX);
    assert_eq!(rig.lookup(ROOT, "d").error(), errno(libc::ENFILE));
    // BATCH_FORGET of "b" makes room for "d".
    let batch = BatchForgetIn { count: 1, dummy: 0 };
    let one = ForgetOne {
        nodeid: b.nodeid,
        nlookup: 1,
    };
    let req = rig.encode(Opcode::BatchForget, 0, &[batch.as_slice(), one.as_slice()]);
    assert_eq!(rig.raw_request(HIPRIO, &req, 0).len, 0);
    assert_eq!(rig.open_files(), 2);
    let d = rig.lookup_ok(ROOT, "d");
    assert_ne!(d.nodeid, 0);
    assert_eq!(rig.open_files(), 3);
}

#[test]
fn creating_beyond_the_cap_gets_enfile_and_leaves_nothing_on_the_host() {
    let scratch = Scratch::new();
    let mem = memory();
    let mut rig = Rig::with_cap(&mem, &scratch.shared(), 3);
    rig.init();
    // CREATE takes two: the new inode and its open handle.
    let reply = rig.create(ROOT, "one");
    assert_eq!(reply.error(), 0);
    let entry = EntryOut::from_slice(&reply.bytes[16..16 + std::mem::size_of::<EntryOut>()])
        .copied()
        .expect("entry");
    let open = OpenOut::from_slice(
        &reply.bytes[16 + std::mem::size_of::<EntryOut>()
            ..16 + std::mem::size_of::<EntryOut>() + std::mem::size_of::<OpenOut>()],
    )
    .copied()
    .expect("open");
    assert_eq!(rig.open_files(), 2);
    assert_eq!(rig.create(ROOT, "two").error(), errno(libc::ENFILE));
    // One slot is left: enough for a directory, not a second one.
    assert_eq!(rig.mkdir(ROOT, "dir").error(), 0);
    assert_eq!(rig.mkdir(ROOT, "dir2").error(), errno(libc::ENFILE));
    assert_eq!(
        rig.mknod(ROOT, "fifo", libc::S_IFIFO | 0o600, 0).error(),
        errno(libc::ENFILE)
    );
    let symlink = rig.request(
        Opcode::Symlink,
        ROOT,
        &[&cstr("link"), &cstr("/etc/passwd")],
    );
    assert_eq!(symlink.error(), errno(libc::ENFILE));
    for name in ["two", "dir2", "fifo", "link"] {
        assert!(
            std::fs::symlink_metadata(scratch.shared().join(name)).is_err(),
            "{name} was made on the host"
        );
    }
    // A new name for a held inode pins nothing new.
    let link = LinkIn {
        oldnodeid: entry.nodeid,
    };
    let made = rig.request(Opcode::Link, ROOT, &[link.as_slice(), &cstr("one-again")]);
    assert_eq!(made.error(), 0);
    assert_eq!(rig.open_files(), 3);
    // Closing the created file makes room for one more.
    assert_eq!(
        rig.release(Opcode::Release, entry.nodeid, open.fh).error(),
        0
    );
    assert_eq!(rig.open_files(), 2);
    assert_eq!(rig.mkdir(ROOT, "dir2").error(), 0);
}

#[test]
fn opening_beyond_the_cap_gets_enfile_until_a_release() {
    let scratch = share_with_files(&["f"]);
    let mem = memory();
    let mut rig = Rig::with_cap(&mem, &scratch.shared(), 3);
    rig.init();
    let f = rig.lookup_ok(ROOT, "f");
    let first: OpenOut = rig.open(f.nodeid, libc::O_RDONLY).body();
    let dir: OpenOut = rig
        .request(
            Opcode::Opendir,
            ROOT,
            &[OpenIn {
                flags: libc::O_RDONLY as u32,
                fuse_flags: 0,
            }
            .as_slice()],
        )
        .body();
    assert_eq!(rig.open_files(), 3);
    assert_eq!(
        rig.open(f.nodeid, libc::O_RDONLY).error(),
        errno(libc::ENFILE)
    );
    // Releasing a handle that does not exist, or a real one named with the
    // wrong node (the passthrough keeps that one open), frees nothing.
    assert_ne!(rig.release(Opcode::Release, f.nodeid, 777).error(), 0);
    assert_ne!(rig.release(Opcode::Release, ROOT, first.fh).error(), 0);
    assert_eq!(rig.open_files(), 3);
    assert_eq!(rig.release(Opcode::Releasedir, ROOT, dir.fh).error(), 0);
    assert_eq!(rig.open_files(), 2);
    let second: OpenOut = rig.open(f.nodeid, libc::O_RDONLY).body();
    assert_ne!(second.fh, first.fh);
    assert_eq!(rig.read(f.nodeid, first.fh, 16).error(), 0);
}

/// The `off` field of each direntplus record in a READDIRPLUS reply.
fn direntplus_offsets(data: &[u8]) -> Vec<u64> {
    let head = std::mem::size_of::<EntryOut>() + std::mem::size_of::<Dirent>();
    let mut offsets = Vec::new();
    let mut rest = data;
    while rest.len() >= head {
        let dirent = Dirent::from_slice(&rest[std::mem::size_of::<EntryOut>()..head])
            .copied()
            .expect("dirent");
        offsets.push(dirent.off);
        let len = (head + dirent.namelen as usize).next_multiple_of(8);
        rest = &rest[len.min(rest.len())..];
    }
    offsets
}

#[test]
fn readdirplus_beyond_the_cap_lists_what_fits_then_gets_enfile() {
    use fuse_backend_rs::abi::fuse_abi::FsOptions;
    let scratch = share_with_files(&["a", "b", "c"]);
    let mem = memory();
    let mut rig = Rig::with_cap(&mem, &scratch.shared(), 2);
    rig.init_offering(FsOptions::DO_READDIRPLUS.bits() as u32);
    let dir: OpenOut = rig
        .request(
            Opcode::Opendir,
            ROOT,
            &[OpenIn {
                flags: libc::O_RDONLY as u32,
                fuse_flags: 0,
            }
            .as_slice()],
        )
        .body();
    let readdirplus = |rig: &mut Rig, offset: u64| {
        let read = ReadIn {
            fh: dir.fh,
            offset,
            size: 4096,
            ..Default::default()
        };
        rig.request(Opcode::Readdirplus, ROOT, &[read.as_slice()])
    };
    // The handle holds one slot: one entry fits, then the listing stops.
    let first = readdirplus(&mut rig, 0);
    let offsets = direntplus_offsets(first.data());
    assert_eq!(offsets.len(), 1, "{offsets:?}");
    assert_eq!(rig.open_files(), 2);
    // Asked for the rest, the guest hears why there is none.
    let rest = readdirplus(&mut rig, offsets[0]);
    assert_eq!(rest.error(), errno(libc::ENFILE));
    assert_eq!(rig.open_files(), 2);
}
