//! Frames: one kind byte, a length, a payload.

use crate::messages::{ErrorMsg, ExecRequest, ExitStatus, Hello, Info, Welcome};
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
}

impl Kind {
    /// Every kind, for lookups and tests.
    pub const ALL: [Kind; 16] = [
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
        }
    }
}
