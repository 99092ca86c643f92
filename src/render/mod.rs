//! `postgres-operator render`: Postgres manifests in, every object the controller would
//! apply out, without a cluster. Input is checked the way the API server and the
//! controller check it, and every problem is reported with the field path.

mod schema_check;

use std::sync::LazyLock;

use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::Value;

use crate::api::{API_VERSION, Postgres};
use crate::manifests::secrets::{ExistingSecrets, PasswordGenerator};
use crate::manifests::tls::CertificateIssuer;
use crate::manifests::{Cluster, ManagedObject, OperatorSettings, desired_objects};
use crate::validate::{self, FieldError};

/// Where a manifest came from, for messages: a file name and the document's position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {})", self.file, self.document)
    }
}

/// Why a manifest could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{file}: {message}")]
    Unreadable { file: String, message: String },
    #[error("{file}: not valid YAML: {message}")]
    NotYaml { file: String, message: String },
    #[error("{file}: no Postgres manifest found (the input is empty)")]
    Empty { file: String },
    #[error("{origin}: expected an object with apiVersion, kind and metadata, got {found}")]
    NotAnObject { origin: Source, found: String },
    #[error(
        "{origin}: {found} is not supported: render reads Postgres manifests (apiVersion: {API_VERSION}, kind: Postgres)"
    )]
    WrongKind { origin: Source, found: String },
    #[error("{origin}: metadata.name: {message}")]
    BadName { origin: Source, message: String },
    #[error("{origin}: Postgres {name:?} is invalid:\n{}", list(.errors))]
    Invalid {
        origin: Source,
        name: String,
        errors: Vec<FieldError>,
    },
    #[error("{origin}: {source}")]
    Certificates {
        origin: Source,
        #[source]
        source: crate::manifests::tls::TlsError,
    },
    #[error("{origin}: cannot serialize {kind} {object}: {message}")]
    Serialize {
        origin: Source,
        kind: String,
        object: String,
        message: String,
    },
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Output formats of `render`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Yaml,
    Json,
}

/// The manifests of one input, valid or not.
pub struct RenderedCluster {
    pub origin: Source,
    pub objects: Vec<ManagedObject>,
}

/// Schema of `Postgres` as the API server sees it.
static POSTGRES_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    serde_json::to_value(Postgres::crd())
        .ok()
        .and_then(|crd| {
            crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
                .cloned()
        })
        .unwrap_or(Value::Null)
});

/// Splits one file's text into YAML documents, skipping empty ones (`---` alone).
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<(Source, Value)>, RenderError> {
    let mut documents = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|e| RenderError::NotYaml {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        if !value.is_null() {
            documents.push((
                Source {
                    file: file.to_string(),
                    document: index + 1,
                },
                value,
            ));
        }
    }
    if documents.is_empty() {
        return Err(RenderError::Empty {
            file: file.to_string(),
        });
    }
    Ok(documents)
}

/// Checks one manifest as `kubectl apply` and the controller would, and returns the
/// typed object.
pub fn parse_postgres(source: &Source, value: &Value) -> Result<Postgres, RenderError> {
    let Some(map) = value.as_object() else {
        return Err(RenderError::NotAnObject {
            origin: source.clone(),
            found: short(value),
        });
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version != API_VERSION || kind != "Postgres" {
        let found = match (api_version, kind) {
            ("", "") => "a manifest without apiVersion and kind".to_string(),
            (a, "") => format!("a manifest without kind (apiVersion {a})"),
            ("", k) => format!("kind {k} without apiVersion"),
            (a, k) => format!("kind {k} (apiVersion {a})"),
        };
        return Err(RenderError::WrongKind {
            origin: source.clone(),
            found,
        });
    }
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    check_name(name).map_err(|message| RenderError::BadName {
        origin: source.clone(),
        message,
    })?;
    let invalid = |errors: Vec<FieldError>| RenderError::Invalid {
        origin: source.clone(),
        name: name.to_string(),
        errors,
    };

    let mut errors = Vec::new();
    if let Some(spec) = map.get("spec")
        && let Some(spec_schema) = POSTGRES_SCHEMA.pointer("/properties/spec")
    {
        schema_check::check(spec_schema, spec, "spec", &mut errors);
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let defaulted = kube::core::cel::apply_defaults(&POSTGRES_SCHEMA, value);
    let postgres: Postgres = serde_path_to_error::deserialize(&defaulted).map_err(|e| {
        invalid(vec![FieldError {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        }])
    })?;
    validate::validate_spec(&postgres.spec).map_err(|e| invalid(e.0))?;
    // The CRD's own CEL rules last: what they catch beyond the checks above (if
    // anything) is reported with the API server's message.
    validate::validate_with_crd_rules(value, None).map_err(|e| invalid(e.0))?;
    Ok(postgres)
}

/// `metadata.name` becomes part of every object name (`postgres-<name>-external-write`
/// must be a valid 63-character Service name).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".to_string());
    }
    let max = crate::api::MAX_NAME_LENGTH;
    let starts_with_letter = name.starts_with(|c: char| c.is_ascii_lowercase());
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !starts_with_letter || !valid_chars || name.ends_with('-') || name.len() > max {
        return Err(format!(
            "{name:?} is not allowed: use at most {max} lowercase letters, digits and '-', starting with a letter and not ending with '-' (object names such as postgres-<name>-external-write must fit in 63 characters)"
        ));
    }
    Ok(())
}

fn short(value: &Value) -> String {
    match value {
        Value::Array(_) => "a list".to_string(),
        Value::String(s) => format!("the string {:?}", s.chars().take(40).collect::<String>()),
        other => other.to_string().chars().take(40).collect(),
    }
}

/// Renders every object for one valid Postgres. Secrets get fresh passwords from
/// `passwords` where the spec gives none, and fresh certificates from `certificates`
/// (there is no cluster to read existing ones from).
pub fn render_postgres(
    postgres: &Postgres,
    namespace: &str,
    settings: &OperatorSettings,
    passwords: &mut dyn PasswordGenerator,
    certificates: &mut dyn CertificateIssuer,
) -> Result<Vec<ManagedObject>, crate::manifests::tls::TlsError> {
    let cluster = Cluster::new(postgres, namespace, settings);
    desired_objects(
        &cluster,
        &ExistingSecrets::new(),
        &[],
        passwords,
        certificates,
    )
}

/// Parses, checks and renders every manifest of every input, in input order. All inputs
/// are checked; the errors of every invalid one are returned together.
pub fn render_inputs(
    inputs: &[(String, String)],
    namespace: &str,
    settings: &OperatorSettings,
    passwords: &mut dyn PasswordGenerator,
    certificates: &mut dyn CertificateIssuer,
) -> Result<Vec<RenderedCluster>, Vec<RenderError>> {
    let mut rendered = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in inputs {
        let documents = match parse_documents(file, text) {
            Ok(documents) => documents,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for (source, value) in documents {
            match parse_postgres(&source, &value) {
                Ok(mut postgres) => {
                    if postgres.metadata.namespace.is_none() {
                        postgres.metadata.namespace = Some(namespace.to_string());
                    }
                    match render_postgres(&postgres, namespace, settings, passwords, certificates) {
                        Ok(objects) => rendered.push(RenderedCluster {
                            origin: source,
                            objects,
                        }),
                        Err(e) => errors.push(RenderError::Certificates {
                            origin: source,
                            source: e,
                        }),
                    }
                }
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(rendered)
    } else {
        Err(errors)
    }
}

/// Writes the objects as a multi-document YAML stream or a JSON `v1 List`.
pub fn format_objects(
    clusters: &[RenderedCluster],
    format: OutputFormat,
) -> Result<String, RenderError> {
    let mut out = String::new();
    let mut items = Vec::new();
    for cluster in clusters {
        for object in &cluster.objects {
            let failed = |message: String| RenderError::Serialize {
                origin: cluster.origin.clone(),
                kind: object.kind().to_string(),
                object: object.name().to_string(),
                message,
            };
            let value = object.to_json().map_err(|e| failed(e.to_string()))?;
            match format {
                OutputFormat::Yaml => {
                    out.push_str("---\n");
                    out.push_str(
                        &serde_yaml::to_string(&value).map_err(|e| failed(e.to_string()))?,
                    );
                }
                OutputFormat::Json => items.push(value),
            }
        }
    }
    if format == OutputFormat::Json {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        // Serializing a serde_json::Value cannot fail: all keys are strings.
        out = serde_json::to_string_pretty(&list).unwrap_or_default();
        out.push('\n');
    }
    Ok(out)
}
