//! Every pod the operator makes meets the `restricted` Pod Security Standard: the instances
//! of every example, the scheduled and the requested backup Jobs (the operator's own
//! Deployment is checked in `helm_chart.rs`). The checker itself is proven first: a
//! compliant pod passes, and a pod breaking each rule is caught with the field named.

mod support;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use postgres_operator::api::Postgres;
use postgres_operator::manifests::cronjob::desired_backup_job;
use postgres_operator::manifests::{Cluster, OperatorSettings};
use serde_json::{Value, json};
use support::pod_security::{pod_templates, restricted_violations};
use support::{EXAMPLES, example, render_ok};

/// A pod that meets `restricted`, to break one rule at a time.
fn compliant() -> Value {
    json!({
        "metadata": {"name": "ok"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main",
                "image": "x",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
                },
                "ports": [{"containerPort": 5432}]
            }],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "d"}},
                {"name": "tmp", "emptyDir": {}},
                {"name": "s", "secret": {"secretName": "s"}}
            ]
        }
    })
}

/// One rule broken in a compliant pod.
type Edit = Box<dyn FnOnce(&mut Value)>;

fn broken(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut pod = compliant();
    edit(&mut pod);
    restricted_violations(&pod)
}

#[test]
fn a_compliant_pod_passes() {
    assert_eq!(restricted_violations(&compliant()), Vec::<String>::new());
}

#[test]
fn each_broken_rule_is_caught_naming_the_field() {
    let container = "spec.containers[main].securityContext";
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "host network",
            Box::new(|p| p["spec"]["hostNetwork"] = json!(true)),
            "spec.hostNetwork".into(),
        ),
        (
            "host PID",
            Box::new(|p| p["spec"]["hostPID"] = json!(true)),
            "spec.hostPID".into(),
        ),
        (
            "host IPC",
            Box::new(|p| p["spec"]["hostIPC"] = json!(true)),
            "spec.hostIPC".into(),
        ),
        (
            "privileged",
            Box::new(|p| p["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true)),
            format!("{container}.privileged"),
        ),
        (
            "host path",
            Box::new(|p| {
                p["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "h", "hostPath": {"path": "/"}}))
            }),
            "spec.volumes[h].hostPath".into(),
        ),
        (
            "nfs volume",
            Box::new(|p| {
                p["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "n", "nfs": {"server": "s", "path": "/"}}))
            }),
            "spec.volumes[n].nfs".into(),
        ),
        (
            "host port",
            Box::new(|p| p["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(5432)),
            "spec.containers[main].ports.hostPort".into(),
        ),
        (
            "privilege escalation unset",
            Box::new(|p| {
                p["spec"]["containers"][0]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("allowPrivilegeEscalation");
            }),
            format!("{container}.allowPrivilegeEscalation"),
        ),
        (
            "run as non-root unset",
            Box::new(|p| {
                p["spec"]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("runAsNonRoot");
            }),
            format!("{container}.runAsNonRoot"),
        ),
        (
            "a container overriding non-root",
            Box::new(|p| {
                p["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = json!(false)
            }),
            format!("{container}.runAsNonRoot"),
        ),
        (
            "root user",
            Box::new(|p| p["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(0)),
            format!("{container}.runAsUser"),
        ),
        (
            "seccomp unset",
            Box::new(|p| {
                p["spec"]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("seccompProfile");
            }),
            format!("{container}.seccompProfile.type"),
        ),
        (
            "seccomp unconfined in a container",
            Box::new(|p| {
                p["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                    json!({"type": "Unconfined"})
            }),
            format!("{container}.seccompProfile.type"),
        ),
        (
            "capabilities not dropped",
            Box::new(|p| {
                p["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"] =
                    json!(["NET_RAW"])
            }),
            format!("{container}.capabilities.drop"),
        ),
        (
            "a baseline capability added",
            Box::new(|p| {
                p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                    json!(["CHOWN"])
            }),
            format!("{container}.capabilities.add[CHOWN]"),
        ),
        (
            "SYS_ADMIN added",
            Box::new(|p| {
                p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                    json!(["SYS_ADMIN"])
            }),
            format!("{container}.capabilities.add[SYS_ADMIN]"),
        ),
        (
            "unsafe sysctl",
            Box::new(|p| {
                p["spec"]["securityContext"]["sysctls"] =
                    json!([{"name": "kernel.msgmax", "value": "1"}])
            }),
            "spec.securityContext.sysctls[kernel.msgmax]".into(),
        ),
        (
            "SELinux user",
            Box::new(|p| p["spec"]["securityContext"]["seLinuxOptions"] = json!({"user": "root"})),
            "spec.securityContext.seLinuxOptions.user".into(),
        ),
        (
            "unconfined AppArmor",
            Box::new(|p| {
                p["spec"]["containers"][0]["securityContext"]["appArmorProfile"] =
                    json!({"type": "Unconfined"})
            }),
            format!("{container}.appArmorProfile.type"),
        ),
        (
            "unmasked /proc",
            Box::new(|p| {
                p["spec"]["containers"][0]["securityContext"]["procMount"] = json!("Unmasked")
            }),
            format!("{container}.procMount"),
        ),
        (
            "an init container breaking the rules",
            Box::new(|p| p["spec"]["initContainers"] = json!([{"name": "init", "image": "x"}])),
            "spec.initContainers[init].securityContext.allowPrivilegeEscalation".into(),
        ),
    ];
    for (what, edit, field) in cases {
        let violations = broken(edit);
        assert!(
            violations
                .iter()
                .any(|v| v.starts_with(&format!("{field}:"))),
            "{what}: expected a violation of {field}, got {violations:?}"
        );
    }
}

#[test]
fn every_example_renders_restricted_pods() {
    let mut checked = 0;
    for file in EXAMPLES {
        let name = format!("examples/{file}");
        for cluster in render_ok(
            &[(&name, &example(file))],
            "tenant-demo",
            &OperatorSettings::default(),
        ) {
            for object in &cluster.objects {
                for (at, template) in pod_templates(&object.to_json().unwrap()) {
                    let violations = restricted_violations(&template);
                    assert!(violations.is_empty(), "{file}: {at}: {violations:?}");
                    checked += 1;
                }
            }
        }
    }
    // Every example has its StatefulSet; the backup ones their CronJob too.
    assert!(checked > EXAMPLES.len(), "{checked} pod templates checked");
}

#[test]
fn a_requested_backup_job_is_restricted() {
    let postgres: Postgres = serde_yaml::from_str(&example("complete.yaml")).unwrap();
    let settings = OperatorSettings::default();
    let cluster = Cluster::new(&postgres, "tenant-demo", &settings);
    let job = desired_backup_job(&cluster, "nightly", OwnerReference::default(), &[]);
    let templates = pod_templates(&serde_json::to_value(job).unwrap());
    assert_eq!(templates.len(), 1);
    for (at, template) in templates {
        assert_eq!(
            restricted_violations(&template),
            Vec::<String>::new(),
            "{at}"
        );
    }
}
