//! Which guest destinations the agent may connect to or listen on for clients.

use std::fmt;
use std::str::FromStr;
use tether_transport::Endpoint;
use thiserror::Error;

/// A destination the agent allows for forwarding: an endpoint URI whose port may be `*`
/// for "any port" (`tcp://127.0.0.1:*`, `vsock://2:*`, `unix:///run/app.sock`).
///
/// Matching is literal: host names are compared as written (case aside), never resolved,
/// and Unix paths must be equal byte for byte, so a pattern never allows more than it
/// spells.
///
/// ```
/// use tether_agent::Pattern;
/// let p: Pattern = "tcp://127.0.0.1:*".parse()?;
/// assert!(p.matches(&"tcp://127.0.0.1:80".parse()?));
/// assert!(!p.matches(&"tcp://10.0.0.1:80".parse()?));
/// assert_eq!(p.to_string(), "tcp://127.0.0.1:*");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    endpoint: Endpoint,
    any_port: bool,
}

/// Why a pattern does not parse.
#[derive(Debug, Error)]
#[error("bad forwarding pattern `{text}`: {reason}")]
pub struct ParsePatternError {
    text: String,
    reason: String,
}

impl FromStr for Pattern {
    type Err = ParsePatternError;

    fn from_str(s: &str) -> Result<Pattern, ParsePatternError> {
        let err = |reason: String| ParsePatternError {
            text: s.to_string(),
            reason,
        };
        // `*` stands for a port; parse the rest as the URI with a placeholder port.
        let (uri, any_port) = match s.strip_suffix(":*") {
            Some(head) => (format!("{head}:0"), true),
            None => (s.to_string(), false),
        };
        let endpoint: Endpoint = uri.parse().map_err(|e| err(format!("{e}")))?;
        check_forwardable(&endpoint).map_err(|e| err(e.to_string()))?;
        if any_port && matches!(endpoint, Endpoint::Unix { .. }) {
            return Err(err(
                "a unix:// pattern names one socket; it has no port".into()
            ));
        }
        Ok(Pattern { endpoint, any_port })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.any_port {
            return write!(f, "{}", self.endpoint);
        }
        let text = self.endpoint.to_string();
        let head = text.rsplit_once(':').map_or(text.as_str(), |(h, _)| h);
        write!(f, "{head}:*")
    }
}

impl Pattern {
    /// Whether `endpoint` is a destination this pattern allows.
    pub fn matches(&self, endpoint: &Endpoint) -> bool {
        let port_ok = |want: u32, got: u32| self.any_port || want == got;
        match (&self.endpoint, endpoint) {
            (Endpoint::Tcp { host: h, port: p }, Endpoint::Tcp { host, port }) => {
                h.eq_ignore_ascii_case(host) && port_ok(u32::from(*p), u32::from(*port))
            }
            (Endpoint::Vsock { cid: c, port: p }, Endpoint::Vsock { cid, port }) => {
                c == cid && port_ok(*p, *port)
            }
            (Endpoint::Unix { path: p }, Endpoint::Unix { path }) => p == path,
            _ => false,
        }
    }
}

/// The endpoint kinds the agent forwards: TCP, Unix sockets and vsock inside the guest.
/// The others name a VMM's host side (hybrid, hyperkit, Hyper-V) or a serial link the
/// agent may already hold (mux), none of which is a guest service.
#[derive(Debug, Error)]
#[error("only tcp://, unix:// and vsock:// destinations can be forwarded, not {0}")]
pub struct NotForwardable(String);

/// Refuses endpoints the agent does not forward.
pub fn check_forwardable(endpoint: &Endpoint) -> Result<(), NotForwardable> {
    match endpoint {
        Endpoint::Tcp { .. } | Endpoint::Unix { .. } | Endpoint::Vsock { .. } => Ok(()),
        other => Err(NotForwardable(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap()
    }

    #[test]
    fn a_star_port_allows_every_port_of_that_host_only() {
        let p: Pattern = "tcp://127.0.0.1:*".parse().unwrap();
        assert!(p.matches(&ep("tcp://127.0.0.1:1")));
        assert!(p.matches(&ep("tcp://127.0.0.1:0")));
        assert!(!p.matches(&ep("tcp://127.0.0.2:1")));
        assert!(
            !p.matches(&ep("tcp://localhost:1")),
            "names are never resolved"
        );
        assert!(!p.matches(&ep("unix:///tmp/x")));
        assert_eq!(p.to_string(), "tcp://127.0.0.1:*");
    }

    #[test]
    fn exact_patterns_match_exactly() {
        let p: Pattern = "tcp://[::1]:80".parse().unwrap();
        assert!(p.matches(&ep("tcp://[::1]:80")));
        assert!(!p.matches(&ep("tcp://[::1]:81")));
        let u: Pattern = "unix:///run/app.sock".parse().unwrap();
        assert!(u.matches(&ep("unix:///run/app.sock")));
        assert!(!u.matches(&ep("unix:///run/../run/app.sock")));
        let v: Pattern = "vsock://2:*".parse().unwrap();
        assert!(v.matches(&ep("vsock://2:5000")));
        assert!(!v.matches(&ep("vsock://3:5000")));
        assert_eq!(v.to_string(), "vsock://2:*");
        let h: Pattern = "tcp://LocalHost:*".parse().unwrap();
        assert!(h.matches(&ep("tcp://localhost:9")));
    }

    #[test]
    fn patterns_that_cannot_forward_are_refused_by_name() {
        for (bad, why) in [
            ("hybrid:///run/v.sock:*", "only tcp://"),
            ("unix:///run/a.sock:*", "no port"),
            ("tcp://127.0.0.1", "tcp://127.0.0.1"),
            ("*", "bad forwarding pattern `*`"),
        ] {
            let e = bad.parse::<Pattern>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
