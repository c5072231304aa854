//! What the benches share: scratch directories, processes that die with the bench, a
//! private sshd with key authentication on 127.0.0.1, and installing a missing tool.

// Each bench compiles its own copy and uses a part of it.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single step may take before the bench gives up.
pub const STEP: Duration = Duration::from_secs(30);
const SSHD: &str = "/usr/sbin/sshd";

/// A scratch directory, removed when dropped (after the processes using it: declare it
/// first).
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `tether-bench-NAME-PID` under the temporary directory, empty.
    pub fn new(name: &str) -> Scratch {
        Scratch::in_dir(&std::env::temp_dir(), name)
    }

    /// `tether-bench-NAME-PID` under `parent`, empty.
    pub fn in_dir(parent: &Path, name: &str) -> Scratch {
        let dir = parent.join(format!("tether-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// `name` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process the bench started: SIGTERM, then SIGKILL after a grace, when dropped. It
/// also gets SIGKILL if the bench dies without unwinding (PR_SET_PDEATHSIG; every process
/// is spawned from the main thread, which lives as long as the bench).
pub struct Proc {
    /// The process.
    pub child: Child,
}

impl Proc {
    /// Spawns without PR_SET_PDEATHSIG, so std takes its posix_spawn path rather than
    /// fork, for processes whose start is timed: forking the bench (bigger than the agent,
    /// more so after the throughput runs) would add a cost of its own.
    pub fn spawn_fast(cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Proc { child }
    }

    /// Spawns `cmd`, which gets SIGKILL should the bench die.
    pub fn spawn(cmd: &mut Command) -> Proc {
        // SAFETY: prctl only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Proc { child }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with `log` if the process has already ended.
    pub fn check_alive(&mut self, what: &str, log: Option<&Path>) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = log
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            panic!("{what} exited early ({status}):\n{log}");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ready` until it holds, for at most `limit`; panics naming `what` otherwise.
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready after {limit:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Makes sure `binary` exists: installs `package` with apt-get when running as root,
/// otherwise stops with the command to run.
pub fn ensure_installed(binary: &str, package: &str) {
    if Path::new(binary).exists() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        panic!("{binary} is missing; install it with: sudo apt-get install -y {package}");
    }
    eprintln!("{binary} is missing; installing {package} with apt-get");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // A stale package index gives 404s: refresh it once and try again.
    if !install() {
        let _ = Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status();
        assert!(install(), "apt-get install -y {package} failed (see above)");
    }
    assert!(
        Path::new(binary).exists(),
        "{package} installed but {binary} is still missing"
    );
}

// ---------------------------------------------------------------------------------------
// sshd

/// sshd on 127.0.0.1 with key auth only, its keys and config in the scratch directory.
pub struct Sshd {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The client's private key.
    pub key: PathBuf,
    /// sshd's log.
    pub log: PathBuf,
    /// The sshd process.
    pub proc: Proc,
}

/// An ed25519 key pair at `path` and `path.pub`, no passphrase.
pub fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tether-bench", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("running ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts sshd in `dir` and waits until it accepts connections.
pub fn start_sshd(dir: &Scratch) -> Sshd {
    ensure_installed(SSHD, "openssh-server");
    // The privilege separation directory Debian's sshd insists on (normally made by its
    // init script).
    if let Err(e) = std::fs::create_dir_all("/run/sshd") {
        eprintln!("cannot create /run/sshd ({e}); sshd may refuse to start");
    }
    let host_key = dir.path("ssh_host_ed25519_key");
    let key = dir.path("id_ed25519");
    keygen(&host_key);
    keygen(&key);
    let authorized = dir.path("authorized_keys");
    std::fs::copy(dir.path("id_ed25519.pub"), &authorized).unwrap();
    let port = free_tcp_port();
    let config = dir.path("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1\n\
             Port {port}\n\
             HostKey {}\n\
             AuthorizedKeysFile {}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             UsePAM no\n\
             StrictModes no\n\
             Subsystem sftp internal-sftp\n\
             PidFile {}\n",
            host_key.display(),
            authorized.display(),
            dir.path("sshd.pid").display()
        ),
    )
    .unwrap();
    let log = dir.path("sshd.log");
    let mut proc = Proc::spawn(
        Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    wait_until("sshd", STEP, || {
        proc.check_alive("sshd", Some(&log));
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Sshd {
        port,
        key,
        log,
        proc,
    }
}

impl Sshd {
    /// The options every ssh client of this sshd takes: its key, no host key checks, no
    /// prompts, no connection sharing (each run pays its own key exchange).
    pub fn client_options(&self) -> Vec<String> {
        let mut v = vec!["-i".to_string(), self.key.display().to_string()];
        for o in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "LogLevel=ERROR",
            "ControlMaster=no",
            "ControlPath=none",
            "IdentitiesOnly=yes",
        ] {
            v.push("-o".into());
            v.push(o.into());
        }
        v
    }

    /// `ssh OPTIONS -p PORT 127.0.0.1`, to which the remote command is added.
    pub fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.client_options())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("127.0.0.1");
        c
    }

    /// `scp OPTIONS -P PORT`, to which the paths are added (the remote side as
    /// `127.0.0.1:PATH`).
    pub fn scp(&self) -> Command {
        let mut c = Command::new("scp");
        c.arg("-q")
            .args(self.client_options())
            .arg("-P")
            .arg(self.port.to_string());
        c
    }
}
