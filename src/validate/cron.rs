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

/// The values a valid field matches, and whether it was restricted (not `*` or `?`),
/// which decides how the two day fields combine.
fn expand_field(field: &str, spec: &FieldSpec) -> Option<(Vec<bool>, bool)> {
    let mut matches = vec![false; spec.max as usize + 1];
    let restricted = !(field == "*" || (field == "?" && spec.question_mark));
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, step.parse::<u32>().ok()?),
            None => (part, 1),
        };
        let (low, high) = if range == "*" || (range == "?" && spec.question_mark) {
            (spec.min, spec.max)
        } else {
            match range.split_once('-') {
                Some((low, high)) => (value(low, spec).ok()?, value(high, spec).ok()?),
                // `a/step` runs from a to the end of the range.
                None if part != range => (value(range, spec).ok()?, spec.max),
                None => {
                    let v = value(range, spec).ok()?;
                    (v, v)
                }
            }
        };
        let mut v = low;
        while v <= high {
            matches[v as usize] = true;
            v += step.max(1);
        }
    }
    Some((matches, restricted))
}

/// The longest time between two runs of a valid `schedule`, in seconds: how old the
/// last backup may be when runs succeed. None for an invalid schedule, or one that
/// never runs in four years (e.g. the 30th of February).
pub fn longest_interval_seconds(schedule: &str) -> Option<u64> {
    validate_schedule(schedule).ok()?;
    let trimmed = schedule.trim().to_ascii_lowercase();
    let expanded = match trimmed.as_str() {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        other => other,
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    let mut sets = Vec::new();
    for (field, spec) in fields.iter().zip(FIELDS.iter()) {
        sets.push(expand_field(field, spec)?);
    }
    let (minutes, hours, dom, months, dow) = (&sets[0], &sets[1], &sets[2], &sets[3], &sets[4]);
    let minutes_of_day: Vec<u64> = (0..24u64)
        .filter(|h| hours.0[*h as usize])
        .flat_map(|h| {
            (0..60u64)
                .filter(|m| minutes.0[*m as usize])
                .map(move |m| h * 60 + m)
        })
        .collect();
    let (first, last) = (*minutes_of_day.first()?, *minutes_of_day.last()?);
    let within_a_day = minutes_of_day
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0);
    // Four years of calendar, a leap year among them.
    let mut run_days = Vec::new();
    let mut date = k8s_openapi::jiff::civil::date(2027, 1, 1);
    for day in 0..(4 * 366u64) {
        let in_month = months.0[date.month() as usize];
        let on_dom = dom.0[date.day() as usize];
        let on_dow = dow.0[date.weekday().to_sunday_zero_offset() as usize];
        // Both day fields restricted: either matches (the standard parser's rule).
        let on_day = if dom.1 && dow.1 {
            on_dom || on_dow
        } else {
            on_dom && on_dow
        };
        if in_month && on_day {
            run_days.push(day);
        }
        date = date.tomorrow().ok()?;
    }
    let across_days = run_days
        .windows(2)
        .map(|w| (w[1] - w[0]) * 1440 + first - last)
        .max();
    let minutes = match across_days {
        Some(across) => across.max(within_a_day),
        None => return None,
    };
    Some(minutes * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_interval_between_runs_is_computed_from_the_schedule() {
        let hour = 3600;
        let day = 24 * hour;
        for (schedule, want) in [
            ("0 2 * * *", day),
            ("@daily", day),
            ("@hourly", hour),
            ("*/15 * * * *", 900),
            ("0 2,14 * * *", 12 * hour),
            ("0 1,2 * * *", 23 * hour),
            ("30 3 * * 1-5", 3 * day),
            ("0 0 * * 0", 7 * day),
            ("@weekly", 7 * day),
            ("0 0 1 * *", 31 * day),
            ("0 0 1 1 *", 366 * day),
            ("0 0 1,15 * mon", 7 * day),
        ] {
            assert_eq!(longest_interval_seconds(schedule), Some(want), "{schedule}");
        }
        assert_eq!(longest_interval_seconds("0 0 30 2 *"), None);
        assert_eq!(longest_interval_seconds("not a schedule"), None);
    }

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
