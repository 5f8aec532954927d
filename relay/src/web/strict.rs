//! Request-smuggling guard for HTTP/1.1 connections.
//!
//! hyper resolves ambiguous message lengths the lenient way RFC 9112 allows: with both
//! `Content-Length` and `Transfer-Encoding` it drops the length, and a repeated equal
//! `Content-Length` is silently merged, so the handler cannot tell such a request from
//! a clean one. We refuse them with 400 instead, so [`StrictHttp1`] watches the bytes
//! hyper reads: it holds each request head back until it is complete, and when the
//! head's length headers are ambiguous it renames every `Content-Length` to
//! [`MARKER`] (same length, so nothing shifts), which the handler answers with 400 and
//! `Connection: close`. To find the next head it follows the body framing itself
//! (length, or chunks); anything it cannot follow (an upgrade, a head hyper will reject
//! anyway) ends the watching for that connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The header name an ambiguous `Content-Length` is renamed to.
pub(crate) const MARKER: &str = "x-ferry-smuggl";

/// Longest request head we hold back; past it hyper refuses the request anyway.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before or inside a request head.
    Head,
    /// Inside a body of known length.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Inside chunk data, then its CRLF.
    ChunkData(u64),
    /// Inside the trailer section after the last chunk.
    Trailers,
    /// No longer watching (tunnel, or a message hyper will refuse).
    Off,
}

/// The framing watcher, without I/O.
pub(crate) struct Framing {
    state: State,
    /// The head (or chunk-size / trailer line) being collected.
    line: Vec<u8>,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            state: State::Head,
            line: Vec::new(),
        }
    }
}

impl Framing {
    /// Takes newly read bytes; appends to `out` what may be handed on (a head only
    /// once complete, and perhaps rewritten).
    pub(crate) fn feed(&mut self, mut data: &[u8], out: &mut BytesMut) {
        while !data.is_empty() {
            match self.state {
                State::Off => {
                    out.extend_from_slice(data);
                    return;
                }
                State::Head => {
                    if self.line.is_empty() {
                        // Empty lines before a request line are allowed and skipped.
                        let blank = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        out.extend_from_slice(&data[..blank]);
                        data = &data[blank..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    let before = self.line.len();
                    self.line.extend_from_slice(data);
                    let from = before.saturating_sub(3);
                    match find(&self.line[from..], b"\r\n\r\n") {
                        Some(at) => {
                            let end = from + at + 4;
                            let consumed = end - before;
                            let mut head = std::mem::take(&mut self.line);
                            head.truncate(end);
                            self.state = inspect(&mut head);
                            out.extend_from_slice(&head);
                            data = &data[consumed..];
                        }
                        None if self.line.len() > MAX_HEAD => {
                            out.extend_from_slice(&std::mem::take(&mut self.line));
                            self.state = State::Off;
                            return;
                        }
                        None => return,
                    }
                }
                State::Body(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    out.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::ChunkData(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    out.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::ChunkSize
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let Some(newline) = data.iter().position(|b| *b == b'\n') else {
                        self.line.extend_from_slice(data);
                        out.extend_from_slice(data);
                        if self.line.len() > MAX_HEAD {
                            self.state = State::Off;
                        }
                        return;
                    };
                    self.line.extend_from_slice(&data[..=newline]);
                    out.extend_from_slice(&data[..=newline]);
                    data = &data[newline + 1..];
                    let line = std::mem::take(&mut self.line);
                    let text = trim_crlf(&line);
                    self.state = match self.state {
                        State::ChunkSize => {
                            // The CRLF after a chunk's data comes back here as an empty line.
                            if text.is_empty() {
                                State::ChunkSize
                            } else {
                                let size = text.split(|b| *b == b';').next().unwrap_or_default();
                                match std::str::from_utf8(size)
                                    .ok()
                                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                                {
                                    Some(0) => State::Trailers,
                                    Some(n) => State::ChunkData(n),
                                    None => State::Off,
                                }
                            }
                        }
                        _ if text.is_empty() => State::Head,
                        _ => State::Trailers,
                    };
                }
            }
        }
    }
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decides how the body after `head` is framed, renaming ambiguous length headers.
fn inspect(head: &mut [u8]) -> State {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let base = head.as_ptr() as usize;
    let (lengths, chunked, te, upgrade) = match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let mut lengths: Vec<(usize, u64)> = Vec::new();
            let (mut chunked, mut te, mut upgrade) = (false, false, false);
            let mut bad_length = false;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    let value = std::str::from_utf8(h.value).ok().map(str::trim);
                    match value.and_then(|v| v.parse::<u64>().ok()) {
                        Some(n) => lengths.push((h.name.as_ptr() as usize - base, n)),
                        None => bad_length = true,
                    }
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    te = true;
                    chunked = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.rsplit(',').next())
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
                } else if h.name.eq_ignore_ascii_case("upgrade") {
                    upgrade = true;
                }
            }
            if bad_length {
                // hyper refuses a malformed length itself.
                return State::Off;
            }
            (lengths, chunked, te, upgrade)
        }
        _ => return State::Off,
    };
    if lengths.len() > 1 || (!lengths.is_empty() && te) {
        for (at, _) in &lengths {
            head[*at..*at + MARKER.len()].copy_from_slice(MARKER.as_bytes());
        }
        // The handler refuses it and closes the connection.
        return State::Off;
    }
    if upgrade {
        return State::Off;
    }
    match (te, chunked, lengths.first()) {
        (true, true, _) => State::ChunkSize,
        (true, false, _) => State::Off,
        (false, _, Some((_, 0))) | (false, _, None) => State::Head,
        (false, _, Some((_, n))) => State::Body(*n),
    }
}

/// An HTTP/1.1 server connection's stream with its requests' framing watched.
pub(crate) struct StrictHttp1<S> {
    inner: S,
    framing: Framing,
    ready: BytesMut,
}

impl<S> StrictHttp1<S> {
    pub(crate) fn new(inner: S) -> Self {
        StrictHttp1 {
            inner,
            framing: Framing::default(),
            ready: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StrictHttp1<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // End of stream; a held-back partial head goes on so hyper sees it.
                    let rest = std::mem::take(&mut this.framing.line);
                    if this.framing.state == State::Head && !rest.is_empty() {
                        this.framing.state = State::Off;
                        this.ready.extend_from_slice(&rest);
                        continue;
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => {
                    let filled = read.filled().to_vec();
                    this.framing.feed(&filled, &mut this.ready);
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StrictHttp1<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; answers what hyper would read.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, State) {
        let mut framing = Framing::default();
        let mut out = BytesMut::new();
        for piece in input.chunks(step) {
            framing.feed(piece, &mut out);
        }
        (out.to_vec(), framing.state)
    }

    #[test]
    fn ambiguous_lengths_are_marked_in_place() {
        for input in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ] {
            for step in [1, 7, 1000] {
                let (out, _) = run(input.as_bytes(), step);
                let text = String::from_utf8(out).unwrap();
                assert_eq!(text.len(), input.len());
                assert!(text.contains(MARKER), "{input:?} step {step}: {text:?}");
                assert!(!text.to_ascii_lowercase().contains("content-length"), "{text:?}");
            }
        }
    }

    #[test]
    fn clean_pipelined_requests_pass_unchanged_and_each_head_is_inspected() {
        let clean = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
                     POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n\
                     GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
        let smuggled =
            "POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        for step in [1, 3, 64, 4096] {
            let (out, state) = run(clean.as_bytes(), step);
            assert_eq!(out, clean.as_bytes(), "step {step}");
            assert_eq!(state, State::Head, "step {step}");
            let both = format!("{clean}{smuggled}");
            let (out, _) = run(both.as_bytes(), step);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.ends_with(&format!("{MARKER}: 1\r\n{MARKER}: 1\r\n\r\nx")),
                "step {step}: {text:?}"
            );
        }
    }

    #[test]
    fn a_head_is_held_back_until_complete() {
        let mut framing = Framing::default();
        let mut out = BytesMut::new();
        framing.feed(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n", &mut out);
        assert_eq!(&out[..], b"\r\n");
        framing.feed(b"\r\n", &mut out);
        assert_eq!(&out[..], b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }
}
