//! Backend processes under test: a command template, and running instances of it, each in
//! a fresh temporary directory, killed on drop, with stderr kept for error reports.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// The guest CID every backend is started with unless told otherwise.
pub const DEFAULT_GUEST_CID: u64 = 3;

/// Bytes of stderr kept per process (the tail).
const STDERR_KEEP: usize = 64 * 1024;

/// Why a backend could not be found or started.
#[derive(Debug, Error)]
pub enum BackendError {
    /// vhost-device-vsock is not installed.
    #[error(
        "vhost-device-vsock not found on PATH nor in ~/.cargo/bin: \
         install it with `cargo install vhost-device-vsock --locked` (scripts/install-deps does)"
    )]
    NotInstalled,
    /// An empty command line.
    #[error("empty backend command line")]
    EmptyCommand,
    /// The temporary directory could not be created.
    #[error("creating a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    /// The process could not be spawned.
    #[error("spawning {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
}

/// A backend command template. Arguments may hold `{socket}`, `{uds}` and `{cid}`; when
/// none does, `--socket SOCK --uds-path UDS --guest-cid N` is appended (the flags of
/// vhost-device-vsock and `tether device`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    guest_cid: u64,
}

impl Backend {
    /// The installed rust-vmm reference backend, found on `PATH` or in `~/.cargo/bin`.
    pub fn vhost_device_vsock() -> Result<Backend, BackendError> {
        let program = find_program("vhost-device-vsock").ok_or(BackendError::NotInstalled)?;
        Ok(Backend {
            name: "vhost-device-vsock".into(),
            program,
            args: Vec::new(),
            guest_cid: DEFAULT_GUEST_CID,
        })
    }

    /// Any backend: `program` with leading `args` (e.g. `tether` and `["device"]`).
    pub fn command(program: impl Into<PathBuf>, args: &[&str]) -> Backend {
        let program = program.into();
        let mut name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| program.display().to_string());
        for a in args
            .iter()
            .filter(|a| !a.starts_with('-') && !a.contains('{'))
        {
            name.push(' ');
            name.push_str(a);
        }
        Backend {
            name,
            program,
            args: args.iter().map(|s| s.to_string()).collect(),
            guest_cid: DEFAULT_GUEST_CID,
        }
    }

    /// Parses a whitespace-separated command line such as `"/path/to/tether device"`.
    pub fn from_command_line(line: &str) -> Result<Backend, BackendError> {
        let mut words = line.split_whitespace();
        let program = words.next().ok_or(BackendError::EmptyCommand)?;
        let args: Vec<&str> = words.collect();
        Ok(Backend::command(program, &args))
    }

    /// Renames the backend in reports.
    pub fn with_name(mut self, name: impl Into<String>) -> Backend {
        self.name = name.into();
        self
    }

    /// Uses another guest CID.
    pub fn with_guest_cid(mut self, cid: u64) -> Backend {
        self.guest_cid = cid;
        self
    }

    /// The name shown in reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guest CID passed to the backend.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The full argument list for a socket and UDS path.
    pub fn args_for(&self, socket: &Path, uds: &Path) -> Vec<String> {
        let fill = |a: &str| {
            a.replace("{socket}", &socket.display().to_string())
                .replace("{uds}", &uds.display().to_string())
                .replace("{cid}", &self.guest_cid.to_string())
        };
        let templated = self.args.iter().any(|a| a.contains('{'));
        let mut out: Vec<String> = self.args.iter().map(|a| fill(a)).collect();
        if !templated {
            out.extend([
                "--socket".into(),
                socket.display().to_string(),
                "--uds-path".into(),
                uds.display().to_string(),
                "--guest-cid".into(),
                self.guest_cid.to_string(),
            ]);
        }
        out
    }

    /// Starts an instance in a fresh temporary directory.
    pub fn spawn(&self) -> Result<BackendProcess, BackendError> {
        let dir = TempDir::new()?;
        let socket = dir.path().join("vhost.sock");
        let uds = dir.path().join("v.sock");
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args_for(&socket, &uds))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            // Warnings and errors end up in failure reports; info would drown them.
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd.spawn().map_err(|source| BackendError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::Builder::new()
                .name("backend-stderr".into())
                .spawn(move || collect_tail(pipe, &sink))
                .map_err(|source| BackendError::Spawn {
                    program: "stderr reader thread".into(),
                    source,
                })?;
        }
        Ok(BackendProcess {
            name: self.name.clone(),
            guest_cid: self.guest_cid,
            child,
            socket,
            uds,
            stderr,
            dir,
        })
    }
}

fn collect_tail(mut pipe: impl Read, sink: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut kept = sink.lock().expect("stderr lock");
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_KEEP {
            let cut = kept.len() - STDERR_KEEP;
            kept.drain(..cut);
        }
    }
}

/// Finds an executable on `PATH`, then in `~/.cargo/bin`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(home_bin)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The tail of a backend's stderr, shared with the thread collecting it.
#[derive(Clone, Debug)]
pub struct StderrLog(Arc<Mutex<Vec<u8>>>);

impl StderrLog {
    /// The text collected so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// A running backend, killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct BackendProcess {
    name: String,
    guest_cid: u64,
    child: Child,
    socket: PathBuf,
    uds: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
    dir: TempDir,
}

impl BackendProcess {
    /// The name of the template it came from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guest CID it was given.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The vhost-user socket (the frontend connects here).
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The hybrid vsock socket host applications connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds
    }

    /// Where the backend dials for a guest connect to host port `port`: `<uds>_<port>`.
    pub fn host_listen_path(&self, port: u32) -> PathBuf {
        let mut p = self.uds.clone().into_os_string();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    /// The temporary directory holding the sockets.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still alive (`None` while running, else its exit status).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What the process wrote to stderr so far (the last 64 KiB).
    pub fn stderr(&self) -> String {
        self.stderr_log().text()
    }

    /// A handle on the stderr tail that outlives the process (for failure reports).
    pub fn stderr_log(&self) -> StderrLog {
        StderrLog(self.stderr.clone())
    }

    /// Connects to the hybrid socket and performs the `CONNECT <port>` handshake, waiting
    /// up to `timeout` for the `OK` line. See [`crate::hybrid`].
    pub fn connect_host(
        &self,
        port: u32,
        timeout: Duration,
    ) -> Result<UnixStream, crate::hybrid::HandshakeError> {
        crate::hybrid::connect(&self.uds, port, timeout).map(|(s, _)| s)
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory under the system temp dir, removed on drop. Paths stay short: Unix socket
/// paths are limited to 107 bytes and `<uds>_<port>` must fit.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, BackendError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("tvh-{}-{n}-{:x}", std::process::id(), nanos));
        std::fs::create_dir(&path).map_err(BackendError::TempDir)?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_commands_get_the_standard_flags_appended() {
        let b = Backend::from_command_line("/opt/tether device --verbose").unwrap();
        assert_eq!(b.name(), "tether device");
        let args = b.args_for(Path::new("/t/s"), Path::new("/t/u"));
        assert_eq!(
            args,
            [
                "device",
                "--verbose",
                "--socket",
                "/t/s",
                "--uds-path",
                "/t/u",
                "--guest-cid",
                "3"
            ]
        );
    }

    #[test]
    fn templates_are_filled_and_nothing_is_appended() {
        let b = Backend::command(
            "x",
            &["--vm", "socket={socket},uds-path={uds},guest-cid={cid}"],
        )
        .with_guest_cid(7);
        assert_eq!(
            b.args_for(Path::new("/s"), Path::new("/u")),
            ["--vm", "socket=/s,uds-path=/u,guest-cid=7"]
        );
        assert!(matches!(
            Backend::from_command_line("  "),
            Err(BackendError::EmptyCommand)
        ));
    }

    #[test]
    fn a_spawned_process_is_killed_and_its_directory_removed_on_drop() {
        let b = Backend::command("sh", &["-c", "echo oops >&2; sleep 30 # {socket}"]);
        let mut p = b.spawn().unwrap();
        let dir = p.dir().to_owned();
        assert!(dir.is_dir());
        assert!(p.exit_status().is_none());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !p.stderr().contains("oops") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(p.stderr().contains("oops"));
        assert!(p.host_listen_path(5).ends_with("v.sock_5"));
        drop(p);
        assert!(!dir.exists());
    }
}
