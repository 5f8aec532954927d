//! Reading and writing length-prefixed frames on a byte stream.

use bytes::Bytes;
use ferry_proto::codec::check_frame_len;
use ferry_proto::frame::Frame;
use ferry_proto::DecodeError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream failed or ended before the frame was complete.
    #[error("stream closed or failed: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes were there but are not a valid frame.
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
}

/// Reads one `[len: u16][body]` frame and decodes it.
pub async fn read_frame<F: Frame>(r: &mut (impl AsyncRead + Unpin)) -> Result<F, FrameError> {
    let len = check_frame_len(r.read_u16().await?)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(F::decode(&mut Bytes::from(body))?)
}

/// Encodes and writes one frame.
pub async fn write_frame<F: Frame>(
    w: &mut (impl AsyncWrite + Unpin),
    frame: &F,
) -> Result<(), std::io::Error> {
    w.write_all(&frame.to_framed_bytes()).await
}
