//! A character device (a virtio console `/dev/hvc1`, a virtio-serial port
//! `/dev/virtio-ports/NAME`, a pty) as a nonblocking tokio byte stream.

use nix::sys::termios::{self, SetArg};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A character device opened for the mux: nonblocking, and in raw mode when it is a
/// terminal (so no byte is echoed, translated or held for a line).
#[derive(Debug)]
pub struct CharDevice {
    fd: AsyncFd<File>,
}

impl CharDevice {
    /// Opens `path` read-write without making it the controlling terminal.
    pub fn open(path: impl AsRef<Path>) -> io::Result<CharDevice> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc_flags())
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        CharDevice::from_fd(file.into())
    }

    /// Wraps an already open descriptor (for instance one end of a pty pair).
    pub fn from_fd(fd: OwnedFd) -> io::Result<CharDevice> {
        make_raw_if_tty(&fd)?;
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the File owns the descriptor and moves into the AsyncFd, so it stays
        // open and unchanged for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(File::from(fd)) }?;
        Ok(CharDevice { fd })
    }
}

fn libc_flags() -> i32 {
    (nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
        .bits()
}

fn make_raw_if_tty(fd: &impl AsFd) -> io::Result<()> {
    let mut t = match termios::tcgetattr(fd) {
        Ok(t) => t,
        Err(nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(fd, SetArg::TCSANOW, &t)?;
    Ok(())
}

impl AsyncRead for CharDevice {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| f.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A pty whose other end is closed reports EIO: that is end of stream.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for CharDevice {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(data)) {
                Ok(res) => return Poll::Ready(res),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
