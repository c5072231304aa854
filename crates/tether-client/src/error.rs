//! What can go wrong talking to an agent.

use std::time::Duration;
use tether_proto::{ErrorCode, ErrorMsg};
use tether_transport::TransportError;
use thiserror::Error;

/// Why an operation on an agent failed.
///
/// A command that runs and fails is not an error: it is an [`ExitStatus`] from
/// [`Session::wait`]. These are the cases where the command's outcome is unknown or it
/// never started.
///
/// ```
/// use tether_client::ClientError;
/// use tether_proto::ErrorCode;
/// let e = ClientError::Agent { code: ErrorCode::Spawn, message: "no such command: nope".into() };
/// assert_eq!(e.to_string(), "cannot start the command: no such command: nope");
/// assert_eq!(e.agent_code(), Some(ErrorCode::Spawn));
/// ```
///
/// [`ExitStatus`]: tether_proto::ExitStatus
/// [`Session::wait`]: crate::Session::wait
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No endpoint of the peer could be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The agent sent something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The agent answered with an ERROR frame (other than `auth` and `version`, which
    /// have their own variants): e.g. `spawn` when the program does not exist.
    #[error("{}", agent_text(*.code, .message))]
    Agent {
        /// The class of error.
        code: ErrorCode,
        /// The agent's explanation.
        message: String,
    },
    /// The agent speaks no protocol version this client does.
    #[error("protocol version mismatch: this client speaks version {ours}; {detail}")]
    Version {
        /// [`tether_proto::PROTOCOL_VERSION`].
        ours: u16,
        /// What the agent said or answered.
        detail: String,
    },
    /// The agent refused the hello's proof: no token, the wrong token, or a clock more
    /// than [`tether_proto::AUTH_WINDOW_SECS`] away from the agent's.
    #[error("the agent refused authentication: {0}")]
    Auth(String),
    /// The connection ended or failed before the operation finished (for a session:
    /// before its EXIT frame), so the outcome is unknown.
    #[error("connection lost {during}: {detail}")]
    ConnectionLost {
        /// What was being waited for, e.g. "before the command's exit status".
        during: &'static str,
        /// What was seen.
        detail: String,
    },
    /// The agent did not answer in time.
    #[error("the agent did not answer {what} within {after:?}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long the client waited.
        after: Duration,
    },
    /// The agent does not offer what the request needs (its WELCOME lacks the feature).
    #[error("the agent does not offer {0}")]
    Unsupported(&'static str),
    /// The session has already ended: a frame was sent after EXIT, or the exit status
    /// was asked for again after an error was reported.
    #[error("the session has ended")]
    SessionEnded,
    /// A file operation on this machine failed during a copy (a missing source, a
    /// full disk, a checksum that did not match what arrived); the message names the
    /// path.
    #[error("{message}")]
    Local {
        /// The class of error, as the protocol names it (`not-found`, `io`,
        /// `checksum`, ...).
        code: ErrorCode,
        /// For humans, starting with the path.
        message: String,
    },
    /// The agent did not forward: the destination or listen address is not allowed by
    /// its policy (`denied`), nothing listens there (`not-found`), connecting or binding
    /// failed (`io`), or the address is not one it forwards (`bad-frame`).
    #[error("{}", forward_text(*.code, .target, .message))]
    Forward {
        /// The destination, listen address or accepted connection asked for.
        target: String,
        /// The agent's error code.
        code: ErrorCode,
        /// The agent's explanation.
        message: String,
    },
    /// A guest listener's control connection ended: the agent stopped or the connection
    /// to it broke, so the guest listener is gone.
    #[error("the guest listener on {bound} ended: {detail}")]
    ListenerEnded {
        /// The guest address it listened on.
        bound: String,
        /// What was seen.
        detail: String,
    },
}

impl ClientError {
    /// The ERROR code when the agent refused with one.
    pub fn agent_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Agent { code, .. } => Some(*code),
            ClientError::Auth(_) => Some(ErrorCode::Auth),
            ClientError::Forward { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The error for an ERROR frame answering a forwarding request about `target`.
    pub(crate) fn from_forward(target: &str, e: ErrorMsg) -> ClientError {
        match e.code {
            ErrorCode::Denied | ErrorCode::NotFound | ErrorCode::Io | ErrorCode::BadFrame => {
                ClientError::Forward {
                    target: target.to_string(),
                    code: e.code,
                    message: e.message,
                }
            }
            _ => ClientError::from_agent(e),
        }
    }

    /// The error for a failure of this side of a copy.
    pub(crate) fn local(e: tether_files::FilesError) -> ClientError {
        ClientError::Local {
            code: e.code,
            message: e.message,
        }
    }

    /// The error for an ERROR frame from the agent.
    pub(crate) fn from_agent(e: ErrorMsg) -> ClientError {
        match e.code {
            ErrorCode::Auth => ClientError::Auth(e.message),
            ErrorCode::Version => ClientError::Version {
                ours: tether_proto::PROTOCOL_VERSION,
                detail: format!("the agent said: {}", e.message),
            },
            code => ClientError::Agent {
                code,
                message: e.message,
            },
        }
    }
}

/// The wire name of an error code, as in docs/protocol.md.
pub fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadHello => "bad-hello",
        ErrorCode::Version => "version",
        ErrorCode::Auth => "auth",
        ErrorCode::UnknownKind => "unknown-kind",
        ErrorCode::Oversize => "oversize",
        ErrorCode::BadFrame => "bad-frame",
        ErrorCode::Spawn => "spawn",
        ErrorCode::Denied => "denied",
        ErrorCode::NotFound => "not-found",
        ErrorCode::Io => "io",
        ErrorCode::Checksum => "checksum",
        ErrorCode::Internal => "internal",
        ErrorCode::Other => "other",
    }
}

fn forward_text(code: ErrorCode, target: &str, message: &str) -> String {
    match code {
        ErrorCode::Denied => format!("the agent refused: {message}"),
        // The agent's message names the destination and the system's reason.
        ErrorCode::NotFound | ErrorCode::Io => format!("in the guest, {message}"),
        _ => format!("the agent cannot forward {target}: {message}"),
    }
}

fn agent_text(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::Spawn => format!("cannot start the command: {message}"),
        ErrorCode::Denied => format!("the agent refused: {message}"),
        ErrorCode::NotFound | ErrorCode::Io | ErrorCode::Checksum => {
            format!("in the guest: {message}")
        }
        code => format!("agent error ({}): {message}", code_name(code)),
    }
}
