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
