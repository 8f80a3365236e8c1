//! The virtio-mmio transport (virtio 1.2, 4.2.2), version 2 only. Every
//! register access comes from the guest and is checked: bad offsets read as
//! zero, writes at the wrong time are ignored, invalid queues fail
//! activation instead of being used.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::{lock, BusDevice};

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5041_4c49; // "PALI"

/// Offset of the QueueNotify register, where ioeventfds are attached.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
const CONFIG_OFFSET: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Self {
        let queues = Self::fresh_queues(&*lock(&device));
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queues may only be configured before the driver is done.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn features_page(features: u64, select: u32) -> u32 {
        match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        // The device lock is taken only where needed: the interrupt
        // handler's InterruptStatus read must not wait for queue processing.
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            0x00 => MMIO_MAGIC,
            0x04 => MMIO_VERSION,
            0x08 => lock(&self.device).device_type(),
            0x0c => VENDOR_ID,
            0x10 => Self::features_page(lock(&self.device).features(), self.device_features_select),
            0x34 => queue.map_or(0, |q| u32::from(q.max_size())),
            0x44 => queue.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x14 => self.device_features_select = value,
            0x20 => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    let shift = match self.driver_features_select {
                        0 => 0,
                        1 => 32,
                        _ => return,
                    };
                    self.driver_features &= !(0xffff_ffffu64 << shift);
                    self.driver_features |= u64::from(value) << shift;
                }
            }
            0x24 => self.driver_features_select = value,
            0x30 => self.queue_select = value,
            0x38 => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            0x64 => self.interrupt.ack(value),
            0x70 => self.write_status(value),
            0x80 => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            0x84 => self.with_queue(|q| q.set_desc_table_address(None, Some(value))),
            0x90 => self.with_queue(|q| q.set_avail_ring_address(Some(value), None)),
            0x94 => self.with_queue(|q| q.set_avail_ring_address(None, Some(value))),
            0xa0 => self.with_queue(|q| q.set_used_ring_address(Some(value), None)),
            0xa4 => self.with_queue(|q| q.set_used_ring_address(None, Some(value))),
            QUEUE_NOTIFY_OFFSET => {
                // Normally caught by an ioeventfd in KVM; if it reaches us,
                // forward it the same way.
                let device = lock(&self.device);
                if let Some(evt) = device.queue_events().get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            _ => log::debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits; anything else is ignored.
        if value & self.status != self.status {
            log::warn!(
                "virtio-mmio: driver cleared status bits ({:#x} -> {value:#x}), ignored",
                self.status
            );
            return;
        }
        let added = value & !self.status;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = lock(&self.device).features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if !acceptable {
                // Leaving FEATURES_OK unset tells the driver we refuse.
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = value;
        if added & STATUS_DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        if self.status & ready != ready {
            self.status |= STATUS_FAILED;
            return;
        }
        let device_queues = Self::fresh_queues(&*lock(&self.device));
        let queues = std::mem::replace(&mut self.queues, device_queues);
        // Only the copies handed to the device are used from now on; the
        // transport keeps fresh ones so a reset starts clean.
        let result = lock(&self.device).activate(
            self.mem.clone(),
            queues,
            self.driver_features,
            self.interrupt.clone(),
        );
        if let Err(e) = result {
            log::error!("virtio-mmio: cannot activate device: {e}");
            self.status |= STATUS_DEVICE_NEEDS_RESET;
        }
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.queues = Self::fresh_queues(&*lock(&self.device));
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.interrupt.ack(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if self.status & STATUS_DRIVER_OK == 0 {
                lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
            }
        } else if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ActivateError;
    use super::*;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    struct Dummy {
        evts: Vec<EventFd>,
        activated: Option<(usize, u64)>,
        resets: usize,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            19
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            1 << VIRTIO_F_VERSION_1
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _m: GuestMemoryMmap,
            q: Vec<Queue>,
            f: u64,
            _i: Interrupt,
        ) -> Result<(), ActivateError> {
            self.activated = Some((q.len(), f));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let dev = Arc::new(Mutex::new(Dummy {
            evts: vec![],
            activated: None,
            resets: 0,
        }));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");
        let irq = Interrupt::new(EventFd::new(0).expect("eventfd"));
        (MmioTransport::new(dev.clone(), mem, irq), dev)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identifies_itself() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, 0), MMIO_MAGIC);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), 19);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1); // VERSION_1 is bit 32
        w(&mut t, 0x30, 1);
        assert_eq!(r(&mut t, 0x34), 16);
        w(&mut t, 0x30, 7);
        assert_eq!(r(&mut t, 0x34), 0, "a queue that does not exist has size 0");
    }

    #[test]
    fn odd_sized_and_unaligned_accesses_are_harmless() {
        let (mut t, _) = transport();
        let mut b = [0xffu8; 2];
        t.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(0x71, &[1, 2, 3, 4]);
        t.write(0x70, &[1]);
        assert_eq!(r(&mut t, 0x70), 0);
        let mut cfg = [0u8; 1];
        t.read(0x104, &mut cfg);
        assert_eq!(cfg[0], 4);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (mut t, dev) = transport();
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert!(lock(&dev).activated.is_none());
    }

    #[test]
    fn negotiation_activates_and_reset_resets() {
        let (mut t, dev) = transport();
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        w(&mut t, 0x70, s);
        assert_eq!(r(&mut t, 0x70), s);
        w(&mut t, 0x70, s | STATUS_DRIVER_OK);
        assert_eq!(lock(&dev).activated, Some((2, 1 << 32)));
        // Queue writes after DRIVER_OK are ignored.
        w(&mut t, 0x38, 8);
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x70), 0);
        assert_eq!(lock(&dev).resets, 1);
    }
}
