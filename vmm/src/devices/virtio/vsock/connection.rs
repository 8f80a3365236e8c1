//! One stream connection between a host unix socket and a guest vsock
//! port: its state, the two byte directions, and credit flow control
//! (virtio 1.2, 5.10.6.3). Generic over the host stream so it can be tested
//! with in-memory streams.

use std::io::{ErrorKind, Read, Write};

use super::packet::{Header, HOST_CID, TYPE_STREAM};

/// Receive buffer we advertise to the guest per connection. The guest may
/// have at most this many bytes in flight towards the host; more is a
/// protocol violation and resets the connection.
pub const HOST_BUF_ALLOC: u32 = 256 * 1024;
/// Most bytes read from the host stream at once for the guest.
pub const STAGING_MAX: usize = 64 * 1024;
/// Longest `CONNECT <port>\n` line a host client may send.
pub const MAX_CONNECT_LINE: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A host client connected to the listener; reading `CONNECT <port>\n`.
    AwaitingConnectLine(Vec<u8>),
    /// We asked the guest to accept (REQUEST sent); waiting for RESPONSE.
    Connecting,
    Established,
    /// The host side is gone; we told the guest (SHUTDOWN) and wait for its RST.
    Closing,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectLineError {
    #[error("CONNECT line longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
    #[error("expected `CONNECT <port>`, got {0:?}")]
    Malformed(String),
    #[error("client hung up before finishing its CONNECT line")]
    HungUp,
}

/// What reading a host client's first line produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectLine {
    /// Not complete yet: wait for more bytes.
    Partial,
    Port(u32),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("guest sent {got} bytes beyond the {HOST_BUF_ALLOC}-byte credit it was given")]
    CreditExceeded { got: usize },
    #[error("host stream failed: {0}")]
    Host(ErrorKind),
}

pub struct Connection<S> {
    pub stream: S,
    pub state: State,
    pub host_port: u32,
    pub guest_port: u32,
    guest_cid: u64,

    // Guest → host.
    to_host: Vec<u8>,
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
    recv_cnt: u32,
    /// The guest will send nothing more: shut our write side once flushed.
    guest_done_sending: bool,
    /// The guest closed its socket (SHUTDOWN of both directions) and waits
    /// for our RST, which goes once the host has taken what it sent.
    pub guest_closed: bool,

    // Host → guest.
    staging: Vec<u8>,
    staging_off: usize,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    sent_cnt: u32,
    /// The host stream reached end of file.
    pub host_eof: bool,
    /// Queued in the backend's list of connections with data for the guest.
    pub in_ready: bool,
}

impl<S: Read + Write> Connection<S> {
    pub fn new(stream: S, state: State, host_port: u32, guest_port: u32, guest_cid: u64) -> Self {
        Connection {
            stream,
            state,
            host_port,
            guest_port,
            guest_cid,
            to_host: Vec::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            recv_cnt: 0,
            guest_done_sending: false,
            guest_closed: false,
            staging: Vec::new(),
            staging_off: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            sent_cnt: 0,
            host_eof: false,
            in_ready: false,
        }
    }

    /// A header from us to the guest for this connection. Every packet
    /// carries our credit, so the guest's view of it is now current.
    pub fn header(&mut self, op: u16, len: u32, flags: u32) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: HOST_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Reads what the host client has sent of its `CONNECT <port>\n` line.
    /// Only reads up to the newline, so data after it stays in the socket.
    pub fn read_connect_line(&mut self) -> Result<ConnectLine, ConnectLineError> {
        let State::AwaitingConnectLine(line) = &mut self.state else {
            return Ok(ConnectLine::Partial);
        };
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return Err(ConnectLineError::HungUp),
                Ok(_) if byte[0] == b'\n' => {
                    return parse_connect_line(line).map(ConnectLine::Port)
                }
                Ok(_) if line.len() >= MAX_CONNECT_LINE => return Err(ConnectLineError::TooLong),
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(ConnectLine::Partial),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(ConnectLineError::HungUp),
            }
        }
    }

    /// Records the credit the guest advertises in any packet it sends.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// Bytes we may still send to the guest. A guest that claims to have
    /// forwarded more than we sent gets no credit rather than a huge one.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.sent_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Takes guest payload for the host stream, writing what the stream
    /// accepts now and keeping the rest (within the credit we gave).
    pub fn recv_from_guest(&mut self, payload: &[u8]) -> Result<(), FlowError> {
        let buffered = self.to_host.len() + payload.len();
        if buffered > HOST_BUF_ALLOC as usize {
            return Err(FlowError::CreditExceeded { got: buffered });
        }
        self.recv_cnt = self.recv_cnt.wrapping_add(payload.len() as u32);
        self.to_host.extend_from_slice(payload);
        self.flush_to_host()
    }

    /// The guest will send nothing more; shut the host write side once the
    /// buffered bytes are out.
    pub fn guest_shutdown_send(&mut self) -> Result<(), FlowError> {
        self.guest_done_sending = true;
        self.flush_to_host()
    }

    pub fn guest_finished_sending(&self) -> bool {
        self.guest_done_sending && self.to_host.is_empty()
    }

    /// Writes buffered guest bytes to the host stream.
    pub fn flush_to_host(&mut self) -> Result<(), FlowError> {
        while !self.to_host.is_empty() {
            match self.stream.write(&self.to_host) {
                Ok(0) => return Err(FlowError::Host(ErrorKind::WriteZero)),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(FlowError::Host(e.kind())),
            }
        }
        Ok(())
    }

    pub fn has_bytes_for_host(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// True when the guest's idea of our free buffer has shrunk below half
    /// and we have freed space it does not know about yet.
    pub fn needs_credit_update(&self) -> bool {
        let guest_view_used = self.recv_cnt.wrapping_sub(self.fwd_cnt_sent);
        self.fwd_cnt != self.fwd_cnt_sent && guest_view_used > HOST_BUF_ALLOC / 2
    }

    pub fn has_staged(&self) -> bool {
        self.staging_off < self.staging.len()
    }

    /// Whether the host stream should be polled for bytes for the guest.
    pub fn wants_host_read(&self) -> bool {
        self.state == State::Established
            && !self.guest_closed
            && !self.host_eof
            && !self.has_staged()
            && self.peer_credit() > 0
    }

    /// Reads host bytes into the staging buffer, within the guest's credit.
    /// Returns Ok(false) when nothing is available right now.
    pub fn fill_staging(&mut self) -> Result<bool, FlowError> {
        if self.has_staged() {
            return Ok(true);
        }
        let want = (self.peer_credit() as usize).min(STAGING_MAX);
        if want == 0 || self.host_eof {
            return Ok(false);
        }
        self.staging.resize(want, 0);
        self.staging_off = 0;
        loop {
            match self.stream.read(&mut self.staging) {
                Ok(0) => {
                    self.staging.clear();
                    self.host_eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.staging.truncate(n);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.staging.clear();
                    return Ok(false);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.staging.clear();
                    return Err(FlowError::Host(e.kind()));
                }
            }
        }
    }

    /// Up to `max` staged bytes, to be sent to the guest; call
    /// [`Self::consume_staged`] with what was actually sent.
    pub fn staged(&self, max: usize) -> &[u8] {
        let end = self.staging.len().min(self.staging_off.saturating_add(max));
        &self.staging[self.staging_off..end]
    }

    pub fn consume_staged(&mut self, n: usize) {
        self.staging_off = (self.staging_off + n).min(self.staging.len());
        self.sent_cnt = self.sent_cnt.wrapping_add(n as u32);
        if !self.has_staged() {
            self.staging.clear();
            self.staging_off = 0;
        }
    }
}

/// Parses `CONNECT <port>` (without the newline).
pub fn parse_connect_line(line: &[u8]) -> Result<u32, ConnectLineError> {
    let malformed = || ConnectLineError::Malformed(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| malformed())?;
    let port = text.strip_prefix("CONNECT ").ok_or_else(malformed)?;
    port.trim_end_matches('\r')
        .parse::<u32>()
        .map_err(|_| malformed())
}

#[cfg(test)]
mod tests {
    use super::super::packet::OP_RW;
    use super::*;
    use std::collections::VecDeque;
    use std::io;

    /// An in-memory host stream: `input` is what the host client sent,
    /// `output` what reached it; `accept` limits writes to model a full
    /// socket buffer.
    #[derive(Default)]
    struct FakeStream {
        input: VecDeque<u8>,
        eof: bool,
        output: Vec<u8>,
        accept: usize,
    }

    impl Read for FakeStream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.input.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.input.len());
            for (i, b) in self.input.drain(..n).enumerate() {
                buf[i] = b;
            }
            Ok(n)
        }
    }

    impl Write for FakeStream {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.accept == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.accept);
            self.accept -= n;
            self.output.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn conn(input: &[u8], eof: bool) -> Connection<FakeStream> {
        let stream = FakeStream {
            input: input.iter().copied().collect(),
            eof,
            accept: usize::MAX,
            ..Default::default()
        };
        Connection::new(
            stream,
            State::AwaitingConnectLine(Vec::new()),
            1 << 30,
            1024,
            3,
        )
    }

    #[test]
    fn connect_line_parses_and_leaves_the_rest() {
        let mut c = conn(b"CONNECT 1024\nhello", false);
        assert_eq!(c.read_connect_line(), Ok(ConnectLine::Port(1024)));
        assert_eq!(c.stream.input.len(), 5);
    }

    #[test]
    fn connect_line_can_arrive_in_pieces() {
        let mut c = conn(b"CONN", false);
        assert_eq!(c.read_connect_line(), Ok(ConnectLine::Partial));
        c.stream.input.extend(b"ECT 52\n");
        assert_eq!(c.read_connect_line(), Ok(ConnectLine::Port(52)));
    }

    #[test]
    fn connect_line_that_never_ends_is_rejected() {
        let mut c = conn(&[b'C'; 1000], false);
        assert_eq!(c.read_connect_line(), Err(ConnectLineError::TooLong));
    }

    #[test]
    fn client_hanging_up_mid_line_is_reported() {
        let mut c = conn(b"CONNECT 10", true);
        assert_eq!(c.read_connect_line(), Err(ConnectLineError::HungUp));
    }

    #[test]
    fn malformed_lines_are_rejected() {
        for bad in [
            &b"connect 1"[..],
            b"CONNECT",
            b"CONNECT -1",
            b"CONNECT 99999999999",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse_connect_line(bad), Err(ConnectLineError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn guest_bytes_are_buffered_when_host_is_slow_and_credit_is_enforced() {
        let mut c = conn(b"", false);
        c.state = State::Established;
        c.stream.accept = 3;
        c.recv_from_guest(b"hello").expect("within credit");
        assert_eq!(c.stream.output, b"hel");
        assert!(c.has_bytes_for_host());
        c.stream.accept = usize::MAX;
        c.flush_to_host().expect("flush");
        assert_eq!(c.stream.output, b"hello");
        assert_eq!(c.header(OP_RW, 0, 0).fwd_cnt, 5);

        c.stream.accept = 0;
        let too_much = vec![0u8; HOST_BUF_ALLOC as usize + 1];
        assert!(matches!(
            c.recv_from_guest(&too_much),
            Err(FlowError::CreditExceeded { .. })
        ));
    }

    #[test]
    fn host_reads_respect_guest_credit() {
        let mut c = conn(&[7u8; 100], false);
        c.state = State::Established;
        assert!(
            !c.wants_host_read(),
            "no credit before the guest advertises any"
        );
        c.update_peer_credit(&Header {
            buf_alloc: 40,
            fwd_cnt: 0,
            ..Default::default()
        });
        assert!(c.fill_staging().expect("read"));
        assert_eq!(c.staged(usize::MAX).len(), 40);
        c.consume_staged(40);
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.fill_staging().expect("no credit"));
        // The guest forwards what it got: credit returns.
        c.update_peer_credit(&Header {
            buf_alloc: 40,
            fwd_cnt: 40,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 40);
    }

    #[test]
    fn a_lying_fwd_cnt_gives_no_credit() {
        let mut c = conn(b"", false);
        c.update_peer_credit(&Header {
            buf_alloc: 100,
            fwd_cnt: 5000,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn host_eof_is_noticed() {
        let mut c = conn(b"", true);
        c.state = State::Established;
        c.update_peer_credit(&Header {
            buf_alloc: 100,
            ..Default::default()
        });
        assert!(!c.fill_staging().expect("eof"));
        assert!(c.host_eof);
        assert!(!c.wants_host_read());
    }

    #[test]
    fn credit_update_is_wanted_after_the_guest_filled_half_the_buffer() {
        let mut c = conn(b"", false);
        c.state = State::Established;
        let chunk = vec![1u8; (HOST_BUF_ALLOC / 2) as usize + 1];
        c.recv_from_guest(&chunk).expect("recv");
        assert!(c.needs_credit_update());
        c.header(OP_RW, 0, 0);
        assert!(!c.needs_credit_update());
    }
}
