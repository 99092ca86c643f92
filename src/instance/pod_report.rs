//! Puts the configuration refusal in force (or its absence) on the instance's own Pod as
//! the `config-rejected` annotation, where the controller's pod watch turns it into the
//! `ConfigurationApplied` condition of the Postgres. One server-side apply of that
//! annotation alone, under the instance's own field manager, and only when the refusal
//! changes: a settled instance writes nothing.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

use crate::api::instance_report::{
    CONFIG_REJECTED_ANNOTATION, ConfigRejected, INSTANCE_FIELD_MANAGER,
};

/// Longest message kept: PostgreSQL's are a line, and the condition names every pod's.
const MAX_MESSAGE: usize = 1000;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

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

/// Writes the annotation on one Pod.
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

    /// Applies `report` as the annotation, or removes the annotation with `None`: an
    /// apply that leaves out a field its manager owned removes it. Never creates the Pod
    /// (the instance runs in it; its Role has no `create`).
    pub async fn apply(&self, report: Option<&ConfigRejected>) -> Result<(), ReportError> {
        let mut metadata = json!({"name": self.pod});
        if let Some(report) = report {
            let report = ConfigRejected {
                message: report.message.chars().take(MAX_MESSAGE).collect(),
                ..report.clone()
            };
            metadata["annotations"] =
                json!({CONFIG_REJECTED_ANNOTATION: serde_json::to_string(&report)?});
        }
        let patch = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata});
        self.api
            .patch(
                &self.pod,
                &PatchParams::apply(INSTANCE_FIELD_MANAGER).force(),
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
    pub async fn follow(self, mut reports: watch::Receiver<Option<ConfigRejected>>) {
        let mut retry = FIRST_RETRY;
        loop {
            let report = reports.borrow_and_update().clone();
            match self.apply(report.as_ref()).await {
                Ok(()) => {
                    retry = FIRST_RETRY;
                    tracing::debug!(
                        rejected = report.is_some(),
                        "configuration report on the pod"
                    );
                    if reports.changed().await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "cannot report the configuration state on the pod");
                    // A change meanwhile is applied at the retry, not earlier: the API
                    // server just refused or failed.
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }
}
