//! Agents' metadata readings, in memory: the latest value of each key per workspace.
//! Bounded per workspace ([`MAX_METADATA_KEYS`]); a workspace's entry goes when the
//! workspace is deleted.

use std::collections::BTreeMap;

use dashmap::DashMap;
use ferry_proto::api::{MetadataItem, MetadataReading, MAX_METADATA_KEYS};

/// Readings by workspace label, then by key: (value, Unix seconds it arrived).
#[derive(Debug, Default)]
pub struct MetadataTable {
    workspaces: DashMap<String, BTreeMap<String, (String, i64)>>,
}

/// Why an update was refused (nothing of it was stored).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("{0}")]
    BadItem(String),
    #[error(
        "workspace `{workspace}` would hold {keys} metadata keys, at most {MAX_METADATA_KEYS}"
    )]
    TooManyKeys { workspace: String, keys: usize },
}

impl MetadataTable {
    /// Stores `items` for `workspace` at time `now`: all of them, or none.
    pub fn update(
        &self,
        workspace: &str,
        items: Vec<MetadataItem>,
        now: i64,
    ) -> Result<(), MetadataError> {
        for item in &items {
            item.check().map_err(MetadataError::BadItem)?;
        }
        let mut entry = self.workspaces.entry(workspace.to_string()).or_default();
        let new_keys = items
            .iter()
            .filter(|i| !entry.contains_key(&i.key))
            .map(|i| i.key.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let keys = entry.len() + new_keys;
        if keys > MAX_METADATA_KEYS {
            return Err(MetadataError::TooManyKeys {
                workspace: workspace.to_string(),
                keys,
            });
        }
        for item in items {
            entry.insert(item.key, (item.value, now));
        }
        Ok(())
    }

    /// The readings of `workspace`, sorted by key.
    pub fn readings(&self, workspace: &str) -> Vec<MetadataReading> {
        self.workspaces
            .get(workspace)
            .map(|m| {
                m.iter()
                    .map(|(key, (value, at))| MetadataReading {
                        key: key.clone(),
                        value: value.clone(),
                        updated_at: *at,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn remove(&self, workspace: &str) {
        self.workspaces.remove(workspace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value: &str) -> MetadataItem {
        MetadataItem {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn updates_replace_values_key_by_key() {
        let t = MetadataTable::default();
        t.update("a--x", vec![item("load", "1"), item("disk", "50%")], 10)
            .unwrap();
        t.update("a--x", vec![item("load", "2")], 20).unwrap();
        let r = t.readings("a--x");
        let got: Vec<(&str, &str, i64)> = r
            .iter()
            .map(|r| (r.key.as_str(), r.value.as_str(), r.updated_at))
            .collect();
        assert_eq!(got, vec![("disk", "50%", 10), ("load", "2", 20)]);
        assert!(t.readings("b--x").is_empty());
        t.remove("a--x");
        assert!(t.readings("a--x").is_empty());
    }

    #[test]
    fn a_bad_or_oversized_update_stores_nothing() {
        let t = MetadataTable::default();
        let err = t.update("a--x", vec![item("ok", "1"), item("Bad", "2")], 1);
        assert!(matches!(err, Err(MetadataError::BadItem(_))));
        assert!(t.readings("a--x").is_empty());
        let many: Vec<MetadataItem> = (0..=MAX_METADATA_KEYS)
            .map(|i| item(&format!("k{i}"), "v"))
            .collect();
        let err = t.update("a--x", many.clone(), 1);
        assert!(matches!(err, Err(MetadataError::TooManyKeys { .. })));
        assert!(t.readings("a--x").is_empty());
        // Rewriting existing keys never counts against the bound.
        t.update("a--x", many[..MAX_METADATA_KEYS].to_vec(), 1)
            .unwrap();
        t.update("a--x", many[..MAX_METADATA_KEYS].to_vec(), 2)
            .unwrap();
        assert_eq!(t.readings("a--x").len(), MAX_METADATA_KEYS);
    }
}
