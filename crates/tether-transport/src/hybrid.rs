//! Firecracker's hybrid vsock, as Cloud Hypervisor, vhost-device-vsock and `tether device`
//! also speak it on the host side.
//!
//! Host to guest: connect to the device's Unix socket, write `CONNECT <port>\n`, read
//! `OK <host port>\n`; after that the socket carries the connection's bytes. A guest
//! that does not listen shows as the socket closing without a reply. Guest to host: the
//! device connects to `<path>_<port>`.

use crate::error::TransportError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The longest reply line accepted: `OK 4294967295\n` is 14 bytes.
const MAX_REPLY: usize = 32;

/// The path a host listener binds for guest connections to `port`: `<path>_<port>`.
pub fn listen_path(path: &Path, port: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// The request line for `port`.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// Reads the reply to `CONNECT` from `sock`, one byte at a time so that no byte of the
/// connection's data behind the `\n` is consumed; returns the host port from `OK <port>`.
///
/// `endpoint` names the endpoint in errors.
pub async fn read_reply(
    sock: &mut UnixStream,
    endpoint: &str,
    timeout: Duration,
) -> Result<u32, TransportError> {
    let mut line = Vec::with_capacity(MAX_REPLY);
    let read = async {
        loop {
            let mut byte = [0u8; 1];
            let n = sock.read(&mut byte).await.map_err(|e| {
                if closed_kind(&e) {
                    // A device that closes without reading all of `CONNECT` shows as a
                    // reset rather than EOF; it is the same refusal.
                    closed(endpoint, &line)
                } else {
                    TransportError::io("connect to", endpoint, e)
                }
            })?;
            if n == 0 {
                return Err(closed(endpoint, &line));
            }
            if byte[0] == b'\n' {
                return Ok(());
            }
            line.push(byte[0]);
            if line.len() > MAX_REPLY {
                return Err(garbled(endpoint, &line));
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(TransportError::Timeout {
            endpoint: endpoint.into(),
            what: "no `OK` reply to CONNECT",
            after: timeout,
        }),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => parse_ok(&line).ok_or_else(|| garbled(endpoint, &line)),
    }
}

/// `OK <port>` (keyword case-insensitive, as Firecracker's own parser allows).
fn parse_ok(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let (word, port) = line.split_once(' ')?;
    if !word.eq_ignore_ascii_case("OK") {
        return None;
    }
    port.trim_end_matches('\r').parse().ok()
}

/// How a Unix socket the device closed without reading our request shows.
fn closed_kind(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    )
}

fn closed(endpoint: &str, got: &[u8]) -> TransportError {
    let detail = if got.is_empty() {
        "the device closed the socket without a reply (no listener on the guest port, \
         or the guest is not up yet)"
            .to_string()
    } else {
        format!(
            "the device closed the socket after `{}` without finishing the reply line",
            String::from_utf8_lossy(got).escape_debug()
        )
    };
    TransportError::Refused {
        endpoint: endpoint.into(),
        detail,
    }
}

fn garbled(endpoint: &str, got: &[u8]) -> TransportError {
    TransportError::Protocol {
        endpoint: endpoint.into(),
        detail: format!(
            "the device replied `{}` where `OK <port>` was expected",
            String::from_utf8_lossy(got).escape_debug()
        ),
    }
}

/// One attempt: connect to the device socket, send CONNECT, wait for OK.
pub(crate) async fn dial_once(
    path: &Path,
    port: u32,
    endpoint: &str,
    timeout: Duration,
) -> Result<(UnixStream, u32), TransportError> {
    let mut sock = UnixStream::connect(path)
        .await
        .map_err(|e| TransportError::io("connect to", endpoint, e))?;
    sock.write_all(connect_line(port).as_bytes())
        .await
        .map_err(|e| {
            if closed_kind(&e) {
                closed(endpoint, &[])
            } else {
                TransportError::io("connect to", endpoint, e)
            }
        })?;
    let host_port = read_reply(&mut sock, endpoint, timeout).await?;
    Ok((sock, host_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_parsing() {
        assert_eq!(parse_ok(b"OK 1073741824"), Some(1 << 30));
        assert_eq!(parse_ok(b"ok 5"), Some(5));
        assert_eq!(parse_ok(b"OK 5\r"), Some(5));
        assert_eq!(parse_ok(b"OK"), None);
        assert_eq!(parse_ok(b"OK x"), None);
        assert_eq!(parse_ok(b"NO 5"), None);
        assert_eq!(parse_ok(b"OK 4294967296"), None);
    }

    #[test]
    fn listen_path_appends_port() {
        assert_eq!(
            listen_path(Path::new("/run/v.sock"), 52),
            PathBuf::from("/run/v.sock_52")
        );
    }
}
