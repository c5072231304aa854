//! The host side of the tether agent protocol: run commands in a VM with streamed
//! stdio, terminals, signals and exit status; ping the agent; ask it about itself.
//!
//! A [`Client`] names an agent (a [`Peer`]: one or more endpoints, dialed cheapest
//! first) and optionally a token. Each operation opens its own connection and writes its
//! hello and its request together, so an exec costs one round trip before output flows.
//!
//! * [`Command`]: what to run (argv or a shell line, env, cwd, user, stdin, a TTY, a
//!   timeout).
//! * [`Session`]: the running command: [`SessionStdin`] (`AsyncWrite`, `shutdown()` sends
//!   EOF), stdout and stderr as [`SessionOutput`] (`AsyncRead`, with backpressure to the
//!   agent), a cloneable [`Control`] for resize and signals, and
//!   [`wait`](Session::wait) for the [`ExitStatus`].
//! * [`Pinger`] and [`PingStats`]: round trips on one connection.
//! * Copies: [`Client::copy_to_guest`] and [`Client::copy_from_guest`] for files and
//!   trees (modes, times, symlinks; each file renamed into place only once its SHA-256
//!   matched), [`Client::copy_stream_to_guest`] and [`Client::copy_stream_from_guest`]
//!   for one file's bytes; [`CopyProgress`] along the way, a [`CopySummary`] at the end.
//! * Port forwarding: [`Client::connect_guest`] gives a [`GuestStream`] to a guest
//!   destination; [`Client::listen_guest`] a [`GuestListener`] whose guest connections
//!   come back as [`GuestStream`]s too (raw bytes, half-close by `shutdown()`).
//! * [`ClientError`]: why an operation failed (the agent's ERROR frames, a lost
//!   connection, a refused token, ...). A command that fails is not an error: its
//!   status says how it ended.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tether_client::{Client, Command};
//! use tether_transport::Peer;
//!
//! let client = Client::new(Peer::new(["vsock://3:1024".parse()?]));
//! let out = client.exec(&Command::shell("echo hi; echo oops >&2; exit 3")).await?.output().await?;
//! assert_eq!(out.stdout, b"hi\n");
//! assert_eq!(out.stderr, b"oops\n");
//! assert_eq!(out.status.code, Some(3));
//! # Ok(()) }
//! ```
//!
//! The wire protocol is documented byte by byte in `docs/protocol.md`.

mod client;
mod command;
mod error;
mod files;
mod forward;
mod ping;
mod session;

pub use client::Client;
pub use command::Command;
pub use error::{code_name, ClientError};
pub use files::CopyProgress;
pub use forward::{GuestListener, GuestStream, Incoming};
pub use ping::{PingStats, Pinger};
pub use session::{Control, Output, Session, SessionOutput, SessionStdin, STDIN_CHUNK};
pub use tether_proto::{CopySummary, ErrorCode, ExitStatus, Info};
pub use tether_transport::{Endpoint, Peer, Transport};
