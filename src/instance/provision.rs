//! Runs the declarative SQL: reads the catalog, plans (pure, in `crate::sql`), executes.
//! Connects as the superuser, over the local socket in a pod.

use std::collections::BTreeMap;

use tokio_postgres::{Client, Config, NoTls};

use crate::sql::plan::{DesiredState, MANAGED_MARKER, ObservedRole, ObservedState, Plan, plan};

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct Connection {
    /// Unix socket directory (or a host name).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot connect to database {database:?}: {source}")]
    Connect {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("reading the catalog: {0}")]
    Observe(#[source] tokio_postgres::Error),
    #[error("in database {database:?}, {sql}: {source}")]
    Execute {
        database: String,
        sql: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub statements: usize,
    pub conflicts: Vec<String>,
}

/// The database that holds no user data, for cluster-wide statements.
const MAINTENANCE_DB: &str = "postgres";

impl Connection {
    async fn connect(&self, database: &str) -> Result<Client, ProvisionError> {
        let mut config = Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(database);
        if let Some(password) = &self.password {
            config.password(password);
        }
        let (client, connection) =
            config
                .connect(NoTls)
                .await
                .map_err(|source| ProvisionError::Connect {
                    database: database.to_string(),
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed");
            }
        });
        Ok(client)
    }

    /// Reads roles, memberships, databases, and the extensions of the desired databases.
    pub async fn observe(&self, desired: &DesiredState) -> Result<ObservedState, ProvisionError> {
        let client = self.connect(MAINTENANCE_DB).await?;
        let mut observed = ObservedState::default();
        let roles = client
            .query(
                "SELECT rolname, rolcanlogin, rolsuper, rolreplication, rolpassword, \
                 coalesce(shobj_description(oid, 'pg_authid'), '') = $1 AS managed \
                 FROM pg_authid WHERE rolname !~ '^pg_'",
                &[&MANAGED_MARKER],
            )
            .await
            .map_err(ProvisionError::Observe)?;
        for row in roles {
            observed.roles.insert(
                row.get(0),
                ObservedRole {
                    login: row.get(1),
                    superuser: row.get(2),
                    replication: row.get(3),
                    verifier: row.get(4),
                    managed: row.get(5),
                },
            );
        }
        let memberships = client
            .query(
                "SELECT g.rolname, m.rolname FROM pg_auth_members a \
                 JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member",
                &[],
            )
            .await
            .map_err(ProvisionError::Observe)?;
        observed.memberships = memberships
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let databases = client
            .query(
                "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE NOT datistemplate",
                &[],
            )
            .await
            .map_err(ProvisionError::Observe)?;
        observed.databases = databases
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        for database in desired.databases.keys() {
            if !observed.databases.contains_key(database) {
                continue;
            }
            let client = self.connect(database).await?;
            let rows = client
                .query("SELECT extname FROM pg_extension", &[])
                .await
                .map_err(ProvisionError::Observe)?;
            observed.extensions.insert(
                database.clone(),
                rows.iter().map(|row| row.get(0)).collect(),
            );
        }
        Ok(observed)
    }

    /// Executes a plan in order, one connection per database.
    pub async fn apply(&self, plan: &Plan) -> Result<usize, ProvisionError> {
        let mut clients: BTreeMap<String, Client> = BTreeMap::new();
        for statement in &plan.statements {
            let database = statement
                .database
                .clone()
                .unwrap_or_else(|| MAINTENANCE_DB.to_string());
            if !clients.contains_key(&database) {
                let client = self.connect(&database).await?;
                clients.insert(database.clone(), client);
            }
            let Some(client) = clients.get(&database) else {
                continue;
            };
            client
                .batch_execute(&statement.sql)
                .await
                .map_err(|source| ProvisionError::Execute {
                    database: database.clone(),
                    sql: redact(&statement.sql),
                    source,
                })?;
        }
        Ok(plan.statements.len())
    }

    /// One pass: observe, plan, apply.
    pub async fn reconcile(&self, desired: &DesiredState) -> Result<Report, ProvisionError> {
        let observed = self.observe(desired).await?;
        let plan = plan(desired, &observed, &mut random_salt);
        for conflict in &plan.conflicts {
            tracing::warn!(conflict, "declarative SQL");
        }
        let statements = self.apply(&plan).await?;
        Ok(Report {
            statements,
            conflicts: plan.conflicts,
        })
    }
}

fn random_salt() -> [u8; 16] {
    rand::random()
}

/// Password verifiers stay out of error messages and logs.
fn redact(sql: &str) -> String {
    match sql.find(" PASSWORD ") {
        Some(index) => format!("{} PASSWORD <redacted>", &sql[..index]),
        None => sql.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_are_redacted_from_errors() {
        assert_eq!(
            redact("ALTER ROLE \"a\" PASSWORD 'SCRAM-SHA-256$x'"),
            "ALTER ROLE \"a\" PASSWORD <redacted>"
        );
        assert_eq!(redact("DROP ROLE \"a\""), "DROP ROLE \"a\"");
    }
}
