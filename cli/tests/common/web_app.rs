//! The HTTP app a web test runs "in the workspace": real hyper, real sockets.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use super::web::Body;

/// The test's app: `/headers` answers the request's headers as JSON, `/upload` the
/// length and SHA-256 of the body (read as it streams), `/ws` echoes WebSocket
/// messages, anything else `hello from the app PATH`.
pub async fn app_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    port
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(super::web::bytes_body(body));
    *resp.status_mut() = status;
    resp
}

async fn app(mut req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    Ok(match req.uri().path() {
        "/headers" => {
            let mut map = serde_json::Map::new();
            for (name, value) in req.headers() {
                let entry = map
                    .entry(name.as_str().to_string())
                    .or_insert_with(|| serde_json::json!([]));
                entry
                    .as_array_mut()
                    .unwrap()
                    .push(value.to_str().unwrap_or("?").into());
            }
            text(StatusCode::OK, serde_json::Value::Object(map).to_string())
        }
        "/upload" => {
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            len += data.len() as u64;
                            hasher.update(data);
                        }
                    }
                    Err(e) => return Ok(text(StatusCode::BAD_REQUEST, e.to_string())),
                }
            }
            text(StatusCode::OK, format!("{len} {}", hex(&hasher.finalize())))
        }
        "/download" => {
            // `?SEED-LEN`: LEN bytes generated from SEED, streamed as they are made.
            let (seed, len) = req
                .uri()
                .query()
                .and_then(|q| q.split_once('-'))
                .and_then(|(s, l)| Some((s.parse::<u64>().ok()?, l.parse::<u64>().ok()?)))
                .unwrap_or((0, 0));
            let (body, _) = generated_body(seed, len);
            let mut resp = Response::new(body);
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            resp
        }
        "/ws" => {
            let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
            let Some(key) = key else {
                return Ok(text(StatusCode::BAD_REQUEST, "no key".into()));
            };
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
            let h = resp.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(
                    &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .unwrap(),
            );
            resp
        }
        _ => text(
            StatusCode::OK,
            format!(
                "hello from the app {}",
                req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
            ),
        ),
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams `len` bytes of a deterministic pattern seeded by `seed`, 64 KiB at a time,
/// hashing as it goes; answers the body and a receiver of its digest.
pub fn generated_body(seed: u64, len: u64) -> (Body, tokio::sync::oneshot::Receiver<String>) {
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, super::web::BoxError>>(4);
    let (digest_tx, digest_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut hasher = Sha256::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(64 * 1024) as usize;
            let mut chunk = vec![0u8; n];
            rng.fill(&mut chunk);
            hasher.update(&chunk);
            left -= n as u64;
            if tx
                .send(Ok(hyper::body::Frame::data(Bytes::from(chunk))))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = digest_tx.send(hex(&hasher.finalize()));
    });
    let stream = tokio_stream_from(rx);
    (
        BodyExt::boxed(http_body_util::StreamBody::new(stream)),
        digest_rx,
    )
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
