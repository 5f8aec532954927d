//! Web app host names and the app-auth rules shared by the relay and the control plane.
//!
//! A relay serves browsers on names under its *apps domain* (e.g. `apps.eu.example.com`):
//!
//! ```text
//! PORT--NAME--OWNER.APPS_DOMAIN        ; the HTTP app on PORT in workspace NAME--OWNER
//! terminal--NAME--OWNER.APPS_DOMAIN    ; the workspace's web terminal
//! ```
//!
//! The first label is at most 63 bytes (DNS), so PORT is written without leading
//! zeros: one app has exactly one name, and an app cookie is bound to that name.
//!
//! App tokens (kind `app`) carry the host name (no port) as their audience, and a `jti`
//! of the form `SESSION-OWN`: SESSION is the id of the user token (the browser
//! session) it was minted from, so revoking the session also revokes its app cookies.

use crate::label::WorkspaceLabel;

/// What an app host name points at inside the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppTarget {
    /// An HTTP app listening on this port.
    Port(u16),
    /// The web terminal (a shell on a PTY).
    Terminal,
}

/// A parsed app host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHost {
    pub target: AppTarget,
    pub workspace: WorkspaceLabel,
}

/// Why a host name is not an app of this apps domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppHostError {
    #[error("host is not under the apps domain")]
    OtherDomain,
    #[error("host must look like PORT--NAME--OWNER or terminal--NAME--OWNER")]
    BadLabel,
}

/// The first label of the terminal's host name.
pub const TERMINAL_LABEL: &str = "terminal";

/// Longest `return` path the app-auth flow carries.
pub const MAX_RETURN_PATH: usize = 2048;

impl AppHost {
    /// Parses `hostname` (lowercase, no port) as an app of `apps_domain`.
    pub fn parse(hostname: &str, apps_domain: &str) -> Result<AppHost, AppHostError> {
        let first = hostname
            .strip_suffix(apps_domain)
            .and_then(|rest| rest.strip_suffix('.'))
            .filter(|first| !apps_domain.is_empty() && !first.is_empty())
            .ok_or(AppHostError::OtherDomain)?;
        if first.contains('.') || first.len() > 63 {
            return Err(AppHostError::BadLabel);
        }
        let (head, label) = first.split_once("--").ok_or(AppHostError::BadLabel)?;
        let workspace = WorkspaceLabel::parse(label).map_err(|_| AppHostError::BadLabel)?;
        let target = if head == TERMINAL_LABEL {
            AppTarget::Terminal
        } else {
            let canonical = !head.is_empty()
                && head.len() <= 5
                && head.bytes().all(|b| b.is_ascii_digit())
                && !head.starts_with('0');
            match head.parse::<u16>() {
                Ok(port) if canonical => AppTarget::Port(port),
                _ => return Err(AppHostError::BadLabel),
            }
        };
        Ok(AppHost { target, workspace })
    }

    /// The host name of this app under `apps_domain`.
    pub fn hostname(&self, apps_domain: &str) -> String {
        match self.target {
            AppTarget::Port(port) => format!("{port}--{}.{apps_domain}", self.workspace),
            AppTarget::Terminal => format!("{TERMINAL_LABEL}--{}.{apps_domain}", self.workspace),
        }
    }
}

/// Splits an HTTP authority (`Host` header, URI authority) into a lowercase host name
/// and its port. `None` for anything that is not `NAME` or `NAME:PORT`.
pub fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    if authority.is_empty() || authority.len() > 255 || authority.contains('@') {
        return None;
    }
    let (name, port) = match authority.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, Some(port.parse::<u16>().ok()?)),
        Some(_) => return None,
        None => (authority, None),
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then(|| (name.to_ascii_lowercase(), port))
}

/// The app cookie's name on relays serving `apps_domain`: unique per apps domain, so
/// that the cookies of two ferry networks (or regions) on one browser never mix.
pub fn app_cookie_name(apps_domain: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, apps_domain.as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("ferry_app_{hex}")
}

/// The `jti` of an app token minted from the session whose token id is `session`.
pub fn app_token_id(session: &str, own: &str) -> String {
    format!("{session}-{own}")
}

/// The token ids whose revocation ends an app token with id `jti`: its own, and the
/// session's it was minted from.
pub fn app_revocation_ids(jti: &str) -> impl Iterator<Item = &str> {
    std::iter::once(jti).chain(jti.split_once('-').map(|(session, _)| session))
}

/// `path` if it is a safe place to send a browser back to after app auth: a path on
/// the same host (`/...`, never `//host` or `/\host`), printable ASCII, bounded.
pub fn safe_return_path(path: &str) -> Option<&str> {
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && path.len() <= MAX_RETURN_PATH
        && path.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(path)
}

/// The one page for an app that does not exist, is not yours, or whose workspace is
/// stopped (relay and control plane answer it alike, so none can be told apart).
pub const NOT_FOUND_PAGE: &str =
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>Not found</title></head>\
<body style=\"font-family:sans-serif;margin:3em\"><h1>404: no such app</h1>\
<p>This app does not exist, is not yours, or its workspace is not running.</p></body></html>\n";

/// Percent-encodes everything but unreserved characters (RFC 3986), for a query value.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded query value (`+` is a space); `None` if it is malformed
/// or not UTF-8.
pub fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The decoded value of `name` in a query string (`a=1&b=2`).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| percent_decode(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "apps.eu.localhost";

    #[test]
    fn parses_ports_and_the_terminal() {
        let app = AppHost::parse("8080--demo--dev.apps.eu.localhost", DOMAIN).unwrap();
        assert_eq!(app.target, AppTarget::Port(8080));
        assert_eq!(app.workspace.as_str(), "demo--dev");
        assert_eq!(app.hostname(DOMAIN), "8080--demo--dev.apps.eu.localhost");
        let term = AppHost::parse("terminal--demo--dev.apps.eu.localhost", DOMAIN).unwrap();
        assert_eq!(term.target, AppTarget::Terminal);
        assert_eq!(
            term.hostname(DOMAIN),
            "terminal--demo--dev.apps.eu.localhost"
        );
    }

    #[test]
    fn refuses_other_domains_and_non_canonical_names() {
        for bad in [
            "apps.eu.localhost",
            ".apps.eu.localhost",
            "8080--demo--dev.apps.us.localhost",
            "8080--demo--dev.xapps.eu.localhost",
            "8080--demo--dev.apps.eu.localhost.evil.com",
            "evil.com",
        ] {
            assert_eq!(
                AppHost::parse(bad, DOMAIN),
                Err(AppHostError::OtherDomain),
                "{bad}"
            );
        }
        for bad in [
            "08080--demo--dev.apps.eu.localhost",
            "0--demo--dev.apps.eu.localhost",
            "65536--demo--dev.apps.eu.localhost",
            "80--demo.apps.eu.localhost",
            "x.80--demo--dev.apps.eu.localhost",
            "--demo--dev.apps.eu.localhost",
            "term--demo--dev.apps.eu.localhost",
            "80--Demo--dev.apps.eu.localhost",
            "+80--demo--dev.apps.eu.localhost",
        ] {
            assert_eq!(
                AppHost::parse(bad, DOMAIN),
                Err(AppHostError::BadLabel),
                "{bad}"
            );
        }
    }

    #[test]
    fn authorities_split_into_lowercase_names_and_ports() {
        assert_eq!(
            split_authority("A.Example:8443"),
            Some(("a.example".into(), Some(8443)))
        );
        assert_eq!(
            split_authority("a.example"),
            Some(("a.example".into(), None))
        );
        for bad in ["", "a:b", "a:70000", "u@a", "a b", "[::1]:80", "a/b"] {
            assert_eq!(split_authority(bad), None, "{bad}");
        }
    }

    #[test]
    fn cookie_names_differ_per_apps_domain() {
        let eu = app_cookie_name("apps.eu.localhost");
        assert!(eu.starts_with("ferry_app_") && eu.len() == "ferry_app_".len() + 12);
        assert_ne!(eu, app_cookie_name("apps.us.localhost"));
    }

    #[test]
    fn app_tokens_die_with_their_session() {
        let jti = app_token_id("aaa", "bbb");
        assert_eq!(
            app_revocation_ids(&jti).collect::<Vec<_>>(),
            ["aaa-bbb", "aaa"]
        );
        assert_eq!(app_revocation_ids("plain").collect::<Vec<_>>(), ["plain"]);
    }

    #[test]
    fn query_values_round_trip() {
        let path = "/a b?c=d&e=%2F#f";
        let query = format!("x=1&return={}", percent_encode(path));
        assert_eq!(query_param(&query, "return").as_deref(), Some(path));
        assert_eq!(query_param("a=%zz", "a"), None);
        assert_eq!(query_param("a=%4", "a"), None);
        assert_eq!(query_param("a=1", "b"), None);
    }

    #[test]
    fn return_paths_stay_on_the_host() {
        assert_eq!(safe_return_path("/a?b=c#d"), Some("/a?b=c#d"));
        for bad in [
            "",
            "a",
            "//evil.com/",
            "/\\evil.com",
            "https://evil.com",
            "/a b",
            "/\n",
        ] {
            assert_eq!(safe_return_path(bad), None, "{bad:?}");
        }
    }
}
