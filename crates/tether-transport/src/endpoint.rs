//! Endpoint URIs: one spelling for every way to reach a VM.
//!
//! | URI | meaning |
//! |---|---|
//! | `vsock://CID:PORT` | AF_VSOCK to CID (2 = host); as a listener, bind that CID |
//! | `vsock://:PORT` | AF_VSOCK listener on any CID |
//! | `hybrid://PATH:PORT` | Firecracker / Cloud Hypervisor / vhost-user-vsock hybrid socket `PATH`: dial writes `CONNECT PORT`, listen binds `PATH_PORT` |
//! | `hyperkit://[CID]:PORT/DIR` | hyperkit's state directory `DIR`: dial via `DIR/connect` (guest CID 3 unless given), listen binds `DIR/00000002.%08x` |
//! | `hvsock://VM/SERVICE`, `hvsock:///SERVICE` | Hyper-V socket (Windows hosts); SERVICE is a GUID or a vsock port, VM a GUID, a name or `wildcard`, `children`, `loopback`, `parent` |
//! | `tcp://HOST:PORT` | TCP; HOST is a name, an IPv4 address or `[IPv6]` |
//! | `unix://PATH` | a Unix stream socket |
//! | `mux+serial://DEVICE:PORT` | port PORT of the mux on a character device (the guest end: `/dev/hvc1`, `/dev/virtio-ports/NAME`) |
//! | `mux+unix://PATH:PORT` | port PORT of the mux on a Unix socket (the host end: QEMU's `-chardev socket,server=on` behind a virtio-serial port) |
//!
//! Paths are taken literally (no percent-decoding) and may be relative; an absolute path
//! gives the familiar three slashes, `unix:///run/vm.sock`. For the forms ending in
//! `:PORT`, the port follows the *last* colon, so paths may contain colons.
//!
//! Parsing accepts only canonical spellings (decimal numbers without leading zeros or
//! signs), so `parse(s).to_string() == s` for every accepted `s`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use thiserror::Error;

/// The CID every VM sees its host at.
pub const HOST_CID: u32 = 2;
/// The guest CID hyperkit uses unless told otherwise.
pub const HYPERKIT_DEFAULT_CID: u32 = 3;

/// A place tether can dial or listen on. Parse one with [`str::parse`]; display gives the
/// same URI back.
///
/// ```
/// use tether_transport::Endpoint;
/// let ep: Endpoint = "hybrid:///run/fc/v.sock:1024".parse()?;
/// assert_eq!(ep, Endpoint::Hybrid { path: "/run/fc/v.sock".into(), port: 1024 });
/// assert_eq!(ep.to_string(), "hybrid:///run/fc/v.sock:1024");
/// # Ok::<(), tether_transport::ParseEndpointError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// AF_VSOCK. `cid` is `None` for `vsock://:PORT` (listen on any CID).
    Vsock {
        /// The peer's CID (dial) or the CID to bind (listen).
        cid: Option<u32>,
        /// The vsock port.
        port: u32,
    },
    /// The host side of a hybrid vsock device (Firecracker, Cloud Hypervisor,
    /// vhost-device-vsock, `tether device`).
    Hybrid {
        /// The device's Unix socket (`uds_path`).
        path: PathBuf,
        /// The guest port to dial, or the port guests dial to reach a listener here.
        port: u32,
    },
    /// The host side of hyperkit's virtio-sock.
    Hyperkit {
        /// The guest CID written into the connect header; `None` means 3.
        cid: Option<u32>,
        /// The vsock port.
        port: u32,
        /// hyperkit's state directory (holding `connect`).
        dir: PathBuf,
    },
    /// A Hyper-V socket.
    Hvsock {
        /// The VM; `None` for `hvsock:///SERVICE`.
        vm: Option<HvVm>,
        /// The service.
        service: HvService,
    },
    /// TCP.
    Tcp {
        /// A host name or address; IPv6 addresses without brackets.
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// A Unix stream socket.
    Unix {
        /// The socket's path.
        path: PathBuf,
    },
    /// A port on a mux link over a character device.
    MuxSerial {
        /// The device, e.g. `/dev/hvc1`.
        device: PathBuf,
        /// The vsock port on the link.
        port: u32,
    },
    /// A port on a mux link over a Unix socket.
    MuxUnix {
        /// The socket, e.g. QEMU's chardev socket.
        path: PathBuf,
        /// The vsock port on the link.
        port: u32,
    },
}

/// The VM part of an `hvsock://` URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HvVm {
    /// A VM id as written (a GUID, kept in its original spelling).
    Guid(Guid),
    /// One of Windows' well-known VM ids.
    WellKnown(HvWellKnown),
    /// A VM name, resolved to its id by the host.
    Name(String),
}

/// Windows' well-known Hyper-V socket VM ids (`HV_GUID_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HvWellKnown {
    /// `HV_GUID_WILDCARD`: listen for any VM.
    Wildcard,
    /// `HV_GUID_CHILDREN`: listen for the host's child VMs.
    Children,
    /// `HV_GUID_LOOPBACK`: the host itself.
    Loopback,
    /// `HV_GUID_PARENT`: a VM's host.
    Parent,
}

impl HvWellKnown {
    const ALL: [(HvWellKnown, &'static str); 4] = [
        (HvWellKnown::Wildcard, "wildcard"),
        (HvWellKnown::Children, "children"),
        (HvWellKnown::Loopback, "loopback"),
        (HvWellKnown::Parent, "parent"),
    ];

    /// The URI spelling.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .expect("listed")
            .1
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(k, _)| *k)
    }
}

/// The service part of an `hvsock://` URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HvService {
    /// A vsock port, mapped to the service GUID `%08x-facb-11e6-bd58-64006a7986d3`.
    Port(u32),
    /// A service GUID as written.
    Guid(Guid),
}

/// A GUID in its textual form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, kept as written
/// (either case) so URIs round-trip exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Guid(String);

impl Guid {
    /// The GUID's 128 bits, read as the text's hex digits in order.
    pub fn value(&self) -> u128 {
        let hex: String = self.0.chars().filter(|c| *c != '-').collect();
        u128::from_str_radix(&hex, 16).expect("validated at parse")
    }

    /// The first field (`Data1`), where Hyper-V puts a vsock port.
    pub fn data1(&self) -> u32 {
        (self.value() >> 96) as u32
    }

    /// The GUID as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Guid {
    type Err = String;

    fn from_str(s: &str) -> Result<Guid, String> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        let hex = groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
        if lens == [8, 4, 4, 4, 12] && hex {
            Ok(Guid(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
            ))
        }
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A URI tether could not read as an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("bad endpoint `{input}`: {problem}; expected {expected}")]
pub struct ParseEndpointError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub problem: String,
    /// The form (or forms) that were expected.
    pub expected: &'static str,
}

/// Every form, for errors that cannot tell which was meant.
const ALL_FORMS: &str = "one of vsock://CID:PORT, vsock://:PORT, hybrid://PATH:PORT, \
    hyperkit://[CID]:PORT/DIR, hvsock://VM/SERVICE, hvsock:///SERVICE, tcp://HOST:PORT, \
    unix://PATH, mux+serial://DEVICE:PORT, mux+unix://PATH:PORT";

/// The scheme's own form, named in its errors.
fn form(scheme: &str) -> &'static str {
    match scheme {
        "vsock" => "vsock://CID:PORT or vsock://:PORT (decimal u32 CID and port)",
        "hybrid" => "hybrid://PATH:PORT, e.g. hybrid:///run/fc/v.sock:1024",
        "hyperkit" => "hyperkit://[CID]:PORT/DIR, e.g. hyperkit://:1024/var/run/hyperkit",
        "hvsock" => {
            "hvsock://VM/SERVICE or hvsock:///SERVICE (SERVICE a GUID or a port; VM a GUID, \
             a name, wildcard, children, loopback or parent)"
        }
        "tcp" => "tcp://HOST:PORT, e.g. tcp://127.0.0.1:8080 or tcp://[::1]:8080",
        "unix" => "unix://PATH, e.g. unix:///run/tether.sock",
        "mux+serial" => "mux+serial://DEVICE:PORT, e.g. mux+serial:///dev/hvc1:1024",
        "mux+unix" => "mux+unix://PATH:PORT, e.g. mux+unix:///run/vm/serial.sock:1024",
        _ => ALL_FORMS,
    }
}

impl FromStr for Endpoint {
    type Err = ParseEndpointError;

    fn from_str(input: &str) -> Result<Endpoint, ParseEndpointError> {
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(ParseEndpointError {
                input: input.into(),
                problem: "no scheme (`SCHEME://`)".into(),
                expected: ALL_FORMS,
            });
        };
        parse_rest(scheme, rest).map_err(|problem| ParseEndpointError {
            input: input.into(),
            problem,
            expected: form(scheme),
        })
    }
}

fn parse_rest(scheme: &str, rest: &str) -> Result<Endpoint, String> {
    match scheme {
        "vsock" => {
            let (cid, port) = rest.split_once(':').ok_or("no `:PORT`".to_string())?;
            let cid = if cid.is_empty() {
                None
            } else {
                Some(number::<u32>(cid, "CID")?)
            };
            Ok(Endpoint::Vsock {
                cid,
                port: vsock_port(port)?,
            })
        }
        "hybrid" => {
            let (path, port) = path_and_port(rest)?;
            Ok(Endpoint::Hybrid { path, port })
        }
        "hyperkit" => parse_hyperkit(rest),
        "hvsock" => parse_hvsock(rest),
        "tcp" => parse_tcp(rest),
        "unix" => Ok(Endpoint::Unix {
            path: nonempty_path(rest)?,
        }),
        "mux+serial" => {
            let (device, port) = path_and_port(rest)?;
            Ok(Endpoint::MuxSerial { device, port })
        }
        "mux+unix" => {
            let (path, port) = path_and_port(rest)?;
            Ok(Endpoint::MuxUnix { path, port })
        }
        other => Err(format!("unknown scheme `{other}`")),
    }
}

/// A canonical decimal: digits only, no leading zero (so display gives it back).
fn number<T: FromStr>(s: &str, what: &str) -> Result<T, String> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(format!("{what} `{s}` is not a decimal number"));
    }
    s.parse()
        .map_err(|_| format!("{what} `{s}` is out of range"))
}

fn vsock_port(s: &str) -> Result<u32, String> {
    let port = number::<u32>(s, "port")?;
    if port == u32::MAX {
        return Err("port 4294967295 is VMADDR_PORT_ANY, not a port".into());
    }
    Ok(port)
}

fn nonempty_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("empty path".into());
    }
    Ok(PathBuf::from(s))
}

fn path_and_port(rest: &str) -> Result<(PathBuf, u32), String> {
    let (path, port) = rest.rsplit_once(':').ok_or("no `:PORT`".to_string())?;
    Ok((nonempty_path(path)?, vsock_port(port)?))
}

fn parse_hyperkit(rest: &str) -> Result<Endpoint, String> {
    let (cid, rest) = rest.split_once(':').ok_or("no `:PORT`".to_string())?;
    let (port, dir) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => return Err("no state directory after the port".into()),
    };
    let cid = if cid.is_empty() {
        None
    } else {
        Some(number::<u32>(cid, "CID")?)
    };
    // `hyperkit://:1024/abs/dir`: the slash opening the directory is the path's own.
    Ok(Endpoint::Hyperkit {
        cid,
        port: vsock_port(port)?,
        dir: nonempty_path(dir)?,
    })
}

fn parse_hvsock(rest: &str) -> Result<Endpoint, String> {
    let (vm, service) = rest.split_once('/').ok_or("no `/SERVICE`".to_string())?;
    let vm = match vm {
        "" => None,
        v => Some(if let Ok(g) = v.parse::<Guid>() {
            HvVm::Guid(g)
        } else if let Some(k) = HvWellKnown::from_name(v) {
            HvVm::WellKnown(k)
        } else if v.contains(['/', ':']) {
            return Err(format!("VM name `{v}` may not contain `/` or `:`"));
        } else {
            HvVm::Name(v.into())
        }),
    };
    let service = if service.contains('-') {
        HvService::Guid(service.parse()?)
    } else {
        HvService::Port(
            vsock_port(service)
                .map_err(|_| format!("service `{service}` is neither a GUID nor a decimal port"))?,
        )
    };
    Ok(Endpoint::Hvsock { vm, service })
}

fn parse_tcp(rest: &str) -> Result<Endpoint, String> {
    let (host, port) = rest.rsplit_once(':').ok_or("no `:PORT`".to_string())?;
    let host = if let Some(v6) = host.strip_prefix('[') {
        let v6 = v6.strip_suffix(']').ok_or("unclosed `[`")?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
        v6.to_string()
    } else if host.is_empty() {
        return Err("empty host".into());
    } else if host.contains([':', '/', '[', ']']) {
        return Err(format!(
            "host `{host}` is not a name or address (write IPv6 in brackets)"
        ));
    } else {
        host.to_string()
    };
    Ok(Endpoint::Tcp {
        host,
        port: number(port, "port")?,
    })
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Vsock { cid: Some(c), port } => write!(f, "vsock://{c}:{port}"),
            Endpoint::Vsock { cid: None, port } => write!(f, "vsock://:{port}"),
            Endpoint::Hybrid { path, port } => write!(f, "hybrid://{}:{port}", path.display()),
            Endpoint::Hyperkit { cid, port, dir } => {
                let cid = cid.map(|c| c.to_string()).unwrap_or_default();
                write!(f, "hyperkit://{cid}:{port}{}", dir.display())
            }
            Endpoint::Hvsock { vm, service } => {
                f.write_str("hvsock://")?;
                match vm {
                    None => {}
                    Some(HvVm::Guid(g)) => write!(f, "{g}")?,
                    Some(HvVm::WellKnown(k)) => f.write_str(k.name())?,
                    Some(HvVm::Name(n)) => f.write_str(n)?,
                }
                match service {
                    HvService::Port(p) => write!(f, "/{p}"),
                    HvService::Guid(g) => write!(f, "/{g}"),
                }
            }
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Unix { path } => write!(f, "unix://{}", path.display()),
            Endpoint::MuxSerial { device, port } => {
                write!(f, "mux+serial://{}:{port}", device.display())
            }
            Endpoint::MuxUnix { path, port } => write!(f, "mux+unix://{}:{port}", path.display()),
        }
    }
}

/// How cheap a path to a peer is, lowest first: a direct vsock beats a socket on the
/// same host, which beats a mux over a serial line, which beats TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkCost {
    /// AF_VSOCK or a Hyper-V socket: the hypervisor's own channel.
    Vsock = 1,
    /// A Unix socket on this host: hybrid, hyperkit or plain.
    Local = 2,
    /// A vsock connection multiplexed over a serial line or socket.
    Mux = 3,
    /// TCP, possibly across a network.
    Tcp = 4,
}

impl Endpoint {
    /// The link cost used to order a peer's endpoints.
    pub fn cost(&self) -> LinkCost {
        match self {
            Endpoint::Vsock { .. } | Endpoint::Hvsock { .. } => LinkCost::Vsock,
            Endpoint::Hybrid { .. } | Endpoint::Hyperkit { .. } | Endpoint::Unix { .. } => {
                LinkCost::Local
            }
            Endpoint::MuxSerial { .. } | Endpoint::MuxUnix { .. } => LinkCost::Mux,
            Endpoint::Tcp { .. } => LinkCost::Tcp,
        }
    }

    /// The Unix socket path a listener on this endpoint binds, if it binds one:
    /// `PATH` for unix, `PATH_PORT` for hybrid, `DIR/00000002.%08x` for hyperkit.
    pub fn listen_path(&self) -> Option<PathBuf> {
        match self {
            Endpoint::Unix { path } => Some(path.clone()),
            Endpoint::Hybrid { path, port } => Some(crate::hybrid::listen_path(path, *port)),
            Endpoint::Hyperkit { dir, port, .. } => Some(crate::hyperkit::listen_path(dir, *port)),
            _ => None,
        }
    }

    /// The path of the mux link this endpoint rides on, if it is a mux endpoint.
    pub fn mux_link(&self) -> Option<&Path> {
        match self {
            Endpoint::MuxSerial { device, .. } => Some(device),
            Endpoint::MuxUnix { path, .. } => Some(path),
            _ => None,
        }
    }
}
