//! Workspace telemetry on the API: what an agent reports about its workspace (resource
//! readings and its operator's custom metadata items) and how the workspace's owner
//! reads it back (latest values, a short history for charts, a live event stream).
//!
//! Every number here comes from an agent, which may be buggy or hostile: [`check`]
//! bounds each field before the control plane stores anything.
//!
//! [`check`]: AgentMetadataRequest::check

use serde::{Deserialize, Serialize};

/// `POST /api/v1/agents/metadata` (agent token): the agent's latest readings, sent
/// every few seconds (10 s by default). Each item replaces the value of its key; keys
/// not named keep theirs. `stats`, when present, is the workspace's resource use now.
///
/// At most [`MAX_METADATA_KEYS`] keys per workspace, keys of 1 to
/// [`MAX_METADATA_KEY_LEN`] characters `a-z 0-9 _ . -`, values of at most
/// [`MAX_METADATA_VALUE_LEN`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentMetadataRequest {
    #[serde(default)]
    pub items: Vec<MetadataItem>,
    /// Added after the first version: older agents send items only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<WorkspaceStats>,
}

/// Most keys a workspace's metadata may hold.
pub const MAX_METADATA_KEYS: usize = 32;
/// Longest metadata key, in characters.
pub const MAX_METADATA_KEY_LEN: usize = 64;
/// Longest metadata value (or error message), in bytes.
pub const MAX_METADATA_VALUE_LEN: usize = 4096;
/// Longest display name of a metadata item, in bytes.
pub const MAX_METADATA_NAME_LEN: usize = 128;

/// How long the control plane keeps resource readings: the dashboard's charts span it.
pub const STATS_HISTORY_MS: i64 = 15 * 60 * 1000;
/// At most one stored reading per workspace per bucket of this length (a later
/// reading in the same bucket replaces it): the history's size is bounded however
/// often an agent reports, at `STATS_HISTORY_MS / STATS_BUCKET_MS` rows a workspace.
pub const STATS_BUCKET_MS: i64 = 5_000;

/// One metadata reading from an agent: a value, or why there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataItem {
    pub key: String,
    #[serde(default)]
    pub value: String,
    /// What people see instead of the key (e.g. "Git branch"); the key when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Set when the agent could not read a value (its command failed or timed out):
    /// shown as an error instead of a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A workspace's resource use at one moment, as its agent measured it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceStats {
    /// CPU use since the previous reading, in percent of what the workspace may use
    /// (its cgroup's CPU quota, else every CPU of the host): 0 to 100.
    pub cpu_percent: f64,
    /// Memory in use (a cgroup's working set: usage less inactive file cache).
    pub mem_used_bytes: u64,
    /// The memory the workspace may use: its cgroup's limit, else the host's memory.
    pub mem_limit_bytes: u64,
    /// Used and total bytes of the file system holding the workspace directory.
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    /// The host's load averages over 1, 5 and 15 minutes (`/proc/loadavg`).
    pub load: [f64; 3],
    /// Seconds since the host (or VM) booted.
    pub uptime_secs: u64,
    /// Where the CPU and memory figures come from.
    pub source: StatsSource,
}

/// Where an agent read its CPU and memory figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsSource {
    /// The agent's cgroup (v2): it runs in a container, with its limits.
    Cgroup,
    /// `/proc`: the whole host.
    #[default]
    Host,
}

impl StatsSource {
    pub fn as_str(self) -> &'static str {
        match self {
            StatsSource::Cgroup => "cgroup",
            StatsSource::Host => "host",
        }
    }

    /// The inverse of [`Self::as_str`]; anything else reads as `host`.
    pub fn parse(s: &str) -> Self {
        if s == "cgroup" {
            StatsSource::Cgroup
        } else {
            StatsSource::Host
        }
    }
}

/// `GET /api/v1/workspaces/{label}/metadata` (user or admin token): the latest
/// readings, sorted by key, and when each arrived (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceMetadataResponse {
    pub workspace: String,
    pub items: Vec<MetadataReading>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataReading {
    pub key: String,
    pub value: String,
    /// Unix seconds.
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A stored resource reading: the stats and when the control plane received them
/// (its own clock, Unix ms: agents' clocks may be off).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsPoint {
    pub at_ms: i64,
    pub stats: WorkspaceStats,
}

/// `GET /api/v1/workspaces/{label}/telemetry` (user or admin token): the latest
/// resource reading, the readings of the last [`STATS_HISTORY_MS`] (oldest first, at
/// most one per [`STATS_BUCKET_MS`]) and the metadata items. The event stream
/// (`.../telemetry/events`) sends the same document as each `telemetry` event: the
/// first holds the whole history, later ones only the points since the previous one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceTelemetryResponse {
    pub workspace: String,
    pub latest: Option<StatsPoint>,
    pub history: Vec<StatsPoint>,
    pub items: Vec<MetadataReading>,
}

/// Why a report was refused; nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A key outside the allowed alphabet or length.
    #[error("key `{key}`: use 1 to {MAX_METADATA_KEY_LEN} characters a-z 0-9 _ . -")]
    BadKey { key: String },
    /// A value, error message or display name over its limit.
    #[error("{field} of `{key}`: {len} bytes, at most {max}")]
    TooLong {
        key: String,
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// The same key twice in one report.
    #[error("key `{key}` appears twice")]
    DuplicateKey { key: String },
    /// More keys in one report than a workspace may hold.
    #[error("{count} metadata items in one report, at most {MAX_METADATA_KEYS}")]
    TooManyItems { count: usize },
    /// A reading out of its range (negative, not a number, absurdly large).
    #[error("stats.{field}: {reason}")]
    BadStats {
        field: &'static str,
        reason: &'static str,
    },
}

impl ReportError {
    /// The API error code: `too_many_keys` for too many items, else `bad_request`.
    pub fn code(&self) -> &'static str {
        match self {
            ReportError::TooManyItems { .. } => "too_many_keys",
            _ => "bad_request",
        }
    }
}

/// The longest prefix of `s` (whole characters) of at most `max` characters, for
/// echoing hostile input back in a message.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl MetadataItem {
    /// Why this item cannot be stored, if it cannot.
    pub fn check(&self) -> Result<(), ReportError> {
        let key_ok = !self.key.is_empty()
            && self.key.chars().count() <= MAX_METADATA_KEY_LEN
            && self
                .key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
        if !key_ok {
            return Err(ReportError::BadKey {
                key: clip(&self.key, MAX_METADATA_KEY_LEN),
            });
        }
        let fields = [
            ("value", Some(&self.value), MAX_METADATA_VALUE_LEN),
            ("error", self.error.as_ref(), MAX_METADATA_VALUE_LEN),
            ("name", self.name.as_ref(), MAX_METADATA_NAME_LEN),
        ];
        for (field, text, max) in fields {
            let len = text.map_or(0, |t| t.len());
            if len > max {
                return Err(ReportError::TooLong {
                    key: self.key.clone(),
                    field,
                    len,
                    max,
                });
            }
        }
        Ok(())
    }
}

/// Largest byte count we accept (an exabyte): beyond it a figure is garbage, and
/// the store keeps signed 64-bit numbers.
pub const MAX_STATS_BYTES: u64 = 1 << 60;
/// Largest load average we accept.
pub const MAX_LOAD: f64 = 1_000_000.0;

impl WorkspaceStats {
    /// Why these readings cannot be stored, if they cannot.
    pub fn check(&self) -> Result<(), ReportError> {
        let bad = |field, reason| Err(ReportError::BadStats { field, reason });
        if !(self.cpu_percent.is_finite() && (0.0..=100.0).contains(&self.cpu_percent)) {
            return bad("cpu_percent", "must be between 0 and 100");
        }
        for (field, v) in [
            ("mem_used_bytes", self.mem_used_bytes),
            ("mem_limit_bytes", self.mem_limit_bytes),
            ("disk_used_bytes", self.disk_used_bytes),
            ("disk_total_bytes", self.disk_total_bytes),
            ("uptime_secs", self.uptime_secs),
        ] {
            if v > MAX_STATS_BYTES {
                return bad(field, "too large");
            }
        }
        if self
            .load
            .iter()
            .any(|l| !(l.is_finite() && (0.0..=MAX_LOAD).contains(l)))
        {
            return bad("load", "each must be between 0 and 1000000");
        }
        Ok(())
    }
}

impl AgentMetadataRequest {
    /// Why this report cannot be stored, if it cannot (checked before anything is).
    pub fn check(&self) -> Result<(), ReportError> {
        if self.items.len() > MAX_METADATA_KEYS {
            return Err(ReportError::TooManyItems {
                count: self.items.len(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for item in &self.items {
            item.check()?;
            if !seen.insert(item.key.as_str()) {
                return Err(ReportError::DuplicateKey {
                    key: item.key.clone(),
                });
            }
        }
        if let Some(stats) = &self.stats {
            stats.check()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value: &str) -> MetadataItem {
        MetadataItem {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    #[test]
    fn metadata_keys_and_values_are_bounded() {
        assert!(item("load.1m", "0.42").check().is_ok());
        assert!(item("disk_free-gb", "").check().is_ok());
        assert!(item("", "x").check().is_err());
        assert!(item("Load", "x").check().is_err());
        assert!(item("a b", "x").check().is_err());
        assert!(item(&"k".repeat(MAX_METADATA_KEY_LEN + 1), "x")
            .check()
            .is_err());
        assert!(item("k", &"v".repeat(MAX_METADATA_VALUE_LEN))
            .check()
            .is_ok());
        assert!(matches!(
            item("k", &"v".repeat(MAX_METADATA_VALUE_LEN + 1)).check(),
            Err(ReportError::TooLong { field: "value", .. })
        ));
        let named = MetadataItem {
            name: Some("n".repeat(MAX_METADATA_NAME_LEN + 1)),
            ..item("k", "v")
        };
        assert!(matches!(
            named.check(),
            Err(ReportError::TooLong { field: "name", .. })
        ));
        let failed = MetadataItem {
            error: Some("e".repeat(MAX_METADATA_VALUE_LEN + 1)),
            ..item("k", "")
        };
        assert!(matches!(
            failed.check(),
            Err(ReportError::TooLong { field: "error", .. })
        ));
    }

    #[test]
    fn metadata_requests_refuse_unknown_fields() {
        let ok: AgentMetadataRequest =
            serde_json::from_str(r#"{"items":[{"key":"a","value":"1"}]}"#).unwrap();
        assert_eq!(ok.items, vec![item("a", "1")]);
        assert_eq!(ok.stats, None);
        assert!(serde_json::from_str::<AgentMetadataRequest>(r#"{"items":[],"x":1}"#).is_err());
        assert!(serde_json::from_str::<AgentMetadataRequest>(
            r#"{"stats":{"cpu_percent":1,"mystery":2}}"#
        )
        .is_err());
    }

    fn stats() -> WorkspaceStats {
        WorkspaceStats {
            cpu_percent: 12.5,
            mem_used_bytes: 1 << 30,
            mem_limit_bytes: 4 << 30,
            disk_used_bytes: 10 << 30,
            disk_total_bytes: 100 << 30,
            load: [0.5, 0.25, 0.1],
            uptime_secs: 3600,
            source: StatsSource::Cgroup,
        }
    }

    #[test]
    fn stats_round_trip_and_hostile_numbers_are_refused() {
        let req = AgentMetadataRequest {
            items: vec![item("a", "1")],
            stats: Some(stats()),
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains(r#""source":"cgroup""#), "{json}");
        assert_eq!(
            serde_json::from_str::<AgentMetadataRequest>(&json).unwrap(),
            req
        );
        assert!(req.check().is_ok());

        for (bad, field) in [
            (
                WorkspaceStats {
                    cpu_percent: 100.5,
                    ..stats()
                },
                "cpu_percent",
            ),
            (
                WorkspaceStats {
                    cpu_percent: -1.0,
                    ..stats()
                },
                "cpu_percent",
            ),
            (
                WorkspaceStats {
                    mem_used_bytes: u64::MAX,
                    ..stats()
                },
                "mem_used_bytes",
            ),
            (
                WorkspaceStats {
                    load: [0.0, f64::INFINITY, 0.0],
                    ..stats()
                },
                "load",
            ),
        ] {
            let r = AgentMetadataRequest {
                items: vec![],
                stats: Some(bad),
            }
            .check();
            assert!(
                matches!(r, Err(ReportError::BadStats { field: f, .. }) if f == field),
                "{field}: {r:?}"
            );
        }
        // JSON has no NaN or infinity, and a u64 over its range is a parse error.
        assert!(serde_json::from_str::<WorkspaceStats>(
            r#"{"cpu_percent":1,"mem_used_bytes":18446744073709551616,"mem_limit_bytes":0,"disk_used_bytes":0,"disk_total_bytes":0,"load":[0,0,0],"uptime_secs":0,"source":"host"}"#
        )
        .is_err());
    }

    #[test]
    fn too_many_or_repeated_items_are_refused_with_their_codes() {
        let many = AgentMetadataRequest {
            items: (0..=MAX_METADATA_KEYS)
                .map(|i| item(&format!("k{i}"), "v"))
                .collect(),
            stats: None,
        };
        let err = many.check().unwrap_err();
        assert_eq!(err.code(), "too_many_keys");
        let twice = AgentMetadataRequest {
            items: vec![item("a", "1"), item("a", "2")],
            stats: None,
        };
        let err = twice.check().unwrap_err();
        assert_eq!(err, ReportError::DuplicateKey { key: "a".into() });
        assert_eq!(err.code(), "bad_request");
    }
}
