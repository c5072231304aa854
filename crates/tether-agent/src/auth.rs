//! Who may talk to the agent: a shared token proven in the hello, and which vsock CIDs
//! may connect at all.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tether_proto::{ErrorCode, ErrorMsg, Proof, AUTH_WINDOW_SECS};

/// Checks hello proofs against the token and remembers nonces to refuse replays.
#[derive(Default)]
pub struct Auth {
    token: Option<Vec<u8>>,
    seen: Mutex<Seen>,
}

/// Nonces accepted within the window, oldest first.
#[derive(Default)]
struct Seen {
    order: VecDeque<(u64, [u8; 16])>,
    set: HashMap<[u8; 16], u64>,
}

/// Accepted nonces remembered at most; a flood beyond this forgets the oldest (which
/// then can no longer be replayed profitably: their time is about to leave the window).
const MAX_SEEN: usize = 1 << 16;

impl Auth {
    /// Requires `token` when given; accepts everyone otherwise.
    pub fn new(token: Option<Vec<u8>>) -> Auth {
        Auth {
            token,
            seen: Mutex::default(),
        }
    }

    /// Whether a token is required.
    pub fn required(&self) -> bool {
        self.token.is_some()
    }

    /// Accepts or refuses a hello's proof at time `now` (seconds since the epoch).
    pub fn check(&self, proof: &Proof, now: u64) -> Result<(), ErrorMsg> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        if proof.is_none() {
            return Err(ErrorMsg::new(
                ErrorCode::Auth,
                "this agent requires a token (--token-file)",
            ));
        }
        if !proof.verify(token, now) {
            return Err(ErrorMsg::new(
                ErrorCode::Auth,
                format!(
                    "token proof refused: wrong token, or clocks more than {AUTH_WINDOW_SECS} s apart"
                ),
            ));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(t, n)) = seen.order.front() {
            if now.saturating_sub(t) <= 2 * AUTH_WINDOW_SECS && seen.order.len() < MAX_SEEN {
                break;
            }
            seen.order.pop_front();
            seen.set.remove(&n);
        }
        if seen.set.contains_key(&proof.nonce) {
            return Err(ErrorMsg::new(ErrorCode::Auth, "token proof replayed"));
        }
        seen.set.insert(proof.nonce, now);
        seen.order.push_back((now, proof.nonce));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_required_verified_and_never_replayed() {
        let open = Auth::new(None);
        assert!(open.check(&Proof::default(), 100).is_ok());
        let a = Auth::new(Some(b"tok".to_vec()));
        let e = a.check(&Proof::default(), 100).unwrap_err();
        assert!(e.message.contains("requires a token"));
        let p = Proof::new(b"tok", 1000, [1; 16]);
        assert!(a.check(&p, 1000).is_ok());
        assert!(a.check(&p, 1001).unwrap_err().message.contains("replayed"));
        let wrong = Proof::new(b"tik", 1000, [2; 16]);
        assert!(a
            .check(&wrong, 1000)
            .unwrap_err()
            .message
            .contains("wrong token"));
        let stale = Proof::new(b"tok", 1000, [3; 16]);
        assert!(a.check(&stale, 1000 + AUTH_WINDOW_SECS + 1).is_err());
    }
}
