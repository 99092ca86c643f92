//! From the desired users, databases and role kinds, and what the catalog holds, the
//! statements that make the catalog match. Pure: the same inputs give the same
//! statements, and a catalog that already matches gives none.

use std::collections::{BTreeMap, BTreeSet};

use super::privileges::{ObservedFacts, desired_facts, statement};
use super::quote::{ident, literal};
use super::scram;
use crate::api::PostgresSpec;

/// Comment on every role the operator creates: only such roles are ever altered or
/// dropped, so roles made by hand are never touched.
pub const MANAGED_MARKER: &str = "managed by postgres-operator";

/// Superuser that owns what nothing else may own (databases left behind, objects of
/// dropped roles in databases the spec does not declare).
pub const FALLBACK_OWNER: &str = "postgres";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredUser {
    /// The password from the credentials Secret.
    pub password: String,
    pub replication: bool,
    pub superuser: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredDatabase {
    /// Role kind → users granted `<db>_<kind>`, as the spec lists them.
    pub roles: BTreeMap<String, Vec<String>>,
    pub extensions: Vec<String>,
}

/// Role kinds every database has, listed in the spec or not, as Cozystack's init script
/// creates them: grants to them made by hand or by other tooling must find them.
pub const ALWAYS_PRESENT_KINDS: [&str; 2] = ["admin", "readonly"];

impl DesiredDatabase {
    /// Every role kind of the database: the ones always present and the ones listed.
    pub fn kinds(&self) -> BTreeSet<&str> {
        ALWAYS_PRESENT_KINDS
            .into_iter()
            .chain(self.roles.keys().map(String::as_str))
            .collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub users: BTreeMap<String, DesiredUser>,
    pub databases: BTreeMap<String, DesiredDatabase>,
}

/// The group role of kind `kind` in database `database`.
pub fn group_role(database: &str, kind: &str) -> String {
    format!("{database}_{kind}")
}

impl DesiredState {
    /// The desired state of a spec, with each user's password as resolved for the
    /// credentials Secret (users without one in `passwords` are skipped).
    pub fn from_spec(spec: &PostgresSpec, passwords: &BTreeMap<String, String>) -> Self {
        Self {
            users: spec
                .users
                .iter()
                .filter_map(|(name, user)| {
                    Some((
                        name.clone(),
                        DesiredUser {
                            password: passwords.get(name)?.clone(),
                            replication: user.replication.unwrap_or(false),
                            superuser: user.superuser.unwrap_or(false),
                        },
                    ))
                })
                .collect(),
            databases: spec
                .databases
                .iter()
                .map(|(name, db)| {
                    (
                        name.clone(),
                        DesiredDatabase {
                            roles: db.roles.clone(),
                            extensions: db.extensions.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Every group role: `<db>_admin` (the owner) and `<db>_readonly` for each database,
    /// and `<db>_<kind>` for each kind the spec names.
    pub fn group_roles(&self) -> BTreeSet<String> {
        self.databases
            .iter()
            .flat_map(|(db, spec)| {
                spec.kinds()
                    .into_iter()
                    .map(move |kind| group_role(db, kind))
            })
            .collect()
    }

    /// (group, member) pairs the lists ask for.
    pub fn memberships(&self) -> BTreeSet<(String, String)> {
        self.databases
            .iter()
            .flat_map(|(db, spec)| {
                spec.roles.iter().flat_map(move |(kind, members)| {
                    members
                        .iter()
                        .map(move |member| (group_role(db, kind), member.clone()))
                })
            })
            .collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedRole {
    pub login: bool,
    pub superuser: bool,
    pub replication: bool,
    /// Carries [`MANAGED_MARKER`].
    pub managed: bool,
    /// `pg_authid.rolpassword`.
    pub verifier: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedState {
    pub roles: BTreeMap<String, ObservedRole>,
    /// (group, member)
    pub memberships: BTreeSet<(String, String)>,
    /// Non-template databases → owner.
    pub databases: BTreeMap<String, String>,
    /// Installed extensions of the databases the spec declares.
    pub extensions: BTreeMap<String, BTreeSet<String>>,
    /// Non-system schemas of the databases the spec declares.
    pub schemas: BTreeMap<String, BTreeSet<String>>,
    /// Privilege facts that hold, per declared database.
    pub facts: ObservedFacts,
    /// Existing declared databases whose contents (extensions, schemas, grants) were
    /// not read in this pass: nothing is planned inside them.
    pub unobserved: BTreeSet<String>,
}

/// One statement, run in `database` (`None`: any database, e.g. role changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub database: Option<String>,
    pub sql: String,
}

/// What to run, and what cannot be done (a desired role that exists but was not
/// created by the operator is left alone and reported).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub statements: Vec<Statement>,
    pub conflicts: Vec<String>,
}

impl Plan {
    fn run(&mut self, sql: String) {
        self.statements.push(Statement {
            database: None,
            sql,
        });
    }

    fn run_in(&mut self, database: &str, sql: String) {
        self.statements.push(Statement {
            database: Some(database.to_string()),
            sql,
        });
    }
}

fn attributes(login: bool, superuser: bool, replication: bool) -> String {
    format!(
        "{} {} {}",
        if login { "LOGIN" } else { "NOLOGIN" },
        if superuser {
            "SUPERUSER"
        } else {
            "NOSUPERUSER"
        },
        if replication {
            "REPLICATION"
        } else {
            "NOREPLICATION"
        }
    )
}

/// The statements that turn `observed` into `desired`. `salt` gives 16 random bytes per
/// new password verifier.
pub fn plan(
    desired: &DesiredState,
    observed: &ObservedState,
    salt: &mut dyn FnMut() -> [u8; 16],
) -> Plan {
    let mut plan = Plan::default();
    let groups = desired.group_roles();
    let mut usable: BTreeSet<String> = BTreeSet::new();

    for group in &groups {
        match observed.roles.get(group) {
            None => {
                plan.run(format!(
                    "CREATE ROLE {} {}",
                    ident(group),
                    attributes(false, false, false)
                ));
                plan.run(format!(
                    "COMMENT ON ROLE {} IS {}",
                    ident(group),
                    literal(MANAGED_MARKER)
                ));
                usable.insert(group.clone());
            }
            Some(role) if !role.managed => {
                plan.conflicts.push(format!(
                    "role {group:?} exists and was not created by the operator; it is left alone"
                ));
            }
            Some(role) => {
                if role.login || role.superuser || role.replication {
                    plan.run(format!(
                        "ALTER ROLE {} {}",
                        ident(group),
                        attributes(false, false, false)
                    ));
                }
                usable.insert(group.clone());
            }
        }
    }

    for (name, user) in &desired.users {
        match observed.roles.get(name) {
            None => {
                let verifier = scram::verifier(&user.password, &salt());
                plan.run(format!(
                    "CREATE ROLE {} {} PASSWORD {}",
                    ident(name),
                    attributes(true, user.superuser, user.replication),
                    literal(&verifier)
                ));
                plan.run(format!(
                    "COMMENT ON ROLE {} IS {}",
                    ident(name),
                    literal(MANAGED_MARKER)
                ));
                usable.insert(name.clone());
            }
            Some(role) if !role.managed => {
                plan.conflicts.push(format!(
                    "user {name:?} exists and was not created by the operator; it is left alone"
                ));
            }
            Some(role) => {
                if (role.login, role.superuser, role.replication)
                    != (true, user.superuser, user.replication)
                {
                    plan.run(format!(
                        "ALTER ROLE {} {}",
                        ident(name),
                        attributes(true, user.superuser, user.replication)
                    ));
                }
                if !role
                    .verifier
                    .as_deref()
                    .is_some_and(|v| scram::matches(&user.password, v))
                {
                    let verifier = scram::verifier(&user.password, &salt());
                    plan.run(format!(
                        "ALTER ROLE {} PASSWORD {}",
                        ident(name),
                        literal(&verifier)
                    ));
                }
                usable.insert(name.clone());
            }
        }
    }

    for (database, spec) in &desired.databases {
        let owner = group_role(database, "admin");
        if !usable.contains(&owner) {
            continue;
        }
        match observed.databases.get(database) {
            None => plan.run(format!(
                "CREATE DATABASE {} OWNER {}",
                ident(database),
                ident(&owner)
            )),
            Some(current) if *current != owner => plan.run(format!(
                "ALTER DATABASE {} OWNER TO {}",
                ident(database),
                ident(&owner)
            )),
            Some(_) => {}
        }
        if observed.unobserved.contains(database) {
            continue;
        }
        let installed = observed.extensions.get(database);
        for extension in &spec.extensions {
            if !installed.is_some_and(|set| set.contains(extension)) {
                plan.run_in(
                    database,
                    format!("CREATE EXTENSION IF NOT EXISTS {}", ident(extension)),
                );
            }
        }
    }

    for database in desired.databases.keys() {
        if !usable.contains(&group_role(database, "admin"))
            || observed.unobserved.contains(database)
        {
            continue;
        }
        // A database created by this plan starts as a copy of template1: schema public.
        let default_schemas = BTreeSet::from(["public".to_string()]);
        let schemas = observed.schemas.get(database).unwrap_or(&default_schemas);
        let holding = observed.facts.get(database);
        for fact in desired_facts(desired, database, schemas) {
            let roles_exist = match &fact {
                super::privileges::Fact::NoPublicConnect => true,
                super::privileges::Fact::Connect { role }
                | super::privileges::Fact::Schema { role, .. }
                | super::privileges::Fact::AllObjects { role, .. } => usable.contains(role),
                super::privileges::Fact::Default { creator, role, .. } => {
                    usable.contains(role) && usable.contains(creator)
                }
            };
            if roles_exist
                && !holding.is_some_and(|h| h.contains(&fact))
                && let Some(sql) = statement(database, &fact)
            {
                plan.run_in(database, sql);
            }
        }
    }

    let wanted = desired.memberships();
    for (group, member) in &wanted {
        if usable.contains(group)
            && usable.contains(member)
            && !observed
                .memberships
                .contains(&(group.clone(), member.clone()))
        {
            plan.run(format!("GRANT {} TO {}", ident(group), ident(member)));
        }
    }
    // Only the memberships of the operator's own users follow the lists: a role created
    // by hand and granted a group by hand (which needs `<db>_readonly` to exist even when
    // the spec lists nobody) keeps its grant.
    let managed = |role: &String| observed.roles.get(role).is_some_and(|r| r.managed);
    for (group, member) in &observed.memberships {
        if managed(group)
            && managed(member)
            && groups.contains(group)
            && !wanted.contains(&(group.clone(), member.clone()))
        {
            plan.run(format!("REVOKE {} FROM {}", ident(group), ident(member)));
        }
    }

    // Managed roles the spec no longer names: their objects go to each database's
    // owner first (in every database, since ownership is per database), then they go.
    let removed: Vec<&String> = observed
        .roles
        .iter()
        .filter(|(name, role)| {
            role.managed && !groups.contains(*name) && !desired.users.contains_key(*name)
        })
        .map(|(name, _)| name)
        .collect();
    for role in &removed {
        for (database, owner) in &observed.databases {
            let desired_owner = if desired.databases.contains_key(database) {
                group_role(database, "admin")
            } else if removed.contains(&owner) {
                FALLBACK_OWNER.to_string()
            } else {
                owner.clone()
            };
            let new_owner = if &desired_owner == *role {
                FALLBACK_OWNER.to_string()
            } else {
                desired_owner
            };
            plan.run_in(
                database,
                format!("REASSIGN OWNED BY {} TO {}", ident(role), ident(&new_owner)),
            );
            plan.run_in(database, format!("DROP OWNED BY {}", ident(role)));
        }
        plan.run(format!("DROP ROLE {}", ident(role)));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn salt() -> impl FnMut() -> [u8; 16] {
        let mut n = 0u8;
        move || {
            n += 1;
            [n; 16]
        }
    }

    fn desired(yaml: &str, passwords: &[(&str, &str)]) -> DesiredState {
        let spec: PostgresSpec = serde_yaml::from_str(yaml).unwrap();
        let passwords = passwords
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        DesiredState::from_spec(&spec, &passwords)
    }

    /// The catalog after running a plan, as PostgreSQL would leave it.
    fn applied(desired: &DesiredState) -> ObservedState {
        let mut observed = ObservedState::default();
        for group in desired.group_roles() {
            observed.roles.insert(
                group,
                ObservedRole {
                    managed: true,
                    ..ObservedRole::default()
                },
            );
        }
        for (name, user) in &desired.users {
            observed.roles.insert(
                name.clone(),
                ObservedRole {
                    login: true,
                    superuser: user.superuser,
                    replication: user.replication,
                    managed: true,
                    verifier: Some(scram::verifier(&user.password, &[7; 16])),
                },
            );
        }
        observed.memberships = desired.memberships();
        for (db, spec) in &desired.databases {
            observed
                .databases
                .insert(db.clone(), group_role(db, "admin"));
            observed
                .extensions
                .insert(db.clone(), spec.extensions.iter().cloned().collect());
            let schemas = BTreeSet::from(["public".to_string()]);
            observed
                .facts
                .insert(db.clone(), desired_facts(desired, db, &schemas));
            observed.schemas.insert(db.clone(), schemas);
        }
        observed
    }

    const SPEC: &str = "users:\n  admin: {}\n  reader:\n    replication: true\ndatabases:\n  app:\n    roles:\n      admin: [admin]\n      readonly: [reader]\n    extensions: [hstore]\n";

    #[test]
    fn an_empty_catalog_gets_roles_databases_extensions_and_grants() {
        let desired = desired(SPEC, &[("admin", "a"), ("reader", "r")]);
        let plan = plan(&desired, &ObservedState::default(), &mut salt());
        let sql: Vec<&str> = plan.statements.iter().map(|s| s.sql.as_str()).collect();
        assert!(sql.contains(&"CREATE ROLE \"app_admin\" NOLOGIN NOSUPERUSER NOREPLICATION"));
        assert!(sql.contains(&"CREATE DATABASE \"app\" OWNER \"app_admin\""));
        assert!(sql.contains(&"GRANT \"app_readonly\" TO \"reader\""));
        assert!(sql.iter().any(|s| s.starts_with(
            "CREATE ROLE \"reader\" LOGIN NOSUPERUSER REPLICATION PASSWORD 'SCRAM-SHA-256$4096:"
        )));
        assert!(
            !sql.iter().any(|s| s.contains("'r'")),
            "no clear-text password: {sql:?}"
        );
        let extension = plan
            .statements
            .iter()
            .find(|s| s.sql.contains("EXTENSION"))
            .unwrap();
        assert_eq!(extension.database.as_deref(), Some("app"));
        assert!(plan.conflicts.is_empty());
    }

    #[test]
    fn every_database_has_its_admin_and_readonly_roles_even_without_lists() {
        let desired = desired("databases:\n  plain: {}\n", &[]);
        let plan = plan(&desired, &ObservedState::default(), &mut salt());
        let sql: Vec<&str> = plan.statements.iter().map(|s| s.sql.as_str()).collect();
        assert!(sql.contains(&"CREATE ROLE \"plain_admin\" NOLOGIN NOSUPERUSER NOREPLICATION"));
        assert!(sql.contains(&"CREATE ROLE \"plain_readonly\" NOLOGIN NOSUPERUSER NOREPLICATION"));
        assert!(
            sql.iter().any(|s| s.starts_with(
                "GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"plain_readonly\""
            )),
            "{sql:?}"
        );
    }

    #[test]
    fn hand_made_grants_to_roles_made_by_hand_are_left_alone() {
        let desired = desired(SPEC, &[("admin", "a"), ("reader", "r")]);
        let mut observed = applied(&desired);
        observed.roles.insert(
            "analyst".into(),
            ObservedRole {
                login: true,
                ..ObservedRole::default()
            },
        );
        observed
            .memberships
            .insert(("app_readonly".into(), "analyst".into()));
        let plan = plan(&desired, &observed, &mut salt());
        assert!(plan.statements.is_empty(), "{:?}", plan.statements);
    }

    #[test]
    fn a_removed_list_revokes_what_it_granted() {
        let desired = desired(
            &SPEC.replace("      readonly: [reader]\n", ""),
            &[("admin", "a"), ("reader", "r")],
        );
        let mut observed = applied(&desired);
        observed
            .memberships
            .insert(("app_readonly".into(), "reader".into()));
        let sql: Vec<String> = plan(&desired, &observed, &mut salt())
            .statements
            .into_iter()
            .map(|s| s.sql)
            .collect();
        assert_eq!(sql, ["REVOKE \"app_readonly\" FROM \"reader\""]);
    }

    #[test]
    fn a_matching_catalog_needs_no_statement() {
        let desired = desired(SPEC, &[("admin", "a"), ("reader", "r")]);
        let plan = plan(&desired, &applied(&desired), &mut salt());
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn unobserved_databases_get_no_statement_inside_but_roles_still_follow_the_spec() {
        let before = desired(SPEC, &[("admin", "a"), ("reader", "r")]);
        let desired = desired(SPEC, &[("admin", "a"), ("reader", "new")]);
        let mut observed = applied(&before);
        observed.extensions.clear();
        observed.facts.clear();
        observed.unobserved.insert("app".to_string());
        let plan = plan(&desired, &observed, &mut salt());
        assert_eq!(plan.statements.len(), 1, "{plan:?}");
        assert!(
            plan.statements[0]
                .sql
                .starts_with("ALTER ROLE \"reader\" PASSWORD")
        );
        observed.unobserved.clear();
        let full = super::plan(&desired, &observed, &mut salt());
        assert!(
            full.statements
                .iter()
                .any(|s| s.database.as_deref() == Some("app"))
        );
    }

    #[test]
    fn a_changed_password_or_attribute_is_altered() {
        let before = desired(SPEC, &[("admin", "a"), ("reader", "r")]);
        let after = desired(
            &SPEC.replace("replication: true", "superuser: true"),
            &[("admin", "new"), ("reader", "r")],
        );
        let plan = plan(&after, &applied(&before), &mut salt());
        let sql: Vec<&str> = plan.statements.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(sql.len(), 2, "{sql:?}");
        assert!(sql[0].starts_with("ALTER ROLE \"admin\" PASSWORD 'SCRAM-SHA-256$"));
        assert_eq!(
            sql[1],
            "ALTER ROLE \"reader\" LOGIN SUPERUSER NOREPLICATION"
        );
    }

    #[test]
    fn membership_follows_the_lists() {
        let before = desired(SPEC, &[("admin", "a"), ("reader", "r")]);
        let after = desired(
            &SPEC.replace("readonly: [reader]", "readonly: [admin]"),
            &[("admin", "a"), ("reader", "r")],
        );
        let sql: Vec<String> = plan(&after, &applied(&before), &mut salt())
            .statements
            .into_iter()
            .map(|s| s.sql)
            .collect();
        assert_eq!(
            sql,
            [
                "GRANT \"app_readonly\" TO \"admin\"",
                "REVOKE \"app_readonly\" FROM \"reader\""
            ]
        );
    }

    #[test]
    fn removed_users_have_their_objects_reassigned_in_every_database_then_are_dropped() {
        let before = desired(SPEC, &[("admin", "a"), ("reader", "r")]);
        let mut observed = applied(&before);
        observed
            .databases
            .insert("other".to_string(), "postgres".to_string());
        let after = desired(
            &SPEC
                .replace("  reader:\n    replication: true\n", "")
                .replace("readonly: [reader]", "readonly: []"),
            &[("admin", "a")],
        );
        let statements = plan(&after, &observed, &mut salt()).statements;
        let sql: Vec<(Option<&str>, &str)> = statements
            .iter()
            .map(|s| (s.database.as_deref(), s.sql.as_str()))
            .collect();
        assert!(sql.contains(&(Some("app"), "REASSIGN OWNED BY \"reader\" TO \"app_admin\"")));
        assert!(sql.contains(&(
            Some("other"),
            "REASSIGN OWNED BY \"reader\" TO \"postgres\""
        )));
        assert!(sql.contains(&(Some("other"), "DROP OWNED BY \"reader\"")));
        assert_eq!(sql.last().unwrap(), &(None, "DROP ROLE \"reader\""));
    }

    #[test]
    fn roles_the_operator_did_not_create_are_never_touched() {
        let desired = desired(SPEC, &[("admin", "a"), ("reader", "r")]);
        let mut observed = applied(&desired);
        observed.roles.get_mut("admin").unwrap().managed = false;
        observed.roles.insert(
            "someone".to_string(),
            ObservedRole {
                login: true,
                ..ObservedRole::default()
            },
        );
        let plan = plan(&desired, &observed, &mut salt());
        assert!(
            plan.statements
                .iter()
                .all(|s| !s.sql.contains("\"admin\"") && !s.sql.contains("someone")),
            "{:?}",
            plan.statements
        );
        assert_eq!(plan.conflicts.len(), 1);
    }

    #[test]
    fn hostile_names_stay_inside_their_quotes() {
        let yaml = "users:\n  \"Bad-User.1\": {}\ndatabases:\n  \"My \\\"DB\\\"; DROP\":\n    roles:\n      admin: [\"Bad-User.1\"]\n";
        let desired = desired(yaml, &[("Bad-User.1", "p'w\"d")]);
        let sql: Vec<String> = plan(&desired, &ObservedState::default(), &mut salt())
            .statements
            .into_iter()
            .map(|s| s.sql)
            .collect();
        assert!(
            sql.contains(
                &"CREATE DATABASE \"My \"\"DB\"\"; DROP\" OWNER \"My \"\"DB\"\"; DROP_admin\""
                    .to_string()
            ),
            "{sql:?}"
        );
        assert!(sql.contains(&"GRANT \"My \"\"DB\"\"; DROP_admin\" TO \"Bad-User.1\"".to_string()));
    }
}
