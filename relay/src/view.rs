//! The relay's view of the network: the region map (with a ring per region) and the
//! directory of workspace → home region, both fetched from the control plane and
//! cached, so that routing keeps working while the control plane is down.
//!
//! A background task ([`refresh_loop`]) refreshes both periodically, beats the
//! relay's heartbeat, and keeps the mesh links warm. A stream for a workspace missing
//! from the cache triggers one early directory refresh (rate-limited).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ferry_proto::api::{DirectoryResponse, HeartbeatRequest, Region, RegionsResponse, RelayInfo};
use ferry_proto::WorkspaceLabel;
use ferry_ring::RegionMap;
use ferry_transport::{ControlClient, ControlError};
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// Directory refreshes triggered by unknown workspaces happen at most this often.
const MISS_REFRESH_MIN: Duration = Duration::from_millis(200);

pub(crate) struct View {
    control: ControlClient,
    token: String,
    map: RwLock<Arc<RegionMap>>,
    homes: RwLock<Arc<HashMap<String, String>>>,
    last_miss_refresh: tokio::sync::Mutex<Option<Instant>>,
    /// Where the view is kept on disk, so that a relay restarted while the control
    /// plane is down still knows its peers and where workspaces live.
    disk: Option<std::sync::Mutex<DiskView>>,
}

/// The view as saved on disk: what the control plane last said.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct SavedView {
    regions: Vec<Region>,
    homes: HashMap<String, String>,
}

struct DiskView {
    path: std::path::PathBuf,
    saved: SavedView,
}

impl DiskView {
    /// Records a change and writes the file (atomically) when something changed.
    fn update(&mut self, change: impl FnOnce(&mut SavedView) -> bool) {
        if !change(&mut self.saved) {
            return;
        }
        let write = || -> std::io::Result<()> {
            let tmp = self.path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&self.saved).unwrap_or_default())?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot save the region map and directory");
        }
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

impl View {
    /// A view that starts from `cache_file` when it exists, and keeps it up to date.
    pub fn new(
        control: ControlClient,
        token: String,
        cache_file: Option<std::path::PathBuf>,
    ) -> View {
        let disk = cache_file.map(|path| {
            let saved: SavedView = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
            DiskView { path, saved }
        });
        let (map, homes) = match &disk {
            Some(d) => (RegionMap::new(&d.saved.regions), d.saved.homes.clone()),
            None => (RegionMap::default(), HashMap::new()),
        };
        View {
            control,
            token,
            map: RwLock::new(Arc::new(map)),
            homes: RwLock::new(Arc::new(homes)),
            last_miss_refresh: tokio::sync::Mutex::new(None),
            disk: disk.map(std::sync::Mutex::new),
        }
    }

    fn save(&self, change: impl FnOnce(&mut SavedView) -> bool) {
        if let Some(disk) = &self.disk {
            disk.lock()
                .unwrap_or_else(|p| p.into_inner())
                .update(change);
        }
    }

    pub fn control(&self) -> &ControlClient {
        &self.control
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn map(&self) -> Arc<RegionMap> {
        read(&self.map)
    }

    pub async fn refresh_map(&self) -> Result<(), ControlError> {
        let regions: RegionsResponse = self
            .control
            .get("/api/v1/regions", Some(&self.token))
            .await?;
        *self.map.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(RegionMap::new(&regions.regions));
        self.save(|saved| {
            let changed = serde_json::to_value(&saved.regions).ok()
                != serde_json::to_value(&regions.regions).ok();
            saved.regions = regions.regions;
            changed
        });
        Ok(())
    }

    pub async fn refresh_directory(&self) -> Result<(), ControlError> {
        let dir: DirectoryResponse = self
            .control
            .get("/api/v1/directory", Some(&self.token))
            .await?;
        let homes: HashMap<String, String> = dir
            .workspaces
            .into_iter()
            .map(|r| (r.workspace, r.region))
            .collect();
        *self.homes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(homes.clone());
        self.save(|saved| {
            let changed = saved.homes != homes;
            saved.homes = homes;
            changed
        });
        Ok(())
    }

    /// Records a home region learnt locally (an agent connected to us).
    pub fn learn(&self, workspace: &str, region: &str) {
        let mut homes = self.homes.write().unwrap_or_else(|p| p.into_inner());
        if homes.get(workspace).map(String::as_str) != Some(region) {
            Arc::make_mut(&mut homes).insert(workspace.to_string(), region.to_string());
        }
    }

    /// The workspace's home region, from the cache or, on a miss, one fresh lookup.
    pub async fn home_region(&self, workspace: &str) -> Option<String> {
        if let Some(r) = read(&self.homes).get(workspace) {
            return Some(r.clone());
        }
        let mut last = self.last_miss_refresh.lock().await;
        if !matches!(*last, Some(t) if t.elapsed() < MISS_REFRESH_MIN) {
            *last = Some(Instant::now());
            if let Err(e) = self.refresh_directory().await {
                tracing::debug!(error = %e, "directory refresh failed");
            }
        }
        read(&self.homes).get(workspace).cloned()
    }
}

/// A short heartbeat (no long poll): liveness and the draining flag. Keys and
/// revocations come with the long-polled heartbeat in [`crate::cache::sync`].
pub(crate) fn beat(shared: &Shared) -> HeartbeatRequest {
    HeartbeatRequest {
        agents: shared.agents.len() as u64,
        known: None,
        wait_secs: 0,
        draining: shared.drain.is_draining(),
        streams: shared.drain.open_streams() as u64,
        bytes: shared
            .bytes_relayed
            .load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Whether this relay holds `workspace`'s agent as standby rather than owner, by the
/// region map it has now; None when its region has no placement (no relay in service,
/// e.g. while this one drains), when the role is left as it was.
pub(crate) fn holds_as_standby(shared: &Shared, workspace: &WorkspaceLabel) -> Option<bool> {
    shared
        .view
        .map()
        .placement(&shared.region, workspace.as_str())
        .map(|p| p.owner.name != shared.name)
}

/// Refreshes the view, beats the heartbeat and warms the mesh until `stop`.
pub(crate) async fn refresh_loop(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    loop {
        let beat = beat(&shared);
        // A 404 means the control plane forgot us; `cache::sync` enrolls again.
        if let Err(e) = shared
            .view
            .control
            .post::<_, serde_json::Value>(
                "/api/v1/relays/heartbeat",
                Some(&shared.view.token),
                &beat,
            )
            .await
        {
            tracing::debug!(error = %e, "heartbeat failed");
        }
        if let Err(e) = shared.view.refresh_map().await {
            tracing::debug!(error = %e, "region map refresh failed; keeping the cached one");
        }
        if let Err(e) = shared.view.refresh_directory().await {
            tracing::debug!(error = %e, "directory refresh failed; keeping the cached one");
        }
        for (label, standby) in shared
            .agents
            .reassess_roles(|l| holds_as_standby(&shared, l))
        {
            tracing::info!(workspace = %label, standby, "the ring changed this relay's role for the workspace");
            shared.directory.report(label.as_str(), true, standby);
        }
        let peers = warm_peers(&shared.view.map(), &shared.name, &shared.region);
        let mut dials = tokio::task::JoinSet::new();
        for peer in peers {
            let shared = shared.clone();
            dials.spawn(async move {
                if let Err(e) = shared.mesh.link(&peer).await {
                    tracing::debug!(error = %e, "mesh link not up");
                }
            });
        }
        while dials.join_next().await.is_some() {}
        crate::metrics::sample(&shared);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The peers a relay keeps warm links to: every relay of its region, and in each
/// other region one relay (the ring owner of this relay's name there, which spreads
/// the regions' inbound links evenly).
pub(crate) fn warm_peers(map: &RegionMap, me: &str, my_region: &str) -> Vec<RelayInfo> {
    let mut peers: Vec<RelayInfo> = map
        .relays(my_region)
        .filter(|r| r.name != me)
        .cloned()
        .collect();
    for region in map.region_names() {
        if region != my_region {
            if let Some(p) = map.placement(region, me) {
                peers.push(p.owner);
            }
        }
    }
    peers
}
