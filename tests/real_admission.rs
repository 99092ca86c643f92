//! Real admission for our own objects: Kubernetes' own apiextensions-apiserver (on etcd,
//! tests/support/real_apiserver.rs) with the CRDs the operator generates. The examples
//! are accepted by server-side apply and defaulted as the operator defaults them, the
//! CRD rules refuse and accept the shared cases (tests/support/crd_rule_cases.rs) with
//! their messages, and the status subresource keeps spec and status apart.

mod support;

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::cel::apply_defaults;
use kube::{Api, Client};
use postgres_operator::api::{PostgresBackupSpec, PostgresSpec};
use postgres_operator::crdgen;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::crd_rule_cases::{cases, postgres};
use support::real_apiserver;

/// `kubectl apply --server-side`'s field manager.
const KUBECTL: &str = "kubectl";
/// The Terraform Kubernetes provider's (`kubernetes_manifest`) field manager.
const TERRAFORM: &str = "Terraform";

/// The API resource and openAPIV3Schema of one of our kinds.
fn resource(kind: &str) -> (ApiResource, Value) {
    let crd = crdgen::crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap();
    let schema = &crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema;
    let schema = serde_json::to_value(schema).unwrap();
    let resource = real_apiserver::resource(&crd);
    (resource, schema)
}

fn api(client: &Client, namespace: &str, object: &Value) -> Api<DynamicObject> {
    let (resource, _) = resource(object["kind"].as_str().unwrap());
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Server-side applies `object` with `manager` as `kubectl apply --server-side` and
/// Terraform do, returning the stored object or the server's refusal.
async fn apply(
    client: &Client,
    namespace: &str,
    manager: &str,
    object: &Value,
) -> Result<Value, kube::Error> {
    let name = object["metadata"]["name"].as_str().unwrap();
    let stored = api(client, namespace, object)
        .patch(name, &PatchParams::apply(manager), &Patch::Apply(object))
        .await?;
    Ok(serde_json::to_value(stored).unwrap())
}

fn resource_version(object: &Value) -> &str {
    object["metadata"]["resourceVersion"].as_str().unwrap()
}

fn typed<T: DeserializeOwned>(value: &Value) -> T {
    serde_json::from_value(value.clone()).unwrap()
}

/// The Postgres examples: each file of examples/ whose kind is Postgres, and the
/// Terraform example's manifest, with the field manager that applies it.
fn postgres_examples() -> Vec<(String, &'static str, Value)> {
    let mut examples = Vec::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let object: Value =
                serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            if object["kind"] == "Postgres" {
                examples.push((path.display().to_string(), KUBECTL, object));
            }
        }
    }
    examples.push((
        "examples/terraform.tf".to_string(),
        TERRAFORM,
        support::terraform::manifest(),
    ));
    examples.sort_by(|a, b| a.0.cmp(&b.0));
    examples
}

/// Each Postgres example is accepted by server-side apply; the spec the server stores is,
/// byte for byte, the example with the CRD's schema defaults as `render` applies them
/// (kube-rs), and parses to the same `PostgresSpec` as the example with the operator's
/// serde defaults; applying it again changes nothing (no perpetual diff for Terraform).
#[tokio::test]
async fn the_examples_are_accepted_and_defaulted_as_the_operator_defaults_them() {
    let client = real_apiserver::client().await;
    let (_, schema) = resource("Postgres");
    let examples = postgres_examples();
    assert!(examples.len() >= 6, "{examples:?}");
    for (file, manager, example) in examples {
        let stored = apply(&client, "examples", manager, &example)
            .await
            .unwrap_or_else(|e| panic!("{file}: refused: {e}"));
        assert_eq!(
            stored["spec"],
            apply_defaults(&schema, &example)["spec"],
            "{file}: the server's defaults differ from render's"
        );
        assert_eq!(
            typed::<PostgresSpec>(&stored["spec"]),
            typed::<PostgresSpec>(&example["spec"]),
            "{file}: the server's defaults differ from the operator's serde defaults"
        );
        let again = apply(&client, "examples", manager, &example).await.unwrap();
        assert_eq!(
            resource_version(&again),
            resource_version(&stored),
            "{file}: a second identical apply changed the object"
        );
    }
}

/// The PostgresBackup example (`kubectl create -f`, it uses generateName) is accepted and
/// stored with the operator's defaults.
#[tokio::test]
async fn the_backup_example_is_accepted_with_the_operator_defaults() {
    let client = real_apiserver::client().await;
    let (_, schema) = resource("PostgresBackup");
    let example: Value = serde_yaml::from_str(&support::example("backup-manual.yaml")).unwrap();
    let request: DynamicObject = typed(&example);
    let stored = api(&client, "examples", &example)
        .create(&PostParams::default(), &request)
        .await
        .unwrap();
    let stored = serde_json::to_value(stored).unwrap();
    assert!(
        stored["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("postgres-complete-manual-")
    );
    assert_eq!(stored["spec"], apply_defaults(&schema, &example)["spec"]);
    assert_eq!(
        typed::<PostgresBackupSpec>(&stored["spec"]),
        typed::<PostgresBackupSpec>(&example["spec"])
    );
}

/// Every case of the shared table (which the kube-rs CEL evaluation decides alike in
/// tests/crd_cel_rules.rs) is refused by the real API server with the rule's message, or
/// accepted; an update case first applies the old object, then the new one with the same
/// field manager, as `kubectl apply --server-side` does. Each case has its own namespace.
#[tokio::test]
async fn the_api_server_decides_every_rule_case_as_the_table_says() {
    let client = real_apiserver::client().await;
    let mut disagreements = Vec::new();
    for (index, case) in cases().into_iter().enumerate() {
        let namespace = format!("case-{index}");
        if let Some(old) = &case.old
            && let Err(e) = apply(&client, &namespace, KUBECTL, old).await
        {
            disagreements.push(format!("{}: the old object was refused: {e}", case.name));
            continue;
        }
        let verdict = apply(&client, &namespace, KUBECTL, &case.object).await;
        match (&verdict, case.refused_with) {
            (Ok(_), None) => {}
            (Err(kube::Error::Api(status)), Some(message))
                if status.code == 422 && status.message.contains(message) => {}
            (Ok(_), Some(message)) => disagreements.push(format!(
                "{}: accepted, expected refused with {message:?}",
                case.name
            )),
            (Err(e), expected) => {
                let refusal = match e {
                    kube::Error::Api(status) => status.message.clone(),
                    other => other.to_string(),
                };
                disagreements.push(format!(
                    "{}: refused with {refusal:?}, expected {expected:?}",
                    case.name
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

/// Through the status subresource only status changes, and without bumping generation;
/// through the object only spec changes, and a spec change bumps generation.
#[tokio::test]
async fn status_and_spec_are_written_apart_and_only_spec_changes_bump_generation() {
    let client = real_apiserver::client().await;
    let object = postgres(json!({"replicas": 2}));
    let created = apply(&client, "status", KUBECTL, &object).await.unwrap();
    let generation = created["metadata"]["generation"].as_i64().unwrap();
    let api = api(&client, "status", &object);

    let status_write = json!({
        "apiVersion": object["apiVersion"], "kind": "Postgres", "metadata": {"name": "demo"},
        "spec": {"replicas": 5}, "status": {"readyInstances": 2, "observedGeneration": generation}
    });
    let after_status = api
        .patch_status(
            "demo",
            &PatchParams::apply("postgres-operator").force(),
            &Patch::Apply(&status_write),
        )
        .await
        .unwrap();
    let after_status = serde_json::to_value(after_status).unwrap();
    assert_eq!(
        after_status["spec"], created["spec"],
        "a status write changed spec"
    );
    assert_eq!(after_status["status"]["readyInstances"], 2);
    assert_eq!(after_status["metadata"]["generation"], generation);

    let spec_write = json!({
        "apiVersion": object["apiVersion"], "kind": "Postgres", "metadata": {"name": "demo"},
        "spec": {"replicas": 3}, "status": {"readyInstances": 0}
    });
    let after_spec = apply(&client, "status", KUBECTL, &spec_write)
        .await
        .unwrap();
    assert_eq!(after_spec["spec"]["replicas"], 3);
    assert_eq!(
        after_spec["status"], after_status["status"],
        "a write of the object changed status"
    );
    assert_eq!(after_spec["metadata"]["generation"], generation + 1);
}
