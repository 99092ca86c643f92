//! Where an instance learns what its cluster should be: its own Postgres object and the
//! Secrets holding the passwords. In a pod the Kubernetes API is the source (watched
//! with the pod's service account, one name at a time as its Role allows); anywhere
//! else, a YAML file holding the same objects. Both publish [`Snapshot`]s on a watch
//! channel, so the instance manager cannot tell them apart.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;
use tokio::sync::watch;

use super::tls_files::TlsMaterial;
use crate::api::Postgres;
use crate::manifests::names;
use crate::manifests::secrets::{REPLICATION_USER, SUPERUSER};
use crate::manifests::tls;

/// The cluster as one instance sees it at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub postgres: Postgres,
    /// Secret name → key → value, for the Secrets the instance reads.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

/// The Secrets an instance reads: the user passwords (under both names in use), the
/// superuser's and the replication user's, and the server certificate.
pub fn instance_secret_names(cluster: &str) -> Vec<String> {
    vec![
        names::secret_credentials(cluster),
        names::secret_users(cluster),
        names::secret_superuser(cluster),
        names::secret_replication(cluster),
        names::secret_server(cluster),
    ]
}

impl Snapshot {
    pub fn cluster(&self) -> String {
        self.postgres.metadata.name.clone().unwrap_or_default()
    }

    fn value(&self, secret: &str, key: &str) -> Option<&str> {
        self.secrets.get(secret)?.get(key).map(String::as_str)
    }

    /// The superuser's password (`None` until the controller has written the Secret).
    pub fn superuser_password(&self) -> Option<&str> {
        self.value(&names::secret_superuser(&self.cluster()), "password")
    }

    /// The server certificate, its key and the CA (`None` until the controller has
    /// written the Secret, or while a key is missing).
    pub fn server_tls(&self) -> Option<TlsMaterial> {
        let secret = names::secret_server(&self.cluster());
        let value = |key| {
            self.value(&secret, key)
                .filter(|v| !v.trim().is_empty())
                .map(str::to_string)
        };
        Some(TlsMaterial {
            cert: value(tls::TLS_CERT)?,
            key: value(tls::TLS_KEY)?,
            ca: value(tls::CA_CERT)?,
        })
    }

    pub fn replication_password(&self) -> Option<&str> {
        self.value(&names::secret_replication(&self.cluster()), "password")
    }

    /// Each spec user's password: the credentials Secret, else the older users Secret.
    /// Users with neither are left out (and so not created) until the controller writes one.
    pub fn user_passwords(&self) -> BTreeMap<String, String> {
        let cluster = self.cluster();
        let (credentials, users) = (
            names::secret_credentials(&cluster),
            names::secret_users(&cluster),
        );
        self.postgres
            .spec
            .users
            .keys()
            .filter(|user| user.as_str() != SUPERUSER && user.as_str() != REPLICATION_USER)
            .filter_map(|user| {
                let password = self
                    .value(&credentials, user)
                    .or_else(|| self.value(&users, user))?;
                Some((user.clone(), password.to_string()))
            })
            .collect()
    }

    /// The pod that should be primary (see `names::target_primary`).
    pub fn target_primary(&self) -> String {
        names::target_primary(&self.postgres)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("watching {what}: {source}")]
    Watch {
        what: String,
        #[source]
        source: watcher::Error,
    },
    #[error("the watch of {0} ended")]
    Ended(String),
}

/// Publishes the cluster's snapshot whenever it changes, until the receiver is gone.
pub trait SpecSource: Send + 'static {
    fn run(
        self,
        updates: watch::Sender<Option<Arc<Snapshot>>>,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// A multi-document YAML file with the Postgres object and its Secrets (`data` base64,
/// or `stringData`), read again whenever its content changes. A file that does not
/// parse is reported and the last good snapshot stays in force.
pub struct FileSource {
    pub path: PathBuf,
    pub interval: Duration,
}

#[derive(Deserialize)]
struct Kind {
    kind: Option<String>,
}

/// Parses the objects of a spec file.
pub fn parse_snapshot(text: &str) -> Result<Snapshot, String> {
    let mut postgres = None;
    let mut secrets = BTreeMap::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("document {}: {e}", index + 1))?;
        if value.is_null() {
            continue;
        }
        let kind: Kind = serde_yaml::from_value(value.clone())
            .map_err(|e| format!("document {}: {e}", index + 1))?;
        match kind.kind.as_deref() {
            Some("Postgres") => {
                postgres = Some(
                    serde_yaml::from_value::<Postgres>(value)
                        .map_err(|e| format!("document {} (Postgres): {e}", index + 1))?,
                );
            }
            Some("Secret") => {
                let secret: Secret = serde_yaml::from_value(value)
                    .map_err(|e| format!("document {} (Secret): {e}", index + 1))?;
                if let Some(name) = secret.metadata.name.clone() {
                    secrets.insert(name, secret_values(&secret));
                }
            }
            other => {
                return Err(format!(
                    "document {}: kind {other:?}; expected Postgres or Secret",
                    index + 1
                ));
            }
        }
    }
    let postgres = postgres.ok_or_else(|| "no Postgres object".to_string())?;
    Ok(Snapshot { postgres, secrets })
}

/// A Secret's values as text (`stringData` wins, as the API server folds it in last).
fn secret_values(secret: &Secret) -> BTreeMap<String, String> {
    let mut values: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        values.insert(k.clone(), v.clone());
    }
    values
}

impl SpecSource for FileSource {
    async fn run(self, updates: watch::Sender<Option<Arc<Snapshot>>>) -> Result<(), SourceError> {
        let mut last: Option<String> = None;
        loop {
            match tokio::fs::read_to_string(&self.path).await {
                Ok(text) if last.as_ref() != Some(&text) => {
                    match parse_snapshot(&text) {
                        Ok(snapshot) => {
                            updates.send_replace(Some(Arc::new(snapshot)));
                        }
                        Err(error) => tracing::error!(
                            path = %self.path.display(), %error,
                            "spec file rejected; keeping the last good one"
                        ),
                    }
                    last = Some(text);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), %error, "cannot read spec file");
                }
            }
            if updates.is_closed() {
                return Ok(());
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// The Kubernetes API: the Postgres and each Secret watched by name (a field selector,
/// which is what a Role restricted by `resourceNames` allows).
pub struct KubeSource {
    pub client: kube::Client,
    pub namespace: String,
    pub cluster: String,
}

enum Change {
    Postgres(Option<Box<Postgres>>),
    Secret(String, Option<BTreeMap<String, String>>),
}

fn by_name(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

impl SpecSource for KubeSource {
    async fn run(self, updates: watch::Sender<Option<Arc<Snapshot>>>) -> Result<(), SourceError> {
        let postgres_api: Api<Postgres> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret_api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let postgres_changes = watcher(postgres_api, by_name(&self.cluster))
            .default_backoff()
            .map(|event| {
                event.map(|event| match event {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        Some(Change::Postgres(Some(Box::new(p))))
                    }
                    watcher::Event::Delete(_) => Some(Change::Postgres(None)),
                    watcher::Event::Init | watcher::Event::InitDone => None,
                })
            })
            .boxed();
        let mut streams = vec![postgres_changes];
        for name in instance_secret_names(&self.cluster) {
            let stream = watcher(secret_api.clone(), by_name(&name))
                .default_backoff()
                .map(move |event| {
                    event.map(|event| match event {
                        watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                            Some(Change::Secret(name.clone(), Some(secret_values(&s))))
                        }
                        watcher::Event::Delete(_) => Some(Change::Secret(name.clone(), None)),
                        watcher::Event::Init | watcher::Event::InitDone => None,
                    })
                })
                .boxed();
            streams.push(stream);
        }
        let mut changes = futures::stream::select_all(streams);
        let mut postgres: Option<Postgres> = None;
        let mut secrets = BTreeMap::new();
        while let Some(change) = changes.next().await {
            let change = match change {
                Ok(Some(change)) => change,
                Ok(None) => continue,
                // default_backoff retries; the error is only worth a log line.
                Err(source) => {
                    tracing::warn!(error = %source, "watch failed; retrying");
                    continue;
                }
            };
            match change {
                Change::Postgres(p) => postgres = p.map(|p| *p),
                Change::Secret(name, Some(values)) => {
                    secrets.insert(name, values);
                }
                Change::Secret(name, None) => {
                    secrets.remove(&name);
                }
            }
            // A deleted Postgres is being torn down: keep running as before until the
            // pod goes, rather than act on a half-known cluster.
            if let Some(postgres) = &postgres {
                updates.send_replace(Some(Arc::new(Snapshot {
                    postgres: postgres.clone(),
                    secrets: secrets.clone(),
                })));
            }
            if updates.is_closed() {
                return Ok(());
            }
        }
        Err(SourceError::Ended(format!(
            "{}/{}",
            self.namespace, self.cluster
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
apiVersion: apps.cozystack.io/v1alpha1
kind: Postgres
metadata: {name: demo, namespace: tenant}
spec:
  users:
    alice: {}
    bob: {}
    carol: {}
status:
  currentPrimary: postgres-demo-1
---
apiVersion: v1
kind: Secret
metadata: {name: postgres-demo-credentials}
data: {alice: YWxpY2UncyBwdw==}
---
apiVersion: v1
kind: Secret
metadata: {name: postgres-demo}
stringData: {alice: stale, bob: "bob pw"}
---
apiVersion: v1
kind: Secret
metadata: {name: postgres-demo-superuser}
stringData: {username: postgres, password: su}
"#;

    #[test]
    fn passwords_come_from_the_credentials_secret_then_the_users_secret() {
        let snapshot = parse_snapshot(FILE).unwrap();
        assert_eq!(
            snapshot.user_passwords(),
            BTreeMap::from([
                ("alice".to_string(), "alice's pw".to_string()),
                ("bob".to_string(), "bob pw".to_string()),
            ])
        );
        assert_eq!(snapshot.superuser_password(), Some("su"));
        assert_eq!(snapshot.replication_password(), None);
    }

    #[test]
    fn the_target_primary_falls_back_to_the_current_one_then_ordinal_zero() {
        let snapshot = parse_snapshot(FILE).unwrap();
        assert_eq!(snapshot.target_primary(), "postgres-demo-1");
        let fresh = parse_snapshot(&FILE.replace("currentPrimary", "version")).unwrap();
        assert_eq!(fresh.target_primary(), "postgres-demo-0");
        let moving = parse_snapshot(&FILE.replace(
            "currentPrimary: postgres-demo-1",
            "currentPrimary: postgres-demo-1\n  targetPrimary: postgres-demo-2",
        ))
        .unwrap();
        assert_eq!(moving.target_primary(), "postgres-demo-2");
    }

    #[test]
    fn a_bad_file_names_the_document() {
        let error = parse_snapshot("kind: Postgres\nmetadata: {name: x}\nspec: {replicas: many}\n")
            .unwrap_err();
        assert!(error.starts_with("document 1 (Postgres)"), "{error}");
        let error = parse_snapshot("kind: ConfigMap\n").unwrap_err();
        assert!(error.contains("ConfigMap"), "{error}");
        assert_eq!(
            parse_snapshot("kind: Secret\nmetadata: {name: s}\n").unwrap_err(),
            "no Postgres object"
        );
    }

    #[tokio::test]
    async fn the_file_source_publishes_changes_and_keeps_the_last_good_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(&path, FILE).unwrap();
        let (tx, mut rx) = watch::channel(None);
        let task = tokio::spawn(
            FileSource {
                path: path.clone(),
                interval: Duration::from_millis(10),
            }
            .run(tx),
        );
        rx.wait_for(Option::is_some).await.unwrap();
        std::fs::write(&path, "not: [valid").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            rx.borrow().as_ref().unwrap().cluster(),
            "demo",
            "a broken file changes nothing"
        );
        std::fs::write(&path, FILE.replace("name: demo,", "name: other,")).unwrap();
        rx.wait_for(|s| s.as_ref().is_some_and(|s| s.cluster() == "other"))
            .await
            .unwrap();
        drop(rx);
        task.await.unwrap().unwrap();
    }
}
