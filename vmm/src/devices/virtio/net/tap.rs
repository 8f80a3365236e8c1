//! The host side of virtio-net: a tap device the shim opened (in the pod's
//! network namespace, with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) and passed
//! to the VMM as a file descriptor. The VMM never opens network devices by
//! name, so it needs no network privileges and no view of the host's
//! interfaces.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::frame::VNET_HDR_LEN;

// <linux/if_tun.h>
/// Made on the event loop thread (its seccomp filter allows it).
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_VNET_HDR: libc::c_short = 0x4000;
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// What the device needs of its host side; a tap in production, a
/// seqpacket socket pair in the unit tests.
pub trait NetBackend: AsRawFd + Send {
    /// Reads one frame (vnet header first); `WouldBlock` when none waits.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (vnet header first).
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// Tells the host kernel which offloads the guest accepted on RX
    /// (`TUN_F_*`), so it hands over only packets the guest can take.
    fn set_offloads(&mut self, tun_flags: u32) -> io::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("fd {fd} is not a tap device: {source}")]
    NotATap { fd: RawFd, source: io::Error },
    #[error("fd {fd} is a tun device, not a tap (IFF_TAP): the shim must open it with IFF_TAP")]
    NotTapMode { fd: RawFd },
    #[error("the tap on fd {fd} was opened without IFF_VNET_HDR: offloads cannot pass through")]
    NoVnetHdr { fd: RawFd },
    #[error("setting up the tap on fd {fd}: {what}: {source}")]
    Setup {
        fd: RawFd,
        what: &'static str,
        source: io::Error,
    },
}

pub struct Tap {
    fd: OwnedFd,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Takes over a tap fd: checks it is a tap with vnet headers, sets the
    /// header size to the v1 header's and makes it non-blocking.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes an ifreq into `req`, which is one.
        if unsafe { libc::ioctl(raw, TUNGETIFF, &mut req) } < 0 {
            return Err(TapError::NotATap {
                fd: raw,
                source: io::Error::last_os_error(),
            });
        }
        if req.flags & IFF_TAP == 0 {
            return Err(TapError::NotTapMode { fd: raw });
        }
        if req.flags & IFF_VNET_HDR == 0 {
            return Err(TapError::NoVnetHdr { fd: raw });
        }
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int from the pointer.
        if unsafe { libc::ioctl(raw, TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(TapError::Setup {
                fd: raw,
                what: "setting the vnet header size",
                source: io::Error::last_os_error(),
            });
        }
        set_nonblocking(raw).map_err(|source| TapError::Setup {
            fd: raw,
            what: "making it non-blocking",
            source,
        })?;
        Ok(Tap { fd })
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads into `buf`, within its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: writes from `frame`, within its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn set_offloads(&mut self, tun_flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD,
                tun_flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
