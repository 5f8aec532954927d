//! A QUIC peer that tests can freeze, standing in for a relay that is killed or
//! stopped: no close, no packets, its connections left open. It runs on a runtime of
//! its own, on its own thread, and freezing blocks that thread, which stops every
//! timer and socket of its endpoint at once.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::Limits;

pub struct FreezablePeer {
    addr: SocketAddr,
    freeze: Option<tokio::sync::oneshot::Sender<()>>,
    thaw: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl FreezablePeer {
    /// A server endpoint on 127.0.0.1 with a certificate from `ca`, speaking `alpn`,
    /// with a relay's server-side limits. It accepts every connection and keeps it.
    pub fn spawn(ca: &ferry_certs::Ca, alpn: &[u8]) -> FreezablePeer {
        let leaf = ca
            .issue(&["127.0.0.1".into()], ferry_certs::Usage::Server)
            .expect("peer certificate");
        let tls = ferry_certs::server_config(&leaf, &[alpn]).expect("peer TLS");
        let socket =
            crate::quic::udp_socket("127.0.0.1:0".parse().expect("literal")).expect("peer socket");
        let (addr_tx, addr_rx) = mpsc::channel();
        let (freeze_tx, mut freeze_rx) = tokio::sync::oneshot::channel::<()>();
        let (thaw_tx, thaw_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("peer runtime");
            runtime.block_on(async move {
                let endpoint =
                    crate::quic::server_endpoint(socket, tls, &Limits::default(), b"test peer")
                        .expect("peer endpoint");
                addr_tx.send(endpoint.local_addr().expect("bound")).ok();
                let mut conns = Vec::new();
                loop {
                    tokio::select! {
                        incoming = endpoint.accept() => match incoming {
                            Some(incoming) => {
                                if let Ok(conn) = incoming.await {
                                    conns.push(conn);
                                }
                            }
                            None => break,
                        },
                        _ = &mut freeze_rx => {
                            // Blocks the peer's only thread until thawed or dropped.
                            let _ = thaw_rx.recv();
                            break;
                        }
                    }
                }
                drop(conns);
            });
        });
        FreezablePeer {
            addr: addr_rx.recv().expect("peer address"),
            freeze: Some(freeze_tx),
            thaw: thaw_tx,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the peer dead, as SIGKILL or SIGSTOP would.
    pub fn freeze(&mut self) {
        if let Some(freeze) = self.freeze.take() {
            let _ = freeze.send(());
        }
    }
}

impl Drop for FreezablePeer {
    fn drop(&mut self) {
        self.freeze();
        let _ = self.thaw.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
