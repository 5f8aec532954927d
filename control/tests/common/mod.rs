//! A control plane on 127.0.0.1:0 in this process, over real HTTPS, and helpers.
#![allow(dead_code)]

use std::path::PathBuf;

use ferry_control::{ControlConfig, ControlPlane};
use ferry_proto::api::*;
use ferry_proto::token::TokenKind;
use ferry_transport::{ControlClient, ControlError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct Plane {
    pub client: ControlClient,
    pub admin: String,
    pub data_dir: PathBuf,
    pub ca_pem: String,
    pub url: String,
    pub state: std::sync::Arc<ferry_control::State>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Plane {
    /// A fresh control plane on SQLite in a scratch directory.
    pub async fn start(name: &str) -> Plane {
        let dir = ferry_control::testing::scratch_dir(name);
        Self::start_with(dir, None).await
    }

    /// A control plane on `data_dir` and, if given, a PostgreSQL URL.
    pub async fn start_with(data_dir: PathBuf, database_url: Option<String>) -> Plane {
        let plane = ControlPlane::bind(&ControlConfig {
            data_dir: data_dir.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            names: vec!["127.0.0.1".into()],
            database_url,
        })
        .await
        .expect("control plane starts");
        let url = format!("https://127.0.0.1:{}", plane.local_addr().port());
        let ca_pem = plane.state().ca().cert_pem().to_string();
        let admin = plane
            .mint(TokenKind::Admin, "admin", "test admin", 3600)
            .await
            .expect("admin token");
        let state = plane.state().clone();
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(plane.serve(cancel.clone()));
        Plane {
            client: ControlClient::new(&url, &ca_pem).unwrap(),
            admin,
            data_dir,
            ca_pem,
            url,
            state,
            cancel,
            tasks,
        }
    }

    pub fn admin(&self) -> Option<&str> {
        Some(&self.admin)
    }

    /// Stops the server and removes its data directory.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }

    /// Creates a user with a password and logs in; returns the session token.
    pub async fn user(&self, name: &str) -> String {
        let _: UserInfo = self
            .client
            .post(
                "/api/v1/users",
                self.admin(),
                &CreateUserRequest {
                    name: name.into(),
                    password: Some(format!("{name}-password")),
                },
            )
            .await
            .expect("create user");
        let login: NewTokenResponse = self
            .client
            .post(
                "/api/v1/login",
                None,
                &LoginRequest {
                    user: name.into(),
                    password: format!("{name}-password"),
                },
            )
            .await
            .expect("login");
        login.token
    }

    pub async fn workspace(&self, token: &str, name: &str) -> WorkspaceInfo {
        self.client
            .post(
                "/api/v1/workspaces",
                Some(token),
                &CreateWorkspaceRequest {
                    name: name.into(),
                    owner: None,
                },
            )
            .await
            .expect("create workspace")
    }

    pub async fn mint(&self, kind: TokenKind, subject: &str) -> String {
        let r: MintTokenResponse = self
            .client
            .post(
                "/api/v1/tokens",
                self.admin(),
                &MintTokenRequest {
                    kind,
                    subject: subject.into(),
                    ttl_secs: None,
                },
            )
            .await
            .expect("mint");
        r.token
    }
}

/// The error code of a failed call, panicking on success.
pub fn code<T: std::fmt::Debug>(r: Result<T, ControlError>) -> (u16, String) {
    match r {
        Err(ControlError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Sends raw bytes as a request body (for malformed input), returning (status, body).
pub async fn raw_post(
    url: &str,
    ca_pem: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", content_type)];
    if let Some(b) = &bearer {
        headers.push(("authorization", b));
    }
    let (status, _, json) = raw_request(url, ca_pem, "POST", path, &headers, body).await;
    (status, json)
}

/// One request with exactly the headers given (plus `host`), returning (status,
/// response headers, JSON body or Null).
pub async fn raw_request(
    url: &str,
    ca_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, hyper::HeaderMap, serde_json::Value) {
    let (status, response_headers, bytes) =
        raw_exchange(url, ca_pem, method, path, headers, body).await;
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, response_headers, json)
}

/// `GET path` with the given headers, returning (status, response headers, body text).
pub async fn raw_get_text(
    url: &str,
    ca_pem: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, String) {
    let (status, response_headers, bytes) =
        raw_exchange(url, ca_pem, "GET", path, headers, Vec::new()).await;
    (
        status,
        response_headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// One HTTP/1.1 exchange over TLS on 127.0.0.1, headers exactly as given plus `host`.
async fn raw_exchange(
    url: &str,
    ca_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, hyper::HeaderMap, bytes::Bytes) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let tls = ferry_certs::client_config(ca_pem, &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = sender
        .send_request(req.body(Full::new(bytes::Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let response_headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    task.abort();
    (status, response_headers, bytes)
}

/// A Server-Sent Events stream read over its own TLS connection on 127.0.0.1.
pub struct EventStream {
    body: hyper::body::Incoming,
    buffer: String,
    _conn: tokio::task::JoinHandle<()>,
}

impl EventStream {
    /// `GET path` with a bearer token; returns the status, and the stream if it is 200.
    pub async fn open(url: &str, ca_pem: &str, path: &str, token: &str) -> (u16, Option<Self>) {
        use hyper_util::rt::TokioIo;
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        let tls = ferry_certs::client_config(ca_pem, &[b"http/1.1"]).unwrap();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect(
                rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::builder()
            .uri(path)
            .header("host", format!("127.0.0.1:{port}"))
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        if status != 200 {
            return (status, None);
        }
        let stream = EventStream {
            body: resp.into_body(),
            buffer: String::new(),
            _conn: conn,
        };
        (status, Some(stream))
    }

    /// The next event (name, data), skipping keep-alive comments; `None` when the
    /// stream ended or nothing came within `timeout`.
    pub async fn next(&mut self, timeout: std::time::Duration) -> Option<(String, String)> {
        use http_body_util::BodyExt;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    return Some((name, data));
                }
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??
                .ok()?;
            if let Ok(bytes) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
}
