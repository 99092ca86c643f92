//! Checks a `postgresql.parameters` entry against the settings of the cluster's PostgreSQL
//! major: the name must be one it knows (or a custom `prefix.name`), the value must parse
//! as PostgreSQL parses that setting's type and unit and lie within its range. A value the
//! server would refuse makes its next start fail, so it is refused before it is accepted.

pub mod table;
pub mod value;

use table::{Kind, Numeric, Setting, Table};
use value::{BaseUnit, NumberError};

use crate::api::ParameterValue;

/// Why a setting is refused; the caller adds the field path.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SettingError {
    #[error("is unknown to {}{}", describe(.sources), suggest(.suggestion))]
    Unknown {
        sources: Vec<u32>,
        suggestion: Option<String>,
    },
    #[error("is read-only in PostgreSQL (fixed when it was built or initialised)")]
    ReadOnly,
    #[error("must be {expected} ({}), got {got:?}{detail}", describe(.sources))]
    Invalid {
        expected: String,
        sources: Vec<u32>,
        got: String,
        /// Starts with `: ` when there is something to add.
        detail: String,
    },
}

/// `PostgreSQL 15`, or `PostgreSQL 13 and 15` for a derived table.
fn describe(sources: &[u32]) -> String {
    let majors: Vec<String> = sources.iter().map(u32::to_string).collect();
    format!("PostgreSQL {}", majors.join(" and "))
}

fn suggest(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(name) => format!(" (did you mean {name}?)"),
        None => " (a custom setting needs a prefix, e.g. myextension.name)".to_string(),
    }
}

/// Checks one setting for PostgreSQL `major`. A major without a table (none today) and
/// custom `prefix.name` settings are accepted as they are.
pub fn check(major: u32, name: &str, given: &ParameterValue) -> Result<(), SettingError> {
    let Some(table) = table::for_major(major) else {
        return Ok(());
    };
    if name.contains('.') {
        return Ok(());
    }
    let Some(setting) = table.settings.get(&name.to_ascii_lowercase()) else {
        return Err(SettingError::Unknown {
            sources: table.sources.clone(),
            suggestion: closest_name(table, name),
        });
    };
    check_value(table, setting, given)
}

fn check_value(
    table: &Table,
    setting: &Setting,
    given: &ParameterValue,
) -> Result<(), SettingError> {
    if setting.read_only {
        return Err(SettingError::ReadOnly);
    }
    // The text PostgreSQL reads: what the operator writes into postgresql.conf.
    let text = given.to_string();
    let refuse = |detail: String| SettingError::Invalid {
        expected: expected(&setting.kind),
        sources: table.sources.clone(),
        got: text.clone(),
        detail,
    };
    match &setting.kind {
        Kind::String => Ok(()),
        Kind::Bool => value::parse_bool(&text)
            .map(drop)
            .ok_or_else(|| refuse(String::new())),
        Kind::Enum(values) => {
            if value::enum_matches(values, &text) {
                Ok(())
            } else {
                Err(refuse(String::new()))
            }
        }
        Kind::Integer(range) => {
            let parsed = value::parse_int(&text, range.unit)
                .map_err(|e| refuse(number_detail(&e, range.unit)))?;
            check_range(parsed, range, 0, &text).map_err(refuse)
        }
        Kind::Real(range) => {
            let parsed = value::parse_real(&text, range.unit)
                .map_err(|e| refuse(number_detail(&e, range.unit)))?;
            // pg_settings prints real bounds with 6 significant digits (%g): allow that
            // much rounding rather than refuse a value the server takes.
            let slack = range.min.abs().max(range.max.abs()) * 5e-6;
            check_range(parsed, range, slack, &text).map_err(refuse)
        }
    }
}

/// `parsed` (in the setting's unit) within the range, give or take `slack`; the error
/// is the end of the message.
fn check_range<T>(parsed: T, range: &Numeric<T>, slack: T, text: &str) -> Result<(), String>
where
    T: Copy + PartialOrd + std::ops::Add<Output = T> + std::ops::Sub<Output = T> + ToString,
{
    if parsed >= range.min - slack && parsed <= range.max + slack {
        return Ok(());
    }
    let parsed = parsed.to_string();
    Err(match range.unit {
        Some(unit) if parsed != text => format!(": that is {parsed} {}, out of range", unit.name()),
        _ => ": out of range".to_string(),
    })
}

/// What a setting accepts, e.g. `an integer between 1 and 262143`.
fn expected(kind: &Kind) -> String {
    match kind {
        Kind::Bool => "a boolean (on, off, true, false, yes, no, 1, 0)".to_string(),
        Kind::Enum(values) => format!("one of {}", values.join(", ")),
        Kind::Integer(range) => format!("an integer {}", range_note(range)),
        Kind::Real(range) => format!("a number {}", range_note(range)),
        Kind::String => "a string".to_string(),
    }
}

/// `between 16 and 1073741823 8kB (or with a unit: B, kB, MB, GB, TB)`.
fn range_note<T: std::fmt::Display>(range: &Numeric<T>) -> String {
    let unit = match range.unit {
        Some(unit) => format!(
            " {} (or with a unit: {})",
            unit.name(),
            unit.accepted_units().join(", ")
        ),
        None => String::new(),
    };
    format!("between {} and {}{unit}", range.min, range.max)
}

fn number_detail(error: &NumberError, unit: Option<BaseUnit>) -> String {
    match (error, unit) {
        (NumberError::Syntax, _) => String::new(),
        (NumberError::Overflow, _) => ": out of the numeric range".to_string(),
        (NumberError::Unit(found), Some(unit)) => format!(
            ": {found:?} is not one of its units ({}; names are case-sensitive)",
            unit.accepted_units().join(", ")
        ),
        (NumberError::Unit(found), None) => format!(": it takes no unit, got {found:?}"),
    }
}

/// The known name nearest to a misspelt one, if it is close (at most a third of its
/// letters differ).
fn closest_name(table: &Table, name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    table
        .settings
        .keys()
        .map(|known| (edit_distance(&lower, known), known))
        .filter(|(distance, _)| *distance <= (lower.len() / 3).max(1))
        .min()
        .map(|(_, known)| known.clone())
}

/// Levenshtein distance over bytes (setting names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.bytes().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> ParameterValue {
        ParameterValue::String(value.to_string())
    }

    fn message(major: u32, name: &str, value: ParameterValue) -> String {
        check(major, name, &value).unwrap_err().to_string()
    }

    #[test]
    fn a_word_for_an_integer_setting_names_the_range_and_version() {
        assert_eq!(
            message(15, "max_connections", text("lots")),
            "must be an integer between 1 and 262143 (PostgreSQL 15), got \"lots\""
        );
    }

    #[test]
    fn numbers_strings_and_booleans_from_yaml_are_checked_alike() {
        assert_eq!(
            check(18, "max_connections", &ParameterValue::Int(200)),
            Ok(())
        );
        assert_eq!(check(18, "max_connections", &text("200")), Ok(()));
        assert_eq!(
            check(18, "max_connections", &ParameterValue::Float(200.0)),
            Ok(())
        );
        assert_eq!(
            check(
                18,
                "checkpoint_completion_target",
                &ParameterValue::Float(0.9)
            ),
            Ok(())
        );
        assert_eq!(
            check(18, "checkpoint_completion_target", &ParameterValue::Int(1)),
            Ok(())
        );
        assert_eq!(check(18, "fsync", &ParameterValue::Bool(true)), Ok(()));
        assert_eq!(
            check(18, "synchronous_commit", &ParameterValue::Bool(false)),
            Ok(())
        );
        assert!(check(18, "max_connections", &ParameterValue::Bool(true)).is_err());
        assert!(check(18, "max_connections", &ParameterValue::Int(0)).is_err());
        assert!(
            check(
                18,
                "checkpoint_completion_target",
                &ParameterValue::Float(1.5)
            )
            .is_err()
        );
    }

    #[test]
    fn memory_and_time_settings_take_their_units() {
        for (name, value) in [
            ("shared_buffers", "256MB"),
            ("shared_buffers", "128kB"),
            ("shared_buffers", "16384"),
            ("work_mem", "4MB"),
            ("statement_timeout", "30s"),
            ("statement_timeout", "1h"),
            ("autovacuum_naptime", "1min"),
            ("vacuum_cost_delay", "1.5ms"),
        ] {
            assert_eq!(check(15, name, &text(value)), Ok(()), "{name} = {value}");
        }
    }

    #[test]
    fn a_wrong_unit_lists_the_units_of_the_setting() {
        let err = message(15, "shared_buffers", text("256mb"));
        assert!(err.starts_with("must be an integer between 16 and 1073741823 8kB (or with a unit: B, kB, MB, GB, TB) (PostgreSQL 15), got \"256mb\": \"mb\" is not one of its units"), "{err}");
        let err = message(15, "statement_timeout", text("10MB"));
        assert!(err.contains("us, ms, s, min, h, d"), "{err}");
        let err = message(15, "max_connections", text("100MB"));
        assert!(err.ends_with("got \"100MB\""), "{err}");
    }

    #[test]
    fn a_value_out_of_range_after_its_unit_says_what_it_came_to() {
        let err = message(15, "shared_buffers", text("64kB"));
        assert!(
            err.ends_with("got \"64kB\": that is 8 8kB, out of range"),
            "{err}"
        );
        let err = message(15, "max_connections", ParameterValue::Int(300000));
        assert!(err.ends_with("got \"300000\": out of range"), "{err}");
    }

    #[test]
    fn booleans_and_enums_list_what_they_accept() {
        assert_eq!(check(15, "fsync", &text("y")), Ok(()));
        assert_eq!(
            message(15, "fsync", text("maybe")),
            "must be a boolean (on, off, true, false, yes, no, 1, 0) (PostgreSQL 15), got \"maybe\""
        );
        assert_eq!(check(15, "log_min_messages", &text("WARNING")), Ok(()));
        let err = message(15, "log_min_messages", text("loud"));
        assert!(err.starts_with("must be one of debug5, debug4"), "{err}");
    }

    #[test]
    fn an_unknown_name_suggests_the_closest_known_one() {
        assert_eq!(
            message(15, "max_conections", ParameterValue::Int(1)),
            "is unknown to PostgreSQL 15 (did you mean max_connections?)"
        );
        let err = message(15, "completely_made_up", ParameterValue::Int(1));
        assert!(err.contains("a custom setting needs a prefix"), "{err}");
    }

    #[test]
    fn custom_prefixed_settings_are_placeholders() {
        assert_eq!(check(15, "myapp.tenant", &text("anything")), Ok(()));
        assert_eq!(check(15, "pg_stat_statements.max", &text("lots")), Ok(()));
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(
            check(15, "Max_Connections", &ParameterValue::Int(10)),
            Ok(())
        );
    }

    #[test]
    fn read_only_settings_are_refused() {
        assert_eq!(
            check(15, "block_size", &ParameterValue::Int(8192)),
            Err(SettingError::ReadOnly)
        );
    }

    #[test]
    fn settings_follow_their_major() {
        // Added in 16, removed in 17.
        assert!(check(15, "io_method", &text("sync")).is_err());
        assert_eq!(check(18, "io_method", &text("sync")), Ok(()));
        assert!(check(17, "old_snapshot_threshold", &ParameterValue::Int(-1)).is_err());
        assert_eq!(
            check(15, "old_snapshot_threshold", &ParameterValue::Int(-1)),
            Ok(())
        );
    }

    #[test]
    fn a_major_without_a_server_is_checked_against_its_neighbours() {
        // The same in 13 and 15: fully checked for 14.
        assert_eq!(
            message(14, "max_connections", text("lots")),
            "must be an integer between 1 and 262143 (PostgreSQL 13 and 15), got \"lots\""
        );
        // Only in 13 (removed in 15): it may or may not exist in 14, any value passes.
        assert_eq!(check(14, "stats_temp_directory", &text("x")), Ok(()));
        let err = message(14, "max_conections", ParameterValue::Int(1));
        assert!(
            err.starts_with("is unknown to PostgreSQL 13 and 15"),
            "{err}"
        );
    }

    #[test]
    fn edit_distance_counts_single_letter_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
