//! Host side of the hybrid vsock convention (Firecracker, Cloud
//! Hypervisor): connect to the VMM's unix socket, write `CONNECT <port>\n`,
//! and read back `OK <host port>\n`; from then on the stream is a byte pipe
//! to the guest's listener on that vsock port.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

/// `OK ` plus a u32 and the newline fit easily; anything longer is wrong.
const MAX_REPLY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("cannot connect to the VMM's vsock socket {}", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot send CONNECT {port} on {}", .socket.display())]
    Send {
        socket: PathBuf,
        port: u32,
        #[source]
        source: io::Error,
    },

    #[error("cannot read the answer to CONNECT {port} on {}", .socket.display())]
    Receive {
        socket: PathBuf,
        port: u32,
        #[source]
        source: io::Error,
    },

    #[error(
        "the VMM closed {} without answering CONNECT {port}: nothing listens on guest vsock port {port} (yet)",
        .socket.display()
    )]
    Refused { socket: PathBuf, port: u32 },

    #[error("no answer to CONNECT {port} on {} within {} ms", .socket.display(), .waited.as_millis())]
    Timeout {
        socket: PathBuf,
        port: u32,
        waited: Duration,
    },

    #[error(
        "unexpected answer to CONNECT {port} on {}: {answer:?} (expected \"OK <port>\"); the VMM does not speak hybrid vsock",
        .socket.display()
    )]
    BadAnswer {
        socket: PathBuf,
        port: u32,
        answer: String,
    },
}

impl HandshakeError {
    /// Whether trying again later can succeed: the VMM has not created its
    /// socket yet, or the guest has not started listening. Everything else
    /// (permissions, a peer that is not a hybrid-vsock VMM) will not fix
    /// itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            HandshakeError::Connect { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::WouldBlock
            ),
            HandshakeError::Send { source, .. } | HandshakeError::Receive { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                )
            }
            HandshakeError::Refused { .. } | HandshakeError::Timeout { .. } => true,
            HandshakeError::BadAnswer { .. } => false,
        }
    }
}

/// Opens a stream to guest vsock `port` through the VMM's hybrid socket.
/// The whole exchange, connect included, is bounded by `timeout`. The
/// returned stream is blocking and has no timeouts set.
pub fn connect(socket: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HandshakeError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let timed_out = || HandshakeError::Timeout {
        socket: socket.to_owned(),
        port,
        waited: start.elapsed(),
    };

    let mut stream = connect_nonblocking(socket).map_err(|source| HandshakeError::Connect {
        socket: socket.to_owned(),
        source,
    })?;

    let remaining = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(timed_out)?;
    stream
        .set_write_timeout(Some(remaining))
        .and_then(|()| stream.write_all(format!("CONNECT {port}\n").as_bytes()))
        .map_err(|source| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
            _ => HandshakeError::Send {
                socket: socket.to_owned(),
                port,
                source,
            },
        })?;

    let reply = read_reply(&mut stream, deadline).map_err(|e| match e {
        ReplyError::Eof => HandshakeError::Refused {
            socket: socket.to_owned(),
            port,
        },
        ReplyError::Timeout => timed_out(),
        ReplyError::TooLong(partial) => HandshakeError::BadAnswer {
            socket: socket.to_owned(),
            port,
            answer: partial,
        },
        ReplyError::Io(source) if source.kind() == io::ErrorKind::ConnectionReset => {
            HandshakeError::Refused {
                socket: socket.to_owned(),
                port,
            }
        }
        ReplyError::Io(source) => HandshakeError::Receive {
            socket: socket.to_owned(),
            port,
            source,
        },
    })?;
    parse_reply(&reply).ok_or_else(|| HandshakeError::BadAnswer {
        socket: socket.to_owned(),
        port,
        answer: reply.clone(),
    })?;

    // The stream now belongs to whatever protocol runs over it.
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|source| HandshakeError::Receive {
            socket: socket.to_owned(),
            port,
            source,
        })?;
    Ok(stream)
}

/// A unix-socket connect that cannot block: a listener whose backlog is full
/// (a VMM too busy to accept) gives EAGAIN instead of hanging the caller.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    match socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
        Ok(()) => {}
        Err(Errno::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
        Err(e) => return Err(e.into()),
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

enum ReplyError {
    Eof,
    Timeout,
    TooLong(String),
    Io(io::Error),
}

/// Reads up to and including the first `\n`, one byte at a time: whatever
/// follows the newline already belongs to the guest's protocol and must
/// stay in the socket.
fn read_reply(stream: &mut UnixStream, deadline: Instant) -> Result<String, ReplyError> {
    let mut reply = Vec::with_capacity(MAX_REPLY_LEN);
    loop {
        let remaining = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ReplyError::Timeout)?;
        stream
            .set_read_timeout(Some(remaining))
            .map_err(ReplyError::Io)?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => return Err(ReplyError::Eof),
            Ok(_) if byte[0] == b'\n' => {
                return Ok(String::from_utf8_lossy(&reply).into_owned());
            }
            Ok(_) => {
                reply.push(byte[0]);
                if reply.len() >= MAX_REPLY_LEN {
                    return Err(ReplyError::TooLong(
                        String::from_utf8_lossy(&reply).into_owned(),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReplyError::Timeout)
            }
            Err(e) => return Err(ReplyError::Io(e)),
        }
    }
}

/// `OK <host port>` (newline already stripped) gives the host port.
fn parse_reply(reply: &str) -> Option<u32> {
    let port = reply.strip_prefix("OK ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A fake VMM: accepts one connection on a unix socket and runs `peer`
    /// on it.
    pub(crate) fn fake_vmm(
        peer: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            peer(stream);
        });
        (dir, path, handle)
    }

    /// Reads the CONNECT line like a VMM does.
    pub(crate) fn read_connect(stream: &UnixStream) -> String {
        let mut line = String::new();
        io::BufReader::new(stream)
            .read_line(&mut line)
            .expect("read CONNECT");
        line
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn handshake_succeeds_and_leaves_following_bytes_unread() {
        let (_dir, path, peer) = fake_vmm(|mut s| {
            assert_eq!(read_connect(&s), "CONNECT 1024\n");
            // The answer and the first guest bytes in one write.
            s.write_all(b"OK 1073741824\nhello").expect("write");
        });
        let mut stream = connect(&path, 1024, T).expect("handshake");
        let mut rest = [0u8; 5];
        stream.read_exact(&mut rest).expect("read");
        assert_eq!(&rest, b"hello");
        assert_eq!(stream.read_timeout().expect("timeout"), None);
        peer.join().expect("peer");
    }

    #[test]
    fn peer_hanging_up_is_a_retryable_refusal() {
        let (_dir, path, peer) = fake_vmm(|s| {
            read_connect(&s);
            drop(s);
        });
        let err = connect(&path, 1024, T).expect_err("refused");
        assert!(
            matches!(err, HandshakeError::Refused { port: 1024, .. }),
            "{err}"
        );
        assert!(err.is_retryable());
        assert!(
            err.to_string()
                .contains("nothing listens on guest vsock port 1024"),
            "{err}"
        );
        peer.join().expect("peer");
    }

    #[test]
    fn garbage_answer_is_a_hard_error() {
        for answer in [
            &b"HTTP/1.1 400 Bad Request\n"[..],
            b"OK\n",
            b"OK -1\n",
            b"OK 99999999999\n",
        ] {
            let (_dir, path, peer) = fake_vmm(move |mut s| {
                read_connect(&s);
                s.write_all(answer).expect("write");
            });
            let err = connect(&path, 1024, T).expect_err("garbage");
            assert!(matches!(err, HandshakeError::BadAnswer { .. }), "{err}");
            assert!(!err.is_retryable());
            peer.join().expect("peer");
        }
    }

    #[test]
    fn endless_answer_is_cut_off() {
        let (_dir, path, peer) = fake_vmm(|mut s| {
            read_connect(&s);
            let _ = s.write_all(&[b'A'; 4096]);
        });
        let err = connect(&path, 1024, T).expect_err("too long");
        match err {
            HandshakeError::BadAnswer { answer, .. } => assert_eq!(answer.len(), MAX_REPLY_LEN),
            other => panic!("expected BadAnswer, got {other}"),
        }
        peer.join().expect("peer");
    }

    #[test]
    fn silent_peer_times_out() {
        let (_dir, path, peer) = fake_vmm(|s| {
            read_connect(&s);
            thread::sleep(Duration::from_millis(500));
        });
        let begin = Instant::now();
        let err = connect(&path, 1024, Duration::from_millis(100)).expect_err("timeout");
        assert!(matches!(err, HandshakeError::Timeout { .. }), "{err}");
        assert!(err.is_retryable());
        assert!(begin.elapsed() < Duration::from_millis(450));
        peer.join().expect("peer");
    }

    #[test]
    fn missing_socket_is_retryable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = connect(&dir.path().join("nope.sock"), 1024, T).expect_err("missing");
        assert!(matches!(err, HandshakeError::Connect { .. }), "{err}");
        assert!(err.is_retryable());
    }

    #[test]
    fn socket_without_listener_is_retryable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stale.sock");
        drop(UnixListener::bind(&path).expect("bind"));
        let err = connect(&path, 1024, T).expect_err("refused");
        assert!(err.is_retryable(), "{err}");
    }

    #[test]
    fn parses_replies() {
        assert_eq!(parse_reply("OK 1024"), Some(1024));
        assert_eq!(parse_reply("OK 0"), Some(0));
        assert_eq!(parse_reply("OK +5"), None);
        assert_eq!(parse_reply("OK 5 "), None);
        assert_eq!(parse_reply("ok 5"), None);
        assert_eq!(parse_reply("OK 4294967296"), None);
    }
}
