//! PostgreSQL's own parsing of setting values (guc.c: `parse_int`, `parse_real`,
//! `convert_to_base_unit`, `parse_bool`, enum lookup), so a value is refused here exactly
//! when the server would refuse it at start-up.

/// The unit a setting is stored in, as `pg_settings.unit` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseUnit {
    Bytes,
    Kilobytes,
    Megabytes,
    /// Pages of `BLCKSZ` or `XLOG_BLCKSZ` (8192 in every Debian build).
    Blocks8k,
    Milliseconds,
    Seconds,
    Minutes,
}

impl BaseUnit {
    /// From `pg_settings.unit`; `None` for a unit this module does not know.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "B" => Self::Bytes,
            "kB" => Self::Kilobytes,
            "MB" => Self::Megabytes,
            "8kB" => Self::Blocks8k,
            "ms" => Self::Milliseconds,
            "s" => Self::Seconds,
            "min" => Self::Minutes,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Bytes => "B",
            Self::Kilobytes => "kB",
            Self::Megabytes => "MB",
            Self::Blocks8k => "8kB",
            Self::Milliseconds => "ms",
            Self::Seconds => "s",
            Self::Minutes => "min",
        }
    }

    /// The units a value may carry, largest first, with their multiplier into this base
    /// unit written as guc.c writes them (the time ones are not all exact in binary, so
    /// they are not derived from each other).
    fn conversions(self) -> [(&'static str, f64); 6] {
        const KB: f64 = 1024.0;
        let memory = |bytes_per_base: f64| {
            [
                ("TB", KB * KB * KB * KB / bytes_per_base),
                ("GB", KB * KB * KB / bytes_per_base),
                ("MB", KB * KB / bytes_per_base),
                ("kB", KB / bytes_per_base),
                ("B", 1.0 / bytes_per_base),
                ("", 0.0),
            ]
        };
        match self {
            Self::Bytes => memory(1.0),
            Self::Kilobytes => memory(KB),
            Self::Megabytes => memory(KB * KB),
            Self::Blocks8k => memory(8.0 * KB),
            Self::Milliseconds => [
                ("d", 1000.0 * 60.0 * 60.0 * 24.0),
                ("h", 1000.0 * 60.0 * 60.0),
                ("min", 1000.0 * 60.0),
                ("s", 1000.0),
                ("ms", 1.0),
                ("us", 1.0 / 1000.0),
            ],
            Self::Seconds => [
                ("d", 60.0 * 60.0 * 24.0),
                ("h", 60.0 * 60.0),
                ("min", 60.0),
                ("s", 1.0),
                ("ms", 1.0 / 1000.0),
                ("us", 1.0 / (1000.0 * 1000.0)),
            ],
            Self::Minutes => [
                ("d", 60.0 * 24.0),
                ("h", 60.0),
                ("min", 1.0),
                ("s", 1.0 / 60.0),
                ("ms", 1.0 / (1000.0 * 60.0)),
                ("us", 1.0 / (1000.0 * 1000.0 * 60.0)),
            ],
        }
    }

    /// The unit names a value may carry, for messages.
    pub fn accepted_units(self) -> Vec<&'static str> {
        let mut units: Vec<&str> = self
            .conversions()
            .iter()
            .map(|(unit, _)| *unit)
            .filter(|unit| !unit.is_empty())
            .collect();
        units.reverse();
        units
    }

    /// `value unit` in this base unit; a fractional amount is rounded to a whole number
    /// of the next smaller unit first, as PostgreSQL does (`30.1GB` is 30822MB).
    fn convert(self, value: f64, unit: &str) -> Option<f64> {
        let table = self.conversions();
        let index = table.iter().position(|(name, _)| *name == unit)?;
        let converted = value * table[index].1;
        Some(match table.get(index + 1) {
            Some((next, multiplier)) if !next.is_empty() => {
                (converted / multiplier).round_ties_even() * multiplier
            }
            _ => converted,
        })
    }
}

/// Why PostgreSQL would refuse a number.
#[derive(Clone, Debug, PartialEq)]
pub enum NumberError {
    /// Not a number at all (or NaN, or a number followed by other text).
    Syntax,
    /// A unit on a setting that has none, or a unit name that is not one of its units.
    Unit(String),
    /// Beyond what a 32-bit integer (or a double) holds.
    Overflow,
}

/// C's `isspace` in the C locale.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// C's `strtol(text, &end, 0)`: the value and the rest, `None` without digits; the value
/// is `None` on overflow (ERANGE), as `parse_int` then re-reads the text as a double.
fn strtol(text: &str) -> Option<(Option<i64>, &str)> {
    let body = text.trim_start_matches(is_c_space);
    let (negative, body) = match body.as_bytes().first() {
        Some(b'-') => (true, &body[1..]),
        Some(b'+') => (false, &body[1..]),
        _ => (false, body),
    };
    let hex_digits = body
        .strip_prefix("0x")
        .or_else(|| body.strip_prefix("0X"))
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_hexdigit()));
    let (radix, digits) = match hex_digits {
        Some(rest) => (16, rest),
        None if body.starts_with('0') => (8, body),
        None => (10, body),
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let magnitude = i128::from_str_radix(&digits[..end], radix).ok();
    let value = magnitude
        .map(|m| if negative { -m } else { m })
        .and_then(|v| i64::try_from(v).ok());
    Some((value, &digits[end..]))
}

/// C's `strtod`: the value and the rest, `None` without a number; `Overflow` when the
/// result is out of a double's range (ERANGE).
fn strtod(text: &str) -> Option<Result<(f64, &str), NumberError>> {
    let body = text.trim_start_matches(is_c_space);
    let sign_len = usize::from(body.starts_with(['+', '-']));
    let negative = body.starts_with('-');
    let unsigned = &body[sign_len..];
    let lower = unsigned.to_ascii_lowercase();
    for (word, value) in [
        ("infinity", f64::INFINITY),
        ("inf", f64::INFINITY),
        ("nan", f64::NAN),
    ] {
        if lower.starts_with(word) {
            let value = if negative { -value } else { value };
            return Some(Ok((value, &unsigned[word.len()..])));
        }
    }
    let (magnitude, rest) = if lower.starts_with("0x")
        && unsigned[2..].starts_with(|c: char| c.is_ascii_hexdigit() || c == '.')
    {
        hex_float(&unsigned[2..])?
    } else {
        decimal_float(unsigned)?
    };
    let value = if negative { -magnitude } else { magnitude };
    if value.is_infinite() || (value != 0.0 && value.abs() < f64::MIN_POSITIVE) {
        return Some(Err(NumberError::Overflow));
    }
    Some(Ok((value, rest)))
}

/// `digits[.digits][e[+-]digits]`, at least one digit in the mantissa.
fn decimal_float(text: &str) -> Option<(f64, &str)> {
    let bytes = text.as_bytes();
    let digits_from = |start: usize| {
        bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let integer = digits_from(0);
    let mut end = integer;
    let mut fraction = 0;
    if bytes.get(end) == Some(&b'.') {
        fraction = digits_from(end + 1);
        end += 1 + fraction;
    }
    if integer + fraction == 0 {
        return None;
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        let exponent = digits_from(end + 1 + sign);
        if exponent > 0 {
            end += 1 + sign + exponent;
        }
    }
    // Rust's parser rounds correctly, as glibc's does.
    let value = text[..end].parse::<f64>().ok()?;
    Some((value, &text[end..]))
}

/// `hexdigits[.hexdigits][p[+-]digits]` after the `0x`.
fn hex_float(text: &str) -> Option<(f64, &str)> {
    let mut mantissa = 0.0_f64;
    let mut exponent: i64 = 0;
    let mut seen_digit = false;
    let mut seen_point = false;
    let mut end = 0;
    for (index, c) in text.char_indices() {
        if let Some(digit) = c.to_digit(16) {
            mantissa = mantissa * 16.0 + f64::from(digit);
            if seen_point {
                exponent -= 4;
            }
            seen_digit = true;
        } else if c == '.' && !seen_point {
            seen_point = true;
        } else {
            break;
        }
        end = index + c.len_utf8();
    }
    if !seen_digit {
        return None;
    }
    let bytes = text.as_bytes();
    if matches!(bytes.get(end), Some(b'p' | b'P')) {
        let sign_len = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        let start = end + 1 + sign_len;
        let count = bytes[start.min(bytes.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if count > 0 {
            let written: i64 = text[start..start + count].parse().unwrap_or(i64::MAX / 2);
            exponent += if bytes[end + 1] == b'-' {
                -written
            } else {
                written
            };
            end = start + count;
        }
    }
    let exponent = i32::try_from(exponent.clamp(-4000, 4000)).unwrap_or(0);
    Some((mantissa * 2f64.powi(exponent), &text[end..]))
}

/// What follows a number: nothing, or a unit of `unit` (spaces around it allowed).
fn apply_unit(value: f64, rest: &str, unit: Option<BaseUnit>) -> Result<f64, NumberError> {
    let rest = rest.trim_matches(is_c_space);
    if rest.is_empty() {
        return Ok(value);
    }
    let Some(unit) = unit else {
        return Err(NumberError::Syntax);
    };
    if rest.contains(is_c_space) {
        return Err(NumberError::Unit(rest.to_string()));
    }
    unit.convert(value, rest)
        .ok_or_else(|| NumberError::Unit(rest.to_string()))
}

/// `parse_int`: decimal, octal (leading 0) or hex (0x) integers, or a decimal fraction,
/// with an optional unit, rounded to the nearest integer (ties to even) in `unit`.
pub fn parse_int(text: &str, unit: Option<BaseUnit>) -> Result<i64, NumberError> {
    let (value, rest) = match strtol(text) {
        Some((Some(value), rest)) if !rest.starts_with(['.', 'e', 'E']) => {
            // Exact for every value within the range that is accepted.
            (value as f64, rest)
        }
        // A fraction, an exponent or an overflow: PostgreSQL reads it again as a double.
        Some(_) => strtod(text).ok_or(NumberError::Syntax)??,
        None => return Err(NumberError::Syntax),
    };
    if value.is_nan() {
        return Err(NumberError::Syntax);
    }
    let value = apply_unit(value, rest, unit)?.round_ties_even();
    if value > f64::from(i32::MAX) || value < f64::from(i32::MIN) {
        return Err(NumberError::Overflow);
    }
    // In i32's range and integral: the conversion is exact.
    Ok(value as i64)
}

/// `parse_real`: a double with an optional unit.
pub fn parse_real(text: &str, unit: Option<BaseUnit>) -> Result<f64, NumberError> {
    let (value, rest) = strtod(text).ok_or(NumberError::Syntax)??;
    if value.is_nan() {
        return Err(NumberError::Syntax);
    }
    apply_unit(value, rest, unit)
}

/// `parse_bool`: on, off, and any prefix of true, false, yes, no (case-insensitive;
/// `o` alone is ambiguous), 1 and 0.
pub fn parse_bool(text: &str) -> Option<bool> {
    let lower = text.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| lower.len() >= min && word.starts_with(&lower);
    match lower.as_bytes().first()? {
        b't' if prefix_of("true", 1) => Some(true),
        b'f' if prefix_of("false", 1) => Some(false),
        b'y' if prefix_of("yes", 1) => Some(true),
        b'n' if prefix_of("no", 1) => Some(false),
        b'o' if prefix_of("on", 2) => Some(true),
        b'o' if prefix_of("off", 2) => Some(false),
        b'1' if lower.len() == 1 => Some(true),
        b'0' if lower.len() == 1 => Some(false),
        _ => None,
    }
}

/// Spellings of on/off that PostgreSQL accepts for its on/off-like enums without
/// listing them in `pg_settings.enumvals` (hidden entries of their option tables).
const HIDDEN_BOOLEAN_SPELLINGS: &[&str] = &["true", "false", "yes", "no", "1", "0"];

/// Enum lookup: case-insensitive, exact.
pub fn enum_matches(values: &[String], text: &str) -> bool {
    let listed = |wanted: &str| values.iter().any(|v| v.eq_ignore_ascii_case(wanted));
    listed(text)
        || (listed("on")
            && listed("off")
            && HIDDEN_BOOLEAN_SPELLINGS
                .iter()
                .any(|spelling| spelling.eq_ignore_ascii_case(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_take_decimal_octal_and_hex_forms_like_strtol() {
        assert_eq!(parse_int("100", None), Ok(100));
        assert_eq!(parse_int(" -7", None), Ok(-7));
        assert_eq!(parse_int("010", None), Ok(8));
        assert_eq!(parse_int("0x1F", None), Ok(31));
        assert_eq!(parse_int("+5 ", None), Ok(5));
        // strtol stops at the 8 (not octal): the rest is no unit of a unitless setting.
        assert_eq!(parse_int("08", None), Err(NumberError::Syntax));
        assert_eq!(parse_int("0x", None), Err(NumberError::Syntax));
    }

    #[test]
    fn integers_given_as_fractions_round_half_to_even() {
        assert_eq!(parse_int("2.5", None), Ok(2));
        assert_eq!(parse_int("3.5", None), Ok(4));
        assert_eq!(parse_int("1e3", None), Ok(1000));
        assert_eq!(parse_int("1.5e1", None), Ok(15));
    }

    #[test]
    fn words_and_trailing_text_are_not_integers() {
        for bad in ["lots", "", " ", "1 2", "1,000", "inf", "nan", "1e"] {
            assert!(parse_int(bad, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn integers_beyond_32_bits_overflow() {
        assert_eq!(parse_int("2147483647", None), Ok(2147483647));
        assert_eq!(parse_int("2147483648", None), Err(NumberError::Overflow));
        assert_eq!(
            parse_int("99999999999999999999", None),
            Err(NumberError::Overflow)
        );
        assert_eq!(
            parse_int("1TB", Some(BaseUnit::Bytes)),
            Err(NumberError::Overflow)
        );
    }

    #[test]
    fn memory_units_convert_into_the_setting_unit() {
        let pages = Some(BaseUnit::Blocks8k);
        assert_eq!(parse_int("256MB", pages), Ok(32768));
        assert_eq!(parse_int("8kB", pages), Ok(1));
        assert_eq!(parse_int("256 MB ", pages), Ok(32768));
        assert_eq!(parse_int("1GB", Some(BaseUnit::Kilobytes)), Ok(1024 * 1024));
        assert_eq!(parse_int("1024B", Some(BaseUnit::Kilobytes)), Ok(1));
        assert_eq!(parse_int("1MB", Some(BaseUnit::Megabytes)), Ok(1));
        // 30.1GB is rounded to whole MB first, then to whole pages.
        assert_eq!(parse_int("30.1GB", pages), Ok(30822 * 128));
    }

    #[test]
    fn time_units_convert_into_the_setting_unit() {
        let ms = Some(BaseUnit::Milliseconds);
        assert_eq!(parse_int("5min", ms), Ok(300_000));
        assert_eq!(parse_int("1d", Some(BaseUnit::Seconds)), Ok(86400));
        assert_eq!(parse_int("90s", Some(BaseUnit::Minutes)), Ok(2));
        assert_eq!(parse_int("1500us", ms), Ok(2));
        assert_eq!(parse_real("1500us", ms), Ok(1.5));
        assert_eq!(parse_real("0.5s", ms), Ok(500.0));
    }

    #[test]
    fn unit_names_are_case_sensitive_and_must_fit_the_setting() {
        let pages = Some(BaseUnit::Blocks8k);
        assert_eq!(
            parse_int("256mb", pages),
            Err(NumberError::Unit("mb".into()))
        );
        assert_eq!(parse_int("1s", pages), Err(NumberError::Unit("s".into())));
        assert_eq!(
            parse_int("1MB", Some(BaseUnit::Seconds)),
            Err(NumberError::Unit("MB".into()))
        );
        assert_eq!(
            parse_int("1 M B", pages),
            Err(NumberError::Unit("M B".into()))
        );
        assert_eq!(parse_int("100MB", None), Err(NumberError::Syntax));
    }

    #[test]
    fn reals_follow_strtod() {
        assert_eq!(parse_real("0.9", None), Ok(0.9));
        assert_eq!(parse_real(".5", None), Ok(0.5));
        assert_eq!(parse_real("1e-3", None), Ok(0.001));
        assert_eq!(parse_real("0x1p3", None), Ok(8.0));
        assert_eq!(parse_real("inf", None), Ok(f64::INFINITY));
        assert_eq!(parse_real("nan", None), Err(NumberError::Syntax));
        assert_eq!(parse_real("1e999", None), Err(NumberError::Overflow));
        assert_eq!(parse_real("0.9x", None), Err(NumberError::Syntax));
        assert_eq!(parse_real("much", None), Err(NumberError::Syntax));
    }

    #[test]
    fn booleans_accept_unique_prefixes() {
        for on in ["on", "ON", "t", "tr", "true", "y", "yes", "1"] {
            assert_eq!(parse_bool(on), Some(true), "{on}");
        }
        for off in ["off", "of", "f", "FALSE", "n", "no", "0"] {
            assert_eq!(parse_bool(off), Some(false), "{off}");
        }
        for bad in ["o", "", "maybe", "truee", "onn", "2", "10", " on"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn enums_match_case_insensitively_with_hidden_boolean_spellings() {
        let values: Vec<String> = ["partition", "on", "off"].map(String::from).to_vec();
        assert!(enum_matches(&values, "Partition"));
        assert!(enum_matches(&values, "yes"));
        assert!(!enum_matches(&values, "part"));
        let levels: Vec<String> = ["debug", "info"].map(String::from).to_vec();
        assert!(!enum_matches(&levels, "true"));
    }
}
