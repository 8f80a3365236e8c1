//! virtio-fs (device type 26): one host directory exported to the guest,
//! served in-process by fuse-backend-rs (the way Kata's Dragonball does
//! "inline virtio-fs"), without a virtiofsd daemon.
//!
//! Queue 0 is the high-priority queue (FORGET, INTERRUPT), queue 1 the one
//! request queue. Each descriptor chain holds one FUSE request in its
//! readable part and room for the reply in its writable part; the FUSE
//! server parses the request straight out of guest memory with
//! bounds-checked readers and writes the reply the same way.
//!
//! Requests are served on the VMM's event thread, one at a time, like the
//! vsock device's packets: simple, and enough for start-up and container
//! root filesystems. A slow host file system therefore also delays vsock
//! traffic; a worker thread per queue is the later optimization.
//!
//! What the guest can and cannot reach is documented in [`passthrough`].

pub mod open_files;
pub mod passthrough;
pub mod shared_dir;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::passthrough::{new_passthrough, SharedDirFs};
use super::{ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::config::SharedFsConfig;
use crate::event_loop::{EpollCtx, EventHandler};

pub const VIRTIO_ID_FS: u32 = 26;
/// Longest tag the config space holds (virtio 1.2, 5.11.4).
pub const MAX_TAG_LEN: usize = 36;
/// The high-priority queue (FORGET and INTERRUPT requests).
const HIPRIO: usize = 0;
/// The only request queue.
const REQUEST: usize = 1;
const NUM_REQUEST_QUEUES: u32 = 1;
/// FORGETs are tiny and the guest never waits for them; requests can each
/// take many descriptors (a 1 MiB read is 256 pages), so that ring is big.
const QUEUE_SIZES: [u16; 2] = [256, 1024];
/// Config space: the tag, NUL-padded, then num_request_queues (u32 LE).
const CONFIG_LEN: usize = MAX_TAG_LEN + 4;
/// Most reply space one request may offer. The server sizes some host
/// buffers by what the guest says it can take (READDIR allocates its whole
/// `size`, which only has to fit the chain), and a chain can name the same
/// guest pages over and over; Linux never needs more than its largest read
/// (max_pages = 256 pages, what the server negotiates) plus headers.
const MAX_REPLY_LEN: usize = MAX_BUFFER_SIZE as usize + 4096;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag is empty: the guest mounts the share by its tag")]
    EmptyTag,
    #[error("virtio-fs tag {tag:?} is {len} bytes long; the limit is {MAX_TAG_LEN} bytes")]
    TagTooLong { tag: String, len: usize },
    #[error("virtio-fs tag {tag:?} contains a NUL byte")]
    TagHasNul { tag: String },
    #[error("shared directory {}: {source}", .path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shared directory {} is not a directory", .path.display())]
    NotADirectory { path: PathBuf },
    #[error("shared directory {} is not valid UTF-8, which the FUSE server needs", .path.display())]
    NotUtf8 { path: PathBuf },
    #[error("cannot export the shared directory {}: {source}", .path.display())]
    Passthrough {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("virtio-fs may hold 0 open files: the guest could not even look up a file; allow at least one")]
    NoOpenFiles,
    #[error("cannot create the virtio-fs queue events: {0}")]
    QueueEvents(#[source] std::io::Error),
}

/// Checks the tag alone (what the guest will see in the config space).
pub fn validate_tag(tag: &str) -> Result<(), FsError> {
    if tag.is_empty() {
        return Err(FsError::EmptyTag);
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(FsError::TagTooLong {
            tag: tag.to_owned(),
            len: tag.len(),
        });
    }
    // The guest reads the tag up to the first NUL: an inner NUL would
    // silently export the share under a shorter name.
    if tag.contains('\0') {
        return Err(FsError::TagHasNul {
            tag: tag.to_owned(),
        });
    }
    Ok(())
}

/// Checks a shared-fs configuration and returns the directory as an
/// absolute path with symlinks resolved: the server opens it by path, so
/// it must not depend on the working directory.
pub fn validate(config: &SharedFsConfig) -> Result<PathBuf, FsError> {
    validate_tag(&config.tag)?;
    if config.max_open_files == 0 {
        return Err(FsError::NoOpenFiles);
    }
    let dir = std::fs::canonicalize(&config.dir).map_err(|source| FsError::Dir {
        path: config.dir.clone(),
        source,
    })?;
    let meta = std::fs::metadata(&dir).map_err(|source| FsError::Dir {
        path: config.dir.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(FsError::NotADirectory {
            path: config.dir.clone(),
        });
    }
    Ok(dir)
}

/// Why one request got no reply (it is still returned to the guest, with
/// nothing written).
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("descriptor chain unusable: {0}")]
    Chain(fuse_backend_rs::transport::Error),
    #[error("reply buffers of {0} bytes, more than the {MAX_REPLY_LEN} a request may offer")]
    ReplyTooLarge(usize),
    #[error("FUSE request rejected: {0}")]
    Fuse(fuse_backend_rs::Error),
}

/// Serves one FUSE request; returns how many bytes of reply were written.
fn serve(
    server: &Server<Arc<SharedDirFs>>,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<u32, RequestError> {
    // Both constructors check every descriptor against guest memory and the
    // total length against overflow before anything is read or written.
    let reader = Reader::from_descriptor_chain(mem, chain.clone()).map_err(RequestError::Chain)?;
    let writer = VirtioFsWriter::new(mem, chain).map_err(RequestError::Chain)?;
    if writer.available_bytes() > MAX_REPLY_LEN {
        return Err(RequestError::ReplyTooLarge(writer.available_bytes()));
    }
    let written = server
        .handle_message(reader, Writer::VirtioFs(writer), None, None)
        .map_err(RequestError::Fuse)?;
    // The writer cannot write more than the chain holds, and a chain is at
    // most queue-size descriptors of at most 4 GiB each; saturate rather
    // than trust that arithmetic.
    Ok(u32::try_from(written).unwrap_or(u32::MAX))
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

pub struct VirtioFs {
    config_space: [u8; CONFIG_LEN],
    dir: PathBuf,
    queue_evts: Vec<EventFd>,
    /// Also held by `server`; kept here to reset it.
    fs: Arc<SharedDirFs>,
    server: Server<Arc<SharedDirFs>>,
    active: Option<Active>,
}

impl VirtioFs {
    /// Exports `config.dir` under `config.tag`. The directory's root is
    /// opened now, so a bad directory fails here rather than at mount time.
    pub fn new(config: &SharedFsConfig) -> Result<Self, FsError> {
        let dir = validate(config)?;
        let root = dir.to_str().ok_or_else(|| FsError::NotUtf8 {
            path: config.dir.clone(),
        })?;
        let fs = new_passthrough(root, config.max_open_files)
            .map(Arc::new)
            .map_err(|source| FsError::Passthrough {
                path: config.dir.clone(),
                source,
            })?;
        let queue_evts = QUEUE_SIZES
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(FsError::QueueEvents)?;
        let mut config_space = [0u8; CONFIG_LEN];
        config_space[..config.tag.len()].copy_from_slice(config.tag.as_bytes());
        config_space[MAX_TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        Ok(VirtioFs {
            config_space,
            dir,
            queue_evts,
            server: Server::new(fs.clone()),
            fs,
            active: None,
        })
    }

    /// The exported directory, canonicalized.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Host fds held for the guest now, and the cap on them.
    pub fn open_files(&self) -> (usize, usize) {
        let files = self.fs.open_files();
        (files.in_use(), files.cap())
    }

    /// Serves every request the guest has queued on `index`.
    fn process_queue(&mut self, index: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = a.queues.get_mut(index) else {
            return;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let written = match serve(&self.server, &a.mem, chain) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("virtio-fs: {e}");
                    0
                }
            };
            // Every chain goes back, even a broken one, so the guest's ring
            // never fills up with buffers the device kept.
            if let Err(e) = queue.add_used(&a.mem, head, written) {
                log::warn!("virtio-fs: cannot return a buffer: {e}");
            }
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        // No VIRTIO_FS_F_NOTIFICATION (no notification queue) and no DAX
        // window: neither is needed to share a directory.
        1 << VIRTIO_F_VERSION_1
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_window(&self.config_space, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        log::debug!("virtio-fs: guest wrote to read-only config space");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        _features: u64,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        super::check_queues(&queues, &mem, QUEUE_SIZES.len())?;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        // Forget every inode and open file of the old driver (closing their
        // host fds), as FUSE_DESTROY would; the root is reopened for the
        // next driver.
        self.fs.destroy();
    }
}

impl EventHandler for VirtioFs {
    fn init(&mut self, ctx: &EpollCtx) -> std::io::Result<()> {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            ctx.add(evt.as_raw_fd(), i as u32, EventSet::IN)?;
        }
        Ok(())
    }

    fn handle(&mut self, id: u32, _events: EventSet, _ctx: &EpollCtx) {
        let index = id as usize;
        if let Some(evt) = self.queue_evts.get(index) {
            let _ = evt.read();
        }
        if index == HIPRIO || index == REQUEST {
            self.process_queue(index);
        }
    }
}

#[cfg(test)]
mod tests;
