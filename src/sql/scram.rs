//! SCRAM-SHA-256 password verifiers as PostgreSQL stores them
//! (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`): computed here so a
//! password never travels or gets logged in clear text, and checked here so an unchanged
//! password is never set again.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::{LazyLock, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::{digest, hmac, pbkdf2};

/// PostgreSQL's default iteration count (`scram_iterations`).
pub const ITERATIONS: u32 = 4096;

fn keys(password: &str, salt: &[u8], iterations: NonZeroU32) -> ([u8; 32], [u8; 32]) {
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let server_key = hmac::sign(&key, b"Server Key");
    let mut stored = [0u8; 32];
    stored.copy_from_slice(digest::digest(&digest::SHA256, client_key.as_ref()).as_ref());
    let mut server = [0u8; 32];
    server.copy_from_slice(server_key.as_ref());
    (stored, server)
}

/// The verifier of `password` with `salt` (16 random bytes in practice).
pub fn verifier(password: &str, salt: &[u8]) -> String {
    let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
    let (stored, server) = keys(password, salt, iterations);
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored),
        STANDARD.encode(server)
    )
}

/// Pairs already proven to match, by SHA-256 of (password, verifier): a settled cluster
/// re-checks every user on every pass, and each check costs 4,096 HMAC rounds.
static PROVEN: LazyLock<Mutex<HashSet<[u8; 32]>>> = LazyLock::new(Mutex::default);
/// Enough for every user of many clusters; past it the memo starts over.
const PROVEN_CAPACITY: usize = 10_000;

fn pair_digest(password: &str, verifier: &str) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(password.as_bytes());
    context.update(&[0]);
    context.update(verifier.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// Whether `password` is the one `verifier` was made from. Anything that is not a
/// well-formed SCRAM verifier (an md5 hash, nothing) does not match.
pub fn matches(password: &str, verifier: &str) -> bool {
    let key = pair_digest(password, verifier);
    if PROVEN.lock().is_ok_and(|proven| proven.contains(&key)) {
        return true;
    }
    let matched = compute_matches(password, verifier);
    if matched && let Ok(mut proven) = PROVEN.lock() {
        if proven.len() >= PROVEN_CAPACITY {
            proven.clear();
        }
        proven.insert(key);
    }
    matched
}

fn compute_matches(password: &str, verifier: &str) -> bool {
    let parse = || -> Option<bool> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys_part) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys_part.split_once(':')?;
        let iterations = NonZeroU32::new(iterations.parse().ok()?)?;
        let salt = STANDARD.decode(salt).ok()?;
        let (expected_stored, expected_server) = keys(password, &salt, iterations);
        Some(
            STANDARD.decode(stored).ok()? == expected_stored
                && STANDARD.decode(server).ok()? == expected_server,
        )
    };
    parse().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_matches_its_password_only() {
        let v = verifier("secret", b"0123456789abcdef");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        assert!(matches("secret", &v));
        assert!(matches("secret", &v), "a memoized match still matches");
        assert!(!matches("Secret", &v));
        assert!(!matches("secret", "md5abcdef"));
        assert!(!matches("secret", "SCRAM-SHA-256$0:AAAA$AAAA:AAAA"));
    }
}
