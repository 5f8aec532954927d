//! HTTPS proxies for ferry's TCP connections (the TLS fallback to a relay, and the
//! control plane's API): which proxy the environment names for a host, and a tunnel
//! through it with HTTP `CONNECT` ([`connect_via`], [`tcp_connect`]).
//!
//! # The environment, read once by [`ProxySettings::from_env`]
//! - The proxy: `https_proxy`, then `HTTPS_PROXY`, then `all_proxy`, then `ALL_PROXY`;
//!   the first one set and not empty wins (curl's order: lowercase first). Every
//!   connection we make carries TLS, so `http_proxy` is never consulted. The value is
//!   `http://[user[:password]@]host[:port]` (port 1080 when left out, as curl does); a
//!   value without a scheme is taken as `http://`. Credentials may be percent-encoded
//!   (`%40` for `@`, `%3A` for `:`). Only HTTP proxies are spoken to:
//!   `https://` and `socks*://` ones give [`ProxyError::UnsupportedScheme`].
//! - The exceptions: `no_proxy`, then `NO_PROXY`: entries separated by commas (or
//!   spaces), each one of `*` (no proxy at all), a host name (`example.com`,
//!   `.example.com` and `*.example.com` all match `example.com` and every name under
//!   it, as curl does), an IP address, or a CIDR block (`10.0.0.0/8`, `fd00::/8`);
//!   any of them but `*` may end in `:PORT` to match that port only (IPv6 in brackets
//!   then: `[::1]:443`).
//!   Names are matched as written, never resolved, and loopback is not special: a
//!   proxy named for everything is used for 127.0.0.1 too unless `NO_PROXY` says not.

mod connect;
mod no_proxy;

use std::fmt;

pub use connect::{connect_via, tcp_connect, CONNECT_TIMEOUT, MAX_RESPONSE_HEAD};
pub use no_proxy::NoProxy;

/// Why a connection through (or around) a proxy failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy variable does not hold `http://[user:password@]host[:port]`.
    #[error("proxy URL `{url}` in {var} is malformed: {reason}")]
    BadUrl {
        var: &'static str,
        url: String,
        reason: String,
    },
    /// A SOCKS or HTTPS proxy: we only speak HTTP `CONNECT` to a proxy.
    #[error("proxy scheme {scheme} is not supported; use an HTTP proxy (http://host:port)")]
    UnsupportedScheme { scheme: String },
    /// The proxy itself could not be reached.
    #[error("cannot connect to proxy {proxy}: {reason}")]
    Connect { proxy: String, reason: String },
    /// The proxy asked for credentials (407, or 401): none were given, or it refused them.
    #[error("{}", auth_message(proxy, *had_credentials))]
    AuthRequired {
        proxy: String,
        had_credentials: bool,
    },
    /// The proxy answered `CONNECT` with an error status.
    #[error("proxy {proxy} refused CONNECT to {target}: {status} {reason}")]
    Refused {
        proxy: String,
        target: String,
        status: u16,
        reason: String,
    },
    /// The proxy's answer is not an HTTP response head we can read.
    #[error("proxy {proxy} sent a malformed answer to CONNECT {target}: {reason}")]
    Malformed {
        proxy: String,
        target: String,
        reason: String,
    },
    /// No answer from the proxy in time.
    #[error("proxy {proxy} did not answer CONNECT {target} within {CONNECT_TIMEOUT:?}")]
    Timeout { proxy: String, target: String },
    /// A direct connection (no proxy for this host) failed on every address.
    #[error("cannot connect to {target}: {reason}")]
    Direct { target: String, reason: String },
    /// The host to connect to cannot go into a `CONNECT` line.
    #[error("`{target}` is not a host name or IP address to connect to")]
    BadTarget { target: String },
}

fn auth_message(proxy: &str, had_credentials: bool) -> String {
    if had_credentials {
        format!("proxy {proxy} refused the credentials in its URL (407 Proxy Authentication Required); check the user and password")
    } else {
        format!("proxy {proxy} asks for credentials; put them in the proxy URL: http://user:password@{proxy}")
    }
}

/// A proxy to tunnel through: `http://[user[:password]@]host[:port]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    scheme: String,
    host: String,
    port: u16,
    /// Percent-decoded user and password.
    credentials: Option<(String, String)>,
}

impl ProxyUrl {
    /// Parses a proxy URL as found in `var` (named in errors).
    pub fn parse(var: &'static str, url: &str) -> Result<ProxyUrl, ProxyError> {
        let bad = |reason: &str| ProxyError::BadUrl {
            var,
            // The password stays out of error messages and logs.
            url: redact(url),
            reason: reason.into(),
        };
        let url = url.trim();
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("http".to_string(), url),
        };
        // A trailing slash is common (`http://proxy:3128/`); a path is not meaningful.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') || authority.contains('?') || authority.contains('#') {
            return Err(bad("a proxy URL has no path"));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let user =
                    percent_decode(user).ok_or_else(|| bad("bad percent-encoding in the user"))?;
                let password = percent_decode(password)
                    .ok_or_else(|| bad("bad percent-encoding in the password"))?;
                Some((user, password))
            }
        };
        // curl's default for every scheme but https.
        let default_port = if scheme == "https" { 443 } else { 1080 };
        let (host, port) =
            split_host_port(hostport, default_port).ok_or_else(|| bad("expected host[:port]"))?;
        Ok(ProxyUrl {
            scheme,
            host,
            port,
            credentials,
        })
    }

    /// `http`, `https`, `socks5`...: only `http` is spoken.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, IPv6 in brackets: where the proxy listens, for messages.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// The user and password (percent-decoded), when the URL carries them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }
}

/// Never shows the password.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.credentials {
            Some((user, _)) => write!(f, "{}://{user}:***@{}", self.scheme, self.authority()),
            None => write!(f, "{}://{}", self.scheme, self.authority()),
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Which proxy, if any, each connection goes through.
#[derive(Debug, Clone, Default)]
pub struct ProxySettings {
    /// The configured proxy, or why the configured value cannot be used.
    proxy: Option<Result<ProxyUrl, ProxyError>>,
    no_proxy: NoProxy,
}

/// The proxy variables in the order they are consulted.
const PROXY_VARS: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
const NO_PROXY_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

impl ProxySettings {
    /// Reads the proxy variables (see the module doc for their precedence). A value
    /// that cannot be used is kept as its error, returned by [`ProxySettings::route`]
    /// for every host it would have applied to, rather than silently going direct.
    pub fn from_env() -> ProxySettings {
        let settings = ProxySettings::from_vars(|var| std::env::var(var).ok());
        match &settings.proxy {
            Some(Ok(proxy)) => tracing::debug!(%proxy, "HTTPS proxy from the environment"),
            Some(Err(e)) => tracing::warn!(error = %e, "unusable HTTPS proxy setting"),
            None => {}
        }
        settings
    }

    /// [`ProxySettings::from_env`] with the variables looked up by `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> ProxySettings {
        let lookup = |var: &str| get(var).filter(|v| !v.trim().is_empty());
        let proxy = PROXY_VARS
            .iter()
            .find_map(|var| lookup(var).map(|value| ProxyUrl::parse(var, &value)));
        let no_proxy = NO_PROXY_VARS
            .iter()
            .find_map(|var| lookup(var))
            .map(|v| NoProxy::parse(&v))
            .unwrap_or_default();
        ProxySettings { proxy, no_proxy }
    }

    /// Settings with `proxy` for every host but those `no_proxy` lists (tests,
    /// and callers with a configuration of their own).
    pub fn new(proxy: Option<ProxyUrl>, no_proxy: NoProxy) -> ProxySettings {
        ProxySettings {
            proxy: proxy.map(Ok),
            no_proxy,
        }
    }

    /// No proxy for anything.
    pub fn direct() -> ProxySettings {
        ProxySettings::default()
    }

    /// The proxy for `host:port`, or None to connect directly (also when the
    /// configured proxy is unusable: [`ProxySettings::route`] says why).
    pub fn proxy_for(&self, host: &str, port: u16) -> Option<&ProxyUrl> {
        self.route(host, port).ok().flatten()
    }

    /// The proxy for `host:port`, None for a direct connection, or the error of a
    /// configured proxy that cannot be used.
    pub fn route(&self, host: &str, port: u16) -> Result<Option<&ProxyUrl>, ProxyError> {
        let Some(proxy) = &self.proxy else {
            return Ok(None);
        };
        if self.no_proxy.matches(host, port) {
            return Ok(None);
        }
        match proxy {
            Ok(proxy) => Ok(Some(proxy)),
            Err(e) => Err(e.clone()),
        }
    }
}

/// `host:port` with an IPv6 host in brackets.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `host[:port]` (IPv6 in brackets), lowercasing the host.
fn split_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (host, port)
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (s, default_port),
        }
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    (valid && port != 0).then(|| (host.to_ascii_lowercase(), port))
}

/// Decodes `%XX` escapes; None for a broken escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `url` with any password replaced by `***`, bounded in length.
fn redact(url: &str) -> String {
    let shown: String = url.chars().take(200).collect();
    let (scheme, rest) = match shown.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r.to_string()),
        None => (String::new(), shown.clone()),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}{user}:***@{host}")
        }
        None => shown,
    }
}

#[cfg(test)]
mod tests;
