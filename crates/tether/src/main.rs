//! The tether command line: thin argument parsing over the tether crates.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod agent;
mod cat;
mod config;
mod demo;
mod device;
mod dial;
mod exec;
mod forward;
mod listen;
mod ping;
mod shell;
mod stdio;
mod token;
mod vm;

/// Talk to virtual machines over vsock.
#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about,
    after_help = "Endpoints:\n  \
        vsock://CID:PORT  vsock://:PORT      AF_VSOCK (CID 2 is the host; :PORT listens on any CID)\n  \
        hybrid:///run/fc/v.sock:PORT       Firecracker / Cloud Hypervisor / vhost-user-vsock host socket\n  \
        hyperkit://[CID]:PORT/STATE/DIR    hyperkit's virtio-sock\n  \
        hvsock://VM/SERVICE  hvsock:///SERVICE   Hyper-V sockets (Windows hosts)\n  \
        tcp://HOST:PORT  unix:///PATH      plain sockets\n  \
        mux+serial:///dev/hvc1:PORT        vsock over a serial line (guest end)\n  \
        mux+unix:///run/vm/serial.sock:PORT  vsock over QEMU's virtio-serial chardev socket (host end)\n\n\
        Examples:\n  \
        tether cat --retry 30s hybrid:///run/fc/v.sock:52     talk to guest port 52 once it listens\n  \
        tether listen --keep --exec 'cat > /tmp/log' vsock://:9000\n  \
        tether forward tcp://127.0.0.1:8080 hybrid:///run/vm/v.sock:80   host port 8080 to guest port 80\n  \
        tether forward vsock://:5432 tcp://127.0.0.1:5432     (in a guest) host connections to a guest service\n  \
        tether demo                                          both ends of a mux link in-process, with figures"
)]
struct Cli {
    /// Config file [default: $TETHER_CONFIG, else ~/.config/tether/config.toml if present].
    #[arg(long, global = true, value_name = "FILE", env = "TETHER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join stdin and stdout to an endpoint, like ncat or hvcat.
    #[command(after_help = "Examples:\n  \
        echo hello | tether cat unix:///run/echo.sock\n  \
        tether cat --retry 30s hybrid:///run/fc/v.sock:1024\n  \
        tether cat --peer vsock://3:1024 --peer tcp://10.0.0.5:1024")]
    Cat(cat::Args),
    /// Accept connections on an endpoint: one to stdio, many with --keep, or a command
    /// per connection with --exec.
    #[command(after_help = "Examples:\n  \
        tether listen vsock://:1024 > received\n  \
        tether listen --keep --exec 'sha256sum' tcp://127.0.0.1:9000\n  \
        tether listen hybrid:///run/fc/v.sock:52          guest connections to host port 52")]
    Listen(listen::Args),
    /// Relay every connection accepted on FROM to TO, both ways, with half-close.
    #[command(after_help = "Examples:\n  \
        tether forward tcp://127.0.0.1:8080 hybrid:///run/vm/v.sock:80\n  \
        tether forward unix:///run/agent.sock mux+unix:///run/vm/serial.sock:1024\n  \
        tether forward --peer vsock://3:80 --peer tcp://10.0.0.5:80 tcp://127.0.0.1:8080")]
    Forward(forward::Args),
    /// Serve commands to tether clients: the guest agent (PID 1 in `tether vm`).
    #[command(after_help = "Examples:\n  \
        tether agent                                   vsock://:1024, host CID 2 only\n  \
        tether agent --listen unix:///run/tether.sock\n  \
        tether agent --listen tcp://0.0.0.0:7000 --token-file /etc/tether/token")]
    Agent(agent::Args),
    /// Run a command in the guest: stdout and stderr streamed as they come, stdin with
    /// -i, a terminal with -t, signals passed on; exits with the command's status (128+N
    /// for a signal) or 255 when tether fails, like ssh.
    #[command(after_help = "Examples:\n  \
        tether exec hybrid:///run/fc/v.sock:1024 -- uname -a\n  \
        tether exec -e RUST_LOG=debug -w /srv -u app unix:///run/vm/agent.sock -- ./serve --port 80\n  \
        tar c dir | tether exec -i --peer vsock://3:1024 -- tar x -C /tmp\n  \
        tether exec -it vsock://3:1024 -- vim /etc/hosts\n  \
        tether exec --timeout 30s --shell vsock://3:1024 -- 'make -j4 2>&1 | tail -n 20'\n  \
        TETHER_TOKEN_FILE=~/.config/tether/token tether exec tcp://10.0.0.5:1024 -- id")]
    Exec(exec::Args),
    /// An interactive login shell in the guest on a terminal (`exec -i -t` of the user's
    /// shell, with this terminal's size and TERM).
    #[command(after_help = "Examples:\n  \
        tether shell hybrid:///run/fc/v.sock:1024\n  \
        tether shell -u root --retry 30s vsock://3:1024     once the guest has booted")]
    Shell(shell::Args),
    /// Time round trips to the agent: connect time, then PING/PONG min, p50, p99, max.
    #[command(after_help = "Examples:\n  \
        tether ping unix:///run/vm/agent.sock\n  \
        tether ping -c 1000 -s 1024 --json hybrid:///run/fc/v.sock:1024")]
    Ping(ping::Args),
    /// A vhost-user-vsock device for QEMU, with Firecracker's hybrid vsock on the host:
    /// `CONNECT <port>` on --uds-path reaches guest ports, guest connections to host port
    /// P reach `<uds-path>_P`.
    #[command(after_help = "Examples:\n  \
        tether device --socket /run/vm/vhost.sock --uds-path /run/vm/v.sock --guest-cid 3\n  \
        qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=256M,share=on \\\n      \
        -machine q35,memory-backend=mem -chardev socket,id=c0,path=/run/vm/vhost.sock \\\n      \
        -device vhost-user-vsock-pci,chardev=c0\n  \
        tether exec hybrid:///run/vm/v.sock:1024 -- uname -a")]
    Device(device::Args),
    /// Throwaway microVMs with the agent as PID 1.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Run a host and a guest mux end over one link in this process: concurrent echo
    /// connections with checksums and half-close, throughput and round-trip figures, then
    /// commands through the agent over a mux link.
    Demo(demo::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("TETHER_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args).map(|()| ExitCode::SUCCESS),
        Command::Vm(cmd) => vm::run(cmd),
        Command::Device(args) => device::run(args).map(|()| ExitCode::SUCCESS),
        Command::Agent(args) => agent::run(args, cli.config.as_deref()).map(|()| ExitCode::SUCCESS),
        Command::Exec(args) => Ok(exec::main(args, cli.config.as_deref())),
        Command::Shell(args) => Ok(shell::main(args, cli.config.as_deref())),
        command => run_async(command, cli.config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime of the host-side commands: two workers, as many as these machines have
/// cores, with I/O and timers.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn run_async(command: Command, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let cfg = config::Config::load(config.as_deref())?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        tokio::select! {
            r = dispatch(command, &cfg) => r,
            s = stop_signal() => { tracing::debug!("stopping on {s}"); Ok(ExitCode::from(130)) }
        }
    });
    // A read of stdin may still be blocked in tokio's thread pool; do not wait for it.
    rt.shutdown_background();
    result
}

async fn dispatch(command: Command, cfg: &config::Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Cat(a) => cat::run(a, cfg).await.map(|()| ExitCode::SUCCESS),
        Command::Listen(a) => listen::run(a, cfg).await,
        Command::Forward(a) => forward::run(a, cfg).await.map(|()| ExitCode::SUCCESS),
        Command::Ping(a) => ping::run(a, cfg).await,
        Command::Demo(_)
        | Command::Agent(_)
        | Command::Exec(_)
        | Command::Shell(_)
        | Command::Device(_)
        | Command::Vm(_) => {
            unreachable!("run their own runtimes")
        }
    }
}

/// SIGINT or SIGTERM: returning drops listeners, which removes their socket files.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
