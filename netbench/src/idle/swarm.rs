//! Simulated agents: each a real QUIC connection to the relay with ALPN
//! `ferry-agent/1`, authenticated with its own agent token (one workspace each), with
//! the agent's transport limits (keep-alive 2 s), exactly as `ferry agent` dials.
//! Many connections share each UDP socket (`endpoints` client endpoints in all).
//! Nothing of ours runs per agent once it is connected: quinn's connection drivers
//! send the keep-alives, and dropping the swarm closes every connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferry_proto::alpn;
use ferry_transport::dial::{self, Session};
use ferry_transport::Limits;
use tokio::task::JoinSet;

use super::network::RELAY_SERVER_NAME;

pub struct Swarm {
    relay: SocketAddr,
    endpoints: Vec<quinn::Endpoint>,
    /// Held for the agents' lifetime: the connection and its control stream.
    agents: Vec<Session>,
}

impl Swarm {
    pub fn new(relay: SocketAddr, ca_pem: &str, endpoints: usize) -> Result<Swarm> {
        let limits = Limits::agent();
        let endpoints = (0..endpoints.max(1))
            .map(|_| {
                let tls = ferry_certs::client_config(ca_pem, &[alpn::AGENT])?;
                Ok(ferry_transport::quic::client_endpoint(relay, tls, &limits)?)
            })
            .collect::<Result<Vec<_>>>()
            .context("creating the agents' client endpoints")?;
        Ok(Swarm {
            relay,
            endpoints,
            agents: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Connects one agent per token past those already connected, `concurrency`
    /// handshakes at a time; returns how long that took.
    pub async fn grow(&mut self, tokens: &[String], concurrency: usize) -> Result<Duration> {
        let start = Instant::now();
        let mut set = JoinSet::new();
        let mut next = self.agents.len();
        loop {
            while set.len() < concurrency.max(1) && next < tokens.len() {
                let endpoint = self.endpoints[next % self.endpoints.len()].clone();
                let token = tokens[next].clone();
                let relay = self.relay;
                let n = next;
                set.spawn(async move {
                    dial::connect(&endpoint, relay, RELAY_SERVER_NAME, &token)
                        .await
                        .with_context(|| format!("agent #{n} connecting to the relay"))
                });
                next += 1;
            }
            match set.join_next().await {
                Some(done) => self.agents.push(done.context("dial task panicked")??),
                None => break,
            }
        }
        Ok(start.elapsed())
    }

    /// Agents whose connection has ended (idle timeout, relay closed it): in an idle
    /// test, every one is a failure.
    pub fn dropped(&self) -> usize {
        self.agents
            .iter()
            .filter(|a| a.conn.close_reason().is_some())
            .count()
    }

    /// Closes every connection and waits (briefly) for the relay to hear it.
    pub async fn close(self) {
        for agent in &self.agents {
            agent.conn.close(0u32.into(), b"benchmark done");
        }
        for endpoint in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
    }
}
