//! Resolving relay addresses: `IP:PORT` as it is, `NAME:PORT` through DNS (A and AAAA
//! asked in parallel, answers cached for their TTL, dropped on [`Resolver::forget`]
//! after a failed connection), returned in the order to race them in (RFC 8305 §4).
//!
//! The resolver is hickory's, in process: its cache honours each answer's TTL and is
//! shared by every clone of a [`Resolver`]. It spawns no task of its own that outlives
//! a lookup.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::{RelayAddr, RelayAddrError, RelayHost};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

/// Environment variable naming the DNS servers to ask instead of the system's
/// (`IP:PORT`, or `IP` for port 53; comma-separated).
pub const DNS_SERVER_ENV: &str = "FERRY_DNS_SERVER";

/// How long one DNS query waits for an answer before it is retried (twice): a
/// relay's address is needed to dial it, and a DNS server that does not answer in
/// 2 s is better reported than waited on for hickory's default of 5 s.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a relay address could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The string is not `IP:PORT` or `NAME:PORT`.
    #[error(transparent)]
    BadAddress(#[from] RelayAddrError),
    /// `FERRY_DNS_SERVER` does not list `IP[:PORT]` entries.
    #[error("{DNS_SERVER_ENV}=`{value}`: {reason}")]
    BadServer { value: String, reason: String },
    /// No DNS configuration (no readable /etc/resolv.conf, no `FERRY_DNS_SERVER`).
    #[error("cannot resolve relay name `{name}`: no DNS configuration ({reason}); set {DNS_SERVER_ENV}=IP:PORT or advertise the relay by IP address")]
    NoConfig { name: String, reason: String },
    /// The name exists in no form we can dial.
    #[error("relay name `{name}` has no A or AAAA record")]
    NoRecords { name: String },
    /// The DNS servers did not answer, or answered with an error.
    #[error("cannot resolve relay name `{name}`: {reason}")]
    Lookup { name: String, reason: String },
}

/// Resolves relay addresses; cheap to clone, every clone sharing one cache.
#[derive(Clone)]
pub struct Resolver {
    /// None when the system configuration could not be read: IP literals still work,
    /// and a name gets [`ResolveError::NoConfig`] with this reason.
    inner: Result<TokioResolver, Arc<str>>,
}

impl Resolver {
    /// The system's DNS configuration (/etc/resolv.conf and /etc/hosts), unless
    /// `FERRY_DNS_SERVER` names servers: then only those are asked (no hosts file,
    /// no search domains), which is what tests and operators with a private DNS want.
    pub fn from_env() -> Result<Resolver, ResolveError> {
        match std::env::var(DNS_SERVER_ENV) {
            Ok(value) if !value.trim().is_empty() => {
                Resolver::with_servers(&parse_servers(&value)?)
            }
            _ => Ok(Resolver::system()),
        }
    }

    /// A resolver asking only `servers` (UDP, then TCP for truncated answers).
    pub fn with_servers(servers: &[SocketAddr]) -> Result<Resolver, ResolveError> {
        if servers.is_empty() {
            return Err(ResolveError::BadServer {
                value: String::new(),
                reason: "no server given".into(),
            });
        }
        let name_servers = servers
            .iter()
            .map(|server| {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = server.port();
                        c
                    })
                    .collect();
                NameServerConfig::new(server.ip(), true, connections)
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        );
        *builder.options_mut() = options();
        let inner = builder.build().map_err(|e| ResolveError::BadServer {
            value: format!("{servers:?}"),
            reason: e.to_string(),
        })?;
        Ok(Resolver { inner: Ok(inner) })
    }

    /// The system's configuration; a resolver that resolves IP literals only when
    /// there is none (a container without /etc/resolv.conf), logged once here.
    fn system() -> Resolver {
        let built = TokioResolver::builder_tokio().and_then(|mut builder| {
            // resolv.conf's servers, search domains, ndots and attempts; our timeout
            // when it sets a longer one.
            let opts = builder.options_mut();
            opts.timeout = opts.timeout.min(QUERY_TIMEOUT);
            builder.build()
        });
        match built {
            Ok(inner) => Resolver { inner: Ok(inner) },
            Err(e) => {
                tracing::warn!(error = %e, "no system DNS configuration; relays advertised by name cannot be resolved (set {DNS_SERVER_ENV})");
                Resolver {
                    inner: Err(e.to_string().into()),
                }
            }
        }
    }

    /// The addresses of `host_port`, in the order to race them in. An IP literal
    /// (`1.2.3.4:443`, `[::1]:443`) is returned at once; a name is looked up (A and
    /// AAAA in parallel) unless an unexpired answer is cached.
    pub async fn resolve(&self, host_port: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let addr = RelayAddr::parse(host_port)?;
        self.resolve_addr(&addr).await
    }

    /// [`Resolver::resolve`] for an address already parsed.
    pub async fn resolve_addr(&self, addr: &RelayAddr) -> Result<Vec<SocketAddr>, ResolveError> {
        let name = match &addr.host {
            RelayHost::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, addr.port)]),
            RelayHost::Name(name) => name,
        };
        let resolver = self
            .inner
            .as_ref()
            .map_err(|reason| ResolveError::NoConfig {
                name: name.clone(),
                reason: reason.to_string(),
            })?;
        let (v4, v6) = tokio::join!(
            resolver.lookup(name.as_str(), RecordType::A),
            resolver.lookup(name.as_str(), RecordType::AAAA),
        );
        let (v4, v6) = (addresses(v4), addresses(v6));
        let ips = match (v4, v6) {
            (Ok(v4), Ok(v6)) => interleave(v6, v4),
            // One family answered: the other's trouble (a timeout, say) is not worth
            // failing the dial for.
            (Ok(ips), Err(e)) | (Err(e), Ok(ips)) => {
                if !e.is_no_records_found() {
                    tracing::debug!(%name, error = %e, "one address family failed to resolve");
                }
                ips
            }
            (Err(e4), Err(e6)) => {
                let e = if e4.is_no_records_found() { e6 } else { e4 };
                return Err(if e.is_no_records_found() {
                    ResolveError::NoRecords { name: name.clone() }
                } else {
                    ResolveError::Lookup {
                        name: name.clone(),
                        reason: describe(&e),
                    }
                });
            }
        };
        if ips.is_empty() {
            return Err(ResolveError::NoRecords { name: name.clone() });
        }
        tracing::debug!(%name, ?ips, "relay name resolved");
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, addr.port))
            .collect())
    }

    /// Drops the cached answers for `host_port` (after a connection to it failed), so
    /// that the next [`Resolver::resolve`] asks the DNS again.
    pub fn forget(&self, host_port: &str) {
        let Ok(addr) = RelayAddr::parse(host_port) else {
            return;
        };
        if let (Some(name), Ok(resolver)) = (addr.name(), &self.inner) {
            resolver.clear_lookup_cache(name, RecordType::A);
            resolver.clear_lookup_cache(name, RecordType::AAAA);
        }
    }
}

/// Options for servers we were told to ask: no hosts file, no search domains.
fn options() -> ResolverOpts {
    let mut opts = ResolverOpts::default();
    opts.timeout = QUERY_TIMEOUT;
    opts.use_hosts_file = ResolveHosts::Never;
    opts
}

/// `FERRY_DNS_SERVER`'s list: `IP:PORT`, `[IPv6]:PORT` or a bare IP (port 53).
fn parse_servers(value: &str) -> Result<Vec<SocketAddr>, ResolveError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| ResolveError::BadServer {
                    value: value.chars().take(200).collect(),
                    reason: format!("`{s}` is not IP:PORT"),
                })
        })
        .collect()
}

/// The IP addresses in a lookup's answer (CNAMEs on the way are skipped).
fn addresses(
    lookup: Result<hickory_resolver::lookup::Lookup, NetError>,
) -> Result<Vec<IpAddr>, NetError> {
    let lookup = lookup?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for record in lookup.answers() {
        let ip = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// RFC 8305 §4: the first address of the preferred family (IPv6), then alternate.
pub fn interleave(first: Vec<IpAddr>, second: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(first.len() + second.len());
    let (mut a, mut b) = (first.into_iter(), second.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// A DNS failure in words an operator acts on.
fn describe(e: &NetError) -> String {
    match e {
        NetError::Timeout => "the DNS server did not answer (timed out)".into(),
        NetError::NoConnections => "no DNS server to ask".into(),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests;
