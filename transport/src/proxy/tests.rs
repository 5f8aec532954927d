use std::collections::HashMap;

use super::connect::{connect_request, parse_status};
use super::*;

fn url(s: &str) -> ProxyUrl {
    ProxyUrl::parse("HTTPS_PROXY", s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn settings(vars: &[(&str, &str)]) -> ProxySettings {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ProxySettings::from_vars(|var| vars.get(var).cloned())
}

#[test]
fn proxy_urls_parse_with_credentials_percent_decoded() {
    let p = url("http://al%40ice:p%3Ass@Proxy.Example.com:3128/");
    assert_eq!(p.scheme(), "http");
    assert_eq!(p.authority(), "proxy.example.com:3128");
    assert_eq!(p.credentials(), Some(("al@ice", "p:ss")));
    assert_eq!(p.to_string(), "http://al@ice:***@proxy.example.com:3128");
    assert!(!format!("{p:?}").contains("p:ss"));

    let p = url("127.0.0.1:8888");
    assert_eq!(
        (p.scheme(), p.authority()),
        ("http", "127.0.0.1:8888".into())
    );
    assert_eq!(p.credentials(), None);
    assert_eq!(url("http://[::1]:8888").authority(), "[::1]:8888");
    assert_eq!(url("http://proxy").port(), 1080, "curl's default port");
    assert_eq!(url("http://user@proxy:1").credentials(), Some(("user", "")));
}

#[test]
fn malformed_proxy_urls_are_refused_without_showing_the_password() {
    for bad in [
        "http://",
        "http://proxy:notaport",
        "http://proxy:0",
        "http://proxy:3128/path",
        "http://u:sec%zzret@proxy:1",
        "http://[::1:8888",
    ] {
        let err = ProxyUrl::parse("HTTPS_PROXY", bad)
            .expect_err(bad)
            .to_string();
        assert!(err.contains("malformed"), "{bad}: {err}");
        assert!(!err.contains("sec%zzret"), "{err}");
    }
}

#[test]
fn socks_and_https_proxies_are_named_as_unsupported_when_used() {
    let p = url("socks5://127.0.0.1:1080");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(connect_via(&p, "relay", 443))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "proxy scheme socks5 is not supported; use an HTTP proxy (http://host:port)"
    );
    let err = rt
        .block_on(connect_via(&url("https://proxy:443"), "relay", 443))
        .unwrap_err();
    assert!(
        matches!(err, ProxyError::UnsupportedScheme { .. }),
        "{err:?}"
    );
}

#[test]
fn lowercase_https_proxy_wins_then_uppercase_then_all_proxy() {
    let all = [
        ("https_proxy", "http://lower:1"),
        ("HTTPS_PROXY", "http://upper:2"),
        ("all_proxy", "http://all-lower:3"),
        ("ALL_PROXY", "http://all-upper:4"),
        ("http_proxy", "http://plain:5"),
    ];
    for skip in 0..4 {
        let s = settings(&all[skip..]);
        let want = all[skip].1.trim_start_matches("http://");
        assert_eq!(
            s.proxy_for("relay", 443).map(|p| p.authority()),
            Some(want.to_string())
        );
    }
    // http_proxy alone: our connections all carry TLS, so it does not apply.
    assert!(settings(&all[4..]).proxy_for("relay", 443).is_none());
    // Empty means unset.
    let s = settings(&[("https_proxy", " "), ("HTTPS_PROXY", "http://upper:2")]);
    assert_eq!(s.proxy_for("relay", 443).unwrap().authority(), "upper:2");
}

#[test]
fn an_unusable_proxy_setting_is_an_error_not_a_direct_connection() {
    let s = settings(&[
        ("HTTPS_PROXY", "http://proxy:bad"),
        ("NO_PROXY", "internal"),
    ]);
    assert!(matches!(
        s.route("relay", 443),
        Err(ProxyError::BadUrl {
            var: "HTTPS_PROXY",
            ..
        })
    ));
    assert!(matches!(s.route("internal", 443), Ok(None)));
    assert!(s.proxy_for("relay", 443).is_none());
}

#[test]
fn no_proxy_matches_names_and_their_subdomains_like_curl() {
    let n = NoProxy::parse("example.com, .corp.internal ,*.wild.test");
    for host in [
        "example.com",
        "www.example.com",
        "a.b.EXAMPLE.com.",
        "corp.internal",
        "x.corp.internal",
        "wild.test",
        "a.wild.test",
    ] {
        assert!(n.matches(host, 443), "{host}");
    }
    for host in ["notexample.com", "example.com.evil", "internal", "10.0.0.1"] {
        assert!(!n.matches(host, 443), "{host}");
    }
}

#[test]
fn no_proxy_matches_ips_cidrs_and_ports() {
    let n = NoProxy::parse(
        "10.0.0.0/8,192.168.1.5,::1,[fd00::]/8:443,relay:4433,[2001:db8::1]:80,127.0.0.1:9",
    );
    assert!(n.matches("10.20.30.40", 1));
    assert!(n.matches("::ffff:10.1.1.1", 1), "IPv4-mapped");
    assert!(!n.matches("11.0.0.1", 1));
    assert!(n.matches("192.168.1.5", 1));
    assert!(!n.matches("192.168.1.6", 1));
    assert!(n.matches("[::1]", 1));
    assert!(n.matches("::1", 1));
    // A port given: that port only.
    assert!(n.matches("relay", 4433));
    assert!(!n.matches("relay", 443));
    assert!(n.matches("[2001:db8::1]", 80));
    assert!(!n.matches("2001:db8::1", 81));
    assert!(n.matches("127.0.0.1", 9));
    assert!(!n.matches("127.0.0.1", 10));
    // Names are never resolved to match a block.
    assert!(!n.matches("localhost", 1));
}

#[test]
fn no_proxy_star_means_no_proxy_at_all_and_junk_is_skipped() {
    assert!(NoProxy::parse("*").matches("anything", 1));
    let n = NoProxy::parse("bad/99, 10.0.0.0/33, ::1/200, a b,,");
    assert!(n.matches("a", 1) && n.matches("b", 1));
    assert!(!n.matches("10.0.0.1", 1));
    let s = settings(&[
        ("HTTPS_PROXY", "http://p:1"),
        ("no_proxy", "*"),
        ("NO_PROXY", ""),
    ]);
    assert!(s.proxy_for("relay", 443).is_none());
    let s = settings(&[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "relay")]);
    assert!(s.proxy_for("relay", 443).is_none());
    assert!(s.proxy_for("other", 443).is_some());
}

#[test]
fn connect_request_carries_basic_credentials() {
    let req = connect_request("relay.example.com:4433", Some(("user", "pass")));
    assert!(req.starts_with(
        "CONNECT relay.example.com:4433 HTTP/1.1\r\nHost: relay.example.com:4433\r\n"
    ));
    assert!(
        req.contains("Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"),
        "{req}"
    );
    assert!(req.ends_with("\r\n\r\n"));
    assert!(!connect_request("[::1]:1", None).contains("Proxy-Authorization"));
}

#[test]
fn status_lines_parse_and_junk_is_refused() {
    assert_eq!(
        parse_status(b"HTTP/1.0 200 Connection established\r\n\r\n"),
        Ok((200, "Connection established".into()))
    );
    assert_eq!(
        parse_status(b"HTTP/1.1 403 Forbidden\r\nX: y\r\n\r\n"),
        Ok((403, "Forbidden".into()))
    );
    assert_eq!(
        parse_status(b"HTTP/1.1 407\r\n\r\n"),
        Ok((407, String::new()))
    );
    for junk in [
        &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 999 X\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
        b"",
    ] {
        assert!(parse_status(junk).is_err(), "{junk:?}");
    }
}
