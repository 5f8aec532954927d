//! Connected agents, by workspace: the table every client stream is routed through.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use ferry_proto::WorkspaceLabel;

/// One agent's connection.
#[derive(Clone)]
pub struct AgentLink {
    pub conn: quinn::Connection,
    /// Tells this link apart from a newer one for the same workspace.
    pub id: u64,
    /// This relay holds the agent as its standby, not as its owner: what it last told
    /// the directory. Changes when the ring does (see [`AgentTable::reassess_roles`]).
    pub standby: Arc<AtomicBool>,
}

/// The agents connected to this relay.
#[derive(Default)]
pub struct AgentTable {
    links: DashMap<WorkspaceLabel, AgentLink>,
    next_id: AtomicU64,
    /// The number of links, watched by a draining relay waiting for its agents to move.
    count: tokio::sync::watch::Sender<usize>,
}

impl AgentTable {
    /// Adds an agent; a newer connection for the same workspace replaces the older one,
    /// which is returned so the caller can close it.
    pub fn insert(
        &self,
        label: WorkspaceLabel,
        conn: quinn::Connection,
        standby: bool,
    ) -> (u64, Option<AgentLink>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let standby = Arc::new(AtomicBool::new(standby));
        let old = self.links.insert(label, AgentLink { conn, id, standby });
        self.count.send_replace(self.links.len());
        (id, old)
    }

    /// Removes the agent only if it is still the link `id` (not a newer one).
    pub fn remove(&self, label: &WorkspaceLabel, id: u64) -> bool {
        let removed = self
            .links
            .remove_if(label, |_, link| link.id == id)
            .is_some();
        self.count.send_replace(self.links.len());
        removed
    }

    /// Resolves when no agent is connected.
    pub async fn empty(&self) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    pub fn get(&self, label: &WorkspaceLabel) -> Option<AgentLink> {
        self.links.get(label).map(|l| l.clone())
    }

    /// The workspaces with a connected agent, and those of them held as standby: the
    /// relay's directory as the control plane takes it.
    pub fn snapshot(&self) -> ferry_proto::api::DirectorySnapshot {
        let mut workspaces = Vec::with_capacity(self.links.len());
        let mut standby = Vec::new();
        for link in self.links.iter() {
            workspaces.push(link.key().to_string());
            if link.standby.load(Ordering::Relaxed) {
                standby.push(link.key().to_string());
            }
        }
        ferry_proto::api::DirectorySnapshot {
            workspaces,
            standby,
        }
    }

    /// Sets every link's role from `is_standby` (the ring as it is now) and returns the
    /// workspaces whose role changed, with the new role: a relay that became a
    /// workspace's ring owner must claim it, and one that lost it must step down, even
    /// though the agent's connection stays as it was.
    pub fn reassess_roles(
        &self,
        is_standby: impl Fn(&WorkspaceLabel) -> Option<bool>,
    ) -> Vec<(WorkspaceLabel, bool)> {
        let mut changed = Vec::new();
        for link in self.links.iter() {
            let Some(standby) = is_standby(link.key()) else {
                continue;
            };
            if link.standby.swap(standby, Ordering::Relaxed) != standby {
                changed.push((link.key().clone(), standby));
            }
        }
        changed
    }

    /// The smoothed RTT of every agent connection (for metrics).
    pub fn rtts(&self) -> Vec<std::time::Duration> {
        self.links.iter().map(|l| l.conn.rtt()).collect()
    }

    /// Every connected agent's workspace and connection (a snapshot).
    pub fn links(&self) -> Vec<(String, quinn::Connection)> {
        self.links
            .iter()
            .map(|l| (l.key().to_string(), l.conn.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }
}
