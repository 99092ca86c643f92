//! Where a cluster's backups live: the restic repository base `s3:<host>/<bucket>[/prefix]`
//! (the spec's `s3Bucket`), one repository per database under it (the Cozystack layout), and
//! one more for the globals and the run manifests.

use url::Url;

/// Repository path component of the globals and run manifests. A database component never
/// starts with a dot (see [`component`]), so no database can take this name.
pub const GLOBALS_COMPONENT: &str = ".globals";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("repository base {base:?}: {reason}")]
pub struct LocationError {
    pub base: String,
    pub reason: String,
}

/// A parsed repository base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// `s3:` plus what follows, without a trailing slash: repositories are `<base>/<component>`.
    base: String,
    /// Scheme and host (and port) of the S3 endpoint.
    pub endpoint: Url,
    pub bucket: String,
    /// Key prefix inside the bucket, without slashes at either end; empty for the bucket root.
    pub prefix: String,
}

impl Location {
    /// Parses `s3:host/bucket[/prefix]` (HTTPS, the spec's form) or
    /// `s3:http(s)://host/bucket[/prefix]` (an explicit scheme, for S3 servers without TLS).
    /// The `s3:` may be left out.
    pub fn parse(base: &str) -> Result<Location, LocationError> {
        let error = |reason: &str| LocationError {
            base: base.to_string(),
            reason: reason.to_string(),
        };
        let rest = base.trim().strip_prefix("s3:").unwrap_or(base.trim());
        let (scheme, rest) = match rest.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
            Some(_) => return Err(error("only http:// and https:// endpoints are supported")),
            None => ("https", rest),
        };
        let rest = rest.trim_end_matches('/');
        // Url would take them as credentials, a query or a fragment and drop them from
        // the endpoint, so the check and restic would talk to different places.
        if rest.contains(['@', '?', '#']) {
            return Err(error(
                "'@', '?' and '#' are not allowed (no credentials, query or fragment)",
            ));
        }
        let mut parts = rest.split('/').filter(|part| !part.is_empty());
        let host = parts
            .next()
            .ok_or_else(|| error("the S3 host is missing"))?;
        let bucket = parts
            .next()
            .ok_or_else(|| error("the bucket is missing (write host/bucket[/prefix])"))?;
        let prefix = parts.collect::<Vec<_>>().join("/");
        let endpoint = Url::parse(&format!("{scheme}://{host}"))
            .map_err(|e| error(&format!("invalid S3 host {host:?}: {e}")))?;
        if rest.contains(char::is_whitespace) {
            return Err(error("white space is not allowed"));
        }
        let base = if scheme == "https" && !base.contains("://") {
            format!("s3:{host}/{bucket}")
        } else {
            format!("s3:{scheme}://{host}/{bucket}")
        };
        let base = if prefix.is_empty() {
            base
        } else {
            format!("{base}/{prefix}")
        };
        Ok(Location {
            base,
            endpoint,
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// Whether restic and the bucket check talk to the endpoint without TLS.
    pub fn is_plain_http(&self) -> bool {
        self.endpoint.scheme() == "http"
    }

    /// The restic repository of database `database`.
    pub fn database_repository(&self, database: &str) -> String {
        format!("{}/{}", self.base, component(database))
    }

    /// The restic repository of the globals and the run manifests.
    pub fn globals_repository(&self) -> String {
        format!("{}/{GLOBALS_COMPONENT}", self.base)
    }

    /// The key prefix every repository of this location shares (for S3 listings).
    pub fn key_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }
}

/// Checks the spec's `s3Bucket`, which the pods prefix with `s3:`: `host/bucket[/prefix]`
/// (HTTPS) or `http(s)://host/bucket[/prefix]`. The error is the reason alone, for a
/// message that names the field.
pub fn parse_spec_bucket(bucket: &str) -> Result<Location, String> {
    if bucket.starts_with("s3:") {
        return Err("leave out the \"s3:\" prefix, the operator adds it".to_string());
    }
    // A space around the value would end up inside the repository name.
    if bucket.contains(char::is_whitespace) {
        return Err("white space is not allowed".to_string());
    }
    Location::parse(bucket).map_err(|error| error.reason)
}

/// A database name as one repository path component: itself when it is made of letters,
/// digits, `_`, `-` and inner dots (every name the spec accepts), otherwise percent-encoded
/// byte by byte, so `a/b`, `..` or a name with spaces can neither escape nor collide.
pub fn component(database: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let mut out = String::with_capacity(database.len());
    for (index, byte) in database.bytes().enumerate() {
        if plain(byte) || (byte == b'.' && index > 0) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The file name a database's dump has inside its snapshots (`restic dump <id> /<name>`).
pub fn dump_file_name(database: &str) -> String {
    format!("{}.dump", component(database))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_form_is_https_and_keeps_the_cozystack_layout() {
        let location = Location::parse("s3.example.org/postgres-backups").unwrap();
        assert_eq!(location.endpoint.as_str(), "https://s3.example.org/");
        assert_eq!(location.bucket, "postgres-backups");
        assert_eq!(location.prefix, "");
        assert_eq!(
            location.database_repository("myapp"),
            "s3:s3.example.org/postgres-backups/myapp"
        );
        assert_eq!(
            location.globals_repository(),
            "s3:s3.example.org/postgres-backups/.globals"
        );
    }

    #[test]
    fn explicit_scheme_and_prefix_are_kept() {
        let location = Location::parse("s3:http://127.0.0.1:9000/bucket/team/a/").unwrap();
        assert_eq!(location.endpoint.as_str(), "http://127.0.0.1:9000/");
        assert_eq!(location.bucket, "bucket");
        assert_eq!(location.prefix, "team/a");
        assert_eq!(location.key_prefix(), "team/a/");
        assert_eq!(
            location.database_repository("db"),
            "s3:http://127.0.0.1:9000/bucket/team/a/db"
        );
    }

    #[test]
    fn bases_without_a_bucket_or_with_other_schemes_are_refused() {
        for base in ["s3:host-only", "", "s3:ftp://h/b", "s3:h/b c"] {
            let error = Location::parse(base).unwrap_err();
            assert_eq!(error.base, base);
        }
    }

    #[test]
    fn spec_buckets_take_an_optional_http_or_https_scheme() {
        for (bucket, endpoint) in [
            ("s3.example.org/b", "https://s3.example.org/"),
            ("https://s3.example.org/b/p", "https://s3.example.org/"),
            ("http://minio.storage:9000/b", "http://minio.storage:9000/"),
        ] {
            let location = parse_spec_bucket(bucket).unwrap();
            assert_eq!(location.endpoint.as_str(), endpoint);
            assert_eq!(location.bucket, "b");
        }
        assert!(parse_spec_bucket("http://h/b").unwrap().is_plain_http());
        assert!(!parse_spec_bucket("h/b").unwrap().is_plain_http());
    }

    #[test]
    fn spec_buckets_with_other_schemes_or_odd_parts_are_refused_with_the_reason() {
        for (bucket, reason) in [
            ("s3:h/b", "leave out the \"s3:\" prefix"),
            ("ftp://h/b", "only http:// and https://"),
            ("HTTPS://h/b", "only http:// and https://"),
            ("http://h", "the bucket is missing"),
            ("http://", "the S3 host is missing"),
            ("https://key:secret@h/b", "'@', '?' and '#'"),
            ("h/b?x=1", "'@', '?' and '#'"),
            (" h/b", "white space"),
            ("http://h:port/b", "invalid S3 host"),
        ] {
            let error = parse_spec_bucket(bucket).unwrap_err();
            assert!(error.contains(reason), "{bucket}: {error}");
        }
    }

    #[test]
    fn odd_database_names_cannot_escape_or_collide_with_the_globals() {
        assert_eq!(component("my_app-2.v1"), "my_app-2.v1");
        assert_eq!(component("a/b"), "a%2Fb");
        assert_eq!(component(".."), "%2E.");
        assert_eq!(component(".globals"), "%2Eglobals");
        assert_eq!(component("with space\"q"), "with%20space%22q");
        assert_eq!(component("é"), "%C3%A9");
        assert_eq!(dump_file_name("shop"), "shop.dump");
    }
}
