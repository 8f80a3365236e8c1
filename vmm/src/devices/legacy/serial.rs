//! 8250 UART at 0x3f8 (IRQ 4): the guest console, written to a log.

use std::io::Write;

use vm_superio::Serial;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM_PORT_LEN: u64 = 8;

pub struct SerialConsole {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            uart: Serial::new(interrupt, out),
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            *byte = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            // A console that cannot be written (full disk) must not stop
            // the guest: drop the byte.
            let _ = self.uart.write(offset, *byte);
        }
    }
}
