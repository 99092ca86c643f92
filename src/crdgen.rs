//! The CustomResourceDefinitions this operator serves, as YAML.

use kube::CustomResourceExt;

use crate::api::{Postgres, PostgresBackup};

/// Every CRD of the operator, in install order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![Postgres::crd(), PostgresBackup::crd()]
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
