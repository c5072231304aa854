//! Proving the shared token in the hello, without a round trip.
//!
//! The client picks a fresh 16-byte nonce and sends the current time with
//! `HMAC-SHA256(token, "tether-auth-v1" || time_le || nonce)`. The agent accepts a proof
//! whose time is within [`AUTH_WINDOW_SECS`] of its own and whose nonce it has not seen
//! in that window, so a captured hello cannot be replayed and the token never crosses
//! the wire.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far the client's clock may be from the agent's.
pub const AUTH_WINDOW_SECS: u64 = 300;

const LABEL: &[u8] = b"tether-auth-v1";

/// The shared token kept in `path`, surrounding whitespace ignored. Tokens live in files,
/// never on command lines where other users could read them; an empty file is refused
/// (`InvalidData`), since it would mean no token at all.
pub fn read_token_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("reading token file {}: {e}", path.display()),
        )
    })?;
    let token = raw.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("token file {} is empty", path.display()),
        ));
    }
    Ok(token)
}

/// The authentication part of a hello: time, nonce and MAC. All zero means "no token".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Proof {
    /// Seconds since the Unix epoch at the client.
    pub time: u64,
    /// A value the client never reuses.
    pub nonce: [u8; 16],
    /// `HMAC-SHA256(token, "tether-auth-v1" || time_le || nonce)`.
    pub mac: [u8; 32],
}

impl Proof {
    /// The proof for `token` at `time` with `nonce`.
    pub fn new(token: &[u8], time: u64, nonce: [u8; 16]) -> Proof {
        Proof {
            time,
            nonce,
            mac: mac(token, time, &nonce),
        }
    }

    /// Whether this is the all-zero "no token" proof.
    pub fn is_none(&self) -> bool {
        *self == Proof::default()
    }

    /// Whether the MAC matches `token` (in constant time) and the time is within the
    /// window around `now`. Replay checks on the nonce are the verifier's job.
    pub fn verify(&self, token: &[u8], now: u64) -> bool {
        if now.abs_diff(self.time) > AUTH_WINDOW_SECS {
            return false;
        }
        let mut m = Hmac::<Sha256>::new_from_slice(token).expect("HMAC takes any key");
        m.update(LABEL);
        m.update(&self.time.to_le_bytes());
        m.update(&self.nonce);
        m.verify_slice(&self.mac).is_ok()
    }
}

fn mac(token: &[u8], time: u64, nonce: &[u8; 16]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(token).expect("HMAC takes any key");
    m.update(LABEL);
    m.update(&time.to_le_bytes());
    m.update(nonce);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_token_and_in_the_window() {
        let p = Proof::new(b"secret", 1_000_000, [7; 16]);
        assert!(p.verify(b"secret", 1_000_000));
        assert!(p.verify(b"secret", 1_000_000 + AUTH_WINDOW_SECS));
        assert!(!p.verify(b"secret", 1_000_000 + AUTH_WINDOW_SECS + 1));
        assert!(!p.verify(b"Secret", 1_000_000));
        let mut tampered = p;
        tampered.nonce[0] ^= 1;
        assert!(!tampered.verify(b"secret", 1_000_000));
        assert!(Proof::default().is_none() && !p.is_none());
    }
}
