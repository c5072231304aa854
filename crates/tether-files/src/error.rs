//! What can go wrong copying, always naming the path it went wrong at.

use nix::errno::Errno;
use tether_proto::{ErrorCode, ErrorMsg};
use thiserror::Error;

/// A copy that failed: the protocol's error class and a message that names the path.
///
/// It crosses the wire as an ERROR frame unchanged (see [`FilesError::to_msg`]), so the
/// other end reports the same words.
///
/// ```
/// use tether_files::FilesError;
/// use tether_proto::ErrorCode;
/// let e = FilesError::errno("/srv/app.log", nix::errno::Errno::ENOENT);
/// assert_eq!(e.code, ErrorCode::NotFound);
/// assert_eq!(e.to_string(), "/srv/app.log: No such file or directory");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct FilesError {
    /// The class of error, as the protocol names it.
    pub code: ErrorCode,
    /// For humans; starts with the path concerned.
    pub message: String,
}

impl FilesError {
    /// An error of `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> FilesError {
        FilesError {
            code,
            message: message.into(),
        }
    }

    /// A failed system call on `path`, classed by its errno: a missing path is
    /// `not-found`, a resolution that left the root is `denied`, the rest `io`.
    pub fn errno(path: impl std::fmt::Display, errno: Errno) -> FilesError {
        let code = match errno {
            Errno::ENOENT => ErrorCode::NotFound,
            // openat2's RESOLVE_BENEATH answers EXDEV for `..` above the root, an absolute
            // path or symlink, and a relative symlink that climbs out.
            Errno::EXDEV => ErrorCode::Denied,
            _ => ErrorCode::Io,
        };
        let text = match errno {
            Errno::EXDEV => "outside the agent's root (--root)".to_string(),
            Errno::ENOSYS => {
                "confinement needs openat2 (Linux 5.6 or later), which this kernel lacks".into()
            }
            e => e.desc().to_string(),
        };
        FilesError::new(code, format!("{path}: {text}"))
    }

    /// A failed I/O call on `path`.
    pub fn io(path: impl std::fmt::Display, e: &std::io::Error) -> FilesError {
        match e.raw_os_error() {
            Some(n) => FilesError::errno(path, Errno::from_raw(n)),
            None => FilesError::new(ErrorCode::Io, format!("{path}: {e}")),
        }
    }

    /// Frames out of order or an entry that breaks the rules of docs/protocol.md.
    pub fn bad_frame(message: impl Into<String>) -> FilesError {
        FilesError::new(ErrorCode::BadFrame, message)
    }

    /// The ERROR frame's record for this error.
    pub fn to_msg(&self) -> ErrorMsg {
        ErrorMsg::new(self.code, self.message.clone())
    }
}

impl From<FilesError> for ErrorMsg {
    fn from(e: FilesError) -> ErrorMsg {
        ErrorMsg::new(e.code, e.message)
    }
}

impl From<ErrorMsg> for FilesError {
    fn from(e: ErrorMsg) -> FilesError {
        FilesError::new(e.code, e.message)
    }
}
