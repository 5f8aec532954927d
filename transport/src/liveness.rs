//! Telling a peer that went silent from one that is only slow to answer.
//!
//! A QUIC connection to a killed process stays open until its idle timeout: nothing
//! closes it, the kernel just drops what is sent. A stream opened on it waits that
//! long for an answer. Keep-alives make a live peer send something at least once per
//! keep-alive interval (its own PINGs, its ACKs of ours), so a connection that has
//! received nothing for a few intervals is almost surely dead, long before quinn gives
//! up on it. [`silence`] watches for that without closing anything: a caller can try
//! elsewhere at once, and a peer that was only stalled keeps its connection and the
//! streams already on it.

use std::time::Duration;

use quinn::Connection;
use tokio::time::Instant;

/// Resolves once `conn` has received no UDP datagram for `quiet`, measured from the
/// call. Never resolves while the peer keeps sending. Samples quinn's receive counter,
/// a tenth of `quiet` apart (at least 10 ms), so it costs nothing when raced against
/// an answer that comes quickly.
pub async fn silence(conn: &Connection, quiet: Duration) {
    let step = (quiet / 10).max(Duration::from_millis(10));
    let mut heard = conn.stats().udp_rx.datagrams;
    let mut last_heard = Instant::now();
    loop {
        tokio::time::sleep(step).await;
        let count = conn.stats().udp_rx.datagrams;
        if count != heard {
            heard = count;
            last_heard = Instant::now();
        } else if last_heard.elapsed() >= quiet {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::tests::relay_endpoint;
    use crate::Limits;

    /// A mesh link to a peer whose process freezes (its runtime stops, as under
    /// SIGKILL or SIGSTOP: no close, no packets) is reported silent within a few
    /// keep-alive intervals; the same link to a live, idle peer never is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frozen_peer_is_told_from_an_idle_one() {
        let ca = ferry_certs::Ca::create().expect("CA");
        let limits = Limits::mesh();
        let quiet = limits.keep_alive * 2;

        // A relay's server side: its own keep-alives are 5 s apart, so what keeps the
        // dialer hearing from it is its ACKs of the dialer's keep-alives.
        let mut peer = crate::test_peer::FreezablePeer::spawn(&ca, b"test");
        let peer_addr = peer.addr();

        let endpoint = relay_endpoint(&ca);
        let tls = ferry_certs::client_config(ca.cert_pem(), &[b"test"]).expect("client TLS");
        let client = crate::quic::client_config(tls, &limits).expect("client config");
        let conn = endpoint
            .connect_with(client, peer_addr, "127.0.0.1")
            .expect("connect")
            .await
            .expect("handshake");

        // Idle but alive: keep-alives flow, so the link is never silent.
        let idle = tokio::time::timeout(quiet * 4, silence(&conn, quiet)).await;
        assert!(idle.is_err(), "an idle live link was reported silent");

        peer.freeze();
        let frozen_at = std::time::Instant::now();
        tokio::time::timeout(quiet * 4, silence(&conn, quiet))
            .await
            .expect("a frozen peer was never reported silent");
        let after = frozen_at.elapsed();
        assert!(
            after >= quiet && after < quiet * 2,
            "reported silent {after:?} after the freeze, with {quiet:?} of quiet asked"
        );
        // Nothing was closed: quinn has not noticed yet (its idle timeout is longer).
        assert!(conn.close_reason().is_none(), "the link was closed");
    }
}
