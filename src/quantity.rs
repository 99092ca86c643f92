//! Kubernetes resource quantities (`10Gi`, `500m`, `1e3`), parsed exactly so sizes can be
//! compared (a volume may grow, never shrink) without floating-point surprises.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Nano-units per unit: Kubernetes itself keeps quantities at nano precision.
const NANO: i128 = 1_000_000_000;

/// A parsed quantity: its exact value in nano-units, and the text it came from.
#[derive(Clone, Debug)]
pub struct Quantity {
    nanos: i128,
    text: String,
}

/// Why a string is not a Kubernetes quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("an empty string is not a quantity (use e.g. 10Gi, 500Mi, 1G)")]
    Empty,
    #[error("{text:?} is not a Kubernetes quantity: {reason} (use e.g. 10Gi, 500Mi, 1G)")]
    Invalid { text: String, reason: String },
    #[error("{text:?} is too large to be a quantity")]
    TooLarge { text: String },
}

impl Quantity {
    /// The value in bytes (or plain units) when it is a whole, non-negative number.
    pub fn as_units(&self) -> Option<u64> {
        if self.nanos < 0 || self.nanos % NANO != 0 {
            return None;
        }
        u64::try_from(self.nanos / NANO).ok()
    }

    /// The exact value in nano-units (sub-nano fractions are rounded up, as Kubernetes does).
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    pub fn is_positive(&self) -> bool {
        self.nanos > 0
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse(text).map(|nanos| Quantity {
            nanos,
            text: text.to_string(),
        })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

/// The grammar of k8s.io/apimachinery `resource.Quantity`:
/// `[+-] (digits[.digits] | .digits) [suffix]`, suffix one of the binary `Ki Mi Gi Ti Pi Ei`,
/// the decimal `n u m k M G T P E`, or a decimal exponent `e<int>` / `E<int>`.
fn parse(text: &str) -> Result<i128, QuantityError> {
    if text.is_empty() {
        return Err(QuantityError::Empty);
    }
    let invalid = |reason: &str| QuantityError::Invalid {
        text: text.to_string(),
        reason: reason.to_string(),
    };
    let too_large = || QuantityError::TooLarge {
        text: text.to_string(),
    };
    let (negative, rest) = match text.as_bytes()[0] {
        b'+' => (false, &text[1..]),
        b'-' => (true, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if fraction.contains('.') {
        return Err(invalid("more than one decimal point"));
    }
    if whole.is_empty() && fraction.is_empty() {
        return Err(invalid("it must start with a number"));
    }
    // Mantissa as an integer over 10^fraction_digits.
    let mut mantissa: i128 = 0;
    for digit in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(digit - b'0')))
            .ok_or_else(too_large)?;
    }
    let fraction_digits = i32::try_from(fraction.len()).map_err(|_| too_large())?;
    let (binary_shift, decimal_exponent) =
        suffix_scale(suffix).map_err(|reason| invalid(&reason))?;
    // value = mantissa * 2^binary_shift * 10^(decimal_exponent - fraction_digits), in nanos:
    // multiply by 10^9 first so fractions of a unit stay exact.
    let mut nanos = mantissa;
    for _ in 0..binary_shift {
        nanos = nanos.checked_mul(2).ok_or_else(too_large)?;
    }
    let scale = decimal_exponent - fraction_digits + 9;
    if scale >= 0 {
        for _ in 0..scale {
            nanos = nanos.checked_mul(10).ok_or_else(too_large)?;
        }
    } else {
        let divisor = (0..-scale).try_fold(1i128, |d, _| d.checked_mul(10));
        nanos = match divisor {
            // Below a nano-unit: round up, as Kubernetes does.
            Some(divisor) => (nanos + divisor - 1) / divisor,
            None => i128::from(nanos > 0),
        };
    }
    Ok(if negative { -nanos } else { nanos })
}

/// (power of two, power of ten) of a suffix.
fn suffix_scale(suffix: &str) -> Result<(u32, i32), String> {
    Ok(match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or_else(|| format!("unknown suffix {suffix:?}"))?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 3
            {
                return Err(format!("unknown suffix {suffix:?}"));
            }
            let value: i32 = exponent
                .parse()
                .map_err(|_| format!("unknown suffix {suffix:?}"))?;
            (0, value)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn binary_and_decimal_suffixes_have_their_exact_values() {
        for (text, units) in [
            ("0", 0u64),
            ("1", 1),
            ("10Gi", 10 << 30),
            ("1Ki", 1024),
            ("1.5Gi", 3 << 29),
            ("1k", 1000),
            ("1M", 1_000_000),
            ("2G", 2_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1e3", 1000),
            ("1E3", 1000),
            ("+5", 5),
            ("1Ei", 1 << 60),
        ] {
            assert_eq!(q(text).as_units(), Some(units), "{text}");
        }
    }

    #[test]
    fn equal_values_in_different_units_compare_equal() {
        assert_eq!(q("1Gi"), q("1024Mi"));
        assert_eq!(q("1000m"), q("1"));
        assert_eq!(q("0.5"), q("500m"));
        assert_eq!(q(".5"), q("500m"));
        assert_eq!(q("1e-3"), q("1m"));
    }

    #[test]
    fn ordering_follows_the_values() {
        assert!(q("1G") < q("1Gi"));
        assert!(q("500m") < q("1"));
        assert!(q("10Gi") < q("20Gi"));
        assert!(q("-1") < q("0"));
        assert!(q("1Ti") > q("1000Gi"));
    }

    #[test]
    fn fractions_and_signs() {
        assert_eq!(q("100m").as_units(), None);
        assert_eq!(q("-1Gi").as_units(), None);
        assert!(!q("-1Gi").is_positive());
        assert!(!q("0").is_positive());
        assert!(q("1n").is_positive());
        assert_eq!(q("1n").nanos(), 1);
        assert_eq!(q("0.1n").nanos(), 1, "sub-nano values round up");
    }

    #[test]
    fn display_keeps_the_text() {
        assert_eq!(q("1.50Gi").to_string(), "1.50Gi");
    }

    #[test]
    fn invalid_quantities_say_why() {
        for (text, fragment) in [
            ("", "empty"),
            ("10GB", "unknown suffix \"GB\""),
            ("10gi", "unknown suffix \"gi\""),
            ("Gi", "start with a number"),
            ("1.2.3", "more than one decimal point"),
            (" 1", "start with a number"),
            ("1 Gi", "unknown suffix \" Gi\""),
            ("--1", "start with a number"),
            ("1e", "unknown suffix"),
            ("1e1.5", "unknown suffix"),
            ("ten", "start with a number"),
            ("1e9999", "unknown suffix"),
        ] {
            let err = text.parse::<Quantity>().unwrap_err().to_string();
            assert!(err.contains(fragment), "{text:?}: {err}");
        }
    }

    #[test]
    fn huge_quantities_are_errors_not_panics() {
        let err = "9".repeat(60).parse::<Quantity>().unwrap_err();
        assert!(matches!(err, QuantityError::TooLarge { .. }), "{err}");
        let err = "999999999999999999999999Ei"
            .parse::<Quantity>()
            .unwrap_err();
        assert!(matches!(err, QuantityError::TooLarge { .. }), "{err}");
        assert!("1e-999".parse::<Quantity>().is_ok());
    }
}
