//! Quoting, in one place: every identifier and literal in generated SQL goes through here.

/// A quoted identifier: `"name"` with `"` doubled, so any name (upper case, spaces,
/// quotes) means exactly itself.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted string literal with `'` doubled. The server runs with
/// `standard_conforming_strings = on` (the default), so backslashes are plain characters.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_cannot_escape_their_quotes() {
        assert_eq!(ident("App User"), "\"App User\"");
        assert_eq!(
            ident("x\"; DROP TABLE t; --"),
            "\"x\"\"; DROP TABLE t; --\""
        );
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\'b"), "'a\\''b'");
    }
}
