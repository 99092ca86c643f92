//! `render` on bad input: every case fails, and the message names the place (file,
//! document, object, field path) and what is allowed. Nothing is rendered for a bad input.

mod support;

use postgres_operator::manifests::OperatorSettings;
use support::{render, render_ok};

const HEAD: &str =
    "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: demo\n";

/// Renders one input named `bad.yaml` and returns the joined error messages.
fn render_error(text: &str) -> String {
    match render(
        &[("bad.yaml", text)],
        "default",
        &OperatorSettings::default(),
    ) {
        Ok(rendered) => panic!(
            "expected an error, rendered {} objects for:\n{text}",
            rendered.iter().map(|c| c.objects.len()).sum::<usize>()
        ),
        Err(errors) => errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn spec(body: &str) -> String {
    format!("{HEAD}spec:\n{body}")
}

/// (case, input, fragments every one of which the message must contain)
fn cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        ("empty file", String::new(), vec!["bad.yaml", "no Postgres manifest found"]),
        ("only separators", "---\n---\n".to_string(), vec!["no Postgres manifest found"]),
        ("not yaml", "spec: [unclosed\n".to_string(), vec!["bad.yaml", "not valid YAML"]),
        ("tabs are not yaml", "spec:\n\tsize: 1Gi\n".to_string(), vec!["not valid YAML"]),
        ("scalar document", "just a string\n".to_string(), vec!["document 1", "expected an object"]),
        ("list document", "- a\n- b\n".to_string(), vec!["expected an object", "a list"]),
        (
            "wrong kind",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n".to_string(),
            vec!["kind Deployment (apiVersion apps/v1) is not supported", "kind: Postgres"],
        ),
        (
            "wrong version",
            "apiVersion: apps.cozystack.io/v1\nkind: Postgres\nmetadata:\n  name: x\n".to_string(),
            vec!["apiVersion apps.cozystack.io/v1", "apps.cozystack.io/v1alpha1"],
        ),
        ("missing kind", "metadata:\n  name: x\n".to_string(), vec!["without apiVersion and kind"]),
        (
            "missing name",
            "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {}\n".to_string(),
            vec!["metadata.name", "is required"],
        ),
        (
            "name too long",
            "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: a-very-long-cluster-name-that-does-not-fit-anywhere\n".to_string(),
            vec!["metadata.name", "at most 39"],
        ),
        (
            "name with upper case",
            "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: Demo\n".to_string(),
            vec!["metadata.name", "lowercase"],
        ),
        ("replicas as word", spec("  replicas: three\n"), vec!["spec.replicas", "must be an integer", "\"three\""]),
        ("replicas as float", spec("  replicas: 2.5\n"), vec!["spec.replicas", "must be an integer"]),
        ("negative replicas", spec("  replicas: -1\n"), vec!["spec.replicas", "at least 1"]),
        ("zero replicas", spec("  replicas: 0\n"), vec!["spec.replicas", "at least 1"]),
        ("external as string", spec("  external: maybe\n"), vec!["spec.external", "true or false"]),
        ("unknown field", spec("  replica: 3\n"), vec!["spec.replica", "unknown field", "replicas"]),
        ("unknown nested field", spec("  backup:\n    bucket: x\n"), vec!["spec.backup.bucket", "unknown field", "s3Bucket"]),
        ("users as list", spec("  users:\n    - alice\n"), vec!["spec.users", "must be an object"]),
        ("parameter as list", spec("  postgresql:\n    parameters:\n      work_mem: [1, 2]\n"), vec!["spec.postgresql.parameters", "work_mem"]),
        ("parameter as object", spec("  postgresql:\n    parameters:\n      fsync:\n        a: 1\n"), vec!["spec.postgresql.parameters.fsync", "a number, a string or a boolean"]),
        ("invalid quantity", spec("  size: 10GB\n"), vec!["spec.size", "10GB"]),
        ("negative size", spec("  size: -5Gi\n"), vec!["spec.size"]),
        ("zero size", spec("  size: \"0\"\n"), vec!["spec.size"]),
        ("bad version", spec("  version: v12\n"), vec!["spec.version", "v12", "v13"]),
        ("bad preset", spec("  resourcesPreset: huge\n"), vec!["spec.resourcesPreset", "huge", "nano"]),
        ("bad cpu", spec("  resources:\n    cpu: lots\n"), vec!["spec.resources.cpu", "lots"]),
        (
            "min greater than max",
            spec("  replicas: 3\n  quorum:\n    minSyncReplicas: 2\n    maxSyncReplicas: 1\n"),
            vec!["spec.quorum.minSyncReplicas", "maxSyncReplicas"],
        ),
        (
            "max not below replicas",
            spec("  replicas: 2\n  quorum:\n    minSyncReplicas: 0\n    maxSyncReplicas: 2\n"),
            vec!["spec.quorum.maxSyncReplicas", "less than spec.replicas"],
        ),
        (
            "unknown role user",
            spec("  users:\n    alice: {}\n  databases:\n    app:\n      roles:\n        admin:\n          - bob\n"),
            vec!["spec.databases", "bob", "alice"],
        ),
        ("storage class with capitals", spec("  storageClass: Fast_SSD\n"), vec!["spec.storageClass", "DNS subdomain", "Fast_SSD"]),
        ("storage class ending in a dot", spec("  storageClass: fast.\n"), vec!["spec.storageClass", "fast."]),
        ("user with space", spec("  users:\n    \"bad user\": {}\n"), vec!["spec.users", "bad user"]),
        ("user with quote", spec("  users:\n    \"o'neil\": {}\n"), vec!["spec.users", "o'neil"]),
        ("reserved user", spec("  users:\n    postgres: {}\n"), vec!["spec.users", "postgres", "reserved"]),
        ("pg_ user", spec("  users:\n    pg_monitor2: {}\n"), vec!["spec.users", "pg_"]),
        ("database with slash", spec("  databases:\n    \"a/b\": {}\n"), vec!["spec.databases", "a/b", "/"]),
        ("template database", spec("  databases:\n    template1: {}\n"), vec!["spec.databases", "template1"]),
        ("bad role kind", spec("  databases:\n    app:\n      roles:\n        Admin: []\n"), vec!["spec.databases", "Admin"]),
        ("bad extension", spec("  databases:\n    app:\n      extensions:\n        - \"x; DROP\"\n"), vec!["spec.databases", "extension"]),
        ("owned parameter port", spec("  postgresql:\n    parameters:\n      port: 5433\n"), vec!["spec.postgresql.parameters", "port", "operator"]),
        ("owned parameter ssl", spec("  postgresql:\n    parameters:\n      ssl_ciphers: HIGH\n"), vec!["spec.postgresql.parameters", "ssl_ciphers"]),
        (
            "code loading parameter",
            spec("  postgresql:\n    parameters:\n      shared_preload_libraries: evil\n"),
            vec!["spec.postgresql.parameters", "shared_preload_libraries"],
        ),
        (
            "archive command",
            spec("  postgresql:\n    parameters:\n      archive_command: \"rm -rf /\"\n"),
            vec!["spec.postgresql.parameters", "archive_command"],
        ),
        (
            "unknown setting",
            spec("  postgresql:\n    parameters:\n      max_conections: 100\n"),
            vec!["spec.postgresql.parameters.max_conections", "unknown to PostgreSQL 18", "did you mean max_connections"],
        ),
        (
            "setting of another major",
            spec("  version: v15\n  postgresql:\n    parameters:\n      io_method: worker\n"),
            vec!["spec.postgresql.parameters.io_method", "unknown to PostgreSQL 15"],
        ),
        (
            "word for an integer setting",
            spec("  postgresql:\n    parameters:\n      max_connections: lots\n"),
            vec!["spec.postgresql.parameters.max_connections", "must be an integer between 1 and 262143 (PostgreSQL 18), got \"lots\""],
        ),
        (
            "setting out of range",
            spec("  postgresql:\n    parameters:\n      max_connections: 0\n"),
            vec!["spec.postgresql.parameters.max_connections", "between 1 and 262143", "out of range"],
        ),
        (
            "setting out of range after its unit",
            spec("  postgresql:\n    parameters:\n      shared_buffers: 64kB\n"),
            vec!["spec.postgresql.parameters.shared_buffers", "between 16 and 1073741823 8kB", "that is 8 8kB"],
        ),
        (
            "bad memory unit",
            spec("  postgresql:\n    parameters:\n      shared_buffers: 256mb\n"),
            vec!["spec.postgresql.parameters.shared_buffers", "\"mb\" is not one of its units", "B, kB, MB, GB, TB"],
        ),
        (
            "time unit on a memory setting",
            spec("  postgresql:\n    parameters:\n      work_mem: 10s\n"),
            vec!["spec.postgresql.parameters.work_mem", "\"s\" is not one of its units"],
        ),
        (
            "bad enum value",
            spec("  postgresql:\n    parameters:\n      log_min_messages: loud\n"),
            vec!["spec.postgresql.parameters.log_min_messages", "must be one of debug5", "panic", "\"loud\""],
        ),
        (
            "bad boolean",
            spec("  postgresql:\n    parameters:\n      fsync: maybe\n"),
            vec!["spec.postgresql.parameters.fsync", "must be a boolean", "\"maybe\""],
        ),
        (
            "number for a real setting",
            spec("  postgresql:\n    parameters:\n      checkpoint_completion_target: high\n"),
            vec!["spec.postgresql.parameters.checkpoint_completion_target", "must be a number between 0 and 1"],
        ),
        (
            "read-only setting",
            spec("  postgresql:\n    parameters:\n      block_size: 8192\n"),
            vec!["spec.postgresql.parameters.block_size", "read-only"],
        ),
        (
            "bad cron six fields",
            spec("  backup:\n    enabled: true\n    s3Bucket: s3.example.org/b\n    schedule: \"0 0 2 * * *\"\n"),
            vec!["spec.backup.schedule", "5 fields"],
        ),
        (
            "bad cron range",
            spec("  backup:\n    enabled: true\n    s3Bucket: s3.example.org/b\n    schedule: \"61 2 * * *\"\n"),
            vec!["spec.backup.schedule", "61"],
        ),
        (
            "bad cleanup flag",
            spec("  backup:\n    enabled: true\n    s3Bucket: s3.example.org/b\n    cleanupStrategy: \"--keep-last=3 --prune\"\n"),
            vec!["spec.backup.cleanupStrategy", "--prune", "--keep-last"],
        ),
        (
            "cleanup value not a number",
            spec("  backup:\n    enabled: true\n    s3Bucket: s3.example.org/b\n    cleanupStrategy: \"--keep-daily=x\"\n"),
            vec!["spec.backup.cleanupStrategy", "--keep-daily"],
        ),
        ("backup without bucket", spec("  backup:\n    enabled: true\n"), vec!["spec.backup.s3Bucket", "required"]),
        (
            "bucket with another scheme",
            spec("  backup:\n    enabled: true\n    s3Bucket: ftp://s3.example.org/b\n"),
            vec!["spec.backup.s3Bucket", "\"ftp://s3.example.org/b\"", "only http:// and https://", "http(s)://host/bucket[/prefix]"],
        ),
        (
            "bucket with restic's s3: prefix",
            spec("  backup:\n    enabled: true\n    s3Bucket: s3:s3.example.org/b\n"),
            vec!["spec.backup.s3Bucket", "leave out the \"s3:\" prefix"],
        ),
        (
            "http endpoint without a bucket",
            spec("  backup:\n    enabled: true\n    s3Bucket: http://minio.storage:9000/\n"),
            vec!["spec.backup.s3Bucket", "the bucket is missing"],
        ),
        (
            "endpoint with keys in it",
            spec("  backup:\n    enabled: true\n    s3Bucket: https://ak:sk@s3.example.org/b\n"),
            vec!["spec.backup.s3Bucket", "no credentials"],
        ),
        (
            "endpoint with a bad port",
            spec("  backup:\n    enabled: true\n    s3Bucket: http://minio:nine/b\n"),
            vec!["spec.backup.s3Bucket", "invalid S3 host"],
        ),
        (
            "private CA for a plain http endpoint",
            spec("  backup:\n    enabled: true\n    s3Bucket: http://minio.storage:9000/b\n    s3CASecretRef: {name: minio-ca}\n"),
            vec!["spec.backup.s3CASecretRef", "only to an https:// endpoint"],
        ),
        (
            "private CA key that is no Secret key",
            spec("  backup:\n    enabled: true\n    s3Bucket: https://minio.storage/b\n    s3CASecretRef: {name: minio-ca, key: ../ca.crt}\n"),
            vec!["spec.backup.s3CASecretRef.key", "../ca.crt"],
        ),
        (
            "private CA without a Secret name",
            spec("  backup:\n    enabled: true\n    s3Bucket: https://minio.storage/b\n    s3CASecretRef: {name: \"\"}\n"),
            vec!["spec.backup.s3CASecretRef.name", "must name a Secret"],
        ),
        (
            "partial credentials",
            spec("  backup:\n    enabled: true\n    s3Bucket: s3.example.org/b\n    s3AccessKey: AK\n"),
            vec!["spec.backup", "s3SecretKey"],
        ),
    ]
}

#[test]
fn every_bad_input_is_refused_with_a_precise_message() {
    let cases = cases();
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for (case, input, fragments) in &cases {
        let message = render_error(input);
        for fragment in fragments {
            if !message.contains(fragment) {
                failures.push(format!("{case}: {fragment:?} missing from:\n{message}\n"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn errors_name_the_file_document_and_object() {
    let text = format!(
        "{HEAD}spec:\n  replicas: 1\n---\n{}",
        HEAD.replace("demo", "second") + "spec:\n  replicas: 0\n"
    );
    let message = render_error(&text);
    assert!(
        message.contains("bad.yaml (document 2): Postgres \"second\""),
        "{message}"
    );
    assert!(
        !message.contains("\"demo\""),
        "the valid document is not reported: {message}"
    );
}

#[test]
fn every_invalid_document_is_reported_not_just_the_first() {
    let text = format!(
        "{}spec:\n  replicas: 0\n---\n{}spec:\n  size: huge\n",
        HEAD,
        HEAD.replace("demo", "other")
    );
    let message = render_error(&text);
    assert!(
        message.contains("spec.replicas") && message.contains("spec.size"),
        "{message}"
    );
}

#[test]
fn all_problems_of_one_object_are_reported_together() {
    let message = render_error(&spec(
        "  replicas: 2\n  quorum:\n    minSyncReplicas: 0\n    maxSyncReplicas: 2\n  users:\n    postgres: {}\n",
    ));
    assert!(message.contains("spec.quorum.maxSyncReplicas"), "{message}");
    assert!(message.contains("spec.users"), "{message}");
}

#[test]
fn http_and_https_endpoints_are_accepted_and_reach_the_backup_jobs_as_given() {
    for (bucket, extra, base) in [
        (
            "http://minio.storage:9000/pg/team",
            "",
            "s3:http://minio.storage:9000/pg/team",
        ),
        (
            "https://minio.storage/pg",
            "    s3CASecretRef: {name: minio-ca}\n",
            "s3:https://minio.storage/pg",
        ),
    ] {
        let text = spec(&format!(
            "  backup:\n    enabled: true\n    s3Bucket: {bucket}\n{extra}"
        ));
        let rendered = render_ok(
            &[("ok.yaml", &text)],
            "default",
            &OperatorSettings::default(),
        );
        let yaml = postgres_operator::render::format_objects(
            &rendered,
            postgres_operator::render::OutputFormat::Yaml,
        )
        .unwrap();
        assert!(
            yaml.contains(&format!("value: {base}\n")),
            "{bucket}: {yaml}"
        );
    }
}

#[test]
fn cozystack_string_numbers_and_empty_storage_class_are_accepted() {
    let text = spec(
        "  storageClass: \"\"\n  postgresql:\n    parameters:\n      max_connections: \"100\"\n",
    );
    let rendered = render_ok(
        &[("ok.yaml", &text)],
        "default",
        &OperatorSettings::default(),
    );
    assert_eq!(rendered.len(), 1);
}

#[test]
fn settings_in_every_form_postgresql_reads_are_accepted() {
    let text = spec(concat!(
        "  version: v15\n  postgresql:\n    parameters:\n",
        "      shared_buffers: 256MB\n      work_mem: 4096\n      checkpoint_completion_target: 0.9\n",
        "      statement_timeout: \"30s\"\n      synchronous_commit: off\n      log_checkpoints: yes\n",
        "      log_min_messages: WARNING\n      effective_cache_size: 1.5GB\n",
        "      myapp.tenant: anything\n      Max_Connections: \"0x64\"\n",
    ));
    let rendered = render_ok(
        &[("ok.yaml", &text)],
        "default",
        &OperatorSettings::default(),
    );
    assert_eq!(rendered.len(), 1);
}
