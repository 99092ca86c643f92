//! Events the instance manager records on its `Postgres` (e.g. a configuration
//! PostgreSQL refused), so `kubectl describe` shows them next to the controller's. With a
//! spec file instead of the API there is nowhere to record them: the log says it all.

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::api::Postgres;

/// Where events go.
#[derive(Clone, Default)]
pub enum EventSink {
    #[default]
    LogOnly,
    Kube(Recorder),
}

/// Kubernetes refuses longer notes.
const MAX_NOTE: usize = 1000;

impl EventSink {
    /// Events reported by pod `pod` through `client`.
    pub fn kube(client: kube::Client, pod: &str) -> Self {
        EventSink::Kube(Recorder::new(
            client,
            Reporter {
                controller: "postgres-operator-instance".to_string(),
                instance: Some(pod.to_string()),
            },
        ))
    }

    /// Records an event on `postgres` in the background: a slow or refusing API server
    /// must not hold up the manager, and an event that cannot be recorded is only logged.
    pub fn publish(&self, postgres: &Postgres, warning: bool, reason: &str, note: &str) {
        let EventSink::Kube(recorder) = self else {
            return;
        };
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note.chars().take(MAX_NOTE).collect()),
            action: "Configure".to_string(),
            secondary: None,
        };
        let (recorder, reference, reason) = (
            recorder.clone(),
            postgres.object_ref(&()),
            reason.to_string(),
        );
        tokio::spawn(async move {
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(%error, reason, "cannot record event");
            }
        });
    }
}
