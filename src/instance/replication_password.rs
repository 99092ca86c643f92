//! Which replication password a standby streams with while the password rotates. The new
//! Secret reaches every instance at once, but the primary's role takes the new password
//! only when the primary's manager alters it; a standby that switched first would be
//! refused, and retry only after `wal_retrieve_retry_interval` (with a synchronous
//! quorum, commits would wait meanwhile). A standby reads the role's verifier in its own
//! replica of the catalog (the primary's `ALTER ROLE` arrives by the stream it is
//! using) and switches once that verifier is the new password's.

use crate::sql::scram;

/// The password in the standby's `primary_conninfo`.
#[derive(Debug, Default)]
pub struct ReplicationPassword {
    in_use: Option<String>,
}

impl ReplicationPassword {
    /// What to stream with when the Secret says `wanted`.
    pub fn current<'a>(&'a self, wanted: &'a str) -> &'a str {
        self.in_use.as_deref().unwrap_or(wanted)
    }

    /// Whether the standby already streams with `wanted` (nothing to look up).
    pub fn is(&self, wanted: &str) -> bool {
        self.in_use.as_deref() == Some(wanted)
    }

    /// A primary altered the role itself: the Secret's password is the role's.
    pub fn settle(&mut self, wanted: &str) {
        self.in_use = Some(wanted.to_string());
    }

    /// Follows the Secret once the replicated catalog holds its password (`verifier`:
    /// the role's stored verifier, `None` when the role is not there). True when the
    /// password to stream with changed.
    pub fn follow(&mut self, wanted: &str, verifier: Option<&str>) -> bool {
        let Some(in_use) = &self.in_use else {
            self.settle(wanted);
            return false;
        };
        if in_use == wanted {
            return false;
        }
        let works = |password: &str| verifier.is_some_and(|v| scram::matches(password, v));
        // The old one still works: the primary has not altered the role yet.
        if !works(wanted) && works(in_use) {
            return false;
        }
        self.settle(wanted);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(password: &str) -> String {
        scram::verifier(password, &[7; 16])
    }

    #[test]
    fn a_standby_keeps_the_old_password_until_the_role_has_the_new_one() {
        let mut password = ReplicationPassword::default();
        assert_eq!(password.current("old"), "old");
        assert!(!password.follow("old", Some(&verifier("old"))));
        // The Secret rotated; the primary has not altered the role yet.
        assert!(!password.follow("new", Some(&verifier("old"))));
        assert_eq!(password.current("new"), "old");
        // The ALTER ROLE replayed here: switch.
        assert!(password.follow("new", Some(&verifier("new"))));
        assert_eq!(password.current("new"), "new");
        assert!(!password.follow("new", Some(&verifier("new"))));
    }

    #[test]
    fn a_password_that_works_for_neither_gives_way_to_the_secret() {
        let mut password = ReplicationPassword::default();
        password.settle("first");
        // Rotated twice, or the role is missing: the old one cannot work either.
        assert!(password.follow("third", Some(&verifier("second"))));
        assert_eq!(password.current("third"), "third");
        password.settle("a");
        assert!(password.follow("b", None));
        assert_eq!(password.current("b"), "b");
    }

    #[test]
    fn before_anything_is_known_the_secret_is_used() {
        let mut password = ReplicationPassword::default();
        assert_eq!(password.current("s"), "s");
        assert!(!password.follow("s", None));
        assert_eq!(password.current("s"), "s");
    }
}
