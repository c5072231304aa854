//! The `CONNECT <port>\n` line a host client sends on the hybrid socket.
//!
//! Firecracker reads this line one byte at a time and never past the newline, so the
//! bytes a client sends right behind it belong to the connection. This parser takes one
//! byte per call for the same reason: the driver reads exactly as much as it needs.

use thiserror::Error;

/// Longest line accepted: `CONNECT 4294967295\n` is 19 bytes; some slack for spaces.
pub const MAX_LINE: usize = 32;

/// Why a CONNECT line was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LineError {
    /// No newline within [`MAX_LINE`] bytes.
    #[error("expected `CONNECT <port>\\n` within {MAX_LINE} bytes")]
    TooLong,
    /// The line is not `CONNECT <port>`.
    #[error("expected `CONNECT <port>`, got {0:?}")]
    Malformed(String),
}

/// Accumulates one CONNECT line.
#[derive(Debug, Default)]
pub struct ConnectLine {
    buf: Vec<u8>,
}

impl ConnectLine {
    /// Feeds one byte: `None` while the line is incomplete, then the port or an error.
    pub fn push(&mut self, byte: u8) -> Option<Result<u32, LineError>> {
        if byte == b'\n' {
            return Some(parse(&self.buf));
        }
        if self.buf.len() >= MAX_LINE {
            return Some(Err(LineError::TooLong));
        }
        self.buf.push(byte);
        None
    }
}

/// Parses the line without its newline: keyword case-insensitive, one or more spaces,
/// a decimal port; a trailing `\r` is tolerated for clients typing by hand.
pub fn parse(line: &[u8]) -> Result<u32, LineError> {
    let malformed = || LineError::Malformed(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| malformed())?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let (keyword, port) = text.split_once(' ').ok_or_else(malformed)?;
    if !keyword.eq_ignore_ascii_case("connect") {
        return Err(malformed());
    }
    let port = port.trim_start_matches(' ');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    port.parse().map_err(|_| malformed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(bytes: &[u8]) -> Option<Result<u32, LineError>> {
        let mut line = ConnectLine::default();
        bytes.iter().find_map(|&b| line.push(b))
    }

    #[test]
    fn accepts_firecracker_spellings() {
        assert_eq!(feed(b"CONNECT 1024\n"), Some(Ok(1024)));
        assert_eq!(feed(b"connect 52\n"), Some(Ok(52)));
        assert_eq!(feed(b"Connect  7\r\n"), Some(Ok(7)));
        assert_eq!(feed(b"CONNECT 4294967295\n"), Some(Ok(u32::MAX)));
    }

    #[test]
    fn stops_at_the_newline() {
        let mut line = ConnectLine::default();
        let input = b"CONNECT 5\nHELLO";
        let at = input.iter().position(|&b| line.push(b).is_some());
        assert_eq!(
            at,
            Some(9),
            "the parser must consume nothing past the newline"
        );
    }

    #[test]
    fn refuses_what_is_not_a_connect_line() {
        for bad in [
            &b"CONNECT\n"[..],
            b"CONNECT x\n",
            b"CONNECT -1\n",
            b"CONNECT 4294967296\n",
            b"OPEN 5\n",
            b"CONNECT +5\n",
            b"\xff\xfe 5\n",
        ] {
            assert!(
                matches!(feed(bad), Some(Err(LineError::Malformed(_)))),
                "{bad:?}"
            );
        }
        assert_eq!(feed(&[b'1'; 40]), Some(Err(LineError::TooLong)));
    }

    #[test]
    fn the_error_names_the_expected_form() {
        let err = feed(b"HELLO\n").unwrap().unwrap_err();
        assert!(err.to_string().contains("CONNECT <port>"), "{err}");
    }
}
