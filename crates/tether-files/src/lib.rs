//! Copying files and directory trees over the tether protocol (docs/protocol.md,
//! "Files"), shared by the agent and the client so both ends of a copy behave alike.
//!
//! * [`send_tree`]: a file, symlink or tree walked depth first into ENTRY, FILE_DATA,
//!   ENTRY_END (the file's SHA-256) and COPY_DONE frames; nothing is followed.
//! * [`Receiver`]: those frames applied to a destination, with every entry path checked
//!   ([`entry_components`]), each file written to a temporary (unnamed where the filesystem allows, else
//!   [`temp_name`]) and renamed
//!   into place only once its SHA-256 matched, modes, times and (as root) owners kept.
//! * [`Root`]: paths resolved anywhere, or confined beneath a directory with
//!   `openat2(RESOLVE_BENEATH)`.
//! * [`spawn_send`] and [`spawn_receive`]: both on tokio's blocking pool behind a bounded
//!   queue of frames, for the async ends of a connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tether_files::FilesError> {
//! use tether_files::{spawn_receive, spawn_send, Root};
//! // A local copy through the same frames a connection would carry.
//! let (mut frames, walked) = spawn_send(Root::anywhere(), "/etc/ssh".into());
//! let (sink, received) = spawn_receive(Root::anywhere(), "/tmp/ssh-copy".into());
//! while let Some(f) = frames.recv().await {
//!     if sink.send(f).await.is_err() {
//!         break;
//!     }
//! }
//! drop(sink);
//! let sent = walked.wait().await?;
//! assert_eq!(received.wait().await?, sent);
//! # Ok(()) }
//! ```

mod error;
mod paths;
mod pump;
mod receive;
mod root;
mod send;
mod temp;

pub use error::FilesError;
pub use paths::{entry_components, split_path, MAX_ENTRY_PATH, MAX_NAME};
pub use pump::{spawn_receive, spawn_send, Outcome, QUEUE};
pub use receive::Receiver;
pub use root::Root;
pub use send::{send_tree, CHUNK};
pub use temp::{is_temp_name, temp_name, TEMP_MARKER};
