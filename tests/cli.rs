//! The binary as users run it: exit codes, stdout/stderr, stdin input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn operator(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postgres-operator"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn render_of_all_examples_succeeds_and_prints_yaml_documents() {
    let out = operator(
        &[
            "render",
            "-f",
            "examples/minimal.yaml",
            "-f",
            "examples/complete.yaml",
            "-f",
            "examples/ha.yaml",
            "-f",
            "examples/dev.yaml",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&stdout)
        .map(|d| {
            let v: serde_json::Value = serde::Deserialize::deserialize(d).unwrap();
            v["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "StatefulSet").count(), 4);
    assert_eq!(
        kinds.iter().filter(|k| *k == "CronJob").count(),
        2,
        "complete and HA have backups"
    );
}

#[test]
fn render_reads_standard_input_and_honours_namespace_and_json() {
    let manifest = std::fs::read_to_string(format!(
        "{}/examples/minimal.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let out = operator(
        &["render", "-f", "-", "-n", "team-a", "-o", "json"],
        Some(&manifest),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = list["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(items.iter().all(|i| i["metadata"]["namespace"] == "team-a"));
}

#[test]
fn render_of_invalid_input_fails_with_the_field_on_stderr_and_nothing_on_stdout() {
    let bad = "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: demo\nspec:\n  replicas: 2\n  quorum:\n    maxSyncReplicas: 2\n";
    let out = operator(&["render", "-f", "-"], Some(bad));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("-") && stderr.contains("spec.quorum.maxSyncReplicas"),
        "{stderr}"
    );
}

#[test]
fn render_of_a_missing_file_names_it() {
    let out = operator(&["render", "-f", "does-not-exist.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does-not-exist.yaml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn render_without_files_is_a_usage_error() {
    let out = operator(&["render"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--filename"));
}

#[test]
fn crds_subcommand_prints_the_committed_crds() {
    let out = operator(&["crds"], None);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(format!("{}/crds/crds.yaml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert_eq!(text(&out.stdout), committed);
}

#[test]
fn help_lists_only_the_modes_that_work() {
    let out = operator(&["--help"], None);
    let help = text(&out.stdout);
    let listed = |mode: &str| {
        help.lines()
            .any(|line| line.trim_start().starts_with(&format!("{mode} ")))
    };
    for mode in [
        "render",
        "crds",
        "controller",
        "instance",
        "backup",
        "restore",
        "copy-binaries",
    ] {
        assert!(listed(mode), "{mode} missing:\n{help}");
    }
}

/// `backup`/`restore` with the given environment (nothing inherited from the test's).
fn backup_mode(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postgres-operator"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.success(), text(&out.stderr))
}

#[test]
fn backup_and_restore_name_what_is_missing_or_wrong() {
    let base = [
        "--cluster",
        "shop",
        "--repository-base",
        "s3:h/b",
        "--log-format",
        "text",
    ];
    let (ok, stderr) = backup_mode(&[&["backup"][..], &base].concat(), &[]);
    assert!(!ok);
    assert!(
        stderr.contains("AWS_ACCESS_KEY_ID is not set (key s3AccessKey"),
        "{stderr}"
    );
    let keys = [("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")];
    let (ok, stderr) = backup_mode(&[&["backup"][..], &base].concat(), &keys);
    assert!(!ok);
    assert!(
        stderr.contains("RESTIC_PASSWORD is not set (key resticPassword"),
        "{stderr}"
    );
    let (ok, stderr) = backup_mode(
        &[&["backup"][..], &base, &["--cleanup-strategy", "--prune"]].concat(),
        &keys,
    );
    assert!(!ok);
    assert!(stderr.contains("--cleanup-strategy:"), "{stderr}");
    let (ok, stderr) = backup_mode(
        &[
            "backup",
            "--cluster",
            "shop",
            "--repository-base",
            "s3:hostonly",
            "--log-format",
            "text",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
            ("RESTIC_PASSWORD", "c"),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("repository base \"s3:hostonly\": the bucket is missing"),
        "{stderr}"
    );
    let (ok, stderr) = backup_mode(
        &[&["restore"][..], &base, &["--target-database", "copy"]].concat(),
        &keys,
    );
    assert!(!ok);
    assert!(
        stderr.contains("--target-database needs exactly one --database"),
        "{stderr}"
    );
}

#[test]
fn readme_lists_every_resource_preset_with_its_values() {
    let readme =
        std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let table = postgres_operator::api::presets::markdown_table();
    assert!(
        readme.contains(&table),
        "README's preset table is stale; expected:\n{table}"
    );
}

#[test]
fn instance_refuses_a_malformed_peer_naming_the_flag() {
    let out = operator(
        &[
            "instance",
            "--cluster",
            "demo",
            "--namespace",
            "tenant",
            "--pod-name",
            "postgres-demo-1",
            "--peer",
            "postgres-demo-0",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let error = text(&out.stderr);
    assert!(error.contains("--peer"), "{error}");
    assert!(error.contains("expected POD=HOST:PORT"), "{error}");
}
