//! Endpoint URIs: every form parses to the expected value and displays back exactly, bad
//! URIs name the form that was expected, and peers order their endpoints by link cost.

use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use tether_transport::endpoint::{Guid, HvService, HvVm, HvWellKnown};
use tether_transport::{Endpoint, LinkCost, ParseEndpointError, Peer};

fn ep(s: &str) -> Endpoint {
    s.parse()
        .unwrap_or_else(|e| panic!("`{s}` should parse: {e}"))
}

fn guid(s: &str) -> Guid {
    s.parse().unwrap()
}

const G1: &str = "0b3a2c8e-1f2d-4e5f-9a8b-7c6d5e4f3a2b";
const G2: &str = "00000400-FACB-11E6-BD58-64006A7986D3";

#[test]
fn every_form_parses_and_round_trips_exactly() {
    let cases: Vec<(String, Endpoint)> = vec![
        (
            "vsock://3:1024".into(),
            Endpoint::Vsock {
                cid: Some(3),
                port: 1024,
            },
        ),
        (
            "vsock://:1024".into(),
            Endpoint::Vsock {
                cid: None,
                port: 1024,
            },
        ),
        (
            "hybrid:///run/v.sock:80".into(),
            Endpoint::Hybrid {
                path: "/run/v.sock".into(),
                port: 80,
            },
        ),
        (
            // The port follows the last colon; earlier ones belong to the path.
            "hybrid:///run/a:b/v:1.sock:80".into(),
            Endpoint::Hybrid {
                path: "/run/a:b/v:1.sock".into(),
                port: 80,
            },
        ),
        (
            "hyperkit://:1024/var/run/hk".into(),
            Endpoint::Hyperkit {
                cid: None,
                port: 1024,
                dir: "/var/run/hk".into(),
            },
        ),
        (
            "hyperkit://5:1024/dir".into(),
            Endpoint::Hyperkit {
                cid: Some(5),
                port: 1024,
                dir: "/dir".into(),
            },
        ),
        (
            format!("hvsock://{G1}/{G2}"),
            Endpoint::Hvsock {
                vm: Some(HvVm::Guid(guid(G1))),
                service: HvService::Guid(guid(G2)),
            },
        ),
        (
            "hvsock:///1024".into(),
            Endpoint::Hvsock {
                vm: None,
                service: HvService::Port(1024),
            },
        ),
        (
            "hvsock://parent/1024".into(),
            Endpoint::Hvsock {
                vm: Some(HvVm::WellKnown(HvWellKnown::Parent)),
                service: HvService::Port(1024),
            },
        ),
        (
            format!("hvsock://myvm/{G1}"),
            Endpoint::Hvsock {
                vm: Some(HvVm::Name("myvm".into())),
                service: HvService::Guid(guid(G1)),
            },
        ),
        (
            "tcp://127.0.0.1:80".into(),
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 80,
            },
        ),
        (
            "tcp://[::1]:80".into(),
            Endpoint::Tcp {
                host: "::1".into(),
                port: 80,
            },
        ),
        (
            "tcp://example.com:80".into(),
            Endpoint::Tcp {
                host: "example.com".into(),
                port: 80,
            },
        ),
        (
            "unix:///tmp/a.sock".into(),
            Endpoint::Unix {
                path: "/tmp/a.sock".into(),
            },
        ),
        (
            "mux+serial:///dev/hvc1:1024".into(),
            Endpoint::MuxSerial {
                device: "/dev/hvc1".into(),
                port: 1024,
            },
        ),
        (
            "mux+unix:///run/s.sock:1024".into(),
            Endpoint::MuxUnix {
                path: "/run/s.sock".into(),
                port: 1024,
            },
        ),
    ];
    for (s, want) in cases {
        let got = ep(&s);
        assert_eq!(got, want, "parsing `{s}`");
        assert_eq!(got.to_string(), s, "display of `{s}`");
        // Display of the expected value alone gives the URI too.
        assert_eq!(want.to_string(), s);
    }
}

#[test]
fn edge_values_round_trip() {
    for s in [
        "vsock://0:0",
        "vsock://4294967295:4294967294",
        "tcp://0.0.0.0:0",
        "tcp://[::]:65535",
        "tcp://[fe80::1:2]:22",
        "unix://relative.sock",
        "unix:///a//b/",
        "hybrid://rel/v.sock:1",
        "hyperkit://4294967295:7/d:ir/x",
        "hvsock://wildcard/0",
        "hvsock://children/4294967294",
        "hvsock://loopback/1",
        "mux+serial:///dev/virtio-ports/org.tether.0:5",
    ] {
        assert_eq!(ep(s).to_string(), s);
    }
}

#[test]
fn hvsock_service_maps_ports_and_template_guids() {
    let Endpoint::Hvsock { service, .. } = ep(&format!("hvsock://parent/{G2}")) else {
        panic!("hvsock")
    };
    assert_eq!(service.port(), Some(1024));
    let Endpoint::Hvsock { service, .. } = ep("hvsock:///1024") else {
        panic!("hvsock")
    };
    assert_eq!(
        service.guid().as_str(),
        "00000400-facb-11e6-bd58-64006a7986d3"
    );
    let Endpoint::Hvsock { service, .. } = ep(&format!("hvsock:///{G1}")) else {
        panic!("hvsock")
    };
    assert_eq!(service.port(), None);
}

fn err(s: &str) -> ParseEndpointError {
    match s.parse::<Endpoint>() {
        Ok(e) => panic!("`{s}` should not parse, got {e:?}"),
        Err(e) => e,
    }
}

#[test]
fn bad_uris_name_the_expected_form() {
    // (input, substrings the error's Display must contain)
    let cases: &[(&str, &[&str])] = &[
        // No scheme, unknown scheme: every form is listed.
        ("3:1024", &["no scheme", "vsock://CID:PORT", "unix://PATH"]),
        (
            "/run/v.sock",
            &["no scheme", "hybrid://PATH:PORT", "tcp://HOST:PORT"],
        ),
        (
            "vsok://3:1024",
            &[
                "unknown scheme `vsok`",
                "vsock://CID:PORT",
                "mux+unix://PATH:PORT",
            ],
        ),
        // Missing port.
        (
            "vsock://3",
            &["no `:PORT`", "vsock://CID:PORT or vsock://:PORT"],
        ),
        (
            "hybrid:///run/v.sock",
            &["no `:PORT`", "hybrid://PATH:PORT"],
        ),
        ("hybrid:///run/v.sock:", &["port ``", "hybrid://PATH:PORT"]),
        ("tcp://127.0.0.1", &["no `:PORT`", "tcp://HOST:PORT"]),
        (
            "mux+unix:///run/s.sock",
            &["no `:PORT`", "mux+unix://PATH:PORT"],
        ),
        (
            "mux+serial:///dev/hvc1",
            &["no `:PORT`", "mux+serial://DEVICE:PORT"],
        ),
        (
            "hyperkit://1024/var/run/hk",
            &["no `:PORT`", "hyperkit://[CID]:PORT/DIR"],
        ),
        (
            "hyperkit://:1024",
            &["no state directory", "hyperkit://[CID]:PORT/DIR"],
        ),
        // Leading zeros, signs, non-digits.
        (
            "vsock://3:01024",
            &["`01024` is not a decimal number", "vsock://CID:PORT"],
        ),
        ("vsock://03:1024", &["CID `03`", "vsock://CID:PORT"]),
        (
            "vsock://3:+1024",
            &["`+1024` is not a decimal number", "vsock://CID:PORT"],
        ),
        (
            "tcp://127.0.0.1:080",
            &["`080` is not a decimal number", "tcp://HOST:PORT"],
        ),
        (
            "hybrid:///v.sock:0x50",
            &["not a decimal number", "hybrid://PATH:PORT"],
        ),
        // Out of range.
        (
            "tcp://127.0.0.1:65536",
            &["`65536` is out of range", "tcp://HOST:PORT"],
        ),
        (
            "vsock://3:4294967296",
            &["out of range", "vsock://CID:PORT"],
        ),
        (
            "vsock://4294967296:1",
            &["CID `4294967296` is out of range"],
        ),
        // VMADDR_PORT_ANY is not a port.
        (
            "vsock://3:4294967295",
            &["VMADDR_PORT_ANY", "vsock://CID:PORT"],
        ),
        (
            "hybrid:///v.sock:4294967295",
            &["VMADDR_PORT_ANY", "hybrid://PATH:PORT"],
        ),
        (
            "mux+unix:///s:4294967295",
            &["VMADDR_PORT_ANY", "mux+unix://PATH:PORT"],
        ),
        // Empty paths.
        ("unix://", &["empty path", "unix://PATH"]),
        ("hybrid://:80", &["empty path", "hybrid://PATH:PORT"]),
        (
            "mux+serial://:1024",
            &["empty path", "mux+serial://DEVICE:PORT"],
        ),
        // TCP hosts.
        ("tcp://[::1:80", &["unclosed `[`", "tcp://HOST:PORT"]),
        ("tcp://[zz]:80", &["not an IPv6 address", "tcp://HOST:PORT"]),
        (
            "tcp://::1:80",
            &["write IPv6 in brackets", "tcp://HOST:PORT"],
        ),
        ("tcp://:80", &["empty host", "tcp://HOST:PORT"]),
        // Hyper-V services and VMs.
        (
            "hvsock://parent/ssh",
            &["neither a GUID nor a decimal port", "hvsock://VM/SERVICE"],
        ),
        (
            "hvsock://parent/not-a-guid",
            &["is not a GUID", "hvsock:///SERVICE"],
        ),
        (
            "hvsock://parent/01024",
            &["neither a GUID nor a decimal port"],
        ),
        ("hvsock://parent", &["no `/SERVICE`", "hvsock://VM/SERVICE"]),
        (
            "hvsock://a:b/1024",
            &["may not contain", "hvsock://VM/SERVICE"],
        ),
    ];
    for (input, needles) in cases {
        let e = err(input);
        assert_eq!(e.input, *input);
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("bad endpoint `{input}`")),
            "{shown}"
        );
        assert!(shown.contains("expected"), "{shown}");
        for n in *needles {
            assert!(
                shown.contains(n),
                "error for `{input}` lacks `{n}`: {shown}"
            );
        }
    }
}

#[test]
fn scheme_errors_name_only_their_own_form() {
    // A scheme that was recognised names its own form, not the whole list.
    for (input, own, other) in [
        ("vsock://x:1", "vsock://CID:PORT", "unix://PATH"),
        ("tcp://h:x", "tcp://HOST:PORT", "vsock://CID:PORT"),
        ("unix://", "unix://PATH", "tcp://HOST:PORT"),
        ("hybrid://p:x", "hybrid://PATH:PORT", "mux+unix://PATH:PORT"),
    ] {
        let e = err(input);
        assert!(e.expected.contains(own), "{e}");
        assert!(!e.expected.contains(other), "{e}");
    }
}

#[test]
fn link_costs_are_ordered() {
    assert!(LinkCost::Vsock < LinkCost::Local);
    assert!(LinkCost::Local < LinkCost::Mux);
    assert!(LinkCost::Mux < LinkCost::Tcp);
    let cost = |s: &str| ep(s).cost();
    assert_eq!(cost("vsock://3:1"), LinkCost::Vsock);
    assert_eq!(cost("hvsock:///1"), LinkCost::Vsock);
    assert_eq!(cost("hybrid:///v:1"), LinkCost::Local);
    assert_eq!(cost("hyperkit://:1/d"), LinkCost::Local);
    assert_eq!(cost("unix:///u"), LinkCost::Local);
    assert_eq!(cost("mux+unix:///m:1"), LinkCost::Mux);
    assert_eq!(cost("mux+serial:///dev/hvc1:1"), LinkCost::Mux);
    assert_eq!(cost("tcp://h:1"), LinkCost::Tcp);
}

#[test]
fn peer_sorts_by_cost_and_keeps_given_order_among_equals() {
    let given = [
        "tcp://a:1",
        "mux+unix:///m:1",
        "unix:///u1",
        "vsock://3:1",
        "tcp://b:1",
        "hybrid:///h:1",
        "mux+serial:///dev/hvc1:1",
        "hvsock://parent/1",
        "unix:///u2",
        "vsock://4:1",
        "hyperkit://:1/k",
    ];
    let peer = Peer::new(given.iter().map(|s| ep(s)));
    let got: Vec<String> = peer.endpoints().iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        [
            "vsock://3:1",
            "hvsock://parent/1",
            "vsock://4:1",
            "unix:///u1",
            "hybrid:///h:1",
            "unix:///u2",
            "hyperkit://:1/k",
            "mux+unix:///m:1",
            "mux+serial:///dev/hvc1:1",
            "tcp://a:1",
            "tcp://b:1",
        ]
    );
    // Reversing the input reverses the order within each cost class only.
    let peer = Peer::new(given.iter().rev().map(|s| ep(s)));
    let got: Vec<String> = peer.endpoints().iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        [
            "vsock://4:1",
            "hvsock://parent/1",
            "vsock://3:1",
            "hyperkit://:1/k",
            "unix:///u2",
            "hybrid:///h:1",
            "unix:///u1",
            "mux+serial:///dev/hvc1:1",
            "mux+unix:///m:1",
            "tcp://b:1",
            "tcp://a:1",
        ]
    );
    assert!(Peer::new(Vec::new()).endpoints().is_empty());
}

// ---- property tests ----

fn vsock_port() -> impl Strategy<Value = u32> {
    prop_oneof![0..u32::MAX, Just(0), Just(u32::MAX - 1), 1..2048u32]
}

/// Paths as the URI grammar allows them: nonempty, may contain colons and repeated or
/// trailing slashes; absolute when `abs`.
fn path(abs: bool) -> impl Strategy<Value = PathBuf> {
    let re = if abs {
        "/[a-zA-Z0-9._:@+-]{0,8}(/{1,2}[a-zA-Z0-9._:@+-]{0,8}){0,3}"
    } else {
        "/?[a-zA-Z0-9._:@+-]{1,8}(/{1,2}[a-zA-Z0-9._:@+-]{0,8}){0,3}"
    };
    re.prop_map(PathBuf::from)
}

fn guid_strategy() -> impl Strategy<Value = Guid> {
    "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
        .prop_map(|s| s.parse().unwrap())
}

fn hv_vm() -> impl Strategy<Value = Option<HvVm>> {
    prop_oneof![
        Just(None),
        guid_strategy().prop_map(|g| Some(HvVm::Guid(g))),
        prop::sample::select(vec![
            HvWellKnown::Wildcard,
            HvWellKnown::Children,
            HvWellKnown::Loopback,
            HvWellKnown::Parent,
        ])
        .prop_map(|k| Some(HvVm::WellKnown(k))),
        // A name: no `/` or `:`, and not spelled like a GUID or a well-known id.
        "[a-zA-Z0-9_.-]{1,16}"
            .prop_filter("a name, not a GUID or well-known id", |n| {
                n.parse::<Guid>().is_err()
                    && !["wildcard", "children", "loopback", "parent"].contains(&n.as_str())
            })
            .prop_map(|n| Some(HvVm::Name(n))),
    ]
}

fn tcp_host() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<Ipv4Addr>().prop_map(|a| a.to_string()),
        any::<Ipv6Addr>().prop_map(|a| a.to_string()),
        "[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,10}){0,3}",
    ]
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        (proptest::option::of(any::<u32>()), vsock_port())
            .prop_map(|(cid, port)| Endpoint::Vsock { cid, port }),
        (path(false), vsock_port()).prop_map(|(path, port)| Endpoint::Hybrid { path, port }),
        // hyperkit's directory follows the port directly, so it is absolute.
        (proptest::option::of(any::<u32>()), vsock_port(), path(true))
            .prop_map(|(cid, port, dir)| Endpoint::Hyperkit { cid, port, dir }),
        (
            hv_vm(),
            prop_oneof![
                vsock_port().prop_map(HvService::Port),
                guid_strategy().prop_map(HvService::Guid),
            ]
        )
            .prop_map(|(vm, service)| Endpoint::Hvsock { vm, service }),
        (tcp_host(), any::<u16>()).prop_map(|(host, port)| Endpoint::Tcp { host, port }),
        path(false).prop_map(|path| Endpoint::Unix { path }),
        (path(false), vsock_port()).prop_map(|(device, port)| Endpoint::MuxSerial { device, port }),
        (path(false), vsock_port()).prop_map(|(path, port)| Endpoint::MuxUnix { path, port }),
    ]
}

fn check_canonical(s: &str) -> Result<(), TestCaseError> {
    // Parsing never panics; when it succeeds, display gives exactly the input back.
    if let Ok(e) = s.parse::<Endpoint>() {
        prop_assert_eq!(e.to_string(), s);
        // And the displayed form parses to the same value again.
        let again = e.to_string().parse::<Endpoint>();
        prop_assert_eq!(again, Ok(e));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn generated_endpoints_round_trip(e in endpoint()) {
        let shown = e.to_string();
        let back: Endpoint = shown
            .parse()
            .map_err(|err| TestCaseError::fail(format!("{e:?} displayed as `{shown}`: {err}")))?;
        prop_assert_eq!(&back, &e);
        prop_assert_eq!(back.to_string(), shown);
    }

    #[test]
    fn arbitrary_strings_parse_only_canonically(s in any::<String>()) {
        check_canonical(&s)?;
    }

    #[test]
    fn uri_like_strings_parse_only_canonically(
        s in "(vsock|hybrid|hyperkit|hvsock|tcp|unix|mux\\+serial|mux\\+unix|Vsock|)://\
              [-0-9a-fA-F:/\\[\\]. +_]{0,40}"
    ) {
        check_canonical(&s)?;
    }

    #[test]
    fn mutated_uris_parse_only_canonically(
        e in endpoint(),
        at in any::<prop::sample::Index>(),
        insert in prop::sample::select(vec!['0', '9', ':', '/', '[', ']', '-', '+', ' ', 'a', 'F']),
        delete in any::<bool>(),
    ) {
        let mut chars: Vec<char> = e.to_string().chars().collect();
        let i = at.index(chars.len() + 1);
        if delete && i < chars.len() {
            chars.remove(i);
        } else {
            chars.insert(i, insert);
        }
        let s: String = chars.into_iter().collect();
        check_canonical(&s)?;
    }
}
