//! Statements that may carry a password (a SCRAM verifier from the operator, anything
//! from a dump) are shown only up to the password.

/// Whether `sql` may carry a password: any `PASSWORD`, in any case (an identifier
/// holding the word errs on the safe side).
pub fn carries_password(sql: &str) -> bool {
    password_at(sql).is_some()
}

/// `sql` cut before its password, for logs and error messages.
pub fn redact_password(sql: &str) -> String {
    match password_at(sql) {
        Some(at) => format!("{} PASSWORD <redacted>", sql[..at].trim_end()),
        None => sql.to_string(),
    }
}

fn password_at(sql: &str) -> Option<usize> {
    // ASCII upper-casing keeps every byte offset.
    sql.to_ascii_uppercase().find("PASSWORD")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_cut_whatever_their_case() {
        assert_eq!(
            redact_password("ALTER ROLE \"a\" PASSWORD 'SCRAM-SHA-256$x'"),
            "ALTER ROLE \"a\" PASSWORD <redacted>"
        );
        assert_eq!(
            redact_password("create role a with login password 'clear';"),
            "create role a with login PASSWORD <redacted>"
        );
        assert!(carries_password("alter role a password 'x'"));
    }

    #[test]
    fn statements_without_a_password_are_kept_whole() {
        assert_eq!(redact_password("DROP ROLE \"a\""), "DROP ROLE \"a\"");
        assert!(!carries_password("GRANT \"r\" TO \"a\""));
    }
}
