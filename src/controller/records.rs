//! The `PostgresBackup` records of each cluster, kept from a watch: the status of a
//! cluster and the start of a manual backup read the records of that one cluster instead
//! of listing every record of the namespace, which grows with every scheduled run of
//! every cluster in it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::runtime::watcher;

use crate::api::PostgresBackup;

/// The records filed by cluster, and the cluster each record is filed under (a record's
/// `spec.postgres` may change).
#[derive(Default)]
struct Index {
    /// (namespace, cluster) → record name → record.
    clusters: HashMap<(String, String), BTreeMap<String, Arc<PostgresBackup>>>,
    /// (namespace, record name) → cluster.
    filed: HashMap<(String, String), String>,
}

impl Index {
    fn insert(&mut self, record: PostgresBackup) {
        let namespace = record.namespace().unwrap_or_default();
        let name = record.name_any();
        let cluster = record.spec.postgres.clone();
        self.remove(&namespace, &name);
        self.filed
            .insert((namespace.clone(), name.clone()), cluster.clone());
        self.clusters
            .entry((namespace, cluster))
            .or_default()
            .insert(name, Arc::new(record));
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(cluster) = self
            .filed
            .remove(&(namespace.to_string(), name.to_string()))
        else {
            return;
        };
        let key = (namespace.to_string(), cluster);
        if let Some(records) = self.clusters.get_mut(&key) {
            records.remove(name);
            if records.is_empty() {
                self.clusters.remove(&key);
            }
        }
    }
}

#[derive(Default)]
struct State {
    index: Index,
    /// The list in progress after a (re)connection, swapped in once complete.
    listing: Option<Index>,
}

/// Shared by the watch that fills it and the reconciles that read it.
#[derive(Default)]
pub struct BackupRecords {
    state: Mutex<State>,
}

impl BackupRecords {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the maps consistent, so a panic elsewhere cannot corrupt them.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The records of cluster `cluster` in `namespace`.
    pub fn of(&self, namespace: &str, cluster: &str) -> Vec<PostgresBackup> {
        let key = (namespace.to_string(), cluster.to_string());
        self.state()
            .index
            .clusters
            .get(&key)
            .into_iter()
            .flat_map(|records| records.values().map(|record| PostgresBackup::clone(record)))
            .collect()
    }

    /// Passes a watch of the records through, keeping the index current, and yields every
    /// record added, changed or deleted.
    pub fn track(
        self: Arc<Self>,
        events: impl Stream<Item = Result<watcher::Event<PostgresBackup>, watcher::Error>>
        + Send
        + 'static,
    ) -> impl Stream<Item = Result<PostgresBackup, watcher::Error>> + Send + 'static {
        events
            .map(move |event| match event {
                Ok(event) => self.observe(event).map(Ok),
                Err(error) => Some(Err(error)),
            })
            .filter_map(futures::future::ready)
    }

    fn observe(&self, event: watcher::Event<PostgresBackup>) -> Option<PostgresBackup> {
        let mut state = self.state();
        match event {
            watcher::Event::Init => {
                state.listing = Some(Index::default());
                None
            }
            watcher::Event::InitApply(record) => {
                let listing = state.listing.get_or_insert_with(Index::default);
                listing.insert(record.clone());
                Some(record)
            }
            watcher::Event::InitDone => {
                if let Some(listed) = state.listing.take() {
                    state.index = listed;
                }
                None
            }
            watcher::Event::Apply(record) => {
                state.index.insert(record.clone());
                Some(record)
            }
            watcher::Event::Delete(record) => {
                let namespace = record.namespace().unwrap_or_default();
                state.index.remove(&namespace, &record.name_any());
                Some(record)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PostgresBackupSpec;

    fn record(name: &str, cluster: &str) -> PostgresBackup {
        let mut record = PostgresBackup::new(
            name,
            PostgresBackupSpec {
                postgres: cluster.to_string(),
                databases: Vec::new(),
                snapshot_deletion_policy: Default::default(),
            },
        );
        record.metadata.namespace = Some("ns".to_string());
        record
    }

    fn names(records: &BackupRecords, cluster: &str) -> Vec<String> {
        records
            .of("ns", cluster)
            .iter()
            .map(ResourceExt::name_any)
            .collect()
    }

    #[test]
    fn a_cluster_sees_only_its_own_records() {
        let records = BackupRecords::default();
        records.observe(watcher::Event::Apply(record("one", "shop")));
        records.observe(watcher::Event::Apply(record("two", "blog")));
        records.observe(watcher::Event::Apply(record("three", "shop")));
        assert_eq!(names(&records, "shop"), ["one", "three"]);
        assert_eq!(names(&records, "blog"), ["two"]);
        assert!(records.of("other", "shop").is_empty());
    }

    #[test]
    fn a_record_moved_or_deleted_leaves_its_cluster() {
        let records = BackupRecords::default();
        records.observe(watcher::Event::Apply(record("one", "shop")));
        records.observe(watcher::Event::Apply(record("one", "blog")));
        assert!(names(&records, "shop").is_empty());
        assert_eq!(names(&records, "blog"), ["one"]);
        records.observe(watcher::Event::Delete(record("one", "blog")));
        assert!(names(&records, "blog").is_empty());
    }

    #[test]
    fn a_relist_replaces_the_records_once_complete() {
        let records = BackupRecords::default();
        records.observe(watcher::Event::Apply(record("gone", "shop")));
        records.observe(watcher::Event::Init);
        records.observe(watcher::Event::InitApply(record("kept", "shop")));
        assert_eq!(
            names(&records, "shop"),
            ["gone"],
            "until the list completes"
        );
        records.observe(watcher::Event::InitDone);
        assert_eq!(names(&records, "shop"), ["kept"]);
    }
}
