//! This tool's own terminal, for `--tty` sessions: raw mode while the
//! container's terminal is attached (so keys, Ctrl-C included, go to the
//! container, and its terminal does the echoing and line editing), and the
//! window size to pass on.

use std::io::{stdin, stdout, IsTerminal};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Restores the terminal's settings when dropped.
pub struct RawMode {
    saved: Termios,
}

/// Puts stdin's terminal in raw mode; None if stdin is not a terminal
/// (a script feeding the session), which then needs nothing restored.
pub fn enter_raw() -> nix::Result<Option<RawMode>> {
    let input = stdin();
    if !input.is_terminal() {
        return Ok(None);
    }
    let saved = termios::tcgetattr(input.as_fd())?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(input.as_fd(), SetArg::TCSANOW, &raw)?;
    Ok(Some(RawMode { saved }))
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Drain: what the container printed last must not be reordered
        // with the shell prompt that follows.
        let _ = termios::tcsetattr(stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// (rows, columns) of the terminal on stdout, else on stdin; None if
/// neither is a terminal.
pub fn window_size() -> Option<(u16, u16)> {
    let try_fd = |fd: i32| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize to the pointer, which is
        // valid for it; a non-terminal fd fails with ENOTTY.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
    };
    try_fd(stdout().as_raw_fd()).or_else(|| try_fd(stdin().as_raw_fd()))
}
