//! `backup.cleanupStrategy`: the `restic forget` retention flags, parsed so that only
//! `--keep-*` flags ever reach restic (never `--prune` options, repositories or shell).

use std::fmt;

/// One retention flag with its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionFlag {
    /// Without the leading dashes, e.g. `keep-last`.
    pub name: &'static str,
    pub value: String,
}

impl fmt::Display for RetentionFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--{}={}", self.name, self.value)
    }
}

/// A parsed retention policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub flags: Vec<RetentionFlag>,
}

/// Why a cleanup strategy is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error("cleanupStrategy must contain at least one --keep-* flag, e.g. \"--keep-last=3\"")]
    Empty,
    #[error("unknown flag {0:?}: only {allowed} are allowed", allowed = allowed_list())]
    UnknownFlag(String),
    #[error("{0:?} is not a flag: write flags as --keep-last=3")]
    NotAFlag(String),
    #[error("--{0} needs a value, e.g. --{0}={example}", example = example(.0))]
    MissingValue(&'static str),
    #[error("--{flag} needs {expected}, got {value:?}")]
    BadValue {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("--{0} is given twice")]
    Duplicate(&'static str),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// A snapshot count; restic reads -1 as "unlimited".
    Count,
    /// A restic duration such as `1y5m7d2h`.
    Duration,
    /// Snapshot tags, comma-separated.
    Tags,
}

const FLAGS: &[(&str, ValueKind)] = &[
    ("keep-last", ValueKind::Count),
    ("keep-hourly", ValueKind::Count),
    ("keep-daily", ValueKind::Count),
    ("keep-weekly", ValueKind::Count),
    ("keep-monthly", ValueKind::Count),
    ("keep-yearly", ValueKind::Count),
    ("keep-within", ValueKind::Duration),
    ("keep-within-hourly", ValueKind::Duration),
    ("keep-within-daily", ValueKind::Duration),
    ("keep-within-weekly", ValueKind::Duration),
    ("keep-within-monthly", ValueKind::Duration),
    ("keep-within-yearly", ValueKind::Duration),
    ("keep-tag", ValueKind::Tags),
];

fn allowed_list() -> String {
    FLAGS
        .iter()
        .map(|(name, _)| format!("--{name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn example(flag: &str) -> &'static str {
    match FLAGS
        .iter()
        .find(|(name, _)| *name == flag)
        .map(|(_, kind)| *kind)
    {
        Some(ValueKind::Duration) => "1m",
        Some(ValueKind::Tags) => "keep",
        _ => "3",
    }
}

impl RetentionPolicy {
    /// Parses `--flag=value` and `--flag value` words separated by whitespace.
    pub fn parse(text: &str) -> Result<RetentionPolicy, RetentionError> {
        let mut words = text.split_whitespace();
        let mut flags: Vec<RetentionFlag> = Vec::new();
        while let Some(word) = words.next() {
            let Some(body) = word.strip_prefix("--") else {
                return Err(RetentionError::NotAFlag(word.to_string()));
            };
            let (given_name, inline_value) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (body, None),
            };
            let Some((name, kind)) = FLAGS.iter().find(|(name, _)| *name == given_name).copied()
            else {
                return Err(RetentionError::UnknownFlag(format!("--{given_name}")));
            };
            let value = match inline_value {
                Some(value) => value,
                None => match words.next() {
                    Some(next) if !next.starts_with("--") => next.to_string(),
                    _ => return Err(RetentionError::MissingValue(name)),
                },
            };
            if value.is_empty() {
                return Err(RetentionError::MissingValue(name));
            }
            check_value(name, kind, &value)?;
            if flags.iter().any(|f| f.name == name) {
                return Err(RetentionError::Duplicate(name));
            }
            flags.push(RetentionFlag { name, value });
        }
        if flags.is_empty() {
            return Err(RetentionError::Empty);
        }
        Ok(RetentionPolicy { flags })
    }

    /// Normalized arguments for `restic forget`.
    pub fn to_args(&self) -> Vec<String> {
        self.flags.iter().map(ToString::to_string).collect()
    }

    /// Whether the newest snapshot always survives `restic forget` with this policy.
    /// restic keeps a snapshot when any keep rule selects it; the newest one is selected
    /// by every count rule with n ≠ 0 and by every `--keep-within*` rule (it is the most
    /// recent). A policy of only `--keep-tag` keeps nothing untagged, and counts of 0 keep
    /// nothing.
    pub fn keeps_newest(&self) -> bool {
        self.flags.iter().any(|flag| {
            match FLAGS
                .iter()
                .find(|(name, _)| *name == flag.name)
                .map(|(_, kind)| *kind)
            {
                Some(ValueKind::Count) => flag.value != "0",
                Some(ValueKind::Duration) => true,
                _ => false,
            }
        })
    }
}

fn check_value(name: &'static str, kind: ValueKind, value: &str) -> Result<(), RetentionError> {
    let bad = |expected| RetentionError::BadValue {
        flag: name,
        value: value.to_string(),
        expected,
    };
    match kind {
        ValueKind::Count => {
            if value == "-1" || (value.len() <= 9 && value.bytes().all(|b| b.is_ascii_digit())) {
                Ok(())
            } else {
                Err(bad("a whole number (or -1 for unlimited)"))
            }
        }
        ValueKind::Duration => {
            if is_restic_duration(value) {
                Ok(())
            } else {
                Err(bad(
                    "a duration such as 2h, 7d, 1m or 1y5m7d2h (units y, m, d, h)",
                ))
            }
        }
        ValueKind::Tags => {
            let valid = value.split(',').all(|tag| {
                !tag.is_empty()
                    && tag
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            });
            if valid {
                Ok(())
            } else {
                Err(bad(
                    "comma-separated tags of letters, digits, '-', '_', '.', ':'",
                ))
            }
        }
    }
}

/// restic durations: one or more `<number><unit>` with units y, m, d, h, each unit at
/// most once.
fn is_restic_duration(text: &str) -> bool {
    let mut seen = String::new();
    let mut digits = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits += 1;
            if digits > 6 {
                return false;
            }
        } else if "ymdh".contains(c) && digits > 0 && !seen.contains(c) {
            seen.push(c);
            digits = 0;
        } else {
            return false;
        }
    }
    digits == 0 && !seen.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_and_default_strategies_parse() {
        for text in [
            "--keep-last=3 --keep-daily=3 --keep-within-weekly=1m",
            "--keep-last=5 --keep-daily=7 --keep-within-weekly=2m",
            "--keep-last=10 --keep-daily=14 --keep-within-weekly=1m",
        ] {
            let policy = RetentionPolicy::parse(text).unwrap();
            assert_eq!(policy.to_args().join(" "), text);
            assert!(policy.keeps_newest());
        }
    }

    #[test]
    fn space_separated_values_are_normalized() {
        let policy =
            RetentionPolicy::parse("  --keep-last 2\t--keep-within 1y5m7d2h --keep-tag a,b ")
                .unwrap();
        assert_eq!(
            policy.to_args(),
            vec!["--keep-last=2", "--keep-within=1y5m7d2h", "--keep-tag=a,b"]
        );
    }

    #[test]
    fn unlimited_counts_are_accepted() {
        assert!(RetentionPolicy::parse("--keep-daily=-1").is_ok());
    }

    #[test]
    fn refused_strategies_say_what_is_allowed() {
        for (text, fragment) in [
            ("", "at least one --keep-* flag"),
            ("   ", "at least one --keep-* flag"),
            ("--prune", "unknown flag \"--prune\": only --keep-last"),
            ("--keep-last=3 --dry-run", "unknown flag \"--dry-run\""),
            ("--repo=s3:x", "unknown flag \"--repo\""),
            ("-r x", "\"-r\" is not a flag"),
            ("keep-last=3", "is not a flag"),
            (
                "--keep-last=3; rm -rf /",
                "--keep-last needs a whole number",
            ),
            ("--keep-last=$(id)", "--keep-last needs a whole number"),
            ("--keep-daily=x", "--keep-daily needs a whole number"),
            ("--keep-daily", "--keep-daily needs a value"),
            ("--keep-daily --keep-last=1", "--keep-daily needs a value"),
            ("--keep-daily=", "--keep-daily needs a value"),
            ("--keep-within=2w", "needs a duration"),
            ("--keep-within=1m1m", "needs a duration"),
            ("--keep-within=d", "needs a duration"),
            ("--keep-tag=a b", "is not a flag"),
            ("--keep-tag=a;b", "comma-separated tags"),
            ("--keep-last=1 --keep-last=2", "--keep-last is given twice"),
        ] {
            let err = RetentionPolicy::parse(text).unwrap_err().to_string();
            assert!(err.contains(fragment), "{text:?}: {err}");
        }
    }

    #[test]
    fn policies_that_could_delete_the_newest_snapshot_are_detected() {
        assert!(
            !RetentionPolicy::parse("--keep-tag=x")
                .unwrap()
                .keeps_newest()
        );
        assert!(
            !RetentionPolicy::parse("--keep-last=0")
                .unwrap()
                .keeps_newest()
        );
        assert!(
            RetentionPolicy::parse("--keep-last=0 --keep-within=1d")
                .unwrap()
                .keeps_newest()
        );
    }
}
