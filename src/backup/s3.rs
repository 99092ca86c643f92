//! One signed S3 request before any restic command: it tells a missing bucket, rejected keys
//! and an unreachable endpoint apart with S3's own words. restic cannot: it reports a
//! missing bucket like a missing repository, and `restic init` would create the bucket.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::location::Location;

/// How long the check may take in all; restic's own retries are far longer.
const TIMEOUT: Duration = Duration::from_secs(20);

/// S3 credentials and region.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
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
    let style = if location.endpoint.host_str().is_some_and(is_aws) {
        UrlStyle::VirtualHost
    } else {
        UrlStyle::Path
    };
    let bucket = Bucket::new(
        location.endpoint.clone(),
        style,
        location.bucket.clone(),
        credentials.region.clone(),
    )
    .map_err(|e| unreachable(format!("invalid bucket address: {e}")))?;
    let keys = Credentials::new(&credentials.access_key, &credentials.secret_key);
    let mut action = bucket.list_objects_v2(Some(&keys));
    action.with_prefix(location.key_prefix());
    action.with_max_keys(1);
    let url = action.sign(Duration::from_secs(300));

    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| unreachable(format!("no TLS root certificates: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let request = http::Request::get(url.as_str())
        .body(Empty::new())
        .map_err(|e| unreachable(e.to_string()))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            // hyper's top-level message ("client error (Connect)") hides the cause.
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                reason = format!("{reason}: {cause}");
                source = cause.source();
            }
            unreachable(reason)
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
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" | "InvalidToken"
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
    fn s3_error_codes_become_precise_errors() {
        let missing = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert!(matches!(
            classify(&location(), 404, missing),
            Err(S3Error::MissingBucket { bucket, .. }) if bucket == "bkt"
        ));
        let denied = "<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>";
        let error = classify(&location(), 403, denied).unwrap_err();
        assert!(error.to_string().contains("rejected the access key (InvalidAccessKeyId: The AWS Access Key Id"), "{error}");
        assert!(matches!(
            classify(&location(), 403, "<html>no</html>"),
            Err(S3Error::Credentials { code, .. }) if code == "403"
        ));
        assert!(matches!(
            classify(&location(), 500, "<Error><Code>InternalError</Code><Message>x</Message></Error>"),
            Err(S3Error::Unexpected { status: 500, .. })
        ));
        assert_eq!(classify(&location(), 200, "<ListBucketResult/>"), Ok(()));
    }
}
