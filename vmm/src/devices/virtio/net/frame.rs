//! Frames between the guest's descriptor chains and the tap, each with the
//! 12-byte `virtio_net_hdr_v1` in front (the tap is opened with
//! `IFF_VNET_HDR` and a header size of 12, so the header passes through to
//! the host kernel, which does the checksum and segmentation offloads).
//!
//! Every length comes from the guest and is checked here, before a byte is
//! copied: a TX chain must be driver-to-device only and hold a header and
//! at most one maximal GSO frame; RX chains must be device-writable, and a
//! frame is only written where the guest's buffers hold it whole.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// `sizeof(struct virtio_net_hdr_v1)`: with VIRTIO_F_VERSION_1 the header
/// always has `num_buffers`, merged RX buffers or not.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame either way: a 64 KiB GSO packet (the IP length field's
/// limit) with an Ethernet header and a VLAN tag, after the vnet header.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65535 + 14 + 4;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("descriptor chain is not in guest memory or has the wrong direction: {0}")]
    BadChain(String),
    #[error("a TX chain of {0} bytes is shorter than the {VNET_HDR_LEN}-byte header")]
    TooShort(usize),
    #[error("a TX chain of {0} bytes is longer than the largest frame ({MAX_FRAME_LEN} bytes)")]
    TooLong(usize),
}

/// Reads the header and frame a guest put in one TX chain.
pub fn read_tx_frame(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if chain.clone().any(|d| d.is_write_only()) {
        return Err(FrameError::BadChain(
            "a TX chain has a device-writable buffer".into(),
        ));
    }
    let mut reader = chain
        .reader(mem)
        .map_err(|e| FrameError::BadChain(e.to_string()))?;
    let len = reader.available_bytes();
    if len < VNET_HDR_LEN {
        return Err(FrameError::TooShort(len));
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    buf.clear();
    buf.resize(len, 0);
    reader
        .read_exact(buf)
        .map_err(|e| FrameError::BadChain(e.to_string()))
}

/// Where one RX frame went.
#[derive(Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into this many chains, all returned to the guest.
    Delivered(u16),
    /// The guest has not given enough buffers yet: nothing was consumed,
    /// the frame waits for the next RX kick.
    NoBuffers,
    /// The frame cannot ever fit the guest's buffers as the driver set them
    /// up (one chain without merged buffers, and it is too small), or a
    /// buffer was not in guest memory: dropped, the chains returned empty.
    Dropped(String),
}

/// Writes `frame` (vnet header first) into the guest's RX buffers: across
/// as many chains as it takes when the driver accepted merged RX buffers,
/// into one chain otherwise, with the header's `num_buffers` set. The
/// chains are measured before anything is written, so the count is known
/// up front and a frame that does not fit leaves the queue as it was.
pub fn write_rx_frame(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &[u8],
    mergeable: bool,
) -> RxOutcome {
    debug_assert!(frame.len() >= VNET_HDR_LEN);
    let mut chains = Vec::new();
    let mut room = 0usize;
    let mut failure = None;
    while room < frame.len() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // Not enough buffers yet: give back what was taken; nothing
            // was written or published.
            for _ in 0..chains.len() {
                queue.go_to_previous_position();
            }
            return RxOutcome::NoBuffers;
        };
        let n = match writable_len(mem, &chain) {
            Ok(0) => Err("an RX chain with no room".to_string()),
            // The header is written in one piece, into the first chain.
            Ok(n) if chains.is_empty() && n < VNET_HDR_LEN => Err(format!(
                "an RX chain of {n} bytes is shorter than the {VNET_HDR_LEN}-byte header"
            )),
            other => other,
        };
        chains.push(chain);
        match n {
            Ok(n) => room += n,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if !mergeable && room < frame.len() {
            failure = Some(format!(
                "a {}-byte frame does not fit the guest's {room}-byte RX buffer (merged RX buffers are off)",
                frame.len()
            ));
            break;
        }
    }
    let mut lens = vec![0u32; chains.len()];
    if failure.is_none() {
        let count = chains.len() as u16;
        let mut header = [0u8; VNET_HDR_LEN];
        header.copy_from_slice(&frame[..VNET_HDR_LEN]);
        header[NUM_BUFFERS_OFFSET..].copy_from_slice(&count.to_le_bytes());
        let mut rest: &[u8] = &frame[VNET_HDR_LEN..];
        for (i, chain) in chains.iter().enumerate() {
            let head = if i == 0 { &header[..] } else { &[][..] };
            match fill_chain(mem, chain.clone(), head, rest) {
                Ok((n, taken)) => {
                    lens[i] = n as u32;
                    rest = &rest[taken..];
                }
                Err(e) => {
                    failure = Some(e);
                    lens.iter_mut().for_each(|l| *l = 0);
                    break;
                }
            }
        }
    }
    for (chain, len) in chains.iter().zip(&lens) {
        if let Err(e) = queue.add_used(mem, chain.head_index(), *len) {
            log::warn!("virtio-net: cannot return an RX buffer: {e}");
        }
    }
    match failure {
        Some(reason) => RxOutcome::Dropped(reason),
        None => RxOutcome::Delivered(chains.len() as u16),
    }
}

/// How many bytes the chain's buffers take, all of which must be
/// device-writable.
fn writable_len(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<&GuestMemoryMmap>,
) -> Result<usize, String> {
    if chain.clone().any(|d| !d.is_write_only()) {
        return Err("an RX chain has a driver-to-device buffer".into());
    }
    let writer = chain.clone().writer(mem).map_err(|e| e.to_string())?;
    Ok(writer.available_bytes())
}

/// Writes `head` and then as much of `data` as fits; returns the bytes
/// written and how many of `data` were taken.
fn fill_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    head: &[u8],
    data: &[u8],
) -> Result<(usize, usize), String> {
    let mut writer = chain.writer(mem).map_err(|e| e.to_string())?;
    writer.write_all(head).map_err(|e| e.to_string())?;
    let taken = writer.available_bytes().min(data.len());
    writer
        .write_all(&data[..taken])
        .map_err(|e| e.to_string())?;
    Ok((head.len() + taken, taken))
}
