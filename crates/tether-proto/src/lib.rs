//! The tether agent wire protocol (documented byte by byte in docs/protocol.md).
//!
//! One operation per connection. The client opens with [`Hello`] and sends its request
//! right behind it without waiting; the agent answers [`Welcome`] and then the
//! operation's frames. Every frame is a 5-byte header — kind (`u8`) and payload length
//! (`u32` little-endian) — and at most [`MAX_PAYLOAD`] bytes of payload. Data frames
//! carry raw bytes; control frames carry small JSON records or fixed binary fields.
//!
//! [`FrameCodec`] turns bytes into [`Frame`]s and back, without I/O of its own; it
//! plugs into `tokio_util::codec::Framed`.

mod auth;
mod codec;
mod frame;
mod messages;

pub use auth::{read_token_file, Proof, AUTH_WINDOW_SECS};
pub use codec::{decode_payload, encode, header, FrameCodec, ProtoError, HEADER_LEN, MAX_PAYLOAD};
pub use frame::{Frame, Kind};
pub use messages::{
    Accepted, ConnectRequest, CopyInRequest, CopyOutRequest, CopySummary, EntryKind, ErrorCode,
    ErrorMsg, ExecRequest, ExitStatus, Features, FileEntry, Hello, Info, ListenRequest, Listening,
    Tty, Welcome, PROTOCOL_VERSION,
};
