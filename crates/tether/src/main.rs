//! The tether command line: thin argument parsing over the tether crates.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod agent;
mod cat;
mod config;
mod cp;
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
    /// Relay every connection accepted on FROM to TO, both ways, with half-close; with
    /// --via, through the guest agent to and from addresses only the guest can reach.
    #[command(after_help = "Examples:\n  \
        tether forward tcp://127.0.0.1:8080 hybrid:///run/vm/v.sock:80\n  \
        tether forward unix:///run/agent.sock mux+unix:///run/vm/serial.sock:1024\n  \
        tether forward --peer vsock://3:80 --peer tcp://10.0.0.5:80 tcp://127.0.0.1:8080\n\n\
        Through the agent (the guest service needs no vsock listener of its own):\n  \
        tether forward --via vsock://3:1024 tcp://127.0.0.1:8080 tcp://127.0.0.1:80\n      \
        host port 8080 to port 80 on the guest's loopback\n  \
        tether forward --via hybrid:///run/fc/v.sock:1024 unix:///tmp/app.sock unix:///run/app.sock\n  \
        tether forward --via vsock://3:1024 --reverse tcp://127.0.0.1:5432 tcp://127.0.0.1:5432\n      \
        guest programs reach the host's database at their own 127.0.0.1:5432\n  \
        The agent forwards only where it is allowed: tether agent --allow-connect/--allow-listen\n  \
        (tether vm allows tcp://127.0.0.1:* both ways). See docs/forward.md.")]
    Forward(forward::Args),
    /// Serve commands to tether clients: the guest agent (PID 1 in `tether vm`).
    #[command(after_help = "Examples:\n  \
        tether agent                                   vsock://:1024, host CID 2 only\n  \
        tether agent --listen unix:///run/tether.sock\n  \
        tether agent --listen tcp://0.0.0.0:7000 --token-file /etc/tether/token\n  \
        tether agent --allow-connect 'tcp://127.0.0.1:*' --allow-listen tcp://127.0.0.1:5432\n      \
        let clients forward to any loopback port and listen on 5432 (tether forward --via)")]
    Agent(tether_agent::cli::Args),
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
    /// Copy files and directory trees between this machine and the guest, like docker cp
    /// or kubectl cp: the agent's URI first (or --peer / the config's peers), then SRC
    /// and DEST, the guest side written with a leading colon.
    #[command(
        override_usage = "tether cp [OPTIONS] [URI] SRC DEST",
        after_help = "The guest side is written with a leading colon, so a URI's colons are never taken\n\
        for a path: :/var/log/app.log, :relative/to/the/agent's/cwd. Exactly one side is\n\
        a guest path; a local path that starts with ':' is written ./:name. `-` as SRC\n\
        reads stdin into the guest file DEST; `-` as DEST writes the guest file to stdout.\n\
        Like cp -r: into DEST under its own name when DEST is an existing directory, else\n\
        as DEST. Directories recursively; modes and times kept (owners too when the\n\
        receiving side is root); symlinks copied as links. Each file appears under its\n\
        name only once complete and its SHA-256 checked. See docs/cp.md.\n\n\
        Examples:\n  \
        tether cp vsock://3:1024 ./build :/srv/build        host to guest\n  \
        tether cp vsock://3:1024 :/var/log/app.log .        guest to host\n  \
        tether cp --peer hybrid:///run/fc/v.sock:1024 :/etc/hosts ./:hosts\n  \
        tar c src | tether cp vsock://3:1024 - :/tmp/src.tar\n  \
        tether cp --json vsock://3:1024 :/data ./data       summary as JSON on stdout"
    )]
    Cp(cp::Args),
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
        Command::Cp(args) => Ok(cp::main(args, cli.config.as_deref())),
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
        | Command::Cp(_)
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
