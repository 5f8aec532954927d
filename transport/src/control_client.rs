//! A small HTTPS client for the control plane's JSON API, trusting only ferry's CA.
//!
//! One connection per request: the control plane is called at start-up, on
//! registration and now and then, never on the data path, so pooling would buy little.
//! The connection goes through the HTTPS proxy the environment names for the control
//! plane's host, if any ([`crate::proxy`]), with TLS end to end inside the tunnel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::api::ErrorBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_rustls::TlsConnector;

use crate::proxy::{self, ProxyError, ProxySettings};

/// Largest response body we read (the region map and key set are a few KiB).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a control-plane call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("control plane URL `{0}` must look like https://HOST:PORT")]
    BadUrl(String),
    #[error("cannot reach the control plane at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The proxy on the way to the control plane failed or refused the tunnel.
    #[error("cannot reach the control plane at {url}: {source}")]
    Proxy {
        url: String,
        #[source]
        source: ProxyError,
    },
    #[error("control plane at {url} did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout { url: String },
    /// The control plane answered with a typed error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("control plane sent a response we cannot read: {0}")]
    BadResponse(String),
}

impl ControlError {
    /// Whether the control plane could not be reached at all (as opposed to refusing);
    /// a proxy that failed or refused the tunnel counts, since the control plane never
    /// heard the request.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ControlError::Unreachable { .. }
                | ControlError::Timeout { .. }
                | ControlError::Proxy { .. }
        )
    }
}

/// A client for one control plane.
#[derive(Clone)]
pub struct ControlClient {
    url: String,
    host: String,
    port: u16,
    tls: TlsConnector,
    proxy: Arc<ProxySettings>,
}

impl ControlClient {
    /// `url` is `https://host:port`; `ca_pem` is the CA the control plane's cert chains
    /// to. The proxy settings are read from the environment ([`ProxySettings::from_env`]).
    pub fn new(url: &str, ca_pem: &str) -> Result<Self, ControlError> {
        let bad = || ControlError::BadUrl(url.to_string());
        let rest = url.strip_prefix("https://").ok_or_else(bad)?;
        let authority = rest.trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => (h, p.parse::<u16>().map_err(|_| bad())?),
            _ => (authority, 443),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() || authority.contains('/') {
            return Err(bad());
        }
        let tls = ferry_certs::client_config(ca_pem, &[b"http/1.1"])
            .map_err(|e| ControlError::BadResponse(format!("CA certificate: {e}")))?;
        Ok(ControlClient {
            url: url.trim_end_matches('/').to_string(),
            host,
            port,
            tls: TlsConnector::from(Arc::new(tls)),
            proxy: Arc::new(ProxySettings::from_env()),
        })
    }

    /// The same client with other proxy settings (instead of the environment's).
    pub fn with_proxy(mut self, proxy: ProxySettings) -> Self {
        self.proxy = Arc::new(proxy);
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET path`, decoding a JSON answer.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<T, ControlError> {
        self.call(Method::GET, path, token, None).await
    }

    /// `POST path` with a JSON body, decoding a JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &B,
    ) -> Result<T, ControlError> {
        let body =
            serde_json::to_vec(body).map_err(|e| ControlError::BadResponse(e.to_string()))?;
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// `PUT path` with a JSON body; success is any 2xx.
    pub async fn put<B: Serialize>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &B,
    ) -> Result<(), ControlError> {
        let body =
            serde_json::to_vec(body).map_err(|e| ControlError::BadResponse(e.to_string()))?;
        self.call::<serde_json::Value>(Method::PUT, path, token, Some(body))
            .await
            .map(|_| ())
    }

    /// `DELETE path`; success is any 2xx.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Result<(), ControlError> {
        self.call::<serde_json::Value>(Method::DELETE, path, token, None)
            .await
            .map(|_| ())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.call_inner(method, path, token, body))
            .await
            .map_err(|_| ControlError::Timeout {
                url: self.url.clone(),
            })?
    }

    async fn call_inner<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlError> {
        let unreachable = |reason: String| ControlError::Unreachable {
            url: self.url.clone(),
            reason,
        };
        let (tcp, _via) = proxy::tcp_connect(&self.proxy, &self.host, self.port, &[])
            .await
            .map_err(|e| match e {
                ProxyError::Direct { reason, .. } => unreachable(reason),
                source => ControlError::Proxy {
                    url: self.url.clone(),
                    source,
                },
            })?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| ControlError::BadUrl(self.url.clone()))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // The connection task ends when the request does; it is awaited below by
        // dropping `sender`, so it never outlives this call.
        let conn_task = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(token) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let has_body = body.is_some();
        if has_body {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ControlError::BadUrl(e.to_string()))?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| ControlError::BadResponse(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                    Ok(body) => ControlError::Api {
                        status: status.as_u16(),
                        code: body.error.code,
                        message: body.error.message,
                    },
                    Err(_) => ControlError::Api {
                        status: status.as_u16(),
                        code: "http_error".into(),
                        message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                    },
                });
            }
            // An empty body (204) reads as JSON `null`, so `()` and `Value` accept it.
            let json: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            serde_json::from_slice(json).map_err(|e| ControlError::BadResponse(e.to_string()))
        }
        .await;
        drop(sender);
        conn_task.abort();
        result
    }
}
