//! The CustomResourceDefinitions this operator serves, as YAML.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

use crate::api::{Postgres, PostgresBackup};

/// Every CRD of the operator, in install order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![with_bounded_name(Postgres::crd()), PostgresBackup::crd()]
}

/// Declares `metadata.name` as the string Kubernetes makes it (a DNS subdomain, at most
/// 253 characters). The API server estimates the cost of a CEL rule from the declared
/// bounds of what it reads, and costs an undeclared string as megabytes long: without
/// this, the root rule that checks the name alone exceeds the CRD's whole budget.
fn with_bounded_name(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let name = JSONSchemaProps {
        type_: Some("string".into()),
        max_length: Some(253),
        ..JSONSchemaProps::default()
    };
    let metadata = JSONSchemaProps {
        type_: Some("object".into()),
        properties: Some([("name".to_string(), name)].into()),
        ..JSONSchemaProps::default()
    };
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema
                .properties
                .get_or_insert_with(Default::default)
                .insert("metadata".into(), metadata.clone());
        }
    }
    crd
}

/// All CRDs as one multi-document YAML stream, as written to `crds/`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
