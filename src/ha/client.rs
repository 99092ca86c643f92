//! The engine's HTTP client for the instance managers' `/ha/...` endpoints: one
//! HTTP/1.1 connection per request (the instances are few, and a request that cannot
//! connect must fail at once), each under a deadline.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::wire::{InstanceReport, Instruction};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{address}: no answer within {deadline:?}")]
    Timeout { address: String, deadline: Duration },
    #[error("{address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{address}: {source}")]
    Http {
        address: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{address}: {status}: {message}")]
    Refused {
        address: String,
        status: u16,
        message: String,
    },
    #[error("{address}: unreadable answer: {source}")]
    Decode {
        address: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{address}: the stream ended")]
    Ended { address: String },
}

async fn send(
    address: &str,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, ClientError> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|source| ClientError::Connect {
            address: address.to_string(),
            source,
        })?;
    // The heartbeat must not wait for a full segment.
    let _ = stream.set_nodelay(true);
    let http = |source| ClientError::Http {
        address: address.to_string(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.map_err(http)
}

fn request(method: &str, address: &str, path: &str, body: Vec<u8>) -> hyper::Request<Full<Bytes>> {
    request_with(method, address, path, body, None)
}

fn request_with(
    method: &str,
    address: &str,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> hyper::Request<Full<Bytes>> {
    let mut request = hyper::Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = method.parse().unwrap_or(hyper::Method::GET);
    if let Ok(uri) = format!("http://{address}{path}").parse() {
        *request.uri_mut() = uri;
    }
    if let Ok(host) = address.parse() {
        request.headers_mut().insert(hyper::header::HOST, host);
    }
    request.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(value) = token
        .and_then(|token| hyper::header::HeaderValue::from_str(&super::token::bearer(token)).ok())
    {
        request
            .headers_mut()
            .insert(hyper::header::AUTHORIZATION, value);
    }
    request
}

async fn call(
    address: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
    deadline: Duration,
) -> Result<InstanceReport, ClientError> {
    let exchange = async {
        let response = send(address, request_with(method, address, path, body, token)).await?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Http {
                address: address.to_string(),
                source,
            })?
            .to_bytes();
        if status != 200 {
            return Err(ClientError::Refused {
                address: address.to_string(),
                status,
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode {
            address: address.to_string(),
            source,
        })
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| ClientError::Timeout {
            address: address.to_string(),
            deadline,
        })?
}

/// `GET /ha/report`.
pub async fn report(address: &str, deadline: Duration) -> Result<InstanceReport, ClientError> {
    call(address, "GET", "/ha/report", Vec::new(), None, deadline).await
}

/// `POST /ha/instruct` with the cluster's instruct token (see `ha::token`): the report
/// once the instruction is carried out.
pub async fn instruct(
    address: &str,
    token: Option<&str>,
    instruction: &Instruction,
    deadline: Duration,
) -> Result<InstanceReport, ClientError> {
    let body = serde_json::to_vec(instruction).unwrap_or_default();
    call(address, "POST", "/ha/instruct", body, token, deadline).await
}

/// An open `GET /ha/watch`: one report per heartbeat.
pub struct Watch {
    address: String,
    body: Incoming,
    buffer: BytesMut,
}

impl Watch {
    pub async fn open(address: &str, deadline: Duration) -> Result<Self, ClientError> {
        let opened = async {
            let response = send(address, request("GET", address, "/ha/watch", Vec::new())).await?;
            if response.status() != 200 {
                return Err(ClientError::Refused {
                    address: address.to_string(),
                    status: response.status().as_u16(),
                    message: String::new(),
                });
            }
            Ok(Self {
                address: address.to_string(),
                body: response.into_body(),
                buffer: BytesMut::new(),
            })
        };
        tokio::time::timeout(deadline, opened)
            .await
            .map_err(|_| ClientError::Timeout {
                address: address.to_string(),
                deadline,
            })?
    }

    /// The next report, or an error when none came within `deadline` or the stream
    /// broke.
    pub async fn next(&mut self, deadline: Duration) -> Result<InstanceReport, ClientError> {
        let address = self.address.clone();
        let read = async {
            loop {
                if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                    let line = self.buffer.split_to(end + 1);
                    return serde_json::from_slice(&line[..end]).map_err(|source| {
                        ClientError::Decode {
                            address: address.clone(),
                            source,
                        }
                    });
                }
                match self.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(mut data) = frame.into_data() {
                            while data.has_remaining() {
                                let chunk = data.chunk();
                                self.buffer.extend_from_slice(chunk);
                                let n = chunk.len();
                                data.advance(n);
                            }
                        }
                    }
                    Some(Err(source)) => {
                        return Err(ClientError::Http {
                            address: address.clone(),
                            source,
                        });
                    }
                    None => {
                        return Err(ClientError::Ended {
                            address: address.clone(),
                        });
                    }
                }
            }
        };
        tokio::time::timeout(deadline, read)
            .await
            .map_err(|_| ClientError::Timeout {
                address: self.address.clone(),
                deadline,
            })?
    }
}
