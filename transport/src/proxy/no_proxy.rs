//! `NO_PROXY`: the hosts that are reached directly although a proxy is set. Pure; the
//! syntax is in the doc of [`crate::proxy`].

use std::net::IpAddr;

/// A parsed `NO_PROXY` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    /// `*`: nothing goes through the proxy.
    all: bool,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    pattern: Pattern,
    /// Only this port, when given.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Lowercase, no leading or trailing dot: the name and every name under it.
    Domain(String),
    Ip(IpAddr),
    Cidr {
        net: IpAddr,
        prefix: u8,
    },
}

/// Entries we keep at most: the variable comes from the environment, not a peer,
/// but a runaway value should not make every connection slow.
const MAX_ENTRIES: usize = 1000;

impl NoProxy {
    /// Parses the list; entries that make no sense are skipped (curl does the same),
    /// with a warning.
    pub fn parse(value: &str) -> NoProxy {
        let mut list = NoProxy::default();
        for raw in value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .take(MAX_ENTRIES)
        {
            if raw == "*" {
                list.all = true;
                continue;
            }
            match parse_entry(raw) {
                Some(entry) => list.entries.push(entry),
                None => {
                    tracing::warn!(entry = %raw, "NO_PROXY entry ignored: not a host, IP or CIDR")
                }
            }
        }
        list
    }

    /// Whether `host:port` is reached directly. `host` is a name or an IP address
    /// (IPv6 with or without brackets); names are compared as written, never resolved.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|entry| {
            entry.port.is_none_or(|p| p == port)
                && match (&entry.pattern, ip) {
                    (Pattern::Domain(domain), None) => {
                        host == *domain
                            || host
                                .strip_suffix(domain.as_str())
                                .is_some_and(|rest| rest.ends_with('.'))
                    }
                    (Pattern::Ip(want), Some(ip)) => canonical(*want) == canonical(ip),
                    (Pattern::Cidr { net, prefix }, Some(ip)) => in_cidr(ip, *net, *prefix),
                    _ => false,
                }
        })
    }
}

fn parse_entry(raw: &str) -> Option<Entry> {
    let raw = raw.to_ascii_lowercase();
    // `[v6]` or `[v6]:port`
    if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some(Entry {
            pattern: ip_or_cidr(inner)?,
            port,
        });
    }
    // More than one colon: a bare IPv6 address or block, no port.
    if raw.matches(':').count() > 1 {
        return Some(Entry {
            pattern: ip_or_cidr(&raw)?,
            port: None,
        });
    }
    let (host, port) = match raw.rsplit_once(':') {
        Some((host, port)) => (host, Some(port.parse::<u16>().ok()?)),
        None => (raw.as_str(), None),
    };
    if let Some(pattern) = ip_or_cidr(host) {
        return Some(Entry { pattern, port });
    }
    let domain = host
        .trim_start_matches("*.")
        .trim_start_matches('.')
        .trim_end_matches('.');
    let valid = !domain.is_empty()
        && domain.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| Entry {
        pattern: Pattern::Domain(domain.to_string()),
        port,
    })
}

fn ip_or_cidr(s: &str) -> Option<Pattern> {
    match s.split_once('/') {
        None => s.parse().ok().map(Pattern::Ip),
        Some((net, prefix)) => {
            let net: IpAddr = net.parse().ok()?;
            let prefix: u8 = prefix.parse().ok()?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            (prefix <= max).then_some(Pattern::Cidr { net, prefix })
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) compares as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    // The block is compared as written (its prefix length is for its own family).
    match (canonical(ip), net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}
