//! The i8042 keyboard controller, reduced to what matters here: the guest
//! resets the machine by writing 0xfe to port 0x64 (`reboot=k`), which is
//! how a palisade guest ends its VM.

use vm_superio::I8042Device;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;

pub struct ResetController {
    dev: I8042Device<EventFdTrigger>,
}

impl ResetController {
    pub fn new(reset: EventFdTrigger) -> Self {
        ResetController {
            dev: I8042Device::new(reset),
        }
    }
}

impl BusDevice for ResetController {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            *byte = self.dev.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.dev.write(offset, *byte) {
                log::error!("i8042: cannot signal the guest's reset: {e}");
            }
        }
    }
}
