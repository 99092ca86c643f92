//! Backup schedules: exactly what a Kubernetes CronJob accepts in `spec.schedule`
//! (the robfig/cron standard parser: five fields or a `@descriptor`), so a schedule
//! that passes here never fails later when the CronJob is applied.

/// Why a schedule is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("the schedule is empty (use five fields, e.g. \"0 2 * * *\")")]
    Empty,
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week), got {0}; e.g. \"0 2 * * *\""
    )]
    FieldCount(usize),
    #[error(
        "time zones cannot be set in the schedule ({0:?}); the schedule runs in the controller's time zone (UTC)"
    )]
    TimeZone(String),
    #[error(
        "unknown descriptor {0:?}: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
    )]
    Descriptor(String),
    #[error("{field} field {value:?}: {reason}")]
    Field {
        field: &'static str,
        value: String,
        reason: String,
    },
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// `?` is accepted as `*` in the day fields.
    question_mark: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

const FIELDS: [FieldSpec; 5] = [
    FieldSpec {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        question_mark: false,
    },
    FieldSpec {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        question_mark: false,
    },
    FieldSpec {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
        question_mark: true,
    },
    FieldSpec {
        name: "month",
        min: 1,
        max: 12,
        names: MONTHS,
        question_mark: false,
    },
    FieldSpec {
        name: "day-of-week",
        min: 0,
        max: 6,
        names: DAYS,
        question_mark: true,
    },
];

/// Descriptors of the standard parser; `@every` is refused because Kubernetes's
/// validation of CronJob schedules does not accept it on every supported version.
const DESCRIPTORS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// Checks a five-field cron schedule or descriptor.
pub fn validate_schedule(schedule: &str) -> Result<(), CronError> {
    let trimmed = schedule.trim();
    if trimmed.is_empty() {
        return Err(CronError::Empty);
    }
    if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
        return Err(CronError::TimeZone(
            trimmed
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        ));
    }
    if trimmed.starts_with('@') {
        return if DESCRIPTORS.contains(&trimmed.to_ascii_lowercase().as_str()) {
            Ok(())
        } else {
            Err(CronError::Descriptor(trimmed.to_string()))
        };
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if fields.len() != FIELDS.len() {
        return Err(CronError::FieldCount(fields.len()));
    }
    for (value, spec) in fields.iter().zip(FIELDS.iter()) {
        check_field(value, spec).map_err(|reason| CronError::Field {
            field: spec.name,
            value: value.to_string(),
            reason,
        })?;
    }
    Ok(())
}

fn check_field(field: &str, spec: &FieldSpec) -> Result<(), String> {
    for part in field.split(',') {
        check_part(part, spec)?;
    }
    Ok(())
}

/// One list element: `*`, `?`, `a`, `a-b`, each optionally `/step`.
fn check_part(part: &str, spec: &FieldSpec) -> Result<(), String> {
    if part.is_empty() {
        return Err("empty list element".to_string());
    }
    let (range, step) = match part.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (part, None),
    };
    if let Some(step) = step {
        match step.parse::<u32>() {
            Ok(0) => return Err("a step of 0 never matches".to_string()),
            Ok(_) => {}
            Err(_) => return Err(format!("step {step:?} is not a positive number")),
        }
    }
    if range == "*" || (range == "?" && spec.question_mark) {
        return Ok(());
    }
    let (low, high) = match range.split_once('-') {
        Some((low, high)) => (value(low, spec)?, Some(value(high, spec)?)),
        None => (value(range, spec)?, None),
    };
    if let Some(high) = high
        && low > high
    {
        return Err(format!("range start {low} is after its end {high}"));
    }
    Ok(())
}

fn value(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(index) = spec.names.iter().position(|n| *n == lower) {
        // Months are 1-based, days 0-based.
        return Ok(index as u32 + spec.min);
    }
    let number: u32 = text.parse().map_err(|_| {
        if spec.names.is_empty() {
            format!("{text:?} is not a number")
        } else {
            format!(
                "{text:?} is not a number or a name ({})",
                spec.names.join(", ")
            )
        }
    })?;
    if number < spec.min || number > spec.max {
        return Err(format!(
            "{number} is out of range {}-{}",
            spec.min, spec.max
        ));
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_kubernetes_accepts_are_valid() {
        for schedule in [
            "0 2 * * *",
            "0 3 * * *",
            "*/15 * * * *",
            "0 0 1 1 *",
            "0 0 ? * MON-FRI",
            "0 0 * * sun,sat",
            "5,35 1-5/2 1,15 jan-jun/2 0",
            "59 23 31 12 6",
            "0 2 * * *  ",
            "@daily",
            "@HOURLY",
            "@annually",
        ] {
            assert_eq!(validate_schedule(schedule), Ok(()), "{schedule}");
        }
    }

    #[test]
    fn invalid_schedules_name_the_field_and_the_rule() {
        for (schedule, fragment) in [
            ("", "empty"),
            ("0 0 2 * * *", "expected 5 fields"),
            ("0 2 * *", "got 4"),
            ("61 2 * * *", "minute field \"61\": 61 is out of range 0-59"),
            ("0 24 * * *", "hour field"),
            (
                "0 0 0 * *",
                "day-of-month field \"0\": 0 is out of range 1-31",
            ),
            ("0 0 * 13 *", "month field"),
            (
                "0 0 * * 7",
                "day-of-week field \"7\": 7 is out of range 0-6",
            ),
            ("0 0 * foo *", "is not a number or a name"),
            ("*/0 * * * *", "a step of 0"),
            ("*/x * * * *", "step \"x\""),
            ("5-1 * * * *", "range start 5 is after its end 1"),
            ("1,,2 * * * *", "empty list element"),
            ("? * * * *", "minute field \"?\""),
            ("TZ=UTC 0 2 * * *", "time zones"),
            ("CRON_TZ=Europe/Paris 0 2 * * *", "time zones"),
            ("@every 1h", "unknown descriptor"),
            ("@sometimes", "unknown descriptor"),
        ] {
            let err = validate_schedule(schedule).unwrap_err().to_string();
            assert!(err.contains(fragment), "{schedule:?}: {err}");
        }
    }
}
