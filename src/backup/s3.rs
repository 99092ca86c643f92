//! One signed S3 request before any restic command: it tells a missing bucket, rejected keys
//! and an unreachable endpoint apart with S3's own words. restic cannot: it reports a
//! missing bucket like a missing repository, and `restic init` would create the bucket.
//! The request is signed with AWS Signature Version 4 in the Authorization header, which every
//! S3 implementation accepts (query-string signatures are not universal).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::jiff::Timestamp;
use ring::{digest, hmac};

use super::location::Location;
use super::tls::{self, TrustError};

/// How long the check may take in all; restic's own retries are far longer.
const TIMEOUT: Duration = Duration::from_secs(20);

/// S3 credentials and region, and which CA the endpoint's certificate must chain to.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// PEM CA bundle trusted instead of the system roots (an endpoint with a private CA).
    pub ca_bundle: Option<PathBuf>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .field("ca_bundle", &self.ca_bundle)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum S3Error {
    #[error("S3 bucket {bucket:?} does not exist at {endpoint}")]
    MissingBucket { bucket: String, endpoint: String },
    #[error("S3 at {endpoint} rejected the access key ({code}: {message})")]
    Credentials {
        endpoint: String,
        code: String,
        message: String,
    },
    #[error("S3 endpoint {endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error(
        "S3 endpoint {endpoint} presented a certificate that does not verify ({reason}); an endpoint with a private CA needs backup.s3CASecretRef"
    )]
    UnverifiedCertificate { endpoint: String, reason: String },
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("S3 at {endpoint} answered {status} to a listing of bucket {bucket:?}: {detail}")]
    Unexpected {
        endpoint: String,
        bucket: String,
        status: u16,
        detail: String,
    },
}

/// Lists at most one key of the location's prefix: success proves that the endpoint answers,
/// the bucket exists and the keys may read it.
pub async fn check_bucket(location: &Location, credentials: &S3Credentials) -> Result<(), S3Error> {
    let endpoint = location.endpoint.to_string();
    let unreachable = |reason: String| S3Error::Unreachable {
        endpoint: endpoint.clone(),
        reason,
    };
    let request = signed_listing(location, credentials, Timestamp::now())
        .map_err(|e| unreachable(format!("invalid request: {e}")))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls::client_config(credentials.ca_bundle.as_deref())?)
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            // hyper's top-level message ("client error (Connect)") hides the cause.
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                reason = format!("{reason}: {cause}");
                source = cause.source();
            }
            if tls::is_unverified_certificate(&e) {
                S3Error::UnverifiedCertificate {
                    endpoint: endpoint.clone(),
                    reason,
                }
            } else {
                unreachable(reason)
            }
        })?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok::<_, S3Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", TIMEOUT.as_secs())))??;
    classify(location, status, &body)
}

/// SHA-256 of the empty payload.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// `GET ?list-type=2&max-keys=1&prefix=<prefix>` on the bucket, signed (SigV4).
fn signed_listing(
    location: &Location,
    credentials: &S3Credentials,
    now: Timestamp,
) -> Result<http::Request<Empty<Bytes>>, http::Error> {
    let endpoint = &location.endpoint;
    let host = endpoint.host_str().unwrap_or_default();
    let authority = match endpoint.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let (authority, path) = if is_aws(host) {
        (format!("{}.{authority}", location.bucket), "/".to_string())
    } else {
        (authority, format!("/{}", uri_encode(&location.bucket)))
    };
    let query = canonical_query(&[
        ("list-type", "2"),
        ("max-keys", "1"),
        ("prefix", &location.key_prefix()),
    ]);
    let amz_date = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let authorization = sign_v4(
        &SigningInput {
            method: "GET",
            authority: &authority,
            path: &path,
            query: &query,
            amz_date: &amz_date,
            service: "s3",
        },
        credentials,
    );
    http::Request::get(format!("{}://{authority}{path}?{query}", endpoint.scheme()))
        .header("host", &authority)
        .header("x-amz-date", &amz_date)
        .header("x-amz-content-sha256", EMPTY_SHA256)
        .header("authorization", authorization)
        .body(Empty::new())
}

struct SigningInput<'a> {
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    /// Already canonical (sorted, encoded).
    query: &'a str,
    amz_date: &'a str,
    service: &'a str,
}

/// The Authorization header of a request without payload (signed headers: host,
/// x-amz-content-sha256, x-amz-date).
fn sign_v4(input: &SigningInput<'_>, credentials: &S3Credentials) -> String {
    let date = &input.amz_date[..8];
    let scope = format!(
        "{date}/{}/{}/aws4_request",
        credentials.region, input.service
    );
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical_request = format!(
        "{}\n{}\n{}\nhost:{}\nx-amz-content-sha256:{EMPTY_SHA256}\nx-amz-date:{}\n\n{signed_headers}\n{EMPTY_SHA256}",
        input.method, input.path, input.query, input.authority, input.amz_date
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        input.amz_date,
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    );
    let mut key = format!("AWS4{}", credentials.secret_key).into_bytes();
    for part in [
        date,
        credentials.region.as_str(),
        input.service,
        "aws4_request",
    ] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key
    )
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// URI encoding as SigV4 wants it: only unreserved characters stay.
fn uri_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn canonical_query(pairs: &[(&str, &str)]) -> String {
    let mut encoded: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("{}={}", uri_encode(key), uri_encode(value)))
        .collect();
    encoded.sort();
    encoded.join("&")
}

fn is_aws(host: &str) -> bool {
    host == "amazonaws.com" || host.ends_with(".amazonaws.com")
}

/// Maps an S3 answer to a result.
pub fn classify(location: &Location, status: u16, body: &str) -> Result<(), S3Error> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let code = xml_field(body, "Code").unwrap_or_default();
    let message = xml_field(body, "Message").unwrap_or_default();
    let endpoint = location.endpoint.to_string();
    match (status, code.as_str()) {
        (_, "NoSuchBucket") | (404, "") => Err(S3Error::MissingBucket {
            bucket: location.bucket.clone(),
            endpoint,
        }),
        (
            _,
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "AccessDenied"
            | "InvalidToken"
            | "ExpiredToken",
        )
        | (401 | 403, _) => Err(S3Error::Credentials {
            endpoint,
            code: if code.is_empty() {
                status.to_string()
            } else {
                code
            },
            message,
        }),
        _ => Err(S3Error::Unexpected {
            endpoint,
            bucket: location.bucket.clone(),
            status,
            detail: if code.is_empty() {
                body.chars().take(200).collect()
            } else {
                format!("{code}: {message}")
            },
        }),
    }
}

/// The text of the first `<name>…</name>` element; S3 error bodies are flat.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(body[start..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location() -> Location {
        Location::parse("s3:http://127.0.0.1:9/bkt").unwrap()
    }

    #[test]
    fn signatures_match_the_aws_documentation_example() {
        // "GET Bucket (List Objects)" of the AWS Signature Version 4 documentation.
        let credentials = S3Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
            ca_bundle: None,
        };
        let authorization = sign_v4(
            &SigningInput {
                method: "GET",
                authority: "examplebucket.s3.amazonaws.com",
                path: "/",
                query: &canonical_query(&[("max-keys", "2"), ("prefix", "J")]),
                amz_date: "20130524T000000Z",
                service: "s3",
            },
            &credentials,
        );
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn s3_error_codes_become_precise_errors() {
        let missing = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert!(matches!(
            classify(&location(), 404, missing),
            Err(S3Error::MissingBucket { bucket, .. }) if bucket == "bkt"
        ));
        let denied = "<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>";
        let error = classify(&location(), 403, denied).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("rejected the access key (InvalidAccessKeyId: The AWS Access Key Id"),
            "{error}"
        );
        assert!(matches!(
            classify(&location(), 403, "<html>no</html>"),
            Err(S3Error::Credentials { code, .. }) if code == "403"
        ));
        assert!(matches!(
            classify(
                &location(),
                500,
                "<Error><Code>InternalError</Code><Message>x</Message></Error>"
            ),
            Err(S3Error::Unexpected { status: 500, .. })
        ));
        assert_eq!(classify(&location(), 200, "<ListBucketResult/>"), Ok(()));
    }
}
