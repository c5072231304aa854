//! Frames: one kind byte, a length, a payload.

use crate::messages::{
    Accepted, ConnectRequest, CopyInRequest, CopyOutRequest, CopySummary, ErrorMsg, ExecRequest,
    ExitStatus, FileEntry, Hello, Info, ListenRequest, Listening, Welcome,
};
use bytes::Bytes;

/// The kind byte of each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Client → agent, first frame: version, features, auth proof (binary).
    Hello = 0x01,
    /// Agent → client, reply to hello (binary).
    Welcome = 0x02,
    /// Either way: what went wrong (JSON); the sender closes the connection after it.
    Error = 0x03,
    /// Client → agent: run a command (JSON).
    Exec = 0x10,
    /// Agent → client: the command runs, with this pid (JSON).
    Started = 0x11,
    /// Client → agent: bytes for the command's stdin (raw).
    Stdin = 0x12,
    /// Client → agent: stdin ends (empty).
    StdinEof = 0x13,
    /// Agent → client: bytes the command wrote to stdout, or to its terminal (raw).
    Stdout = 0x14,
    /// Agent → client: bytes the command wrote to stderr (raw).
    Stderr = 0x15,
    /// Client → agent: terminal size (binary: rows u16, cols u16).
    Resize = 0x16,
    /// Client → agent: deliver a signal to the command's process group (binary: i32).
    Signal = 0x17,
    /// Agent → client: how the command ended, after all its output (JSON).
    Exit = 0x18,
    /// Client → agent: echo this payload (raw).
    Ping = 0x20,
    /// Agent → client: the ping's payload (raw).
    Pong = 0x21,
    /// Client → agent: describe yourself (empty).
    InfoRequest = 0x22,
    /// Agent → client: the description (JSON).
    Info = 0x23,
    /// Client → agent: send me the file or tree at this path (JSON).
    CopyOut = 0x30,
    /// Client → agent: store the tree I am about to send at this path (JSON).
    CopyIn = 0x31,
    /// Sender → receiver: the next file, directory or symlink of a copy (JSON).
    Entry = 0x32,
    /// Sender → receiver: bytes of the current file entry (raw).
    FileData = 0x33,
    /// Sender → receiver: the current file's content ends; its SHA-256 (binary, 32 bytes).
    EntryEnd = 0x34,
    /// Sender → receiver: no more entries; the receiver answers with its own summary once
    /// everything is in place (JSON).
    CopyDone = 0x35,
    /// Client → agent: connect me to this destination in the guest (JSON).
    Connect = 0x40,
    /// Agent → client: connected; raw bytes both ways from here on, no more frames (empty).
    Connected = 0x41,
    /// Client → agent: listen on this address in the guest and tell me of connections (JSON).
    Listen = 0x42,
    /// Agent → client: listening, on this address (JSON).
    Listening = 0x43,
    /// Agent → client: a connection arrived on the listener; claim it with `Attach` (JSON).
    Accepted = 0x44,
    /// Client → agent, on a new connection: splice me to that accepted connection (JSON
    /// `{"id": N}`); the agent answers `Connected`.
    Attach = 0x45,
}

impl Kind {
    /// Every kind, for lookups and tests.
    pub const ALL: [Kind; 28] = [
        Kind::Hello,
        Kind::Welcome,
        Kind::Error,
        Kind::Exec,
        Kind::Started,
        Kind::Stdin,
        Kind::StdinEof,
        Kind::Stdout,
        Kind::Stderr,
        Kind::Resize,
        Kind::Signal,
        Kind::Exit,
        Kind::Ping,
        Kind::Pong,
        Kind::InfoRequest,
        Kind::Info,
        Kind::CopyOut,
        Kind::CopyIn,
        Kind::Entry,
        Kind::FileData,
        Kind::EntryEnd,
        Kind::CopyDone,
        Kind::Connect,
        Kind::Connected,
        Kind::Listen,
        Kind::Listening,
        Kind::Accepted,
        Kind::Attach,
    ];

    /// The kind for a byte, if it names one.
    pub fn from_byte(b: u8) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as u8 == b)
    }
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// See [`Kind::Hello`].
    Hello(Hello),
    /// See [`Kind::Welcome`].
    Welcome(Welcome),
    /// See [`Kind::Error`].
    Error(ErrorMsg),
    /// See [`Kind::Exec`].
    Exec(Box<ExecRequest>),
    /// See [`Kind::Started`].
    Started {
        /// The command's process id in the guest.
        pid: u32,
    },
    /// See [`Kind::Stdin`].
    Stdin(Bytes),
    /// See [`Kind::StdinEof`].
    StdinEof,
    /// See [`Kind::Stdout`].
    Stdout(Bytes),
    /// See [`Kind::Stderr`].
    Stderr(Bytes),
    /// See [`Kind::Resize`].
    Resize {
        /// Terminal rows.
        rows: u16,
        /// Terminal columns.
        cols: u16,
    },
    /// See [`Kind::Signal`].
    Signal(i32),
    /// See [`Kind::Exit`].
    Exit(ExitStatus),
    /// See [`Kind::Ping`].
    Ping(Bytes),
    /// See [`Kind::Pong`].
    Pong(Bytes),
    /// See [`Kind::InfoRequest`].
    InfoRequest,
    /// See [`Kind::Info`].
    Info(Info),
    /// See [`Kind::CopyOut`].
    CopyOut(CopyOutRequest),
    /// See [`Kind::CopyIn`].
    CopyIn(CopyInRequest),
    /// See [`Kind::Entry`].
    Entry(FileEntry),
    /// See [`Kind::FileData`].
    FileData(Bytes),
    /// See [`Kind::EntryEnd`].
    EntryEnd {
        /// SHA-256 of the file's content as sent.
        sha256: [u8; 32],
    },
    /// See [`Kind::CopyDone`].
    CopyDone(CopySummary),
    /// See [`Kind::Connect`].
    Connect(ConnectRequest),
    /// See [`Kind::Connected`].
    Connected,
    /// See [`Kind::Listen`].
    Listen(ListenRequest),
    /// See [`Kind::Listening`].
    Listening(Listening),
    /// See [`Kind::Accepted`].
    Accepted(Accepted),
    /// See [`Kind::Attach`].
    Attach {
        /// The id from [`Kind::Accepted`].
        id: u64,
    },
}

impl Frame {
    /// This frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Hello(_) => Kind::Hello,
            Frame::Welcome(_) => Kind::Welcome,
            Frame::Error(_) => Kind::Error,
            Frame::Exec(_) => Kind::Exec,
            Frame::Started { .. } => Kind::Started,
            Frame::Stdin(_) => Kind::Stdin,
            Frame::StdinEof => Kind::StdinEof,
            Frame::Stdout(_) => Kind::Stdout,
            Frame::Stderr(_) => Kind::Stderr,
            Frame::Resize { .. } => Kind::Resize,
            Frame::Signal(_) => Kind::Signal,
            Frame::Exit(_) => Kind::Exit,
            Frame::Ping(_) => Kind::Ping,
            Frame::Pong(_) => Kind::Pong,
            Frame::InfoRequest => Kind::InfoRequest,
            Frame::Info(_) => Kind::Info,
            Frame::CopyOut(_) => Kind::CopyOut,
            Frame::CopyIn(_) => Kind::CopyIn,
            Frame::Entry(_) => Kind::Entry,
            Frame::FileData(_) => Kind::FileData,
            Frame::EntryEnd { .. } => Kind::EntryEnd,
            Frame::CopyDone(_) => Kind::CopyDone,
            Frame::Connect(_) => Kind::Connect,
            Frame::Connected => Kind::Connected,
            Frame::Listen(_) => Kind::Listen,
            Frame::Listening(_) => Kind::Listening,
            Frame::Accepted(_) => Kind::Accepted,
            Frame::Attach { .. } => Kind::Attach,
        }
    }
}
