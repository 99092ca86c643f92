//! The role label of each instance pod (`postgres.apps.cozystack.io/role`): `primary` on the
//! pod that should be primary, `replica` on the others. The `-rw` Service (and so the backup
//! Jobs) and the `-ro` Service select pods by it; the StatefulSet's template cannot carry it,
//! since the role belongs to one pod, not to all of them.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use super::{Context, Error};
use crate::manifests::labels;

/// The pods whose label differs from their role, with the role they should have.
pub fn role_changes(pods: &[Pod], primary: &str) -> Vec<(String, &'static str)> {
    pods.iter()
        .filter_map(|pod| {
            let name = pod.metadata.name.as_deref()?;
            let role = if name == primary {
                labels::ROLE_PRIMARY
            } else {
                labels::ROLE_REPLICA
            };
            let current = pod.metadata.labels.as_ref()?.get(labels::ROLE);
            (current.map(String::as_str) != Some(role)).then(|| (name.to_string(), role))
        })
        .collect()
}

/// Applies the role labels that differ (only the label, with the operator's field manager,
/// each counted as a write), and updates `pods` to match. A settled cluster makes no
/// request here.
pub async fn apply_roles(
    ctx: &Context,
    namespace: &str,
    pods: &mut [Pod],
    primary: &str,
) -> Result<usize, Error> {
    let changes = role_changes(pods, primary);
    let api = Api::<Pod>::namespaced(ctx.client.clone(), namespace);
    for (name, role) in &changes {
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {labels::ROLE: role}},
        });
        super::apply(ctx, &api, "Pod", name, &patch).await?;
        tracing::info!(pod = %name, role, "pod role label set");
        if let Some(pod) = pods
            .iter_mut()
            .find(|pod| pod.metadata.name.as_deref() == Some(name.as_str()))
        {
            pod.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(labels::ROLE.to_string(), role.to_string());
        }
    }
    Ok(changes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(name: &str, role: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.to_string());
        let mut pod_labels = BTreeMap::from([(labels::CLUSTER.to_string(), "demo".to_string())]);
        if let Some(role) = role {
            pod_labels.insert(labels::ROLE.to_string(), role.to_string());
        }
        pod.metadata.labels = Some(pod_labels);
        pod
    }

    #[test]
    fn only_pods_with_the_wrong_role_change() {
        let pods = [
            pod("postgres-demo-0", None),
            pod("postgres-demo-1", Some("replica")),
            pod("postgres-demo-2", Some("primary")),
        ];
        assert_eq!(
            role_changes(&pods, "postgres-demo-0"),
            vec![
                ("postgres-demo-0".to_string(), "primary"),
                ("postgres-demo-2".to_string(), "replica"),
            ]
        );
        let settled = [
            pod("postgres-demo-0", Some("primary")),
            pod("postgres-demo-1", Some("replica")),
        ];
        assert_eq!(role_changes(&settled, "postgres-demo-0"), vec![]);
    }
}
