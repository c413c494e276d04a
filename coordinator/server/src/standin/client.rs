//! A small client of the stand-in's control API (plain HTTP/1.1, one
//! connection per call), used by `tern stand-in mode|status`, by tests and
//! by the demo to make a running stand-in misbehave. It owns only the
//! wire calls; it must not be pointed anywhere but a stand-in's control
//! listener (it speaks no TLS).

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use super::control::{MODE_PATH, STATS_PATH};
use super::mode::{Mode, ModeReport, ModeRequest};
use super::stats::StandInStatus;

/// Longest answer read from the control API, bytes.
const MAX_BODY: usize = 1 << 20;
/// Default bound on one call: longer than the stand-in's own wait for a
/// mode to apply.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// A failed control call.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect to the stand-in control API at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control API at {addr}: {detail}")]
    Http { addr: String, detail: String },
    #[error("control API at {addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("control API at {addr} did not answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
}

/// Client of one stand-in's control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: String,
    timeout: Duration,
}

impl ControlClient {
    /// `addr` is `host:port`, optionally prefixed with `http://`.
    pub fn new(addr: impl Into<String>) -> ControlClient {
        let addr = addr.into();
        let addr = addr
            .strip_prefix("http://")
            .unwrap_or(&addr)
            .trim_end_matches('/')
            .to_string();
        ControlClient {
            addr,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds each call (default 15 s).
    pub fn with_timeout(mut self, timeout: Duration) -> ControlClient {
        self.timeout = timeout;
        self
    }

    /// `GET /_standin/mode`.
    pub async fn mode(&self) -> Result<ModeReport, ControlError> {
        self.call(Method::GET, MODE_PATH, None).await
    }

    /// `POST /_standin/mode`; returns once the mode holds.
    pub async fn set_mode(&self, mode: Mode) -> Result<ModeReport, ControlError> {
        let body = serde_json::to_vec(&ModeRequest::from(mode)).map_err(|e| self.http(e))?;
        self.call(Method::POST, MODE_PATH, Some(body)).await
    }

    /// `GET /_standin/stats`.
    pub async fn status(&self) -> Result<StandInStatus, ControlError> {
        self.call(Method::GET, STATS_PATH, None).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlError> {
        match tokio::time::timeout(self.timeout, self.call_inner(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ControlError::Timeout {
                addr: self.addr.clone(),
                secs: self.timeout.as_secs(),
            }),
        }
    }

    async fn call_inner<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlError> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| ControlError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| self.http(e))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.addr);
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b)
            }
            None => Body::empty(),
        };
        let req = req.body(body).map_err(|e| self.http(e))?;
        let resp = sender.send_request(req).await.map_err(|e| self.http(e))?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(Body::new(resp.into_body()), MAX_BODY)
            .await
            .map_err(|e| self.http(e))?;
        conn.abort();
        if status != StatusCode::OK {
            return Err(ControlError::Status {
                addr: self.addr.clone(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).trim().to_string(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| self.http(format!("invalid answer: {e}")))
    }

    fn http(&self, e: impl std::fmt::Display) -> ControlError {
        ControlError::Http {
            addr: self.addr.clone(),
            detail: e.to_string(),
        }
    }
}
