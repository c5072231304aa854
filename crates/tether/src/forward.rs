//! `tether forward`: a proxy from one endpoint to another, or through a guest agent to
//! and from places only the guest can reach.

use crate::config::Config;
use crate::dial::DialArgs;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tether_client::{Client, Incoming};
use tether_transport::{relay, Endpoint, Listener, Peer, Stream, Transport, TransportError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Options of `tether forward`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to accept connections (with --reverse: the address to listen on inside the
    /// guest).
    pub from: Endpoint,
    /// Where to connect each one; without it, the peer from --peer or the config file.
    /// With --via: the destination as the guest sees it (with --reverse: the host
    /// endpoint guest connections go to).
    pub to: Option<Endpoint>,
    #[command(flatten)]
    pub dial: DialArgs,
    /// Connections relayed at once; more wait in the listener's backlog.
    #[arg(long, default_value_t = 4096)]
    pub max_conns: usize,
    /// Go through the tether agent at URI: TO is connected to inside the guest, so it can
    /// be a guest-only address such as tcp://127.0.0.1:80. Repeat for several endpoints of
    /// one agent (the cheapest reachable wins). The agent must allow TO (`tether agent
    /// --allow-connect`; `tether vm` allows tcp://127.0.0.1:*).
    #[arg(long = "via", value_name = "URI")]
    pub via: Vec<Endpoint>,
    /// With --via: listen on FROM inside the guest and relay each guest connection to TO
    /// on this side (the agent must allow FROM: `--allow-listen`).
    #[arg(long, requires = "via")]
    pub reverse: bool,
    /// With --via: a file holding the agent's shared token.
    #[arg(long, value_name = "FILE", env = "TETHER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

pub async fn run(args: Args, cfg: &Config) -> Result<()> {
    if !args.via.is_empty() {
        return run_via(args, cfg).await;
    }
    let peer = args.dial.peer(args.to.as_ref(), cfg)?;
    let transport = args.dial.transport(cfg);
    let mut listener = transport.bind(&args.from).await?;
    eprintln!(
        "tether: forwarding {} to {}",
        listener.local_endpoint(),
        list(peer.endpoints())
    );
    let slots = Arc::new(Semaphore::new(args.max_conns.max(1)));
    let peer = Arc::new(peer);
    relay_each(&mut listener, slots, move || {
        let (transport, peer) = (transport.clone(), peer.clone());
        async move { transport.dial_peer(&peer).await }
    })
    .await
}

/// Relays every connection accepted on `listener`, at most `slots` at once, to what
/// `dial` opens for it. A connection whose dial fails is closed unserved, and why is said
/// where the user looks.
async fn relay_each<S, E, F, Fut>(
    listener: &mut Listener,
    slots: Arc<Semaphore>,
    dial: F,
) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    E: std::fmt::Display + Send,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<S, E>> + Send + 'static,
{
    loop {
        let (mut inbound, permit) = accept(listener, &slots).await?;
        let dialing = dial();
        tokio::spawn(async move {
            let from = inbound.remote().to_string();
            match dialing.await {
                Ok(mut outbound) => match relay::relay(&mut inbound, &mut outbound).await {
                    Ok(n) => tracing::debug!(%from, up = n.a_to_b, down = n.b_to_a, "relayed"),
                    Err(e) => tracing::debug!(%from, "relay ended: {e}"),
                },
                Err(e) => eprintln!("tether: connection from {from}: {e}"),
            }
            drop(permit);
        });
    }
}

fn list(endpoints: &[Endpoint]) -> String {
    endpoints
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The next connection on `listener`, once one of `slots` is free.
async fn accept(
    listener: &mut Listener,
    slots: &Arc<Semaphore>,
) -> Result<(Stream, OwnedSemaphorePermit)> {
    loop {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        match listener.accept().await {
            Ok(s) => return Ok((s, permit)),
            Err(e @ TransportError::Mux { .. }) => return Err(e.into()),
            Err(e) => {
                // Out of descriptors or an aborted handshake: keep serving the rest.
                tracing::warn!("{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// `--via`: both directions through the agent.
async fn run_via(args: Args, cfg: &Config) -> Result<()> {
    if !args.dial.peers.is_empty() {
        bail!(
            "with --via, --peer has no use: name the agent's endpoints with --via (repeat it \
             for several) and the guest destination as TO"
        );
    }
    let Some(to) = args.to.clone() else {
        bail!(
            "with --via, give TO: the destination as the guest sees it (with --reverse, the \
             host endpoint)"
        );
    };
    let transport = args.dial.transport(cfg);
    let mut client = Client::with_transport(transport.clone(), Peer::new(args.via.clone()));
    if let Some(f) = &args.token_file {
        client = client.token(crate::token::read_token(f)?);
    }
    let slots = Arc::new(Semaphore::new(args.max_conns.max(1)));
    let via = list(client.peer().endpoints());
    if args.reverse {
        reverse(client, transport, &args.from, to, &via, slots).await
    } else {
        into_guest(client, transport, &args.from, to, &via, slots).await
    }
}

/// Host connections on `from` to `to` inside the guest.
async fn into_guest(
    client: Client,
    transport: Transport,
    from: &Endpoint,
    to: Endpoint,
    via: &str,
    slots: Arc<Semaphore>,
) -> Result<()> {
    let mut listener = transport.bind(from).await?;
    eprintln!(
        "tether: forwarding {} to {to} in the guest via {via}",
        listener.local_endpoint()
    );
    let target = Arc::new(to.to_string());
    relay_each(&mut listener, slots, move || {
        let (client, target) = (client.clone(), target.clone());
        async move { client.connect_guest(&target).await }
    })
    .await
}

/// Guest connections to `from` (listened on inside the guest) to `to` on this side.
async fn reverse(
    client: Client,
    transport: Transport,
    from: &Endpoint,
    to: Endpoint,
    via: &str,
    slots: Arc<Semaphore>,
) -> Result<()> {
    let mut guest = client
        .listen_guest(&from.to_string())
        .await
        .with_context(|| format!("listening on {from} in the guest via {via}"))?;
    eprintln!(
        "tether: forwarding {} in the guest to {to} via {via}",
        guest.bound()
    );
    let to = Arc::new(to);
    loop {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        // The agent ending the listener (or going away) ends the forward.
        let incoming = guest.next().await?;
        let transport = transport.clone();
        let to = to.clone();
        tokio::spawn(async move {
            carry_back(incoming, &transport, &to).await;
            drop(permit);
        });
    }
}

/// Claims one guest connection and relays it to `to`. Both are set up at once; when
/// either fails the other is dropped, so the guest program sees its connection close
/// rather than wait for the agent's claim timeout.
async fn carry_back(incoming: Incoming, transport: &Transport, to: &Endpoint) {
    let peer = incoming.peer().to_string();
    let (guest, host) = tokio::join!(incoming.attach(), transport.dial(to));
    match (guest, host) {
        (Ok(mut g), Ok(mut h)) => match relay::relay(&mut g, &mut h).await {
            Ok(n) => tracing::debug!(%peer, up = n.a_to_b, down = n.b_to_a, "relayed"),
            Err(e) => tracing::debug!(%peer, "relay ended: {e}"),
        },
        (Err(e), _) => eprintln!("tether: guest connection from {peer}: {e}"),
        (_, Err(e)) => eprintln!("tether: guest connection from {peer}: {e}"),
    }
}
