//! Hyper-V sockets: the vsock port to service GUID mapping, and the Windows socket calls.
//!
//! Hyper-V names services by GUID; a vsock port P is the service
//! `P as %08x` followed by `-facb-11e6-bd58-64006a7986d3`. Linux guests on Hyper-V
//! reach the host with AF_VSOCK (the hv_sock transport), so on Linux an `hvsock://`
//! endpoint is refused with a pointer to `vsock://2:PORT`.

use crate::endpoint::{Guid, HvService};

/// The part of a vsock-template service GUID after `Data1`.
pub const VSOCK_TEMPLATE_TAIL: &str = "-facb-11e6-bd58-64006a7986d3";

/// The service GUID for vsock `port`.
pub fn service_for_port(port: u32) -> Guid {
    format!("{port:08x}{VSOCK_TEMPLATE_TAIL}")
        .parse()
        .expect("template is a GUID")
}

/// The vsock port a service GUID stands for, when it follows the vsock template.
pub fn port_for_service(guid: &Guid) -> Option<u32> {
    let tail = &guid.as_str()[8..];
    tail.eq_ignore_ascii_case(VSOCK_TEMPLATE_TAIL)
        .then(|| guid.data1())
}

impl HvService {
    /// The service GUID this names (a port maps through the vsock template).
    pub fn guid(&self) -> Guid {
        match self {
            HvService::Port(p) => service_for_port(*p),
            HvService::Guid(g) => g.clone(),
        }
    }

    /// The vsock port this names, when it is one.
    pub fn port(&self) -> Option<u32> {
        match self {
            HvService::Port(p) => Some(*p),
            HvService::Guid(g) => port_for_service(g),
        }
    }
}

/// What to say when an `hvsock://` endpoint is used off Windows.
pub fn unsupported_hint(service: &HvService) -> String {
    let port = match service.port() {
        Some(p) => p.to_string(),
        None => "PORT".to_string(),
    };
    format!(
        "Hyper-V sockets are a Windows host API; inside a Linux guest on Hyper-V use \
         vsock://2:{port} (AF_VSOCK over the hv_sock transport), or vsock://:{port} to listen"
    )
}

/// The AF_HYPERV socket calls (Windows only).
///
/// Written against windows-sys and Microsoft's documented `SOCKADDR_HV`; this machine
/// cannot build Windows targets, so it is compiled only where Windows is.
#[cfg(windows)]
pub mod sys {
    use crate::endpoint::{HvService, HvVm, HvWellKnown};
    use std::io;
    use std::mem::size_of;
    use std::net::{TcpListener, TcpStream};
    use std::os::windows::io::FromRawSocket;
    use std::sync::Once;
    use windows_sys::core::GUID;
    use windows_sys::Win32::Networking::WinSock::{
        self as ws, AF_HYPERV, INVALID_SOCKET, SOCKADDR, SOCKET, SOCKET_ERROR, SOCK_STREAM,
        SOMAXCONN, WSADATA,
    };
    use windows_sys::Win32::System::Hypervisor::{
        HV_GUID_CHILDREN, HV_GUID_LOOPBACK, HV_GUID_PARENT, HV_GUID_WILDCARD, HV_PROTOCOL_RAW,
        SOCKADDR_HV,
    };

    /// The VM id for `vm`; with none, `when_absent` (parent to dial, wildcard to listen).
    fn vm_id(vm: Option<&HvVm>, when_absent: GUID) -> io::Result<GUID> {
        Ok(match vm {
            None => when_absent,
            Some(HvVm::Guid(g)) => GUID::from_u128(g.value()),
            Some(HvVm::WellKnown(HvWellKnown::Wildcard)) => HV_GUID_WILDCARD,
            Some(HvVm::WellKnown(HvWellKnown::Children)) => HV_GUID_CHILDREN,
            Some(HvVm::WellKnown(HvWellKnown::Loopback)) => HV_GUID_LOOPBACK,
            Some(HvVm::WellKnown(HvWellKnown::Parent)) => HV_GUID_PARENT,
            Some(HvVm::Name(n)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("VM names need Hyper-V's management API; give the VM id instead: (Get-VM {n}).Id"),
                ))
            }
        })
    }

    fn address(vm: GUID, service: &HvService) -> SOCKADDR_HV {
        SOCKADDR_HV {
            Family: AF_HYPERV,
            Reserved: 0,
            VmId: vm,
            ServiceId: GUID::from_u128(service.guid().value()),
        }
    }

    fn socket() -> io::Result<SOCKET> {
        static STARTUP: Once = Once::new();
        // SAFETY: WSAStartup only fills the WSADATA it is given.
        STARTUP.call_once(|| unsafe {
            let mut data: WSADATA = std::mem::zeroed();
            ws::WSAStartup(0x202, &mut data);
        });
        // SAFETY: plain socket creation; the result is checked.
        let s = unsafe { ws::socket(AF_HYPERV as i32, SOCK_STREAM, HV_PROTOCOL_RAW as i32) };
        if s == INVALID_SOCKET {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    fn check(s: SOCKET, rc: i32) -> io::Result<()> {
        if rc == SOCKET_ERROR {
            let e = io::Error::last_os_error();
            // SAFETY: `s` is ours and not used again.
            unsafe { ws::closesocket(s) };
            return Err(e);
        }
        Ok(())
    }

    /// Connects to `service` on `vm` (the parent partition when `vm` is `None`).
    /// Winsock streams of any family are driven like TCP streams.
    pub fn connect(vm: Option<&HvVm>, service: &HvService) -> io::Result<TcpStream> {
        let addr = address(vm_id(vm, HV_GUID_PARENT)?, service);
        let s = socket()?;
        // SAFETY: `addr` is a valid SOCKADDR_HV and its size is passed with it.
        let rc = unsafe {
            ws::connect(
                s,
                &addr as *const SOCKADDR_HV as *const SOCKADDR,
                size_of::<SOCKADDR_HV>() as i32,
            )
        };
        check(s, rc)?;
        // SAFETY: `s` is a connected socket we own.
        Ok(unsafe { TcpStream::from_raw_socket(s as u64) })
    }

    /// Listens for `service` from `vm` (any VM when `vm` is `None`).
    pub fn bind(vm: Option<&HvVm>, service: &HvService) -> io::Result<TcpListener> {
        let addr = address(vm_id(vm, HV_GUID_WILDCARD)?, service);
        let s = socket()?;
        // SAFETY: as in `connect`.
        let rc = unsafe {
            ws::bind(
                s,
                &addr as *const SOCKADDR_HV as *const SOCKADDR,
                size_of::<SOCKADDR_HV>() as i32,
            )
        };
        check(s, rc)?;
        // SAFETY: `s` is a bound socket we own.
        check(s, unsafe { ws::listen(s, SOMAXCONN as i32) })?;
        // SAFETY: `s` is a listening socket we own.
        Ok(unsafe { TcpListener::from_raw_socket(s as u64) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_maps_to_template_guid_and_back() {
        let g = service_for_port(0x400);
        assert_eq!(g.as_str(), "00000400-facb-11e6-bd58-64006a7986d3");
        assert_eq!(port_for_service(&g), Some(1024));
        let upper: Guid = "00000400-FACB-11E6-BD58-64006A7986D3".parse().unwrap();
        assert_eq!(port_for_service(&upper), Some(1024));
        let other: Guid = "00000400-facb-11e6-bd58-64006a7986d4".parse().unwrap();
        assert_eq!(port_for_service(&other), None);
    }
}
