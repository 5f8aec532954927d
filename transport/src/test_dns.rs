//! A tiny authoritative DNS server on 127.0.0.1 (UDP) for tests: it answers A and
//! AAAA queries for the names it is given, with a fixed TTL, NXDOMAIN for others (a
//! negative answer carries an SOA with the same TTL, so it is cached like a real
//! one), and
//! counts the queries it receives (to prove what a resolver cached). Point a
//! [`crate::resolve::Resolver`] (or a `ferry` process, through `FERRY_DNS_SERVER`)
//! at [`TestDns::addr`]. Its task stops when the server is dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SOA};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// Names to addresses, lowercase, without the root dot.
type Zone = Arc<Mutex<HashMap<String, Vec<IpAddr>>>>;

pub struct TestDns {
    addr: SocketAddr,
    zone: Zone,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    /// Starts the server on 127.0.0.1:0; every answer carries `ttl` seconds.
    pub async fn start(ttl: u32) -> std::io::Result<TestDns> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let zone = Zone::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(socket, zone.clone(), queries.clone(), ttl));
        Ok(TestDns {
            addr,
            zone,
            queries,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `name` with `ips` from now on (an empty list: the name exists, with no
    /// address records).
    pub fn set(&self, name: &str, ips: Vec<IpAddr>) {
        self.zone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.trim_end_matches('.').to_ascii_lowercase(), ips);
    }

    /// Queries received so far (each A and each AAAA counts as one).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The SOA of the test zone (the root, as far as resolvers can tell): its minimum
/// is the negative-caching TTL (RFC 2308).
fn soa(ttl: u32) -> Record {
    let soa = SOA::new(Name::root(), Name::root(), 1, 3600, 600, 86400, ttl);
    Record::from_rdata(Name::root(), ttl, RData::SOA(soa))
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, zone: Zone, queries: Arc<AtomicUsize>, ttl: u32) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        // Whatever does not parse is dropped, as a real server would.
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let Some(query) = request.queries.first().cloned() else {
            continue;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.message_type = MessageType::Response;
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.add_query(query.clone());
        let name = query.name().to_lowercase().to_ascii();
        let known = zone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name.trim_end_matches('.'))
            .cloned();
        match known {
            None => response.metadata.response_code = ResponseCode::NXDomain,
            Some(ips) => {
                for ip in ips {
                    let data = match (ip, query.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                        _ => continue,
                    };
                    response.add_answer(Record::from_rdata(query.name().clone(), ttl, data));
                }
            }
        }
        if response.answers.is_empty() {
            response.add_authority(soa(ttl));
        }
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}
