//! Web apps by subdomain through real `ferry control`, `ferry relay --apps-domain` and
//! `ferry agent` processes: a real HTTP app in the "workspace" (this test), reached
//! over HTTPS (HTTP/1.1 and HTTP/2) after the full sign-in redirect flow, with cookies
//! kept by a browser-like client.

mod common;

use std::time::{Duration, Instant};

use common::web::{empty, WebClient};
use common::web_app::{app_server, generated_body};
use common::Network;
use futures_util::{SinkExt, StreamExt};
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const APPS: &str = "apps.eu.localhost";

/// A network with one web relay in `eu`, an agent for `demo--dev`, the test's app, and
/// a browser signed in as `dev`.
struct WebNet {
    net: Network,
    relay_port: u16,
    app_port: u16,
    user_token: String,
    browser: WebClient,
}

impl WebNet {
    async fn start(name: &str) -> WebNet {
        let mut net = Network::start(name).await.unwrap();
        let relay = net
            .start_relay_with("eu-1", "eu", "127.0.0.1:0", &["--apps-domain", APPS])
            .await
            .unwrap();
        net.start_agent("demo--dev", &[]).await.unwrap();
        let user_token = net
            .mint(ferry_proto::token::TokenKind::User, "dev", None)
            .await
            .unwrap();
        net.wait_for_agent("demo--dev", &user_token).await.unwrap();
        let app_port = app_server().await;
        let ca = std::fs::read_to_string(&net.ca_file).unwrap();
        let browser = WebClient::new(&ca, &[b"h2", b"http/1.1"]);
        browser
            .sign_in(&net.control_url, &user_token)
            .await
            .unwrap();
        WebNet {
            net,
            relay_port: relay.port(),
            app_port,
            user_token,
            browser,
        }
    }

    fn host(&self, first_label: &str) -> String {
        format!("{first_label}.{APPS}")
    }

    fn url(&self, first_label: &str, path: &str) -> String {
        format!(
            "https://{}:{}{path}",
            self.host(first_label),
            self.relay_port
        )
    }

    fn app_label(&self) -> String {
        format!("{}--demo--dev", self.app_port)
    }
}

fn cookie_name() -> String {
    ferry_proto::app_host::app_cookie_name(APPS)
}

#[tokio::test]
async fn sign_in_flow_then_the_app_over_http1_and_http2() {
    let w = WebNet::start("web-flow").await;
    let url = w.url(&w.app_label(), "/hello?x=1");
    let pages = w.browser.get_following(&url).await.unwrap();
    let hops: Vec<(u16, String)> = pages
        .iter()
        .map(|p| (p.status.as_u16(), p.url.clone()))
        .collect();
    assert_eq!(pages.len(), 4, "{hops:?}");
    // The relay sends us to the control plane, which sends us back with a token, and
    // the relay trades it for a cookie and sends us to where we were going.
    assert_eq!(pages[0].status, StatusCode::FOUND);
    let to_control = pages[0].location().unwrap();
    assert!(
        to_control.starts_with(&format!("{}/app-auth?host=", w.net.control_url)),
        "{to_control}"
    );
    assert_eq!(pages[1].status, StatusCode::FOUND);
    let back = pages[1].location().unwrap();
    assert!(
        back.starts_with(&format!(
            "https://{}:{}/.ferry/auth?token=",
            w.host(&w.app_label()),
            w.relay_port
        )),
        "{back}"
    );
    assert_eq!(pages[2].status, StatusCode::FOUND);
    assert_eq!(pages[2].location().as_deref(), Some("/hello?x=1"));
    let cookies = pages[2].set_cookies();
    assert_eq!(cookies.len(), 1);
    let cookie = &cookies[0];
    assert_eq!(cookie.name, cookie_name());
    for flag in ["httponly", "secure"] {
        assert!(cookie.attributes.contains_key(flag), "{}", cookie.raw);
    }
    assert_eq!(
        cookie.attributes.get("samesite").map(String::as_str),
        Some("Lax")
    );
    assert_eq!(cookie.attributes.get("path").map(String::as_str), Some("/"));
    assert!(
        !cookie.attributes.contains_key("domain"),
        "host-only: {}",
        cookie.raw
    );
    assert_eq!(pages[3].status, StatusCode::OK);
    assert_eq!(pages[3].text(), "hello from the app /hello?x=1");
    assert_eq!(pages[3].version, Version::HTTP_2);

    // HTTP/1.1 with the same cookie.
    let h1 = w.browser.with_alpn(&[b"http/1.1"]);
    let page = h1
        .send(
            h1.request(Method::GET, &w.url(&w.app_label(), "/again"))
                .unwrap()
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(page.version, Version::HTTP_11);
    assert_eq!(page.text(), "hello from the app /again");

    // The app sees no ferry credential, and forwarding headers set by the relay alone.
    let req = w
        .browser
        .request(Method::GET, &w.url(&w.app_label(), "/headers"))
        .unwrap()
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=203.0.113.9")
        .header(header::AUTHORIZATION, format!("Bearer {}", w.user_token))
        .body(empty())
        .unwrap();
    let mut req = req;
    let cookies = req
        .headers()
        .get(header::COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    req.headers_mut().insert(
        header::COOKIE,
        HeaderValue::from_str(&format!("mine=1; {cookies}; ferry_session=x")).unwrap(),
    );
    let page = w.browser.send(req).await.unwrap();
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let seen: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    assert_eq!(
        seen["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"]),
        "{seen}"
    );
    assert_eq!(
        seen["x-forwarded-host"],
        serde_json::json!([format!("{}:{}", w.host(&w.app_label()), w.relay_port)])
    );
    assert_eq!(seen["x-forwarded-proto"], serde_json::json!(["https"]));
    assert_eq!(seen["cookie"], serde_json::json!(["mine=1"]), "{seen}");
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert!(seen.get("forwarded").is_none(), "{seen}");

    // The browser RTT probe answers on any host, without sign-in.
    let ping = w
        .browser
        .send(
            w.browser
                .request(
                    Method::GET,
                    &format!("https://127.0.0.1:{}/.ferry/ping", w.relay_port),
                )
                .unwrap()
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ping.status, StatusCode::NO_CONTENT);
    assert_eq!(ping.headers["access-control-allow-origin"], "*");
    assert_eq!(ping.headers["timing-allow-origin"], "*");
    assert_eq!(ping.headers["cache-control"], "no-store");
    // And the region map tells browsers where that is.
    let regions: ferry_proto::api::RegionsResponse = w
        .net
        .control_client()
        .get("/api/v1/regions", Some(&w.user_token))
        .await
        .unwrap();
    assert_eq!(
        regions.regions[0].relays[0].https_url.as_deref(),
        Some(format!("https://127.0.0.1:{}", w.relay_port).as_str())
    );
}

/// Signs `browser` in to the app at `label` and answers its app cookie.
async fn app_cookie(w: &WebNet, browser: &WebClient, label: &str) -> String {
    let pages = browser.get_following(&w.url(label, "/")).await.unwrap();
    assert_eq!(
        pages.last().unwrap().status,
        StatusCode::OK,
        "{:?}",
        pages.last()
    );
    browser.cookie(&w.host(label), &cookie_name()).unwrap()
}

/// GET with exactly this cookie header, no redirects followed.
async fn get_with_cookie(w: &WebNet, label: &str, cookie: &str) -> common::web::Page {
    let client = WebClient::new(
        &std::fs::read_to_string(&w.net.ca_file).unwrap(),
        &[b"http/1.1"],
    );
    let req = client
        .request(Method::GET, &w.url(label, "/"))
        .unwrap()
        .header(header::COOKIE, format!("{}={cookie}", cookie_name()))
        .body(empty())
        .unwrap();
    client.send(req).await.unwrap()
}

#[tokio::test]
async fn strangers_unknown_apps_and_stopped_workspaces_get_one_404_and_cookies_stay_on_their_host()
{
    let w = WebNet::start("web-refusals").await;
    let ca = std::fs::read_to_string(&w.net.ca_file).unwrap();
    // bob, with his own running workspace and app cookie.
    w.net.ensure_workspace("web--bob").await.unwrap();
    let mut net = w.net;
    net.start_agent("web--bob", &[]).await.unwrap();
    let bob_token = net
        .mint(ferry_proto::token::TokenKind::User, "bob", None)
        .await
        .unwrap();
    net.wait_for_agent("web--bob", &bob_token).await.unwrap();
    net.ensure_workspace("idle--dev").await.unwrap();
    let w = WebNet { net, ..w };
    let bob = WebClient::new(&ca, &[b"h2", b"http/1.1"]);
    bob.sign_in(&w.net.control_url, &bob_token).await.unwrap();
    let bob_label = format!("{}--web--bob", w.app_port);
    let bob_cookie = app_cookie(&w, &bob, &bob_label).await;

    // dev reaching for bob's app, an app on a port where nothing listens, a stopped
    // workspace, and a workspace that does not exist: the same 404 page.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut bodies = Vec::new();
    for label in [
        bob_label.clone(),
        format!("{closed_port}--demo--dev"),
        format!("{}--idle--dev", w.app_port),
        format!("{}--nope--dev", w.app_port),
    ] {
        let pages = w.browser.get_following(&w.url(&label, "/")).await.unwrap();
        let last = pages.last().unwrap();
        assert_eq!(last.status, StatusCode::NOT_FOUND, "{label}: {:?}", last);
        bodies.push(last.text());
    }
    // The control plane sends browsers only to app hosts of registered relays.
    for host in [
        "evil.example",
        "8080--demo--dev.apps.evil.example",
        "8080--demo--dev.apps.eu.localhost.evil.example",
    ] {
        let pages = w
            .browser
            .get_following(&format!(
                "{}/app-auth?host={host}:{}&return=/",
                w.net.control_url, w.relay_port
            ))
            .await
            .unwrap();
        assert_eq!(
            pages.len(),
            1,
            "{host}: redirected to {:?}",
            pages[0].location()
        );
        assert_eq!(pages[0].status, StatusCode::NOT_FOUND);
        bodies.push(pages[0].text());
    }
    assert!(bodies.windows(2).all(|b| b[0] == b[1]), "{bodies:#?}");
    assert_eq!(bodies[0], ferry_proto::app_host::NOT_FOUND_PAGE);

    // Cookie replay: dev's cookie for one app is refused on another app's host (even
    // dev's own), and bob's cookie on dev's app: both are sent to sign in again.
    let dev_label = w.app_label();
    let dev_cookie = app_cookie(&w, &w.browser, &dev_label).await;
    assert_eq!(
        get_with_cookie(&w, &dev_label, &dev_cookie).await.status,
        StatusCode::OK
    );
    let other_port_label = format!("{closed_port}--demo--dev");
    let terminal_label = "terminal--demo--dev".to_string();
    for (label, cookie) in [
        (&other_port_label, &dev_cookie),
        (&terminal_label, &dev_cookie),
        (&dev_label, &bob_cookie),
    ] {
        let page = get_with_cookie(&w, label, cookie).await;
        assert_eq!(page.status, StatusCode::FOUND, "{label}");
        assert!(page.location().unwrap().contains("/app-auth?"), "{label}");
    }
    // A sign-in link for one host does not set a cookie on another.
    let token = dev_cookie.clone();
    let stolen = get_with_cookie_path(
        &w,
        &other_port_label,
        &format!("/.ferry/auth?token={token}&return=/"),
    )
    .await;
    assert_eq!(stolen.status, StatusCode::BAD_REQUEST);
    assert!(stolen.set_cookies().is_empty());

    // Revoking dev's session ends its app cookies on the relay within seconds.
    let jti = ferry_proto::token::peek_claims(&w.user_token).unwrap().jti;
    let status = w
        .net
        .control_client()
        .delete(&format!("/api/v1/tokens/{jti}"), Some(&w.net.admin_token))
        .await;
    status.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = get_with_cookie(&w, &dev_label, &dev_cookie).await;
        if page.status == StatusCode::FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a revoked session's app cookie still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_with_cookie_path(w: &WebNet, label: &str, path: &str) -> common::web::Page {
    let client = WebClient::new(
        &std::fs::read_to_string(&w.net.ca_file).unwrap(),
        &[b"http/1.1"],
    );
    let req = client
        .request(Method::GET, &w.url(label, path))
        .unwrap()
        .body(empty())
        .unwrap();
    client.send(req).await.unwrap()
}

/// Sends raw bytes over TLS (HTTP/1.1) and answers the status line.
async fn raw_status(w: &WebNet, request: &str) -> String {
    let client = WebClient::new(
        &std::fs::read_to_string(&w.net.ca_file).unwrap(),
        &[b"http/1.1"],
    );
    let host = w.host(&w.app_label());
    let mut tls = client.tls(&host, w.relay_port).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn smuggling_inputs_are_refused_with_400() {
    let w = WebNet::start("web-smuggling").await;
    let label = w.app_label();
    let cookie = app_cookie(&w, &w.browser, &label).await;
    let host = format!("{}:{}", w.host(&label), w.relay_port);
    let base = format!("Host: {host}\r\nCookie: {}={cookie}\r\n", cookie_name());
    // A well-formed request on the same path works, so the refusals below are about
    // the length headers.
    let ok = raw_status(
        &w,
        &format!(
            "POST /upload HTTP/1.1\r\n{base}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
        ),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    for (what, headers, body) in [
        (
            "CL+TE",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
        (
            "TE+CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "0\r\n\r\n",
        ),
        (
            "duplicate CL",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "hello",
        ),
        (
            "conflicting CL",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "hello!",
        ),
        ("CL list", "Content-Length: 5, 5\r\n", "hello"),
        ("bad TE", "Transfer-Encoding: gzip\r\n", "hello"),
    ] {
        let status = raw_status(
            &w,
            &format!("POST /upload HTTP/1.1\r\n{base}{headers}Connection: close\r\n\r\n{body}"),
        )
        .await;
        assert!(status.starts_with("HTTP/1.1 400"), "{what}: {status:?}");
    }
}

#[tokio::test]
async fn websocket_upgrades_pass_through_to_the_app() {
    let w = WebNet::start("web-websocket").await;
    let label = w.app_label();
    let cookie = app_cookie(&w, &w.browser, &label).await;
    let h1 = w.browser.with_alpn(&[b"http/1.1"]);
    let tls = h1.tls(&w.host(&label), w.relay_port).await.unwrap();
    let request = tokio_tungstenite::tungstenite::handshake::client::Request::builder()
        .uri(format!("wss://{}:{}/ws", w.host(&label), w.relay_port))
        .header("host", format!("{}:{}", w.host(&label), w.relay_port))
        .header("cookie", format!("{}={cookie}", cookie_name()))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::Text("hello over ferry".into()))
        .await
        .unwrap();
    let big: Vec<u8> = common::random_bytes(1 << 20);
    ws.send(Message::Binary(big.clone())).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(first, Message::Text("hello over ferry".into()));
    let second = ws.next().await.unwrap().unwrap();
    assert_eq!(second.into_data(), big);

    // Revoking the browser's session ends the open WebSocket too.
    let jti = ferry_proto::token::peek_claims(&w.user_token).unwrap().jti;
    w.net
        .control_client()
        .delete(&format!("/api/v1/tokens/{jti}"), Some(&w.net.admin_token))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the WebSocket outlived its revoked session");
}

#[tokio::test]
async fn ten_concurrent_100_mib_uploads_arrive_intact() {
    const LEN: u64 = 100 * 1024 * 1024;
    let w = WebNet::start("web-uploads").await;
    let label = w.app_label();
    let cookie = app_cookie(&w, &w.browser, &label).await;
    let mut uploads = Vec::new();
    for i in 0..10u64 {
        // Half over HTTP/2, half over HTTP/1.1 (chunked, no length), each on its own
        // connection, as browsers do for big uploads.
        let alpn: &[&[u8]] = if i % 2 == 0 { &[b"h2"] } else { &[b"http/1.1"] };
        let client = w.browser.with_alpn(alpn);
        let url = w.url(&label, "/upload");
        let cookie = cookie.clone();
        uploads.push(tokio::spawn(async move {
            let (body, digest) = generated_body(i, LEN);
            let mut req = client
                .request(Method::POST, &url)
                .unwrap()
                .header(header::COOKIE, format!("{}={cookie}", cookie_name()));
            if i % 4 == 0 {
                req = req.header(header::CONTENT_LENGTH, LEN);
            }
            let page = client.send(req.body(body).unwrap()).await.unwrap();
            (page, digest.await.unwrap())
        }));
    }
    for (i, upload) in uploads.into_iter().enumerate() {
        let (page, digest) = tokio::time::timeout(Duration::from_secs(300), upload)
            .await
            .expect("upload finished")
            .unwrap();
        assert_eq!(page.status, StatusCode::OK, "upload {i}: {}", page.text());
        assert_eq!(page.text(), format!("{LEN} {digest}"), "upload {i}");
    }
}

#[tokio::test]
async fn the_web_terminal_says_why_the_agent_refused() {
    let mut w = WebNet::start("web-terminal-refused").await;
    w.net
        .start_agent("locked--dev", &["--disable-terminal"])
        .await
        .unwrap();
    w.net
        .wait_for_agent("locked--dev", &w.user_token)
        .await
        .unwrap();
    let label = "terminal--locked--dev";
    let cookie = app_cookie(&w, &w.browser, label).await;
    let authority = format!("{}:{}", w.host(label), w.relay_port);
    let h1 = w.browser.with_alpn(&[b"http/1.1"]);
    let handshake = |origin: String| {
        tokio_tungstenite::tungstenite::handshake::client::Request::builder()
            .uri(format!("wss://{authority}/.ferry/terminal?cols=80&rows=24"))
            .header("host", &authority)
            .header("origin", origin)
            .header("cookie", format!("{}={cookie}", cookie_name()))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header(
                "sec-websocket-key",
                tokio_tungstenite::tungstenite::handshake::client::generate_key(),
            )
            .body(())
            .unwrap()
    };
    // Another origin's page may not open the terminal with the user's cookie.
    let tls = h1.tls(&w.host(label), w.relay_port).await.unwrap();
    let refused =
        tokio_tungstenite::client_async(handshake("https://evil.example".into()), tls).await;
    assert!(refused.is_err(), "a cross-origin socket was accepted");

    let tls = h1.tls(&w.host(label), w.relay_port).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(handshake(format!("https://{authority}")), tls)
            .await
            .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(text) = first else {
        panic!("expected the refusal as text, got {first:?}");
    };
    let message: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        message["error"]
            .as_str()
            .unwrap()
            .contains("terminals are disabled in workspace `locked--dev`"),
        "{message}"
    );
}

#[tokio::test]
async fn any_relay_of_the_region_serves_the_app_with_the_same_cookie() {
    let mut net = Network::start("web-mesh").await.unwrap();
    let mut ports = Vec::new();
    // The agent holds two of them (owner and standby): the third reaches it over the
    // mesh.
    for name in ["eu-1", "eu-2", "eu-3"] {
        let addr = net
            .start_relay_with(name, "eu", "127.0.0.1:0", &["--apps-domain", APPS])
            .await
            .unwrap();
        ports.push(addr.port());
    }
    net.start_agent("demo--dev", &[]).await.unwrap();
    let user = net
        .mint(ferry_proto::token::TokenKind::User, "dev", None)
        .await
        .unwrap();
    net.wait_for_agent("demo--dev", &user).await.unwrap();
    let app_port = app_server().await;
    let ca = std::fs::read_to_string(&net.ca_file).unwrap();
    let browser = WebClient::new(&ca, &[b"h2", b"http/1.1"]);
    browser.sign_in(&net.control_url, &user).await.unwrap();
    let host = format!("{app_port}--demo--dev.{APPS}");
    // Signed in through one relay; the cookie (per host, whatever the port, as
    // browsers keep them) works on every other.
    let first = browser
        .get_following(&format!("https://{host}:{}/one", ports[0]))
        .await
        .unwrap();
    assert_eq!(first.len(), 4);
    assert_eq!(first[3].text(), "hello from the app /one");
    for port in &ports {
        let pages = browser
            .get_following(&format!("https://{host}:{port}/two"))
            .await
            .unwrap();
        assert_eq!(pages.len(), 1, "signed in already: {:?}", pages[0]);
        assert_eq!(pages[0].text(), "hello from the app /two");
    }
}

#[tokio::test]
async fn large_downloads_stream_through_intact_over_http1_and_http2() {
    const LEN: u64 = 64 * 1024 * 1024;
    let w = WebNet::start("web-download").await;
    let label = w.app_label();
    app_cookie(&w, &w.browser, &label).await;
    for (seed, alpn) in [(7u64, b"h2".as_slice()), (8, b"http/1.1".as_slice())] {
        let client = w.browser.with_alpn(&[alpn]);
        let url = w.url(&label, &format!("/download?{seed}-{LEN}"));
        let page = client
            .send(
                client
                    .request(Method::GET, &url)
                    .unwrap()
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.body.len() as u64, LEN);
        // The same bytes the app's generator made.
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut expected = vec![0u8; LEN as usize];
        for chunk in expected.chunks_mut(64 * 1024) {
            rng.fill(chunk);
        }
        assert!(
            page.body == expected,
            "download over {:?} differs",
            page.version
        );
    }
}
