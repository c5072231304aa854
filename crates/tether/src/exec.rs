//! `tether exec`: run a command in the guest like ssh runs one on a host, and the pieces
//! `tether shell` and `tether ping` share (which agent, which token, a session joined to
//! this terminal).

use crate::config::Config;
use crate::dial::DialArgs;
use anyhow::{Context, Result};
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tether_client::{Client, Command, Control, SessionOutput};
use tether_transport::Endpoint;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// How to reach the agent and prove its token.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    #[command(flatten)]
    pub dial: DialArgs,
    /// A file holding the agent's shared token (surrounding whitespace ignored). The token
    /// itself is never taken on the command line, where other users could read it.
    #[arg(long, value_name = "FILE", env = "TETHER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl AgentArgs {
    /// The client for the agent at `uri`, else `--peer`, else the config's `peers`.
    pub fn client(&self, uri: Option<&Endpoint>, cfg: &Config) -> Result<Client> {
        let peer = self.dial.peer(uri, cfg)?;
        let mut client = Client::with_transport(self.dial.transport(cfg), peer);
        if let Some(f) = &self.token_file {
            client = client.token(crate::token::read_token(f)?);
        }
        Ok(client)
    }
}

/// Options of `tether exec`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Copy stdin to the command, then send it EOF [default: the command's stdin is
    /// /dev/null].
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command on a terminal (with -i and a local terminal: raw mode, window size
    /// and resizes passed on).
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable for the command; repeat for several.
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory [default: the agent's, or the user's home with -u].
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as USER: a name, a uid, or uid:gid.
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// End the command after DURATION (e.g. 30s): SIGTERM to its process group, SIGKILL
    /// after --kill-grace.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL, on timeout or when tether goes away [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub kill_grace: Option<Duration>,
    /// Run CMD ARGS... as one `sh -c` command line (joined with spaces).
    #[arg(long)]
    pub shell: bool,
    /// The agent's endpoint; without it, the peer from --peer or the config file.
    pub uri: Option<Endpoint>,
    #[command(flatten)]
    pub agent: AgentArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not K=V")),
    }
}

/// `tether exec`: the command's exit status, 128 + N for a signal, 255 when tether
/// itself failed.
pub fn main(args: Args, config: Option<&Path>) -> ExitCode {
    session_main(config, |cfg| async move {
        let client = args.agent.client(args.uri.as_ref(), &cfg)?;
        let mut cmd = if args.shell {
            Command::shell(args.command.join(" "))
        } else {
            Command::new(&args.command[0]).args(&args.command[1..])
        };
        cmd = cmd.envs(args.env);
        if let Some(w) = args.workdir {
            cmd = cmd.cwd(w);
        }
        if let Some(u) = args.user {
            cmd = cmd.user(u);
        }
        if let Some(t) = args.timeout {
            cmd = cmd.timeout(t);
        }
        if let Some(g) = args.kill_grace {
            cmd = cmd.kill_grace(g);
        }
        run_session(&client, cmd, args.interactive, args.tty).await
    })
}

/// Runs a session command on a runtime of its own (so SIGINT and SIGTERM are forwarded
/// to the command rather than stopping tether), printing tether's own failures as
/// "tether: ..." with exit status 255, like ssh.
pub fn session_main<F, Fut>(config: Option<&Path>, body: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<ExitCode>>,
{
    let run = || -> Result<ExitCode> {
        let cfg = Config::load(config)?;
        let rt = crate::runtime()?;
        let result = rt.block_on(body(cfg));
        // A read of stdin may still be blocked in tokio's thread pool; do not wait for it.
        rt.shutdown_background();
        result
    };
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::from(255)
        }
    }
}

/// Runs `cmd` joined to this process: stdin (with `interactive`), stdout, stderr, a
/// terminal (with `tty`), signals; returns the command's status as an exit code.
pub async fn run_session(
    client: &Client,
    mut cmd: Command,
    interactive: bool,
    tty: bool,
) -> Result<ExitCode> {
    // Handlers first: from here on SIGINT, SIGTERM and SIGHUP never kill tether
    // behind the terminal's back.
    let mut signals = Signals::new(tty)?;
    let local_tty = std::io::stdin().is_terminal();
    cmd = cmd.stdin(interactive);
    if tty {
        let (rows, cols) = window_size().unwrap_or((24, 80));
        cmd = cmd.tty(rows, cols, std::env::var("TERM").ok());
    }
    // A signal while connecting (a long --retry, an agent that does not answer) gives
    // up: no command runs yet to pass it to.
    let mut session = tokio::select! {
        r = client.exec(&cmd) => r?,
        sig = signals.stop() => return Ok(ExitCode::from(128 + sig)),
    };
    tracing::debug!(pid = session.pid(), remote = %session.remote(), "started");
    // Raw mode only when keystrokes go to the remote terminal; restored when this
    // function returns, whichever way.
    let _raw = if tty && interactive && local_tty {
        Some(RawMode::enter()?)
    } else {
        None
    };

    let control = session.control();
    let forward = signals.forward(&control, tty);
    let remote_stdin = session.stdin.take();
    let stdin = async move {
        match remote_stdin {
            Some(mut remote) => {
                // Ends quietly when the session ends first.
                let _ = copy_chunks(&mut tokio::io::stdin(), &mut remote).await;
                let _ = remote.shutdown().await;
            }
            None => std::future::pending().await,
        }
    };
    let out = pipe(session.stdout.take().expect("stdout"), tokio::io::stdout());
    let err = pipe(session.stderr.take().expect("stderr"), tokio::io::stderr());
    let outputs = async { tokio::try_join!(out, err) };
    tokio::pin!(forward, stdin, outputs);
    let mut stdin_done = false;
    loop {
        tokio::select! {
            r = &mut outputs => match r {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    // Whoever read our output is gone (`| head`): end like a process
                    // killed by SIGPIPE; dropping the session ends the command.
                    return Ok(ExitCode::from(128 + 13));
                }
                Err(e) => return Err(e).context("writing the command's output"),
            },
            () = &mut forward => unreachable!("signals are awaited forever"),
            () = &mut stdin, if !stdin_done => stdin_done = true,
        }
    }
    // Both streams are complete, so EXIT has arrived (or the session failed).
    let status = session.wait().await?;
    if status.timed_out {
        let how = match (status.code, status.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "ended".into(),
        };
        eprintln!("tether: the command timed out ({how})");
    }
    Ok(ExitCode::from(
        u8::try_from(status.shell_code()).unwrap_or(255),
    ))
}

/// Copies `from` to `to` a read at a time, so each keystroke becomes a frame at once.
async fn copy_chunks<R, W>(from: &mut R, to: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Copies a session stream to a local one as it arrives. A failed session simply ends
/// the copy (`wait` then says how it failed); the error returned is a local write's.
async fn pipe<W: AsyncWrite + Unpin>(mut from: SessionOutput, mut to: W) -> std::io::Result<()> {
    while let Ok(Some(chunk)) = from.chunk().await {
        to.write_all(&chunk).await?;
        // std's stdout under tokio's is line-buffered: a prompt without a newline would
        // wait for the next line.
        to.flush().await?;
    }
    to.flush().await
}

/// The signals a session passes on.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    quit: Option<Signal>,
    winch: Signal,
}

impl Signals {
    fn new(tty: bool) -> Result<Signals> {
        let on = |k| signal(k).context("installing a signal handler");
        Ok(Signals {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
            // Without a terminal, SIGQUIT (^\) stays the way to end tether itself.
            quit: if tty {
                Some(on(SignalKind::quit())?)
            } else {
                None
            },
            winch: on(SignalKind::window_change())?,
        })
    }

    /// The next SIGINT, SIGTERM, SIGHUP (or SIGQUIT with a terminal), as its number.
    async fn stop(&mut self) -> u8 {
        tokio::select! {
            _ = self.int.recv() => 2,
            _ = self.term.recv() => 15,
            _ = self.hup.recv() => 1,
            _ = maybe(&mut self.quit) => 3,
        }
    }

    /// Forwards SIGINT, SIGTERM and SIGHUP (and SIGQUIT with a terminal) to the
    /// command's process group, and window size changes as RESIZE with a terminal.
    /// Never returns.
    async fn forward(&mut self, control: &Control, tty: bool) {
        loop {
            let sig = tokio::select! {
                _ = self.int.recv() => 2,
                _ = self.term.recv() => 15,
                _ = self.hup.recv() => 1,
                _ = maybe(&mut self.quit) => 3,
                _ = self.winch.recv() => {
                    if tty {
                        if let Some((rows, cols)) = window_size() {
                            let _ = control.resize(rows, cols).await;
                        }
                    }
                    continue;
                }
            };
            tracing::debug!(signal = sig, "forwarding");
            // A session that has ended has nothing to signal.
            let _ = control.signal(sig).await;
        }
    }
}

async fn maybe(s: &mut Option<Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The local terminal's size (rows, columns), from stdin, stdout or stderr.
fn window_size() -> Option<(u16, u16)> {
    use nix::libc;
    [0, 1, 2].into_iter().find_map(|fd| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass; a descriptor
        // that is not a terminal makes it fail with ENOTTY and write nothing.
        let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
    })
}

/// The local terminal in raw mode (keystrokes, ^C included, go to the remote terminal
/// as bytes); the saved settings come back on drop.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Result<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSADRAIN, &raw).context("setting the terminal raw")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_split_at_the_first_equals() {
        assert_eq!(
            parse_env("A=b=c").unwrap(),
            ("A".to_string(), "b=c".to_string())
        );
        assert_eq!(parse_env("E=").unwrap(), ("E".to_string(), String::new()));
        assert!(parse_env("novalue").is_err());
        assert!(parse_env("=x").is_err());
    }

    #[test]
    fn token_files_are_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("tether-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, b"  s3cret\n").unwrap();
        assert_eq!(crate::token::read_token(&f).unwrap(), b"s3cret");
        std::fs::write(&f, b"\n").unwrap();
        assert!(format!("{:#}", crate::token::read_token(&f).unwrap_err()).contains("empty"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
