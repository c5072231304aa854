//! `tether vm`: throwaway microVMs with the agent as PID 1 — `run` one command, or
//! `start` one that keeps running until `stop`.

use crate::exec::run_session;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tether_client::{Client, Command};
use tether_transport::{relay, Endpoint, Peer, Transport};
use tether_vm::{Accel, Vm, VmConfig, VsockDevice};

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
    /// tether's own vhost-user backend (`tether device`), run from the guest binary.
    Tether,
    /// rust-vmm's vhost-device-vsock (cargo install vhost-device-vsock).
    VhostDeviceVsock,
}

/// How to build and boot the VM.
#[derive(clap::Args, Debug, Clone)]
pub struct BootArgs {
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
    #[arg(long, value_enum, default_value = "tether")]
    pub vsock: VsockArg,
    /// Reach the agent through the mux over a virtio-serial port instead of vsock.
    #[arg(long)]
    pub serial: bool,
    /// Statically linked tether for the guest [default: this executable, when static].
    #[arg(long, value_name = "PATH")]
    pub guest_binary: Option<PathBuf>,
    /// A host program to copy into the guest with its shared libraries (e.g.
    /// /usr/bin/socat); repeat for several.
    #[arg(long = "with", value_name = "PROGRAM")]
    pub with: Vec<PathBuf>,
}

impl BootArgs {
    fn config(&self) -> VmConfig {
        VmConfig {
            memory_mib: self.memory,
            cpus: self.cpus,
            accel: match self.accel {
                AccelArg::Auto => Accel::Auto,
                AccelArg::Tcg => Accel::Tcg,
                AccelArg::Kvm => Accel::Kvm,
            },
            guest_binary: self.guest_binary.clone(),
            serial: self.serial,
            vsock: match self.vsock {
                VsockArg::Tether => VsockDevice::Tether,
                VsockArg::VhostDeviceVsock => VsockDevice::VhostDeviceVsock,
            },
            extra_programs: self.with.clone(),
            ..VmConfig::default()
        }
    }
}

/// Options of `tether vm run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub boot: BootArgs,
    /// Copy stdin to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command on a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Print boot figures to stderr.
    #[arg(short, long)]
    pub verbose: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Options of `tether vm start`.
#[derive(clap::Args, Debug, Clone)]
pub struct StartArgs {
    #[command(flatten)]
    pub boot: BootArgs,
    /// A name for the VM, to stop it by.
    #[arg(long, default_value = "default")]
    pub name: String,
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
    /// Boot a microVM that keeps running in the background; prints the agent's endpoint.
    #[command(after_help = "Examples:\n  \
        tether vm start && tether exec \"$(tether vm endpoint)\" -- uname -a && tether vm stop\n  \
        tether vm start --serial --name s1\n  \
        tether forward --via \"$(tether vm endpoint)\" tcp://127.0.0.1:8080 tcp://127.0.0.1:80\n      \
        the guest's agent forwards to and from its loopback TCP ports (docs/forward.md)")]
    Start(StartArgs),
    /// Print the agent endpoint of a started VM.
    Endpoint {
        /// The VM's name.
        #[arg(default_value = "default")]
        name: String,
    },
    /// Power off a started VM and remove its files.
    Stop {
        /// The VM's name.
        #[arg(default_value = "default")]
        name: String,
    },
    /// Runs a started VM in the foreground (what `start` runs in the background).
    #[command(hide = true)]
    Serve(StartArgs),
}

pub fn run(cmd: VmCommand) -> Result<ExitCode> {
    let rt = crate::runtime()?;
    let code = rt.block_on(async {
        match cmd {
            VmCommand::Run(args) => run_in_vm(args).await,
            VmCommand::Start(args) => start(args).await,
            VmCommand::Endpoint { name } => {
                println!("{}", endpoint_of(&name)?);
                Ok(ExitCode::SUCCESS)
            }
            VmCommand::Stop { name } => stop(&name).await,
            VmCommand::Serve(args) => serve(args).await,
        }
    });
    rt.shutdown_background();
    code
}

async fn run_in_vm(args: RunArgs) -> Result<ExitCode> {
    if args.command.is_empty() {
        bail!("no command given: tether vm run -- CMD ARGS");
    }
    let vm = Vm::start(&args.boot.config())
        .await
        .context("starting the microVM")?;
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
    let command = Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(args.interactive);
    let code = run_session(&client, command, args.interactive, args.tty).await;
    vm.stop().await;
    code
}

/// Where a started VM keeps its pid, endpoint and log.
fn state_dir(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains(['/', '.']) {
        bail!("a VM name is letters, digits, - and _; got `{name}`");
    }
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    Ok(base.join("tether-vms").join(name))
}

fn endpoint_of(name: &str) -> Result<String> {
    let f = state_dir(name)?.join("endpoint");
    let ep = std::fs::read_to_string(&f)
        .with_context(|| format!("no started VM named `{name}` (tether vm start --name {name})"))?;
    Ok(ep.trim().to_string())
}

async fn start(args: StartArgs) -> Result<ExitCode> {
    let dir = state_dir(&args.name)?;
    if dir.join("pid").exists() {
        bail!(
            "a VM named `{}` is already started (tether vm stop {})",
            args.name,
            args.name
        );
    }
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("serve.log"))?;
    let mut serve = std::process::Command::new(std::env::current_exe()?);
    serve.args(["vm", "serve", "--name", &args.name]);
    serve.args(boot_flags(&args.boot));
    // Its own session: the VM outlives this terminal and this command.
    // SAFETY: setsid only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut serve, || {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = serve
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the VM's keeper")?;
    let endpoint = dir.join("endpoint");
    loop {
        if endpoint.exists() {
            println!("{}", std::fs::read_to_string(&endpoint)?.trim());
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            bail!("the VM did not start ({status}):\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn boot_flags(b: &BootArgs) -> Vec<String> {
    let mut f = vec![
        "--memory".into(),
        b.memory.to_string(),
        "--cpus".into(),
        b.cpus.to_string(),
        "--accel".into(),
        format!("{:?}", b.accel).to_lowercase(),
    ];
    if b.serial {
        f.push("--serial".into());
    }
    if let Some(g) = &b.guest_binary {
        f.push("--guest-binary".into());
        f.push(g.display().to_string());
    }
    for w in &b.with {
        f.push("--with".into());
        f.push(w.display().to_string());
    }
    f
}

/// Boots, publishes the endpoint, and keeps the VM until SIGTERM or SIGINT.
async fn serve(args: StartArgs) -> Result<ExitCode> {
    let dir = state_dir(&args.name)?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pid"), std::process::id().to_string())?;
    let result = serve_vm(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn serve_vm(args: &StartArgs, dir: &std::path::Path) -> Result<ExitCode> {
    let vm = Vm::start(&args.boot.config())
        .await
        .context("starting the microVM")?;
    // A serial VM's link is held here; other processes reach the agent through a Unix
    // socket relayed onto it.
    let (public, relay_task) = if args.boot.serial {
        let sock = Endpoint::Unix {
            path: dir.join("agent.sock"),
        };
        let listener = Transport::default().bind(&sock).await?;
        let task = tokio::spawn(relay_to(
            listener,
            vm.transport().clone(),
            vm.endpoint().clone(),
        ));
        (sock, Some(task))
    } else {
        (vm.endpoint().clone(), None)
    };
    std::fs::write(dir.join("endpoint"), format!("{public}\n"))?;
    eprintln!(
        "tether: VM `{}` up in {:?}: {public}",
        args.name,
        vm.boot_time()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if let Some(t) = relay_task {
        t.abort();
    }
    vm.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn relay_to(mut listener: tether_transport::Listener, transport: Transport, to: Endpoint) {
    while let Ok(mut inbound) = listener.accept().await {
        let (transport, to) = (transport.clone(), to.clone());
        tokio::spawn(async move {
            if let Ok(mut outbound) = transport.dial(&to).await {
                let _ = relay::relay(&mut inbound, &mut outbound).await;
            }
        });
    }
}

async fn stop(name: &str) -> Result<ExitCode> {
    let dir = state_dir(name)?;
    let pid: i32 = std::fs::read_to_string(dir.join("pid"))
        .with_context(|| format!("no started VM named `{name}`"))?
        .trim()
        .parse()
        .context("reading the VM's pid")?;
    let pid = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
        // Its keeper is gone already: clear what it left.
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(ExitCode::SUCCESS);
    }
    for _ in 0..200 {
        if !dir.exists() {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the VM `{name}` did not stop within 10 s (pid {pid})")
}
