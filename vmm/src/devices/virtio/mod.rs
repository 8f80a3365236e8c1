//! virtio devices over the MMIO transport.

pub mod fs;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: modern devices only.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// VIRTIO_RING_F_EVENT_IDX: fewer notifications both ways.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// InterruptStatus bit: a used ring was updated.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt line: an irqfd plus the MMIO InterruptStatus bits.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            irqfd: Arc::new(irqfd),
        }
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    pub fn signal_used_queue(&self) {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            log::error!("cannot raise the virtio interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not ready or its rings are not in guest memory")]
    BadQueue(usize),
    #[error("the driver set up {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
}

/// What every device checks first on activation: the driver set up
/// exactly `want` queues, each ready and with its rings in guest memory.
pub fn check_queues(
    queues: &[Queue],
    mem: &GuestMemoryMmap,
    want: usize,
) -> Result<(), ActivateError> {
    if queues.len() != want {
        return Err(ActivateError::QueueCount {
            got: queues.len(),
            want,
        });
    }
    match queues.iter().position(|q| !q.is_valid(mem)) {
        Some(i) => Err(ActivateError::BadQueue(i)),
        None => Ok(()),
    }
}

/// Copies the window `offset..offset + data.len()` of a device's config
/// space into `data`; bytes past its end (or an offset the guest made
/// absurd) read as zero.
pub fn read_config_window(config: &[u8], offset: u64, data: &mut [u8]) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = start
            .checked_add(i)
            .and_then(|j| config.get(j))
            .copied()
            .unwrap_or(0);
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Eventfds the driver's queue notifications arrive on, one per queue
    /// (registered with KVM as ioeventfds by the transport's owner).
    fn queue_events(&self) -> &[EventFd];
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the driver's queues and negotiated features.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        features: u64,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError>;
    /// Drops everything the driver set up (status written as 0).
    fn reset(&mut self);
}
