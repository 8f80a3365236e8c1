//! The device event loop's allowlist (the main thread once the VM runs):
//! epoll over the queue eventfds, the stop signals' signalfd and the vsock
//! device's unix sockets, and the VM's teardown.
//!
//! The vsock device speaks only AF_UNIX: it accepts host clients on its
//! listening socket (bound before the filter) and connects to `<uds>_P`
//! for guest-initiated connections. No other socket family, no bind or
//! listen, no fd passing (sendmsg/recvmsg) is allowed.

use super::rules::Allow;
use super::{Rules, SeccompError};

pub fn rules() -> Result<Rules, SeccompError> {
    Ok(Allow::default()
        .any(&[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            // Eventfds, the signalfd, socket data.
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_shutdown,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_fcntl,
            // Teardown: the vsock sockets are removed.
            libc::SYS_unlink,
            libc::SYS_unlinkat,
        ])
        .with_arg_in(libc::SYS_socket, 0, &[libc::AF_UNIX as u64])?
        // Rust's set_nonblocking on an accepted stream; the checksum and
        // TSO offloads virtio-net's driver accepted, set on its tap.
        .with_arg_in(
            libc::SYS_ioctl,
            1,
            &[
                libc::FIONBIO,
                crate::devices::virtio::net::tap::TUNSETOFFLOAD,
            ],
        )?
        // A socket's pending error, after a non-blocking connect.
        .with_arg_in(libc::SYS_getsockopt, 2, &[libc::SO_ERROR as u64])?
        // Stopping the vCPUs: kick each out of KVM_RUN with SIGRTMIN.
        .with_arg_in(
            libc::SYS_tgkill,
            2,
            &[crate::vstate::vcpu::kick_signal() as u64],
        )?
        .build())
}
