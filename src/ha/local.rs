//! The engine's world outside Kubernetes: instances on loopback (or at any address the
//! caller names), each known by its status port, and the cluster record in the spec
//! file the instance managers read (`--spec-file`), where the engine writes `status` as
//! the controller writes the status subresource. The tests and the failover benchmark
//! run the engine on it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_yaml::Value;

use super::engine::{Announcement, Member, Recorded, SyncSet, World, WorldError};
use crate::api::{InstanceState, Postgres};
use crate::manifests::names;

pub struct LocalWorld {
    spec_file: PathBuf,
    /// Each pod and where its status port answers (`host:port`).
    members: Vec<(String, String)>,
    announcements: Arc<Mutex<Vec<Announcement>>>,
}

impl LocalWorld {
    /// Members given as each pod and its status port on 127.0.0.1.
    pub fn new(spec_file: PathBuf, members: Vec<(String, u16)>) -> Self {
        Self::with_addresses(
            spec_file,
            members
                .into_iter()
                .map(|(pod, port)| (pod, format!("127.0.0.1:{port}")))
                .collect(),
        )
    }

    /// Members given as each pod and its status port's `host:port` (instances in other
    /// network namespaces, or on other addresses than loopback).
    pub fn with_addresses(spec_file: PathBuf, members: Vec<(String, String)>) -> Self {
        Self {
            spec_file,
            members,
            announcements: Arc::default(),
        }
    }

    /// What the engine announced so far.
    pub fn announcements(&self) -> Arc<Mutex<Vec<Announcement>>> {
        self.announcements.clone()
    }

    fn documents(&self) -> Result<Vec<Value>, WorldError> {
        let text = std::fs::read_to_string(&self.spec_file)?;
        let mut documents = Vec::new();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)?;
            if !value.is_null() {
                documents.push(value);
            }
        }
        Ok(documents)
    }

    fn postgres(&self) -> Result<Postgres, WorldError> {
        let document = self
            .documents()?
            .into_iter()
            .find(|d| d.get("kind").and_then(Value::as_str) == Some("Postgres"))
            .ok_or("the spec file holds no Postgres")?;
        Ok(serde_yaml::from_value(document)?)
    }

    /// Sets `status.<field>` of the Postgres document and replaces the file in one step.
    fn set_status(&self, fields: &[(&str, Value)]) -> Result<(), WorldError> {
        let mut documents = self.documents()?;
        let postgres = documents
            .iter_mut()
            .find(|d| d.get("kind").and_then(Value::as_str) == Some("Postgres"))
            .ok_or("the spec file holds no Postgres")?;
        let mapping = postgres
            .as_mapping_mut()
            .ok_or("the Postgres is not a mapping")?;
        let status = mapping
            .entry(Value::from("status"))
            .or_insert_with(|| Value::Mapping(Default::default()));
        if !status.is_mapping() {
            *status = Value::Mapping(Default::default());
        }
        let status = status.as_mapping_mut().ok_or("status is not a mapping")?;
        for (field, value) in fields {
            status.insert(Value::from(*field), value.clone());
        }
        let mut text = String::new();
        for document in &documents {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(document)?);
        }
        let temporary = self.spec_file.with_extension("engine");
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, &self.spec_file)?;
        Ok(())
    }
}

impl World for LocalWorld {
    async fn members(&self) -> Result<Vec<Member>, WorldError> {
        Ok(self
            .members
            .iter()
            .map(|(pod, address)| Member {
                pod: pod.clone(),
                address: Some(address.clone()),
            })
            .collect())
    }

    async fn recorded(&self) -> Result<Recorded, WorldError> {
        let postgres = self.postgres()?;
        let mut recorded = Recorded::of(&postgres);
        // Outside Kubernetes nothing else records the first primary: it is the one the
        // instances start as (ordinal 0 of a new cluster).
        recorded
            .current_primary
            .get_or_insert_with(|| names::pod(postgres.cluster_name(), 0));
        Ok(recorded)
    }

    async fn record_target(&self, pod: &str) -> Result<(), WorldError> {
        self.set_status(&[("targetPrimary", Value::from(pod))])
    }

    async fn instruct_token(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.spec_file).ok()?;
        let snapshot = crate::instance::source::parse_snapshot(&text).ok()?;
        snapshot
            .superuser_password()
            .map(super::token::instruct_token)
    }

    async fn record_primary(&self, pod: &str) -> Result<(), WorldError> {
        self.set_status(&[
            ("currentPrimary", Value::from(pod)),
            ("targetPrimary", Value::from(pod)),
        ])
    }

    async fn record_sync(&self, sync: &SyncSet) -> Result<(), WorldError> {
        self.set_status(&[
            (
                "syncQuorum",
                Value::from(u64::try_from(sync.quorum).unwrap_or(0)),
            ),
            (
                "syncStandbys",
                Value::Sequence(
                    sync.standbys
                        .iter()
                        .map(|s| Value::from(s.as_str()))
                        .collect(),
                ),
            ),
        ])
    }

    async fn record_instances(&self, instances: &[InstanceState]) -> Result<(), WorldError> {
        self.set_status(&[("instancesStatus", serde_yaml::to_value(instances)?)])
    }

    async fn announce(&self, announcement: Announcement) {
        if let Some(record) = announcement.failover_record() {
            let recorded = serde_yaml::to_value(&record)
                .map_err(WorldError::from)
                .and_then(|value| self.set_status(&[("lastFailover", value)]));
            if let Err(error) = recorded {
                tracing::warn!(%error, "cannot record the failover");
            }
        }
        if let Ok(mut announcements) = self.announcements.lock() {
            announcements.push(announcement);
        }
    }
}
