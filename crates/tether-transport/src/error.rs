//! What can go wrong reaching an endpoint.

use crate::mux::MuxError;
use std::io;
use std::time::Duration;
use thiserror::Error;

/// A dial or listen that failed, naming the endpoint.
#[derive(Debug, Error)]
pub enum TransportError {
    /// An operating-system call failed.
    #[error("{op} {endpoint}: {error}")]
    Io {
        /// What tether was doing: "connect to", "listen on", "accept on".
        op: &'static str,
        /// The endpoint, as a URI.
        endpoint: String,
        /// The underlying error (part of this error's message, so not also its source).
        error: io::Error,
    },
    /// The peer closed the connection before it was set up: for hybrid vsock this is how a
    /// guest that does not (yet) listen on the port shows.
    #[error("connect to {endpoint}: {detail}")]
    Refused {
        /// The endpoint, as a URI.
        endpoint: String,
        /// What was seen.
        detail: String,
    },
    /// The peer answered something other than the protocol says.
    #[error("connect to {endpoint}: {detail}")]
    Protocol {
        /// The endpoint, as a URI.
        endpoint: String,
        /// What was received and what was expected.
        detail: String,
    },
    /// Nothing came back in time.
    #[error("connect to {endpoint}: {what} within {after:?}")]
    Timeout {
        /// The endpoint, as a URI.
        endpoint: String,
        /// What did not happen.
        what: &'static str,
        /// How long tether waited.
        after: Duration,
    },
    /// This endpoint cannot be used on this platform.
    #[error("{endpoint}: {hint}")]
    Unsupported {
        /// The endpoint, as a URI.
        endpoint: String,
        /// What to do instead.
        hint: String,
    },
    /// The mux link or connection failed.
    #[error("{endpoint}: {error}")]
    Mux {
        /// The endpoint, as a URI.
        endpoint: String,
        /// The mux's error.
        error: MuxError,
    },
    /// Every endpoint of a peer failed; the attempts in the order they were made.
    #[error("no endpoint of the peer could be reached: {}", list(.0))]
    AllFailed(Vec<TransportError>),
    /// A peer with no endpoints.
    #[error("no endpoint to dial: give a URI, --peer, or `peers` in the config file")]
    NoEndpoints,
}

fn list(errors: &[TransportError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl TransportError {
    pub(crate) fn io(op: &'static str, endpoint: impl ToString, error: io::Error) -> Self {
        TransportError::Io {
            op,
            endpoint: endpoint.to_string(),
            error,
        }
    }

    /// True when trying again later may succeed: the peer is not listening yet or
    /// closed the connection during setup (a guest still booting).
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Refused { .. } => true,
            TransportError::Io { error, .. } => matches!(
                error.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
            ),
            TransportError::Mux { error, .. } => {
                matches!(error, MuxError::Connect { .. } | MuxError::NotUp(_))
            }
            _ => false,
        }
    }
}
