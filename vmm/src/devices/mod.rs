//! Emulated devices: buses, legacy PC devices, virtio.

pub mod bus;
pub mod legacy;
pub mod virtio;
