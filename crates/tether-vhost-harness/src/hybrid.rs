//! The host side of hybrid vsock (Firecracker's protocol, also spoken by Cloud Hypervisor
//! and vhost-device-vsock): connect to the backend's Unix socket, write `CONNECT <port>\n`,
//! read `OK <host port>\n`, then raw bytes. A refusal is the socket closing without a line.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Longest acknowledgement line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_LINE: usize = 64;

/// Why the host-side handshake did not produce a connection.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The hybrid socket did not accept the connection.
    #[error("connecting to the hybrid socket: {0}")]
    Connect(#[source] std::io::Error),
    /// Writing the CONNECT line failed.
    #[error("writing the CONNECT line: {0}")]
    Write(#[source] std::io::Error),
    /// The backend closed the socket before a full line: the connection was refused.
    #[error("refused: socket closed after {got:?} without an OK line")]
    Closed {
        /// Bytes read before the close.
        got: Vec<u8>,
    },
    /// The line is not `OK <decimal port>`.
    #[error("malformed acknowledgement {line:?}")]
    Malformed {
        /// The line as read, newline included when one came.
        line: Vec<u8>,
    },
    /// No complete line within the timeout.
    #[error("no OK line within {waited:?} (got {got:?})")]
    TimedOut {
        /// Bytes read so far.
        got: Vec<u8>,
        /// How long we waited.
        waited: Duration,
    },
    /// Reading failed.
    #[error("reading the OK line: {0}")]
    Read(#[source] std::io::Error),
}

/// Connects to `uds`, asks for guest port `port` and waits up to `timeout` for the
/// acknowledgement. Returns the stream (no timeouts set) and the port the `OK` line named.
pub fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<(UnixStream, u32), HandshakeError> {
    connect_with(uds, port, &[], timeout)
}

/// Like [`connect`], with `early` bytes sent in the same write as the CONNECT line (a
/// client that does not wait for `OK` before talking).
pub fn connect_with(
    uds: &Path,
    port: u32,
    early: &[u8],
    timeout: Duration,
) -> Result<(UnixStream, u32), HandshakeError> {
    let mut stream = UnixStream::connect(uds).map_err(HandshakeError::Connect)?;
    let mut msg = format!("CONNECT {port}\n").into_bytes();
    msg.extend_from_slice(early);
    stream
        .set_write_timeout(Some(timeout))
        .map_err(HandshakeError::Write)?;
    stream.write_all(&msg).map_err(HandshakeError::Write)?;
    let host_port = read_ok_line(&mut stream, timeout)?;
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(HandshakeError::Read)?;
    Ok((stream, host_port))
}

/// Reads the acknowledgement one byte at a time, never past its newline, so bytes the
/// guest sends right after it stay in the stream.
pub fn read_ok_line(stream: &mut UnixStream, timeout: Duration) -> Result<u32, HandshakeError> {
    let start = Instant::now();
    let mut line = Vec::new();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(HandshakeError::TimedOut {
                got: line,
                waited: start.elapsed(),
            });
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(HandshakeError::Read)?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => return Err(HandshakeError::Closed { got: line }),
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    return parse_ok(&line).ok_or(HandshakeError::Malformed { line });
                }
                if line.len() >= MAX_LINE {
                    return Err(HandshakeError::Malformed { line });
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return Err(HandshakeError::Closed { got: line })
            }
            Err(e) => return Err(HandshakeError::Read(e)),
        }
    }
}

/// Parses `OK <decimal>\n` exactly.
pub fn parse_ok(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"OK ")?.strip_suffix(b"\n")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_lines_parse_exactly() {
        assert_eq!(parse_ok(b"OK 1073741824\n"), Some(1 << 30));
        assert_eq!(parse_ok(b"OK 5\n"), Some(5));
        for bad in [
            &b"OK\n"[..],
            b"OK 5",
            b"ok 5\n",
            b"OK  5\n",
            b"OK 5 \n",
            b"OK -5\n",
        ] {
            assert_eq!(parse_ok(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_line_is_read_without_consuming_what_follows() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"OK 77\nrest").unwrap();
        assert_eq!(read_ok_line(&mut a, Duration::from_secs(1)).unwrap(), 77);
        let mut rest = [0u8; 4];
        a.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"rest");
    }

    #[test]
    fn close_and_silence_are_told_apart() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let start = Instant::now();
        assert!(matches!(
            read_ok_line(&mut a, Duration::from_millis(50)),
            Err(HandshakeError::TimedOut { .. })
        ));
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(b);
        assert!(matches!(
            read_ok_line(&mut a, Duration::from_millis(50)),
            Err(HandshakeError::Closed { .. })
        ));
    }
}
