//! A write-only port the agent writes progress markers to; each write is
//! timestamped on the host clock, so boot phases are measured without
//! trusting the guest's clock.

use crate::devices::bus::BusDevice;
use crate::{monotonic_ns, EventSink, VmEvent};

pub struct BootSignalPort {
    events: EventSink,
}

impl BootSignalPort {
    pub fn new(events: EventSink) -> Self {
        BootSignalPort { events }
    }
}

impl BusDevice for BootSignalPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let [value, ..] = data {
            (self.events)(VmEvent::BootSignal {
                value: *value,
                mono_ns: monotonic_ns(),
            });
        }
    }
}
