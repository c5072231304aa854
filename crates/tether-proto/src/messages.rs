//! The records inside control frames.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Feature bits announced in [`Hello`] and [`Welcome`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Features(pub u32);

impl Features {
    /// Running commands.
    pub const EXEC: Features = Features(1 << 0);
    /// Commands on a terminal.
    pub const TTY: Features = Features(1 << 1);
    /// Copying files and trees both ways (`CopyOut`, `CopyIn`).
    pub const FILES: Features = Features(1 << 2);
    /// Connections to guest destinations and guest listeners (`Connect`, `Listen`).
    pub const FORWARD: Features = Features(1 << 3);
    /// What this crate implements.
    pub const ALL: Features =
        Features(Features::EXEC.0 | Features::TTY.0 | Features::FILES.0 | Features::FORWARD.0);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The client's opening frame (binary, 58 bytes; see docs/protocol.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The highest protocol version the client speaks.
    pub version: u16,
    /// What the client wants to use.
    pub features: Features,
    /// Proof that the client holds the agent's token; all zero when it has none.
    pub proof: crate::auth::Proof,
}

/// The agent's answer to [`Hello`] (binary, 6 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The version both ends will speak (the lower of the two).
    pub version: u16,
    /// What the agent offers.
    pub features: Features,
}

/// Why a request was refused or a connection is being closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The first frame was not a valid hello.
    BadHello,
    /// No version in common.
    Version,
    /// Authentication failed or was required and missing.
    Auth,
    /// A frame kind this end does not know.
    UnknownKind,
    /// A frame over [`crate::MAX_PAYLOAD`].
    Oversize,
    /// A frame whose payload does not parse, or a frame out of place.
    BadFrame,
    /// The command could not be started (not found, not executable, bad user or cwd).
    Spawn,
    /// The agent refused by policy.
    Denied,
    /// A path or destination does not exist.
    NotFound,
    /// A file operation failed (permissions, disk full, not a directory, ...).
    Io,
    /// A copied file's content does not match its checksum.
    Checksum,
    /// Something failed inside the agent.
    Internal,
    /// A code from a newer peer.
    #[serde(other)]
    Other,
}

/// An error report (JSON `{"code": "...", "message": "..."}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// The class of error.
    pub code: ErrorCode,
    /// For humans.
    pub message: String,
}

impl ErrorMsg {
    /// An error report.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorMsg {
        ErrorMsg {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A terminal for the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tty {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
    /// `TERM` for the command; none leaves the environment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// What to run (JSON). Absent fields take their defaults, so an old client's request
/// stays valid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; with `shell`, the single element is a shell command line.
    pub argv: Vec<String>,
    /// Run `argv[0]` with `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shell: bool,
    /// Variables added to (or replacing those of) the agent's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// Working directory; none is the agent's (or the user's home when `user` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Run as: a name, a uid, or `uid:gid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The client will send stdin frames; otherwise stdin is /dev/null.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdin: bool,
    /// Run on a terminal of this size (stdout carries the terminal's output; no stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<Tty>,
    /// Milliseconds before the process group gets SIGTERM (0: no limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout_ms: u64,
    /// Milliseconds between SIGTERM and SIGKILL, on timeout or disconnect (default 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_grace_ms: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a command ended (JSON `{"code": N}` or `{"signal": N, "core_dumped": B}`, plus
/// `"timed_out": true` when the agent's timeout ended it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, when the command exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether it dumped core.
    #[serde(default, skip_serializing_if = "is_false")]
    pub core_dumped: bool,
    /// Whether the request's timeout ended it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub timed_out: bool,
}

impl ExitStatus {
    /// Exited with `code`.
    pub fn exited(code: i32) -> ExitStatus {
        ExitStatus {
            code: Some(code),
            signal: None,
            core_dumped: false,
            timed_out: false,
        }
    }

    /// Killed by `signal`.
    pub fn signaled(signal: i32, core_dumped: bool) -> ExitStatus {
        ExitStatus {
            code: None,
            signal: Some(signal),
            core_dumped,
            timed_out: false,
        }
    }

    /// The status as a shell reports it: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }

    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exited with code {c}")?,
            (None, Some(s)) => {
                write!(f, "killed by signal {s}")?;
                if self.core_dumped {
                    f.write_str(" (core dumped)")?;
                }
            }
            (None, None) => f.write_str("ended without a status")?,
        }
        if self.timed_out {
            f.write_str(" after its timeout")?;
        }
        Ok(())
    }
}

/// What an agent says about itself (JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// The agent's version.
    pub version: String,
    /// The guest's host name.
    #[serde(default)]
    pub hostname: String,
    /// The guest kernel's release.
    #[serde(default)]
    pub kernel: String,
    /// The agent's pid (1 when it is init).
    #[serde(default)]
    pub pid: u32,
    /// Seconds since the agent started.
    #[serde(default)]
    pub uptime_secs: u64,
}

/// What kind of filesystem object a [`FileEntry`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// A regular file; its content follows in `FileData` frames and an `EntryEnd`.
    File,
    /// A directory; entries under it follow with paths that start with its path.
    Dir,
    /// A symbolic link, copied as a link (never followed).
    Symlink,
}

/// One object of a copied tree (JSON). Paths are relative to the copy's root, with `/`
/// separators, never absolute and never containing `..`; the root itself has the path of
/// its own name (the last component of the source path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Where it goes, relative to the destination.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner, applied when the receiver may (it runs as root).
    #[serde(default)]
    pub uid: u32,
    /// Group, applied when the receiver may.
    #[serde(default)]
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    #[serde(default)]
    pub mtime_ns: i64,
    /// Content length of a file (the sum of its `FileData` frames).
    #[serde(default)]
    pub size: u64,
    /// Where a symlink points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// `CopyOut`: the path to read in the guest (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOutRequest {
    /// A file, directory or symlink in the guest.
    pub path: String,
}

/// `CopyIn`: where the entries that follow go in the guest (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyInRequest {
    /// The destination. When it is an existing directory the copied root lands inside it
    /// under its own name; otherwise the root is created as this path.
    pub dest: String,
}

/// `CopyDone`: what a copy moved (JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopySummary {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Content bytes of the files.
    pub bytes: u64,
    /// Objects the sender left out: sockets, FIFOs and devices, which are not copied.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
}

/// `Connect`: a destination in the guest (JSON), as an endpoint URI
/// (`tcp://127.0.0.1:80`, `unix:///run/app.sock`, `vsock://2:5000`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// Where to connect.
    pub target: String,
}

/// `Listen`: an address to listen on in the guest (JSON), as an endpoint URI
/// (`tcp://127.0.0.1:5432`, `unix:///run/host-db.sock`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenRequest {
    /// Where to listen.
    pub bind: String,
}

/// `Listening`: the address actually bound (JSON), e.g. with the port chosen for `:0`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listening {
    /// The bound endpoint URI.
    pub bound: String,
}

/// `Accepted`: a connection waiting on a guest listener (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Claim it with `Attach { id }` on a new connection.
    pub id: u64,
    /// Who connected, for logs.
    #[serde(default)]
    pub peer: String,
}
