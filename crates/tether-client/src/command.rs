//! What to run: a builder for the EXEC request.

use std::time::Duration;
use tether_proto::{ExecRequest, Tty};

/// A command to run in the guest, built like [`std::process::Command`] and sent with
/// [`Client::exec`](crate::Client::exec).
///
/// By default the program runs without a shell, in the agent's environment and working
/// directory, as the agent's user, with stdin from `/dev/null`, stdout and stderr as
/// pipes, no terminal and no time limit.
///
/// ```
/// use std::time::Duration;
/// use tether_client::Command;
///
/// let cmd = Command::new("ls")
///     .arg("-l")
///     .args(["/etc", "/tmp"])
///     .env("LC_ALL", "C")
///     .cwd("/")
///     .timeout(Duration::from_secs(5));
/// let req = cmd.request();
/// assert_eq!(req.argv, ["ls", "-l", "/etc", "/tmp"]);
/// assert_eq!(req.timeout_ms, 5000);
///
/// // A shell command line, and an interactive login shell on a terminal:
/// assert!(Command::shell("echo $HOME | wc -c").request().shell);
/// let login = Command::login_shell().stdin(true).tty(24, 80, Some("xterm-256color".into()));
/// assert!(login.request().argv.is_empty() && login.request().shell);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command {
    req: ExecRequest,
}

impl Command {
    /// Runs `program` (looked up in the agent's `PATH` when it has no slash) with no
    /// arguments yet.
    pub fn new(program: impl Into<String>) -> Command {
        Command {
            req: ExecRequest {
                argv: vec![program.into()],
                ..ExecRequest::default()
            },
        }
    }

    /// Runs `line` with `/bin/sh -c`.
    pub fn shell(line: impl Into<String>) -> Command {
        Command {
            req: ExecRequest {
                argv: vec![line.into()],
                shell: true,
                ..ExecRequest::default()
            },
        }
    }

    /// Runs the user's login shell (an empty argv with `shell` set: the agent picks the
    /// shell from the user's account). Usually combined with [`stdin`](Self::stdin) and
    /// [`tty`](Self::tty).
    pub fn login_shell() -> Command {
        Command {
            req: ExecRequest {
                argv: Vec::new(),
                shell: true,
                ..ExecRequest::default()
            },
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Command {
        self.req.argv.push(arg.into());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.req.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the command (added to, or replacing, the
    /// agent's).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Command {
        self.req.env.push((key.into(), value.into()));
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Command
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.req
            .env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<String>) -> Command {
        self.req.cwd = Some(dir.into());
        self
    }

    /// Runs as `user`: a name, a uid, or `uid:gid`.
    pub fn user(mut self, user: impl Into<String>) -> Command {
        self.req.user = Some(user.into());
        self
    }

    /// Whether the session will send stdin ([`Session::stdin`](crate::Session::stdin)
    /// is then `Some`); otherwise the command's stdin is `/dev/null`.
    pub fn stdin(mut self, stdin: bool) -> Command {
        self.req.stdin = stdin;
        self
    }

    /// Runs the command on a new terminal of `rows` × `cols`, with `TERM` set to `term`
    /// when given. Its output then arrives on stdout only.
    pub fn tty(mut self, rows: u16, cols: u16, term: Option<String>) -> Command {
        self.req.tty = Some(Tty { rows, cols, term });
        self
    }

    /// Ends the command after `limit`: SIGTERM to its process group, SIGKILL after the
    /// [kill grace](Self::kill_grace). Zero means no limit.
    pub fn timeout(mut self, limit: Duration) -> Command {
        self.req.timeout_ms = millis_at_least_one(limit);
        self
    }

    /// The pause between SIGTERM and SIGKILL when the timeout ends the command or the
    /// client goes away (the agent's default is 2 s).
    pub fn kill_grace(mut self, grace: Duration) -> Command {
        self.req.kill_grace_ms = Some(grace.as_millis().min(u64::MAX as u128) as u64);
        self
    }

    /// The EXEC request this command sends.
    pub fn request(&self) -> &ExecRequest {
        &self.req
    }

    /// The EXEC request, by value.
    pub fn into_request(self) -> ExecRequest {
        self.req
    }
}

impl From<ExecRequest> for Command {
    fn from(req: ExecRequest) -> Command {
        Command { req }
    }
}

/// Milliseconds, where a non-zero duration never rounds down to zero ("no limit").
fn millis_at_least_one(d: Duration) -> u64 {
    if d.is_zero() {
        return 0;
    }
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builder_method_lands_in_the_request() {
        let req = Command::new("env")
            .arg("-0")
            .args(vec![String::from("a"), String::from("b")])
            .env("A", "1")
            .envs([("B", "2")])
            .cwd("/tmp")
            .user("1000:1000")
            .stdin(true)
            .tty(30, 100, None)
            .timeout(Duration::from_micros(10))
            .kill_grace(Duration::from_millis(250))
            .into_request();
        assert_eq!(req.argv, ["env", "-0", "a", "b"]);
        assert!(!req.shell);
        assert_eq!(
            req.env,
            [("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(req.cwd.as_deref(), Some("/tmp"));
        assert_eq!(req.user.as_deref(), Some("1000:1000"));
        assert!(req.stdin);
        assert_eq!(
            req.tty,
            Some(Tty {
                rows: 30,
                cols: 100,
                term: None
            })
        );
        assert_eq!(req.timeout_ms, 1, "a tiny timeout must not become 'none'");
        assert_eq!(req.kill_grace_ms, Some(250));
    }

    #[test]
    fn shell_forms() {
        let s = Command::shell("echo hi").into_request();
        assert_eq!((s.argv, s.shell), (vec!["echo hi".to_string()], true));
        let l = Command::login_shell().into_request();
        assert_eq!((l.argv.len(), l.shell), (0, true));
        let d = Command::new("true").into_request();
        assert_eq!(d.timeout_ms, 0);
        assert_eq!(d.kill_grace_ms, None);
        assert!(!d.stdin && d.tty.is_none());
    }
}
