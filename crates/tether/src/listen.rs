//! `tether listen`: accept connections to stdio or to a command.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use std::process::{ExitCode, ExitStatus, Stdio};
use tether_transport::{Endpoint, Stream, Transport};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Options of `tether listen`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to listen; without it, vsock://:PORT with `vsock_listen_port` from the
    /// config file.
    pub uri: Option<Endpoint>,
    /// Keep accepting: connections one after another, each one's bytes to stdout (stdin
    /// is not read); with --exec, any number at once.
    #[arg(short, long)]
    pub keep: bool,
    /// Run CMD with `sh -c` per connection, its stdin and stdout joined to the
    /// connection (like socat's EXEC); TETHER_REMOTE names the peer. Without --keep,
    /// tether exits with CMD's status.
    #[arg(short, long, value_name = "CMD")]
    pub exec: Option<String>,
}

pub async fn run(args: Args, cfg: &Config) -> Result<ExitCode> {
    let uri = match (&args.uri, cfg.vsock_listen_port) {
        (Some(u), _) => u.clone(),
        (None, Some(port)) => Endpoint::Vsock { cid: None, port },
        (None, None) => bail!("no endpoint: give a URI, or `vsock_listen_port` in the config file"),
    };
    let mut listener = Transport::default().bind(&uri).await?;
    eprintln!("tether: listening on {}", listener.local_endpoint());
    match (&args.exec, args.keep) {
        (None, false) => {
            let stream = listener.accept().await?;
            drop(listener);
            crate::stdio::join(stream).await?;
            Ok(ExitCode::SUCCESS)
        }
        (None, true) => loop {
            let stream = listener.accept().await?;
            let mut out = tokio::io::stdout();
            crate::stdio::join_io(stream, tokio::io::empty(), &mut out, false).await?;
        },
        (Some(cmd), false) => {
            let stream = listener.accept().await?;
            drop(listener);
            let status = exec(stream, cmd).await?;
            Ok(exit_code(status))
        }
        (Some(cmd), true) => loop {
            let stream = listener.accept().await?;
            let cmd = cmd.clone();
            tokio::spawn(async move {
                let remote = stream.remote().to_string();
                match exec(stream, &cmd).await {
                    Ok(s) => tracing::debug!(%remote, status = %s, "command finished"),
                    Err(e) => eprintln!("tether: connection from {remote}: {e:#}"),
                }
            });
        },
    }
}

/// Runs `cmd` joined to `stream` until its output ends and it exits.
async fn exec(stream: Stream, cmd: &str) -> Result<ExitStatus> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TETHER_REMOTE", stream.remote().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting `sh -c {cmd}`"))?;
    let mut child_in = child.stdin.take().expect("piped");
    let mut child_out = child.stdout.take().expect("piped");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let to_child = async {
        // A command that exits without reading its input is not an error.
        let _ = tokio::io::copy(&mut rd, &mut child_in).await;
        drop(child_in);
    };
    let from_child = async {
        tokio::io::copy(&mut child_out, &mut wr)
            .await
            .context("relaying the command's output")?;
        wr.shutdown().await.context("half-closing")?;
        child.wait().await.context("waiting for the command")
    };
    tokio::pin!(to_child, from_child);
    let mut input_done = false;
    loop {
        tokio::select! {
            () = &mut to_child, if !input_done => input_done = true,
            r = &mut from_child => return r,
        }
    }
}

/// A command's status as ours: its code, or 128 + the signal that killed it (as shells
/// and ssh report it).
pub fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(code.clamp(0, 255) as u8)
}
