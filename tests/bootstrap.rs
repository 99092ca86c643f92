//! Bootstrap with the real PostgreSQL tools: the first instance runs initdb (checksums,
//! SCRAM superuser password), the replication role is created, a second instance clones
//! the primary with its own slot and streams; an initialised directory is kept.

mod support;

use postgres_operator::api::Postgres;
use postgres_operator::instance::bootstrap::{
    Bootstrap, Tools, clone_from_primary, decide, ensure_replication_role, init_data_dir,
};
use postgres_operator::instance::files::{ConfigFiles, Listen, RuntimeRole};
use postgres_operator::instance::provision::Connection;
use postgres_operator::manifests::{Cluster, OperatorSettings};
use support::postgres::{
    DataDir, PostgresServer, as_postgres, bin_dir, chown_to_postgres, cluster_tls_secret, endpoint,
    tls_material,
};

fn cluster(name: &str) -> (Postgres, OperatorSettings) {
    let postgres: Postgres = serde_yaml::from_str(&format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: {name}, namespace: tenant}}\nspec: {{}}\n"
    ))
    .unwrap();
    (postgres, OperatorSettings::default())
}

fn tools() -> Tools {
    Tools {
        bin_dir: bin_dir(),
        wrap: as_postgres(),
    }
}

#[tokio::test]
async fn a_new_cluster_is_initialised_then_cloned_and_streams() {
    let primary_dir = DataDir::empty();
    assert_eq!(decide(&primary_dir.data_dir, None), Bootstrap::InitDb);
    init_data_dir(&tools(), &primary_dir.data_dir, "super's secret").unwrap();
    assert_eq!(
        decide(&primary_dir.data_dir, None),
        Bootstrap::UseExisting,
        "never initialised twice"
    );
    let tls = tls_material(&cluster_tls_secret("demo"));
    let primary = PostgresServer::start_on(primary_dir.with_tls(&tls));

    // Over TCP the superuser needs its password (the socket uses peer authentication).
    let superuser = Connection {
        host: "127.0.0.1".to_string(),
        port: primary.port,
        user: "postgres".to_string(),
        password: Some("super's secret".to_string()),
        hostaddr: None,
        verify_with: None,
    };
    let client = primary
        .connect_as("postgres", "super's secret", "postgres")
        .await
        .unwrap();
    let checksums: String = client
        .query_one("SHOW data_checksums", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(checksums, "on");
    assert!(
        primary
            .connect_as("postgres", "wrong", "postgres")
            .await
            .is_err()
    );
    assert!(
        ensure_replication_role(&superuser, "repl'pw")
            .await
            .unwrap()
    );
    assert!(
        !ensure_replication_role(&superuser, "repl'pw")
            .await
            .unwrap(),
        "a matching password is not written again"
    );

    let standby_dir = DataDir::empty();
    let Bootstrap::Clone { primary_host } = decide(&standby_dir.data_dir, Some("127.0.0.1")) else {
        panic!("expected a clone")
    };
    let standby_dir = standby_dir.with_tls(&tls);
    let primary_endpoint = endpoint(
        "demo",
        "postgres-demo-0",
        primary.port,
        &standby_dir.socket_dir,
    );
    assert_eq!(primary_host, "127.0.0.1");
    // Over TLS, verified against the cluster's CA for the primary's name.
    clone_from_primary(
        &tools(),
        &standby_dir.data_dir,
        &primary_endpoint,
        "repl'pw",
        "postgres-demo-1",
    )
    .unwrap();
    // What the instance manager writes next: configuration, standby settings.
    let (postgres, settings) = cluster("demo");
    let files = ConfigFiles::render(
        &Cluster::new(&postgres, "tenant", &settings),
        &RuntimeRole::Standby {
            primary: primary_endpoint,
            password: "repl'pw".to_string(),
            application_name: "postgres-demo-1".to_string(),
        },
        &Listen {
            port: standby_dir.port,
            socket_dir: standby_dir.socket_dir.to_string_lossy().into_owned(),
            addresses: "127.0.0.1".to_string(),
        },
    );
    files.write(&standby_dir.data_dir).unwrap();
    // Written by this (root) test rather than by the instance manager as `postgres`.
    chown_to_postgres(&standby_dir.data_dir);
    assert!(standby_dir.data_dir.join("standby.signal").exists());
    let standby = PostgresServer::start_on(standby_dir);

    client
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
        .await
        .unwrap();
    let reader = standby
        .connect_as("postgres", "super's secret", "postgres")
        .await
        .unwrap();
    let mut replayed = false;
    for _ in 0..200 {
        if reader.query_one("SELECT v FROM t", &[]).await.is_ok() {
            replayed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(replayed, "the standby replays the row");
    let slot: (String, bool) = {
        let row = client
            .query_one(
                "SELECT slot_name::text, active FROM pg_replication_slots",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(slot, ("postgres_demo_1".to_string(), true));
    let application: String = client
        .query_one("SELECT application_name FROM pg_stat_replication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(application, "postgres-demo-1");
}

#[tokio::test]
async fn a_wrong_replication_password_fails_the_clone_with_the_reason() {
    let tls = tls_material(&cluster_tls_secret("demo"));
    let primary = PostgresServer::start_on(DataDir::init().with_tls(&tls));
    let standby_dir = DataDir::empty().with_tls(&tls);
    let error = clone_from_primary(
        &tools(),
        &standby_dir.data_dir,
        &endpoint(
            "demo",
            "postgres-demo-0",
            primary.port,
            &standby_dir.socket_dir,
        ),
        "nope",
        "postgres-demo-2",
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("password authentication failed for user \"streaming_replica\""),
        "{error}"
    );
    assert!(!standby_dir.data_dir.join("PG_VERSION").exists());
}
