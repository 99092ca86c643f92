//! `postgres-operator switchover` (also `kubectl pg switchover` when the binary is
//! installed as `kubectl-pg`): asks for a switchover by setting `status.targetPrimary`
//! through the status subresource, as `kubectl cnpg promote` does; the HA engine then
//! moves the primary (see `ha::engine::switchover`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::api::Postgres;
use crate::manifests::names;

/// The field manager of the request.
pub const SWITCHOVER_FIELD_MANAGER: &str = "postgres-operator-switchover";

#[derive(clap::Args)]
pub struct SwitchoverArgs {
    /// The Postgres's namespace.
    #[arg(long, short = 'n', env = "NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The Postgres's name.
    pub cluster: String,
    /// The pod to promote (`postgres-<cluster>-<ordinal>`); default: a synchronous
    /// standby, else the lowest ordinal.
    #[arg(long)]
    pub to: Option<String>,
    /// Wait this long for the new primary to run (0: return once asked).
    #[arg(long, default_value_t = 60)]
    pub wait_seconds: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchoverError {
    #[error(
        "{0}: no primary is recorded yet (status.currentPrimary); the cluster is still starting"
    )]
    NoPrimary(String),
    #[error(
        "{cluster}: a failover or switchover is under way (status.targetPrimary is {target}, status.currentPrimary {current})"
    )]
    UnderWay {
        cluster: String,
        target: String,
        current: String,
    },
    #[error(
        "--to {to}: not an instance of {cluster} (postgres-{cluster}-0 to postgres-{cluster}-{last})"
    )]
    NotAnInstance {
        cluster: String,
        to: String,
        last: i32,
    },
    #[error("--to {0}: it is the primary already")]
    AlreadyPrimary(String),
    #[error("{0}: a single instance has no standby to switch over to")]
    NoStandby(String),
}

/// The pod to promote.
pub fn choose_target(postgres: &Postgres, to: Option<&str>) -> Result<String, SwitchoverError> {
    let cluster = postgres.cluster_name().to_string();
    let status = postgres.status.clone().unwrap_or_default();
    let current = status
        .current_primary
        .clone()
        .ok_or_else(|| SwitchoverError::NoPrimary(cluster.clone()))?;
    if let Some(target) = status.target_primary.clone()
        && target != current
    {
        return Err(SwitchoverError::UnderWay {
            cluster,
            target,
            current,
        });
    }
    let replicas = postgres.spec.replicas;
    let pods: Vec<String> = (0..replicas).map(|i| names::pod(&cluster, i)).collect();
    match to {
        Some(to) if !pods.iter().any(|pod| pod == to) => Err(SwitchoverError::NotAnInstance {
            cluster,
            to: to.to_string(),
            last: replicas - 1,
        }),
        Some(to) if to == current => Err(SwitchoverError::AlreadyPrimary(to.to_string())),
        Some(to) => Ok(to.to_string()),
        None => {
            let mut synchronous: Vec<&String> = status
                .sync_standbys
                .iter()
                .filter(|pod| **pod != current && pods.contains(pod))
                .collect();
            synchronous.sort();
            synchronous
                .first()
                .map(|pod| (*pod).clone())
                .or_else(|| pods.iter().find(|pod| **pod != current).cloned())
                .ok_or(SwitchoverError::NoStandby(cluster))
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("switchover: {message}");
    ExitCode::FAILURE
}

pub fn run(args: SwitchoverArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start: {e}")),
    };
    runtime.block_on(async move {
        let client = match Client::try_default().await {
            Ok(client) => client,
            Err(e) => return fail(&format!("cannot configure the Kubernetes client: {e}")),
        };
        let api = Api::<Postgres>::namespaced(client, &args.namespace);
        let postgres = match api.get(&args.cluster).await {
            Ok(postgres) => postgres,
            Err(e) => return fail(&format!("Postgres {}/{}: {e}", args.namespace, args.cluster)),
        };
        let target = match choose_target(&postgres, args.to.as_deref()) {
            Ok(target) => target,
            Err(e) => return fail(&e.to_string()),
        };
        let from = postgres
            .status
            .as_ref()
            .and_then(|s| s.current_primary.clone())
            .unwrap_or_default();
        let patch = serde_json::json!({ "status": { "targetPrimary": target } });
        let params = PatchParams {
            field_manager: Some(SWITCHOVER_FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        if let Err(e) = api
            .patch_status(&args.cluster, &params, &Patch::Merge(&patch))
            .await
        {
            return fail(&format!("cannot set status.targetPrimary: {e}"));
        }
        println!(
            "switchover of {}/{} asked: {from} -> {target}",
            args.namespace, args.cluster
        );
        if args.wait_seconds == 0 {
            return ExitCode::SUCCESS;
        }
        let deadline = Instant::now() + Duration::from_secs(args.wait_seconds);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Ok(now) = api.get(&args.cluster).await else {
                continue;
            };
            let status = now.status.unwrap_or_default();
            if status.current_primary.as_deref() == Some(target.as_str()) {
                println!("{target} is the primary");
                return ExitCode::SUCCESS;
            }
            if status.target_primary.as_deref() == Some(from.as_str()) {
                return fail(&format!(
                    "refused; the SwitchoverRefused event says why (kubectl describe postgres -n {} {})",
                    args.namespace, args.cluster
                ));
            }
        }
        fail(&format!(
            "{target} is not the primary after {} s",
            args.wait_seconds
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PostgresStatus;

    fn cluster(
        replicas: i32,
        current: Option<&str>,
        target: Option<&str>,
        sync: &[&str],
    ) -> Postgres {
        let mut postgres: Postgres = serde_yaml::from_str(&format!(
            "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: demo}}\nspec: {{replicas: {replicas}}}\n"
        ))
        .unwrap();
        postgres.status = Some(PostgresStatus {
            current_primary: current.map(str::to_string),
            target_primary: target.map(str::to_string),
            sync_standbys: sync.iter().map(|s| s.to_string()).collect(),
            ..PostgresStatus::default()
        });
        postgres
    }

    #[test]
    fn the_target_is_the_named_pod_else_a_synchronous_standby_else_the_lowest_ordinal() {
        let pg = cluster(3, Some("postgres-demo-1"), None, &["postgres-demo-2"]);
        assert_eq!(
            choose_target(&pg, Some("postgres-demo-0")).unwrap(),
            "postgres-demo-0"
        );
        assert_eq!(choose_target(&pg, None).unwrap(), "postgres-demo-2");
        let asynchronous = cluster(3, Some("postgres-demo-0"), Some("postgres-demo-0"), &[]);
        assert_eq!(
            choose_target(&asynchronous, None).unwrap(),
            "postgres-demo-1"
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let pg = cluster(3, Some("postgres-demo-0"), None, &[]);
        assert_eq!(
            choose_target(&pg, Some("postgres-demo-3"))
                .unwrap_err()
                .to_string(),
            "--to postgres-demo-3: not an instance of demo (postgres-demo-0 to postgres-demo-2)"
        );
        assert_eq!(
            choose_target(&pg, Some("postgres-demo-0")),
            Err(SwitchoverError::AlreadyPrimary(
                "postgres-demo-0".to_string()
            ))
        );
        assert_eq!(
            choose_target(&cluster(1, Some("postgres-demo-0"), None, &[]), None),
            Err(SwitchoverError::NoStandby("demo".to_string()))
        );
        assert_eq!(
            choose_target(&cluster(3, None, None, &[]), None),
            Err(SwitchoverError::NoPrimary("demo".to_string()))
        );
        assert!(matches!(
            choose_target(
                &cluster(3, Some("postgres-demo-0"), Some("postgres-demo-2"), &[]),
                None
            ),
            Err(SwitchoverError::UnderWay { .. })
        ));
    }
}
