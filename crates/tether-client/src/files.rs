//! Copying files and trees to and from the guest (COPY_IN, COPY_OUT), and single files
//! from and to byte streams.

use crate::client::{next_frame, unexpected, Client, FrameReader, FrameWriter};
use crate::error::ClientError;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::io::IoSlice;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_files::{spawn_receive, spawn_send, FilesError, Outcome, Root, CHUNK};
use tether_proto::{
    encode, header, CopyInRequest, CopyOutRequest, CopySummary, EntryKind, ErrorCode, ErrorMsg,
    Features, FileEntry, Frame,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Small frames gathered into one write up to this many bytes.
const BATCH: usize = 64 * 1024;

/// How far a copy has got, passed to the progress callback of the copy methods after
/// every entry and every chunk of data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyProgress {
    /// Content bytes moved so far.
    pub bytes: u64,
    /// The content bytes of the whole copy, when known from the start (a single file);
    /// `None` for trees and streams.
    pub total: Option<u64>,
    /// Files, directories and symlinks begun so far.
    pub entries: u64,
}

impl CopyProgress {
    fn saw(&mut self, f: &Frame) -> bool {
        match f {
            Frame::Entry(e) => {
                if self.entries == 0 && e.kind == EntryKind::File {
                    self.total = Some(e.size);
                }
                self.entries += 1;
                true
            }
            Frame::FileData(b) => {
                self.bytes += b.len() as u64;
                true
            }
            _ => false,
        }
    }
}

impl Client {
    /// Copies the local file, symlink or directory tree `local` into the guest at `dest`,
    /// like `cp -r`: into `dest` under its own name when `dest` is an existing directory,
    /// else as `dest`. Modes and modification times are kept, owners too when the agent
    /// runs as root; symlinks are copied as links. Returns once the agent has renamed
    /// every file into place (its COPY_DONE), with what it stored.
    ///
    /// ```no_run
    /// # async fn demo(client: tether_client::Client) -> Result<(), tether_client::ClientError> {
    /// let summary = client
    ///     .copy_to_guest("./build".as_ref(), "/srv", |p| eprint!("\r{} bytes", p.bytes))
    ///     .await?;
    /// println!("{} files, {} bytes in /srv/build", summary.files, summary.bytes);
    /// # Ok(()) }
    /// ```
    pub async fn copy_to_guest(
        &self,
        local: &Path,
        dest: &str,
        progress: impl FnMut(&CopyProgress),
    ) -> Result<CopySummary, ClientError> {
        let (frames, walked) = spawn_send(Root::anywhere(), local.to_path_buf());
        let source = TreeSource {
            frames,
            walked: Some(walked),
        };
        self.push(dest.to_string(), source, progress).await
    }

    /// Copies the guest's file, symlink or tree `src` to `local`, like `cp -r`: into
    /// `local` under its own name when `local` is an existing directory, else as
    /// `local`. Each file is written to a temporary beside its final name and renamed
    /// into place only once its SHA-256 matched; a failed or abandoned copy leaves no
    /// temporary. The temporary is unnamed (`O_TMPFILE`) where the filesystem offers it,
    /// so even a process killed outright leaves none; elsewhere it is named
    /// `.NAME.tether-XXXXXX`.
    ///
    /// ```no_run
    /// # async fn demo(client: tether_client::Client) -> Result<(), tether_client::ClientError> {
    /// client.copy_from_guest("/var/log/app.log", ".".as_ref(), |_| {}).await?;
    /// # Ok(()) }
    /// ```
    pub async fn copy_from_guest(
        &self,
        src: &str,
        local: &Path,
        mut progress: impl FnMut(&CopyProgress),
    ) -> Result<CopySummary, ClientError> {
        let mut rd = self.open_copy_out(src).await?;
        let (sink, received) = spawn_receive(Root::anywhere(), local.to_path_buf());
        let mut seen = CopyProgress::default();
        let mut first = true;
        let failure = loop {
            let f = match self.copy_frame(&mut rd, &mut first).await {
                Ok(f) => f,
                Err(e) => break Some(e),
            };
            let done = match f {
                Frame::Entry(_) | Frame::FileData(_) | Frame::EntryEnd { .. } => false,
                Frame::CopyDone(_) => true,
                Frame::Error(e) => break Some(ClientError::from_agent(e)),
                other => break Some(unexpected(&other, "an entry of the copy")),
            };
            if seen.saw(&f) {
                progress(&seen);
            }
            if sink.send(f).await.is_err() || done {
                // A receiver that stopped early says why when waited for.
                break None;
            }
        };
        // Without COPY_DONE the receiver discards the file in flight before it ends.
        drop(sink);
        let result = received.wait().await;
        match failure {
            Some(e) => Err(e),
            None => result.map_err(ClientError::local),
        }
    }

    /// Stores everything `reader` yields as the guest file `dest` (a full path: its
    /// directory must exist), mode 0644, then waits for the agent's COPY_DONE. The
    /// bytes are streamed and checksummed like any file's; the file appears under its
    /// name only once complete.
    ///
    /// ```no_run
    /// # async fn demo(client: tether_client::Client) -> Result<(), tether_client::ClientError> {
    /// client.copy_stream_to_guest(&b"key=value\n"[..], "/etc/app.conf", |_| {}).await?;
    /// # Ok(()) }
    /// ```
    pub async fn copy_stream_to_guest<R: AsyncRead + Unpin>(
        &self,
        reader: R,
        dest: &str,
        progress: impl FnMut(&CopyProgress),
    ) -> Result<CopySummary, ClientError> {
        let (dir, name) = split_guest_file(dest)?;
        let source = StreamSource {
            reader,
            name: Some(name),
            shown: dest.to_string(),
            hash: Sha256::new(),
            bytes: 0,
            state: Phase::Entry,
        };
        // The trailing slash makes the agent insist on an existing directory.
        let dir = if dir.ends_with('/') {
            dir
        } else {
            format!("{dir}/")
        };
        self.push(dir, source, progress).await
    }

    /// Writes the content of the guest file `src` to `writer` as it arrives; after the
    /// last byte, checks its SHA-256 (a mismatch is an error, after the bytes were
    /// written). A directory or symlink at `src` is refused.
    ///
    /// ```no_run
    /// # async fn demo(client: tether_client::Client) -> Result<(), tether_client::ClientError> {
    /// let mut bytes = Vec::new();
    /// client.copy_stream_from_guest("/etc/os-release", &mut bytes, |_| {}).await?;
    /// # Ok(()) }
    /// ```
    pub async fn copy_stream_from_guest<W: AsyncWrite + Unpin>(
        &self,
        src: &str,
        mut writer: W,
        mut progress: impl FnMut(&CopyProgress),
    ) -> Result<CopySummary, ClientError> {
        let mut rd = self.open_copy_out(src).await?;
        let mut seen = CopyProgress::default();
        let mut first = true;
        let mut hash = Sha256::new();
        let local = |e: std::io::Error| ClientError::Local {
            code: ErrorCode::Io,
            message: format!("writing the content of {src}: {e}"),
        };
        loop {
            let f = self.copy_frame(&mut rd, &mut first).await?;
            if seen.saw(&f) {
                progress(&seen);
            }
            match f {
                Frame::Entry(e) if seen.entries == 1 && e.kind == EntryKind::File => {}
                Frame::Entry(e) => {
                    return Err(ClientError::Local {
                        code: ErrorCode::Io,
                        message: format!(
                            "{src}: is a {}; a stream takes the content of one file",
                            kind_name(e.kind)
                        ),
                    })
                }
                Frame::FileData(b) => {
                    writer.write_all(&b).await.map_err(local)?;
                    hash.update(&b);
                }
                Frame::EntryEnd { sha256 } => {
                    writer.flush().await.map_err(local)?;
                    if <[u8; 32]>::from(hash.finalize_reset()) != sha256 {
                        return Err(ClientError::Local {
                            code: ErrorCode::Checksum,
                            message: format!(
                                "{src}: the content received does not match the SHA-256 sent with it"
                            ),
                        });
                    }
                }
                Frame::CopyDone(s) => return Ok(s),
                Frame::Error(e) => return Err(ClientError::from_agent(e)),
                other => return Err(unexpected(&other, "the file's content")),
            }
        }
    }

    /// Opens a COPY_OUT of `src`.
    async fn open_copy_out(&self, src: &str) -> Result<FrameReader, ClientError> {
        let req = Frame::CopyOut(CopyOutRequest { path: src.into() });
        let conn = self.open(Features::FILES, Some(&req)).await?;
        if !conn.welcome.features.contains(Features::FILES) {
            return Err(ClientError::Unsupported("copying files"));
        }
        Ok(conn.rd)
    }

    /// The next frame of a COPY_OUT: the first within the reply timeout (the agent
    /// answers at once), the rest as they come, however long the files take.
    async fn copy_frame(
        &self,
        rd: &mut FrameReader,
        first: &mut bool,
    ) -> Result<Frame, ClientError> {
        if std::mem::take(first) {
            self.reply(rd, "the copy request", "before the copy began")
                .await
        } else {
            next_frame(rd, "before the copy's COPY_DONE").await
        }
    }

    /// Sends a COPY_IN to `dest` with the frames of `source`, then waits for the agent's
    /// COPY_DONE. An ERROR from the agent at any point ends the copy at once.
    async fn push<S: Source>(
        &self,
        dest: String,
        mut source: S,
        mut progress: impl FnMut(&CopyProgress),
    ) -> Result<CopySummary, ClientError> {
        let req = Frame::CopyIn(CopyInRequest { dest });
        let conn = self.open(Features::FILES, Some(&req)).await?;
        if !conn.welcome.features.contains(Features::FILES) {
            return Err(ClientError::Unsupported("copying files"));
        }
        let (mut rd, mut wr) = (conn.rd, conn.wr);
        let sent = {
            let answer = next_frame(&mut rd, "before the copy's COPY_DONE");
            let sending = send_all(&mut wr, &mut source, &mut progress);
            tokio::pin!(answer, sending);
            tokio::select! {
                biased;
                // The agent spoke before everything was sent: it refused.
                a = &mut answer => Sent::Early(a),
                r = &mut sending => match r {
                    Ok(()) => Sent::All(answer.await),
                    Err(SendError::Local(e)) => Sent::Local(e),
                    Err(SendError::Write(e)) => {
                        // A write that fails may be the agent refusing and closing.
                        match tokio::time::timeout(Duration::from_millis(500), answer).await {
                            Ok(Ok(Frame::Error(msg))) => Sent::Early(Ok(Frame::Error(msg))),
                            _ => Sent::Early(Err(ClientError::ConnectionLost {
                                during: "sending the copy",
                                detail: e.to_string(),
                            })),
                        }
                    }
                },
            }
        };
        match sent {
            Sent::All(Ok(Frame::CopyDone(s))) => Ok(s),
            Sent::All(a) | Sent::Early(a) => match a? {
                Frame::Error(e) => Err(ClientError::from_agent(e)),
                other => Err(unexpected(&other, "COPY_DONE or ERROR")),
            },
            Sent::Local(e) => {
                // Tell the agent, so it discards the file in flight at once.
                let mut buf = BytesMut::new();
                let msg = ErrorMsg::new(e.code, e.message.clone());
                if encode(&Frame::Error(msg), &mut buf).is_ok() {
                    let _ = wr.write_all(&buf).await;
                    let _ = wr.shutdown().await;
                }
                Err(ClientError::local(e))
            }
        }
    }
}

/// How sending a copy ended.
enum Sent {
    /// Everything went out; the agent's answer.
    All(Result<Frame, ClientError>),
    /// The agent answered (or the connection failed) before everything went out.
    Early(Result<Frame, ClientError>),
    /// Reading the local side failed.
    Local(FilesError),
}

enum SendError {
    Local(FilesError),
    Write(std::io::Error),
}

/// Where the frames of a COPY_IN come from.
trait Source {
    /// The next frame, `None` after COPY_DONE.
    async fn next(&mut self) -> Result<Option<Frame>, FilesError>;
}

/// A local file or tree walked on the blocking pool.
struct TreeSource {
    frames: mpsc::Receiver<Frame>,
    walked: Option<Outcome>,
}

impl Source for TreeSource {
    async fn next(&mut self) -> Result<Option<Frame>, FilesError> {
        if let Some(f) = self.frames.recv().await {
            return Ok(Some(f));
        }
        match self.walked.take() {
            Some(w) => w.wait().await.map(|_| None),
            None => Ok(None),
        }
    }
}

enum Phase {
    Entry,
    Data,
    Done,
    Finished,
}

/// One file's content from a reader.
struct StreamSource<R> {
    reader: R,
    name: Option<String>,
    shown: String,
    hash: Sha256,
    bytes: u64,
    state: Phase,
}

impl<R: AsyncRead + Unpin> Source for StreamSource<R> {
    async fn next(&mut self) -> Result<Option<Frame>, FilesError> {
        match self.state {
            Phase::Entry => {
                self.state = Phase::Data;
                Ok(Some(Frame::Entry(stream_entry(
                    self.name.take().expect("once"),
                ))))
            }
            Phase::Data => {
                let mut buf = BytesMut::with_capacity(CHUNK);
                while buf.len() < CHUNK {
                    let n = self.reader.read_buf(&mut buf).await.map_err(|e| {
                        FilesError::new(
                            ErrorCode::Io,
                            format!("reading the content for {}: {e}", self.shown),
                        )
                    })?;
                    if n == 0 {
                        break;
                    }
                }
                if buf.is_empty() {
                    self.state = Phase::Done;
                    return Ok(Some(Frame::EntryEnd {
                        sha256: self.hash.finalize_reset().into(),
                    }));
                }
                self.hash.update(&buf);
                self.bytes += buf.len() as u64;
                Ok(Some(Frame::FileData(buf.freeze())))
            }
            Phase::Done => {
                self.state = Phase::Finished;
                Ok(Some(Frame::CopyDone(CopySummary {
                    files: 1,
                    bytes: self.bytes,
                    ..CopySummary::default()
                })))
            }
            Phase::Finished => Ok(None),
        }
    }
}

/// The entry of a file made from a stream: mode 0644, owned by this process's user,
/// modified now.
fn stream_entry(name: String) -> FileEntry {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    FileEntry {
        path: name,
        kind: EntryKind::File,
        mode: 0o644,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        mtime_ns: now,
        size: 0,
        target: None,
    }
}

/// A guest file path as its directory and name: `/etc/app.conf` into `/etc` and
/// `app.conf`.
fn split_guest_file(dest: &str) -> Result<(String, String), ClientError> {
    let (dir, name) = match dest.rsplit_once('/') {
        Some(("", n)) => ("/".to_string(), n),
        Some((d, n)) => (d.to_string(), n),
        None => (".".to_string(), dest),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(ClientError::Local {
            code: ErrorCode::Io,
            message: format!("{dest}: a stream is stored as one file: give the file's path"),
        });
    }
    let dir = match dir.trim_end_matches('/') {
        "" => "/",
        d => d,
    };
    Ok((dir.to_string(), name.to_string()))
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
    }
}

/// Writes every frame of `source` to `wr`: small frames gathered into large writes,
/// file data straight from its buffer.
async fn send_all<S: Source>(
    wr: &mut FrameWriter,
    source: &mut S,
    progress: &mut impl FnMut(&CopyProgress),
) -> Result<(), SendError> {
    let mut seen = CopyProgress::default();
    let mut small = BytesMut::with_capacity(BATCH);
    while let Some(f) = source.next().await.map_err(SendError::Local)? {
        let shown = seen.saw(&f);
        match &f {
            Frame::FileData(b) if b.len() >= 4096 => {
                if !small.is_empty() {
                    wr.write_all(&small).await.map_err(SendError::Write)?;
                    small.clear();
                }
                write_data(wr, b).await.map_err(SendError::Write)?;
            }
            f => {
                encode(f, &mut small).map_err(|e| SendError::Write(std::io::Error::other(e)))?;
                if small.len() >= BATCH {
                    wr.write_all(&small).await.map_err(SendError::Write)?;
                    small.clear();
                }
            }
        }
        if shown {
            progress(&seen);
        }
    }
    wr.write_all(&small).await.map_err(SendError::Write)?;
    wr.flush().await.map_err(SendError::Write)
}

/// One FILE_DATA frame, header and payload in one vectored write where possible.
async fn write_data(wr: &mut FrameWriter, data: &Bytes) -> std::io::Result<()> {
    let h = header(tether_proto::Kind::FileData, data.len());
    let (mut a, mut b): (&[u8], &[u8]) = (&h, data);
    while !a.is_empty() {
        let n = wr
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    wr.write_all(b).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_destinations_split_into_directory_and_name() {
        let s = |d: &str| split_guest_file(d).map_err(|e| e.to_string());
        assert_eq!(
            s("/etc/app.conf").unwrap(),
            ("/etc".into(), "app.conf".into())
        );
        assert_eq!(s("/top").unwrap(), ("/".into(), "top".into()));
        assert_eq!(s("rel").unwrap(), (".".into(), "rel".into()));
        assert_eq!(s("a//b").unwrap(), ("a".into(), "b".into()));
        assert!(s("/etc/").unwrap_err().contains("give the file's path"));
        assert!(s("..").is_err());
    }
}
