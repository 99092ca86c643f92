//! What each role kind may do in its database, as facts the catalog either holds or
//! does not. The planner grants the missing facts; memberships do the rest, since
//! privileges are only ever given to the group roles.

use std::collections::{BTreeMap, BTreeSet};

use super::plan::{DesiredState, group_role};
use super::quote::ident;

/// Object classes of default privileges, with their `pg_default_acl.defaclobjtype` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectClass {
    Tables,
    Sequences,
    Functions,
    Schemas,
}

impl ObjectClass {
    pub fn code(self) -> char {
        match self {
            ObjectClass::Tables => 'r',
            ObjectClass::Sequences => 'S',
            ObjectClass::Functions => 'f',
            ObjectClass::Schemas => 'n',
        }
    }

    pub fn from_code(code: char) -> Option<Self> {
        [
            ObjectClass::Tables,
            ObjectClass::Sequences,
            ObjectClass::Functions,
            ObjectClass::Schemas,
        ]
        .into_iter()
        .find(|class| class.code() == code)
    }

    fn keyword(self) -> &'static str {
        match self {
            ObjectClass::Tables => "TABLES",
            ObjectClass::Sequences => "SEQUENCES",
            ObjectClass::Functions => "FUNCTIONS",
            ObjectClass::Schemas => "SCHEMAS",
        }
    }
}

/// Privileges of a kind on each object class (empty: none).
pub struct KindPrivileges {
    pub tables: &'static [&'static str],
    pub sequences: &'static [&'static str],
    pub functions: &'static [&'static str],
    pub schemas: &'static [&'static str],
}

impl KindPrivileges {
    pub fn on(&self, class: ObjectClass) -> &'static [&'static str] {
        match class {
            ObjectClass::Tables => self.tables,
            ObjectClass::Sequences => self.sequences,
            ObjectClass::Functions => self.functions,
            ObjectClass::Schemas => self.schemas,
        }
    }
}

/// The built-in kinds; `admin` owns the database and any other kind only connects.
pub fn kind_privileges(kind: &str) -> Option<KindPrivileges> {
    match kind {
        "readonly" => Some(KindPrivileges {
            tables: &["SELECT"],
            sequences: &["USAGE", "SELECT"],
            functions: &["EXECUTE"],
            schemas: &["USAGE"],
        }),
        "readwrite" => Some(KindPrivileges {
            tables: &[
                "SELECT",
                "INSERT",
                "UPDATE",
                "DELETE",
                "TRUNCATE",
                "REFERENCES",
                "TRIGGER",
            ],
            sequences: &["USAGE", "SELECT", "UPDATE"],
            functions: &["EXECUTE"],
            schemas: &["USAGE"],
        }),
        _ => None,
    }
}

/// One thing that must hold in a database.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fact {
    /// Only the database's own roles connect (not PUBLIC).
    NoPublicConnect,
    Connect {
        role: String,
    },
    /// The role holds its kind's privileges on the schema itself.
    Schema {
        role: String,
        schema: String,
    },
    /// ...on every existing object of a class in the schema.
    AllObjects {
        role: String,
        schema: String,
        class: ObjectClass,
    },
    /// ...on objects `creator` makes later (in any schema, including new schemas).
    Default {
        creator: String,
        role: String,
        class: ObjectClass,
    },
}

/// Everything that must hold in `database`, given its current non-system schemas.
pub fn desired_facts(
    desired: &DesiredState,
    database: &str,
    schemas: &BTreeSet<String>,
) -> BTreeSet<Fact> {
    let mut facts = BTreeSet::from([Fact::NoPublicConnect]);
    let Some(spec) = desired.databases.get(database) else {
        return facts;
    };
    let owner = group_role(database, "admin");
    // Whoever may create objects: the owner role and the users of the admin kind
    // (readwrite changes data, not the schema).
    let creators: BTreeSet<String> = std::iter::once(owner.clone())
        .chain(
            spec.roles
                .get("admin")
                .into_iter()
                .flatten()
                .filter(|user| desired.users.contains_key(*user))
                .cloned(),
        )
        .collect();
    facts.insert(Fact::Connect { role: owner });
    for kind in spec.kinds() {
        let role = group_role(database, kind);
        facts.insert(Fact::Connect { role: role.clone() });
        let Some(privileges) = kind_privileges(kind) else {
            continue;
        };
        for schema in schemas {
            facts.insert(Fact::Schema {
                role: role.clone(),
                schema: schema.clone(),
            });
            for class in [
                ObjectClass::Tables,
                ObjectClass::Sequences,
                ObjectClass::Functions,
            ] {
                if !privileges.on(class).is_empty() {
                    facts.insert(Fact::AllObjects {
                        role: role.clone(),
                        schema: schema.clone(),
                        class,
                    });
                }
            }
        }
        for creator in &creators {
            for class in [
                ObjectClass::Tables,
                ObjectClass::Sequences,
                ObjectClass::Functions,
                ObjectClass::Schemas,
            ] {
                facts.insert(Fact::Default {
                    creator: creator.clone(),
                    role: role.clone(),
                    class,
                });
            }
        }
    }
    facts
}

/// The kind of a group role of `database` (`<database>_<kind>`).
fn kind_of<'a>(database: &str, role: &'a str) -> &'a str {
    role.strip_prefix(database)
        .and_then(|r| r.strip_prefix('_'))
        .unwrap_or_default()
}

/// The privileges the group role `role` of `database` carries on a class (empty for
/// kinds that only connect).
pub fn role_privileges(database: &str, role: &str, class: ObjectClass) -> &'static [&'static str] {
    kind_privileges(kind_of(database, role)).map_or(&[], |p| p.on(class))
}

/// The statement that makes a fact hold.
pub fn statement(database: &str, fact: &Fact) -> Option<String> {
    let privileges = |role: &str, class: ObjectClass| {
        Some(role_privileges(database, role, class).join(", ")).filter(|p| !p.is_empty())
    };
    Some(match fact {
        Fact::NoPublicConnect => {
            format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", ident(database))
        }
        Fact::Connect { role } => format!(
            "GRANT CONNECT ON DATABASE {} TO {}",
            ident(database),
            ident(role)
        ),
        Fact::Schema { role, schema } => format!(
            "GRANT {} ON SCHEMA {} TO {}",
            privileges(role, ObjectClass::Schemas)?,
            ident(schema),
            ident(role)
        ),
        Fact::AllObjects {
            role,
            schema,
            class,
        } => format!(
            "GRANT {} ON ALL {} IN SCHEMA {} TO {}",
            privileges(role, *class)?,
            class.keyword(),
            ident(schema),
            ident(role)
        ),
        Fact::Default {
            creator,
            role,
            class,
        } => format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT {} ON {} TO {}",
            ident(creator),
            privileges(role, *class)?,
            class.keyword(),
            ident(role)
        ),
    })
}

/// Facts that hold, per database, as read from the catalog.
pub type ObservedFacts = BTreeMap<String, BTreeSet<Fact>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::plan::DesiredState;

    fn desired() -> DesiredState {
        let spec: crate::api::PostgresSpec = serde_yaml::from_str(
            "users:\n  a: {}\n  r: {}\ndatabases:\n  app:\n    roles:\n      admin: [a]\n      readonly: [r]\n      monitoring: [r]\n",
        )
        .unwrap();
        let passwords = [("a", "x"), ("r", "y")]
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        DesiredState::from_spec(&spec, &passwords)
    }

    #[test]
    fn readonly_gets_usage_select_execute_and_defaults_for_every_creator() {
        let schemas = BTreeSet::from(["public".to_string()]);
        let facts = desired_facts(&desired(), "app", &schemas);
        let sql: Vec<String> = facts.iter().filter_map(|f| statement("app", f)).collect();
        assert!(sql.contains(&"REVOKE CONNECT ON DATABASE \"app\" FROM PUBLIC".to_string()));
        assert!(
            sql.contains(&"GRANT CONNECT ON DATABASE \"app\" TO \"app_monitoring\"".to_string())
        );
        assert!(sql.contains(
            &"GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"app_readonly\"".to_string()
        ));
        assert!(sql.contains(&"ALTER DEFAULT PRIVILEGES FOR ROLE \"a\" GRANT SELECT ON TABLES TO \"app_readonly\"".to_string()));
        assert!(sql.contains(&"ALTER DEFAULT PRIVILEGES FOR ROLE \"app_admin\" GRANT USAGE ON SCHEMAS TO \"app_readonly\"".to_string()));
        assert!(
            !sql.iter()
                .any(|s| s.contains("app_monitoring") && s.contains("SELECT")),
            "other kinds only connect"
        );
    }

    #[test]
    fn object_class_codes_round_trip() {
        for class in [
            ObjectClass::Tables,
            ObjectClass::Sequences,
            ObjectClass::Functions,
            ObjectClass::Schemas,
        ] {
            assert_eq!(ObjectClass::from_code(class.code()), Some(class));
        }
    }
}
