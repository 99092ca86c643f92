//! Who may instruct an instance: `POST /ha/instruct` (promote, fence, follow, hand over)
//! carries a token derived from the cluster's superuser password, which both the
//! operator (its Secret) and the instances (their spec source) hold. Whoever could forge
//! it owns the database already; a pod that can merely reach the status port (a network
//! without NetworkPolicy enforcement) cannot turn an instance into a second primary. The
//! password itself never travels: the token is an HMAC of a fixed purpose under it.

use base64::Engine;

/// The header the token travels in, as `Bearer <token>`.
pub const HEADER: &str = "authorization";

const PURPOSE: &[u8] = b"postgres-operator /ha/instruct v1";

/// The token for a cluster whose superuser password is `password`.
pub fn instruct_token(password: &str) -> String {
    let tag = ring::hmac::sign(&key(password), PURPOSE);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
}

fn key(password: &str) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, password.as_bytes())
}

/// The header's value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Whether the header's value `presented` carries the token of `password`, compared in
/// constant time. No password to compare with refuses everything.
pub fn admits(presented: Option<&str>, password: Option<&str>) -> bool {
    let (Some(presented), Some(password)) = (presented, password) else {
        return false;
    };
    let Some(token) = presented.strip_prefix("Bearer ") else {
        return false;
    };
    let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim()) else {
        return false;
    };
    // ring compares the tags in constant time.
    ring::hmac::verify(&key(password), PURPOSE, &tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_of_the_current_password_is_admitted() {
        let token = instruct_token("s3cret");
        assert_eq!(token, instruct_token("s3cret"), "the same on both sides");
        assert_ne!(token, instruct_token("s3cret2"));
        assert!(!token.contains("s3cret"));
        assert!(admits(Some(&bearer(&token)), Some("s3cret")));
        assert!(!admits(Some(&bearer(&token)), Some("rotated")));
        assert!(!admits(Some(&token), Some("s3cret")), "without the scheme");
        assert!(!admits(None, Some("s3cret")));
        assert!(
            !admits(Some(&bearer(&token)), None),
            "nothing to check against"
        );
        assert!(!admits(Some("Bearer "), Some("s3cret")));
    }
}
