//! Frames: a 4-byte big-endian length, then one protobuf message, with a hard size limit.
//!
//! An oversized or undecodable frame is an error the caller turns into closing the stream (or,
//! on the control stream, the connection) with [`crate::close_code`]; decoding never
//! panics on any input.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

/// Default largest frame: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    #[error("stream error: {0}")]
    Io(std::io::Error),
    #[error("the peer closed the stream before a complete frame")]
    Truncated,
}

impl FrameError {
    /// Whether the peer sent something it must not (as opposed to the stream failing).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(self, FrameError::TooLarge { .. } | FrameError::Malformed(_) | FrameError::Truncated)
    }

    /// The application error code that closes the connection or stream over this error.
    pub fn close_code(&self) -> u32 {
        match self {
            FrameError::TooLarge { .. } => crate::close_code::FRAME_TOO_LARGE,
            _ => crate::close_code::PROTOCOL_VIOLATION,
        }
    }
}

fn codec(max: usize) -> LengthDelimitedCodec {
    // One byte above the limit lets us tell "too large" apart from other I/O errors below.
    LengthDelimitedCodec::builder().length_field_length(4).max_frame_length(max).new_codec()
}

fn map_io(e: std::io::Error, max: usize) -> FrameError {
    if e.kind() == std::io::ErrorKind::InvalidData && e.to_string().contains("frame size too big") {
        FrameError::TooLarge { len: max + 1, max }
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

/// Decodes one frame from `buf` if a complete one is there; the pure core of [`FrameReader`],
/// exposed for property tests and fuzzing.
pub fn decode_frame<M: Message + Default>(buf: &mut BytesMut, max: usize) -> Result<Option<M>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let mut frame = buf.split_to(4 + len);
    let body = frame.split_off(4);
    Ok(Some(M::decode(body.freeze())?))
}

/// Encodes one message as a frame.
pub fn encode_frame<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut out = BytesMut::with_capacity(4 + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    msg.encode(&mut out).expect("BytesMut grows as needed");
    out.freeze()
}

/// Reads frames of one message type from a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: FramedRead<R, LengthDelimitedCodec>,
    max: usize,
}

/// A reader's buffer at first. Most messages are small; the buffer grows for a large one. The
/// codec's default (8 KiB) would cost a controller that much per agent's control stream.
const READ_BUFFER: usize = 512;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R, max: usize) -> Self {
        Self { inner: FramedRead::with_capacity(reader, codec(max), READ_BUFFER), max }
    }

    /// The next message, `Ok(None)` at a clean end of stream.
    pub async fn next<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(map_io(e, self.max)),
            Some(Ok(frame)) => Ok(Some(M::decode(frame)?)),
        }
    }

    pub fn into_inner(self) -> R {
        self.inner.into_inner()
    }
}

/// Writes frames to a stream: each frame is encoded and written whole, with no buffer kept
/// between frames (the stream buffers; a writer per stream would otherwise hold 8 KiB).
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    max: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(writer: W, max: usize) -> Self {
        Self { inner: writer, max }
    }

    pub async fn send<M: Message>(&mut self, msg: &M) -> Result<(), FrameError> {
        let len = msg.encoded_len();
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        self.inner.write_all(&encode_frame(msg)).await.map_err(|e| map_io(e, self.max))?;
        self.inner.flush().await.map_err(|e| map_io(e, self.max))
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Goodbye, Hello};
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let hello = Hello {
            agent_version: "1.0".into(),
            protocol_versions: vec![1],
            boot_id: "b".into(),
            held_revision: "r".into(),
            sent_unix_micros: 1,
            envelope: None,
        };
        let bytes = encode_frame(&hello);
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            assert!(decode_frame::<Hello>(&mut buf, DEFAULT_MAX_FRAME).expect("partial is fine").is_none());
            buf.extend_from_slice(&bytes[split..]);
            assert_eq!(decode_frame::<Hello>(&mut buf, DEFAULT_MAX_FRAME).expect("ok"), Some(hello.clone()));
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_body() {
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        assert!(matches!(
            decode_frame::<Goodbye>(&mut buf, 1024),
            Err(FrameError::TooLarge { len: 0x7fff_ffff, max: 1024 })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut buf = BytesMut::from(&data[..]);
            // Decode until the input is exhausted or an error: any outcome but a panic is fine.
            for _ in 0..64 {
                match decode_frame::<crate::proto::AgentMessage>(&mut buf, 2048) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
