//! Starting a command: pipes or a terminal, its own process group (and, with a terminal,
//! its own session), its user.

use crate::reaper::Reaper;
use crate::user::{self, Identity};
use nix::pty::{openpty, Winsize};
use nix::sys::wait::WaitStatus;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use tether_proto::ExecRequest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

/// A started command.
pub struct Child {
    /// Its pid, which is also its process group id (and its session id when it has a
    /// terminal).
    pub pid: u32,
    /// Resolves to its final status.
    pub status: oneshot::Receiver<WaitStatus>,
    /// Its standard streams.
    pub io: ChildIo,
}

/// The parent's ends of a command's standard streams.
pub enum ChildIo {
    /// Plain pipes; `stdin` is `None` when the command reads /dev/null.
    Pipes {
        /// The command's stdin.
        stdin: Option<pipe::Sender>,
        /// The command's stdout.
        stdout: pipe::Receiver,
        /// The command's stderr.
        stderr: pipe::Receiver,
    },
    /// The master side of the command's terminal.
    Pty(AsyncFd<OwnedFd>),
}

/// A read's worth per wakeup for a fast writer. Larger is slower: a pipe copies a whole
/// `write` under its lock, so with 1 MiB pipes one 1 MiB write kept the agent spinning on
/// that lock instead of reading.
const PIPE_SIZE: i32 = 256 << 10;

/// Starts `req` under `reaper`. Errors are for the client: they say what failed.
pub fn spawn(req: &ExecRequest, reaper: &Reaper) -> Result<Child, String> {
    let identity = match &req.user {
        Some(spec) => Some(user::resolve(spec)?),
        None => None,
    };
    let (program, args, arg0) = program(req, identity.as_ref())?;
    let mut cmd = Command::new(&program);
    cmd.args(&args);
    if let Some(a0) = arg0 {
        cmd.arg0(a0);
    }
    environment(&mut cmd, req, identity.as_ref());
    let cwd = req.cwd.clone().map(PathBuf::from).or_else(|| {
        identity
            .as_ref()
            .and_then(|i| i.home.clone())
            .filter(|h| h.is_dir())
    });

    let pty = match &req.tty {
        Some(t) => {
            let ws = Winsize {
                ws_row: t.rows,
                ws_col: t.cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let p = openpty(Some(&ws), None).map_err(|e| format!("opening a terminal: {e}"))?;
            for fd in [0, 1, 2] {
                let dup = p.slave.try_clone().map_err(|e| format!("terminal: {e}"))?;
                match fd {
                    0 => cmd.stdin(Stdio::from(dup)),
                    1 => cmd.stdout(Stdio::from(dup)),
                    _ => cmd.stderr(Stdio::from(dup)),
                };
            }
            Some(p.master)
        }
        None => {
            cmd.stdin(if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            None
        }
    };
    let tty = pty.is_some();
    let switch =
        identity.filter(|i| i.uid != nix::unistd::geteuid() || i.gid != nix::unistd::getegid());
    // SAFETY: the closure makes only async-signal-safe system calls (no allocation: the
    // identity and cwd were resolved and converted before the fork).
    let cwd_c = cwd
        .as_ref()
        .map(|c| std::ffi::CString::new(c.as_os_str().as_encoded_bytes()))
        .transpose()
        .map_err(|_| "working directory has a NUL byte".to_string())?;
    if tty || switch.is_some() {
        unsafe {
            cmd.pre_exec(move || in_child(tty, switch.as_ref(), cwd_c.as_deref()));
        }
    } else {
        // No closure: std takes its posix_spawn (vfork) path, which costs a fraction of
        // a fork of the agent. A process group, not a session: signals still reach the
        // whole group, and without a terminal there is no controlling one to leave.
        cmd.process_group(0);
        if let Some(dir) = &cwd {
            cmd.current_dir(dir);
        }
    }

    let mut guard = reaper.lock();
    let mut child = cmd
        .spawn()
        .map_err(|e| spawn_error(&program, &e, cwd.as_ref()))?;
    let pid = child.id();
    let status = guard.register(pid);
    drop(guard);

    let io = match pty {
        Some(master) => {
            set_nonblocking(&master).map_err(|e| format!("terminal: {e}"))?;
            // SAFETY: the OwnedFd moves into the AsyncFd, so the descriptor stays open and
            // unchanged for the AsyncFd's whole life.
            let fd = unsafe { AsyncFd::register(master) };
            ChildIo::Pty(fd.map_err(|e| format!("terminal: {e}"))?)
        }
        None => {
            let stdout: OwnedFd = child.stdout.take().expect("piped").into();
            let stderr: OwnedFd = child.stderr.take().expect("piped").into();
            for fd in [&stdout, &stderr] {
                let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
            }
            let stdin = match child.stdin.take() {
                Some(s) => Some(pipe::Sender::from_owned_fd(s.into()).map_err(|e| e.to_string())?),
                None => None,
            };
            ChildIo::Pipes {
                stdin,
                stdout: pipe::Receiver::from_owned_fd(stdout).map_err(|e| e.to_string())?,
                stderr: pipe::Receiver::from_owned_fd(stderr).map_err(|e| e.to_string())?,
            }
        }
    };
    Ok(Child { pid, status, io })
}

/// What to exec: argv as given, `sh -c LINE`, or the user's login shell.
fn program(
    req: &ExecRequest,
    identity: Option<&Identity>,
) -> Result<(OsString, Vec<String>, Option<String>), String> {
    match (req.shell, req.argv.as_slice()) {
        (true, []) => {
            let shell = identity
                .and_then(|i| i.shell.clone())
                .or_else(user::own_shell)
                .filter(|s| s.is_file())
                .unwrap_or_else(|| PathBuf::from("/bin/sh"));
            let base = shell
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sh".into());
            // A leading dash in argv[0] is how a shell learns it is a login shell.
            Ok((shell.into_os_string(), vec![], Some(format!("-{base}"))))
        }
        (true, [line]) => Ok(("/bin/sh".into(), vec!["-c".into(), line.clone()], None)),
        (true, _) => Err("a shell request carries one command line".into()),
        (false, []) => Err("empty argv: nothing to run".into()),
        (false, [p, rest @ ..]) => Ok((p.into(), rest.to_vec(), None)),
    }
}

fn environment(cmd: &mut Command, req: &ExecRequest, identity: Option<&Identity>) {
    if let Some(id) = identity {
        if let Some(home) = &id.home {
            cmd.env("HOME", home);
        }
        if let Some(name) = &id.name {
            cmd.env("USER", name).env("LOGNAME", name);
        }
        if let Some(shell) = &id.shell {
            cmd.env("SHELL", shell);
        }
    }
    if let Some(term) = req.tty.as_ref().and_then(|t| t.term.as_ref()) {
        cmd.env("TERM", term);
    }
    for (k, v) in &req.env {
        cmd.env(k, v);
    }
}

/// Runs in the child between fork and exec.
fn in_child(tty: bool, switch: Option<&Identity>, cwd: Option<&std::ffi::CStr>) -> io::Result<()> {
    // Its own session: its pid is its process group, so signals reach the whole group
    // and nothing of the agent's terminal leaks in.
    nix::unistd::setsid()?;
    if tty {
        // SAFETY: TIOCSCTTY on stdin, which is the terminal's slave side.
        if unsafe { nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(id) = switch {
        nix::unistd::setgroups(&id.groups)?;
        nix::unistd::setgid(id.gid)?;
        nix::unistd::setuid(id.uid)?;
    }
    if let Some(dir) = cwd {
        nix::unistd::chdir(dir)?;
    }
    Ok(())
}

fn spawn_error(program: &OsString, e: &io::Error, cwd: Option<&PathBuf>) -> String {
    let p = program.to_string_lossy();
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => match cwd {
            Some(c) if !c.is_dir() => format!("working directory {} does not exist", c.display()),
            _ => format!("{p}: command not found"),
        },
        (io::ErrorKind::PermissionDenied, _) => format!("{p}: permission denied"),
        (_, Some(nix::libc::EPERM)) => {
            format!("{p}: switching user needs the agent to run as root ({e})")
        }
        _ => format!("{p}: {e}"),
    }
}

fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let _ = fd.as_raw_fd();
    Ok(())
}
