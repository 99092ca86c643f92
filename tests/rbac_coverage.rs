//! The chart's RBAC is exactly what the operator needs: every request the controller
//! makes in a full scenario is allowed, every permission it holds is used or needed to
//! grant the clusters' own Roles, and leader election stays inside its Lease Role.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use postgres_operator::controller::failover::InstanceAddresses;
use postgres_operator::controller::leader::{self, LeaseLock, Timing};
use postgres_operator::controller::{self, Settings};
use postgres_operator::manifests::{Cluster, OperatorSettings, rbac};
use postgres_operator::metrics::Metrics;
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Permission, permissions};
use support::validators::rbac_uncovered;

/// (group, resource, verb) of every request, with `create` for applies that created;
/// `resource` may end in `/status`.
fn used(server: &ApiServer) -> BTreeSet<Permission> {
    server
        .requests()
        .iter()
        .flat_map(|r| {
            let (group, resource) = r.resource.split_once('/').unwrap();
            r.verbs
                .iter()
                .map(|verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .collect()
}

/// The chart's rules: the operator's ClusterRole (or Roles) with PodMonitors on, and its
/// nodes ClusterRole.
fn chart_rules() -> BTreeSet<Permission> {
    CHART_RULE_FILES
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(chart_file(file)).unwrap();
            permissions(&serde_yaml::from_str(&text).unwrap())
        })
        .collect()
}

const CHART_RULE_FILES: [&str; 3] = [
    "rbac-rules.yaml",
    "rbac-podmonitor-rules.yaml",
    "rbac-node-rules.yaml",
];

fn chart_file(file: &str) -> String {
    format!(
        "{}/charts/postgres-operator/files/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `permissions` as RBAC PolicyRules, one per verb.
fn as_policy_rules(permissions: &BTreeSet<Permission>) -> Value {
    permissions
        .iter()
        .map(|(group, resource, verb)| {
            json!({"apiGroups": [group], "resources": [resource], "verbs": [verb]})
        })
        .collect()
}

/// The chart's rules as written (RBAC PolicyRules), for Kubernetes' own comparison.
fn chart_policy_rules() -> Value {
    let rules: Vec<Value> = CHART_RULE_FILES
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(chart_file(file)).unwrap();
            serde_yaml::from_str::<Vec<Value>>(&text).unwrap()
        })
        .collect();
    Value::Array(rules)
}

/// The chart's leader-election Role.
fn lease_rules() -> BTreeSet<Permission> {
    ["get", "create", "update"]
        .iter()
        .map(|v| ("coordination.k8s.io".into(), "leases".into(), v.to_string()))
        .collect()
}

/// Waits for `check` like `support::wait_for`, failing at once with the API server's
/// answer when the authorizer refused one of the operator's requests.
async fn wait_allowed(server: &ApiServer, what: &str, mut check: impl FnMut() -> bool) {
    support::wait_for(what, || {
        if let Some(refused) = server.forbidden().first() {
            panic!("{}", refused.forbidden.as_deref().unwrap_or_default());
        }
        check()
    })
    .await
}

/// Drives the controller through creation, growth, removal of optional objects, and an
/// invalid spec, so every code path that talks to the API runs.
async fn full_scenario(server: &ApiServer) {
    let spec: Value =
        serde_yaml::from_str::<Value>(&support::example("complete.yaml")).unwrap()["spec"].clone();
    server.put(
        "apps.cozystack.io/postgreses",
        "ns",
        json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
        "metadata": {"name": "all", "namespace": "ns"}, "spec": spec.clone()}),
    );
    server.put("apps.cozystack.io/postgreses", "ns", json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
        "metadata": {"name": "bad", "namespace": "ns"}, "spec": {"replicas": 2, "quorum": {"maxSyncReplicas": 2}}}));
    server.put("apps.cozystack.io/postgresbackups", "ns", json!({"apiVersion": "apps.cozystack.io/v1alpha1",
        "kind": "PostgresBackup", "metadata": {"name": "manual", "namespace": "ns"}, "spec": {"postgres": "missing"}}));
    server.put("/persistentvolumeclaims", "ns", json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "pgdata-postgres-all-0", "namespace": "ns", "labels": {"app.kubernetes.io/name": "postgres",
            "app.kubernetes.io/instance": "all", "postgres.apps.cozystack.io/cluster": "all"}},
        "spec": {"resources": {"requests": {"storage": "1Gi"}}}}));
    // A pod as the StatefulSet creates it: no role label yet.
    server.put("/pods", "ns", json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "postgres-all-0", "namespace": "ns", "labels": {"app.kubernetes.io/name": "postgres",
            "app.kubernetes.io/instance": "all", "postgres.apps.cozystack.io/cluster": "all"}}}));
    // A one-instance cluster on an old pod template whose primary answers: the rolling
    // update deletes its pod (nobody to hand over to).
    server.put(
        "apps.cozystack.io/postgreses",
        "ns",
        json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
        "metadata": {"name": "solo", "namespace": "ns"}, "spec": {"replicas": 1},
        "status": {"currentPrimary": "postgres-solo-0", "targetPrimary": "postgres-solo-0"}}),
    );
    server.put("/pods", "ns", json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "postgres-solo-0", "namespace": "ns", "labels": {"app.kubernetes.io/name": "postgres",
            "app.kubernetes.io/instance": "solo", "postgres.apps.cozystack.io/cluster": "solo"}}}));
    let solo = primary_report_server("postgres-solo-0").await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = server.client();
    let lock = LeaseLock::new(
        client.clone(),
        "operator",
        "postgres-operator",
        "me",
        Duration::from_secs(3),
    );
    let timing = Timing {
        lease_duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(200),
        retry_every: Duration::from_millis(100),
    };
    let settings = Settings {
        resync: Duration::from_millis(200),
        retry_base: Duration::from_millis(100),
        // The engine's writes (the status subresource, Events) are the reconcile's
        // verbs too; without engines, `solo`'s primary needs to answer reports only.
        failover: false,
        operator: OperatorSettings {
            pod_monitors: true,
            ..OperatorSettings::default()
        },
        instance_addresses: InstanceAddresses::with(move |_, cluster, _| {
            (cluster == "solo").then(|| solo.to_string())
        }),
        ..Settings::default()
    };
    let task = tokio::spawn(leader::lead(
        lock,
        timing,
        async move {
            let _ = stopped.await;
        },
        move |stop| controller::run(client, settings, Arc::new(Metrics::default()), stop),
    ));
    wait_allowed(server, "the claim grew", || {
        server
            .get("/persistentvolumeclaims", "ns", "pgdata-postgres-all-0")
            .is_some_and(|c| c["spec"]["resources"]["requests"]["storage"] == "50Gi")
    })
    .await;
    wait_allowed(server, "the pod is labelled primary", || {
        server
            .get("/pods", "ns", "postgres-all-0")
            .is_some_and(|p| {
                p["metadata"]["labels"]["postgres.apps.cozystack.io/role"] == "primary"
            })
    })
    .await;
    // A backup asked for by hand gets its Job, and the record names it.
    server.put("apps.cozystack.io/postgresbackups", "ns", json!({"apiVersion": "apps.cozystack.io/v1alpha1",
        "kind": "PostgresBackup", "metadata": {"name": "now", "namespace": "ns"}, "spec": {"postgres": "all"}}));
    wait_allowed(server, "the backup Job", || {
        server.get("batch/jobs", "ns", "now-backup").is_some()
            && server
                .get("apps.cozystack.io/postgresbackups", "ns", "now")
                .is_some_and(|r| r["status"]["jobName"] == "now-backup")
    })
    .await;
    wait_allowed(
        server,
        "the one-instance cluster's pod is restarted",
        || server.get("/pods", "ns", "postgres-solo-0").is_none(),
    )
    .await;
    touch_every_owned_object(server).await;
    let mut pg = server
        .get("apps.cozystack.io/postgreses", "ns", "all")
        .unwrap();
    pg["spec"]["external"] = json!(false);
    pg["spec"]["backup"] = json!({"enabled": false});
    server.put("apps.cozystack.io/postgreses", "ns", pg);
    wait_allowed(server, "stale objects are deleted", || {
        server
            .get("batch/cronjobs", "ns", "postgres-all-backup")
            .is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// A status port whose instance always reports itself a running primary.
async fn primary_report_server(pod: &str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let body = json!({"pod": pod, "role": "primary", "running": true, "timeline": 1}).to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    address
}

/// Someone else annotates every object the operator owns: their versions are no longer
/// ones the operator verified, so it reads each one back (`get`) to look for drift.
async fn touch_every_owned_object(server: &ApiServer) {
    let owned = [
        "apps/statefulsets",
        "/services",
        "/secrets",
        "/configmaps",
        "batch/cronjobs",
        "policy/poddisruptionbudgets",
        "networking.k8s.io/networkpolicies",
        "/serviceaccounts",
        "rbac.authorization.k8s.io/roles",
        "rbac.authorization.k8s.io/rolebindings",
        "monitoring.coreos.com/podmonitors",
    ];
    let already = server.requests().len();
    let mut touched = Vec::new();
    for resource in owned {
        for mut object in server.list(resource, "ns") {
            object["metadata"]["annotations"]["example.org/touched"] = json!("yes");
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            server.put(resource, "ns", object);
            touched.push((resource, name));
        }
    }
    wait_allowed(server, "every touched object is read back", || {
        let requests = server.requests();
        touched.iter().all(|(resource, name)| {
            requests[already..].iter().any(|r| {
                r.method == "GET" && r.resource == *resource && r.name.as_deref() == Some(name)
            })
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_allows_exactly_what_the_operator_uses() {
    let server = ApiServer::new();
    // Authorized as the chart's rules authorize the operator on a real API server, so a
    // missing verb (such as `create` for an apply that creates) fails the scenario.
    server.authorize(chart_rules().union(&lease_rules()).cloned().collect());
    full_scenario(&server).await;
    assert!(server.forbidden().is_empty(), "{:?}", server.forbidden());
    let used = used(&server);
    let (lease, controller_used): (BTreeSet<Permission>, BTreeSet<Permission>) = used
        .into_iter()
        .partition(|(group, _, _)| group == "coordination.k8s.io");

    let allowed = chart_rules();
    let missing: Vec<&Permission> = controller_used.difference(&allowed).collect();
    assert!(missing.is_empty(), "the chart does not allow: {missing:?}");
    // The same by Kubernetes' own rule matching, not the double's.
    let chart = chart_policy_rules();
    let refused = rbac_uncovered(&chart, &as_policy_rules(&controller_used));
    assert!(refused.is_empty(), "Kubernetes would refuse: {refused:?}");

    // What each cluster's Role grants, the operator must hold: the API server refuses to
    // create a Role granting more than its creator has (the escalation check).
    let pg: postgres_operator::api::Postgres =
        serde_yaml::from_str(&support::example("complete.yaml")).unwrap();
    let settings = OperatorSettings::default();
    let role = rbac::desired_role(&Cluster::new(&pg, "ns", &settings));
    let rules = serde_json::to_value(role.rules.unwrap()).unwrap();
    let granted = permissions(&rules);
    let not_held: Vec<&Permission> = granted.difference(&allowed).collect();
    assert!(
        not_held.is_empty(),
        "the operator grants what it does not hold: {not_held:?}"
    );
    for example in support::EXAMPLES {
        let pg: postgres_operator::api::Postgres =
            serde_yaml::from_str(&support::example(example)).unwrap();
        let role = rbac::desired_role(&Cluster::new(&pg, "ns", &settings));
        let escalation = rbac_uncovered(&chart, &serde_json::to_value(role.rules).unwrap());
        assert!(
            escalation.is_empty(),
            "{example}: creating its Role would be refused as an escalation: {escalation:?}"
        );
    }

    let unused: Vec<&Permission> = allowed
        .iter()
        .filter(|p| !controller_used.contains(*p) && !granted.contains(*p))
        .collect();
    assert!(
        unused.is_empty(),
        "the chart allows verbs nobody uses: {unused:?}"
    );

    let lease_role = lease_rules();
    let lease_missing: Vec<&Permission> = lease.difference(&lease_role).collect();
    assert!(
        lease_missing.is_empty(),
        "the leader-election Role lacks: {lease_missing:?}"
    );
}

#[tokio::test]
async fn a_creating_apply_needs_create_as_well_as_patch() {
    let server = ApiServer::new();
    server.authorize(BTreeSet::from([(
        String::new(),
        "configmaps".to_string(),
        "patch".to_string(),
    )]));
    let api = kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(server.client(), "ns");
    let apply = kube::api::PatchParams::apply("test");
    let map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let refused = api
        .patch("c", &apply, &kube::api::Patch::Apply(&map))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains(
            r#"configmaps "c" is forbidden: User "system:serviceaccount:operator:postgres-operator" cannot create resource "configmaps" in API group "" in the namespace "ns""#
        ),
        "{refused}"
    );
    assert!(server.get("/configmaps", "ns", "c").is_none());

    // Once it exists, the same apply is a patch.
    server.put("/configmaps", "ns", map.clone());
    api.patch("c", &apply, &kube::api::Patch::Apply(&map))
        .await
        .unwrap();
}
