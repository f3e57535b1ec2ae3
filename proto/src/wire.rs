//! The peer wire codec: chunk requests and responses, without I/O.
//!
//! One bidirectional QUIC stream carries exactly one chunk request. The requester
//! writes one [`Request`] frame and finishes its side; the server answers with one
//! [`Response`] frame and, for [`Response::Ok`], exactly `len` raw chunk bytes, then
//! finishes. Anything else (a second frame, bytes after the chunk, a length that does
//! not match the request) is a protocol violation. Stream and connection close codes
//! are in [`code`].
//!
//! # Byte layout (version 1)
//!
//! All integers are big-endian. Every frame starts with the same 4-byte header:
//!
//! ```text
//! offset size field
//! 0      1    version       = 1 (VERSION); anything else is refused
//! 1      1    kind          1 = request, 2 = response
//! 2      2    body length   u16, exact for each kind/status, never above MAX_FRAME
//! 4      n    body
//! ```
//!
//! Request body (kind 1, 38 bytes):
//!
//! ```text
//! 0      32   chunk id      BLAKE3 of the chunk's bytes
//! 32     4    length        u32, the chunk's expected length, <= MAX_CHUNK
//! 36     2    flags         u16, reserved: must be 0
//! ```
//!
//! Response body (kind 2), first byte is the status:
//!
//! ```text
//! status            body length  rest of body
//! 0 ok              5            u32 len (<= MAX_CHUNK); exactly len raw bytes follow the frame
//! 1 not found       1            -
//! 2 busy            5            u32 retry_after_ms: try this peer again no sooner
//! 3 error           3            u16 error code (see ErrorCode), the server's own failure
//! ```
//!
//! Raw chunk bytes are not framed: they are the rest of the stream, and the receiver
//! knows their length from the `ok` frame. The receiver verifies them against the chunk
//! id; this codec does not (it never sees them).
//!
//! # Decoding
//!
//! [`Request::decode`] and [`Response::decode`] take whatever bytes have arrived and
//! return [`Decode::NeedMore`] with the exact number of bytes still missing, a
//! [`Decode::Frame`] with the number of bytes it used, or a [`WireError`]. A bad header
//! (version, kind, body length) is refused as soon as its 4 bytes are there, so a peer
//! cannot make the reader buffer more than [`HEADER_LEN`] + [`MAX_FRAME`] bytes. Reading
//! exactly the `NeedMore` count never reads past the frame into the chunk bytes.
//! Decoding never panics, whatever the input (fuzzed by a proptest below).
//!
//! Non-goals: no negotiation. A peer speaking another version is refused
//! ([`WireError::Version`]); the ALPN (`shoal/1`) already keeps incompatible peers apart.

use std::fmt;

use bytes::BufMut;

use crate::id::{ChunkId, HASH_LEN};
use crate::manifest::MAX_CHUNK_SIZE;

/// The only wire version this codec speaks.
pub const VERSION: u8 = 1;
/// Bytes of the common frame header.
pub const HEADER_LEN: usize = 4;
/// Largest frame body accepted, in bytes. Every version-1 body is far smaller; the
/// bound limits what a peer can make us buffer.
pub const MAX_FRAME: usize = 256;
/// Largest chunk that may be requested or sent, in bytes (16 MiB).
pub const MAX_CHUNK: u32 = MAX_CHUNK_SIZE;
/// Largest encoded frame (header + body), in bytes.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_FRAME;

const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const REQUEST_BODY: usize = HASH_LEN + 4 + 2;

const STATUS_OK: u8 = 0;
const STATUS_NOT_FOUND: u8 = 1;
const STATUS_BUSY: u8 = 2;
const STATUS_ERROR: u8 = 3;

/// QUIC application error codes used by the peer protocol when it resets a stream
/// (`RESET_STREAM`/`STOP_SENDING`) or closes a connection (`CONNECTION_CLOSE`).
pub mod code {
    /// Connection: orderly close (shutdown, idle).
    pub const CLOSE_NORMAL: u32 = 0;
    /// Connection: the peer sent too many malformed frames.
    pub const CLOSE_PROTOCOL: u32 = 1;
    /// Connection: the peer's certificate has no usable peer id.
    pub const CLOSE_IDENTITY: u32 = 2;
    /// Stream: the request frame was malformed.
    pub const STREAM_MALFORMED: u32 = 0x10;
    /// Stream: the request frame did not arrive within the server's deadline.
    pub const STREAM_TIMEOUT: u32 = 0x11;
    /// Stream: the sender gave up (deadline passed, shutting down).
    pub const STREAM_CANCELLED: u32 = 0x12;
}

/// Why bytes are not a valid frame. Always the sending peer's fault; the stream that
/// carried them should be reset and the peer counted against.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unsupported wire version {0} (this peer speaks {VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("expected a {expected} frame, got a {got} frame")]
    UnexpectedKind {
        expected: &'static str,
        got: &'static str,
    },
    #[error("frame body of {len} bytes exceeds the maximum of {MAX_FRAME}")]
    FrameTooLarge { len: usize },
    #[error("{what} body is {len} bytes, expected {want}")]
    BodyLength {
        what: &'static str,
        len: usize,
        want: usize,
    },
    #[error("unknown response status {0}")]
    Status(u8),
    #[error("chunk length {0} exceeds the maximum of {MAX_CHUNK}")]
    ChunkTooLarge(u32),
    #[error("reserved request flags {0:#06x} are set")]
    Flags(u16),
    #[error("empty response body")]
    EmptyBody,
}

/// Outcome of decoding from a prefix of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decode<T> {
    /// At least this many more bytes are needed, and reading exactly that many never
    /// reads past the frame.
    NeedMore(usize),
    /// A complete frame, and how many bytes of the input it used.
    Frame(T, usize),
}

/// A request for one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request {
    pub id: ChunkId,
    /// The chunk's length according to the requester's manifest, `<= MAX_CHUNK`.
    pub len: u32,
}

/// A server's error code in [`Response::Error`]. Unknown codes are kept, not refused,
/// so newer peers can add codes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

/// The server's answer to a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Response {
    /// The chunk follows: exactly `len` bytes, `len == request.len`.
    Ok { len: u32 },
    /// The server does not hold the chunk (any more).
    NotFound,
    /// The server is at its upload limit; ask elsewhere, or here after the delay.
    Busy { retry_after_ms: u32 },
    /// The server failed on its side.
    Error { code: ErrorCode },
}

impl ErrorCode {
    /// Something failed inside the server (disk, task).
    pub const INTERNAL: Self = Self(1);
    /// The server's copy of the chunk has a different length than requested: the
    /// requester's manifest or the server's store is wrong.
    pub const LENGTH_MISMATCH: Self = Self(2);
    /// The server is shutting down.
    pub const SHUTTING_DOWN: Self = Self(3);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::INTERNAL => "internal",
            Self::LENGTH_MISMATCH => "length mismatch",
            Self::SHUTTING_DOWN => "shutting down",
            _ => return None,
        })
    }
}

impl Request {
    /// Encoded length in bytes.
    pub const ENCODED_LEN: usize = HEADER_LEN + REQUEST_BODY;

    /// A request, refusing lengths above [`MAX_CHUNK`].
    pub fn new(id: ChunkId, len: u32) -> Result<Self, WireError> {
        if len > MAX_CHUNK {
            return Err(WireError::ChunkTooLarge(len));
        }
        Ok(Self { id, len })
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut impl BufMut) {
        put_header(out, KIND_REQUEST, REQUEST_BODY);
        out.put_slice(self.id.as_bytes());
        out.put_u32(self.len);
        out.put_u16(0);
    }

    /// The encoded frame.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        self.encode(&mut &mut out[..]);
        out
    }

    /// Decodes a request from the start of `buf` (see the module docs).
    pub fn decode(buf: &[u8]) -> Result<Decode<Self>, WireError> {
        let (body, used) = match frame(buf, KIND_REQUEST)? {
            Decode::NeedMore(n) => return Ok(Decode::NeedMore(n)),
            Decode::Frame(body, used) => (body, used),
        };
        if body.len() != REQUEST_BODY {
            return Err(WireError::BodyLength {
                what: "request",
                len: body.len(),
                want: REQUEST_BODY,
            });
        }
        let mut id = [0u8; HASH_LEN];
        id.copy_from_slice(&body[..HASH_LEN]);
        let len = be_u32(&body[HASH_LEN..HASH_LEN + 4]);
        let flags = be_u16(&body[HASH_LEN + 4..]);
        if flags != 0 {
            return Err(WireError::Flags(flags));
        }
        let req = Self::new(ChunkId::from_bytes(id), len)?;
        Ok(Decode::Frame(req, used))
    }
}

impl Response {
    /// Largest encoded response frame, in bytes.
    pub const MAX_ENCODED_LEN: usize = HEADER_LEN + 5;

    /// Appends the encoded frame to `out` (for `Ok`, the header only: the caller
    /// sends the chunk bytes after it).
    pub fn encode(&self, out: &mut impl BufMut) {
        match *self {
            Self::Ok { len } => {
                put_header(out, KIND_RESPONSE, 5);
                out.put_u8(STATUS_OK);
                out.put_u32(len);
            }
            Self::NotFound => {
                put_header(out, KIND_RESPONSE, 1);
                out.put_u8(STATUS_NOT_FOUND);
            }
            Self::Busy { retry_after_ms } => {
                put_header(out, KIND_RESPONSE, 5);
                out.put_u8(STATUS_BUSY);
                out.put_u32(retry_after_ms);
            }
            Self::Error { code } => {
                put_header(out, KIND_RESPONSE, 3);
                out.put_u8(STATUS_ERROR);
                out.put_u16(code.0);
            }
        }
    }

    /// The encoded frame.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::MAX_ENCODED_LEN);
        self.encode(&mut out);
        out
    }

    /// Decodes a response frame from the start of `buf` (see the module docs). For
    /// `Ok`, the chunk bytes start at the returned offset.
    pub fn decode(buf: &[u8]) -> Result<Decode<Self>, WireError> {
        let (body, used) = match frame(buf, KIND_RESPONSE)? {
            Decode::NeedMore(n) => return Ok(Decode::NeedMore(n)),
            Decode::Frame(body, used) => (body, used),
        };
        let (&status, rest) = body.split_first().ok_or(WireError::EmptyBody)?;
        let want = match status {
            STATUS_OK | STATUS_BUSY => 4,
            STATUS_NOT_FOUND => 0,
            STATUS_ERROR => 2,
            other => return Err(WireError::Status(other)),
        };
        if rest.len() != want {
            return Err(WireError::BodyLength {
                what: "response",
                len: body.len(),
                want: want + 1,
            });
        }
        let resp = match status {
            STATUS_OK => {
                let len = be_u32(rest);
                if len > MAX_CHUNK {
                    return Err(WireError::ChunkTooLarge(len));
                }
                Self::Ok { len }
            }
            STATUS_BUSY => Self::Busy {
                retry_after_ms: be_u32(rest),
            },
            STATUS_ERROR => Self::Error {
                code: ErrorCode(be_u16(rest)),
            },
            _ => Self::NotFound,
        };
        Ok(Decode::Frame(resp, used))
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({self})")
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{} ({n})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

fn put_header(out: &mut impl BufMut, kind: u8, body: usize) {
    out.put_u8(VERSION);
    out.put_u8(kind);
    // Bodies are compile-time sized and far below u16::MAX.
    out.put_u16(body as u16);
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_REQUEST => "request",
        _ => "response",
    }
}

/// Splits the frame of `kind` at the start of `buf` into (body, bytes used).
fn frame(buf: &[u8], kind: u8) -> Result<Decode<&[u8]>, WireError> {
    // Check each header byte as soon as it is there, so garbage is refused early.
    if let Some(&v) = buf.first()
        && v != VERSION
    {
        return Err(WireError::Version(v));
    }
    if let Some(&k) = buf.get(1) {
        if k != KIND_REQUEST && k != KIND_RESPONSE {
            return Err(WireError::Kind(k));
        }
        if k != kind {
            return Err(WireError::UnexpectedKind {
                expected: kind_name(kind),
                got: kind_name(k),
            });
        }
    }
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(Decode::NeedMore(HEADER_LEN - buf.len()));
    };
    let len = usize::from(be_u16(&header[2..]));
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge { len });
    }
    let total = HEADER_LEN + len;
    match buf.get(HEADER_LEN..total) {
        Some(body) => Ok(Decode::Frame(body, total)),
        None => Ok(Decode::NeedMore(total - buf.len())),
    }
}

/// Big-endian u16 from the first 2 bytes; callers pass slices of checked length.
fn be_u16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[..2]);
    u16::from_be_bytes(a)
}

/// Big-endian u32 from the first 4 bytes; callers pass slices of checked length.
fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn req() -> Request {
        Request::new(ChunkId::of(b"chunk"), 1 << 20).unwrap()
    }

    /// Feeds `bytes` one at a time, checking every `NeedMore` is exact.
    fn feed<T: std::fmt::Debug>(
        bytes: &[u8],
        decode: impl Fn(&[u8]) -> Result<Decode<T>, WireError>,
    ) -> Result<(T, usize), WireError> {
        for end in 0..=bytes.len() {
            match decode(&bytes[..end])? {
                Decode::NeedMore(n) => assert!(n > 0 && end + n <= bytes.len()),
                Decode::Frame(t, used) => return Ok((t, used)),
            }
        }
        panic!("no frame in {bytes:?}");
    }

    #[test]
    fn request_layout_is_as_documented() {
        let r = req();
        let b = r.to_bytes();
        assert_eq!(b.len(), 42);
        assert_eq!(&b[..4], &[1, 1, 0, 38]);
        assert_eq!(&b[4..36], r.id.as_bytes());
        assert_eq!(&b[36..40], &(1u32 << 20).to_be_bytes());
        assert_eq!(&b[40..], &[0, 0]);
        assert_eq!(Request::decode(&b), Ok(Decode::Frame(r, 42)));
    }

    #[test]
    fn response_layouts_are_as_documented() {
        assert_eq!(
            Response::Ok { len: 7 }.to_vec(),
            [1, 2, 0, 5, 0, 0, 0, 0, 7]
        );
        assert_eq!(Response::NotFound.to_vec(), [1, 2, 0, 1, 1]);
        assert_eq!(
            Response::Busy {
                retry_after_ms: 258
            }
            .to_vec(),
            [1, 2, 0, 5, 2, 0, 0, 1, 2]
        );
        assert_eq!(
            Response::Error {
                code: ErrorCode::LENGTH_MISMATCH
            }
            .to_vec(),
            [1, 2, 0, 3, 3, 0, 2]
        );
    }

    #[test]
    fn incremental_need_more_is_exact() {
        let b = req().to_bytes();
        assert_eq!(Request::decode(&[]), Ok(Decode::NeedMore(4)));
        assert_eq!(Request::decode(&b[..3]), Ok(Decode::NeedMore(1)));
        assert_eq!(Request::decode(&b[..4]), Ok(Decode::NeedMore(38)));
        assert_eq!(Request::decode(&b[..41]), Ok(Decode::NeedMore(1)));
        let (r, used) = feed(&b, Request::decode).unwrap();
        assert_eq!((r, used), (req(), 42));
        // Chunk bytes after an Ok frame are not consumed.
        let mut ok = Response::Ok { len: 3 }.to_vec();
        ok.extend_from_slice(b"abc");
        assert_eq!(
            Response::decode(&ok),
            Ok(Decode::Frame(Response::Ok { len: 3 }, 9))
        );
    }

    #[test]
    fn refusals_are_typed() {
        let mut b = req().to_bytes();
        b[0] = 2;
        assert_eq!(Request::decode(&b[..1]), Err(WireError::Version(2)));
        let b = req().to_bytes();
        assert!(matches!(
            Response::decode(&b),
            Err(WireError::UnexpectedKind { .. })
        ));
        assert_eq!(Request::decode(&[1, 9]), Err(WireError::Kind(9)));
        assert_eq!(
            Request::decode(&[1, 1, 1, 1]),
            Err(WireError::FrameTooLarge { len: 257 })
        );
        assert!(matches!(
            Request::decode(&[1, 1, 0, 1, 0]),
            Err(WireError::BodyLength { .. })
        ));
        let mut b = req().to_bytes();
        b[41] = 1;
        assert_eq!(Request::decode(&b), Err(WireError::Flags(1)));
        let mut b = req().to_bytes();
        b[36..40].copy_from_slice(&(MAX_CHUNK + 1).to_be_bytes());
        assert_eq!(
            Request::decode(&b),
            Err(WireError::ChunkTooLarge(MAX_CHUNK + 1))
        );
        assert_eq!(
            Request::new(req().id, MAX_CHUNK + 1).unwrap_err(),
            WireError::ChunkTooLarge(MAX_CHUNK + 1)
        );
        assert_eq!(
            Response::decode(&[1, 2, 0, 1, 9]),
            Err(WireError::Status(9))
        );
        assert_eq!(Response::decode(&[1, 2, 0, 0]), Err(WireError::EmptyBody));
        assert!(matches!(
            Response::decode(&[1, 2, 0, 2, 1, 0]),
            Err(WireError::BodyLength { .. })
        ));
        let mut ok = Response::Ok { len: 0 }.to_vec();
        ok[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Response::decode(&ok),
            Err(WireError::ChunkTooLarge(u32::MAX))
        );
    }

    #[test]
    fn error_codes_display() {
        assert_eq!(ErrorCode::INTERNAL.to_string(), "1 (internal)");
        assert_eq!(ErrorCode(999).to_string(), "999");
    }

    fn any_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (0..=MAX_CHUNK).prop_map(|len| Response::Ok { len }),
            Just(Response::NotFound),
            any::<u32>().prop_map(|retry_after_ms| Response::Busy { retry_after_ms }),
            any::<u16>().prop_map(|c| Response::Error { code: ErrorCode(c) }),
        ]
    }

    /// Random bytes, half of them behind a plausible header so the body paths are hit.
    fn noise() -> impl Strategy<Value = Vec<u8>> {
        let body = proptest::collection::vec(any::<u8>(), 0..48);
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            (1u8..=2, 0u8..48, body).prop_map(|(kind, len, body)| {
                let mut b = vec![VERSION, kind, 0, len];
                b.extend_from_slice(&body);
                b
            }),
        ]
    }

    proptest! {
        #[test]
        fn decode_random_bytes_never_panics(bytes in noise()) {
            match Request::decode(&bytes) {
                Ok(Decode::Frame(_, used)) => prop_assert!(used <= bytes.len()),
                Ok(Decode::NeedMore(n)) => prop_assert!(n > 0 && bytes.len() + n <= MAX_FRAME_LEN),
                Err(_) => {}
            }
            match Response::decode(&bytes) {
                Ok(Decode::Frame(_, used)) => prop_assert!(used <= bytes.len()),
                Ok(Decode::NeedMore(n)) => prop_assert!(n > 0 && bytes.len() + n <= MAX_FRAME_LEN),
                Err(_) => {}
            }
        }

        #[test]
        fn mutated_frames_never_panic(i in 0usize..42, v in any::<u8>(), cut in 0usize..=42) {
            let mut b = req().to_bytes();
            b[i] = v;
            let _ = Request::decode(&b[..cut]);
            let _ = Response::decode(&b[..cut]);
        }

        #[test]
        fn request_round_trips(id in any::<[u8; 32]>(), len in 0..=MAX_CHUNK, tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let r = Request::new(ChunkId::from_bytes(id), len).unwrap();
            let mut b = r.to_bytes().to_vec();
            b.extend_from_slice(&tail);
            prop_assert_eq!(Request::decode(&b), Ok(Decode::Frame(r, Request::ENCODED_LEN)));
            let (got, _) = feed(&b, Request::decode).unwrap();
            prop_assert_eq!(got, r);
        }

        #[test]
        fn response_round_trips(r in any_response(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut b = r.to_vec();
            let n = b.len();
            prop_assert!(n <= Response::MAX_ENCODED_LEN);
            b.extend_from_slice(&tail);
            prop_assert_eq!(Response::decode(&b), Ok(Decode::Frame(r, n)));
            let (got, used) = feed(&b, Response::decode).unwrap();
            prop_assert_eq!((got, used), (r, n));
        }
    }
}
