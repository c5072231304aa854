//! `tether vm run`: a throwaway microVM that runs one command through the agent.

use crate::exec::run_session;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use tether_client::{Client, Command};
use tether_transport::Peer;
use tether_vm::{Accel, Vm, VmConfig};

/// The accelerator, as given on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AccelArg {
    /// KVM when a guest really runs under it, else TCG.
    Auto,
    /// Software emulation.
    Tcg,
    /// Hardware virtualization.
    Kvm,
}

/// The vsock device backend.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum VsockArg {
    /// rust-vmm's vhost-device-vsock (cargo install vhost-device-vsock).
    VhostDeviceVsock,
}

/// Options of `tether vm run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// The vsock device backend.
    #[arg(long, value_enum, default_value = "vhost-device-vsock")]
    pub vsock: VsockArg,
    /// Reach the agent through the mux over a virtio-serial port instead of vsock.
    #[arg(long)]
    pub serial: bool,
    /// Copy stdin to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command on a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Statically linked tether for the guest [default: this executable, when static].
    #[arg(long, value_name = "PATH")]
    pub guest_binary: Option<PathBuf>,
    /// Print boot figures to stderr.
    #[arg(short, long)]
    pub verbose: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `tether vm` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum VmCommand {
    /// Boot a throwaway microVM, run CMD in it through the agent, power it off.
    #[command(after_help = "Examples:\n  \
        tether vm run -- uname -a\n  \
        echo hi | tether vm run -i -- tr a-z A-Z\n  \
        tether vm run -it -- sh\n  \
        tether vm run --serial -- cat /proc/cmdline      the agent over the mux on virtio-serial")]
    Run(RunArgs),
}

pub fn run(cmd: VmCommand) -> Result<ExitCode> {
    let VmCommand::Run(args) = cmd;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let code = rt.block_on(run_in_vm(args));
    rt.shutdown_background();
    code
}

async fn run_in_vm(args: RunArgs) -> Result<ExitCode> {
    let VsockArg::VhostDeviceVsock = args.vsock;
    if args.command.is_empty() {
        bail!("no command given: tether vm run -- CMD ARGS");
    }
    let config = VmConfig {
        memory_mib: args.memory,
        cpus: args.cpus,
        accel: match args.accel {
            AccelArg::Auto => Accel::Auto,
            AccelArg::Tcg => Accel::Tcg,
            AccelArg::Kvm => Accel::Kvm,
        },
        guest_binary: args.guest_binary.clone(),
        serial: args.serial,
        ..VmConfig::default()
    };
    let vm = Vm::start(&config).await.context("starting the microVM")?;
    if args.verbose {
        eprintln!(
            "tether: {:?} guest up, agent at {} after {:?}",
            vm.accel(),
            vm.endpoint(),
            vm.boot_time()
        );
    }
    // The VM's own transport: over serial it holds the one link QEMU's socket accepts.
    let client = Client::with_transport(vm.transport().clone(), Peer::new([vm.endpoint().clone()]));
    let mut command = Command::new(&args.command[0]).args(&args.command[1..]);
    command = command.stdin(args.interactive);
    let code = run_session(&client, command, args.interactive, args.tty).await;
    vm.stop().await;
    code
}
