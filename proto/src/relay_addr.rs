//! A relay's advertised address (`RelayInfo::quic_addr`): `IP:PORT`, `[IPv6]:PORT`, or
//! `NAME:PORT` with a DNS name that agents, clients and other relays resolve
//! themselves (A and AAAA). Parsed once here, so that the control plane (which
//! validates what relays register), the relay (its `--advertise`) and the dialers
//! agree on what is valid.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Longest DNS name we accept (RFC 1035: 255 octets on the wire, 253 as text).
const MAX_NAME: usize = 253;
/// Longest label between dots.
const MAX_LABEL: usize = 63;

/// Where a relay listens, as advertised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayAddr {
    pub host: RelayHost,
    pub port: u16,
}

/// The host part of a [`RelayAddr`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RelayHost {
    Ip(IpAddr),
    /// A DNS name, lowercase, without a trailing dot.
    Name(String),
}

/// Why a string is not a relay address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayAddrError {
    #[error("cannot parse `{addr}` as host:port (an IPv6 address goes in brackets: [::1]:4433)")]
    Shape { addr: String },
    #[error("`{addr}` has no valid port (1 to 65535)")]
    Port { addr: String },
    #[error("`{addr}`: `{host}` is neither an IP address nor a DNS name")]
    Host { addr: String, host: String },
}

impl RelayAddr {
    /// Parses `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`. Port 0 is refused: nobody can
    /// dial it.
    pub fn parse(addr: &str) -> Result<RelayAddr, RelayAddrError> {
        // Bounded before anything else: the string may come from the wire.
        let shown = || addr.chars().take(300).collect::<String>();
        if let Ok(sa) = addr.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(RelayAddrError::Port { addr: shown() });
            }
            return Ok(RelayAddr {
                host: RelayHost::Ip(sa.ip()),
                port: sa.port(),
            });
        }
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(RelayAddrError::Shape { addr: shown() });
        };
        // A colon left in the host is an unbracketed IPv6 address, or a bracketed
        // one with junk: neither is ours to guess at.
        if host.contains(':') || host.starts_with('[') {
            return Err(RelayAddrError::Shape { addr: shown() });
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(RelayAddrError::Port { addr: shown() }),
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if !is_dns_name(name) || name.parse::<IpAddr>().is_ok() {
            return Err(RelayAddrError::Host {
                addr: shown(),
                host: host.chars().take(300).collect(),
            });
        }
        Ok(RelayAddr {
            host: RelayHost::Name(name.to_ascii_lowercase()),
            port,
        })
    }

    /// The socket address when the host is an IP address: no DNS needed.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.host {
            RelayHost::Ip(ip) => Some(SocketAddr::new(*ip, self.port)),
            RelayHost::Name(_) => None,
        }
    }

    /// The DNS name, when the host is one.
    pub fn name(&self) -> Option<&str> {
        match &self.host {
            RelayHost::Name(name) => Some(name),
            RelayHost::Ip(_) => None,
        }
    }
}

impl fmt::Display for RelayAddr {
    /// The canonical form, which [`RelayAddr::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            RelayHost::Ip(ip) => SocketAddr::new(*ip, self.port).fmt(f),
            RelayHost::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl From<SocketAddr> for RelayAddr {
    fn from(addr: SocketAddr) -> Self {
        RelayAddr {
            host: RelayHost::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

impl std::str::FromStr for RelayAddr {
    type Err = RelayAddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RelayAddr::parse(s)
    }
}

/// Whether `name` (no trailing dot) is a host name: dot-separated labels of letters,
/// digits, hyphens (not at either end) and underscores (seen in real internal names),
/// 1 to 63 characters each, 253 in all. An all-numeric last label is refused, so that
/// a mistyped IPv4 address (`10.0.0.256`) is not taken for a name.
pub fn is_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_NAME {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> RelayAddr {
        RelayAddr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn ip_literals_need_no_dns() {
        assert_eq!(
            ok("127.0.0.1:4433").socket_addr(),
            Some("127.0.0.1:4433".parse().unwrap())
        );
        assert_eq!(
            ok("[::1]:4433").socket_addr(),
            Some("[::1]:4433".parse().unwrap())
        );
        assert_eq!(ok("[::1]:4433").to_string(), "[::1]:4433");
    }

    #[test]
    fn names_are_lowercased_without_the_root_dot() {
        let addr = ok("Relay-1.EU.example.com.:443");
        assert_eq!(addr.name(), Some("relay-1.eu.example.com"));
        assert_eq!(addr.to_string(), "relay-1.eu.example.com:443");
        assert_eq!(ok("localhost:1").name(), Some("localhost"));
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (input, want) in [
            ("relay.example.com", "cannot parse"),
            ("::1:4433", "cannot parse"),
            ("[::1]x:4433", "cannot parse"),
            ("relay:0", "no valid port"),
            ("relay:99999", "no valid port"),
            ("relay:", "no valid port"),
            ("127.0.0.1:0", "no valid port"),
            (":443", "neither an IP"),
            ("-relay:443", "neither an IP"),
            ("re lay:443", "neither an IP"),
            ("a..b:443", "neither an IP"),
            ("10.0.0.256:443", "neither an IP"),
            ("user@relay:443", "neither an IP"),
        ] {
            let err = RelayAddr::parse(input).expect_err(input).to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
        let long = format!("{}.com:1", "a.".repeat(130));
        assert!(RelayAddr::parse(&long).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_display_round_trips(s in "\\PC{0,80}") {
            if let Ok(addr) = RelayAddr::parse(&s) {
                prop_assert_eq!(RelayAddr::parse(&addr.to_string()), Ok(addr));
            }
        }

        #[test]
        fn every_valid_name_parses(name in "[a-z][a-z0-9-]{0,10}[a-z0-9](\\.[a-z][a-z0-9]{0,8}){0,3}", port in 1u16..) {
            let addr = RelayAddr::parse(&format!("{name}:{port}")).unwrap();
            prop_assert_eq!(addr.name(), Some(name.as_str()));
            prop_assert_eq!(addr.port, port);
        }
    }
}
