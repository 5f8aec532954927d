//! HTTP CONNECT through a real proxy (Debian's tinyproxy, one instance per test on a
//! loopback port): bytes both ways, credentials from the URL, refusals explained, and
//! the control-plane client reaching an HTTPS server through it.
//!
//! A test that finds no tinyproxy fails under CI (env `CI`) and is skipped otherwise.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_transport::proxy::{self, NoProxy, ProxyError, ProxySettings, ProxyUrl};
use ferry_transport::{ControlClient, ControlError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn skipped(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {why}, and CI must run this test"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// A tinyproxy process on 127.0.0.1, killed on drop.
struct Tinyproxy {
    child: Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tinyproxy {
    /// Starts tinyproxy allowing CONNECT to `connect_ports` only, asking for
    /// `basic_auth` when given. None (after saying SKIPPED) when it is not installed.
    fn start(
        test: &str,
        connect_ports: &[u16],
        basic_auth: Option<(&str, &str)>,
    ) -> Option<Tinyproxy> {
        if Command::new("tinyproxy").arg("-v").output().is_err() {
            skipped(
                test,
                "tinyproxy is not installed (apt-get install tinyproxy)",
            );
            return None;
        }
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ferry-tinyproxy-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let dir = TempDir(dir);
        // tinyproxy has no `Port 0`: pick a free port, release it, and retry on the
        // rare collision (the process then exits at once).
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let mut conf = format!(
                "User nobody\nGroup nogroup\nPort {port}\nListen 127.0.0.1\nTimeout 30\n\
                 Allow 127.0.0.1\nLogLevel Connect\nMaxClients 50\n"
            );
            for p in connect_ports {
                conf.push_str(&format!("ConnectPort {p}\n"));
            }
            if let Some((user, password)) = basic_auth {
                conf.push_str(&format!("BasicAuth {user} {password}\n"));
            }
            let conf_path = dir.0.join("tinyproxy.conf");
            std::fs::write(&conf_path, conf).expect("tinyproxy config");
            // Foreground (-d), logging to stdout (no LogFile): nothing to write
            // for the unprivileged user it switches to.
            let mut child = Command::new("tinyproxy")
                .arg("-d")
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn tinyproxy");
            // Its log is drained (kept for the failure message), so a chatty proxy
            // never blocks on a full pipe; the thread ends when tinyproxy does.
            let log = Arc::new(std::sync::Mutex::new(Vec::new()));
            if let Some(out) = child.stdout.take() {
                let log = log.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        log.lock().unwrap().push(line);
                    }
                });
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if StdTcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Tinyproxy {
                        child,
                        port,
                        _dir: dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = log.lock().unwrap().join("\n");
        }
        panic!("tinyproxy did not start listening (5 ports tried); it said:\n{last_log}");
    }

    fn url(&self, userinfo: &str) -> ProxyUrl {
        ProxyUrl::parse(
            "HTTPS_PROXY",
            &format!("http://{userinfo}127.0.0.1:{}", self.port),
        )
        .expect("proxy URL")
    }
}

/// A TCP echo server on 127.0.0.1; its task ends with the returned handle.
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            conns.spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// 100 kB out and back through `stream`. The write side stays open until every
/// byte is back: tinyproxy closes a tunnel as soon as either side half-closes.
async fn echo_round_trip(mut stream: tokio::net::TcpStream) {
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = stream.split();
    let write = w.write_all(&payload);
    let mut back = vec![0u8; payload.len()];
    let read = r.read_exact(&mut back);
    let (written, read) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(write, read) })
            .await
            .expect("echo within 20 s");
    written.unwrap();
    read.unwrap();
    assert!(back == payload, "bytes changed in the tunnel");
}

#[tokio::test]
async fn connect_through_the_proxy_carries_bytes_both_ways() {
    let (echo, _task) = echo_server().await;
    let Some(proxy) = Tinyproxy::start(
        "connect_through_the_proxy_carries_bytes_both_ways",
        &[echo.port()],
        None,
    ) else {
        return;
    };
    let stream = proxy::connect_via(&proxy.url(""), "127.0.0.1", echo.port())
        .await
        .expect("tunnel");
    echo_round_trip(stream).await;

    // The same through tcp_connect, with the settings naming the proxy.
    let settings = ProxySettings::new(Some(proxy.url("")), NoProxy::default());
    let (stream, via) = proxy::tcp_connect(&settings, "127.0.0.1", echo.port(), &[echo])
        .await
        .expect("tunnel");
    assert_eq!(via, Some(proxy.url("")));
    echo_round_trip(stream).await;
}

#[tokio::test]
async fn credentials_from_the_url_are_sent_and_wrong_ones_are_explained() {
    let test = "credentials_from_the_url_are_sent_and_wrong_ones_are_explained";
    let (echo, _task) = echo_server().await;
    // tinyproxy's configuration takes only letters, digits and `-_.` in a password;
    // the URL percent-encodes two of them, to show they are decoded.
    let Some(proxy) = Tinyproxy::start(test, &[echo.port()], Some(("ferry", "pa-ss_1.2"))) else {
        return;
    };
    let stream = proxy::connect_via(&proxy.url("ferry:pa%2Dss_1%2E2@"), "127.0.0.1", echo.port())
        .await
        .expect("tunnel with credentials");
    echo_round_trip(stream).await;

    let err = proxy::connect_via(&proxy.url("ferry:wrong@"), "127.0.0.1", echo.port())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProxyError::AuthRequired {
                had_credentials: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("refused the credentials in its URL"),
        "{err}"
    );

    let err = proxy::connect_via(&proxy.url(""), "127.0.0.1", echo.port())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "proxy 127.0.0.1:{p} asks for credentials; put them in the proxy URL: http://user:password@127.0.0.1:{p}",
            p = proxy.port
        )
    );
}

#[tokio::test]
async fn a_connect_to_a_port_the_proxy_forbids_is_refused_with_its_reason() {
    let (echo, _task) = echo_server().await;
    let Some(proxy) = Tinyproxy::start(
        "a_connect_to_a_port_the_proxy_forbids_is_refused_with_its_reason",
        &[echo.port()],
        None,
    ) else {
        return;
    };
    let forbidden = if echo.port() == 65535 {
        65534
    } else {
        echo.port() + 1
    };
    let err = proxy::connect_via(&proxy.url(""), "127.0.0.1", forbidden)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProxyError::Refused { status: 403, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "proxy 127.0.0.1:{} refused CONNECT to 127.0.0.1:{forbidden}: 403 Access violation",
            proxy.port
        )
    );
}

#[tokio::test]
async fn no_proxy_hosts_are_reached_directly_and_others_through_the_proxy() {
    let (echo, _task) = echo_server().await;
    // A proxy address nobody listens on: reaching it would fail.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = ProxyUrl::parse(
        "HTTPS_PROXY",
        &format!("http://{}", dead.local_addr().unwrap()),
    )
    .unwrap();
    drop(dead);
    let settings = ProxySettings::new(Some(dead_url), NoProxy::parse("127.0.0.0/8"));
    let (stream, via) = proxy::tcp_connect(&settings, "127.0.0.1", echo.port(), &[echo])
        .await
        .expect("direct");
    assert_eq!(via, None);
    echo_round_trip(stream).await;

    let settings = ProxySettings::new(
        settings.proxy_for("localhost", 1).cloned(),
        NoProxy::default(),
    );
    let err = proxy::tcp_connect(&settings, "127.0.0.1", echo.port(), &[echo])
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot connect to proxy 127.0.0.1:"),
        "{err}"
    );
}

/// A one-route HTTPS server (`GET /hello` → `{"hello":"world"}`) with a certificate
/// from `ca`, counting the requests it answered.
async fn https_server(
    ca: &ferry_certs::Ca,
) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let leaf = ca
        .issue(&["127.0.0.1".into()], ferry_certs::Usage::Server)
        .unwrap();
    let tls = ferry_certs::server_config(&leaf, &[b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            conns.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let count = count.clone();
                        async move {
                            let body = if req.uri().path() == "/hello" {
                                count.fetch_add(1, Ordering::SeqCst);
                                r#"{"hello":"world"}"#
                            } else {
                                "{}"
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, answered, task)
}

#[tokio::test]
async fn the_control_plane_client_goes_through_the_proxy() {
    let test = "the_control_plane_client_goes_through_the_proxy";
    let ca = ferry_certs::Ca::create().unwrap();
    let (server, answered, _task) = https_server(&ca).await;
    let Some(proxy) = Tinyproxy::start(test, &[server.port()], Some(("ferry", "pw"))) else {
        return;
    };
    let url = format!("https://127.0.0.1:{}", server.port());
    let client = ControlClient::new(&url, ca.cert_pem())
        .unwrap()
        .with_proxy(ProxySettings::new(
            Some(proxy.url("ferry:pw@")),
            NoProxy::default(),
        ));
    let got: serde_json::Value = client.get("/hello", None).await.expect("through the proxy");
    assert_eq!(got, serde_json::json!({"hello": "world"}));
    assert_eq!(answered.load(Ordering::SeqCst), 1);

    // Proof that the request took the proxy: one that refuses gives its reason, and
    // the server hears nothing.
    let refusing = ControlClient::new(&url, ca.cert_pem())
        .unwrap()
        .with_proxy(ProxySettings::new(Some(proxy.url("")), NoProxy::default()));
    let err = refusing
        .get::<serde_json::Value>("/hello", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Proxy { .. }), "{err:?}");
    assert!(err.is_unreachable());
    assert!(
        err.to_string()
            .contains("asks for credentials; put them in the proxy URL"),
        "{err}"
    );
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}
