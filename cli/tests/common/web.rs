//! A small HTTPS client for tests of the relay's web side: it trusts the test CA only,
//! resolves every name to loopback (like a browser does for `*.localhost`), speaks
//! HTTP/1.1 or HTTP/2 as the server's ALPN picks, keeps cookies per host like a browser
//! (host-only cookies, `Max-Age=0` deletes) and can follow redirects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

pub fn bytes_body(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// A cookie as the server set it.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    /// Every attribute, lowercase name → value ("" for flags).
    pub attributes: HashMap<String, String>,
    /// The whole header, for messages.
    pub raw: String,
}

pub fn parse_set_cookie(raw: &str) -> Option<SetCookie> {
    let mut parts = raw.split(';');
    let (name, value) = parts.next()?.trim().split_once('=')?;
    let attributes = parts
        .map(|a| {
            let a = a.trim();
            match a.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), v.to_string()),
                None => (a.to_ascii_lowercase(), String::new()),
            }
        })
        .collect();
    Some(SetCookie {
        name: name.to_string(),
        value: value.to_string(),
        attributes,
        raw: raw.to_string(),
    })
}

/// A response read whole.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The URL it came from.
    pub url: String,
}

impl Page {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn location(&self) -> Option<String> {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn set_cookies(&self) -> Vec<SetCookie> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_set_cookie)
            .collect()
    }
}

/// `https://HOST[:PORT]/PATH` → (host, port, path).
pub fn split_url(url: &str) -> Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("not an https URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse()?),
        None => (authority.to_string(), 443),
    };
    Ok((host, port, path.to_string()))
}

/// A browser-like client.
#[derive(Clone)]
pub struct WebClient {
    tls: Arc<rustls::ClientConfig>,
    /// Host → cookie name → value.
    jar: Arc<Mutex<HashMap<String, HashMap<String, String>>>>,
}

/// One open connection, HTTP/1.1 or HTTP/2.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Conn {
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<hyper::body::Incoming>> {
        Ok(match self {
            Conn::H1(s) => s.send_request(req).await?,
            Conn::H2(s) => s.send_request(req).await?,
        })
    }
}

impl WebClient {
    /// Trusts `ca_pem` only and offers `alpn` (e.g. `[b"h2", b"http/1.1"]`).
    pub fn new(ca_pem: &str, alpn: &[&[u8]]) -> WebClient {
        let mut roots = rustls::RootCertStore::empty();
        for cert in ferry_certs::parse_certs(ca_pem).expect("CA") {
            roots.add(cert).expect("CA cert");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        WebClient {
            tls: Arc::new(config),
            jar: Arc::default(),
        }
    }

    /// Another client sharing this one's cookies (e.g. with other ALPNs).
    pub fn with_alpn(&self, alpn: &[&[u8]]) -> WebClient {
        let mut config = (*self.tls).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        WebClient {
            tls: Arc::new(config),
            jar: self.jar.clone(),
        }
    }

    /// A TLS connection to `host:port` (dialed on 127.0.0.1), with its ALPN.
    pub async fn tls(&self, host: &str, port: u16) -> Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let name = ServerName::try_from(host.to_string())?;
        Ok(tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?)
    }

    /// An HTTP connection, by the ALPN the server chose.
    pub async fn connect(&self, host: &str, port: u16) -> Result<Conn> {
        let stream = self.tls(host, port).await?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        Ok(if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await?;
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn.with_upgrades());
            Conn::H1(send)
        })
    }

    /// The `Cookie` header this client would send to `host`.
    pub fn cookie_header(&self, host: &str) -> Option<String> {
        let jar = self.jar.lock().unwrap();
        let cookies = jar.get(host)?;
        (!cookies.is_empty()).then(|| {
            cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// The value of cookie `name` held for `host`.
    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(host)?.get(name).cloned()
    }

    /// A request to `url` with the jar's cookies; remembers the cookies it sets.
    pub fn request(&self, method: Method, url: &str) -> Result<hyper::http::request::Builder> {
        let (host, port, path) = split_url(url)?;
        let authority = if port == 443 {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("https://{authority}{path}"));
        if let Some(cookies) = self.cookie_header(&host) {
            builder = builder.header(header::COOKIE, cookies);
        }
        Ok(builder)
    }

    /// Sends one request on a new connection and reads the whole response.
    pub async fn send(&self, req: Request<Body>) -> Result<Page> {
        let url = req.uri().to_string();
        let (host, port, _) = split_url(&url)?;
        let mut conn = self.connect(&host, port).await?;
        let mut req = req;
        if let Conn::H1(_) = conn {
            // HTTP/1.1 wants origin-form and a Host header.
            let authority = req.uri().authority().context("authority")?.to_string();
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            *req.uri_mut() = path.parse()?;
            req.headers_mut()
                .insert(header::HOST, HeaderValue::from_str(&authority)?);
        }
        let resp = conn.send(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        let page = Page {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
            url,
        };
        self.remember(&host, &page);
        Ok(page)
    }

    fn remember(&self, host: &str, page: &Page) {
        let mut jar = self.jar.lock().unwrap();
        for cookie in page.set_cookies() {
            let cookies = jar.entry(host.to_string()).or_default();
            if cookie.attributes.get("max-age").map(String::as_str) == Some("0") {
                cookies.remove(&cookie.name);
            } else {
                cookies.insert(cookie.name, cookie.value);
            }
        }
    }

    /// GET `url`, following redirects (at most 10); every page on the way.
    pub async fn get_following(&self, url: &str) -> Result<Vec<Page>> {
        let mut pages = Vec::new();
        let mut url = url.to_string();
        for _ in 0..10 {
            let req = self.request(Method::GET, &url)?.body(empty())?;
            let page = self.send(req).await?;
            let next = page
                .status
                .is_redirection()
                .then(|| page.location())
                .flatten();
            let base = url.clone();
            pages.push(page);
            match next {
                Some(location) if location.starts_with("https://") => url = location,
                Some(location) if location.starts_with('/') => {
                    let (host, port, _) = split_url(&base)?;
                    url = format!("https://{host}:{port}{location}");
                }
                Some(other) => bail!("unexpected redirect to {other}"),
                None => return Ok(pages),
            }
        }
        bail!("more than 10 redirects")
    }

    /// Keeps `token` as the control plane's session cookie (`POST /api/v1/session`).
    pub async fn sign_in(&self, control_url: &str, token: &str) -> Result<()> {
        let req = self
            .request(Method::POST, &format!("{control_url}/api/v1/session"))?
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(empty())?;
        let page = self.send(req).await?;
        anyhow::ensure!(page.status == StatusCode::NO_CONTENT, "session: {page:?}");
        Ok(())
    }
}
