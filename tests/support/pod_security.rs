//! The Kubernetes Pod Security Standards' `restricted` profile (which includes
//! `baseline`), as the pod-security admission plugin checks it at its latest version: a
//! pod (or a pod template: `metadata` and `spec`) in, one message per violated rule out,
//! naming the field. Written from the standard's published rules; `tests/pod_security.rs`
//! proves each rule with a pod that breaks only it.

use serde_json::Value;

/// Capabilities `baseline` allows a container to add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls `baseline` calls safe.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// SELinux types `baseline` allows.
const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Volume sources `restricted` allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Every violation of `restricted` by the pod (or pod template) `pod`, each naming its
/// field; empty when the pod passes.
pub fn restricted_violations(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let pod_context = &spec["securityContext"];
    let mut found = Vec::new();
    let mut violation = |field: String, rule: &str| found.push(format!("{field}: {rule}"));

    // baseline
    for flag in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[flag] == Value::Bool(true) {
            violation(format!("spec.{flag}"), "host namespaces are forbidden");
        }
    }
    if pod_context["windowsOptions"]["hostProcess"] == Value::Bool(true) {
        violation(
            "spec.securityContext.windowsOptions.hostProcess".into(),
            "HostProcess pods are forbidden",
        );
    }
    check_selinux(
        &pod_context["seLinuxOptions"],
        "spec.securityContext",
        &mut violation,
    );
    check_apparmor(
        &pod_context["appArmorProfile"],
        "spec.securityContext",
        &mut violation,
    );
    for (key, value) in pod["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/") {
            let profile = value.as_str().unwrap_or_default();
            if profile != "runtime/default" && !profile.starts_with("localhost/") {
                violation(
                    format!("metadata.annotations[{key}]"),
                    "AppArmor may only be runtime/default or localhost/*",
                );
            }
        }
    }
    for sysctl in pod_context["sysctls"].as_array().into_iter().flatten() {
        let name = sysctl["name"].as_str().unwrap_or_default();
        if !SAFE_SYSCTLS.contains(&name) {
            violation(
                format!("spec.securityContext.sysctls[{name}]"),
                "only the safe sysctls are allowed",
            );
        }
    }

    // restricted: volumes
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or_default();
        for (source, _) in volume.as_object().into_iter().flatten() {
            if source != "name" && !RESTRICTED_VOLUMES.contains(&source.as_str()) {
                let rule = if source == "hostPath" {
                    "hostPath volumes are forbidden"
                } else {
                    "volume type not allowed"
                };
                violation(format!("spec.volumes[{name}].{source}"), rule);
            }
        }
    }

    // restricted: seccomp and non-root, at the pod level with container overrides
    let pod_seccomp = pod_context["seccompProfile"]["type"].as_str();
    if pod_seccomp == Some("Unconfined") {
        violation(
            "spec.securityContext.seccompProfile.type".into(),
            "seccomp must not be Unconfined",
        );
    }
    let pod_non_root = pod_context["runAsNonRoot"].as_bool();
    if pod_non_root == Some(false) {
        violation(
            "spec.securityContext.runAsNonRoot".into(),
            "must not be false",
        );
    }
    if pod_context["runAsUser"].as_i64() == Some(0) {
        violation(
            "spec.securityContext.runAsUser".into(),
            "must not be 0 (root)",
        );
    }

    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for container in spec[list].as_array().into_iter().flatten() {
            let name = container["name"].as_str().unwrap_or_default();
            let at = format!("spec.{list}[{name}]");
            let context = &container["securityContext"];
            let field = |f: &str| format!("{at}.securityContext.{f}");
            if context["privileged"] == Value::Bool(true) {
                violation(field("privileged"), "privileged containers are forbidden");
            }
            if context["windowsOptions"]["hostProcess"] == Value::Bool(true) {
                violation(
                    field("windowsOptions.hostProcess"),
                    "HostProcess containers are forbidden",
                );
            }
            if context["procMount"]
                .as_str()
                .is_some_and(|mount| mount != "Default")
            {
                violation(field("procMount"), "must be Default");
            }
            for port in container["ports"].as_array().into_iter().flatten() {
                if port["hostPort"].as_i64().is_some_and(|p| p != 0) {
                    violation(format!("{at}.ports.hostPort"), "host ports are forbidden");
                }
            }
            check_selinux(
                &context["seLinuxOptions"],
                &format!("{at}.securityContext"),
                &mut violation,
            );
            check_apparmor(
                &context["appArmorProfile"],
                &format!("{at}.securityContext"),
                &mut violation,
            );
            if context["allowPrivilegeEscalation"] != Value::Bool(false) {
                violation(field("allowPrivilegeEscalation"), "must be false");
            }
            match context["runAsNonRoot"].as_bool() {
                Some(false) => violation(field("runAsNonRoot"), "must not be false"),
                None if pod_non_root != Some(true) => violation(
                    field("runAsNonRoot"),
                    "must be true, here or in spec.securityContext",
                ),
                _ => {}
            }
            if context["runAsUser"].as_i64() == Some(0) {
                violation(field("runAsUser"), "must not be 0 (root)");
            }
            match context["seccompProfile"]["type"].as_str() {
                Some("RuntimeDefault" | "Localhost") => {}
                Some(_) => violation(
                    field("seccompProfile.type"),
                    "must be RuntimeDefault or Localhost",
                ),
                None if !matches!(pod_seccomp, Some("RuntimeDefault" | "Localhost")) => violation(
                    field("seccompProfile.type"),
                    "must be RuntimeDefault or Localhost, here or in spec.securityContext",
                ),
                None => {}
            }
            let capabilities = &context["capabilities"];
            let dropped_all = capabilities["drop"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c == "ALL");
            if !dropped_all {
                violation(field("capabilities.drop"), "must include ALL");
            }
            for added in capabilities["add"].as_array().into_iter().flatten() {
                let added = added.as_str().unwrap_or_default();
                if added != "NET_BIND_SERVICE" {
                    let rule = if BASELINE_CAPABILITIES.contains(&added) {
                        "only NET_BIND_SERVICE may be added"
                    } else {
                        "capability not allowed even by baseline"
                    };
                    violation(format!("{}[{added}]", field("capabilities.add")), rule);
                }
            }
        }
    }
    found
}

fn check_selinux(options: &Value, at: &str, violation: &mut impl FnMut(String, &str)) {
    if let Some(kind) = options["type"].as_str()
        && !SELINUX_TYPES.contains(&kind)
    {
        violation(
            format!("{at}.seLinuxOptions.type"),
            "SELinux type not allowed",
        );
    }
    for field in ["user", "role"] {
        if options[field].as_str().is_some_and(|v| !v.is_empty()) {
            violation(format!("{at}.seLinuxOptions.{field}"), "must not be set");
        }
    }
}

fn check_apparmor(profile: &Value, at: &str, violation: &mut impl FnMut(String, &str)) {
    if let Some(kind) = profile["type"].as_str()
        && kind != "RuntimeDefault"
        && kind != "Localhost"
    {
        violation(
            format!("{at}.appArmorProfile.type"),
            "AppArmor must be RuntimeDefault or Localhost",
        );
    }
}

/// The pod templates in `object` (a Pod, a workload, a CronJob), each with where it is.
pub fn pod_templates(object: &Value) -> Vec<(String, Value)> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let template = match kind {
        "Pod" => Some(object.clone()),
        "CronJob" => Some(object["spec"]["jobTemplate"]["spec"]["template"].clone()),
        "StatefulSet" | "Deployment" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(object["spec"]["template"].clone())
        }
        _ => None,
    };
    template
        .map(|t| vec![(format!("{kind} {name}"), t)])
        .unwrap_or_default()
}
