//! A real Kubernetes API server for our custom resources: Kubernetes' own
//! apiextensions-apiserver on etcd (built by scripts/install-k8s-code.sh, started by
//! scripts/k8s-apiserver.sh), one per test binary, with our CRDs installed. What it
//! accepts, defaults and refuses is real admission: schema, CEL rules, server-side apply
//! field ownership, the status subresource.
//!
//! The server outlives any one test (each `#[tokio::test]` has its own runtime, so each
//! gets its own [`Client`]) and is stopped when the test process exits, however it exits:
//! a watchdog shell waits for the end of a pipe only this process holds, which the kernel
//! closes on exit, panic, abort or SIGKILL alike, then stops etcd and the server and
//! removes their directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use postgres_operator::crdgen;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/k8s-apiserver.sh");

struct Server {
    dir: PathBuf,
    /// Never dropped: its stdin is the pipe whose closing (at process exit) stops the server.
    _watchdog: Child,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static CRDS_ESTABLISHED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

fn start() -> Server {
    let dir = tempfile::Builder::new()
        .prefix("real-apiserver-")
        .tempdir()
        .unwrap()
        .keep();
    // Started first, so a failed or interrupted start is cleaned up too; it ignores the
    // signals a terminal sends the whole process group so that it outlives this process.
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' INT HUP TERM; cat >/dev/null; bash "$0" stop "$1"; rm -rf "$1""#)
        .arg(SCRIPT)
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    super::succeed(
        Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(&dir)
            .stdin(Stdio::null()),
        &format!("{SCRIPT} start (run scripts/install-test-deps.sh first)"),
    );
    Server {
        dir,
        _watchdog: watchdog,
    }
}

/// A client of the real API server (client-certificate authentication, as the written
/// kubeconfig says), started on first use, with the operator's CRDs established.
pub async fn client() -> Client {
    let server = tokio::task::spawn_blocking(|| SERVER.get_or_init(start))
        .await
        .unwrap();
    let kubeconfig = Kubeconfig::read_from(server.dir.join("kubeconfig")).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    CRDS_ESTABLISHED
        .get_or_init(|| install_crds(client.clone()))
        .await;
    client
}

/// Applies every CRD of `crdgen::crds()` and waits until each is Established and its
/// resource answers a list.
async fn install_crds(client: Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crdgen::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("real-apiserver-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("the API server refused CRD {name}: {e}"));
        let objects: Api<DynamicObject> = Api::all_with(client.clone(), &resource(&crd));
        super::wait_until(&format!("CRD {name} is established and served"), 30, || {
            let (crds, objects, name) = (crds.clone(), objects.clone(), name.clone());
            async move {
                let established = crds.get(&name).await.is_ok_and(|crd| {
                    crd.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
                established && objects.list(&ListParams::default().limit(1)).await.is_ok()
            }
        })
        .await;
    }
}

/// The API resource a CRD serves (its first version).
pub fn resource(crd: &CustomResourceDefinition) -> ApiResource {
    let version = &crd.spec.versions[0].name;
    ApiResource {
        group: crd.spec.group.clone(),
        version: version.clone(),
        api_version: format!("{}/{version}", crd.spec.group),
        kind: crd.spec.names.kind.clone(),
        plural: crd.spec.names.plural.clone(),
    }
}
