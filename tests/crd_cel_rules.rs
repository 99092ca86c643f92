//! The CEL rules in our CRDs: each compiles, every map and list a rule iterates is
//! bounded (the API server rejects CRDs whose rules have unbounded estimated cost), and
//! each rule decides good and bad samples as intended.

use kube::core::cel::{Validator, compile_schema};
use postgres_operator::crdgen;
use postgres_operator::validate::validate_with_crd_rules;
use serde_json::{Value, json};

/// Every (schema path, node schema, rule) in a CRD version schema.
fn rules(schema: &Value, path: &str, out: &mut Vec<(String, Value, String)>) {
    if let Some(list) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in list {
            out.push((
                path.to_string(),
                schema.clone(),
                rule["rule"].as_str().unwrap().to_string(),
            ));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            rules(child, &format!("{path}.{name}"), out);
        }
    }
    for key in ["additionalProperties", "items"] {
        if let Some(child) = schema.get(key).filter(|c| c.is_object()) {
            rules(child, &format!("{path}[*]"), out);
        }
    }
}

fn all_rules() -> Vec<(String, Value, String)> {
    let mut out = Vec::new();
    for crd in crdgen::crds() {
        let crd = serde_json::to_value(crd).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        rules(
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            &kind,
            &mut out,
        );
    }
    out
}

#[test]
fn every_rule_compiles() {
    let all = all_rules();
    assert!(
        all.len() >= 12,
        "expected the CRD rules, found {}",
        all.len()
    );
    for (path, schema, rule) in all {
        let compiled = compile_schema(&schema);
        assert!(
            compiled.compilation_errors().is_empty(),
            "{path}: {rule}: {:?}",
            compiled.compilation_errors()
        );
        assert!(
            !rule.contains("type("),
            "{path}: {rule}: type() cannot be evaluated by render's CEL engine"
        );
    }
}

fn postgres(spec: Value) -> Value {
    json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres", "metadata": {"name": "demo"}, "spec": spec})
}

fn accepted(spec: Value) -> bool {
    validate_with_crd_rules(&postgres(spec), None).is_ok()
}

fn update_accepted(old: Value, new: Value) -> bool {
    validate_with_crd_rules(&postgres(new), Some(&postgres(old))).is_ok()
}

#[test]
fn quorum_bounds_rules() {
    assert!(accepted(
        json!({"replicas": 3, "quorum": {"minSyncReplicas": 1, "maxSyncReplicas": 2}})
    ));
    assert!(!accepted(
        json!({"replicas": 3, "quorum": {"minSyncReplicas": 2, "maxSyncReplicas": 1}})
    ));
    assert!(!accepted(
        json!({"replicas": 2, "quorum": {"maxSyncReplicas": 2}})
    ));
    assert!(
        !accepted(json!({"quorum": {"maxSyncReplicas": 2}})),
        "replicas defaults to 2"
    );
    assert!(accepted(json!({"replicas": 1})));
}

#[test]
fn role_lists_may_only_name_declared_users() {
    let spec = |user: &str| json!({"users": {"alice": {}}, "databases": {"app": {"roles": {"admin": ["alice"], "readonly": [user]}}}});
    assert!(accepted(spec("alice")));
    assert!(!accepted(spec("bob")));
    assert!(
        !accepted(json!({"databases": {"app": {"roles": {"admin": ["alice"]}}}})),
        "no users at all"
    );
}

#[test]
fn size_must_be_a_positive_quantity_and_may_not_shrink() {
    assert!(accepted(json!({"size": "1Gi"})));
    assert!(!accepted(json!({"size": "ten"})));
    assert!(!accepted(json!({"size": "0"})));
    assert!(update_accepted(
        json!({"size": "10Gi"}),
        json!({"size": "20Gi"})
    ));
    assert!(update_accepted(
        json!({"size": "1Gi"}),
        json!({"size": "1024Mi"})
    ));
    assert!(!update_accepted(
        json!({"size": "20Gi"}),
        json!({"size": "10Gi"})
    ));
    assert!(
        !update_accepted(json!({"size": "1Gi"}), json!({"size": "1G"})),
        "1G is smaller than 1Gi"
    );
}

#[test]
fn storage_class_is_immutable() {
    assert!(update_accepted(
        json!({"storageClass": "a"}),
        json!({"storageClass": "a"})
    ));
    assert!(!update_accepted(
        json!({"storageClass": "a"}),
        json!({"storageClass": "b"})
    ));
    assert!(!update_accepted(json!({}), json!({"storageClass": "b"})));
    assert!(!update_accepted(json!({"storageClass": "a"}), json!({})));
    assert!(update_accepted(json!({}), json!({"replicas": 3})));
}

#[test]
fn names_rules() {
    assert!(!accepted(json!({"users": {"bad user": {}}})));
    assert!(!accepted(json!({"users": {"pg_x": {}}})));
    assert!(accepted(json!({"users": {"App-User.1": {}}})));
    assert!(!accepted(json!({"databases": {"a/b": {}}})));
    assert!(accepted(json!({"databases": {"My DB": {}}})));
    assert!(!accepted(
        json!({"databases": {"app": {"roles": {"Admin": []}}}})
    ));
    assert!(!accepted(
        json!({"databases": {"app": {"extensions": ["bad name"]}}})
    ));
}

/// Setting values are numbers, strings or booleans, which a structural schema can only
/// leave untyped, and the API server cannot compile a rule over untyped values: setting
/// names and values are checked by the operator's own validation (tests/render_errors.rs),
/// not by the CRD.
#[test]
fn no_rule_reads_the_untyped_setting_values() {
    let all = all_rules();
    let offending: Vec<&(String, Value, String)> = all
        .iter()
        .filter(|(path, _, rule)| path.contains("postgresql") || rule.contains("parameters"))
        .collect();
    assert!(offending.is_empty(), "{offending:?}");
    assert!(accepted(
        json!({"postgresql": {"parameters": {"max_connections": "100", "checkpoint_completion_target": 0.9, "fsync": true}}})
    ));
}

#[test]
fn backup_rules() {
    assert!(!accepted(json!({"backup": {"enabled": true}})));
    assert!(accepted(
        json!({"backup": {"enabled": true, "s3Bucket": "s3.example.org/b"}})
    ));
    assert!(!accepted(
        json!({"backup": {"s3AccessKey": "a", "credentialsSecretRef": {"name": "s"}}})
    ));
}

#[test]
fn a_backup_record_may_not_ask_to_delete_its_snapshots_yet() {
    let crd = crdgen::crds()
        .into_iter()
        .map(|crd| serde_json::to_value(crd).unwrap())
        .find(|crd| crd["spec"]["names"]["kind"] == "PostgresBackup")
        .unwrap();
    let compiled = compile_schema(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]);
    let record = |policy: &str| json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "PostgresBackup", "metadata": {"name": "b"}, "spec": {"postgres": "demo", "snapshotDeletionPolicy": policy}});
    let validate = |object: &Value| Validator::new().validate_compiled(&compiled, object, None);
    assert!(validate(&record("Retain")).is_ok());
    let refused = validate(&record("Delete")).unwrap_err();
    assert!(
        format!("{refused:?}").contains("Delete is not supported yet"),
        "{refused:?}"
    );
}

#[test]
fn metadata_name_rule() {
    let named = |name: &str| json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres", "metadata": {"name": name}, "spec": {}});
    assert!(validate_with_crd_rules(&named("ok-name"), None).is_ok());
    assert!(validate_with_crd_rules(&named("Upper"), None).is_err());
    assert!(validate_with_crd_rules(&named(&"a".repeat(40)), None).is_err());
}

/// The API server's own CRD validation (structural schema, CEL compilation, per-rule and
/// per-CRD cost budgets), built from Kubernetes' code by scripts/install-k8s-code.sh,
/// accepts the CRDs exactly as the operator generates them.
#[test]
fn kubernetes_own_validation_accepts_the_generated_crds() {
    let checker = concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/k8s/bin/crd-check");
    assert!(
        std::path::Path::new(checker).exists(),
        "{checker} is missing: run scripts/install-test-deps.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crds.yaml");
    std::fs::write(&file, crdgen::crds_yaml().unwrap()).unwrap();
    let out = std::process::Command::new(checker)
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for crd in crdgen::crds() {
        let name = crd.metadata.name.unwrap();
        assert!(stdout.contains(&format!("ok {name}")), "{stdout}");
    }
}
