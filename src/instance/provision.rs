//! Runs the declarative SQL: reads the catalog, plans (pure, in `crate::sql`), executes.
//! Connects as the superuser, over the local socket in a pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

use crate::sql::plan::{DesiredState, MANAGED_MARKER, ObservedRole, ObservedState, Plan, plan};
use crate::sql::privileges::{Fact, ObjectClass, desired_facts, role_privileges};
use crate::sql::quote::literal;
use crate::sql::redact::redact_password;

use super::audit;

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct Connection {
    /// Unix socket directory (or a host name).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// The address to reach `host` at, when it is a name (libpq's `hostaddr`); the
    /// name is still what the certificate is verified for.
    pub hostaddr: Option<std::net::IpAddr>,
    /// TLS with the server's certificate verified for `host` by this configuration
    /// (libpq's `sslmode=verify-full` with the cluster's CA, see
    /// `backup::tls::client_config`); `None` for a clear-text connection, e.g. over the
    /// local socket.
    pub verify_with: Option<crate::backup::tls::ServerTrust>,
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

/// Databases observed at once.
const OBSERVE_CONCURRENCY: usize = 8;

/// What one database holds.
struct DatabaseView {
    database: String,
    extensions: BTreeSet<String>,
    schemas: BTreeSet<String>,
    facts: BTreeSet<Fact>,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub statements: usize,
    pub conflicts: Vec<String>,
}

/// Drives a connection in the background until it closes.
fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection closed");
        }
    });
}

/// The database that holds no user data, for cluster-wide statements.
pub const MAINTENANCE_DB: &str = "postgres";

impl Connection {
    /// A client of `database`; its connection task runs in the background.
    pub async fn client(&self, database: &str) -> Result<Client, tokio_postgres::Error> {
        let config = self.config(database);
        match &self.verify_with {
            None => Self::connect(&config).await,
            Some(trust) => {
                let (client, connection) = config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                        trust.config.as_ref().clone(),
                    ))
                    .await?;
                spawn_connection(connection);
                Ok(client)
            }
        }
    }

    /// How to reach `database`, for a caller that adds its own options.
    pub fn config(&self, database: &str) -> Config {
        let mut config = Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(database);
        config.connect_timeout(std::time::Duration::from_secs(5));
        if let Some(password) = &self.password {
            config.password(password);
        }
        if let Some(address) = self.hostaddr {
            config.hostaddr(address);
        }
        if self.verify_with.is_some() {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        config
    }

    /// A client for `config`; its connection task runs in the background.
    pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = config.connect(NoTls).await?;
        spawn_connection(connection);
        Ok(client)
    }

    /// One pass with connections opened for it and closed after it.
    pub async fn reconcile(&self, desired: &DesiredState) -> Result<Report, ProvisionError> {
        Provisioner::new(self.clone()).reconcile(desired).await
    }
}

/// What a pass reads and corrects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything, inside every declared database too (one connection each).
    Full,
    /// Roles, passwords, memberships, databases and owners: one connection, the
    /// frequent check between full passes.
    Cluster,
}

/// Runs passes of declarative SQL. The connection to the maintenance database is kept
/// between passes; those to user databases last one pass.
pub struct Provisioner {
    connection: Connection,
    clients: Mutex<HashMap<String, Arc<Client>>>,
}

impl Provisioner {
    pub fn new(connection: Connection) -> Self {
        Self {
            connection,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Where and as whom it connects.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The superuser's password changed: later connections use the new one.
    pub fn set_password(&mut self, password: Option<String>) {
        self.connection.password = password;
    }

    fn cached(&self, database: &str) -> Option<Arc<Client>> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.get(database).filter(|c| !c.is_closed()).cloned()
    }

    /// The kept client of `database`, connecting again when it was closed.
    pub async fn connect(&self, database: &str) -> Result<Arc<Client>, ProvisionError> {
        if let Some(client) = self.cached(database) {
            return Ok(client);
        }
        let client = Arc::new(self.connection.client(database).await.map_err(|source| {
            ProvisionError::Connect {
                database: database.to_string(),
                source,
            }
        })?);
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(database.to_string(), client.clone());
        Ok(client)
    }

    /// Closes the connections to user databases: held between passes they would take
    /// one connection slot per database, and keep users from dropping a database.
    fn release_databases(&self) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|db, _| db == MAINTENANCE_DB);
    }

    /// Closes every connection (e.g. before the server restarts).
    pub fn release_all(&self) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Reads roles, memberships, databases, and the contents of the desired databases.
    pub async fn observe(&self, desired: &DesiredState) -> Result<ObservedState, ProvisionError> {
        self.observe_scoped(desired, Scope::Full).await
    }

    /// Like [`Self::observe`]; with [`Scope::Cluster`] the databases' contents are not
    /// read (and marked unobserved).
    pub async fn observe_scoped(
        &self,
        desired: &DesiredState,
        scope: Scope,
    ) -> Result<ObservedState, ProvisionError> {
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
        // Databases are read concurrently: each needs its own connection.
        let existing_roles: BTreeSet<String> = observed.roles.keys().cloned().collect();
        let present: Vec<&String> = desired
            .databases
            .keys()
            .filter(|db| observed.databases.contains_key(*db))
            .collect();
        if scope == Scope::Cluster {
            observed.unobserved = present.into_iter().cloned().collect();
            return Ok(observed);
        }
        let per_database: Vec<Result<DatabaseView, ProvisionError>> =
            futures::stream::iter(present)
                .map(|database| self.observe_database(desired, database, &existing_roles))
                .buffer_unordered(OBSERVE_CONCURRENCY)
                .collect()
                .await;
        for view in per_database {
            let view = view?;
            observed
                .extensions
                .insert(view.database.clone(), view.extensions);
            observed.schemas.insert(view.database.clone(), view.schemas);
            observed.facts.insert(view.database, view.facts);
        }
        Ok(observed)
    }

    /// Extensions, schemas and privilege facts of one database.
    async fn observe_database(
        &self,
        desired: &DesiredState,
        database: &str,
        existing_roles: &BTreeSet<String>,
    ) -> Result<DatabaseView, ProvisionError> {
        let client = self.connect(database).await?;
        let rows = text_rows(
            &client,
            "SELECT 'e', extname::text FROM pg_extension UNION ALL \
             SELECT 's', nspname::text FROM pg_namespace WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'",
        )
        .await
        .map_err(ProvisionError::Observe)?;
        let of_kind = |kind: &str| -> BTreeSet<String> {
            rows.iter()
                .filter(|r| r[0] == kind)
                .map(|r| r[1].clone())
                .collect()
        };
        let (extensions, schemas) = (of_kind("e"), of_kind("s"));
        let candidates = desired_facts(desired, database, &schemas);
        let facts = holding_facts(&client, database, &candidates, existing_roles)
            .await
            .map_err(ProvisionError::Observe)?;
        Ok(DatabaseView {
            database: database.to_string(),
            extensions,
            schemas,
            facts,
        })
    }

    /// Executes a plan in order, one connection per database.
    pub async fn apply(&self, plan: &Plan) -> Result<usize, ProvisionError> {
        for statement in &plan.statements {
            let database = statement
                .database
                .clone()
                .unwrap_or_else(|| MAINTENANCE_DB.to_string());
            let client = self.connect(&database).await?;
            audit::execute(&client, &statement.sql)
                .await
                .map_err(|source| ProvisionError::Execute {
                    database: database.clone(),
                    sql: redact_password(&statement.sql),
                    source,
                })?;
            audit::record(&database, &statement.sql, "spec");
        }
        Ok(plan.statements.len())
    }

    /// One full pass: observe, plan, apply.
    pub async fn reconcile(&self, desired: &DesiredState) -> Result<Report, ProvisionError> {
        self.reconcile_scoped(desired, Scope::Full).await
    }

    /// One pass over `scope`.
    pub async fn reconcile_scoped(
        &self,
        desired: &DesiredState,
        scope: Scope,
    ) -> Result<Report, ProvisionError> {
        let result = self.pass(desired, scope).await;
        // A failed statement may have left its connection unusable (or the server is
        // restarting): the next pass starts afresh.
        if result.is_err() {
            self.release_all();
        } else {
            self.release_databases();
        }
        result
    }

    async fn pass(&self, desired: &DesiredState, scope: Scope) -> Result<Report, ProvisionError> {
        let observed = self.observe_scoped(desired, scope).await?;
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

/// Which of `candidates` hold in the connected database, in three round trips. Connect
/// and default privileges are read from explicit ACL entries (a PUBLIC grant does not
/// count: it is about to be revoked); object privileges with `has_*_privilege`.
async fn holding_facts(
    client: &Client,
    database: &str,
    candidates: &BTreeSet<Fact>,
    existing_roles: &BTreeSet<String>,
) -> Result<BTreeSet<Fact>, tokio_postgres::Error> {
    let connect: BTreeSet<String> = text_rows(
        client,
        "SELECT CASE WHEN a.grantee = 0 THEN '' ELSE pg_get_userbyid(a.grantee)::text END \
         FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a \
         WHERE d.datname = current_database() AND a.privilege_type = 'CONNECT'",
    )
    .await?
    .into_iter()
    .map(|mut row| row.swap_remove(0))
    .collect();
    let mut defaults: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for row in text_rows(
        client,
        "SELECT pg_get_userbyid(d.defaclrole)::text, d.defaclobjtype::text, \
         pg_get_userbyid(a.grantee)::text, a.privilege_type \
         FROM pg_default_acl d, aclexplode(d.defaclacl) a WHERE d.defaclnamespace = 0",
    )
    .await?
    {
        if let [creator, class, grantee, privilege] = row.as_slice() {
            defaults
                .entry((creator.clone(), class.clone(), grantee.clone()))
                .or_default()
                .insert(privilege.clone());
        }
    }
    let mut holding = BTreeSet::new();
    // Object facts of existing roles, evaluated together in one statement.
    let mut checked: Vec<&Fact> = Vec::new();
    let mut expressions: Vec<String> = Vec::new();
    for fact in candidates {
        match fact {
            Fact::NoPublicConnect if !connect.contains("") => {
                holding.insert(fact.clone());
            }
            Fact::Connect { role } if connect.contains(role) => {
                holding.insert(fact.clone());
            }
            Fact::Default {
                creator,
                role,
                class,
            } => {
                let wanted = role_privileges(database, role, *class);
                let held = defaults.get(&(creator.clone(), class.code().to_string(), role.clone()));
                if held.is_some_and(|held| wanted.iter().all(|p| held.contains(*p))) {
                    holding.insert(fact.clone());
                }
            }
            Fact::Schema { role, schema } if existing_roles.contains(role) => {
                checked.push(fact);
                expressions.push(format!(
                    "coalesce((SELECT has_schema_privilege({}, oid, 'USAGE') FROM pg_namespace WHERE nspname = {}), false)",
                    literal(role),
                    literal(schema)
                ));
            }
            Fact::AllObjects {
                role,
                schema,
                class,
            } if existing_roles.contains(role) => {
                if let Some(expression) = all_objects_granted(database, role, schema, *class) {
                    checked.push(fact);
                    expressions.push(expression);
                }
            }
            _ => {}
        }
    }
    // One column per fact (PostgreSQL allows 1,664 columns in a row), sent unprepared:
    // these statements run once, so preparing them would only add round trips.
    for (facts, expressions) in checked.chunks(1000).zip(expressions.chunks(1000)) {
        let rows = text_rows(client, &format!("SELECT {}", expressions.join(", "))).await?;
        let Some(row) = rows.first() else { continue };
        for (fact, holds) in facts.iter().zip(row) {
            if holds == "t" {
                holding.insert((*fact).clone());
            }
        }
    }
    Ok(holding)
}

/// Rows of a parameterless query as text (NULL as empty), in one round trip.
async fn text_rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    Ok(client
        .simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or_default().to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// An SQL expression: does `role` hold its privileges on every object of `class` in
/// `schema`? `None` when the kind has none on that class.
fn all_objects_granted(
    database: &str,
    role: &str,
    schema: &str,
    class: ObjectClass,
) -> Option<String> {
    let privileges = role_privileges(database, role, class);
    let (objects, check) = match class {
        ObjectClass::Tables => (
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {schema} AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            "has_table_privilege",
        ),
        ObjectClass::Sequences => (
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {schema} AND c.relkind = 'S'",
            "has_sequence_privilege",
        ),
        ObjectClass::Functions => (
            "SELECT p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = {schema} AND p.prokind IN ('f', 'p')",
            "has_function_privilege",
        ),
        ObjectClass::Schemas => return None,
    };
    if privileges.is_empty() {
        return None;
    }
    // has_*_privilege with several privileges answers "any"; every one must hold.
    let all_held = privileges
        .iter()
        .map(|p| format!("{check}({}, o.oid, '{p}')", literal(role)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let objects = objects.replace("{schema}", &literal(schema));
    Some(format!(
        "NOT EXISTS (SELECT 1 FROM ({objects}) o WHERE NOT ({all_held}))"
    ))
}

fn random_salt() -> [u8; 16] {
    rand::random()
}
