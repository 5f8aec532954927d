//! The demo workspace's services for `ferry dev`: a TCP echo server and a small HTTP
//! app, both on loopback, as a real workspace would run them.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Binds `port` on loopback, or any free port when it is taken.
pub async fn bind_preferred(port: u16) -> Result<TcpListener> {
    match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding a loopback port"),
    }
}

/// Serves each accepted connection with `serve` until `cancel` fires; the connection
/// tasks are owned here and stopped with the loop.
async fn serve_each<F, Fut>(listener: TcpListener, cancel: CancellationToken, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            Ok((tcp, peer)) = listener.accept() => { conns.spawn(serve(tcp, peer)); }
        }
    }
    conns.shutdown().await;
}

/// Echoes every byte back, half-close included.
pub async fn echo_server(listener: TcpListener, cancel: CancellationToken) {
    serve_each(listener, cancel, |mut tcp, _| async move {
        let _ = tcp.set_nodelay(true);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tcp.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tcp.shutdown().await;
    })
    .await
}

/// A tiny HTTP app that says where it runs and echoes the request line.
pub async fn http_app(listener: TcpListener, workspace: String, cancel: CancellationToken) {
    serve_each(listener, cancel, |tcp, peer| {
        let workspace = workspace.clone();
        async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = format!(
                    "hello from workspace {workspace}\n{} {} (from {peer})\n",
                    req.method(),
                    req.uri()
                );
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain; charset=utf-8")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        }
    })
    .await
}

pub fn port_of(listener: &TcpListener) -> u16 {
    listener
        .local_addr()
        .map(|a: SocketAddr| a.port())
        .unwrap_or(0)
}
