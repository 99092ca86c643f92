//! Puts what the instance reports about itself on its own Pod as annotations, where the
//! controller's pod watch turns them into conditions of the Postgres: a configuration
//! refusal (`config-rejected`, the `ConfigurationApplied` condition) and a restore from
//! backup in progress (`restoring`, the `Restoring` condition). One server-side apply of
//! one annotation alone, under a field manager of its own, and only when the report
//! changes: a settled instance writes nothing.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::api::instance_report::{
    CONFIG_REJECTED_ANNOTATION, ConfigRejected, INSTANCE_FIELD_MANAGER,
    INSTANCE_RESTORE_FIELD_MANAGER, RESTORING_ANNOTATION, Restoring,
};

/// Longest message kept: PostgreSQL's are a line, and the condition names every pod's.
const MAX_MESSAGE: usize = 1000;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// A report carried by one annotation.
pub trait PodAnnotation: Serialize + Clone + PartialEq + Send + Sync + 'static {
    const KEY: &'static str;
    const FIELD_MANAGER: &'static str;
    /// The report with its message cut to [`MAX_MESSAGE`] characters.
    fn bounded(&self) -> Self;
}

fn bounded(message: &str) -> String {
    message.chars().take(MAX_MESSAGE).collect()
}

impl PodAnnotation for ConfigRejected {
    const KEY: &'static str = CONFIG_REJECTED_ANNOTATION;
    const FIELD_MANAGER: &'static str = INSTANCE_FIELD_MANAGER;
    fn bounded(&self) -> Self {
        Self {
            message: bounded(&self.message),
            ..self.clone()
        }
    }
}

impl PodAnnotation for Restoring {
    const KEY: &'static str = RESTORING_ANNOTATION;
    const FIELD_MANAGER: &'static str = INSTANCE_RESTORE_FIELD_MANAGER;
    fn bounded(&self) -> Self {
        Self {
            message: bounded(&self.message),
            ..self.clone()
        }
    }
}

/// The report in force, shared with `/status` and with whoever reports it on the Pod,
/// which is woken only when it changes.
#[derive(Clone, Debug)]
pub struct Report<T>(Arc<watch::Sender<Option<T>>>);

impl<T> Default for Report<T> {
    fn default() -> Self {
        Report(Arc::new(watch::Sender::new(None)))
    }
}

impl<T: Clone + PartialEq> Report<T> {
    /// The report in force now.
    pub fn current(&self) -> Option<T> {
        self.0.borrow().clone()
    }

    /// The report in force now and at every change.
    pub fn subscribe(&self) -> watch::Receiver<Option<T>> {
        self.0.subscribe()
    }

    /// Sets the report in force; subscribers hear of it only when it differs.
    pub fn set(&self, report: Option<T>) {
        self.0.send_if_modified(|current| {
            let changed = *current != report;
            *current = report;
            changed
        });
    }
}

/// A restore from backup in progress, while there is one.
pub type RestoreReport = Report<Restoring>;

/// Everything the instance reports on its Pod.
#[derive(Clone, Debug, Default)]
pub struct Reports {
    pub rejected: Report<ConfigRejected>,
    pub restoring: RestoreReport,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot serialize the report: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("cannot annotate pod {pod}: {source}")]
    Kube {
        pod: String,
        #[source]
        source: kube::Error,
    },
}

/// Writes one annotation on one Pod.
pub struct PodReporter {
    api: Api<Pod>,
    pod: String,
}

impl PodReporter {
    pub fn new(client: kube::Client, namespace: &str, pod: &str) -> Self {
        PodReporter {
            api: Api::namespaced(client, namespace),
            pod: pod.to_string(),
        }
    }

    /// Applies `report` as its annotation, or removes the annotation with `None`: an
    /// apply that leaves out a field its manager owned removes it. Never creates the Pod
    /// (the instance runs in it; its Role has no `create`).
    pub async fn apply<T: PodAnnotation>(&self, report: Option<&T>) -> Result<(), ReportError> {
        let mut metadata = json!({"name": self.pod});
        if let Some(report) = report {
            metadata["annotations"] = json!({T::KEY: serde_json::to_string(&report.bounded())?});
        }
        let patch = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata});
        self.api
            .patch(
                &self.pod,
                &PatchParams::apply(T::FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| ReportError::Kube {
                pod: self.pod.clone(),
                source,
            })?;
        Ok(())
    }

    /// Applies the report in force, then each change, until `reports` closes. The first
    /// apply also clears what a previous run of the container left on the Pod. A failed
    /// apply is retried with backoff, with whatever is in force by then.
    pub async fn follow<T: PodAnnotation>(self, mut reports: watch::Receiver<Option<T>>) {
        let mut retry = FIRST_RETRY;
        loop {
            let report = reports.borrow_and_update().clone();
            match self.apply(report.as_ref()).await {
                Ok(()) => {
                    retry = FIRST_RETRY;
                    tracing::debug!(
                        annotation = T::KEY,
                        present = report.is_some(),
                        "report on the pod"
                    );
                    if reports.changed().await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, annotation = T::KEY, retry_in = ?retry, "cannot report on the pod");
                    // A change meanwhile is applied at the retry, not earlier: the API
                    // server just refused or failed.
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }
}
