//! Real validators for what we emit: the `kubernetes-validate` CLI (Kubernetes OpenAPI
//! schemas), a JSON-Schema validation of custom resources against our CRDs, and the
//! Kubernetes structural-schema rules. The tools come from `scripts/install-test-deps.sh`;
//! a missing tool fails the test rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool of the test virtualenv.
pub fn tools_bin(name: &str) -> PathBuf {
    installed(".tools/venv/bin", name)
}

/// A tool built from Kubernetes' own code by `scripts/install-k8s-code.sh`.
pub fn k8s_bin(name: &str) -> PathBuf {
    installed(".tools/k8s/bin", name)
}

/// `name` under `dir` of the repository, where the test script installs it.
fn installed(dir: &str, name: &str) -> PathBuf {
    let path = repo().join(dir).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/install-test-deps.sh` (or scripts/test.sh)",
        path.display()
    );
    path
}

/// The `servant` rules (a JSON array of RBAC PolicyRules) that the `owner` rules do not
/// cover, as Kubernetes' own comparison decides (`rbac-check`: the escalation check of
/// a Role's creation, and whether rules allow a request); empty when all are covered.
pub fn rbac_uncovered(owner: &Value, servant: &Value) -> Vec<String> {
    use std::io::Write;
    let mut child = Command::new(k8s_bin("rbac-check"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::json!({"owner": owner, "servant": servant});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => {
            assert_eq!(stdout.trim(), "covered");
            Vec::new()
        }
        Some(1) => stdout.lines().map(str::to_string).collect(),
        _ => panic!(
            "rbac-check failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn write_temp(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

/// Validates every document in strict mode (unknown fields are errors). A kind without a
/// schema in the tool (a custom resource) is reported by the tool only as a warning; here
/// it is an error, since everything we validate this way must be a built-in kind.
pub fn kubernetes_validate(yaml: &str, version: &str) -> Result<(), String> {
    let file = write_temp(yaml);
    let out = Command::new(tools_bin("kubernetes-validate"))
        .args(["-k", version, "--strict", "--quiet"])
        .arg(file.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.contains("ERROR") || text.contains("Couldn't find schema") {
        return Err(text);
    }
    Ok(())
}

/// The oldest Kubernetes version we support (1.30) and the newest the tool ships.
pub fn kubernetes_validate_versions() -> Vec<String> {
    let python = tools_bin("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import kubernetes_validate, os; d = os.path.join(os.path.dirname(kubernetes_validate.__file__), 'kubernetes-json-schema'); print('\\n'.join(os.listdir(d)))",
        ])
        .output()
        .unwrap();
    let mut versions: Vec<(u32, u32, u32)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|name| {
            let version = name.strip_prefix('v')?.strip_suffix("-local-strict")?;
            let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??, parts.next()??))
        })
        .collect();
    versions.sort();
    let newest = *versions
        .last()
        .expect("kubernetes-validate ships no schemas");
    assert!(
        versions.contains(&(1, 30, 0)),
        "kubernetes-validate lacks 1.30: {versions:?}"
    );
    vec![
        "1.30.0".to_string(),
        format!("{}.{}.{}", newest.0, newest.1, newest.2),
    ]
}

/// Validates custom-resource documents against the matching CRD's schema.
pub fn validate_against_crd(crds_yaml: &str, instances_yaml: &str) -> Result<(), String> {
    let crds = write_temp(crds_yaml);
    let instances = write_temp(instances_yaml);
    let out = Command::new(tools_bin("python"))
        .arg(repo().join("scripts/validate_crd_instance.py"))
        .arg(crds.path())
        .arg(instances.path())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Kubernetes structural-schema rules, on every version of every CRD in the stream.
pub fn check_structural_schema(crds_yaml: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    for document in serde_yaml::Deserializer::from_str(crds_yaml) {
        let crd: Value = serde::Deserialize::deserialize(document).map_err(|e| e.to_string())?;
        if crd.is_null() {
            continue;
        }
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
            let root = &version["schema"]["openAPIV3Schema"];
            let path = format!("{kind}/{}", version["name"].as_str().unwrap_or("?"));
            structural(root, &path, false, &mut problems);
            if root["properties"]["spec"]
                .get("x-kubernetes-preserve-unknown-fields")
                .is_some()
            {
                problems.push(format!(
                    "{path}.spec: x-kubernetes-preserve-unknown-fields at the root of spec"
                ));
            }
            let metadata = &root["properties"]["metadata"];
            if let Some(props) = metadata.get("properties").and_then(Value::as_object)
                && props.keys().any(|k| k != "name" && k != "generateName")
            {
                problems.push(format!(
                    "{path}.metadata: only name and generateName may be restricted"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn structural(node: &Value, path: &str, in_junction: bool, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else { return };
    let flag = |key: &str| map.get(key).and_then(Value::as_bool).unwrap_or(false);
    if in_junction {
        for forbidden in [
            "type",
            "default",
            "additionalProperties",
            "nullable",
            "description",
        ] {
            if map.contains_key(forbidden) {
                problems.push(format!("{path}: {forbidden} inside allOf/anyOf/oneOf/not"));
            }
        }
    } else if map
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        problems.push(format!("{path}: no type"));
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            structural(child, &format!("{path}.{name}"), in_junction, problems);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get(key).filter(|c| c.is_object()) {
            structural(child, &format!("{path}.{key}"), in_junction, problems);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, child) in map
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            structural(child, &format!("{path}.{key}[{i}]"), true, problems);
        }
    }
    if let Some(child) = map.get("not") {
        structural(child, &format!("{path}.not"), true, problems);
    }
}

/// One sample of a parsed scrape.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct ParsedSample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// One metric family of a parsed scrape.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct ParsedFamily {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub samples: Vec<ParsedSample>,
}

/// `text` parsed by the Prometheus Python client's OpenMetrics parser (strict: a
/// malformed line, a counter without `_total`, a missing `# EOF` are errors).
pub fn parse_openmetrics(text: &str) -> Result<Vec<ParsedFamily>, String> {
    use std::io::Write;
    let mut child = Command::new(tools_bin("python"))
        .args([
            "-c",
            "import json, sys\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
             families = [{'name': f.name, 'type': f.type, 'samples': [\n\
                 {'name': s.name, 'labels': s.labels, 'value': s.value} for s in f.samples]}\n\
                 for f in text_string_to_metric_families(sys.stdin.read())]\n\
             print(json.dumps(families))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Runs Debian's `promtool` with `args` in `dir`: what it printed, `Err` when it failed.
pub fn promtool(args: &[&str], dir: &Path) -> Result<String, String> {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e} (Debian's prometheus package: run scripts/install-test-deps.sh)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
