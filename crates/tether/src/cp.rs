//! `tether cp`: files and trees between this machine and the guest, like `docker cp`.
//!
//! `tether cp [URI] SRC DEST`: the agent's endpoint comes first (or from `--peer` and
//! the config file, as for `tether exec`); the guest side is written with a leading
//! colon, so a URI's colons are never mistaken for a path.

use crate::config::Config;
use crate::exec::AgentArgs;
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tether_client::{Client, CopyProgress, CopySummary};
use tether_transport::Endpoint;

/// Options of `tether cp`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// [URI] SRC DEST: the agent's endpoint (without it, --peer or the config's
    /// `peers`), then what to copy and where; the guest side starts with ':'.
    #[arg(required = true, num_args = 2..=3, value_name = "ARGS", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// When done, print a summary on stdout as JSON: files, dirs, symlinks, bytes,
    /// seconds, mib_per_s.
    #[arg(long)]
    pub json: bool,
    /// No progress bar, even on a terminal.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// One side of a copy, as written on the command line.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    /// `:PATH`, in the guest.
    Guest(String),
    /// A path on this machine.
    Local(PathBuf),
    /// `-`: stdin as a source, stdout as a destination.
    Stdio,
}

impl Side {
    fn parse(arg: &str) -> Side {
        match arg {
            "-" => Side::Stdio,
            a => match a.strip_prefix(':') {
                Some(g) => Side::Guest(g.to_string()),
                None => Side::Local(PathBuf::from(a)),
            },
        }
    }
}

/// What a `tether cp` command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Copy {
    ToGuest(PathBuf, String),
    StdinToGuest(String),
    FromGuest(String, PathBuf),
    FromGuestToStdout(String),
}

/// The agent's endpoint, if given, and the copy.
fn plan(args: &[String]) -> Result<(Option<Endpoint>, Copy)> {
    let (uri, src, dest) = match args {
        [uri, src, dest] => {
            let ep = uri.parse::<Endpoint>().map_err(|e| {
                anyhow::anyhow!(
                    "`{uri}` is not the agent's endpoint ({e}); usage: tether cp [URI] SRC DEST"
                )
            })?;
            (Some(ep), src, dest)
        }
        [src, dest] => (None, src, dest),
        _ => bail!("usage: tether cp [URI] SRC DEST"),
    };
    let copy = match (Side::parse(src), Side::parse(dest)) {
        (Side::Guest(_), Side::Guest(_)) => bail!(
            "both SRC and DEST are guest paths (they start with ':'); one side must be on this machine"
        ),
        (Side::Guest(g), _) | (_, Side::Guest(g)) if g.is_empty() => {
            bail!("`:` names no guest path; write e.g. :/tmp, or :. for the agent's working directory")
        }
        (Side::Local(l), Side::Guest(g)) => Copy::ToGuest(l, g),
        (Side::Stdio, Side::Guest(g)) => Copy::StdinToGuest(g),
        (Side::Guest(g), Side::Local(l)) => Copy::FromGuest(g, l),
        (Side::Guest(g), Side::Stdio) => Copy::FromGuestToStdout(g),
        _ => {
            let hint = if uri.is_none() && src.parse::<Endpoint>().is_ok() {
                format!(" (`{src}` looks like the agent's endpoint: SRC and DEST both follow it)")
            } else {
                String::new()
            };
            bail!(
                "neither SRC nor DEST is a guest path: write the guest side with a leading ':', \
                 e.g. :/srv/data (a local path starting with ':' is written ./:name){hint}"
            )
        }
    };
    Ok((uri, copy))
}

/// `tether cp`: 0 when everything is in place, 1 when the copy failed, 128 + N when a
/// signal stopped it.
pub fn main(args: Args, config: Option<&Path>) -> ExitCode {
    match run(args, config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, config: Option<&Path>) -> Result<ExitCode> {
    let (uri, copy) = plan(&args.args)?;
    if args.json && matches!(copy, Copy::FromGuestToStdout(_)) {
        bail!("--json prints on stdout, which `-` as DEST already carries the file's bytes on");
    }
    let cfg = Config::load(config)?;
    let client = args.agent.client(uri.as_ref(), &cfg)?;
    let bar = Bar::new(!args.quiet && std::io::stderr().is_terminal());
    let rt = crate::runtime()?;
    let start = Instant::now();
    let result = rt.block_on(async {
        tokio::select! {
            r = transfer(&client, &copy, &bar) => r.map(Ok),
            sig = crate::stop_signal() => Ok(Err(sig)),
        }
    });
    // An interrupted copy's filesystem side is still removing its temporary: let it.
    rt.shutdown_timeout(Duration::from_secs(3));
    bar.done();
    match result? {
        Ok(summary) => {
            report(&summary, start.elapsed(), args.json, bar.shown());
            Ok(ExitCode::SUCCESS)
        }
        Err(sig) => {
            eprintln!("tether: copy interrupted by {sig}; nothing incomplete was left in place");
            Ok(ExitCode::from(if sig == "SIGINT" { 130 } else { 143 }))
        }
    }
}

/// Runs the copy through tether-client.
async fn transfer(client: &Client, copy: &Copy, bar: &Bar) -> Result<CopySummary> {
    let progress = |p: &CopyProgress| bar.update(p);
    let summary = match copy {
        Copy::ToGuest(local, dest) => {
            if bar.shown() {
                bar.set_total(local_size(local));
            }
            client.copy_to_guest(local, dest, progress).await?
        }
        Copy::StdinToGuest(dest) => {
            client
                .copy_stream_to_guest(tokio::io::stdin(), dest, progress)
                .await?
        }
        Copy::FromGuest(src, local) => client.copy_from_guest(src, local, progress).await?,
        Copy::FromGuestToStdout(src) => {
            client
                .copy_stream_from_guest(src, tokio::io::stdout(), progress)
                .await?
        }
    };
    Ok(summary)
}

/// The content bytes under `path` (for the bar's length), without following links.
fn local_size(path: &Path) -> Option<u64> {
    let m = std::fs::symlink_metadata(path).ok()?;
    if m.is_file() {
        return Some(m.len());
    }
    if !m.is_dir() {
        return Some(0);
    }
    let mut total = 0;
    let mut dirs = vec![path.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    Some(total)
}

/// Prints what was copied: JSON on stdout with --json, a line on stderr after a bar.
fn report(s: &CopySummary, took: Duration, json: bool, shown: bool) {
    let secs = took.as_secs_f64();
    let rate = s.bytes as f64 / (1024.0 * 1024.0) / secs.max(1e-9);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "files": s.files,
                "dirs": s.dirs,
                "symlinks": s.symlinks,
                "bytes": s.bytes,
                "skipped": s.skipped,
                "seconds": (secs * 1000.0).round() / 1000.0,
                "mib_per_s": (rate * 10.0).round() / 10.0,
            })
        );
    }
    if shown {
        eprintln!(
            "{} files, {} directories, {} symlinks, {} in {secs:.1} s ({rate:.0} MiB/s){}",
            s.files,
            s.dirs,
            s.symlinks,
            indicatif::BinaryBytes(s.bytes),
            if s.skipped > 0 {
                format!("; {} special files skipped", s.skipped)
            } else {
                String::new()
            }
        );
    }
}

/// The progress bar on stderr (a terminal only): bytes, rate, and an ETA when the
/// total is known.
struct Bar(Option<ProgressBar>);

impl Bar {
    fn new(show: bool) -> Bar {
        if !show {
            return Bar(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(style(false));
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar(Some(bar))
    }

    fn shown(&self) -> bool {
        self.0.is_some()
    }

    fn set_total(&self, total: Option<u64>) {
        if let (Some(b), Some(t)) = (&self.0, total) {
            b.set_length(t);
            b.set_style(style(true));
        }
    }

    fn update(&self, p: &CopyProgress) {
        let Some(b) = &self.0 else { return };
        if b.length().is_none() && p.total.is_some() {
            self.set_total(p.total);
        }
        b.set_position(p.bytes);
        b.set_message(format!("{} entries", p.entries));
    }

    fn done(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn style(known_total: bool) -> ProgressStyle {
    let template = if known_total {
        "{spinner} {bytes}/{total_bytes} [{bar:30}] {binary_bytes_per_sec} ETA {eta} {msg}"
    } else {
        "{spinner} {bytes} {binary_bytes_per_sec} {elapsed} {msg}"
    };
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<(Option<Endpoint>, Copy)> {
        plan(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_guest_side_is_the_one_with_the_colon() {
        let (uri, c) = p(&["vsock://3:1024", "./build", ":/srv/build"]).unwrap();
        assert_eq!(uri.unwrap().to_string(), "vsock://3:1024");
        assert_eq!(c, Copy::ToGuest("./build".into(), "/srv/build".into()));
        let (uri, c) = p(&[":/var/log/app.log", "."]).unwrap();
        assert!(uri.is_none());
        assert_eq!(c, Copy::FromGuest("/var/log/app.log".into(), ".".into()));
        let (_, c) = p(&["unix:///a.sock", "-", ":x"]).unwrap();
        assert_eq!(c, Copy::StdinToGuest("x".into()));
        let (_, c) = p(&["unix:///a.sock", ":x", "-"]).unwrap();
        assert_eq!(c, Copy::FromGuestToStdout("x".into()));
        let (_, c) = p(&[":f", "./:weird"]).unwrap();
        assert_eq!(c, Copy::FromGuest("f".into(), "./:weird".into()));
    }

    #[test]
    fn ambiguous_command_lines_are_refused_with_a_reason() {
        let e = |a: &[&str]| format!("{:#}", p(a).unwrap_err());
        assert!(e(&[":a", ":b"]).contains("both SRC and DEST are guest paths"));
        assert!(e(&["a", "b"]).contains("neither SRC nor DEST"));
        assert!(e(&["vsock://3:1024", "b"]).contains("looks like the agent's endpoint"));
        assert!(e(&["a", ":"]).contains("names no guest path"));
        assert!(e(&["notauri", "a", ":b"]).contains("is not the agent's endpoint"));
    }
}
