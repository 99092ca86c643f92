//! The CEL rules in our CRDs: each compiles, every map and list a rule iterates is
//! bounded (the API server rejects CRDs whose rules have unbounded estimated cost), and
//! each rule decides good and bad samples (tests/support/crd_rule_cases.rs) as the API
//! server does.

mod support;

use kube::core::cel::{CompiledSchema, Validator, apply_defaults, compile_schema};
use postgres_operator::crdgen;
use postgres_operator::render::{Source, parse_postgres};
use postgres_operator::validate::validate_with_crd_rules;
use serde_json::Value;
use support::crd_rule_cases::{Case, DecidedBy, cases};

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
}

/// The compiled schema of a CRD kind, and the schema itself (for its defaults).
fn compiled_schema(kind: &str) -> (Value, CompiledSchema) {
    let crd = crdgen::crds()
        .into_iter()
        .map(|crd| serde_json::to_value(crd).unwrap())
        .find(|crd| crd["spec"]["names"]["kind"] == kind)
        .unwrap();
    let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    let compiled = compile_schema(&schema);
    (schema, compiled)
}

/// The kube-rs CEL evaluation of a case: for a Postgres the one `render` uses, for a
/// PostgresBackup the same evaluation on its CRD. `Err` holds the messages.
fn cel_verdict(case: &Case) -> Result<(), String> {
    if case.kind() == "Postgres" {
        return validate_with_crd_rules(&case.object, case.old.as_ref()).map_err(|e| e.to_string());
    }
    let (schema, compiled) = compiled_schema(case.kind());
    let object = apply_defaults(&schema, &case.object);
    let old = case.old.as_ref().map(|old| apply_defaults(&schema, old));
    Validator::new()
        .validate_compiled(&compiled, &object, old.as_ref())
        .map_err(|e| format!("{e:?}"))
}

/// What `render` decides for a new Postgres (schema, operator validation, CEL rules).
fn render_verdict(object: &Value) -> Result<(), String> {
    let source = Source {
        file: "case.yaml".to_string(),
        document: 1,
    };
    parse_postgres(&source, object)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Every case of the shared table (tests/support/crd_rule_cases.rs, which the real API
/// server decides in tests/real_admission.rs) is decided by the kube-rs CEL evaluation as
/// the table says, with the rule's message; a case the schema decides is left to `render`,
/// which refuses or accepts each new Postgres as the table says.
#[test]
fn the_cel_evaluation_decides_every_rule_case_as_the_api_server_does() {
    let mut disagreements = Vec::new();
    for case in cases() {
        let cel = cel_verdict(&case);
        let cel_expected = match case.decided_by {
            DecidedBy::Cel => case.refused_with,
            DecidedBy::Schema => None,
        };
        match (&cel, cel_expected) {
            (Ok(()), None) => {}
            (Err(messages), Some(message)) if messages.contains(message) => {}
            _ => disagreements.push(format!(
                "{}: CEL evaluation gave {cel:?}, expected {cel_expected:?}",
                case.name
            )),
        }
        if case.kind() == "Postgres" && case.old.is_none() {
            let render = render_verdict(&case.object);
            if render.is_ok() != case.refused_with.is_none() {
                disagreements.push(format!(
                    "{}: render gave {render:?}, expected {:?}",
                    case.name, case.refused_with
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

/// The API server's own CRD validation (structural schema, CEL compilation, per-rule and
/// per-CRD cost budgets), built from Kubernetes' code by scripts/install-k8s-code.sh,
/// accepts the CRDs exactly as the operator generates them.
#[test]
fn kubernetes_own_validation_accepts_the_generated_crds() {
    let checker = support::validators::k8s_bin("crd-check");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crds.yaml");
    std::fs::write(&file, crdgen::crds_yaml().unwrap()).unwrap();
    let stdout = support::succeed(
        std::process::Command::new(checker).arg(&file),
        "the CRD check",
    );
    for crd in crdgen::crds() {
        let name = crd.metadata.name.unwrap();
        assert!(stdout.contains(&format!("ok {name}")), "{stdout}");
    }
}
