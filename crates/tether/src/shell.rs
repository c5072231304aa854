//! `tether shell`: an interactive login shell in the guest, on a terminal.

use crate::exec::{run_session, session_main, AgentArgs};
use std::path::Path;
use std::process::ExitCode;
use tether_client::Command;
use tether_transport::Endpoint;

/// Options of `tether shell`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The agent's endpoint; without it, the peer from --peer or the config file.
    pub uri: Option<Endpoint>,
    /// Log in as USER: a name, a uid, or uid:gid.
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// Start in DIR [default: the user's home].
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// The user's login shell with stdin, a terminal of this terminal's size and `TERM`;
/// exits with the shell's status.
pub fn main(args: Args, config: Option<&Path>) -> ExitCode {
    session_main(config, |cfg| async move {
        let client = args.agent.client(args.uri.as_ref(), &cfg)?;
        let mut cmd = Command::login_shell();
        if let Some(u) = args.user {
            cmd = cmd.user(u);
        }
        if let Some(w) = args.workdir {
            cmd = cmd.cwd(w);
        }
        run_session(&client, cmd, true, true).await
    })
}
