//! The topology file: locations with their loopback addresses, and the links between
//! them.
//!
//! ```toml
//! [locations]
//! home = "127.0.0.1"     # where processes that bind nothing in particular are
//! eu = "127.0.1.1"
//! us = "127.0.2.1"
//!
//! [[link]]
//! between = ["home", "eu"]
//! rtt_ms = 10
//! jitter_ms = 1          # optional: RTT varies by up to ± this much
//! loss = 0.0             # optional: fraction of UDP datagrams dropped, each way
//! rate_mbit = 100        # optional: each direction's bandwidth; unlimited if absent
//! ```
//!
//! Every two distinct locations need a link; a location's link to itself is
//! instantaneous unless declared.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

/// One link's properties.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkSpec {
    /// Round-trip time; each direction gets half.
    pub rtt: Duration,
    /// The RTT varies by up to ± this much (each direction by half of it).
    pub jitter: Duration,
    /// Fraction of UDP datagrams dropped in each direction.
    pub loss: f64,
    /// Bytes per second in each direction; `None` is unlimited.
    pub rate: Option<u64>,
    /// The path's IP MTU: a larger datagram (with its 28 bytes of IPv4 and UDP
    /// headers) is dropped, as a router drops a packet it may not fragment. Declared
    /// links default to the internet's 1500, so that MTU discovery finds what it would
    /// find there; `None` (inside one location) carries any size, like loopback.
    pub mtu: Option<u16>,
}

/// The MTU of a declared link that names none.
pub const DEFAULT_LINK_MTU: u16 = 1500;

/// Why a topology file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    #[error("the topology is not valid TOML for ferry: {0}")]
    Syntax(String),
    #[error("location `{0}`: {1}")]
    Location(String, String),
    #[error("link {0}: {1}")]
    Link(String, String),
    #[error("no link between `{0}` and `{1}` (every two locations need one)")]
    MissingLink(String, String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    locations: BTreeMap<String, IpAddr>,
    #[serde(default)]
    link: Vec<LinkFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkFile {
    between: [String; 2],
    rtt_ms: f64,
    #[serde(default)]
    jitter_ms: f64,
    #[serde(default)]
    loss: f64,
    #[serde(default)]
    rate_mbit: Option<f64>,
    #[serde(default)]
    mtu: Option<u16>,
}

/// Locations and the links between them.
#[derive(Debug, Clone)]
pub struct Topology {
    locations: BTreeMap<String, IpAddr>,
    by_address: HashMap<IpAddr, String>,
    links: HashMap<(String, String), LinkSpec>,
}

fn millis(what: &str, v: f64) -> Result<Duration, String> {
    if !v.is_finite() || !(0.0..=60_000.0).contains(&v) {
        return Err(format!("{what} must be between 0 and 60000 ms, not {v}"));
    }
    Ok(Duration::from_secs_f64(v / 1000.0))
}

fn key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Topology {
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let file: File = toml::from_str(text).map_err(|e| TopologyError::Syntax(e.to_string()))?;
        let mut by_address = HashMap::new();
        for (name, addr) in &file.locations {
            if !addr.is_loopback() {
                return Err(TopologyError::Location(
                    name.clone(),
                    format!("{addr} is not a loopback address"),
                ));
            }
            if let Some(other) = by_address.insert(*addr, name.clone()) {
                return Err(TopologyError::Location(
                    name.clone(),
                    format!("shares address {addr} with `{other}`"),
                ));
            }
        }
        let mut links = HashMap::new();
        for link in &file.link {
            let [a, b] = &link.between;
            let name = format!("{a} <-> {b}");
            for end in [a, b] {
                if !file.locations.contains_key(end) {
                    return Err(TopologyError::Link(
                        name.clone(),
                        format!("unknown location `{end}`"),
                    ));
                }
            }
            let bad = |why: String| TopologyError::Link(name.clone(), why);
            if !(0.0..=1.0).contains(&link.loss) {
                return Err(bad(format!(
                    "loss must be between 0 and 1, not {}",
                    link.loss
                )));
            }
            let rate = match link.rate_mbit {
                None => None,
                Some(m) if m.is_finite() && m > 0.0 => Some((m * 1e6 / 8.0) as u64),
                Some(m) => return Err(bad(format!("rate_mbit must be positive, not {m}"))),
            };
            let mtu = link.mtu.unwrap_or(DEFAULT_LINK_MTU);
            if mtu < 1280 {
                // QUIC needs 1200-byte datagrams; IPv6 promises 1280 on every path.
                return Err(bad(format!("mtu must be at least 1280, not {mtu}")));
            }
            let spec = LinkSpec {
                rtt: millis("rtt_ms", link.rtt_ms).map_err(bad)?,
                jitter: millis("jitter_ms", link.jitter_ms).map_err(bad)?,
                loss: link.loss,
                rate,
                mtu: Some(mtu),
            };
            if links.insert(key(a, b), spec).is_some() {
                return Err(bad("declared twice".into()));
            }
        }
        let names: Vec<&String> = file.locations.keys().collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                if !links.contains_key(&key(a, b)) {
                    return Err(TopologyError::MissingLink(a.to_string(), b.to_string()));
                }
            }
        }
        Ok(Topology {
            locations: file.locations,
            by_address,
            links,
        })
    }

    pub fn load(path: &std::path::Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TopologyError::Syntax(format!("reading {}: {e}", path.display())))?;
        Topology::parse(&text)
    }

    /// The location a source address belongs to.
    pub fn location_of(&self, addr: IpAddr) -> Option<&str> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        self.by_address.get(&addr).map(String::as_str)
    }

    /// The loopback address of a location.
    pub fn address_of(&self, location: &str) -> Option<IpAddr> {
        self.locations.get(location).copied()
    }

    pub fn locations(&self) -> impl Iterator<Item = (&str, IpAddr)> {
        self.locations.iter().map(|(n, a)| (n.as_str(), *a))
    }

    /// The link between two locations (instantaneous within one location unless declared).
    pub fn link(&self, a: &str, b: &str) -> LinkSpec {
        self.links.get(&key(a, b)).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"
        [locations]
        home = "127.0.0.1"
        eu = "127.0.1.1"
        us = "127.0.2.1"

        [[link]]
        between = ["home", "eu"]
        rtt_ms = 10
        [[link]]
        between = ["home", "us"]
        rtt_ms = 60
        jitter_ms = 4
        loss = 0.01
        rate_mbit = 8
        [[link]]
        between = ["us", "eu"]
        rtt_ms = 80
        mtu = 9000
    "#;

    #[test]
    fn parses_locations_and_symmetric_links() {
        let t = Topology::parse(THREE).unwrap();
        assert_eq!(t.location_of("127.0.2.1".parse().unwrap()), Some("us"));
        assert_eq!(
            t.location_of("::ffff:127.0.1.1".parse().unwrap()),
            Some("eu")
        );
        assert_eq!(t.location_of("127.0.9.9".parse().unwrap()), None);
        assert_eq!(t.link("eu", "us").rtt, Duration::from_millis(80));
        assert_eq!(t.link("us", "eu"), t.link("eu", "us"));
        let us = t.link("us", "home");
        assert_eq!(us.jitter, Duration::from_millis(4));
        assert_eq!(us.rate, Some(1_000_000));
        assert_eq!(t.link("eu", "eu"), LinkSpec::default());
        // Declared links carry the internet's MTU unless they name another.
        assert_eq!(us.mtu, Some(DEFAULT_LINK_MTU));
        assert_eq!(t.link("eu", "us").mtu, Some(9000));
        assert_eq!(t.link("eu", "eu").mtu, None);
    }

    #[test]
    fn refuses_bad_topologies_with_a_reason() {
        let missing = THREE.replace("between = [\"us\", \"eu\"]", "between = [\"us\", \"us\"]");
        assert!(matches!(
            Topology::parse(&missing),
            Err(TopologyError::MissingLink(..))
        ));
        let public = THREE.replace("127.0.2.1", "192.0.2.1");
        assert!(matches!(
            Topology::parse(&public),
            Err(TopologyError::Location(..))
        ));
        let unknown = THREE.replace("[\"home\", \"eu\"]", "[\"home\", \"mars\"]");
        let err = Topology::parse(&unknown).unwrap_err().to_string();
        assert!(err.contains("mars"), "{err}");
        let lossy = THREE.replace("loss = 0.01", "loss = 2");
        assert!(Topology::parse(&lossy).is_err());
        let tiny = THREE.replace("mtu = 9000", "mtu = 576");
        let err = Topology::parse(&tiny).unwrap_err().to_string();
        assert!(err.contains("mtu must be at least 1280"), "{err}");
        let negative = THREE.replace("rtt_ms = 10", "rtt_ms = -1");
        assert!(Topology::parse(&negative).is_err());
        assert!(Topology::parse("locations = 3").is_err());
    }
}

#[cfg(test)]
mod checked_in {
    /// The example topology in the repository stays valid.
    #[test]
    fn three_regions_parses() {
        let text = include_str!("../../topologies/three-regions.toml");
        let t = super::Topology::parse(text).unwrap();
        assert_eq!(t.locations().count(), 4);
    }
}
